//! The routing table: which tenant serves a peeked name.

use switchyard_shared::config::{HostConfig, UnknownHost};
use switchyard_shared::host::HostTable;

/// Maps normalised names to tenant indices, with the `unknown_host` fallback.
#[derive(Debug)]
pub struct RoutingTable {
    hosts: HostTable<usize>,
    fallback: Option<usize>,
}

impl RoutingTable {
    /// Builds the table of a validated host file (indices into `config.tenants`).
    pub fn new(config: &HostConfig) -> RoutingTable {
        let mut hosts = HostTable::new();
        for (index, tenant) in config.tenants.iter().enumerate() {
            for pattern in &tenant.hosts {
                hosts.insert(pattern.clone(), index);
            }
        }
        let fallback = match &config.splitter.unknown_host {
            UnknownHost::Reject => None,
            UnknownHost::Tenant(name) => config.tenants.iter().position(|t| &t.name == name),
        };
        RoutingTable { hosts, fallback }
    }

    /// The tenant for `name` (`None`: the client sent no name), if any takes it.
    pub fn route(&self, name: Option<&str>) -> Option<usize> {
        name.and_then(|n| self.hosts.lookup(n).copied())
            .or(self.fallback)
    }
}
