//! Conversions between policy documents and the control API messages. [`policy_set_from_proto`]
//! is how a receiver of `Update` messages turns the policies it holds into the evaluation form:
//! an empty string in an optional field means "not set", and any invalid field refuses the set.

use edgeward_ca::policy::{check_port, PolicySet};
use edgeward_proto::v1;

use super::spec::{DestinationSpec, NamespaceSpec, PolicyDocument, PolicySpec, SourceSpec};
use crate::yaml::{Labels, Port, Rule, Text, Unique, Valid, Validate};

impl PolicySpec {
    /// The policy as the control API carries it.
    pub fn to_proto(&self) -> v1::Policy {
        let s = &self.source.0;
        let text = |t: Option<&str>| t.unwrap_or_default().to_owned();
        let d = &self.destination;
        v1::Policy {
            name: self.name.to_string(),
            action: self.action.to_string(),
            source: Some(v1::PolicySource {
                spiffe_id: text(s.spiffe_id.as_ref().map(Text::as_str)),
                trust_domain: text(s.trust_domain.as_ref().map(Text::as_str)),
                namespace: text(s.namespace.as_ref().map(Text::as_str)),
                path_prefix: text(s.path_prefix.as_ref().map(Text::as_str)),
            }),
            destination: Some(v1::PolicyDestination {
                namespace: d.namespace.to_string(),
                name: text(d.name.as_ref().map(Text::as_str)),
                labels: d.labels.0.clone(),
                ports: d.ports.iter().map(|p| u32::from(p.0)).collect(),
            }),
        }
    }

    /// Checks a policy from the control API; the error names the policy and the field.
    pub fn from_proto(p: &v1::Policy) -> Result<Self, String> {
        let at = |e: String| format!("policy {:?}: {e}", p.name);
        let source = p.source.clone().unwrap_or_default();
        let source = SourceSpec {
            spiffe_id: optional("source.spiffe_id", &source.spiffe_id).map_err(at)?,
            trust_domain: optional("source.trust_domain", &source.trust_domain).map_err(at)?,
            namespace: optional("source.namespace", &source.namespace).map_err(at)?,
            path_prefix: optional("source.path_prefix", &source.path_prefix).map_err(at)?,
        };
        source.validate().map_err(|e| at(format!("source: {e}")))?;
        let Some(d) = &p.destination else {
            return Err(at("destination: missing".into()));
        };
        Ok(Self {
            name: required("name", &p.name).map_err(at)?,
            action: required("action", &p.action).map_err(at)?,
            source: Valid(source),
            destination: destination_from_proto(d).map_err(at)?,
        })
    }
}

fn destination_from_proto(d: &v1::PolicyDestination) -> Result<DestinationSpec, String> {
    for (key, value) in &d.labels {
        edgeward_ca::policy::check_label(key, value)
            .map_err(|e| format!("destination.labels: {e}"))?;
    }
    let ports = d.ports.iter().enumerate().map(|(i, p)| {
        check_port(u64::from(*p))
            .map(Port)
            .map_err(|e| format!("destination.ports[{i}]: {e}"))
    });
    Ok(DestinationSpec {
        namespace: required("destination.namespace", &d.namespace)?,
        name: optional("destination.name", &d.name)?,
        labels: Labels(d.labels.clone()),
        ports: ports.collect::<Result<_, _>>()?,
    })
}

impl NamespaceSpec {
    /// The namespace default as the control API carries it.
    pub fn to_proto(&self) -> v1::NamespaceDefault {
        v1::NamespaceDefault {
            namespace: self.name.to_string(),
            action: self.default_action.to_string(),
        }
    }

    /// Checks a namespace default from the control API.
    pub fn from_proto(d: &v1::NamespaceDefault) -> Result<Self, String> {
        let at = |e: String| format!("namespace default {:?}: {e}", d.namespace);
        Ok(Self {
            name: required("namespace", &d.namespace).map_err(at)?,
            default_action: required("action", &d.action).map_err(at)?,
        })
    }
}

/// A document holding exactly these policies and defaults (for printing them as YAML).
pub fn document_from_proto(
    policies: &[v1::Policy],
    defaults: &[v1::NamespaceDefault],
) -> Result<PolicyDocument, String> {
    let policies = policies.iter().map(PolicySpec::from_proto);
    let defaults = defaults.iter().map(NamespaceSpec::from_proto);
    Ok(PolicyDocument {
        policies: Unique(policies.collect::<Result<_, _>>()?),
        namespaces: Unique(defaults.collect::<Result<_, _>>()?),
    })
}

/// The evaluation form of the policies and defaults a proxy holds; refuses the whole set when
/// any of them is invalid, naming it.
pub fn policy_set_from_proto(
    policies: &[v1::Policy],
    defaults: &[v1::NamespaceDefault],
) -> Result<PolicySet, String> {
    let doc = document_from_proto(policies, defaults)?;
    doc.to_policy_set().map_err(|e| e.to_string())
}

fn required<R: Rule>(field: &str, value: &str) -> Result<Text<R>, String> {
    Text::new(value).map_err(|e| format!("{field}: {e}"))
}

fn optional<R: Rule>(field: &str, value: &str) -> Result<Option<Text<R>>, String> {
    match value {
        "" => Ok(None),
        v => required(field, v).map(Some),
    }
}
