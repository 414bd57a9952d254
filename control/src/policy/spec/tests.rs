//! Unit tests of policy documents: the good form, every refusal (each naming its line and
//! field), and the round trips through YAML and the control API.

use edgeward_ca::policy::{Connection, Destination};
use edgeward_proto::v1;

use super::*;
use crate::policy::proto::{document_from_proto, policy_set_from_proto};

const GOOD: &str = "\
policies:
  - name: greeter-from-client
    action: allow
    source:
      namespace: demo
    destination:
      namespace: demo
      name: greeter
      labels: {app: greeter}
      ports: [50051]
  - name: deny-legacy
    action: deny
    source:
      spiffe_id: spiffe://edgeward.local/ns/legacy/sa/old
    destination:
      namespace: demo
namespaces:
  - name: demo
    default_action: deny
";

/// GOOD with line `line` (1-based) replaced by `text` (which may span lines or be empty).
fn with_line(line: usize, text: &str) -> String {
    let mut lines: Vec<&str> = GOOD.lines().collect();
    lines[line - 1] = text;
    lines.retain(|l| !l.is_empty());
    lines.join("\n") + "\n"
}

fn refusal(yaml: &str) -> String {
    PolicyDocument::parse(yaml).unwrap_err().to_string()
}

#[test]
fn parses_a_good_document() {
    let doc = PolicyDocument::parse(GOOD).unwrap();
    assert_eq!(doc.policies.0.len(), 2);
    assert_eq!(doc.namespaces.0.len(), 1);
    let first = doc.policies.0[0].to_policy().unwrap();
    assert_eq!(first.name(), "greeter-from-client");
    assert_eq!(first.destination().ports, [50051].into());
    assert_eq!(first.destination().labels["app"], "greeter");
}

#[test]
fn every_refusal_names_the_line_and_the_field() {
    let cases = [
        (with_line(1, "policiess:"), "line 1, column 1: unknown field `policiess`"),
        (
            with_line(2, "  - name: Greeter"),
            "line 2, column 11: policies[0].name: \"Greeter\" is not a valid policy name",
        ),
        (
            with_line(3, "    action: permit"),
            "line 3, column 13: policies[0].action: \"permit\" is not an action",
        ),
        (with_line(3, ""), "line 2, column 5: policies[0]: missing field `action`"),
        (
            with_line(5, "      namespac: demo"),
            "line 5, column 7: policies[0].source: unknown field `namespac`",
        ),
        (
            with_line(7, "      namespace: Demo"),
            "line 7, column 18: policies[0].destination.namespace: \"Demo\" is not a valid name",
        ),
        (
            with_line(9, "      labels: {\"-app\": greeter}"),
            "line 9, column 24: policies[0].destination.labels.-app: label key \"-app\"",
        ),
        (
            with_line(9, "      labels: {app: \"green ter\"}"),
            "line 9, column 21: policies[0].destination.labels.app: label \"app\" has an invalid",
        ),
        (
            with_line(10, "      ports: 50051"),
            "line 10, column 14: policies[0].destination.ports: invalid type: integer",
        ),
        (
            with_line(10, "      ports: [0]"),
            "line 10, column 15: policies[0].destination.ports[0]: port 0 is outside 1-65535",
        ),
        (
            with_line(10, "      ports: [80, 70000]"),
            "line 10, column 19: policies[0].destination.ports[1]: port 70000 is outside",
        ),
        (
            with_line(10, "      ports: [-5]"),
            "line 10, column 15: policies[0].destination.ports[0]: port -5 is outside",
        ),
        (
            with_line(11, "  - name: greeter-from-client"),
            "line 11, column 5: policies[1]: name \"greeter-from-client\" is already used by \
             entry [0]",
        ),
        (
            with_line(14, "      spiffe_id: spiffe://Edgeward.local/ns/a/sa/b"),
            "line 14, column 18: policies[1].source.spiffe_id: \
             \"spiffe://Edgeward.local/ns/a/sa/b\" is not a valid SPIFFE ID: the trust domain \
             must be lower case",
        ),
        (
            with_line(14, "      spiffe_id: spiffe://edgeward.local/ns/a/sa/b/"),
            "line 14, column 18: policies[1].source.spiffe_id: \
             \"spiffe://edgeward.local/ns/a/sa/b/\" is not a valid SPIFFE ID: the path ends with \
             a slash",
        ),
        (
            with_line(14, "      trust_domain: \"edgeward.local:8080\""),
            "line 14, column 21: policies[1].source.trust_domain: \"edgeward.local:8080\" is not a \
             valid trust domain",
        ),
        (
            with_line(14, "      path_prefix: ns/legacy"),
            "line 14, column 20: policies[1].source.path_prefix: \"ns/legacy\" is not a valid path \
             prefix: it must start with '/'",
        ),
        (
            with_line(14, "      spiffe_id: [a]"),
            "line 14, column 18: policies[1].source.spiffe_id: invalid type: sequence, expected a \
             SPIFFE ID",
        ),
        (
            with_line(13, "    source: {}"),
            "line 13, column 13: policies[1].source: the source is empty and would match every \
             caller",
        ),
        (
            with_line(16, ""),
            "line 15, column 17: policies[1].destination: missing field `namespace`",
        ),
        (
            with_line(16, "      namespace: demo\n      port: [1]"),
            "line 17, column 7: policies[1].destination: unknown field `port`",
        ),
        (
            with_line(19, "    default_action: maybe"),
            "line 19, column 21: namespaces[0].default_action: \"maybe\" is not an action",
        ),
        (
            with_line(19, "    default_action: deny\n  - name: demo\n    default_action: allow"),
            "line 20, column 5: namespaces[1]: name \"demo\" is already used by entry [0]",
        ),
        ("policies: 5\n".into(), "line 1, column 11: policies: invalid type: integer `5`"),
        ("policies:\n  - 7\n".into(), "line 2, column 5: policies[0]: invalid type: integer"),
    ];
    for (yaml, expected) in cases {
        let e = refusal(&yaml);
        assert!(
            e.starts_with(expected),
            "expected {expected:?}\n     got {e:?}\n{yaml}"
        );
    }
}

