//! The registration API: backends add themselves to a pool, renew, and leave,
//! with no configuration reload (`POST /v1/register`, `POST /v1/deregister`,
//! `GET /v1/upstreams`, and the pools' Prometheus metrics at `GET /metrics`),
//! served on the tenant's `[registration] listen` address as a Pingora HTTP app.
//!
//! Who may call it: on the Unix socket (the default, `register.sock` in the
//! tenant's runtime directory) the kernel's `SO_PEERCRED` of every connection is
//! checked against the tenant's own user, root, and the tenant file's
//! `allow_users` / `allow_groups` ([`PeerCheck`]); on TCP every request needs
//! `Authorization: Bearer TOKEN` (`401` otherwise). Registered servers may
//! point only where `allow_addrs` allows (loopback by default), and `unix:`
//! servers only inside the tenant's own runtime directory.

use crate::pool::registry::Registry;
use crate::pool::Pool;
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::apps::ServerApp;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use switchyard_shared::config::{parse_registration_ttl, ServerAddr, ServerSpec, MAX_WEIGHT};
use switchyard_shared::net::AddrRule;
use switchyard_shared::throttle::Throttle;

/// The largest request body the API reads.
const BODY_LIMIT: usize = 64 * 1024;

/// The TTL of a registration that does not give one.
const DEFAULT_TTL: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterRequest {
    upstream: String,
    addr: String,
    ttl: Option<String>,
    weight: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeregisterRequest {
    upstream: String,
    addr: String,
}

/// The tenant's registration API.
pub struct RegistrationApi {
    /// The tenant's name.
    pub tenant: String,
    /// Where registrations are kept.
    pub registry: Arc<Registry>,
    /// Every pool of the tenant.
    pub pools: Vec<Arc<Pool>>,
    /// The tenant's runtime directory: `unix:` servers must lie inside it.
    pub tenant_dir: PathBuf,
    /// Where registered TCP servers may point.
    pub allow_addrs: Vec<AddrRule>,
    /// The bearer token every request must carry (TCP listeners).
    pub token: Option<String>,
    /// What `GET /metrics` shows.
    pub metrics: crate::metrics::TenantMetrics,
}

/// Lets a connection on the Unix socket reach the API only when the kernel
/// says its peer is the tenant's user, root, or an allowed user or group (on
/// TCP, where the kernel knows no user, the bearer token decides instead).
pub struct PeerCheck {
    /// The API.
    pub api: Arc<RegistrationApi>,
    /// Whether connections are checked (Unix socket) or not (TCP).
    pub check_peers: bool,
    /// Allowed uids (the tenant's own, root, `allow_users`).
    pub uids: Vec<u32>,
    /// Allowed gids (`allow_groups`): the peer's primary group or any group
    /// that lists the peer's user.
    pub gids: Vec<u32>,
    refusals: std::sync::Mutex<Throttle>,
}

impl PeerCheck {
    /// A check in front of `api`.
    pub fn new(
        api: RegistrationApi,
        check_peers: bool,
        uids: Vec<u32>,
        gids: Vec<u32>,
    ) -> PeerCheck {
        PeerCheck {
            api: Arc::new(api),
            check_peers,
            uids,
            gids,
            refusals: std::sync::Mutex::new(Throttle::new(10)),
        }
    }

    fn allowed(&self, peer: switchyard_shared::handoff::PeerCredentials) -> bool {
        if self.uids.contains(&peer.uid) || self.gids.contains(&peer.gid) {
            return true;
        }
        if self.gids.is_empty() {
            return false;
        }
        let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(peer.uid))
        else {
            return false;
        };
        self.gids.iter().any(|gid| {
            nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(*gid))
                .ok()
                .flatten()
                .is_some_and(|g| g.mem.contains(&user.name))
        })
    }

    /// At most ten refusal lines a minute.
    fn log_refusal(&self, message: String) {
        if self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allow()
        {
            tracing::warn!(tenant = %self.api.tenant, "{message}");
        }
    }
}

