//! `edgewardctl policy apply|list|delete`.

use std::path::Path;

use anyhow::{Context, Result};
use clap::Subcommand;
use edgeward_proto::v1;
use serde_json::json;

use super::output::{pairs, print_document, print_table, Output};
use super::{connect, refused, Target};
use crate::policy::proto::document_from_proto;

/// `policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Apply a policy document: its policies (by name) and namespace defaults (by namespace)
    /// are added or replaced; a document with any problem changes nothing.
    Apply {
        /// The YAML document; `-` reads standard input.
        #[arg(short = 'f', long = "file")]
        file: String,
    },
    /// List the policies and namespace defaults in force.
    List {
        /// Output format; `yaml` prints a document that `policy apply` takes back.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Delete one policy by name.
    Delete {
        /// The policy's name.
        name: String,
    },
}

/// Runs a `policy` subcommand.
pub async fn run(target: &Target, command: PolicyCommand) -> Result<()> {
    match command {
        PolicyCommand::Apply { file } => apply(target, &file).await,
        PolicyCommand::List { output } => list(target, output).await,
        PolicyCommand::Delete { name } => {
            let mut client = connect(target).await?;
            let request = v1::DeletePolicyRequest { name: name.clone() };
            let reply = client.delete_policy(request).await.map_err(refused)?;
            println!(
                "deleted policy {name} (version {})",
                reply.get_ref().version
            );
            Ok(())
        }
    }
}

async fn apply(target: &Target, file: &str) -> Result<()> {
    let yaml = read_document(file)?;
    let mut client = connect(target).await?;
    let reply = client
        .apply_policies(v1::ApplyPoliciesRequest { yaml })
        .await
        .map_err(|status| refused(status).context(format!("{file} was not applied")))?
        .into_inner();
    println!(
        "applied {} (version {})",
        reply.applied.join(", "),
        reply.version
    );
    Ok(())
}

fn read_document(file: &str) -> Result<String> {
    if file == "-" {
        return std::io::read_to_string(std::io::stdin()).context("cannot read standard input");
    }
    let path = Path::new(file);
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", path.display()))
}

async fn list(target: &Target, output: Output) -> Result<()> {
    let mut client = connect(target).await?;
    let reply = client
        .list_policies(v1::ListPoliciesRequest {})
        .await
        .map_err(refused)?
        .into_inner();
    if let Output::Table = output {
        print_policies(&reply);
        return Ok(());
    }
    let doc = document_from_proto(&reply.policies, &reply.namespace_defaults)
        .map_err(anyhow::Error::msg)
        .context("the control plane sent a policy that does not validate")?;
    if let Output::Yaml = output {
        println!("# version {}", reply.version);
        print!("{}", doc.to_yaml());
        return Ok(());
    }
    let mut value = serde_json::to_value(&doc).context("cannot render the policies")?;
    value["version"] = json!(reply.version);
    print_document(&value, output);
    Ok(())
}

fn print_policies(reply: &v1::ListPoliciesResponse) {
    let rows = reply.policies.iter().map(|p| {
        let source = p.source.clone().unwrap_or_default();
        let destination = p.destination.clone().unwrap_or_default();
        let ports: Vec<String> = destination.ports.iter().map(u32::to_string).collect();
        vec![
            p.name.clone(),
            p.action.clone(),
            source_text(&source),
            destination_text(&destination),
            if ports.is_empty() {
                "any".into()
            } else {
                ports.join(",")
            },
        ]
    });
    print_table(
        &["POLICY", "ACTION", "SOURCE", "DESTINATION", "PORTS"],
        rows.collect(),
    );
    println!();
    let defaults = reply
        .namespace_defaults
        .iter()
        .map(|d| vec![d.namespace.clone(), d.action.clone()]);
    print_table(&["NAMESPACE", "DEFAULT"], defaults.collect());
    println!(
        "\nversion {}; namespaces not listed allow by default",
        reply.version
    );
}

fn source_text(s: &v1::PolicySource) -> String {
    let fields = [
        ("spiffe_id", &s.spiffe_id),
        ("trust_domain", &s.trust_domain),
        ("namespace", &s.namespace),
        ("path_prefix", &s.path_prefix),
    ];
    let set = fields.iter().filter(|(_, v)| !v.is_empty());
    let set: Vec<String> = set.map(|(k, v)| format!("{k}={v}")).collect();
    set.join(",")
}

fn destination_text(d: &v1::PolicyDestination) -> String {
    let name = if d.name.is_empty() { "*" } else { &d.name };
    match d.labels.is_empty() {
        true => format!("{}/{name}", d.namespace),
        false => format!("{}/{name}{{{}}}", d.namespace, pairs(&d.labels)),
    }
}
