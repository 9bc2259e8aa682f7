//! The accept loops: accept, peek, route, hand off.
//!
//! A connection whose first bytes are already there when it is accepted is peeked
//! and handed off straight from the accept loop, without a task or an epoll
//! registration of its own. Only connections that must wait for more bytes get a
//! task, and they wait without spinning (see [`splitter::peek::socket`]).

use crate::conn::{ClientConn, PendingLimit};
use crate::metrics;
use crate::reject::turn_away;
use crate::routing::RoutingTable;
use arc_swap::ArcSwap;
use splitter::peek::socket::{peek_now, peek_until_named, PeekFailure};
use splitter::peek::Peeked;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_shared::config::{ListenerConfig, Protocol, SplitterSettings};
use tokio::sync::watch;
use tracing::{debug, warn};

/// What every accept loop shares.
#[derive(Debug)]
pub struct Front {
    /// `[splitter]` settings.
    pub settings: SplitterSettings,
    /// Name → tenant; replaced whole on reload.
    pub routes: ArcSwap<RoutingTable>,
    /// Connections peeking or held.
    pub pending: Arc<PendingLimit>,
}

/// How long the kernel keeps a connection that has sent nothing away from
/// `accept` (`TCP_DEFER_ACCEPT`). With it the first peek nearly always finds the
/// ClientHello or request head, so a connection costs no epoll registration and
/// no second peek, which measurably lowers the splitter's CPU per handoff
/// (bench/RESULTS.md).
/// A client that stays silent is accepted after it and then meets `peek_timeout`.
const DEFER_ACCEPT_SECONDS: u32 = 1;

/// Binds a listener the way a busy front wants it: `SO_REUSEADDR`,
/// `TCP_DEFER_ACCEPT`, a deep backlog, non-blocking, close-on-exec.
pub fn bind(config: &ListenerConfig) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(config.addr),
        Type::STREAM.cloexec(),
        None,
    )?;
    socket.set_reuse_address(true)?;
    if config.addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&config.addr.into())?;
    socket.listen(4096)?;
    switchyard_shared::sys::set_defer_accept(socket.as_fd(), DEFER_ACCEPT_SECONDS)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Dresses a listening socket systemd passed as [`bind`] dresses its own.
pub fn prepare_passed(listener: &TcpListener) -> io::Result<()> {
    switchyard_shared::sys::set_defer_accept(listener.as_fd(), DEFER_ACCEPT_SECONDS)?;
    listener.set_nonblocking(true)
}

/// Accepts on `listener` until `stop` turns true.
pub async fn accept_loop(
    front: Arc<Front>,
    listener: TcpListener,
    listen: ListenerConfig,
    mut stop: watch::Receiver<bool>,
) {
    let protocol = listen.protocol;
    let proxied = listen.proxy_protocol;
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let listener_metrics = metrics::ListenerMetrics::new(
        &listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
    );
    let listener = match switchyard_shared::sys::register(listener) {
        Ok(listener) => listener,
        Err(e) => {
            warn!(port, error = %e, "cannot register listener");
            return;
        }
    };
    // At most one accept-error line a second, whatever the clients do.
    let mut last_resource_log: Option<Instant> = None;
    loop {
        let mut guard = tokio::select! {
            guard = listener.readable() => match guard {
                Ok(guard) => guard,
                Err(e) => { warn!(port, error = %e, "listener failed"); return; }
            },
            _ = stop.changed() => return,
        };
        // Several accepts per wake-up, until the queue is empty.
        loop {
            let err = match switchyard_shared::sys::accept_with_peer(listener.get_ref().as_fd()) {
                Ok((fd, peer)) => {
                    let peer = peer.map(|p| p.ip());
                    match proxied {
                        false => accepted(&front, fd, peer, protocol, port, &listener_metrics),
                        true => {
                            accepted_from_proxy(&front, fd, peer, protocol, port, &listener_metrics)
                        }
                    }
                    continue;
                }
                Err(err) => err,
            };
            match err.raw_os_error() {
                Some(libc::EAGAIN) => {
                    guard.clear_ready();
                    break;
                }
                Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO | libc::EPERM) => continue,
                errno => {
                    let out_of_resources = matches!(
                        errno,
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    );
                    if last_resource_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        if out_of_resources {
                            warn!(port, error = %err, "accept is out of resources; backing off (raise `ulimit -n` or lower max_pending)");
                        } else {
                            warn!(port, error = %err, "accept failed; retrying");
                        }
                        last_resource_log = Some(Instant::now());
                    }
                    // Leave the readiness set: the backlog is still there.
                    drop(guard);
                    let backoff = if out_of_resources { 50 } else { 10 };
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                    break;
                }
            }
        }
    }
}

