//! The Pingora service that takes sockets from the splitter instead of
//! accepting them itself.
//!
//! It reads `Conn` messages from the inherited `SOCK_SEQPACKET` socket, acknowledges
//! each batch with one `Ack`, dresses every received socket like one Pingora
//! accepted ([`HandedStream`]), terminates TLS with the tenant's acceptor when the
//! splitter saw a ClientHello, and runs the connection through the same
//! `ServerApp::process_new` loop Pingora's own listening service uses.

use crate::handed::HandedStream;
use crate::proxy::HostView;
use crate::shutdown::Stop;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::Stream;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::{ServiceReadyNotifier, ServiceWithDependents};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard_shared::config::HostConfig;
use switchyard_shared::handoff::{self, ConnMeta, Message, Protocol};
use switchyard_shared::throttle::Throttle;
use tokio::io::unix::AsyncFd;
use tracing::{debug, error, info, warn};

/// How long a client may take to complete its TLS handshake (as Pingora's listener).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// While draining, how long active connections get to finish their current
/// request before idle keep-alive connections are closed.
pub const IDLE_CLOSE_AFTER: Duration = Duration::from_secs(1);

/// How often an orphaned process tries to reach a splitter again.
const REJOIN_EVERY: Duration = Duration::from_millis(100);

/// Where and how long a process whose splitter went away looks for a new one.
#[derive(Debug, Clone)]
pub struct Rejoin {
    /// The tenant's `handoff.sock`.
    pub path: PathBuf,
    /// `[splitter] orphan_timeout` (zero: do not wait).
    pub timeout: Duration,
    /// Whether a splitter spawned this process (it then asks to be adopted,
    /// `Rejoin`); a hand-started one says `Hello` again.
    pub spawned: bool,
}

/// How one handoff socket's service ended.
enum Ended {
    /// The process is stopping (SIGTERM, or the splitter's `Drain`).
    Shutdown,
    /// The splitter went away without a `Drain`.
    Lost(&'static str),
}

/// Receives handed-off connections and serves them with `app`.
pub struct HandoffService<A> {
    name: String,
    tenant: String,
    socket: Mutex<Option<OwnedFd>>,
    app: Arc<A>,
    tls: Option<Arc<Acceptor>>,
    threads: usize,
    host_reload: Option<(PathBuf, Arc<ArcSwap<HostView>>)>,
    certificate: Option<Arc<crate::tls::CertStore>>,
    /// Whether handshakes record the client certificate's subject (mTLS).
    client_certificates: bool,
    rejoin: Option<Rejoin>,
    stop: Stop,
}

impl<A> HandoffService<A> {
    /// A service reading `socket` (the inherited handoff descriptor); its
    /// connections are tracked by `stop`, which it pulls when the splitter asks
    /// for a drain or goes away.
    pub fn new(
        tenant: &str,
        socket: OwnedFd,
        app: A,
        tls: Option<Acceptor>,
        threads: usize,
        stop: Stop,
    ) -> Self {
        HandoffService {
            name: format!("handoff {tenant}"),
            tenant: tenant.to_string(),
            socket: Mutex::new(Some(socket)),
            app: Arc::new(app),
            tls: tls.map(Arc::new),
            threads,
            host_reload: None,
            certificate: None,
            client_certificates: false,
            rejoin: None,
            stop,
        }
    }

    /// Records each verified client certificate's subject on its connection
    /// (for the upstream header; `[tls] client_auth`).
    pub fn record_client_certificates(mut self, record: bool) -> Self {
        self.client_certificates = record;
        self
    }

    /// When the splitter goes away without a `Drain`, keep serving and look
    /// for a splitter on `rejoin.path` for up to `rejoin.timeout`.
    pub fn rejoin_when_orphaned(mut self, rejoin: Rejoin) -> Self {
        self.rejoin = Some(rejoin);
        self
    }

