//! A running mesh on the test network: edgeward-control in the control namespace and one
//! edgeward-proxy per node namespace, joined with single-use tokens and ready for traffic.
//!
//! Everything runs from the real binaries in the workspace target directory; the mesh is torn
//! down (processes, then namespaces) when the `Mesh` drops, also when a test panics.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::http;
use crate::netns;
use crate::paths::Binaries;
use crate::procs::{Launch, Proc};
use crate::topology::{self, Pod, PodSpec, Topology, NODE_COUNT};
use crate::wait;

/// Control plane gRPC port (15012).
pub const CONTROL_PORT: u16 = 15012;
/// Control plane metrics port, on the control namespace's loopback (15014).
pub const CONTROL_METRICS_PORT: u16 = 15014;
/// Proxy metrics port, on the node namespace's loopback (15020).
pub const METRICS_PORT: u16 = 15020;
/// Proxy readiness port (15021).
pub const READY_PORT: u16 = 15021;

/// The line edgeward-control logs once it listens.
pub const CONTROL_READY_LINE: &str = "control plane ready";

/// How long the control plane may take to create its CA and listen (30 s).
pub const CONTROL_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a proxy may take to join, get its SVIDs and report ready (60 s).
pub const PROXY_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `edgewardctl` may take for one command (30 s).
const CTL_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for one HTTP request to a proxy's admin ports (2 s).
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// What a proxy does with traffic to a destination outside the mesh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutboundMode {
    /// Pass it through as plain TCP (the default).
    #[default]
    Permissive,
    /// Refuse it.
    Strict,
}

impl OutboundMode {
    /// The flag value: "permissive" or "strict".
    pub fn as_str(self) -> &'static str {
        match self {
            OutboundMode::Permissive => "permissive",
            OutboundMode::Strict => "strict",
        }
    }
}

/// Tunnel transport between the node proxies (`--tunnel-transport`, issue #3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// QUIC, falling back to the TCP tunnel while UDP is blocked (the proxy's default).
    Auto,
    /// QUIC only (udp/15008).
    Quic,
    /// The TCP tunnel only (HTTP/2 CONNECT over TLS on tcp/15008).
    Tcp,
}

impl Transport {
    /// The flag value, which is also the `transport` label and access-log field: "auto",
    /// "quic" or "tcp".
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Auto => "auto",
            Transport::Quic => "quic",
            Transport::Tcp => "tcp",
        }
    }
}

/// A workload identity in the registry: Kubernetes-style namespace and service account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Workload namespace (not a network namespace).
    pub namespace: String,
    /// Service account.
    pub service_account: String,
}

impl Workload {
    /// The workload `namespace`/`service_account`.
    pub fn new(namespace: &str, service_account: &str) -> Workload {
        Workload {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        }
    }

    /// The SPIFFE ID `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

/// A pod of the mesh, and its registry entry if it has one.
#[derive(Clone, Debug)]
pub struct MeshPod {
    /// Where the pod runs and what it is called.
    pub spec: PodSpec,
    /// Its workload in the registry; `None` keeps it out of the mesh (pass-through tests).
    pub workload: Option<Workload>,
}

/// How to build a mesh; start from `MeshOptions::new()`.
#[derive(Clone, Debug)]
pub struct MeshOptions {
    /// Trust domain of every SPIFFE ID (default "edgeward.local").
    pub trust_domain: String,
    /// Outbound mode of both proxies (default permissive).
    pub outbound_mode: OutboundMode,
    /// The pods, in address order per node.
    pub pods: Vec<MeshPod>,
    /// `--tunnel-transport` of both proxies; `None` (the default) passes no flag.
    pub transport: Option<Transport>,
    /// Extra arguments for one node's proxy: (node, flag, value), in the order given.
    pub proxy_args: Vec<(usize, String, String)>,
    /// Extra arguments for the control plane: (flag, value), in the order given.
    pub control_args: Vec<(String, String)>,
}

impl Default for MeshOptions {
    fn default() -> MeshOptions {
        MeshOptions {
            trust_domain: "edgeward.local".to_owned(),
            outbound_mode: OutboundMode::Permissive,
            pods: Vec::new(),
            transport: None,
            proxy_args: Vec::new(),
            control_args: Vec::new(),
        }
    }
}

impl MeshOptions {
    /// Trust domain edgeward.local, permissive, no pods.
    pub fn new() -> MeshOptions {
        MeshOptions::default()
    }

    /// Sets the trust domain.
    pub fn trust_domain(mut self, trust_domain: &str) -> MeshOptions {
        self.trust_domain = trust_domain.to_owned();
        self
    }

