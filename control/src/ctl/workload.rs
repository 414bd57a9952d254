//! `edgewardctl workload list|add|remove`.

use anyhow::{bail, Result};
use clap::Subcommand;
use edgeward_proto::v1;

use super::output::{print_workloads, Output};
use super::{connect, refused, Target};

/// `workload` subcommands.
#[derive(Debug, Subcommand)]
pub enum WorkloadCommand {
    /// List the workloads, from the registry file and from the API, with their source.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Add a workload through the API (persisted by the control plane), or replace one that was
    /// added this way. Names and addresses of the registry file are refused.
    Add {
        /// The workload's name, unique within its namespace.
        #[arg(long)]
        name: String,
        /// The namespace.
        #[arg(long)]
        namespace: String,
        /// The service account (the SPIFFE ID is spiffe://<td>/ns/<namespace>/sa/<this>).
        #[arg(long)]
        service_account: String,
        /// The only node that may obtain the workload's SVID.
        #[arg(long)]
        node: String,
        /// A pod address; repeat for several.
        #[arg(long = "address", required = true)]
        addresses: Vec<String>,
        /// A label `key=value`; repeat for several.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Remove a workload that was added through the API.
    Remove {
        /// `namespace/name`.
        workload: String,
    },
}

/// Runs a `workload` subcommand.
pub async fn run(target: &Target, command: WorkloadCommand) -> Result<()> {
    match command {
        WorkloadCommand::List { output } => {
            let mut client = connect(target).await?;
            let reply = client.list_workloads(v1::ListWorkloadsRequest {}).await;
            print_workloads(reply.map_err(refused)?.get_ref(), output);
            Ok(())
        }
        WorkloadCommand::Add {
            name,
            namespace,
            service_account,
            node,
            addresses,
            labels,
        } => {
            let workload = v1::Workload {
                name,
                namespace,
                service_account,
                node,
                addresses,
                labels: parse_labels(&labels)?,
                ..Default::default()
            };
            let who = format!("{}/{}", workload.namespace, workload.name);
            let request = v1::AddWorkloadRequest {
                workload: Some(workload),
            };
            let mut client = connect(target).await?;
            let reply = client.add_workload(request).await.map_err(refused)?;
            println!("added {who} (version {})", reply.get_ref().version);
            Ok(())
        }
        WorkloadCommand::Remove { workload } => remove(target, &workload).await,
    }
}

async fn remove(target: &Target, workload: &str) -> Result<()> {
    let Some((namespace, name)) = workload.split_once('/') else {
        bail!("{workload:?} is not namespace/name");
    };
    let request = v1::RemoveWorkloadRequest {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    };
    let mut client = connect(target).await?;
    let reply = client.remove_workload(request).await.map_err(refused)?;
    println!("removed {workload} (version {})", reply.get_ref().version);
    Ok(())
}

/// `key=value` pairs, each key once.
fn parse_labels(labels: &[String]) -> Result<std::collections::BTreeMap<String, String>> {
    let mut map = std::collections::BTreeMap::new();
    for label in labels {
        let Some((key, value)) = label.split_once('=') else {
            bail!("--label {label:?} is not key=value");
        };
        if map.insert(key.to_owned(), value.to_owned()).is_some() {
            bail!("--label {key:?} is given twice");
        }
    }
    Ok(map)
}
