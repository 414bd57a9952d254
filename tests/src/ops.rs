//! What an operator, or a crash, does to a running mesh: policy documents applied with
//! `edgewardctl policy apply`, workloads added and removed through the admin API, processes
//! killed with SIGKILL, state files damaged; and what tests read back: the policies and
//! workloads the control plane holds, audit lines, open Subscribe streams.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::Signal;
use serde::Deserialize;

use crate::mesh::{self, Mesh};
use crate::metrics::{Counter, Source};
use crate::netns;
use crate::paths;
use crate::procs::{Launch, STOP_GRACE};
use crate::topology::{self, Topology};
use crate::wait;

/// The node whose namespace `edgewardctl` runs in (node 1), as an operator on a node would.
pub const CTL_NODE: usize = 1;

/// How long one `edgewardctl` command may take (30 s).
const CTL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a greeter server may take to import grpcio and listen (30 s).
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(30);

/// One `edgewardctl` run: its output, and the moments just before it was started and just
/// after it exited.
#[derive(Debug)]
pub struct CtlRun {
    /// Exit status, stdout and stderr.
    pub output: Output,
    /// Just before the process was started.
    pub called: Instant,
    /// Just after it exited.
    pub returned: Instant,
}

impl CtlRun {
    /// Whether the command succeeded.
    pub fn ok(&self) -> bool {
        self.output.status.success()
    }

    /// Standard output as text.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    /// Standard error as text.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// The version a successful command reports ("... (version N)").
    pub fn version(&self) -> Result<u64> {
        let stdout = self.stdout();
        let version = stdout
            .rsplit_once("(version ")
            .and_then(|(_, rest)| rest.split(')').next())
            .and_then(|v| v.parse().ok());
        version.with_context(|| format!("no version in edgewardctl's output {stdout:?}"))
    }

    /// Fails with the command's stderr unless it succeeded.
    pub fn require_ok(self, what: &str) -> Result<CtlRun> {
        ensure!(
            self.ok(),
            "edgewardctl {what} failed ({}): {}",
            self.output.status,
            self.stderr().trim()
        );
        Ok(self)
    }
}

/// Runs `edgewardctl <args>` in node 1's namespace, timing it.
pub fn ctl(mesh: &Mesh, args: &[&str]) -> Result<CtlRun> {
    Ctl::of(mesh).run(args)
}

/// `edgewardctl` aimed at a mesh's control plane, detached from the `Mesh`: a thread can keep
/// running commands while the test kills and restarts the mesh's processes.
#[derive(Clone, Debug)]
pub struct Ctl {
    ns: String,
    program: PathBuf,
    global: Vec<String>,
}

impl Ctl {
    /// Runs from node 1's namespace with the mesh's admin credential.
    pub fn of(mesh: &Mesh) -> Ctl {
        let admin = mesh.control_data_dir().join("admin");
        Ctl {
            ns: mesh.topology().node_ns(CTL_NODE).to_owned(),
            program: mesh.binaries().ctl.clone(),
            global: vec![
                "--control".to_owned(),
                mesh::control_endpoint(CTL_NODE),
                "--admin-dir".to_owned(),
                admin.to_string_lossy().into_owned(),
            ],
        }
    }

    /// Runs `edgewardctl <args>` to completion (bounded), whatever its exit status.
    pub fn run(&self, args: &[&str]) -> Result<CtlRun> {
        let mut all = self.global.clone();
        all.extend(args.iter().map(|a| a.to_string()));
        let called = Instant::now();
        let output = netns::exec(&self.ns, &self.program, &all, CTL_TIMEOUT)?;
        Ok(CtlRun {
            output,
            called,
            returned: Instant::now(),
        })
    }
}

/// Writes `yaml` to a new file in the test directory and runs `edgewardctl policy apply -f`
/// on it, whatever the outcome; gives the run and the file's path.
pub fn try_apply_policy(mesh: &Mesh, yaml: &str) -> Result<(CtlRun, String)> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = mesh.topology().path(&format!("policy-{n}.yaml"));
    std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
    let shown = path.to_string_lossy().into_owned();
    Ok((ctl(mesh, &["policy", "apply", "-f", &shown])?, shown))
}

/// Applies a policy document and requires success.
pub fn apply_policy(mesh: &Mesh, yaml: &str) -> Result<CtlRun> {
    let (run, file) = try_apply_policy(mesh, yaml)?;
    run.require_ok(&format!("policy apply -f {file}"))
}

