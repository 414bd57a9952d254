//! One tunnel stream, whichever transport carries it: an HTTP/2 CONNECT stream on a TCP tunnel
//! or a bidirectional stream on a QUIC tunnel.

use std::fmt;

use tokio::io::{AsyncRead, AsyncWrite};

use super::h2io::{H2Reader, H2Writer};
use super::preamble::CONNECT_ERROR;
use super::usage::Lease;

/// The transport of a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// TLS over TCP, HTTP/2 CONNECT.
    Tcp,
    /// QUIC, one bidirectional stream per connection.
    Quic,
}

impl Transport {
    /// `tcp` or `quic`, for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Quic => "quic",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A readable half of a tunnel stream.
pub trait TunnelRead: AsyncRead + Unpin + Send {}
impl<T: AsyncRead + Unpin + Send> TunnelRead for T {}

/// A writable half of a tunnel stream.
pub trait TunnelWrite: AsyncWrite + Unpin + Send {}
impl<T: AsyncWrite + Unpin + Send> TunnelWrite for T {}

/// An open tunnel stream.
pub struct TunnelStream {
    io: Io,
    /// Counts the stream on its pooled connection (outbound streams only).
    _lease: Option<Lease>,
}

enum Io {
    /// An HTTP/2 CONNECT stream.
    H2(H2Reader, H2Writer),
    /// A QUIC bidirectional stream (after its preamble).
    Quic(quinn::RecvStream, quinn::SendStream),
}

impl TunnelStream {
    /// An HTTP/2 CONNECT stream.
    pub fn h2(reader: H2Reader, writer: H2Writer) -> Self {
        Self {
            io: Io::H2(reader, writer),
            _lease: None,
        }
    }

    /// A QUIC bidirectional stream whose preamble has been exchanged.
    pub fn quic(recv: quinn::RecvStream, send: quinn::SendStream) -> Self {
        Self {
            io: Io::Quic(recv, send),
            _lease: None,
        }
    }

    /// The stream, counted on its pooled connection while it lives.
    pub fn leased(mut self, lease: Lease) -> Self {
        self._lease = Some(lease);
        self
    }

    /// Which transport carries it.
    pub fn transport(&self) -> Transport {
        match self.io {
            Io::H2(..) => Transport::Tcp,
            Io::Quic(..) => Transport::Quic,
        }
    }

    /// The reading and writing halves, for the relay.
    pub fn halves(&mut self) -> (&mut dyn TunnelRead, &mut dyn TunnelWrite) {
        match &mut self.io {
            Io::H2(r, w) => (r, w),
            Io::Quic(r, w) => (r, w),
        }
    }

    /// Aborts the stream in both directions: the peer proxy resets its TCP connection.
    pub fn reset(&mut self) {
        match &mut self.io {
            Io::H2(_, w) => w.reset(),
            Io::Quic(r, w) => {
                let code = quinn::VarInt::from_u32(CONNECT_ERROR);
                let _ = w.reset(code);
                let _ = r.stop(code);
            }
        }
    }
}
