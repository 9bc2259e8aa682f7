//! Generated configurations and the processes started from them: host and
//! tenant files, a running splitter, a standalone tenant, and the test users.

use super::*;

/// One tenant of a generated host file.
pub struct TenantSpec {
    /// Tenant name.
    pub name: String,
    /// Its hosts.
    pub hosts: Vec<String>,
    /// Tenant file body.
    pub file: String,
    /// Pool size.
    pub processes: usize,
    /// Extra lines for the tenant's `[[tenant]]` block (`user = …`, limits).
    pub host_lines: String,
}

impl TenantSpec {
    /// A tenant answering with the built-in echo, TLS with a generated certificate.
    pub fn echo(name: &str, hosts: &[&str]) -> TenantSpec {
        TenantSpec {
            name: name.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            file: "[tls]\nself_signed = true\n[[route]]\npath = \"/\"\nrespond = \"echo\"\n".into(),
            processes: 1,
            host_lines: String::new(),
        }
    }

    /// A tenant proxying `/` to `servers`.
    pub fn proxy(name: &str, hosts: &[&str], servers: &[SocketAddr]) -> TenantSpec {
        let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
        TenantSpec {
            name: name.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            file: format!(
                "[tls]\nself_signed = true\n[[upstream]]\nname = \"app\"\nservers = [{}]\nconnect_timeout = \"500ms\"\nretries = 1\n[[route]]\npath = \"/\"\nupstream = \"app\"\n[[route]]\npath = \"/echo\"\nrespond = \"echo\"\n",
                servers.join(", ")
            ),
            processes: 1,
            host_lines: String::new(),
        }
    }
}

/// A running splitter with its generated configuration.
pub struct Splitter {
    /// The splitter process.
    pub proc: Proc,
    /// Its TLS listener.
    pub tls: SocketAddr,
    /// Its HTTP listener.
    pub http: SocketAddr,
    /// The host file.
    pub config: PathBuf,
    /// The directory holding the configuration (removed on drop).
    pub dir: TempDir,
    /// Extra environment of the splitter process.
    env: Vec<(String, String)>,
}

/// Builds a host file with a TLS and an HTTP listener on free ports.
pub struct SplitterBuilder {
    tenants: Vec<TenantSpec>,
    splitter_extra: String,
    env: Vec<(String, String)>,
    nofile: Option<u64>,
    tls_port: Option<u16>,
    passed_tls: Option<TcpListener>,
    proxy_protocol: bool,
    piped_stderr: bool,
}

impl SplitterBuilder {
    /// A splitter serving `tenants`.
    pub fn new(tenants: Vec<TenantSpec>) -> SplitterBuilder {
        SplitterBuilder {
            tenants,
            splitter_extra: String::new(),
            env: Vec::new(),
            nofile: None,
            tls_port: None,
            passed_tls: None,
            proxy_protocol: false,
            piped_stderr: false,
        }
    }

    /// Both listeners take a PROXY protocol header first (`proxy_protocol =
    /// true`); give `trusted_proxies` with [`SplitterBuilder::splitter_lines`].
    pub fn proxy_protocol(mut self) -> SplitterBuilder {
        self.proxy_protocol = true;
        self
    }

    /// Passes `listener` as the TLS listener, the way systemd's socket
    /// activation does (descriptor 3, `LISTEN_FDS=1`, `LISTEN_PID`,
    /// `LISTEN_FDNAMES=https`); the host file names its address.
    pub fn passed_tls_listener(mut self, listener: TcpListener) -> SplitterBuilder {
        self.tls_port = Some(listener.local_addr().unwrap().port());
        self.passed_tls = Some(listener);
        self
    }

    /// The TLS listener's port (a free one by default), for tenant files that
    /// must name it before the splitter starts.
    /// Gives the splitter (and so its helper and tenants) a pipe for stderr,
    /// whose read end the test holds in `proc.0.stderr` (drop it to close).
    pub fn piped_stderr(mut self) -> SplitterBuilder {
        self.piped_stderr = true;
        self
    }

    pub fn tls_port(mut self, port: u16) -> SplitterBuilder {
        self.tls_port = Some(port);
        self
    }

    /// Starts the splitter under `prlimit --nofile=N:N`.
    pub fn nofile(mut self, limit: u64) -> SplitterBuilder {
        self.nofile = Some(limit);
        self
    }

