//! A tenant's process pool as the splitter sees it: which processes are ready,
//! which handed connections they have not acknowledged yet, and the hold queue of
//! connections waiting for a ready process.

use crate::conn::ClientConn;
use crate::reject::turn_away;
use std::collections::VecDeque;
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use switchyard_shared::config::TenantConfig;
use switchyard_shared::handoff::{self, Message};
use switchyard_shared::tenant_stats::TenantStats;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Identifies one spawned process of a tenant for its whole life.
pub type ProcKey = u64;

/// Most hand-started processes attached to one tenant at once.
pub const MAX_ATTACHED: usize = 4;

/// A key no process has had before.
pub fn new_key() -> ProcKey {
    static NEXT_KEY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT_KEY.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The splitter's end of a process's handoff socket.
pub type HandoffSocket = Arc<AsyncFd<std::os::fd::OwnedFd>>;

/// Counters of one tenant.
#[derive(Debug, Default)]
pub struct TenantCounters {
    /// Connections handed to a process (and not re-handed).
    pub handed: AtomicU64,
    /// Connections that waited in the hold queue.
    pub held: AtomicU64,
    /// Held connections turned away at `hold_timeout`.
    pub hold_timeouts: AtomicU64,
    /// Unacknowledged connections handed again after their process died.
    pub rehanded: AtomicU64,
    /// Sends that found a process's handoff socket full.
    pub socket_full: AtomicU64,
    /// Processes that exited unexpectedly and were respawned.
    pub restarts: AtomicU64,
    /// The respawn delay now in force, milliseconds (0: none pending).
    pub backoff_ms: AtomicU64,
    /// Connections turned away because `max_held` were already held.
    pub held_full: AtomicU64,
    /// Times a process was at `max_unacked` when a connection came for it.
    pub unacked_full: AtomicU64,
    /// Times an on-demand tenant was started by a connection.
    pub demand_starts: AtomicU64,
    /// Times an on-demand tenant was stopped after `idle_stop`.
    pub idle_stops: AtomicU64,
}

/// One tenant: its configuration, pool and hold queue.
#[derive(Debug)]
pub struct Tenant {
    name: String,
    config: Mutex<TenantConfig>,
    /// Counters for logs and status.
    pub counters: TenantCounters,
    /// Its `switchyard_handoff_seconds` series.
    handoff_seconds: prometheus::Histogram,
    hold_timeout: Duration,
    max_unacked: usize,
    state: Mutex<PoolState>,
    hold_changed: Notify,
    /// Wakes the tenant's keeper (see `fleet`): a connection was held, an
    /// orphan came back, or the configuration changed.
    nudge: Notify,
    /// Bumped each time a process becomes ready (see [`Tenant::watch_ready`]).
    became_ready: tokio::sync::watch::Sender<u64>,
    closed: std::sync::atomic::AtomicBool,
    /// Processes of a previous splitter waiting to be adopted.
    pub orphans: crate::adoption::Orphans,
}

#[derive(Debug)]
struct PoolState {
    procs: Vec<ProcEntry>,
    next: usize,
    held: VecDeque<(Instant, ClientConn)>,
    /// When the tenant last had a connection: handed, held, or open in a
    /// process as it last reported.
    last_busy: Instant,
}

impl PoolState {
    fn new() -> PoolState {
        PoolState {
            procs: Vec::new(),
            next: 0,
            held: VecDeque::new(),
            last_busy: Instant::now(),
        }
    }

    /// How long the tenant has had no connection (zero while it has one).
    fn idle_for(&mut self, now: Instant) -> Duration {
        let busy = !self.held.is_empty()
            || self.procs.iter().any(|p| {
                !p.unacked.is_empty()
                    || p.report_due
                    || p.stats.as_ref().is_some_and(|s| s.connections > 0)
            });
        if busy {
            self.last_busy = now;
        }
        now.saturating_duration_since(self.last_busy)
    }
}

#[derive(Debug)]
struct ProcEntry {
    key: ProcKey,
    origin: Origin,
    pid: u32,
    socket: HandoffSocket,
    state: ProcState,
    started: Instant,
    handed: u64,
    next_seq: u64,
    /// Handed connections not yet acknowledged: sequence number, the
    /// splitter's copy, when it was handed.
    unacked: VecDeque<(u64, ClientConn, Instant)>,
    /// Its request statistics, as it last reported them.
    stats: Option<Box<TenantStats>>,
    /// It acknowledged a connection after its last report: busy until its
    /// next report, which counts that connection if it is still open (a
    /// process counts a connection before acknowledging it, and the socket
    /// keeps the order of its messages).
    report_due: bool,
}

/// How a process came to serve the tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Spawned by the splitter in this pool generation (bumped by each rolling
    /// restart).
    Supervised {
        /// The generation.
        generation: u64,
    },
    /// Started by hand; joined through the tenant's `handoff.sock`.
    Attached,
}

