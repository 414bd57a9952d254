//! Unit tests of delta computation and of where a subscriber starts: in sync, a delta, a full
//! update, another epoch; and of merging when a subscriber falls behind.

use super::*;

const EPOCH: &str = "e1";

fn policy(name: &str, namespace: &str) -> v1::Policy {
    v1::Policy {
        name: name.into(),
        action: "allow".into(),
        source: Some(v1::PolicySource {
            namespace: "demo".into(),
            ..Default::default()
        }),
        destination: Some(v1::PolicyDestination {
            namespace: namespace.into(),
            ..Default::default()
        }),
    }
}

fn workload(name: &str, address: &str) -> v1::Workload {
    v1::Workload {
        name: name.into(),
        namespace: "demo".into(),
        addresses: vec![address.into()],
        ..Default::default()
    }
}

/// Version 1: workloads a and b, policy p, node n1, one root.
fn base() -> View {
    View {
        version: 1,
        trust_domain: "td".into(),
        workloads: [("demo/a", "198.18.1.10"), ("demo/b", "198.18.1.11")]
            .map(|(k, ip)| (k.to_string(), workload(&k[5..], ip)))
            .into(),
        nodes: [("n1".to_string(), v1::Node::default())].into(),
        policies: [("p".to_string(), policy("p", "demo"))].into(),
        namespace_defaults: vec![],
        trust_bundle: vec![b"root-1".to_vec()],
    }
}

/// A feed at version 1 that then published `steps` changes, each one step further.
fn feed_with(steps: &[fn(&mut View)]) -> Feed {
    let feed = Feed::new(EPOCH.into(), Arc::new(base()), Metrics::new());
    let mut view = base();
    for step in steps {
        let before = view.clone();
        step(&mut view);
        view.version += 1;
        feed.publish(Arc::new(view.clone()), Touched::between(&before, &view));
    }
    feed
}

fn add_policy_q(v: &mut View) {
    v.policies.insert("q".into(), policy("q", "demo"));
}

fn remove_workload_a(v: &mut View) {
    v.workloads.remove("demo/a");
}

fn deny_demo(v: &mut View) {
    v.namespace_defaults = vec![v1::NamespaceDefault {
        namespace: "demo".into(),
        action: "deny".into(),
    }];
}

fn move_b(v: &mut View) {
    v.workloads.get_mut("demo/b").unwrap().addresses = vec!["198.18.1.12".into()];
}

#[test]
fn a_delta_carries_only_what_changed() {
    let old = base();
    let mut new = base();
    add_policy_q(&mut new);
    remove_workload_a(&mut new);
    move_b(&mut new);
    new.policies.get_mut("p").unwrap().action = "deny".into();
    new.version = 2;

    let touched = Touched::between(&old, &new);
    assert_eq!(
        touched.workloads,
        ["demo/a", "demo/b"].map(String::from).into()
    );
    assert_eq!(touched.policies, ["p", "q"].map(String::from).into());
    assert!(touched.nodes.is_empty() && !touched.namespace_defaults && !touched.trust_bundle);

    let d = new.delta(EPOCH, 1, &touched);
    assert!(!d.full);
    assert_eq!((d.from_version, d.version, d.epoch.as_str()), (1, 2, EPOCH));
    assert_eq!(d.trust_domain, "td");
    assert_eq!(d.removed_workloads, vec!["demo/a"]);
    assert_eq!(d.workloads, vec![new.workloads["demo/b"].clone()]);
    let names: Vec<_> = d.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["p", "q"]);
    assert!(d.removed_policies.is_empty() && d.nodes.is_empty());
    assert!(!d.namespace_defaults_changed && d.namespace_defaults.is_empty());
    assert!(
        d.trust_bundle_der.is_empty(),
        "an unchanged bundle is not sent"
    );
}

#[test]
fn defaults_and_bundle_travel_whole_when_changed() {
    let old = base();
    let mut new = base();
    deny_demo(&mut new);
    new.trust_bundle.push(b"root-2".to_vec());
    let d = new.delta(EPOCH, 1, &Touched::between(&old, &new));
    assert!(d.namespace_defaults_changed);
    assert_eq!(d.namespace_defaults, new.namespace_defaults);
    assert_eq!(d.trust_bundle_der.len(), 2);

    // Clearing every default is a change with an empty list.
    let cleared = base();
    let d = cleared.delta(EPOCH, 2, &Touched::between(&new, &cleared));
    assert!(d.namespace_defaults_changed && d.namespace_defaults.is_empty());
}

#[test]
fn a_full_update_holds_everything() {
    let u = base().full(EPOCH);
    assert!(u.full && u.namespace_defaults_changed);
    assert_eq!((u.version, u.from_version), (1, 0));
    assert_eq!(
        (u.workloads.len(), u.nodes.len(), u.policies.len()),
        (2, 1, 1)
    );
    assert_eq!(u.trust_bundle_der, vec![b"root-1".to_vec()]);
}

