//! The configuration contract: one host file (the host operator's) naming the
//! tenants, and one tenant file per site.
//!
//! Loading validates a file as a whole: unknown keys, bad values, duplicate tenant
//! names, a host claimed by two tenants, a route naming a missing upstream, a
//! certificate or key that cannot be read. Every problem is reported as
//! `FILE:LINE:COL: message`, the location of the offending value, and all of a
//! file's problems are reported together. Relative paths in a file are relative
//! to that file.
//!
//! Nothing here opens a private key: key files are only checked for readability
//! with `access(2)`, because the splitter, which links this crate, must never hold
//! a tenant's key.

use crate::host::{HostPattern, HostTable};
use crate::units::serde_duration;
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// One configuration problem, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file that holds the problem.
    pub file: PathBuf,
    /// 1-based line of the offending value (0 when the file could not be read).
    pub line: usize,
    /// 1-based column of the offending value.
    pub column: usize,
    /// What is wrong and, where possible, what to write instead.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Every problem found while loading a configuration, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A file's text with the means to turn byte offsets into line and column.
struct Source {
    path: PathBuf,
    text: String,
    errors: Vec<ConfigError>,
}

impl Source {
    fn read(path: &Path) -> Result<Source, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: 0,
                column: 0,
                message: format!("cannot read configuration file: {e}"),
            }])
        })?;
        Ok(Source {
            path: path.to_path_buf(),
            text,
            errors: Vec::new(),
        })
    }

    fn location(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = self.location(span.start);
        self.errors.push(ConfigError {
            file: self.path.clone(),
            line,
            column,
            message: message.into(),
        });
    }

    fn parse<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, ConfigErrors> {
        toml::from_str(&self.text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().trim().replace('\n', " ");
            self.error(span, message);
            ConfigErrors(std::mem::take(&mut self.errors))
        })
    }

    /// Resolves `relative` against the directory of this file.
    fn resolve(&self, relative: &str) -> PathBuf {
        resolve_relative(&self.path, relative)
    }

    fn finish<T>(mut self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            self.errors.sort_by_key(|e| (e.line, e.column));
            Err(ConfigErrors(self.errors))
        }
    }
}

/// Resolves a path written in `file` relative to that file's directory.
pub fn resolve_relative(file: &Path, relative: &str) -> PathBuf {
    let path = Path::new(relative);
    if path.is_absolute() {
        return path.to_path_buf();
    }
    file.parent()
        .map(|dir| dir.join(path))
        .unwrap_or_else(|| path.to_path_buf())
}

// ---------------------------------------------------------------------------
// The host file
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHostFile {
    splitter: Option<RawSplitter>,
    #[serde(default)]
    listen: Vec<RawListen>,
    #[serde(default)]
    tenant: Vec<RawTenant>,
}

fn default_threads() -> usize {
    1
}
fn default_peek_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_hold_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_peek_bytes() -> usize {
    16384
}
fn default_max_pending() -> usize {
    10000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSplitter {
    runtime_dir: Option<Spanned<String>>,
    #[serde(default = "default_threads")]
    threads: usize,
    #[serde(default = "default_peek_timeout", with = "serde_duration")]
    peek_timeout: Duration,
    #[serde(default = "default_max_peek_bytes")]
    max_peek_bytes: usize,
    #[serde(default = "default_hold_timeout", with = "serde_duration")]
    hold_timeout: Duration,
    #[serde(default = "default_max_pending")]
    max_pending: usize,
    unknown_host: Option<Spanned<String>>,
    admin: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    addr: Spanned<String>,
    protocol: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    name: Spanned<String>,
    hosts: Spanned<Vec<Spanned<String>>>,
    config: Spanned<String>,
    #[serde(default = "default_one")]
    processes: Spanned<usize>,
    #[serde(default = "default_one")]
    threads: Spanned<usize>,
    user: Option<String>,
    group: Option<String>,
    limits: Option<RawLimits>,
}

fn default_one() -> Spanned<usize> {
    Spanned::new(0..0, 1)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    nofile: Option<u64>,
    #[serde(
        default,
        deserialize_with = "crate::units::serde_size_opt::deserialize"
    )]
    memory: Option<u64>,
    cpu: Option<f64>,
}

/// What a listener peeks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TLS: route by the ClientHello's SNI.
    Tls,
    /// Plaintext HTTP/1.x: route by the `Host` header (or absolute-form URI).
    Http,
}

impl Protocol {
    /// The name used in configuration and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tls => "tls",
            Protocol::Http => "http",
        }
    }
}

/// What happens to a connection whose name matches no tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnknownHost {
    /// Close it (a plaintext client gets `400` first).
    Reject,
    /// Hand it to this tenant.
    Tenant(String),
}

