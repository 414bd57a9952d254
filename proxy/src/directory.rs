//! The proxy's view of the mesh, built from the control plane's snapshot: workloads by address,
//! nodes by name, and which workloads run here. Replaced whole on every snapshot.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use edgeward_ca::SpiffeId;
use edgeward_proto::v1;
use thiserror::Error;
use tokio::sync::watch;

/// Why a snapshot from the control plane was refused.
#[derive(Debug, Error)]
pub enum SnapshotError {
    /// A workload entry does not hold together.
    #[error("workload {who}: {problem}")]
    BadWorkload {
        /// `namespace/name`.
        who: String,
        /// What is wrong.
        problem: String,
    },
    /// A node entry names an unusable tunnel address.
    #[error("node {node}: tunnel address {address:?} is not ip:port")]
    BadNodeAddress {
        /// The node.
        node: String,
        /// The address as sent.
        address: String,
    },
}

/// A workload's registry key: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadKey {
    /// The namespace.
    pub namespace: String,
    /// The name within the namespace.
    pub name: String,
}

impl fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One workload of the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Namespace and name.
    pub key: WorkloadKey,
    /// The node it runs on.
    pub node: String,
    /// Its pod addresses.
    pub addresses: Vec<IpAddr>,
    /// Its SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Its labels, which authorization policies may select on.
    pub labels: BTreeMap<String, String>,
}

/// The mesh as of one version of the control plane's state.
#[derive(Debug, Default)]
pub struct Directory {
    /// The snapshot version; 0 before the first snapshot.
    pub version: u64,
    local_node: String,
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    local: Vec<Arc<Workload>>,
    nodes: HashMap<String, Vec<SocketAddr>>,
}

impl Directory {
    /// Builds the view for `local_node` from the workloads and nodes of one version, refusing
    /// it whole if any entry is bad.
    pub fn build<'a>(
        version: u64,
        workloads: impl IntoIterator<Item = &'a v1::Workload>,
        nodes: impl IntoIterator<Item = &'a v1::Node>,
        local_node: &str,
    ) -> Result<Self, SnapshotError> {
        let mut dir = Self {
            version,
            local_node: local_node.to_owned(),
            ..Self::default()
        };
        for w in workloads {
            let workload = Arc::new(parse_workload(w)?);
            for ip in &workload.addresses {
                dir.by_ip.insert(*ip, workload.clone());
            }
            if workload.node == local_node {
                dir.local.push(workload);
            }
        }
        for n in nodes {
            let addresses = n.tunnel_addresses.iter().map(|a| {
                a.parse().map_err(|_| SnapshotError::BadNodeAddress {
                    node: n.name.clone(),
                    address: a.clone(),
                })
            });
            dir.nodes
                .insert(n.name.clone(), addresses.collect::<Result<_, _>>()?);
        }
        Ok(dir)
    }

    /// The workload that owns `ip`, if any.
    pub fn workload_at(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&ip)
    }

    /// The workload that owns `ip` if it runs on this node.
    pub fn local_workload_at(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workload_at(ip).filter(|w| w.node == self.local_node)
    }

    /// Workloads that run on this node.
    pub fn local_workloads(&self) -> &[Arc<Workload>] {
        &self.local
    }

    /// The node that runs the workloads with SPIFFE ID `id`, when exactly one node does.
    pub fn node_of_identity(&self, id: &SpiffeId) -> Option<String> {
        let mut nodes = self
            .by_ip
            .values()
            .filter(|w| w.spiffe_id == *id)
            .map(|w| &w.node);
        let first = nodes.next()?;
        nodes.all(|n| n == first).then(|| first.clone())
    }

    /// Where the tunnel of `node` is reached.
    pub fn tunnel_addresses(&self, node: &str) -> &[SocketAddr] {
        self.nodes.get(node).map(Vec::as_slice).unwrap_or(&[])
    }
}

