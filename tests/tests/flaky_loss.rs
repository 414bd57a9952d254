//! Random loss on the wan link (iptables statistic match, both directions): with 5 % and then
//! 10 % of the packets between the nodes dropped, 200 unary calls at 20 a second and one
//! 30-second server stream, run at the same time from a pod on node 1 to a pod on node 2,
//! complete with no application error, over the QUIC tunnel and over the TCP tunnel.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use edgeward_lab::calls::{ClientRun, Latencies, RunSpec};
use edgeward_lab::greeter::{self, CLIENT_POD, GREETER_PORT, SERVER_POD};
use edgeward_lab::impair::WanLink;
use edgeward_lab::peer::{self, PeerStats};
use edgeward_lab::{Mesh, MeshOptions, Transport};

/// Loss probabilities, in the order applied.
const LOSS: [f64; 2] = [0.05, 0.10];
/// Unary calls per loss level, and their rate per second.
const CALLS: u32 = 200;
const RATE: f64 = 20.0;
/// The server stream: its length and the gap between messages.
const STREAM: Duration = Duration::from_secs(30);
const INTERVAL: Duration = Duration::from_millis(100);
/// How long an access-log line may take to appear after its connection closed.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn loss_over_quic_costs_no_call() {
    let options = MeshOptions::new().transport(Transport::Quic);
    let mesh = greeter::mesh_with_greeter(options).expect("starting the mesh");
    survive_loss(&mesh, Transport::Quic).unwrap();
}

#[test]
fn loss_over_tcp_costs_no_call() {
    let mesh = greeter::mesh_with_greeter(MeshOptions::new().tcp_tunnel()).expect("the mesh");
    survive_loss(&mesh, Transport::Tcp).unwrap();
}

/// Runs the calls at each loss level and checks they went over `transport`.
fn survive_loss(mesh: &Mesh, transport: Transport) -> Result<()> {
    // The tunnel is made before the loss starts: these tests are about a link that turns bad
    // under a working tunnel, not about handshakes through loss.
    greeter::check_call(mesh).context("the call before any loss")?;
    let wan = WanLink::install(mesh.topology())?;
    for probability in LOSS {
        let percent = probability * 100.0;
        let seen = mesh.access_log(1)?.len();
        calls_under_loss(mesh, &wan, probability)
            .with_context(|| format!("at {percent} % loss"))?;
        peer::expect_transport(mesh, transport)?;
        let server = mesh.spiffe_id(SERVER_POD)?;
        peer::expect_access_transport(mesh, 1, seen, &server, transport, LOG_TIMEOUT)?;
    }
    Ok(())
}

fn calls_under_loss(mesh: &Mesh, wan: &WanLink, probability: f64) -> Result<()> {
    let target = mesh.pod_addr(SERVER_POD, GREETER_PORT)?;
    let topo = mesh.topology();
    let loss = wan.loss(probability)?;
    let stream = ClientRun::start(topo, CLIENT_POD, RunSpec::stream(target, STREAM, INTERVAL))?;
    let load = ClientRun::start(topo, CLIENT_POD, RunSpec::load(target, CALLS, RATE))?;
    let load = load.finish()?;
    let stream = stream.finish()?;
    let dropped = loss.lift()?;

    load.check_calls_ok(CALLS as usize).context("unary calls")?;
    stream.stream()?.check_complete()?;
    // A loss that dropped nothing would prove nothing.
    ensure!(dropped > 0, "the loss rule dropped no packet");
    let figures = Latencies::of(&load.calls()).context("no call succeeded")?;
    let stats = PeerStats::read(mesh, 1, 2)?;
    eprintln!(
        "{:.0} % loss: {dropped} packets dropped; unary p50 {:.1} ms, p99 {:.1} ms, max {:.1} \
         ms; node-1 counts {} lost packets, {} reconnects to node-2",
        probability * 100.0,
        figures.p50,
        figures.p99,
        figures.max,
        stats.lost_packets,
        stats.reconnects
    );
    Ok(())
}
