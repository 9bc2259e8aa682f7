//! The host file: listeners, splitter settings and the tenants.

use super::source::Source;
#[cfg(test)]
use super::tenant_file::TenantFile;
use super::ConfigErrors;
use crate::host::{HostPattern, HostTable};
use crate::units::serde_duration;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHostFile {
    #[serde(default)]
    splitter: RawSplitter,
    #[serde(default)]
    listen: Vec<RawListen>,
    #[serde(default)]
    tenant: Vec<RawTenant>,
}

/// `[splitter]` as written; a missing key takes its value from
/// [`RawSplitter::default`].
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawSplitter {
    runtime_dir: Option<Spanned<String>>,
    threads: usize,
    #[serde(with = "serde_duration")]
    peek_timeout: Duration,
    max_peek_bytes: usize,
    #[serde(with = "serde_duration")]
    hold_timeout: Duration,
    #[serde(with = "serde_duration")]
    orphan_timeout: Duration,
    max_pending: usize,
    unknown_host: Option<Spanned<String>>,
    admin: Option<Spanned<String>>,
    admin_token_file: Option<Spanned<String>>,
    sched_batch: bool,
    user: Option<Spanned<String>>,
    max_pending_per_ip: usize,
    max_conn_rate_per_ip: u32,
    max_unacked: usize,
    trusted_proxies: Vec<Spanned<String>>,
}

impl Default for RawSplitter {
    fn default() -> Self {
        RawSplitter {
            runtime_dir: None,
            threads: 1,
            peek_timeout: Duration::from_secs(10),
            max_peek_bytes: 16384,
            hold_timeout: Duration::from_secs(5),
            orphan_timeout: Duration::from_secs(60),
            max_pending: 10000,
            unknown_host: None,
            admin: None,
            admin_token_file: None,
            sched_batch: true,
            user: None,
            max_pending_per_ip: 256,
            max_conn_rate_per_ip: 500,
            max_unacked: 256,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    addr: Spanned<String>,
    protocol: Spanned<String>,
    proxy_protocol: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    name: Spanned<String>,
    hosts: Spanned<Vec<Spanned<String>>>,
    config: Spanned<String>,
    processes: Option<Spanned<usize>>,
    threads: Option<Spanned<usize>>,
    user: Option<Spanned<String>>,
    group: Option<String>,
    limits: Option<RawLimits>,
    max_held: Option<usize>,
    start: Option<Spanned<String>>,
    idle_stop: Option<Spanned<String>>,
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

/// What a listener peeks at, and so what a handed connection starts with (the
/// discriminant is its byte in the handoff protocol's `Conn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TLS: route by the ClientHello's SNI.
    Tls = 1,
    /// Plaintext HTTP/1.x: route by the `Host` header (or absolute-form URI).
    Http = 2,
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

/// Where the admin endpoint (`/metrics`, `/status`) listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminListen {
    /// A Unix socket (mode 0600) at this path, relative paths under `runtime_dir`.
    Unix(PathBuf),
    /// A TCP address; every request must carry `Authorization: Bearer TOKEN`
    /// with the token read from `token_file`.
    Tcp {
        /// The address.
        addr: SocketAddr,
        /// The file holding the token.
        token_file: PathBuf,
    },
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
    /// How long a tenant process whose splitter went away (crash, upgrade)
    /// keeps serving and waits for a splitter to re-attach to; zero: it drains
    /// and exits at once.
    pub orphan_timeout: Duration,
    /// Peeking plus held connections, whole splitter.
    pub max_pending: usize,
    /// Fate of connections for names no tenant claims.
    pub unknown_host: UnknownHost,
    /// Optional admin endpoint (metrics and status).
    pub admin: Option<AdminListen>,
    /// The unprivileged user the network-facing front runs as (required when
    /// the splitter starts as root).
    pub user: Option<String>,
    /// Connections peeking or held from one source address.
    pub max_pending_per_ip: usize,
    /// New connections per second from one source address (token bucket; 0: no limit).
    pub max_conn_rate_per_ip: u32,
    /// Handed but unacknowledged connections per tenant process.
    pub max_unacked: usize,
    /// Peers whose forwarding headers (and PROXY headers) are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Run the splitter under `SCHED_BATCH` (tenant processes keep the normal
    /// policy): a connection arriving while a tenant runs waits for the CPU
    /// instead of preempting it, so under load one wake-up hands off several.
    pub sched_batch: bool,
}

/// One `[[listen]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Address to bind.
    pub addr: SocketAddr,
    /// What to peek at.
    pub protocol: Protocol,
    /// Every connection starts with a PROXY protocol (v1 or v2) header from a
    /// peer in `[splitter] trusted_proxies`, giving the client's address.
    pub proxy_protocol: bool,
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
    /// Connections held for this tenant while it has no ready process.
    pub max_held: usize,
    /// When the tenant's processes are started.
    pub start: StartPolicy,
    /// How long an on-demand tenant may go without a connection before its
    /// processes are stopped.
    pub idle_stop: Duration,
}

impl TenantConfig {
    /// `max_held` when the entry does not set it.
    pub const DEFAULT_MAX_HELD: usize = 1000;
    /// `idle_stop` when the entry does not set it.
    pub const DEFAULT_IDLE_STOP: Duration = Duration::from_secs(600);
}

/// `[[tenant]] start`: when a tenant's processes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartPolicy {
    /// From the splitter's start until it stops (`"always"`, the default).
    #[default]
    Always,
    /// From the first connection until `idle_stop` passes without one
    /// (`"on-demand"`).
    OnDemand,
}

