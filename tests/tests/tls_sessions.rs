//! Client certificates (`[tls] client_auth`) and session resumption across
//! the processes of one tenant (`session_tickets`), with real rustls clients
//! through a real splitter.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;
use switchyard_tests::*;

/// A CA and a client certificate it signed: (CA PEM, client chain, client key).
fn client_ca() -> (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Shop client CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "alice");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Shop");
    let client = params.signed_by(&client_key, &ca, &ca_key).unwrap();
    (
        ca.pem(),
        vec![client.der().clone()],
        PrivateKeyDer::try_from(client_key.serialize_der()).unwrap(),
    )
}

/// One request over a new TLS connection made with `config`: (status, body
/// JSON or null, whether the session was resumed).
fn get_with(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    host: &str,
    path: &str,
) -> std::io::Result<(u16, serde_json::Value, bool)> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let name = ServerName::try_from(host.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    let answer = request(&mut stream, host, path, "Connection: close\r\n")?;
    let resumed = stream.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let json = serde_json::from_slice(&answer.body).unwrap_or(serde_json::Value::Null);
    Ok((answer.status, json, resumed))
}

/// A directory the tenant's user can read, holding the client CA.
fn ca_dir(ca_pem: &str) -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new("client-ca");
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = dir.write("ca.pem", ca_pem);
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    (dir, path)
}

#[test]
fn client_certificates_are_verified_and_their_subject_reaches_the_upstream() {
    let (ca_pem, chain, key) = client_ca();
    let (_dir, ca_path) = ca_dir(&ca_pem);
    let upstream: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _app = start_upstream(upstream, "app-1");
    let mut required = TenantSpec::proxy("alpha", &["alpha.test"], &[upstream]);
    required.file = required.file.replace(
        "self_signed = true\n",
        &format!(
            "self_signed = true\nclient_auth = {{ ca = \"{}\", required = true }}\n",
            ca_path.display()
        ),
    );
    let mut optional = TenantSpec::proxy("beta", &["beta.test"], &[upstream]);
    optional.file = optional.file.replace(
        "self_signed = true\n",
        &format!(
            "self_signed = true\nclient_auth = {{ ca = \"{}\", required = false }}\n",
            ca_path.display()
        ),
    );
    let s = SplitterBuilder::new(vec![required, optional]).start();
    let with_cert = tls_config_with_client_cert(chain, key);

    // Accepted: the upstream sees the verified subject.
    let (status, seen, _) = get_with(s.tls, &with_cert, "alpha.test", "/").unwrap();
    assert_eq!(status, 200, "{seen}");
    let subject = seen["headers"]["x-client-cert-subject"]
        .as_str()
        .unwrap_or_default();
    assert!(
        subject.contains("CN=alice") && subject.contains("O=Shop"),
        "{seen}"
    );

    // Refused without a certificate when required: no response at all.
    let refused = get_with(s.tls, &tls_config(), "alpha.test", "/");
    assert!(
        refused.as_ref().map_or(true, |(status, _, _)| *status == 0),
        "{refused:?}"
    );
    // A certificate from another CA is refused too.
    let (_, other_chain, other_key) = client_ca();
    let other = tls_config_with_client_cert(other_chain, other_key);
    assert!(get_with(s.tls, &other, "alpha.test", "/").is_err());

    // Optional: served without a certificate, and a client cannot forge the
    // subject header.
    let tcp = TcpStream::connect(s.tls).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = ServerName::try_from("beta.test".to_string()).unwrap();
    let conn = rustls::ClientConnection::new(tls_config(), name).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    let answer = request(
        &mut stream,
        "beta.test",
        "/",
        "X-Client-Cert-Subject: CN=admin\r\nConnection: close\r\n",
    )
    .unwrap();
    assert_eq!(answer.status, 200);
    let seen = answer.json();
    assert!(
        seen["headers"].get("x-client-cert-subject").is_none(),
        "{seen}"
    );
    // And with one, it is passed on.
    let (status, seen, _) = get_with(s.tls, &with_cert, "beta.test", "/").unwrap();
    assert_eq!(status, 200);
    assert!(
        seen["headers"]["x-client-cert-subject"]
            .as_str()
            .is_some_and(|s| s.contains("CN=alice")),
        "{seen}"
    );
}

