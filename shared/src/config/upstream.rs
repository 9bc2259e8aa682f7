//! `[[upstream]]` groups and `[registration]` of a tenant file: servers and
//! weights, selection, health checks, retries, backpressure, discovery and the
//! connection to the servers.

use super::rules::{validate_header_rules, HeaderRules, RawHeaderRules};
use super::source::Source;
use crate::units::{parse_duration, serde_duration, serde_duration_opt};
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// Passive ejection steps: the first ejection lasts 100 ms, a server failing
/// again right after its return is out for the next step, and so on (Tremor's
/// `qos::backpressure` ladder); a success starts it over.
const DEFAULT_PASSIVE_STEPS: [Duration; 4] = [
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(10),
];

/// One `[[upstream]]` table as written; a missing key takes its value from
/// [`RawUpstream::default`].
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawUpstream {
    name: Option<Spanned<String>>,
    servers: Vec<Spanned<String>>,
    lb: Option<Spanned<String>>,
    hash_key: Option<Spanned<String>>,
    #[serde(with = "serde_duration")]
    connect_timeout: Duration,
    #[serde(with = "serde_duration")]
    read_timeout: Duration,
    #[serde(with = "serde_duration_opt")]
    response_header_timeout: Option<Duration>,
    #[serde(with = "serde_duration")]
    write_timeout: Duration,
    #[serde(with = "serde_duration")]
    idle_timeout: Duration,
    retries: usize,
    max_in_flight: Option<Spanned<usize>>,
    #[serde(with = "serde_duration")]
    queue_timeout: Duration,
    health: Option<Spanned<RawHealth>>,
    passive: RawPassive,
    registration: bool,
    discovery: Option<Spanned<RawDiscovery>>,
    tls: Option<Spanned<RawUpstreamTls>>,
    h2: bool,
    request_headers: Option<Spanned<RawHeaderRules>>,
    response_headers: Option<Spanned<RawHeaderRules>>,
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            name: None,
            servers: Vec::new(),
            lb: None,
            hash_key: None,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(30),
            response_header_timeout: None,
            write_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            retries: 2,
            max_in_flight: None,
            queue_timeout: Duration::from_secs(1),
            health: None,
            passive: RawPassive::default(),
            registration: false,
            discovery: None,
            tls: None,
            h2: false,
            request_headers: None,
            response_headers: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawHealth {
    kind: Option<Spanned<String>>,
    path: Option<String>,
    host: Option<String>,
    status: u16,
    #[serde(with = "serde_duration")]
    interval: Duration,
    #[serde(with = "serde_duration")]
    timeout: Duration,
    rise: usize,
    fall: usize,
}

impl Default for RawHealth {
    fn default() -> Self {
        RawHealth {
            kind: None,
            path: None,
            host: None,
            status: 200,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawPassive {
    failures: u32,
    /// Older spelling of a single step.
    #[serde(with = "serde_duration_opt")]
    cooldown: Option<Duration>,
    steps: Option<Vec<String>>,
}

impl Default for RawPassive {
    fn default() -> Self {
        RawPassive {
            failures: 3,
            cooldown: None,
            steps: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawDiscovery {
    dns: Option<Spanned<String>>,
    port: Option<u16>,
    #[serde(with = "serde_duration")]
    interval: Duration,
    resolver: Option<Spanned<String>>,
}

impl Default for RawDiscovery {
    fn default() -> Self {
        RawDiscovery {
            dns: None,
            port: None,
            interval: Duration::from_secs(5),
            resolver: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawUpstreamTls {
    sni: Option<String>,
    verify: bool,
    ca: Option<Spanned<String>>,
}

impl Default for RawUpstreamTls {
    fn default() -> Self {
        RawUpstreamTls {
            sni: None,
            verify: true,
            ca: None,
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawRegistration {
    listen: Option<Spanned<String>>,
    allow_users: Vec<Spanned<String>>,
    allow_groups: Vec<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    allow_addrs: Option<Vec<Spanned<String>>>,
}

/// One upstream server address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

/// Why a server (`"ADDR [weight=N]"`) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    /// `unix:` without a path.
    #[error("a unix server needs a path, e.g. \"unix:/run/app.sock\"")]
    EmptyUnixPath,
    /// Neither `IP:port` nor `unix:PATH`.
    #[error("server {0:?} is not IP:port or unix:PATH (host names are not resolved here; use discovery = {{ dns = \"NAME\" }})")]
    NotAnAddress(String),
    /// A weight outside 1..=[`MAX_WEIGHT`].
    #[error("server {0:?}: weight must be a whole number from 1 to {MAX_WEIGHT}")]
    BadWeight(String),
    /// An option other than `weight=N`.
    #[error("server {server:?}: unknown option {option:?}; the only option is weight=N")]
    UnknownOption {
        /// The whole server entry.
        server: String,
        /// The option written.
        option: String,
    },
}

impl ServerAddr {
    /// Parses `IP:port` or `unix:PATH`; host names are refused (use DNS discovery).
    pub fn parse(text: &str) -> Result<ServerAddr, ServerError> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(ServerError::EmptyUnixPath);
            }
            return Ok(ServerAddr::Unix(PathBuf::from(path)));
        }
        text.parse::<SocketAddr>()
            .map(ServerAddr::Tcp)
            .map_err(|_| ServerError::NotAnAddress(text.to_string()))
    }
}

/// A server and its share of the traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// Where the server listens.
    pub addr: ServerAddr,
    /// Relative weight (1 when not given).
    pub weight: usize,
}

/// The largest weight a server may have.
pub const MAX_WEIGHT: usize = 1000;

impl ServerSpec {
    /// Parses `"ADDR"` or `"ADDR weight=N"`.
    pub fn parse(text: &str) -> Result<ServerSpec, ServerError> {
        let mut words = text.split_whitespace();
        let addr = ServerAddr::parse(words.next().unwrap_or(""))?;
        let mut weight = 1;
        for word in words {
            match word.strip_prefix("weight=").map(str::parse::<usize>) {
                Some(Ok(w)) if (1..=MAX_WEIGHT).contains(&w) => weight = w,
                Some(_) => return Err(ServerError::BadWeight(text.to_string())),
                None => {
                    return Err(ServerError::UnknownOption {
                        server: text.to_string(),
                        option: word.to_string(),
                    })
                }
            }
        }
        Ok(ServerSpec { addr, weight })
    }
}

/// Load-balancing algorithm of an upstream group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbKind {
    /// Each server in turn, in proportion to its weight.
    RoundRobin,
    /// A random server, in proportion to its weight.
    Random,
    /// The server with the fewest requests in flight relative to its weight.
    LeastConn,
    /// A server chosen by hashing `hash_key` on a ring (Ketama): adding or
    /// removing one server moves only about 1/N of the keys.
    ConsistentHash,
}

/// What `consistent_hash` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client's IP address.
    ClientIp,
    /// The value of a request header (lower-case name).
    Header(String),
    /// The value of a cookie.
    Cookie(String),
    /// The request path (without the query).
    Path,
}

impl LbKind {
    /// The name used in the tenant file.
    pub fn as_str(self) -> &'static str {
        match self {
            LbKind::RoundRobin => "round_robin",
            LbKind::Random => "random",
            LbKind::LeastConn => "least_conn",
            LbKind::ConsistentHash => "consistent_hash",
        }
    }
}

impl HashKey {
    fn parse(text: &str) -> Result<HashKey, String> {
        let bad = || {
            format!(
                "hash_key {text:?} is unknown; use \"client_ip\", \"header:NAME\", \"cookie:NAME\" or \"path\""
            )
        };
        match text.split_once(':') {
            None if text == "client_ip" => Ok(HashKey::ClientIp),
            None if text == "path" => Ok(HashKey::Path),
            Some(("header", name)) if http_token(name) => {
                Ok(HashKey::Header(name.to_ascii_lowercase()))
            }
            Some(("cookie", name)) if http_token(name) => Ok(HashKey::Cookie(name.to_string())),
            _ => Err(bad()),
        }
    }
}

fn http_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// How an active health check probes a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthKind {
    /// A TCP (or Unix) connect succeeds.
    Tcp,
    /// `GET path` answers `status`.
    Http {
        /// Request path.
        path: String,
        /// `Host` header (the upstream group's name when not given).
        host: Option<String>,
        /// The status that means healthy.
        status: u16,
    },
}

/// Active health checking of every server of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// The probe.
    pub kind: HealthKind,
    /// Time between probes of a server.
    pub interval: Duration,
    /// Connect and read timeout of one probe.
    pub timeout: Duration,
    /// Consecutive successes that bring a server back.
    pub rise: usize,
    /// Consecutive failures that take a server out.
    pub fall: usize,
}

/// Passive health checking: real requests that fail take a server out, for
/// longer each time it fails again right after coming back. A pool never has
/// all its servers taken out this way (see the pool's panic mode), and a
/// one-server pool never has its server taken out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveHealth {
    /// Consecutive failed requests (connect errors, read timeouts, errors
    /// before a response, 5xx responses) that take the server out; 0 turns
    /// passive checking off.
    pub failures: u32,
    /// How long each successive ejection lasts (the last step repeats).
    pub steps: Vec<Duration>,
}

/// DNS discovery of a group's servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsDiscovery {
    /// The name to resolve: SRV records first, then A/AAAA.
    pub name: String,
    /// Port used with A/AAAA answers (SRV answers carry their own).
    pub port: Option<u16>,
    /// How often the name is resolved again.
    pub interval: Duration,
    /// The DNS server to ask (the system's resolvers when not given).
    pub resolver: Option<SocketAddr>,
}

/// TLS towards the servers of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Server name sent and verified (no SNI is sent when not given; required
    /// with `verify = true`).
    pub sni: Option<String>,
    /// Verify the server's certificate chain and name.
    pub verify: bool,
    /// Trust these CA certificates (PEM) instead of the system's roots.
    pub ca: Option<PathBuf>,
}

