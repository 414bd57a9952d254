//! Inbound: the tunnel listener. A peer proxy connects with mutual TLS, presenting the source
//! workload's SVID; each HTTP/2 CONNECT stream names a pod on this node, which the proxy
//! connects to and relays.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use edgeward_ca::{spiffe_id_of, SpiffeId};
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Method, Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::access::AccessRecord;
use crate::connection::{counters, finish};
use crate::relay::relay;
use crate::tunnel::h2io::{H2Reader, H2Writer};
use crate::tunnel::STREAM_WINDOW;
use crate::tunnel::{CONNECTION_WINDOW, ERROR_HEADER, MAX_FRAME, SOURCE_ADDR_HEADER};
use crate::Context;

/// Accepts tunnel connections forever.
pub async fn serve(listener: TcpListener, ctx: Arc<Context>) {
    edgeward_proto::net::accept_forever(listener, "tunnel", move |stream, peer| {
        connection(stream, peer, ctx.clone())
    })
    .await
}

/// Who is at each end of an authenticated tunnel connection.
struct Peers {
    /// The node proxy's address.
    tunnel_peer: SocketAddr,
    /// The client certificate's SPIFFE ID: the source workload.
    client: SpiffeId,
    /// The identity this proxy presented, chosen by the client's SNI.
    server: SpiffeId,
}

async fn connection(stream: TcpStream, tunnel_peer: SocketAddr, ctx: Arc<Context>) {
    crate::sockets::tune(&stream);
    let Some((tls, peers)) = handshake(stream, tunnel_peer, &ctx).await else {
        return;
    };
    let h2 = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .handshake::<_, Bytes>(tls);
    let mut h2 = match tokio::time::timeout(ctx.config.connect_timeout, h2).await {
        Ok(Ok(h2)) => h2,
        Ok(Err(error)) => {
            return tracing::debug!(src.addr = %tunnel_peer, %error, "HTTP/2 handshake failed")
        }
        Err(_) => return tracing::debug!(src.addr = %tunnel_peer, "HTTP/2 handshake timed out"),
    };
    let peers = Arc::new(peers);
    while let Some(next) = h2.accept().await {
        match next {
            Ok((request, respond)) => {
                tokio::spawn(stream_request(request, respond, peers.clone(), ctx.clone()));
            }
            Err(error) => {
                tracing::debug!(
                    src.addr = %tunnel_peer,
                    %error,
                    "tunnel connection ended with an error",
                );
                break;
            }
        }
    }
}

async fn handshake(
    stream: TcpStream,
    tunnel_peer: SocketAddr,
    ctx: &Context,
) -> Option<(TlsStream<TcpStream>, Peers)> {
    let accept = TlsAcceptor::from(ctx.inbound_tls.clone()).accept(stream);
    let tls = match tokio::time::timeout(ctx.config.connect_timeout, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            let reason = edgeward_ca::io_rejection_reason(&error);
            handshake_failed(ctx, tunnel_peer, reason, &error.to_string());
            return None;
        }
        Err(_) => {
            handshake_failed(
                ctx,
                tunnel_peer,
                "timeout",
                "no handshake within the timeout",
            );
            return None;
        }
    };
    let session = tls.get_ref().1;
    let client = session
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|leaf| spiffe_id_of(leaf).ok());
    let server = session
        .server_name()
        .and_then(|sni| ctx.identities.identity_for_sni(sni));
    let (Some(client), Some(server)) = (client, server) else {
        handshake_failed(
            ctx,
            tunnel_peer,
            "no_identity",
            "identity missing after handshake",
        );
        return None;
    };
    let peers = Peers {
        tunnel_peer,
        client,
        server,
    };
    Some((tls, peers))
}

fn handshake_failed(ctx: &Context, peer: SocketAddr, reason: &str, error: &str) {
    ctx.metrics
        .handshake_failures
        .with_label_values(&["inbound", reason])
        .inc();
    tracing::debug!(src.addr = %peer, reason, error, "refused a tunnel handshake");
}

