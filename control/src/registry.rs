//! The workload registry: which workloads exist, on which node, at which addresses, under which
//! service account. Read from a YAML file, validated whole, and replaced only by a file that
//! passes validation.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use edgeward_ca::{SpiffeId, TrustDomain};
use serde::Deserialize;
use thiserror::Error;

/// Why a registry file was refused.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// The YAML does not parse or does not fit the schema.
    #[error("line {line}, column {column}: {message}")]
    Syntax {
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The YAML is broken in a way that has no position (an empty document, say).
    #[error("{0}")]
    Invalid(String),
    /// Two workloads share a name or an address.
    #[error("workloads[{index}] ({who}): {problem}")]
    Conflict {
        /// Position of the later workload in the list, from 0.
        index: usize,
        /// `namespace/name` of that workload.
        who: String,
        /// What it conflicts with.
        problem: String,
    },
}

impl From<serde_norway::Error> for RegistryError {
    fn from(e: serde_norway::Error) -> Self {
        match e.location() {
            Some(at) => {
                let text = e.to_string();
                // The library appends the position in its own words; we state it up front.
                let message = match text.rfind(" at line ") {
                    Some(cut) => text[..cut].to_string(),
                    None => text,
                };
                Self::Syntax {
                    line: at.line(),
                    column: at.column(),
                    message,
                }
            }
            None => Self::Invalid(e.to_string()),
        }
    }
}

/// A name that is a DNS-1123 label: 1-63 of `[a-z0-9-]`, starting and ending alphanumeric.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Label(String);