#[test]
fn check_names_a_client_ca_that_does_not_parse() {
    let dir = TempDir::new("client-ca-check");
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let bad = dir.write(
        "ca.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::create_dir_all(dir.0.join("tenants")).unwrap();
    dir.write(
        "tenants/alpha.toml",
        &format!(
            "[tls]\nself_signed = true\nclient_auth = {{ ca = \"{}\" }}\n[[route]]\npath = \"/\"\nrespond = \"echo\"\n",
            bad.display()
        ),
    );
    let (front, tenant) = user_sections();
    let host = dir.write(
        "host.toml",
        &format!("{front}[[listen]]\naddr = \"127.0.0.1:1\"\nprotocol = \"tls\"\n[[tenant]]\nname = \"alpha\"\nhosts = [\"alpha.test\"]\nconfig = \"tenants/alpha.toml\"\n{tenant}"),
    );
    let (code, _, stderr) = splitter_check(&host);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("alpha.toml:3:22: ") && stderr.contains("the client CA does not parse"),
        "{stderr}"
    );
}

/// Connections to a 2-process tenant, one session cache: which processes
/// answered, and how many connections after the first resumed.
fn resumption_over(s: &Splitter, connections: usize) -> (BTreeSet<u64>, usize) {
    wait_until(Duration::from_secs(10), || {
        s.tenant_pids("alpha", "ready").len() == 2
    });
    let config = {
        let mut config = (*tls_config()).clone();
        config.resumption = rustls::client::Resumption::in_memory_sessions(64);
        Arc::new(config)
    };
    let mut pids = BTreeSet::new();
    let mut resumed = 0;
    for i in 0..connections {
        let (status, seen, was_resumed) = get_with(s.tls, &config, "alpha.test", "/").unwrap();
        assert_eq!(status, 200, "{seen}");
        pids.insert(seen["pid"].as_u64().unwrap());
        if i > 0 && was_resumed {
            resumed += 1;
        }
    }
    (pids, resumed)
}

#[test]
fn a_session_resumes_on_either_process_of_a_tenant() {
    let mut tenant = TenantSpec::echo("alpha", &["alpha.test"]);
    tenant.processes = 2;
    let s = SplitterBuilder::new(vec![tenant]).start();
    let (pids, resumed) = resumption_over(&s, 8);
    assert_eq!(pids.len(), 2, "both processes answered: {pids:?}");
    assert_eq!(resumed, 7, "every connection after the first resumed");
    // The shared key file is the tenant's own.
    let key = s.dir.0.join("run/tenants/alpha/tls-tickets.key");
    let mode = std::fs::metadata(&key).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
}

/// A client session cache that counts the TLS 1.3 tickets it is given.
#[derive(Debug)]
struct CountingStore {
    inner: rustls::client::ClientSessionMemoryCache,
    tickets: std::sync::atomic::AtomicUsize,
}

impl rustls::client::ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, name: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group)
    }
    fn kx_hint(&self, name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(name, value)
    }
    fn tls12_session(
        &self,
        name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.inner.remove_tls12_session(name)
    }
    fn insert_tls13_ticket(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tickets
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.insert_tls13_ticket(name, value)
    }
    fn take_tls13_ticket(
        &self,
        name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

#[test]
fn each_handshake_gives_the_client_one_ticket() {
    let s = SplitterBuilder::new(vec![TenantSpec::echo("alpha", &["alpha.test"])]).start();
    let store = Arc::new(CountingStore {
        inner: rustls::client::ClientSessionMemoryCache::new(64),
        tickets: std::sync::atomic::AtomicUsize::new(0),
    });
    let config = {
        let mut config = (*tls_config()).clone();
        config.resumption = rustls::client::Resumption::store(store.clone());
        Arc::new(config)
    };
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let (status, seen, resumed) = get_with(s.tls, &config, "alpha.test", "/").unwrap();
        assert_eq!(status, 200, "{seen}");
        kinds.push(resumed);
    }
    assert_eq!(
        kinds,
        [false, true, true],
        "a full handshake, then resumptions"
    );
    assert_eq!(
        store.tickets.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "one ticket per connection, full or resumed"
    );
}

#[test]
fn without_shared_tickets_a_session_resumes_only_where_it_began() {
    let mut tenant = TenantSpec::echo("alpha", &["alpha.test"]);
    tenant.processes = 2;
    tenant.file = tenant.file.replace(
        "self_signed = true\n",
        "self_signed = true\nsession_tickets = false\n",
    );
    let s = SplitterBuilder::new(vec![tenant]).start();
    let (pids, resumed) = resumption_over(&s, 8);
    assert_eq!(pids.len(), 2, "both processes answered: {pids:?}");
    assert!(
        resumed < 7,
        "some connections reached the other process: {resumed}"
    );
}
