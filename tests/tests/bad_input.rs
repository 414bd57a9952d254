//! Bad input, end to end: what a broken or hostile peer sends to a proxy's tunnel port or to the
//! control API, and what a broken operator input (an expired or spent join token, a malformed
//! registry file) does. Each must be refused with a named reason and counted in a metric, and
//! must leave the proxies and the control plane serving: every test ends by checking that both
//! proxies still report ready and that a real gRPC call still crosses the mesh.

use std::fmt;
use std::future::Future;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use edgeward_ca::{pem, tls, CertSlot, ClientVerifier, GeneratedHierarchy, PeerPolicy};
use edgeward_ca::{PrivateKey, ServerVerifier, SharedBundle, SpiffeId, SpiffeVerifier, Svid};
use edgeward_lab::capture::TUNNEL_PORT;
use edgeward_lab::greeter::{self, ClientCall, GREETER_PORT};
use edgeward_lab::identity::{self, issue, node_credential, trust_domain};
use edgeward_lab::mesh::{self, CONTROL_NAME, PROXY_READY_TIMEOUT};
use edgeward_lab::metrics::{Counter, Source};
use edgeward_lab::procs::Launch;
use edgeward_lab::topology::wan_addr;
use edgeward_lab::{netns, procs, wait, Mesh, MeshOptions, Workload};
use edgeward_proto::v1::identity_client::IdentityClient;
use edgeward_proto::v1::{SignWorkloadRequest, SvidResponse};
use rand::Rng;
use rustls_pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Bound on each connect, read and TLS handshake the tests make themselves (10 s). The proxy
/// gives a handshake 5 s, so a refusal that works always lands well inside it.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a counter may lag behind the refusal the peer already saw (10 s): a proxy sends
/// its TLS alert before it counts the failed handshake.
const METRIC_TIMEOUT: Duration = Duration::from_secs(10);

/// The Python client's deadline per call (its default, 20 s). A call that fails in less time
/// was refused; one that took this long merely timed out, which is the hang we rule out.
const CLIENT_CALL_DEADLINE: Duration = Duration::from_secs(20);

/// Bound on a proxy run that must fail at join (30 s): connecting and one refused call.
const FAILED_JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the control plane may take to act on a registry rewrite (10 s; it polls every
/// 500 ms).
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS record content types run from 20 (change_cipher_spec) to 24 (heartbeat).
const TLS_RECORD_TYPES: std::ops::RangeInclusive<u8> = 20..=24;

/// The TLS record type of an alert.
const TLS_ALERT_RECORD: u8 = 21;

/// Case 1: an HTTP/1.1 request and random bytes on node-2's tunnel port are closed, never
/// answered in kind, and counted as `not_tls`.
#[test]
fn plaintext_and_garbage_on_the_tunnel_port_are_refused_as_not_tls() {
    let mut mesh = client_greeter_mesh(MeshOptions::new());
    not_tls_is_closed_and_counted(&mesh).unwrap();
    assert_still_serving(&mut mesh);
}

fn not_tls_is_closed_and_counted(mesh: &Mesh) -> Result<()> {
    let not_tls = handshake_failures(2, "inbound", "not_tls");
    let before = not_tls.read(mesh)?;

    let http = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        node_2_tunnel()
    );
    let http = http.into_bytes();
    let mut garbage = vec![0u8; 512];
    rand::rng().fill(&mut garbage[..]);
    // A first byte that happens to be a record type would make the proxy read on as TLS and
    // maybe fail for another reason; anything else is not TLS from the first byte.
    if TLS_RECORD_TYPES.contains(&garbage[0]) {
        garbage[0] ^= 0x80;
    }

    for (what, bytes) in [("an HTTP/1.1 request", http), ("random bytes", garbage)] {
        let reply = send_until_closed(mesh.topology().node_ns(1), node_2_tunnel(), bytes)
            .with_context(|| format!("sending {what} to node-2's tunnel port"))?;
        // Whatever comes back before the close may only be TLS alerts, never an HTTP answer.
        ensure!(
            reply.is_empty() || reply[0] == TLS_ALERT_RECORD,
            "node-2 answered {what} with {:?}",
            String::from_utf8_lossy(&reply)
        );
    }
    not_tls.expect_increase(mesh, before, 2.0, METRIC_TIMEOUT)
}

