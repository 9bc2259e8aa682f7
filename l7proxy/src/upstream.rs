//! Upstream groups: Pingora load balancers over the tenant's static servers.

use pingora::lb::discovery::Static;
use pingora::lb::selection::{Random, RoundRobin};
use pingora::lb::{Backend, Backends, Extensions, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr;
use pingora::upstreams::peer::HttpPeer;
use std::collections::BTreeSet;
use std::sync::Arc;
use switchyard_shared::config::{LbKind, ServerAddr, UpstreamConfig};

/// A group's load balancer, whichever the algorithm.
enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
}

/// One `[[upstream]]` group, ready to pick servers.
pub struct Upstream {
    /// The group's settings.
    pub config: UpstreamConfig,
    balancer: Balancer,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.config.name)
            .finish()
    }
}

impl Upstream {
    /// Builds the group and loads its servers into the balancer.
    pub async fn build(config: UpstreamConfig) -> Result<Arc<Upstream>, String> {
        let mut backends = BTreeSet::new();
        for server in &config.servers {
            let addr = match server {
                ServerAddr::Tcp(addr) => SocketAddr::Inet(*addr),
                ServerAddr::Unix(path) => SocketAddr::Unix(
                    std::os::unix::net::SocketAddr::from_pathname(path).map_err(|e| {
                        format!(
                            "upstream {}: bad unix path {}: {e}",
                            config.name,
                            path.display()
                        )
                    })?,
                ),
            };
            backends.insert(Backend {
                addr,
                weight: 1,
                ext: Extensions::new(),
            });
        }
        let backends = Backends::new(Static::new(backends));
        let balancer = match config.lb {
            LbKind::RoundRobin => Balancer::RoundRobin(LoadBalancer::from_backends(backends)),
            LbKind::Random => Balancer::Random(LoadBalancer::from_backends(backends)),
        };
        let loaded = match &balancer {
            Balancer::RoundRobin(lb) => lb.update().await,
            Balancer::Random(lb) => lb.update().await,
        };
        loaded.map_err(|e| format!("upstream {}: cannot load servers: {e}", config.name))?;
        Ok(Arc::new(Upstream { config, balancer }))
    }

    /// Picks a server and describes how to reach it.
    pub fn pick(&self, key: &[u8]) -> Option<Box<HttpPeer>> {
        let backend = match &self.balancer {
            Balancer::RoundRobin(lb) => lb.select(key, 256),
            Balancer::Random(lb) => lb.select(key, 256),
        }?;
        let mut peer = match &backend.addr {
            SocketAddr::Inet(addr) => HttpPeer::new(*addr, false, String::new()),
            SocketAddr::Unix(addr) => {
                let path = addr.as_pathname()?.to_str()?;
                HttpPeer::new_uds(path, false, String::new()).ok()?
            }
        };
        peer.options.connection_timeout = Some(self.config.connect_timeout);
        peer.options.read_timeout = Some(self.config.read_timeout);
        Some(Box::new(peer))
    }
}
