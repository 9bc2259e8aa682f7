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
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Identifies one spawned process of a tenant for its whole life.
pub type ProcKey = u64;

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
}

/// One tenant: its configuration, pool and hold queue.
#[derive(Debug)]
pub struct Tenant {
    /// The host file's entry.
    pub config: TenantConfig,
    /// Counters for logs and status.
    pub counters: TenantCounters,
    hold_timeout: Duration,
    state: Mutex<PoolState>,
    hold_changed: Notify,
}

#[derive(Debug, Default)]
struct PoolState {
    procs: Vec<ProcEntry>,
    next: usize,
    held: VecDeque<(Instant, ClientConn)>,
}

#[derive(Debug)]
struct ProcEntry {
    key: ProcKey,
    pid: u32,
    socket: HandoffSocket,
    ready: bool,
    next_seq: u64,
    unacked: VecDeque<(u64, ClientConn)>,
}

impl Tenant {
    /// A tenant with no processes yet.
    pub fn new(config: TenantConfig, hold_timeout: Duration) -> Arc<Tenant> {
        Arc::new(Tenant {
            config,
            counters: TenantCounters::default(),
            hold_timeout,
            state: Mutex::new(PoolState::default()),
            hold_changed: Notify::new(),
        })
    }

    /// The tenant's name.
    pub fn name(&self) -> &str {
        &self.config.name
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
            if !proc.ready {
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
                    conn.slot.release();
                    proc.unacked.push_back((seq, conn));
                    state.next = index + 1;
                    self.counters.handed.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.counters.socket_full.fetch_add(1, Ordering::Relaxed);
                    debug!(tenant = %self.name(), pid = proc.pid, "handoff socket full; trying another process");
                }
                Err(e) => {
                    warn!(tenant = %self.name(), pid = proc.pid, error = %e, "handoff failed; the process is taken out of rotation");
                    proc.ready = false;
                }
            }
        }
        Some(conn)
    }

    fn hold(&self, state: &mut PoolState, conn: ClientConn) {
        self.counters.held.fetch_add(1, Ordering::Relaxed);
        state
            .held
            .push_back((Instant::now() + self.hold_timeout, conn));
        self.hold_changed.notify_one();
    }

    /// Registers a freshly spawned process (not ready until it says so).
    pub fn add_process(&self, key: ProcKey, socket: HandoffSocket) {
        self.state().procs.push(ProcEntry {
            key,
            pid: 0,
            socket,
            ready: false,
            next_seq: 1,
            unacked: VecDeque::new(),
        });
    }

    /// Records the pid a process announced in `Hello`.
    pub fn set_pid(&self, key: ProcKey, pid: u32) {
        if let Some(proc) = self.state().procs.iter_mut().find(|p| p.key == key) {
            proc.pid = pid;
        }
    }

    /// A process said `Ready`: route to it, and hand it what was held.
    pub fn mark_ready(&self, key: ProcKey) {
        let mut state = self.state();
        let Some(proc) = state.procs.iter_mut().find(|p| p.key == key) else {
            return;
        };
        proc.ready = true;
        let pid = proc.pid;
        info!(tenant = %self.name(), pid, held = state.held.len(), "tenant process ready");
        self.flush_held(&mut state);
    }

    /// A process said `Draining`: no new connections for it.
    pub fn mark_draining(&self, key: ProcKey) {
        if let Some(proc) = self.state().procs.iter_mut().find(|p| p.key == key) {
            proc.ready = false;
        }
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
    /// splitter's copies of them.
    pub fn acknowledge(&self, key: ProcKey, up_to_seq: u64) {
        let mut state = self.state();
        if let Some(proc) = state.procs.iter_mut().find(|p| p.key == key) {
            while proc
                .unacked
                .front()
                .is_some_and(|(seq, _)| *seq <= up_to_seq)
            {
                proc.unacked.pop_front();
            }
        }
    }

    /// A process is gone: hand its unacknowledged connections to another ready
    /// process, or hold them.
    pub fn remove_process(&self, key: ProcKey) {
        let mut state = self.state();
        let Some(index) = state.procs.iter().position(|p| p.key == key) else {
            return;
        };
        let proc = state.procs.remove(index);
        if !proc.unacked.is_empty() {
            warn!(tenant = %self.name(), pid = proc.pid, count = proc.unacked.len(), "process died holding unacknowledged connections; handing them again");
        }
        for (_, conn) in proc.unacked {
            self.counters.rehanded.fetch_add(1, Ordering::Relaxed);
            if let Some(conn) = self.try_hand(&mut state, conn) {
                self.hold(&mut state, conn);
            }
        }
    }

    /// Turns away held connections whose `hold_timeout` passed; runs for the life
    /// of the splitter and sleeps while nothing is held.
    pub async fn expire_held(self: Arc<Self>) {
        loop {
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