/// Sends `bytes` to `target` from a socket in namespace `ns`, then reads until the peer closes
/// the connection; gives what it sent back. Fails if the peer holds the connection open.
fn send_until_closed(ns: &str, target: SocketAddr, bytes: Vec<u8>) -> Result<Vec<u8>> {
    netns::run_in(ns, move || {
        let mut stream = TcpStream::connect_timeout(&target, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        match stream.write_all(&bytes) {
            // The proxy may give up after the first record header, before the rest is sent.
            Err(e) if is_closed(&e) => return Ok(Vec::new()),
            other => other?,
        }
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return Ok(reply),
                Ok(n) => reply.extend_from_slice(&buf[..n]),
                Err(e) if is_closed(&e) => return Ok(reply),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    bail!("{target} kept the connection open for {IO_TIMEOUT:?}")
                }
                Err(e) => return Err(e.into()),
            }
        }
    })
}

fn is_closed(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
    )
}

/// Case 2: a client SVID for a real workload's SPIFFE ID, but from a CA the mesh does not trust,
/// is refused at the tunnel's handshake and counted as `unknown_issuer`.
#[test]
fn a_client_certificate_from_another_ca_is_refused_as_unknown_issuer() {
    let mut mesh = client_greeter_mesh(MeshOptions::new());
    foreign_ca_client_is_refused(&mesh).unwrap();
    assert_still_serving(&mut mesh);
}

fn foreign_ca_client_is_refused(mesh: &Mesh) -> Result<()> {
    let td = trust_domain(mesh)?;
    let client_id = SpiffeId::parse(&mesh.spiffe_id("client")?)?;
    // Same trust domain, same SPIFFE ID: only the issuer differs from what the mesh would issue.
    let foreign = GeneratedHierarchy::generate(&td, SystemTime::now())?.into_authority(td)?;
    let svid = issue(&foreign, &client_id)?;
    let unknown_issuer = handshake_failures(2, "inbound", "unknown_issuer");
    let before = unknown_issuer.read(mesh)?;

    let outcome = tunnel_handshake_to_greeter(mesh, svid)?;
    ensure!(
        outcome.is_refusal(),
        "a client certificate from another CA: {outcome}"
    );
    unknown_issuer.expect_increase(mesh, before, 1.0, METRIC_TIMEOUT)
}

/// How a TLS client's attempt on a tunnel port ended.
#[derive(Debug)]
enum TlsOutcome {
    /// Our own verifier refused the server's certificate, for this reason.
    WeRefusedTheServer(&'static str),
    /// The server sent a fatal alert, during or right after the handshake.
    Alert(rustls::AlertDescription),
    /// The server closed or reset the connection without an alert.
    Closed(String),
    /// The server accepted the client and started talking (its HTTP/2 SETTINGS arrived).
    Accepted,
}

impl TlsOutcome {
    /// Whether the server refused the client.
    fn is_refusal(&self) -> bool {
        matches!(self, TlsOutcome::Alert(_) | TlsOutcome::Closed(_))
    }
}

impl fmt::Display for TlsOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsOutcome::WeRefusedTheServer(reason) => {
                write!(
                    f,
                    "our verifier refused the server's certificate ({reason})"
                )
            }
            TlsOutcome::Alert(alert) => write!(f, "the server sent the alert {alert:?}"),
            TlsOutcome::Closed(how) => write!(f, "the server closed the connection ({how})"),
            TlsOutcome::Accepted => f.write_str("the server accepted the client"),
        }
    }
}

/// A TLS 1.3 handshake from node 1's namespace to node 2's tunnel port as a client presenting
/// `svid`, asking for (and verifying) the greeter's SPIFFE ID as the proxy itself would.
fn tunnel_handshake_to_greeter(mesh: &Mesh, svid: Svid) -> Result<TlsOutcome> {
    let greeter_id = SpiffeId::parse(&mesh.spiffe_id("greeter")?)?;
    let bundle = identity::bundle(mesh)?;
    let verifier = SpiffeVerifier::new(bundle, PeerPolicy::Exact(greeter_id.clone()));
    let client_cert = Arc::new(CertSlot::with(svid.certified_key()));
    let config = tls::client_config(ServerVerifier(verifier), Some(client_cert), &[b"h2"]);
    let sni = tls::sni_for(&greeter_id);
    block_on_in(mesh.topology().node_ns(1), move || {
        tls_attempt(node_2_tunnel(), config, sni)
    })
}

