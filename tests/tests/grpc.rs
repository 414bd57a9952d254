//! gRPC through the mesh with real grpcio peers: unary and server-streaming calls from a pod
//! on node 1 to a pod on node 2 and between two pods of one node, and the proxies' access
//! logs naming both SPIFFE IDs of each connection.

use std::time::Duration;

use anyhow::Result;
use edgeward_lab::greeter::{self, ClientCall, GREETER_PORT};
use edgeward_lab::{Mesh, MeshOptions};

/// How long an access-log line may take to appear after the client exits (10 s): the proxy
/// writes it when the connection closes.
const ACCESS_LOG_TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn grpc_across_nodes_names_both_identities() {
    let options = MeshOptions::new()
        .meshed_pod(1, "client", "demo", "client")
        .meshed_pod(2, "greeter", "demo", "greeter");
    let mut mesh = Mesh::start(options).expect("starting the mesh");
    greeter::start_server(mesh.topology_mut(), "greeter", GREETER_PORT).unwrap();
    call_and_check_access_logs(&mesh, "client", "greeter", &[1, 2]).unwrap();
}

#[test]
fn grpc_between_pods_of_one_node_names_both_identities() {
    // Another trust domain, so nothing in the proxies leans on the default one.
    let options = MeshOptions::new()
        .trust_domain("lab.edgeward.test")
        .meshed_pod(1, "client", "shop", "till")
        .meshed_pod(1, "greeter", "shop", "greeter");
    let mut mesh = Mesh::start(options).expect("starting the mesh");
    greeter::start_server(mesh.topology_mut(), "greeter", GREETER_PORT).unwrap();
    call_and_check_access_logs(&mesh, "client", "greeter", &[1]).unwrap();
}

/// Runs unary calls and a server stream from `client` to `server`, then waits for a line
/// with both SPIFFE IDs in the access log of every node in `nodes`.
fn call_and_check_access_logs(
    mesh: &Mesh,
    client: &str,
    server: &str,
    nodes: &[usize],
) -> Result<()> {
    let mut call = ClientCall::new(
        mesh.pod_addr(server, GREETER_PORT)?,
        &greeter::marker("grpc"),
    );
    (call.unary, call.stream, call.interval_ms) = (3, 8, 20);
    greeter::run_client(mesh.topology(), client, &call)?.check(&call, server)?;

    let (client_id, server_id) = (mesh.spiffe_id(client)?, mesh.spiffe_id(server)?);
    for &k in nodes {
        mesh.wait_access_line(k, &[&client_id, &server_id], ACCESS_LOG_TIMEOUT)?;
    }
    Ok(())
}
