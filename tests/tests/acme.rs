//! ACME against a real CA: pebble, the ACME test server, with its challenge
//! test server as the DNS that resolves every name to 127.0.0.1. A tenant with
//! `[tls] acme` serves its placeholder at once; orders a certificate through
//! tls-alpn-01 or http-01, answered by whichever of its processes the CA
//! reaches; serves it from every process; renews it before it expires; and
//! keeps what it serves when an order fails, saying why.
//!
//! Needs `pebble` and `pebble-challtestsrv` (Debian: `apt-get install pebble`),
//! `openssl` and `curl`.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use switchyard_tests::*;

/// Validity of the certificates pebble issues unless a test asks otherwise:
/// far from the default `renew_before` (30 days).
const NINETY_DAYS: u64 = 90 * 86_400;

/// How long a certificate may take to be issued and served.
const ISSUANCE: Duration = Duration::from_secs(30);

/// Panics, saying how to install it, unless `program` can be started.
fn require(program: &str, package: &str) {
    let found = Command::new(program)
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(e) = found {
        panic!("{program} cannot be started ({e}): these tests need it; `apt-get install {package}` (scripts/setup.sh installs the test packages)");
    }
}

/// Runs `openssl ARGS` in `dir`; panics with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl cannot be started ({e}): `apt-get install openssl`"));
    assert!(
        out.status.success(),
        "openssl {}:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// GETs `url` over HTTPS trusting `ca`; the body when the answer is a success.
fn curl(ca: &Path, url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "5", "--cacert"])
        .arg(ca)
        .arg(url)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A pebble configured but not started yet: a tenant file names its
/// directory URL and HTTPS CA before the CA runs.
struct PebbleSetup {
    dir: TempDir,
    acme: u16,
    management: u16,
    dns: u16,
    challtestsrv: u16,
}

