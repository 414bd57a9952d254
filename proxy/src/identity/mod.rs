//! Identities: the node's own SVID and those of the workloads that run on the node.

pub mod node;
pub mod renewal;
pub mod store;
pub mod workloads;
