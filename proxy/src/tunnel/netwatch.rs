//! Noticing local address changes (a Wi-Fi to 5G handover, a DHCP renewal): the node's
//! addresses are read every half second, and a change moves the QUIC tunnels to the new address
//! and closes the TCP tunnels made from an address that is gone.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::pool::Tunnels;

/// How often the node's addresses are read.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The node's addresses, loopback excluded.
pub fn local_addresses() -> BTreeSet<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return BTreeSet::new();
    };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|sa| {
            let v4 = sa.as_sockaddr_in().map(|s| IpAddr::V4(s.ip()));
            v4.or_else(|| sa.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        })
        .filter(|ip| !ip.is_loopback())
        .collect()
}

/// Watches the node's addresses forever and tells the tunnels about every change.
pub async fn watch(tunnels: Arc<Tunnels>) {
    let mut known = local_addresses();
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let now = local_addresses();
        if now == known {
            continue;
        }
        let gone: Vec<IpAddr> = known.difference(&now).copied().collect();
        let added: Vec<IpAddr> = now.difference(&known).copied().collect();
        tracing::info!(?gone, ?added, "local addresses changed");
        tunnels.addresses_changed(&gone);
        known = now;
    }
}
