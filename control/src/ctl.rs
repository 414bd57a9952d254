//! `edgewardctl`, the operator CLI: join tokens, workloads, nodes and certificate inspection.
//! It talks to the control API with the admin credential that the control plane wrote at its
//! first start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use edgeward_ca::{pem, tls, CertInfo, PeerPolicy, ServerVerifier, SharedBundle, SpiffeVerifier};
use edgeward_ca::{CertSlot, Svid, TrustBundle};
use edgeward_proto::v1;
use edgeward_proto::v1::admin_client::AdminClient;
use serde_json::json;
use tonic::transport::Channel;

/// Operate an edgeward mesh.
#[derive(Debug, Parser)]
#[command(name = "edgewardctl", version, about)]
pub struct Cli {
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

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Join tokens for new nodes.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Workloads in the registry.
    #[command(subcommand)]
    Workload(ListCommand),
    /// Nodes that joined.
    #[command(subcommand)]
    Node(ListCommand),
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
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
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

/// Output formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// One JSON document.
    Json,
}

/// Runs the CLI.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Cert(CertCommand::Inspect { file }) => inspect(&file),
        Command::Token(TokenCommand::Create { node, ttl }) => {
            let mut client = connect(cli.control, &cli.admin_dir).await?;
            let reply = client
                .create_join_token(v1::CreateJoinTokenRequest {
                    node_name: node,
                    ttl_seconds: ttl.as_secs().max(1),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{}", reply.token);
            Ok(())
        }
        Command::Workload(ListCommand::List { output }) => {
            let mut client = connect(cli.control, &cli.admin_dir).await?;
            let reply = client
                .list_workloads(v1::ListWorkloadsRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            print_workloads(&reply, output);
            Ok(())
        }
        Command::Node(ListCommand::List { output }) => {
            let mut client = connect(cli.control, &cli.admin_dir).await?;
            let reply = client
                .list_nodes(v1::ListNodesRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            print_nodes(&reply.nodes, output);
            Ok(())
        }
    }
}

fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "the control plane refused: {} ({:?})",
        status.message(),
        status.code()
    )
}

async fn connect(addr: SocketAddr, admin_dir: &Path) -> Result<AdminClient<Channel>> {
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

fn print_workloads(reply: &v1::ListWorkloadsResponse, output: Output) {
    match output {
        Output::Json => {
            let workloads: Vec<_> = reply
                .workloads
                .iter()
                .map(|w| {
                    json!({
                        "name": w.name, "namespace": w.namespace,
                        "service_account": w.service_account, "node": w.node,
                        "addresses": w.addresses, "spiffe_id": w.spiffe_id,
                    })
                })
                .collect();
            let doc = json!({ "version": reply.version, "workloads": workloads });
            println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
        }
        Output::Table => {
            let rows = reply.workloads.iter().map(|w| {
                vec![
                    format!("{}/{}", w.namespace, w.name),
                    w.node.clone(),
                    w.addresses.join(","),
                    w.spiffe_id.clone(),
                ]
            });
            print_table(
                &["WORKLOAD", "NODE", "ADDRESSES", "SPIFFE ID"],
                rows.collect(),
            );
        }
    }
}

fn print_nodes(nodes: &[v1::Node], output: Output) {
    match output {
        Output::Json => {
            let nodes: Vec<_> = nodes
                .iter()
                .map(|n| {
                    json!({
                        "name": n.name, "spiffe_id": n.spiffe_id, "connected": n.connected,
                        "tunnel_addresses": n.tunnel_addresses, "last_seen_unix": n.last_seen_unix,
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({ "nodes": nodes })).expect("json")
            );
        }
        Output::Table => {
            let rows = nodes.iter().map(|n| {
                vec![
                    n.name.clone(),
                    if n.connected { "yes" } else { "no" }.to_string(),
                    n.tunnel_addresses.join(","),
                    n.spiffe_id.clone(),
                ]
            });
            print_table(
                &["NODE", "CONNECTED", "TUNNEL", "SPIFFE ID"],
                rows.collect(),
            );
        }
    }
}

fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
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
