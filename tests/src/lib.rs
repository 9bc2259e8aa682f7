//! Test kit for Switchyard's black-box tests: temporary configurations, the real
//! binaries started as child processes, and small real clients (plain HTTP/1.1
//! and rustls) that talk to them over loopback.

pub mod dns;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Path of a binary built from this workspace: `$SWITCHYARD_BIN_DIR/NAME`, else
/// the target directory the running test binary was built into.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("SWITCHYARD_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().unwrap();
            let mut dir = exe.parent().unwrap().to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first (`cargo build --workspace`; ./test.sh does)",
        path.display()
    );
    path
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates a fresh directory named after `tag`.
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("switchyard-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tenants")).unwrap();
        TempDir(dir)
    }

    /// Writes `text` to `name` inside the directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts an `echo-upstream` on `addr` called `name`, and waits until it accepts.
pub fn start_upstream(addr: SocketAddr, name: &str) -> Proc {
    let child = Command::new(bin("echo-upstream"))
        .args(["--listen", &addr.to_string(), "--name", name])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let proc = Proc(child);
    wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok());
    proc
}

/// Polls `check` every 20 ms until it holds; panics after `limit`.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

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
}

/// Builds a host file with a TLS and an HTTP listener on free ports.
pub struct SplitterBuilder {
    tenants: Vec<TenantSpec>,
    splitter_extra: String,
    env: Vec<(String, String)>,
    nofile: Option<u64>,
}

impl SplitterBuilder {
    /// A splitter serving `tenants`.
    pub fn new(tenants: Vec<TenantSpec>) -> SplitterBuilder {
        SplitterBuilder {
            tenants,
            splitter_extra: String::new(),
            env: Vec::new(),
            nofile: None,
        }
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

    /// Extra lines for the `[splitter]` section.
    pub fn splitter_lines(mut self, lines: &str) -> SplitterBuilder {
        self.splitter_extra.push_str(lines);
        self.splitter_extra.push('\n');
        self
    }

    /// Writes the configuration, starts the splitter and waits until every
    /// tenant answers through it.
    pub fn start(self) -> Splitter {
        let dir = TempDir::new("splitter");
        let tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
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
        if root {
            system_user(FRONT_USER);
            defaults += &unless_set(&self.splitter_extra, "user", &format!("\"{FRONT_USER}\""));
        }
        dir.write("token", TEST_TOKEN);
        let mut host = format!(
            "[splitter]\nruntime_dir = \"run\"\n{default_peek}{defaults}{}\n[[listen]]\naddr = \"{tls}\"\nprotocol = \"tls\"\n[[listen]]\naddr = \"{http}\"\nprotocol = \"http\"\n",
            self.splitter_extra
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
        let mut command = match self.nofile {
            Some(limit) => {
                let mut prlimit = Command::new("prlimit");
                prlimit
                    .arg(format!("--nofile={limit}:{limit}"))
                    .arg(bin("splitter"));
                prlimit
            }
            None => Command::new(bin("splitter")),
        };
        let child = command
            .arg("--config")
            .arg(&config)
            .env("SWITCHYARD_L7PROXY", bin("l7proxy"))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .spawn()
            .unwrap();
        let splitter = Splitter {
            proc: Proc(child),
            tls,
            http,
            config,
            dir,
        };
        for t in &self.tenants {
            // A concrete name for wildcard-only tenants.
            let host = t.hosts[0].replace("*.", "www.");
            wait_until(Duration::from_secs(20), || {
                // The echo route answers on every tenant the kit generates.
                matches!(http_get(splitter.http, &host, "/echo"), Ok(r) if r.status == 200)
            });
        }
        splitter
    }
}

impl Splitter {
    /// Number of open descriptors of the splitter process.
    pub fn fd_count(&self) -> usize {
        fd_count(self.proc.pid())
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

/// The descriptor count of `pid` once it has settled back to `baseline`, or
/// whatever it still is after 5 s (closing is asynchronous in the servers).
pub fn fd_count_settled(pid: u32, baseline: usize) -> usize {
    let mut now = fd_count(pid);
    for _ in 0..50 {
        if now == baseline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        now = fd_count(pid);
    }
    now
}

/// Number of open descriptors of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Direct children of `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut kids = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                kids.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
    }
    kids.sort_unstable();
    kids
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request on `stream` and reads the response (Content-Length bodies,
/// or until close).
pub fn request<S: Read + Write + ?Sized>(
    stream: &mut S,
    host: &str,
    path: &str,
    extra: &str,
) -> io::Result<Response> {
    // One write: a request in several small segments meets Nagle's algorithm
    // and the peer's delayed ACK (~40 ms per request on a kept-alive connection).
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: switchyard-tests\r\n{extra}\r\n"
    );
    stream.write_all(head.as_bytes())?;
    stream.flush()?;
    read_response(stream)
}

/// Reads one HTTP/1.1 response. (Bytes of a following pipelined response may
/// be read too and lost: to read several, use [`read_response_from`].)
pub fn read_response<S: Read + ?Sized>(stream: &mut S) -> io::Result<Response> {
    read_response_from(&mut BufReader::new(stream))
}

/// Reads one HTTP/1.1 response from `reader`, leaving what follows it buffered
/// there (pipelined responses are read one after another).
pub fn read_response_from<R: BufRead>(reader: &mut R) -> io::Result<Response> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {line:?}"),
            )
        })?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body)?;
        }
        None => {
            reader.read_to_end(&mut body)?;
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Connects to `addr` over plaintext and sends one request.
pub fn http_get(addr: SocketAddr, host: &str, path: &str) -> io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    request(&mut stream, host, path, "")
}

