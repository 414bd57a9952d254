//! The edgeward control plane: an embedded CA that signs node and workload SVIDs from CSRs, node
//! join with single-use tokens, workloads from a followed registry file and from the admin API,
//! authorization policies, versioned updates streamed to node proxies, and the admin API that
//! `edgewardctl` drives.

pub mod ca_files;
pub mod changes;
pub mod config;
pub mod ctl;
pub mod feed;
pub mod hub;
pub mod metrics;
pub mod policy;
pub mod registry;
pub mod run;
pub mod service;
pub mod state;
pub mod yaml;