/// Deletes policy `name` and requires success.
pub fn delete_policy(mesh: &Mesh, name: &str) -> Result<CtlRun> {
    ctl(mesh, &["policy", "delete", name])?.require_ok(&format!("policy delete {name}"))
}

/// A workload to add through the admin API (`edgewardctl workload add`).
#[derive(Clone, Debug)]
pub struct ApiWorkload {
    /// Name, unique in its namespace.
    pub name: String,
    /// Workload namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// Node number (1 or 2).
    pub node: usize,
    /// Pod address.
    pub address: Ipv4Addr,
}

impl ApiWorkload {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Its SPIFFE ID in `trust_domain`.
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        let ns = &self.namespace;
        format!(
            "spiffe://{trust_domain}/ns/{ns}/sa/{}",
            self.service_account
        )
    }
}

impl ApiWorkload {
    /// The arguments of `edgewardctl workload add` for it.
    pub fn add_args(&self) -> Vec<String> {
        let args = [
            "workload",
            "add",
            "--name",
            &self.name,
            "--namespace",
            &self.namespace,
            "--service-account",
            &self.service_account,
            "--node",
            &topology::node_name(self.node),
            "--address",
            &self.address.to_string(),
        ];
        args.iter().map(|a| a.to_string()).collect()
    }
}

/// Runs `edgewardctl workload add` for `w`, whatever the outcome.
pub fn try_add_workload(mesh: &Mesh, w: &ApiWorkload) -> Result<CtlRun> {
    let args = w.add_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ctl(mesh, &args)
}

/// Adds `w` through the admin API and requires success.
pub fn add_workload(mesh: &Mesh, w: &ApiWorkload) -> Result<CtlRun> {
    try_add_workload(mesh, w)?.require_ok(&format!("workload add {}", w.key()))
}

/// `policy list -o json`, as far as the tests read it.
#[derive(Debug, Deserialize)]
struct PolicyList {
    version: u64,
    #[serde(default)]
    policies: Vec<Named>,
    #[serde(default)]
    namespaces: Vec<Named>,
}

/// `workload list -o json`, as far as the tests read it.
#[derive(Debug, Deserialize)]
struct WorkloadList {
    version: u64,
    workloads: Vec<ListedWorkload>,
}

#[derive(Debug, Deserialize)]
struct Named {
    name: String,
}

#[derive(Debug, Deserialize)]
struct ListedWorkload {
    name: String,
    namespace: String,
    source: String,
}

/// What the control plane holds, as `edgewardctl ... list -o json` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Version of the policy list.
    pub version: u64,
    /// Policy names.
    pub policies: BTreeSet<String>,
    /// Namespaces with a default action.
    pub namespaces: BTreeSet<String>,
    /// API workloads, `namespace/name`.
    pub api_workloads: BTreeSet<String>,
}

/// Reads the policies, namespace defaults and API workloads the control plane holds.
pub fn held(mesh: &Mesh) -> Result<Held> {
    let policies = ctl(mesh, &["policy", "list", "-o", "json"])?.require_ok("policy list")?;
    let policies: PolicyList = serde_json::from_str(&policies.stdout())
        .with_context(|| format!("policy list output {:?}", policies.stdout()))?;
    let workloads = ctl(mesh, &["workload", "list", "-o", "json"])?.require_ok("workload list")?;
    let workloads: WorkloadList = serde_json::from_str(&workloads.stdout())
        .with_context(|| format!("workload list output {:?}", workloads.stdout()))?;
    let api = workloads.workloads.iter().filter(|w| w.source == "api");
    Ok(Held {
        version: policies.version.max(workloads.version),
        policies: policies.policies.into_iter().map(|p| p.name).collect(),
        namespaces: policies.namespaces.into_iter().map(|n| n.name).collect(),
        api_workloads: api.map(|w| format!("{}/{}", w.namespace, w.name)).collect(),
    })
}

/// Kills the process `name` of the mesh with SIGKILL, waits for it to be gone, and forgets it
/// (so it can be started again under the same name).
pub fn kill9(mesh: &mut Mesh, name: &str) -> Result<()> {
    let topo = mesh.topology_mut();
    let proc = topo.proc_mut(name)?;
    let status = proc.signal_and_wait(Signal::SIGKILL, STOP_GRACE)?;
    ensure!(
        status.code().is_none(),
        "{name} had already exited ({status}) when it was to be killed"
    );
    // It is gone, so this only drops the guard.
    topo.stop(name)
}

