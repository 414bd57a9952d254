//! The edgeward control plane: an embedded CA that signs node and workload SVIDs from CSRs, node
//! join with single-use tokens, a file-backed workload registry streamed to node proxies, and the
//! admin API that `edgewardctl` drives.

pub mod ca_files;
pub mod config;
pub mod ctl;
pub mod hub;
pub mod metrics;
pub mod registry;
pub mod run;
pub mod service;
pub mod state;
