//! A pool's membership: its static servers, the servers registered for it and
//! those DNS discovery found, as Pingora's `ServiceDiscovery`. Each `Backend`
//! carries its [`ServerState`] in its extensions, so a selected server comes
//! with its counters.

use super::dns::DnsSource;
use super::registry::Registry;
use super::server::{Origin, ServerState};
use async_trait::async_trait;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::Backend;
use pingora::protocols::l4::socket::SocketAddr;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use switchyard_shared::config::{ServerAddr, ServerSpec};

/// The pingora address of a server.
pub fn socket_addr(addr: &ServerAddr) -> Option<SocketAddr> {
    match addr {
        ServerAddr::Tcp(addr) => Some(SocketAddr::Inet(*addr)),
        ServerAddr::Unix(path) => std::os::unix::net::SocketAddr::from_pathname(path)
            .ok()
            .map(SocketAddr::Unix),
    }
}

/// Where a pool's servers come from.
pub struct PoolDiscovery {
    /// The upstream group's name (the registry's key).
    pub upstream: String,
    /// `servers` of the tenant file.
    pub statics: Vec<ServerSpec>,
    /// Registrations, when the group takes them.
    pub registry: Option<Arc<Registry>>,
    /// DNS discovery, when configured.
    pub dns: Option<Arc<DnsSource>>,
    /// State of every current server, kept across membership changes.
    pub states: Arc<Mutex<HashMap<ServerAddr, Arc<ServerState>>>>,
}

impl PoolDiscovery {
    /// The current servers with their origins (static before registered
    /// before DNS when an address appears twice).
    pub fn members(&self) -> Vec<(ServerSpec, Origin)> {
        let mut members: Vec<(ServerSpec, Origin)> = self
            .statics
            .iter()
            .map(|s| (s.clone(), Origin::Static))
            .collect();
        if let Some(registry) = &self.registry {
            members.extend(
                registry
                    .live(&self.upstream)
                    .into_iter()
                    .map(|r| (r.spec, Origin::Registered)),
            );
        }
        if let Some(dns) = &self.dns {
            members.extend(dns.current().iter().map(|s| (s.clone(), Origin::Dns)));
        }
        let mut seen = std::collections::HashSet::new();
        members.retain(|(spec, _)| seen.insert(spec.addr.clone()));
        members
    }
}

#[async_trait]
impl ServiceDiscovery for PoolDiscovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let members = self.members();
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.retain(|addr, state| {
            members
                .iter()
                .any(|(spec, origin)| &spec.addr == addr && *origin == state.origin)
        });
        let mut backends = BTreeSet::new();
        for (spec, origin) in members {
            let Some(addr) = socket_addr(&spec.addr) else {
                tracing::warn!(upstream = %self.upstream, server = %spec.addr, "unix socket path is too long; server skipped");
                continue;
            };
            let state = states
                .entry(spec.addr.clone())
                .or_insert_with(|| Arc::new(ServerState::new(spec.addr.clone(), origin)))
                .clone();
            let mut backend = Backend {
                addr,
                weight: spec.weight,
                ext: Default::default(),
            };
            backend.ext.insert(state);
            backends.insert(backend);
        }
        Ok((backends, HashMap::new()))
    }
}
