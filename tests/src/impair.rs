//! Impairments of the wan link between the two nodes, made with what the kernel here offers
//! (netem cannot be loaded): random loss and full outages with iptables, a blocked QUIC port,
//! and a handover of node 1 to a new address. Each one is a guard that takes back what it
//! did when dropped, also when a test panics.
//!
//! The iptables rules live in a chain of the lab's own (`EWLAB-WAN`, raw table) in each node
//! namespace, jumped to from PREROUTING for packets arriving on `wan`: both the proxy's own
//! traffic and pod traffic routed through the node pass there. A rule in node 2 impairs the
//! direction 1 to 2, the same rule in node 1 the direction 2 to 1.
//!
//! Packets are dropped where they arrive, not where they leave, because a DROP in OUTPUT is
//! not loss: the sender's kernel gets EPERM back, and TCP keeps the segment and sends it again
//! at its next chance. Measured here with 8 MiB over TCP at 5 %: 3 retransmissions with the
//! drop in OUTPUT, 491 with it on arrival. A real link gives the sender no such signal.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{ensure, Context, Result};

use crate::netns;
use crate::topology::{self, Topology, NODE_COUNT, WAN_IFACE};

/// The lab's iptables chain in each node namespace (in `TABLE`).
pub const CHAIN: &str = "EWLAB-WAN";

/// The table of `CHAIN`: raw, whose PREROUTING sees every packet that arrives, before
/// connection tracking (so a dropped packet leaves no trace in the node).
pub const TABLE: &str = "raw";

/// The built-in chain that jumps to `CHAIN` for packets arriving on `wan`.
const HOOK: &str = "PREROUTING";

/// Offloads turned off on `wan`, so that iptables sees packets as they are on the wire.
const WAN_OFFLOADS: [&str; 4] = ["tx", "tso", "gso", "gro"];

/// Offloads turned off on each pod's `eth0`, so that the pods send wire-sized packets for the
/// nodes to forward.
const POD_OFFLOADS: [&str; 2] = ["tso", "gso"];

/// The address node 1 hands over to in `Handover::node1` (198.18.0.11, same /24 as before).
pub const HANDOVER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);

/// Prefix length of the wan addresses.
const WAN_PREFIX: u8 = 24;

/// The lab's control over the wan link: its chain and jumps in both nodes, removed on drop.
///
/// Installing it also turns off checksum, segmentation and receive offloads on `wan` (and
/// segmentation on every pod's `eth0`), so that every packet iptables sees is one packet on
/// the wire. With offloads on, a veth carries a TCP or UDP-GSO burst of up to 64 KiB as one
/// packet, and a "5 % loss" would drop whole bursts. Without checksum offload the kernel
/// refuses UDP GSO with EIO, on which quinn sends datagrams one by one, as on many cheap edge
/// NICs.
pub struct WanLink {
    nodes: Vec<String>,
    pods: Vec<String>,
}

impl WanLink {
    /// Creates the chain and its jumps in both node namespaces and turns off the offloads.
    pub fn install(topo: &Topology) -> Result<WanLink> {
        let link = WanLink {
            nodes: (1..=NODE_COUNT)
                .map(|k| topo.node_ns(k).to_owned())
                .collect(),
            pods: topo.pods().iter().map(|p| p.ns.clone()).collect(),
        };
        // Made before the first rule, so that a failure half-way is cleaned up by the drop.
        for ns in &link.nodes {
            iptables(ns, &["-N", CHAIN]).context("is iptables installed? run tests/setup.sh")?;
            iptables(ns, &["-I", HOOK, "1", "-i", WAN_IFACE, "-j", CHAIN])?;
            ethtool(ns, WAN_IFACE, &WAN_OFFLOADS, "off")?;
        }
        for ns in &link.pods {
            ethtool(ns, "eth0", &POD_OFFLOADS, "off")?;
        }
        Ok(link)
    }

