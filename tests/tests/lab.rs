//! Self-test of the lab: builds the test network with no edgeward process in it and checks
//! routing (across nodes and through the node on one node), the setns helper, the capture
//! and that nothing is left behind, even after a panic.

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use edgeward_lab::greeter::{self, ClientCall, GREETER_PORT, SAY_HELLO, STREAM_GREETINGS};
use edgeward_lab::{netns, transfer, Capture, PodSpec, Topology};

/// Pods a and b on node 1, c on node 2.
fn three_pods() -> Topology {
    let pods = [
        PodSpec::new(1, "a"),
        PodSpec::new(1, "b"),
        PodSpec::new(2, "c"),
    ];
    Topology::build(&pods).expect("building the test network")
}

#[test]
fn grpc_crosses_the_plain_routed_network() {
    let mut topo = three_pods();
    greeter::start_server(&mut topo, "c", GREETER_PORT).unwrap();
    cross_node_call_is_plaintext_on_the_wan(&topo).unwrap();
}

fn cross_node_call_is_plaintext_on_the_wan(topo: &Topology) -> Result<()> {
    let target = SocketAddrV4::new(topo.pod("c")?.addr, GREETER_PORT);
    let call = ClientCall::new(target, &greeter::marker("cross"));
    let capture = Capture::start(topo, 1)?;
    let run = greeter::run_client(topo, "a", &call)?;
    let seen = capture.finish()?;
    run.check(&call, "c")?;

    // Without a mesh the wan link carries the call in the clear: this is what the e2e
    // capture tests prove no longer happens once the proxies are in the path.
    ensure!(
        seen.contains(call.name.as_bytes()),
        "the payload marker was not captured"
    );
    ensure!(
        seen.tcp_packets(GREETER_PORT) > 0,
        "no packets on tcp/{GREETER_PORT} captured"
    );
    ensure!(
        seen.tunnel_packets() == 0,
        "tunnel packets without any proxy running?"
    );
    for method in [SAY_HELLO, STREAM_GREETINGS] {
        ensure!(
            seen.contains(method.as_bytes()),
            "the method {method} was not captured"
        );
    }
    Ok(())
}

#[test]
fn same_node_traffic_is_routed_through_the_node() {
    let mut topo = three_pods();
    greeter::start_server(&mut topo, "a", GREETER_PORT).unwrap();
    same_node_call_passes_node_prerouting(&topo).unwrap();
}

fn same_node_call_passes_node_prerouting(topo: &Topology) -> Result<()> {
    let (a, b) = (topo.pod("a")?, topo.pod("b")?);
    let node = topo.node_ns(1);
    // A rule with no target only counts: it shows the node's PREROUTING saw the pod traffic.
    // The mangle table sees every packet; a nat chain would see nothing here, since without a
    // NAT target in the namespace the kernel does not track connections there.
    let (src, dst, port) = (
        b.addr.to_string(),
        a.addr.to_string(),
        GREETER_PORT.to_string(),
    );
    let append = [
        "-t",
        "mangle",
        "-A",
        "PREROUTING",
        "-s",
        &src,
        "-d",
        &dst,
        "-p",
        "tcp",
    ];
    netns::exec_ok(
        node,
        "iptables",
        &[&append[..], &["--dport", &port]].concat(),
    )?;

    let call = ClientCall::new(
        SocketAddrV4::new(a.addr, GREETER_PORT),
        &greeter::marker("local"),
    );
    greeter::run_client(topo, "b", &call)?.check(&call, "a")?;

    let listing = netns::exec_ok(
        node,
        "iptables",
        &["-t", "mangle", "-L", "PREROUTING", "-v", "-x", "-n"],
    )?;
    let packets = counted_packets(&listing, &a.addr.to_string()).context(listing.clone())?;
    ensure!(
        packets > 0,
        "node PREROUTING saw no pod-to-pod packet:\n{listing}"
    );
    Ok(())
}

/// The packet counter of the listing line whose destination is `dst`.
fn counted_packets(listing: &str, dst: &str) -> Option<u64> {
    let line = listing
        .lines()
        .find(|l| l.split_whitespace().any(|w| w == dst))?;
    line.split_whitespace().next()?.parse().ok()
}

#[test]
fn redirect_in_the_node_sees_pod_traffic_with_its_original_destination() {
    // What the proxy's capture relies on: a nat REDIRECT in the node namespace catches pod
    // connections, across nodes and within one, and SO_ORIGINAL_DST still names the target.
    let topo = three_pods();
    redirect_keeps_original_destination(&topo).unwrap();
}

fn redirect_keeps_original_destination(topo: &Topology) -> Result<()> {
    let node = topo.node_ns(1);
    let rule = [
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-s",
        "198.18.1.0/24",
        "-p",
        "tcp",
    ];
    let redirect = ["-j", "REDIRECT", "--to-ports", "15001"];
    netns::exec_ok(node, "iptables", &[&rule[..], &redirect[..]].concat())?;
    let listener = netns::run_in(node, || Ok(TcpListener::bind("0.0.0.0:15001")?))?;

    for target in ["c", "b"] {
        let original = SocketAddrV4::new(topo.pod(target)?.addr, GREETER_PORT);
        let _client = netns::run_in(&topo.pod("a")?.ns, || {
            Ok(TcpStream::connect_timeout(
                &original.into(),
                Duration::from_secs(5),
            )?)
        })?;
        let (accepted, _) = listener.accept()?;
        let seen = original_destination(&accepted)?;
        ensure!(
            seen == original,
            "redirected to pod {target}: original dst {seen}"
        );
    }
    Ok(())
}

