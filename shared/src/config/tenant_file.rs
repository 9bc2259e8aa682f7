//! A tenant file: the site's TLS, upstream groups and routes.

use super::source::Source;
use super::ConfigErrors;
use crate::host::HostPattern;
use crate::units::serde_duration;
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenantFile {
    tls: Option<RawTls>,
    #[serde(default)]
    upstream: Vec<RawUpstream>,
    #[serde(default)]
    route: Vec<RawRoute>,
    registration: Option<Spanned<toml::Table>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    #[serde(default)]
    self_signed: bool,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_retries() -> usize {
    2
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: Spanned<String>,
    #[serde(default)]
    servers: Vec<Spanned<String>>,
    lb: Option<Spanned<String>>,
    hash_key: Option<Spanned<String>>,
    #[serde(default = "default_connect_timeout", with = "serde_duration")]
    connect_timeout: Duration,
    #[serde(default = "default_read_timeout", with = "serde_duration")]
    read_timeout: Duration,
    #[serde(default = "default_retries")]
    retries: usize,
    max_in_flight: Option<Spanned<usize>>,
    health: Option<Spanned<toml::Table>>,
    registration: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path: Option<Spanned<String>>,
    host: Option<Spanned<String>>,
    upstream: Option<Spanned<String>>,
    respond: Option<Spanned<String>>,
}

/// Where the tenant's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM files: the chain and the private key.
    Files {
        /// Certificate chain, PEM.
        cert: PathBuf,
        /// Private key, PEM.
        key: PathBuf,
    },
    /// A certificate generated at start for the tenant's hosts (demo and tests).
    SelfSigned,
}

/// One upstream server address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerAddr {
    /// TCP `IP:port`.
    Tcp(SocketAddr),
    /// A Unix stream socket path.
    Unix(PathBuf),
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerAddr::Tcp(addr) => write!(f, "{addr}"),
            ServerAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Load-balancing algorithm of an upstream group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbKind {
    /// Each server in turn.
    RoundRobin,
    /// A uniformly random server.
    Random,
}

/// One `[[upstream]]` group.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Name routes refer to.
    pub name: String,
    /// Static servers.
    pub servers: Vec<ServerAddr>,
    /// Selection algorithm.
    pub lb: LbKind,
    /// TCP/Unix connect timeout.
    pub connect_timeout: Duration,
    /// Timeout of each read from the upstream.
    pub read_timeout: Duration,
    /// Connect failures retried on another server.
    pub retries: usize,
}

/// What a route does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// Proxy to the upstream group with this index in [`TenantFile::upstreams`].
    Upstream(usize),
    /// Answer with the built-in JSON echo of the request.
    Echo,
}

/// One `[[route]]`.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Only requests for this host (any host of the tenant when `None`).
    pub host: Option<HostPattern>,
    /// Path prefix; the longest matching prefix wins.
    pub path: String,
    /// Where matching requests go.
    pub target: RouteTarget,
}

/// A validated tenant file.
#[derive(Debug, Clone)]
pub struct TenantFile {
    /// The file it was read from.
    pub path: PathBuf,
    /// `[tls]`, when the tenant serves TLS.
    pub tls: Option<TlsSource>,
    /// `[[upstream]]`, in file order.
    pub upstreams: Vec<UpstreamConfig>,
    /// `[[route]]`, in file order.
    pub routes: Vec<RouteConfig>,
}

/// Features whose keys are part of the configuration contract but which this
/// version does not implement yet: a config using them is refused rather than
/// silently half-honoured.
const NOT_YET: &str = "is not supported by this version of Switchyard yet; remove it";

impl TenantFile {
    /// Reads and validates a tenant file.
    pub fn load(path: &Path) -> Result<TenantFile, ConfigErrors> {
        let mut src = Source::read(path)?;
        let raw: RawTenantFile = src.parse()?;
        let file = Self::validate(&mut src, raw);
        src.finish(file)
    }

