//! A client connection on its way from a listener to a tenant process.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use switchyard_shared::config::Protocol;
use switchyard_shared::handoff::{ConnMeta, ConnProtocol};

/// Counts connections being peeked or held, against `max_pending`.
#[derive(Debug)]
pub struct PendingLimit {
    now: AtomicUsize,
    max: usize,
}

impl PendingLimit {
    /// A limit of `max` connections.
    pub fn new(max: usize) -> Arc<PendingLimit> {
        Arc::new(PendingLimit {
            now: AtomicUsize::new(0),
            max,
        })
    }

    /// Connections peeking or held right now.
    pub fn current(&self) -> usize {
        self.now.load(Ordering::Relaxed)
    }

    /// Takes a place, or `None` when all `max` are taken.
    pub fn try_acquire(self: &Arc<Self>) -> Option<PendingSlot> {
        let mut now = self.now.load(Ordering::Relaxed);
        loop {
            if now >= self.max {
                return None;
            }
            match self
                .now
                .compare_exchange_weak(now, now + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Some(PendingSlot(Some(self.clone()))),
                Err(seen) => now = seen,
            }
        }
    }
}

/// One place under [`PendingLimit`], given back when dropped or released.
#[derive(Debug)]
pub struct PendingSlot(Option<Arc<PendingLimit>>);

impl PendingSlot {
    /// Gives the place back now (the connection was handed off).
    pub fn release(&mut self) {
        if let Some(limit) = self.0.take() {
            limit.now.fetch_sub(1, Ordering::AcqRel);
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
    /// The listener that accepted it (`IP:port`), for metrics.
    pub listener: Arc<str>,
    /// When it was accepted.
    pub accepted: std::time::Instant,
    /// When its routing name became known.
    pub named: Option<std::time::Instant>,
}

impl ClientConn {
    /// The `Conn` message describing this connection, with sequence number `seq`.
    pub fn meta(&self, seq: u64) -> ConnMeta {
        ConnMeta {
            seq,
            protocol: match self.protocol {
                Protocol::Tls => ConnProtocol::Tls,
                Protocol::Http => ConnProtocol::Http,
            },
            server_name: self.server_name.clone(),
            local_port: self.local_port,
            accepted_at_us: self.accepted_at_us,
        }
    }
}

impl AsFd for ClientConn {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
