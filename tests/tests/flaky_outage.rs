//! Outages of the wan link: a 10-second outage in the middle of a server stream over QUIC,
//! which the stream rides out, every message arriving once and in order; and an outage longer
//! than the dead-peer bound, which the application must see as an error within that bound
//! instead of hanging, over QUIC and over TCP. After that outage, calls work again.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use edgeward_lab::calls::{self, ClientRun, Event, RunSpec};
use edgeward_lab::greeter::{self, CLIENT_POD, GREETER_PORT, SERVER_POD};
use edgeward_lab::impair::WanLink;
use edgeward_lab::peer::{self, PeerStats, DEAD_PEER_BOUND};
use edgeward_lab::{wait, Mesh, MeshOptions, Transport};

/// The outage a QUIC stream must ride out.
const SHORT_OUTAGE: Duration = Duration::from_secs(10);
/// The stream that rides it out: its length and the gap between messages.
const STREAM: Duration = Duration::from_secs(30);
const INTERVAL: Duration = Duration::from_millis(100);
/// Messages that must arrive before the link goes dark, so the outage hits a flowing stream.
const BEFORE_OUTAGE: usize = 50;
/// Time for the error to travel from the proxy to the application (a local TCP reset) and to
/// be reported: the bound is the proxy's, the application sees it a little later.
const GRACE: Duration = Duration::from_secs(2);
/// A stream far longer than anything here, so that only an error can end it.
const ENDLESS: Duration = Duration::from_secs(120);
/// How long calls may take to work again once a long outage is over.
const RECOVERY: Duration = Duration::from_secs(30);

#[test]
fn quic_rides_out_a_short_outage_and_reports_a_long_one() {
    let options = MeshOptions::new().transport(Transport::Quic);
    let mesh = greeter::mesh_with_greeter(options).expect("starting the mesh");
    let wan = WanLink::install(mesh.topology()).unwrap();
    stream_survives_outage(&mesh, &wan).unwrap();
    peer::expect_transport(&mesh, Transport::Quic).unwrap();
    long_outage_is_reported_within_the_bound(&mesh, &wan).unwrap();
}

#[test]
fn tcp_reports_a_long_outage_within_the_bound() {
    let mesh = greeter::mesh_with_greeter(MeshOptions::new().tcp_tunnel()).expect("the mesh");
    let wan = WanLink::install(mesh.topology()).unwrap();
    greeter::check_call(&mesh).unwrap();
    peer::expect_transport(&mesh, Transport::Tcp).unwrap();
    long_outage_is_reported_within_the_bound(&mesh, &wan).unwrap();
}

fn stream_survives_outage(mesh: &Mesh, wan: &WanLink) -> Result<()> {
    let target = mesh.pod_addr(SERVER_POD, GREETER_PORT)?;
    let spec = RunSpec::stream(target, STREAM, INTERVAL);
    let mut stream = ClientRun::start(mesh.topology(), CLIENT_POD, spec)?;
    stream.wait_messages(BEFORE_OUTAGE, STREAM)?;

    let outage = wan.outage()?;
    std::thread::sleep(SHORT_OUTAGE);
    let dropped = outage.lift()?;
    let lifted = calls::now();

    let report = stream.finish()?;
    report
        .stream()?
        .check_complete()
        .with_context(|| format!("after a {SHORT_OUTAGE:?} outage ({dropped} packets dropped)"))?;
    let resumed = report.messages().iter().map(|m| m.1).find(|&t| t > lifted);
    let stats = PeerStats::read(mesh, 1, 2)?;
    eprintln!(
        "{SHORT_OUTAGE:?} outage: {dropped} packets dropped; first message {:.2} s after it \
         ended; node-1 counts {} reconnects, {} keepalive timeouts",
        resumed.map_or(f64::NAN, |t| t - lifted),
        stats.reconnects,
        stats.keepalive_timeouts
    );
    Ok(())
}

fn long_outage_is_reported_within_the_bound(mesh: &Mesh, wan: &WanLink) -> Result<()> {
    let target = mesh.pod_addr(SERVER_POD, GREETER_PORT)?;
    let spec = RunSpec::stream(target, ENDLESS, INTERVAL);
    let mut stream = ClientRun::start(mesh.topology(), CLIENT_POD, spec)?;
    stream.wait_messages(BEFORE_OUTAGE, ENDLESS)?;

    let outage = wan.outage()?;
    let began = calls::now();
    let limit = DEAD_PEER_BOUND + GRACE + Duration::from_secs(10);
    let ended = stream.wait_for("the stream to end during the outage", limit, |events| {
        events.iter().find_map(|e| match e {
            Event::StreamEnd(end) => Some(end.clone()),
            _ => None,
        })
    });
    // Held past the bound whatever happened, so the outage is truly longer than the bound.
    let held = began + (DEAD_PEER_BOUND + GRACE).as_secs_f64() - calls::now();
    std::thread::sleep(Duration::from_secs_f64(held.max(0.0)));
    outage.lift()?;
    let lifted = calls::now();

    let end = ended?;
    let after = end.t - began;
    ensure!(
        end.status != "OK" && end.status != "DEADLINE_EXCEEDED",
        "the stream ended with {} ({}) during the outage, not with the mesh's error",
        end.status,
        end.details
    );
    ensure!(
        after <= (DEAD_PEER_BOUND + GRACE).as_secs_f64(),
        "the application saw {} only {after:.1} s into the outage: the bound is {:?}",
        end.status,
        DEAD_PEER_BOUND
    );
    eprintln!(
        "outage: the application saw {} after {after:.1} s",
        end.status
    );

    wait::until("a call to work after the outage", RECOVERY, || {
        Ok(greeter::check_call(mesh).ok())
    })?;
    eprintln!(
        "calls work again {:.1} s after the outage",
        calls::now() - lifted
    );
    Ok(())
}
