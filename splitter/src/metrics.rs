//! Prometheus metrics of the splitter, served by [`crate::admin`].
//!
//! Connection outcomes and latency histograms are recorded as they happen in
//! the process-wide registry; per-tenant counters are read from the tenants at
//! scrape time ([`crate::tenant_metrics`]), so they are kept in one place only.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

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

/// One listener's metrics, with the series every routed connection touches
/// looked up once: `with_label_values` hashes the labels and takes a lock on
/// every call, which the splitter would otherwise pay several times per
/// handoff.
#[derive(Debug)]
pub struct ListenerMetrics {
    label: Arc<str>,
    peek: Histogram,
    routed: IntCounter,
}

impl ListenerMetrics {
    /// The metrics of the listener labelled `label` (`IP:port`).
    pub fn new(label: &str) -> Arc<Self> {
        Arc::new(Self {
            label: label.into(),
            peek: METRICS.peek.with_label_values(&[label]),
            routed: METRICS.connections.with_label_values(&[label, "routed"]),
        })
    }

    /// Counts one connection's outcome (`routed` has its own, faster call).
    pub fn outcome(&self, outcome: &str) {
        connection(&self.label, outcome);
    }

    /// Counts one connection routed to a tenant.
    pub fn routed(&self) {
        self.routed.inc();
    }

    /// Records how long peeking took.
    pub fn peeked(&self, elapsed: Duration) {
        self.peek.observe(elapsed.as_secs_f64());
    }
}

/// The handoff-latency series of the tenant named `tenant`, for the tenant to
/// keep (see [`ListenerMetrics`] for why).
pub fn handoff_seconds(tenant: &str) -> Histogram {
    METRICS.handoff.with_label_values(&[tenant])
}

/// Adds `collector` (read at every scrape) to the splitter's registry.
pub fn register(collector: Box<dyn prometheus::core::Collector>) {
    if let Err(e) = METRICS.registry.register(collector) {
        tracing::warn!(error = %e, "a metrics collector was registered twice; the first one stays");
    }
}

/// The Prometheus text exposition of everything registered.
pub fn render() -> String {
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&METRICS.registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}
