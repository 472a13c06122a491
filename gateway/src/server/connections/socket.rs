//! A connection's socket: it tells the watchdog when a request head starts arriving, and
//! rewrites the empty error answers hyper writes by itself into JSON ones.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::Activity;

/// The socket, telling the watchdog when a request head starts arriving, and turning the
/// empty error answers hyper writes by itself (400, 414, 431 for a head it cannot parse)
/// into JSON ones like every other error.
pub(super) struct Watched {
    pub(super) inner: TcpStream,
    pub(super) activity: Arc<Activity>,
    pub(super) max_header_size: u64,
    /// A JSON answer being written in place of hyper's, and how much of it is written.
    pub(super) rewriting: Option<(Vec<u8>, usize)>,
}

/// The JSON answer for one of hyper's own HTTP/1 error heads (`HTTP/1.1 431 ...` with
/// `content-length: 0`; sluice's own errors always have a body), or `None` for anything else.
pub(super) fn json_for_hyper_error(head: &[u8], max_header_size: u64) -> Option<Vec<u8>> {
    // Every response head passes through here: refuse anything but hyper's three error
    // statuses on the raw bytes first (profiled: a UTF-8 check and a lower-cased copy of
    // every head, ~0.5 % of sluice's CPU, issue 20's share of the connection handling).
    if head.len() > 512
        || !matches!(
            head.get(..12),
            Some(b"HTTP/1.1 400" | b"HTTP/1.1 414" | b"HTTP/1.1 431")
        )
        || !head.ends_with(b"\r\n\r\n")
    {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?;
    if !text
        .to_ascii_lowercase()
        .contains("\r\ncontent-length: 0\r\n")
    {
        return None;
    }
    let (reason, message) = match status {
        "400" => (
            "Bad Request",
            "malformed HTTP request: the request line or a header could not be parsed".to_string(),
        ),
        "414" => (
            "URI Too Long",
            "the request URI is too long (at most 65534 bytes)".to_string(),
        ),
        "431" => (
            "Request Header Fields Too Large",
            format!(
                "the request headers are too large: at most 100 headers and {max_header_size} \
                 bytes in all (server.connections.max_header_size)"
            ),
        ),
        _ => return None,
    };
    let body = serde_json::json!({ "error": message }).to_string();
    Some(
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.rewriting.is_none()
            && let Some(json) = json_for_hyper_error(buf, this.max_header_size)
        {
            this.rewriting = Some((json, 0));
        }
        let Some((json, written)) = &mut this.rewriting else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        // hyper retries the same buffer until it is taken whole: write ours, then say its
        // head was written.
        while *written < json.len() {
            match Pin::new(&mut this.inner).poll_write(cx, &json[*written..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => *written += n,
                other => return other,
            }
        }
        this.rewriting = None;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        // An error head comes alone; poll_write rewrites it (and only it).
        if let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && (self.rewriting.is_some()
                || json_for_hyper_error(first, self.max_header_size).is_some())
        {
            let first: &[u8] = first;
            return self.poll_write(cx, first);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
