//! The tenant's request routing: which route serves a host and path.

use crate::pool::Pool;
use std::sync::Arc;
use switchyard_shared::config::{Compression, RedirectTo, RouteConfig, RouteTarget};
use switchyard_shared::host::HostPattern;

/// Where a matched request goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// Proxy to this group.
    Upstream(Arc<Pool>),
    /// Answer with the JSON echo.
    Echo,
    /// Answer with a redirect.
    Redirect {
        /// Where to.
        to: RedirectTo,
        /// Its status.
        status: u16,
    },
    /// Answer with a fixed status and body.
    Status {
        /// The status.
        status: u16,
        /// The body.
        body: bytes::Bytes,
    },
}

/// One route: where its requests go and its own rules.
#[derive(Debug)]
pub struct Route {
    host: Option<HostPattern>,
    /// Its path prefix.
    pub path: String,
    /// Where its requests go.
    pub target: Target,
    /// Its rate limit and header rules.
    pub rules: Arc<crate::rules::RouteRules>,
    /// Response compressions it offers.
    pub compress: Vec<Compression>,
}

/// Routes ordered so that the first match is the right one: longest path
/// prefix first and, for equal prefixes, host-specific before any-host.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Whether any route compresses (requests skip the lookup otherwise).
    compresses: bool,
}

impl RouteTable {
    /// Builds the table; `upstreams` is indexed as in the tenant file.
    pub fn new(configs: &[RouteConfig], upstreams: &[Arc<Pool>]) -> RouteTable {
        let mut routes: Vec<Route> = configs
            .iter()
            .map(|r| Route {
                host: r.host.clone(),
                path: r.path.clone(),
                compress: r.compress.clone(),
                rules: Arc::new(crate::rules::RouteRules::new(
                    r.request_headers.clone(),
                    r.response_headers.clone(),
                    r.rate_limit.clone(),
                )),
                target: match &r.target {
                    RouteTarget::Upstream(index) => Target::Upstream(upstreams[*index].clone()),
                    RouteTarget::Echo => Target::Echo,
                    RouteTarget::Redirect { to, status } => Target::Redirect {
                        to: to.clone(),
                        status: *status,
                    },
                    RouteTarget::Status { status, body } => Target::Status {
                        status: *status,
                        body: bytes::Bytes::from(body.clone()),
                    },
                },
            })
            .collect();
        routes.sort_by(|a, b| {
            b.path
                .len()
                .cmp(&a.path.len())
                .then(b.host.is_some().cmp(&a.host.is_some()))
        });
        let compresses = routes.iter().any(|r| !r.compress.is_empty());
        RouteTable { routes, compresses }
    }

    /// Whether any route has `compress`.
    pub fn compresses(&self) -> bool {
        self.compresses
    }

    /// The route for a normalised `host` and a request `path`.
    pub fn find(&self, host: &str, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| path.starts_with(&r.path) && r.host.as_ref().is_none_or(|h| h.matches(host)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<&str>, path: &str) -> RouteConfig {
        RouteConfig {
            host: host.map(|h| HostPattern::parse(h).unwrap()),
            path: path.into(),
            target: RouteTarget::Echo,
            request_headers: Default::default(),
            response_headers: Default::default(),
            rate_limit: None,
            compress: Vec::new(),
        }
    }

    #[test]
    fn longest_prefix_then_host_specific_wins() {
        let table = RouteTable::new(
            &[
                route(None, "/"),
                route(None, "/api"),
                route(Some("a.com"), "/api"),
                route(None, "/api/v2"),
            ],
            &[],
        );
        assert_eq!(table.find("b.com", "/api/v2/x").unwrap().path, "/api/v2");
        assert_eq!(table.find("b.com", "/api/x").unwrap().path, "/api");
        assert_eq!(
            table.routes[1].host,
            Some(HostPattern::Exact("a.com".into()))
        );
        assert_eq!(table.find("b.com", "/other").unwrap().path, "/");
        let empty = RouteTable::new(&[route(None, "/api")], &[]);
        assert!(empty.find("b.com", "/").is_none());
    }
}
