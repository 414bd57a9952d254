//! The QUIC tunnel's stream preamble: what a client proxy writes at the start of each
//! bidirectional stream to say where the stream goes, and the one-frame reply of the server.
//!
//! Request, client to server:
//!
//! ```text
//! "EWT1"                      4 bytes, magic and version
//! u8 length, target           "ip:port" of the destination pod, UTF-8
//! u8 length, source           "ip:port" of the pod that opened the connection, UTF-8
//! ```
//!
//! Reply, server to client, once it has connected to the pod or refused:
//!
//! ```text
//! u8 status                   0 connected; see [`Status`] for the refusals
//! u16 length (big endian), message   UTF-8, why it refused (empty when connected)
//! ```
//!
//! After a reply of 0 the stream carries the connection's bytes both ways; FIN is the half-close
//! and RESET_STREAM/STOP_SENDING with [`CONNECT_ERROR`] is the reset. HTTP/3 CONNECT would carry
//! the same two addresses inside HEADERS and every byte inside DATA frames, and needs QPACK and a
//! control stream per connection, for a tunnel that only ever joins two edgeward proxies; the
//! preamble costs a few bytes once per stream and leaves the stream's own FIN and reset codes
//! visible to the relay.

use std::net::SocketAddr;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The magic that opens every request.
pub const MAGIC: &[u8; 4] = b"EWT1";

/// The application error code of a reset tunnel stream (as HTTP/2's CONNECT_ERROR).
pub const CONNECT_ERROR: u32 = 0x0a;

/// Longest message accepted in a reply.
const MAX_MESSAGE: usize = 1024;

/// Why a preamble could not be read.
#[derive(Debug, Error)]
pub enum PreambleError {
    /// The stream does not start with the magic.
    #[error("the stream does not start with the EWT1 preamble")]
    BadMagic,
    /// An address field is not `ip:port`.
    #[error("the preamble's {field} {value:?} is not ip:port")]
    BadAddress {
        /// target or source.
        field: &'static str,
        /// What was sent.
        value: String,
    },
    /// The reply's status byte is unknown.
    #[error("unknown reply status {0}")]
    BadStatus(u8),
    /// The reply's message is too long or not UTF-8.
    #[error("malformed reply message")]
    BadMessage,
    /// The stream ended or failed while reading.
    #[error("the stream ended inside the preamble: {0}")]
    Io(#[from] std::io::Error),
}

/// A request: where the stream goes and where it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The destination pod.
    pub target: SocketAddr,
    /// The pod that opened the connection.
    pub source: SocketAddr,
}

/// The outcome the server reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Connected to the pod: bytes follow.
    Connected = 0,
    /// The request was malformed.
    BadRequest = 1,
    /// The target is not a workload on the server's node.
    NotLocalWorkload = 2,
    /// The target's identity is not the one the tunnel was opened for.
    IdentityMismatch = 3,
    /// The pod refused or could not be reached.
    UpstreamUnreachable = 4,
    /// The pod did not answer in time.
    UpstreamTimeout = 5,
    /// Authorization policy denied the connection.
    Denied = 6,
}

impl Status {
    /// A short label for metrics and the access log.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::BadRequest => "bad_request",
            Self::NotLocalWorkload => "not_local_workload",
            Self::IdentityMismatch => "identity_mismatch",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::Denied => "denied_by_policy",
        }
    }

    /// The HTTP status that says the same on the HTTP/2 tunnel.
    pub fn http(self) -> http::StatusCode {
        use http::StatusCode as H;
        match self {
            Self::Connected => H::OK,
            Self::BadRequest => H::BAD_REQUEST,
            Self::NotLocalWorkload => H::NOT_FOUND,
            Self::IdentityMismatch => H::MISDIRECTED_REQUEST,
            Self::UpstreamUnreachable => H::BAD_GATEWAY,
            Self::UpstreamTimeout => H::GATEWAY_TIMEOUT,
            Self::Denied => H::FORBIDDEN,
        }
    }

    /// The status an HTTP/2 tunnel reply stands for (anything unknown is a bad request).
    pub fn from_http(code: http::StatusCode) -> Self {
        let all = [
            Self::Connected,
            Self::NotLocalWorkload,
            Self::IdentityMismatch,
            Self::UpstreamUnreachable,
            Self::UpstreamTimeout,
            Self::Denied,
        ];
        all.into_iter()
            .find(|s| s.http() == code)
            .unwrap_or(Self::BadRequest)
    }

    fn from_byte(b: u8) -> Result<Self, PreambleError> {
        Ok(match b {
            0 => Self::Connected,
            1 => Self::BadRequest,
            2 => Self::NotLocalWorkload,
            3 => Self::IdentityMismatch,
            4 => Self::UpstreamUnreachable,
            5 => Self::UpstreamTimeout,
            6 => Self::Denied,
            other => return Err(PreambleError::BadStatus(other)),
        })
    }
}

