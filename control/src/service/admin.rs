//! The Admin service, for operators with the admin credential: join tokens, workloads, nodes
//! and policies.

use std::time::Duration;

use edgeward_proto::v1;
use edgeward_proto::v1::admin_server::Admin;
use tonic::{Request, Response, Status};

use super::{change_refused, state_failure, Api};
use crate::feed::view::workload;
use crate::hub::now_unix;
use crate::registry::{check_label, Workload};
use crate::state::DEFAULT_TOKEN_TTL;

/// Longest join token lifetime an operator may ask for: 7 days.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

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
            workloads: registry.workloads().iter().map(listed).collect(),
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

    async fn apply_policies(
        &self,
        req: Request<v1::ApplyPoliciesRequest>,
    ) -> Result<Response<v1::ApplyPoliciesResponse>, Status> {
        self.admin_peer("ApplyPolicies", &req)?;
        let (applied, version) = self
            .hub
            .apply_policies(&req.get_ref().yaml)
            .map_err(|e| change_refused(self, "ApplyPolicies", e))?;
        tracing::info!(?applied, version, "applied a policy document");
        Ok(Response::new(v1::ApplyPoliciesResponse {
            version,
            applied,
        }))
    }

    async fn list_policies(
        &self,
        req: Request<v1::ListPoliciesRequest>,
    ) -> Result<Response<v1::ListPoliciesResponse>, Status> {
        self.admin_peer("ListPolicies", &req)?;
        let view = self.hub.feed().current();
        Ok(Response::new(v1::ListPoliciesResponse {
            policies: view.policies.values().cloned().collect(),
            namespace_defaults: view.namespace_defaults.clone(),
            version: view.version,
        }))
    }

    async fn delete_policy(
        &self,
        req: Request<v1::DeletePolicyRequest>,
    ) -> Result<Response<v1::DeletePolicyResponse>, Status> {
        self.admin_peer("DeletePolicy", &req)?;
        let name = &req.get_ref().name;
        let version = self
            .hub
            .delete_policy(name)
            .map_err(|e| change_refused(self, "DeletePolicy", e))?;
        tracing::info!(policy = %name, version, "deleted a policy");
        Ok(Response::new(v1::DeletePolicyResponse { version }))
    }

    async fn add_workload(
        &self,
        req: Request<v1::AddWorkloadRequest>,
    ) -> Result<Response<v1::AddWorkloadResponse>, Status> {
        self.admin_peer("AddWorkload", &req)?;
        let Some(workload) = &req.get_ref().workload else {
            let status = Status::invalid_argument("workload: missing");
            return Err(self.refuse("AddWorkload", "invalid", status));
        };
        let version = self
            .hub
            .add_workload(workload)
            .map_err(|e| change_refused(self, "AddWorkload", e))?;
        tracing::info!(
            workload = %format!("{}/{}", workload.namespace, workload.name),
            version,
            "added a workload through the API"
        );
        Ok(Response::new(v1::AddWorkloadResponse { version }))
    }

    async fn remove_workload(
        &self,
        req: Request<v1::RemoveWorkloadRequest>,
    ) -> Result<Response<v1::RemoveWorkloadResponse>, Status> {
        self.admin_peer("RemoveWorkload", &req)?;
        let req = req.into_inner();
        let version = self
            .hub
            .remove_workload(&req.namespace, &req.name)
            .map_err(|e| change_refused(self, "RemoveWorkload", e))?;
        let workload = format!("{}/{}", req.namespace, req.name);
        tracing::info!(%workload, version, "removed a workload");
        Ok(Response::new(v1::RemoveWorkloadResponse { version }))
    }
}

/// A workload as ListWorkloads shows it, with its source.
fn listed(w: &Workload) -> v1::Workload {
    v1::Workload {
        source: w.source.as_str().to_owned(),
        ..workload(w)
    }
}
