//! The handoff wire protocol between the splitter and its l7proxy processes.
//!
//! Transport: one `SOCK_SEQPACKET` Unix socket per l7proxy process, so every
//! message is one datagram and message boundaries survive. Each message starts
//! with the protocol version and a kind byte; integers are little-endian.
//!
//! | kind | direction | body |
//! | --- | --- | --- |
//! | `Hello` (1) | l7proxy → splitter | pid `u32`, tenant name (`u8` length + bytes) |
//! | `Ready` (2) | l7proxy → splitter | — |
//! | `Ack` (3) | l7proxy → splitter | `up_to_seq` `u64`: every `Conn` with `seq ≤ up_to_seq` is owned by the l7proxy |
//! | `Draining` (4) | l7proxy → splitter | — |
//! | `Stats` (6) | l7proxy → splitter | `u32` length + JSON of [`TenantStats`]: the process's request statistics, about every second |
//! | `Rejoin` (5) | l7proxy → splitter | as `Hello`: the first message of a process the splitter spawned, re-attaching on `handoff.sock` after its splitter went away (crash or upgrade) |
//! | `Conn` (16) | splitter → l7proxy | seq `u64`, protocol `u8`, local port `u16`, accepted-at µs since the epoch `u64`, server name (`u8` length + bytes, empty when none), client address (`u8` family 0/4/6, then the address and a `u16` port: what a PROXY header gave); exactly one fd in `SCM_RIGHTS` |
//! | `Drain` (17) | splitter → l7proxy | — |
//! | `HostsChanged` (18) | splitter → l7proxy | — (re-read the tenants' names from the host file, and changed certificate files) |
//! | `TenantTotals` (19) | splitter → l7proxy | as `Stats`: the sum over the tenant's live processes, for the tenant's own `/metrics` |
//!
//! Receivers use `MSG_CMSG_CLOEXEC`, treat `MSG_TRUNC` as an error and close
//! every descriptor they were passed but cannot use (dropping the [`OwnedFd`]s
//! in [`Received`] does that). `MSG_CTRUNC` (descriptors lost, as at the
//! receiver's open-file limit) is an error too, except in [`recv_into`], which
//! still returns the message, marked [`Received::fds_lost`], so that a process
//! at its limit can acknowledge a `Conn` whose descriptor it never got.

use nix::sys::socket::{
    sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
};
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The protocol version this build speaks. A peer speaking another one is refused.
pub const PROTOCOL_VERSION: u8 = 3;

/// The environment variable through which a spawned l7proxy learns the number of
/// its inherited handoff descriptor.
pub const HANDOFF_FD_ENV: &str = "SWITCHYARD_HANDOFF_FD";

/// Fault injection for tests: when this variable names a file that exists, the
/// l7proxy that next receives a `Conn` deletes the file and dies at once, before
/// acknowledging it (so the splitter must hand the connection to another process).
/// Only binaries built with the `fault-injection` feature (of `splitter`, which
/// passes it on, and of `l7proxy`, which acts on it) know it; `./test.sh`
/// builds them so.
pub const FAULT_DIE_ON_CONN_ENV: &str = "SWITCHYARD_FAULT_DIE_ON_CONN";

/// Largest encoded message: a `Stats` or `TenantTotals` with its statistics
/// (a `Conn` with a 255-byte server name and an IPv6 client address is 298
/// bytes). Statistics that do not fit are not sent.
pub const MAX_MESSAGE_LEN: usize = 16 * 1024;

use crate::tenant_stats::TenantStats;

pub use crate::config::Protocol;

