//! The mesh as the control plane last described it: workloads, nodes, policies, namespace
//! defaults and the trust bundle, at one version of one epoch. Updated by the Subscribe
//! stream's full updates and deltas, and kept on disk (`mesh.pb` in the state directory,
//! replaced atomically) so that a proxy restarted while the control plane is away starts from
//! it and keeps serving and enforcing policy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use edgeward_ca::policy::{Action, DestinationMatch, Policy, PolicySet, SourceMatch};
use edgeward_ca::{SpiffeId, TrustDomain};
use edgeward_proto::v1;
use prost::Message;
use thiserror::Error;

/// Why an update was not applied; the stream is then reopened from the version held.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum UpdateError {
    /// A delta of another epoch (the control plane's store was replaced).
    #[error("the update is of epoch {got}, the proxy holds epoch {have}")]
    OtherEpoch {
        /// The epoch held.
        have: String,
        /// The update's epoch.
        got: String,
    },
    /// A delta that does not start at the version held.
    #[error("the update applies to version {from}, the proxy holds version {have}")]
    WrongBase {
        /// The version held.
        have: u64,
        /// The version the delta applies to.
        from: u64,
    },
}

/// Why the cached state could not be used.
#[derive(Debug, Error)]
pub enum CacheError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a mesh state.
    #[error("{path} is corrupt ({reason})")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// The state held.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeshState {
    /// The epoch of the control plane's store; empty before the first update.
    pub epoch: String,
    /// The version; 0 before the first update.
    pub version: u64,
    trust_domain: String,
    workloads: BTreeMap<String, v1::Workload>,
    nodes: BTreeMap<String, v1::Node>,
    policies: BTreeMap<String, v1::Policy>,
    namespace_defaults: Vec<v1::NamespaceDefault>,
    bundle: Vec<Vec<u8>>,
}

impl MeshState {
    /// Applies one update of the Subscribe stream. Returns whether anything changed.
    pub fn apply(&mut self, u: &v1::Update) -> Result<bool, UpdateError> {
        if u.full {
            let before = self.clone();
            *self = Self::default();
            self.merge(u);
            return Ok(*self != before);
        }
        if u.epoch != self.epoch {
            let (have, got) = (self.epoch.clone(), u.epoch.clone());
            return Err(UpdateError::OtherEpoch { have, got });
        }
        if u.from_version != self.version {
            let (have, from) = (self.version, u.from_version);
            return Err(UpdateError::WrongBase { have, from });
        }
        let before = self.clone();
        for key in &u.removed_workloads {
            self.workloads.remove(key);
        }
        for name in &u.removed_nodes {
            self.nodes.remove(name);
        }
        for name in &u.removed_policies {
            self.policies.remove(name);
        }
        self.merge(u);
        Ok(*self != before)
    }

    fn merge(&mut self, u: &v1::Update) {
        self.epoch.clone_from(&u.epoch);
        self.version = u.version;
        self.trust_domain.clone_from(&u.trust_domain);
        for w in &u.workloads {
            let key = format!("{}/{}", w.namespace, w.name);
            self.workloads.insert(key, w.clone());
        }
        for n in &u.nodes {
            self.nodes.insert(n.name.clone(), n.clone());
        }
        for p in &u.policies {
            self.policies.insert(p.name.clone(), p.clone());
        }
        if u.full || u.namespace_defaults_changed {
            self.namespace_defaults.clone_from(&u.namespace_defaults);
        }
        if !u.trust_bundle_der.is_empty() {
            self.bundle.clone_from(&u.trust_bundle_der);
        }
    }

    /// The whole state as one full update, the form it is cached in.
    pub fn to_update(&self) -> v1::Update {
        v1::Update {
            version: self.version,
            epoch: self.epoch.clone(),
            full: true,
            from_version: 0,
            trust_domain: self.trust_domain.clone(),
            workloads: self.workloads.values().cloned().collect(),
            nodes: self.nodes.values().cloned().collect(),
            policies: self.policies.values().cloned().collect(),
            namespace_defaults_changed: true,
            namespace_defaults: self.namespace_defaults.clone(),
            trust_bundle_der: self.bundle.clone(),
            ..Default::default()
        }
    }

    /// The workloads held.
    pub fn workloads(&self) -> impl Iterator<Item = &v1::Workload> {
        self.workloads.values()
    }

    /// The nodes held.
    pub fn nodes(&self) -> impl Iterator<Item = &v1::Node> {
        self.nodes.values()
    }

    /// The trust bundle's roots (DER); empty before the first update.
    pub fn bundle(&self) -> &[Vec<u8>] {
        &self.bundle
    }

