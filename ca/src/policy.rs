//! Authorization policy: which sources may open connections to which destination workloads and
//! ports. Pure decision logic on plain types, with no sockets and no clock, so that the node
//! proxy enforces exactly the rules the control plane validated, and tests drive it in memory.
//!
//! Evaluation order: a connection is denied when any matching deny policy exists; otherwise it
//! is allowed when any matching allow policy exists; otherwise the destination namespace's
//! default action decides, and a namespace without one allows. The decision names its rule.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::spiffe::{SpiffeId, SpiffeIdError, TrustDomain, MAX_ID_LEN};

/// Longest policy name, in bytes (that of a DNS name).
pub const MAX_POLICY_NAME_LEN: usize = 253;

/// Longest namespace or workload name, in bytes (that of a DNS label).
pub const MAX_NAME_LEN: usize = 63;

/// Longest label value, and longest name part of a label key, in bytes.
pub const MAX_LABEL_LEN: usize = 63;

/// Why a policy, or one of its fields, is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    /// A policy name breaks the DNS-name rules.
    #[error(
        "{0:?} is not a valid policy name: use 1 to 253 lower-case letters, digits, '-' and \
         '.', starting and ending with a letter or digit"
    )]
    BadPolicyName(String),
    /// A namespace or workload name is not a DNS label.
    #[error(
        "{0:?} is not a valid name: use 1 to 63 lower-case letters, digits and '-', starting \
         and ending with a letter or digit"
    )]
    BadName(String),
    /// An action other than `allow` or `deny`.
    #[error("{0:?} is not an action: use \"allow\" or \"deny\"")]
    BadAction(String),
    /// A source SPIFFE ID that does not parse.
    #[error("{id:?} is not a valid SPIFFE ID: {source}")]
    BadSpiffeId {
        /// The text given.
        id: String,
        /// The rule it broke.
        source: SpiffeIdError,
    },
    /// A source trust domain that does not parse.
    #[error("{name:?} is not a valid trust domain: {source}")]
    BadTrustDomain {
        /// The text given.
        name: String,
        /// The rule it broke.
        source: SpiffeIdError,
    },
    /// A path prefix that no SPIFFE ID path could start with.
    #[error("{prefix:?} is not a valid path prefix: {problem}")]
    BadPathPrefix {
        /// The text given.
        prefix: String,
        /// The rule it broke.
        problem: &'static str,
    },
    /// A source with no field set, which would match every caller.
    #[error(
        "the source is empty and would match every caller: set at least one of spiffe_id, \
         trust_domain, namespace, path_prefix"
    )]
    EmptySource,
    /// A port outside 1-65535.
    #[error("port {0} is outside 1-65535")]
    BadPort(u64),
    /// A label key that breaks the label rules.
    #[error("label key {key:?} is invalid: {problem}")]
    BadLabelKey {
        /// The key.
        key: String,
        /// The rule it broke.
        problem: &'static str,
    },
    /// A label value that breaks the label rules.
    #[error("label {key:?} has an invalid value {value:?}: {problem}")]
    BadLabelValue {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// The rule it broke.
        problem: &'static str,
    },
    /// Two policies of one set share a name.
    #[error("the policy name {0:?} is used twice")]
    DuplicateName(String),
}

/// What a policy or a namespace default does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Let the connection through.
    Allow,
    /// Refuse the connection.
    Deny,
}

impl Action {
    /// `"allow"` or `"deny"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, PolicyError> {
        match s {
            "allow" => Ok(Self::Allow),
            "deny" => Ok(Self::Deny),
            other => Err(PolicyError::BadAction(other.to_owned())),
        }
    }
}

