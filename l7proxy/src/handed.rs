//! A socket handed over by the splitter, dressed as Pingora dresses the sockets
//! its own listener accepts.
//!
//! Pingora's listener sets `TCP_NODELAY` and gives every accepted stream a 64 KiB
//! read buffer and a 1460-byte write buffer (`Stream::set_buffer`, crate-private in
//! Pingora 0.9.1). `Stream::from(TcpStream)` does neither, and without them the
//! two-tier path was far slower than the single tier (Nagle against delayed ACKs
//! without `TCP_NODELAY`; bench/RESULTS.md). [`HandedStream`] adds the same buffering
//! through the public API: it wraps the L4 stream in tokio's `BufStream` with
//! Pingora's default sizes and delegates Pingora's digest traits to it.

use async_trait::async_trait;
use pingora::protocols::l4::stream::{
    Stream as L4Stream, DEFAULT_L4_READ_BUFFER_SIZE, DEFAULT_L4_WRITE_BUFFER_SIZE,
};
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, SocketDigest, TimingDigest,
};
use pingora::protocols::{Peek, Shutdown, Ssl, UniqueID, UniqueIDType};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufStream, ReadBuf};

/// A handed-off TCP connection with Pingora's listener settings applied.
#[derive(Debug)]
pub struct HandedStream {
    inner: BufStream<L4Stream>,
}

impl HandedStream {
    /// Takes ownership of a received socket.
    ///
    /// Checks that it is a connected TCP socket, sets it non-blocking (the flag
    /// lives on the open file description shared with the splitter, so it is set
    /// explicitly rather than assumed) and `TCP_NODELAY`, and records its socket
    /// digest so `getpeername` gives Pingora the real client address, or
    /// `client` when the splitter read it from a PROXY protocol header.
    pub fn from_fd(fd: OwnedFd, client: Option<std::net::SocketAddr>) -> io::Result<HandedStream> {
        check_tcp_socket(&fd)?;
        let raw = fd.as_raw_fd();
        let std_stream = std::net::TcpStream::from(fd);
        std_stream.set_nonblocking(true)?;
        let tcp = tokio::net::TcpStream::from_std(std_stream)?;
        let mut l4 = L4Stream::from(tcp);
        l4.set_nodelay()
            .map_err(|e| io::Error::other(format!("TCP_NODELAY: {e}")))?;
        let digest = SocketDigest::from_raw_fd(raw);
        if let Some(client) = client {
            let _ = digest
                .peer_addr
                .set(Some(pingora::protocols::l4::socket::SocketAddr::Inet(
                    client,
                )));
        }
        l4.set_socket_digest(digest);
        Ok(HandedStream {
            inner: BufStream::with_capacity(
                DEFAULT_L4_READ_BUFFER_SIZE,
                DEFAULT_L4_WRITE_BUFFER_SIZE,
                l4,
            ),
        })
    }

    fn l4(&self) -> &L4Stream {
        self.inner.get_ref()
    }
}

/// One system call (`SO_PROTOCOL`) tells a TCP socket from anything else
/// (UDP, Unix, raw, or not a socket at all).
fn check_tcp_socket(fd: &OwnedFd) -> io::Result<()> {
    match socket2::SockRef::from(fd).protocol()? {
        Some(socket2::Protocol::TCP) => Ok(()),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "received descriptor is not a TCP socket (protocol {})",
                other.map_or(0, i32::from)
            ),
        )),
    }
}

impl AsyncRead for HandedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for HandedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
}

#[async_trait]
impl Shutdown for HandedStream {
    async fn shutdown(&mut self) {
        // Flushes the write buffer first.
        let _ = AsyncWriteExt::shutdown(&mut self.inner).await;
    }
}

impl UniqueID for HandedStream {
    fn id(&self) -> UniqueIDType {
        self.l4().id()
    }
}

impl Ssl for HandedStream {}

// Peeking past the read buffer would skip buffered bytes; say it is unsupported
// (Pingora then does not use it: h2c detection is off for these streams).
impl Peek for HandedStream {}

impl GetTimingDigest for HandedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.l4().get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.l4().get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.l4().get_write_pending_time()
    }
}

impl GetProxyDigest for HandedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.l4().get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.get_mut().set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HandedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.l4().get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.get_mut().set_socket_digest(digest)
    }
}