    /// An environment variable for the splitter (and, where it passes them on,
    /// its tenant processes).
    pub fn env(mut self, key: &str, value: &str) -> SplitterBuilder {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Serves the admin endpoint on `addr` (TCP, with the kit's token file).
    pub fn admin(self, addr: SocketAddr) -> SplitterBuilder {
        self.splitter_lines(&format!("admin = \"{addr}\"\nadmin_token_file = \"token\""))
    }

    /// Extra lines for the `[splitter]` section.
    pub fn splitter_lines(mut self, lines: &str) -> SplitterBuilder {
        self.splitter_extra.push_str(lines);
        self.splitter_extra.push('\n');
        self
    }

    /// Writes the configuration, starts the splitter and waits until every
    /// tenant answers through it.
    pub fn start(self) -> Splitter {
        let hosts: Vec<String> = self.tenants.iter().map(|t| t.hosts[0].clone()).collect();
        let proxy_protocol = self.proxy_protocol;
        let splitter = self.start_without_waiting();
        for host in hosts {
            // A concrete name for wildcard-only tenants.
            let host = host.replace("*.", "www.");
            wait_until(Duration::from_secs(20), || {
                // The echo route answers on every tenant the kit generates
                // (over plaintext, or with its redirect to https).
                let answer = match proxy_protocol {
                    true => TcpStream::connect(splitter.http).and_then(|mut stream| {
                        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                        stream.write_all(b"PROXY TCP4 127.0.0.1 127.0.0.1 1 80\r\n")?;
                        request(&mut stream, &host, "/echo", "Connection: close\r\n")
                    }),
                    false => http_get(splitter.http, &host, "/echo"),
                };
                matches!(answer, Ok(r) if r.status == 200 || r.status == 308)
            });
        }
        splitter
    }

    /// Writes the configuration and starts the splitter, without waiting for
    /// its tenants.
    pub fn start_without_waiting(self) -> Splitter {
        let dir = TempDir::new("splitter");
        let tls: SocketAddr = format!("127.0.0.1:{}", self.tls_port.unwrap_or_else(free_port))
            .parse()
            .unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let default_peek = if self.splitter_extra.contains("peek_timeout") {
            ""
        } else {
            "peek_timeout = \"2s\"\n"
        };
        let root = running_as_root();
        let mut defaults = String::new();
        // Every test client comes from 127.0.0.1: the per-source limits are
        // tested on purpose (hostile_tenant.rs), not met by accident.
        defaults += &unless_set(&self.splitter_extra, "max_conn_rate_per_ip", "0");
        defaults += &unless_set(&self.splitter_extra, "max_pending_per_ip", "100000");
        // Tests end by killing the splitter; its orphaned tenants should not
        // wait a minute for a splitter that never comes back.
        defaults += &unless_set(&self.splitter_extra, "orphan_timeout", "\"1s\"");
        if root {
            system_user(FRONT_USER);
            defaults += &unless_set(&self.splitter_extra, "user", &format!("\"{FRONT_USER}\""));
        }
        dir.write("token", TEST_TOKEN);
        let mut host = format!(
            "[splitter]\nruntime_dir = \"run\"\n{default_peek}{defaults}{}\n[[listen]]\naddr = \"{tls}\"\nprotocol = \"tls\"\n{proxy}[[listen]]\naddr = \"{http}\"\nprotocol = \"http\"\n{proxy}",
            self.splitter_extra,
            proxy = if self.proxy_protocol { "proxy_protocol = true\n" } else { "" },
        );
        for t in &self.tenants {
            dir.write(
                &format!("tenants/{}.toml", t.name),
                &with_registration_token(&t.file),
            );
            let hosts: Vec<String> = t.hosts.iter().map(|h| format!("\"{h}\"")).collect();
            let user = if root && !t.host_lines.contains("user =") {
                system_user(TENANT_USER);
                format!("user = \"{TENANT_USER}\"\n")
            } else {
                String::new()
            };
            host.push_str(&format!(
                "[[tenant]]\nname = \"{}\"\nhosts = [{}]\nconfig = \"tenants/{}.toml\"\nprocesses = {}\n{user}{}\n",
                t.name,
                hosts.join(", "),
                t.name,
                t.processes,
                t.host_lines
            ));
        }
        let config = dir.write("host.toml", &host);
        let command = match (&self.passed_tls, self.nofile) {
            (Some(listener), _) => passed_socket_command(listener),
            (None, nofile) => match nofile {
                Some(limit) => {
                    let mut prlimit = Command::new("prlimit");
                    prlimit
                        .arg(format!("--nofile={limit}:{limit}"))
                        .arg(bin("splitter"));
                    prlimit
                }
                None => Command::new(bin("splitter")),
            },
        };
        let mut command = splitter_command(command, &config, &self.env);
        if self.piped_stderr {
            command.stderr(std::process::Stdio::piped());
        }
        let child = command.spawn().unwrap();
        Splitter {
            proc: Proc(child),
            tls,
            http,
            config,
            dir,
            env: self.env,
        }
    }
}

/// `command` (the splitter, or a wrapper running it) with the host file, the
/// l7proxy beside it, `env` and the test's log level.
fn splitter_command(mut command: Command, config: &Path, env: &[(String, String)]) -> Command {
    command
        .arg("--config")
        .arg(config)
        .env("SWITCHYARD_L7PROXY", bin("l7proxy"))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
    command
}

impl Splitter {
    /// Starts a splitter again on the same host file (after the first one was
    /// killed, say); the new process replaces `proc`.
    pub fn start_again(&mut self) {
        let child = splitter_command(Command::new(bin("splitter")), &self.config, &self.env)
            .spawn()
            .unwrap();
        self.proc = Proc(child);
    }

    /// Number of open descriptors of the splitter process.
    pub fn fd_count(&self) -> usize {
        fd_count(self.proc.pid())
    }

    /// The splitter's descriptor count once it has stopped changing: a
    /// baseline (see [`fd_count_stable`]).
    pub fn fd_count_stable(&self) -> usize {
        fd_count_stable(self.proc.pid())
    }

    /// Pids of the splitter's tenant processes: the children of its helper
    /// (the front's only child, which spawns them).
    pub fn children(&self) -> Vec<u32> {
        children_of(self.proc.pid())
            .into_iter()
            .flat_map(children_of)
            .collect()
    }
}

/// Runs `splitter check` on `config`; returns (exit code, stdout, stderr).
pub fn splitter_check(config: &Path) -> (i32, String, String) {
    let out = Command::new(bin("splitter"))
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Splitter {
    /// Runs `splitter ctl --config … ARGS`; returns (exit code, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(bin("splitter"))
            .arg("ctl")
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `ctl status --json`, parsed.
    pub fn status(&self) -> switchyard_shared::control::FleetStatus {
        let (code, stdout, stderr) = self.ctl(&["status", "--json"]);
        assert_eq!(code, 0, "ctl status failed: {stderr}");
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("ctl status --json is not a FleetStatus ({e}): {stdout}"))
    }

    /// Pids of a tenant's processes in a given state ("ready", …), sorted.
    pub fn tenant_pids(&self, tenant: &str, state: &str) -> Vec<u64> {
        let mut pids: Vec<u64> = self
            .status()
            .tenants
            .into_iter()
            .filter(|t| t.name == tenant)
            .flat_map(|t| t.processes)
            .filter(|p| p.state == state)
            .map(|p| u64::from(p.pid))
            .collect();
        pids.sort_unstable();
        pids
    }
}

/// The new splitter's pid in `ctl upgrade`'s answer ("upgraded: splitter pid N
/// serves …").
pub fn upgraded_to(ctl_stdout: &str) -> u32 {
    ctl_stdout
        .split("splitter pid ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no new pid in {ctl_stdout:?}"))
}

/// The bearer token of every TCP registration API and admin endpoint the kit
/// configures (written to `token` in the test's directory).
pub const TEST_TOKEN: &str = "switchyard-test-token-0123456789";

/// Gives a tenant file's TCP registration listener the kit's token file
/// (`../token`, beside the host file), as a TCP listener requires.
fn with_registration_token(file: &str) -> String {
    let mut out = String::new();
    for line in file.lines() {
        out.push_str(line);
        out.push('\n');
        if line.starts_with("listen = \"")
            && !line.contains("unix:")
            && !file.contains("token_file")
        {
            out.push_str("token_file = \"../token\"\n");
        }
    }
    out
}

/// Unless `text` sets `key`, the line `key = value`.
fn unless_set(text: &str, key: &str, value: &str) -> String {
    if text.lines().any(|l| l.trim_start().starts_with(key)) {
        String::new()
    } else {
        format!("{key} = {value}\n")
    }
}

/// Whether the tests run as root (then every splitter they start needs users).
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Creates a system user if missing; returns its uid. Serialised within the
/// test binary (useradd locks /etc/passwd).
pub fn system_user(name: &str) -> u32 {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let lookup = || {
        Command::new("id")
            .args(["-u", name])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<u32>()
                    .ok()
            })
    };
    if let Some(uid) = lookup() {
        return uid;
    }
    let _ = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ])
        .status();
    lookup().unwrap_or_else(|| panic!("cannot create user {name} (useradd)"))
}

