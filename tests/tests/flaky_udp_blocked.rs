//! UDP blocked between the nodes (udp/15008 dropped both ways, as by a firewall that passes
//! only TCP): with the default transport choice, calls keep succeeding over the TCP tunnel
//! (only the very first attempt may fail while QUIC is found not to work), and the metrics and
//! access log say so. Once UDP passes again, the proxy probes QUIC again and a later tunnel
//! uses QUIC, within the re-probe interval.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use edgeward_lab::calls::{ClientRun, RunSpec};
use edgeward_lab::capture::TUNNEL_PORT;
use edgeward_lab::greeter::{self, CLIENT_POD, GREETER_PORT, SERVER_POD};
use edgeward_lab::impair::WanLink;
use edgeward_lab::peer::{self, access_transport};
use edgeward_lab::{Mesh, MeshOptions, Transport};

/// Deadline of the first call, which may fail while QUIC is probed.
const FIRST_CALL: Duration = Duration::from_secs(10);
/// Calls made while UDP is blocked, at `RATE` a second; every one must succeed.
const CALLS: u32 = 40;
const RATE: f64 = 10.0;
/// How long QUIC waits after a fallback before node 1 probes it again; shorter than the
/// default (60 s) so the test does not idle for a minute, the same mechanism all the same.
const REPROBE: &str = "15s";
/// How long after unblocking a new tunnel may take to use QUIC: the re-probe interval plus a
/// margin.
const QUIC_RETURN: Duration = Duration::from_secs(25);
/// Gap between the calls that look for QUIC's return: short, since the proxy may probe QUIC
/// only when a connection asks for the peer, and use it from the next connection on.
const POLL: Duration = Duration::from_secs(2);
/// How long an access-log line may take to appear after its connection closed.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn blocked_udp_falls_back_to_tcp_and_quic_comes_back() {
    let options = MeshOptions::new().transport(Transport::Auto).proxy_arg(
        1,
        "--quic-reprobe-interval",
        REPROBE,
    );
    let mesh = greeter::mesh_with_greeter(options).expect("starting the mesh");
    let wan = WanLink::install(mesh.topology()).unwrap();
    let block = wan.block_udp(TUNNEL_PORT).unwrap();
    calls_go_over_tcp(&mesh).unwrap();
    let dropped = block.lift().unwrap();
    // Dropped QUIC packets show the proxy did try QUIC before falling back.
    assert!(
        dropped > 0,
        "no QUIC packet was dropped: the proxy never tried QUIC"
    );
    quic_comes_back(&mesh).unwrap();
}

fn calls_go_over_tcp(mesh: &Mesh) -> Result<()> {
    let target = mesh.pod_addr(SERVER_POD, GREETER_PORT)?;
    let topo = mesh.topology();
    let first = RunSpec::load(target, 1, 1.0).deadline(FIRST_CALL);
    let first = ClientRun::start(topo, CLIENT_POD, first)?.finish()?;
    let outcome = first
        .calls()
        .first()
        .map(|c| (c.status.clone(), c.latency_ms));
    eprintln!("UDP blocked: the first call ended {outcome:?} (status, ms)");

    let seen = mesh.access_log(1)?.len();
    let load = RunSpec::load(target, CALLS, RATE);
    let load = ClientRun::start(topo, CLIENT_POD, load)?.finish()?;
    load.check_calls_ok(CALLS as usize)
        .context("calls while UDP is blocked")?;
    peer::expect_transport(mesh, Transport::Tcp)?;
    let server = mesh.spiffe_id(SERVER_POD)?;
    peer::expect_access_transport(mesh, 1, seen, &server, Transport::Tcp, LOG_TIMEOUT)?;
    Ok(())
}

fn quic_comes_back(mesh: &Mesh) -> Result<()> {
    let unblocked = Instant::now();
    let server = mesh.spiffe_id(SERVER_POD)?;
    loop {
        // Every call must work while the transport changes back, not only the last one.
        let seen = mesh.access_log(1)?.len();
        greeter::check_call(mesh).context("a call after UDP was unblocked")?;
        let line = peer::wait_new_access_line(mesh, 1, seen, &server, LOG_TIMEOUT)?;
        if access_transport(&line) == Some(Transport::Quic.as_str()) {
            break;
        }
        if unblocked.elapsed() >= QUIC_RETURN {
            bail!("no tunnel used QUIC within {QUIC_RETURN:?} of unblocking UDP: {line}");
        }
        std::thread::sleep(POLL);
    }
    peer::expect_transport(mesh, Transport::Quic)?;
    let took = unblocked.elapsed().as_secs_f64();
    eprintln!("QUIC came back {took:.1} s after UDP was unblocked");
    Ok(())
}
