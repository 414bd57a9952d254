//! Unit tests of changes made through the hub: persistence across restarts, refusals that
//! leave everything as it was, conflicts between the registry file and the API, resume on the
//! Subscribe stream, and fan-out to 1,000 subscribers.

use std::path::PathBuf;
use std::time::Instant;

use tokio::sync::mpsc;

use super::*;
use crate::ca_files::{load_or_create_authority, DataDir};

const FILE: &str = "\
workloads:
  - name: greeter
    namespace: demo
    service_account: greeter
    node: node-2
    addresses: [198.18.2.10]
    labels: {app: greeter}
";

const POLICIES: &str = "\
policies:
  - name: greeter-from-client
    action: allow
    source:
      namespace: demo
    destination:
      namespace: demo
      labels: {app: greeter}
      ports: [50051]
namespaces:
  - name: demo
    default_action: deny
";

/// A data directory with a CA, reused across restarts of the hub.
pub(crate) struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    pub(crate) fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn td() -> TrustDomain {
        TrustDomain::parse("edgeward.local").unwrap()
    }

    pub(crate) fn state_path(&self) -> PathBuf {
        self.dir.path().join("state.json")
    }

    /// Starts a hub on this directory with `file` as the registry file.
    pub(crate) fn hub_with(&self, file: &str) -> Result<Arc<Hub>, ChangeError> {
        let td = Self::td();
        let authority = load_or_create_authority(&DataDir::new(self.dir.path()), &td).unwrap();
        let store = StateStore::open(&self.state_path()).unwrap();
        let registry = Registry::parse(file, &td).unwrap();
        Hub::new(
            authority,
            store,
            registry,
            crate::hub::SvidLifetimes {
                default: Duration::from_secs(3600),
                max: Duration::from_secs(7200),
            },
            Metrics::new(),
        )
    }

    pub(crate) fn hub(&self) -> Arc<Hub> {
        self.hub_with(FILE).unwrap()
    }
}

fn api_workload(name: &str, address: &str) -> v1::Workload {
    v1::Workload {
        name: name.into(),
        namespace: "demo".into(),
        service_account: name.into(),
        node: "node-1".into(),
        addresses: vec![address.into()],
        labels: [("app".to_string(), name.to_string())].into(),
        ..Default::default()
    }
}

#[test]
fn everything_survives_a_restart_with_its_version_and_epoch() {
    let fx = Fixture::new();
    let hub = fx.hub();
    let first = hub.feed().current().version;
    let (applied, v1) = hub.apply_policies(POLICIES).unwrap();
    assert_eq!(applied, ["greeter-from-client", "namespace/demo"]);
    assert_eq!(v1, first + 1);
    let v2 = hub
        .add_workload(&api_workload("client", "198.18.1.10"))
        .unwrap();
    assert_eq!(v2, v1 + 1);
    let epoch = hub.feed().epoch().to_owned();
    let before = hub.feed().current();
    drop(hub);

    let hub = fx.hub();
    assert_eq!(hub.feed().epoch(), epoch);
    let after = hub.feed().current();
    assert_eq!(after.version, v2, "nothing changed, so the version stays");
    assert_eq!(*after, *before);
    let client = hub.registry().get("demo", "client").cloned().unwrap();
    assert_eq!(client.source, crate::registry::Source::Api);
    assert_eq!(client.labels["app"], "client");
    assert_eq!(after.namespace_defaults[0].action, "deny");
}

#[test]
fn a_registry_file_changed_while_down_moves_the_version_on() {
    let fx = Fixture::new();
    let v = fx.hub().feed().current().version;
    let hub = fx
        .hub_with(&FILE.replace("198.18.2.10", "198.18.2.11"))
        .unwrap();
    assert_eq!(hub.feed().current().version, v + 1);
}

#[test]
fn a_state_file_of_the_first_slice_loads() {
    let fx = Fixture::new();
    let old = r#"{"version": 41, "tokens": [], "nodes": {"node-1": {"joined_unix": 1,
        "last_seen_unix": 2, "tunnel_addresses": ["198.18.0.1:15008"]}}}"#;
    std::fs::write(fx.state_path(), old).unwrap();
    let hub = fx.hub();
    let view = hub.feed().current();
    assert_eq!(view.version, 42, "a fresh fingerprint counts as a change");
    assert_eq!(hub.feed().epoch().len(), 32);
    assert_eq!(view.nodes["node-1"].tunnel_addresses, ["198.18.0.1:15008"]);
}

