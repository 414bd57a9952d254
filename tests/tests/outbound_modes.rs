//! What the outbound side does with captured connections that are not meshed-to-meshed: in
//! strict mode a destination outside the registry is refused (the client sees a reset) while
//! meshed calls still work; a connection aimed at the proxy's own ports is refused, not looped.
//! Each refusal is counted with its reason.

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use edgeward_lab::greeter::{self, ClientCall, GREETER_PORT};
use edgeward_lab::topology::pod_gateway;
use edgeward_lab::{metrics, netns, Mesh, MeshOptions, OutboundMode};

/// Bound on how long a refused connection may take to be reset.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a TCP connection from pod `pod` to `target` and reads: a refused connection is accepted
/// by the proxy and then reset, so the read must fail with a reset (or see a closed socket).
fn expect_reset(mesh: &Mesh, pod: &str, target: SocketAddr) -> Result<()> {
    let ns = mesh.pod(pod)?.ns.clone();
    // The reset may land at any step after the connect, even on setting the read timeout.
    let attempt = move || -> std::io::Result<usize> {
        let mut stream = TcpStream::connect_timeout(&target, REFUSAL_TIMEOUT)?;
        stream.set_read_timeout(Some(REFUSAL_TIMEOUT))?;
        stream.read(&mut [0u8; 16])
    };
    let outcome = netns::run_in(&ns, move || Ok(attempt()))?;
    match outcome {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(()),
        Ok(0) => Ok(()),
        other => anyhow::bail!("connection to {target} was not refused: {other:?}"),
    }
}

#[test]
fn strict_mode_refuses_destinations_outside_the_mesh() {
    let options = MeshOptions::new()
        .outbound_mode(OutboundMode::Strict)
        .meshed_pod(1, "client", "demo", "client")
        .meshed_pod(2, "greeter", "demo", "greeter")
        .plain_pod(2, "outside");
    let mut mesh = Mesh::start(options).expect("starting the mesh");
    greeter::start_server(mesh.topology_mut(), "greeter", GREETER_PORT).unwrap();
    greeter::start_server(mesh.topology_mut(), "outside", GREETER_PORT).unwrap();

    let outside = SocketAddr::from(mesh.pod_addr("outside", GREETER_PORT).unwrap());
    expect_reset(&mesh, "client", outside).unwrap();
    let refused = failed_connections(&mesh, "destination_not_in_mesh").unwrap();
    assert_eq!(refused, 1.0, "the refusal counted once");

    // Meshed destinations stay reachable in strict mode.
    check_meshed_call(&mesh).unwrap();
}

#[test]
fn connections_to_the_proxy_itself_are_refused_not_looped() {
    let options = MeshOptions::new()
        .meshed_pod(1, "client", "demo", "client")
        .meshed_pod(2, "greeter", "demo", "greeter");
    let mut mesh = Mesh::start(options).expect("starting the mesh");
    greeter::start_server(mesh.topology_mut(), "greeter", GREETER_PORT).unwrap();

    let own_outbound_port = SocketAddr::from((pod_gateway(1), 15001));
    for _ in 0..3 {
        expect_reset(&mesh, "client", own_outbound_port).unwrap();
    }
    let looped = failed_connections(&mesh, "loop").unwrap();
    assert_eq!(looped, 3.0, "each looping connection counted once");
    check_meshed_call(&mesh).unwrap();
}

/// Node 1's count of outbound connections refused for `reason`.
fn failed_connections(mesh: &Mesh, reason: &str) -> Result<f64> {
    let labels = [("direction", "outbound"), ("reason", reason)];
    metrics::value(
        &mesh.metrics(1)?,
        "edgeward_connections_failed_total",
        &labels,
    )
}

fn check_meshed_call(mesh: &Mesh) -> Result<()> {
    let call = ClientCall::new(
        mesh.pod_addr("greeter", GREETER_PORT)?,
        &greeter::marker("ok"),
    );
    let run = greeter::run_client(mesh.topology(), "client", &call)?;
    run.check(&call, "greeter")
        .context("meshed call after the refusals")?;
    ensure!(
        mesh.metrics(1)?
            .contains("edgeward_connections_opened_total"),
        "no connection counted"
    );
    Ok(())
}
