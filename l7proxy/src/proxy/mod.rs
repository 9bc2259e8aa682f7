//! The tenant's HTTP logic as a Pingora [`ProxyHttp`], one method per phase:
//! `request_filter` applies the `[http]` limits, checks that the host belongs to
//! this tenant (`421` otherwise, [`hosts`]) and picks the route (the built-in
//! [`echo`] or an upstream group); `upstream_peer` leases a server from the
//! group's pool; `upstream_request_filter` sets the [`forwarding`] headers;
//! `fail_to_proxy` answers errors ([`respond`]) or aborts a response that had
//! already started; `logging` writes one access line per request.

mod echo;
mod forwarding;
mod hosts;
mod respond;
mod tracing_context;

use hosts::request_authority;
pub use hosts::HostView;
use respond::{bounded, error_message, respond_json};

use crate::access_log::AccessLog;
use crate::metrics::TimeoutKind;
use crate::pool::server::Lease;
use crate::pool::{Pool, Unavailable};
use crate::routes::{RouteTable, Target};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_shared::config::{Compression, HttpLimits, LogConfig, RedirectTo, ServerAddr};
use switchyard_shared::host::normalize;

/// One tenant's proxy logic.
#[derive(Debug)]
pub struct TenantProxy {
    /// The tenant's name.
    pub tenant: String,
    /// The names it answers.
    pub hosts: Arc<ArcSwap<HostView>>,
    /// The tenant's routes.
    pub routes: RouteTable,
    pid: u32,
    requests: AtomicU64,
    settings: TenantSettings,
    /// Where access lines go.
    access: Arc<AccessLog>,
    /// Requests in flight, which a graceful stop waits for.
    in_flight: tokio_util::task::TaskTracker,
}

/// What the host and tenant files say about how requests are handled.
#[derive(Debug, Clone)]
pub struct TenantSettings {
    /// Peers whose forwarding headers are believed (`[splitter] trusted_proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `[http]` of the tenant file.
    pub http: HttpLimits,
    /// `[log]` of the tenant file.
    pub log: LogConfig,
    /// `force_https` of the tenant file.
    pub force_https: bool,
    /// ACME http-01 answers, when the tenant orders certificates with it.
    pub acme_challenges: Option<Arc<crate::acme::Challenges>>,
}

impl TenantProxy {
    /// Creates the proxy logic of `tenant`.
    pub fn new(
        tenant: String,
        hosts: Arc<ArcSwap<HostView>>,
        routes: RouteTable,
        settings: TenantSettings,
        access: Arc<AccessLog>,
        in_flight: tokio_util::task::TaskTracker,
    ) -> TenantProxy {
        TenantProxy {
            tenant,
            hosts,
            routes,
            pid: std::process::id(),
            requests: AtomicU64::new(0),
            settings,
            access,
            in_flight,
        }
    }
}

/// Per-request state.
#[derive(Debug)]
pub struct RequestCtx {
    request_id: String,
    /// The W3C trace this request belongs to (the client's, or a new one).
    trace: tracing_context::TraceParent,
    started: Instant,
    /// Wall-clock time the request started, for the access line.
    started_at: std::time::SystemTime,
    /// When the current upstream attempt started, and how long its response
    /// header took.
    upstream_started: Option<Instant>,
    upstream_ms: Option<f64>,
    host: String,
    route: String,
    upstream: Option<Arc<Pool>>,
    /// The server of the current attempt; dropping it frees its in-flight slot.
    lease: Option<Lease>,
    /// Servers already tried for this request.
    tried: Vec<ServerAddr>,
    /// When a request waiting for a free server gives up.
    queue_deadline: Option<tokio::time::Instant>,
    /// Why no server could be given, when none could.
    unavailable: Option<Unavailable>,
    /// Whether the upstream's response header arrived (no retry after that).
    response_started: bool,
    /// The matched route's rules (header rules, rate limit).
    rules: Option<Arc<crate::rules::RouteRules>>,
    /// Counts this request as in flight until it is done.
    _in_flight: tokio_util::task::task_tracker::TaskTrackerToken,
}