#[async_trait]
impl ServerApp for PeerCheck {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if !self.check_peers {
            return self.api.process_new(stream, shutdown).await;
        }
        // Pingora's stream id is its descriptor number.
        match switchyard_shared::sys::peer_credentials_of(stream.id()) {
            Ok(peer) if self.allowed(peer) => self.api.process_new(stream, shutdown).await,
            Ok(peer) => {
                self.log_refusal(format!(
                    "registration API: refused a connection from uid {} (pid {}); allow it with [registration] allow_users or allow_groups",
                    peer.uid, peer.pid
                ));
                None
            }
            Err(e) => {
                self.log_refusal(format!(
                    "registration API: cannot identify a peer ({e}); refused"
                ));
                None
            }
        }
    }
}

/// A `400`/`404`/... answer with a message saying what to fix.
struct Refusal(StatusCode, String);

fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal(status, message.into())
}

fn json_response(status: StatusCode, body: &Value, allow: Option<&str>) -> Response<Vec<u8>> {
    let body = (body.to_string() + "\n").into_bytes();
    let mut builder = Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("Content-Length", body.len());
    if let Some(allow) = allow {
        builder = builder.header("Allow", allow);
    }
    builder.body(body).unwrap_or_default()
}

impl RegistrationApi {
    fn pool(&self, name: &str) -> Result<&Arc<Pool>, Refusal> {
        let pool = self
            .pools
            .iter()
            .find(|p| p.config.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self.pools.iter().map(|p| p.config.name.as_str()).collect();
                refuse(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unknown upstream {name:?} (this tenant has: {})",
                        known.join(", ")
                    ),
                )
            })?;
        if !pool.config.registration {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("upstream {name:?} does not take registrations; set `registration = true` on it in the tenant file"),
            ));
        }
        Ok(pool)
    }

    fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Refusal> {
        serde_json::from_slice(body).map_err(|e| {
            refuse(
                StatusCode::BAD_REQUEST,
                format!("the body is not a valid request: {e}"),
            )
        })
    }

    fn server_addr(&self, text: &str) -> Result<ServerAddr, Refusal> {
        let addr =
            ServerAddr::parse(text).map_err(|e| refuse(StatusCode::BAD_REQUEST, e.to_string()))?;
        match &addr {
            ServerAddr::Tcp(sa) if sa.port() == 0 || sa.ip().is_unspecified() || sa.ip().is_multicast() => Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("addr {text:?} cannot be connected to; give the IP and port the server listens on"),
            )),
            ServerAddr::Tcp(sa) if !self.allow_addrs.iter().any(|rule| rule.allows(*sa)) => Err(refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "addr {text:?} is not allowed for this tenant (allow_addrs: {}); add it to [registration] allow_addrs in the tenant file",
                    self.allow_addrs.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ")
                ),
            )),
            ServerAddr::Unix(path) if !path.is_absolute() => Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("addr {text:?}: a unix socket path must be absolute"),
            )),
            ServerAddr::Unix(path)
                if path.components().any(|c| matches!(c, std::path::Component::ParentDir | std::path::Component::CurDir))
                    || !path.starts_with(&self.tenant_dir) =>
            {
                Err(refuse(
                    StatusCode::FORBIDDEN,
                    format!(
                        "addr {text:?}: a unix socket server must be an absolute path inside the tenant's runtime directory {} (no '..')",
                        self.tenant_dir.display()
                    ),
                ))
            }
            _ => Ok(addr),
        }
    }

    fn register(&self, body: &[u8]) -> Result<Value, Refusal> {
        let req: RegisterRequest = Self::parse(body)?;
        let pool = self.pool(&req.upstream)?;
        let addr = self.server_addr(&req.addr)?;
        let ttl = match &req.ttl {
            Some(text) => parse_registration_ttl(text)
                .map_err(|e| refuse(StatusCode::BAD_REQUEST, e.to_string()))?,
            None => DEFAULT_TTL,
        };
        let weight = req.weight.unwrap_or(1);
        if !(1..=MAX_WEIGHT).contains(&weight) {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("weight {weight} is out of range; use 1 to {MAX_WEIGHT}"),
            ));
        }
        let spec = ServerSpec { addr, weight };
        let new = self
            .registry
            .register(&req.upstream, &spec, ttl)
            .map_err(|e| self.storage_failure(e))?;
        pool.membership_may_have_changed();
        if new {
            tracing::info!(tenant = %self.tenant, upstream = %req.upstream, server = %spec.addr, ttl_ms = ttl.as_millis() as u64, "server registered");
        }
        Ok(json!({
            "registered": spec.addr.to_string(),
            "upstream": req.upstream,
            "new": new,
            "ttl_ms": ttl.as_millis() as u64,
            "weight": weight,
        }))
    }

    fn deregister(&self, body: &[u8]) -> Result<Value, Refusal> {
        let req: DeregisterRequest = Self::parse(body)?;
        let pool = self.pool(&req.upstream)?;
        let addr = self.server_addr(&req.addr)?;
        let found = self
            .registry
            .deregister(&req.upstream, &addr)
            .map_err(|e| self.storage_failure(e))?;
        if !found {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                format!("{addr} is not registered in upstream {:?}", req.upstream),
            ));
        }
        pool.membership_may_have_changed();
        tracing::info!(tenant = %self.tenant, upstream = %req.upstream, server = %addr, "server deregistered");
        Ok(json!({"deregistered": addr.to_string(), "upstream": req.upstream}))
    }

    fn storage_failure(&self, e: std::io::Error) -> Refusal {
        tracing::error!(tenant = %self.tenant, file = %self.registry.path().display(), error = %e, "cannot write the registrations file; check the tenant runtime directory's owner and free space");
        refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot store the registration: {e}"),
        )
    }

    fn list(&self) -> Value {
        json!({
            "tenant": self.tenant,
            // With `processes` > 1 every process answers for its own counters
            // and health checks; the registrations are shared.
            "pid": std::process::id(),
            "upstreams": self.pools.iter().map(|p| p.report()).collect::<Vec<_>>(),
        })
    }
}

