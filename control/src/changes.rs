//! The changes the control plane accepts, each one commit: policy documents applied and policies
//! deleted, workloads added and removed through the API, a new registry file, and nodes that
//! join or open a stream.

use edgeward_proto::v1;

use crate::hub::{ChangeError, Hub};
use crate::policy::PolicyDocument;
use crate::registry::{Registry, Source, WorkloadSpec};
use crate::state::{remove, upsert, TokenError};

/// How stale a node's "last seen" record may get before a new stream refreshes it on disk.
pub const SEEN_REFRESH_SECS: i64 = 300;

impl Hub {
    /// Validates a policy document whole and upserts its policies (by name) and namespace
    /// defaults (by namespace). Returns what it applied (policy names, then `namespace/<name>`)
    /// and the version in force.
    pub fn apply_policies(&self, yaml: &str) -> Result<(Vec<String>, u64), ChangeError> {
        let result = self.commit(|draft| {
            let doc = PolicyDocument::parse(yaml)?;
            let mut applied = Vec::new();
            for spec in doc.policies.0 {
                applied.push(spec.name.to_string());
                upsert(&mut draft.state.policies, spec);
            }
            for spec in doc.namespaces.0 {
                applied.push(format!("namespace/{}", spec.name));
                upsert(&mut draft.state.namespaces, spec);
            }
            Ok(applied)
        });
        let outcome = match &result {
            Ok(_) => "ok",
            Err(ChangeError::Document(_)) => "refused",
            Err(_) => "error",
        };
        self.metrics
            .policy_applies
            .with_label_values(&[outcome])
            .inc();
        result
    }

    /// Deletes the policy `name`; returns the version in force.
    pub fn delete_policy(&self, name: &str) -> Result<u64, ChangeError> {
        let ((), version) = self.commit(|draft| match remove(&mut draft.state.policies, name) {
            true => Ok(()),
            false => Err(ChangeError::NotFound(format!(
                "no policy is named {name:?}"
            ))),
        })?;
        Ok(version)
    }

    /// Adds a workload through the API, or replaces one that was added through the API.
    pub fn add_workload(&self, workload: &v1::Workload) -> Result<u64, ChangeError> {
        let spec = WorkloadSpec::from_proto(workload).map_err(ChangeError::Invalid)?;
        let ((), version) = self.commit(|draft| {
            upsert(&mut draft.state.workloads, spec);
            Ok(())
        })?;
        Ok(version)
    }

    /// Removes a workload that was added through the API.
    pub fn remove_workload(&self, namespace: &str, name: &str) -> Result<u64, ChangeError> {
        let key = format!("{namespace}/{name}");
        let ((), version) = self.commit(|draft| {
            if remove(&mut draft.state.workloads, &key) {
                return Ok(());
            }
            let in_file = self.registry().get(namespace, name).map(|w| w.source);
            match in_file {
                Some(Source::File) => Err(ChangeError::Refused(format!(
                    "workload {key} is defined by the registry file; remove it there"
                ))),
                _ => Err(ChangeError::NotFound(format!("no workload {key}"))),
            }
        })?;
        Ok(version)
    }

    /// Puts a new registry file in force, unless it equals the one in force (`Ok(None)`) or
    /// clashes with the API workloads.
    pub fn replace_file_registry(&self, file: Registry) -> Result<Option<u64>, ChangeError> {
        if *self.file_registry() == file {
            return Ok(None);
        }
        let ((), version) = self.commit(|draft| {
            draft.file = Some(file);
            Ok(())
        })?;
        Ok(Some(version))
    }

    /// Spends the join token `token_id` and records that `node` joined. The outer error is a
    /// failed write; the inner one says the token was spent meanwhile by a concurrent join.
    pub fn complete_join(
        &self,
        token_id: &str,
        node: &str,
        now_unix: i64,
    ) -> Result<Result<(), TokenError>, ChangeError> {
        let mut spent = Ok(());
        let result = self.commit(|draft| {
            spent = draft.state.record_join(token_id, node, now_unix);
            match &spent {
                Ok(()) => Ok(()),
                Err(e) => Err(ChangeError::Refused(e.to_string())),
            }
        });
        match (result, spent) {
            (Ok(_), _) => Ok(Ok(())),
            (Err(_), Err(token)) => Ok(Err(token)),
            (Err(e), Ok(())) => Err(e),
        }
    }

    /// Records that `node` opened a stream and where its tunnel listens. The state file is
    /// rewritten only when the addresses changed or the last record is older than
    /// [`SEEN_REFRESH_SECS`], so that a flapping link does not turn every reconnect into a
    /// synchronous disk write.
    pub fn node_seen(
        &self,
        node: &str,
        tunnel_addresses: Vec<String>,
        now_unix: i64,
    ) -> Result<(), ChangeError> {
        {
            let state = self.state();
            if let Some(record) = state.node(node) {
                let fresh = now_unix.saturating_sub(record.last_seen_unix) < SEEN_REFRESH_SECS;
                if fresh && record.tunnel_addresses == tunnel_addresses {
                    return Ok(());
                }
            }
        }
        self.commit(|draft| {
            draft.state.record_seen(node, tunnel_addresses, now_unix);
            Ok(())
        })?;
        Ok(())
    }
}