/// Pingora's connection-level options for the tenant's `[http]` limits: the
/// HTTP/1 request header deadline (`client_header_timeout`, counted in
/// `switchyard_tenant_timeouts_total{kind="client_header"}`).
pub fn server_options(http: &HttpLimits) -> pingora::apps::HttpServerOptions {
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h1_header_timeout = Some(pingora::protocols::http::v1::server::HeaderTimeout {
        limit: http.client_header_timeout,
        expired: crate::metrics::CLIENT_HEADER_TIMEOUTS.clone(),
        idle_expired: crate::metrics::KEEPALIVE_IDLE_CLOSES.clone(),
    });
    options
}

impl RequestCtx {
    /// The values header rules may name, for this request from `client_ip`.
    fn vars<'a>(&'a self, client_ip: &'a str) -> crate::rules::Vars<'a> {
        crate::rules::Vars {
            host: &self.host,
            client_ip,
            request_id: &self.request_id,
            upstream: self
                .upstream
                .as_ref()
                .map_or("", |u| u.config.name.as_str()),
        }
    }
}

/// `https://HOST/PATH?QUERY` for this request (the port dropped: 443).
fn https_location(session: &Session, host: &str) -> String {
    let path = session
        .req_header()
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str());
    format!("https://{host}{path}")
}

impl TenantProxy {
    fn retries(&self, ctx: &RequestCtx) -> usize {
        ctx.upstream.as_ref().map_or(0, |u| u.config.retries)
    }

    fn note_failure(&self, ctx: &RequestCtx) {
        if let (Some(pool), Some(lease)) = (&ctx.upstream, &ctx.lease) {
            pool.record_failure(lease.server());
        }
    }
}