impl StartPolicy {
    /// The value as the host file writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            StartPolicy::Always => "always",
            StartPolicy::OnDemand => "on-demand",
        }
    }
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
    /// Problems that do not stop the splitter but that an operator should see
    /// (`check` prints them; the splitter logs them at start).
    pub warnings: Vec<super::ConfigError>,
}

fn valid_tenant_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl HostConfig {
    /// Reads and validates a host file (not the tenant files it names). When
    /// this process runs as root, the rules for a root splitter apply: the front
    /// and every tenant need an unprivileged `user`.
    pub fn load(path: &Path) -> Result<HostConfig, ConfigErrors> {
        Self::load_as(path, nix::unistd::geteuid().is_root())
    }

    /// Only `[splitter] runtime_dir` of a host file (default `/run/switchyard`),
    /// read leniently: a file whose other settings are invalid still names its
    /// runtime directory (what `splitter ctl` needs); only a syntax error fails.
    pub fn runtime_dir_of(path: &Path) -> Result<PathBuf, ConfigErrors> {
        let mut src = Source::read(path)?;
        let value: toml::Value = src.parse()?;
        Ok(
            match value
                .get("splitter")
                .and_then(|s| s.get("runtime_dir"))
                .and_then(|d| d.as_str())
            {
                Some(dir) => src.resolve(dir),
                None => PathBuf::from("/run/switchyard"),
            },
        )
    }

    /// [`HostConfig::load`] with the rules for a splitter started as root
    /// (`as_root`) or not, whoever runs this.
    pub fn load_as(path: &Path, as_root: bool) -> Result<HostConfig, ConfigErrors> {
        let mut src = Source::read(path)?;
        let raw: RawHostFile = src.parse()?;
        let config = Self::validate(&mut src, raw, as_root);
        src.finish(config)
    }

    /// For `check`: a host file whose syntax is valid, validated as far as it
    /// goes, with its problems (if any) beside it, so the tenant files it names
    /// can still be checked. Only an unreadable file or a syntax error is `Err`.
    /// Entries with problems are kept as written; do not run with this.
    pub fn load_for_check(
        path: &Path,
        as_root: bool,
    ) -> Result<(HostConfig, Option<ConfigErrors>), ConfigErrors> {
        let mut src = Source::read(path)?;
        let raw: RawHostFile = src.parse()?;
        let config = Self::validate(&mut src, raw, as_root);
        Ok(src.finish_lenient(config))
    }

    fn validate(src: &mut Source, raw: RawHostFile, root: bool) -> HostConfig {
        let raw_splitter = raw.splitter;
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
            .and_then(|a| admin_listen(src, a, raw_splitter.admin_token_file.as_ref()));
        if let (None, Some(token)) = (&raw_splitter.admin, &raw_splitter.admin_token_file) {
            src.error(token.span(), "admin_token_file is set but admin is not");
        }
        let mut trusted_proxies = Vec::new();
        for cidr in &raw_splitter.trusted_proxies {
            match crate::net::parse_cidr(cidr.get_ref()) {
                Ok(net) => trusted_proxies.push(net),
                Err(e) => src.error(cidr.span(), format!("trusted_proxies: {e}")),
            }
        }
        if raw_splitter.max_pending == 0 || raw_splitter.max_pending > 1_000_000 {
            src.error(0..0, "splitter.max_pending must be between 1 and 1000000");
        }
        if raw_splitter.max_pending_per_ip == 0 {
            src.error(0..0, "splitter.max_pending_per_ip must be at least 1");
        }
        if raw_splitter.max_unacked == 0 || raw_splitter.max_unacked > 65536 {
            src.error(0..0, "splitter.max_unacked must be between 1 and 65536");
        }
        let front_uid = match &raw_splitter.user {
            Some(user) => unprivileged_uid(src, user, "[splitter] user"),
            None => {
                if root {
                    src.error(
                        0..0,
                        "the splitter runs as root, so [splitter] user is required: the network-facing front runs as that unprivileged user (e.g. user = \"switchyard\"; create it with `useradd --system switchyard`)",
                    );
                }
                None
            }
        };

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
                let proxy_protocol = listen.proxy_protocol.as_ref().is_some_and(|p| *p.get_ref());
                if proxy_protocol && raw_splitter.trusted_proxies.is_empty() {
                    src.error(
                        listen.proxy_protocol.as_ref().map_or(0..0, |p| p.span()),
                        format!("listen {addr}: proxy_protocol = true needs [splitter] trusted_proxies (the load balancers' addresses): a PROXY header is believed only from them"),
                    );
                }
                listeners.push(ListenerConfig {
                    addr,
                    protocol,
                    proxy_protocol,
                });
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
                if let Some(value) = value.as_ref().filter(|v| !(1..=64).contains(v.get_ref())) {
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
            match &t.user {
                Some(user) => {
                    let uid = unprivileged_uid(src, user, &format!("tenant {name:?}: user"));
                    if uid.is_some() && uid == front_uid {
                        src.error(
                            user.span(),
                            format!("tenant {name:?}: user {:?} is also the splitter's user; give the tenant a user of its own (it could otherwise signal and trace the front)", user.get_ref()),
                        );
                    }
                    if let Some(other) = tenants.iter().find(|o| o.user.as_deref() == Some(user.get_ref())) {
                        src.warning(
                            user.span(),
                            format!("tenants {:?} and {name:?} share the user {:?}: they can read each other's keys and signal each other's processes; give each tenant its own user", other.name, user.get_ref()),
                        );
                    }
                }
                None if root => src.error(
                    t.name.span(),
                    format!("tenant {name:?} has no user, and the splitter runs as root: set `user = \"NAME\"` (an unprivileged user of its own) so the site does not run as root"),
                ),
                None => {}
            }
            let max_held = t.max_held.unwrap_or(TenantConfig::DEFAULT_MAX_HELD);
            if max_held == 0 {
                src.error(
                    t.name.span(),
                    format!("tenant {name:?}: max_held must be at least 1"),
                );
            }
            let start = match t.start.as_ref() {
                None => StartPolicy::Always,
                Some(value) => match value.get_ref().as_str() {
                    "always" => StartPolicy::Always,
                    "on-demand" => StartPolicy::OnDemand,
                    other => {
                        src.error(
                            value.span(),
                            format!("tenant {name:?}: start = {other:?} is not a start policy; use \"always\" or \"on-demand\""),
                        );
                        StartPolicy::Always
                    }
                },
            };
            let idle_stop = match t.idle_stop.as_ref() {
                None => TenantConfig::DEFAULT_IDLE_STOP,
                Some(value) => match crate::units::parse_duration(value.get_ref()) {
                    Ok(d) if d >= Duration::from_secs(1) => d,
                    Ok(_) => {
                        src.error(
                            value.span(),
                            format!("tenant {name:?}: idle_stop must be at least \"1s\""),
                        );
                        TenantConfig::DEFAULT_IDLE_STOP
                    }
                    Err(e) => {
                        src.error(value.span(), format!("tenant {name:?}: idle_stop: {e}"));
                        TenantConfig::DEFAULT_IDLE_STOP
                    }
                },
            };
            tenants.push(TenantConfig {
                name,
                hosts,
                config,
                processes: t.processes.as_ref().map_or(1, |p| *p.get_ref()),
                threads: t.threads.as_ref().map_or(1, |p| *p.get_ref()),
                user: t.user.as_ref().map(|u| u.get_ref().clone()),
                group: t.group.clone(),
                limits,
                max_held,
                start,
                idle_stop,
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
                orphan_timeout: raw_splitter.orphan_timeout,
                max_pending: raw_splitter.max_pending,
                unknown_host,
                admin,
                sched_batch: raw_splitter.sched_batch,
                user: raw_splitter.user.as_ref().map(|u| u.get_ref().clone()),
                max_pending_per_ip: raw_splitter.max_pending_per_ip,
                max_conn_rate_per_ip: raw_splitter.max_conn_rate_per_ip,
                max_unacked: raw_splitter.max_unacked,
                trusted_proxies,
            },
            listeners,
            tenants,
            warnings: src.take_warnings(),
        }
    }

    /// The tenant entry called `name`.
    pub fn tenant(&self, name: &str) -> Option<&TenantConfig> {
        self.tenants.iter().find(|t| t.name == name)
    }

    /// Loads and validates the host file (with the rules for an unprivileged
    /// splitter) and every tenant file it names, in this process. The splitter
    /// never does this (it has tenant files checked as their users); tests do.
    #[cfg(test)]
    pub fn load_all(path: &Path) -> Result<(HostConfig, Vec<TenantFile>), ConfigErrors> {
        let host = HostConfig::load_as(path, false)?;
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

/// Resolves a user name that must exist and must not be root.
fn unprivileged_uid(src: &mut Source, user: &Spanned<String>, what: &str) -> Option<u32> {
    match nix::unistd::User::from_name(user.get_ref()) {
        Ok(Some(found)) if found.uid.is_root() => {
            src.error(
                user.span(),
                format!(
                    "{what} {:?} is uid 0; name an unprivileged user",
                    user.get_ref()
                ),
            );
            None
        }
        Ok(Some(found)) => Some(found.uid.as_raw()),
        Ok(None) => {
            src.error(
                user.span(),
                format!(
                    "{what} {:?} does not exist; create it (e.g. `useradd --system {}`)",
                    user.get_ref(),
                    user.get_ref()
                ),
            );
            None
        }
        Err(e) => {
            src.error(
                user.span(),
                format!("{what} {:?}: cannot look it up: {e}", user.get_ref()),
            );
            None
        }
    }
}

fn admin_listen(
    src: &mut Source,
    admin: &Spanned<String>,
    token_file: Option<&Spanned<String>>,
) -> Option<AdminListen> {
    let text = admin.get_ref();
    if let Some(path) = text.strip_prefix("unix:") {
        if path.is_empty() {
            src.error(
                admin.span(),
                "admin = \"unix:\" needs a path, e.g. \"unix:admin.sock\"",
            );
            return None;
        }
        if let Some(token) = token_file {
            src.error(token.span(), "admin_token_file is for a TCP admin address; a unix: socket is guarded by its mode (0600)");
        }
        return Some(AdminListen::Unix(PathBuf::from(path)));
    }
    let Ok(addr) = text.parse::<SocketAddr>() else {
        src.error(
            admin.span(),
            format!("admin = {text:?} is neither \"unix:PATH\" nor an IP:port address"),
        );
        return None;
    };
    let Some(token) = token_file else {
        src.error(
            admin.span(),
            format!("admin = {text:?} is a TCP address, which every local user can reach: add admin_token_file = \"PATH\" (requests then need `Authorization: Bearer TOKEN`), or use admin = \"unix:admin.sock\""),
        );
        return None;
    };
    let path = src.resolve(token.get_ref());
    if let Err(e) = crate::token::read_token(&path) {
        src.error(token.span(), format!("admin_token_file: {e}"));
    }
    Some(AdminListen::Tcp {
        addr,
        token_file: path,
    })
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
