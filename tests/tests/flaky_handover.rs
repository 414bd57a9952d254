//! Handover: during a server stream from a pod on node 2 to a pod on node 1, node 1's wan
//! address changes as on a Wi-Fi to 5G handover (a new address added, the old one removed,
//! both nodes' routes updated). Over QUIC the stream completes with every message and the
//! tunnel migrates without a reconnect. Over TCP the documented behaviour happens: the proxy
//! closes the tunnel whose local address went away, so the call fails fast (well before the
//! dead-peer bound), and the next call succeeds promptly over a new tunnel.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use edgeward_lab::calls::{self, ClientRun, Event, RunSpec};
use edgeward_lab::greeter::{self, CLIENT_POD, GREETER_PORT, SERVER_POD};
use edgeward_lab::impair::{Handover, HANDOVER_ADDR};
use edgeward_lab::peer::{self, PeerStats, DEAD_PEER_BOUND};
use edgeward_lab::{Mesh, MeshOptions, Transport};

/// The stream over QUIC: its length and the gap between messages.
const STREAM: Duration = Duration::from_secs(30);
const INTERVAL: Duration = Duration::from_millis(100);
/// Messages that must arrive before the handover, so it hits a flowing stream.
const BEFORE_HANDOVER: usize = 50;
/// Over TCP, the longest a call may take to fail after the handover: well before the
/// dead-peer bound, since the proxy sees its address go rather than waiting for silence.
const TCP_FAIL_FAST: Duration = Duration::from_secs(10);
/// A stream far longer than the test, so that only an error can end it.
const ENDLESS: Duration = Duration::from_secs(120);
/// Deadline of each call after the handover over TCP: "promptly".
const NEXT_CALL: Duration = Duration::from_secs(5);
/// Calls made after the handover over TCP, at `NEXT_CALLS_RATE` a second.
const NEXT_CALLS: u32 = 5;
const NEXT_CALLS_RATE: f64 = 5.0;

#[test]
fn quic_stream_moves_with_node_one_and_loses_nothing() {
    let options = MeshOptions::new().transport(Transport::Quic);
    let mesh = greeter::mesh_with_greeter(options).expect("starting the mesh");
    greeter::check_call(&mesh).unwrap();
    quic_handover(&mesh).unwrap();
}

#[test]
fn tcp_call_fails_fast_on_handover_and_the_next_one_works() {
    let mesh = greeter::mesh_with_greeter(MeshOptions::new().tcp_tunnel()).expect("the mesh");
    greeter::check_call(&mesh).unwrap();
    peer::expect_transport(&mesh, Transport::Tcp).unwrap();
    tcp_handover(&mesh).unwrap();
}

fn quic_handover(mesh: &Mesh) -> Result<()> {
    let target = mesh.pod_addr(SERVER_POD, GREETER_PORT)?;
    let spec = RunSpec::stream(target, STREAM, INTERVAL);
    let mut stream = ClientRun::start(mesh.topology(), CLIENT_POD, spec)?;
    stream.wait_messages(BEFORE_HANDOVER, STREAM)?;
    let before = (PeerStats::read(mesh, 1, 2)?, PeerStats::read(mesh, 2, 1)?);

    let handover = Handover::node1(mesh.topology(), HANDOVER_ADDR)?;
    let moved = calls::now();
    let report = stream.finish()?;
    let after = (PeerStats::read(mesh, 1, 2)?, PeerStats::read(mesh, 2, 1)?);

    report
        .stream()?
        .check_complete()
        .context("the stream across the handover")?;
    peer::expect_transport(mesh, Transport::Quic)?;
    ensure!(
        after.0.reconnects == before.0.reconnects && after.1.reconnects == before.1.reconnects,
        "the tunnel reconnected: reconnects went from {} to {} on node-1, {} to {} on node-2",
        before.0.reconnects,
        after.0.reconnects,
        before.1.reconnects,
        after.1.reconnects
    );
    ensure!(
        after.0.migrations > before.0.migrations,
        "node-1 counted no migration of its tunnel to node-2 (still {})",
        after.0.migrations
    );
    eprintln!(
        "handover to {}: longest gap between messages {:.2} s; migrations node-1 {} -> {}, \
         node-2 {} -> {}",
        handover.new_addr(),
        longest_gap_after(&report.messages(), moved),
        before.0.migrations,
        after.0.migrations,
        before.1.migrations,
        after.1.migrations
    );
    Ok(())
}

/// The longest time between two messages that arrived after `since` (or between `since` and
/// the first of them).
fn longest_gap_after(messages: &[(u32, f64)], since: f64) -> f64 {
    let mut previous = since;
    let mut longest: f64 = 0.0;
    for &(_, t) in messages.iter().filter(|m| m.1 > since) {
        longest = longest.max(t - previous);
        previous = t;
    }
    longest
}

fn tcp_handover(mesh: &Mesh) -> Result<()> {
    let target = mesh.pod_addr(SERVER_POD, GREETER_PORT)?;
    let spec = RunSpec::stream(target, ENDLESS, INTERVAL);
    let mut stream = ClientRun::start(mesh.topology(), CLIENT_POD, spec)?;
    stream.wait_messages(BEFORE_HANDOVER, ENDLESS)?;

    let _handover = Handover::node1(mesh.topology(), HANDOVER_ADDR)?;
    let moved = calls::now();
    let limit = DEAD_PEER_BOUND + Duration::from_secs(10);
    let end = stream.wait_for("the stream to fail after the handover", limit, |events| {
        events.iter().find_map(|e| match e {
            Event::StreamEnd(end) => Some(end.clone()),
            _ => None,
        })
    })?;
    let after = end.t - moved;
    ensure!(
        end.status != "OK" && end.status != "DEADLINE_EXCEEDED",
        "the stream ended with {} ({}), not with the mesh's error",
        end.status,
        end.details
    );
    ensure!(
        after <= TCP_FAIL_FAST.as_secs_f64(),
        "the stream failed {after:.1} s after the handover; expected within {TCP_FAIL_FAST:?}"
    );

    let next = RunSpec::load(target, NEXT_CALLS, NEXT_CALLS_RATE).deadline(NEXT_CALL);
    let report = ClientRun::start(mesh.topology(), CLIENT_POD, next)?.finish()?;
    report
        .check_calls_ok(NEXT_CALLS as usize)
        .context("calls after the handover")?;
    peer::expect_transport(mesh, Transport::Tcp)?;
    eprintln!(
        "handover over TCP: the stream saw {} after {after:.1} s",
        end.status
    );
    Ok(())
}