#[test]
fn the_fingerprint_follows_content_not_version() {
    let mut a = base();
    let b = base();
    a.version = 99;
    assert_eq!(a.fingerprint(), b.fingerprint());
    a.workloads
        .get_mut("demo/a")
        .unwrap()
        .labels
        .insert("app".into(), "x".into());
    assert_ne!(a.fingerprint(), b.fingerprint());
}

#[test]
fn a_subscriber_in_sync_gets_an_empty_update() {
    let feed = feed_with(&[add_policy_q]);
    let (u, kind) = feed.first_update(&feed.current(), 2, EPOCH);
    assert_eq!(kind, Kind::InSync);
    assert_eq!(
        u,
        v1::Update {
            version: 2,
            epoch: EPOCH.into(),
            from_version: 2,
            trust_domain: "td".into(),
            ..Default::default()
        }
    );
}

#[test]
fn a_subscriber_a_little_behind_gets_one_merged_delta() {
    let feed = feed_with(&[add_policy_q, remove_workload_a, deny_demo, move_b]);
    let (u, kind) = feed.first_update(&feed.current(), 2, EPOCH);
    assert_eq!(kind, Kind::Delta);
    assert_eq!((u.from_version, u.version, u.full), (2, 5, false));
    assert!(u.policies.is_empty(), "q came before version 2");
    assert_eq!(u.removed_workloads, vec!["demo/a"]);
    assert_eq!(u.workloads[0].addresses, vec!["198.18.1.12"]);
    assert!(u.namespace_defaults_changed);

    let (u, _) = feed.first_update(&feed.current(), 1, EPOCH);
    assert_eq!(u.policies[0].name, "q");
}

#[test]
fn other_epochs_nothing_held_and_unknown_versions_get_everything() {
    let feed = feed_with(&[add_policy_q, remove_workload_a]);
    let view = feed.current();
    for (version, epoch) in [(3, "other"), (3, ""), (0, EPOCH), (9, EPOCH)] {
        let (u, kind) = feed.first_update(&view, version, epoch);
        assert_eq!(kind, Kind::Full, "{version} {epoch}");
        assert!(u.full && u.from_version == 0 && u.version == 3);
        assert_eq!(u.epoch, EPOCH);
        assert_eq!(u.policies.len(), 2);
    }
}

#[test]
fn a_subscriber_behind_the_history_gets_everything() {
    // The feed starts at version 1 with no history: version 0 or an older cache is unknown.
    let feed = Feed::new(
        EPOCH.into(),
        Arc::new(View {
            version: 7,
            ..base()
        }),
        Metrics::new(),
    );
    let (u, kind) = feed.first_update(&feed.current(), 6, EPOCH);
    assert_eq!(kind, Kind::Full);
    assert!(u.full);
}

#[test]
fn the_shared_step_serves_a_subscriber_one_version_behind() {
    let feed = feed_with(&[add_policy_q]);
    let published = feed.latest.borrow().clone();
    let step = published.step.clone().expect("a step from 1 to 2");
    let (u, kind) = feed.next_update(&published, 1);
    assert_eq!(kind, Kind::Delta);
    assert_eq!(u, *step);
    let (u, kind) = feed.next_update(&published, 2);
    assert_eq!(kind, Kind::InSync);
    assert!(u.policies.is_empty());
}

#[tokio::test]
async fn a_stream_sends_one_update_per_change_and_merges_when_behind() {
    let feed = Arc::new(feed_with(&[]));
    let (tx, mut rx) = mpsc::channel(1);
    let streaming = feed.clone();
    tokio::spawn(async move { streaming.stream(1, EPOCH, tx).await });
    let first = rx.recv().await.unwrap().unwrap();
    assert_eq!(
        (first.version, first.from_version, first.full),
        (1, 1, false)
    );

    let mut view = base();
    let mut publish = |step: fn(&mut View)| {
        let before = view.clone();
        step(&mut view);
        view.version += 1;
        feed.publish(Arc::new(view.clone()), Touched::between(&before, &view));
    };
    publish(add_policy_q);
    let u = rx.recv().await.unwrap().unwrap();
    assert_eq!((u.from_version, u.version), (1, 2));

    // Three changes while the receiver does not read: at most the one buffered message is
    // ahead, and the next one brings the receiver to version 5 whatever it skipped.
    publish(remove_workload_a);
    publish(deny_demo);
    publish(move_b);
    let mut held = 2;
    while held != 5 {
        let u = rx.recv().await.unwrap().unwrap();
        assert_eq!(
            u.from_version, held,
            "each update starts where the last one ended"
        );
        held = u.version;
    }
    assert_eq!(feed.metrics.subscribers.get(), 1);
    drop(rx);
    publish(add_policy_q);
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while feed.metrics.subscribers.get() != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the stream ends when its receiver goes away");
}
