//! A tenant file: the site's TLS, upstream groups and routes.

use super::rules::{
    validate_header_rules, validate_rate_limit, HeaderRules, RateLimit, RawHeaderRules,
    RawRateLimit,
};
use super::source::Source;
use super::tls::{TlsPolicy, TlsSource};
use super::upstream::{
    validate_registration, validate_upstream, RawRegistration, RawUpstream, RegistrationConfig,
    UpstreamConfig,
};
use super::ConfigErrors;
use crate::host::HostPattern;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenantFile {
    tls: Option<super::tls::RawTls>,
    #[serde(default)]
    upstream: Vec<Spanned<RawUpstream>>,
    #[serde(default)]
    route: Vec<RawRoute>,
    registration: Option<RawRegistration>,
    http: Option<RawHttp>,
    log: Option<RawLog>,
    #[serde(default)]
    force_https: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    access: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
    #[serde(default)]
    query: bool,
    #[serde(default)]
    trust_request_id: bool,
    metrics: Option<bool>,
}

/// Where access lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessTarget {
    /// The process's standard error (collected by the splitter's supervisor,
    /// journald, …).
    Stderr,
    /// A file in the tenant's runtime directory (a relative path inside it).
    File(PathBuf),
}

/// How access lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// `key=value` pairs, the same fields.
    Text,
}

/// `[log]`: the tenant's access log and request identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Where the lines go (default stderr).
    pub access: AccessTarget,
    /// JSON (default) or text.
    pub format: LogFormat,
    /// Whether the query string is logged (off by default: it can carry
    /// secrets).
    pub query: bool,
    /// Keep a well-formed incoming `X-Request-Id` instead of making one (only
    /// when every client is trusted to send unique ids, e.g. behind a proxy).
    pub trust_request_id: bool,
    /// Count requests for the `switchyard_tenant_*` request metrics (on by
    /// default).
    pub metrics: bool,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            access: AccessTarget::Stderr,
            format: LogFormat::Json,
            query: false,
            trust_request_id: false,
            metrics: true,
        }
    }
}

fn validate_log(src: &mut Source, raw: &RawLog) -> LogConfig {
    let mut log = LogConfig {
        query: raw.query,
        trust_request_id: raw.trust_request_id,
        metrics: raw.metrics.unwrap_or(true),
        ..LogConfig::default()
    };
    if let Some(access) = &raw.access {
        let text = access.get_ref();
        if text == "stderr" {
            log.access = AccessTarget::Stderr;
        } else {
            let path = Path::new(text);
            let inside = !text.is_empty()
                && path.is_relative()
                && path
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
            if inside {
                log.access = AccessTarget::File(path.to_path_buf());
            } else {
                src.error(
                    access.span(),
                    format!("[log] access = {text:?}: give \"stderr\" or a plain relative path (it is created in the tenant's runtime directory, runtime_dir/tenants/NAME)"),
                );
            }
        }
    }
    if let Some(format) = &raw.format {
        match format.get_ref().as_str() {
            "json" => log.format = LogFormat::Json,
            "text" => log.format = LogFormat::Text,
            other => src.error(
                format.span(),
                format!("[log] format = {other:?}: use \"json\" or \"text\""),
            ),
        }
    }
    log
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    max_request_header_bytes: Option<Spanned<String>>,
    max_request_headers: Option<Spanned<usize>>,
    client_header_timeout: Option<Spanned<String>>,
    client_body_timeout: Option<Spanned<String>>,
    keepalive_timeout: Option<Spanned<String>>,
}

