//! Why a pool could not be built or could not refresh its servers.

use std::path::PathBuf;

/// A pool failure, written for the tenant's operator.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The upstream's `tls.ca` file is unusable.
    #[error("{}: {problem}", path.display())]
    CaFile {
        /// The CA file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The health check's request cannot be built.
    #[error("health {field} {value:?}: {detail}")]
    HealthRequest {
        /// `path` or `host`.
        field: &'static str,
        /// The value written.
        value: String,
        /// Why Pingora refused it.
        detail: String,
    },
    /// No `discovery.resolver`, and the system's DNS settings are unreadable.
    #[error("cannot read the system's DNS configuration ({0}); set discovery.resolver")]
    SystemResolver(String),
    /// A DNS lookup failed (the previous servers are kept).
    #[error("{kind} lookup of {name}: {detail}")]
    Lookup {
        /// "SRV", "A/AAAA", or "SRV target".
        kind: &'static str,
        /// The name looked up.
        name: String,
        /// What the resolver said.
        detail: String,
    },
    /// Pingora's discovery or health update failed.
    #[error("discovery failed: {0}")]
    Discovery(String),
    /// One of the above, for the named upstream.
    #[error("upstream {upstream}: {source}")]
    In {
        /// The `[[upstream]]` name.
        upstream: String,
        /// What failed.
        source: Box<PoolError>,
    },
}

impl PoolError {
    /// This error, said of `upstream`.
    pub fn of(upstream: &str) -> impl FnOnce(PoolError) -> PoolError + '_ {
        move |source| PoolError::In {
            upstream: upstream.to_string(),
            source: Box::new(source),
        }
    }
}