/// The `user = "…"` lines a hand-written host file needs when the tests run as
/// root: one for `[splitter]` (the front) and one for each `[[tenant]]`
/// (creating [`FRONT_USER`] and [`TENANT_USER`]); empty otherwise.
pub fn user_lines() -> (String, String) {
    if !running_as_root() {
        return (String::new(), String::new());
    }
    system_user(FRONT_USER);
    system_user(TENANT_USER);
    (
        format!("user = \"{FRONT_USER}\"\n"),
        format!("user = \"{TENANT_USER}\"\n"),
    )
}

/// [`user_lines`] for a host file with no `[splitter]` section of its own: a
/// `[splitter]` section naming the front's user (empty unless root), and the
/// tenant's `user` line.
pub fn user_sections() -> (String, String) {
    let (front, tenant) = user_lines();
    match front.is_empty() {
        true => (front, tenant),
        false => (format!("[splitter]\n{front}"), tenant),
    }
}

/// The user the kit's splitters run their front as when started as root.
pub const FRONT_USER: &str = "swy-front";
/// The user the kit's tenants run as when started as root (unless a test names
/// another).
pub const TENANT_USER: &str = "swy-tenant";

/// One tenant served by a standalone `l7proxy --listen` (no splitter), for
/// tests of the tenant tier alone such as its upstream pools. The tenant is
/// called `t` and answers `app.test`.
pub struct StandaloneTenant {
    /// The l7proxy process.
    pub proc: Proc,
    /// Its plaintext HTTP listener.
    pub addr: SocketAddr,
    /// The address substituted for `{registration}` in the tenant file.
    pub registration: SocketAddr,
    /// Its configuration and runtime directory.
    pub dir: TempDir,
}

