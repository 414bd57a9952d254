//! The edgeward end-to-end lab: real network namespaces, veth links, iptables, real sockets,
//! the real edgeward binaries and real gRPC peers (Python grpcio).
//!
//! Everything the lab makes is owned by a guard (`Topology`, `Proc`, `Capture`, `WanLink`,
//! `Impairment`, `Handover`, `ClientRun`) whose `Drop` removes it, so a failing or panicking
//! test leaves no namespace, process or iptables rule behind. Traffic stays on loopback and
//! inside the namespaces the lab made (198.18.0.0/15).

pub mod calls;
pub mod capture;
pub mod greeter;
pub mod http;
pub mod identity;
pub mod impair;
pub mod mesh;
pub mod metrics;
pub mod netns;
pub mod ops;
pub mod paths;
pub mod pcap;
pub mod peer;
pub mod procs;
pub mod rpc;
pub mod topology;
pub mod transfer;
pub mod wait;

pub use capture::{contains, Capture, CaptureData};
pub use mesh::{Mesh, MeshOptions, OutboundMode, Transport, Workload};
pub use topology::{Pod, PodSpec, Topology};
