//! The QUIC tunnel listener on udp/15008: the same mutual TLS as the TCP listener, then one
//! bidirectional stream per connection, each opened with the stream preamble.

use std::sync::Arc;

use edgeward_ca::spiffe_id_of;
use quinn::{Connection, Endpoint, Incoming};
use rustls_pki_types::CertificateDer;

use super::{admit, handshake_failed, refuse, Peers};
use crate::connection::{counters, finish};
use crate::relay::relay;
use crate::tunnel::preamble::{self, Status};
use crate::tunnel::quic::Maintenance;
use crate::tunnel::stream::{Transport, TunnelStream};
use crate::Context;

/// Accepts QUIC tunnel connections until the endpoint closes.
pub async fn serve(endpoint: Endpoint, ctx: Arc<Context>) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(connection(incoming, ctx.clone()));
    }
}

async fn connection(incoming: Incoming, ctx: Arc<Context>) {
    let remote = incoming.remote_address();
    let connection = match tokio::time::timeout(ctx.config.connect_timeout, incoming).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            // An error we raised ourselves (our verifier refusing the client's certificate,
            // counted there already) is a transport error; what the client did is not.
            let reason = match &error {
                quinn::ConnectionError::TransportError(_) => return,
                quinn::ConnectionError::ConnectionClosed(_) => "peer_alert",
                quinn::ConnectionError::TimedOut => "timeout",
                _ => "quic_handshake",
            };
            return handshake_failed(&ctx, remote, reason, &error.to_string());
        }
        Err(_) => return handshake_failed(&ctx, remote, "timeout", "no QUIC handshake"),
    };
    let Some(peers) = identify(&connection, &ctx) else {
        handshake_failed(
            &ctx,
            remote,
            "no_identity",
            "identity missing after handshake",
        );
        return;
    };
    let maintenance = Maintenance {
        connection: connection.clone(),
        peer: peer_label(&ctx, &peers),
        idle_timeout: ctx.config.quic_idle_timeout,
        metrics: ctx.metrics.clone(),
        watch_path: true,
    };
    tokio::spawn(maintenance.run());

    let peers = Arc::new(peers);
    while let Ok((send, recv)) = connection.accept_bi().await {
        tokio::spawn(stream(send, recv, peers.clone(), ctx.clone()));
    }
}

fn identify(connection: &Connection, ctx: &Context) -> Option<Peers> {
    let certs = connection.peer_identity()?;
    let certs = certs.downcast_ref::<Vec<CertificateDer<'static>>>()?;
    let client = spiffe_id_of(certs.first()?).ok()?;
    let data = connection.handshake_data()?;
    let data = data.downcast_ref::<quinn::crypto::rustls::HandshakeData>()?;
    let server = ctx
        .identities
        .identity_for_sni(data.server_name.as_deref()?)?;
    Some(Peers {
        tunnel_peer: connection.remote_address(),
        client,
        server,
    })
}

/// The peer node's name for metrics: the node that runs the client's workload, when the
/// directory names exactly one; else the peer's address.
fn peer_label(ctx: &Context, peers: &Peers) -> String {
    ctx.directory
        .get()
        .node_of_identity(&peers.client)
        .unwrap_or_else(|| peers.tunnel_peer.ip().to_string())
}

async fn stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    peers: Arc<Peers>,
    ctx: Arc<Context>,
) {
    let request = tokio::time::timeout(
        ctx.config.connect_timeout,
        preamble::read_request(&mut recv),
    );
    let request = match request.await {
        Ok(Ok(request)) => request,
        Ok(Err(error)) => {
            let refusal = refuse(&ctx, Status::BadRequest, error.to_string());
            let _ = preamble::write_reply(&mut send, refusal.status, &refusal.message).await;
            let _ = send.finish();
            return;
        }
        Err(_) => {
            let _ = send.reset(quinn::VarInt::from_u32(preamble::CONNECT_ERROR));
            return;
        }
    };
    let admitted = admit(
        &ctx,
        &peers,
        request.target,
        Some(request.source),
        Transport::Quic,
    );
    let (mut upstream, record) = match admitted.await {
        Ok(admitted) => admitted,
        Err(refusal) => {
            let _ = preamble::write_reply(&mut send, refusal.status, &refusal.message).await;
            let _ = send.finish();
            return;
        }
    };
    if preamble::write_reply(&mut send, Status::Connected, "")
        .await
        .is_err()
    {
        return;
    }

    let mut tunnel = TunnelStream::quic(recv, send);
    let counters = counters(&ctx, "inbound");
    let outcome = {
        let (mut reader, mut writer) = tunnel.halves();
        let (mut ur, mut uw) = upstream.split();
        relay((&mut reader, &mut writer), (&mut ur, &mut uw), &counters).await
    };
    finish(&ctx, upstream, Some(&mut tunnel), &record, outcome);
}
