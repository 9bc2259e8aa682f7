//! Upstream pools: one per `[[upstream]]` group of the tenant file.
//!
//! A pool is a Pingora `LoadBalancer` (selection, health checks) over the
//! servers its discovery yields — static, registered through the
//! registration API, or found by DNS — plus what Pingora leaves to its user:
//! `least_conn`, requests in flight per server with a bounded wait for a free
//! one (`max_in_flight`, `queue_timeout`), passive ejection of servers whose
//! requests fail, and never sending a retry to a server the request already
//! tried while another is available.

mod discovery;
mod dns;
mod error;
pub mod hash_key;
mod health;
mod peer;
pub mod registry;
pub mod server;
mod upkeep;

pub use error::PoolError;
pub use upkeep::PoolUpkeep;

use discovery::PoolDiscovery;
use dns::DnsSource;
use peer::PeerTemplate;
use pingora::lb::selection::{Consistent, Random, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::upstreams::peer::HttpPeer;
use registry::Registry;
use serde_json::{json, Value};
use server::{Lease, ServerState};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard_shared::config::{LbKind, ServerAddr, UpstreamConfig};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The most requests one pool lets wait for a free server; beyond it requests
/// get `503` at once (the wait itself is bounded by `queue_timeout`).
pub const MAX_QUEUED: usize = 4096;

/// A group's load balancer, whichever the algorithm.
enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Consistent(LoadBalancer<Consistent>),
    /// Membership and health from Pingora; the choice is made here.
    LeastConn(LoadBalancer<RoundRobin>),
}

/// Why a request gets no server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The pool has no servers at all.
    Empty,
    /// Every server failed its health check or is ejected.
    AllDown,
    /// Every healthy server stayed at `max_in_flight` for `queue_timeout`.
    QueueTimeout,
    /// Too many requests are already waiting.
    QueueFull,
}

impl Unavailable {
    /// What the client is told.
    pub fn message(self, upstream: &str) -> String {
        match self {
            Unavailable::Empty => format!("upstream {upstream:?} has no servers (none listed, registered or found by DNS)"),
            Unavailable::AllDown => format!("every server of upstream {upstream:?} is down (failed health checks or recent errors)"),
            Unavailable::QueueTimeout => format!("every server of upstream {upstream:?} is at max_in_flight and none freed up within queue_timeout"),
            Unavailable::QueueFull => format!("upstream {upstream:?} has too many requests waiting for a server"),
        }
    }
}

enum Pick {
    Leased(Lease),
    Busy,
    Down(Unavailable),
}

/// One upstream group, ready to pick servers.
pub struct Pool {
    /// The tenant it belongs to.
    pub tenant: String,
    /// The group's settings.
    pub config: UpstreamConfig,
    balancer: Balancer,
    peers: PeerTemplate,
    registry: Option<Arc<Registry>>,
    dns: Option<Arc<DnsSource>>,
    /// Woken when an in-flight slot is released (queued requests wait on it).
    freed: Arc<Notify>,
    queued: AtomicUsize,
    /// Asks the upkeep to run discovery now (a registration changed).
    changed: Notify,
    /// Asks the upkeep to run a health check pass now (membership changed).
    check_now: Notify,
    rotation: AtomicUsize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.config.name)
            .finish()
    }
}

