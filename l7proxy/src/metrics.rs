//! The tenant's Prometheus metrics, in one registry built at start
//! ([`TenantMetrics`]): counters the request path increments directly
//! ([`count`]), and a [`Collector`] that reads the upstream pools' live state
//! when scraped (nothing is counted twice on the request path).

use crate::pool::Pool;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

const SERVER_LABELS: [&str; 3] = ["upstream", "server", "origin"];

/// Request-path counters of this process, incremented where things happen.
pub struct Counters {
    /// Responses cut short because the upstream failed after they had started
    /// (HTTP/1.1 closed short of its framing, HTTP/2 stream reset).
    pub responses_aborted: IntCounter,
    /// Requests ended by a timeout, by kind (`client_body`, `upstream`).
    timeouts: IntCounterVec,
    /// Access lines dropped because the writer lagged.
    pub access_log_dropped: IntCounter,
    /// TLS handshakes served the self-signed placeholder (ACME has not
    /// delivered a certificate yet).
    pub tls_placeholder_handshakes: IntCounter,
}

impl Counters {
    /// Counts a request ended by a timeout of `kind`.
    pub fn timed_out(&self, kind: TimeoutKind) {
        self.timeouts.with_label_values(&[kind.label()]).inc();
    }
}

/// Which timeout ended a request.
#[derive(Debug, Clone, Copy)]
pub enum TimeoutKind {
    /// `[http] client_body_timeout` between two reads of a body (408).
    ClientBody,
    /// An upstream's `read_timeout` or `response_header_timeout` (504, or an
    /// aborted response).
    Upstream,
}

impl TimeoutKind {
    fn label(self) -> &'static str {
        match self {
            TimeoutKind::ClientBody => "client_body",
            TimeoutKind::Upstream => "upstream",
        }
    }
}

/// The counters of this process.
pub static COUNT: LazyLock<Counters> = LazyLock::new(|| {
    Counters {
    responses_aborted: IntCounter::new(
        "switchyard_tenant_responses_aborted_total",
        "Responses cut short because the upstream failed after they had started (never completed with an error text)",
    )
    .expect("valid metric"),
    timeouts: IntCounterVec::new(
        Opts::new(
            "switchyard_tenant_timeouts_total",
            "Requests ended by a timeout: client_header (connection closed), client_body (408), upstream (504, or an aborted response); keepalive counts kept-alive connections closed idle",
        ),
        &["kind"],
    )
    .expect("valid metric"),
    access_log_dropped: IntCounter::new(
        "switchyard_tenant_access_log_dropped_total",
        "Access lines dropped because the log writer lagged (a request never waits for the log)",
    )
    .expect("valid metric"),
    tls_placeholder_handshakes: IntCounter::new(
        "switchyard_tenant_tls_placeholder_handshakes_total",
        "TLS handshakes served the self-signed placeholder because ACME has not delivered a certificate yet",
    )
    .expect("valid metric"),
}
});

/// The process's counters.
pub fn count() -> &'static Counters {
    &COUNT
}

/// Request headers that missed `[http] client_header_timeout`: counted inside
/// Pingora's HTTP/1 session (third_party/PATCHES.md, patch 2), read at scrape.
pub static CLIENT_HEADER_TIMEOUTS: LazyLock<Arc<AtomicU64>> = LazyLock::new(Arc::default);

/// Kept-alive connections closed idle at `[http] keepalive_timeout`: counted
/// inside Pingora's HTTP/1 session (third_party/PATCHES.md, patch 4).
pub static KEEPALIVE_IDLE_CLOSES: LazyLock<Arc<AtomicU64>> = LazyLock::new(Arc::default);

/// Everything the tenant's `/metrics` shows, labelled with its name.
pub struct TenantMetrics {
    registry: Registry,
    tenant: String,
}

impl TenantMetrics {
    /// The registry of `tenant`, reading `pools` and the certificate in use
    /// when scraped.
    pub fn new(
        tenant: &str,
        pools: Vec<Arc<Pool>>,
        certificate: Option<Arc<crate::tls::CertStore>>,
    ) -> TenantMetrics {
        let registry = Registry::new_custom(
            None,
            Some(std::iter::once(("tenant".to_string(), tenant.to_string())).collect()),
        )
        .expect("valid registry");
        let collectors: [Box<dyn Collector>; 5] = [
            Box::new(COUNT.responses_aborted.clone()),
            Box::new(COUNT.access_log_dropped.clone()),
            Box::new(COUNT.tls_placeholder_handshakes.clone()),
            Box::new(TimeoutCollector),
            Box::new(PoolCollector::new(pools)),
        ];
        for collector in collectors {
            registry.register(collector).expect("registered once");
        }
        if let Some(certificate) = certificate {
            registry
                .register(Box::new(ExpiryCollector::new(certificate)))
                .expect("registered once");
        }
        TenantMetrics {
            registry,
            tenant: tenant.to_string(),
        }
    }