async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Refusal> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > BODY_LIMIT {
                    return Err(refuse(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "the body is larger than 64 KiB",
                    ));
                }
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {e}"),
                ))
            }
        }
    }
}

#[async_trait]
impl ServeHttp for RegistrationApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        if let Some(token) = &self.token {
            let authorization = session
                .req_header()
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !switchyard_shared::token::bearer_matches(authorization, token) {
                return json_response(
                    StatusCode::UNAUTHORIZED,
                    &json!({"error": "send Authorization: Bearer TOKEN (the token in [registration] token_file)", "tenant": self.tenant}),
                    None,
                );
            }
        }
        if path == "/metrics" && method == Method::GET {
            let body = self.metrics.render();
            return Response::builder()
                .status(StatusCode::OK)
                .header("Content-Type", "text/plain; version=0.0.4")
                .header("Content-Length", body.len())
                .body(body)
                .unwrap_or_default();
        }
        let (allowed, result) = match path.as_str() {
            "/v1/register" | "/v1/deregister" if method == Method::POST => {
                let result = match read_body(session).await {
                    Ok(body) if path == "/v1/register" => self.register(&body),
                    Ok(body) => self.deregister(&body),
                    Err(refusal) => Err(refusal),
                };
                ("POST", result)
            }
            "/v1/register" | "/v1/deregister" => (
                "POST",
                Err(refuse(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{path} takes POST with a JSON body"),
                )),
            ),
            "/v1/upstreams" if method == Method::GET || method == Method::HEAD => {
                ("GET", Ok(self.list()))
            }
            "/v1/upstreams" => (
                "GET",
                Err(refuse(StatusCode::METHOD_NOT_ALLOWED, "/v1/upstreams takes GET")),
            ),
            _ => (
                "",
                Err(refuse(
                    StatusCode::NOT_FOUND,
                    format!("no such endpoint {path:?}; the API has POST /v1/register, POST /v1/deregister, GET /v1/upstreams and GET /metrics"),
                )),
            ),
        };
        match result {
            Ok(body) => json_response(StatusCode::OK, &body, None),
            Err(Refusal(status, message)) => {
                if status != StatusCode::NOT_FOUND {
                    tracing::info!(tenant = %self.tenant, %method, %path, status = status.as_u16(), error = %message, "registration request refused");
                }
                let allow = (status == StatusCode::METHOD_NOT_ALLOWED).then_some(allowed);
                json_response(
                    status,
                    &json!({"error": message, "tenant": self.tenant}),
                    allow,
                )
            }
        }
    }
}
