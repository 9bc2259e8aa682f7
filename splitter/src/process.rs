//! Spawning a tenant's l7proxy processes and keeping them alive.
//!
//! Each slot of a tenant's pool has one supervisor task: spawn the process with
//! its end of a fresh `SOCK_SEQPACKET` pair inherited, read what it says
//! (`Hello`, `Ready`, `Ack`, `Draining`), and when it exits give its
//! unacknowledged connections to the rest of the pool and respawn it after a
//! backoff that doubles while the process keeps dying young.

use crate::helper::proto::StopSignal;
use crate::helper::{Helper, TenantChild};
use crate::tenant::{HandoffSocket, ProcKey, Tenant};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use switchyard_shared::handoff::{self, Message};
use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::{error, info, warn};

/// First respawn delay; doubled per quick death up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest respawn delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A process that lived this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How long a stopping process may take before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a draining process may take (its own cap is 10 s plus shutdown).
const DRAIN_GRACE: Duration = Duration::from_secs(15);
/// A process that has left a handed connection unacknowledged this long is
/// stuck: its connections go to other processes and it is replaced. (A healthy
/// process acknowledges within milliseconds; acks are batched per read.)
pub const ACK_DEADLINE: Duration = Duration::from_secs(5);

/// Keeps one slot of `tenant`'s pool (in pool generation `generation`) filled
/// until `stop` turns true; then drains the slot's process.
pub async fn supervise(
    tenant: Arc<Tenant>,
    helper: Arc<Helper>,
    generation: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = MIN_BACKOFF;
    while !*stop.borrow() {
        let started = Instant::now();
        let acquired = match tenant.orphans.claim().await {
            Some(orphan) => adopt(&tenant, &helper, generation, orphan).await,
            None => spawn(&tenant, &helper, generation).await,
        };
        match acquired {
            Ok((key, pid, exit, socket)) => {
                info!(tenant = %tenant.name(), pid, "tenant process in service");
                let status = run(&tenant, &helper, key, pid, exit, socket, &mut stop).await;
                tenant.remove_process(key);
                if *stop.borrow() {
                    info!(tenant = %tenant.name(), pid, "tenant process stopped");
                    return;
                }
                let lived = started.elapsed();
                tenant.counters.restarts.fetch_add(1, Ordering::Relaxed);
                error!(
                    tenant = %tenant.name(),
                    pid,
                    status = %status,
                    lived_ms = lived.as_millis() as u64,
                    "tenant process exited; respawning (see its log lines above for the cause)"
                );
                if lived >= STABLE_AFTER {
                    backoff = MIN_BACKOFF;
                } else if backoff >= MAX_BACKOFF {
                    error!(
                        tenant = %tenant.name(),
                        backoff_s = backoff.as_secs(),
                        "tenant keeps crashing; respawning at the slowest rate (fix its configuration or upstream, then `splitter ctl restart`)"
                    );
                }
            }
            Err(e) => error!(
                tenant = %tenant.name(),
                error = %e,
                "cannot spawn tenant process; retrying"
            ),
        }
        tenant
            .counters
            .backoff_ms
            .store(backoff.as_millis() as u64, Ordering::Relaxed);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => {}
        }
        tenant.counters.backoff_ms.store(0, Ordering::Relaxed);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn spawn(
    tenant: &Arc<Tenant>,
    helper: &Helper,
    generation: u64,
) -> Result<(ProcKey, u32, oneshot::Receiver<String>, HandoffSocket), String> {
    let TenantChild { pid, socket, exit } = helper
        .spawn(tenant.name())
        .await
        .map_err(|e| e.to_string())?;
    let socket: HandoffSocket =
        Arc::new(switchyard_shared::sys::register(socket).map_err(|e| e.to_string())?);
    let key = crate::tenant::new_key();
    tenant.add_process(key, generation, socket.clone(), pid);
    Ok((key, pid, exit, socket))
}

/// Takes `orphan` into the slot: the helper supervises it from now on.
async fn adopt(
    tenant: &Arc<Tenant>,
    helper: &Helper,
    generation: u64,
    orphan: crate::adoption::Orphan,
) -> Result<(ProcKey, u32, oneshot::Receiver<String>, HandoffSocket), String> {
    let exit = helper
        .adopt(tenant.name(), orphan.pid)
        .await
        .map_err(|e| format!("cannot adopt pid {}: {e}", orphan.pid))?;
    tenant.add_process(orphan.key, generation, orphan.socket.clone(), orphan.pid);
    info!(tenant = %tenant.name(), pid = orphan.pid, "adopted a process a previous splitter had spawned (it kept its connections)");
    Ok((orphan.key, orphan.pid, exit, orphan.socket))
}

/// Serves one process until it exits (or is stopped); returns its exit status.
async fn run(
    tenant: &Arc<Tenant>,
    helper: &Helper,
    key: ProcKey,
    pid: u32,
    mut exit: oneshot::Receiver<String>,
    socket: HandoffSocket,
    stop: &mut watch::Receiver<bool>,
) -> String {
    // In this order: after the front stalled, the acknowledgements queued
    // meanwhile are read before the deadline is looked at.
    let outcome = tokio::select! {
        biased;
        status = &mut exit => return status.unwrap_or_else(|_| "unknown".into()),
        reason = read_messages(tenant, key, &socket) => Some(reason),
        _ = stop.changed() => None,
        _ = watch_acks(tenant, key) => {
            error!(tenant = %tenant.name(), pid, deadline = ?ACK_DEADLINE, "tenant process stopped acknowledging connections; killing it and handing its connections to other processes once it is gone");
            // Out of rotation now; its unacknowledged connections are handed
            // again after it has exited (by the caller), never while it could
            // still read them.
            tenant.mark_draining(key);
            return terminate(helper, pid, &mut exit, Duration::ZERO).await;
        }
    };
    tenant.mark_draining(key);
    match outcome {
        // Asked to stop: drain gracefully (in-flight requests finish, then the
        // process exits).
        None => match handoff::send(socket.get_ref().as_fd(), &Message::Drain, None) {
            Ok(()) => {
                if let Ok(status) = tokio::time::timeout(DRAIN_GRACE, &mut exit).await {
                    return status.unwrap_or_else(|_| "unknown".into());
                }
                warn!(tenant = %tenant.name(), pid, grace = ?DRAIN_GRACE, "process did not drain in time; sending SIGTERM");
            }
            Err(e) => {
                warn!(tenant = %tenant.name(), pid, error = %e, "cannot send Drain; sending SIGTERM")
            }
        },
        Some(reason) if reason == END_OF_FILE => {
            warn!(tenant = %tenant.name(), pid, reason = %reason, "the tenant process closed its handoff socket; stopping it");
            // It reads nothing more: its connections go elsewhere now, not
            // when it has exited.
            tenant.remove_process(key);
        }
        Some(reason) => {
            // It broke the protocol and may still read what it was handed:
            // killed, and its connections handed again once it is gone.
            warn!(tenant = %tenant.name(), pid, reason = %reason, "disconnected from the tenant process; killing it");
            return terminate(helper, pid, &mut exit, Duration::ZERO).await;
        }
    }
    terminate(helper, pid, &mut exit, STOP_GRACE).await
}

/// Resolves when the process has left a connection unacknowledged for longer
/// than [`ACK_DEADLINE`], at two looks in a row: after the front itself
/// stalled, acknowledgements that were queued meanwhile get a look's time to
/// be read.
pub(crate) async fn watch_acks(tenant: &Tenant, key: ProcKey) {
    let mut late_before = false;
    loop {
        tokio::time::sleep(ACK_DEADLINE / 5).await;
        let late = tenant
            .oldest_unacked(key)
            .is_some_and(|handed| handed.elapsed() > ACK_DEADLINE);
        if late && late_before {
            return;
        }
        late_before = late;
    }
}

/// SIGTERM (unless `grace` is zero), then SIGKILL after `grace`; waits for the exit.
async fn terminate(
    helper: &Helper,
    pid: u32,
    exit: &mut oneshot::Receiver<String>,
    grace: Duration,
) -> String {
    if !grace.is_zero() {
        let _ = helper.signal(pid, StopSignal::Term).await;
        if let Ok(status) = tokio::time::timeout(grace, &mut *exit).await {
            return status.unwrap_or_else(|_| "unknown".into());
        }
    }
    let _ = helper.signal(pid, StopSignal::Kill).await;
    match tokio::time::timeout(STOP_GRACE, exit).await {
        Ok(status) => status.unwrap_or_else(|_| "unknown".into()),
        Err(_) => "did not exit after SIGKILL".into(),
    }
}

/// A process reports its statistics about every second; one sending more
/// than this many a second makes the front parse JSON for nothing and is
/// treated as broken.
const STATS_PER_SECOND: f64 = 4.0;
/// Reports may bunch up (a tenant's timer catching up after a stall): this
/// many may come at once.
const STATS_BURST: f64 = 8.0;
/// `Hello`, `Ready`, `Draining` and acknowledgements that acknowledge nothing
/// new: a healthy process sends each about once in its life, so more than
/// this many a second (beyond [`CHATTER_BURST`]) is a flood.
const CHATTER_PER_SECOND: f64 = 1.0;
/// See [`CHATTER_PER_SECOND`].
const CHATTER_BURST: f64 = 16.0;
/// Messages read from one process before the reader lets other tasks run (a
/// process refilling its socket as fast as the front reads must not hold a
/// runtime thread).
const MESSAGES_PER_TURN: usize = 64;

/// A token bucket that bounds how often one process may send a kind of
/// message.
struct MessageBudget {
    per_second: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl MessageBudget {
    fn new(per_second: f64, burst: f64, now: Instant) -> MessageBudget {
        MessageBudget {
            per_second,
            burst,
            tokens: burst,
            refilled: now,
        }
    }

    /// Takes one message's token at `now` (the time the front reads it);
    /// false when the process is over its rate. What it earned while the
    /// front was not reading is kept in full, even beyond the burst: messages
    /// a healthy process sent on time, queued while the front was busy, arrive
    /// all at once.
    fn take(&mut self, now: Instant) -> bool {
        let earned = now.saturating_duration_since(self.refilled).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + earned).min(self.burst.max(earned).max(self.tokens));
        self.refilled = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// What [`read_messages`] returns when the process closed its socket.
pub(crate) const END_OF_FILE: &str = "end of file";

/// Reads the process's messages until its socket closes or it breaks the
/// protocol; returns why it stopped. Anything a process may not send (a message
/// for the other direction, an undecodable datagram, descriptors) ends the
/// connection: the process is then treated as crashed.
pub(crate) async fn read_messages(
    tenant: &Arc<Tenant>,
    key: ProcKey,
    socket: &AsyncFd<OwnedFd>,
) -> String {
    let mut stats_budget = MessageBudget::new(STATS_PER_SECOND, STATS_BURST, Instant::now());
    let mut chatter_budget = MessageBudget::new(CHATTER_PER_SECOND, CHATTER_BURST, Instant::now());
    let mut buf = handoff::ReceiveBuffer::new();
    loop {
        let mut guard = match socket.readable().await {
            Ok(guard) => guard,
            Err(e) => return e.to_string(),
        };
        // What is queued, up to a turn's worth; `try_io` clears the readiness
        // when it would block.
        let mut taken = 0;
        while taken < MESSAGES_PER_TURN {
            let Ok(received) =
                guard.try_io(|socket| handoff::recv_into(socket.get_ref().as_fd(), &mut buf))
            else {
                break;
            };
            taken += 1;
            match received {
                Ok(Some(received)) => {
                    if received.fds_lost {
                        return "it sent more descriptors than a message carries (closed)"
                            .to_string();
                    }
                    if !received.fds.is_empty() {
                        return format!("it sent {} descriptors (closed)", received.fds.len());
                    }
                    if matches!(
                        received.message,
                        Ok(Message::Hello { .. } | Message::Ready | Message::Draining)
                    ) && !chatter_budget.take(Instant::now())
                    {
                        return format!(
                            "it sent Hello, Ready or Draining more often than {CHATTER_PER_SECOND} times a second"
                        );
                    }
                    match received.message {
                        Ok(Message::Hello { tenant: name, .. }) => {
                            // The pid it reports is not used: the splitter knows
                            // its processes' pids from the kernel.
                            if name != tenant.name() {
                                return format!("it says it serves tenant {:?}", truncate(&name));
                            }
                        }
                        Ok(Message::Ready) => tenant.mark_ready(key),
                        Ok(Message::Ack { up_to_seq }) => {
                            if !tenant.acknowledge(key, up_to_seq)
                                && !chatter_budget.take(Instant::now())
                            {
                                return format!(
                                    "it sent acknowledgements of nothing new more often than {CHATTER_PER_SECOND} times a second"
                                );
                            }
                        }
                        Ok(Message::Draining) => tenant.mark_draining(key),
                        Ok(Message::Stats(_)) if !stats_budget.take(Instant::now()) => {
                            return format!(
                                "it sent statistics more often than {STATS_PER_SECOND} times a second"
                            );
                        }
                        Ok(Message::Stats(stats)) => {
                            let totals =
                                Message::TenantTotals(Box::new(tenant.store_stats(key, stats)));
                            // For the tenant's own /metrics; skipped when its socket is full.
                            let _ = handoff::send(socket.get_ref().as_fd(), &totals, None);
                        }
                        Ok(other) => return format!("unexpected message {:?}", other_kind(&other)),
                        Err(e) => return format!("protocol error: {e}"),
                    }
                }
                Ok(None) => return END_OF_FILE.to_string(),
                Err(e) => return e.to_string(),
            }
        }
        if taken == MESSAGES_PER_TURN {
            drop(guard);
            tokio::task::yield_now().await;
        }
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

fn other_kind(message: &Message) -> &'static str {
    match message {
        Message::Conn(_) => "Conn",
        Message::Drain => "Drain",
        Message::HostsChanged => "HostsChanged",
        Message::TenantTotals(_) => "TenantTotals",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_budget(now: Instant) -> MessageBudget {
        MessageBudget::new(STATS_PER_SECOND, STATS_BURST, now)
    }

    #[test]
    fn reports_bunched_after_a_stall_are_accepted() {
        let start = Instant::now();
        let mut budget = stats_budget(start);
        // A report a second, then a stall: the timer's catch-up tick and the
        // next one come together.
        for second in 0..5 {
            assert!(budget.take(start + Duration::from_secs(second)));
        }
        let later = start + Duration::from_secs(5) + Duration::from_millis(50);
        assert!(budget.take(later));
        assert!(budget.take(later + Duration::from_millis(100)));
    }

    #[test]
    fn reports_queued_while_the_front_was_busy_are_accepted() {
        // The front read nothing for 30 s; the process kept reporting every
        // second. All 30 are read at once.
        let start = Instant::now();
        let mut budget = stats_budget(start);
        assert!(budget.take(start));
        let resumed = start + Duration::from_secs(30);
        for n in 0..30 {
            assert!(budget.take(resumed), "report {n} refused");
        }
    }

    #[test]
    fn a_flood_is_refused_after_the_burst() {
        let start = Instant::now();
        let mut budget = stats_budget(start);
        let taken = (0..1000)
            .take_while(|n| budget.take(start + Duration::from_micros(*n)))
            .count();
        assert_eq!(taken, STATS_BURST as usize);
        // And a steady rate above the limit is refused too.
        let mut budget = stats_budget(start);
        let refused = (0..100)
            .filter(|n| !budget.take(start + Duration::from_millis(100 * n)))
            .count();
        assert!(refused > 50, "{refused}");
    }
}
