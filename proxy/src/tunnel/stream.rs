//! One tunnel stream, whichever transport carries it: an HTTP/2 CONNECT stream on a TCP tunnel
//! or a bidirectional stream on a QUIC tunnel.

use std::fmt;

use tokio::io::{AsyncRead, AsyncWrite};

use super::h2io::{H2Reader, H2Writer};
use super::preamble::CONNECT_ERROR;

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
pub enum TunnelStream {
    /// An HTTP/2 CONNECT stream.
    H2(H2Reader, H2Writer),
    /// A QUIC bidirectional stream (after its preamble).
    Quic(quinn::RecvStream, quinn::SendStream),
}

impl TunnelStream {
    /// Which transport carries it.
    pub fn transport(&self) -> Transport {
        match self {
            Self::H2(..) => Transport::Tcp,
            Self::Quic(..) => Transport::Quic,
        }
    }

    /// The reading and writing halves, for the relay.
    pub fn halves(&mut self) -> (&mut dyn TunnelRead, &mut dyn TunnelWrite) {
        match self {
            Self::H2(r, w) => (r, w),
            Self::Quic(r, w) => (r, w),
        }
    }

    /// Aborts the stream in both directions: the peer proxy resets its TCP connection.
    pub fn reset(&mut self) {
        match self {
            Self::H2(_, w) => w.reset(),
            Self::Quic(r, w) => {
                let code = quinn::VarInt::from_u32(CONNECT_ERROR);
                let _ = w.reset(code);
                let _ = r.stop(code);
            }
        }
    }
}
