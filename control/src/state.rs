//! The control plane's own records: join tokens (only their hashes), nodes, the version counter
//! and epoch of what it serves, workloads added through the API, policies and namespace
//! defaults. Kept in one JSON file that is replaced atomically on every change, before the
//! change is acknowledged or put in force.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::policy::{NamespaceSpec, PolicySpec};
use crate::registry::WorkloadSpec;
use crate::yaml::{Keyed, Unique};

/// Lifetime of a join token when the operator gives none: one hour.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// How long a spent or expired token is remembered, so a retry is told why it fails.
const TOKEN_MEMORY: i64 = 24 * 3600;

/// Why the state file could not be used.
#[derive(Debug, Error)]
pub enum StateError {
    /// The file exists but cannot be read.
    #[error("cannot read state file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// The file is not valid state JSON.
    #[error("state file {path} is corrupt ({source}); restore it from a backup or move it away")]
    Corrupt {
        /// The file.
        path: String,
        /// The parse error, with its line.
        source: serde_json::Error,
    },
    /// Writing failed.
    #[error("cannot write state file {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The error.
        source: io::Error,
    },
}

/// Why a join token was refused. The token itself never appears in these messages.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    /// Not of the form `ewt1.<id>.<secret>`.
    #[error("the join token is malformed")]
    Malformed,
    /// No token with that id and secret exists.
    #[error("the join token is not recognised")]
    Unknown,
    /// The token expired.
    #[error("join token {id} expired {ago} s ago; create a new one")]
    Expired {
        /// The token's public id.
        id: String,
        /// Seconds since it expired.
        ago: i64,
    },
    /// The token was used before.
    #[error("join token {id} was already used; tokens are single-use")]
    AlreadyUsed {
        /// The token's public id.
        id: String,
    },
    /// The token was created for another node.
    #[error("join token {id} was created for node {want}, not {got}")]
    WrongNode {
        /// The token's public id.
        id: String,
        /// The node it is for.
        want: String,
        /// The node that presented it.
        got: String,
    },
}

impl TokenError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "token_malformed",
            Self::Unknown => "token_unknown",
            Self::Expired { .. } => "token_expired",
            Self::AlreadyUsed { .. } => "token_used",
            Self::WrongNode { .. } => "token_wrong_node",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TokenRecord {
    id: String,
    sha256: String,
    node: String,
    expires_unix: i64,
    used_unix: Option<i64>,
}

/// What the control plane knows of a node.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeRecord {
    /// When it joined, Unix seconds.
    pub joined_unix: i64,
    /// When it last joined, renewed or opened a watch, Unix seconds.
    pub last_seen_unix: i64,
    /// Where its tunnel listener is reached (ip:port).
    pub tunnel_addresses: Vec<String>,
}

/// Everything the state file holds. Fields added after the first release default when absent,
/// so an older file still loads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Version of what proxies are served; it only grows, across restarts too.
    pub version: u64,
    tokens: Vec<TokenRecord>,
    /// Every node that joined, by name.
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Random id of this data directory's sequence of versions, made once.
    #[serde(default)]
    pub epoch: String,
    /// SHA-256 (hex) of what was served at `version`, to tell at start whether it changed.
    #[serde(default)]
    pub served_sha256: String,
    /// Workloads added through the API.
    #[serde(default)]
    pub workloads: Unique<WorkloadSpec>,
    /// Policies, in name order.
    #[serde(default)]
    pub policies: Unique<PolicySpec>,
    /// Namespace default actions, in namespace order.
    #[serde(default)]
    pub namespaces: Unique<NamespaceSpec>,
}

impl State {
    /// Spends the token `id` and records that `node` joined. Refuses when another join spent
    /// the token first: two joins racing with one token must not both succeed.
    pub fn record_join(&mut self, id: &str, node: &str, now_unix: i64) -> Result<(), TokenError> {
        let Some(t) = self.tokens.iter_mut().find(|t| t.id == id) else {
            return Err(TokenError::Unknown);
        };
        if t.used_unix.is_some() {
            return Err(TokenError::AlreadyUsed { id: id.to_owned() });
        }
        t.used_unix = Some(now_unix);
        let record = self.nodes.entry(node.to_owned()).or_default();
        record.joined_unix = now_unix;
        record.last_seen_unix = now_unix;
        Ok(())
    }