/// `[http]`: limits every request of the tenant meets, whatever the path to it
/// (first or kept-alive, TLS or plaintext, HTTP/1.1 or HTTP/2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// The request line and headers together, at most (`431`; `414` for the
    /// URI alone).
    pub max_request_header_bytes: u64,
    /// Header lines, at most (`431`).
    pub max_request_headers: usize,
    /// A whole HTTP/1 request header, at most: from the start of a
    /// connection's first request, from the first byte of a later one. Not
    /// reset by each read. When it passes the connection is closed.
    pub client_header_timeout: std::time::Duration,
    /// Longest wait for each read of a request body (`408`, then close).
    pub client_body_timeout: std::time::Duration,
    /// How long an idle kept-alive connection stays open.
    pub keepalive_timeout: std::time::Duration,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_request_header_bytes: 16 * 1024,
            max_request_headers: 100,
            client_header_timeout: std::time::Duration::from_secs(10),
            client_body_timeout: std::time::Duration::from_secs(30),
            keepalive_timeout: std::time::Duration::from_secs(60),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path: Option<Spanned<String>>,
    host: Option<Spanned<String>>,
    upstream: Option<Spanned<String>>,
    respond: Option<Spanned<String>>,
    to: Option<Spanned<String>>,
    status: Option<Spanned<u16>>,
    body: Option<Spanned<String>>,
    request_headers: Option<Spanned<RawHeaderRules>>,
    response_headers: Option<Spanned<RawHeaderRules>>,
    rate_limit: Option<Spanned<RawRateLimit>>,
    compress: Option<Spanned<Vec<String>>>,
}

/// A response compression a route may use (`compress = [...]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `zstd`.
    Zstd,
    /// `br` (Brotli).
    Brotli,
    /// `gzip`.
    Gzip,
}

/// Most bytes of a `respond = "status"` body.
const MAX_STATUS_BODY: usize = 64 * 1024;

/// What a route does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// Proxy to the upstream group with this index in [`TenantFile::upstreams`].
    Upstream(usize),
    /// Answer with the built-in JSON echo of the request.
    Echo,
    /// Answer with a redirect (`respond = "redirect"`).
    Redirect {
        /// Where to.
        to: RedirectTo,
        /// 301, 302, 303, 307 or 308 (default 308).
        status: u16,
    },
    /// Answer with a fixed status and body (`respond = "status"`).
    Status {
        /// The status.
        status: u16,
        /// The body (`text/plain`).
        body: String,
    },
}

/// A redirect's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedirectTo {
    /// The same host and path (and query) over https.
    Https,
    /// This URL (`http://` or `https://`), the request's path not added.
    Url(String),
}

/// One `[[route]]`.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Only requests for this host (any host of the tenant when `None`).
    pub host: Option<HostPattern>,
    /// Path prefix; the longest matching prefix wins.
    pub path: String,
    /// Where matching requests go.
    pub target: RouteTarget,
    /// Changes to requests sent upstream.
    pub request_headers: HeaderRules,
    /// Changes to responses from upstream.
    pub response_headers: HeaderRules,
    /// At most this many requests per key and window (`429` beyond).
    pub rate_limit: Option<RateLimit>,
    /// Compressions offered to clients that accept them (upstream responses).
    pub compress: Vec<Compression>,
}

/// A validated tenant file.
#[derive(Debug, Clone)]
pub struct TenantFile {
    /// The file it was read from.
    pub path: PathBuf,
    /// `[tls]`, when the tenant serves TLS.
    pub tls: Option<TlsSource>,
    /// `[tls]` versions, cipher suites and groups.
    pub tls_policy: TlsPolicy,
    /// `[[upstream]]`, in file order.
    pub upstreams: Vec<UpstreamConfig>,
    /// `[[route]]`, in file order.
    pub routes: Vec<RouteConfig>,
    /// `[registration]`, when backends may register themselves.
    pub registration: Option<RegistrationConfig>,
    /// `[http]`.
    pub http: HttpLimits,
    /// `[log]`.
    pub log: LogConfig,
    /// `force_https = true`: every plaintext request gets a `308` to https.
    pub force_https: bool,
    /// Problems that do not make the file invalid (`l7proxy --check` prints them).
    pub warnings: Vec<super::ConfigError>,
}

impl TenantFile {
    /// Reads and validates a tenant file.
    pub fn load(path: &Path) -> Result<TenantFile, ConfigErrors> {
        let mut src = Source::read(path)?;
        let raw: RawTenantFile = src.parse()?;
        let file = Self::validate(&mut src, raw);
        src.finish(file)
    }

