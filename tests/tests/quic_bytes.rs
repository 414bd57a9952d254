//! Byte-exact transport over the QUIC tunnel with plain Rust peers, as `bytes.rs` checks it
//! over the TCP tunnel: a half-close carried end to end (seen on the wan link as QUIC only,
//! no TCP tunnel packet), a reset arriving as a reset in either direction, and 64 MiB each
//! way with equal SHA-256.

use anyhow::{ensure, Context, Result};
use edgeward_lab::capture::TUNNEL_PORT;
use edgeward_lab::peer;
use edgeward_lab::transfer;
use edgeward_lab::{Capture, Mesh, MeshOptions, Transport};

#[test]
fn half_close_reset_and_sixty_four_mib_each_way_over_quic() {
    let options = MeshOptions::new()
        .transport(Transport::Quic)
        .meshed_pod(1, "client", "demo", "client")
        .meshed_pod(2, "server", "demo", "server");
    let mesh = Mesh::start(options).expect("starting the mesh");
    half_close_over_quic(&mesh).unwrap();
    let topo = mesh.topology();
    transfer::reset(transfer::connect(topo, "client", "server").unwrap()).unwrap();
    transfer::reset_by_server(transfer::connect(topo, "client", "server").unwrap()).unwrap();
    transfer::bulk_both_ways(transfer::connect(topo, "client", "server").unwrap()).unwrap();
    peer::expect_transport(&mesh, Transport::Quic).unwrap();
}

fn half_close_over_quic(mesh: &Mesh) -> Result<()> {
    let capture = Capture::start(mesh.topology(), 1)?;
    let pair = transfer::connect(mesh.topology(), "client", "server")?;
    transfer::half_close(pair).context("half-close over QUIC")?;
    let seen = capture.finish()?;
    let (quic, tcp) = (seen.udp_packets(TUNNEL_PORT), seen.tcp_packets(TUNNEL_PORT));
    ensure!(
        quic > 0 && tcp == 0,
        "the wan link carried {quic} packets on udp/{TUNNEL_PORT} and {tcp} on \
         tcp/{TUNNEL_PORT}: the connection did not go over QUIC alone"
    );
    Ok(())
}