/// One message of the protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// First message of an l7proxy: who it is.
    Hello {
        /// Tenant the process serves.
        tenant: String,
        /// Its process id.
        pid: u32,
    },
    /// First message of a process that a splitter spawned and that lost it
    /// (crash or upgrade): it asks to be adopted into the pool, not attached
    /// as a hand-started process.
    Rejoin {
        /// Tenant the process serves.
        tenant: String,
        /// Its process id (not believed: the kernel's `SO_PEERCRED` is used).
        pid: u32,
    },
    /// The process accepts connections.
    Ready,
    /// Every `Conn` up to and including `up_to_seq` has been received.
    Ack {
        /// Highest sequence number received.
        up_to_seq: u64,
    },
    /// The process is draining and wants no new connections.
    Draining,
    /// A connection; its socket travels in the same datagram.
    Conn(ConnMeta),
    /// Stop taking connections, finish in-flight work and exit.
    Drain,
    /// The host file was reloaded: read the tenants' names again (for the 421
    /// check), and the certificate files if they changed.
    HostsChanged,
    /// A process's request statistics (its counters since it started).
    Stats(Box<TenantStats>),
    /// The sum of the tenant's live processes' statistics.
    TenantTotals(Box<TenantStats>),
}

/// The description that accompanies a handed-off socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnMeta {
    /// Per-process sequence number, starting at 1.
    pub seq: u64,
    /// What the splitter found at the start of the stream.
    pub protocol: Protocol,
    /// The SNI or `Host` the connection was routed by (normalised), if any.
    pub server_name: Option<String>,
    /// Port of the listener that accepted it.
    pub local_port: u16,
    /// When the splitter accepted it, microseconds since the Unix epoch.
    pub accepted_at_us: u64,
    /// The client's address from a PROXY protocol header, when the listener
    /// takes one (`None`: the socket's own peer is the client).
    pub client_addr: Option<std::net::SocketAddr>,
}

/// Why a datagram could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The peer speaks another protocol version.
    Version {
        /// The version in the message.
        got: u8,
    },
    /// The message ended before its fields did.
    Truncated,
    /// An unknown kind byte.
    UnknownKind(u8),
    /// A name that is not UTF-8.
    BadText,
    /// An unknown protocol byte in a `Conn`.
    UnknownProtocol(u8),
    /// A client address family other than none, IPv4 or IPv6.
    UnknownAddressFamily(u8),
    /// Statistics that do not parse, or exceed the bounds.
    BadStats,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Version { got } => write!(
                f,
                "handoff protocol version {got} received, this build speaks {PROTOCOL_VERSION}: \
                 run the splitter and l7proxy from the same release"
            ),
            DecodeError::Truncated => f.write_str("handoff message is truncated"),
            DecodeError::UnknownKind(kind) => write!(f, "unknown handoff message kind {kind}"),
            DecodeError::BadText => f.write_str("handoff message carries a name that is not UTF-8"),
            DecodeError::UnknownProtocol(p) => write!(f, "unknown connection protocol {p}"),
            DecodeError::UnknownAddressFamily(a) => write!(f, "unknown client address family {a}"),
            DecodeError::BadStats => {
                f.write_str("statistics that do not parse or exceed the bounds")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

impl Message {
    /// Appends the encoding of this message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(PROTOCOL_VERSION);
        match self {
            Message::Hello { tenant, pid } => {
                out.push(1);
                out.extend_from_slice(&pid.to_le_bytes());
                put_text(out, tenant);
            }
            Message::Rejoin { tenant, pid } => {
                out.push(5);
                out.extend_from_slice(&pid.to_le_bytes());
                put_text(out, tenant);
            }
            Message::Ready => out.push(2),
            Message::Ack { up_to_seq } => {
                out.push(3);
                out.extend_from_slice(&up_to_seq.to_le_bytes());
            }
            Message::Draining => out.push(4),
            Message::Conn(meta) => {
                out.push(16);
                out.extend_from_slice(&meta.seq.to_le_bytes());
                out.push(meta.protocol as u8);
                out.extend_from_slice(&meta.local_port.to_le_bytes());
                out.extend_from_slice(&meta.accepted_at_us.to_le_bytes());
                put_text(out, meta.server_name.as_deref().unwrap_or(""));
                match meta.client_addr {
                    None => out.push(0),
                    Some(std::net::SocketAddr::V4(addr)) => {
                        out.push(4);
                        out.extend_from_slice(&addr.ip().octets());
                        out.extend_from_slice(&addr.port().to_le_bytes());
                    }
                    Some(std::net::SocketAddr::V6(addr)) => {
                        out.push(6);
                        out.extend_from_slice(&addr.ip().octets());
                        out.extend_from_slice(&addr.port().to_le_bytes());
                    }
                }
            }
            Message::Drain => out.push(17),
            Message::HostsChanged => out.push(18),
            Message::Stats(stats) => put_stats(out, 6, stats),
            Message::TenantTotals(stats) => put_stats(out, 19, stats),
        }
    }

    /// Decodes one datagram.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::Version { got: version });
        }
        let message = match r.u8()? {
            1 => {
                let pid = u32::from_le_bytes(r.array()?);
                Message::Hello {
                    tenant: r.text()?,
                    pid,
                }
            }
            2 => Message::Ready,
            3 => Message::Ack {
                up_to_seq: u64::from_le_bytes(r.array()?),
            },
            4 => Message::Draining,
            5 => {
                let pid = u32::from_le_bytes(r.array()?);
                Message::Rejoin {
                    tenant: r.text()?,
                    pid,
                }
            }
            16 => {
                let seq = u64::from_le_bytes(r.array()?);
                let protocol = match r.u8()? {
                    1 => Protocol::Tls,
                    2 => Protocol::Http,
                    other => return Err(DecodeError::UnknownProtocol(other)),
                };
                let local_port = u16::from_le_bytes(r.array()?);
                let accepted_at_us = u64::from_le_bytes(r.array()?);
                let name = r.text()?;
                let client_addr = match r.u8()? {
                    0 => None,
                    4 => {
                        let ip = std::net::Ipv4Addr::from(r.array::<4>()?);
                        Some(std::net::SocketAddr::new(
                            ip.into(),
                            u16::from_le_bytes(r.array()?),
                        ))
                    }
                    6 => {
                        let ip = std::net::Ipv6Addr::from(r.array::<16>()?);
                        Some(std::net::SocketAddr::new(
                            ip.into(),
                            u16::from_le_bytes(r.array()?),
                        ))
                    }
                    other => return Err(DecodeError::UnknownAddressFamily(other)),
                };
                Message::Conn(ConnMeta {
                    seq,
                    protocol,
                    server_name: (!name.is_empty()).then_some(name),
                    local_port,
                    accepted_at_us,
                    client_addr,
                })
            }
            17 => Message::Drain,
            18 => Message::HostsChanged,
            6 => Message::Stats(r.stats()?),
            19 => Message::TenantTotals(r.stats()?),
            other => return Err(DecodeError::UnknownKind(other)),
        };
        Ok(message)
    }
}

