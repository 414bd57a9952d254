//! Named network namespaces: create and delete them, run commands in them with
//! `ip netns exec`, and run Rust code in them on a thread that has joined the namespace.
//!
//! A socket belongs to the namespace of the thread that created it, and keeps working from
//! any thread afterwards: that is how tests hold a listener in one pod and a client in another.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sched::{setns, CloneFlags};

use crate::procs;

/// Where `ip netns add` mounts named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Deadline for one `ip` or other set-up command (10 s; they take milliseconds).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Panics unless the process runs as root: namespaces, veth and iptables need it.
///
/// A privileged test that cannot run must fail loudly, never pass or skip quietly.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "the edgeward end-to-end tests need root (they create network namespaces, veth \
             links and iptables rules): run them as root, e.g. `sudo bash tests/run.sh`"
        );
    }
}

/// A name prefix unique to this process and call: "ew" + pid + "x" + a per-process counter.
pub fn unique_prefix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("ew{}x{n}", std::process::id())
}

/// Path of the mount that names namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether a namespace called `name` exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// A named network namespace with its loopback up; deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` and brings its loopback interface up.
    pub fn create(name: &str) -> Result<Netns> {
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <name> <args>` and requires success.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes still inside keep the namespace alive until they exit, but its name goes
        // now, which is what makes the next test's set-up start clean.
        if let Err(error) = ip(&["netns", "del", &self.name]) {
            eprintln!(
                "edgeward-lab: could not delete netns {}: {error:#}",
                self.name
            );
        }
    }
}

/// Runs `ip <args>` in the lab's own namespace and requires success.
pub fn ip(args: &[&str]) -> Result<()> {
    procs::run_ok(Command::new("ip").args(args), COMMAND_TIMEOUT)?;
    Ok(())
}

/// Runs `program args` inside namespace `ns` to completion (bounded by `timeout`).
pub fn exec<S: AsRef<OsStr>>(
    ns: &str,
    program: impl AsRef<OsStr>,
    args: &[S],
    timeout: Duration,
) -> Result<Output> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program).args(args);
    procs::run(&mut cmd, timeout)
}

/// Runs `program args` inside namespace `ns`, requires success and gives stdout.
pub fn exec_ok<S: AsRef<OsStr>>(
    ns: &str,
    program: impl AsRef<OsStr>,
    args: &[S],
) -> Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program).args(args);
    procs::run_ok(&mut cmd, COMMAND_TIMEOUT)
}

/// Runs `f` on a fresh thread that has joined namespace `ns` and gives back its result.
///
/// Sockets that `f` creates belong to `ns` and may be used from any thread afterwards. A
/// panic in `f` is passed on to the caller.
pub fn run_in<T, F>(ns: &str, f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send,
    T: Send,
{
    let file = File::open(path(ns)).with_context(|| format!("opening netns {ns}"))?;
    std::thread::scope(|scope| {
        let thread = scope.spawn(move || {
            // setns(CLONE_NEWNET) moves only this thread, so the rest of the test is unaffected.
            setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {ns}"))?;
            f()
        });
        match thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Writes `value` to a sysctl file under /proc/sys inside namespace `ns`.
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    // /proc/sys/net follows the network namespace of the thread that opens the file.
    let file = format!("/proc/sys/{}", key.replace('.', "/"));
    run_in(ns, || {
        std::fs::write(&file, value).with_context(|| format!("writing {file}"))
    })
}

/// Reads a sysctl value inside namespace `ns`.
pub fn read_sysctl(ns: &str, key: &str) -> Result<String> {
    let file = format!("/proc/sys/{}", key.replace('.', "/"));
    run_in(ns, || Ok(std::fs::read_to_string(&file)?.trim().to_owned()))
}
