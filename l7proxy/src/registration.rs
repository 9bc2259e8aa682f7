//! The registration API: backends add themselves to a pool, renew, and leave,
//! with no configuration reload (`POST /v1/register`, `POST /v1/deregister`,
//! `GET /v1/upstreams`, and the pools' Prometheus metrics at `GET /metrics`),
//! served on the tenant's `[registration] listen` address as a Pingora HTTP app.
//!
//! Anyone who can connect may register a server, so the listener is meant for
//! loopback (every local user) or a Unix socket in the tenant's 0700 runtime
//! directory (the tenant's user and root only).

use crate::pool::registry::Registry;
use crate::pool::Pool;
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use switchyard_shared::config::{parse_registration_ttl, ServerAddr, ServerSpec, MAX_WEIGHT};

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

    fn server_addr(text: &str) -> Result<ServerAddr, Refusal> {
        let addr = ServerAddr::parse(text).map_err(|e| refuse(StatusCode::BAD_REQUEST, e))?;
        match &addr {
            ServerAddr::Tcp(sa) if sa.port() == 0 || sa.ip().is_unspecified() || sa.ip().is_multicast() => Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("addr {text:?} cannot be connected to; give the IP and port the server listens on"),
            )),
            ServerAddr::Unix(path) if !path.is_absolute() => Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("addr {text:?}: a unix socket path must be absolute"),
            )),
            _ => Ok(addr),
        }
    }

    fn register(&self, body: &[u8]) -> Result<Value, Refusal> {
        let req: RegisterRequest = Self::parse(body)?;
        let pool = self.pool(&req.upstream)?;
        let addr = Self::server_addr(&req.addr)?;
        let ttl = match &req.ttl {
            Some(text) => {
                parse_registration_ttl(text).map_err(|e| refuse(StatusCode::BAD_REQUEST, e))?
            }
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
        let addr = Self::server_addr(&req.addr)?;
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
        if path == "/metrics" && method == Method::GET {
            let body = crate::metrics::render(&self.tenant, &self.pools);
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
