//! Self-test of the wan impairments on the plain routed network, with no edgeward process:
//! loss drops the share asked for in both directions, of a node's own packets and of the pod
//! packets it forwards; an outage stops everything until lifted; a UDP block stops only UDP
//! on its port; a handover moves node 1 and its routes and back; nothing is left behind.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use edgeward_lab::impair::{Handover, WanLink, CHAIN, HANDOVER_ADDR, TABLE};
use edgeward_lab::topology::wan_addr;
use edgeward_lab::{netns, PodSpec, Topology};

/// Datagrams sent per flow when measuring loss.
const DATAGRAMS: usize = 500;
/// A receiver stops once nothing has come for this long.
const QUIET: Duration = Duration::from_millis(500);
const PORT: u16 = 7100;

fn two_pods() -> Topology {
    let pods = [PodSpec::new(1, "a"), PodSpec::new(2, "c")];
    Topology::build(&pods).expect("building the test network")
}

/// One way across the wan: a sender namespace and a receiving namespace and address.
struct Flow {
    from: String,
    to: String,
    addr: Ipv4Addr,
}

/// The four ways across the wan: node to node and pod to pod, in each direction.
fn flows(topo: &Topology) -> Result<Vec<Flow>> {
    let (a, c) = (topo.pod("a")?, topo.pod("c")?);
    let flow = |from: &str, to: &str, addr| Flow {
        from: from.to_owned(),
        to: to.to_owned(),
        addr,
    };
    Ok(vec![
        flow(topo.node_ns(1), topo.node_ns(2), wan_addr(2)),
        flow(topo.node_ns(2), topo.node_ns(1), wan_addr(1)),
        flow(&a.ns, &c.ns, c.addr),
        flow(&c.ns, &a.ns, a.addr),
    ])
}