fn put_stats(out: &mut Vec<u8>, kind: u8, stats: &TenantStats) {
    out.push(kind);
    let json = serde_json::to_vec(stats).unwrap_or_default();
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    let bytes = &text.as_bytes()[..text.len().min(255)];
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&first, rest) = self.0.split_first().ok_or(DecodeError::Truncated)?;
        self.0 = rest;
        Ok(first)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        if self.0.len() < N {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        Ok(head.try_into().expect("length checked"))
    }
    fn stats(&mut self) -> Result<Box<TenantStats>, DecodeError> {
        let len = u32::from_le_bytes(self.array()?) as usize;
        if self.0.len() < len {
            return Err(DecodeError::Truncated);
        }
        let (json, rest) = self.0.split_at(len);
        self.0 = rest;
        let stats: TenantStats = serde_json::from_slice(json).map_err(|_| DecodeError::BadStats)?;
        if !stats.is_bounded() {
            return Err(DecodeError::BadStats);
        }
        Ok(Box::new(stats))
    }

    fn text(&mut self) -> Result<String, DecodeError> {
        let len = self.u8()? as usize;
        if self.0.len() < len {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8(head.to_vec()).map_err(|_| DecodeError::BadText)
    }
}

/// The listening socket, under `runtime_dir`, where l7proxy processes started
/// by hand (not by the splitter) connect to join their tenant's pool.
pub const HANDOFF_SOCKET_NAME: &str = "handoff.sock";