async fn stream_request(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    peers: Arc<Peers>,
    ctx: Arc<Context>,
) {
    let target = match parse_target(&request) {
        Ok(target) => target,
        Err((status, reason, message)) => {
            return refuse(&ctx, &mut respond, status, reason, &message)
        }
    };
    let dir = ctx.directory.get();
    let Some(destination) = dir.local_workload_at(target.ip()).cloned() else {
        let message = format!("{target} is not a workload on this node");
        return refuse(
            &ctx,
            &mut respond,
            StatusCode::NOT_FOUND,
            "not_local_workload",
            &message,
        );
    };
    if destination.spiffe_id != peers.server {
        let message = format!(
            "the tunnel was opened for {} but {target} is {}",
            peers.server, destination.spiffe_id
        );
        return refuse(
            &ctx,
            &mut respond,
            StatusCode::MISDIRECTED_REQUEST,
            "identity_mismatch",
            &message,
        );
    }

    let mut record = AccessRecord::new("inbound", source_addr(&request, &peers), target);
    record.destination(&destination);
    record.src_identity = Some(peers.client.clone());
    record.tunnel_peer = Some(peers.tunnel_peer);
    // The claimed source address names a workload only if that workload has the certified ID.
    if let Some(source) = dir.workload_at(record.src_addr.ip()) {
        if source.spiffe_id == peers.client {
            record.source(source);
        }
    }
    ctx.metrics.opened.with_label_values(&["inbound"]).inc();

    let connect =
        tokio::time::timeout(ctx.config.connect_timeout, TcpStream::connect(target)).await;
    let mut upstream = match connect {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(error)) => {
            let message = format!("cannot connect to {target}: {error}");
            record.emit("error", Some("upstream_unreachable"), 0, 0);
            return refuse(
                &ctx,
                &mut respond,
                StatusCode::BAD_GATEWAY,
                "upstream_unreachable",
                &message,
            );
        }
        Err(_) => {
            let message = format!("no answer from {target}");
            record.emit("error", Some("upstream_timeout"), 0, 0);
            return refuse(
                &ctx,
                &mut respond,
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                &message,
            );
        }
    };
    crate::sockets::tune(&upstream);
    let send = match respond.send_response(Response::new(()), false) {
        Ok(send) => send,
        Err(error) => return tracing::debug!(%error, "the tunnel stream closed before the reply"),
    };

    let (mut reader, mut writer) = (H2Reader::new(request.into_body()), H2Writer::new(send));
    let counters = counters(&ctx, "inbound");
    let outcome = {
        let (mut ur, mut uw) = upstream.split();
        relay((&mut reader, &mut writer), (&mut ur, &mut uw), &counters).await
    };
    finish(&ctx, upstream, Some(&mut writer), &record, outcome);
}

type Refusal = (StatusCode, &'static str, String);

fn parse_target(request: &Request<RecvStream>) -> Result<SocketAddr, Refusal> {
    if request.method() != Method::CONNECT {
        let message = format!("only CONNECT is served here, not {}", request.method());
        return Err((StatusCode::METHOD_NOT_ALLOWED, "not_connect", message));
    }
    let authority = request.uri().authority().map(|a| a.as_str()).unwrap_or("");
    authority.parse().map_err(|_| {
        let message = format!("the CONNECT target {authority:?} is not ip:port");
        (StatusCode::BAD_REQUEST, "bad_target", message)
    })
}

/// The pod address the client proxy says the connection came from, else the tunnel peer.
fn source_addr(request: &Request<RecvStream>, peers: &Peers) -> SocketAddr {
    request
        .headers()
        .get(SOURCE_ADDR_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(peers.tunnel_peer)
}

fn refuse(
    ctx: &Context,
    respond: &mut SendResponse<Bytes>,
    status: StatusCode,
    reason: &str,
    message: &str,
) {
    ctx.metrics.fail("inbound", reason);
    tracing::debug!(reason, message, "refused a tunnel stream");
    let mut response = Response::new(());
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(message) {
        response.headers_mut().insert(ERROR_HEADER, value);
    }
    let _ = respond.send_response(response, true);
}
