//! The Identity service: node join with a single-use token, node SVID renewal, and workload
//! SVIDs for the workloads the registry places on the calling node.

use edgeward_proto::v1;
use edgeward_proto::v1::identity_server::Identity;
use tonic::{Request, Response, Status};

use super::{change_refused, Api};
use crate::hub::now_unix;
use crate::registry::check_label;

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
        let svid = self.sign("Join", &req.csr_pem, &id, "node", 0)?;
        // The check above ran without the commit lock; the spend re-checks under it, so of two
        // joins racing with one token only the first gets its SVID.
        self.hub
            .complete_join(&token_id, &req.node_name, now)
            .map_err(|e| change_refused(self, "Join", e))?
            .map_err(|e| {
                self.refuse("Join", e.reason(), Status::permission_denied(e.to_string()))
            })?;
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
        let req = req.into_inner();
        let svid = self.sign(
            "RenewNode",
            &req.csr_pem,
            &id,
            "node",
            req.requested_ttl_seconds,
        )?;
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
            req.requested_ttl_seconds,
        )?;
        Ok(Response::new(svid))
    }
}