    /// Records that `node` was seen, with its tunnel addresses.
    pub fn record_seen(&mut self, node: &str, tunnel_addresses: Vec<String>, now_unix: i64) {
        let record = self.nodes.entry(node.to_owned()).or_default();
        record.tunnel_addresses = tunnel_addresses;
        record.last_seen_unix = now_unix;
    }
}

impl Keyed for WorkloadSpec {
    fn key(&self) -> (&'static str, String) {
        ("workload", WorkloadSpec::key(self))
    }
}

/// Replaces the entry with the same key as `entry`, or adds it; keeps the list in key order.
pub fn upsert<T: Keyed>(list: &mut Unique<T>, entry: T) {
    let key = entry.key().1;
    list.0.retain(|e| e.key().1 != key);
    let at = list.0.partition_point(|e| e.key().1 < key);
    list.0.insert(at, entry);
}

/// Removes the entry whose key is `key`; returns whether there was one.
pub fn remove<T: Keyed>(list: &mut Unique<T>, key: &str) -> bool {
    let before = list.0.len();
    list.0.retain(|e| e.key().1 != key);
    list.0.len() != before
}

/// The state file and its contents in memory.
#[derive(Debug)]
pub struct StateStore {
    path: PathBuf,
    state: State,
}

impl StateStore {
    /// Opens the state file, or starts empty when there is none yet.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let shown = path.display().to_string();
        let state = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                path: shown,
                source,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => State::default(),
            Err(source) => {
                return Err(StateError::Read {
                    path: shown,
                    source,
                })
            }
        };
        Ok(Self {
            path: path.to_owned(),
            state,
        })
    }

    /// What the file holds now.
    pub fn records(&self) -> &State {
        &self.state
    }

    /// Saves `state` atomically, and only then holds it; on failure the old state stays.
    pub fn replace(&mut self, state: State) -> Result<(), StateError> {
        let json = serde_json::to_vec_pretty(&state).map_err(|e| StateError::Write {
            path: self.path.display().to_string(),
            source: io::Error::other(e),
        })?;
        edgeward_ca::files::write_secret(&self.path, &json).map_err(|source| {
            StateError::Write {
                path: self.path.display().to_string(),
                source,
            }
        })?;
        self.state = state;
        Ok(())
    }

    /// Applies `change` to a copy of the state and saves it, as [`StateStore::replace`] does.
    pub fn update<T>(&mut self, change: impl FnOnce(&mut State) -> T) -> Result<T, StateError> {
        let mut draft = self.state.clone();
        let out = change(&mut draft);
        self.replace(draft)?;
        Ok(out)
    }

    /// The version counter of what the control plane serves.
    pub fn version(&self) -> u64 {
        self.state.version
    }

    /// Creates a single-use join token for `node`, valid for `ttl`. Returns the token, which is
    /// shown to the operator once and stored only as a hash.
    pub fn create_token(
        &mut self,
        node: &str,
        ttl: Duration,
        now_unix: i64,
    ) -> Result<(String, i64), StateError> {
        let id = random_hex(8);
        let token = format!("ewt1.{id}.{}", random_hex(16));
        let expires_unix = now_unix + ttl.as_secs() as i64;
        let record = TokenRecord {
            id,
            sha256: sha256_hex(&token),
            node: node.to_owned(),
            expires_unix,
            used_unix: None,
        };
        self.update(|s| {
            s.tokens
                .retain(|t| t.expires_unix.saturating_add(TOKEN_MEMORY) > now_unix);
            s.tokens.push(record);
        })?;
        Ok((token, expires_unix))
    }

    /// Checks a token presented by `node` without spending it; returns its id.
    pub fn check_token(
        &self,
        token: &str,
        node: &str,
        now_unix: i64,
    ) -> Result<String, TokenError> {
        let mut parts = token.split('.');
        let (Some("ewt1"), Some(id), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let hash = sha256_hex(token);
        let record = self
            .state
            .tokens
            .iter()
            .find(|t| t.id == id && t.sha256 == hash)
            .ok_or(TokenError::Unknown)?;
        let id = record.id.clone();
        if record.used_unix.is_some() {
            return Err(TokenError::AlreadyUsed { id });
        }
        if now_unix >= record.expires_unix {
            let ago = now_unix.saturating_sub(record.expires_unix);
            return Err(TokenError::Expired { id, ago });
        }
        if record.node != node {
            let want = record.node.clone();
            let got = node.to_owned();
            return Err(TokenError::WrongNode { id, want, got });
        }
        Ok(id)
    }

    /// The node's record, if it ever joined.
    pub fn node(&self, name: &str) -> Option<&NodeRecord> {
        self.state.nodes.get(name)
    }

    /// Every node that ever joined.
    pub fn nodes(&self) -> &BTreeMap<String, NodeRecord> {
        &self.state.nodes
    }
}