/// Kills the control plane with SIGKILL.
pub fn kill9_control(mesh: &mut Mesh) -> Result<()> {
    kill9(mesh, mesh::CONTROL_NAME)
}

/// Kills node `k`'s proxy with SIGKILL.
pub fn kill9_proxy(mesh: &mut Mesh, k: usize) -> Result<()> {
    kill9(mesh, &mesh::proxy_name(k))
}

/// Starts node `k`'s proxy from its state directory and waits until it is ready, within
/// `timeout`; gives how long that took.
pub fn start_proxy_within(mesh: &mut Mesh, k: usize, timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    mesh.spawn_proxy(k)?;
    mesh.wait_proxy_ready(k, timeout)?;
    Ok(started.elapsed())
}

/// Replaces the contents of `path` with `bytes` in place, as a disk fault or a torn write by
/// some other program would leave it.
pub fn damage_file(path: &Path, bytes: &[u8]) -> Result<()> {
    ensure!(path.is_file(), "{} does not exist", path.display());
    std::fs::write(path, bytes).with_context(|| format!("overwriting {}", path.display()))
}

/// The audit-log lines (target `audit`) in node `k`'s proxy log since its last start.
pub fn audit_lines(mesh: &Mesh, k: usize) -> Result<Vec<String>> {
    let log = mesh.proxy_log(k)?;
    Ok(log
        .lines()
        .filter(|l| l.contains(" audit: ") || l.contains("\"target\":\"audit\""))
        .map(str::to_owned)
        .collect())
}

/// How many audit lines of node `k` name `rule` (as `rule=<rule> `) and hold `needle`.
pub fn count_audit(mesh: &Mesh, k: usize, rule: &str, needle: &str) -> Result<usize> {
    let tag = format!("rule={rule} ");
    let lines = audit_lines(mesh, k)?;
    Ok(lines
        .iter()
        .filter(|l| l.contains(&tag) && l.contains(needle))
        .count())
}

/// The proxy counter of policy decisions `decision` (allow or deny) by `rule` on node `k`.
pub fn decisions(k: usize, decision: &str, rule: &str) -> Counter {
    Counter::new(
        Source::Proxy(k),
        "edgeward_policy_decisions_total",
        &[("decision", decision), ("rule", rule)],
    )
}

/// Waits until the control plane has `count` Subscribe streams open.
pub fn wait_subscribers(mesh: &Mesh, count: f64, timeout: Duration) -> Result<()> {
    let gauge = Counter::new(Source::Control, "edgeward_control_subscribers", &[]);
    let what = format!("{count} Subscribe streams at the control plane");
    wait::until(&what, timeout, || {
        let now = gauge.read(mesh)?;
        Ok((now == count).then_some(()))
    })
}

/// Waits until node `k`'s proxy holds mesh state `version` or later.
pub fn wait_proxy_version(mesh: &Mesh, k: usize, version: u64, timeout: Duration) -> Result<()> {
    let gauge = Counter::new(Source::Proxy(k), "edgeward_snapshot_version", &[]);
    gauge.wait_at_least(mesh, version as f64, timeout)?;
    Ok(())
}

/// Starts a greeter server in `pod` on `port`, as a process of its own name (so one pod can
/// serve on several ports), and waits until it listens. It answers with the pod's name.
pub fn start_greeter(topo: &mut Topology, pod: &str, port: u16) -> Result<()> {
    let python = paths::python()?;
    let pod = topo.pod(pod)?.clone();
    let launch = Launch::new(&pod.ns, &format!("greeter-{}-{port}", pod.name), python)
        .arg("-u")
        .arg(paths::apps_dir().join("greeter_server.py"))
        .args(["--bind", &pod.addr.to_string(), "--port", &port.to_string()])
        .args(["--name", &pod.name]);
    topo.spawn(&launch)?
        .wait_for_log("greeter listening", SERVER_START_TIMEOUT)
}

/// Fails unless the log text holds none of `needles`, naming the first it holds and its line.
pub fn refute_log(what: &str, log: &str, needles: &[&str]) -> Result<()> {
    for needle in needles {
        if let Some(line) = log.lines().find(|l| l.contains(needle)) {
            bail!("{what} logged {needle:?}: {line}");
        }
    }
    Ok(())
}
