//! The gRPC services of the control API: Identity (join, renew, sign), Registry (watch,
//! subscribe) and Admin. Each call is authorised by the SPIFFE ID of the client certificate,
//! except Join, which is authorised by its single-use token.

mod admin;
mod identity;
mod registry;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use edgeward_ca::{spiffe_id_of, IdKind, IssueError, SpiffeId};
use edgeward_proto::v1;
use tonic::{Request, Status};

use crate::hub::{unix, ChangeError, Hub};

pub use admin::MAX_TOKEN_TTL;

/// The services, sharing one hub.
#[derive(Clone)]
pub struct Api {
    hub: Arc<Hub>,
}

impl Api {
    /// Services over `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }

    fn refuse(&self, call: &str, reason: &str, status: Status) -> Status {
        self.hub.metrics.reject(call, reason);
        tracing::info!(
            call,
            reason,
            message = status.message(),
            "refused a control call"
        );
        status
    }

    /// The SPIFFE ID of the client certificate (already verified against the bundle by TLS).
    fn peer<T>(&self, call: &str, req: &Request<T>) -> Result<SpiffeId, Status> {
        let certs = req.peer_certs().ok_or_else(|| {
            let s = Status::unauthenticated("this call needs a client certificate");
            self.refuse(call, "no_certificate", s)
        })?;
        let leaf = certs.first().ok_or_else(|| {
            self.refuse(
                call,
                "no_certificate",
                Status::unauthenticated("empty certificate chain"),
            )
        })?;
        spiffe_id_of(leaf)
            .map_err(|e| self.refuse(call, "not_svid", Status::unauthenticated(e.to_string())))
    }

    /// The name of the calling node; refuses any other kind of caller.
    fn node_peer<T>(&self, call: &str, req: &Request<T>) -> Result<String, Status> {
        let id = self.peer(call, req)?;
        let IdKind::Node(name) = id.kind() else {
            let msg = format!("only node proxies may call {call}; the caller is {id}");
            return Err(self.refuse(call, "not_a_node", Status::permission_denied(msg)));
        };
        if self.hub.state().node(name).is_none() {
            let msg = format!("node {name} is not registered with this control plane");
            return Err(self.refuse(call, "unknown_node", Status::permission_denied(msg)));
        }
        Ok(name.to_owned())
    }

    fn admin_peer<T>(&self, call: &str, req: &Request<T>) -> Result<(), Status> {
        let id = self.peer(call, req)?;
        if id.kind() != IdKind::Admin {
            let msg = format!("{call} needs the admin credential; the caller is {id}");
            return Err(self.refuse(call, "not_admin", Status::permission_denied(msg)));
        }
        Ok(())
    }

    fn sign(
        &self,
        call: &str,
        csr_pem: &str,
        id: &SpiffeId,
        kind: &str,
        requested_ttl_seconds: u64,
    ) -> Result<v1::SvidResponse, Status> {
        let lifetime = match requested_ttl_seconds {
            0 => self.hub.svid_lifetime,
            s => Duration::from_secs(s).min(self.hub.max_svid_lifetime),
        };
        let csr = edgeward_ca::pem::decode_one(csr_pem, "CERTIFICATE REQUEST").map_err(|e| {
            let msg = format!("the CSR is not PEM: {e}");
            self.refuse(call, "malformed_csr", Status::invalid_argument(msg))
        })?;
        let issued = self
            .hub
            .authority
            .issue(&csr, id, lifetime, SystemTime::now())
            .map_err(|e| self.issue_error(call, e))?;
        self.hub.metrics.issued.with_label_values(&[kind]).inc();
        tracing::info!(call, spiffe_id = %id, "issued an SVID");
        Ok(v1::SvidResponse {
            spiffe_id: id.to_string(),
            cert_chain_der: issued.chain.iter().map(|c| c.to_vec()).collect(),
            trust_bundle_der: self.hub.bundle_der(),
            not_after_unix: unix(issued.not_after),
        })
    }

    fn issue_error(&self, call: &str, e: IssueError) -> Status {
        let (reason, status) = match &e {
            IssueError::MalformedCsr(_) => {
                ("malformed_csr", Status::invalid_argument(e.to_string()))
            }
            IssueError::BadCsrSignature => {
                ("bad_csr_signature", Status::invalid_argument(e.to_string()))
            }
            IssueError::UnsupportedKey(_) => {
                ("unsupported_key", Status::invalid_argument(e.to_string()))
            }
            _ => ("ca_failure", Status::internal(e.to_string())),
        };
        self.refuse(call, reason, status)
    }
}

fn state_failure(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "cannot persist control-plane state");
    Status::unavailable(format!("the control plane cannot persist its state: {e}"))
}

/// The status for a change that was not made, counted under `call` with a reason.
fn change_refused(api: &Api, call: &str, e: ChangeError) -> Status {
    let message = e.to_string();
    let (reason, status) = match e {
        ChangeError::State(_) => return state_failure(message),
        ChangeError::Conflict(_) => ("conflict", Status::failed_precondition(message)),
        ChangeError::Document(_) => ("bad_document", Status::invalid_argument(message)),
        ChangeError::Invalid(_) => ("invalid", Status::invalid_argument(message)),
        ChangeError::NotFound(_) => ("not_found", Status::not_found(message)),
        ChangeError::Refused(_) => ("refused", Status::failed_precondition(message)),
    };
    api.refuse(call, reason, status)
}
