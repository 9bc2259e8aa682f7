//! A tenant's request statistics: what one l7proxy process counted, in a form
//! that travels to the splitter (which sums a tenant's processes) and renders
//! as Prometheus text with the names the design gives:
//! `switchyard_tenant_requests_total{tenant,route,upstream,status_class}`,
//! `switchyard_tenant_request_duration_seconds{tenant,route}`,
//! `switchyard_tenant_upstream_duration_seconds{tenant,upstream}`,
//! `switchyard_tenant_bytes_total{tenant,direction}`,
//! `switchyard_tenant_connections{tenant}`,
//! `switchyard_tenant_tls_handshakes_total{tenant,version}`,
//! `switchyard_tenant_tls_handshake_failures_total{tenant,reason}`,
//! `switchyard_tenant_upstream_retries_total{tenant}` and
//! `switchyard_tenant_max_in_flight_rejections_total{tenant}`.
//!
//! A process's counters only grow, so a sum over live processes never goes
//! backwards while they live. The tenant label is always given by the
//! renderer (the splitter uses the name it knows), never read from a
//! snapshot: a process cannot speak for another tenant.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt::Write;

/// Upper bounds (seconds) of the duration histograms' buckets.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Most series one snapshot may carry (routes × upstreams × classes and the
/// histograms); a larger one is refused by [`TenantStats::is_bounded`].
pub const MAX_SERIES: usize = 1024;

/// Longest label value kept (route paths, upstream names, reasons).
pub const MAX_LABEL_LEN: usize = 128;

/// One process's (or a sum of processes') statistics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantStats {
    /// Requests by route, upstream and status class.
    pub requests: Vec<RequestCount>,
    /// Request duration by route.
    pub request_duration: Vec<Histogram>,
    /// Time to the upstream's response head, by upstream.
    pub upstream_duration: Vec<Histogram>,
    /// Request body bytes read.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Client connections open now.
    pub connections: u64,
    /// Completed TLS handshakes by protocol version.
    pub tls_handshakes: Vec<LabelCount>,
    /// Failed TLS handshakes by reason.
    pub tls_failures: Vec<LabelCount>,
    /// Requests sent again to another server.
    pub retries: u64,
    /// `503`s because every server was at `max_in_flight`.
    pub max_in_flight_rejections: u64,
}

/// Requests with one route, upstream and status class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCount {
    /// The route (its path prefix).
    pub route: String,
    /// The upstream group (empty for routes that answer themselves).
    pub upstream: String,
    /// `"2xx"` … `"5xx"`, or `"none"` when no response was sent.
    pub status_class: String,
    /// How many.
    pub count: u64,
}

/// A count under one label value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelCount {
    /// The label value.
    pub label: String,
    /// How many.
    pub count: u64,
}

/// A histogram over [`DURATION_BUCKETS`] for one label value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// The label value (route or upstream).
    pub label: String,
    /// Observations at or below each bucket's bound (not cumulative).
    pub buckets: Vec<u64>,
    /// Observations above the last bound.
    pub over: u64,
    /// Sum of the observations, seconds.
    pub sum: f64,
}

impl Histogram {
    /// An empty histogram for `label`.
    pub fn new(label: &str) -> Histogram {
        Histogram {
            label: label.to_string(),
            buckets: vec![0; DURATION_BUCKETS.len()],
            over: 0,
            sum: 0.0,
        }
    }

    /// Records one observation of `seconds`.
    pub fn observe(&mut self, seconds: f64) {
        match DURATION_BUCKETS.iter().position(|bound| seconds <= *bound) {
            Some(i) => self.buckets[i] += 1,
            None => self.over += 1,
        }
        self.sum += seconds;
    }

    fn count(&self) -> u64 {
        self.buckets.iter().sum::<u64>() + self.over
    }

    fn add(&mut self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.over += other.over;
        self.sum += other.sum;
    }
}

/// The status class label of a status code (0: no response).
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

impl TenantStats {
    /// Whether the snapshot is within the bounds a receiver accepts: at most
    /// [`MAX_SERIES`] series, labels of at most [`MAX_LABEL_LEN`] bytes, and
    /// histograms of the right shape.
    pub fn is_bounded(&self) -> bool {
        let series = self.requests.len()
            + self.request_duration.len()
            + self.upstream_duration.len()
            + self.tls_handshakes.len()
            + self.tls_failures.len();
        let labels_ok = self.requests.iter().all(|r| {
            r.route.len() <= MAX_LABEL_LEN
                && r.upstream.len() <= MAX_LABEL_LEN
                && r.status_class.len() <= 8
        }) && self
            .request_duration
            .iter()
            .chain(&self.upstream_duration)
            .all(|h| h.label.len() <= MAX_LABEL_LEN && h.buckets.len() == DURATION_BUCKETS.len())
            && self
                .tls_handshakes
                .iter()
                .chain(&self.tls_failures)
                .all(|c| c.label.len() <= MAX_LABEL_LEN);
        series <= MAX_SERIES && labels_ok
    }