/// Accepts any server certificate: the tests' tenants use generated ones.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A rustls client configuration for the tests (HTTP/1.1 ALPN, any certificate).
pub fn tls_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A TLS stream over TCP.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A client connection for `server_name` (a DNS name sends SNI, an IP does not).
pub fn tls_client(server_name: &str) -> rustls::ClientConnection {
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap();
    rustls::ClientConnection::new(tls_config(), name).unwrap()
}

/// Connects over TLS with SNI `server_name`.
pub fn tls_connect(addr: SocketAddr, server_name: &str) -> io::Result<TlsStream> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(rustls::StreamOwned::new(tls_client(server_name), tcp))
}

/// Connects over TLS and sends one request.
pub fn https_get(addr: SocketAddr, server_name: &str, path: &str) -> io::Result<Response> {
    let mut stream = tls_connect(addr, server_name)?;
    request(&mut stream, server_name, path, "")
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
    pub fn status(&self) -> serde_json::Value {
        let (code, stdout, stderr) = self.ctl(&["status", "--json"]);
        assert_eq!(code, 0, "ctl status failed: {stderr}");
        serde_json::from_str(&stdout).unwrap()
    }

    /// Pids of a tenant's processes in a given state ("ready", …), sorted.
    pub fn tenant_pids(&self, tenant: &str, state: &str) -> Vec<u64> {
        let status = self.status();
        let mut pids: Vec<u64> = status["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["name"] == tenant)
            .flat_map(|t| t["processes"].as_array().unwrap().clone())
            .filter(|p| p["state"] == state)
            .filter_map(|p| p["pid"].as_u64())
            .collect();
        pids.sort_unstable();
        pids
    }
}

/// What wrk reported.
#[derive(Debug, Clone)]
pub struct WrkReport {
    /// Completed requests.
    pub requests: u64,
    /// Responses that were not 2xx/3xx.
    pub non_2xx: u64,
    /// Connect, read, write and timeout errors together.
    pub socket_errors: u64,
    /// Read errors alone: a request sent, the connection closed before the answer.
    pub read_errors: u64,
    /// The raw output.
    pub output: String,
}

/// Runs wrk (installed by test.sh) against `url` with `Host: host` for `seconds`.
pub fn wrk(url: &str, host: &str, seconds: u32, connections: u32, close: bool) -> WrkReport {
    let mut command = Command::new("wrk");
    command
        .arg("-t1")
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("-H")
        .arg(format!("Host: {host}"));
    if close {
        command.arg("-H").arg("Connection: close");
    }
    let out = command
        .arg(url)
        .output()
        .expect("wrk is installed (test.sh installs it)");
    let output = String::from_utf8_lossy(&out.stdout).into_owned();
    let requests = output
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let non_2xx = output
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses:"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    // "Socket errors: connect 0, read 0, write 12, timeout 0"
    let errors: Vec<(String, u64)> = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|l| {
            l.split(',')
                .filter_map(|part| {
                    let mut words = part.split_whitespace();
                    Some((words.next()?.to_string(), words.next()?.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    WrkReport {
        requests,
        non_2xx,
        socket_errors: errors.iter().map(|(_, n)| n).sum(),
        read_errors: errors
            .iter()
            .filter(|(kind, _)| kind == "read")
            .map(|(_, n)| n)
            .sum(),
        output,
    }
}

/// Sends a signal to a process.
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, signal) };
}

/// Builds a syntactically valid TLS ClientHello record with these extensions
/// (type, data), for hostile-input tests.
pub fn client_hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut ext = Vec::new();
    for (kind, data) in extensions {
        ext.extend_from_slice(&kind.to_be_bytes());
        ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
        ext.extend_from_slice(data);
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut handshake = vec![1];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    split_into_records(&handshake, 16384)
}

/// Frames a handshake message as TLS records of at most `size` bytes each.
pub fn split_into_records(handshake: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in handshake.chunks(size) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// The server_name extension naming `name` (raw bytes, valid or not).
pub fn sni_extension(name: &[u8]) -> (u16, Vec<u8>) {
    let mut entry = vec![0];
    entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
    entry.extend_from_slice(name);
    let mut data = (entry.len() as u16).to_be_bytes().to_vec();
    data.extend_from_slice(&entry);
    (0, data)
}

/// What a server did with bytes a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Closed without answering.
    Closed,
    /// Answered with this HTTP status.
    Status(u16),
    /// Answered with something else (e.g. a TLS ServerHello).
    Other,
    /// Said nothing and kept the connection open.
    Silent,
}

/// Connects to `addr`, sends `bytes`, and reports what came back.
pub fn outcome_of(addr: SocketAddr, bytes: &[u8]) -> Outcome {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let _ = stream.write_all(bytes);
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                if answer.is_empty() {
                    return Outcome::Silent;
                }
                break;
            }
            Err(_) => break, // reset: closed
        }
    }
    if answer.is_empty() {
        return Outcome::Closed;
    }
    let text = String::from_utf8_lossy(&answer);
    match text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
    {
        Some(code) => Outcome::Status(code),
        None => Outcome::Other,
    }
}