    /// Sets the outbound mode.
    pub fn outbound_mode(mut self, mode: OutboundMode) -> MeshOptions {
        self.outbound_mode = mode;
        self
    }

    /// Passes `--tunnel-transport <transport>` to both proxies.
    pub fn transport(mut self, transport: Transport) -> MeshOptions {
        self.transport = Some(transport);
        self
    }

    /// Asks for the TCP tunnel: `--tunnel-transport tcp`.
    pub fn tcp_tunnel(self) -> MeshOptions {
        self.transport(Transport::Tcp)
    }

    /// Passes `flag value` to node `node`'s proxy only, after the lab's own arguments (for
    /// example `proxy_arg(1, "--quic-idle-timeout", "10s")`).
    pub fn proxy_arg(mut self, node: usize, flag: &str, value: &str) -> MeshOptions {
        self.proxy_args
            .push((node, flag.to_owned(), value.to_owned()));
        self
    }

    /// Passes `flag value` to the control plane, after the lab's own arguments (for example
    /// `control_arg("--svid-ttl", "60s")`).
    pub fn control_arg(mut self, flag: &str, value: &str) -> MeshOptions {
        self.control_args.push((flag.to_owned(), value.to_owned()));
        self
    }

    /// Adds a pod on `node` registered as workload `namespace`/`service_account`.
    pub fn meshed_pod(self, node: usize, name: &str, namespace: &str, sa: &str) -> MeshOptions {
        self.pod(node, name, Some(Workload::new(namespace, sa)))
    }

    /// Adds a pod on `node` that is not in the registry.
    pub fn plain_pod(self, node: usize, name: &str) -> MeshOptions {
        self.pod(node, name, None)
    }

    fn pod(mut self, node: usize, name: &str, workload: Option<Workload>) -> MeshOptions {
        self.pods.push(MeshPod {
            spec: PodSpec::new(node, name),
            workload,
        });
        self
    }
}

/// Name of node `k`'s proxy process (and log file stem).
pub fn proxy_name(k: usize) -> String {
    format!("proxy-node-{k}")
}

/// Name of the control plane process (and log file stem).
pub const CONTROL_NAME: &str = "control";

/// A running mesh; dropping it stops every process and deletes every namespace.
pub struct Mesh {
    topo: Topology,
    options: MeshOptions,
    bins: Binaries,
    joined: [bool; NODE_COUNT],
}

impl Mesh {
    /// Builds the network, starts the control plane, joins both proxies and waits until both
    /// report ready. Panics when not root; fails if a binary is missing or anything does not
    /// come up in time, with the logs that say why.
    pub fn start(options: MeshOptions) -> Result<Mesh> {
        let bins = Binaries::locate()?;
        if let Some(arg) = options
            .proxy_args
            .iter()
            .find(|a| !(1..=NODE_COUNT).contains(&a.0))
        {
            bail!(
                "proxy argument {} for node {}: there are nodes 1..={NODE_COUNT}",
                arg.1,
                arg.0
            );
        }
        let specs: Vec<PodSpec> = options.pods.iter().map(|p| p.spec.clone()).collect();
        let topo = Topology::build(&specs)?;
        let mut mesh = Mesh {
            topo,
            options,
            bins,
            joined: [false; NODE_COUNT],
        };
        if let Err(error) = mesh.boot() {
            eprintln!("edgeward-lab: the mesh did not come up: {error:#}");
            mesh.topo.print_log_tails();
            mesh.topo.keep_files();
            return Err(error);
        }
        Ok(mesh)
    }

    fn boot(&mut self) -> Result<()> {
        self.write_registry()?;
        self.start_control()?;
        // Both proxies start together and are waited on together: start-up is the slow part.
        for k in 1..=NODE_COUNT {
            self.spawn_proxy(k)?;
        }
        for k in 1..=NODE_COUNT {
            self.wait_proxy_ready(k, PROXY_READY_TIMEOUT)?;
        }
        Ok(())
    }

    /// The test network under the mesh.
    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    /// The test network, mutably (to start more processes in it).
    pub fn topology_mut(&mut self) -> &mut Topology {
        &mut self.topo
    }

    /// The options the mesh was built with (workloads as last written to the registry).
    pub fn options(&self) -> &MeshOptions {
        &self.options
    }

    /// The pod called `name`.
    pub fn pod(&self, name: &str) -> Result<&Pod> {
        self.topo.pod(name)
    }

    /// The address of pod `name` with `port`.
    pub fn pod_addr(&self, name: &str, port: u16) -> Result<SocketAddrV4> {
        Ok(SocketAddrV4::new(self.pod(name)?.addr, port))
    }