/// The `[splitter]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitterSettings {
    /// Where control.sock, handoff.sock and per-tenant directories live.
    pub runtime_dir: PathBuf,
    /// Worker threads of the splitter's runtime.
    pub threads: usize,
    /// A client that has not sent its ClientHello / headers by then is closed.
    pub peek_timeout: Duration,
    /// The most bytes examined when peeking.
    pub max_peek_bytes: usize,
    /// How long a connection may wait for a tenant with no ready process.
    pub hold_timeout: Duration,
    /// Peeking plus held connections, whole splitter.
    pub max_pending: usize,
    /// Fate of connections for names no tenant claims.
    pub unknown_host: UnknownHost,
    /// Optional admin HTTP address (metrics and status).
    pub admin: Option<SocketAddr>,
}

/// One `[[listen]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Address to bind.
    pub addr: SocketAddr,
    /// What to peek at.
    pub protocol: Protocol,
}

/// Resource limits of a tenant's processes (`[tenant.limits]`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// `RLIMIT_NOFILE`.
    pub nofile: Option<u64>,
    /// Memory limit in bytes (cgroup v2 `memory.max`).
    pub memory: Option<u64>,
    /// CPU limit in cores (cgroup v2 `cpu.max`).
    pub cpu: Option<f64>,
}

/// One `[[tenant]]` entry of the host file.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantConfig {
    /// Unique tenant name (letters, digits, `-`, `_`).
    pub name: String,
    /// The names this tenant serves.
    pub hosts: Vec<HostPattern>,
    /// Absolute path of the tenant file.
    pub config: PathBuf,
    /// Size of the tenant's process pool.
    pub processes: usize,
    /// Pingora worker threads per process.
    pub threads: usize,
    /// User to run the tenant's processes as.
    pub user: Option<String>,
    /// Group to run the tenant's processes as.
    pub group: Option<String>,
    /// Resource limits.
    pub limits: Limits,
}

/// A validated host file.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The file it was read from.
    pub path: PathBuf,
    /// `[splitter]`.
    pub splitter: SplitterSettings,
    /// `[[listen]]`.
    pub listeners: Vec<ListenerConfig>,
    /// `[[tenant]]`, in file order.
    pub tenants: Vec<TenantConfig>,
}