/// Binds a non-blocking `SOCK_SEQPACKET` listener at `path` (replacing a stale
/// socket file).
pub fn seqpacket_listen(path: &std::path::Path) -> io::Result<OwnedFd> {
    use nix::sys::socket::{bind, listen, socket, Backlog, UnixAddr};
    let _ = std::fs::remove_file(path);
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    listen(&fd, Backlog::new(64).map_err(io::Error::from)?)?;
    Ok(fd)
}

/// Connects to a `SOCK_SEQPACKET` listener at `path` (non-blocking once connected).
pub fn seqpacket_connect(path: &std::path::Path) -> io::Result<OwnedFd> {
    use nix::sys::socket::{connect, socket, UnixAddr};
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    Ok(fd)
}

/// The uid of the process at the other end of a Unix socket (`SO_PEERCRED`).
pub fn peer_uid(socket: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(peer_credentials(socket)?.uid)
}

/// Who is at the other end of a Unix socket, as the kernel recorded it when the
/// connection was made (`SO_PEERCRED`): never what the peer says of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Process id.
    pub pid: u32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// The peer's `SO_PEERCRED`.
pub fn peer_credentials(socket: BorrowedFd<'_>) -> io::Result<PeerCredentials> {
    let creds = nix::sys::socket::getsockopt(&socket, nix::sys::socket::sockopt::PeerCredentials)?;
    Ok(PeerCredentials {
        pid: creds.pid().max(0) as u32,
        uid: creds.uid(),
        gid: creds.gid(),
    })
}

/// Creates a connected, non-blocking, close-on-exec `SOCK_SEQPACKET` pair.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .map_err(io::Error::from)
}

/// Sends one message, with `fd` attached in `SCM_RIGHTS` when given.
///
/// Never blocks: on a full socket this returns `WouldBlock` and nothing was sent
/// (a `SOCK_SEQPACKET` datagram is sent whole or not at all).
pub fn send(
    socket: BorrowedFd<'_>,
    message: &Message,
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(64);
    message.encode(&mut buf);
    if buf.len() > MAX_MESSAGE_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "handoff message of {} bytes exceeds {MAX_MESSAGE_LEN}",
                buf.len()
            ),
        ));
    }
    send_bytes(socket, &buf, fd)
}