    /// The SPIFFE ID of pod `name`; fails if the pod is not in the registry.
    pub fn spiffe_id(&self, name: &str) -> Result<String> {
        let pod = self.options.pods.iter().find(|p| p.spec.name == name);
        match pod.and_then(|p| p.workload.as_ref()) {
            Some(workload) => Ok(workload.spiffe_id(&self.options.trust_domain)),
            None => bail!("pod {name:?} has no workload in the registry"),
        }
    }

    /// The SPIFFE ID of node `k`'s proxy.
    pub fn node_spiffe_id(&self, k: usize) -> String {
        format!(
            "spiffe://{}/node/{}",
            self.options.trust_domain,
            topology::node_name(k)
        )
    }

    /// The control plane's data directory (CA, trust bundle, admin credential, state).
    pub fn control_data_dir(&self) -> PathBuf {
        self.topo.path("control")
    }

    /// The registry file edgeward-control watches.
    pub fn registry_path(&self) -> PathBuf {
        self.topo.path("registry.yaml")
    }

    /// The state directory of node `k`'s proxy.
    pub fn proxy_state_dir(&self, k: usize) -> PathBuf {
        self.topo.path(&format!("node-{k}/state"))
    }

    /// The registry YAML for the current workloads.
    pub fn registry_yaml(&self) -> Result<String> {
        let mut yaml = String::from("workloads:\n");
        for pod in &self.options.pods {
            let Some(workload) = &pod.workload else {
                continue;
            };
            let addr = self.pod(&pod.spec.name)?.addr;
            yaml.push_str(&registry_entry(&pod.spec, workload, addr));
        }
        if yaml.ends_with(":\n") {
            yaml = String::from("workloads: []\n");
        }
        Ok(yaml)
    }

    /// Puts pod `name` in the registry as `workload`, or takes it out with `None`, and
    /// rewrites the registry file (the control plane picks it up within about 500 ms).
    pub fn set_workload(&mut self, name: &str, workload: Option<Workload>) -> Result<()> {
        let Some(pod) = self.options.pods.iter_mut().find(|p| p.spec.name == name) else {
            bail!("no pod called {name:?} in this mesh");
        };
        pod.workload = workload;
        self.write_registry()
    }

    /// Rewrites the registry file from the current workloads.
    pub fn write_registry(&self) -> Result<()> {
        self.write_registry_text(&self.registry_yaml()?)
    }

    /// Replaces the registry file with `text` in one step (for malformed-file tests too).
    pub fn write_registry_text(&self, text: &str) -> Result<()> {
        // Written aside and renamed, so the polling control plane never reads half a file.
        let path = self.registry_path();
        let staging = path.with_extension("yaml.tmp");
        std::fs::write(&staging, text)?;
        std::fs::rename(&staging, &path).with_context(|| format!("writing {}", path.display()))
    }

    /// Starts edgeward-control and waits until it logs that it is ready.
    pub fn start_control(&mut self) -> Result<()> {
        let launch = Launch::new(self.topo.ctl_ns(), CONTROL_NAME, &self.bins.control)
            .arg("--data-dir")
            .arg(self.control_data_dir())
            .args(["--trust-domain", &self.options.trust_domain])
            .arg("--registry")
            .arg(self.registry_path())
            .args(["--listen", &format!("0.0.0.0:{CONTROL_PORT}")])
            .args([
                "--metrics-addr",
                &format!("127.0.0.1:{CONTROL_METRICS_PORT}"),
            ]);
        let extra = self.options.control_args.iter();
        let launch = extra.fold(launch, |l, (flag, value)| l.arg(flag).arg(value));
        let proc = self.topo.spawn(&launch)?;
        proc.wait_for_log(CONTROL_READY_LINE, CONTROL_READY_TIMEOUT)
    }

    /// Stops edgeward-control (the proxies keep running on their caches).
    pub fn stop_control(&mut self) -> Result<()> {
        self.topo.stop(CONTROL_NAME)
    }

    /// The control plane's log since its last start.
    pub fn control_log(&self) -> Result<String> {
        Ok(self.topo.proc(CONTROL_NAME)?.log_text())
    }

    /// The edgeward binaries the mesh runs.
    pub fn binaries(&self) -> &Binaries {
        &self.bins
    }