fn original_destination(stream: &TcpStream) -> Result<SocketAddrV4> {
    let raw = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::OriginalDst)?;
    let ip = std::net::Ipv4Addr::from(u32::from_be(raw.sin_addr.s_addr));
    Ok(SocketAddrV4::new(ip, u16::from_be(raw.sin_port)))
}

#[test]
fn nodes_forward_and_pods_route_via_their_node() {
    let topo = three_pods();
    assert_eq!(
        netns::read_sysctl(topo.node_ns(1), "net.ipv4.ip_forward").unwrap(),
        "1"
    );
    assert_eq!(
        netns::read_sysctl(topo.node_ns(2), "net.ipv4.ip_forward").unwrap(),
        "1"
    );
    let pod = topo.pod("c").unwrap();
    assert_eq!(
        netns::read_sysctl(&pod.ns, "net.ipv4.ip_forward").unwrap(),
        "0"
    );
    let routes = netns::exec_ok(&pod.ns, "ip", &["route"]).unwrap();
    assert!(
        routes.contains("default via 198.18.2.1 dev eth0 onlink"),
        "{routes}"
    );
    // The control namespace reaches both nodes on their own links.
    let links = netns::exec_ok(topo.ctl_ns(), "ip", &["-brief", "addr"]).unwrap();
    assert!(
        links.contains("198.19.1.1/24") && links.contains("198.19.2.1/24"),
        "{links}"
    );
}

#[test]
fn sockets_made_in_namespaces_work_from_any_thread() {
    let topo = three_pods();
    echo_across_nodes(&topo).unwrap();
}

fn echo_across_nodes(topo: &Topology) -> Result<()> {
    let (a, c) = (topo.pod("a")?, topo.pod("c")?);
    let server_addr = SocketAddr::from((c.addr, 7000));
    let listener = netns::run_in(&c.ns, || Ok(TcpListener::bind(server_addr)?))?;
    let server = std::thread::spawn(move || -> Result<SocketAddr> {
        let (mut conn, peer) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut request = Vec::new();
        conn.read_to_end(&mut request)?;
        conn.write_all(&request)?;
        Ok(peer)
    });

    let mut client = netns::run_in(&a.ns, || {
        Ok(TcpStream::connect_timeout(
            &server_addr,
            Duration::from_secs(5),
        )?)
    })?;
    let payload: Vec<u8> = (0..1 << 20).map(|_| rand::random::<u8>()).collect();
    client.set_read_timeout(Some(Duration::from_secs(10)))?;
    client.write_all(&payload)?;
    client.shutdown(std::net::Shutdown::Write)?;
    let mut echoed = Vec::new();
    client.read_to_end(&mut echoed)?;

    let peer = server.join().expect("server thread")?;
    ensure!(
        echoed == payload,
        "echo differs ({} of {} bytes)",
        echoed.len(),
        payload.len()
    );
    ensure!(
        peer.ip() == a.addr,
        "server saw {peer}, not pod a: the network must not NAT"
    );
    Ok(())
}

#[test]
fn transfer_checks_hold_on_the_plain_network() {
    // The checks tests/bytes.rs runs through the mesh, run here without it: they must pass on
    // a plain kernel path, so a failure through the mesh points at the mesh.
    let topo = three_pods();
    transfer::bulk_both_ways(transfer::connect(&topo, "a", "c").unwrap()).unwrap();
    transfer::half_close(transfer::connect(&topo, "a", "c").unwrap()).unwrap();
    transfer::reset(transfer::connect(&topo, "a", "c").unwrap()).unwrap();
}

#[test]
fn drop_removes_namespaces_and_processes() {
    let mut topo = Topology::build(&[PodSpec::new(2, "sleeper")]).unwrap();
    let names = topo.namespace_names();
    assert_eq!(names.len(), 4, "ctl, two nodes and one pod: {names:?}");
    assert!(names.iter().all(|n| netns::exists(n)));
    let ns = topo.pod("sleeper").unwrap().ns.clone();
    let launch = edgeward_lab::procs::Launch::new(&ns, "sleeper", "sleep").arg("600");
    let pid = topo.spawn(&launch).unwrap().pid();

    drop(topo);
    let left: Vec<&String> = names.iter().filter(|n| netns::exists(n)).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "sleep {pid} survived"
    );
}

#[test]
fn a_panicking_test_still_cleans_up() {
    let made = std::sync::Mutex::new((Vec::new(), std::path::PathBuf::new()));
    let outcome = std::panic::catch_unwind(|| {
        let topo = Topology::build(&[PodSpec::new(1, "doomed")]).unwrap();
        *made.lock().unwrap() = (topo.namespace_names(), topo.dir().to_path_buf());
        panic!("deliberate panic to test clean-up");
    });
    assert!(outcome.is_err());
    let (names, dir) = made.into_inner().unwrap();
    // A failed test's files are kept for inspection; this failure was staged, so tidy up.
    assert!(dir.is_dir(), "the files of a failed test should be kept");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!names.is_empty());
    let left: Vec<&String> = names.iter().filter(|n| netns::exists(n)).collect();
    assert!(
        left.is_empty(),
        "namespaces left behind after a panic: {left:?}"
    );
}