impl<'de> Deserialize<'de> for Label {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Checked inside the visitor, so that a refusal carries the position of the value
        // itself rather than that of the enclosing entry.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Label;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a name")
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Label, E> {
                check_label(s)
                    .map(|()| Label(s.to_owned()))
                    .map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

impl Label {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks that `s` is a DNS-1123 label, the form of node, namespace, workload and service
/// account names.
pub fn check_label(s: &str) -> Result<(), String> {
    let valid_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ends_ok = !s.starts_with('-') && !s.ends_with('-');
    if s.is_empty() || s.len() > 63 || !valid_chars || !ends_ok {
        return Err(format!(
            "{s:?} is not a valid name: use 1 to 63 lower-case letters, digits and '-', \
             starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    workloads: Vec<Spec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    name: Label,
    namespace: Label,
    service_account: Label,
    node: Label,
    addresses: Vec<IpAddr>,
}

/// One workload, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// The workload's name, unique within its namespace.
    pub name: Label,
    /// The namespace.
    pub namespace: Label,
    /// The service account, which makes the SPIFFE ID.
    pub service_account: Label,
    /// The node it runs on.
    pub node: Label,
    /// Its pod addresses.
    pub addresses: Vec<IpAddr>,
    /// `spiffe://<td>/ns/<namespace>/sa/<service account>`.
    pub spiffe_id: SpiffeId,
}

/// A validated set of workloads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    workloads: Vec<Workload>,
    by_name: HashMap<(String, String), usize>,
}

impl Registry {
    /// Parses and validates a registry file; on any problem nothing is returned but the error.
    pub fn parse(text: &str, trust_domain: &TrustDomain) -> Result<Self, RegistryError> {
        let file: File = serde_norway::from_str(text)?;
        let mut registry = Self::default();
        let mut owners: HashMap<IpAddr, String> = HashMap::new();
        for (index, spec) in file.workloads.into_iter().enumerate() {
            let who = format!("{}/{}", spec.namespace, spec.name);
            let conflict = |problem: String| RegistryError::Conflict {
                index,
                who: who.clone(),
                problem,
            };
            let key = (spec.namespace.0.clone(), spec.name.0.clone());
            if registry.by_name.contains_key(&key) {
                return Err(conflict("a workload of that name is listed twice".into()));
            }
            if spec.addresses.is_empty() {
                return Err(conflict(
                    "no addresses: a workload needs at least one".into(),
                ));
            }
            for addr in &spec.addresses {
                if let Some(owner) = owners.insert(*addr, who.clone()) {
                    return Err(conflict(format!(
                        "address {addr} is already used by {owner}"
                    )));
                }
            }
            let spiffe_id = trust_domain
                .workload_id(spec.namespace.as_str(), spec.service_account.as_str())
                .map_err(|e| conflict(format!("cannot form a SPIFFE ID: {e}")))?;
            registry.by_name.insert(key, registry.workloads.len());
            registry.workloads.push(Workload {
                name: spec.name,
                namespace: spec.namespace,
                service_account: spec.service_account,
                node: spec.node,
                addresses: spec.addresses,
                spiffe_id,
            });
        }
        Ok(registry)
    }

    /// Every workload, in file order.
    pub fn workloads(&self) -> &[Workload] {
        &self.workloads
    }

    /// The workload `namespace/name`, if listed.
    pub fn get(&self, namespace: &str, name: &str) -> Option<&Workload> {
        let index = self.by_name.get(&(namespace.to_owned(), name.to_owned()))?;
        self.workloads.get(*index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::parse("edgeward.local").unwrap()
    }

    const GOOD: &str = "\
workloads:
  - name: greeter
    namespace: demo
    service_account: greeter
    node: node-2
    addresses: [198.18.2.10]
  - name: client
    namespace: demo
    service_account: client
    node: node-1
    addresses: [\"198.18.1.10\", \"fd00::1:10\"]
";

    #[test]
    fn parses_a_good_file() {
        let r = Registry::parse(GOOD, &td()).unwrap();
        assert_eq!(r.workloads().len(), 2);
        let greeter = r.get("demo", "greeter").unwrap();
        assert_eq!(
            greeter.spiffe_id.as_str(),
            "spiffe://edgeward.local/ns/demo/sa/greeter"
        );
        assert_eq!(greeter.node.as_str(), "node-2");
        assert_eq!(r.get("demo", "client").unwrap().addresses.len(), 2);
        assert!(r.get("demo", "nobody").is_none());
    }

    fn error_of(text: &str) -> String {
        Registry::parse(text, &td()).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_line() {
        let typo = GOOD.replace("    node: node-1", "    nodee: node-1");
        let e = error_of(&typo);
        assert!(e.starts_with("line 10,"), "{e}");
        assert!(e.contains("unknown field `nodee`"), "{e}");

        let bad_ip = GOOD.replace("198.18.2.10", "198.18.2.300");
        assert!(
            error_of(&bad_ip).starts_with("line 6,"),
            "{}",
            error_of(&bad_ip)
        );

        let bad_name = GOOD.replace(
            "namespace: demo\n    service_account: client",
            "namespace: Demo\n    service_account: client",
        );
        let e = error_of(&bad_name);
        assert!(
            e.starts_with("line 8, column 16") && e.contains("not a valid name"),
            "{e}"
        );

        let broken = "workloads:\n  - name: [unclosed\n";
        assert!(
            error_of(broken).starts_with("line "),
            "{}",
            error_of(broken)
        );
    }

    #[test]
    fn conflicts_name_the_workload() {
        let dup_addr = GOOD.replace("198.18.1.10", "198.18.2.10");
        let e = error_of(&dup_addr);
        assert!(
            e.contains("workloads[1] (demo/client)") && e.contains("already used by demo/greeter"),
            "{e}"
        );
        let dup_name = GOOD.replace("name: client", "name: greeter");
        assert!(error_of(&dup_name).contains("listed twice"));
        let empty = GOOD.replace("[198.18.2.10]", "[]");
        assert!(error_of(&empty).contains("no addresses"));
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        for text in [
            "",
            "\u{0}\u{1}",
            "- just\n- a list\n",
            "workloads: 5",
            ":\n:\n",
        ] {
            assert!(Registry::parse(text, &td()).is_err(), "{text:?}");
        }
    }
}