impl PebbleSetup {
    /// A CA that validates http-01 on `http_port` and tls-alpn-01 on
    /// `tls_port` (of 127.0.0.1, where its DNS sends every name) and issues
    /// certificates valid for `validity_secs`.
    fn new(http_port: u16, tls_port: u16, validity_secs: u64) -> PebbleSetup {
        require("pebble", "pebble");
        require("pebble-challtestsrv", "pebble");
        let dir = TempDir::new("pebble");
        // The tenant's user (when the tests run as root) reads ca.pem.
        set_mode(&dir.0, 0o755);
        let curve = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(curve);
        ca.extend([
            "-days",
            "3650",
            "-subj",
            "/CN=Pebble test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        openssl(&dir.0, &ca);
        let mut request = vec!["req"];
        request.extend(curve);
        request.extend([
            "-subj",
            "/CN=localhost",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
        ]);
        openssl(&dir.0, &request);
        dir.write(
            "leaf.ext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
        );
        openssl(
            &dir.0,
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "3650",
                "-extfile",
                "leaf.ext",
                "-out",
                "leaf.pem",
            ],
        );
        set_mode(&dir.0.join("ca.pem"), 0o644);
        let (acme, management, dns, challtestsrv) =
            (free_port(), free_port(), free_port(), free_port());
        dir.write(
            "pebble.json",
            &format!(
                r#"{{"pebble":{{"listenAddress":"127.0.0.1:{acme}","managementListenAddress":"127.0.0.1:{management}","certificate":"{}","privateKey":"{}","httpPort":{http_port},"tlsPort":{tls_port},"ocspResponderURL":"","externalAccountBindingRequired":false,"certificateValidityPeriod":{validity_secs}}}}}"#,
                dir.0.join("leaf.pem").display(),
                dir.0.join("leaf.key").display(),
            ),
        );
        PebbleSetup {
            dir,
            acme,
            management,
            dns,
            challtestsrv,
        }
    }

    /// The ACME directory URL.
    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme)
    }

    /// The CA of pebble's own HTTPS (not of what it issues).
    fn https_ca(&self) -> PathBuf {
        self.dir.0.join("ca.pem")
    }

    /// `[tls] acme = { … }` for this CA with `challenge`, plus `extra`
    /// (`, key = value` pairs).
    fn acme_table(&self, challenge: &str, extra: &str) -> String {
        format!(
            "{{ directory = \"{}\", ca = \"{}\", challenge = \"{challenge}\"{extra} }}",
            self.directory(),
            self.https_ca().display()
        )
    }

    /// Starts the challenge test server (pebble's DNS) and pebble, and waits
    /// until the directory answers.
    fn start(self) -> Pebble {
        let log = |name: &str| Stdio::from(fs::File::create(self.dir.0.join(name)).unwrap());
        let dns = Proc(
            Command::new("pebble-challtestsrv")
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .args(["-dns01", &format!("127.0.0.1:{}", self.dns)])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-management", &format!("127.0.0.1:{}", self.challtestsrv)])
                .stdout(log("challtestsrv.out"))
                .stderr(log("challtestsrv.err"))
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.challtestsrv)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pebble-challtestsrv did not start:\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(50));
        }
        let mut pebble = Proc(
            Command::new("pebble")
                .arg("-config")
                .arg(self.dir.0.join("pebble.json"))
                .args(["-dnsserver", &format!("127.0.0.1:{}", self.dns)])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0")
                .current_dir(&self.dir.0)
                .stdout(log("pebble.out"))
                .stderr(log("pebble.err"))
                .spawn()
                .unwrap(),
        );
        let ca = self.https_ca();
        while curl(&ca, &self.directory()).is_none() {
            let exited = pebble.0.try_wait().ok().flatten();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "pebble did not start ({exited:?}):\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(100));
        }
        let root = curl(
            &ca,
            &format!("https://127.0.0.1:{}/roots/0", self.management),
        )
        .unwrap_or_else(|| panic!("pebble's root is not served:\n{}", self.logs()));
        assert!(root.contains("BEGIN CERTIFICATE"), "{root}");
        Pebble {
            _pebble: pebble,
            _dns: dns,
            root,
            setup: self,
        }
    }

    /// What pebble and its DNS printed.
    fn logs(&self) -> String {
        [
            "challtestsrv.out",
            "challtestsrv.err",
            "pebble.out",
            "pebble.err",
        ]
        .iter()
        .map(|name| {
            format!(
                "--- {name}\n{}",
                fs::read_to_string(self.dir.0.join(name)).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
    }
}

/// A running pebble and its DNS, killed when dropped (before their directory
/// is removed: fields drop in order).
struct Pebble {
    _pebble: Proc,
    _dns: Proc,
    /// The root of what pebble issues (PEM), fresh for every run.
    root: String,
    setup: PebbleSetup,
}

impl Pebble {
    /// Configures and starts a CA at once (see [`PebbleSetup::new`]).
    fn start(http_port: u16, tls_port: u16, validity_secs: u64) -> Pebble {
        PebbleSetup::new(http_port, tls_port, validity_secs).start()
    }
}

/// A splitter serving one ACME tenant, with its listeners on given ports (the
/// CA validates on fixed ones) and its log (JSON lines, the tenant's
/// included) collected.
struct AcmeSite {
    proc: Proc,
    tls: SocketAddr,
    tenant: String,
    log: Arc<Mutex<String>>,
    dir: TempDir,
}

impl AcmeSite {
    /// Starts the splitter with tenant `tenant` (`processes` processes)
    /// answering `hosts` with the echo, its certificate from `[tls] acme =
    /// ACME`; waits until the tenant answers over TLS (its placeholder, or
    /// already an issued certificate).
    fn start(
        tenant: &str,
        hosts: &[&str],
        processes: usize,
        acme: &str,
        tls_port: u16,
        http_port: u16,
    ) -> AcmeSite {
        let dir = TempDir::new("acme");
        set_mode(&dir.0, 0o755);
        set_mode(&dir.0.join("tenants"), 0o755);
        let tenant_file = dir.write(
            &format!("tenants/{tenant}.toml"),
            &format!("[tls]\nacme = {acme}\n[[route]]\npath = \"/\"\nrespond = \"echo\"\n"),
        );
        set_mode(&tenant_file, 0o644);
        let (front_user, tenant_user) = user_lines();
        let names: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
        let config = dir.write(
            "host.toml",
            &format!(
                "[splitter]\nruntime_dir = \"run\"\npeek_timeout = \"2s\"\norphan_timeout = \"1s\"\nmax_conn_rate_per_ip = 0\nmax_pending_per_ip = 100000\n{front_user}\
                 [[listen]]\naddr = \"127.0.0.1:{tls_port}\"\nprotocol = \"tls\"\n\
                 [[listen]]\naddr = \"127.0.0.1:{http_port}\"\nprotocol = \"http\"\n\
                 [[tenant]]\nname = \"{tenant}\"\nhosts = [{}]\nconfig = \"tenants/{tenant}.toml\"\nprocesses = {processes}\n{tenant_user}",
                names.join(", ")
            ),
        );
        let mut child = Command::new(bin("splitter"))
            .arg("--config")
            .arg(&config)
            .env("SWITCHYARD_L7PROXY", bin("l7proxy"))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("SWITCHYARD_LOG_FORMAT", "json")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        // Until every holder of the pipe (splitter, helper, tenants) is gone.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap_or_else(|p| p.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let site = AcmeSite {
            proc: Proc(child),
            tls: format!("127.0.0.1:{tls_port}").parse().unwrap(),
            tenant: tenant.to_string(),
            log,
            dir,
        };
        let host = hosts[0];
        site.wait_for(Duration::from_secs(20), "the tenant answering", || {
            matches!(https_get(site.tls, host, "/"), Ok(r) if r.status == 200).then_some(())
        });
        site
    }

    /// `tenants/NAME/acme/` in the runtime directory.
    fn acme_dir(&self) -> PathBuf {
        self.dir
            .0
            .join("run/tenants")
            .join(&self.tenant)
            .join("acme")
    }

    /// Everything logged so far.
    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The log lines that are JSON events.
    fn events(&self) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Polls `probe` every 200 ms until it gives something; panics after
    /// `limit` with `what` and the log.
    fn wait_for<T>(&self, limit: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(found) = probe() {
                return found;
            }
            assert!(
                start.elapsed() < limit,
                "{what}: not within {limit:?} (splitter pid {}); its log:\n{}",
                self.proc.pid(),
                self.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// The files of ACME are the tenant's user's alone.
    fn assert_owner_only(&self) {
        let acme = self.acme_dir();
        let mode = |path: &Path| {
            fs::metadata(path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(&acme), 0o700, "{}", acme.display());
        for file in ["key.pem", "cert.pem", "account.json"] {
            assert_eq!(mode(&acme.join(file)), 0o600, "{file}");
        }
    }

    /// How many challenge answers of `kind` are on disk.
    fn challenge_files(&self, kind: &str) -> usize {
        fs::read_dir(self.acme_dir().join("challenges").join(kind))
            .map(|entries| entries.count())
            .unwrap_or(0)
    }
}

/// A client trusting only `root_pem`, ALPN http/1.1.
fn verifying(root_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(der.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// `GET /` for `name` over TLS, verifying the certificate against `root_pem`:
/// the status and the end-entity certificate (DER). A certificate that does
/// not verify is an error.
fn verified_get(addr: SocketAddr, name: &str, root_pem: &str) -> io::Result<(u16, Vec<u8>)> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let server = ServerName::try_from(name.to_string()).map_err(io::Error::other)?;
    let conn =
        rustls::ClientConnection::new(verifying(root_pem), server).map_err(io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let answer = request(&mut tls, name, "/", "Connection: close\r\n")?;
    Ok((answer.status, end_entity(&tls.conn)))
}

/// `GET /` for `name` over TLS accepting any certificate: the status and the
/// end-entity certificate (DER).
fn served(addr: SocketAddr, name: &str) -> (u16, Vec<u8>) {
    let mut tls = tls_connect(addr, name).unwrap();
    let answer = request(&mut tls, name, "/", "Connection: close\r\n").unwrap();
    (answer.status, end_entity(&tls.conn))
}

fn end_entity(conn: &rustls::ClientConnection) -> Vec<u8> {
    conn.peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| cert.as_ref().to_vec())
        .unwrap_or_default()
}

/// Whether a certificate came from pebble: its issuer names "Pebble".
fn from_pebble(der: &[u8]) -> bool {
    der.windows(6).any(|w| w == b"Pebble")
}

/// The serial number of a DER certificate: Certificate → tbsCertificate →
/// (`[0]` version) → serialNumber.
fn serial(der: &[u8]) -> Option<Vec<u8>> {
    /// One TLV: (tag, contents, what follows).
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let tag = *input.first()?;
        let first = usize::from(*input.get(1)?);
        let (len, header) = match first {
            0..=0x7f => (first, 2),
            0x81..=0x84 => {
                let count = first & 0x7f;
                let mut len = 0usize;
                for &byte in input.get(2..2 + count)? {
                    len = (len << 8) | usize::from(byte);
                }
                (len, 2 + count)
            }
            _ => return None,
        };
        let contents = input.get(header..header.checked_add(len)?)?;
        Some((tag, contents, &input[header + len..]))
    }
    let (_, certificate, _) = tlv(der)?;
    let (_, tbs, _) = tlv(certificate)?;
    let (tag, first, rest) = tlv(tbs)?;
    let serial = match tag {
        0xa0 => tlv(rest)?.1,
        _ => first,
    };
    Some(serial.to_vec())
}

#[test]
fn tls_alpn_01_is_answered_by_every_process_and_the_certificate_served_by_all() {
    let tls_port = free_port();
    let pebble = PebbleSetup::new(free_port(), tls_port, NINETY_DAYS);
    let site = AcmeSite::start(
        "alpha",
        &["acme-a.test", "www.acme-a.test"],
        2,
        &pebble.acme_table("tls-alpn-01", ""),
        tls_port,
        free_port(),
    );
    // The CA does not run yet: the placeholder is served, and the failed
    // order is retried.
    let (status, placeholder) = served(site.tls, "acme-a.test");
    assert_eq!(status, 200);
    assert!(!placeholder.is_empty() && !from_pebble(&placeholder));

    let pebble = pebble.start();
    let issued = site.wait_for(ISSUANCE, "a certificate pebble issued", || {
        verified_get(site.tls, "acme-a.test", &pebble.root).ok()
    });
    assert_eq!(issued.0, 200);
    assert!(from_pebble(&issued.1));
    // Both processes serve it (connections go to them in turn), for both names.
    site.wait_for(Duration::from_secs(10), "every process serving it", || {
        (0..4)
            .all(|_| {
                ["acme-a.test", "www.acme-a.test"].iter().all(|name| {
                    matches!(verified_get(site.tls, name, &pebble.root), Ok((200, ref der)) if *der == issued.1)
                })
            })
            .then_some(())
    });

    site.assert_owner_only();
    let on_disk = fs::read(site.acme_dir().join("cert.pem")).unwrap();
    let first = CertificateDer::pem_slice_iter(&on_disk)
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(first.as_ref(), issued.1.as_slice());
    assert_eq!(site.challenge_files("tls-alpn-01"), 0, "answers removed");
}

#[test]
fn http_01_through_the_plaintext_listener() {
    let (tls_port, http_port) = (free_port(), free_port());
    let pebble = Pebble::start(http_port, free_port(), NINETY_DAYS);
    let site = AcmeSite::start(
        "beta",
        &["acme-b.test"],
        1,
        &pebble
            .setup
            .acme_table("http-01", ", contact = [\"mailto:ops@acme-b.test\"]"),
        tls_port,
        http_port,
    );
    let (status, der) = site.wait_for(ISSUANCE, "a certificate pebble issued", || {
        verified_get(site.tls, "acme-b.test", &pebble.root).ok()
    });
    assert_eq!(status, 200);
    assert!(from_pebble(&der));
    site.assert_owner_only();
    assert_eq!(site.challenge_files("http-01"), 0, "answers removed");
}

#[test]
fn a_certificate_is_renewed_before_it_expires() {
    let tls_port = free_port();
    // Certificates live 40 s and are renewed 35 s (less jitter) before expiry:
    // some 5 s after issuance.
    let pebble = Pebble::start(free_port(), tls_port, 40);
    let site = AcmeSite::start(
        "gamma",
        &["acme-c.test"],
        1,
        &pebble
            .setup
            .acme_table("tls-alpn-01", ", renew_before = \"35s\""),
        tls_port,
        free_port(),
    );
    let (_, first) = site.wait_for(ISSUANCE, "a certificate pebble issued", || {
        verified_get(site.tls, "acme-c.test", &pebble.root).ok()
    });
    let first_serial = serial(&first).expect("a serial number");
    let (status, renewed) = site.wait_for(ISSUANCE, "a renewed certificate", || {
        verified_get(site.tls, "acme-c.test", &pebble.root)
            .ok()
            .filter(|(_, der)| serial(der).is_some_and(|s| s != first_serial))
    });
    assert_eq!(status, 200);
    assert!(from_pebble(&renewed));
}

#[test]
fn a_failed_order_keeps_the_placeholder_and_names_tenant_and_host() {
    // Pebble checks tls-alpn-01 on a port nothing listens on.
    let pebble = Pebble::start(free_port(), free_port(), NINETY_DAYS);
    let site = AcmeSite::start(
        "delta",
        &["acme-d.test"],
        1,
        &pebble.setup.acme_table("tls-alpn-01", ""),
        free_port(),
        free_port(),
    );
    let event = site.wait_for(ISSUANCE, "the failed order in the log", || {
        site.events().into_iter().find(|event| {
            event["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("ACME order failed"))
        })
    });
    assert_eq!(event["level"], "WARN", "{event}");
    assert_eq!(event["tenant"], "delta", "{event}");
    assert_eq!(event["host"], "acme-d.test", "{event}");
    assert!(
        event["message"]
            .as_str()
            .is_some_and(|m| m.contains("the current certificate stays; retrying in 5s")),
        "{event}"
    );
    assert!(
        event["error"].as_str().is_some_and(|e| !e.is_empty()),
        "the CA's reason: {event}"
    );

    let (status, der) = served(site.tls, "acme-d.test");
    assert_eq!(status, 200);
    assert!(!der.is_empty() && !from_pebble(&der), "the placeholder");
    assert!(verified_get(site.tls, "acme-d.test", &pebble.root).is_err());
    assert!(!site.acme_dir().join("cert.pem").exists());
    assert_eq!(site.challenge_files("tls-alpn-01"), 0, "answers removed");
}

#[test]
fn check_refuses_acme_for_a_wildcard_host_and_an_unknown_challenge() {
    let dir = TempDir::new("acme-check");
    set_mode(&dir.0, 0o755);
    fs::create_dir_all(dir.0.join("tenants")).unwrap();
    let (front, tenant) = user_sections();
    let host_file = |tenant_file: &str| {
        dir.write("tenants/shop.toml", tenant_file);
        dir.write(
            "host.toml",
            &format!("{front}[[listen]]\naddr = \"127.0.0.1:1\"\nprotocol = \"tls\"\n[[tenant]]\nname = \"shop\"\nhosts = [\"shop.test\", \"*.shop.test\"]\nconfig = \"tenants/shop.toml\"\n{tenant}"),
        )
    };
    let acme = "[tls]\nacme = { directory = \"https://127.0.0.1:1/dir\" }\n[[route]]\npath = \"/\"\nrespond = \"echo\"\n";
    let (code, _, stderr) = splitter_check(&host_file(acme));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("shop.toml:2:8: ")
            && stderr.contains("acme cannot cover the wildcard host *.shop.test")
            && stderr.contains("DNS-01"),
        "{stderr}"
    );
    let dns = acme.replace("/dir\" }", "/dir\", challenge = \"dns-01\" }");
    let (code, _, stderr) = splitter_check(&host_file(&dns));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("shop.toml:2:") && stderr.contains("\"dns-01\" is not supported"),
        "{stderr}"
    );
}
