//! `edgewardctl`, the operator CLI: join tokens, workloads, nodes, policies and certificate
//! inspection. It talks to the control API with the admin credential that the control plane
//! wrote at its first start.

mod output;
mod policy;
mod workload;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use edgeward_ca::{pem, tls, CertInfo, PeerPolicy, ServerVerifier, SharedBundle, SpiffeVerifier};
use edgeward_ca::{CertSlot, Svid, TrustBundle};
use edgeward_proto::v1;
use edgeward_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

pub use output::Output;
pub use policy::PolicyCommand;
pub use workload::WorkloadCommand;

/// Operate an edgeward mesh.
#[derive(Debug, Parser)]
#[command(name = "edgewardctl", version)]
pub struct Cli {
    /// Where the control plane is and how to authenticate to it.
    #[command(flatten)]
    pub target: Target,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The control plane to talk to.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// Address of the control API.
    #[arg(
        long,
        global = true,
        env = "EDGEWARD_CONTROL_ADDR",
        default_value = "127.0.0.1:15012"
    )]
    pub control: SocketAddr,

    /// Directory holding the admin credential (admin.crt, admin.key, bundle.pem).
    #[arg(
        long,
        global = true,
        env = "EDGEWARD_ADMIN_DIR",
        default_value = "/var/lib/edgeward/control/admin"
    )]
    pub admin_dir: PathBuf,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Join tokens for new nodes.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Workloads, from the registry file and from the API.
    #[command(subcommand)]
    Workload(WorkloadCommand),
    /// Nodes that joined.
    #[command(subcommand)]
    Node(ListCommand),
    /// Authorization policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Certificates.
    #[command(subcommand)]
    Cert(CertCommand),
}

/// `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a single-use join token for a node; prints the token alone.
    Create {
        /// The node that may use it.
        #[arg(long)]
        node: String,
        /// How long it stays valid, such as "1h" or "10m".
        #[arg(long, default_value = "1h", value_parser = edgeward_proto::duration::parse)]
        ttl: Duration,
    },
}

/// A `list` subcommand.
#[derive(Debug, Subcommand)]
pub enum ListCommand {
    /// List them.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

/// `cert` subcommands.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Show what each certificate in a PEM file says: SPIFFE ID, validity, issuer.
    Inspect {
        /// The PEM file.
        file: PathBuf,
    },
}

/// Runs the CLI.
pub async fn run(cli: Cli) -> Result<()> {
    let target = &cli.target;
    match cli.command {
        Command::Cert(CertCommand::Inspect { file }) => inspect(&file),
        Command::Token(TokenCommand::Create { node, ttl }) => {
            let mut client = connect(target).await?;
            let reply = client
                .create_join_token(v1::CreateJoinTokenRequest {
                    node_name: node,
                    ttl_seconds: ttl.as_secs().max(1),
                })
                .await
                .map_err(refused)?
                .into_inner();
            println!("{}", reply.token);
            Ok(())
        }
        Command::Workload(command) => workload::run(target, command).await,
        Command::Policy(command) => policy::run(target, command).await,
        Command::Node(ListCommand::List { output }) => {
            let mut client = connect(target).await?;
            let reply = client
                .list_nodes(v1::ListNodesRequest {})
                .await
                .map_err(refused)?
                .into_inner();
            output::print_nodes(&reply.nodes, output);
            Ok(())
        }
    }
}

/// The error for a call the control plane refused, with its message and code.
fn refused(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "the control plane refused: {} ({:?})",
        status.message(),
        status.code()
    )
}

/// Opens an Admin client to the control plane with the admin credential.
pub async fn connect(target: &Target) -> Result<AdminClient<Channel>> {
    let (addr, admin_dir) = (target.control, &target.admin_dir);
    let svid = Svid::load(&admin_dir.join("admin.crt"), &admin_dir.join("admin.key"))
        .with_context(|| {
            format!(
                "cannot load the admin credential from {}",
                admin_dir.display()
            )
        })?;
    let td = svid.id().trust_domain();
    let bundle = TrustBundle::load(td.clone(), &admin_dir.join("bundle.pem"))?;
    let verifier = SpiffeVerifier::new(
        SharedBundle::new(bundle),
        PeerPolicy::Exact(td.control_id()),
    );
    let slot = Arc::new(CertSlot::with(svid.certified_key()));
    let config = tls::client_config(ServerVerifier(verifier), Some(slot), &[b"h2"]);
    let channel = edgeward_proto::channel::connect(addr, Arc::new(config))
        .await
        .with_context(|| format!("cannot reach the control plane at {addr}"))?;
    Ok(AdminClient::new(channel))
}

fn inspect(file: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let certs = pem::decode_certs(&text).with_context(|| format!("{}", file.display()))?;
    if certs.is_empty() {
        bail!("{} holds no certificate", file.display());
    }
    let now = SystemTime::now();
    for (i, der) in certs.iter().enumerate() {
        let info = CertInfo::parse(der).with_context(|| format!("certificate #{i}"))?;
        println!("certificate #{i}");
        match info.spiffe_id() {
            Ok(id) => println!("  spiffe id:  {id}"),
            Err(e) if info.is_ca => println!("  spiffe id:  none (CA certificate: {e})"),
            Err(e) => println!("  spiffe id:  INVALID: {e}"),
        }
        println!("  subject:    {}", info.subject);
        println!("  issuer:     {}", info.issuer);
        println!("  serial:     {}", info.serial);
        println!("  ca:         {}", info.is_ca);
        println!(
            "  not before: {}",
            humantime::format_rfc3339_seconds(info.not_before)
        );
        println!(
            "  not after:  {}",
            humantime::format_rfc3339_seconds(info.not_after)
        );
        match info.not_after.duration_since(now) {
            Ok(left) => println!("  expires in: {}", humantime::format_duration(round(left))),
            Err(_) => println!("  expires in: EXPIRED"),
        }
    }
    Ok(())
}

fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}
