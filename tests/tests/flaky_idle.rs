//! Mismatched QUIC idle timeouts: one node offers 10 s, the other 60 s, so the connection
//! runs on the smaller. A gRPC channel that makes a call, stays silent for a minute and makes
//! another call must find its connection alive: the keep-alives follow the negotiated
//! timeout, not the node's own. Tried both ways round, since the node that opens the tunnel
//! and the node that accepts it may each get it wrong.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use edgeward_lab::calls::{ClientRun, Event, RunSpec};
use edgeward_lab::greeter::{self, CLIENT_POD, GREETER_PORT, SERVER_POD};
use edgeward_lab::peer::{self, PeerStats};
use edgeward_lab::{Mesh, MeshOptions, Transport};

/// The silence between the two calls.
const SILENCE: Duration = Duration::from_secs(60);
/// The two idle timeouts.
const SHORT: &str = "10s";
const LONG: &str = "60s";
/// How long the first call may take to end, client start-up included.
const FIRST_CALL: Duration = Duration::from_secs(40);
/// How long an access-log line may take to appear after its connection closed.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn silent_minute_with_the_short_timeout_on_the_client_node() {
    silent_minute(SHORT, LONG).unwrap();
}

#[test]
fn silent_minute_with_the_short_timeout_on_the_server_node() {
    silent_minute(LONG, SHORT).unwrap();
}

/// Node 1 (which opens the tunnel) offers `node1`, node 2 offers `node2`.
fn silent_minute(node1: &str, node2: &str) -> Result<()> {
    let options = MeshOptions::new()
        .transport(Transport::Quic)
        .proxy_arg(1, "--quic-idle-timeout", node1)
        .proxy_arg(2, "--quic-idle-timeout", node2);
    let mesh = greeter::mesh_with_greeter(options)?;
    let target = mesh.pod_addr(SERVER_POD, GREETER_PORT)?;
    let seen = mesh.access_log(1)?.len();

    let mut run = ClientRun::start(mesh.topology(), CLIENT_POD, RunSpec::idle(target, SILENCE))?;
    run.wait_for("the first call", FIRST_CALL, |events| {
        events.iter().find(|e| matches!(e, Event::Call(_))).cloned()
    })?;
    let before = stats(&mesh)?;
    let report = run.finish()?;
    let after = stats(&mesh)?;

    report
        .check_calls_ok(2)
        .context("a call, a silent minute, a call")?;
    peer::expect_transport(&mesh, Transport::Quic)?;
    for (node, (b, a)) in [(1, (before.0, after.0)), (2, (before.1, after.1))] {
        ensure!(
            a.reconnects == b.reconnects && a.keepalive_timeouts == b.keepalive_timeouts,
            "node-{node}'s tunnel did not survive the silence: reconnects {} -> {}, keepalive \
             timeouts {} -> {}",
            b.reconnects,
            a.reconnects,
            b.keepalive_timeouts,
            a.keepalive_timeouts
        );
    }
    let server = mesh.spiffe_id(SERVER_POD)?;
    peer::expect_one_connection(&mesh, seen, &server, Transport::Quic, LOG_TIMEOUT)
}

fn stats(mesh: &Mesh) -> Result<(PeerStats, PeerStats)> {
    Ok((PeerStats::read(mesh, 1, 2)?, PeerStats::read(mesh, 2, 1)?))
}
