//! Keeping pools current in the background: discovery (registrations, DNS)
//! and active health checks, as one Pingora background service.

use super::Pool;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

/// How often discovery looks for registrations that lapsed or that another
/// process of the tenant added.
const DISCOVERY_TICK: Duration = Duration::from_millis(250);

/// The background service that keeps every pool of the tenant current.
pub struct PoolUpkeep {
    /// The tenant's pools.
    pub pools: Vec<Arc<Pool>>,
}

#[async_trait]
impl BackgroundService for PoolUpkeep {
    async fn start(&self, shutdown: ShutdownWatch) {
        let mut tasks = tokio::task::JoinSet::new();
        for pool in &self.pools {
            // Static servers were loaded when the pool was built and never
            // change: only registrations and DNS need discovery again.
            if pool.registry.is_some() || pool.dns.is_some() {
                tasks.spawn(pool.clone().discovery_loop(shutdown.clone()));
            }
            if pool.config.health.is_some() {
                tasks.spawn(pool.clone().health_loop(shutdown.clone()));
            }
            if pool.dns.is_some() {
                tasks.spawn(pool.clone().dns_loop(shutdown.clone()));
            }
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// Waits for `duration`; false when shutdown came first.
async fn sleep_unless_shutdown(duration: Duration, shutdown: &mut ShutdownWatch) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => true,
        _ = shutdown.changed() => false,
    }
}

impl Pool {
    async fn discovery_loop(self: Arc<Self>, mut shutdown: ShutdownWatch) {
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(DISCOVERY_TICK) => {}
                _ = self.changed.notified() => {}
                _ = shutdown.changed() => return,
            }
            if let Some(registry) = &self.registry {
                registry.refresh();
            }
            match self.update().await {
                Ok(changed) => {
                    failing = false;
                    if changed {
                        let servers = self.backends().get_backend();
                        tracing::info!(
                            tenant = %self.tenant,
                            upstream = %self.config.name,
                            servers = servers.len(),
                            "pool membership changed"
                        );
                        self.check_now.notify_one();
                    }
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(tenant = %self.tenant, error = %e, "keeping the previous servers");
                }
                Err(_) => {}
            }
        }
    }

    async fn health_loop(self: Arc<Self>, mut shutdown: ShutdownWatch) {
        let interval = self
            .config
            .health
            .as_ref()
            .map_or(Duration::from_secs(2), |h| h.interval);
        loop {
            tokio::select! {
                _ = self.backends().run_health_check(true) => {}
                _ = shutdown.changed() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.check_now.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn dns_loop(self: Arc<Self>, mut shutdown: ShutdownWatch) {
        let Some(dns) = self.dns.clone() else { return };
        let mut failing = false;
        loop {
            match dns.refresh().await {
                Ok(changed) => {
                    if failing {
                        tracing::info!(tenant = %self.tenant, upstream = %self.config.name, name = %dns.config.name, "DNS discovery answers again");
                    }
                    failing = false;
                    if changed {
                        tracing::info!(tenant = %self.tenant, upstream = %self.config.name, name = %dns.config.name, servers = dns.current().len(), "DNS discovery found a new set of servers");
                        self.changed.notify_one();
                    }
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(tenant = %self.tenant, upstream = %self.config.name, error = %e, "DNS discovery failed; keeping the servers found before (logged once until it recovers)");
                }
                Err(_) => {}
            }
            if !sleep_unless_shutdown(dns.config.interval, &mut shutdown).await {
                return;
            }
        }
    }
}