async fn tls_attempt(
    target: SocketAddr,
    config: rustls::ClientConfig,
    sni: ServerName<'static>,
) -> Result<TlsOutcome> {
    let tcp = tokio::time::timeout(IO_TIMEOUT, tokio::net::TcpStream::connect(target))
        .await
        .with_context(|| format!("connecting to {target} timed out"))??;
    let connect = TlsConnector::from(Arc::new(config)).connect(sni, tcp);
    let mut tls = match tokio::time::timeout(IO_TIMEOUT, connect).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => return Ok(classify(&error)),
        Err(_) => bail!("the TLS handshake with {target} did not finish in {IO_TIMEOUT:?}"),
    };
    // In TLS 1.3 the client finishes first: the server's verdict on our certificate comes
    // after, as an alert or as its first HTTP/2 frame.
    let mut buf = [0u8; 64];
    match tokio::time::timeout(IO_TIMEOUT, tls.read(&mut buf)).await {
        Ok(Ok(0)) => Ok(TlsOutcome::Closed("end of stream".into())),
        Ok(Ok(_)) => Ok(TlsOutcome::Accepted),
        Ok(Err(error)) => Ok(classify(&error)),
        Err(_) => bail!("{target} neither refused nor served us within {IO_TIMEOUT:?}"),
    }
}

fn classify(error: &std::io::Error) -> TlsOutcome {
    let tls_error = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    match tls_error {
        Some(rustls::Error::AlertReceived(alert)) => TlsOutcome::Alert(*alert),
        Some(e @ rustls::Error::InvalidCertificate(_)) => {
            TlsOutcome::WeRefusedTheServer(edgeward_ca::rejection_reason(e))
        }
        _ => TlsOutcome::Closed(error.to_string()),
    }
}

/// Case 3, inbound: a valid mesh certificate that names a node, not a workload, is refused as a
/// tunnel client and counted as `identity_not_allowed`.
#[test]
fn a_node_credential_is_not_a_workload_identity_on_the_tunnel() {
    let mut mesh = client_greeter_mesh(MeshOptions::new());
    node_credential_is_refused(&mesh).unwrap();
    assert_still_serving(&mut mesh);
}

fn node_credential_is_refused(mesh: &Mesh) -> Result<()> {
    let node_1 = node_credential(mesh, 1)?;
    let not_allowed = handshake_failures(2, "inbound", "identity_not_allowed");
    let before = not_allowed.read(mesh)?;

    // Issued by the mesh CA and valid, but it names a node, and only workloads may tunnel.
    let outcome = tunnel_handshake_to_greeter(mesh, node_1)?;
    ensure!(
        outcome.is_refusal(),
        "node-1's own credential on the tunnel: {outcome}"
    );
    not_allowed.expect_increase(mesh, before, 1.0, METRIC_TIMEOUT)
}

/// Case 3, outbound: a server on node-2's tunnel address with a valid mesh SVID of another
/// workload fails the call quickly (no hang), counted on node 1 as `identity_mismatch`.
#[test]
fn an_impostor_tunnel_server_fails_the_call_as_identity_mismatch() {
    let mut mesh = client_greeter_mesh(MeshOptions::new());
    impostor_fails_the_call(&mut mesh).unwrap();
    mesh.start_proxy(2).expect("restarting node-2's proxy");
    assert_still_serving(&mut mesh);
}

