//! Applying Subscribe updates, and the disk cache.

use super::*;

fn workload(name: &str, node: &str) -> v1::Workload {
    v1::Workload {
        name: name.into(),
        namespace: "demo".into(),
        service_account: name.into(),
        node: node.into(),
        addresses: vec![format!("198.18.1.{}", 10 + name.len())],
        spiffe_id: format!("spiffe://td/ns/demo/sa/{name}"),
        ..Default::default()
    }
}

fn policy(name: &str, action: &str) -> v1::Policy {
    v1::Policy {
        name: name.into(),
        action: action.into(),
        source: Some(v1::PolicySource {
            namespace: "demo".into(),
            ..Default::default()
        }),
        destination: Some(v1::PolicyDestination {
            namespace: "demo".into(),
            ports: vec![50051],
            ..Default::default()
        }),
    }
}

fn full(version: u64) -> v1::Update {
    v1::Update {
        version,
        epoch: "e1".into(),
        full: true,
        trust_domain: "td".into(),
        workloads: vec![workload("a", "n1"), workload("bb", "n2")],
        policies: vec![policy("p1", "allow")],
        namespace_defaults_changed: true,
        namespace_defaults: vec![v1::NamespaceDefault {
            namespace: "demo".into(),
            action: "deny".into(),
        }],
        trust_bundle_der: vec![vec![1, 2, 3]],
        ..Default::default()
    }
}

fn delta(from: u64, to: u64) -> v1::Update {
    v1::Update {
        version: to,
        from_version: from,
        epoch: "e1".into(),
        trust_domain: "td".into(),
        ..Default::default()
    }
}

#[test]
fn deltas_apply_on_top_of_a_full_update() {
    let mut s = MeshState::default();
    assert!(s.apply(&full(5)).unwrap());
    let mut d = delta(5, 6);
    d.removed_workloads = vec!["demo/bb".into(), "demo/never-held".into()];
    d.workloads = vec![workload("ccc", "n1")];
    d.policies = vec![policy("p2", "deny")];
    assert!(s.apply(&d).unwrap());
    assert_eq!(s.version, 6);
    let names: Vec<_> = s.workloads().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["a", "ccc"]);
    assert_eq!(
        s.bundle(),
        &[vec![1u8, 2, 3]],
        "an empty bundle field leaves the bundle"
    );
    assert_eq!(
        s.namespace_defaults.len(),
        1,
        "defaults stay unless flagged as changed"
    );

    let mut clear = delta(6, 7);
    clear.namespace_defaults_changed = true;
    assert!(s.apply(&clear).unwrap());
    assert!(s.namespace_defaults.is_empty());
}

#[test]
fn an_in_sync_update_changes_nothing() {
    let mut s = MeshState::default();
    s.apply(&full(5)).unwrap();
    assert!(!s.apply(&delta(5, 5)).unwrap());
    assert!(
        !s.apply(&full(5)).unwrap(),
        "the same full state again is no change"
    );
}

#[test]
fn deltas_for_another_base_or_epoch_are_refused_and_change_nothing() {
    let mut s = MeshState::default();
    s.apply(&full(5)).unwrap();
    let before = s.clone();
    assert_eq!(
        s.apply(&delta(4, 6)),
        Err(UpdateError::WrongBase { have: 5, from: 4 })
    );
    let mut other = delta(5, 6);
    other.epoch = "e2".into();
    assert!(matches!(
        s.apply(&other),
        Err(UpdateError::OtherEpoch { .. })
    ));
    assert_eq!(s, before);
}

#[test]
fn policies_convert_to_the_evaluation_form() {
    let mut s = MeshState::default();
    s.apply(&full(1)).unwrap();
    let set = s.policy_set().unwrap();
    assert_eq!(set.default_action("demo"), Action::Deny);
    let mut bad = delta(1, 2);
    let mut p = policy("p3", "allow");
    p.source.as_mut().unwrap().spiffe_id = "spiffe://td/x/".into();
    bad.policies = vec![p];
    s.apply(&bad).unwrap();
    let e = s.policy_set().unwrap_err();
    assert!(e.contains("p3") && e.contains("source.spiffe_id"), "{e}");
}

#[test]
fn the_cache_round_trips_and_refuses_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let cache = MeshCache::new(dir.path());
    assert!(cache.load().unwrap().is_none());
    let mut s = MeshState::default();
    s.apply(&full(9)).unwrap();
    cache.save(&s).unwrap();
    assert_eq!(cache.load().unwrap(), Some(s));

    let saved = std::fs::read(dir.path().join("mesh.pb")).unwrap();
    for cut in [3, 20, saved.len() / 2, saved.len() - 1] {
        std::fs::write(dir.path().join("mesh.pb"), &saved[..cut]).unwrap();
        let e = cache.load().unwrap_err().to_string();
        assert!(e.contains("corrupt"), "cut at {cut}: {e}");
    }
    std::fs::write(dir.path().join("mesh.pb"), b"\xff\xff garbage").unwrap();
    let e = cache.load().unwrap_err().to_string();
    assert!(e.contains("mesh.pb") && e.contains("corrupt"), "{e}");
    cache.set_aside();
    assert!(cache.load().unwrap().is_none());
    assert!(dir.path().join("mesh.pb.corrupt").exists());
}
