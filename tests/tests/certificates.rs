//! Certificates from files: `check` (and a start) refuse a pair that would fail
//! every handshake, with located errors, and warn about names and expiry; a
//! changed pair takes effect for new handshakes without a restart and without
//! an error under load; a broken new pair is refused and the old one kept;
//! SIGHUP re-reads, never kills; the expiry is a metric.

use rcgen::{CertificateParams, KeyPair};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;
use switchyard_tests::*;

/// A self-signed certificate for `names`, valid until `not_after` (Y, M, D);
/// returns (certificate PEM, key PEM).
fn pair(names: &[&str], not_after: (i32, u8, u8)) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Valid for years to come.
const LATER: (i32, u8, u8) = (2040, 1, 1);

/// Writes `text` to `path` atomically (a new file renamed over the old one),
/// as an operator's or an ACME client's tooling does.
fn replace(path: &Path, text: &str) {
    let fresh = path.with_extension("new");
    std::fs::write(&fresh, text).unwrap();
    std::fs::rename(&fresh, path).unwrap();
}

/// A directory the tenant's user can read, holding `alpha.crt` and `alpha.key`.
fn cert_dir(cert: &str, key: &str) -> (TempDir, PathBuf, PathBuf) {
    let dir = TempDir::new("certs");
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cert_path = dir.write("alpha.crt", cert);
    let key_path = dir.write("alpha.key", key);
    (dir, cert_path, key_path)
}

fn tenant_with(cert: &Path, key: &Path) -> TenantSpec {
    // `localhost` too: wrk sends the URL's host as SNI.
    let mut tenant = TenantSpec::echo("alpha", &["alpha.test", "localhost"]);
    tenant.file = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n[[route]]\npath = \"/\"\nrespond = \"echo\"\n",
        cert.display(),
        key.display()
    );
    tenant
}

/// The end-entity certificate a TLS client gets from `addr` for alpha.test.
fn served_certificate(addr: std::net::SocketAddr) -> Vec<u8> {
    let mut tls = tls_connect(addr, "alpha.test").unwrap();
    let answer = request(&mut tls, "alpha.test", "/", "Connection: close\r\n").unwrap();
    assert_eq!(answer.status, 200);
    tls.conn.peer_certificates().unwrap()[0].as_ref().to_vec()
}

fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

/// A host file for `tenant` written beside the tenant file, for `check`.
fn host_file_for(dir: &TempDir, tenant_file: &str) -> PathBuf {
    dir.write("tenants/alpha.toml", tenant_file);
    let (front, tenant) = user_sections();
    dir.write(
        "host.toml",
        &format!("{front}[[listen]]\naddr = \"127.0.0.1:1\"\nprotocol = \"tls\"\n[[tenant]]\nname = \"alpha\"\nhosts = [\"alpha.test\", \"www.alpha.test\"]\nconfig = \"tenants/alpha.toml\"\n{tenant}"),
    )
}

#[test]
fn check_locates_certificate_errors_and_warns_about_names_and_expiry() {
    let dir = TempDir::new("check-tls");
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(dir.0.join("tenants")).unwrap();
    let tls_lines = "[tls]\ncert = \"../alpha.crt\"\nkey = \"../alpha.key\"\n[[route]]\npath = \"/\"\nrespond = \"echo\"\n";
    let host = host_file_for(&dir, tls_lines);
    let (good_cert, good_key) = pair(&["alpha.test", "www.alpha.test"], LATER);

    // The key of another certificate.
    let (_, other_key) = pair(&["alpha.test"], LATER);
    dir.write("alpha.crt", &good_cert);
    dir.write("alpha.key", &other_key);
    let (code, _, stderr) = splitter_check(&host);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("alpha.toml:3:7: ")
            && stderr.contains("the private key does not match the certificate"),
        "{stderr}"
    );

    // An expired certificate.
    let (old_cert, old_key) = pair(&["alpha.test", "www.alpha.test"], (2021, 1, 1));
    dir.write("alpha.crt", &old_cert);
    dir.write("alpha.key", &old_key);
    let (code, _, stderr) = splitter_check(&host);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("alpha.toml:2:8: ") && stderr.contains("the certificate expired on"),
        "{stderr}"
    );

    // PEM that does not parse.
    dir.write(
        "alpha.crt",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    );
    dir.write("alpha.key", &good_key);
    let (code, _, stderr) = splitter_check(&host);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("alpha.toml:2:8: ") && stderr.contains("does not parse"),
        "{stderr}"
    );

    // A host it does not cover, and expiry soon: warnings, exit 0.
    let soon = {
        let in_a_week = std::time::SystemTime::now() + Duration::from_secs(7 * 86_400);
        let days = in_a_week
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 86_400;
        // Civil date from days since the epoch (Howard Hinnant's algorithm).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
        (y, m, d)
    };
    let (soon_cert, soon_key) = pair(&["alpha.test"], soon);
    dir.write("alpha.crt", &soon_cert);
    dir.write("alpha.key", &soon_key);
    let (code, stdout, stderr) = splitter_check(&host);
    assert_eq!(code, 0, "{stderr}");
    let all = format!("{stdout}{stderr}");
    assert!(
        all.contains("alpha.toml:2:8: warning: ") && all.contains("www.alpha.test is not covered"),
        "{all}"
    );
    assert!(all.contains("the certificate expires on"), "{all}");

    // The l7proxy refuses to start on an error, too.
    dir.write("alpha.key", &other_key);
    let out = Command::new(bin("l7proxy"))
        .args(["--tenant", "alpha", "--config"])
        .arg(&host)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the private key does not match the certificate"),
        "{stderr}"
    );
}

