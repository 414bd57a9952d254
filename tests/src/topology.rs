//! The lab's test network, as the interface spec draws it: a control namespace, two node
//! namespaces joined by a "wan" veth, and pods as namespaces of their own.
//!
//! Each pod hangs off its node on a point-to-point veth (no bridge), so even traffic between
//! two pods of one node is routed through the node namespace, where iptables PREROUTING sees
//! it, just as the proxy's capture rules expect.
//!
//! ```text
//!   ctl: n1 198.19.1.1/24 ---- ctl 198.19.1.2/24 :node 1
//!        n2 198.19.2.1/24 ---- ctl 198.19.2.2/24 :node 2
//!   node 1: wan 198.18.0.1/24 ---- wan 198.18.0.2/24 :node 2
//!   node k: pod-<p> 198.18.k.1/32 ---- eth0 198.18.k.10/32 :pod p (default via 198.18.k.1)
//! ```

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::netns::{self, Netns};
use crate::procs::{Launch, Proc};

/// Number of node namespaces (node-1 and node-2).
pub const NODE_COUNT: usize = 2;

/// Longest pod name: "pod-" + name must fit Linux's 15-character interface names.
pub const MAX_POD_NAME: usize = 11;

/// Name of the veth between the two nodes, on both sides.
pub const WAN_IFACE: &str = "wan";

/// A pod to create: the node (1 or 2) it runs on and a short name, unique in the topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSpec {
    /// Node number, 1 or 2.
    pub node: usize,
    /// Pod name: lowercase letters, digits and '-', at most `MAX_POD_NAME` characters.
    pub name: String,
}

impl PodSpec {
    /// A pod called `name` on node `node`.
    pub fn new(node: usize, name: &str) -> PodSpec {
        PodSpec {
            node,
            name: name.to_owned(),
        }
    }
}

/// A pod that exists: its node, name, namespace and address.
#[derive(Clone, Debug)]
pub struct Pod {
    /// Node number, 1 or 2.
    pub node: usize,
    /// Pod name from its `PodSpec`.
    pub name: String,
    /// The pod's network namespace.
    pub ns: String,
    /// The pod's IPv4 address (198.18.<node>.10 and up).
    pub addr: Ipv4Addr,
}

/// Name of node `k` as the proxies and the registry know it ("node-1", "node-2").
pub fn node_name(k: usize) -> String {
    format!("node-{k}")
}

/// Address of the control namespace on its link to node `k` (198.19.k.1).
pub fn control_addr(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, k as u8, 1)
}

/// Address of node `k` on its link to the control namespace (198.19.k.2).
pub fn node_control_side_addr(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, k as u8, 2)
}

/// Address of node `k` on the wan link (198.18.0.k), where the other node reaches its tunnel.
pub fn wan_addr(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, k as u8)
}

/// Gateway address of the pods of node `k` (198.18.k.1, on every pod veth of the node).
pub fn pod_gateway(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, k as u8, 1)
}

/// The pod network of node `k` (198.18.k.0/24), the proxy's capture CIDR.
pub fn pod_cidr(k: usize) -> String {
    format!("198.18.{k}.0/24")
}

/// The built network; dropping it stops every process it started and deletes every
/// namespace it made (which removes their veths), also when a test panics.
pub struct Topology {
    procs: Vec<Proc>,
    namespaces: Vec<Netns>,
    prefix: String,
    ctl: String,
    nodes: Vec<String>,
    pods: Vec<Pod>,
    dir: Option<TempDir>,
    keep_files: bool,
}

impl Topology {
    /// Builds the control namespace, both nodes, the wan link and the given pods.
    ///
    /// Panics when not run as root. On error, whatever was made is removed again.
    pub fn build(pods: &[PodSpec]) -> Result<Topology> {
        netns::require_root();
        validate(pods)?;
        let prefix = netns::unique_prefix();
        let dir = tempfile::Builder::new()
            .prefix(&format!("edgeward-lab-{prefix}-"))
            .tempdir()?;
        let mut topo = Topology {
            procs: Vec::new(),
            namespaces: Vec::new(),
            ctl: format!("{prefix}-ctl"),
            nodes: (1..=NODE_COUNT).map(|k| format!("{prefix}-n{k}")).collect(),
            prefix,
            pods: Vec::new(),
            dir: Some(dir),
            keep_files: false,
        };
        topo.wire_nodes()
            .context("building the control and node namespaces")?;
        for spec in pods {
            topo.add_pod(spec)
                .with_context(|| format!("building pod {}", spec.name))?;
        }
        Ok(topo)
    }

    /// The prefix shared by this topology's namespace names.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The control plane's namespace.
    pub fn ctl_ns(&self) -> &str {
        &self.ctl
    }

