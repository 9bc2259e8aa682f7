//! The tenant's Prometheus metrics: its upstream pools, gathered when scraped
//! (nothing is counted twice on the request path).

use crate::pool::Pool;
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const SERVER_LABELS: [&str; 3] = ["upstream", "server", "origin"];

/// Responses cut short because the upstream failed after they had started
/// (HTTP/1.1 closed short of its framing, HTTP/2 stream reset).
pub static RESPONSES_ABORTED: AtomicU64 = AtomicU64::new(0);

/// Request headers that missed `[http] client_header_timeout` (counted inside
/// Pingora's HTTP/1 session; the connection was closed).
pub static CLIENT_HEADER_TIMEOUTS: std::sync::LazyLock<Arc<AtomicU64>> =
    std::sync::LazyLock::new(Arc::default);

/// Request bodies that stalled past `[http] client_body_timeout` (answered 408).
pub static CLIENT_BODY_TIMEOUTS: AtomicU64 = AtomicU64::new(0);

/// Upstream reads that timed out: `read_timeout` between two reads, or
/// `response_header_timeout` for the whole header (answered 504 when nothing
/// had been sent yet).
pub static UPSTREAM_TIMEOUTS: AtomicU64 = AtomicU64::new(0);

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let gauge = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(gauge.clone()))
        .expect("registered once");
    gauge
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounterVec {
    let counter = IntCounterVec::new(Opts::new(name, help), &SERVER_LABELS).expect("valid metric");
    registry
        .register(Box::new(counter.clone()))
        .expect("registered once");
    counter
}

/// The Prometheus text of `pools`.
pub fn render(tenant: &str, pools: &[Arc<Pool>]) -> Vec<u8> {
    let registry = Registry::new_custom(
        None,
        Some(std::iter::once(("tenant".to_string(), tenant.to_string())).collect()),
    )
    .expect("valid registry");
    let up = gauge(
        &registry,
        "switchyard_upstream_server_up",
        "1 when the server gets new requests (health check passing, not ejected)",
        &SERVER_LABELS,
    );
    let in_flight = gauge(
        &registry,
        "switchyard_upstream_server_in_flight",
        "Requests in flight to the server",
        &SERVER_LABELS,
    );
    let requests = counter(
        &registry,
        "switchyard_upstream_server_requests_total",
        "Attempts sent to the server (retries count again)",
    );
    let failures = counter(
        &registry,
        "switchyard_upstream_server_failures_total",
        "Attempts to the server that failed (connect errors, errors before a response)",
    );
    let queued = gauge(
        &registry,
        "switchyard_upstream_queued",
        "Requests waiting for a server below max_in_flight",
        &["upstream"],
    );
    let aborted = prometheus::IntCounter::new(
        "switchyard_tenant_responses_aborted_total",
        "Responses cut short because the upstream failed after they had started (never completed with an error text)",
    )
    .expect("valid metric");
    aborted.inc_by(RESPONSES_ABORTED.load(Ordering::Relaxed));
    registry
        .register(Box::new(aborted))
        .expect("registered once");
    let timeouts = IntCounterVec::new(
        Opts::new(
            "switchyard_tenant_timeouts_total",
            "Requests ended by a timeout: client_header (connection closed), client_body (408), upstream (504, or an aborted response)",
        ),
        &["kind"],
    )
    .expect("valid metric");
    for (kind, count) in [
        (
            "client_header",
            CLIENT_HEADER_TIMEOUTS.load(Ordering::Relaxed),
        ),
        ("client_body", CLIENT_BODY_TIMEOUTS.load(Ordering::Relaxed)),
        ("upstream", UPSTREAM_TIMEOUTS.load(Ordering::Relaxed)),
    ] {
        timeouts.with_label_values(&[kind]).inc_by(count);
    }
    registry
        .register(Box::new(timeouts))
        .expect("registered once");
    for pool in pools {
        let name = pool.config.name.as_str();
        queued.with_label_values(&[name]).set(pool.queued() as i64);
        for server in pool.snapshot() {
            let labels = [name, server.addr.as_str(), server.origin];
            up.with_label_values(&labels).set(server.up as i64);
            in_flight
                .with_label_values(&labels)
                .set(server.in_flight as i64);
            requests.with_label_values(&labels).inc_by(server.requests);
            failures.with_label_values(&labels).inc_by(server.failures);
        }
    }
    let mut text = Vec::new();
    let _ = TextEncoder::new().encode(&registry.gather(), &mut text);
    text
}
