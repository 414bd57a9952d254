//! The edgeward control API (package `edgeward.v1`): messages and tonic services generated from
//! `proto/edgeward.proto`, plus the plumbing both ends share: a gRPC channel over our own mTLS
//! configuration, and the small HTTP endpoint that serves metrics and readiness.

pub mod channel;
pub mod duration;
pub mod http_endpoint;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod signal;

/// Version 1 of the control API.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("edgeward.v1");
}
