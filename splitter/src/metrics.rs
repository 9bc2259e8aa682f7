//! Prometheus metrics of the splitter, served by [`crate::admin`].
//!
//! Connection outcomes and latency histograms are recorded as they happen in
//! the process-wide registry; per-tenant counters are read from the tenants at
//! scrape time, so they are kept in one place only.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::sync::LazyLock;
use std::time::Duration;
use switchyard_shared::control::FleetStatus;

/// Latency buckets from 10 µs to 10 s.
const BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

struct Metrics {
    registry: Registry,
    connections: IntCounterVec,
    peek: HistogramVec,
    handoff: HistogramVec,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new();
    let connections = IntCounterVec::new(
        Opts::new(
            "switchyard_connections_total",
            "Accepted connections by listener and outcome (routed, unknown_host, max_pending, peek_timeout, client_closed, or the reason a peek refused them)",
        ),
        &["listener", "outcome"],
    )
    .expect("valid metric");
    let peek = HistogramVec::new(
        HistogramOpts::new(
            "switchyard_peek_seconds",
            "From accept until the routing name is known",
        )
        .buckets(BUCKETS.to_vec()),
        &["listener"],
    )
    .expect("valid metric");
    let handoff = HistogramVec::new(
        HistogramOpts::new(
            "switchyard_handoff_seconds",
            "From the routing name being known until the socket is sent to a tenant process (includes time held)",
        )
        .buckets(BUCKETS.to_vec()),
        &["tenant"],
    )
    .expect("valid metric");
    for collector in [
        Box::new(connections.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(peek.clone()),
        Box::new(handoff.clone()),
    ] {
        registry.register(collector).expect("registered once");
    }
    Metrics {
        registry,
        connections,
        peek,
        handoff,
    }
});

/// Counts one connection's outcome on `listener`.
pub fn connection(listener: &str, outcome: &str) {
    METRICS
        .connections
        .with_label_values(&[listener, outcome])
        .inc();
}

/// Records how long peeking took on `listener`.
pub fn peeked(listener: &str, elapsed: Duration) {
    METRICS
        .peek
        .with_label_values(&[listener])
        .observe(elapsed.as_secs_f64());
}

/// Records how long a connection took from its name to its handoff.
pub fn handed_off(tenant: &str, elapsed: Duration) {
    METRICS
        .handoff
        .with_label_values(&[tenant])
        .observe(elapsed.as_secs_f64());
}

/// The Prometheus text exposition: recorded metrics plus the per-tenant
/// counters and gauges of `status` (the document `ctl status --json` prints).
pub fn render(status: &FleetStatus) -> String {
    let scrape = Registry::new();
    let counter = |name: &str, help: &str| {
        let vec = IntCounterVec::new(Opts::new(name, help), &["tenant"]).expect("valid metric");
        scrape
            .register(Box::new(vec.clone()))
            .expect("registered once");
        vec
    };
    let gauge = |name: &str, help: &str| {
        let vec = IntGaugeVec::new(Opts::new(name, help), &["tenant"]).expect("valid metric");
        scrape
            .register(Box::new(vec.clone()))
            .expect("registered once");
        vec
    };
    let handed = counter(
        "switchyard_handoffs_total",
        "Connections handed to a tenant process",
    );
    let held_total = counter(
        "switchyard_held_total",
        "Connections that waited for a ready tenant process",
    );
    let timeouts = counter(
        "switchyard_hold_timeouts_total",
        "Held connections turned away at hold_timeout",
    );
    let rehanded = counter(
        "switchyard_rehanded_total",
        "Unacknowledged connections handed again after their process died",
    );
    let full = counter(
        "switchyard_handoff_socket_full_total",
        "Handoffs that found a process's handoff socket full",
    );
    let restarts = counter(
        "switchyard_process_restarts_total",
        "Tenant processes respawned after an unexpected exit",
    );
    let held_now = gauge(
        "switchyard_held",
        "Connections waiting for a ready tenant process now",
    );
    let ready = gauge(
        "switchyard_ready_processes",
        "Tenant processes taking connections now",
    );
    for t in &status.tenants {
        let name = [t.name.as_str()];
        handed.with_label_values(&name).inc_by(t.handed_off);
        held_total.with_label_values(&name).inc_by(t.held_total);
        timeouts.with_label_values(&name).inc_by(t.hold_timeouts);
        rehanded.with_label_values(&name).inc_by(t.rehanded);
        full.with_label_values(&name).inc_by(t.socket_full);
        restarts.with_label_values(&name).inc_by(t.restarts);
        held_now.with_label_values(&name).set(t.held_now as i64);
        let ready_count = t.processes.iter().filter(|p| p.state == "ready").count();
        ready.with_label_values(&name).set(ready_count as i64);
    }
    let pending = IntGauge::new(
        "switchyard_pending",
        "Connections being peeked or held (limit: max_pending)",
    )
    .expect("valid metric");
    pending.set(status.pending as i64);
    scrape.register(Box::new(pending)).expect("registered once");

    let mut families = METRICS.registry.gather();
    families.extend(scrape.gather());
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&families, &mut out);
    String::from_utf8(out).unwrap_or_default()
}