/// One `[[upstream]]` group.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Name routes refer to.
    pub name: String,
    /// Static servers.
    pub servers: Vec<ServerSpec>,
    /// Selection algorithm.
    pub lb: LbKind,
    /// What `consistent_hash` hashes.
    pub hash_key: HashKey,
    /// TCP/Unix (and TLS) connect timeout.
    pub connect_timeout: Duration,
    /// Timeout of each read from a server.
    pub read_timeout: Duration,
    /// The whole response header of an HTTP/1 server, at most, counted from the
    /// moment the request was completely sent (`504` when it passes; default:
    /// `read_timeout`). Not reset by each read, so a server trickling its header
    /// cannot stretch it.
    pub response_header_timeout: Duration,
    /// Timeout of each write to a server.
    pub write_timeout: Duration,
    /// How long an idle keep-alive connection to a server stays pooled.
    pub idle_timeout: Duration,
    /// Further attempts on other servers after a failure that is safe to retry.
    pub retries: usize,
    /// Requests in flight per server; beyond it requests queue.
    pub max_in_flight: Option<usize>,
    /// How long a request may queue for a free server before `503`.
    pub queue_timeout: Duration,
    /// Active health checks.
    pub health: Option<HealthConfig>,
    /// Passive health checks.
    pub passive: PassiveHealth,
    /// Whether servers may add themselves through the registration API.
    pub registration: bool,
    /// DNS discovery.
    pub dns: Option<DnsDiscovery>,
    /// TLS to the servers.
    pub tls: Option<UpstreamTls>,
    /// Offer HTTP/2 to the servers (ALPN with TLS, prior knowledge without).
    pub h2: bool,
    /// Changes to requests sent to this group (after the route's).
    pub request_headers: HeaderRules,
    /// Changes to responses from this group (before the route's).
    pub response_headers: HeaderRules,
}

