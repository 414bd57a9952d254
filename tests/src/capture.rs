//! Packet capture on the wan link with tcpdump, to check what an eavesdropper between the
//! nodes would see: no plaintext, and tunnel packets on port 15008.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;

use crate::pcap::{self, Transport};
use crate::procs::{Launch, Proc};
use crate::topology::{Topology, WAN_IFACE};

/// The tunnel port, TCP (HTTP/2 CONNECT over mTLS) and UDP (QUIC).
pub const TUNNEL_PORT: u16 = 15008;

/// How long tcpdump may take to start listening (10 s).
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long tcpdump may take to flush and exit after SIGINT (10 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause before stopping tcpdump, so the packets just sent reach the file (200 ms).
const SETTLE: Duration = Duration::from_millis(200);

/// A running tcpdump; killed if dropped before `finish`.
pub struct Capture {
    proc: Proc,
    file: std::path::PathBuf,
}

impl Capture {
    /// Starts capturing on the wan interface of node `node` and waits until tcpdump listens.
    pub fn start(topo: &Topology, node: usize) -> Result<Capture> {
        Capture::start_on(topo, node, WAN_IFACE)
    }

    /// Starts capturing on interface `iface` of node `node`.
    pub fn start_on(topo: &Topology, node: usize, iface: &str) -> Result<Capture> {
        require_tcpdump()?;
        let stem = format!("tcpdump-n{node}-{iface}-{}", unique_suffix());
        let file = topo.path(&format!("{stem}.pcap"));
        // --immediate-mode hands each packet over as it arrives (else packets still in the
        // kernel's buffer are lost at SIGINT), -U writes each one out at once, -n skips name
        // lookups and -Z root keeps the right to write into the lab's root-owned directory.
        let launch = Launch::new(topo.node_ns(node), &stem, "tcpdump")
            .args([
                "-i",
                iface,
                "--immediate-mode",
                "-n",
                "-U",
                "-Z",
                "root",
                "-w",
            ])
            .arg(&file);
        let mut proc = Proc::spawn(&launch, topo.dir()).context("starting tcpdump")?;
        proc.wait_for_log("listening on", START_TIMEOUT)?;
        Ok(Capture { proc, file })
    }

    /// Stops tcpdump (SIGINT, so it flushes) and gives what it captured.
    pub fn finish(mut self) -> Result<CaptureData> {
        // The last packets of a call (FIN, final ACKs) may still be on their way to tcpdump.
        std::thread::sleep(SETTLE);
        let status = self.proc.signal_and_wait(Signal::SIGINT, STOP_TIMEOUT)?;
        if !status.success() && status.code().is_some() {
            bail!(self
                .proc
                .with_tail(anyhow::anyhow!("tcpdump failed ({status})")));
        }
        let bytes = std::fs::read(&self.file)
            .with_context(|| format!("reading capture {}", self.file.display()))?;
        CaptureData::new(bytes)
    }
}

fn unique_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What a capture saw: the raw pcap bytes and counts derived from them.
#[derive(Clone, Debug)]
pub struct CaptureData {
    /// The pcap file as tcpdump wrote it.
    pub bytes: Vec<u8>,
    /// Number of packets in the capture.
    pub packets: usize,
}

impl CaptureData {
    /// Parses the pcap bytes; fails if they are not a pcap file.
    pub fn new(bytes: Vec<u8>) -> Result<CaptureData> {
        let packets = pcap::frames(&bytes)?.len();
        Ok(CaptureData { bytes, packets })
    }

    /// Whether `needle` appears anywhere in the captured bytes.
    pub fn contains(&self, needle: &[u8]) -> bool {
        contains(&self.bytes, needle)
    }

    /// Packets sent from or to TCP port `port`.
    pub fn tcp_packets(&self, port: u16) -> usize {
        pcap::count_port(&self.bytes, Transport::Tcp, port).unwrap_or(0)
    }

    /// Packets sent from or to UDP port `port`.
    pub fn udp_packets(&self, port: u16) -> usize {
        pcap::count_port(&self.bytes, Transport::Udp, port).unwrap_or(0)
    }

    /// Tunnel packets: TCP and UDP on port 15008.
    pub fn tunnel_packets(&self) -> usize {
        self.tcp_packets(TUNNEL_PORT) + self.udp_packets(TUNNEL_PORT)
    }

    /// Fails unless the capture saw tunnel packets, on tcp/15008 or udp/15008 (QUIC): a
    /// capture that saw nothing proves nothing about encryption.
    pub fn require_tunnel_traffic(&self) -> Result<()> {
        if self.tunnel_packets() == 0 {
            bail!(
                "the capture saw no packets on tcp/{TUNNEL_PORT} or udp/{TUNNEL_PORT} ({} \
                 packets in all): the traffic did not go through the tunnel, or tcpdump missed \
                 it",
                self.packets
            );
        }
        Ok(())
    }

    /// Fails unless the capture saw TCP tunnel packets: a capture that saw nothing proves
    /// nothing about encryption.
    pub fn require_tcp_tunnel_traffic(&self) -> Result<()> {
        let tunnel = self.tcp_packets(TUNNEL_PORT);
        if tunnel == 0 {
            bail!(
                "the capture saw no packets on tcp/{TUNNEL_PORT} ({} packets in all): the \
                 traffic did not go through the tunnel, or tcpdump missed it",
                self.packets
            );
        }
        Ok(())
    }
}

/// Whether `needle` occurs in `haystack` (an empty needle always does).
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, _)) = needle.split_first() else {
        return true;
    };
    let mut start = 0;
    while let Some(offset) = haystack[start..].iter().position(|&b| b == first) {
        let at = start + offset;
        if haystack[at..].starts_with(needle) {
            return true;
        }
        start = at + 1;
    }
    false
}

/// Makes sure tcpdump is installed, with the fix in the error.
pub fn require_tcpdump() -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join("tcpdump").is_file()))
        .unwrap_or(false);
    if !found {
        bail!("tcpdump is not installed: run `bash tests/setup.sh` as root");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_needles_anywhere() {
        assert!(contains(b"abcSayHellodef", b"SayHello"));
        assert!(contains(b"SaSaySayHello", b"SayHello"));
        assert!(!contains(b"SayHell", b"SayHello"));
        assert!(contains(b"x", b""));
        assert!(!contains(b"", b"x"));
    }
}