/// Sends `count` datagrams along `flow` to `port`; gives how many arrived and the source
/// address the receiver saw.
fn send_udp(flow: &Flow, port: u16, count: usize) -> Result<(usize, Option<Ipv4Addr>)> {
    let to = SocketAddr::from((flow.addr, port));
    // Bound to any address, so that it still listens after a handover took `flow.addr` away.
    let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let receiver = netns::run_in(&flow.to, || Ok(UdpSocket::bind(any)?))?;
    receiver.set_read_timeout(Some(QUIET))?;
    // Read while the datagrams arrive: queued unread, a few hundred fill the socket buffer.
    let reading = std::thread::spawn(move || {
        let (mut received, mut source) = (0, None);
        let mut buf = [0u8; 16];
        while let Ok((_, from)) = receiver.recv_from(&mut buf) {
            received += 1;
            if let SocketAddr::V4(from) = from {
                source = Some(*from.ip());
            }
        }
        (received, source)
    });
    let sender = netns::run_in(&flow.from, || Ok(UdpSocket::bind("0.0.0.0:0")?))?;
    for i in 0..count {
        sender.send_to(&(i as u32).to_be_bytes(), to)?;
        // A short pause now and then keeps the socket buffers far from full.
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(reading.join().expect("the receiving thread panicked"))
}

#[test]
fn loss_drops_its_share_both_ways_on_both_paths() {
    let topo = two_pods();
    let wan = WanLink::install(&topo).unwrap();
    loss_share(&topo, &wan).unwrap();
}

fn loss_share(topo: &Topology, wan: &WanLink) -> Result<()> {
    let loss = wan.loss(0.3)?;
    let mut lost = 0;
    for flow in flows(topo)? {
        let (received, _) = send_udp(&flow, PORT, DATAGRAMS)?;
        lost += DATAGRAMS - received;
        // 70 % of 500 is 350, with a standard deviation of about 10.
        ensure!(
            (300..=400).contains(&received),
            "{} -> {}: {received} of {DATAGRAMS} arrived at 30 % loss",
            flow.from,
            flow.to
        );
    }
    let dropped = loss.lift()?;
    ensure!(
        dropped == lost as u64,
        "the rules counted {dropped} drops, {lost} datagrams went missing"
    );
    for flow in flows(topo)? {
        let (received, _) = send_udp(&flow, PORT, 100)?;
        ensure!(
            received == 100,
            "after lifting the loss {received} of 100 arrived"
        );
    }
    Ok(())
}

#[test]
fn outage_and_udp_block_stop_what_they_should_until_lifted() {
    let topo = two_pods();
    let wan = WanLink::install(&topo).unwrap();
    outage(&topo, &wan).unwrap();
    udp_block(&topo, &wan).unwrap();
}

fn outage(topo: &Topology, wan: &WanLink) -> Result<()> {
    let outage = wan.outage()?;
    for flow in flows(topo)? {
        let (received, _) = send_udp(&flow, PORT, 20)?;
        ensure!(received == 0, "{received} datagrams crossed an outage");
    }
    ensure!(
        outage.lift()? >= 80,
        "the outage counted fewer drops than were sent"
    );
    for flow in flows(topo)? {
        ensure!(
            send_udp(&flow, PORT, 20)?.0 == 20,
            "the link did not come back"
        );
    }
    Ok(())
}

fn udp_block(topo: &Topology, wan: &WanLink) -> Result<()> {
    let block = wan.block_udp(15008)?;
    let node_to_node = &flows(topo)?[0];
    ensure!(
        send_udp(node_to_node, 15008, 20)?.0 == 0,
        "udp/15008 crossed the block"
    );
    ensure!(
        send_udp(node_to_node, 15009, 20)?.0 == 20,
        "the block stopped udp/15009"
    );
    // TCP on the same port is untouched: the TCP tunnel is the fallback.
    let listen = SocketAddr::from((wan_addr(2), 15008));
    let listener = netns::run_in(topo.node_ns(2), || Ok(TcpListener::bind(listen)?))?;
    netns::run_in(topo.node_ns(1), || {
        Ok(TcpStream::connect_timeout(&listen, Duration::from_secs(2))?)
    })
    .context("tcp/15008 through a UDP block")?;
    drop(listener);
    block.lift()?;
    ensure!(
        send_udp(node_to_node, 15008, 20)?.0 == 20,
        "udp/15008 still blocked"
    );
    Ok(())
}

#[test]
fn handover_moves_node_one_and_its_routes_and_back() {
    let topo = two_pods();
    handover(&topo).unwrap();
}

fn handover(topo: &Topology) -> Result<()> {
    let all = flows(topo)?;
    let moved = Handover::node1(topo, HANDOVER_ADDR)?;
    let (received, source) = send_udp(&all[0], PORT, 10)?;
    ensure!(
        received == 10,
        "node 1 lost its route to node 2: {received} of 10 arrived"
    );
    ensure!(source == Some(HANDOVER_ADDR), "node 1 sent from {source:?}");
    ensure!(
        send_udp(&all[1], PORT, 10)?.0 == 0,
        "node 1's old address still answers"
    );
    for flow in &all[2..] {
        ensure!(
            send_udp(flow, PORT, 10)?.0 == 10,
            "pods lost their way after the handover"
        );
    }

    moved.undo()?;
    let (received, source) = send_udp(&all[0], PORT, 10)?;
    ensure!(
        received == 10 && source == Some(wan_addr(1)),
        "the handover was not undone"
    );
    ensure!(
        send_udp(&all[3], PORT, 10)?.0 == 10,
        "node 2's route did not come back"
    );
    Ok(())
}

#[test]
fn dropping_the_guards_leaves_nothing_behind() {
    let topo = two_pods();
    let started = Instant::now();
    {
        let wan = WanLink::install(&topo).unwrap();
        let _loss = wan.loss(0.5).unwrap();
        let _outage = wan.outage().unwrap();
        let _moved = Handover::node1(&topo, HANDOVER_ADDR).unwrap();
    }
    for k in 1..=2 {
        let args = ["-w", "-t", TABLE, "-S"];
        let rules = netns::exec_ok(topo.node_ns(k), "iptables", &args).unwrap();
        assert!(!rules.contains(CHAIN), "node {k} kept lab rules:\n{rules}");
        let features = netns::exec_ok(topo.node_ns(k), "ethtool", &["-k", "wan"]).unwrap();
        assert!(
            features.contains("tcp-segmentation-offload: on"),
            "node {k}'s offloads were not restored:\n{features}"
        );
    }
    let addrs = netns::exec_ok(topo.node_ns(1), "ip", &["-brief", "addr", "show", "wan"]).unwrap();
    assert!(addrs.contains(&format!("{}/24", wan_addr(1))), "{addrs}");
    assert!(!addrs.contains(&HANDOVER_ADDR.to_string()), "{addrs}");
    assert!(started.elapsed() < Duration::from_secs(30));
}
