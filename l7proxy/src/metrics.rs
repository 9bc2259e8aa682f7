//! The tenant's Prometheus metrics: its upstream pools, gathered when scraped
//! (nothing is counted twice on the request path).

use crate::pool::Pool;
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use std::sync::Arc;

const SERVER_LABELS: [&str; 3] = ["upstream", "server", "origin"];

/// Responses cut short because the upstream failed after they had started
/// (HTTP/1.1 closed short of its framing, HTTP/2 stream reset).
pub static RESPONSES_ABORTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

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
    aborted.inc_by(RESPONSES_ABORTED.load(std::sync::atomic::Ordering::Relaxed));
    registry
        .register(Box::new(aborted))
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