/// Handles a socket accepted on a `proxy_protocol` listener: only a trusted
/// peer may speak, and its PROXY header is read (consumed) before the peek.
/// Per-source limits do not apply here (the peer is a load balancer; the
/// client is not known before the header).
fn accepted_from_proxy(
    front: &Arc<Front>,
    fd: OwnedFd,
    peer: Option<std::net::IpAddr>,
    protocol: Protocol,
    port: u16,
    listener_metrics: &Arc<metrics::ListenerMetrics>,
) {
    if !peer.is_some_and(|ip| switchyard_shared::net::in_any(&front.settings.trusted_proxies, ip)) {
        debug!(port, peer = ?peer, "PROXY header from a peer not in trusted_proxies; closed");
        listener_metrics.outcome("proxy_untrusted");
        return;
    }
    let slot = match front.pending.try_acquire(None) {
        Ok(slot) => slot,
        Err(refusal) => {
            listener_metrics.outcome(refusal.as_str());
            return;
        }
    };
    let conn = ClientConn::accepted(fd, protocol, port, slot, listener_metrics.clone());
    tokio::spawn(wait_and_route(front.clone(), conn, true));
}

/// Handles a freshly accepted socket.
fn accepted(
    front: &Arc<Front>,
    fd: OwnedFd,
    peer: Option<std::net::IpAddr>,
    protocol: Protocol,
    port: u16,
    listener_metrics: &Arc<metrics::ListenerMetrics>,
) {
    let slot = match front.pending.try_acquire(peer) {
        Ok(slot) => slot,
        Err(refusal) => {
            debug!(
                port,
                reason = refusal.as_str(),
                "connection refused at once"
            );
            listener_metrics.outcome(refusal.as_str());
            return;
        }
    };
    let conn = ClientConn::accepted(fd, protocol, port, slot, listener_metrics.clone());
    match peek_now(conn.fd.as_fd(), protocol, front.settings.max_peek_bytes) {
        Ok(Peeked::Name(name)) => route(front, conn, name),
        Ok(Peeked::NeedMore) => {
            tokio::spawn(wait_and_route(front.clone(), conn, false));
        }
        Ok(Peeked::Invalid(reject)) | Err(PeekFailure::Invalid(reject)) => refuse(conn, reject),
        Err(PeekFailure::Closed) => listener_metrics.outcome("client_closed"),
    }
}

/// Peeks (after reading a PROXY header first, when `proxied`) within
/// `peek_timeout`, then routes.
async fn wait_and_route(front: Arc<Front>, mut conn: ClientConn, proxied: bool) {
    let socket = match switchyard_shared::sys::register(conn.fd) {
        Ok(socket) => socket,
        Err(e) => {
            warn!(error = %e, "cannot register a connection for peeking");
            return;
        }
    };
    let max = front.settings.max_peek_bytes;
    let protocol = conn.protocol;
    let result = tokio::time::timeout(front.settings.peek_timeout, async {
        let client = match proxied {
            true => splitter::peek::socket::take_proxy_header(&socket).await?,
            false => None,
        };
        peek_until_named(&socket, protocol, max)
            .await
            .map(|name| (client, name))
    })
    .await;
    // Deregister from our epoll before the socket goes anywhere else.
    conn.fd = socket.into_inner();
    match result {
        Ok(Ok((client, name))) => {
            conn.client_addr = client;
            route(&front, conn, name)
        }
        Ok(Err(PeekFailure::Invalid(reject))) => refuse(conn, reject),
        Ok(Err(PeekFailure::Closed)) => conn.listener.outcome("client_closed"),
        Err(_) => {
            debug!(
                port = conn.local_port,
                "peek_timeout: client sent too little; closed"
            );
            conn.listener.outcome("peek_timeout");
        }
    }
}

fn refuse(conn: ClientConn, reject: splitter::peek::Reject) {
    conn.listener.outcome(reject.as_str());
    debug!(
        port = conn.local_port,
        reason = reject.as_str(),
        "connection refused while peeking"
    );
    if reject.answer_400() {
        turn_away(
            conn,
            400,
            "bad request: missing or invalid Host, or headers too large",
            None,
        );
    }
}

fn route(front: &Front, mut conn: ClientConn, name: Option<String>) {
    let now = std::time::Instant::now();
    conn.listener.peeked(now - conn.accepted);
    conn.named = Some(now);
    let routes = front.routes.load();
    match routes.route(name.as_deref()) {
        Some(tenant) => {
            conn.listener.routed();
            conn.server_name = name;
            tenant.dispatch(conn);
        }
        None => {
            conn.listener.outcome("unknown_host");
            debug!(port = conn.local_port, name = ?name, "no tenant serves this name");
            match name {
                Some(name) => turn_away(
                    conn,
                    404,
                    &format!("no site is configured for {name}"),
                    None,
                ),
                None => turn_away(conn, 400, "bad request: a Host header is required", None),
            }
        }
    }
}
