//! DNS discovery: a pool follows the SRV records of a name (or, when it has
//! none, its A/AAAA records with the configured port), resolved again on an
//! interval — how a site spanning several machines follows Consul or a
//! Kubernetes headless service.

use super::error::PoolError;
use arc_swap::ArcSwap;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use switchyard_shared::config::{DnsDiscovery, ServerAddr, ServerSpec, MAX_WEIGHT};

/// The servers a DNS name currently points at.
pub struct DnsSource {
    /// What to resolve and where.
    pub config: DnsDiscovery,
    resolver: TokioResolver,
    found: ArcSwap<Vec<ServerSpec>>,
}

/// An answer that says "nothing there", as opposed to a failure to get one.
fn answered_empty(e: &ResolveError) -> bool {
    e.is_no_records_found() || e.is_nx_domain()
}

impl DnsSource {
    /// A source for `config`, asking its resolver or the system's.
    pub fn new(config: DnsDiscovery) -> Result<DnsSource, PoolError> {
        let mut opts = ResolverOpts::default();
        // Every resolution goes to the server: the interval is the cache.
        opts.cache_size = 0;
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 1;
        let builder = match config.resolver {
            Some(server) => {
                let mut rc = ResolverConfig::new();
                rc.add_name_server(NameServerConfig::new(server, Protocol::Udp));
                rc.add_name_server(NameServerConfig::new(server, Protocol::Tcp));
                TokioResolver::builder_with_config(rc, TokioConnectionProvider::default())
            }
            None => TokioResolver::builder_tokio()
                .map_err(|e| PoolError::SystemResolver(e.to_string()))?,
        };
        Ok(DnsSource {
            config,
            resolver: builder.with_options(opts).build(),
            found: ArcSwap::from_pointee(Vec::new()),
        })
    }

    /// The servers found by the last successful resolution.
    pub fn current(&self) -> Arc<Vec<ServerSpec>> {
        self.found.load_full()
    }

    /// Resolves the name again; `Ok(true)` when the set of servers changed.
    /// On an error the previous servers are kept.
    pub async fn refresh(&self) -> Result<bool, PoolError> {
        let servers = self.resolve().await?;
        let old: BTreeSet<_> = self
            .current()
            .iter()
            .map(|s| (s.addr.clone(), s.weight))
            .collect();
        let new: BTreeSet<_> = servers.iter().map(|s| (s.addr.clone(), s.weight)).collect();
        if old == new {
            return Ok(false);
        }
        self.found.store(Arc::new(servers));
        Ok(true)
    }

    async fn resolve(&self) -> Result<Vec<ServerSpec>, PoolError> {
        let name = self.config.name.as_str();
        match self.resolver.srv_lookup(name).await {
            Ok(srv) => {
                // Only the most preferred priority is used (RFC 2782).
                let records: Vec<_> = srv.iter().cloned().collect();
                let best = records.iter().map(|r| r.priority()).min();
                let mut servers = Vec::new();
                for record in records.iter().filter(|r| Some(r.priority()) == best) {
                    let target = record.target().to_ascii();
                    let ips = self
                        .resolver
                        .lookup_ip(target.as_str())
                        .await
                        .map_err(|e| PoolError::Lookup {
                            kind: "SRV target",
                            name: format!("{target} (of {name})"),
                            detail: e.to_string(),
                        })?;
                    for ip in ips.iter() {
                        servers.push(ServerSpec {
                            addr: ServerAddr::Tcp(SocketAddr::new(ip, record.port())),
                            weight: (record.weight() as usize).clamp(1, MAX_WEIGHT),
                        });
                    }
                }
                Ok(servers)
            }
            Err(e) if answered_empty(&e) => {
                let Some(port) = self.config.port else {
                    return Ok(Vec::new());
                };
                match self.resolver.lookup_ip(name).await {
                    Ok(ips) => Ok(ips
                        .iter()
                        .map(|ip| ServerSpec {
                            addr: ServerAddr::Tcp(SocketAddr::new(ip, port)),
                            weight: 1,
                        })
                        .collect()),
                    Err(e) if answered_empty(&e) => Ok(Vec::new()),
                    Err(e) => Err(PoolError::Lookup {
                        kind: "A/AAAA",
                        name: name.to_string(),
                        detail: e.to_string(),
                    }),
                }
            }
            Err(e) => Err(PoolError::Lookup {
                kind: "SRV",
                name: name.to_string(),
                detail: e.to_string(),
            }),
        }
    }
}
