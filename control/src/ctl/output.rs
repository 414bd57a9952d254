//! How `edgewardctl` prints what it lists: aligned columns, JSON or YAML.

use clap::ValueEnum;
use edgeward_proto::v1;
use serde_json::{json, Value};

/// Output formats of the list commands.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// One JSON document.
    Json,
    /// One YAML document.
    Yaml,
}

/// Prints `doc` as JSON or YAML (`table` is the caller's business).
pub fn print_document(doc: &Value, output: Output) {
    let text = match output {
        Output::Yaml => serde_norway::to_string(doc).unwrap_or_else(|e| format!("# {e}\n")),
        _ => serde_json::to_string_pretty(doc).unwrap_or_else(|e| e.to_string()) + "\n",
    };
    print!("{text}");
}

/// Prints the workloads, with where each is defined.
pub fn print_workloads(reply: &v1::ListWorkloadsResponse, output: Output) {
    if let Output::Table = output {
        let rows = reply.workloads.iter().map(|w| {
            vec![
                format!("{}/{}", w.namespace, w.name),
                w.node.clone(),
                w.addresses.join(","),
                w.source.clone(),
                pairs(&w.labels),
                w.spiffe_id.clone(),
            ]
        });
        let header = [
            "WORKLOAD",
            "NODE",
            "ADDRESSES",
            "SOURCE",
            "LABELS",
            "SPIFFE ID",
        ];
        return print_table(&header, rows.collect());
    }
    let workloads: Vec<_> = reply
        .workloads
        .iter()
        .map(|w| {
            json!({
                "name": w.name, "namespace": w.namespace,
                "service_account": w.service_account, "node": w.node,
                "addresses": w.addresses, "spiffe_id": w.spiffe_id,
                "labels": w.labels, "source": w.source,
            })
        })
        .collect();
    print_document(
        &json!({ "version": reply.version, "workloads": workloads }),
        output,
    );
}

/// Prints the nodes.
pub fn print_nodes(nodes: &[v1::Node], output: Output) {
    if let Output::Table = output {
        let rows = nodes.iter().map(|n| {
            vec![
                n.name.clone(),
                if n.connected { "yes" } else { "no" }.to_string(),
                n.tunnel_addresses.join(","),
                n.spiffe_id.clone(),
            ]
        });
        return print_table(
            &["NODE", "CONNECTED", "TUNNEL", "SPIFFE ID"],
            rows.collect(),
        );
    }
    let nodes: Vec<_> = nodes
        .iter()
        .map(|n| {
            json!({
                "name": n.name, "spiffe_id": n.spiffe_id, "connected": n.connected,
                "tunnel_addresses": n.tunnel_addresses, "last_seen_unix": n.last_seen_unix,
            })
        })
        .collect();
    print_document(&json!({ "nodes": nodes }), output);
}

/// `k=v,k=v`.
pub fn pairs<'a>(map: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let pairs: Vec<String> = map.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(",")
}

/// Prints rows under a header, each column as wide as its widest cell.
pub fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
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
