//! The policy document: what `edgewardctl policy apply -f FILE` sends and `policy list -o yaml`
//! prints, and the form in which the state file stores policies. Every field is checked as it
//! is read, so a refusal names the line, the column and the field path of the problem.

use edgeward_ca::policy::{self as rules, Action, DestinationMatch, Policy, SourceMatch};
use edgeward_ca::policy::{PolicyError, PolicySet};
use edgeward_ca::{SpiffeId, TrustDomain};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::yaml::Validate;
use crate::yaml::{port_set, split_error, Keyed, Labels, Port, Rule, Text, Unique, Valid};

/// Why a policy document was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DocumentError {
    /// A field is missing, unknown, of the wrong type or fails its rule.
    #[error("line {line}, column {column}: {message}")]
    At {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The field path and what is wrong with it.
        message: String,
    },
    /// The YAML is broken in a way that has no position.
    #[error("{0}")]
    Invalid(String),
    /// The document holds neither policies nor namespaces.
    #[error("nothing to apply: the document has neither `policies` nor `namespaces`")]
    Empty,
}

impl From<serde_norway::Error> for DocumentError {
    fn from(e: serde_norway::Error) -> Self {
        match split_error(&e) {
            (Some((line, column)), message) => Self::At {
                line,
                column,
                message,
            },
            (None, message) => Self::Invalid(message),
        }
    }
}

/// The rule of policy names: lower-case letters, digits, `-` and `.`, at most 253 bytes.
pub struct PolicyName;

impl Rule for PolicyName {
    const EXPECTING: &'static str = "a policy name";

    fn check(s: &str) -> Result<(), String> {
        rules::check_policy_name(s).map_err(|e| e.to_string())
    }
}

/// The rule of namespace and workload names (DNS labels).
pub struct Name;

impl Rule for Name {
    const EXPECTING: &'static str = "a name";

    fn check(s: &str) -> Result<(), String> {
        rules::check_name(s).map_err(|e| e.to_string())
    }
}

/// The rule of actions: `allow` or `deny`.
pub struct ActionName;

impl Rule for ActionName {
    const EXPECTING: &'static str = "\"allow\" or \"deny\"";

    fn check(s: &str) -> Result<(), String> {
        s.parse::<Action>().map(drop).map_err(|e| e.to_string())
    }
}

/// The rule of SPIFFE IDs.
pub struct Id;

impl Rule for Id {
    const EXPECTING: &'static str = "a SPIFFE ID";

    fn check(s: &str) -> Result<(), String> {
        parse_id(s).map(drop).map_err(|e| e.to_string())
    }
}

/// The rule of trust domain names.
pub struct Domain;

impl Rule for Domain {
    const EXPECTING: &'static str = "a trust domain";

    fn check(s: &str) -> Result<(), String> {
        parse_td(s).map(drop).map_err(|e| e.to_string())
    }
}

/// The rule of source path prefixes.
pub struct PathPrefix;

impl Rule for PathPrefix {
    const EXPECTING: &'static str = "a path prefix";

    fn check(s: &str) -> Result<(), String> {
        rules::check_path_prefix(s).map_err(|e| e.to_string())
    }
}

/// A whole policy document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    /// Policies, unique by name.
    #[serde(default, skip_serializing_if = "Unique::is_empty")]
    pub policies: Unique<PolicySpec>,
    /// Namespace defaults, unique by namespace.
    #[serde(default, skip_serializing_if = "Unique::is_empty")]
    pub namespaces: Unique<NamespaceSpec>,
}

impl PolicyDocument {
    /// Parses and validates a document; any problem refuses it whole.
    pub fn parse(yaml: &str) -> Result<Self, DocumentError> {
        let doc: Self = serde_norway::from_str(yaml)?;
        if doc.policies.is_empty() && doc.namespaces.is_empty() {
            return Err(DocumentError::Empty);
        }
        // Cannot fail after the field checks; kept so that the proxies' rules are the judge.
        doc.to_policy_set()
            .map_err(|e| DocumentError::Invalid(e.to_string()))?;
        Ok(doc)
    }