/// Where a tenant process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcState {
    /// Spawned, not yet `Ready`.
    Starting,
    /// Takes connections.
    Ready,
    /// Takes no new connections; finishing what it has.
    Draining,
    /// Its handoff socket failed: takes nothing more; its unacknowledged
    /// connections go elsewhere when it is gone.
    Broken,
}

impl ProcState {
    /// This state, moved to `Draining` unless the process is already out of
    /// rotation for good (`Broken`).
    fn draining(self) -> ProcState {
        match self {
            ProcState::Broken => ProcState::Broken,
            _ => ProcState::Draining,
        }
    }
}

impl ProcState {
    /// Name for status output.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcState::Starting => "starting",
            ProcState::Ready => "ready",
            ProcState::Draining => "draining",
            ProcState::Broken => "broken",
        }
    }
}

/// A process as `status` shows it.
#[derive(Debug, Clone)]
pub struct ProcStatus {
    /// Its pid (0 until its `Hello`).
    pub pid: u32,
    /// Its state.
    pub state: ProcState,
    /// Seconds since it was spawned.
    pub uptime_s: f64,
    /// Connections handed to it.
    pub handed: u64,
    /// How it came to serve the tenant.
    pub origin: Origin,
}

impl Tenant {
    /// A tenant with no processes yet.
    pub fn new(config: TenantConfig, hold_timeout: Duration, max_unacked: usize) -> Arc<Tenant> {
        let name = config.name.clone();
        Arc::new(Tenant {
            handoff_seconds: crate::metrics::handoff_seconds(&name),
            name,
            config: Mutex::new(config),
            counters: TenantCounters::default(),
            hold_timeout,
            max_unacked,
            state: Mutex::new(PoolState::new()),
            hold_changed: Notify::new(),
            nudge: Notify::new(),
            became_ready: tokio::sync::watch::channel(0).0,
            closed: std::sync::atomic::AtomicBool::new(false),
            orphans: crate::adoption::Orphans::default(),
        })
    }