/// Sends one datagram of raw bytes, with `fd` attached when given (for tests
/// and tools that must send what [`Message`] cannot express).
pub fn send_bytes(
    socket: BorrowedFd<'_>,
    buf: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let fds: [RawFd; 1] = [fd.map_or(-1, |fd| fd.as_raw_fd())];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage] = if fd.is_some() { &cmsg } else { &[] };
    let iov = [IoSlice::new(buf)];
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    loop {
        match sendmsg::<()>(socket.as_raw_fd(), &iov, cmsgs, flags, None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Most descriptors [`send_with_fds`] passes at once (a take-over carries
/// every listener and the control socket).
pub const MAX_PASSED_FDS: usize = 64;

/// Sends `buf` with every descriptor of `fds` in one `SCM_RIGHTS` message,
/// blocking until it is sent (a splitter handing its listeners to the one
/// taking over).
pub fn send_with_fds(socket: BorrowedFd<'_>, buf: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_PASSED_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors for one message",
        ));
    }
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let iov = [IoSlice::new(buf)];
    loop {
        match sendmsg::<()>(
            socket.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(sent) if sent == buf.len() => return Ok(()),
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "message sent in part",
                ))
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives bytes and up to [`MAX_PASSED_FDS`] descriptors, blocking; the
/// counterpart of [`send_with_fds`]. `Ok(None)` when the peer closed.
pub fn recv_with_fds(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    receive(socket, buf, MAX_PASSED_FDS, MsgFlags::MSG_CMSG_CLOEXEC)
}

/// One received datagram: the decoded message (or why it could not be decoded)
/// and the descriptors that came with it, already owned (and close-on-exec).
#[derive(Debug)]
pub struct Received {
    /// The message, or why it is not one.
    pub message: Result<Message, DecodeError>,
    /// Descriptors passed with it; dropping them closes them.
    pub fds: Vec<OwnedFd>,
    /// Descriptors were sent with it but the kernel could not pass them all
    /// (`MSG_CTRUNC`: the receiver is at its open-file limit, or more were
    /// sent than it takes); those that did arrive are already closed.
    pub fds_lost: bool,
}

/// Receives one datagram without blocking.
///
/// Returns `Ok(None)` when the peer has closed the socket, `WouldBlock` when no
/// datagram is waiting. A datagram whose payload was cut short is an error; one
/// whose descriptors were cut short is returned with [`Received::fds_lost`]
/// set, and every descriptor that did arrive with it is closed.
pub fn recv(socket: BorrowedFd<'_>) -> io::Result<Option<Received>> {
    recv_into(socket, &mut ReceiveBuffer::new())
}

/// Room for one message of up to [`MAX_MESSAGE_LEN`] bytes, made once and
/// reused by a loop that receives many: [`recv`] zeroes a fresh 16 KiB for
/// every datagram, which a socket carrying a message per connection pays on
/// every connection.
pub struct ReceiveBuffer(Box<[u8]>);

impl ReceiveBuffer {
    /// A zeroed buffer of [`MAX_MESSAGE_LEN`] bytes.
    pub fn new() -> Self {
        Self(vec![0; MAX_MESSAGE_LEN].into_boxed_slice())
    }
}

impl Default for ReceiveBuffer {
    fn default() -> Self {
        Self::new()
    }
}

/// [`recv`] into `buf`, which the caller keeps for the next datagram.
pub fn recv_into(socket: BorrowedFd<'_>, buf: &mut ReceiveBuffer) -> io::Result<Option<Received>> {
    let received = receive_flagged(
        socket,
        &mut buf.0,
        FDS_PER_MESSAGE,
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )?;
    Ok(received.map(|(len, fds, fds_lost)| Received {
        message: Message::decode(&buf.0[..len]),
        fds: if fds_lost { Vec::new() } else { fds },
        fds_lost,
    }))
}

/// Receives one datagram of raw bytes into `buf` without blocking: its length
/// and the descriptors that came with it, already owned. `Ok(None)`: the peer
/// closed the socket. A datagram longer than `buf` or with cut control data is
/// an error, and its descriptors are closed.
pub fn recv_bytes(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    receive(
        socket,
        buf,
        FDS_PER_MESSAGE,
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
}

fn receive(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
    recv_flags: MsgFlags,
) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    match receive_flagged(socket, buf, max_fds, recv_flags)? {
        Some((_, fds, true)) => {
            drop(fds);
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "handoff control data truncated (MSG_CTRUNC): descriptors were lost; received ones closed",
            ))
        }
        Some((bytes, fds, false)) => Ok(Some((bytes, fds))),
        None => Ok(None),
    }
}

/// Descriptors a handoff datagram may carry before the receiver calls it
/// truncated (a `Conn` carries one).
const FDS_PER_MESSAGE: usize = 4;

