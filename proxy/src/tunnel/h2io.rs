//! Byte-stream views of one HTTP/2 CONNECT stream, so the relay treats a tunnel stream like a
//! socket: DATA frames are the bytes, END_STREAM is the FIN, and RST_STREAM is the reset.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The receiving half of a tunnel stream.
pub struct H2Reader {
    recv: RecvStream,
    pending: Bytes,
}

impl H2Reader {
    /// Wraps the body of a CONNECT request or response.
    pub fn new(recv: RecvStream) -> Self {
        Self {
            recv,
            pending: Bytes::new(),
        }
    }
}

impl AsyncRead for H2Reader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.pending.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => {
                    // The bytes are ours now: let the peer send as much again.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.pending = data;
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
        let n = buf.remaining().min(self.pending.len());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// The sending half of a tunnel stream.
pub struct H2Writer {
    send: SendStream<Bytes>,
    finished: bool,
}

impl H2Writer {
    /// Wraps the send side of a CONNECT request or response.
    pub fn new(send: SendStream<Bytes>) -> Self {
        Self {
            send,
            finished: false,
        }
    }

    /// Aborts the stream with RST_STREAM(CONNECT_ERROR): the peer resets its TCP connection.
    pub fn reset(&mut self) {
        self.send.send_reset(Reason::CONNECT_ERROR);
    }

    fn poll_send_capacity(
        &mut self,
        cx: &mut Context<'_>,
        wanted: usize,
    ) -> Poll<io::Result<usize>> {
        self.send.reserve_capacity(wanted);
        loop {
            // Capacity already assigned does not wake poll_capacity again: use it first.
            let available = self.send.capacity();
            if available > 0 {
                return Poll::Ready(Ok(available));
            }
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => return Poll::Ready(Err(self.closed_error(cx))),
            }
        }
    }

    fn closed_error(&mut self, cx: &mut Context<'_>) -> io::Error {
        match self.send.poll_reset(cx) {
            Poll::Ready(Ok(reason)) => reset_error(reason),
            Poll::Ready(Err(e)) => to_io(e),
            Poll::Pending => io::Error::new(io::ErrorKind::BrokenPipe, "tunnel stream closed"),
        }
    }
}

impl AsyncWrite for H2Writer {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(self.poll_send_capacity(cx, buf.len()))?.min(buf.len());
        self.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.finished {
            self.finished = true;
            self.send.send_data(Bytes::new(), true).map_err(to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

/// A stream reset by the peer reads as a TCP reset; anything else as a broken connection.
fn to_io(e: h2::Error) -> io::Error {
    match e.reason() {
        Some(reason) if e.is_reset() => reset_error(reason),
        _ if e.is_io() => e
            .into_io()
            .unwrap_or_else(|| io::ErrorKind::BrokenPipe.into()),
        _ => io::Error::new(io::ErrorKind::ConnectionAborted, e),
    }
}

fn reset_error(reason: Reason) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        format!("tunnel stream reset by the peer ({reason})"),
    )
}