    /// Runs `edgewardctl <args>` with the admin credential inside node `k`'s namespace, to
    /// completion (bounded); gives its output whatever its exit status.
    pub fn ctl(&self, k: usize, args: &[&str]) -> Result<Output> {
        let admin_dir = self.control_data_dir().join("admin");
        let mut all = vec![
            "--control".to_owned(),
            control_endpoint(k),
            "--admin-dir".to_owned(),
            admin_dir.to_string_lossy().into_owned(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        netns::exec(self.topo.node_ns(k), &self.bins.ctl, &all, CTL_TIMEOUT)
    }

    /// Creates a join token for node `k` with edgewardctl, run inside the node's namespace.
    pub fn create_token(&self, k: usize) -> Result<String> {
        let node = topology::node_name(k);
        let output = self.ctl(k, &["token", "create", "--node", &node])?;
        let token = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if !output.status.success() || token.is_empty() || token.contains(char::is_whitespace) {
            let stderr = String::from_utf8_lossy(&output.stderr);
            bail!(
                "edgewardctl token create for node-{k} failed ({}): {stderr}",
                output.status
            );
        }
        Ok(token)
    }

    /// Starts node `k`'s proxy and waits until it is ready.
    pub fn start_proxy(&mut self, k: usize) -> Result<()> {
        self.spawn_proxy(k)?;
        self.wait_proxy_ready(k, PROXY_READY_TIMEOUT)
    }

    /// Stops node `k`'s proxy (SIGTERM, then SIGKILL).
    pub fn stop_proxy(&mut self, k: usize) -> Result<()> {
        self.topo.stop(&proxy_name(k))
    }

    /// Stops and starts node `k`'s proxy, from its state directory, and waits until ready.
    pub fn restart_proxy(&mut self, k: usize) -> Result<()> {
        self.stop_proxy(k)?;
        self.start_proxy(k)
    }

    /// Starts node `k`'s proxy without waiting; the first start joins with a fresh token.
    pub fn spawn_proxy(&mut self, k: usize) -> Result<()> {
        let state_dir = self.proxy_state_dir(k);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&state_dir)?;
        let mut launch = self.proxy_launch(k, &state_dir);
        // The token is single-use: later starts must work from the node credential on disk.
        if !self.joined[k - 1] {
            let token_file = self.write_token_file(k)?;
            launch = launch.arg("--join-token-file").arg(token_file);
        }
        self.topo.spawn(&launch)?;
        self.joined[k - 1] = true;
        Ok(())
    }

    fn proxy_launch(&self, k: usize, state_dir: &Path) -> Launch {
        let node_name = topology::node_name(k);
        let mut launch = Launch::new(self.topo.node_ns(k), &proxy_name(k), &self.bins.proxy)
            .args(["--node-name", &node_name, "--control", &control_endpoint(k)])
            .args(["--trust-domain", &self.options.trust_domain])
            .arg("--bootstrap-bundle")
            .arg(self.control_data_dir().join("bundle.pem"))
            .arg("--state-dir")
            .arg(state_dir)
            .args(["--advertise", &topology::wan_addr(k).to_string()])
            .args(["--capture-cidr", &topology::pod_cidr(k)])
            .args(["--outbound-mode", self.options.outbound_mode.as_str()]);
        // Only what a test asked for: a proxy without issue #3 refuses flags it does not know.
        if let Some(transport) = self.options.transport {
            launch = launch.args(["--tunnel-transport", transport.as_str()]);
        }
        for (_, flag, value) in self.options.proxy_args.iter().filter(|a| a.0 == k) {
            launch = launch.arg(flag).arg(value);
        }
        launch
    }

    fn write_token_file(&self, k: usize) -> Result<PathBuf> {
        let token = self.create_token(k)?;
        let path = self.topo.path(&format!("node-{k}/join-token"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        std::io::Write::write_all(&mut file, token.as_bytes())?;
        Ok(path)
    }

    /// Waits until node `k`'s proxy answers 200 on /healthz/ready; fails at once if it exits.
    pub fn wait_proxy_ready(&mut self, k: usize, timeout: Duration) -> Result<()> {
        let ns = self.topo.node_ns(k).to_owned();
        let ready = SocketAddr::from((Ipv4Addr::LOCALHOST, READY_PORT));
        let proc = self.topo.proc_mut(&proxy_name(k))?;
        let what = format!("node-{k}'s proxy to report ready on {ready}");
        let result = wait::until(&what, timeout, || {
            if let Some(status) = proc.exit_status()? {
                bail!("edgeward-proxy on node-{k} exited ({status}) before it was ready");
            }
            let response = http::get(&ns, ready, "/healthz/ready", HTTP_TIMEOUT);
            Ok(response.ok().filter(|r| r.status == 200).map(|_| ()))
        });
        result.map_err(|e| proc.with_tail(e))
    }

    /// The proxy process of node `k`.
    pub fn proxy(&self, k: usize) -> Result<&Proc> {
        self.topo.proc(&proxy_name(k))
    }

    /// Node `k`'s proxy log since its last start.
    pub fn proxy_log(&self, k: usize) -> Result<String> {
        Ok(self.proxy(k)?.log_text())
    }

    /// The access-log lines (target `access`) of node `k`'s proxy since its last start.
    pub fn access_log(&self, k: usize) -> Result<Vec<String>> {
        let log = self.proxy_log(k)?;
        Ok(log
            .lines()
            .filter(|l| is_access_line(l))
            .map(str::to_owned)
            .collect())
    }

    /// Waits until node `k`'s access log has a line holding every one of `needles`.
    pub fn wait_access_line(
        &self,
        k: usize,
        needles: &[&str],
        timeout: Duration,
    ) -> Result<String> {
        let what = format!("an access-log line on node-{k} with {needles:?}");
        let found = wait::until(&what, timeout, || {
            let lines = self.access_log(k)?;
            Ok(lines
                .into_iter()
                .find(|l| needles.iter().all(|n| l.contains(n))))
        });
        found.map_err(|e| {
            let lines = self.access_log(k).unwrap_or_default().join("\n");
            anyhow::anyhow!("{e:#}\n----- access log of node-{k} -----\n{lines}")
        })
    }

    /// The Prometheus text of node `k`'s proxy (GET /metrics on 127.0.0.1:15020).
    pub fn metrics(&self, k: usize) -> Result<String> {
        get_metrics(self.topo.node_ns(k), METRICS_PORT)
    }

    /// The Prometheus text of the control plane (GET /metrics on 127.0.0.1:15014 in the
    /// control namespace).
    pub fn control_metrics(&self) -> Result<String> {
        get_metrics(self.topo.ctl_ns(), CONTROL_METRICS_PORT)
    }

    /// The status node `k`'s proxy answers on /healthz/ready right now (200 when ready).
    pub fn ready_status(&self, k: usize) -> Result<u16> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, READY_PORT));
        let response = http::get(self.topo.node_ns(k), addr, "/healthz/ready", HTTP_TIMEOUT)?;
        Ok(response.status)
    }

