//! A client connection on its way from a listener to a tenant process.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use switchyard_shared::config::{Protocol, SplitterSettings};
use switchyard_shared::handoff::ConnMeta;

/// Most source addresses whose connection rate is remembered; beyond it, idle
/// ones are forgotten first, and a new address is not rate-limited until there
/// is room (memory stays bounded whatever the number of addresses).
const MAX_TRACKED_SOURCES: usize = 65_536;

/// Why a new connection was refused at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_pending` connections are peeking or held.
    MaxPending,
    /// Its source has `max_pending_per_ip` connections peeking or held.
    PerIpPending,
    /// Its source opened more than `max_conn_rate_per_ip` connections a second.
    PerIpRate,
}

impl Refusal {
    /// The outcome label in `switchyard_connections_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxPending => "max_pending",
            Refusal::PerIpPending => "max_pending_per_ip",
            Refusal::PerIpRate => "max_conn_rate_per_ip",
        }
    }
}

/// A source as limits see it: an IPv4 address, or an IPv6 /64 (one host
/// usually owns a whole /64, so counting addresses would count nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceKey(u128);

impl SourceKey {
    /// The key of `ip`.
    pub fn of(ip: IpAddr) -> SourceKey {
        match switchyard_shared::net::canonical(ip) {
            IpAddr::V4(v4) => SourceKey(u32::from(v4) as u128),
            // The /64 prefix, marked so that it never equals an IPv4 key.
            IpAddr::V6(v6) => SourceKey((u128::from(v6) >> 64 << 64) | (1 << 32)),
        }
    }
}

#[derive(Debug)]
struct Source {
    pending: usize,
    tokens: f64,
    refilled: Instant,
}

/// Counts connections being peeked or held, against `max_pending` for the
/// whole splitter and `max_pending_per_ip` per source, and limits each
/// source's rate of new connections (a token bucket of `max_conn_rate_per_ip`
/// a second, as deep as one second's worth).
#[derive(Debug)]
pub struct PendingLimit {
    /// One permit per connection peeking or held, `max_pending` in all.
    places: Arc<tokio::sync::Semaphore>,
    max: usize,
    max_per_source: usize,
    rate: f64,
    sources: Mutex<HashMap<SourceKey, Source>>,
}

impl PendingLimit {
    /// The limits of `settings`.
    pub fn new(settings: &SplitterSettings) -> Arc<PendingLimit> {
        Arc::new(PendingLimit {
            places: Arc::new(tokio::sync::Semaphore::new(settings.max_pending)),
            max: settings.max_pending,
            max_per_source: settings.max_pending_per_ip,
            rate: settings.max_conn_rate_per_ip as f64,
            sources: Mutex::new(HashMap::new()),
        })
    }

    /// Connections peeking or held right now.
    pub fn current(&self) -> usize {
        self.max - self.places.available_permits()
    }

    /// Takes a place for a connection from `peer`, or says why not.
    pub fn try_acquire(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<PendingSlot, Refusal> {
        let key = peer.map(SourceKey::of);
        if let Some(key) = key {
            self.admit_source(key)?;
        }
        match self.places.clone().try_acquire_owned() {
            Ok(permit) => Ok(PendingSlot(Some((self.clone(), permit, key)))),
            Err(_) => {
                if let Some(key) = key {
                    self.release_source(key);
                }
                Err(Refusal::MaxPending)
            }
        }
    }

    fn admit_source(&self, key: SourceKey) -> Result<(), Refusal> {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if !sources.contains_key(&key) && sources.len() >= MAX_TRACKED_SOURCES {
            let rate = self.rate;
            sources.retain(|_, s| {
                s.pending > 0
                    && (rate == 0.0
                        || s.tokens + now.duration_since(s.refilled).as_secs_f64() * rate < rate)
            });
        }
        let tracked = sources.len() < MAX_TRACKED_SOURCES || sources.contains_key(&key);
        if !tracked {
            return Ok(());
        }
        let burst = self.rate;
        let source = sources.entry(key).or_insert(Source {
            pending: 0,
            tokens: burst,
            refilled: now,
        });
        if source.pending >= self.max_per_source {
            return Err(Refusal::PerIpPending);
        }
        if self.rate > 0.0 {
            source.tokens = (source.tokens
                + now.duration_since(source.refilled).as_secs_f64() * self.rate)
                .min(burst);
            source.refilled = now;
            if source.tokens < 1.0 {
                return Err(Refusal::PerIpRate);
            }
            source.tokens -= 1.0;
        }
        source.pending += 1;
        Ok(())
    }

    fn release_source(&self, key: SourceKey) {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(source) = sources.get_mut(&key) {
            source.pending = source.pending.saturating_sub(1);
            if source.pending == 0 && self.rate == 0.0 {
                sources.remove(&key);
            }
        }
    }
}

/// One place under [`PendingLimit`], given back when dropped or released.
#[derive(Debug)]
pub struct PendingSlot(
    Option<(
        Arc<PendingLimit>,
        tokio::sync::OwnedSemaphorePermit,
        Option<SourceKey>,
    )>,
);

impl PendingSlot {
    /// Gives the place back now (the connection was handed off).
    pub fn release(&mut self) {
        if let Some((limit, permit, key)) = self.0.take() {
            drop(permit);
            if let Some(key) = key {
                limit.release_source(key);
            }
        }
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.release();
    }
}

/// An accepted, peeked client connection and what was learnt about it.
#[derive(Debug)]
pub struct ClientConn {
    /// The accepted socket (not registered with any epoll).
    pub fd: OwnedFd,
    /// The listener's protocol.
    pub protocol: Protocol,
    /// The routing name, normalised.
    pub server_name: Option<String>,
    /// Port of the listener that accepted it.
    pub local_port: u16,
    /// When it was accepted (µs since the epoch).
    pub accepted_at_us: u64,
    /// Its place under `max_pending` while it is peeked or held.
    pub slot: PendingSlot,
    /// The metrics of the listener that accepted it.
    pub listener: Arc<crate::metrics::ListenerMetrics>,
    /// When it was accepted.
    pub accepted: std::time::Instant,
    /// When its routing name became known.
    pub named: Option<std::time::Instant>,
    /// The client's address from a PROXY protocol header, if the listener
    /// takes one.
    pub client_addr: Option<std::net::SocketAddr>,
}

impl ClientConn {
    /// A connection just accepted on the listener `listener` (port `port`),
    /// holding its place `slot`.
    pub fn accepted(
        fd: OwnedFd,
        protocol: Protocol,
        port: u16,
        slot: PendingSlot,
        listener: Arc<crate::metrics::ListenerMetrics>,
    ) -> ClientConn {
        ClientConn {
            fd,
            protocol,
            server_name: None,
            local_port: port,
            accepted_at_us: switchyard_shared::handoff::now_us(),
            slot,
            listener,
            accepted: std::time::Instant::now(),
            named: None,
            client_addr: None,
        }
    }