fn valid_tenant_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl HostConfig {
    /// Reads and validates a host file (not the tenant files it names).
    pub fn load(path: &Path) -> Result<HostConfig, ConfigErrors> {
        let mut src = Source::read(path)?;
        let raw: RawHostFile = src.parse()?;
        let config = Self::validate(&mut src, raw);
        src.finish(config)
    }

    fn validate(src: &mut Source, raw: RawHostFile) -> HostConfig {
        let raw_splitter = raw.splitter.unwrap_or(RawSplitter {
            runtime_dir: None,
            threads: default_threads(),
            peek_timeout: default_peek_timeout(),
            max_peek_bytes: default_max_peek_bytes(),
            hold_timeout: default_hold_timeout(),
            max_pending: default_max_pending(),
            unknown_host: None,
            admin: None,
        });
        let runtime_dir = match &raw_splitter.runtime_dir {
            Some(dir) => src.resolve(dir.get_ref()),
            None => PathBuf::from("/run/switchyard"),
        };
        if raw_splitter.threads == 0 || raw_splitter.threads > 64 {
            src.error(0..0, "splitter.threads must be between 1 and 64");
        }
        if raw_splitter.max_peek_bytes < 512 || raw_splitter.max_peek_bytes > 1 << 20 {
            src.error(
                0..0,
                "splitter.max_peek_bytes must be between 512 and 1048576 (a post-quantum ClientHello needs about 2000)",
            );
        }
        let admin = raw_splitter
            .admin
            .as_ref()
            .and_then(|a| match a.get_ref().parse() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    src.error(
                        a.span(),
                        format!("admin = {:?} is not an IP:port address", a.get_ref()),
                    );
                    None
                }
            });

        let mut listeners = Vec::new();
        for listen in &raw.listen {
            let addr = match listen.addr.get_ref().parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    src.error(
                        listen.addr.span(),
                        format!(
                            "listen addr {:?} is not an IP:port address (e.g. \"0.0.0.0:443\" or \"[::]:443\")",
                            listen.addr.get_ref()
                        ),
                    );
                    None
                }
            };
            let protocol = match listen.protocol.get_ref().as_str() {
                "tls" => Some(Protocol::Tls),
                "http" => Some(Protocol::Http),
                other => {
                    src.error(
                        listen.protocol.span(),
                        format!("listen protocol {other:?} is unknown; use \"tls\" or \"http\""),
                    );
                    None
                }
            };
            if let (Some(addr), Some(protocol)) = (addr, protocol) {
                if listeners.iter().any(|l: &ListenerConfig| l.addr == addr) {
                    src.error(
                        listen.addr.span(),
                        format!("listen addr {addr} appears twice"),
                    );
                }
                listeners.push(ListenerConfig { addr, protocol });
            }
        }
        if raw.listen.is_empty() {
            src.error(
                0..0,
                "no [[listen]] section: the splitter needs at least one listener",
            );
        }

        let mut tenants: Vec<TenantConfig> = Vec::new();
        let mut claimed: HostTable<String> = HostTable::new();
        for t in &raw.tenant {
            let name = t.name.get_ref().clone();
            if !valid_tenant_name(&name) {
                src.error(
                    t.name.span(),
                    format!("tenant name {name:?} must be 1-64 letters, digits, '-' or '_'"),
                );
            }
            if tenants.iter().any(|other| other.name == name) {
                src.error(t.name.span(), format!("tenant name {name:?} is used twice"));
            }
            let mut hosts = Vec::new();
            if t.hosts.get_ref().is_empty() {
                src.error(t.hosts.span(), format!("tenant {name:?} has no hosts"));
            }
            for host in t.hosts.get_ref() {
                match HostPattern::parse(host.get_ref()) {
                    Some(pattern) => {
                        if let Some(owner) = claimed_owner(&claimed, &pattern) {
                            src.error(
                                host.span(),
                                format!(
                                    "host {:?} of tenant {name:?} is already claimed by tenant {owner:?}; a name may belong to one tenant only",
                                    host.get_ref()
                                ),
                            );
                        } else {
                            claimed.insert(pattern.clone(), name.clone());
                        }
                        hosts.push(pattern);
                    }
                    None => src.error(
                        host.span(),
                        format!(
                            "host {:?} is not a valid host name or leading wildcard (\"*.example.com\")",
                            host.get_ref()
                        ),
                    ),
                }
            }
            for (field, value) in [("processes", &t.processes), ("threads", &t.threads)] {
                if *value.get_ref() == 0 || *value.get_ref() > 64 {
                    src.error(
                        value.span(),
                        format!("tenant {name:?}: {field} must be between 1 and 64"),
                    );
                }
            }
            let config = src.resolve(t.config.get_ref());
            if !config.is_file() {
                src.error(
                    t.config.span(),
                    format!(
                        "tenant {name:?}: config file {} does not exist",
                        config.display()
                    ),
                );
            }
            let limits = t.limits.as_ref().map_or_else(Limits::default, |l| Limits {
                nofile: l.nofile,
                memory: l.memory,
                cpu: l.cpu,
            });
            tenants.push(TenantConfig {
                name,
                hosts,
                config,
                processes: *t.processes.get_ref(),
                threads: *t.threads.get_ref(),
                user: t.user.clone(),
                group: t.group.clone(),
                limits,
            });
        }

        let unknown_host = match &raw_splitter.unknown_host {
            None => UnknownHost::Reject,
            Some(value) if value.get_ref() == "reject" => UnknownHost::Reject,
            Some(value) => {
                if !tenants.iter().any(|t| &t.name == value.get_ref()) {
                    src.error(
                        value.span(),
                        format!(
                            "unknown_host = {:?} names no tenant; use \"reject\" or a tenant's name",
                            value.get_ref()
                        ),
                    );
                }
                UnknownHost::Tenant(value.get_ref().clone())
            }
        };

        HostConfig {
            path: src.path.clone(),
            splitter: SplitterSettings {
                runtime_dir,
                threads: raw_splitter.threads,
                peek_timeout: raw_splitter.peek_timeout,
                max_peek_bytes: raw_splitter.max_peek_bytes,
                hold_timeout: raw_splitter.hold_timeout,
                max_pending: raw_splitter.max_pending,
                unknown_host,
                admin,
            },
            listeners,
            tenants,
        }
    }

    /// The tenant entry called `name`.
    pub fn tenant(&self, name: &str) -> Option<&TenantConfig> {
        self.tenants.iter().find(|t| t.name == name)
    }

    /// Loads and validates the host file and every tenant file it names, as
    /// `splitter check` does. All problems of all files are returned together.
    pub fn load_all(path: &Path) -> Result<(HostConfig, Vec<TenantFile>), ConfigErrors> {
        let host = HostConfig::load(path)?;
        let mut files = Vec::new();
        let mut errors = Vec::new();
        for tenant in &host.tenants {
            match TenantFile::load(&tenant.config) {
                Ok(file) => files.push(file),
                Err(ConfigErrors(mut e)) => errors.append(&mut e),
            }
        }
        if errors.is_empty() {
            Ok((host, files))
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

fn claimed_owner<'a>(claimed: &'a HostTable<String>, pattern: &HostPattern) -> Option<&'a String> {
    if !claimed.contains_pattern(pattern) {
        return None;
    }
    match pattern {
        HostPattern::Exact(name) => claimed.lookup(name),
        HostPattern::Wildcard(suffix) => claimed.lookup(&format!("x.{suffix}")),
    }
}

