//! The first request head of a connection, read before HTTP serving starts, so that a
//! connection that never finishes its head is dropped on time, and a head that is too large
//! or not HTTP gets the JSON error body rather than the HTTP library's bare status.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::StatusCode;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::protocol::http_error_bytes;

/// The longest request target the HTTP library accepts.
pub(super) const MAX_URI_BYTES: usize = u16::MAX as usize - 1;
/// Headers one request may carry.
const MAX_HEADERS: usize = 100;
/// First read size: an upgrade request's head is a few hundred bytes.
const FIRST_READ: usize = 1024;

/// What reading the first request head found.
#[derive(Debug)]
pub(super) enum Head {
    /// A complete head, and whatever followed it, to be served.
    Complete(Bytes),
    /// A head the gateway answers itself, with this status.
    Refused(Refusal),
    /// The peer closed before sending a complete head.
    Closed,
}

/// Why a head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The request line is longer than the HTTP library accepts or the head allows.
    UriTooLong,
    /// The head is over `GATEWAY_MAX_HEADER_BYTES`, or has too many headers.
    HeadersTooLarge,
    /// Not an HTTP/1 request.
    Malformed,
}

impl Refusal {
    /// The response the client is sent before the connection closes.
    pub(super) fn response(self) -> Bytes {
        match self {
            Self::UriTooLong => http_error_bytes(
                StatusCode::URI_TOO_LONG,
                "uri_too_long",
                "the request line is too long: send long channel lists in several requests",
            ),
            Self::HeadersTooLarge => http_error_bytes(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                "the request headers are too large (see GATEWAY_MAX_HEADER_BYTES)",
            ),
            Self::Malformed => http_error_bytes(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "not an HTTP/1.1 request",
            ),
        }
    }
}

/// Reads until the first request head is complete, at most `max_bytes` of it. Only reads that
/// end a line are parsed, so a head trickled byte by byte costs no more than one sent at once.
pub(super) async fn read_head<S: AsyncRead + Unpin>(
    io: &mut S,
    max_bytes: usize,
) -> io::Result<Head> {
    let mut buffer = BytesMut::with_capacity(FIRST_READ.min(max_bytes));
    loop {
        let before = buffer.len();
        if before > max_bytes {
            return Ok(Head::Refused(too_large(&buffer)));
        }
        if buffer.capacity() == before {
            buffer.reserve(before.max(FIRST_READ).min(max_bytes + 1 - before));
        }
        let read = io.read_buf(&mut buffer).await?;
        if read == 0 {
            return Ok(Head::Closed);
        }
        if !buffer[before..].contains(&b'\n') {
            continue;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match httparse::Request::new(&mut headers).parse(&buffer) {
            Ok(httparse::Status::Complete(length))
                if length > max_bytes || line_length(&buffer) > MAX_URI_BYTES =>
            {
                return Ok(Head::Refused(too_large(&buffer[..length])));
            }
            Ok(httparse::Status::Complete(_)) => return Ok(Head::Complete(buffer.freeze())),
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Ok(Head::Refused(Refusal::HeadersTooLarge));
            }
            Err(_) => return Ok(Head::Refused(Refusal::Malformed)),
        }
    }
}

/// The length of the request line, or of the whole buffer while it has no line end.
fn line_length(head: &[u8]) -> usize {
    head.iter()
        .position(|&byte| byte == b'\n')
        .unwrap_or(head.len())
}

/// Which part of a head over a limit is to blame.
fn too_large(head: &[u8]) -> Refusal {
    if line_length(head) > MAX_URI_BYTES || !head.contains(&b'\n') {
        Refusal::UriTooLong
    } else {
        Refusal::HeadersTooLarge
    }
}

/// Sends a refusal and closes the connection, reading (and dropping) what the client still
/// sends for a moment, so that the response is not lost to a reset caused by unread input.
/// Writing the response and lingering take at most [`super::LINGER`] each.
pub(super) async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S, response: Bytes) {
    let sent = async { io.write_all(&response).await.and(io.shutdown().await) };
    if !matches!(tokio::time::timeout(super::LINGER, sent).await, Ok(Ok(()))) {
        return;
    }
    let mut scratch = [0u8; 4096];
    let linger = async { while matches!(io.read(&mut scratch).await, Ok(read) if read > 0) {} };
    let _ = tokio::time::timeout(super::LINGER, linger).await;
}

/// A connection whose first bytes were already read: they are read again first.
pub(super) struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, to be read after `prefix`.
    pub(super) fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let take = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..take]);
        self.prefix.advance(take);
        if self.prefix.is_empty() {
            // Frees the head's buffer for the rest of a long-lived connection.
            self.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::AsyncWriteExt;

    use super::*;

    async fn head_of(chunks: &[&[u8]], max_bytes: usize) -> Head {
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        for chunk in chunks {
            client.write_all(chunk).await.unwrap();
        }
        drop(client);
        read_head(&mut server, max_bytes).await.unwrap()
    }

    #[tokio::test]
    async fn a_head_sent_in_pieces_is_complete_with_what_follows() {
        let head = head_of(
            &[b"GET /ws HTTP/1.1\r\nHo", b"st: a\r\n", b"\r\nbody"],
            8192,
        )
        .await;
        let Head::Complete(bytes) = head else {
            panic!("{head:?}")
        };
        assert_eq!(&bytes[..], b"GET /ws HTTP/1.1\r\nHost: a\r\n\r\nbody");
    }

    #[tokio::test]
    async fn a_long_request_line_is_uri_too_long_and_long_headers_are_too_large() {
        let long_uri = format!("GET /ws?token={} HTTP/1.1\r\n\r\n", "a".repeat(100_000));
        let head = head_of(&[long_uri.as_bytes()], 200_000).await;
        assert!(
            matches!(head, Head::Refused(Refusal::UriTooLong)),
            "{head:?}"
        );
        let head = head_of(&[long_uri.as_bytes()], 16_384).await;
        assert!(
            matches!(head, Head::Refused(Refusal::UriTooLong)),
            "{head:?}"
        );
        let long_header = format!("GET /ws HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        let head = head_of(&[long_header.as_bytes()], 16_384).await;
        assert!(
            matches!(head, Head::Refused(Refusal::HeadersTooLarge)),
            "{head:?}"
        );
    }

    #[tokio::test]
    async fn garbage_is_malformed_and_an_early_close_is_closed() {
        let head = head_of(&[b"\x16\x03\x01 not http\r\n"], 8192).await;
        assert!(
            matches!(head, Head::Refused(Refusal::Malformed)),
            "{head:?}"
        );
        let head = head_of(&[b"GET /ws HTTP/1.1\r\n"], 8192).await;
        assert!(matches!(head, Head::Closed), "{head:?}");
    }

    #[tokio::test]
    async fn too_many_headers_are_too_large() {
        let mut head = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            head.push_str(&format!("x-{i}: 1\r\n"));
        }
        head.push_str("\r\n");
        let head = head_of(&[head.as_bytes()], 65_536).await;
        assert!(
            matches!(head, Head::Refused(Refusal::HeadersTooLarge)),
            "{head:?}"
        );
    }

    #[tokio::test]
    async fn prefixed_reads_the_prefix_then_the_stream() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut io = Prefixed::new(Bytes::from_static(b"hello"), server);
        let mut all = String::new();
        io.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}
