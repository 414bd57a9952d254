//! The TCP tunnel listener: TLS 1.3, then HTTP/2, one CONNECT stream per connection.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use edgeward_ca::spiffe_id_of;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Method, Request, Response};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::{admit, handshake_failed, refuse, Peers, Refusal};
use crate::connection::{counters, finish};
use crate::relay::relay;
use crate::tunnel::h2io::{H2Reader, H2Writer};
use crate::tunnel::preamble::Status;
use crate::tunnel::stream::{Transport, TunnelStream};
use crate::tunnel::STREAM_WINDOW;
use crate::tunnel::{CONNECTION_WINDOW, ERROR_HEADER, MAX_FRAME, SOURCE_ADDR_HEADER};
use crate::Context;

/// Accepts TCP tunnel connections forever.
pub async fn serve(listener: TcpListener, ctx: Arc<Context>) {
    edgeward_proto::net::accept_forever(listener, "tunnel", move |stream, peer| {
        connection(stream, peer, ctx.clone())
    })
    .await
}

async fn connection(stream: TcpStream, tunnel_peer: SocketAddr, ctx: Arc<Context>) {
    crate::sockets::tune(&ctx, &stream);
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
                    "tunnel connection ended with an error"
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
            // A refused certificate was counted by the verifier already.
            if !edgeward_ca::is_verifier_refusal(&error) {
                let reason = edgeward_ca::io_rejection_reason(&error);
                handshake_failed(ctx, tunnel_peer, reason, &error.to_string());
            }
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

async fn stream_request(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    peers: Arc<Peers>,
    ctx: Arc<Context>,
) {
    let target = match parse_target(&request) {
        Ok(target) => target,
        Err(message) => {
            let refusal = refuse(&ctx, Status::BadRequest, message);
            return reply_refusal(&mut respond, refusal);
        }
    };
    let claimed_source = source_addr(&request);
    let admitted = admit(&ctx, &peers, target, claimed_source, Transport::Tcp).await;
    let (mut upstream, record) = match admitted {
        Ok(admitted) => admitted,
        Err(refusal) => return reply_refusal(&mut respond, refusal),
    };
    let send = match respond.send_response(Response::new(()), false) {
        Ok(send) => send,
        Err(error) => return tracing::debug!(%error, "the tunnel stream closed before the reply"),
    };

    let mut tunnel = TunnelStream::h2(H2Reader::new(request.into_body()), H2Writer::new(send));
    let counters = counters(&ctx, "inbound");
    let outcome = {
        let (mut reader, mut writer) = tunnel.halves();
        let (mut ur, mut uw) = upstream.split();
        relay((&mut reader, &mut writer), (&mut ur, &mut uw), &counters).await
    };
    finish(&ctx, upstream, Some(&mut tunnel), &record, outcome);
}

fn parse_target(request: &Request<RecvStream>) -> Result<SocketAddr, String> {
    if request.method() != Method::CONNECT {
        return Err(format!(
            "only CONNECT is served here, not {}",
            request.method()
        ));
    }
    let authority = request.uri().authority().map(|a| a.as_str()).unwrap_or("");
    authority
        .parse()
        .map_err(|_| format!("the CONNECT target {authority:?} is not ip:port"))
}

/// The pod address the client proxy says the connection came from.
fn source_addr(request: &Request<RecvStream>) -> Option<SocketAddr> {
    let value = request.headers().get(SOURCE_ADDR_HEADER)?;
    value.to_str().ok()?.parse().ok()
}

fn reply_refusal(respond: &mut SendResponse<Bytes>, refusal: Refusal) {
    let mut response = Response::new(());
    *response.status_mut() = refusal.status.http();
    if let Ok(value) = http::HeaderValue::from_str(&refusal.message) {
        response.headers_mut().insert(ERROR_HEADER, value);
    }
    let _ = respond.send_response(response, true);
}