    /// Prints the tail of every process log to stderr (for the demo's failure path).
    pub fn print_logs(&self) {
        self.topo.print_log_tails();
    }
}

/// The control plane address node `k` uses: the control namespace's side of their link.
pub fn control_endpoint(k: usize) -> String {
    format!("{}:{CONTROL_PORT}", topology::control_addr(k))
}

/// GETs /metrics from `port` on the loopback of namespace `ns`; anything but 200 is an error.
fn get_metrics(ns: &str, port: u16) -> Result<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let response = http::get(ns, addr, "/metrics", HTTP_TIMEOUT)?;
    if response.status != 200 {
        bail!(
            "GET /metrics on {addr} in netns {ns} answered {}: {}",
            response.status,
            response.body
        );
    }
    Ok(response.body)
}

/// Whether a log line is an access-log line (tracing target `access`).
pub fn is_access_line(line: &str) -> bool {
    line.contains(" access: ") || line.contains("\"target\":\"access\"")
}

fn registry_entry(spec: &PodSpec, workload: &Workload, addr: Ipv4Addr) -> String {
    // Debug formatting of these simple names gives valid double-quoted YAML scalars.
    format!(
        "  - name: {:?}\n    namespace: {:?}\n    service_account: {:?}\n    node: {:?}\n    \
         addresses: [\"{addr}\"]\n",
        spec.name,
        workload.namespace,
        workload.service_account,
        topology::node_name(spec.node),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_entries_follow_the_spec() {
        let spec = PodSpec::new(2, "greeter");
        let entry = registry_entry(
            &spec,
            &Workload::new("demo", "greeter"),
            [198, 18, 2, 10].into(),
        );
        let expected = "  - name: \"greeter\"\n    namespace: \"demo\"\n    service_account: \
                        \"greeter\"\n    node: \"node-2\"\n    addresses: [\"198.18.2.10\"]\n";
        assert_eq!(entry, expected);
    }

    #[test]
    fn spiffe_ids_and_access_lines() {
        let id = Workload::new("demo", "client").spiffe_id("edgeward.local");
        assert_eq!(id, "spiffe://edgeward.local/ns/demo/sa/client");
        assert!(is_access_line(
            "2026-12-03T10:00:00Z  INFO access: connection complete"
        ));
        assert!(!is_access_line(
            "2026-12-03T10:00:00Z  INFO edgeward_proxy: ready"
        ));
        assert_eq!(control_endpoint(2), "198.19.2.1:15012");
    }
}