    /// The sum of `all`, in time linear in their series: a tenant's
    /// processes (some of them started by its own user) may each report up
    /// to [`MAX_SERIES`] series, and the splitter sums them at every report.
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a TenantStats>) -> TenantStats {
        let mut sum = TenantStats::default();
        let mut requests: HashMap<(&str, &str, &str), usize> = HashMap::new();
        let mut request_duration: HashMap<&str, usize> = HashMap::new();
        let mut upstream_duration: HashMap<&str, usize> = HashMap::new();
        let mut tls_handshakes: HashMap<&str, usize> = HashMap::new();
        let mut tls_failures: HashMap<&str, usize> = HashMap::new();
        for other in all {
            for r in &other.requests {
                let key = (
                    r.route.as_str(),
                    r.upstream.as_str(),
                    r.status_class.as_str(),
                );
                match requests.get(&key) {
                    Some(&at) => sum.requests[at].count += r.count,
                    None => {
                        requests.insert(key, sum.requests.len());
                        sum.requests.push(r.clone());
                    }
                }
            }
            sum_histograms(
                &mut sum.request_duration,
                &mut request_duration,
                &other.request_duration,
            );
            sum_histograms(
                &mut sum.upstream_duration,
                &mut upstream_duration,
                &other.upstream_duration,
            );
            sum_counts(
                &mut sum.tls_handshakes,
                &mut tls_handshakes,
                &other.tls_handshakes,
            );
            sum_counts(
                &mut sum.tls_failures,
                &mut tls_failures,
                &other.tls_failures,
            );
            sum.bytes_in += other.bytes_in;
            sum.bytes_out += other.bytes_out;
            sum.connections += other.connections;
            sum.retries += other.retries;
            sum.max_in_flight_rejections += other.max_in_flight_rejections;
        }
        sum
    }
}

/// Appends the Prometheus text of each tenant's statistics to `out`, family
/// by family (every sample of a metric family together, as the text format
/// requires), each labelled with the tenant's name as given here.
pub fn render(tenants: &[(&str, &TenantStats)], out: &mut String) {
    let tenants: Vec<(String, &TenantStats)> = tenants
        .iter()
        .map(|(name, stats)| (escape(name), *stats))
        .collect();
    let head = |out: &mut String, name: &str, kind: &str, text: &str| {
        let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
    };
    let name = "switchyard_tenant_requests_total";
    head(
        out,
        name,
        "counter",
        "Requests by route, upstream and status class",
    );
    for (t, stats) in &tenants {
        for r in &stats.requests {
            let _ = writeln!(
                out,
                "{name}{{tenant=\"{t}\",route=\"{}\",upstream=\"{}\",status_class=\"{}\"}} {}",
                escape(&r.route),
                escape(&r.upstream),
                escape(&r.status_class),
                r.count
            );
        }
    }
    let name = "switchyard_tenant_request_duration_seconds";
    head(
        out,
        name,
        "histogram",
        "Time from the request head to the end of the response, by route",
    );
    for (t, stats) in &tenants {
        for h in &stats.request_duration {
            render_histogram(out, name, t, "route", h);
        }
    }
    let name = "switchyard_tenant_upstream_duration_seconds";
    head(
        out,
        name,
        "histogram",
        "Time from sending to an upstream to its response head, by upstream",
    );
    for (t, stats) in &tenants {
        for h in &stats.upstream_duration {
            render_histogram(out, name, t, "upstream", h);
        }
    }
    let name = "switchyard_tenant_bytes_total";
    head(
        out,
        name,
        "counter",
        "Body bytes by direction (in: request bodies, out: response bodies)",
    );
    for (t, stats) in &tenants {
        let _ = writeln!(
            out,
            "{name}{{tenant=\"{t}\",direction=\"in\"}} {}",
            stats.bytes_in
        );
        let _ = writeln!(
            out,
            "{name}{{tenant=\"{t}\",direction=\"out\"}} {}",
            stats.bytes_out
        );
    }
    let name = "switchyard_tenant_connections";
    head(out, name, "gauge", "Client connections open now");
    for (t, stats) in &tenants {
        let _ = writeln!(out, "{name}{{tenant=\"{t}\"}} {}", stats.connections);
    }
    let name = "switchyard_tenant_tls_handshakes_total";
    head(
        out,
        name,
        "counter",
        "Completed TLS handshakes by protocol version",
    );
    for (t, stats) in &tenants {
        for c in &stats.tls_handshakes {
            let _ = writeln!(
                out,
                "{name}{{tenant=\"{t}\",version=\"{}\"}} {}",
                escape(&c.label),
                c.count
            );
        }
    }
    let name = "switchyard_tenant_tls_handshake_failures_total";
    head(out, name, "counter", "Failed TLS handshakes by reason");
    for (t, stats) in &tenants {
        for c in &stats.tls_failures {
            let _ = writeln!(
                out,
                "{name}{{tenant=\"{t}\",reason=\"{}\"}} {}",
                escape(&c.label),
                c.count
            );
        }
    }
    let name = "switchyard_tenant_upstream_retries_total";
    head(
        out,
        name,
        "counter",
        "Requests sent again to another server",
    );
    for (t, stats) in &tenants {
        let _ = writeln!(out, "{name}{{tenant=\"{t}\"}} {}", stats.retries);
    }
    let name = "switchyard_tenant_max_in_flight_rejections_total";
    head(
        out,
        name,
        "counter",
        "503 responses because every server was at max_in_flight",
    );
    for (t, stats) in &tenants {
        let _ = writeln!(
            out,
            "{name}{{tenant=\"{t}\"}} {}",
            stats.max_in_flight_rejections
        );
    }
}