/// Resident memory of `pid`, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU ticks (user + system, 1/100 s) process `pid` has used.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(end) = stat.rfind(')') else { return 0 };
    let fields: Vec<&str> = stat[end + 2..].split_whitespace().collect();
    fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
}

/// Reads the value of a metric line starting with `prefix` from the admin endpoint.
pub fn metric(admin: SocketAddr, prefix: &str) -> Option<f64> {
    let text =
        String::from_utf8(http_get_authorized(admin, "admin", "/metrics").ok()?.body).ok()?;
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Serialises the tests that measure CPU, latency or memory, or generate heavy
/// load, within one test binary, so that they do not disturb each other's
/// measurements when cargo runs tests in parallel.
pub fn measuring_alone() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sends `POST path` with a JSON body to `addr` and reads the response.
pub fn post_json(addr: SocketAddr, path: &str, body: &str) -> io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let message = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TEST_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(message.as_bytes())?;
    stream.flush()?;
    read_response(&mut stream)
}

/// The bearer token of every TCP registration API and admin endpoint the kit
/// configures (written to `token` in the test's directory).
pub const TEST_TOKEN: &str = "switchyard-test-token-0123456789";

/// `GET path` with `Authorization: Bearer TEST_TOKEN` (registration API and
/// admin endpoints on TCP).
pub fn http_get_authorized(addr: SocketAddr, host: &str, path: &str) -> io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    request(
        &mut stream,
        host,
        path,
        &format!("Authorization: Bearer {TEST_TOKEN}\r\nConnection: close\r\n"),
    )
}

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

/// GETs (or, with `body`, POSTs) `url` over the Unix socket `socket` with curl
/// run as `uid`; the HTTP status curl saw ("000": no answer, e.g. it could not
/// connect).
pub fn curl_unix_as(socket: &Path, url: &str, body: Option<&str>, uid: u32) -> String {
    use std::os::unix::process::CommandExt;
    let mut curl = Command::new("curl");
    curl.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
        "--unix-socket",
    ])
    .arg(socket);
    if let Some(body) = body {
        curl.args(["-d", body]);
    }
    let out = curl
        .arg(url)
        .uid(uid)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
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
                "[splitter]\nruntime_dir = \"run\"\n[[listen]]\naddr = \"127.0.0.1:{}\"\nprotocol = \"http\"\n[[tenant]]\nname = \"t\"\nhosts = [\"app.test\"]\nconfig = \"tenants/t.toml\"\n",
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
