//! The tenant's HTTP logic as a Pingora [`ProxyHttp`]: check that a request's
//! host belongs to this tenant (`421` otherwise), pick its route, answer the
//! built-in echo or proxy to an upstream group with forwarding headers carrying
//! the real client address, and log one access line per request.

use crate::pool::server::Lease;
use crate::pool::{Pool, Unavailable};
use crate::routes::{RouteTable, Target};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use serde_json::{json, Map, Value};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use switchyard_shared::config::{HashKey, HostConfig, HttpLimits, ServerAddr, UnknownHost};
use switchyard_shared::host::{normalize, HostTable};
use tracing::info;

/// Who owns a host name, as far as this tenant is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// One of this tenant's hosts.
    Us,
    /// A host of another tenant.
    Other(String),
}

/// The largest request body the echo responder reads.
const ECHO_BODY_LIMIT: usize = 1 << 20;

/// Which names this tenant answers, from the host file; replaced whole when the
/// splitter reloads the host file and signals the tenant (SIGHUP).
#[derive(Debug)]
pub struct HostView {
    /// Every host of every tenant, so a misdirected request can be recognised.
    pub owners: HostTable<Owner>,
    /// Whether this tenant is the host file's `unknown_host` tenant, which takes
    /// every name no tenant claims.
    pub takes_unknown_hosts: bool,
}

impl HostView {
    /// The view of `tenant` in a host file.
    pub fn new(host: &HostConfig, tenant: &str) -> HostView {
        let mut owners = HostTable::new();
        for entry in &host.tenants {
            let owner = if entry.name == tenant {
                Owner::Us
            } else {
                Owner::Other(entry.name.clone())
            };
            for pattern in &entry.hosts {
                owners.insert(pattern.clone(), owner.clone());
            }
        }
        HostView {
            owners,
            takes_unknown_hosts: host.splitter.unknown_host
                == UnknownHost::Tenant(tenant.to_string()),
        }
    }
}

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
    /// Peers whose forwarding headers are believed (`[splitter] trusted_proxies`).
    trusted_proxies: Vec<ipnet::IpNet>,
    /// `[http]` of the tenant file.
    http: HttpLimits,
    /// Requests in flight, which a graceful stop waits for.
    in_flight: tokio_util::task::TaskTracker,
}

impl TenantProxy {
    /// Creates the proxy logic of `tenant`.
    pub fn new(
        tenant: String,
        hosts: Arc<ArcSwap<HostView>>,
        routes: RouteTable,
        trusted_proxies: Vec<ipnet::IpNet>,
        http: HttpLimits,
        in_flight: tokio_util::task::TaskTracker,
    ) -> TenantProxy {
        TenantProxy {
            tenant,
            hosts,
            routes,
            pid: std::process::id(),
            requests: AtomicU64::new(0),
            trusted_proxies,
            http,
            in_flight,
        }
    }
}

/// Per-request state.
#[derive(Debug)]
pub struct RequestCtx {
    request_id: String,
    started: Instant,
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
    /// Counts this request as in flight until it is done.
    _in_flight: tokio_util::task::task_tracker::TaskTrackerToken,
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// `ours` appended to the request's existing `name` list header (`a, b`) —
/// every line of it, in order, as RFC 9110 §5.3 combines them — or `ours` alone
/// when the request has none.
fn appended(headers: &http::HeaderMap, name: &str, ours: &str) -> String {
    let mut value = String::new();
    for previous in headers.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
        let previous = previous.trim();
        if previous.is_empty() {
            continue;
        }
        value.push_str(previous);
        value.push_str(", ");
    }
    value.push_str(ours);
    value
}