    fn validate(src: &mut Source, raw: RawTenantFile) -> TenantFile {
        let tls = raw
            .tls
            .as_ref()
            .and_then(|tls| match (&tls.cert, &tls.key, tls.self_signed) {
                (None, None, true) => Some(TlsSource::SelfSigned),
                (Some(cert), Some(key), false) => {
                    let cert_path = src.resolve(cert.get_ref());
                    let key_path = src.resolve(key.get_ref());
                    for (what, value, path) in
                        [("certificate", cert, &cert_path), ("key", key, &key_path)]
                    {
                        if let Err(e) = readable(path) {
                            src.error(
                                value.span(),
                                format!("cannot read TLS {what} {}: {e}", path.display()),
                            );
                        }
                    }
                    Some(TlsSource::Files {
                        cert: cert_path,
                        key: key_path,
                    })
                }
                (_, _, true) => {
                    src.error(
                        0..0,
                        "[tls] sets self_signed = true and a cert/key; choose one",
                    );
                    None
                }
                _ => {
                    src.error(
                        0..0,
                        "[tls] needs both cert and key (or self_signed = true)",
                    );
                    None
                }
            });

        let mut upstreams: Vec<UpstreamConfig> = Vec::new();
        for u in &raw.upstream {
            let name = u.name.get_ref().clone();
            if upstreams.iter().any(|other| other.name == name) {
                src.error(
                    u.name.span(),
                    format!("upstream name {name:?} is used twice"),
                );
            }
            let lb = match u.lb.as_ref().map(|l| (l.get_ref().as_str(), l.span())) {
                None | Some(("round_robin", _)) => LbKind::RoundRobin,
                Some(("random", _)) => LbKind::Random,
                Some((other @ ("least_conn" | "consistent_hash"), span)) => {
                    src.error(span, format!("lb = {other:?} {NOT_YET}"));
                    LbKind::RoundRobin
                }
                Some((other, span)) => {
                    src.error(
                        span,
                        format!("lb = {other:?} is unknown; use \"round_robin\" or \"random\""),
                    );
                    LbKind::RoundRobin
                }
            };
            if let Some(key) = &u.hash_key {
                src.error(key.span(), format!("hash_key {NOT_YET}"));
            }
            if let Some(value) = &u.max_in_flight {
                src.error(value.span(), format!("max_in_flight {NOT_YET}"));
            }
            if let Some(value) = &u.health {
                src.error(value.span(), format!("health {NOT_YET}"));
            }
            if let Some(value) = u.registration.as_ref().filter(|r| *r.get_ref()) {
                src.error(value.span(), format!("registration {NOT_YET}"));
            }
            let mut servers = Vec::new();
            for server in &u.servers {
                match parse_server(src, server.get_ref()) {
                    Ok(addr) => servers.push(addr),
                    Err(message) => src.error(server.span(), message),
                }
            }
            if servers.is_empty() {
                src.error(
                    u.name.span(),
                    format!("upstream {name:?} has no servers; list at least one in `servers`"),
                );
            }
            upstreams.push(UpstreamConfig {
                name,
                servers,
                lb,
                connect_timeout: u.connect_timeout,
                read_timeout: u.read_timeout,
                retries: u.retries,
            });
        }
        if let Some(registration) = &raw.registration {
            src.error(registration.span(), format!("[registration] {NOT_YET}"));
        }

        let mut routes = Vec::new();
        for r in &raw.route {
            let path = r
                .path
                .as_ref()
                .map_or("/".to_string(), |p| p.get_ref().clone());
            if !path.starts_with('/') {
                let span = r.path.as_ref().map_or(0..0, |p| p.span());
                src.error(span, format!("route path {path:?} must start with '/'"));
            }
            let host = r.host.as_ref().and_then(|h| {
                let pattern = HostPattern::parse(h.get_ref());
                if pattern.is_none() {
                    src.error(
                        h.span(),
                        format!("route host {:?} is not a valid host name", h.get_ref()),
                    );
                }
                pattern
            });
            let target = match (&r.upstream, &r.respond) {
                (Some(upstream), None) => {
                    match upstreams.iter().position(|u| &u.name == upstream.get_ref()) {
                        Some(index) => RouteTarget::Upstream(index),
                        None => {
                            let known: Vec<&str> =
                                upstreams.iter().map(|u| u.name.as_str()).collect();
                            src.error(
                                upstream.span(),
                                format!(
                                    "route names upstream {:?}, which is not defined (defined: {})",
                                    upstream.get_ref(),
                                    if known.is_empty() {
                                        "none".to_string()
                                    } else {
                                        known.join(", ")
                                    }
                                ),
                            );
                            continue;
                        }
                    }
                }
                (None, Some(respond)) if respond.get_ref() == "echo" => RouteTarget::Echo,
                (None, Some(respond)) => {
                    src.error(
                        respond.span(),
                        format!(
                            "respond = {:?} is unknown; the built-in responder is \"echo\"",
                            respond.get_ref()
                        ),
                    );
                    continue;
                }
                _ => {
                    let span = r.path.as_ref().map_or(0..0, |p| p.span());
                    src.error(span, "a route needs exactly one of `upstream` or `respond`");
                    continue;
                }
            };
            routes.push(RouteConfig { host, path, target });
        }
        if raw.route.is_empty() {
            src.error(
                0..0,
                "no [[route]]: the tenant would answer every request with 404",
            );
        }

        TenantFile {
            path: src.path.clone(),
            tls,
            upstreams,
            routes,
        }
    }
}

fn parse_server(src: &Source, text: &str) -> Result<ServerAddr, String> {
    if let Some(path) = text.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("unix server needs a path, e.g. \"unix:/run/app.sock\"".into());
        }
        return Ok(ServerAddr::Unix(src.resolve(path)));
    }
    text.parse::<SocketAddr>()
        .map(ServerAddr::Tcp)
        .map_err(|_| {
            format!(
                "server {text:?} is not IP:port or unix:PATH (host names are not resolved here)"
            )
        })
}

fn readable(path: &Path) -> std::io::Result<()> {
    nix::unistd::access(path, nix::unistd::AccessFlags::R_OK).map_err(std::io::Error::from)?;
    if path.is_dir() {
        return Err(std::io::Error::other("it is a directory"));
    }
    Ok(())
}
