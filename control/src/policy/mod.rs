//! Authorization policies as the control plane keeps them: the YAML document operators apply
//! (parsed and validated whole), and its conversions to the control API and to the evaluation
//! types of `edgeward_ca::policy` that the node proxies enforce.

pub mod proto;
pub mod spec;

pub use spec::{DocumentError, NamespaceSpec, PolicyDocument, PolicySpec};
