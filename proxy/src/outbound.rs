//! Outbound: connections that local pods opened, captured by iptables. Each is resolved against
//! the directory and either tunnelled to the destination node over mutual TLS, passed through
//! (destinations outside the mesh, permissive mode) or refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::access::AccessRecord;
use crate::config::OutboundMode;
use crate::connection::{counters, fail, finish};
use crate::directory::Workload;
use crate::relay::{relay, reset_tcp};
use crate::tunnel::StreamRequest;
use crate::Context;

/// How long a captured connection waits for its workload's SVID right after a start.
const SVID_WAIT: Duration = Duration::from_secs(5);

/// Accepts captured connections forever.
pub async fn serve(listener: TcpListener, ctx: Arc<Context>) {
    edgeward_proto::net::accept_forever(listener, "outbound capture", move |stream, peer| {
        handle(stream, peer, ctx.clone())
    })
    .await
}

async fn handle(stream: TcpStream, client: SocketAddr, ctx: Arc<Context>) {
    crate::sockets::tune(ctx.as_ref(), &stream);
    let target = match crate::capture::original_dst(&stream) {
        Ok(target) => target,
        Err(error) => {
            tracing::debug!(src.addr = %client, %error, "no original destination");
            return refuse(&ctx, stream, "no_original_destination");
        }
    };
    if is_loop(&ctx, &stream, target) {
        tracing::debug!(
            src.addr = %client,
            dst.addr = %target,
            "refused a connection aimed at the proxy itself",
        );
        return refuse(&ctx, stream, "loop");
    }

    let dir = ctx.directory.get();
    let source = dir.local_workload_at(client.ip()).cloned();
    let destination = dir.workload_at(target.ip()).cloned();
    match (source, destination) {
        (Some(source), Some(destination)) => {
            tunnel(stream, client, target, source, destination, &ctx).await
        }
        (source, destination) => {
            let reason = match (&source, &destination) {
                (_, None) => "destination_not_in_mesh",
                _ => "source_not_in_mesh",
            };
            if ctx.config.outbound_mode == OutboundMode::Strict {
                tracing::debug!(
                    src.addr = %client,
                    dst.addr = %target,
                    reason,
                    "refused by strict outbound mode",
                );
                return refuse(&ctx, stream, reason);
            }
            passthrough(stream, client, target, &ctx).await
        }
    }
}

/// A connection that was not redirected (its original destination is the listener itself), or
/// that was aimed at one of the proxy's ports on this host, would loop back into the proxy.
fn is_loop(ctx: &Context, stream: &TcpStream, target: SocketAddr) -> bool {
    let own_listener = stream.local_addr().is_ok_and(|local| local == target);
    let own_port = ctx.config.own_ports().contains(&target.port());
    own_listener || (own_port && (target.ip().is_loopback() || target.ip().is_unspecified()))
}

fn refuse(ctx: &Context, stream: TcpStream, reason: &str) {
    ctx.metrics.fail("outbound", reason);
    reset_tcp(stream);
}

async fn tunnel(
    mut stream: TcpStream,
    client: SocketAddr,
    target: SocketAddr,
    source: Arc<Workload>,
    destination: Arc<Workload>,
    ctx: &Context,
) {
    let mut record = AccessRecord::new("outbound", client, target);
    record.source(&source);
    record.destination(&destination);
    ctx.metrics.opened.with_label_values(&["outbound"]).inc();

    let svid = match ctx.identities.wait_for(&source.key, SVID_WAIT).await {
        Some(svid) if svid.not_after() > std::time::SystemTime::now() => svid,
        Some(_) => return fail(ctx, stream, &record, "identity_expired"),
        None if ctx.identities.is_expired(&source.key) => {
            return fail(ctx, stream, &record, "identity_expired")
        }
        None => return fail(ctx, stream, &record, "no_identity"),
    };
    let Some(peer) = ctx
        .directory
        .get()
        .tunnel_addresses(&destination.node)
        .first()
        .copied()
    else {
        return fail(ctx, stream, &record, "no_route_to_node");
    };
    record.tunnel_peer = Some(peer);
    let request = StreamRequest {
        source: source.key.clone(),
        svid,
        destination: destination.spiffe_id.clone(),
        peer_node: destination.node.clone(),
        peer,
        target,
        client,
    };
    let mut tunnel = match ctx.tunnels.open(request).await {
        Ok(tunnel) => tunnel,
        Err(error) => {
            tracing::debug!(
                src.addr = %client,
                dst.addr = %target,
                %error,
                "cannot open a tunnel stream",
            );
            return fail(ctx, stream, &record, error.reason());
        }
    };

    record.transport = Some(tunnel.transport());
    let counters = counters(ctx, "outbound");
    let outcome = {
        let (mut r, mut w) = stream.split();
        let (mut reader, mut writer) = tunnel.halves();
        relay((&mut r, &mut w), (&mut reader, &mut writer), &counters).await
    };
    finish(ctx, stream, Some(&mut tunnel), &record, outcome);
}

async fn passthrough(mut stream: TcpStream, client: SocketAddr, target: SocketAddr, ctx: &Context) {
    let record = AccessRecord::new("passthrough", client, target);
    ctx.metrics.opened.with_label_values(&["passthrough"]).inc();
    let connect =
        tokio::time::timeout(ctx.config.connect_timeout, TcpStream::connect(target)).await;
    let mut upstream = match connect {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(_)) => return fail(ctx, stream, &record, "upstream_unreachable"),
        Err(_) => return fail(ctx, stream, &record, "upstream_timeout"),
    };
    crate::sockets::tune(ctx, &upstream);

    let counters = counters(ctx, "passthrough");
    let outcome = {
        let (mut cr, mut cw) = stream.split();
        let (mut ur, mut uw) = upstream.split();
        relay((&mut cr, &mut cw), (&mut ur, &mut uw), &counters).await
    };
    if outcome.fault.is_some() {
        reset_tcp(upstream);
    }
    finish(ctx, stream, None, &record, outcome);
}