    fn validate(src: &mut Source, raw: RawTenantFile) -> TenantFile {
        let (tls, tls_policy) = match &raw.tls {
            Some(raw_tls) => super::tls::validate_tls(src, raw_tls),
            None => (None, TlsPolicy::default()),
        };
        let mut upstreams: Vec<UpstreamConfig> = Vec::new();
        for u in &raw.upstream {
            let upstream = validate_upstream(src, u, &upstreams);
            upstreams.push(upstream);
        }
        let registration = raw
            .registration
            .as_ref()
            .and_then(|r| validate_registration(src, r, &upstreams));

        let mut routes = Vec::new();
        for r in &raw.route {
            let path = r
                .path
                .as_ref()
                .map_or("/".to_string(), |p| p.get_ref().clone());
            if !path.starts_with('/') {
                let span = r.path.as_ref().map_or(0..0, |p| p.span());
                src.error(span, format!("route path {path:?} must start with '/'"));
            }
            let host = r.host.as_ref().and_then(|h| {
                let pattern = HostPattern::parse(h.get_ref());
                if pattern.is_none() {
                    src.error(
                        h.span(),
                        format!("route host {:?} is not a valid host name", h.get_ref()),
                    );
                }
                pattern
            });
            let target = match (&r.upstream, &r.respond) {
                (Some(upstream), None) => {
                    match upstreams.iter().position(|u| &u.name == upstream.get_ref()) {
                        Some(index) => RouteTarget::Upstream(index),
                        None => {
                            let known: Vec<&str> =
                                upstreams.iter().map(|u| u.name.as_str()).collect();
                            src.error(
                                upstream.span(),
                                format!(
                                    "route names upstream {:?}, which is not defined (defined: {})",
                                    upstream.get_ref(),
                                    if known.is_empty() {
                                        "none".to_string()
                                    } else {
                                        known.join(", ")
                                    }
                                ),
                            );
                            continue;
                        }
                    }
                }
                (None, Some(respond)) => match respond_target(src, r, respond) {
                    Some(target) => target,
                    None => continue,
                },
                _ => {
                    let span = r.path.as_ref().map_or(0..0, |p| p.span());
                    src.error(span, "a route needs exactly one of `upstream` or `respond`");
                    continue;
                }
            };
            let request_headers = r
                .request_headers
                .as_ref()
                .map(|raw| validate_header_rules(src, "request_headers", raw))
                .unwrap_or_default();
            let response_headers = r
                .response_headers
                .as_ref()
                .map(|raw| validate_header_rules(src, "response_headers", raw))
                .unwrap_or_default();
            let rate_limit = r
                .rate_limit
                .as_ref()
                .and_then(|raw| validate_rate_limit(src, raw));
            let mut compress = Vec::new();
            if let Some(list) = &r.compress {
                for name in list.get_ref() {
                    match name.as_str() {
                        "zstd" => compress.push(Compression::Zstd),
                        "br" => compress.push(Compression::Brotli),
                        "gzip" => compress.push(Compression::Gzip),
                        other => src.error(
                            list.span(),
                            format!(
                                "compress: {other:?} is unknown; use \"zstd\", \"br\" or \"gzip\""
                            ),
                        ),
                    }
                }
            }
            routes.push(RouteConfig {
                host,
                path,
                target,
                request_headers,
                response_headers,
                rate_limit,
                compress,
            });
        }
        if raw.route.is_empty() {
            src.error(
                0..0,
                "no [[route]]: the tenant would answer every request with 404",
            );
        }

        let http = raw
            .http
            .as_ref()
            .map_or_else(HttpLimits::default, |r| validate_http(src, r));
        let log = raw
            .log
            .as_ref()
            .map_or_else(LogConfig::default, |r| validate_log(src, r));
        TenantFile {
            path: src.path.clone(),
            tls,
            upstreams,
            routes,
            registration,
            http,
            log,
            tls_policy,
            force_https: raw.force_https,
            warnings: src.take_warnings(),
        }
    }
}