    /// The tenant's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tenant's current entry of the host file.
    pub fn config(&self) -> TenantConfig {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the tenant's entry (after a reload).
    pub fn set_config(&self, config: TenantConfig) {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = config;
    }

    fn state(&self) -> MutexGuard<'_, PoolState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands `conn` to a ready process, or holds it until one is ready.
    pub fn dispatch(&self, conn: ClientConn) {
        let mut state = self.state();
        if let Some(conn) = self.try_hand(&mut state, conn) {
            self.hold(&mut state, conn);
        }
    }

    /// Tries each ready process in turn; gives the connection back when none
    /// could take it.
    fn try_hand(&self, state: &mut PoolState, mut conn: ClientConn) -> Option<ClientConn> {
        let count = state.procs.len();
        for i in 0..count {
            let index = (state.next + i) % count;
            let proc = &mut state.procs[index];
            if proc.state != ProcState::Ready {
                continue;
            }
            if proc.unacked.len() >= self.max_unacked {
                // A process that does not acknowledge cannot make the splitter
                // keep descriptors without bound: hand elsewhere, or hold.
                self.counters.unacked_full.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let seq = proc.next_seq;
            let message = Message::Conn(conn.meta(seq));
            match handoff::send(
                proc.socket.get_ref().as_fd(),
                &message,
                Some(conn.fd.as_fd()),
            ) {
                Ok(()) => {
                    proc.next_seq += 1;
                    proc.handed += 1;
                    conn.slot.release();
                    if let Some(named) = conn.named.take() {
                        self.handoff_seconds.observe(named.elapsed().as_secs_f64());
                    }
                    let now = Instant::now();
                    proc.unacked.push_back((seq, conn, now));
                    state.next = index + 1;
                    state.last_busy = now;
                    self.counters.handed.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.counters.socket_full.fetch_add(1, Ordering::Relaxed);
                    debug!(tenant = %self.name(), pid = proc.pid, "handoff socket full; trying another process");
                }
                Err(e) => {
                    warn!(tenant = %self.name(), pid = proc.pid, error = %e, "handoff failed; the process is taken out of rotation");
                    proc.state = ProcState::Broken;
                }
            }
        }
        Some(conn)
    }

    fn hold(&self, state: &mut PoolState, conn: ClientConn) {
        let max_held = self
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .max_held;
        if state.held.len() >= max_held {
            self.counters.held_full.fetch_add(1, Ordering::Relaxed);
            conn.listener.outcome("max_held");
            turn_away(
                conn,
                503,
                &format!(
                    "site {} has too many connections waiting, try again shortly",
                    self.name()
                ),
                Some("Retry-After: 1"),
            );
            return;
        }
        self.counters.held.fetch_add(1, Ordering::Relaxed);
        state
            .held
            .push_back((Instant::now() + self.hold_timeout, conn));
        self.hold_changed.notify_one();
        // A stopped on-demand tenant starts now.
        self.nudge.notify_one();
    }

    /// Wakes the tenant's keeper to look at the tenant again.
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// Resolves at the next [`Tenant::nudge`] (or at once if one came since
    /// the last wait).
    pub async fn nudged(&self) {
        self.nudge.notified().await
    }

    /// How long the tenant has had no connection: none held, none handed
    /// and unacknowledged, none acknowledged since its process's last report,
    /// none open in a process by its last report.
    pub fn idle_for(&self) -> Duration {
        self.state().idle_for(Instant::now())
    }

    /// Counts now as activity: an on-demand tenant's `idle_stop` starts
    /// again (a rolling restart does this, so its new processes serve for at
    /// least that long).
    pub fn mark_busy(&self) {
        self.state().last_busy = Instant::now();
    }

    /// If the tenant has had no connection for `idle_stop`, takes every
    /// supervised process out of rotation (at once, so no connection is
    /// handed to a process about to be stopped) and returns true. Processes
    /// started by hand are left alone.
    pub fn retire_if_idle(&self, idle_stop: Duration) -> bool {
        let mut state = self.state();
        if state.idle_for(Instant::now()) < idle_stop {
            return false;
        }
        for proc in state.procs.iter_mut() {
            if matches!(proc.origin, Origin::Supervised { .. }) {
                proc.state = proc.state.draining();
            }
        }
        true
    }

    /// Whether a connection is held for the tenant, or a process of a
    /// previous splitter waits to be adopted.
    pub fn has_waiting(&self) -> bool {
        !self.state().held.is_empty() || self.orphans.any()
    }

    /// Whether the tenant was removed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Registers a freshly spawned process (not ready until it says so).
    pub fn add_process(&self, key: ProcKey, generation: u64, socket: HandoffSocket, pid: u32) {
        self.push(key, Origin::Supervised { generation }, socket, pid);
    }

    /// Registers a process started by hand (`pid` from `SO_PEERCRED`).
    pub fn add_attached(&self, key: ProcKey, socket: HandoffSocket, pid: u32) {
        self.push(key, Origin::Attached, socket, pid);
    }

    fn push(&self, key: ProcKey, origin: Origin, socket: HandoffSocket, pid: u32) {
        self.state().procs.push(ProcEntry {
            key,
            origin,
            pid,
            socket,
            state: ProcState::Starting,
            started: Instant::now(),
            handed: 0,
            next_seq: 1,
            unacked: VecDeque::new(),
            stats: None,
            report_due: false,
        });
    }

    /// Processes started by hand attached now.
    pub fn attached_count(&self) -> usize {
        self.state()
            .procs
            .iter()
            .filter(|p| p.origin == Origin::Attached)
            .count()
    }

    /// When the oldest connection the process has not acknowledged was handed.
    pub fn oldest_unacked(&self, key: ProcKey) -> Option<Instant> {
        self.state()
            .procs
            .iter()
            .find(|p| p.key == key)
            .and_then(|p| p.unacked.front().map(|(_, _, handed)| *handed))
    }

    /// Keeps process `key`'s latest statistics; returns the tenant's sum over
    /// its live processes.
    pub fn store_stats(&self, key: ProcKey, stats: Box<TenantStats>) -> TenantStats {
        let mut state = self.state();
        let open = stats.connections > 0;
        if let Some(proc) = state.procs.iter_mut().find(|p| p.key == key) {
            proc.stats = Some(stats);
            proc.report_due = false;
            if open {
                state.last_busy = Instant::now();
            }
        }
        sum_stats(&state)
    }

    /// The tenant's request statistics: the sum over its live processes.
    pub fn stats(&self) -> TenantStats {
        sum_stats(&self.state())
    }

    /// Handed connections no process has acknowledged yet, and held ones.
    pub fn in_flight(&self) -> usize {
        let state = self.state();
        state.held.len() + state.procs.iter().map(|p| p.unacked.len()).sum::<usize>()
    }

    /// Tells every process that the host file was reloaded (they re-read its
    /// names for their 421 checks, and changed certificate files). A process
    /// whose socket is full misses it and keeps the old view until the next
    /// reload or its restart; that is logged.
    pub fn notify_hosts_changed(&self) {
        for proc in self.state().procs.iter() {
            if let Err(e) =
                handoff::send(proc.socket.get_ref().as_fd(), &Message::HostsChanged, None)
            {
                warn!(tenant = %self.name(), pid = proc.pid, error = %e, "cannot tell a tenant process that the host file was reloaded; it keeps the old names until the next reload or its restart");
            }
        }
    }

    /// A process said `Ready`: route to it, and hand it what was held.
    pub fn mark_ready(&self, key: ProcKey) {
        let mut state = self.state();
        let Some(proc) = state.procs.iter_mut().find(|p| p.key == key) else {
            return;
        };
        if proc.state != ProcState::Starting {
            return;
        }
        proc.state = ProcState::Ready;
        let pid = proc.pid;
        info!(tenant = %self.name(), pid, held = state.held.len(), "tenant process ready");
        self.flush_held(&mut state);
        self.became_ready.send_modify(|count| *count += 1);
    }

    /// A receiver that changes whenever a process becomes ready; subscribe
    /// before checking [`Tenant::ready_in_generation`] so no change is missed.
    pub fn watch_ready(&self) -> tokio::sync::watch::Receiver<u64> {
        self.became_ready.subscribe()
    }

    /// A process said `Draining`, or is being stopped: no new connections for it.
    pub fn mark_draining(&self, key: ProcKey) {
        if let Some(proc) = self.state().procs.iter_mut().find(|p| p.key == key) {
            proc.state = proc.state.draining();
        }
    }

    /// Processes that take connections now.
    pub fn ready_count(&self) -> usize {
        self.state()
            .procs
            .iter()
            .filter(|p| p.state == ProcState::Ready)
            .count()
    }

    /// Processes of `generation` that are ready.
    pub fn ready_in_generation(&self, generation: u64) -> usize {
        self.state()
            .procs
            .iter()
            .filter(|p| {
                p.origin == Origin::Supervised { generation } && p.state == ProcState::Ready
            })
            .count()
    }

    /// Takes every supervised process of a generation other than `keep` out of
    /// rotation, so new connections go only to the generation kept. Processes
    /// started by hand are left alone.
    pub fn retire_other_generations(&self, keep: u64) {
        for proc in self.state().procs.iter_mut() {
            if matches!(proc.origin, Origin::Supervised { generation } if generation != keep) {
                proc.state = proc.state.draining();
            }
        }
    }

    /// The processes as `status` shows them, and the number of held connections.
    pub fn snapshot(&self) -> (Vec<ProcStatus>, usize) {
        let state = self.state();
        let procs = state
            .procs
            .iter()
            .map(|p| ProcStatus {
                pid: p.pid,
                state: p.state,
                uptime_s: p.started.elapsed().as_secs_f64(),
                handed: p.handed,
                origin: p.origin,
            })
            .collect();
        (procs, state.held.len())
    }

    fn flush_held(&self, state: &mut PoolState) {
        while let Some((deadline, conn)) = state.held.pop_front() {
            if let Some(conn) = self.try_hand(state, conn) {
                state.held.push_front((deadline, conn));
                break;
            }
        }
    }

    /// A process acknowledged every connection up to `up_to_seq`: close the
    /// splitter's copies of them. Returns whether that acknowledged anything
    /// not acknowledged before (a healthy process's every `Ack` does).
    pub fn acknowledge(&self, key: ProcKey, up_to_seq: u64) -> bool {
        let mut state = self.state();
        let mut advanced = false;
        if let Some(proc) = state.procs.iter_mut().find(|p| p.key == key) {
            while proc
                .unacked
                .front()
                .is_some_and(|(seq, _, _)| *seq <= up_to_seq)
            {
                proc.unacked.pop_front();
                proc.report_due = true;
                advanced = true;
            }
        }
        // An Ack proves the process reads again: hand it what was held because
        // its handoff socket was full.
        if !state.held.is_empty() {
            self.flush_held(&mut state);
        }
        advanced
    }

    /// A process is gone: hand its unacknowledged connections to another ready
    /// process, or hold them.
    pub fn remove_process(&self, key: ProcKey) {
        self.remove(key, true);
    }

    /// A process that may still be alive, and may still read what it was
    /// handed, leaves the pool (a hand-started process the front cut off):
    /// the front closes its copies of its unacknowledged connections instead
    /// of handing them again, so no connection is ever served by two
    /// processes. Its clients are served by it if it reads them, and see
    /// their connection closed otherwise.
    pub fn remove_live_process(&self, key: ProcKey) {
        self.remove(key, false);
    }

    fn remove(&self, key: ProcKey, hand_again: bool) {
        let mut state = self.state();
        let Some(index) = state.procs.iter().position(|p| p.key == key) else {
            return;
        };
        let proc = state.procs.remove(index);
        if !hand_again {
            return;
        }
        if !proc.unacked.is_empty() {
            warn!(tenant = %self.name(), pid = proc.pid, count = proc.unacked.len(), "process died holding unacknowledged connections; handing them again");
        }
        for (_, conn, _) in proc.unacked {
            self.counters.rehanded.fetch_add(1, Ordering::Relaxed);
            if let Some(conn) = self.try_hand(&mut state, conn) {
                self.hold(&mut state, conn);
            }
        }
    }

    /// The tenant is removed: connections still held are turned away and
    /// [`Tenant::expire_held`] ends.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.hold_changed.notify_one();
        self.nudge.notify_one();
    }

    /// Turns away held connections whose `hold_timeout` passed; runs until the
    /// tenant is closed and sleeps while nothing is held.
    pub async fn expire_held(self: Arc<Self>) {
        // Clients decide when their connections expire: the log line is bounded.
        let mut logs = switchyard_shared::throttle::Throttle::new(10);
        loop {
            if self.closed.load(Ordering::Acquire) {
                let held: Vec<ClientConn> =
                    self.state().held.drain(..).map(|(_, conn)| conn).collect();
                for conn in held {
                    turn_away(
                        conn,
                        503,
                        &format!("site {} was removed", self.name()),
                        None,
                    );
                }
                return;
            }
            let next_deadline = self.state().held.front().map(|(deadline, _)| *deadline);
            match next_deadline {
                None => self.hold_changed.notified().await,
                Some(deadline) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {}
                        _ = self.hold_changed.notified() => continue,
                    }
                }
            }
            let now = Instant::now();
            let expired: Vec<ClientConn> = {
                let mut state = self.state();
                let mut expired = Vec::new();
                while state
                    .held
                    .front()
                    .is_some_and(|(deadline, _)| *deadline <= now)
                {
                    expired.extend(state.held.pop_front().map(|(_, conn)| conn));
                }
                expired
            };
            if !expired.is_empty() {
                self.counters
                    .hold_timeouts
                    .fetch_add(expired.len() as u64, Ordering::Relaxed);
            }
            if !expired.is_empty() && logs.allow() {
                warn!(
                    tenant = %self.name(),
                    count = expired.len(),
                    hold_timeout = ?self.hold_timeout,
                    "no ready process within hold_timeout; connections turned away (check the tenant's logs for why it is not starting)"
                );
            }
            for conn in expired {
                turn_away(
                    conn,
                    503,
                    &format!("site {} is restarting, try again shortly", self.name()),
                    Some("Retry-After: 1"),
                );
            }
        }
    }
}

fn sum_stats(state: &PoolState) -> TenantStats {
    TenantStats::sum(state.procs.iter().filter_map(|p| p.stats.as_deref()))
}