fn impostor_fails_the_call(mesh: &mut Mesh) -> Result<()> {
    let td = trust_domain(mesh)?;
    let impostor_id = SpiffeId::parse(&Workload::new("demo", "impostor").spiffe_id(td.as_str()))?;
    let svid = issue(&identity::authority(mesh)?, &impostor_id)?;
    let mismatch = handshake_failures(1, "outbound", "identity_mismatch");
    let before = mismatch.read(mesh)?;

    mesh.stop_proxy(2)?;
    let node_2 = mesh.topology().node_ns(2).to_owned();
    let impostor = Impostor::start(&node_2, node_2_tunnel(), svid, identity::bundle(mesh)?)?;
    let mut call = ClientCall::new(
        mesh.pod_addr("greeter", GREETER_PORT)?,
        &greeter::marker("impostor"),
    );
    (call.unary, call.stream) = (1, 0);
    let started = Instant::now();
    let result = greeter::run_client(mesh.topology(), "client", &call);
    let elapsed = started.elapsed();

    let Err(error) = result else {
        bail!("the call succeeded through an impostor: {result:?}");
    };
    let error = format!("{error:#}");
    ensure!(
        error.contains("UNAVAILABLE") && elapsed < CLIENT_CALL_DEADLINE,
        "the call should fail fast as UNAVAILABLE, it failed after {elapsed:?}: {error}"
    );
    let (seen, completed) = impostor.handshakes();
    ensure!(
        seen >= 1,
        "node-1's proxy never reached the impostor: {error}"
    );
    ensure!(
        completed == 0,
        "{completed} handshakes with the impostor completed"
    );
    mismatch.wait_at_least(mesh, before + 1.0, METRIC_TIMEOUT)?;
    Ok(())
}