/// Where the registration API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationListen {
    /// A TCP address; every request needs `Authorization: Bearer TOKEN` with
    /// the token read from `token_file`.
    Tcp {
        /// The address.
        addr: SocketAddr,
        /// The file holding the bearer token.
        token_file: PathBuf,
    },
    /// A Unix socket at this path relative to the tenant's runtime directory
    /// (`runtime_dir/tenants/NAME`, mode 0700); callers are checked with
    /// `SO_PEERCRED`.
    Unix(PathBuf),
}

/// The `[registration]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationConfig {
    /// Listener of the registration API.
    pub listen: RegistrationListen,
    /// Users (uids) besides the tenant's own and root that may call the API on
    /// the Unix socket.
    pub allow_uids: Vec<u32>,
    /// Groups (gids) whose members may call it.
    pub allow_gids: Vec<u32>,
    /// Where registered TCP servers may point.
    pub allow_addrs: Vec<crate::net::AddrRule>,
}

/// The socket the registration API listens on when `listen` is not given.
pub const DEFAULT_REGISTRATION_SOCKET: &str = "register.sock";

type Span = Range<usize>;

fn passive_health(src: &mut Source, u: &RawUpstream, name: &str, at: Span) -> PassiveHealth {
    let steps = match (&u.passive.steps, u.passive.cooldown) {
        (Some(_), Some(_)) => {
            src.error(
                at.clone(),
                format!("upstream {name:?}: passive sets both `steps` and `cooldown` (one step); keep `steps`"),
            );
            DEFAULT_PASSIVE_STEPS.to_vec()
        }
        (None, Some(cooldown)) => vec![cooldown],
        (None, None) => DEFAULT_PASSIVE_STEPS.to_vec(),
        (Some(list), None) => {
            let mut steps = Vec::new();
            for text in list {
                match parse_duration(text) {
                    Ok(step) if !step.is_zero() => steps.push(step),
                    Ok(_) => src.error(
                        at.clone(),
                        format!("upstream {name:?}: passive step {text:?} must be longer than 0"),
                    ),
                    Err(e) => src.error(
                        at.clone(),
                        format!("upstream {name:?}: passive step {text:?}: {e}"),
                    ),
                }
            }
            if list.is_empty() {
                src.error(
                    at.clone(),
                    format!("upstream {name:?}: passive steps are empty; give at least one, or set failures = 0 to turn passive health off"),
                );
            }
            steps
        }
    };
    PassiveHealth {
        failures: u.passive.failures,
        steps,
    }
}