    /// The policies held, in evaluation form; a policy that does not validate refuses the set.
    pub fn policy_set(&self) -> Result<PolicySet, String> {
        let policies = self.policies.values().map(policy_from_proto);
        let policies = policies.collect::<Result<Vec<_>, _>>()?;
        let defaults = self.namespace_defaults.iter().map(|d| {
            let action = d.action.parse::<Action>().map_err(|e| e.to_string())?;
            Ok::<_, String>((d.namespace.clone(), action))
        });
        let defaults = defaults.collect::<Result<Vec<_>, _>>()?;
        PolicySet::new(policies, defaults).map_err(|e| e.to_string())
    }
}

/// A policy of the control API in evaluation form. Empty strings mean "not set".
fn policy_from_proto(p: &v1::Policy) -> Result<Policy, String> {
    let at = |e: String| format!("policy {:?}: {e}", p.name);
    let set = |s: &String| (!s.is_empty()).then(|| s.clone());
    let source = p.source.clone().unwrap_or_default();
    let spiffe_id = set(&source.spiffe_id)
        .map(|s| SpiffeId::parse(&s))
        .transpose()
        .map_err(|e| at(format!("source.spiffe_id: {e}")))?;
    let trust_domain = set(&source.trust_domain)
        .map(|s| TrustDomain::parse(&s))
        .transpose()
        .map_err(|e| at(format!("source.trust_domain: {e}")))?;
    let source = SourceMatch {
        spiffe_id,
        trust_domain,
        namespace: set(&source.namespace),
        path_prefix: set(&source.path_prefix),
    };
    let d = p.destination.clone().unwrap_or_default();
    let ports = d.ports.iter().map(|&port| {
        u16::try_from(port).map_err(|_| at(format!("destination.ports: {port} is out of range")))
    });
    let destination = DestinationMatch {
        namespace: d.namespace.clone(),
        name: set(&d.name),
        labels: d.labels.clone().into_iter().collect(),
        ports: ports.collect::<Result<_, _>>()?,
    };
    let action = p.action.parse::<Action>().map_err(|e| at(e.to_string()))?;
    Policy::new(&p.name, action, source, destination).map_err(|e| at(e.to_string()))
}

/// The first bytes of a cache file (format version 1).
const CACHE_MAGIC: &[u8; 4] = b"EWM1";

/// The protobuf payload of a cache file, once its magic and digest check out.
fn checked_payload(bytes: &[u8]) -> Result<&[u8], &'static str> {
    let rest = bytes
        .strip_prefix(CACHE_MAGIC)
        .ok_or("not an edgeward mesh cache")?;
    if rest.len() < 32 {
        return Err("cut short");
    }
    let (digest, payload) = rest.split_at(32);
    let actual = ring::digest::digest(&ring::digest::SHA256, payload);
    if actual.as_ref() != digest {
        return Err("its checksum does not match: damaged or cut short");
    }
    Ok(payload)
}

/// The cache file of the mesh state.
#[derive(Debug, Clone)]
pub struct MeshCache {
    path: PathBuf,
}

impl MeshCache {
    /// The cache in `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join("mesh.pb"),
        }
    }

    /// The cached state, `None` when there is none yet.
    pub fn load(&self) -> Result<Option<MeshState>, CacheError> {
        let shown = self.path.display().to_string();
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CacheError::Read {
                    path: shown,
                    source,
                })
            }
        };
        let corrupt = |reason: String| CacheError::Corrupt {
            path: shown.clone(),
            reason,
        };
        let payload = checked_payload(&bytes).map_err(|e| corrupt(e.into()))?;
        let update = v1::Update::decode(payload).map_err(|e| corrupt(e.to_string()))?;
        if !update.full || update.version == 0 || update.epoch.is_empty() {
            return Err(corrupt("not a complete mesh state".into()));
        }
        let mut state = MeshState::default();
        state.apply(&update).map_err(|e| corrupt(e.to_string()))?;
        state.policy_set().map_err(corrupt)?;
        Ok(Some(state))
    }

    /// Replaces the cache with `state`, atomically, behind a magic and a SHA-256 of the rest:
    /// atomic writes rule out a torn file after a crash, the digest catches damage on disk.
    pub fn save(&self, state: &MeshState) -> std::io::Result<()> {
        let payload = state.to_update().encode_to_vec();
        let digest = ring::digest::digest(&ring::digest::SHA256, &payload);
        let mut bytes = Vec::with_capacity(CACHE_MAGIC.len() + 32 + payload.len());
        bytes.extend_from_slice(CACHE_MAGIC);
        bytes.extend_from_slice(digest.as_ref());
        bytes.extend_from_slice(&payload);
        edgeward_ca::files::write_secret(&self.path, &bytes)
    }

    /// Moves a corrupt cache aside (to `mesh.pb.corrupt`), keeping it for inspection.
    pub fn set_aside(&self) {
        let _ = std::fs::rename(&self.path, self.path.with_extension("pb.corrupt"));
    }
}

#[cfg(test)]
mod tests;
