//! Options set on every TCP socket the proxy opens or accepts.

use tokio::net::TcpStream;

/// Disables Nagle and turns on TCP keepalive with the default probes (about a minute to notice a
/// peer that vanished without a FIN or RST).
pub fn tune(stream: &TcpStream) {
    edgeward_proto::net::tune(stream, &edgeward_proto::net::Keepalive::default());
}