    /// The namespace of node `k` (1 or 2).
    pub fn node_ns(&self, k: usize) -> &str {
        &self.nodes[k - 1]
    }

    /// Every pod, in the order given to `build`.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The pod called `name`; fails if there is none.
    pub fn pod(&self, name: &str) -> Result<&Pod> {
        match self.pods.iter().find(|p| p.name == name) {
            Some(pod) => Ok(pod),
            None => bail!("no pod called {name:?} in this topology"),
        }
    }

    /// Adds a pod to the built topology, as a pod scheduled after the mesh started would
    /// appear; checked like the pods given to `build`. Gives the new pod.
    pub fn add_late_pod(&mut self, spec: &PodSpec) -> Result<Pod> {
        let mut specs: Vec<PodSpec> = self
            .pods
            .iter()
            .map(|p| PodSpec::new(p.node, &p.name))
            .collect();
        specs.push(spec.clone());
        validate(&specs)?;
        self.add_pod(spec)
            .with_context(|| format!("building pod {}", spec.name))?;
        Ok(self.pods.last().expect("just added").clone())
    }

    /// Names of every namespace this topology made.
    pub fn namespace_names(&self) -> Vec<String> {
        self.namespaces
            .iter()
            .map(|ns| ns.name().to_owned())
            .collect()
    }

    /// The per-test temporary directory (logs, registry, state directories).
    pub fn dir(&self) -> &Path {
        // `dir` is only taken in `drop`.
        self.dir
            .as_ref()
            .expect("the directory lives until drop")
            .path()
    }

    /// A path inside the per-test directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    /// Starts a long-running process; it is stopped when the topology drops.
    pub fn spawn(&mut self, launch: &Launch) -> Result<&mut Proc> {
        if self.procs.iter().any(|p| p.name() == launch.name) {
            bail!("a process called {} is already running", launch.name);
        }
        let proc = Proc::spawn(launch, self.dir())?;
        self.procs.push(proc);
        Ok(self.procs.last_mut().expect("just pushed"))
    }

    /// The running process called `name`.
    pub fn proc(&self, name: &str) -> Result<&Proc> {
        match self.procs.iter().find(|p| p.name() == name) {
            Some(proc) => Ok(proc),
            None => bail!("no process called {name:?} is running"),
        }
    }

    /// The running process called `name`, mutably (to wait on or signal it).
    pub fn proc_mut(&mut self, name: &str) -> Result<&mut Proc> {
        match self.procs.iter_mut().find(|p| p.name() == name) {
            Some(proc) => Ok(proc),
            None => bail!("no process called {name:?} is running"),
        }
    }

    /// Stops the process called `name` (SIGTERM, then SIGKILL) and forgets it.
    pub fn stop(&mut self, name: &str) -> Result<()> {
        let index = self.procs.iter().position(|p| p.name() == name);
        let Some(index) = index else {
            bail!("no process called {name:?} is running")
        };
        let mut proc = self.procs.remove(index);
        proc.stop()?;
        Ok(())
    }

    /// Keeps the per-test directory (logs, state) after the drop, as a panic would.
    pub fn keep_files(&mut self) {
        self.keep_files = true;
    }

    /// Prints the tail of every running process's log to stderr.
    pub fn print_log_tails(&self) {
        for proc in &self.procs {
            proc.print_tail();
        }
    }

    fn create_ns(&mut self, name: &str) -> Result<()> {
        self.namespaces.push(Netns::create(name)?);
        Ok(())
    }

    fn wire_nodes(&mut self) -> Result<()> {
        let ctl = self.ctl.clone();
        self.create_ns(&ctl)?;
        for k in 1..=NODE_COUNT {
            let node = self.nodes[k - 1].clone();
            self.create_ns(&node)?;
            self.wire_control_link(k)?;
            // Nodes route between their pods and the other node.
            netns::sysctl(&node, "net.ipv4.ip_forward", "1")?;
        }
        self.wire_wan()
    }

    fn wire_control_link(&self, k: usize) -> Result<()> {
        let (ctl, node) = (&self.ctl, &self.nodes[k - 1]);
        let ctl_side = format!("n{k}");
        let ctl_addr = format!("{}/24", control_addr(k));
        let node_addr = format!("{}/24", node_control_side_addr(k));
        veth(ctl, &ctl_side, node, "ctl")?;
        address(ctl, &ctl_side, &ctl_addr)?;
        address(node, "ctl", &node_addr)
    }