/// [`receive`], but a datagram whose descriptors were cut short
/// (`MSG_CTRUNC`) is returned, with the flag set, instead of being an error.
///
/// Calls `recvmsg(2)` itself rather than through nix: nix refuses to walk the
/// control data of a truncated message, and the descriptors the kernel did
/// install before it ran out of room (or of the receiver's open-file limit)
/// would then leak. Here every installed one becomes an [`OwnedFd`].
fn receive_flagged(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
    recv_flags: MsgFlags,
) -> io::Result<Option<(usize, Vec<OwnedFd>, bool)>> {
    // Aligned for `cmsghdr`; room for a header and MAX_PASSED_FDS descriptors.
    let mut control = [0u64; 4 + MAX_PASSED_FDS / 2];
    // SAFETY: CMSG_SPACE only computes a length.
    let control_len =
        unsafe { libc::CMSG_SPACE((max_fds * std::mem::size_of::<RawFd>()) as u32) } as usize;
    assert!(control_len <= std::mem::size_of_val(&control));
    let (bytes, fds, flags) = loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control_len as _;
        // SAFETY: `msg` points at `iov` and `control`, both alive and of the
        // lengths given, for the duration of the call.
        let received = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, recv_flags.bits()) };
        if received < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut fds = Vec::new();
        // SAFETY: the kernel wrote whole control messages into `control` and
        // set `msg_controllen` to their length (also with MSG_CTRUNC: then it
        // wrote only what fits, each `cmsg_len` matching). CMSG_FIRSTHDR and
        // CMSG_NXTHDR stay within that length. Each SCM_RIGHTS descriptor was
        // just installed in our table for us; nothing else owns it.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg);
                    let header = data as usize - cmsg as usize;
                    let count = ((*cmsg).cmsg_len as usize).saturating_sub(header)
                        / std::mem::size_of::<RawFd>();
                    for i in 0..count {
                        let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        break (
            received as usize,
            fds,
            MsgFlags::from_bits_truncate(msg.msg_flags),
        );
    };
    if flags.contains(MsgFlags::MSG_TRUNC) {
        drop(fds);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "handoff message longer than any valid message (MSG_TRUNC); dropped",
        ));
    }
    let fds_lost = flags.contains(MsgFlags::MSG_CTRUNC);
    if bytes == 0 && fds.is_empty() && !fds_lost {
        return Ok(None);
    }
    Ok(Some((bytes, fds, fds_lost)))
}

