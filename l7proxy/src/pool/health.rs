//! Active health checks of a pool, built from the group's `health` setting
//! with Pingora's TCP and HTTP checks, and a log line whenever a server's
//! health flips.

use super::error::PoolError;
use super::peer::PeerTemplate;
use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::lb::health_check::{HealthCheck, HealthObserve, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::Backend;
use pingora::{Error, ErrorType};
use switchyard_shared::config::{HealthConfig, HealthKind};

/// Logs health changes of a pool's servers.
struct HealthLogger {
    tenant: String,
    upstream: String,
}

#[async_trait]
impl HealthObserve for HealthLogger {
    async fn observe(&self, target: &Backend, healthy: bool) {
        if healthy {
            tracing::info!(tenant = %self.tenant, upstream = %self.upstream, server = %target.addr, "server is healthy again; it gets requests");
        } else {
            tracing::warn!(tenant = %self.tenant, upstream = %self.upstream, server = %target.addr, "server failed its health check; it gets no requests until it passes again");
        }
    }
}

/// Builds the health check of a pool.
pub fn build(
    tenant: &str,
    upstream: &str,
    config: &HealthConfig,
    peers: &PeerTemplate,
) -> Result<Box<dyn HealthCheck + Send + Sync>, PoolError> {
    let logger = Box::new(HealthLogger {
        tenant: tenant.to_string(),
        upstream: upstream.to_string(),
    });
    match &config.kind {
        HealthKind::Tcp => {
            let mut check = match peers.tls_sni() {
                Some(sni) => TcpHealthCheck::new_tls(sni),
                None => TcpHealthCheck::new(),
            };
            check.consecutive_success = config.rise;
            check.consecutive_failure = config.fall;
            check.peer_template.options.connection_timeout = Some(config.timeout);
            check.peer_template.options.total_connection_timeout = Some(config.timeout);
            check.health_changed_callback = Some(logger);
            Ok(check)
        }
        HealthKind::Http { path, host, status } => {
            let host_header = host.clone().unwrap_or_else(|| upstream.to_string());
            let mut check = HttpHealthCheck::new(&host_header, peers.tls_sni().is_some());
            let mut req = RequestHeader::build("GET", path.as_bytes(), None).map_err(|e| {
                PoolError::HealthRequest {
                    field: "path",
                    value: path.clone(),
                    detail: e.to_string(),
                }
            })?;
            req.insert_header("Host", host_header.as_str())
                .map_err(|e| PoolError::HealthRequest {
                    field: "host",
                    value: host_header.clone(),
                    detail: e.to_string(),
                })?;
            req.insert_header("User-Agent", "switchyard-health-check")
                .expect("a constant, valid header");
            check.req = req;
            check.peer_template = peers.health_peer(config.timeout);
            check.consecutive_success = config.rise;
            check.consecutive_failure = config.fall;
            let expected = *status;
            check.validator = Some(Box::new(move |resp| {
                if resp.status.as_u16() == expected {
                    Ok(())
                } else {
                    Error::e_explain(
                        ErrorType::CustomCode("unexpected health status", resp.status.as_u16()),
                        format!("expected {expected}"),
                    )
                }
            }));
            check.health_changed_callback = Some(logger);
            check.set_backend_summary(|b| b.addr.to_string());
            Ok(Box::new(check))
        }
    }
}