#[test]
fn empty_and_broken_documents_are_refused() {
    for empty in ["", "policies: []\n", "namespaces: []\n", "{}\n"] {
        assert_eq!(
            PolicyDocument::parse(empty).unwrap_err(),
            DocumentError::Empty
        );
    }
    let e = refusal("policies: [\n");
    assert!(e.starts_with("line 2, column 1:"), "{e}");
    let e = refusal("namespaces: []\n---\nnamespaces: []\n");
    assert!(e.contains("more than one document"), "{e}");
    for garbage in ["\u{0}", "- a\n- b\n", ":\n:\n", "policies: &a [*a]\n"] {
        assert!(PolicyDocument::parse(garbage).is_err(), "{garbage:?}");
    }
}

#[test]
fn a_document_survives_yaml_and_the_control_api() {
    let doc = PolicyDocument::parse(GOOD).unwrap();
    assert_eq!(PolicyDocument::parse(&doc.to_yaml()).unwrap(), doc);

    let policies: Vec<_> = doc.policies.0.iter().map(PolicySpec::to_proto).collect();
    let defaults: Vec<_> = doc
        .namespaces
        .0
        .iter()
        .map(NamespaceSpec::to_proto)
        .collect();
    assert_eq!(policies[1].source.as_ref().unwrap().namespace, "");
    assert_eq!(document_from_proto(&policies, &defaults).unwrap(), doc);
}

#[test]
fn proto_policies_are_checked_field_by_field() {
    let doc = PolicyDocument::parse(GOOD).unwrap();
    let good = doc.policies.0[0].to_proto();
    let refused = |change: &dyn Fn(&mut v1::Policy)| {
        let mut p = good.clone();
        change(&mut p);
        PolicySpec::from_proto(&p).unwrap_err()
    };
    let e = refused(&|p| p.action = "Allow".into());
    assert!(
        e.starts_with("policy \"greeter-from-client\": action:"),
        "{e}"
    );
    let e = refused(&|p| p.source = Some(Default::default()));
    assert!(e.contains("source: the source is empty"), "{e}");
    let e = refused(&|p| p.destination.as_mut().unwrap().ports = vec![65536]);
    assert!(e.contains("destination.ports[0]: port 65536"), "{e}");
    let e = refused(&|p| p.destination = None);
    assert!(e.contains("destination: missing"), "{e}");
    let e = refused(&|p| p.source.as_mut().unwrap().path_prefix = "x".into());
    assert!(e.contains("source.path_prefix:"), "{e}");
}

#[test]
fn the_proxy_side_set_decides_as_written() {
    let doc = PolicyDocument::parse(GOOD).unwrap();
    let policies: Vec<_> = doc.policies.0.iter().map(PolicySpec::to_proto).collect();
    let defaults: Vec<_> = doc
        .namespaces
        .0
        .iter()
        .map(NamespaceSpec::to_proto)
        .collect();
    let set = policy_set_from_proto(&policies, &defaults).unwrap();

    let labels = [("app".to_string(), "greeter".to_string())].into();
    let decide = |source: &str, port| {
        let source = SpiffeId::parse(source).unwrap();
        let destination = Destination {
            namespace: "demo",
            name: "greeter",
            labels: &labels,
        };
        set.evaluate(&Connection {
            source: &source,
            destination,
            port,
        })
    };
    let client = "spiffe://edgeward.local/ns/demo/sa/client";
    assert_eq!(
        decide(client, 50051).rule.to_string(),
        "greeter-from-client"
    );
    assert!(!decide(client, 50052).is_allowed());
    assert_eq!(decide(client, 50052).rule.to_string(), "default:demo");
    let legacy = "spiffe://edgeward.local/ns/legacy/sa/old";
    assert_eq!(decide(legacy, 50051).rule.to_string(), "deny-legacy");
}