/// The current time in microseconds since the Unix epoch, as `Conn` carries it.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    fn all_messages() -> Vec<Message> {
        vec![
            Message::Hello {
                tenant: "alpha".into(),
                pid: 4242,
            },
            Message::Rejoin {
                tenant: "alpha".into(),
                pid: 4343,
            },
            Message::Stats(Box::new(crate::tenant_stats::TenantStats {
                bytes_in: 7,
                retries: 2,
                ..Default::default()
            })),
            Message::TenantTotals(Box::default()),
            Message::Ready,
            Message::Ack {
                up_to_seq: u64::MAX - 1,
            },
            Message::Draining,
            Message::Conn(ConnMeta {
                seq: 7,
                protocol: Protocol::Tls,
                server_name: Some("alpha.localhost".into()),
                local_port: 8443,
                accepted_at_us: 1_700_000_000_000_000,
                client_addr: Some("[2001:db8::7]:51000".parse().unwrap()),
            }),
            Message::Conn(ConnMeta {
                seq: 8,
                protocol: Protocol::Http,
                server_name: None,
                local_port: 80,
                accepted_at_us: 1,
                client_addr: Some("203.0.113.7:4000".parse().unwrap()),
            }),
            Message::Drain,
            Message::HostsChanged,
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for message in all_messages() {
            let mut buf = Vec::new();
            message.encode(&mut buf);
            assert!(buf.len() <= MAX_MESSAGE_LEN);
            assert_eq!(Message::decode(&buf), Ok(message));
        }
    }

    #[test]
    fn other_version_truncation_and_unknown_kinds_are_errors() {
        let mut buf = Vec::new();
        Message::Ready.encode(&mut buf);
        buf[0] = 9;
        assert_eq!(Message::decode(&buf), Err(DecodeError::Version { got: 9 }));
        assert!(Message::decode(&buf)
            .unwrap_err()
            .to_string()
            .contains("same release"));
        assert_eq!(Message::decode(&[]), Err(DecodeError::Truncated));
        assert_eq!(
            Message::decode(&[PROTOCOL_VERSION, 99]),
            Err(DecodeError::UnknownKind(99))
        );
        let mut conn = Vec::new();
        all_messages()[4].encode(&mut conn);
        for cut in 2..conn.len() {
            assert_eq!(
                Message::decode(&conn[..cut]),
                Err(DecodeError::Truncated),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_real_socket_crosses_a_real_socketpair() {
        let (splitter, proxy) = seqpacket_pair().unwrap();
        // The socket to hand over: one end of a stream pair, with data waiting.
        let (mut client, handed) = std::os::unix::net::UnixStream::pair().unwrap();
        client.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        let meta = ConnMeta {
            seq: 1,
            protocol: Protocol::Http,
            server_name: Some("beta.localhost".into()),
            local_port: 8080,
            accepted_at_us: now_us(),
            client_addr: None,
        };
        send(
            splitter.as_fd(),
            &Message::Conn(meta.clone()),
            Some(handed.as_fd()),
        )
        .unwrap();
        drop(handed); // the splitter's copy; the datagram holds its own reference

        let received = recv(proxy.as_fd()).unwrap().expect("a datagram");
        assert_eq!(received.message, Ok(Message::Conn(meta)));
        assert_eq!(received.fds.len(), 1);
        let fd = received.fds.into_iter().next().unwrap();
        let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(
            flags & libc::FD_CLOEXEC,
            0,
            "received fd must be close-on-exec"
        );
        let mut stream = std::os::unix::net::UnixStream::from(fd);
        let mut first = [0u8; 16];
        stream.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"GET / HTTP/1.1\r\n");
        stream.write_all(b"ok").unwrap();
        let mut reply = [0u8; 2];
        client.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"ok");

        // Nothing more waiting, then EOF once the other end closes.
        assert_eq!(
            recv(proxy.as_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        drop(splitter);
        assert!(recv(proxy.as_fd()).unwrap().is_none());
    }

    /// More descriptors than a handoff message carries (MSG_CTRUNC): the
    /// message is still returned, marked, and the descriptors that did
    /// arrive are closed, not leaked.
    #[test]
    fn descriptors_cut_short_are_reported_and_none_leaks() {
        let (splitter, proxy) = seqpacket_pair().unwrap();
        let pairs: Vec<_> = (0..FDS_PER_MESSAGE + 2)
            .map(|_| std::os::unix::net::UnixStream::pair().unwrap())
            .collect();
        let sent: Vec<BorrowedFd<'_>> = pairs.iter().map(|(_, theirs)| theirs.as_fd()).collect();
        let mut message = Vec::new();
        Message::Ack { up_to_seq: 7 }.encode(&mut message);
        send_with_fds(splitter.as_fd(), &message, &sent).unwrap();
        let received = recv(proxy.as_fd()).unwrap().expect("a datagram");
        assert_eq!(received.message, Ok(Message::Ack { up_to_seq: 7 }));
        assert!(received.fds_lost);
        assert!(received.fds.is_empty());
        drop(received);
        // The same through recv_bytes: an error, and nothing kept either.
        send_with_fds(splitter.as_fd(), &message, &sent).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(
            recv_bytes(proxy.as_fd(), &mut buf).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // With the sender's copies gone, every other end sees end of file:
        // no copy is left open anywhere.
        let ours: Vec<_> = pairs.into_iter().map(|(ours, _)| ours).collect();
        for mut end in ours {
            end.set_nonblocking(true).unwrap();
            let mut byte = [0u8; 1];
            assert_eq!(end.read(&mut byte).unwrap(), 0, "a descriptor leaked");
        }
    }

    #[test]
    fn messages_without_fds_and_acks_flow_back() {
        let (splitter, proxy) = seqpacket_pair().unwrap();
        send(
            proxy.as_fd(),
            &Message::Hello {
                tenant: "a".into(),
                pid: 1,
            },
            None,
        )
        .unwrap();
        send(proxy.as_fd(), &Message::Ack { up_to_seq: 3 }, None).unwrap();
        let first = recv(splitter.as_fd()).unwrap().unwrap();
        assert_eq!(
            first.message,
            Ok(Message::Hello {
                tenant: "a".into(),
                pid: 1
            })
        );
        assert!(first.fds.is_empty());
        let second = recv(splitter.as_fd()).unwrap().unwrap();
        assert_eq!(second.message, Ok(Message::Ack { up_to_seq: 3 }));
    }

    #[test]
    fn a_full_socket_says_would_block_instead_of_blocking() {
        let (splitter, _proxy) = seqpacket_pair().unwrap();
        let (_a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut sent = 0;
        let err = loop {
            match send(splitter.as_fd(), &Message::Drain, Some(b.as_fd())) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 1_000_000, "socket never filled");
        };
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(sent > 0);
    }
}