pub(super) fn validate_upstream(
    src: &mut Source,
    table: &Spanned<RawUpstream>,
    others: &[UpstreamConfig],
) -> UpstreamConfig {
    let u = table.get_ref();
    let (name, at) = match &u.name {
        Some(name) => (name.get_ref().clone(), name.span()),
        None => {
            src.error(
                table.span(),
                "an [[upstream]] needs a name: add name = \"NAME\" (routes refer to it)",
            );
            (String::new(), table.span())
        }
    };
    if others.iter().any(|other| other.name == name) {
        src.error(at.clone(), format!("upstream name {name:?} is used twice"));
    }
    let lb = match u.lb.as_ref().map(|l| (l.get_ref().as_str(), l.span())) {
        None | Some(("round_robin", _)) => LbKind::RoundRobin,
        Some(("random", _)) => LbKind::Random,
        Some(("least_conn", _)) => LbKind::LeastConn,
        Some(("consistent_hash", _)) => LbKind::ConsistentHash,
        Some((other, span)) => {
            src.error(
                span,
                format!("lb = {other:?} is unknown; use \"round_robin\", \"random\", \"least_conn\" or \"consistent_hash\""),
            );
            LbKind::RoundRobin
        }
    };
    let hash_key = match &u.hash_key {
        None => HashKey::ClientIp,
        Some(key) => {
            if lb != LbKind::ConsistentHash {
                src.error(
                    key.span(),
                    "hash_key is used only with lb = \"consistent_hash\"",
                );
            }
            HashKey::parse(key.get_ref()).unwrap_or_else(|e| {
                src.error(key.span(), e);
                HashKey::ClientIp
            })
        }
    };
    let mut servers = Vec::new();
    for server in &u.servers {
        match ServerSpec::parse(server.get_ref()) {
            Ok(mut spec) => {
                if let ServerAddr::Unix(path) = &spec.addr {
                    spec.addr = ServerAddr::Unix(src.resolve(&path.to_string_lossy()));
                }
                servers.push(spec)
            }
            Err(message) => src.error(server.span(), message),
        }
    }
    let dns = u.discovery.as_ref().map(|d| {
        let raw = d.get_ref();
        let dns_name = raw.dns.as_ref().map_or("", |n| n.get_ref().trim());
        if dns_name.is_empty() {
            let at = raw.dns.as_ref().map_or(d.span(), |n| n.span());
            src.error(at, "discovery.dns needs a name to resolve");
        }
        let resolver = raw.resolver.as_ref().and_then(|r| {
            let text = r.get_ref();
            let parsed = text.parse::<SocketAddr>().or_else(|_| {
                text.parse::<std::net::IpAddr>()
                    .map(|ip| SocketAddr::new(ip, 53))
            });
            match parsed {
                Ok(addr) => Some(addr),
                Err(_) => {
                    src.error(
                        r.span(),
                        format!("discovery.resolver {text:?} is not IP or IP:port"),
                    );
                    None
                }
            }
        });
        DnsDiscovery {
            name: dns_name.to_string(),
            port: raw.port,
            interval: raw.interval.max(Duration::from_millis(100)),
            resolver,
        }
    });
    if u.servers.is_empty() && !u.registration && dns.is_none() {
        src.error(
            at.clone(),
            format!("upstream {name:?} has no servers; list at least one in `servers`, or set `registration = true` or `discovery = {{ dns = \"NAME\" }}`"),
        );
    }
    let health = u.health.as_ref().and_then(|h| {
        let raw = h.get_ref();
        let Some(kind) = &raw.kind else {
            src.error(h.span(), "health needs kind = \"tcp\" or \"http\"");
            return None;
        };
        let kind = match kind.get_ref().as_str() {
            "tcp" => HealthKind::Tcp,
            "http" => {
                let path = raw.path.clone().unwrap_or_else(|| "/".to_string());
                if !path.starts_with('/') {
                    src.error(
                        h.span(),
                        format!("health path {path:?} must start with '/'"),
                    );
                }
                if !(100..=599).contains(&raw.status) {
                    src.error(h.span(), "health status must be an HTTP status (100-599)");
                }
                HealthKind::Http {
                    path,
                    host: raw.host.clone(),
                    status: raw.status,
                }
            }
            other => {
                src.error(
                    kind.span(),
                    format!("health kind {other:?} is unknown; use \"tcp\" or \"http\""),
                );
                return None;
            }
        };
        if raw.rise == 0 || raw.fall == 0 {
            src.error(h.span(), "health rise and fall must be at least 1");
        }
        if raw.interval < Duration::from_millis(50) {
            src.error(h.span(), "health interval must be at least 50ms");
        }
        Some(HealthConfig {
            kind,
            interval: raw.interval,
            timeout: raw.timeout,
            rise: raw.rise.max(1),
            fall: raw.fall.max(1),
        })
    });
    if let Some(max) = &u.max_in_flight {
        if *max.get_ref() == 0 {
            src.error(max.span(), "max_in_flight must be at least 1");
        }
    }
    let tls = u.tls.as_ref().map(|t| {
        let raw = t.get_ref();
        let ca = raw.ca.as_ref().map(|ca| {
            let path = src.resolve(ca.get_ref());
            if let Err(e) = crate::files::read_regular(&path, crate::files::MAX_PEM_BYTES) {
                src.error(
                    ca.span(),
                    format!("cannot read CA file {}: {e}", path.display()),
                );
            }
            path
        });
        if raw.verify && raw.sni.as_deref().is_none_or(str::is_empty) {
            src.error(
                t.span(),
                "tls needs `sni` (the name to send and verify) when verify = true; or set verify = false to skip verification",
            );
        }
        UpstreamTls {
            sni: raw.sni.clone(),
            verify: raw.verify,
            ca,
        }
    });
    let passive = passive_health(src, u, &name, at);
    UpstreamConfig {
        name,
        servers,
        lb,
        hash_key,
        connect_timeout: u.connect_timeout,
        read_timeout: u.read_timeout,
        response_header_timeout: u.response_header_timeout.unwrap_or(u.read_timeout),
        write_timeout: u.write_timeout,
        idle_timeout: u.idle_timeout,
        retries: u.retries,
        max_in_flight: u.max_in_flight.as_ref().map(|m| *m.get_ref()),
        queue_timeout: u.queue_timeout,
        health,
        passive,
        registration: u.registration,
        dns,
        tls,
        h2: u.h2,
        request_headers: u
            .request_headers
            .as_ref()
            .map(|raw| validate_header_rules(src, "request_headers", raw))
            .unwrap_or_default(),
        response_headers: u
            .response_headers
            .as_ref()
            .map(|raw| validate_header_rules(src, "response_headers", raw))
            .unwrap_or_default(),
    }
}