/// This hop's RFC 7239 `Forwarded` element: `for=…;proto=…;host="…"`. IPv6
/// addresses are quoted and bracketed; quotes are dropped from the host.
fn forwarded_element(ip: IpAddr, ip_text: &str, proto: &str, host: Option<&str>) -> String {
    let mut element = String::with_capacity(32 + host.map_or(0, str::len));
    element.push_str("for=");
    match ip {
        IpAddr::V4(_) => element.push_str(ip_text),
        IpAddr::V6(_) => {
            element.push_str("\"[");
            element.push_str(ip_text);
            element.push_str("]\"");
        }
    }
    element.push_str(";proto=");
    element.push_str(proto);
    if let Some(host) = host {
        element.push_str(";host=\"");
        element.extend(host.chars().filter(|&c| c != '"'));
        element.push('"');
    }
    element
}

fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

/// The authority the request is for: `:authority` / absolute URI, else `Host`.
fn request_authority(req: &RequestHeader) -> Option<&str> {
    req.uri.authority().map(|a| a.as_str()).or_else(|| {
        req.headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
    })
}

async fn respond_json(
    session: &mut Session,
    status: u16,
    body: &Value,
    extra: &[(&str, &str)],
) -> Result<()> {
    let body = Bytes::from(body.to_string() + "\n");
    let mut resp = ResponseHeader::build(status, Some(4 + extra.len()))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    for (name, value) in extra {
        resp.insert_header(name.to_string(), value.to_string())?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// Most bytes of an error's text that reach a log line.
const MAX_LOGGED_ERROR: usize = 512;

/// `text` cut to [`MAX_LOGGED_ERROR`] bytes (on a character boundary).
fn bounded(text: &str) -> &str {
    if text.len() <= MAX_LOGGED_ERROR {
        return text;
    }
    let mut end = MAX_LOGGED_ERROR;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// What a client is told about a failure: the kind of error, never the
/// upstream's address or bytes.
/// Pingora's connection-level options for the tenant's `[http]` limits: the
/// HTTP/1 request header deadline (`client_header_timeout`, counted in
/// `switchyard_tenant_timeouts_total{kind="client_header"}`).
pub fn server_options(http: &HttpLimits) -> pingora::apps::HttpServerOptions {
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h1_header_timeout = Some(pingora::protocols::http::v1::server::HeaderTimeout {
        limit: http.client_header_timeout,
        expired: crate::metrics::CLIENT_HEADER_TIMEOUTS.clone(),
    });
    options
}

fn error_message(e: &Error) -> String {
    let side = match e.esource() {
        ErrorSource::Upstream => "upstream",
        ErrorSource::Downstream => "request",
        ErrorSource::Internal | ErrorSource::Unset => "proxy",
    };
    format!("{side} error: {}", e.etype().as_str())
}

/// The `consistent_hash` key of a request.
fn hash_key(session: &Session, key: &HashKey) -> Vec<u8> {
    let req = session.req_header();
    match key {
        HashKey::ClientIp => client_ip(session)
            .map(|ip| ip.to_string().into_bytes())
            .unwrap_or_default(),
        HashKey::Path => req.uri.path().as_bytes().to_vec(),
        HashKey::Header(name) => req
            .headers
            .get_all(name.as_str())
            .iter()
            .flat_map(|v| v.as_bytes().iter().copied().chain([b',']))
            .collect(),
        HashKey::Cookie(name) => req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.as_bytes().to_vec())
            .unwrap_or_default(),
    }
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

    fn owner_allows(&self, host: &str) -> std::result::Result<(), Option<String>> {
        let view = self.hosts.load();
        match view.owners.lookup(host) {
            Some(Owner::Us) => Ok(()),
            Some(Owner::Other(other)) => Err(Some(other.clone())),
            None if view.takes_unknown_hosts => Ok(()),
            None => Err(None),
        }
    }

    async fn echo(&self, session: &mut Session, ctx: &RequestCtx) -> Result<()> {
        let mut body_bytes = 0usize;
        while let Some(chunk) = session.read_request_body().await? {
            body_bytes += chunk.len();
            if body_bytes > ECHO_BODY_LIMIT {
                return respond_json(
                    session,
                    413,
                    &json!({"error": "echo reads at most 1 MiB of body"}),
                    &[],
                )
                .await;
            }
        }
        let req = session.req_header();
        let mut headers = Map::new();
        for (name, value) in req.headers.iter() {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            match headers.get_mut(name.as_str()) {
                Some(Value::String(existing)) => {
                    existing.push_str(", ");
                    existing.push_str(&value);
                }
                _ => {
                    headers.insert(name.as_str().to_string(), Value::String(value));
                }
            }
        }
        let body = json!({
            "tenant": self.tenant,
            "pid": self.pid,
            "request_id": ctx.request_id,
            "method": req.method.as_str(),
            "path": req.uri.path_and_query().map_or("/", |p| p.as_str()),
            "version": format!("{:?}", req.version),
            "host": ctx.host,
            "headers": headers,
            "body_bytes": body_bytes,
            "client_addr": session.client_addr().map(|a| a.to_string()),
            "tls": is_tls(session),
        });
        respond_json(session, 200, &body, &[]).await
    }
}

#[async_trait]
impl ProxyHttp for TenantProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        RequestCtx {
            request_id: format!("{:x}-{n:x}", self.pid),
            started: Instant::now(),
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

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // The same limits for every request, whichever way it came.
        // Only where the connection is to be kept (not after the client's
        // `Connection: close`, nor once the process drains).
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(self.http.keepalive_timeout.as_secs()));
        }
        session.set_read_timeout(Some(self.http.client_body_timeout));
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
        if let Err(refusal) = crate::http_rules::check_request(session.req_header_mut(), &self.http)
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
            if let Err(other) = self.owner_allows(&host) {
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
        let path = session.req_header().uri.path().to_owned();
        match self.routes.find(&ctx.host, &path) {
            Some((prefix, Target::Echo)) => {
                ctx.route = prefix.to_owned();
                self.echo(session, ctx).await?;
                Ok(true)
            }
            Some((prefix, Target::Upstream(upstream))) => {
                ctx.route = prefix.to_owned();
                ctx.upstream = Some(upstream.clone());
                Ok(false)
            }
            None => {
                respond_json(session, 404, &json!({"error": "no route for this path", "path": path, "tenant": self.tenant, "request_id": ctx.request_id}), &[]).await?;
                Ok(true)
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
            true => hash_key(session, &pool.config.hash_key),
            false => Vec::new(),
        };
        let deadline = *ctx
            .queue_deadline
            .get_or_insert_with(|| tokio::time::Instant::now() + pool.config.queue_timeout);
        match pool.acquire(&key, &ctx.tried, deadline).await {
            Ok((lease, peer)) => {
                ctx.tried.push(lease.server().addr.clone());
                ctx.lease = Some(lease);
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
        if let Some(lease) = &ctx.lease {
            lease.server().record_success();
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Per request, so kept lean: no `format!`, static values where they are
        // static (callgrind: this filter was 17 % of the l7proxy's instructions
        // per keep-alive request; growing Pingora's two header maps is most of
        // what is left, and `RequestHeader` offers no way to reserve).
        crate::http_rules::sanitize_upstream_request(upstream_request);
        let tls = is_tls(session);
        let proto = if tls { "https" } else { "http" };
        let via_self = if session.is_http2() {
            "2 switchyard"
        } else {
            "1.1 switchyard"
        };
        let original_host = request_authority(session.req_header());
        let peer = client_ip(session);
        // Only a trusted proxy's forwarding headers are kept (and appended
        // to); a client's own are replaced, so it cannot choose the address
        // the upstream believes.
        let trusted =
            peer.is_some_and(|ip| switchyard_shared::net::in_any(&self.trusted_proxies, ip));
        if !trusted {
            upstream_request.remove_header("X-Forwarded-For");
            upstream_request.remove_header("Forwarded");
            upstream_request.remove_header("X-Real-IP");
        }
        if let Some(ip) = peer {
            let ip_text = ip.to_string();
            let xff = appended(&upstream_request.headers, "x-forwarded-for", &ip_text);
            upstream_request.insert_header("X-Forwarded-For", xff)?;
            let element = forwarded_element(ip, &ip_text, proto, original_host);
            let forwarded = appended(&upstream_request.headers, "forwarded", &element);
            upstream_request.insert_header("Forwarded", forwarded)?;
            if !upstream_request.headers.contains_key("x-real-ip") {
                upstream_request.insert_header("X-Real-IP", ip_text)?;
            }
        }
        upstream_request.insert_header("X-Forwarded-Proto", HeaderValue::from_static(proto))?;
        if let Some(host) = original_host {
            upstream_request.insert_header("X-Forwarded-Host", host)?;
        }
        let via = match upstream_request.headers.get("via") {
            Some(_) => HeaderValue::try_from(appended(&upstream_request.headers, "via", via_self))
                .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "invalid Via header"))?,
            None => HeaderValue::from_static(via_self),
        };
        upstream_request.insert_header("Via", via)?;
        upstream_request.insert_header("X-Request-Id", ctx.request_id.as_str())?;
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
                        crate::metrics::UPSTREAM_TIMEOUTS.fetch_add(1, Ordering::Relaxed);
                        504
                    }
                    _ => 502,
                },
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    // `client_body_timeout` passed between two reads of the body.
                    ErrorType::ReadTimedout => {
                        crate::metrics::CLIENT_BODY_TIMEOUTS.fetch_add(1, Ordering::Relaxed);
                        408
                    }
                    _ => 400,
                },
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
            // (INTERNAL_ERROR); an upgraded tunnel is closed.
            crate::metrics::RESPONSES_ABORTED.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                tenant = %self.tenant,
                request_id = %ctx.request_id,
                upstream = upstream.as_deref().unwrap_or("-"),
                "the upstream failed after the response started; the client's response is aborted, not completed"
            );
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
        let req = session.req_header();
        info!(
            target: "access",
            tenant = %self.tenant,
            request_id = %ctx.request_id,
            client = %session.client_addr().map(|a| a.to_string()).unwrap_or_default(),
            method = %req.method,
            host = %ctx.host,
            path = %req.uri.path(),
            status,
            route = %ctx.route,
            upstream = ctx.upstream.as_ref().map_or("", |u| u.config.name.as_str()),
            server = %ctx.tried.last().map(|a| a.to_string()).unwrap_or_default(),
            attempts = ctx.tried.len(),
            duration_us = ctx.started.elapsed().as_micros() as u64,
            error = e.map(|e| e.to_string()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_element_quotes_ipv6_and_drops_quotes_from_the_host() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(
            forwarded_element(v4, "192.0.2.7", "https", Some("a.example")),
            "for=192.0.2.7;proto=https;host=\"a.example\""
        );
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            forwarded_element(v6, "2001:db8::1", "http", Some("a\"b.example")),
            "for=\"[2001:db8::1]\";proto=http;host=\"ab.example\""
        );
        assert_eq!(
            forwarded_element(v4, "192.0.2.7", "http", None),
            "for=192.0.2.7;proto=http"
        );
    }

    #[test]
    fn list_headers_are_appended_to() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(
            appended(&headers, "via", "1.1 switchyard"),
            "1.1 switchyard"
        );
        headers.insert("via", HeaderValue::from_static("1.0 edge"));
        assert_eq!(
            appended(&headers, "via", "1.1 switchyard"),
            "1.0 edge, 1.1 switchyard"
        );
        // Every line counts, not only the first.
        headers.append("via", HeaderValue::from_static("1.1 cdn, 1.1 lb"));
        assert_eq!(
            appended(&headers, "via", "1.1 switchyard"),
            "1.0 edge, 1.1 cdn, 1.1 lb, 1.1 switchyard"
        );
    }
}