fn parse_workload(w: &v1::Workload) -> Result<Workload, SnapshotError> {
    let who = format!("{}/{}", w.namespace, w.name);
    let bad = |problem: String| SnapshotError::BadWorkload {
        who: who.clone(),
        problem,
    };
    // The names become file names in the state directory: a name that is not a DNS label (such
    // as `../x`) must never reach the file system.
    for name in [&w.namespace, &w.name] {
        edgeward_ca::policy::check_name(name).map_err(|e| bad(e.to_string()))?;
    }
    let spiffe_id = SpiffeId::parse(&w.spiffe_id)
        .map_err(|e| bad(format!("SPIFFE ID {:?}: {e}", w.spiffe_id)))?;
    let addresses = w
        .addresses
        .iter()
        .map(|a| {
            a.parse()
                .map_err(|_| bad(format!("address {a:?} is not an IP address")))
        })
        .collect::<Result<_, _>>()?;
    Ok(Workload {
        key: WorkloadKey {
            namespace: w.namespace.clone(),
            name: w.name.clone(),
        },
        node: w.node.clone(),
        addresses,
        spiffe_id,
        labels: w.labels.clone(),
    })
}

/// The directory in force, shared by every task; watchers learn of each replacement.
#[derive(Debug, Clone)]
pub struct SharedDirectory {
    current: Arc<RwLock<Arc<Directory>>>,
    changes: watch::Sender<u64>,
}

impl SharedDirectory {
    /// An empty directory (version 0) until the first snapshot arrives.
    pub fn new() -> Self {
        let (changes, _) = watch::channel(0);
        Self {
            current: Arc::new(RwLock::new(Arc::new(Directory::default()))),
            changes,
        }
    }

    /// The directory in force now.
    pub fn get(&self) -> Arc<Directory> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts `dir` in force and wakes every watcher.
    pub fn replace(&self, dir: Directory) {
        let version = dir.version;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(dir);
        self.changes.send_replace(version);
    }

    /// A receiver that changes with every replacement.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

impl Default for SharedDirectory {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> v1::Snapshot {
        let w = |name: &str, node: &str, ip: &str| v1::Workload {
            name: name.into(),
            namespace: "demo".into(),
            service_account: name.into(),
            node: node.into(),
            addresses: vec![ip.into()],
            spiffe_id: format!("spiffe://td/ns/demo/sa/{name}"),
            ..Default::default()
        };
        v1::Snapshot {
            version: 7,
            trust_domain: "td".into(),
            workloads: vec![w("a", "n1", "198.18.1.10"), w("b", "n2", "198.18.2.10")],
            nodes: vec![v1::Node {
                name: "n2".into(),
                tunnel_addresses: vec!["198.18.0.2:15008".into()],
                ..Default::default()
            }],
            trust_bundle_der: vec![],
        }
    }

    #[test]
    fn indexes_workloads_and_nodes() {
        let dir = {
            let s = snapshot();
            Directory::build(s.version, &s.workloads, &s.nodes, "n1")
        }
        .unwrap();
        assert_eq!(dir.version, 7);
        let b = dir.workload_at("198.18.2.10".parse().unwrap()).unwrap();
        assert_eq!(b.key.to_string(), "demo/b");
        assert!(dir
            .local_workload_at("198.18.2.10".parse().unwrap())
            .is_none());
        assert!(dir
            .local_workload_at("198.18.1.10".parse().unwrap())
            .is_some());
        assert_eq!(dir.local_workloads().len(), 1);
        assert_eq!(
            dir.tunnel_addresses("n2"),
            &["198.18.0.2:15008".parse().unwrap()]
        );
        assert!(dir.tunnel_addresses("n9").is_empty());
    }

    #[test]
    fn a_bad_entry_refuses_the_whole_snapshot() {
        let mut s = snapshot();
        s.workloads[1].spiffe_id = "spiffe://td/ns/demo/sa/b/".into();
        assert!(matches!(
            Directory::build(s.version, &s.workloads, &s.nodes, "n1"),
            Err(SnapshotError::BadWorkload { .. })
        ));
        let mut s = snapshot();
        s.nodes[0].tunnel_addresses = vec!["nowhere".into()];
        assert!(matches!(
            Directory::build(s.version, &s.workloads, &s.nodes, "n1"),
            Err(SnapshotError::BadNodeAddress { .. })
        ));
        for name in ["../x", "a_b", "", "A"] {
            let mut s = snapshot();
            s.workloads[0].name = name.into();
            let error = Directory::build(s.version, &s.workloads, &s.nodes, "n1").unwrap_err();
            assert!(error.to_string().contains("not a valid name"), "{error}");
        }
    }
}
