//! Copying bytes both ways between two connections, keeping TCP's semantics end to end: a
//! half-close (FIN) in one direction is passed on and the other direction keeps flowing; a reset
//! or a failed write on either side ends both directions, and the caller resets both ends.

use std::io;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Size of the copy buffer of each direction.
const BUFFER: usize = 64 * 1024;

/// Which side of a relay failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The downstream side: the connection the client opened.
    Client,
    /// The upstream side: towards the server.
    Server,
}

/// How a relay ended.
#[derive(Debug)]
pub struct Outcome {
    /// Bytes copied from the client side to the server side.
    pub to_server: u64,
    /// Bytes copied from the server side to the client side.
    pub to_client: u64,
    /// `None` when both directions ended with a clean close; otherwise the side whose read or
    /// write failed first (a reset, usually), and the error.
    pub fault: Option<(Side, io::Error)>,
}

/// The two byte counters a relay feeds as data flows.
pub struct Counters {
    /// Client to server.
    pub to_server: IntCounter,
    /// Server to client.
    pub to_client: IntCounter,
}

/// Copies client to server and server to client until both directions have closed, or until
/// one fails. A clean end of input in one direction shuts down the write side of the other.
pub async fn relay<CR, CW, SR, SW>(
    client: (&mut CR, &mut CW),
    server: (&mut SR, &mut SW),
    counters: &Counters,
) -> Outcome
where
    CR: AsyncRead + Unpin + ?Sized,
    CW: AsyncWrite + Unpin + ?Sized,
    SR: AsyncRead + Unpin + ?Sized,
    SW: AsyncWrite + Unpin + ?Sized,
{
    let (mut to_server, mut to_client) = (0u64, 0u64);
    let fault = {
        let up = pump(
            client.0,
            server.1,
            &mut to_server,
            &counters.to_server,
            Side::Client,
            Side::Server,
        );
        let down = pump(
            server.0,
            client.1,
            &mut to_client,
            &counters.to_client,
            Side::Server,
            Side::Client,
        );
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        let mut fault = None;
        while fault.is_none() && !(up_done && down_done) {
            tokio::select! {
                r = &mut up, if !up_done => { up_done = true; fault = r.err(); }
                r = &mut down, if !down_done => { down_done = true; fault = r.err(); }
            }
        }
        fault
    };
    Outcome {
        to_server,
        to_client,
        fault,
    }
}

async fn pump<R, W>(
    reader: &mut R,
    writer: &mut W,
    total: &mut u64,
    counter: &IntCounter,
    read_side: Side,
    write_side: Side,
) -> Result<(), (Side, io::Error)>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = reader.read(&mut buf).await.map_err(|e| (read_side, e))?;
        if n == 0 {
            writer.shutdown().await.map_err(|e| (write_side, e))?;
            return Ok(());
        }
        writer
            .write_all(&buf[..n])
            .await
            .map_err(|e| (write_side, e))?;
        *total += n as u64;
        counter.inc_by(n as u64);
    }
}

/// Closes a TCP connection with a reset (RST) instead of a FIN, so the peer sees the abort.
pub fn reset_tcp(stream: tokio::net::TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters() -> Counters {
        Counters {
            to_server: IntCounter::new("a", "a").unwrap(),
            to_client: IntCounter::new("b", "b").unwrap(),
        }
    }

    #[tokio::test]
    async fn half_close_passes_through_and_the_reply_still_flows() {
        let (mut app, proxy_client) = tokio::io::duplex(1024);
        let (proxy_server, mut upstream) = tokio::io::duplex(1024);
        let (mut cr, mut cw) = tokio::io::split(proxy_client);
        let (mut sr, mut sw) = tokio::io::split(proxy_server);
        let c = counters();
        let relay = relay((&mut cr, &mut cw), (&mut sr, &mut sw), &c);

        let peers = async {
            app.write_all(b"request").await.unwrap();
            app.shutdown().await.unwrap();
            let mut got = Vec::new();
            upstream.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"request", "the FIN reached the server after the data");
            upstream.write_all(b"reply after half-close").await.unwrap();
            upstream.shutdown().await.unwrap();
            let mut reply = Vec::new();
            app.read_to_end(&mut reply).await.unwrap();
            assert_eq!(reply, b"reply after half-close");
        };
        let (outcome, ()) = tokio::join!(relay, peers);
        assert!(outcome.fault.is_none());
        assert_eq!((outcome.to_server, outcome.to_client), (7, 22));
        assert_eq!(c.to_server.get(), 7);
    }

    /// A reader that fails like a socket that received a reset.
    struct Resetting;

    impl AsyncRead for Resetting {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
        }
    }

    #[tokio::test]
    async fn a_reset_ends_both_directions_and_names_the_side() {
        let (_upstream, proxy_server) = tokio::io::duplex(1024);
        let (mut sr, mut sw) = tokio::io::split(proxy_server);
        let mut sink = tokio::io::sink();
        let outcome = relay((&mut Resetting, &mut sink), (&mut sr, &mut sw), &counters()).await;
        let (side, error) = outcome.fault.expect("a fault");
        assert_eq!(side, Side::Client);
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
    }
}
