//! Pooled tunnel connections that nothing uses are closed, and only those. Node 1's proxy runs
//! with `--tunnel-idle-timeout 4s`. A grpcio channel that makes a call, stays silent for three
//! times that and calls again keeps its tunnel the whole time (a quiet stream is a stream);
//! once its connection has closed, the tunnel is closed between the idle limit and one sweep
//! interval after it, counted as `idle`; the next connection opens a fresh tunnel at once and
//! does not count as a reconnect. Over each transport.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use edgeward_lab::calls::{ClientRun, Event, RunSpec};
use edgeward_lab::greeter::{self, CLIENT_POD, GREETER_PORT, SERVER_POD};
use edgeward_lab::peer::{self, PeerStats, PoolStats};
use edgeward_lab::{rpc, wait, Mesh, MeshOptions, Transport};

/// Node 1's `--tunnel-idle-timeout`.
const IDLE: Duration = Duration::from_secs(4);
const IDLE_FLAG: &str = "4s";
/// The proxy sweeps every quarter of the idle limit, but at most once a second.
const SWEEP: Duration = Duration::from_secs(1);
/// The silence between the grpcio client's two calls: three idle limits.
const SILENCE: Duration = Duration::from_secs(12);
/// How long the first call may take, client start-up included.
const FIRST_CALL: Duration = Duration::from_secs(40);
/// Slack for the client's exit to be seen and for metrics to be sampled (2 s).
const SLACK: Duration = Duration::from_secs(2);
/// How long an access-log line may take to appear after its connection closed.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the test reads node 1's metrics.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

#[test]
fn unused_quic_tunnels_close_after_the_idle_limit_and_quiet_ones_stay() {
    idle_tunnels(Transport::Quic).unwrap();
}

#[test]
fn unused_tcp_tunnels_close_after_the_idle_limit_and_quiet_ones_stay() {
    idle_tunnels(Transport::Tcp).unwrap();
}

fn idle_tunnels(transport: Transport) -> Result<()> {
    let options =
        MeshOptions::new()
            .transport(transport)
            .proxy_arg(1, "--tunnel-idle-timeout", IDLE_FLAG);
    let mesh = greeter::mesh_with_greeter(options)?;
    let target = mesh.pod_addr(SERVER_POD, GREETER_PORT)?;
    let server = mesh.spiffe_id(SERVER_POD)?;
    // Starting the mesh made calls: wait until their tunnel has gone, so the count starts at 0.
    let start = wait_pool(&mesh, "the start-up tunnels to close", IDLE * 3, |s| {
        s.open == 0.0
    })?;
    let peer_before = PeerStats::read(&mesh, 1, 2)?;
    let seen = mesh.access_log(1)?.len();

    let quiet_until = quiet_connection_keeps_its_tunnel(&mesh, transport, start)?;
    let closed = wait_pool(
        &mesh,
        "the unused tunnel to close",
        IDLE + SWEEP + SLACK,
        |s| s.open == 0.0,
    )?;
    let after = quiet_until.elapsed();
    eprintln!(
        "{}: tunnel closed {after:?} after its last connection",
        transport.as_str()
    );
    ensure!(
        after + SLACK >= IDLE,
        "the tunnel closed {after:?} after its last stream ended, before the {IDLE:?} limit"
    );
    ensure!(
        closed.retired_idle == start.retired_idle + 1.0 && closed.retired_renewed == 0.0,
        "closing one idle tunnel counted {closed:?} (before: {start:?})"
    );
    peer::expect_one_connection(&mesh, seen, &server, transport, LOG_TIMEOUT)
        .context("the grpcio channel's two calls, across the silence")?;

    let client_ns = mesh.pod(CLIENT_POD)?.ns.clone();
    rpc::call_ok(&client_ns, target).context("a call after the idle tunnel closed")?;
    let reopened = PoolStats::read(&mesh, 1)?;
    ensure!(reopened.open == 1.0, "after a new call: {reopened:?}");
    let peer_after = PeerStats::read(&mesh, 1, 2)?;
    ensure!(
        peer_after.reconnects == peer_before.reconnects,
        "an idle close was counted as a reconnect: {peer_before:?} -> {peer_after:?}"
    );
    peer::expect_transport(&mesh, transport)
}

/// A grpcio channel calls, stays silent for `SILENCE` and calls again; its tunnel stays open
/// throughout. Gives the moment its run ended.
fn quiet_connection_keeps_its_tunnel(
    mesh: &Mesh,
    transport: Transport,
    start: PoolStats,
) -> Result<Instant> {
    let target = mesh.pod_addr(SERVER_POD, GREETER_PORT)?;
    let mut run = ClientRun::start(mesh.topology(), CLIENT_POD, RunSpec::idle(target, SILENCE))?;
    run.wait_for("the first call", FIRST_CALL, |events| {
        events.iter().find(|e| matches!(e, Event::Call(_))).cloned()
    })?;
    // Sample through the silence, short of its end so the second call is not in the way.
    let sample_until = Instant::now() + SILENCE - SLACK;
    let mut samples = 0;
    while Instant::now() < sample_until {
        let now = PoolStats::read(mesh, 1)?;
        ensure!(
            now.open == 1.0 && now.retired_idle == start.retired_idle,
            "{}: a tunnel carrying a quiet connection was closed: {now:?}",
            transport.as_str()
        );
        samples += 1;
        std::thread::sleep(SAMPLE_EVERY);
    }
    let report = run.finish()?;
    let ended = Instant::now();
    report
        .check_calls_ok(2)
        .context("a call, a silence of three idle limits, a call")?;
    ensure!(samples >= 20, "only {samples} samples during the silence");
    Ok(ended)
}

/// Waits until node 1's pool satisfies `done`; gives the reading that did.
fn wait_pool(
    mesh: &Mesh,
    what: &str,
    timeout: Duration,
    done: impl Fn(&PoolStats) -> bool,
) -> Result<PoolStats> {
    wait::until(what, timeout, || {
        let stats = PoolStats::read(mesh, 1)?;
        std::thread::sleep(SAMPLE_EVERY);
        Ok(done(&stats).then_some(stats))
    })
}
