//! This process's request statistics (the `switchyard_tenant_*` series of
//! [`switchyard_shared::tenant_stats`]): recorded at the end of every request,
//! for every handed connection and every TLS handshake; sent to the splitter
//! about every second, which sums the tenant's processes and sends the sum
//! back for the tenant's own `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};
use switchyard_shared::tenant_stats::{
    status_class, Histogram, LabelCount, RequestCount, TenantStats,
};

/// How often a process sends its statistics to the splitter.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

/// A sum from the splitter older than this is not shown (the process's own
/// counts are, until a new sum arrives).
const TOTALS_FRESH_FOR: Duration = Duration::from_secs(5);

/// The status classes counted, in [`status_class`]'s names.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// This process's statistics.
pub static STATS: LazyLock<RequestStats> = LazyLock::new(RequestStats::default);

/// Counters of one process.
#[derive(Default)]
pub struct RequestStats {
    live: Mutex<Live>,
    connections: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    retries: AtomicU64,
    max_in_flight_rejections: AtomicU64,
    /// The tenant-wide sum last received from the splitter, and when.
    totals: Mutex<Option<(Instant, TenantStats)>>,
}

/// Small maps searched in order: a tenant has a few routes and upstreams, and
/// a short scan costs less per request than hashing the keys.
#[derive(Default)]
struct Live {
    /// (route, upstream) → count per class of [`CLASSES`].
    requests: Vec<((String, String), [u64; 6])>,
    request_duration: Vec<(String, Histogram)>,
    upstream_duration: Vec<(String, Histogram)>,
    tls_handshakes: Vec<(String, u64)>,
    tls_failures: Vec<(String, u64)>,
}

/// One finished request, as [`RequestStats::request`] counts it.
pub struct Finished<'a> {
    /// The route's path prefix.
    pub route: &'a str,
    /// The upstream group, if the route proxies.
    pub upstream: Option<&'a str>,
    /// The status sent (0: none).
    pub status: u16,
    /// From the request head to the end of the response.
    pub duration: Duration,
    /// From sending to the upstream to its response head.
    pub upstream_time: Option<Duration>,
    /// Request body bytes read.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Servers tried after the first.
    pub retries: u64,
    /// Whether the answer was a 503 because every server was at `max_in_flight`.
    pub max_in_flight: bool,
}

/// Counts one open client connection while it lives.
pub struct OpenConnection;

impl Drop for OpenConnection {
    fn drop(&mut self) {
        STATS.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RequestStats {
    /// Counts a finished request.
    pub fn request(&self, done: &Finished<'_>) {
        self.bytes_in.fetch_add(done.bytes_in, Ordering::Relaxed);
        self.bytes_out.fetch_add(done.bytes_out, Ordering::Relaxed);
        if done.retries > 0 {
            self.retries.fetch_add(done.retries, Ordering::Relaxed);
        }
        if done.max_in_flight {
            self.max_in_flight_rejections
                .fetch_add(1, Ordering::Relaxed);
        }
        let class = CLASSES
            .iter()
            .position(|c| *c == status_class(done.status))
            .unwrap_or(5);
        let route = bounded(done.route);
        let upstream = bounded(done.upstream.unwrap_or(""));
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let at = match live
            .requests
            .iter()
            .position(|((r, u), _)| r == route && u == upstream)
        {
            Some(at) => at,
            None => {
                live.requests
                    .push(((route.to_string(), upstream.to_string()), [0; 6]));
                live.requests.len() - 1
            }
        };
        live.requests[at].1[class] += 1;
        entry(&mut live.request_duration, route, || Histogram::new(route))
            .observe(done.duration.as_secs_f64());
        if let (Some(time), Some(name)) = (done.upstream_time, done.upstream) {
            let name = bounded(name);
            entry(&mut live.upstream_duration, name, || Histogram::new(name))
                .observe(time.as_secs_f64());
        }
    }

    /// Counts a client connection until the returned guard is dropped.
    pub fn connection_opened(&self) -> OpenConnection {
        self.connections.fetch_add(1, Ordering::Relaxed);
        OpenConnection
    }

    /// Counts a completed TLS handshake of `version` (e.g. "TLSv1.3").
    pub fn handshake(&self, version: &str) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        *entry(&mut live.tls_handshakes, bounded(version), || 0) += 1;
    }

    /// Counts a failed TLS handshake (`reason` from a small fixed set).
    pub fn handshake_failed(&self, reason: &str) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        *entry(&mut live.tls_failures, bounded(reason), || 0) += 1;
    }

    /// Everything counted so far.
    pub fn snapshot(&self) -> TenantStats {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut requests = Vec::new();
        for ((route, upstream), classes) in &live.requests {
            for (class, count) in CLASSES.iter().zip(classes) {
                if *count > 0 {
                    requests.push(RequestCount {
                        route: route.clone(),
                        upstream: upstream.clone(),
                        status_class: class.to_string(),
                        count: *count,
                    });
                }
            }
        }
        let counts = |map: &Vec<(String, u64)>| {
            map.iter()
                .map(|(label, count)| LabelCount {
                    label: label.clone(),
                    count: *count,
                })
                .collect()
        };
        TenantStats {
            requests,
            request_duration: live
                .request_duration
                .iter()
                .map(|(_, h)| h.clone())
                .collect(),
            upstream_duration: live
                .upstream_duration
                .iter()
                .map(|(_, h)| h.clone())
                .collect(),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            tls_handshakes: counts(&live.tls_handshakes),
            tls_failures: counts(&live.tls_failures),
            retries: self.retries.load(Ordering::Relaxed),
            max_in_flight_rejections: self.max_in_flight_rejections.load(Ordering::Relaxed),
        }
    }

    /// Keeps the tenant-wide sum the splitter sent.
    pub fn set_totals(&self, totals: TenantStats) {
        *self.totals.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), totals));
    }

    /// The tenant's statistics as Prometheus text: the splitter's sum over
    /// the tenant's processes when a recent one arrived, else this process's
    /// own (a standalone `--listen` process, or no splitter for a while).
    pub fn render(&self, tenant: &str) -> String {
        let totals = self
            .totals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let stats = match totals {
            Some((at, totals)) if at.elapsed() < TOTALS_FRESH_FOR => totals,
            _ => self.snapshot(),
        };
        let mut out = String::new();
        switchyard_shared::tenant_stats::render(&[(tenant, &stats)], &mut out);
        out
    }
}

/// The value for `key`, made by `new` the first time (no allocation after).
fn entry<'m, V>(map: &'m mut Vec<(String, V)>, key: &str, new: impl FnOnce() -> V) -> &'m mut V {
    let at = match map.iter().position(|(k, _)| k == key) {
        Some(at) => at,
        None => {
            map.push((key.to_string(), new()));
            map.len() - 1
        }
    };
    &mut map[at].1
}

/// A label value cut to the length a snapshot may carry.
fn bounded(text: &str) -> &str {
    switchyard_shared::text::cut(text, switchyard_shared::tenant_stats::MAX_LABEL_LEN)
}