    /// Drops each packet crossing `wan`, either way, with `probability` (0 < p <= 1).
    pub fn loss(&self, probability: f64) -> Result<Impairment<'_>> {
        ensure!(
            probability > 0.0 && probability <= 1.0,
            "loss probability {probability} is not in (0, 1]"
        );
        let p = format!("{probability:.4}");
        let statistic = ["-m", "statistic", "--mode", "random", "--probability", &p];
        self.impose(&format!("{:.1} % loss", probability * 100.0), &[&statistic])
    }

    /// Drops every packet crossing `wan`: the link goes dark both ways.
    pub fn outage(&self) -> Result<Impairment<'_>> {
        self.impose("outage", &[&[]])
    }

    /// Drops UDP to or from `port` on `wan`, both ways (QUIC tunnels when `port` is 15008).
    pub fn block_udp(&self, port: u16) -> Result<Impairment<'_>> {
        let port = port.to_string();
        let to = ["-p", "udp", "--dport", port.as_str()];
        let from = ["-p", "udp", "--sport", port.as_str()];
        self.impose(&format!("udp/{port} blocked"), &[&to, &from])
    }

    /// Adds one DROP rule per match to `CHAIN` in both nodes, each tagged with a comment that
    /// is unique to this impairment, so its counters can be read and its rules deleted alone.
    fn impose(&self, what: &str, matches: &[&[&str]]) -> Result<Impairment<'_>> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let tag = format!("ewlab-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let rules = matches
            .iter()
            .map(|m| {
                let mut rule: Vec<String> = m.iter().map(|s| s.to_string()).collect();
                rule.extend(["-m", "comment", "--comment", &tag, "-j", "DROP"].map(String::from));
                rule
            })
            .collect();
        let mut impairment = Impairment {
            link: self,
            what: what.to_owned(),
            tag,
            rules,
            added: Vec::new(),
        };
        for ns in &self.nodes {
            for (i, rule) in impairment.rules.iter().enumerate() {
                let mut args = vec!["-A", CHAIN];
                args.extend(rule.iter().map(String::as_str));
                iptables(ns, &args)?;
                impairment.added.push((ns.clone(), i));
            }
        }
        Ok(impairment)
    }

    fn remove(&self) {
        for ns in self.nodes.iter().filter(|ns| netns::exists(ns)) {
            warn_on_error(iptables(ns, &["-D", HOOK, "-i", WAN_IFACE, "-j", CHAIN]));
            warn_on_error(iptables(ns, &["-F", CHAIN]));
            warn_on_error(iptables(ns, &["-X", CHAIN]));
            warn_on_error(ethtool(ns, WAN_IFACE, &WAN_OFFLOADS, "on"));
        }
        for ns in self.pods.iter().filter(|ns| netns::exists(ns)) {
            warn_on_error(ethtool(ns, "eth0", &POD_OFFLOADS, "on"));
        }
    }
}

impl Drop for WanLink {
    fn drop(&mut self) {
        self.remove();
    }
}

/// One impairment in force on the wan link; lifted when dropped.
pub struct Impairment<'a> {
    link: &'a WanLink,
    what: String,
    tag: String,
    rules: Vec<Vec<String>>,
    /// (namespace, rule index) of every rule added and not yet deleted.
    added: Vec<(String, usize)>,
}

impl Impairment<'_> {
    /// What it is, for messages ("5.0 % loss", "outage", ...).
    pub fn what(&self) -> &str {
        &self.what
    }

    /// Packets dropped by this impairment so far, in both directions together.
    pub fn dropped(&self) -> Result<u64> {
        let mut total = 0;
        for ns in &self.link.nodes {
            let listing = iptables(ns, &["-L", CHAIN, "-v", "-x", "-n"])?;
            total += count_tagged(&listing, &self.tag)?;
        }
        Ok(total)
    }

    /// Lifts the impairment and gives the packets it dropped; any failure is an error.
    pub fn lift(mut self) -> Result<u64> {
        let dropped = self.dropped()?;
        self.delete_rules()?;
        Ok(dropped)
    }

    fn delete_rules(&mut self) -> Result<()> {
        while let Some((ns, i)) = self.added.pop() {
            if !netns::exists(&ns) {
                continue;
            }
            let mut args = vec!["-D", CHAIN];
            args.extend(self.rules[i].iter().map(String::as_str));
            iptables(&ns, &args).with_context(|| format!("lifting {}", self.what))?;
        }
        Ok(())
    }
}

impl Drop for Impairment<'_> {
    fn drop(&mut self) {
        warn_on_error(self.delete_rules());
    }
}

/// Sums the packet counters of the listing lines that carry the comment `tag`.
fn count_tagged(listing: &str, tag: &str) -> Result<u64> {
    let needle = format!("/* {tag} */");
    let mut total = 0;
    for line in listing.lines().filter(|l| l.contains(&needle)) {
        let packets = line.split_whitespace().next().unwrap_or_default();
        total += packets
            .parse::<u64>()
            .with_context(|| format!("packet count in {line:?}"))?;
    }
    Ok(total)
}

/// A handover of node 1 to a new wan address, as when a node moves from Wi-Fi to 5G: the new
/// address is added, the old one removed, and both nodes' routes follow. Dropping it hands
/// node 1 back to its first address.
pub struct Handover {
    node1: String,
    node2: String,
    old: Ipv4Addr,
    new: Ipv4Addr,
    moved: bool,
}