/// A TLS server on node 2's tunnel address that presents a valid mesh SVID of the wrong
/// workload, the way a compromised or misrouted host would. It runs until dropped.
struct Impostor {
    seen: Arc<AtomicUsize>,
    completed: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Impostor {
    fn start(ns: &str, addr: SocketAddr, svid: Svid, bundle: SharedBundle) -> Result<Impostor> {
        // Bound inside the namespace; the listener then serves from a thread of its own.
        let listener = netns::run_in(ns, move || Ok(std::net::TcpListener::bind(addr)?))
            .with_context(|| format!("binding the impostor to {addr} in netns {ns}"))?;
        listener.set_nonblocking(true)?;
        let verifier = SpiffeVerifier::new(bundle, PeerPolicy::AnyWorkload);
        let config = tls::server_config(
            Arc::new(ClientVerifier::new(verifier, true)),
            Arc::new(CertSlot::with(svid.certified_key())),
            &[b"h2"],
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;

        let (stop, stopped) = oneshot::channel();
        let seen = Arc::new(AtomicUsize::new(0));
        let completed = Arc::new(AtomicUsize::new(0));
        let counts = (seen.clone(), completed.clone());
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                tokio::select! {
                    _ = stopped => {}
                    () = serve_impostor(listener, acceptor, counts) => {}
                }
            })
        });
        Ok(Impostor {
            seen,
            completed,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Connections accepted, and TLS handshakes completed on them.
    fn handshakes(&self) -> (usize, usize) {
        let seen = self.seen.load(Ordering::SeqCst);
        (seen, self.completed.load(Ordering::SeqCst))
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve_impostor(
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    (seen, completed): (Arc<AtomicUsize>, Arc<AtomicUsize>),
) {
    while let Ok((tcp, _)) = listener.accept().await {
        seen.fetch_add(1, Ordering::SeqCst);
        let (acceptor, completed) = (acceptor.clone(), completed.clone());
        tokio::spawn(async move {
            let accept = tokio::time::timeout(IO_TIMEOUT, acceptor.accept(tcp)).await;
            if let Ok(Ok(_)) = accept {
                completed.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
}

/// Case 4: node 1 asking for an SVID of node 2's workload is denied and told why; a CSR that is
/// not PEM, one that is not DER and one with a broken signature are invalid arguments. Each is
/// counted under its own reason.
#[test]
fn csrs_for_another_nodes_workload_or_broken_csrs_are_refused() {
    let mut mesh = client_greeter_mesh(MeshOptions::new());
    bad_csrs_are_refused(&mesh).unwrap();
    assert_still_serving(&mut mesh);
}

fn bad_csrs_are_refused(mesh: &Mesh) -> Result<()> {
    let counters = [
        rejections("SignWorkload", "workload_on_other_node"),
        rejections("SignWorkload", "malformed_csr"),
        rejections("SignWorkload", "bad_csr_signature"),
    ];
    let before: Vec<f64> = counters
        .iter()
        .map(|c| c.read(mesh))
        .collect::<Result<_>>()?;

    let mut flipped = PrivateKey::generate()?.csr_der()?;
    // The signature is the CSR's last field: this changes one byte of it and nothing else.
    *flipped.last_mut().context("empty CSR")? ^= 0x01;
    let mut junk = vec![0u8; 256];
    rand::rng().fill(&mut junk[..]);
    // 0x04 tags an OCTET STRING, so the junk can never start the SEQUENCE of a CSR.
    junk[0] = 0x04;
    let requests = vec![
        sign_request("greeter", &PrivateKey::generate()?.csr_pem()?),
        sign_request("client", &PrivateKey::generate()?.csr_pem()?),
        sign_request("client", "this is not a certificate request\n"),
        sign_request("client", &pem::encode("CERTIFICATE REQUEST", &junk)),
        sign_request("client", &pem::encode("CERTIFICATE REQUEST", &flipped)),
    ];
    let replies = sign_workloads_as_node_1(mesh, requests)?;
    let [other_node, own, not_pem, junk_der, flipped_sig] = <[_; 5]>::try_from(replies)
        .map_err(|r| anyhow::anyhow!("expected five replies, got {}", r.len()))?;

    expect_refusal(
        other_node,
        tonic::Code::PermissionDenied,
        "placed on node node-2, not on node node-1",
    )
    .context("a CSR for node-2's greeter, signed in as node-1")?;
    // The control case: the same caller and channel get the workload that is on its node.
    let own = own.map_err(|s| anyhow::anyhow!("node-1's own workload refused: {s:?}"))?;
    ensure!(
        own.spiffe_id == mesh.spiffe_id("client")?,
        "issued {:?}",
        own.spiffe_id
    );
    expect_refusal(not_pem, tonic::Code::InvalidArgument, "not PEM").context("text, not PEM")?;
    expect_refusal(junk_der, tonic::Code::InvalidArgument, "malformed CSR").context("junk")?;
    expect_refusal(flipped_sig, tonic::Code::InvalidArgument, "signature").context("flipped")?;

    for (counter, (before, by)) in counters.iter().zip(before.into_iter().zip([1.0, 2.0, 1.0])) {
        counter.expect_increase(mesh, before, by, METRIC_TIMEOUT)?;
    }
    Ok(())
}

fn sign_request(name: &str, csr_pem: &str) -> SignWorkloadRequest {
    SignWorkloadRequest {
        namespace: "demo".into(),
        name: name.into(),
        csr_pem: csr_pem.into(),
        requested_ttl_seconds: 0,
    }
}

fn expect_refusal(
    reply: std::result::Result<SvidResponse, tonic::Status>,
    code: tonic::Code,
    message: &str,
) -> Result<()> {
    match reply {
        Ok(svid) => bail!("issued {:?} instead of refusing", svid.spiffe_id),
        Err(status) => ensure!(
            status.code() == code && status.message().contains(message),
            "expected {code:?} with {message:?}, got {status:?}"
        ),
    }
    Ok(())
}

/// Sends each request to SignWorkload on one channel from node 1's namespace, signed in with
/// node 1's credential from its state directory, as node 1's proxy itself is.
fn sign_workloads_as_node_1(
    mesh: &Mesh,
    requests: Vec<SignWorkloadRequest>,
) -> Result<Vec<std::result::Result<SvidResponse, tonic::Status>>> {
    let td = trust_domain(mesh)?;
    let verifier = SpiffeVerifier::new(identity::bundle(mesh)?, PeerPolicy::Exact(td.control_id()));
    let slot = Arc::new(CertSlot::with(node_credential(mesh, 1)?.certified_key()));
    let config = tls::client_config(ServerVerifier(verifier), Some(slot), &[b"h2"]);
    let control: SocketAddr = mesh::control_endpoint(1).parse()?;
    block_on_in(mesh.topology().node_ns(1), move || async move {
        let channel = edgeward_proto::channel::connect(control, Arc::new(config))
            .await
            .with_context(|| format!("connecting to the control plane at {control}"))?;
        let mut client = IdentityClient::new(channel);
        let mut replies = Vec::new();
        for request in requests {
            let call = tokio::time::timeout(IO_TIMEOUT, client.sign_workload(request));
            let reply = call.await.context("SignWorkload did not answer")?;
            replies.push(reply.map(tonic::Response::into_inner));
        }
        Ok(replies)
    })
}

/// Case 5: a proxy joining with an expired token, or with one already used, exits non-zero at
/// the join saying why, and the control plane counts `token_expired` and `token_used`.
#[test]
fn expired_and_spent_join_tokens_are_refused() {
    let mut mesh = client_greeter_mesh(MeshOptions::new());
    expired_token_is_refused(&mesh).unwrap();
    spent_token_is_refused(&mut mesh).unwrap();
    assert_still_serving(&mut mesh);
}

fn expired_token_is_refused(mesh: &Mesh) -> Result<()> {
    let expired = rejections("Join", "token_expired");
    let before = expired.read(mesh)?;
    let token = create_node_3_token(mesh, "1s")?;
    std::thread::sleep(Duration::from_secs(2));

    let run = node_3_proxy(mesh, "expired-token")?;
    let stderr = run_to_failure(mesh, &run, &token)?;
    ensure!(
        stderr.contains("expired"),
        "stderr does not say the token expired:\n{stderr}"
    );
    expired.expect_increase(mesh, before, 1.0, METRIC_TIMEOUT)
}

fn spent_token_is_refused(mesh: &mut Mesh) -> Result<()> {
    let spent = rejections("Join", "token_used");
    let before = spent.read(mesh)?;
    let token = create_node_3_token(mesh, "1h")?;

    // First use: a real join, by a proxy that is stopped as soon as it has its credential.
    let first = node_3_proxy(mesh, "first-use")?;
    let token_file = first.write_token(&token)?;
    let launch = Launch::new(
        mesh.topology().node_ns(1),
        "proxy-node-3",
        &mesh.binaries().proxy,
    )
    .args(first.args(&token_file));
    let topo = mesh.topology_mut();
    topo.spawn(&launch)?
        .wait_for_log("joined the mesh", PROXY_READY_TIMEOUT)?;
    topo.stop("proxy-node-3")?;
    ensure!(
        first.state_dir.join("node.pem").is_file(),
        "first use left no node credential"
    );

    let second = node_3_proxy(mesh, "second-use")?;
    let stderr = run_to_failure(mesh, &second, &token)?;
    ensure!(
        stderr.contains("already used"),
        "stderr does not say the token was used:\n{stderr}"
    );
    spent.expect_increase(mesh, before, 1.0, METRIC_TIMEOUT)
}

fn create_node_3_token(mesh: &Mesh, ttl: &str) -> Result<String> {
    let output = mesh.ctl(1, &["token", "create", "--node", "node-3", "--ttl", ttl])?;
    let token = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    ensure!(
        output.status.success() && !token.is_empty(),
        "edgewardctl token create failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(token)
}

/// A proxy for a third node, run in node 1's namespace: fresh state directory, spare ports and
/// no capture rules, so even a proxy that got past the join could not disturb node 1's.
struct Node3Proxy {
    dir: PathBuf,
    state_dir: PathBuf,
    control: String,
    bundle: PathBuf,
    trust_domain: String,
}

fn node_3_proxy(mesh: &Mesh, name: &str) -> Result<Node3Proxy> {
    let dir = mesh.topology().path(&format!("node-3-{name}"));
    std::fs::create_dir(&dir)?;
    Ok(Node3Proxy {
        state_dir: dir.join("state"),
        dir,
        control: mesh::control_endpoint(1),
        bundle: mesh.control_data_dir().join("bundle.pem"),
        trust_domain: mesh.options().trust_domain.clone(),
    })
}

impl Node3Proxy {
    fn write_token(&self, token: &str) -> Result<PathBuf> {
        let path = self.dir.join("join-token");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        file.write_all(token.as_bytes())?;
        Ok(path)
    }

    fn args(&self, token_file: &Path) -> Vec<String> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let flags = [
            ("--node-name", "node-3".to_owned()),
            ("--control", self.control.clone()),
            ("--trust-domain", self.trust_domain.clone()),
            ("--bootstrap-bundle", path(&self.bundle)),
            ("--state-dir", path(&self.state_dir)),
            ("--join-token-file", path(token_file)),
            ("--advertise", wan_addr(1).to_string()),
            ("--outbound-listen", "127.0.0.1:25001".to_owned()),
            ("--tunnel-listen", "127.0.0.1:25008".to_owned()),
            ("--metrics-addr", "127.0.0.1:25020".to_owned()),
            ("--ready-addr", "127.0.0.1:25021".to_owned()),
        ];
        flags
            .into_iter()
            .flat_map(|(flag, value)| [flag.to_owned(), value])
            .collect()
    }
}

/// Runs the node-3 proxy with `token` to its exit, which must come at join, unsuccessful and
/// within `FAILED_JOIN_TIMEOUT`; gives its stderr.
fn run_to_failure(mesh: &Mesh, proxy: &Node3Proxy, token: &str) -> Result<String> {
    let token_file = proxy.write_token(token)?;
    let program = &mesh.binaries().proxy;
    let ns = mesh.topology().node_ns(1);
    let output = netns::exec(ns, program, &proxy.args(&token_file), FAILED_JOIN_TIMEOUT)?;
    // Output to a pipe may still carry colour codes; the checks read the text.
    let stderr = procs::strip_ansi(&String::from_utf8_lossy(&output.stderr));
    ensure!(
        !output.status.success(),
        "the proxy exited successfully:\n{stderr}"
    );
    ensure!(
        !stderr.contains("proxy started") && !proxy.state_dir.join("node.pem").exists(),
        "the proxy got past the join:\n{stderr}"
    );
    Ok(stderr)
}

/// Case 6: a registry file with an unknown field is refused naming its line, the workloads in
/// force stay and keep serving, and the next good file is applied.
#[test]
fn a_malformed_registry_file_is_refused_and_the_last_good_one_stays() {
    let mut mesh = client_greeter_mesh(MeshOptions::new().plain_pod(1, "extra"));
    malformed_registry_is_refused(&mesh).unwrap();
    later_good_registry_is_applied(&mut mesh).unwrap();
    // The new workload is on node 1, whose proxy is ready again once it holds its SVID.
    mesh.wait_proxy_ready(1, PROXY_READY_TIMEOUT).unwrap();
    assert_still_serving(&mut mesh);
}

fn malformed_registry_is_refused(mesh: &Mesh) -> Result<()> {
    let errors = registry_reloads("error");
    let before = errors.read(mesh)?;
    let listed = list_workloads(mesh)?;

    let good = mesh.registry_yaml()?;
    let typo_line = "    service_account: \"greeter\"";
    let index = good
        .lines()
        .position(|l| l == typo_line)
        .context("no greeter service_account line in the registry")?;
    let bad = good.replacen(typo_line, "    service_acount: \"greeter\"", 1);
    mesh.write_registry_text(&bad)?;

    let refusal = wait::until(
        "the control plane to refuse the registry",
        REGISTRY_TIMEOUT,
        || {
            let log = mesh.control_log()?;
            let line = log.lines().find(|l| l.contains("registry file refused"));
            Ok(line.map(str::to_owned))
        },
    )?;
    let at = format!("line {},", index + 1);
    ensure!(
        refusal.contains(&at),
        "the refusal does not name {at:?}:\n{refusal}"
    );
    errors.expect_increase(mesh, before, 1.0, METRIC_TIMEOUT)?;

    let still = list_workloads(mesh)?;
    ensure!(
        still == listed,
        "the workloads changed:\nbefore {listed:#}\nafter {still:#}"
    );
    let call = ClientCall::new(
        mesh.pod_addr("greeter", GREETER_PORT)?,
        &greeter::marker("refused"),
    );
    greeter::run_client(mesh.topology(), "client", &call)?.check(&call, "greeter")
}

fn later_good_registry_is_applied(mesh: &mut Mesh) -> Result<()> {
    let reloads = registry_reloads("ok");
    let before = reloads.read(mesh)?;
    mesh.set_workload("extra", Some(Workload::new("demo", "extra")))?;
    wait::until("the new workload in the list", REGISTRY_TIMEOUT, || {
        let workloads = list_workloads(mesh)?;
        let names = workloads.as_array().context("workloads is not a list")?;
        Ok(names.iter().any(|w| w["name"] == "extra").then_some(()))
    })?;
    reloads.expect_increase(mesh, before, 1.0, METRIC_TIMEOUT)
}

/// The `workloads` array of `edgewardctl workload list -o json`.
fn list_workloads(mesh: &Mesh) -> Result<serde_json::Value> {
    let output = mesh.ctl(1, &["workload", "list", "-o", "json"])?;
    ensure!(
        output.status.success(),
        "edgewardctl workload list failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    Ok(doc["workloads"].clone())
}

/// A mesh with a client pod on node 1 and a greeter pod on node 2 (plus what `options` holds),
/// the greeter server running.
fn client_greeter_mesh(options: MeshOptions) -> Mesh {
    let options = options
        .meshed_pod(1, "client", "demo", "client")
        .meshed_pod(2, "greeter", "demo", "greeter");
    let mut mesh = Mesh::start(options).expect("starting the mesh");
    greeter::start_server(mesh.topology_mut(), "greeter", GREETER_PORT)
        .expect("starting the greeter");
    mesh
}

/// The end of every test: the control plane and both proxies still run and never panicked,
/// both proxies answer 200 on /healthz/ready, and a real gRPC call from node 1 reaches the
/// greeter on node 2.
fn assert_still_serving(mesh: &mut Mesh) {
    still_serving(mesh).expect("the mesh stopped serving after the bad input");
}

fn still_serving(mesh: &mut Mesh) -> Result<()> {
    for name in [
        CONTROL_NAME.to_owned(),
        mesh::proxy_name(1),
        mesh::proxy_name(2),
    ] {
        let proc = mesh.topology_mut().proc_mut(&name)?;
        if let Some(status) = proc.exit_status()? {
            bail!("{name} exited ({status})");
        }
        // A panicking task does not take a tokio process down, so look for it in the log (the
        // whole file: every start of the process, a stopped and restarted proxy's included).
        let log = std::fs::read_to_string(proc.log_path())?;
        if let Some(line) = log.lines().find(|l| l.contains("panicked")) {
            bail!("{name} panicked: {line}");
        }
    }
    for k in 1..=2 {
        let status = mesh.ready_status(k)?;
        ensure!(
            status == 200,
            "node-{k}'s proxy answers {status} on /healthz/ready"
        );
    }
    mesh.control_metrics()
        .context("the control plane's metrics endpoint")?;
    let call = ClientCall::new(
        mesh.pod_addr("greeter", GREETER_PORT)?,
        &greeter::marker("alive"),
    );
    greeter::run_client(mesh.topology(), "client", &call)?.check(&call, "greeter")
}

/// Node 2's tunnel port on the wan link.
fn node_2_tunnel() -> SocketAddr {
    SocketAddr::from((wan_addr(2), TUNNEL_PORT))
}

/// Runs the future that `make` builds on a one-thread tokio runtime, on a thread that joined
/// namespace `ns`: every socket the future opens belongs to `ns`.
fn block_on_in<T, F, Fut>(ns: &str, make: F) -> Result<T>
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = Result<T>>,
    T: Send,
{
    netns::run_in(ns, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(make())
    })
}

fn handshake_failures(node: usize, direction: &str, reason: &str) -> Counter {
    let labels = [("direction", direction), ("reason", reason)];
    Counter::new(
        Source::Proxy(node),
        "edgeward_tls_handshake_failures_total",
        &labels,
    )
}

fn rejections(call: &str, reason: &str) -> Counter {
    let labels = [("call", call), ("reason", reason)];
    Counter::new(
        Source::Control,
        "edgeward_control_rejections_total",
        &labels,
    )
}

fn registry_reloads(result: &str) -> Counter {
    let name = "edgeward_control_registry_reloads_total";
    Counter::new(Source::Control, name, &[("result", result)])
}
