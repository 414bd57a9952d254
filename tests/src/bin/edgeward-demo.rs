//! The local edgeward demo: two edge nodes and a control plane as network namespaces on this
//! machine, a real gRPC client on node 1 calling a real gRPC server on node 2 through the
//! mesh, and tcpdump on the link between the nodes to show that only ciphertext crosses it.
//!
//! Run it as root through `deploy/local/demo.sh`, which installs and builds what it needs.

use std::process::ExitCode;

use anyhow::{ensure, Result};
use edgeward_lab::capture::TUNNEL_PORT;
use edgeward_lab::greeter::{self, ClientCall, ClientRun, GREETER_PORT, SAY_HELLO};
use edgeward_lab::{netns, topology, Capture, CaptureData, Mesh, MeshOptions};

/// The client pod on node 1 and the server pod on node 2.
const CLIENT: &str = "client";
const SERVER: &str = "greeter";

fn main() -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("edgeward-demo needs root (network namespaces, veth, iptables): run it with");
        eprintln!("  sudo bash deploy/local/demo.sh");
        return ExitCode::FAILURE;
    }
    banner();
    match run() {
        Ok(()) => {
            println!("\nThe demo passed: every call went through mutually authenticated tunnels.");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("\nThe demo FAILED: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn banner() {
    println!("edgeward local demo");
    println!("===================");
    println!("Two edge nodes and a control plane, each a network namespace on this machine.");
    println!("Pod {CLIENT:?} on node-1 calls pod {SERVER:?} on node-2 over gRPC; the node proxies");
    println!("carry the calls through an mTLS tunnel, and tcpdump watches the link between them.");
}

/// Builds the mesh, runs the demo, and always tears everything down before returning.
fn run() -> Result<()> {
    heading(1, "Starting the control plane and both node proxies");
    let options = MeshOptions::new()
        .meshed_pod(1, CLIENT, "demo", "client")
        .meshed_pod(2, SERVER, "demo", "greeter");
    let mut mesh = Mesh::start(options)?;
    describe_mesh(&mesh)?;

    let result = demo(&mut mesh);
    if result.is_err() {
        eprintln!("\nLast lines of every process log:");
        mesh.print_logs();
    }

    heading(6, "Tearing down");
    let names = mesh.topology().namespace_names();
    drop(mesh);
    let left: Vec<&String> = names.iter().filter(|n| netns::exists(n)).collect();
    if left.is_empty() {
        println!(
            "   stopped every process, deleted {} namespaces",
            names.len()
        );
    } else {
        println!("   could not delete namespaces {left:?}");
    }
    result
}

fn demo(mesh: &mut Mesh) -> Result<()> {
    heading(
        2,
        "Starting the gRPC server (Python grpcio) in pod greeter on node-2",
    );
    greeter::start_server(mesh.topology_mut(), SERVER, GREETER_PORT)?;
    println!("   listening on {}", mesh.pod_addr(SERVER, GREETER_PORT)?);

    heading(
        3,
        "Calling it from pod client on node-1, with tcpdump on the wan link",
    );
    let mut call = ClientCall::new(
        mesh.pod_addr(SERVER, GREETER_PORT)?,
        &greeter::marker("demo"),
    );
    (call.unary, call.stream, call.interval_ms) = (3, 5, 100);
    let capture = Capture::start(mesh.topology(), 1)?;
    let run = greeter::run_client(mesh.topology(), CLIENT, &call);
    let seen = capture.finish()?;
    let run = run?;
    show_calls(&run);
    run.check(&call, SERVER)?;

    heading(4, "Access log of both proxies");
    show_access_logs(mesh)?;

    heading(5, "What the link between the nodes carried");
    show_capture(&seen, &call)
}

fn describe_mesh(mesh: &Mesh) -> Result<()> {
    let topo = mesh.topology();
    println!("   control plane   netns {}", topo.ctl_ns());
    for k in 1..=topology::NODE_COUNT {
        let node = topology::node_name(k);
        println!("   {node} proxy    netns {}, ready", topo.node_ns(k));
    }
    for name in [CLIENT, SERVER] {
        let pod = mesh.pod(name)?;
        let node = topology::node_name(pod.node);
        println!(
            "   pod {name:<8}    {} on {node} = {}",
            pod.addr,
            mesh.spiffe_id(name)?
        );
    }
    Ok(())
}

fn show_calls(run: &ClientRun) {
    let mut unary_calls = 0;
    for reply in &run.replies {
        let label = if reply.rpc == "SayHello" {
            unary_calls += 1;
            format!("SayHello call {unary_calls}")
        } else {
            format!("{} reply {}", reply.rpc, reply.index)
        };
        println!(
            "   {label:<26} -> {:?} (from {})",
            reply.message, reply.server
        );
    }
}

fn show_access_logs(mesh: &Mesh) -> Result<()> {
    let ids = [mesh.spiffe_id(CLIENT)?, mesh.spiffe_id(SERVER)?];
    let needles = [ids[0].as_str(), ids[1].as_str()];
    for k in 1..=topology::NODE_COUNT {
        let timeout = std::time::Duration::from_secs(10);
        mesh.wait_access_line(k, &needles, timeout)?;
        println!("   {}:", topology::node_name(k));
        for line in mesh.access_log(k)? {
            println!("     {line}");
        }
    }
    println!("   both proxies logged the client and the server SPIFFE IDs:");
    println!("     {}\n     {}", ids[0], ids[1]);
    Ok(())
}

fn show_capture(seen: &CaptureData, call: &ClientCall) -> Result<()> {
    println!(
        "   captured {} packets, {} bytes",
        seen.packets,
        seen.bytes.len()
    );
    println!(
        "   packets on tcp/{TUNNEL_PORT} and udp/{TUNNEL_PORT} (the tunnel, TCP or QUIC): {} \
         and {}",
        seen.tcp_packets(TUNNEL_PORT),
        seen.udp_packets(TUNNEL_PORT)
    );
    println!(
        "   packets on tcp/{GREETER_PORT} (plain gRPC): {}",
        seen.tcp_packets(GREETER_PORT)
    );
    let method = seen.contains(SAY_HELLO.as_bytes());
    let payload = seen.contains(call.name.as_bytes());
    println!(
        "   method name {SAY_HELLO:?} in the clear: {}",
        yes_no(method)
    );
    println!(
        "   payload text {:?} in the clear: {}",
        call.name,
        yes_no(payload)
    );

    seen.require_tunnel_traffic()?;
    ensure!(
        !method && !payload,
        "plaintext crossed the link between the nodes"
    );
    ensure!(
        seen.tcp_packets(GREETER_PORT) == 0,
        "gRPC packets bypassed the tunnel"
    );
    Ok(())
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "YES"
    } else {
        "no"
    }
}

fn heading(step: usize, title: &str) {
    println!("\n[{step}/6] {title}");
}