impl Handover {
    /// Moves node 1 from `topology::wan_addr(1)` to `new` (in the same /24).
    pub fn node1(topo: &Topology, new: Ipv4Addr) -> Result<Handover> {
        let (node1, node2) = (topo.node_ns(1).to_owned(), topo.node_ns(2).to_owned());
        // Without it, deleting the old (primary) address would delete the new (secondary)
        // one of the same subnet with it.
        let key = format!("net.ipv4.conf.{WAN_IFACE}.promote_secondaries");
        netns::sysctl(&node1, &key, "1")?;
        // Made first, so that a move that fails half-way is undone by the drop.
        let handover = Handover {
            node1,
            node2,
            old: topology::wan_addr(1),
            new,
            moved: true,
        };
        move_node1(&handover.node1, &handover.node2, handover.old, new)?;
        Ok(handover)
    }

    /// Node 1's address before the handover.
    pub fn old_addr(&self) -> Ipv4Addr {
        self.old
    }

    /// Node 1's address after the handover.
    pub fn new_addr(&self) -> Ipv4Addr {
        self.new
    }

    /// Hands node 1 back to its old address, routes included.
    pub fn undo(mut self) -> Result<()> {
        self.moved = false;
        move_node1(&self.node1, &self.node2, self.new, self.old)
    }
}

impl Drop for Handover {
    fn drop(&mut self) {
        if self.moved && netns::exists(&self.node1) && netns::exists(&self.node2) {
            warn_on_error(move_node1(&self.node1, &self.node2, self.new, self.old));
        }
    }
}

/// Moves node 1's wan address from `from` to `to`: add first, then delete, then routes.
fn move_node1(node1: &str, node2: &str, from: Ipv4Addr, to: Ipv4Addr) -> Result<()> {
    let (from_cidr, to_cidr) = (format!("{from}/{WAN_PREFIX}"), format!("{to}/{WAN_PREFIX}"));
    netns::ip(&["-n", node1, "addr", "add", &to_cidr, "dev", WAN_IFACE])?;
    netns::ip(&["-n", node1, "addr", "del", &from_cidr, "dev", WAN_IFACE])?;

    // Node 1's route to node 2 survives a promoted address, but is set again so that a
    // kernel which drops it does not leave node 1 without one.
    let node2_addr = topology::wan_addr(2).to_string();
    let to_node2 = [
        "route",
        "replace",
        &topology::pod_cidr(2),
        "via",
        &node2_addr,
    ];
    netns::ip(&[&["-n", node1][..], &to_node2, &["dev", WAN_IFACE]].concat())?;
    let to_addr = to.to_string();
    let to_node1 = ["route", "replace", &topology::pod_cidr(1), "via", &to_addr];
    netns::ip(&[&["-n", node2][..], &to_node1, &["dev", WAN_IFACE]].concat())?;

    // Node 2 forgets the old address's link-layer entry, as it would once the address is gone
    // from the network: packets to it are then lost, not delivered to node 1's interface.
    let from_addr = from.to_string();
    netns::ip(&[
        "-n", node2, "neigh", "flush", "to", &from_addr, "dev", WAN_IFACE,
    ])
}

fn iptables(ns: &str, args: &[&str]) -> Result<String> {
    // -w: the xtables lock is shared by every namespace, and the proxies take it too.
    let all = [&["-w", "-t", TABLE][..], args].concat();
    netns::exec_ok(ns, "iptables", &all)
}

/// Turns each of `features` of `iface` "on" or "off".
fn ethtool(ns: &str, iface: &str, features: &[&str], state: &str) -> Result<()> {
    let mut args = vec!["-K", iface];
    for feature in features {
        args.extend([*feature, state]);
    }
    netns::exec_ok(ns, "ethtool", &args).context("is ethtool installed? run tests/setup.sh")?;
    Ok(())
}

fn warn_on_error<T>(result: Result<T>) {
    if let Err(error) = result {
        eprintln!("edgeward-lab: clean-up of a wan impairment failed: {error:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_the_tagged_rules() {
        // As `iptables -L -v -x -n` lists them, with the address columns shortened.
        let listing = "\
Chain EWLAB-WAN (2 references)
    pkts      bytes target     prot opt in     out     source  destination
      12     3456 DROP       0    --  *      *       0/0 0/0 statistic mode random /* ewlab-3 */
       7      700 DROP       17   --  *      *       0/0 0/0 udp dpt:15008 /* ewlab-30 */
       5      500 DROP       17   --  *      *       0/0 0/0 udp spt:15008 /* ewlab-30 */
";
        assert_eq!(count_tagged(listing, "ewlab-3").unwrap(), 12);
        assert_eq!(count_tagged(listing, "ewlab-30").unwrap(), 12);
        assert_eq!(count_tagged(listing, "ewlab-4").unwrap(), 0);
    }
}