/// Which callers a policy applies to. Every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceMatch {
    /// The caller's SPIFFE ID, exactly.
    pub spiffe_id: Option<SpiffeId>,
    /// The trust domain of the caller's SPIFFE ID.
    pub trust_domain: Option<TrustDomain>,
    /// The caller's SPIFFE ID is `spiffe://<any trust domain>/ns/<namespace>[/...]`.
    pub namespace: Option<String>,
    /// The path of the caller's SPIFFE ID starts with this, on a segment boundary: `/ns/demo`
    /// matches `/ns/demo/sa/x` but not `/ns/demo-2/sa/x`; a prefix ending in `/` matches
    /// exactly the paths that start with it.
    pub path_prefix: Option<String>,
}

impl SourceMatch {
    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        self.spiffe_id.is_none()
            && self.trust_domain.is_none()
            && self.namespace.is_none()
            && self.path_prefix.is_none()
    }

    fn check(&self) -> Result<(), PolicyError> {
        if self.is_empty() {
            return Err(PolicyError::EmptySource);
        }
        if let Some(ns) = &self.namespace {
            check_name(ns)?;
        }
        if let Some(prefix) = &self.path_prefix {
            check_path_prefix(prefix)?;
        }
        Ok(())
    }

    /// Whether `source` matches every field that is set.
    pub fn matches(&self, source: &SpiffeId) -> bool {
        let exact = self.spiffe_id.as_ref().is_none_or(|id| id == source);
        let td = self
            .trust_domain
            .as_ref()
            .is_none_or(|td| td.as_str() == source.trust_domain_name());
        let ns = self
            .namespace
            .as_deref()
            .is_none_or(|ns| namespace_of(source) == Some(ns));
        let prefix = self
            .path_prefix
            .as_deref()
            .is_none_or(|p| path_has_prefix(source.path(), p));
        exact && td && ns && prefix
    }
}

/// Which destination workloads and ports a policy applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationMatch {
    /// The destination workload's namespace (required).
    pub namespace: String,
    /// The destination workload's name; `None` means any workload of the namespace.
    pub name: Option<String>,
    /// Labels that must all be on the destination workload with these values.
    pub labels: BTreeMap<String, String>,
    /// Destination ports; empty means any port.
    pub ports: BTreeSet<u16>,
}

impl DestinationMatch {
    fn check(&self) -> Result<(), PolicyError> {
        check_name(&self.namespace)?;
        if let Some(name) = &self.name {
            check_name(name)?;
        }
        check_labels(&self.labels)?;
        if self.ports.contains(&0) {
            return Err(PolicyError::BadPort(0));
        }
        Ok(())
    }

    /// Whether the connection's destination workload and port match.
    pub fn matches(&self, destination: &Destination<'_>, port: u16) -> bool {
        let name = self.name.as_deref().is_none_or(|n| n == destination.name);
        let labels = self
            .labels
            .iter()
            .all(|(k, v)| destination.labels.get(k) == Some(v));
        let port = self.ports.is_empty() || self.ports.contains(&port);
        self.namespace == destination.namespace && name && labels && port
    }
}

/// One validated authorization rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    name: String,
    action: Action,
    source: SourceMatch,
    destination: DestinationMatch,
}

impl Policy {
    /// Validates every field and builds the policy.
    pub fn new(
        name: &str,
        action: Action,
        source: SourceMatch,
        destination: DestinationMatch,
    ) -> Result<Self, PolicyError> {
        check_policy_name(name)?;
        source.check()?;
        destination.check()?;
        Ok(Self {
            name: name.to_owned(),
            action,
            source,
            destination,
        })
    }

    /// The policy's unique name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it does with a matching connection.
    pub fn action(&self) -> Action {
        self.action
    }

    /// Which callers it applies to.
    pub fn source(&self) -> &SourceMatch {
        &self.source
    }

    /// Which destinations it applies to.
    pub fn destination(&self) -> &DestinationMatch {
        &self.destination
    }

    /// Whether the policy applies to `connection`.
    pub fn matches(&self, connection: &Connection<'_>) -> bool {
        self.source.matches(connection.source)
            && self
                .destination
                .matches(&connection.destination, connection.port)
    }
}

/// The destination workload of a connection, as the destination node's registry knows it.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
}