    fn wire_wan(&self) -> Result<()> {
        let (n1, n2) = (&self.nodes[0], &self.nodes[1]);
        veth(n1, WAN_IFACE, n2, WAN_IFACE)?;
        address(n1, WAN_IFACE, &format!("{}/24", wan_addr(1)))?;
        address(n2, WAN_IFACE, &format!("{}/24", wan_addr(2)))?;
        netns::ip(&[
            "-n",
            n1,
            "route",
            "add",
            &pod_cidr(2),
            "via",
            &wan_addr(2).to_string(),
        ])?;
        netns::ip(&[
            "-n",
            n2,
            "route",
            "add",
            &pod_cidr(1),
            "via",
            &wan_addr(1).to_string(),
        ])
    }

    fn add_pod(&mut self, spec: &PodSpec) -> Result<()> {
        let k = spec.node;
        let index = self.pods.iter().filter(|p| p.node == k).count();
        let pod = Pod {
            node: k,
            name: spec.name.clone(),
            ns: format!("{}-n{k}-{}", self.prefix, spec.name),
            addr: Ipv4Addr::new(198, 18, k as u8, 10 + index as u8),
        };
        self.create_ns(&pod.ns)?;
        self.wire_pod(&pod)?;
        self.pods.push(pod);
        Ok(())
    }

    fn wire_pod(&self, pod: &Pod) -> Result<()> {
        let node = &self.nodes[pod.node - 1];
        let node_side = format!("pod-{}", pod.name);
        let gateway = pod_gateway(pod.node).to_string();
        let pod_addr = pod.addr.to_string();
        veth(node, &node_side, &pod.ns, "eth0")?;

        // Point-to-point: /32 on both ends, a host route on the node, an on-link default in
        // the pod. Every packet of the pod goes through the node namespace.
        address(node, &node_side, &format!("{gateway}/32"))?;
        netns::ip(&[
            "-n",
            node,
            "route",
            "add",
            &format!("{pod_addr}/32"),
            "dev",
            &node_side,
        ])?;
        address(&pod.ns, "eth0", &format!("{pod_addr}/32"))?;
        let default = [
            "route", "add", "default", "via", &gateway, "dev", "eth0", "onlink",
        ];
        netns::ip(&[&["-n", pod.ns.as_str()][..], &default[..]].concat())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Processes first (a failing test prints their log tails here), then the namespaces.
        self.procs.clear();
        self.namespaces.clear();
        if self.keep_files || std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                eprintln!(
                    "edgeward-lab: kept the files of this run in {}",
                    dir.keep().display()
                );
            }
        }
    }
}

/// Creates a veth pair with one end in each namespace, both ends up.
fn veth(ns_a: &str, name_a: &str, ns_b: &str, name_b: &str) -> Result<()> {
    // Made directly inside the namespaces, so the short names never meet in the root
    // namespace and parallel tests cannot collide on them.
    let args = [
        "-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b,
    ];
    netns::ip(&[&args[..], &["netns", ns_b]].concat())?;
    netns::ip(&["-n", ns_a, "link", "set", name_a, "up"])?;
    netns::ip(&["-n", ns_b, "link", "set", name_b, "up"])
}

fn address(ns: &str, iface: &str, cidr: &str) -> Result<()> {
    netns::ip(&["-n", ns, "addr", "add", cidr, "dev", iface])
}

fn validate(pods: &[PodSpec]) -> Result<()> {
    for (i, pod) in pods.iter().enumerate() {
        if !(1..=NODE_COUNT).contains(&pod.node) {
            bail!(
                "pod {}: node must be 1..={NODE_COUNT}, not {}",
                pod.name,
                pod.node
            );
        }
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
        if pod.name.is_empty() || pod.name.len() > MAX_POD_NAME || !pod.name.chars().all(allowed) {
            bail!(
                "pod name {:?}: use 1..={MAX_POD_NAME} of [a-z0-9-]",
                pod.name
            );
        }
        if pods[..i].iter().any(|p| p.name == pod.name) {
            bail!("pod name {:?} is used twice", pod.name);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_pod_specs() {
        assert!(validate(&[PodSpec::new(3, "a")]).is_err());
        assert!(validate(&[PodSpec::new(1, "much-too-long-name")]).is_err());
        assert!(validate(&[PodSpec::new(1, "Upper")]).is_err());
        assert!(validate(&[PodSpec::new(1, "a"), PodSpec::new(2, "a")]).is_err());
        assert!(validate(&[PodSpec::new(1, "client"), PodSpec::new(2, "greeter")]).is_ok());
    }

    #[test]
    fn addresses_follow_the_spec() {
        assert_eq!(control_addr(2).to_string(), "198.19.2.1");
        assert_eq!(wan_addr(1).to_string(), "198.18.0.1");
        assert_eq!(pod_gateway(2).to_string(), "198.18.2.1");
        assert_eq!(pod_cidr(1), "198.18.1.0/24");
        assert_eq!(node_name(2), "node-2");
    }
}
