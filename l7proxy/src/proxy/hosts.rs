//! Which host names this tenant answers and which belong to another tenant
//! (a request for those gets `421`): the host file seen from one tenant.

use pingora::http::RequestHeader;
use switchyard_shared::config::{HostConfig, UnknownHost};
use switchyard_shared::host::HostTable;

/// Who owns a host name, as far as this tenant is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// One of this tenant's hosts.
    Us,
    /// A host of another tenant.
    Other(String),
}

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

impl HostView {
    /// Whether this tenant may answer `host` (normalised): `Err(Some(owner))`
    /// for another tenant's name, `Err(None)` for a name nobody claims when
    /// this tenant is not the `unknown_host` one.
    pub fn allows(&self, host: &str) -> Result<(), Option<String>> {
        match self.owners.lookup(host) {
            Some(Owner::Us) => Ok(()),
            Some(Owner::Other(other)) => Err(Some(other.clone())),
            None if self.takes_unknown_hosts => Ok(()),
            None => Err(None),
        }
    }
}

/// The authority the request is for: `:authority` / absolute URI, else `Host`.
pub fn request_authority(req: &RequestHeader) -> Option<&str> {
    req.uri.authority().map(|a| a.as_str()).or_else(|| {
        req.headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
    })
}
