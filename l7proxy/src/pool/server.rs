//! What the proxy knows about one server of a pool: where it came from, its
//! requests in flight, and its passive-health record.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use switchyard_shared::config::{PassiveHealth, ServerAddr};

/// How a server entered its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// Listed in `servers` of the tenant file.
    Static,
    /// Added through the registration API.
    Registered,
    /// Found by DNS discovery.
    Dns,
}

impl Origin {
    /// The name used in `GET /v1/upstreams`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Static => "static",
            Origin::Registered => "registered",
            Origin::Dns => "dns",
        }
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

/// Live state of one server, shared by every request that uses it.
#[derive(Debug)]
pub struct ServerState {
    /// Where the server listens.
    pub addr: ServerAddr,
    /// How it entered the pool.
    pub origin: Origin,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    failures_total: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Passive ejection end, in ms since the process epoch; 0 when not ejected.
    ejected_until: AtomicU64,
    /// Ejections since the last success: the next one lasts that step.
    ejections: AtomicU32,
}

impl ServerState {
    /// A server with nothing in flight.
    pub fn new(addr: ServerAddr, origin: Origin) -> ServerState {
        ServerState {
            addr,
            origin,
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            failures_total: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
        }
    }

    /// Requests currently using the server.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests sent to the server so far (every attempt counts).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Failed attempts so far.
    pub fn failures(&self) -> u64 {
        self.failures_total.load(Ordering::Relaxed)
    }

    /// How much longer passive health keeps the server out, if it does.
    pub fn ejected_for(&self) -> Option<Duration> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        let now = now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// Takes one in-flight slot if fewer than `max` are taken.
    pub fn try_acquire(self: &Arc<Self>, max: Option<usize>) -> Option<Lease> {
        let taken = match max {
            None => {
                self.in_flight.fetch_add(1, Ordering::AcqRel);
                true
            }
            Some(max) => self
                .in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok(),
        };
        taken.then(|| {
            self.requests.fetch_add(1, Ordering::Relaxed);
            Lease {
                server: self.clone(),
                on_release: None,
            }
        })
    }

    /// Records a failed attempt; returns how long the server is now ejected
    /// for when this failure ejected it (passive health). `may_eject` false (a
    /// one-server pool) counts the failure without ejecting. A server that
    /// failed before since its last success (it came back from an ejection
    /// and fails again) is ejected at once, for the next step.
    pub fn record_failure(&self, passive: &PassiveHealth, may_eject: bool) -> Option<Duration> {
        self.failures_total.fetch_add(1, Ordering::Relaxed);
        // Requests that were already on an ejected server do not push it
        // further down the ladder.
        if passive.failures == 0
            || !may_eject
            || passive.steps.is_empty()
            || self.ejected_for().is_some()
        {
            return None;
        }
        let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        let on_probation = self.ejections.load(Ordering::Acquire) > 0;
        if failures >= passive.failures || on_probation {
            self.consecutive_failures.store(0, Ordering::Release);
            let step = self.ejections.fetch_add(1, Ordering::AcqRel) as usize;
            let lasts = passive.steps[step.min(passive.steps.len() - 1)];
            self.ejected_until
                .store(now_ms() + lasts.as_millis() as u64, Ordering::Release);
            return Some(lasts);
        }
        None
    }

    /// Records an attempt that got a good response: the failure count and the
    /// ejection ladder start over.
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }
}

/// One request's claim on a server: releases its in-flight slot when dropped.
pub struct Lease {
    server: Arc<ServerState>,
    on_release: Option<Arc<tokio::sync::Notify>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lease({})", self.server.addr)
    }
}

impl Lease {
    /// The server this lease holds a slot of.
    pub fn server(&self) -> &Arc<ServerState> {
        &self.server
    }

    /// Wake `notify`'s waiters when the slot is released.
    pub fn wake_on_release(mut self, notify: Arc<tokio::sync::Notify>) -> Lease {
        self.on_release = Some(notify);
        self
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.server.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(notify) = &self.on_release {
            notify.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> Arc<ServerState> {
        Arc::new(ServerState::new(
            ServerAddr::Tcp("127.0.0.1:1".parse().unwrap()),
            Origin::Static,
        ))
    }

    #[test]
    fn leases_are_bounded_and_released() {
        let s = server();
        let a = s.try_acquire(Some(2)).unwrap();
        let b = s.try_acquire(Some(2)).unwrap();
        assert!(s.try_acquire(Some(2)).is_none());
        assert_eq!(s.in_flight(), 2);
        drop(a);
        assert_eq!(s.in_flight(), 1);
        let _c = s.try_acquire(Some(2)).unwrap();
        drop(b);
        assert_eq!(s.requests(), 3);
    }

    #[test]
    fn consecutive_failures_eject_for_growing_steps_and_success_resets() {
        let s = server();
        let passive = PassiveHealth {
            failures: 2,
            steps: vec![Duration::from_secs(5), Duration::from_secs(50)],
        };
        assert_eq!(s.record_failure(&passive, true), None);
        s.record_success();
        assert_eq!(s.record_failure(&passive, true), None);
        assert!(s.ejected_for().is_none());
        assert_eq!(
            s.record_failure(&passive, true),
            Some(Duration::from_secs(5))
        );
        assert!(s.ejected_for().unwrap() > Duration::from_secs(4));
        // Failures of requests already on it while it is out change nothing.
        assert_eq!(s.record_failure(&passive, true), None);
        // Back, and failing again at once: the next step, then the last repeats.
        let back = |s: &ServerState| s.ejected_until.store(0, Ordering::Release);
        back(&s);
        assert_eq!(
            s.record_failure(&passive, true),
            Some(Duration::from_secs(50))
        );
        back(&s);
        assert_eq!(
            s.record_failure(&passive, true),
            Some(Duration::from_secs(50))
        );
        back(&s);
        // A success starts the ladder over.
        s.record_success();
        assert_eq!(s.record_failure(&passive, true), None);
        assert_eq!(
            s.record_failure(&passive, true),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn a_server_that_may_not_be_ejected_only_counts_failures() {
        let s = server();
        let passive = PassiveHealth {
            failures: 1,
            steps: vec![Duration::from_secs(5)],
        };
        assert_eq!(s.record_failure(&passive, false), None);
        assert!(s.ejected_for().is_none());
        assert_eq!(s.failures(), 1);
    }
}
