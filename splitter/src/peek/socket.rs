//! Peeking at a socket without consuming a byte and without spinning.
//!
//! tokio's readiness is edge-triggered and is cleared only by an operation that
//! returns `WouldBlock`; a `MSG_PEEK` that finds the same bytes again never does.
//! So after every peek that finds the request incomplete the readiness is cleared
//! by hand ([`AsyncFdReadyGuard::clear_ready`]); tokio keeps a wake-up that raced
//! with the clear, so the task sleeps until *new* bytes arrive and costs nothing
//! while a slow client dawdles.
//!
//! A read-closed readiness (the client shut its side) is never cleared by tokio,
//! so an incomplete request from a client that has shut its side ends the peek.
//!
//! The peek buffer is a per-thread scratch buffer, not a per-connection one: a
//! waiting connection holds no buffer at all.

use super::{http, proxy, tls, Peeked, Reject};
use std::cell::RefCell;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use switchyard_shared::config::Protocol;
use tokio::io::unix::AsyncFd;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Why peeking ended without a routing name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeekFailure {
    /// The bytes are not acceptable.
    Invalid(Reject),
    /// The client closed (or reset) before sending enough.
    Closed,
}

/// Peeks once, without waiting, and examines what is there.
///
/// Returns `NeedMore` when nothing (or not enough) has arrived yet.
pub fn peek_now(fd: BorrowedFd<'_>, protocol: Protocol, max: usize) -> Result<Peeked, PeekFailure> {
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        if buf.len() < max {
            buf.resize(max, 0);
        }
        use nix::sys::socket::{recv, MsgFlags};
        let n = match recv(
            fd.as_raw_fd(),
            &mut buf[..max],
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) => return Err(PeekFailure::Closed),
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {
                return Ok(Peeked::NeedMore)
            }
            Err(_) => return Err(PeekFailure::Closed),
        };
        let bytes = &buf[..n];
        let peeked = match protocol {
            Protocol::Tls => tls::peek_client_hello(bytes, max),
            Protocol::Http => http::peek_request(bytes, max),
        };
        match peeked {
            // The whole allowance is there and still no answer.
            Peeked::NeedMore if n >= max => Err(PeekFailure::Invalid(Reject::TooLarge)),
            Peeked::Invalid(reject) => Err(PeekFailure::Invalid(reject)),
            other => Ok(other),
        }
    })
}

/// Reads the PROXY protocol header at the start of the connection, exactly its
/// bytes and no more (the client's own bytes stay for [`peek_until_named`]);
/// returns the client address it carries (`None`: a `LOCAL` or `UNKNOWN`
/// header, the peer's own address stands). Waits without spinning; the caller
/// bounds the wait.
pub async fn take_proxy_header(
    socket: &AsyncFd<OwnedFd>,
) -> Result<Option<std::net::SocketAddr>, PeekFailure> {
    use nix::sys::socket::{recv, MsgFlags};
    loop {
        let mut guard = socket.readable().await.map_err(|_| PeekFailure::Closed)?;
        let fd = socket.get_ref().as_raw_fd();
        let mut buf = [0u8; proxy::V2_MAX];
        let n = match recv(fd, &mut buf, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return Err(PeekFailure::Closed),
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {
                guard.clear_ready();
                continue;
            }
            Err(_) => return Err(PeekFailure::Closed),
        };
        match proxy::parse(&buf[..n]) {
            proxy::ProxyHeader::Complete { len, source } => {
                // The header is in the socket buffer (just peeked): this read
                // takes exactly it.
                let mut header = [0u8; proxy::V2_MAX];
                return match recv(fd, &mut header[..len], MsgFlags::MSG_DONTWAIT) {
                    Ok(got) if got == len => Ok(source),
                    _ => Err(PeekFailure::Closed),
                };
            }
            proxy::ProxyHeader::Incomplete if guard.ready().is_read_closed() => {
                return Err(PeekFailure::Closed)
            }
            proxy::ProxyHeader::Incomplete => guard.clear_ready(),
            proxy::ProxyHeader::Invalid(_) => {
                return Err(PeekFailure::Invalid(Reject::BadProxyHeader))
            }
        }
    }
}

/// Waits, without spinning, until the connection says where it goes.
///
/// The caller bounds the wait with `peek_timeout`.
pub async fn peek_until_named(
    socket: &AsyncFd<OwnedFd>,
    protocol: Protocol,
    max: usize,
) -> Result<Option<String>, PeekFailure> {
    loop {
        let mut guard = socket.readable().await.map_err(|_| PeekFailure::Closed)?;
        match peek_now(socket.get_ref().as_fd(), protocol, max)? {
            Peeked::Name(name) => return Ok(name),
            // The client shut its side with the request incomplete: nothing
            // more will come, and tokio never clears a read-closed readiness,
            // so waiting again would spin.
            Peeked::NeedMore if guard.ready().is_read_closed() => return Err(PeekFailure::Closed),
            Peeked::NeedMore => guard.clear_ready(),
            Peeked::Invalid(reject) => return Err(PeekFailure::Invalid(reject)),
        }
    }
}