// ---------------------------------------------------------------------------
// Tenant files
// ---------------------------------------------------------------------------

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
            let dir = std::env::temp_dir().join(format!("sy-config-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("tenants")).unwrap();
            Dir(dir)
        }
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            fs::write(&path, text).unwrap();
            path
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const TENANT: &str = "[tls]\nself_signed = true\n[[route]]\npath = \"/\"\nrespond = \"echo\"\n";

    fn host_file(tenants: &str) -> String {
        format!("[splitter]\nruntime_dir = \"run\"\n[[listen]]\naddr = \"127.0.0.1:8443\"\nprotocol = \"tls\"\n{tenants}")
    }

    fn errors_of(dir: &Dir, host: &str) -> Vec<String> {
        let path = dir.write("host.toml", host);
        match HostConfig::load_all(&path) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn valid_file_loads_with_defaults_and_relative_paths() {
        let dir = Dir::new("valid");
        dir.write("tenants/a.toml", TENANT);
        let path = dir.write(
            "host.toml",
            &host_file("[[tenant]]\nname = \"a\"\nhosts = [\"A.example.com\", \"*.a.example.com\"]\nconfig = \"tenants/a.toml\"\n"),
        );
        let (host, tenants) = HostConfig::load_all(&path).unwrap();
        assert_eq!(host.splitter.runtime_dir, dir.0.join("run"));
        assert_eq!(host.splitter.peek_timeout, Duration::from_secs(10));
        assert_eq!(
            host.tenants[0].hosts[0],
            HostPattern::Exact("a.example.com".into())
        );
        assert_eq!(host.tenants[0].processes, 1);
        assert_eq!(tenants[0].tls, Some(TlsSource::SelfSigned));
        assert_eq!(tenants[0].routes[0].target, RouteTarget::Echo);
    }

    #[test]
    fn unknown_key_is_located() {
        let dir = Dir::new("unknown");
        let errors = errors_of(&dir, "[splitter]\nthreads = 1\npeek_timout = \"1s\"\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("host.toml:3:1: unknown field `peek_timout`"),
            "{errors:?}"
        );
    }

    #[test]
    fn bad_duration_is_located_at_its_value() {
        let dir = Dir::new("duration");
        let errors = errors_of(&dir, "[splitter]\npeek_timeout = \"10 parsecs\"\n");
        assert!(errors[0].contains("host.toml:2:16:"), "{errors:?}");
        assert!(errors[0].contains("unknown unit"), "{errors:?}");
    }

    #[test]
    fn duplicate_tenant_and_shared_host_are_reported_together() {
        let dir = Dir::new("dup");
        dir.write("tenants/a.toml", TENANT);
        let errors = errors_of(
            &dir,
            &host_file(
                "[[tenant]]\nname = \"a\"\nhosts = [\"x.com\"]\nconfig = \"tenants/a.toml\"\n\
                 [[tenant]]\nname = \"a\"\nhosts = [\"X.com.\"]\nconfig = \"tenants/a.toml\"\n",
            ),
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains(":11:8: tenant name \"a\" is used twice"),
            "{errors:?}"
        );
        assert!(errors[1].contains(":12:10: host \"X.com.\""), "{errors:?}");
        assert!(
            errors[1].contains("already claimed by tenant \"a\""),
            "{errors:?}"
        );
    }

    #[test]
    fn tenant_file_errors_route_to_missing_upstream_and_unreadable_key() {
        let dir = Dir::new("tenant");
        dir.write(
            "tenants/a.toml",
            "[tls]\ncert = \"a.pem\"\nkey = \"missing.key\"\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:1\"]\n[[route]]\nupstream = \"ap\"\n",
        );
        dir.write("tenants/a.pem", "not really a cert");
        let errors = errors_of(
            &dir,
            &host_file(
                "[[tenant]]\nname = \"a\"\nhosts = [\"a.com\"]\nconfig = \"tenants/a.toml\"\n",
            ),
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains("a.toml:3:7: cannot read TLS key"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains(
                "a.toml:8:12: route names upstream \"ap\", which is not defined (defined: app)"
            ),
            "{errors:?}"
        );
    }

    #[test]
    fn missing_tenant_file_and_unknown_host_tenant() {
        let dir = Dir::new("missing");
        let errors = errors_of(
            &dir,
            &format!(
                "{}[[tenant]]\nname = \"a\"\nhosts = [\"a.com\"]\nconfig = \"nope.toml\"\n",
                host_file("").replace("[splitter]\n", "[splitter]\nunknown_host = \"b\"\n")
            ),
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains(":2:16: unknown_host = \"b\" names no tenant"),
            "{errors:?}"
        );
        assert!(errors[1].contains("config file"), "{errors:?}");
    }
}
