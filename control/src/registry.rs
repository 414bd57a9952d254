//! The workload registry: which workloads exist, on which node, at which addresses, under which
//! service account, with which labels. Workloads come from a YAML file, validated whole and
//! replaced only by a file that passes validation, and from the admin API; a name or an address
//! that both claim is refused.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use edgeward_ca::{SpiffeId, TrustDomain};
use edgeward_proto::v1;
use serde::{Deserialize, Serialize, Serializer};
use thiserror::Error;

use crate::yaml::{split_error, Labels};

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
        match split_error(&e) {
            (Some((line, column)), message) => Self::Syntax {
                line,
                column,
                message,
            },
            (None, message) => Self::Invalid(message),
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
                Label::new(s).map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

impl Serialize for Label {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl Label {
    /// Checks `name` and wraps it.
    pub fn new(name: &str) -> Result<Self, String> {
        check_label(name)?;
        Ok(Self(name.to_owned()))
    }

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
    edgeward_ca::policy::check_name(s).map_err(|e| e.to_string())
}

/// Checks one workload label (`key: value`) by the label rules.
pub fn check_label_pair(key: &str, value: &str) -> Result<(), String> {
    edgeward_ca::policy::check_label(key, value).map_err(|e| e.to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    workloads: Vec<WorkloadSpec>,
}

/// A workload as the registry file and the state file write it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Unique within the namespace.
    pub name: Label,
    /// The namespace.
    pub namespace: Label,
    /// The service account, which makes the SPIFFE ID.
    pub service_account: Label,
    /// The only node that may obtain the workload's SVID.
    pub node: Label,
    /// Pod addresses; at least one.
    pub addresses: Vec<IpAddr>,
    /// Labels that policies select workloads by; none by default.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

impl WorkloadSpec {
    /// Checks a workload that came through the API; the error names the field at fault.
    pub fn from_proto(w: &v1::Workload) -> Result<Self, String> {
        let label = |field: &str, value: &str| {
            Label::new(value).map_err(|e| format!("workload.{field}: {e}"))
        };
        let addresses = w.addresses.iter().enumerate().map(|(i, a)| {
            a.parse::<IpAddr>()
                .map_err(|_| format!("workload.addresses[{i}]: {a:?} is not an IP address"))
        });
        for (key, value) in &w.labels {
            check_label_pair(key, value).map_err(|e| format!("workload.labels: {e}"))?;
        }
        Ok(Self {
            name: label("name", &w.name)?,
            namespace: label("namespace", &w.namespace)?,
            service_account: label("service_account", &w.service_account)?,
            node: label("node", &w.node)?,
            addresses: addresses.collect::<Result<_, _>>()?,
            labels: Labels(w.labels.clone()),
        })
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn into_workload(self, td: &TrustDomain, source: Source) -> Result<Workload, String> {
        if self.addresses.is_empty() {
            return Err("no addresses: a workload needs at least one".into());
        }
        let spiffe_id = td
            .workload_id(self.namespace.as_str(), self.service_account.as_str())
            .map_err(|e| format!("cannot form a SPIFFE ID: {e}"))?;
        Ok(Workload {
            name: self.name,
            namespace: self.namespace,
            service_account: self.service_account,
            node: self.node,
            addresses: self.addresses,
            labels: self.labels.0,
            spiffe_id,
            source,
        })
    }
}

/// Where a workload is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The registry file, which stays the source of truth for its entries.
    File,
    /// The admin API (`edgewardctl workload add`), persisted in the state file.
    Api,
}

impl Source {
    /// `file` or `api`, as `edgewardctl workload list` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Api => "api",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::File => "the registry file",
            Self::Api => "the API",
        })
    }
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
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// `spiffe://<td>/ns/<namespace>/sa/<service account>`.
    pub spiffe_id: SpiffeId,
    /// Where it is defined.
    pub source: Source,
}

impl Workload {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A workload of one source that clashes with one of the other (or with another API workload).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Clash {
    /// Both define `namespace/name`.
    #[error("workload {who} is defined both by {first} and by {second}")]
    Name {
        /// `namespace/name`.
        who: String,
        /// The source read first (the registry file, when it is one of the two).
        first: Source,
        /// The other source.
        second: Source,
    },
    /// Two workloads claim one address.
    #[error(
        "address {address} of {who} ({defined_by}) is already used by {owner} \
         ({owner_defined_by})"
    )]
    Address {
        /// The address.
        address: IpAddr,
        /// The workload read later.
        who: String,
        /// Where it is defined.
        defined_by: Source,
        /// The workload read first.
        owner: String,
        /// Where that one is defined.
        owner_defined_by: Source,
    },
}

/// A validated set of workloads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    workloads: Vec<Workload>,
    by_name: HashMap<(String, String), usize>,
    by_address: HashMap<IpAddr, usize>,
}

