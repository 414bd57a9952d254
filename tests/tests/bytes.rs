//! Byte-exact transport through the mesh with plain Rust peers (a listener made inside the
//! server pod on node 2, a client socket made inside the client pod on node 1): 64 MiB each
//! way with equal SHA-256, half-close carried end to end, and a reset arriving as a reset in
//! either direction.

use edgeward_lab::transfer;
use edgeward_lab::{Mesh, MeshOptions};

fn client_server_mesh() -> Mesh {
    let options = MeshOptions::new()
        .meshed_pod(1, "client", "demo", "client")
        .meshed_pod(2, "server", "demo", "server");
    Mesh::start(options).expect("starting the mesh")
}

#[test]
fn sixty_four_mib_each_way_arrive_intact() {
    let mesh = client_server_mesh();
    let pair = transfer::connect(mesh.topology(), "client", "server").unwrap();
    transfer::bulk_both_ways(pair).unwrap();
}

#[test]
fn half_close_lets_the_reply_through() {
    let mesh = client_server_mesh();
    let pair = transfer::connect(mesh.topology(), "client", "server").unwrap();
    transfer::half_close(pair).unwrap();
}

#[test]
fn reset_reaches_the_server_as_a_reset() {
    let mesh = client_server_mesh();
    let pair = transfer::connect(mesh.topology(), "client", "server").unwrap();
    transfer::reset(pair).unwrap();
}

#[test]
fn reset_reaches_the_client_as_a_reset() {
    let mesh = client_server_mesh();
    let pair = transfer::connect(mesh.topology(), "client", "server").unwrap();
    transfer::reset_by_server(pair).unwrap();
}