/// A new epoch: 128 random bits, hex.
pub fn new_epoch() -> String {
    random_hex(16)
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .expect("the system random source works");
    hex(&buf)
}

fn sha256_hex(text: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store in a temporary directory, removed when the returned guard drops.
    fn store() -> (StateStore, PathBuf, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        (StateStore::open(&path).unwrap(), path, dir)
    }

    #[test]
    fn a_token_joins_once_for_its_node_before_expiry() {
        let (mut s, path, _dir) = store();
        let (token, expires) = s
            .create_token("node-1", Duration::from_secs(60), 1000)
            .unwrap();
        assert_eq!(expires, 1060);
        assert!(!std::fs::read_to_string(&path).unwrap().contains(&token));

        assert!(matches!(
            s.check_token(&token, "node-2", 1001),
            Err(TokenError::WrongNode { .. })
        ));
        assert!(matches!(
            s.check_token(&token, "node-1", 1060),
            Err(TokenError::Expired { ago: 0, .. })
        ));
        let id = s.check_token(&token, "node-1", 1001).unwrap();
        s.update(|st| st.record_join(&id, "node-1", 1001))
            .unwrap()
            .unwrap();
        // A second join that passed the check before the first one spent the token loses.
        let racing = s.update(|st| st.record_join(&id, "node-1", 1001)).unwrap();
        assert!(matches!(racing, Err(TokenError::AlreadyUsed { .. })));
        assert!(matches!(
            s.check_token(&token, "node-1", 1002),
            Err(TokenError::AlreadyUsed { .. })
        ));

        let reopened = StateStore::open(&path).unwrap();
        assert!(reopened.node("node-1").is_some());
        assert!(matches!(
            reopened.check_token(&token, "node-1", 1002),
            Err(TokenError::AlreadyUsed { .. })
        ));
    }

    #[test]
    fn forged_and_malformed_tokens_are_refused() {
        let (mut s, _, _dir) = store();
        let (token, _) = s.create_token("node-1", DEFAULT_TOKEN_TTL, 0).unwrap();
        let forged = format!("{}0", &token[..token.len() - 1]);
        let forged = if forged == token {
            format!("{}1", &token[..token.len() - 1])
        } else {
            forged
        };
        assert_eq!(
            s.check_token(&forged, "node-1", 1),
            Err(TokenError::Unknown)
        );
        for bad in ["", "ewt1", "ewt1.a", "ewt2.a.b", "ewt1.a.b.c"] {
            assert_eq!(
                s.check_token(bad, "node-1", 1),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn corrupt_state_is_refused_with_the_file_named() {
        let (_, path, _dir) = store();
        std::fs::write(&path, b"{ not json").unwrap();
        let e = StateStore::open(&path).unwrap_err().to_string();
        assert!(
            e.contains(&path.display().to_string()) && e.contains("corrupt"),
            "{e}"
        );
    }
}