/// Writes a request.
pub async fn write_request<W: AsyncWrite + Unpin>(w: &mut W, req: &Request) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(MAGIC);
    for addr in [req.target, req.source] {
        let text = addr.to_string();
        buf.push(text.len() as u8);
        buf.extend_from_slice(text.as_bytes());
    }
    w.write_all(&buf).await
}

/// Reads a request.
pub async fn read_request<R: AsyncRead + Unpin>(r: &mut R) -> Result<Request, PreambleError> {
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic).await?;
    if &magic != MAGIC {
        return Err(PreambleError::BadMagic);
    }
    let target = read_addr(r, "target").await?;
    let source = read_addr(r, "source").await?;
    Ok(Request { target, source })
}

async fn read_addr<R: AsyncRead + Unpin>(
    r: &mut R,
    field: &'static str,
) -> Result<SocketAddr, PreambleError> {
    let len = r.read_u8().await? as usize;
    let mut text = vec![0u8; len];
    r.read_exact(&mut text).await?;
    let value = String::from_utf8_lossy(&text).into_owned();
    value
        .parse()
        .map_err(|_| PreambleError::BadAddress { field, value })
}

/// Writes a reply.
pub async fn write_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: Status,
    message: &str,
) -> std::io::Result<()> {
    let message = &message.as_bytes()[..message.len().min(MAX_MESSAGE)];
    let mut buf = Vec::with_capacity(3 + message.len());
    buf.push(status as u8);
    buf.extend_from_slice(&(message.len() as u16).to_be_bytes());
    buf.extend_from_slice(message);
    w.write_all(&buf).await
}

/// Reads a reply.
pub async fn read_reply<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<(Status, String), PreambleError> {
    let status = Status::from_byte(r.read_u8().await?)?;
    let len = r.read_u16().await? as usize;
    if len > MAX_MESSAGE {
        return Err(PreambleError::BadMessage);
    }
    let mut message = vec![0u8; len];
    r.read_exact(&mut message).await?;
    let message = String::from_utf8(message).map_err(|_| PreambleError::BadMessage)?;
    Ok((status, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn request_and_reply_round_trip() {
        let req = Request {
            target: "198.18.2.10:50051".parse().unwrap(),
            source: "[fd00::1]:40000".parse().unwrap(),
        };
        let mut buf = Vec::new();
        write_request(&mut buf, &req).await.unwrap();
        write_reply(&mut buf, Status::Denied, "policy x")
            .await
            .unwrap();
        let mut r = buf.as_slice();
        assert_eq!(read_request(&mut r).await.unwrap(), req);
        let (status, message) = read_reply(&mut r).await.unwrap();
        assert_eq!((status, message.as_str()), (Status::Denied, "policy x"));
        assert!(r.is_empty());
    }

    #[tokio::test]
    async fn garbage_is_refused_with_a_reason() {
        let mut r: &[u8] = b"GET / HTTP/1.1\r\n";
        assert!(matches!(
            read_request(&mut r).await,
            Err(PreambleError::BadMagic)
        ));
        let mut r: &[u8] = b"EWT1\x03abc\x00";
        assert!(matches!(
            read_request(&mut r).await,
            Err(PreambleError::BadAddress {
                field: "target",
                ..
            })
        ));
        let mut r: &[u8] = b"EWT1\x20short";
        assert!(matches!(
            read_request(&mut r).await,
            Err(PreambleError::Io(_))
        ));
        let mut r: &[u8] = b"\x09\x00\x00";
        assert!(matches!(
            read_reply(&mut r).await,
            Err(PreambleError::BadStatus(9))
        ));
        let mut r: &[u8] = b"\x01\xff\xff";
        assert!(matches!(
            read_reply(&mut r).await,
            Err(PreambleError::BadMessage)
        ));
    }
}
