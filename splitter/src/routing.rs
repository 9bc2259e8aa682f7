//! The routing table: which tenant serves a peeked name. Built whole from a
//! host file and swapped atomically on reload.

use crate::tenant::Tenant;
use std::sync::Arc;
use switchyard_shared::config::{HostConfig, UnknownHost};
use switchyard_shared::host::HostTable;

/// Maps normalised names to tenants, with the `unknown_host` fallback.
#[derive(Debug, Default)]
pub struct RoutingTable {
    hosts: HostTable<Arc<Tenant>>,
    fallback: Option<Arc<Tenant>>,
    tenants: Vec<Arc<Tenant>>,
}

impl RoutingTable {
    /// Builds the table of a validated host file over the running `tenants`.
    pub fn new(config: &HostConfig, tenants: &[Arc<Tenant>]) -> RoutingTable {
        let find = |name: &str| tenants.iter().find(|t| t.name() == name).cloned();
        let mut hosts = HostTable::new();
        for entry in &config.tenants {
            if let Some(tenant) = find(&entry.name) {
                for pattern in &entry.hosts {
                    hosts.insert(pattern.clone(), tenant.clone());
                }
            }
        }
        let fallback = match &config.splitter.unknown_host {
            UnknownHost::Reject => None,
            UnknownHost::Tenant(name) => find(name),
        };
        RoutingTable {
            hosts,
            fallback,
            tenants: tenants.to_vec(),
        }
    }

    /// Every running tenant, routed to by a name or not.
    pub fn tenants(&self) -> &[Arc<Tenant>] {
        &self.tenants
    }

    /// The tenant for `name` (`None`: the client sent no name), if any takes it.
    pub fn route(&self, name: Option<&str>) -> Option<&Arc<Tenant>> {
        name.and_then(|n| self.hosts.lookup(n))
            .or(self.fallback.as_ref())
    }
}
