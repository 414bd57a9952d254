//! Options set on every TCP socket the proxy opens or accepts.

use tokio::net::TcpStream;

use crate::Context;

/// Disables Nagle and sets keepalive and TCP_USER_TIMEOUT as configured, so a peer that vanished
/// is noticed within the dead-peer bound whether the connection is idle or busy.
pub fn tune(ctx: &Context, stream: &TcpStream) {
    edgeward_proto::net::tune(stream, &ctx.keepalive);
}
