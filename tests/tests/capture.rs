//! What an eavesdropper on the wan link between the nodes sees: for calls between meshed
//! pods, tunnel packets on port 15008 (TCP or QUIC, whichever the proxy chose) and no
//! plaintext (neither the gRPC method nor a unique payload marker); for a call to a pod
//! outside the registry, passed through in permissive mode, the marker in the clear, which
//! shows the capture itself works.

use anyhow::{ensure, Result};
use edgeward_lab::greeter::{self, ClientCall, GREETER_PORT, SAY_HELLO, STREAM_GREETINGS};
use edgeward_lab::{Capture, Mesh, MeshOptions, OutboundMode};

#[test]
fn the_wan_link_carries_no_plaintext_between_meshed_pods() {
    let options = MeshOptions::new()
        .outbound_mode(OutboundMode::Permissive)
        .meshed_pod(1, "client", "demo", "client")
        .meshed_pod(2, "greeter", "demo", "greeter")
        .plain_pod(2, "outside");
    let mut mesh = Mesh::start(options).expect("starting the mesh");
    greeter::start_server(mesh.topology_mut(), "greeter", GREETER_PORT).unwrap();
    greeter::start_server(mesh.topology_mut(), "outside", GREETER_PORT).unwrap();

    meshed_call_is_ciphertext_on_the_wan(&mesh).unwrap();
    pass_through_call_is_plaintext_on_the_wan(&mesh).unwrap();
}

fn meshed_call_is_ciphertext_on_the_wan(mesh: &Mesh) -> Result<()> {
    let call = ClientCall::new(
        mesh.pod_addr("greeter", GREETER_PORT)?,
        &greeter::marker("secret"),
    );
    let capture = Capture::start(mesh.topology(), 1)?;
    let run = greeter::run_client(mesh.topology(), "client", &call)?;
    let seen = capture.finish()?;
    run.check(&call, "greeter")?;

    seen.require_tunnel_traffic()?;
    for needle in [call.name.as_str(), SAY_HELLO, STREAM_GREETINGS, "SayHello"] {
        ensure!(
            !seen.contains(needle.as_bytes()),
            "{needle:?} crossed the wan link in plaintext"
        );
    }
    let direct = seen.tcp_packets(GREETER_PORT);
    ensure!(
        direct == 0,
        "{direct} packets to tcp/{GREETER_PORT} bypassed the tunnel"
    );
    Ok(())
}

fn pass_through_call_is_plaintext_on_the_wan(mesh: &Mesh) -> Result<()> {
    let call = ClientCall::new(
        mesh.pod_addr("outside", GREETER_PORT)?,
        &greeter::marker("open"),
    );
    let capture = Capture::start(mesh.topology(), 1)?;
    let run = greeter::run_client(mesh.topology(), "client", &call)?;
    let seen = capture.finish()?;
    run.check(&call, "outside")?;

    // The control: the same capture does see plaintext when there is plaintext to see.
    ensure!(
        seen.contains(call.name.as_bytes()),
        "pass-through marker not in the capture"
    );
    ensure!(
        seen.contains(SAY_HELLO.as_bytes()),
        "pass-through method not in the capture"
    );
    ensure!(
        seen.tcp_packets(GREETER_PORT) > 0,
        "no pass-through packets on tcp/{GREETER_PORT}"
    );
    Ok(())
}