/// The target of a `respond = …` route; `None` (with an error recorded) when
/// it is not valid.
fn respond_target(
    src: &mut Source,
    r: &RawRoute,
    respond: &Spanned<String>,
) -> Option<RouteTarget> {
    let kind = respond.get_ref().as_str();
    let stray = |src: &mut Source, field: &str, span: std::ops::Range<usize>| {
        src.error(
            span,
            format!("`{field}` belongs to respond = \"redirect\" or \"status\", not {kind:?}"),
        )
    };
    match kind {
        "echo" => {
            for (field, span) in [
                ("to", r.to.as_ref().map(|v| v.span())),
                ("status", r.status.as_ref().map(|v| v.span())),
                ("body", r.body.as_ref().map(|v| v.span())),
            ] {
                if let Some(span) = span {
                    stray(src, field, span);
                }
            }
            Some(RouteTarget::Echo)
        }
        "redirect" => {
            if let Some(body) = &r.body {
                stray(src, "body", body.span());
            }
            let status = r.status.as_ref().map_or(308, |s| *s.get_ref());
            if ![301, 302, 303, 307, 308].contains(&status) {
                let span = r.status.as_ref().map_or(respond.span(), |s| s.span());
                src.error(
                    span,
                    format!(
                        "redirect status {status} is not a redirect: use 301, 302, 303, 307 or 308"
                    ),
                );
            }
            let Some(to) = &r.to else {
                src.error(respond.span(), "respond = \"redirect\" needs `to`: \"https\" (same host and path) or an http(s) URL");
                return None;
            };
            let text = to.get_ref();
            let to = if text == "https" {
                RedirectTo::Https
            } else if (text.starts_with("https://") || text.starts_with("http://"))
                && text.len() <= 2048
                && text.bytes().all(|b| b.is_ascii_graphic())
            {
                RedirectTo::Url(text.clone())
            } else {
                src.error(
                    to.span(),
                    format!(
                        "redirect to = {text:?}: give \"https\" or an http(s) URL without spaces"
                    ),
                );
                return None;
            };
            Some(RouteTarget::Redirect { to, status })
        }
        "status" => {
            if let Some(to) = &r.to {
                stray(src, "to", to.span());
            }
            let Some(status) = &r.status else {
                src.error(
                    respond.span(),
                    "respond = \"status\" needs `status` (200-599)",
                );
                return None;
            };
            if !(200..=599).contains(status.get_ref()) {
                src.error(
                    status.span(),
                    format!("status {} must be between 200 and 599", status.get_ref()),
                );
                return None;
            }
            let body = r
                .body
                .as_ref()
                .map_or_else(String::new, |b| b.get_ref().clone());
            if body.len() > MAX_STATUS_BODY {
                let span = r.body.as_ref().map_or(0..0, |b| b.span());
                src.error(span, "a status body may be at most 64 KiB");
            }
            Some(RouteTarget::Status {
                status: *status.get_ref(),
                body,
            })
        }
        other => {
            src.error(
                respond.span(),
                format!("respond = {other:?} is unknown: use \"echo\", \"redirect\" or \"status\""),
            );
            None
        }
    }
}

fn validate_http(src: &mut Source, raw: &RawHttp) -> HttpLimits {
    use crate::units::{parse_duration, parse_size};
    use std::time::Duration;
    let mut limits = HttpLimits::default();
    if let Some(value) = &raw.max_request_header_bytes {
        match parse_size(value.get_ref()) {
            Ok(bytes) if (1024..=1 << 20).contains(&bytes) => {
                limits.max_request_header_bytes = bytes
            }
            Ok(_) => src.error(
                value.span(),
                "[http] max_request_header_bytes must be between \"1KiB\" and \"1MiB\"",
            ),
            Err(e) => src.error(
                value.span(),
                format!("[http] max_request_header_bytes: {e}"),
            ),
        }
    }
    if let Some(value) = &raw.max_request_headers {
        match *value.get_ref() {
            count @ 1..=256 => limits.max_request_headers = count,
            _ => src.error(
                value.span(),
                "[http] max_request_headers must be between 1 and 256",
            ),
        }
    }
    for (key, value, slot, least) in [
        (
            "client_header_timeout",
            &raw.client_header_timeout,
            &mut limits.client_header_timeout,
            Duration::from_millis(1),
        ),
        (
            "client_body_timeout",
            &raw.client_body_timeout,
            &mut limits.client_body_timeout,
            Duration::from_millis(1),
        ),
        (
            "keepalive_timeout",
            &raw.keepalive_timeout,
            &mut limits.keepalive_timeout,
            Duration::from_secs(1),
        ),
    ] {
        let Some(value) = value else { continue };
        match parse_duration(value.get_ref()) {
            Ok(d) if d >= least => *slot = d,
            Ok(_) => src.error(
                value.span(),
                format!("[http] {key} must be at least {least:?}"),
            ),
            Err(e) => src.error(value.span(), format!("[http] {key}: {e}")),
        }
    }
    limits
}