pub(super) fn validate_registration(
    src: &mut Source,
    raw: &RawRegistration,
    upstreams: &[UpstreamConfig],
) -> Option<RegistrationConfig> {
    let default_listen = format!("unix:{DEFAULT_REGISTRATION_SOCKET}");
    let (text, span) = match &raw.listen {
        Some(listen) => (listen.get_ref().as_str(), listen.span()),
        None => (default_listen.as_str(), 0..0),
    };
    let listen = if let Some(path) = text.strip_prefix("unix:") {
        let relative = std::path::Path::new(path);
        if path.is_empty()
            || relative.is_absolute()
            || relative
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            src.error(
                span,
                format!("[registration] listen {text:?}: give a plain relative path such as \"unix:register.sock\" (it lives in the tenant's own runtime directory; absolute paths and '..' are refused)"),
            );
            return None;
        }
        if raw.token_file.is_some() {
            src.warning(
                span.clone(),
                "[registration] token_file is only used with a TCP listen address",
            );
        }
        RegistrationListen::Unix(PathBuf::from(path))
    } else {
        let Ok(addr) = text.parse::<SocketAddr>() else {
            src.error(
                span,
                format!("[registration] listen {text:?} is not IP:port or unix:PATH"),
            );
            return None;
        };
        let Some(token) = &raw.token_file else {
            src.error(
                span,
                format!("[registration] listen {text:?} is a TCP address, which every local user can reach: add token_file = \"PATH\" (callers then send `Authorization: Bearer TOKEN`), or use the default unix:{DEFAULT_REGISTRATION_SOCKET}"),
            );
            return None;
        };
        let path = src.resolve(token.get_ref());
        if let Err(e) = crate::token::read_token(&path) {
            src.error(token.span(), format!("[registration] token_file: {e}"));
        }
        RegistrationListen::Tcp {
            addr,
            token_file: path,
        }
    };
    let mut allow_uids = Vec::new();
    for user in &raw.allow_users {
        match nix::unistd::User::from_name(user.get_ref()) {
            Ok(Some(found)) => allow_uids.push(found.uid.as_raw()),
            _ => src.error(
                user.span(),
                format!("allow_users: no user {:?} on this host", user.get_ref()),
            ),
        }
    }
    let mut allow_gids = Vec::new();
    for group in &raw.allow_groups {
        match nix::unistd::Group::from_name(group.get_ref()) {
            Ok(Some(found)) => allow_gids.push(found.gid.as_raw()),
            _ => src.error(
                group.span(),
                format!("allow_groups: no group {:?} on this host", group.get_ref()),
            ),
        }
    }
    let mut allow_addrs = Vec::new();
    match &raw.allow_addrs {
        None => {
            for loopback in ["127.0.0.0/8", "::1/128"] {
                allow_addrs.push(crate::net::AddrRule::parse(loopback).expect("valid"));
            }
        }
        Some(rules) => {
            for rule in rules {
                match crate::net::AddrRule::parse(rule.get_ref()) {
                    Ok(rule) => allow_addrs.push(rule),
                    Err(e) => src.error(rule.span(), format!("allow_addrs: {e}")),
                }
            }
        }
    }
    if !upstreams.iter().any(|u| u.registration) {
        src.error(
            span,
            "[registration] is set but no upstream has `registration = true`; nothing could register",
        );
    }
    Some(RegistrationConfig {
        listen,
        allow_uids,
        allow_gids,
        allow_addrs,
    })
}