#[async_trait]
impl ProxyHttp for TenantProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        RequestCtx {
            request_id: format!("{:x}-{n:x}", self.pid),
            trace: tracing_context::TraceParent::new_trace(),
            started: Instant::now(),
            started_at: std::time::SystemTime::now(),
            upstream_started: None,
            upstream_ms: None,
            rules: None,
            host: String::new(),
            route: String::new(),
            upstream: None,
            lease: None,
            tried: Vec::new(),
            queue_deadline: None,
            unavailable: None,
            response_started: false,
            _in_flight: self.in_flight.token(),
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Pingora's response compression reads Accept-Encoding before
        // `request_filter`, so a route's `compress` is looked up here (only
        // when some route has it: this runs for every request).
        if !self.routes.compresses() {
            return Ok(());
        }
        let req = session.req_header();
        let Some(host) = request_authority(req).and_then(normalize) else {
            return Ok(());
        };
        let Some(route) = self.routes.find(&host, req.uri.path()) else {
            return Ok(());
        };
        if route.compress.is_empty() {
            return Ok(());
        }
        use pingora::protocols::http::compression::Algorithm;
        if let Some(compression) = session
            .downstream_modules_ctx
            .get_mut::<pingora::modules::http::compression::ResponseCompression>(
        ) {
            for algorithm in &route.compress {
                let (algorithm, level) = match algorithm {
                    Compression::Zstd => (Algorithm::Zstd, 3),
                    Compression::Brotli => (Algorithm::Brotli, 5),
                    Compression::Gzip => (Algorithm::Gzip, 6),
                };
                compression.adjust_algorithm_level(algorithm, level);
            }
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // The same limits for every request, whichever way it came.
        // Only where the connection is to be kept (not after the client's
        // `Connection: close`, nor once the process drains).
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(self.settings.http.keepalive_timeout.as_secs()));
        }
        session.set_read_timeout(Some(self.settings.http.client_body_timeout));
        // Names parsed once, not per request.
        static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
        static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
        let headers = &session.req_header().headers;
        if self.settings.log.trust_request_id {
            if let Some(id) = headers
                .get(&X_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .filter(|id| tracing_context::is_request_id(id))
            {
                ctx.request_id = id.to_string();
            }
        }
        if let Some(trace) = headers
            .get(&TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(tracing_context::TraceParent::parse)
        {
            ctx.trace = trace;
        }
        // HTTP/1.1 pipelining (RFC 9112 §9.3.2): requests that arrived behind
        // this one, or arrive while its response is written, are kept and
        // answered next, in order, instead of being dropped with the
        // connection (Pingora 0.9's default). A no-op on HTTP/2.
        session.downstream_session.set_pipelining_enabled(true);
        if session.req_header().version == http::Version::HTTP_10 {
            // HTTP/1.0 has no 1xx responses (RFC 9110 §15.2): none is relayed,
            // and its `Expect` is ignored (§10.1.1), so nothing asks for a 100.
            session
                .req_header_mut()
                .remove_header(&http::header::EXPECT);
            session.downstream_session.set_ignore_info_resp(true);
        }
        if let Err(refusal) =
            crate::http_rules::check_request(session.req_header_mut(), &self.settings.http)
        {
            session.set_keepalive(None);
            let body = json!({"error": refusal.message(), "tenant": self.tenant, "request_id": ctx.request_id});
            respond_json(session, refusal.status(), &body, &[]).await?;
            return Ok(true);
        }
        let authority = request_authority(session.req_header()).map(str::to_owned);
        let host = match authority.as_deref().map(normalize) {
            Some(Some(host)) => host,
            Some(None) => {
                respond_json(session, 400, &json!({"error": "the Host header is not a valid host name", "tenant": self.tenant, "request_id": ctx.request_id}), &[]).await?;
                return Ok(true);
            }
            None if self.hosts.load().takes_unknown_hosts => String::new(),
            None => {
                respond_json(session, 400, &json!({"error": "a Host header is required", "tenant": self.tenant, "request_id": ctx.request_id}), &[]).await?;
                return Ok(true);
            }
        };
        if !host.is_empty() {
            if let Err(other) = self.hosts.load().allows(&host) {
                let body = json!({
                    "error": "misdirected request: this connection belongs to another site; open a new connection for this host",
                    "host": host,
                    "tenant": self.tenant,
                    "owner": other,
                    "request_id": ctx.request_id,
                });
                ctx.host = host;
                respond_json(session, 421, &body, &[]).await?;
                return Ok(true);
            }
        }
        ctx.host = host;
        // An ACME CA checking an http-01 challenge (before force_https: the
        // CA asks over plain HTTP).
        if let Some(challenges) = &self.settings.acme_challenges {
            let answer = session
                .req_header()
                .uri
                .path()
                .strip_prefix("/.well-known/acme-challenge/")
                .and_then(|token| challenges.http_response(token));
            if let Some(key_authorization) = answer {
                respond::plain(session, 200, bytes::Bytes::from(key_authorization)).await?;
                return Ok(true);
            }
        }
        if self.settings.force_https && !forwarding::is_tls(session) {
            respond::redirect(session, 308, &https_location(session, &ctx.host)).await?;
            return Ok(true);
        }
        let path = session.req_header().uri.path().to_owned();
        let Some(route) = self.routes.find(&ctx.host, &path) else {
            respond_json(session, 404, &json!({"error": "no route for this path", "path": path, "tenant": self.tenant, "request_id": ctx.request_id}), &[]).await?;
            return Ok(true);
        };
        ctx.route = route.path.clone();
        ctx.rules = Some(route.rules.clone());
        let client = match route.rules.has_rate_limit() {
            true => forwarding::client_ip_text(session),
            false => crate::ip_text::IpText::none(),
        };
        if let Some(wait) = route
            .rules
            .over_limit(session.req_header(), client.as_str())
        {
            let retry_after = wait.to_string();
            let body = json!({"error": "too many requests: this route's rate limit is reached; retry later", "tenant": self.tenant, "route": route.path, "request_id": ctx.request_id});
            respond_json(
                session,
                429,
                &body,
                &[("Retry-After", retry_after.as_str())],
            )
            .await?;
            return Ok(true);
        }
        match &route.target {
            Target::Echo => {
                self.echo(session, ctx).await?;
                Ok(true)
            }
            Target::Redirect { to, status } => {
                let location = match to {
                    RedirectTo::Https => https_location(session, &ctx.host),
                    RedirectTo::Url(url) => url.clone(),
                };
                respond::redirect(session, *status, &location).await?;
                Ok(true)
            }
            Target::Status { status, body } => {
                respond::plain(session, *status, body.clone()).await?;
                Ok(true)
            }
            Target::Upstream(upstream) => {
                ctx.upstream = Some(upstream.clone());
                Ok(false)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let pool = ctx.upstream.clone().ok_or_else(|| {
            Error::explain(
                ErrorType::InternalError,
                "no upstream chosen for the request",
            )
        })?;
        // A retry gives up its slot on the failed server before looking for another.
        ctx.lease = None;
        let key = match pool.uses_hash_key() {
            true => crate::pool::hash_key::hash_key(
                session.req_header(),
                forwarding::client_ip(session),
                &pool.config.hash_key,
            ),
            false => Vec::new(),
        };
        let deadline = *ctx
            .queue_deadline
            .get_or_insert_with(|| tokio::time::Instant::now() + pool.config.queue_timeout);
        match pool.acquire(&key, &ctx.tried, deadline).await {
            Ok((lease, peer)) => {
                ctx.tried.push(lease.server().addr.clone());
                ctx.lease = Some(lease);
                ctx.upstream_started = Some(Instant::now());
                Ok(peer)
            }
            Err(why) => {
                ctx.unavailable = Some(why);
                Err(Error::explain(
                    ErrorType::HTTPStatus(503),
                    why.message(&pool.config.name),
                ))
            }
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.note_failure(ctx);
        // Nothing was sent: any method may go to another server.
        e.set_retry(ctx.tried.len() <= self.retries(ctx));
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("server {peer}"));
        let upstream_failed = e.esource() == &ErrorSource::Upstream;
        if upstream_failed {
            self.note_failure(ctx);
        }
        // Only a server's failure is retried, only for a request that may
        // safely run twice, and only while nothing of the response has reached
        // the client.
        let safe = upstream_failed
            && session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && !ctx.response_started
            && session.response_written().is_none();
        e.set_retry(safe && ctx.tried.len() <= self.retries(ctx));
        e
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if upstream_response.status.as_u16() == 101
            && !session
                .req_header()
                .headers
                .contains_key(http::header::UPGRADE)
        {
            // Switching protocols nobody asked for would hand the client's
            // connection to whatever the upstream sends next.
            return Err(Error::explain(
                ErrorType::InvalidHTTPHeader,
                "the upstream switched protocols (101) for a request that asked for no upgrade",
            )
            .into_up());
        }
        crate::http_rules::sanitize_response(upstream_response);
        ctx.response_started = true;
        ctx.upstream_ms = ctx
            .upstream_started
            .map(|t| t.elapsed().as_secs_f64() * 1000.0);
        // RFC 9110 §7.6.3: this hop is named on responses as on requests.
        forwarding::add_via(upstream_response)?;
        // The upstream group's header rules, then the route's.
        let pool_rules = ctx
            .upstream
            .as_ref()
            .map(|p| &p.config.response_headers)
            .filter(|r| !r.is_empty());
        let route_rules = ctx
            .rules
            .as_ref()
            .map(|r| &r.response_headers)
            .filter(|r| !r.is_empty());
        if pool_rules.is_some() || route_rules.is_some() {
            let client = forwarding::client_ip_text(session);
            let vars = ctx.vars(client.as_str());
            for rules in [pool_rules, route_rules].into_iter().flatten() {
                crate::rules::apply_to_response(rules, upstream_response, &vars)?;
            }
        }
        if let Some(lease) = &ctx.lease {
            // A 5xx is the server failing (passive health), though it is
            // relayed as it is.
            if upstream_response.status.is_server_error() {
                self.note_failure(ctx);
            } else {
                lease.server().record_success();
            }
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        crate::http_rules::sanitize_upstream_request(upstream_request);
        forwarding::set_headers(
            session,
            upstream_request,
            &self.settings.trusted_proxies,
            &ctx.request_id,
        )?;
        upstream_request.insert_header("traceparent", ctx.trace.header_value())?;
        // Only the tenant's own verification speaks for a client certificate.
        static SUBJECT: http::HeaderName =
            http::HeaderName::from_static(crate::client_cert::SUBJECT_HEADER_LOWER);
        upstream_request.remove_header(&SUBJECT);
        if let Some(subject) = crate::client_cert::subject(session) {
            upstream_request.insert_header(crate::client_cert::SUBJECT_HEADER, subject)?;
        }
        // The route's header rules, then the upstream group's.
        let route_rules = ctx
            .rules
            .as_ref()
            .map(|r| &r.request_headers)
            .filter(|r| !r.is_empty());
        let pool_rules = ctx
            .upstream
            .as_ref()
            .map(|p| &p.config.request_headers)
            .filter(|r| !r.is_empty());
        if route_rules.is_none() && pool_rules.is_none() {
            return Ok(());
        }
        let client = forwarding::client_ip_text(session);
        let vars = ctx.vars(client.as_str());
        for rules in [route_rules, pool_rules].into_iter().flatten() {
            crate::rules::apply_to_request(rules, upstream_request, &vars)?;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => match e.etype() {
                    // `read_timeout` between two reads, or `response_header_timeout`
                    // for the whole header.
                    ErrorType::ReadTimedout => {
                        crate::metrics::count().timed_out(TimeoutKind::Upstream);
                        504
                    }
                    _ => 502,
                },
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    // `client_body_timeout` passed between two reads of the body.
                    ErrorType::ReadTimedout => {
                        crate::metrics::count().timed_out(TimeoutKind::ClientBody);
                        408
                    }
                    _ => 400,
                },
                // Writing the tenant's own answer to a client that went away.
                ErrorSource::Internal | ErrorSource::Unset
                    if matches!(
                        e.etype(),
                        ErrorType::WriteError | ErrorType::ConnectionClosed
                    ) =>
                {
                    0
                }
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        let upstream = ctx.upstream.as_ref().map(|u| u.config.name.clone());
        if code >= 500 && ctx.unavailable.is_none() {
            // Pingora's own line is suppressed (`suppress_error_log`): its error
            // text can carry a whole upstream header buffer. (Bad requests are
            // the client's doing: their line is in the access log.)
            tracing::warn!(
                tenant = %self.tenant,
                request_id = %ctx.request_id,
                upstream = upstream.as_deref().unwrap_or("-"),
                servers_tried = %ctx.tried.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(","),
                error = %bounded(&e.to_string()),
                "request failed"
            );
        }
        if session.response_written().is_some() {
            // The response has started: any error text would become part of
            // it, and a cut-short body must never look complete. HTTP/1.1: the
            // connection closes short of its framing; HTTP/2: RST_STREAM
            // (INTERNAL_ERROR); an upgraded tunnel is closed. (A client that
            // went away is not an aborted response.)
            if code > 0 {
                crate::metrics::count().responses_aborted.inc();
                tracing::warn!(
                    tenant = %self.tenant,
                    request_id = %ctx.request_id,
                    upstream = upstream.as_deref().unwrap_or("-"),
                    "the upstream failed after the response started; the client's response is aborted, not completed"
                );
            }
            session.downstream_session.shutdown().await;
            return FailToProxy {
                error_code: code,
                can_reuse_downstream: false,
            };
        }
        if code > 0 {
            // The connection closes after this answer; say so (Pingora writes
            // `Connection: close` when keep-alive is off).
            session.set_keepalive(None);
            let message = match (ctx.unavailable, &upstream) {
                (Some(why), Some(name)) => why.message(name),
                _ => error_message(e),
            };
            // Short and stable: what failed, for which tenant and request; the
            // details (addresses, upstream bytes) are only in the log.
            let body = json!({
                "error": message,
                "tenant": self.tenant,
                "upstream": upstream,
                "servers_tried": ctx.tried.len(),
                "request_id": ctx.request_id,
            });
            let extra: &[(&str, &str)] = if ctx.unavailable.is_some() {
                &[("Retry-After", "1")]
            } else {
                &[]
            };
            let _ = respond_json(session, code, &body, extra).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        ctx: &RequestCtx,
        error: &Error,
        _context: ProxyWarnLogContext,
    ) -> bool {
        // Pingora's retry line carries the whole error text (an upstream's
        // header buffer can be megabytes); this one is bounded.
        tracing::warn!(
            tenant = %self.tenant,
            request_id = %ctx.request_id,
            error = %bounded(&error.to_string()),
            "upstream attempt failed; retrying on another server"
        );
        true
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _e: &Error) -> bool {
        // `fail_to_proxy` logs what is worth logging, bounded; "no server" is
        // in the access line already, and a client that went away is not the
        // proxy's error.
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        if self.settings.log.metrics {
            crate::request_stats::STATS.request(&crate::request_stats::Finished {
                route: &ctx.route,
                upstream: ctx.upstream.as_ref().map(|u| u.config.name.as_str()),
                status,
                duration: ctx.started.elapsed(),
                upstream_time: ctx
                    .upstream_ms
                    .map(|ms| Duration::from_secs_f64(ms / 1000.0)),
                bytes_in: session.body_bytes_read() as u64,
                bytes_out: session.body_bytes_sent() as u64,
                retries: ctx.tried.len().saturating_sub(1) as u64,
                max_in_flight: matches!(
                    ctx.unavailable,
                    Some(Unavailable::QueueTimeout | Unavailable::QueueFull)
                ),
            });
        }
        if !self.access.is_on() {
            return;
        }
        let req = session.req_header();
        let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
        let ssl = session.digest().and_then(|d| d.ssl_digest.as_deref());
        let error = e.map(|e| bounded(&e.to_string()).to_string());
        let entry = crate::access_log::Entry {
            started_at: ctx.started_at,
            tenant: &self.tenant,
            host: &ctx.host,
            method: req.method.as_str(),
            path: req.uri.path(),
            query: self.access.with_query.then(|| req.uri.query()).flatten(),
            status,
            bytes_in: session.body_bytes_read(),
            bytes_out: session.body_bytes_sent(),
            duration: ctx.started.elapsed(),
            route: &ctx.route,
            upstream: ctx.upstream.as_ref().map(|u| u.config.name.as_str()),
            server: ctx.tried.last(),
            upstream_time: ctx
                .upstream_ms
                .map(|ms| Duration::from_secs_f64(ms / 1000.0)),
            retries: ctx.tried.len().saturating_sub(1),
            client: session.client_addr().and_then(|a| a.as_inet()).copied(),
            tls_version: ssl.map(|d| crate::tls::version_name(&d.version)),
            tls_cipher: ssl.map(|d| d.cipher.as_ref()),
            alpn: ssl.map(|_| if session.is_http2() { "h2" } else { "http/1.1" }),
            user_agent: header("user-agent"),
            referer: header("referer"),
            request_id: &ctx.request_id,
            trace_id: ctx.trace.trace_id(),
            error: error.as_deref(),
        };
        self.access.write(&entry);
    }
}