impl Registry {
    /// Parses and validates a registry file; on any problem nothing is returned but the error.
    pub fn parse(text: &str, trust_domain: &TrustDomain) -> Result<Self, RegistryError> {
        let file: File = serde_norway::from_str(text)?;
        let mut registry = Self::default();
        for (index, spec) in file.workloads.into_iter().enumerate() {
            let conflict = |problem: String| RegistryError::Conflict {
                index,
                who: spec.key(),
                problem,
            };
            if registry
                .get(spec.namespace.as_str(), spec.name.as_str())
                .is_some()
            {
                return Err(conflict("a workload of that name is listed twice".into()));
            }
            let workload = spec
                .clone()
                .into_workload(trust_domain, Source::File)
                .map_err(conflict)?;
            registry.insert(workload).map_err(|clash| match clash {
                Clash::Address { address, owner, .. } => {
                    conflict(format!("address {address} is already used by {owner}"))
                }
                other => conflict(other.to_string()),
            })?;
        }
        Ok(registry)
    }

    /// The workloads of the registry file `file` and those added through the API, together;
    /// refuses a name or an address that two of them claim.
    pub fn combine(
        file: &Registry,
        api: &[WorkloadSpec],
        trust_domain: &TrustDomain,
    ) -> Result<Self, CombineError> {
        let mut registry = file.clone();
        for spec in api {
            let who = spec.key();
            let workload = spec
                .clone()
                .into_workload(trust_domain, Source::Api)
                .map_err(|problem| CombineError::Invalid { who, problem })?;
            registry.insert(workload)?;
        }
        Ok(registry)
    }

    fn insert(&mut self, workload: Workload) -> Result<(), Clash> {
        let key = (workload.namespace.0.clone(), workload.name.0.clone());
        if let Some(first) = self.by_name.get(&key).map(|i| &self.workloads[*i]) {
            let (first, second) = (first.source, workload.source);
            let who = workload.key();
            return Err(Clash::Name { who, first, second });
        }
        let mut own = HashSet::new();
        for address in &workload.addresses {
            let owner = match self.by_address.get(address) {
                Some(i) => Some(&self.workloads[*i]),
                None => (!own.insert(*address)).then_some(&workload),
            };
            if let Some(owner) = owner {
                return Err(Clash::Address {
                    address: *address,
                    who: workload.key(),
                    defined_by: workload.source,
                    owner: owner.key(),
                    owner_defined_by: owner.source,
                });
            }
        }
        let index = self.workloads.len();
        self.by_address.extend(own.into_iter().map(|a| (a, index)));
        self.by_name.insert(key, index);
        self.workloads.push(workload);
        Ok(())
    }

    /// Every workload: those of the file in file order, then those of the API.
    pub fn workloads(&self) -> &[Workload] {
        &self.workloads
    }

    /// The workload `namespace/name`, if listed.
    pub fn get(&self, namespace: &str, name: &str) -> Option<&Workload> {
        let index = self.by_name.get(&(namespace.to_owned(), name.to_owned()))?;
        self.workloads.get(*index)
    }
}

/// Why the registry file and the API workloads cannot be served together.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CombineError {
    /// A name or an address is claimed twice.
    #[error(transparent)]
    Clash(#[from] Clash),
    /// A stored API workload no longer makes a valid workload.
    #[error("workload {who}: {problem}")]
    Invalid {
        /// `namespace/name`.
        who: String,
        /// What is wrong.
        problem: String,
    },
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
    fn labels_are_read_and_checked_where_written() {
        let labelled = GOOD.replace(
            "    addresses: [198.18.2.10]\n",
            "    addresses: [198.18.2.10]\n    labels:\n      app: greeter\n      tier: back\n",
        );
        let r = Registry::parse(&labelled, &td()).unwrap();
        let greeter = r.get("demo", "greeter").unwrap();
        assert_eq!(greeter.labels["tier"], "back");
        assert!(r.get("demo", "client").unwrap().labels.is_empty());

        let e = error_of(&labelled.replace("tier: back", "tier: -back"));
        assert!(
            e.starts_with("line 9, column 13: workloads[0].labels.tier: label"),
            "{e}"
        );
    }

    fn api(name: &str, address: &str) -> WorkloadSpec {
        let w = v1::Workload {
            name: name.into(),
            namespace: "demo".into(),
            service_account: name.into(),
            node: "node-1".into(),
            addresses: vec![address.into()],
            ..Default::default()
        };
        WorkloadSpec::from_proto(&w).unwrap()
    }

    #[test]
    fn file_and_api_workloads_combine_unless_they_clash() {
        let file = Registry::parse(GOOD, &td()).unwrap();
        let both = Registry::combine(&file, &[api("extra", "198.18.1.20")], &td()).unwrap();
        assert_eq!(both.workloads().len(), 3);
        assert_eq!(both.get("demo", "extra").unwrap().source, Source::Api);
        assert_eq!(both.get("demo", "greeter").unwrap().source, Source::File);

        let e = Registry::combine(&file, &[api("client", "198.18.1.20")], &td()).unwrap_err();
        let name = "workload demo/client is defined both by the registry file and by the API";
        assert_eq!(e.to_string(), name);
        let e = Registry::combine(&file, &[api("x", "fd00::1:10")], &td()).unwrap_err();
        assert!(e
            .to_string()
            .ends_with("already used by demo/client (the registry file)"));
        let twice = [api("x", "198.18.1.20"), api("y", "198.18.1.20")];
        let e = Registry::combine(&file, &twice, &td()).unwrap_err();
        assert!(e
            .to_string()
            .contains("of demo/y (the API) is already used by demo/x"));
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