    /// The `Conn` message describing this connection, with sequence number `seq`.
    pub fn meta(&self, seq: u64) -> ConnMeta {
        ConnMeta {
            seq,
            protocol: self.protocol,
            server_name: self.server_name.clone(),
            local_port: self.local_port,
            accepted_at_us: self.accepted_at_us,
            client_addr: self.client_addr,
        }
    }
}

impl AsFd for ClientConn {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_ip: usize, rate: u32) -> Arc<PendingLimit> {
        let mut settings = settings();
        settings.max_pending = max;
        settings.max_pending_per_ip = per_ip;
        settings.max_conn_rate_per_ip = rate;
        PendingLimit::new(&settings)
    }

    fn settings() -> SplitterSettings {
        SplitterSettings {
            runtime_dir: "/tmp".into(),
            threads: 1,
            peek_timeout: std::time::Duration::from_secs(1),
            max_peek_bytes: 1024,
            hold_timeout: std::time::Duration::from_secs(1),
            orphan_timeout: std::time::Duration::from_secs(1),
            max_pending: 1,
            unknown_host: switchyard_shared::config::UnknownHost::Reject,
            admin: None,
            sched_batch: false,
            user: None,
            max_pending_per_ip: 1,
            max_conn_rate_per_ip: 0,
            max_unacked: 1,
            trusted_proxies: vec![],
        }
    }

    #[test]
    fn one_source_cannot_take_every_place() {
        let limit = limits(10, 3, 0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let held: Vec<_> = (0..3)
            .map(|_| limit.try_acquire(Some(a)).unwrap())
            .collect();
        assert_eq!(
            limit.try_acquire(Some(a)).unwrap_err(),
            Refusal::PerIpPending
        );
        let other = limit.try_acquire(Some(b)).unwrap();
        drop(held);
        assert!(limit.try_acquire(Some(a)).is_ok());
        drop(other);
        assert_eq!(limit.current(), 0);
    }

    #[test]
    fn the_rate_is_a_token_bucket_per_source() {
        let limit = limits(1000, 1000, 5);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..5 {
            drop(limit.try_acquire(Some(a)).unwrap());
        }
        assert_eq!(limit.try_acquire(Some(a)).unwrap_err(), Refusal::PerIpRate);
        assert!(limit.try_acquire(Some("10.0.0.2".parse().unwrap())).is_ok());
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert!(limit.try_acquire(Some(a)).is_ok(), "refilled after 1/5 s");
    }

    #[test]
    fn ipv6_sources_are_counted_per_64() {
        let x = SourceKey::of("2001:db8::1".parse().unwrap());
        assert_eq!(x, SourceKey::of("2001:db8::ffff:1".parse().unwrap()));
        assert_ne!(x, SourceKey::of("2001:db8:0:1::1".parse().unwrap()));
        assert_eq!(
            SourceKey::of("::ffff:10.0.0.1".parse().unwrap()),
            SourceKey::of("10.0.0.1".parse().unwrap())
        );
    }
}