    /// The Prometheus text exposition: the registry's series, then the
    /// tenant's request statistics (summed over its processes by the
    /// splitter; see [`crate::request_stats`]).
    pub fn render(&self) -> Vec<u8> {
        let mut text = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut text);
        text.extend_from_slice(crate::request_stats::STATS.render(&self.tenant).as_bytes());
        text
    }
}

/// `switchyard_tenant_timeouts_total`: the counted kinds plus Pingora's count
/// of header timeouts.
struct TimeoutCollector;

impl Collector for TimeoutCollector {
    fn desc(&self) -> Vec<&Desc> {
        COUNT.timeouts.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        static SCRAPE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = SCRAPE.lock().unwrap_or_else(|p| p.into_inner());
        let header = COUNT.timeouts.with_label_values(&["client_header"]);
        header.reset();
        header.inc_by(CLIENT_HEADER_TIMEOUTS.load(Ordering::Relaxed));
        let idle = COUNT.timeouts.with_label_values(&["keepalive"]);
        idle.reset();
        idle.inc_by(KEEPALIVE_IDLE_CLOSES.load(Ordering::Relaxed));
        // Both other kinds appear from the first scrape on.
        COUNT.timeouts.with_label_values(&["client_body"]);
        COUNT.timeouts.with_label_values(&["upstream"]);
        COUNT.timeouts.collect()
    }
}

/// The upstream pools' servers, read from the pools when scraped.
struct PoolCollector {
    pools: Vec<Arc<Pool>>,
    /// One scrape at a time: each rebuilds the series from the pools.
    scrape: std::sync::Mutex<()>,
    up: IntGaugeVec,
    in_flight: IntGaugeVec,
    requests: IntCounterVec,
    failures: IntCounterVec,
    queued: IntGaugeVec,
}

impl PoolCollector {
    fn new(pools: Vec<Arc<Pool>>) -> PoolCollector {
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let counter = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &SERVER_LABELS).expect("valid metric")
        };
        PoolCollector {
            pools,
            scrape: std::sync::Mutex::new(()),
            up: gauge(
                "switchyard_upstream_server_up",
                "1 when the server gets new requests (health check passing, not ejected)",
                &SERVER_LABELS,
            ),
            in_flight: gauge(
                "switchyard_upstream_server_in_flight",
                "Requests in flight to the server",
                &SERVER_LABELS,
            ),
            requests: counter(
                "switchyard_upstream_server_requests_total",
                "Attempts sent to the server (retries count again)",
            ),
            failures: counter(
                "switchyard_upstream_server_failures_total",
                "Attempts to the server that failed (connect errors, errors before a response)",
            ),
            queued: gauge(
                "switchyard_upstream_queued",
                "Requests waiting for a server below max_in_flight",
                &["upstream"],
            ),
        }
    }
}

impl Collector for PoolCollector {
    fn desc(&self) -> Vec<&Desc> {
        [
            self.up.desc(),
            self.in_flight.desc(),
            self.requests.desc(),
            self.failures.desc(),
            self.queued.desc(),
        ]
        .concat()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        // Servers come and go (registration, DNS): only the current ones.
        self.up.reset();
        self.in_flight.reset();
        self.requests.reset();
        self.failures.reset();
        self.queued.reset();
        for pool in &self.pools {
            let name = pool.config.name.as_str();
            self.queued
                .with_label_values(&[name])
                .set(pool.queued() as i64);
            for server in pool.snapshot() {
                let labels = [name, server.addr.as_str(), server.origin];
                self.up.with_label_values(&labels).set(server.up as i64);
                self.in_flight
                    .with_label_values(&labels)
                    .set(server.in_flight as i64);
                self.requests
                    .with_label_values(&labels)
                    .inc_by(server.requests);
                self.failures
                    .with_label_values(&labels)
                    .inc_by(server.failures);
            }
        }
        [
            self.up.collect(),
            self.in_flight.collect(),
            self.requests.collect(),
            self.failures.collect(),
            self.queued.collect(),
        ]
        .concat()
    }
}

/// `switchyard_tls_certificate_expiry_seconds`: the certificate in use, read
/// when scraped (a reload changes it).
struct ExpiryCollector {
    certificate: Arc<crate::tls::CertStore>,
    gauge: prometheus::IntGauge,
}

impl ExpiryCollector {
    fn new(certificate: Arc<crate::tls::CertStore>) -> ExpiryCollector {
        ExpiryCollector {
            certificate,
            gauge: prometheus::IntGauge::new(
                "switchyard_tls_certificate_expiry_seconds",
                "Seconds until the tenant's certificate in use expires (negative: expired)",
            )
            .expect("valid metric"),
        }
    }
}

impl Collector for ExpiryCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.gauge.set(self.certificate.seconds_to_expiry());
        self.gauge.collect()
    }
}