impl StandaloneTenant {
    /// Starts the tenant with `file` as its tenant file, `{registration}`
    /// replaced by a free loopback address, and waits until it accepts.
    pub fn start(file: &str) -> StandaloneTenant {
        let dir = TempDir::new("tenant");
        let registration: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        dir.write("token", TEST_TOKEN);
        dir.write(
            "tenants/t.toml",
            &with_registration_token(&file.replace("{registration}", &registration.to_string())),
        );
        let host = dir.write(
            "host.toml",
            &format!(
                "[splitter]\nruntime_dir = \"run\"\norphan_timeout = \"1s\"\n[[listen]]\naddr = \"127.0.0.1:{}\"\nprotocol = \"http\"\n[[tenant]]\nname = \"t\"\nhosts = [\"app.test\"]\nconfig = \"tenants/t.toml\"\n",
                free_port()
            ),
        );
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(bin("l7proxy"))
            .args(["--tenant", "t", "--config"])
            .arg(&host)
            .args(["--listen", &addr.to_string()])
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .spawn()
            .unwrap();
        let tenant = StandaloneTenant {
            proc: Proc(child),
            addr,
            registration,
            dir,
        };
        wait_until(Duration::from_secs(20), || TcpStream::connect(addr).is_ok());
        if file.contains("{registration}") {
            // The registration API is a service of its own: ready a moment later.
            wait_until(Duration::from_secs(20), || {
                TcpStream::connect(registration).is_ok()
            });
        }
        tenant
    }

    /// Waits (up to 5 s) until `GET /` for `app.test` answers `200`: until the
    /// pool has a server.
    pub fn wait_until_served(&self) {
        wait_until(
            Duration::from_secs(5),
            || matches!(http_get(self.addr, "app.test", "/"), Ok(r) if r.status == 200),
        );
    }

    /// `GET path` for `app.test` on a new connection.
    pub fn get(&self, path: &str) -> Response {
        http_get(self.addr, "app.test", path).unwrap()
    }

    /// `GET /v1/upstreams` of the registration API.
    pub fn upstreams(&self) -> serde_json::Value {
        http_get_authorized(self.registration, "localhost", "/v1/upstreams")
            .unwrap()
            .json()
    }

    /// The servers of `upstream` as the registration API lists them.
    pub fn servers(&self, upstream: &str) -> Vec<serde_json::Value> {
        self.upstreams()["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == upstream)
            .and_then(|u| u["servers"].as_array().cloned())
            .unwrap_or_default()
    }
}

/// The bash redirections that make descriptor `fd` the child's descriptor 3
/// (none when it already is: `3<&3 3<&-` would close it).
pub fn as_descriptor_3(fd: std::os::fd::RawFd) -> String {
    match fd {
        3 => String::new(),
        _ => format!("3<&{fd} {fd}<&-"),
    }
}

/// `bash` running the splitter with `listener` as descriptor 3 and the socket
/// activation variables set as systemd sets them (`LISTEN_PID` is the shell's
/// pid, which `exec` keeps).
fn passed_socket_command(listener: &TcpListener) -> Command {
    use std::os::fd::AsRawFd;
    let fd = listener.as_raw_fd();
    // std opens sockets close-on-exec; the shell must inherit this one.
    // SAFETY: F_SETFD on a descriptor this process owns changes only its flags.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    // bash: dash takes only single-digit descriptors in redirections.
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(format!(
            "export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=https; exec \"$0\" \"$@\" {}",
            as_descriptor_3(fd)
        ))
        .arg(bin("splitter"));
    command
}