/// A connection to decide on.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    /// The SPIFFE ID the caller authenticated with.
    pub source: &'a SpiffeId,
    /// The workload it connects to.
    pub destination: Destination<'a>,
    /// The destination port.
    pub port: u16,
}

/// The rule that made a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// A policy, by name.
    Policy(String),
    /// The default action of the destination namespace (allow when it has none).
    NamespaceDefault(String),
}

impl fmt::Display for Rule {
    /// The policy name, or `default:<namespace>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Policy(name) => f.write_str(name),
            Self::NamespaceDefault(ns) => write!(f, "default:{ns}"),
        }
    }
}

/// The outcome for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allow or deny.
    pub action: Action,
    /// What decided.
    pub rule: Rule,
}

impl Decision {
    /// Whether the connection may go through.
    pub fn is_allowed(&self) -> bool {
        self.action == Action::Allow
    }

    /// A short label for metrics and the audit log: `deny_policy`, `allow_policy`,
    /// `namespace_default_deny` or `namespace_default_allow`.
    pub fn reason(&self) -> &'static str {
        match (&self.rule, self.action) {
            (Rule::Policy(_), Action::Deny) => "deny_policy",
            (Rule::Policy(_), Action::Allow) => "allow_policy",
            (Rule::NamespaceDefault(_), Action::Deny) => "namespace_default_deny",
            (Rule::NamespaceDefault(_), Action::Allow) => "namespace_default_allow",
        }
    }
}

/// Every policy and namespace default in force, indexed by destination namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySet {
    /// Per destination namespace, its policies in name order.
    by_namespace: BTreeMap<String, Vec<Policy>>,
    defaults: BTreeMap<String, Action>,
}

impl PolicySet {
    /// Builds the set; refuses two policies with one name and an invalid namespace name.
    pub fn new(
        policies: impl IntoIterator<Item = Policy>,
        defaults: impl IntoIterator<Item = (String, Action)>,
    ) -> Result<Self, PolicyError> {
        let mut by_name = BTreeMap::new();
        for policy in policies {
            if let Some(twin) = by_name.insert(policy.name.clone(), policy) {
                return Err(PolicyError::DuplicateName(twin.name));
            }
        }
        let mut by_namespace: BTreeMap<String, Vec<Policy>> = BTreeMap::new();
        for policy in by_name.into_values() {
            let ns = policy.destination.namespace.clone();
            by_namespace.entry(ns).or_default().push(policy);
        }
        let defaults: BTreeMap<String, Action> = defaults.into_iter().collect();
        defaults.keys().try_for_each(|ns| check_name(ns))?;
        Ok(Self {
            by_namespace,
            defaults,
        })
    }

    /// The default action of `namespace`: its own, or allow.
    pub fn default_action(&self, namespace: &str) -> Action {
        self.defaults
            .get(namespace)
            .copied()
            .unwrap_or(Action::Allow)
    }

    /// Decides on `connection`: any matching deny policy denies; else any matching allow policy
    /// allows; else the destination namespace's default decides. When several policies match,
    /// the first by name is the one named.
    pub fn evaluate(&self, connection: &Connection<'_>) -> Decision {
        let namespace = connection.destination.namespace;
        let candidates = self
            .by_namespace
            .get(namespace)
            .map_or(&[][..], Vec::as_slice);
        let first = |action: Action| {
            candidates
                .iter()
                .find(|p| p.action == action && p.matches(connection))
        };
        let chosen = first(Action::Deny).or_else(|| first(Action::Allow));
        match chosen {
            Some(policy) => Decision {
                action: policy.action,
                rule: Rule::Policy(policy.name.clone()),
            },
            None => Decision {
                action: self.default_action(namespace),
                rule: Rule::NamespaceDefault(namespace.to_owned()),
            },
        }
    }
}

/// The namespace of a SPIFFE ID whose path is `/ns/<namespace>[/...]`.
fn namespace_of(id: &SpiffeId) -> Option<&str> {
    id.path().strip_prefix("/ns/")?.split('/').next()
}

