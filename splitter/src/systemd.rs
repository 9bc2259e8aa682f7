//! The systemd protocols, spoken without libsystemd: service notifications
//! (`Type=notify`: `READY=1`, `RELOADING=1` with `MONOTONIC_USEC=`, `STOPPING=1`,
//! `STATUS=`, and `WATCHDOG=1` when `WatchdogSec=` is set) and socket activation
//! (`LISTEN_FDS` / `LISTEN_PID` / `LISTEN_FDNAMES`).
//!
//! The notification socket is connected once at start, before the front drops
//! its privileges and installs its system-call filter (which refuses new
//! sockets and `connect`); every later notification is one `send` on it.
//! Without `NOTIFY_SOCKET` every function here does nothing.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;
use std::time::Duration;
use tracing::{info, warn};

static NOTIFY: OnceLock<UnixDatagram> = OnceLock::new();

/// Connects to `$NOTIFY_SOCKET` if it is set (a path, or `@name` for the
/// abstract namespace) and removes it from the environment, so that no child
/// (the helper, tenants) notifies in the splitter's name.
pub fn connect_notify_socket() {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    std::env::remove_var("NOTIFY_SOCKET");
    let _ = NOTIFY_TARGET.set(target.clone());
    let target = target.to_string_lossy().into_owned();
    let connected = UnixDatagram::unbound().and_then(|socket| {
        match target.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                socket.connect_addr(&addr)?;
            }
            None => socket.connect(&target)?,
        }
        socket.set_nonblocking(true)?;
        Ok(socket)
    });
    match connected {
        Ok(socket) => {
            let _ = NOTIFY.set(socket);
        }
        Err(e) => {
            warn!(socket = %target, error = %e, "cannot reach systemd's NOTIFY_SOCKET; readiness will not be reported")
        }
    }
}

/// Where systemd's notifications go, as this process was told at start: a
/// splitter started to take over (by the helper) reports there too (with
/// `MAINPID=`; the unit has `NotifyAccess=all`).
static NOTIFY_TARGET: std::sync::OnceLock<std::ffi::OsString> = std::sync::OnceLock::new();

/// The `NOTIFY_SOCKET` this process was started with, if any.
pub fn notify_target() -> Option<&'static std::ffi::OsStr> {
    NOTIFY_TARGET.get().map(|t| t.as_os_str())
}

/// Whether a service manager listens.
pub fn notifying() -> bool {
    NOTIFY.get().is_some()
}

/// Sends `state` (newline-separated `KEY=VALUE` assignments).
pub fn notify(state: &str) {
    if let Some(socket) = NOTIFY.get() {
        if let Err(e) = socket.send(state.as_bytes()) {
            warn!(error = %e, "cannot notify systemd");
        }
    }
}

/// `RELOADING=1` with the monotonic time, as systemd 253+ requires.
pub fn reloading() {
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
}

fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC` when it is set for
/// this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    std::env::remove_var("WATCHDOG_USEC");
    std::env::remove_var("WATCHDOG_PID");
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Pings the watchdog from the runtime, so a stalled event loop is noticed.
pub async fn keep_watchdog_fed(every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        notify("WATCHDOG=1");
    }
}

/// The listening sockets systemd passed (`LISTEN_FDS` for this pid), by the
/// address they are bound to; the variables are removed from the
/// environment. Every passed descriptor must be a listening TCP socket.
pub fn inherited_listeners() -> Result<Vec<(SocketAddr, TcpListener)>, String> {
    const FIRST: RawFd = 3;
    let Some(count) = std::env::var_os("LISTEN_FDS") else {
        return Ok(Vec::new());
    };
    let pid = std::env::var("LISTEN_PID").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    if pid.as_deref().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
        // Meant for another process (e.g. a wrapper that did not pass them on).
        return Ok(Vec::new());
    }
    let count: RawFd = count
        .to_string_lossy()
        .parse()
        .map_err(|_| format!("LISTEN_FDS={count:?} is not a number"))?;
    let names: Vec<String> = names
        .map(|n| n.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    let mut listeners = Vec::new();
    for (index, fd) in (FIRST..FIRST + count).enumerate() {
        let name = names.get(index).map_or("", String::as_str);
        let listener = switchyard_shared::sys::take_passed_fd(fd)
            .and_then(listening_tcp)
            .map_err(|e| {
            format!("socket activation: descriptor {fd} ({name:?}) is not usable: {e}; pass only TCP listening sockets")
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("socket activation: descriptor {fd}: {e}"))?;
        info!(fd, name, addr = %addr, "listening socket passed by systemd");
        listeners.push((addr, listener));
    }
    Ok(listeners)
}

/// `fd` as a listening TCP socket, non-blocking.
fn listening_tcp(fd: OwnedFd) -> std::io::Result<TcpListener> {
    use nix::sys::socket::{getsockopt, sockopt};
    if !getsockopt(&fd, sockopt::AcceptConn)? {
        return Err(std::io::Error::other("not a listening socket"));
    }
    if getsockopt(&fd, sockopt::SockType)? != nix::sys::socket::SockType::Stream {
        return Err(std::io::Error::other("not a stream socket"));
    }
    let listener = TcpListener::from(fd);
    listener.local_addr()?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}
