//! The gRPC services of the control API: Identity (join, renew, sign), Registry (watch) and
//! Admin. Each call is authorised by the SPIFFE ID of the client certificate, except Join, which
//! is authorised by its single-use token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use edgeward_ca::{spiffe_id_of, IdKind, IssueError, SpiffeId};
use edgeward_proto::v1;
use edgeward_proto::v1::admin_server::Admin;
use edgeward_proto::v1::identity_server::Identity;
use edgeward_proto::v1::registry_server::Registry as RegistryService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::hub::{now_unix, to_proto, unix, Hub};
use crate::registry::check_label;
use crate::state::DEFAULT_TOKEN_TTL;

/// Longest join token lifetime an operator may ask for: 7 days.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

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
    ) -> Result<v1::SvidResponse, Status> {
        let csr = edgeward_ca::pem::decode_one(csr_pem, "CERTIFICATE REQUEST").map_err(|e| {
            let msg = format!("the CSR is not PEM: {e}");
            self.refuse(call, "malformed_csr", Status::invalid_argument(msg))
        })?;
        let issued = self
            .hub
            .authority
            .issue(&csr, id, self.hub.svid_lifetime, SystemTime::now())
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

#[tonic::async_trait]
impl Identity for Api {
    async fn join(
        &self,
        req: Request<v1::JoinRequest>,
    ) -> Result<Response<v1::JoinResponse>, Status> {
        let req = req.into_inner();
        check_label(&req.node_name)
            .map_err(|e| self.refuse("Join", "bad_node_name", Status::invalid_argument(e)))?;
        let now = now_unix();
        let token_id = self
            .hub
            .state()
            .check_token(&req.token, &req.node_name, now)
            .map_err(|e| {
                self.refuse("Join", e.reason(), Status::permission_denied(e.to_string()))
            })?;
        let id = self.hub.trust_domain.node_id(&req.node_name).map_err(|e| {
            self.refuse(
                "Join",
                "bad_node_name",
                Status::invalid_argument(e.to_string()),
            )
        })?;
        let svid = self.sign("Join", &req.csr_pem, &id, "node")?;
        self.hub
            .state()
            .complete_join(&token_id, &req.node_name, now)
            .map_err(state_failure)?;
        tracing::info!(node = %req.node_name, token = %token_id, "node joined");
        Ok(Response::new(v1::JoinResponse { svid: Some(svid) }))
    }

    async fn renew_node(
        &self,
        req: Request<v1::RenewNodeRequest>,
    ) -> Result<Response<v1::SvidResponse>, Status> {
        let node = self.node_peer("RenewNode", &req)?;
        let id = self
            .hub
            .trust_domain
            .node_id(&node)
            .map_err(|e| Status::internal(e.to_string()))?;
        let svid = self.sign("RenewNode", &req.get_ref().csr_pem, &id, "node")?;
        Ok(Response::new(svid))
    }

    async fn sign_workload(
        &self,
        req: Request<v1::SignWorkloadRequest>,
    ) -> Result<Response<v1::SvidResponse>, Status> {
        let node = self.node_peer("SignWorkload", &req)?;
        let req = req.into_inner();
        let registry = self.hub.registry();
        let Some(workload) = registry.get(&req.namespace, &req.name) else {
            let msg = format!("no workload {}/{} in the registry", req.namespace, req.name);
            return Err(self.refuse("SignWorkload", "unknown_workload", Status::not_found(msg)));
        };
        if workload.node.as_str() != node {
            let msg = format!(
                "workload {}/{} is placed on node {}, not on node {node}",
                req.namespace, req.name, workload.node
            );
            let status = Status::permission_denied(msg);
            return Err(self.refuse("SignWorkload", "workload_on_other_node", status));
        }
        let svid = self.sign(
            "SignWorkload",
            &req.csr_pem,
            &workload.spiffe_id,
            "workload",
        )?;
        Ok(Response::new(svid))
    }
}

#[tonic::async_trait]
impl RegistryService for Api {
    type WatchStream = ReceiverStream<Result<v1::Snapshot, Status>>;

    async fn watch(
        &self,
        req: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let node = self.node_peer("Watch", &req)?;
        let mut addresses = req.into_inner().tunnel_addresses;
        for a in &addresses {
            if a.parse::<SocketAddr>().is_err() {
                let msg = format!("tunnel address {a:?} is not ip:port");
                return Err(self.refuse("Watch", "bad_address", Status::invalid_argument(msg)));
            }
        }
        addresses.sort();
        let changed = self
            .hub
            .state()
            .node_seen(&node, addresses, now_unix())
            .map_err(state_failure)?;
        if changed {
            self.hub.publish().map_err(state_failure)?;
        }

        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(forward_snapshots(self.hub.clone(), node, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Sends the current snapshot, then every newer one, until the proxy goes away.
async fn forward_snapshots(
    hub: Arc<Hub>,
    node: String,
    tx: mpsc::Sender<Result<v1::Snapshot, Status>>,
) {
    hub.watcher_change(&node, true);
    tracing::info!(%node, "watch opened");
    let mut snapshots = hub.subscribe();
    loop {
        let snapshot = snapshots.borrow_and_update().as_ref().clone();
        if tx.send(Ok(snapshot)).await.is_err() {
            break;
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { break },
            () = tx.closed() => break,
        }
    }
    hub.watcher_change(&node, false);
    tracing::info!(%node, "watch closed");
}

#[tonic::async_trait]
impl Admin for Api {
    async fn create_join_token(
        &self,
        req: Request<v1::CreateJoinTokenRequest>,
    ) -> Result<Response<v1::CreateJoinTokenResponse>, Status> {
        self.admin_peer("CreateJoinToken", &req)?;
        let req = req.into_inner();
        check_label(&req.node_name).map_err(|e| {
            self.refuse(
                "CreateJoinToken",
                "bad_node_name",
                Status::invalid_argument(e),
            )
        })?;
        let ttl = match req.ttl_seconds {
            0 => DEFAULT_TOKEN_TTL,
            s => Duration::from_secs(s),
        };
        if ttl > MAX_TOKEN_TTL {
            let msg = format!(
                "a join token may live at most {} s",
                MAX_TOKEN_TTL.as_secs()
            );
            return Err(self.refuse(
                "CreateJoinToken",
                "ttl_too_long",
                Status::invalid_argument(msg),
            ));
        }
        let (token, expires_unix) = self
            .hub
            .state()
            .create_token(&req.node_name, ttl, now_unix())
            .map_err(state_failure)?;
        tracing::info!(node = %req.node_name, expires_unix, "created a join token");
        Ok(Response::new(v1::CreateJoinTokenResponse {
            token,
            expires_unix,
        }))
    }

    async fn list_workloads(
        &self,
        req: Request<v1::ListWorkloadsRequest>,
    ) -> Result<Response<v1::ListWorkloadsResponse>, Status> {
        self.admin_peer("ListWorkloads", &req)?;
        let registry = self.hub.registry();
        Ok(Response::new(v1::ListWorkloadsResponse {
            version: self.hub.state().version(),
            workloads: registry.workloads().iter().map(to_proto).collect(),
        }))
    }

    async fn list_nodes(
        &self,
        req: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        self.admin_peer("ListNodes", &req)?;
        Ok(Response::new(v1::ListNodesResponse {
            nodes: self.hub.nodes(),
        }))
    }
}