/// The time-to-live a registration may ask for.
pub const REGISTRATION_TTL: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);

/// Why a registration's `ttl` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtlError {
    /// Not a duration.
    #[error(transparent)]
    Duration(#[from] crate::units::DurationError),
    /// Outside [`REGISTRATION_TTL`].
    #[error("ttl {0:?} is out of range; use 1s to 1h")]
    OutOfRange(String),
}

/// Parses the `ttl` of a registration request (`"10s"`), within [`REGISTRATION_TTL`].
pub fn parse_registration_ttl(text: &str) -> Result<Duration, TtlError> {
    let ttl = parse_duration(text)?;
    if !REGISTRATION_TTL.contains(&ttl) {
        return Err(TtlError::OutOfRange(text.to_string()));
    }
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_specs() {
        assert_eq!(
            ServerSpec::parse("127.0.0.1:80 weight=3").unwrap(),
            ServerSpec {
                addr: ServerAddr::Tcp("127.0.0.1:80".parse().unwrap()),
                weight: 3
            }
        );
        assert_eq!(ServerSpec::parse("[::1]:80").unwrap().weight, 1);
        assert!(ServerSpec::parse("127.0.0.1:80 weight=0").is_err());
        assert!(ServerSpec::parse("127.0.0.1:80 weight=x").is_err());
        assert!(ServerSpec::parse("127.0.0.1:80 backup").is_err());
        assert!(ServerSpec::parse("localhost:80").is_err());
        assert!(ServerSpec::parse("unix:").is_err());
    }

    #[test]
    fn hash_keys() {
        assert_eq!(HashKey::parse("client_ip").unwrap(), HashKey::ClientIp);
        assert_eq!(
            HashKey::parse("header:X-User").unwrap(),
            HashKey::Header("x-user".into())
        );
        assert_eq!(
            HashKey::parse("cookie:sid").unwrap(),
            HashKey::Cookie("sid".into())
        );
        assert!(HashKey::parse("header:").is_err());
        assert!(HashKey::parse("header:a b").is_err());
        assert!(HashKey::parse("query").is_err());
    }

    #[test]
    fn ttls() {
        assert!(parse_registration_ttl("10s").is_ok());
        assert!(parse_registration_ttl("0s").is_err());
        assert!(parse_registration_ttl("2h").is_err());
        assert!(parse_registration_ttl("ten").is_err());
    }
}
