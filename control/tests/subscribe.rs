//! The Subscribe stream over the real control API (gRPC over mutual TLS on localhost): a node
//! joins with a token and a CSR, subscribes, receives a full update, then a delta for each
//! admin change, and resumes after reconnecting; a caller without a node SVID is refused.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use edgeward_ca::{tls, CertSlot, PeerPolicy, PrivateKey, ServerVerifier, SharedBundle};
use edgeward_ca::{SpiffeId, SpiffeVerifier, Svid, TrustBundle, TrustDomain};
use edgeward_control::config::ControlConfig;
use edgeward_control::ctl::{connect, Target};
use edgeward_proto::v1;
use edgeward_proto::v1::identity_client::IdentityClient;
use edgeward_proto::v1::registry_client::RegistryClient;
use rustls_pki_types::CertificateDer;
use tonic::transport::Channel;
use tonic::Streaming;

const POLICY: &str = "\
policies:
  - name: allow-demo
    action: allow
    source: {namespace: demo}
    destination: {namespace: demo}
";

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Starts edgeward-control in this process on a fresh data directory; returns its address.
async fn start_control(data_dir: &Path) -> SocketAddr {
    let listen = free_port();
    let config = ControlConfig {
        data_dir: data_dir.to_owned(),
        trust_domain: "edgeward.local".into(),
        registry: None,
        listen,
        metrics_addr: free_port(),
        svid_ttl: Duration::from_secs(3600),
        max_svid_ttl: Duration::from_secs(7200),
        log_format: edgeward_proto::logging::LogFormat::Text,
    };
    tokio::spawn(edgeward_control::run::run(config));
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(listen).await.is_ok() {
            return listen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the control plane did not listen on {listen}");
}

fn control_tls(data_dir: &Path, client: Option<Arc<CertSlot>>) -> Arc<rustls::ClientConfig> {
    let td = TrustDomain::parse("edgeward.local").unwrap();
    let bundle = TrustBundle::load(td.clone(), &data_dir.join("bundle.pem")).unwrap();
    let verifier = SpiffeVerifier::new(
        SharedBundle::new(bundle),
        PeerPolicy::Exact(td.control_id()),
    );
    let client = client.map(|slot| slot as Arc<dyn rustls::client::ResolvesClientCert>);
    Arc::new(tls::client_config(
        ServerVerifier(verifier),
        client,
        &[b"h2"],
    ))
}

/// Joins `node` with a fresh token and returns a channel authenticated by its node SVID.
async fn join(control: SocketAddr, data_dir: &Path, node: &str) -> Channel {
    let target = Target {
        control,
        admin_dir: data_dir.join("admin"),
    };
    let request = v1::CreateJoinTokenRequest {
        node_name: node.into(),
        ttl_seconds: 60,
    };
    let mut admin = connect(&target).await.unwrap();
    let token = admin
        .create_join_token(request)
        .await
        .unwrap()
        .into_inner()
        .token;

    let anonymous = edgeward_proto::channel::connect(control, control_tls(data_dir, None));
    let key = PrivateKey::generate().unwrap();
    let request = v1::JoinRequest {
        token,
        node_name: node.into(),
        csr_pem: key.csr_pem().unwrap(),
    };
    let mut identity = IdentityClient::new(anonymous.await.unwrap());
    let reply = identity
        .join(request)
        .await
        .unwrap()
        .into_inner()
        .svid
        .unwrap();
    let chain = reply
        .cert_chain_der
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let id = SpiffeId::parse(&reply.spiffe_id).unwrap();
    let svid = Svid::new(id, chain, key).unwrap();
    let slot = Arc::new(CertSlot::with(svid.certified_key()));
    let tls = control_tls(data_dir, Some(slot));
    edgeward_proto::channel::connect(control, tls)
        .await
        .unwrap()
}

async fn subscribe(
    channel: &Channel,
    have_version: u64,
    have_epoch: &str,
) -> Streaming<v1::Update> {
    let request = v1::SubscribeRequest {
        tunnel_addresses: vec!["198.18.0.1:15008".into()],
        have_version,
        have_epoch: have_epoch.into(),
    };
    let mut client = RegistryClient::new(channel.clone());
    client.subscribe(request).await.unwrap().into_inner()
}

async fn next(stream: &mut Streaming<v1::Update>) -> v1::Update {
    let message = tokio::time::timeout(Duration::from_secs(5), stream.message());
    message
        .await
        .expect("an update in time")
        .unwrap()
        .expect("the stream is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_subscribes_receives_deltas_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let control = start_control(dir.path()).await;
    let node = join(control, dir.path(), "node-1").await;
    let target = Target {
        control,
        admin_dir: dir.path().join("admin"),
    };
    let mut admin = connect(&target).await.unwrap();

    let mut stream = subscribe(&node, 0, "").await;
    let full = next(&mut stream).await;
    assert!(full.full && !full.epoch.is_empty() && full.trust_bundle_der.len() == 1);
    let names: Vec<_> = full.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["node-1"]);
    assert_eq!(full.nodes[0].tunnel_addresses, ["198.18.0.1:15008"]);

    let request = v1::ApplyPoliciesRequest {
        yaml: POLICY.into(),
    };
    let applied = admin.apply_policies(request).await.unwrap().into_inner();
    let delta = next(&mut stream).await;
    assert_eq!((delta.full, delta.from_version), (false, full.version));
    assert_eq!(delta.version, applied.version);
    assert_eq!(delta.policies[0].name, "allow-demo");

    let workload = v1::Workload {
        name: "client".into(),
        namespace: "demo".into(),
        service_account: "client".into(),
        node: "node-1".into(),
        addresses: vec!["198.18.1.10".into()],
        ..Default::default()
    };
    let request = v1::AddWorkloadRequest {
        workload: Some(workload),
    };
    admin.add_workload(request).await.unwrap();
    let delta = next(&mut stream).await;
    assert_eq!(delta.from_version, applied.version);
    assert_eq!(
        delta.workloads[0].spiffe_id,
        "spiffe://edgeward.local/ns/demo/sa/client"
    );
    drop(stream);

    // Reconnecting in sync: an empty update. One version behind: only the workload.
    let in_sync = next(&mut subscribe(&node, delta.version, &delta.epoch).await).await;
    assert_eq!(
        (in_sync.from_version, in_sync.version),
        (delta.version, delta.version)
    );
    assert!(in_sync.workloads.is_empty() && in_sync.policies.is_empty());
    let behind = next(&mut subscribe(&node, applied.version, &delta.epoch).await).await;
    assert!(!behind.full && behind.workloads.len() == 1 && behind.policies.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_node_svids_may_subscribe() {
    let dir = tempfile::tempdir().unwrap();
    let control = start_control(dir.path()).await;
    let anonymous = edgeward_proto::channel::connect(control, control_tls(dir.path(), None));
    let mut client = RegistryClient::new(anonymous.await.unwrap());
    let status = client
        .subscribe(v1::SubscribeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    let node = join(control, dir.path(), "node-1").await;
    let request = v1::SubscribeRequest {
        tunnel_addresses: vec!["not an address".into()],
        ..Default::default()
    };
    let status = RegistryClient::new(node)
        .subscribe(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status
        .message()
        .contains("\"not an address\" is not ip:port"));
}