#[test]
fn a_refused_document_changes_nothing_on_disk_or_in_force() {
    let fx = Fixture::new();
    let hub = fx.hub();
    hub.apply_policies(POLICIES).unwrap();
    let disk = std::fs::read(fx.state_path()).unwrap();
    let view = hub.feed().current();

    let bad = POLICIES.replace("name: greeter-from-client", "name: changed")
        + "  - name: extra\n    default_action: maybe\n";
    let e = hub.apply_policies(&bad).unwrap_err().to_string();
    assert!(
        e.starts_with("line 14, column 21: namespaces[1].default_action:"),
        "{e}"
    );
    assert_eq!(std::fs::read(fx.state_path()).unwrap(), disk);
    assert_eq!(*hub.feed().current(), *view);
    let refused = hub.metrics.policy_applies.with_label_values(&["refused"]);
    assert_eq!(refused.get(), 1);
}

#[test]
fn a_failed_write_leaves_the_state_in_force() {
    let fx = Fixture::new();
    let hub = fx.hub();
    let view = hub.feed().current();
    // A directory where the file should be: the atomic rename fails.
    std::fs::remove_file(fx.state_path()).unwrap();
    std::fs::create_dir(fx.state_path()).unwrap();
    let e = hub.apply_policies(POLICIES).unwrap_err();
    assert!(matches!(e, ChangeError::State(_)), "{e}");
    assert_eq!(*hub.feed().current(), *view);
    assert!(hub.state().records().policies.is_empty());

    std::fs::remove_dir(fx.state_path()).unwrap();
    let (_, version) = hub.apply_policies(POLICIES).unwrap();
    assert_eq!(version, view.version + 1);
}

#[test]
fn api_workloads_that_clash_with_the_file_are_refused_naming_both() {
    let fx = Fixture::new();
    let hub = fx.hub();
    let e = hub
        .add_workload(&api_workload("greeter", "198.18.1.99"))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "workload demo/greeter is defined both by the registry file and by the API"
    );
    let e = hub
        .add_workload(&api_workload("client", "198.18.2.10"))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "address 198.18.2.10 of demo/client (the API) is already used by demo/greeter \
         (the registry file)"
    );
    hub.add_workload(&api_workload("client", "198.18.1.10"))
        .unwrap();
    let e = hub
        .add_workload(&api_workload("other", "198.18.1.10"))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("already used by demo/client (the API)"),
        "{e}"
    );

    // Replacing an API workload by name is allowed, its own address included.
    let mut moved = api_workload("client", "198.18.1.10");
    moved.addresses.push("198.18.1.11".into());
    hub.add_workload(&moved).unwrap();
    assert_eq!(
        hub.registry()
            .get("demo", "client")
            .unwrap()
            .addresses
            .len(),
        2
    );
}

#[test]
fn bad_api_workloads_name_the_field() {
    let fx = Fixture::new();
    let hub = fx.hub();
    type Change = fn(&mut v1::Workload);
    let cases: [(Change, &str); 5] = [
        (
            |w| w.name = "Bad".into(),
            "workload.name: \"Bad\" is not a valid name",
        ),
        (
            |w| w.node = String::new(),
            "workload.node: \"\" is not a valid name",
        ),
        (
            |w| w.addresses = vec!["1.2.3.4".into(), "x".into()],
            "workload.addresses[1]: \"x\"",
        ),
        (|w| w.addresses.clear(), "no addresses"),
        (
            |w| _ = w.labels.insert("a b".into(), "c".into()),
            "workload.labels: label key \"a b\"",
        ),
    ];
    for (change, expected) in cases {
        let mut w = api_workload("client", "198.18.1.10");
        change(&mut w);
        let e = hub.add_workload(&w).unwrap_err().to_string();
        assert!(e.contains(expected), "expected {expected:?} in {e:?}");
    }
    assert!(hub.state().records().workloads.is_empty());
}

#[test]
fn removals_are_refused_for_file_and_unknown_workloads_and_policies() {
    let fx = Fixture::new();
    let hub = fx.hub();
    let e = hub.remove_workload("demo", "greeter").unwrap_err();
    assert!(matches!(e, ChangeError::Refused(_)), "{e}");
    assert!(
        e.to_string().contains("defined by the registry file"),
        "{e}"
    );
    let e = hub.remove_workload("demo", "nobody").unwrap_err();
    assert!(matches!(e, ChangeError::NotFound(_)), "{e}");
    let e = hub.delete_policy("nothing").unwrap_err();
    assert_eq!(e.to_string(), "no policy is named \"nothing\"");

    hub.add_workload(&api_workload("client", "198.18.1.10"))
        .unwrap();
    hub.remove_workload("demo", "client").unwrap();
    assert!(hub.registry().get("demo", "client").is_none());
}