    /// The document as YAML.
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// The evaluation form of every policy and default, as a proxy would hold it.
    pub fn to_policy_set(&self) -> Result<PolicySet, PolicyError> {
        let policies = self.policies.0.iter().map(PolicySpec::to_policy);
        let defaults = self.namespaces.0.iter().map(NamespaceSpec::to_default);
        let defaults = defaults.collect::<Result<Vec<_>, _>>()?;
        PolicySet::new(policies.collect::<Result<Vec<_>, _>>()?, defaults)
    }
}

/// One policy as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Unique name.
    pub name: Text<PolicyName>,
    /// `allow` or `deny`.
    pub action: Text<ActionName>,
    /// Which callers; at least one field.
    pub source: Valid<SourceSpec>,
    /// Which destination workloads and ports.
    pub destination: DestinationSpec,
}

impl Keyed for PolicySpec {
    fn key(&self) -> (&'static str, String) {
        ("name", self.name.to_string())
    }
}

impl PolicySpec {
    /// The policy in the evaluation form of `edgeward_ca::policy`.
    pub fn to_policy(&self) -> Result<Policy, PolicyError> {
        let source = &self.source.0;
        let spiffe_id = source.spiffe_id.as_ref().map(|t| parse_id(t.as_str()));
        let trust_domain = source.trust_domain.as_ref().map(|t| parse_td(t.as_str()));
        let source = SourceMatch {
            spiffe_id: spiffe_id.transpose()?,
            trust_domain: trust_domain.transpose()?,
            namespace: source.namespace.as_ref().map(Text::to_string),
            path_prefix: source.path_prefix.as_ref().map(Text::to_string),
        };
        let d = &self.destination;
        let destination = DestinationMatch {
            namespace: d.namespace.to_string(),
            name: d.name.as_ref().map(Text::to_string),
            labels: d.labels.0.clone(),
            ports: port_set(&d.ports),
        };
        let action = self.action.as_str().parse()?;
        Policy::new(self.name.as_str(), action, source, destination)
    }
}

fn parse_id(s: &str) -> Result<SpiffeId, PolicyError> {
    SpiffeId::parse(s).map_err(|source| PolicyError::BadSpiffeId {
        id: s.to_owned(),
        source,
    })
}

fn parse_td(s: &str) -> Result<TrustDomain, PolicyError> {
    TrustDomain::parse(s).map_err(|source| PolicyError::BadTrustDomain {
        name: s.to_owned(),
        source,
    })
}

/// The source of a policy as written: every field set must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// Exact SPIFFE ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<Text<Id>>,
    /// Trust domain of the source ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<Text<Domain>>,
    /// Namespace of the source ID (`/ns/<namespace>/...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Text<Name>>,
    /// Prefix of the source ID's path, on a segment boundary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<Text<PathPrefix>>,
}

impl Validate for SourceSpec {
    fn validate(&self) -> Result<(), String> {
        let none = self.spiffe_id.is_none()
            && self.trust_domain.is_none()
            && self.namespace.is_none()
            && self.path_prefix.is_none();
        match none {
            true => Err(PolicyError::EmptySource.to_string()),
            false => Ok(()),
        }
    }
}

/// The destination of a policy as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationSpec {
    /// The destination workload's namespace.
    pub namespace: Text<Name>,
    /// The destination workload's name; any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Text<Name>>,
    /// Labels the destination workload must all carry; none by default.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// Destination ports; any when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
}

/// A namespace's default action as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSpec {
    /// The namespace.
    pub name: Text<Name>,
    /// `allow` or `deny` (deny unless a policy allows).
    pub default_action: Text<ActionName>,
}

impl Keyed for NamespaceSpec {
    fn key(&self) -> (&'static str, String) {
        ("name", self.name.to_string())
    }
}

impl NamespaceSpec {
    /// The namespace and its action, for [`PolicySet::new`].
    pub fn to_default(&self) -> Result<(String, Action), PolicyError> {
        let action = self.default_action.as_str().parse()?;
        Ok((self.name.to_string(), action))
    }
}

#[cfg(test)]
mod tests;