/// Whether `path` starts with `prefix` on a segment boundary.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Checks a policy name: 1 to 253 of `[a-z0-9.-]`, starting and ending alphanumeric.
pub fn check_policy_name(name: &str) -> Result<(), PolicyError> {
    let chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if chars && name.len() <= MAX_POLICY_NAME_LEN && alnum_ends(name) {
        Ok(())
    } else {
        Err(PolicyError::BadPolicyName(name.to_owned()))
    }
}

/// Checks a namespace or workload name: a DNS label, 1 to 63 of `[a-z0-9-]`, starting and
/// ending alphanumeric.
pub fn check_name(name: &str) -> Result<(), PolicyError> {
    let chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if chars && name.len() <= MAX_NAME_LEN && alnum_ends(name) {
        Ok(())
    } else {
        Err(PolicyError::BadName(name.to_owned()))
    }
}

/// Checks a source path prefix: it starts with `/`, holds only SPIFFE path characters, and has
/// no empty (except a final one), `.` or `..` segment.
pub fn check_path_prefix(prefix: &str) -> Result<(), PolicyError> {
    let bad = |problem| PolicyError::BadPathPrefix {
        prefix: prefix.to_owned(),
        problem,
    };
    if !prefix.starts_with('/') {
        return Err(bad("it must start with '/'"));
    }
    if prefix.len() > MAX_ID_LEN {
        return Err(bad("it is longer than a SPIFFE ID may be"));
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'/');
    if !prefix.bytes().all(allowed) {
        return Err(bad("use only letters, digits, '.', '-', '_' and '/'"));
    }
    let inner = prefix.strip_suffix('/').unwrap_or(prefix);
    let segments = inner.split('/').skip(1);
    if prefix.len() > 1 && segments.clone().any(str::is_empty) {
        return Err(bad("it has an empty segment ('//')"));
    }
    if segments.clone().any(|s| s == "." || s == "..") {
        return Err(bad("it has a '.' or '..' segment"));
    }
    Ok(())
}

/// Checks a port number given as any integer: 1 to 65535.
pub fn check_port(port: u64) -> Result<u16, PolicyError> {
    match u16::try_from(port) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(PolicyError::BadPort(port)),
    }
}

/// Checks every label: keys are `[prefix/]name` with a DNS-name prefix and a name of 1 to 63
/// of `[A-Za-z0-9._-]`, values are 0 to 63 of those, names and values start and end
/// alphanumeric.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), PolicyError> {
    labels.iter().try_for_each(|(k, v)| check_label(k, v))
}

/// Checks one label (see [`check_labels`]).
pub fn check_label(key: &str, value: &str) -> Result<(), PolicyError> {
    check_label_key(key).map_err(|problem| PolicyError::BadLabelKey {
        key: key.to_owned(),
        problem,
    })?;
    if !value.is_empty() {
        check_label_part(value).map_err(|problem| PolicyError::BadLabelValue {
            key: key.to_owned(),
            value: value.to_owned(),
            problem,
        })?;
    }
    Ok(())
}

fn check_label_key(key: &str) -> Result<(), &'static str> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if check_policy_name(prefix).is_err() {
            return Err("the prefix before '/' must be a lower-case DNS name");
        }
    }
    check_label_part(name)
}

fn check_label_part(part: &str) -> Result<(), &'static str> {
    if part.is_empty() {
        return Err("it is empty");
    }
    if part.len() > MAX_LABEL_LEN {
        return Err("it is longer than 63 bytes");
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_');
    if !part.bytes().all(allowed) {
        return Err("use only letters, digits, '.', '-' and '_'");
    }
    if !alnum_ends(part) {
        return Err("it must start and end with a letter or digit");
    }
    Ok(())
}

fn alnum_ends(s: &str) -> bool {
    let alnum = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
    alnum(s.as_bytes().first()) && alnum(s.as_bytes().last())
}

#[cfg(test)]
mod tests;