#[test]
fn a_registry_file_that_clashes_with_the_api_is_refused() {
    let fx = Fixture::new();
    let hub = fx.hub();
    hub.add_workload(&api_workload("client", "198.18.1.10"))
        .unwrap();
    let clash = FILE.replace("name: greeter", "name: client");
    let file = Registry::parse(&clash, &hub.trust_domain).unwrap();
    let e = hub.replace_file_registry(file).unwrap_err();
    assert!(e.to_string().contains("demo/client is defined both"), "{e}");
    assert!(
        hub.registry().get("demo", "greeter").is_some(),
        "the old file stays"
    );

    let same = Registry::parse(FILE, &hub.trust_domain).unwrap();
    assert_eq!(hub.replace_file_registry(same).unwrap(), None);
}

/// Opens a Subscribe stream on the hub's feed as a proxy holding `have`.
fn subscribe(hub: &Arc<Hub>, have: u64, epoch: &str) -> mpsc::Receiver<Result<v1::Update, Status>> {
    let (tx, rx) = mpsc::channel(4);
    let (hub, epoch) = (hub.clone(), epoch.to_owned());
    tokio::spawn(async move { hub.feed().stream(have, &epoch, tx).await });
    rx
}

async fn next(rx: &mut mpsc::Receiver<Result<v1::Update, Status>>) -> v1::Update {
    let wait = tokio::time::timeout(Duration::from_secs(5), rx.recv());
    wait.await.expect("an update").expect("open").expect("ok")
}

use tonic::Status;

#[tokio::test]
async fn subscribers_resume_after_a_restart() {
    let fx = Fixture::new();
    let hub = fx.hub();
    let mut rx = subscribe(&hub, 0, "");
    let full = next(&mut rx).await;
    assert!(full.full && full.workloads.len() == 1 && full.policies.is_empty());
    assert_eq!(full.workloads[0].labels["app"], "greeter");
    assert_eq!(full.trust_bundle_der.len(), 1);

    hub.apply_policies(POLICIES).unwrap();
    let delta = next(&mut rx).await;
    assert_eq!((delta.full, delta.from_version), (false, full.version));
    assert_eq!(delta.policies.len(), 1);
    assert!(delta.namespace_defaults_changed && delta.workloads.is_empty());

    hub.delete_policy("greeter-from-client").unwrap();
    let delta = next(&mut rx).await;
    assert_eq!(delta.removed_policies, ["greeter-from-client"]);
    let (held, epoch) = (delta.version, delta.epoch.clone());
    drop((rx, hub));

    // After a restart the history is gone: in sync still works, an older version gets it all.
    let hub = fx.hub();
    let in_sync = next(&mut subscribe(&hub, held, &epoch)).await;
    assert!(!in_sync.full && in_sync.from_version == held && in_sync.version == held);
    let behind = next(&mut subscribe(&hub, held - 1, &epoch)).await;
    assert!(behind.full);
    let other = next(&mut subscribe(&hub, held, "another-epoch")).await;
    assert!(other.full && other.epoch == epoch);

    // While it runs, a proxy one or two versions behind gets a delta.
    hub.apply_policies(POLICIES).unwrap();
    hub.add_workload(&api_workload("client", "198.18.1.10"))
        .unwrap();
    let delta = next(&mut subscribe(&hub, held, &epoch)).await;
    assert!(!delta.full && delta.from_version == held && delta.version == held + 2);
    assert_eq!((delta.policies.len(), delta.workloads.len()), (1, 1));
}

/// The latency from an apply until each subscriber holds the update, at `n` subscribers.
async fn fan_out(n: usize) -> Vec<Duration> {
    let fx = Fixture::new();
    let hub = fx.hub();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let start = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut ready = Vec::new();
    for _ in 0..n {
        let mut rx = subscribe(&hub, 0, "");
        let (done, start) = (done_tx.clone(), start.clone());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        ready.push(ready_rx);
        tokio::spawn(async move {
            let first = next(&mut rx).await;
            let _ = ready_tx.send(());
            let update = next(&mut rx).await;
            let latency = start.get().expect("apply started").elapsed();
            let _ = done.send((update.from_version == first.version, update, latency));
        });
    }
    for r in ready {
        r.await.unwrap();
    }

    start.set(Instant::now()).unwrap();
    let hub2 = hub.clone();
    tokio::task::spawn_blocking(move || hub2.apply_policies(POLICIES).unwrap())
        .await
        .unwrap();
    let mut latencies = Vec::new();
    for _ in 0..n {
        let (from_held, update, latency) = done_rx.recv().await.unwrap();
        assert!(from_held && !update.full && update.policies.len() == 1);
        latencies.push(latency);
    }
    latencies.sort();
    latencies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_1000_subscribers() {
    let latencies = fan_out(1000).await;
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let (p50, p99, max) = (at(0.50), at(0.99), at(1.0));
    println!("fan-out to 1000 subscribers: p50 {p50:?}, p99 {p99:?}, max {max:?}");
    assert_eq!(latencies.len(), 1000);
    assert!(max < Duration::from_secs(1), "max {max:?}");
}
