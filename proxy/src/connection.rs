//! How a proxied connection ends: metrics, the access-log line, and resets on both ends when
//! either end aborted.

use tokio::net::TcpStream;

use crate::access::AccessRecord;
use crate::relay::{reset_tcp, Counters, Outcome, Side};
use crate::tunnel::stream::TunnelStream;
use crate::Context;

/// Fails a connection before it carried data: the client sees a reset, as it would from a
/// refused or unreachable destination.
pub fn fail(ctx: &Context, stream: TcpStream, record: &AccessRecord, reason: &str) {
    ctx.metrics.fail(record.direction, reason);
    record.emit("error", Some(reason), 0, 0);
    reset_tcp(stream);
}

/// The byte counters of one direction.
pub fn counters(ctx: &Context, direction: &str) -> Counters {
    Counters {
        to_server: ctx.metrics.bytes_counter(direction, "client_to_server"),
        to_client: ctx.metrics.bytes_counter(direction, "server_to_client"),
    }
}

/// Records how a relay ended; a fault resets both ends so each peer sees the abort.
pub fn finish(
    ctx: &Context,
    stream: TcpStream,
    tunnel: Option<&mut TunnelStream>,
    record: &AccessRecord,
    outcome: Outcome,
) {
    let (result, reason) = match &outcome.fault {
        None => ("ok", None),
        Some((side, error)) => {
            tracing::debug!(?side, %error, "connection aborted");
            ("reset", Some(side_reason(*side)))
        }
    };
    ctx.metrics
        .closed
        .with_label_values(&[record.direction, result])
        .inc();
    record.emit(result, reason, outcome.to_server, outcome.to_client);
    if outcome.fault.is_some() {
        if let Some(tunnel) = tunnel {
            tunnel.reset();
        }
        reset_tcp(stream);
    }
}

fn side_reason(side: Side) -> &'static str {
    match side {
        Side::Client => "client_reset",
        Side::Server => "server_reset",
    }
}