/// Counts a request waiting for a free server, also when it is abandoned.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pool {
    /// Builds the pool of `config` and runs its first discovery.
    pub async fn build(
        tenant: &str,
        config: UpstreamConfig,
        registry: Option<Arc<Registry>>,
    ) -> Result<Arc<Pool>, PoolError> {
        let name = config.name.clone();
        let registry = registry.filter(|_| config.registration);
        let peers = PeerTemplate::new(&config).map_err(PoolError::of(&name))?;
        let dns = match &config.dns {
            Some(d) => Some(Arc::new(
                DnsSource::new(d.clone()).map_err(PoolError::of(&name))?,
            )),
            None => None,
        };
        let discovery = PoolDiscovery {
            upstream: config.name.clone(),
            statics: config.servers.clone(),
            registry: registry.clone(),
            dns: dns.clone(),
            states: Arc::new(Mutex::new(HashMap::new())),
        };
        let mut backends = Backends::new(Box::new(discovery));
        if let Some(health) = &config.health {
            backends.set_health_check(
                health::build(tenant, &config.name, health, &peers)
                    .map_err(PoolError::of(&name))?,
            );
        }
        let balancer = match config.lb {
            LbKind::RoundRobin => Balancer::RoundRobin(LoadBalancer::from_backends(backends)),
            LbKind::Random => Balancer::Random(LoadBalancer::from_backends(backends)),
            LbKind::ConsistentHash => Balancer::Consistent(LoadBalancer::from_backends(backends)),
            LbKind::LeastConn => Balancer::LeastConn(LoadBalancer::from_backends(backends)),
        };
        let pool = Arc::new(Pool {
            tenant: tenant.to_string(),
            registry,
            config,
            balancer,
            peers,
            dns,
            freed: Arc::new(Notify::new()),
            queued: AtomicUsize::new(0),
            changed: Notify::new(),
            check_now: Notify::new(),
            rotation: AtomicUsize::new(0),
        });
        pool.update().await?;
        Ok(pool)
    }

    fn backends(&self) -> &Backends {
        match &self.balancer {
            Balancer::RoundRobin(lb) | Balancer::LeastConn(lb) => lb.backends(),
            Balancer::Random(lb) => lb.backends(),
            Balancer::Consistent(lb) => lb.backends(),
        }
    }

    /// Runs discovery; true when the membership changed.
    pub async fn update(&self) -> Result<bool, PoolError> {
        let before = self.backends().get_backend();
        let result = match &self.balancer {
            Balancer::RoundRobin(lb) | Balancer::LeastConn(lb) => lb.update().await,
            Balancer::Random(lb) => lb.update().await,
            Balancer::Consistent(lb) => lb.update().await,
        };
        result
            .map_err(|e| PoolError::Discovery(e.to_string()))
            .map_err(PoolError::of(&self.config.name))?;
        Ok(!Arc::ptr_eq(&before, &self.backends().get_backend()))
    }

    /// Whether selection uses the request's `hash_key`.
    pub fn uses_hash_key(&self) -> bool {
        self.config.lb == LbKind::ConsistentHash
    }

    /// Asks the upkeep to run discovery at once (after a registration).
    pub fn membership_may_have_changed(&self) {
        self.changed.notify_one();
    }

    fn select(&self, key: &[u8], accept: impl Fn(&Backend, bool) -> bool) -> Option<Backend> {
        let iterations = 64 + 4 * self.backends().get_backend().len();
        match &self.balancer {
            Balancer::RoundRobin(lb) => lb.select_with(key, iterations, accept),
            Balancer::Random(lb) => lb.select_with(key, iterations, accept),
            Balancer::Consistent(lb) => lb.select_with(key, iterations, accept),
            Balancer::LeastConn(lb) => {
                // Fewest requests in flight per unit of weight; among equals,
                // a weighted rotation (so an idle pool still shares by weight).
                let backends = lb.backends().get_backend();
                let load = |b: &Backend| {
                    let in_flight = b.ext.get::<Arc<ServerState>>().map_or(0, |s| s.in_flight());
                    in_flight as f64 / b.weight.max(1) as f64
                };
                let mut ranked: Vec<(f64, &Backend)> =
                    backends.iter().map(|b| (load(b), b)).collect();
                ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
                let tied = ranked
                    .iter()
                    .take_while(|(score, _)| *score == ranked[0].0)
                    .count();
                let total: usize = ranked[..tied].iter().map(|(_, b)| b.weight.max(1)).sum();
                if total > 0 {
                    let mut turn = self.rotation.fetch_add(1, Ordering::Relaxed) % total;
                    let first = ranked[..tied]
                        .iter()
                        .position(|(_, b)| {
                            let w = b.weight.max(1);
                            if turn < w {
                                true
                            } else {
                                turn -= w;
                                false
                            }
                        })
                        .unwrap_or(0);
                    ranked[..tied].rotate_left(first);
                }
                ranked
                    .into_iter()
                    .find(|(_, b)| accept(b, lb.backends().ready(b)))
                    .map(|(_, b)| b.clone())
            }
        }
    }

    fn try_pick(&self, key: &[u8], tried: &[ServerAddr]) -> Pick {
        let max = self.config.max_in_flight;
        let leased: Cell<Option<Lease>> = Cell::new(None);
        let busy = Cell::new(false);
        let skipped_tried = Cell::new(false);
        let ejected_only = Cell::new(false);
        let accept = |b: &Backend, healthy: bool, avoid_tried: bool, panic: bool| {
            let Some(state) = b.ext.get::<Arc<ServerState>>() else {
                return false;
            };
            if !healthy {
                return false;
            }
            if !panic && state.ejected_for().is_some() {
                ejected_only.set(true);
                return false;
            }
            if avoid_tried && tried.contains(&state.addr) {
                skipped_tried.set(true);
                return false;
            }
            match state.try_acquire(max) {
                Some(lease) => {
                    leased.set(Some(lease));
                    true
                }
                None => {
                    busy.set(true);
                    false
                }
            }
        };
        if self
            .select(key, |b, healthy| accept(b, healthy, true, false))
            .is_some()
        {
            return Pick::Leased(leased.take().expect("accepted with a lease"));
        }
        // Every other server is down or busy: the one already tried beats none.
        if skipped_tried.get()
            && self
                .select(key, |b, healthy| accept(b, healthy, false, false))
                .is_some()
        {
            return Pick::Leased(leased.take().expect("accepted with a lease"));
        }
        // Panic mode (as Envoy): when passive health has every server out,
        // all of them are used rather than none; a proxy-made 503 for a
        // backend that answers again is worse than a request to it.
        if ejected_only.get()
            && !busy.get()
            && self
                .select(key, |b, healthy| accept(b, healthy, true, true))
                .or_else(|| self.select(key, |b, healthy| accept(b, healthy, false, true)))
                .is_some()
        {
            return Pick::Leased(leased.take().expect("accepted with a lease"));
        }
        if busy.get() {
            Pick::Busy
        } else if self.backends().get_backend().is_empty() {
            Pick::Down(Unavailable::Empty)
        } else {
            Pick::Down(Unavailable::AllDown)
        }
    }

    /// Picks a server for a request, avoiding those in `tried`; when every
    /// healthy server is at `max_in_flight`, waits until `deadline` for one.
    pub async fn acquire(
        &self,
        key: &[u8],
        tried: &[ServerAddr],
        deadline: Instant,
    ) -> Result<(Lease, Box<HttpPeer>), Unavailable> {
        let leased = |lease: Lease| {
            let peer = self.peers.peer_for_server(&lease);
            let lease = match self.config.max_in_flight {
                Some(_) => lease.wake_on_release(self.freed.clone()),
                None => lease,
            };
            Ok((lease, peer))
        };
        loop {
            match self.try_pick(key, tried) {
                Pick::Leased(lease) => return leased(lease),
                Pick::Down(why) => return Err(why),
                Pick::Busy => {}
            }
            // Every healthy server is full: register for a release, then look
            // again so that a release in between is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.try_pick(key, tried) {
                Pick::Leased(lease) => return leased(lease),
                Pick::Down(why) => return Err(why),
                Pick::Busy => {}
            }
            if self.queued.fetch_add(1, Ordering::AcqRel) >= MAX_QUEUED {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                return Err(Unavailable::QueueFull);
            }
            let _queued = Queued(&self.queued);
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(Unavailable::QueueTimeout);
            }
        }
    }

    /// Records a failed attempt on a server (passive health). The only server
    /// of a pool is never ejected (as nginx): there is nowhere else to go.
    pub fn record_failure(&self, server: &ServerState) {
        let may_eject = self.backends().get_backend().len() > 1;
        if let Some(lasts) = server.record_failure(&self.config.passive, may_eject) {
            tracing::warn!(
                tenant = %self.tenant,
                upstream = %self.config.name,
                server = %server.addr,
                ejected_ms = lasts.as_millis() as u64,
                "server failed; it gets no requests for a while (passive health; longer each time it fails again on its return)"
            );
        }
    }

    /// How many requests wait for a free server.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// The current servers and their state.
    pub fn snapshot(&self) -> Vec<ServerSnapshot> {
        let expiry: HashMap<ServerAddr, Duration> = self
            .registry
            .as_ref()
            .map(|r| {
                r.live(&self.config.name)
                    .into_iter()
                    .map(|reg| (reg.spec.addr, reg.expires_in))
                    .collect()
            })
            .unwrap_or_default();
        let backends = self.backends().get_backend();
        backends
            .iter()
            .filter_map(|b| {
                let state = b.ext.get::<Arc<ServerState>>()?;
                let checked_up = self.backends().ready(b);
                let ejected = state.ejected_for();
                Some(ServerSnapshot {
                    addr: state.addr.to_string(),
                    origin: state.origin.as_str(),
                    weight: b.weight,
                    up: checked_up && ejected.is_none(),
                    health_check: match (self.config.health.is_some(), checked_up) {
                        (false, _) => "none",
                        (true, true) => "up",
                        (true, false) => "down",
                    },
                    ejected_for: ejected,
                    in_flight: state.in_flight(),
                    requests: state.requests(),
                    failures: state.failures(),
                    expires_in: expiry.get(&state.addr).copied(),
                })
            })
            .collect()
    }

    /// The pool as `GET /v1/upstreams` shows it.
    pub fn report(&self) -> Value {
        let servers: Vec<Value> = self
            .snapshot()
            .into_iter()
            .map(|s| {
                json!({
                    "addr": s.addr,
                    "origin": s.origin,
                    "weight": s.weight,
                    "healthy": s.up,
                    "health_check": s.health_check,
                    "ejected_ms": s.ejected_for.map(|d| d.as_millis() as u64),
                    "in_flight": s.in_flight,
                    "requests": s.requests,
                    "failures": s.failures,
                    "expires_in_ms": s.expires_in.map(|d| d.as_millis() as u64),
                })
            })
            .collect();
        json!({
            "name": self.config.name,
            "lb": self.config.lb.as_str(),
            "registration": self.config.registration,
            "dns": self.config.dns.as_ref().map(|d| d.name.clone()),
            "max_in_flight": self.config.max_in_flight,
            "queued": self.queued(),
            "servers": servers,
        })
    }
}

/// One server of a pool as reported.
#[derive(Debug, Clone)]
pub struct ServerSnapshot {
    /// Its address.
    pub addr: String,
    /// `static`, `registered` or `dns`.
    pub origin: &'static str,
    /// Its weight.
    pub weight: usize,
    /// Whether it gets new requests (health check passing, not ejected).
    pub up: bool,
    /// `up`, `down`, or `none` without active checks.
    pub health_check: &'static str,
    /// Time left in a passive cool-down.
    pub ejected_for: Option<Duration>,
    /// Requests in flight.
    pub in_flight: usize,
    /// Attempts sent so far.
    pub requests: u64,
    /// Failed attempts so far.
    pub failures: u64,
    /// Time before a registration lapses.
    pub expires_in: Option<Duration>,
}
