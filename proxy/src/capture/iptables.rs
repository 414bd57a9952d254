//! The nat rules that redirect pod TCP to the outbound listener, installed in the node's network
//! namespace at start and removed at exit.
//!
//! One chain, `EDGEWARD_OUTBOUND`, hooked first into `PREROUTING`: connections to the node's own
//! addresses return untouched (so pods can still reach node-local services, and a connection aimed
//! at the proxy's own ports arrives unredirected and is refused), and TCP from each pod network
//! is redirected to the outbound port.

use std::process::Command;

use ipnet::IpNet;
use thiserror::Error;

/// The chain the proxy owns.
pub const CHAIN: &str = "EDGEWARD_OUTBOUND";

/// Why the capture rules could not be installed.
#[derive(Debug, Error)]
pub enum CaptureError {
    /// The iptables program is missing.
    #[error("cannot run {program}: {source}; install the iptables package")]
    Missing {
        /// iptables or ip6tables.
        program: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// iptables refused a rule.
    #[error("{program} {args} failed: {stderr}")]
    Failed {
        /// iptables or ip6tables.
        program: &'static str,
        /// The arguments.
        args: String,
        /// What it printed.
        stderr: String,
    },
}

/// The capture rules for a set of pod networks.
#[derive(Debug, Clone)]
pub struct CaptureRules {
    cidrs: Vec<IpNet>,
    port: u16,
}

impl CaptureRules {
    /// Rules redirecting TCP from `cidrs` to `port`.
    pub fn new(cidrs: Vec<IpNet>, port: u16) -> Self {
        Self { cidrs, port }
    }

    /// Installs (or re-installs, replacing leftovers of an earlier run) the rules.
    pub fn install(&self) -> Result<(), CaptureError> {
        for (program, cidrs) in self.by_family() {
            if cidrs.is_empty() {
                continue;
            }
            // A chain left over from a crashed run is emptied and reused.
            let _ = iptables(program, &["-t", "nat", "-N", CHAIN]);
            iptables(program, &["-t", "nat", "-F", CHAIN])?;
            let local = [
                "-t",
                "nat",
                "-A",
                CHAIN,
                "-m",
                "addrtype",
                "--dst-type",
                "LOCAL",
            ];
            iptables(program, &[&local[..], &["-j", "RETURN"]].concat())?;
            let port = self.port.to_string();
            for cidr in cidrs {
                let cidr = cidr.to_string();
                let rule = ["-t", "nat", "-A", CHAIN, "-s", &cidr, "-p", "tcp"];
                let target = ["-j", "REDIRECT", "--to-ports", &port];
                iptables(program, &[&rule[..], &target[..]].concat())?;
            }
            if iptables(program, &["-t", "nat", "-C", "PREROUTING", "-j", CHAIN]).is_err() {
                iptables(
                    program,
                    &["-t", "nat", "-I", "PREROUTING", "1", "-j", CHAIN],
                )?;
            }
        }
        Ok(())
    }

    /// Removes the rules; errors are logged, not returned, as this runs on the way out.
    pub fn remove(&self) {
        for (program, cidrs) in self.by_family() {
            if cidrs.is_empty() {
                continue;
            }
            let steps: [&[&str]; 3] = [
                &["-t", "nat", "-D", "PREROUTING", "-j", CHAIN],
                &["-t", "nat", "-F", CHAIN],
                &["-t", "nat", "-X", CHAIN],
            ];
            for args in steps {
                if let Err(error) = iptables(program, args) {
                    tracing::warn!(%error, "cannot remove a capture rule");
                }
            }
        }
    }

    fn by_family(&self) -> [(&'static str, Vec<IpNet>); 2] {
        let (v4, v6): (Vec<IpNet>, Vec<IpNet>) =
            self.cidrs.iter().partition(|c| matches!(c, IpNet::V4(_)));
        [("iptables", v4), ("ip6tables", v6)]
    }
}

fn iptables(program: &'static str, args: &[&str]) -> Result<(), CaptureError> {
    let output = Command::new(program)
        .arg("-w")
        .args(args)
        .output()
        .map_err(|source| CaptureError::Missing { program, source })?;
    if output.status.success() {
        return Ok(());
    }
    Err(CaptureError::Failed {
        program,
        args: args.join(" "),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    })
}
