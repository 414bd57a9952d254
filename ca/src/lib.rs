//! The identity core of edgeward, with no sockets: SPIFFE IDs, the certificate authority that
//! issues X.509-SVIDs from CSRs, trust bundles with several roots, the rustls verifiers that
//! check peers by SPIFFE ID, and the authorization policy decision.

pub mod authority;
pub mod bundle;
pub mod files;
pub mod inspect;
pub mod keys;
pub mod pem;
pub mod policy;
pub mod spiffe;
pub mod tls;
pub mod verify;

pub use authority::{Authority, GeneratedHierarchy, IssueError, IssuedSvid, DEFAULT_SVID_LIFETIME};
pub use bundle::{BundleError, SharedBundle, TrustBundle};
pub use inspect::{spiffe_id_of, CertInfo, SvidError};
pub use keys::{KeyError, PrivateKey};
pub use spiffe::{IdKind, SpiffeId, SpiffeIdError, TrustDomain};
pub use tls::{CertSlot, Svid};
pub use verify::{
    io_rejection_reason, is_verifier_refusal, rejection_reason, ClientVerifier, PeerPolicy,
    RejectionObserver, ServerVerifier, SpiffeVerifier, VerifyError,
};

#[cfg(test)]
mod tests;