#[test]
fn a_certificate_swapped_under_load_takes_effect_without_errors() {
    let _alone = measuring_alone();
    let (first_cert, first_key) = pair(&["alpha.test"], LATER);
    let (_certs, cert_path, key_path) = cert_dir(&first_cert, &first_key);
    let s = SplitterBuilder::new(vec![tenant_with(&cert_path, &key_path)]).start();
    assert_eq!(served_certificate(s.tls), der_of(&first_cert));
    let pid = s.tenant_pids("alpha", "ready")[0];

    let url = format!("https://localhost:{}/", s.tls.port());
    let (keep_url, close_url) = (url.clone(), url);
    let keep = thread::spawn(move || wrk(&keep_url, "alpha.test", 4, 8, false));
    let close = thread::spawn(move || wrk(&close_url, "alpha.test", 4, 8, true));
    thread::sleep(Duration::from_millis(1500));
    let (second_cert, second_key) = pair(&["alpha.test"], LATER);
    replace(&key_path, &second_key);
    replace(&cert_path, &second_cert);
    wait_until(Duration::from_secs(5), || {
        served_certificate(s.tls) == der_of(&second_cert)
    });
    for report in [keep.join().unwrap(), close.join().unwrap()] {
        assert!(report.requests > 50, "{}", report.output);
        assert_eq!(
            report.socket_errors + report.non_2xx,
            0,
            "errors while the certificate changed:\n{}",
            report.output
        );
    }
    assert_eq!(
        s.tenant_pids("alpha", "ready"),
        [pid],
        "no restart: the same process serves"
    );

    // A broken pair (a key of another certificate) is refused: the last
    // good pair keeps serving.
    let (_, stray_key) = pair(&["alpha.test"], LATER);
    replace(&key_path, &stray_key);
    thread::sleep(Duration::from_millis(2500));
    assert_eq!(served_certificate(s.tls), der_of(&second_cert));

    // SIGHUP re-reads (here: still the broken pair, still refused) and never
    // stops the process.
    signal(pid as u32, libc::SIGHUP);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(served_certificate(s.tls), der_of(&second_cert));
    assert_eq!(s.tenant_pids("alpha", "ready"), [pid]);

    // Mended, it is picked up again.
    replace(&key_path, &second_key);
    let (third_cert, third_key) = pair(&["alpha.test"], LATER);
    replace(&key_path, &third_key);
    replace(&cert_path, &third_cert);
    wait_until(Duration::from_secs(5), || {
        served_certificate(s.tls) == der_of(&third_cert)
    });
}

#[test]
fn the_certificate_expiry_is_a_metric() {
    let (cert, key) = pair(&["app.test"], LATER);
    let (_certs, cert_path, key_path) = cert_dir(&cert, &key);
    let tenant = StandaloneTenant::start(&format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n[[upstream]]\nname = \"app\"\nregistration = true\n[[route]]\npath = \"/\"\nrespond = \"echo\"\n[registration]\nlisten = \"{{registration}}\"\n",
        cert_path.display(),
        key_path.display()
    ));
    wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(tenant.registration).is_ok()
    });
    let metrics = http_get_authorized(tenant.registration, "localhost", "/metrics").unwrap();
    let text = String::from_utf8(metrics.body).unwrap();
    let seconds: f64 = text
        .lines()
        .find(|l| l.starts_with("switchyard_tls_certificate_expiry_seconds{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no expiry metric:\n{text}"));
    // 2040-01-01 is more than ten years away.
    assert!(seconds > 10.0 * 365.0 * 86_400.0, "{seconds}");
}

/// `curl -k` over TLS to alpha.test on `s` with `args`: (exit code, stderr).
fn curl_tls(s: &Splitter, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new("curl")
        .args([
            "-sk",
            "-v",
            "-o",
            "/dev/null",
            "--max-time",
            "10",
            "--resolve",
        ])
        .arg(format!("alpha.test:{}:127.0.0.1", s.tls.port()))
        .args(args)
        .arg(format!("https://alpha.test:{}/", s.tls.port()))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_tls_policy_limits_versions_suites_and_groups() {
    let mut tenant = TenantSpec::echo("alpha", &["alpha.test"]);
    tenant.file = tenant.file.replace(
        "self_signed = true\n",
        "self_signed = true\nmin_version = \"1.3\"\ncipher_suites = [\"TLS13_CHACHA20_POLY1305_SHA256\"]\ngroups = [\"secp384r1\"]\n",
    );
    let s = SplitterBuilder::new(vec![tenant]).start();
    let (code, stderr) = curl_tls(&s, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("TLSv1.3 / TLS_CHACHA20_POLY1305_SHA256"),
        "{stderr}"
    );
    // TLS 1.2 only: refused.
    let (code, stderr) = curl_tls(&s, &["--tls-max", "1.2"]);
    assert_ne!(code, Some(0), "{stderr}");
    // Only a group the policy leaves out: refused.
    let (code, stderr) = curl_tls(&s, &["--curves", "X25519"]);
    assert_ne!(code, Some(0), "{stderr}");

    // check names an unknown suite where it is written.
    let dir = TempDir::new("tls-policy");
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(dir.0.join("tenants")).unwrap();
    let host = host_file_for(
        &dir,
        "[tls]\nself_signed = true\ncipher_suites = [\"TLS_RSA_WITH_RC4_128_MD5\"]\n[[route]]\npath = \"/\"\nrespond = \"echo\"\n",
    );
    let (code, _, stderr) = splitter_check(&host);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(
            "alpha.toml:3:17: [tls] cipher_suites: \"TLS_RSA_WITH_RC4_128_MD5\" is not a suite"
        ),
        "{stderr}"
    );
}