    /// On `HostsChanged` (the splitter reloaded the host file), re-read the
    /// tenants' hosts from `host_file` into `view`, and the certificate files.
    pub fn reload_hosts_from(
        mut self,
        host_file: PathBuf,
        view: Arc<ArcSwap<HostView>>,
        certificate: Option<Arc<crate::tls::CertStore>>,
    ) -> Self {
        self.host_reload = Some((host_file, view));
        self.certificate = certificate;
        self
    }
}

/// Sends `first` (`Hello` or `Rejoin`) and `Ready`.
fn greet(socket: &AsyncFd<OwnedFd>, first: &Message) -> io::Result<()> {
    handoff::send(socket.get_ref().as_fd(), first, None)?;
    handoff::send(socket.get_ref().as_fd(), &Message::Ready, None)
}

fn reload_hosts(tenant: &str, host_file: &std::path::Path, view: &ArcSwap<HostView>) {
    match HostConfig::load_as(host_file, false) {
        Ok(host) => {
            view.store(Arc::new(HostView::new(&host, tenant)));
            info!(tenant = %tenant, "host names re-read after the splitter's reload");
        }
        Err(e) => {
            warn!(tenant = %tenant, error = %e, "host file invalid; keeping the host names in use")
        }
    }
}

/// The test-only fault switch of [`handoff::FAULT_DIE_ON_CONN_ENV`] (built only
/// with the `fault-injection` feature).
#[cfg(feature = "fault-injection")]
fn die_if_fault_requested(seq: u64) {
    if let Some(path) = std::env::var_os(handoff::FAULT_DIE_ON_CONN_ENV) {
        if std::fs::remove_file(&path).is_ok() {
            error!(
                seq,
                "fault injection: dying before acknowledging a connection"
            );
            std::process::abort();
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServiceWithDependents for HandoffService<A> {
    async fn start_service(
        &mut self,
        _fds: Option<ListenFds>,
        mut shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
        ready: ServiceReadyNotifier,
    ) {
        let Some(socket) = self.socket.lock().ok().and_then(|mut s| s.take()) else {
            error!(tenant = %self.tenant, "handoff service started twice");
            return;
        };
        let mut socket = match switchyard_shared::sys::register(socket) {
            Ok(socket) => socket,
            Err(e) => {
                error!(tenant = %self.tenant, error = %e, "cannot register the handoff socket");
                self.stop.request();
                return;
            }
        };
        let hello = Message::Hello {
            tenant: self.tenant.clone(),
            pid: std::process::id(),
        };
        if let Err(e) = greet(&socket, &hello) {
            error!(tenant = %self.tenant, error = %e, "cannot greet the splitter over the handoff socket; exiting");
            self.stop.request();
            return;
        }
        ready.notify_ready();
        info!(tenant = %self.tenant, pid = std::process::id(), "ready for handed-off connections");

        loop {
            match self.serve_socket(&socket, &mut shutdown).await {
                Ended::Shutdown => {
                    let _ = handoff::send(socket.get_ref().as_fd(), &Message::Draining, None);
                    self.drain().await;
                    return;
                }
                Ended::Lost(reason) => match self.rejoin(reason, &mut shutdown).await {
                    Some(rejoined) => socket = rejoined,
                    None => break,
                },
            }
        }
        self.stop.request();
        if !*shutdown.borrow() {
            let _ = shutdown.changed().await;
        }
        self.drain().await;
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn threads(&self) -> Option<usize> {
        Some(self.threads)
    }
}

impl<A: ServerApp + Send + Sync + 'static> HandoffService<A> {
    /// Takes connections from `socket` until the process stops or the
    /// splitter goes away.
    async fn serve_socket(&self, socket: &AsyncFd<OwnedFd>, shutdown: &mut ShutdownWatch) -> Ended {
        let mut report = tokio::time::interval(crate::request_stats::REPORT_EVERY);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut buf = handoff::ReceiveBuffer::new();
        // An acknowledgement the full socket refused: sent again at the next
        // turn (a report tick at the latest), or the splitter would take this
        // process for stuck.
        let mut unsent_ack = None;
        loop {
            if let Some(up_to_seq) = unsent_ack {
                unsent_ack = self.acknowledge(socket, up_to_seq);
            }
            let mut guard = tokio::select! {
                guard = socket.readable() => match guard {
                    Ok(guard) => guard,
                    Err(e) => {
                        error!(tenant = %self.tenant, error = %e, "handoff socket failed");
                        return Ended::Lost("handoff socket failed");
                    }
                },
                _ = shutdown.changed() => return Ended::Shutdown,
                _ = report.tick() => {
                    self.report_stats(socket);
                    continue;
                }
            };
            let mut acked = None;
            let mut hosts_changed = false;
            // Everything queued, then back to waiting (`try_io` clears the
            // readiness when the socket would block).
            let outcome = loop {
                let Ok(received) =
                    guard.try_io(|socket| handoff::recv_into(socket.get_ref().as_fd(), &mut buf))
                else {
                    break None;
                };
                match received {
                    Ok(Some(received)) => {
                        if let Some(seq) = self.take(received, shutdown, &mut hosts_changed) {
                            acked = Some(seq);
                        }
                    }
                    Ok(None) => break Some("the splitter closed the handoff socket"),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                        break Some("the splitter went away (handoff socket reset)")
                    }
                    Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                        warn!(tenant = %self.tenant, error = %e, "bad handoff datagram dropped");
                    }
                    Err(e) => {
                        error!(tenant = %self.tenant, error = %e, "handoff socket read failed");
                        break Some("handoff socket failed");
                    }
                }
            };
            if let Some(up_to_seq) = acked {
                unsent_ack = self.acknowledge(socket, up_to_seq);
            }
            // After the acknowledgement: re-reading the host file takes a
            // while on a large host, and the splitter's ack deadline runs.
            if hosts_changed {
                if let Some((host_file, view)) = &self.host_reload {
                    reload_hosts(&self.tenant, host_file, view);
                }
                if let Some(certificate) = &self.certificate {
                    certificate.reload(false);
                }
            }
            if let Some(reason) = outcome {
                return Ended::Lost(reason);
            }
        }
    }

    /// Acknowledges every connection up to `up_to_seq`; returns it back when
    /// the socket is full, to be sent again.
    fn acknowledge(&self, socket: &AsyncFd<OwnedFd>, up_to_seq: u64) -> Option<u64> {
        match handoff::send(socket.get_ref().as_fd(), &Message::Ack { up_to_seq }, None) {
            Ok(()) => None,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Some(up_to_seq),
            Err(e) => {
                warn!(tenant = %self.tenant, error = %e, "cannot acknowledge handed connections");
                None
            }
        }
    }

    /// Sends this process's statistics to the splitter (it sums the tenant's
    /// processes and answers with the sum).
    fn report_stats(&self, socket: &AsyncFd<OwnedFd>) {
        let stats = Message::Stats(Box::new(crate::request_stats::STATS.snapshot()));
        if let Err(e) = handoff::send(socket.get_ref().as_fd(), &stats, None) {
            static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if e.kind() == io::ErrorKind::InvalidInput
                && !SAID.swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                warn!(tenant = %self.tenant, error = %e, "request statistics too large for the splitter (too many routes or upstreams); the splitter's /metrics does not show this process");
            }
        }
    }

    /// After the splitter went away (`reason`): keeps serving the connections
    /// this process has and tries to reach a splitter on the tenant's
    /// `handoff.sock` until `orphan_timeout`; the new socket, or `None` when the
    /// process should drain and exit.
    async fn rejoin(
        &self,
        reason: &'static str,
        shutdown: &mut ShutdownWatch,
    ) -> Option<AsyncFd<OwnedFd>> {
        let Some(rejoin) = self.rejoin.as_ref().filter(|r| !r.timeout.is_zero()) else {
            info!(tenant = %self.tenant, reason, "stopping gracefully");
            return None;
        };
        warn!(tenant = %self.tenant, reason, orphan_timeout = ?rejoin.timeout, path = %rejoin.path.display(), "the splitter went away; serving this process's connections and waiting for a splitter to re-attach to");
        let deadline = tokio::time::Instant::now() + rejoin.timeout;
        let message = if rejoin.spawned {
            Message::Rejoin {
                tenant: self.tenant.clone(),
                pid: std::process::id(),
            }
        } else {
            Message::Hello {
                tenant: self.tenant.clone(),
                pid: std::process::id(),
            }
        };
        loop {
            tokio::select! {
                _ = tokio::time::sleep(REJOIN_EVERY) => {}
                _ = shutdown.changed() => return None,
            }
            if tokio::time::Instant::now() >= deadline {
                warn!(tenant = %self.tenant, orphan_timeout = ?rejoin.timeout, "no splitter came back within orphan_timeout; draining and exiting");
                return None;
            }
            let Ok(fd) = handoff::seqpacket_connect(&rejoin.path) else {
                continue;
            };
            let Ok(socket) = switchyard_shared::sys::register(fd) else {
                continue;
            };
            match greet(&socket, &message) {
                Ok(()) => {
                    info!(tenant = %self.tenant, pid = std::process::id(), "re-attached to a splitter");
                    return Some(socket);
                }
                Err(e) => {
                    debug!(tenant = %self.tenant, error = %e, "a splitter accepted, then refused; trying again")
                }
            }
        }
    }

    /// Lets handed connections finish: Pingora answers requests that arrive
    /// after the stop with `Connection: close` (HTTP/2: GOAWAY); after
    /// [`IDLE_CLOSE_AFTER`] the keep-alive connections still idle are closed.
    /// The process exits when the last one is done ([`crate::shutdown::Drained`]).
    async fn drain(&self) {
        tokio::time::sleep(IDLE_CLOSE_AFTER).await;
        self.app.cleanup().await;
    }

    /// Handles one datagram; returns its sequence number when it is a `Conn`
    /// (received connections are acknowledged even when unusable: the splitter
    /// must not hand the same bad descriptor again).
    fn take(
        &self,
        received: handoff::Received,
        shutdown: &ShutdownWatch,
        hosts_changed: &mut bool,
    ) -> Option<u64> {
        let message = match received.message {
            Ok(message) => message,
            Err(e) => {
                warn!(tenant = %self.tenant, error = %e, fds = received.fds.len(), "undecodable handoff message; its descriptors are closed");
                return None;
            }
        };
        match message {
            Message::Conn(meta) => {
                let seq = meta.seq;
                #[cfg(feature = "fault-injection")]
                die_if_fault_requested(seq);
                let mut fds = received.fds.into_iter();
                match (fds.next(), fds.next()) {
                    (Some(fd), None) => self.serve(fd, meta, shutdown.clone()),
                    (None, _) if received.fds_lost => {
                        // Acknowledged like any other: the splitter closes its
                        // copy, and the client sees its connection closed.
                        static SAID: Mutex<Option<Throttle>> = Mutex::new(None);
                        let mut said = SAID.lock().unwrap_or_else(|p| p.into_inner());
                        if said.get_or_insert_with(|| Throttle::new(6)).allow() {
                            warn!(tenant = %self.tenant, seq, "a handed connection's descriptor was lost: this process is at its open-file limit (raise the host file's [tenant.limits] nofile for this tenant); that client's connection is closed");
                        }
                    }
                    (None, _) => {
                        warn!(tenant = %self.tenant, seq, "Conn message without a descriptor; ignored")
                    }
                    (Some(_), Some(_)) => {
                        warn!(tenant = %self.tenant, seq, "Conn message with several descriptors; all closed")
                    }
                }
                Some(seq)
            }
            Message::Drain => {
                info!(tenant = %self.tenant, "the splitter asked this process to drain");
                self.stop.request();
                None
            }
            Message::TenantTotals(totals) => {
                crate::request_stats::STATS.set_totals(*totals);
                None
            }
            Message::HostsChanged => {
                *hosts_changed = true;
                None
            }
            other => {
                warn!(tenant = %self.tenant, message = ?other, fds = received.fds.len(), "unexpected handoff message; ignored");
                None
            }
        }
    }

    fn serve(&self, fd: OwnedFd, meta: ConnMeta, shutdown: ShutdownWatch) {
        let stream = match HandedStream::from_fd(fd, meta.client_addr) {
            Ok(stream) => stream,
            Err(e) => {
                warn!(tenant = %self.tenant, seq = meta.seq, error = %e, "unusable descriptor received; closed");
                return;
            }
        };
        let app = self.app.clone();
        let tls = match meta.protocol {
            Protocol::Tls => match &self.tls {
                Some(tls) => Some(tls.clone()),
                None => {
                    warn!(tenant = %self.tenant, sni = ?meta.server_name, "TLS connection for a tenant without [tls]; closed (add a [tls] section to the tenant file)");
                    return;
                }
            },
            Protocol::Http => None,
        };
        let client_certificates = self.client_certificates;
        // Counted before the `Ack` is sent, so every report the splitter
        // reads after the `Ack` includes this connection while it is open
        // (its on-demand idle clock relies on that).
        let stats = &crate::request_stats::STATS;
        let open = stats.connection_opened();
        self.stop.tracker.spawn(async move {
            let _open = open;
            let stream: Stream = match tls {
                Some(acceptor) => {
                    let handshake = async {
                        match client_certificates {
                            true => {
                                pingora::protocols::tls::server::handshake_with_callback(
                                    &acceptor,
                                    stream,
                                    &crate::client_cert::RecordSubject,
                                )
                                .await
                            }
                            false => acceptor.tls_handshake(stream).await,
                        }
                    };
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                        Ok(Ok(tls)) => {
                            use pingora::protocols::Ssl;
                            if let Some(digest) = tls.get_ssl_digest() {
                                stats.handshake(crate::tls::version_name(&digest.version));
                            }
                            Box::new(tls)
                        }
                        Ok(Err(e)) => {
                            stats.handshake_failed(e.etype().as_str());
                            debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            stats.handshake_failed("timeout");
                            debug!("TLS handshake timed out");
                            return;
                        }
                    }
                }
                None => Box::new(stream),
            };
            let mut next = app.process_new(stream, &shutdown).await;
            while let Some(stream) = next {
                next = app.process_new(stream, &shutdown).await;
            }
        });
    }
}