fn sum_histograms<'a>(
    mine: &mut Vec<Histogram>,
    index: &mut HashMap<&'a str, usize>,
    theirs: &'a [Histogram],
) {
    for h in theirs {
        match index.get(h.label.as_str()) {
            Some(&at) => mine[at].add(h),
            None => {
                index.insert(&h.label, mine.len());
                mine.push(h.clone());
            }
        }
    }
}

fn sum_counts<'a>(
    mine: &mut Vec<LabelCount>,
    index: &mut HashMap<&'a str, usize>,
    theirs: &'a [LabelCount],
) {
    for c in theirs {
        match index.get(c.label.as_str()) {
            Some(&at) => mine[at].count += c.count,
            None => {
                index.insert(&c.label, mine.len());
                mine.push(c.clone());
            }
        }
    }
}

fn render_histogram(out: &mut String, name: &str, tenant: &str, label: &str, h: &Histogram) {
    let value = escape(&h.label);
    let mut cumulative = 0;
    for (bound, n) in DURATION_BUCKETS.iter().zip(&h.buckets) {
        cumulative += n;
        let _ = writeln!(
            out,
            "{name}_bucket{{tenant=\"{tenant}\",{label}=\"{value}\",le=\"{bound}\"}} {cumulative}"
        );
    }
    let count = h.count();
    let _ = writeln!(
        out,
        "{name}_bucket{{tenant=\"{tenant}\",{label}=\"{value}\",le=\"+Inf\"}} {count}"
    );
    let _ = writeln!(
        out,
        "{name}_sum{{tenant=\"{tenant}\",{label}=\"{value}\"}} {}",
        h.sum
    );
    let _ = writeln!(
        out,
        "{name}_count{{tenant=\"{tenant}\",{label}=\"{value}\"}} {count}"
    );
}

/// A label value with `\`, `"` and newlines escaped (Prometheus text format).
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(route: &str, status: u16, seconds: f64) -> TenantStats {
        let mut h = Histogram::new(route);
        h.observe(seconds);
        TenantStats {
            requests: vec![RequestCount {
                route: route.into(),
                upstream: "app".into(),
                status_class: status_class(status).into(),
                count: 1,
            }],
            request_duration: vec![h],
            bytes_out: 10,
            ..TenantStats::default()
        }
    }

    #[test]
    fn sums_and_renders_cumulative_buckets() {
        let sum = TenantStats::sum(&[
            one("/", 200, 0.003),
            one("/", 200, 20.0),
            one("/api", 503, 0.0005),
        ]);
        assert_eq!(sum.requests.len(), 2);
        assert_eq!(sum.requests[0].count, 2);
        assert_eq!(sum.bytes_out, 30);
        let mut text = String::new();
        render(&[("a\"b", &sum), ("c", &one("/", 200, 0.1))], &mut text);
        assert!(text.contains(
            "switchyard_tenant_requests_total{tenant=\"a\\\"b\",route=\"/\",upstream=\"app\",status_class=\"2xx\"} 2"
        ), "{text}");
        assert!(text.contains("switchyard_tenant_request_duration_seconds_bucket{tenant=\"a\\\"b\",route=\"/\",le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("switchyard_tenant_request_duration_seconds_bucket{tenant=\"a\\\"b\",route=\"/\",le=\"+Inf\"} 2"), "{text}");
        assert!(text.contains("switchyard_tenant_request_duration_seconds_count{tenant=\"a\\\"b\",route=\"/api\"} 1"), "{text}");
        assert_eq!(
            text.matches("# TYPE switchyard_tenant_requests_total counter")
                .count(),
            1
        );
        // Each family's samples are together: tenant c's request line comes
        // before any duration line.
        let c_request = text.find("requests_total{tenant=\"c\"").unwrap();
        assert!(
            c_request < text.find("duration_seconds_bucket").unwrap(),
            "{text}"
        );
    }

    #[test]
    fn oversized_snapshots_are_refused() {
        let mut big = TenantStats::default();
        for i in 0..=MAX_SERIES {
            big.tls_failures.push(LabelCount {
                label: i.to_string(),
                count: 1,
            });
        }
        assert!(!big.is_bounded());
        let mut long = one(&"x".repeat(MAX_LABEL_LEN + 1), 200, 0.1);
        assert!(!long.is_bounded());
        long = one("/", 200, 0.1);
        long.request_duration[0].buckets.pop();
        assert!(!long.is_bounded());
        assert!(one("/", 200, 0.1).is_bounded());
    }
}
