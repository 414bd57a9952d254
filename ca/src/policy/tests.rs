//! Unit tests of policy validation and evaluation.

use super::*;

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn source_ns(ns: &str) -> SourceMatch {
    SourceMatch {
        namespace: Some(ns.into()),
        ..Default::default()
    }
}

fn dest(ns: &str) -> DestinationMatch {
    DestinationMatch {
        namespace: ns.into(),
        ..Default::default()
    }
}

fn policy(
    name: &str,
    action: Action,
    source: SourceMatch,
    destination: DestinationMatch,
) -> Policy {
    Policy::new(name, action, source, destination).unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A connection from `source` to workload `demo/greeter` (labels app=greeter, tier=backend).
struct Probe {
    labels: BTreeMap<String, String>,
}

impl Probe {
    fn new() -> Self {
        Self {
            labels: labels(&[("app", "greeter"), ("tier", "backend")]),
        }
    }

    fn decide(&self, set: &PolicySet, source: &str, port: u16) -> Decision {
        self.decide_to(set, source, "demo", "greeter", port)
    }

    fn decide_to(
        &self,
        set: &PolicySet,
        source: &str,
        ns: &str,
        name: &str,
        port: u16,
    ) -> Decision {
        let source = id(source);
        let connection = Connection {
            source: &source,
            destination: Destination {
                namespace: ns,
                name,
                labels: &self.labels,
            },
            port,
        };
        set.evaluate(&connection)
    }
}

fn set(policies: Vec<Policy>, defaults: &[(&str, Action)]) -> PolicySet {
    let defaults = defaults.iter().map(|(ns, a)| (ns.to_string(), *a));
    PolicySet::new(policies, defaults).unwrap()
}

const CLIENT: &str = "spiffe://edgeward.local/ns/demo/sa/client";
const OTHER: &str = "spiffe://edgeward.local/ns/other/sa/client";

#[test]
fn an_empty_set_allows_by_namespace_default() {
    let d = Probe::new().decide(&PolicySet::default(), CLIENT, 50051);
    assert_eq!(d.action, Action::Allow);
    assert_eq!(d.rule, Rule::NamespaceDefault("demo".into()));
    assert_eq!(d.rule.to_string(), "default:demo");
    assert_eq!(d.reason(), "namespace_default_allow");
}

#[test]
fn a_deny_default_denies_unless_allowed() {
    let allow = policy("allow-demo", Action::Allow, source_ns("demo"), dest("demo"));
    let s = set(vec![allow], &[("demo", Action::Deny)]);
    let p = Probe::new();

    let allowed = p.decide(&s, CLIENT, 1);
    assert_eq!(allowed.rule, Rule::Policy("allow-demo".into()));
    assert!(allowed.is_allowed());
    assert_eq!(allowed.reason(), "allow_policy");

    let denied = p.decide(&s, OTHER, 1);
    assert!(!denied.is_allowed());
    assert_eq!(denied.rule.to_string(), "default:demo");
    assert_eq!(denied.reason(), "namespace_default_deny");
}

#[test]
fn defaults_apply_to_their_namespace_only() {
    let s = set(vec![], &[("demo", Action::Deny), ("open", Action::Allow)]);
    let p = Probe::new();
    assert!(!p.decide(&s, CLIENT, 1).is_allowed());
    assert!(p.decide_to(&s, CLIENT, "open", "x", 1).is_allowed());
    assert!(p.decide_to(&s, CLIENT, "unlisted", "x", 1).is_allowed());
    assert_eq!(s.default_action("unlisted"), Action::Allow);
}

#[test]
fn deny_wins_over_allow_whatever_the_names() {
    // "a-allow" sorts first, yet the deny decides.
    let allow = policy("a-allow", Action::Allow, source_ns("demo"), dest("demo"));
    let deny = policy("z-deny", Action::Deny, source_ns("demo"), dest("demo"));
    let s = set(vec![allow, deny], &[]);
    let d = Probe::new().decide(&s, CLIENT, 1);
    assert_eq!(d.action, Action::Deny);
    assert_eq!(d.rule, Rule::Policy("z-deny".into()));
    assert_eq!(d.reason(), "deny_policy");
}

#[test]
fn an_allow_overrides_a_deny_default_but_not_a_deny_policy() {
    let allow = policy("allow", Action::Allow, source_ns("demo"), dest("demo"));
    let deny_port = DestinationMatch {
        ports: [22].into(),
        ..dest("demo")
    };
    let deny = policy("no-ssh", Action::Deny, source_ns("demo"), deny_port);
    let s = set(vec![allow, deny], &[("demo", Action::Deny)]);
    let p = Probe::new();
    assert_eq!(p.decide(&s, CLIENT, 22).rule.to_string(), "no-ssh");
    assert_eq!(p.decide(&s, CLIENT, 80).rule.to_string(), "allow");
}

#[test]
fn the_first_matching_policy_by_name_is_named() {
    let b = policy("b", Action::Deny, source_ns("demo"), dest("demo"));
    let a = policy("a", Action::Deny, source_ns("demo"), dest("demo"));
    let s = set(vec![b, a], &[]);
    assert_eq!(Probe::new().decide(&s, CLIENT, 1).rule.to_string(), "a");
}

#[test]
fn policies_of_other_namespaces_do_not_apply() {
    let deny = policy("deny-other", Action::Deny, source_ns("demo"), dest("other"));
    let s = set(vec![deny], &[]);
    assert!(Probe::new().decide(&s, CLIENT, 1).is_allowed());
}

fn source_decides(source: SourceMatch, caller: &str) -> bool {
    let deny = policy("deny", Action::Deny, source, dest("demo"));
    !Probe::new()
        .decide(&set(vec![deny], &[]), caller, 1)
        .is_allowed()
}

#[test]
fn source_spiffe_id_matches_exactly() {
    let exact = SourceMatch {
        spiffe_id: Some(id(CLIENT)),
        ..Default::default()
    };
    assert!(source_decides(exact.clone(), CLIENT));
    assert!(!source_decides(exact.clone(), OTHER));
    assert!(!source_decides(exact.clone(), &format!("{CLIENT}x")));
    assert!(!source_decides(
        exact,
        "spiffe://other.td/ns/demo/sa/client"
    ));
}

#[test]
fn source_trust_domain_matches_the_ids_trust_domain() {
    let td = SourceMatch {
        trust_domain: Some(TrustDomain::parse("edgeward.local").unwrap()),
        ..Default::default()
    };
    assert!(source_decides(td.clone(), CLIENT));
    assert!(source_decides(
        td.clone(),
        "spiffe://edgeward.local/node/n1"
    ));
    assert!(!source_decides(
        td.clone(),
        "spiffe://edgeward.localx/ns/demo/sa/c"
    ));
    assert!(!source_decides(td, "spiffe://other/ns/demo/sa/client"));
}

#[test]
fn source_namespace_matches_any_trust_domain() {
    let ns = source_ns("demo");
    assert!(source_decides(ns.clone(), CLIENT));
    assert!(source_decides(ns.clone(), "spiffe://other/ns/demo/sa/x"));
    assert!(source_decides(ns.clone(), "spiffe://other/ns/demo"));
    assert!(!source_decides(
        ns.clone(),
        "spiffe://edgeward.local/ns/demo-2/sa/x"
    ));
    assert!(!source_decides(
        ns.clone(),
        "spiffe://edgeward.local/ns/dem/sa/x"
    ));
    assert!(!source_decides(
        ns.clone(),
        "spiffe://edgeward.local/x/ns/demo/sa/x"
    ));
    assert!(!source_decides(ns, "spiffe://edgeward.local"));
}

#[test]
fn source_path_prefix_matches_on_segment_boundaries() {
    let prefix = |p: &str| SourceMatch {
        path_prefix: Some(p.into()),
        ..Default::default()
    };
    assert!(source_decides(prefix("/ns/demo"), CLIENT));
    assert!(source_decides(prefix("/ns/demo/"), CLIENT));
    assert!(source_decides(prefix("/ns/demo/sa/client"), CLIENT));
    assert!(source_decides(prefix("/"), CLIENT));
    assert!(!source_decides(prefix("/ns/dem"), CLIENT));
    assert!(!source_decides(
        prefix("/ns/demo"),
        "spiffe://td/ns/demo-evil/sa/x"
    ));
    assert!(!source_decides(prefix("/ns/demo/sa/client/"), CLIENT));
    assert!(!source_decides(prefix("/node"), CLIENT));
}

#[test]
fn every_source_field_must_match() {
    let both = SourceMatch {
        namespace: Some("demo".into()),
        trust_domain: Some(TrustDomain::parse("edgeward.local").unwrap()),
        ..Default::default()
    };
    assert!(source_decides(both.clone(), CLIENT));
    assert!(!source_decides(
        both.clone(),
        "spiffe://other/ns/demo/sa/client"
    ));
    assert!(!source_decides(both, OTHER));
}

fn destination_decides(destination: DestinationMatch, name: &str, port: u16) -> bool {
    let deny = policy("deny", Action::Deny, source_ns("demo"), destination);
    !Probe::new()
        .decide_to(&set(vec![deny], &[]), CLIENT, "demo", name, port)
        .is_allowed()
}

#[test]
fn destination_name_selects_one_workload() {
    let named = DestinationMatch {
        name: Some("greeter".into()),
        ..dest("demo")
    };
    assert!(destination_decides(named.clone(), "greeter", 1));
    assert!(!destination_decides(named, "other", 1));
    assert!(destination_decides(dest("demo"), "anything", 1));
}

#[test]
fn destination_labels_must_all_be_present_with_their_values() {
    let with = |pairs: &[(&str, &str)]| DestinationMatch {
        labels: labels(pairs),
        ..dest("demo")
    };
    assert!(destination_decides(
        with(&[("app", "greeter")]),
        "greeter",
        1
    ));
    assert!(destination_decides(
        with(&[("app", "greeter"), ("tier", "backend")]),
        "greeter",
        1
    ));
    assert!(!destination_decides(
        with(&[("app", "other")]),
        "greeter",
        1
    ));
    assert!(!destination_decides(
        with(&[("app", "greeter"), ("zone", "a")]),
        "greeter",
        1
    ));
}

#[test]
fn destination_ports_restrict_when_given() {
    let ports = DestinationMatch {
        ports: [50051, 8080].into(),
        ..dest("demo")
    };
    assert!(destination_decides(ports.clone(), "greeter", 50051));
    assert!(destination_decides(ports.clone(), "greeter", 8080));
    assert!(!destination_decides(ports, "greeter", 50052));
    assert!(destination_decides(dest("demo"), "greeter", 65535));
}

#[test]
fn invalid_policies_are_refused_with_the_reason() {
    let refused = |name: &str, source: SourceMatch, destination: DestinationMatch| {
        Policy::new(name, Action::Allow, source, destination).unwrap_err()
    };
    let ok_src = source_ns("demo");
    assert!(matches!(
        refused("Bad_Name", ok_src.clone(), dest("demo")),
        PolicyError::BadPolicyName(_)
    ));
    assert_eq!(
        refused("p", SourceMatch::default(), dest("demo")),
        PolicyError::EmptySource
    );
    assert!(matches!(
        refused("p", source_ns("Demo"), dest("demo")),
        PolicyError::BadName(_)
    ));
    assert!(matches!(
        refused("p", ok_src.clone(), dest("")),
        PolicyError::BadName(_)
    ));
    let port_zero = DestinationMatch {
        ports: [0].into(),
        ..dest("demo")
    };
    assert_eq!(
        refused("p", ok_src.clone(), port_zero),
        PolicyError::BadPort(0)
    );
    let bad_label = DestinationMatch {
        labels: labels(&[("-app", "x")]),
        ..dest("demo")
    };
    assert!(matches!(
        refused("p", ok_src.clone(), bad_label),
        PolicyError::BadLabelKey { .. }
    ));
    let bad_prefix = SourceMatch {
        path_prefix: Some("ns/demo".into()),
        ..Default::default()
    };
    assert!(matches!(
        refused("p", bad_prefix, dest("demo")),
        PolicyError::BadPathPrefix { .. }
    ));
}

#[test]
fn policy_names_follow_dns_name_rules() {
    for good in ["a", "allow-demo", "demo.allow.v2", &"a".repeat(253)] {
        assert_eq!(check_policy_name(good), Ok(()), "{good}");
    }
    for bad in [
        "",
        "-a",
        "a-",
        ".a",
        "A",
        "a_b",
        "a b",
        "é",
        &"a".repeat(254),
    ] {
        assert!(check_policy_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn names_are_dns_labels() {
    for good in ["a", "demo", "demo-2", &"a".repeat(63)] {
        assert_eq!(check_name(good), Ok(()), "{good}");
    }
    for bad in ["", "a.b", "-a", "a-", "Demo", &"a".repeat(64)] {
        assert!(check_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn path_prefixes_are_checked() {
    for good in ["/", "/ns", "/ns/demo/", "/ns/demo/sa/x_y.z-1"] {
        assert_eq!(check_path_prefix(good), Ok(()), "{good}");
    }
    let cases = [
        ("", "start with '/'"),
        ("ns/demo", "start with '/'"),
        ("/ns//demo", "empty segment"),
        ("//", "empty segment"),
        ("/ns/../x", "'..' segment"),
        ("/ns/./", "'..' segment"),
        ("/ns/d%41", "only letters"),
        ("/ns/demo?x", "only letters"),
    ];
    for (bad, why) in cases {
        let e = check_path_prefix(bad).unwrap_err().to_string();
        assert!(e.contains(why), "{bad:?}: {e}");
    }
    let long = format!("/{}", "a".repeat(MAX_ID_LEN));
    assert!(check_path_prefix(&long).is_err());
}

#[test]
fn ports_are_1_to_65535() {
    assert_eq!(check_port(1), Ok(1));
    assert_eq!(check_port(65535), Ok(65535));
    assert_eq!(check_port(0), Err(PolicyError::BadPort(0)));
    assert_eq!(check_port(65536), Err(PolicyError::BadPort(65536)));
    assert_eq!(check_port(u64::MAX), Err(PolicyError::BadPort(u64::MAX)));
}

#[test]
fn labels_follow_kubernetes_rules() {
    for (k, v) in [
        ("app", "greeter"),
        ("app", ""),
        ("edgeward.io/tier", "back_end.1"),
        ("A-b", "X"),
    ] {
        assert_eq!(check_label(k, v), Ok(()), "{k}={v}");
    }
    let key_problems = ["", "-a", "a/", "/a", "Bad.Prefix/a", "a b", &"k".repeat(64)];
    for k in key_problems {
        let e = check_label(k, "v").unwrap_err();
        assert!(matches!(e, PolicyError::BadLabelKey { .. }), "{k:?}: {e}");
    }
    for v in ["-v", "v-", "a b", "ü", &"v".repeat(64)] {
        let e = check_label("app", v).unwrap_err();
        assert!(matches!(e, PolicyError::BadLabelValue { .. }), "{v:?}: {e}");
    }
}

#[test]
fn actions_parse_in_lower_case_only() {
    assert_eq!("allow".parse(), Ok(Action::Allow));
    assert_eq!("deny".parse(), Ok(Action::Deny));
    for bad in ["Allow", "DENY", "permit", ""] {
        assert!(bad.parse::<Action>().is_err(), "{bad}");
    }
    assert_eq!(Action::Deny.to_string(), "deny");
}

#[test]
fn a_set_refuses_duplicate_names_and_bad_namespaces() {
    let a = policy("a", Action::Allow, source_ns("demo"), dest("demo"));
    let e = PolicySet::new(vec![a.clone(), a.clone()], []).unwrap_err();
    assert_eq!(e, PolicyError::DuplicateName("a".into()));
    let e = PolicySet::new(vec![a], [("Bad".to_string(), Action::Deny)]).unwrap_err();
    assert!(matches!(e, PolicyError::BadName(_)));
}
