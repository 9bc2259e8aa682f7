//! The tenant's TLS: its certificate (PEM files, or one generated at start for
//! the demo), checked before it is used, and served through a resolver that
//! reads an `ArcSwap`, so a new pair takes effect for new handshakes without a
//! restart while established connections keep theirs. ALPN `h2` then
//! `http/1.1`, through Pingora's rustls acceptor.
//!
//! A pair is refused, with a located error, when a PEM does not parse, the key
//! does not match the certificate, or the certificate has expired; a host of
//! the tenant the certificate does not cover, or expiry within
//! [`EXPIRY_WARNING`], is a warning. `--check` reports both; a start refuses on
//! errors; a reload ([`CertStore::reload`]) keeps the pair in use on errors.

use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use switchyard_shared::config::{Location, TlsPolicy, TlsSource, TlsVersion};
use switchyard_shared::host::HostPattern;
use tracing::{info, warn};

/// The ALPN protocol of ACME tls-alpn-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// A certificate expiring sooner than this is worth a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// A checked certificate and key, ready to serve.
#[derive(Debug)]
pub struct Loaded {
    /// The chain and signing key.
    pub key: Arc<CertifiedKey>,
    /// When the end-entity certificate expires (Unix seconds).
    pub not_after: i64,
    /// Whether it only stands in until ACME delivers a certificate.
    pub placeholder: bool,
}

/// A pair that passed the checks, and what is worth a warning about it.
pub struct Checked {
    /// The pair.
    pub loaded: Loaded,
    /// `FILE:LINE:COL: warning: …` lines.
    pub warnings: Vec<String>,
}

/// Reads and checks the tenant's certificate and key (or generates one for
/// `self_signed`); `Err` carries every problem found, as `FILE:LINE:COL:
/// message` lines.
pub fn load_certificate(source: &TlsSource, hosts: &[HostPattern]) -> Result<Checked, Vec<String>> {
    match source {
        TlsSource::Files {
            cert,
            key,
            cert_at,
            key_at,
        } => load_files(cert, key, cert_at, key_at, hosts),
        TlsSource::SelfSigned => self_signed(hosts, false),
        // Until ACME delivers (crate::acme installs what it orders).
        TlsSource::Acme(_) => self_signed(hosts, true),
    }
}

/// A certificate generated now for `hosts` (`placeholder`: one that stands in
/// until ACME delivers, counted when served).
fn self_signed(hosts: &[HostPattern], placeholder: bool) -> Result<Checked, Vec<String>> {
    let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| vec![format!("cannot generate a self-signed certificate: {e}")])?;
    let key = PrivateKeyDer::try_from(generated.key_pair.serialize_der())
        .map_err(|e| vec![format!("generated key unusable: {e}")])?;
    let signing_key = signing_key(key).map_err(|e| vec![format!("generated key unusable: {e}")])?;
    let chain = vec![generated.cert.der().clone()];
    let not_after = end_entity_not_after(&chain[0]).unwrap_or(i64::MAX);
    Ok(Checked {
        loaded: Loaded {
            key: Arc::new(CertifiedKey::new(chain, signing_key)),
            not_after,
            placeholder,
        },
        warnings: Vec::new(),
    })
}

fn load_files(
    cert: &Path,
    key: &Path,
    cert_at: &Location,
    key_at: &Location,
    hosts: &[HostPattern],
) -> Result<Checked, Vec<String>> {
    let read = |path: &Path, at: &Location| {
        switchyard_shared::files::read_regular(path, switchyard_shared::files::MAX_PEM_BYTES)
            .map_err(|e| {
                vec![at
                    .error(format!("cannot read {}: {e}", path.display()))
                    .to_string()]
            })
    };
    let cert_pem = read(cert, cert_at)?;
    let key_pem = read(key, key_at)?;
    check_pair(&cert_pem, &key_pem, cert, key, cert_at, key_at, hosts)
}

/// A certificate and key an ACME CA issued (`acme/cert.pem`, `acme/key.pem`
/// in `tenant_dir`), through the same checks as files named in `[tls]`;
/// problems are located at the `acme` key.
pub fn check_acme_pair(
    chain_pem: &[u8],
    key_pem: &[u8],
    tenant_dir: &Path,
    at: &Location,
    hosts: &[HostPattern],
) -> Result<Checked, Vec<String>> {
    let acme = tenant_dir.join("acme");
    check_pair(
        chain_pem,
        key_pem,
        &acme.join("cert.pem"),
        &acme.join("key.pem"),
        at,
        at,
        hosts,
    )
}

/// The checks of a pair: both parse, the key matches, not expired (errors);
/// hosts not covered, expiry soon (warnings). `cert`/`key` name the files in
/// messages.
fn check_pair(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert: &Path,
    key: &Path,
    cert_at: &Location,
    key_at: &Location,
    hosts: &[HostPattern],
) -> Result<Checked, Vec<String>> {
    let mut errors = Vec::new();
    let chain: Vec<CertificateDer<'static>> =
        match CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>() {
            Ok(chain) if chain.is_empty() => {
                errors.push(cert_at.error(format!(
                    "{}: no certificate in the file (PEM \"BEGIN CERTIFICATE\" expected)",
                    cert.display()
                )));
                Vec::new()
            }
            Ok(chain) => chain,
            Err(e) => {
                errors.push(cert_at.error(format!(
                    "{}: the certificate chain does not parse as PEM: {e}",
                    cert.display()
                )));
                Vec::new()
            }
        };
    let signing_key = match PrivateKeyDer::from_pem_slice(key_pem) {
        Ok(der) => match signing_key(der) {
            Ok(signing_key) => Some(signing_key),
            Err(e) => {
                errors.push(key_at.error(format!(
                    "{}: the private key is not usable for TLS: {e}",
                    key.display()
                )));
                None
            }
        },
        Err(e) => {
            errors.push(key_at.error(format!(
                "{}: the private key does not parse as PEM: {e}",
                key.display()
            )));
            None
        }
    };
    let mut warnings = Vec::new();
    let mut not_after = i64::MAX;
    if let Some(end_entity) = chain.first() {
        match x509_parser::parse_x509_certificate(end_entity.as_ref()) {
            Ok((_, parsed)) => {
                not_after = parsed.validity().not_after.timestamp();
                let now = unix_now();
                if not_after <= now {
                    errors.push(cert_at.error(format!(
                        "{}: the certificate expired on {}; renew it",
                        cert.display(),
                        parsed.validity().not_after
                    )));
                } else if not_after - now < EXPIRY_WARNING.as_secs() as i64 {
                    warnings.push(cert_at.warning(format!(
                        "{}: the certificate expires on {}, in {} days",
                        cert.display(),
                        parsed.validity().not_after,
                        (not_after - now) / 86_400
                    )));
                }
                let names = dns_names(&parsed);
                for host in hosts {
                    if !covers(&names, host) {
                        warnings.push(cert_at.warning(format!(
                            "{}: the tenant's host {host} is not covered by the certificate (it names {}); clients will refuse it",
                            cert.display(),
                            if names.is_empty() { "no DNS name".to_string() } else { names.join(", ") }
                        )));
                    }
                }
            }
            Err(e) => errors.push(cert_at.error(format!(
                "{}: the first certificate is not valid X.509: {e}",
                cert.display()
            ))),
        }
    }
    if let (Some(signing_key), false) = (signing_key, chain.is_empty()) {
        let certified = CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(_) => errors.push(key_at.error(format!(
                "{}: the private key does not match the certificate in {}",
                key.display(),
                cert.display()
            ))),
        }
        if errors.is_empty() {
            return Ok(Checked {
                loaded: Loaded {
                    key: Arc::new(certified),
                    not_after,
                    placeholder: false,
                },
                warnings: warnings.iter().map(ToString::to_string).collect(),
            });
        }
    }
    Err(errors.iter().map(ToString::to_string).collect())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn end_entity_not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .ok()
        .map(|(_, parsed)| parsed.validity().not_after.timestamp())
}

/// The certificate's DNS names (subjectAltName; the common name only when it
/// has none), lower case.
fn dns_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(|cn| cn.to_ascii_lowercase()),
        );
    }
    names
}

/// Whether a certificate naming `names` is accepted by clients for `host`
/// (a `*.` name covers exactly one label).
fn covers(names: &[String], host: &HostPattern) -> bool {
    match host {
        HostPattern::Exact(name) => names.iter().any(|n| {
            n == name
                || n.strip_prefix("*.").is_some_and(|suffix| {
                    name.split_once('.')
                        .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix)
                })
        }),
        HostPattern::Wildcard(suffix) => names.iter().any(|n| n == &format!("*.{suffix}")),
    }
}

/// The pair in use, replaced whole when the files change and the new pair
/// passes the checks.
pub struct CertStore {
    tenant: String,
    source: TlsSource,
    hosts: Vec<HostPattern>,
    current: ArcSwap<Loaded>,
    /// What the files looked like when last read (changed files are read again).
    seen: Mutex<Option<FileStamps>>,
    /// ACME tls-alpn-01 answers, when the tenant orders certificates with it.
    alpn_challenges: Option<Arc<crate::acme::Challenges>>,
}

/// Size, modification time and inode of the certificate and key files.
type FileStamps = [(u64, Option<SystemTime>, u64); 2];

fn stamps(source: &TlsSource) -> Option<FileStamps> {
    use std::os::unix::fs::MetadataExt;
    let TlsSource::Files { cert, key, .. } = source else {
        return None;
    };
    let stamp = |path: &Path| {
        std::fs::metadata(path)
            .map(|m| (m.len(), m.modified().ok(), m.ino()))
            .unwrap_or((0, None, 0))
    };
    Some([stamp(cert), stamp(key)])
}

impl CertStore {
    /// A store serving `checked`, which was loaded from `source`.
    pub fn new(
        tenant: &str,
        source: TlsSource,
        hosts: Vec<HostPattern>,
        checked: Loaded,
    ) -> Arc<CertStore> {
        Self::build(tenant, source, hosts, checked, None)
    }

    /// A store that also answers ACME tls-alpn-01 challenges (handshakes
    /// offering ALPN `acme-tls/1`) from `challenges`.
    pub fn with_alpn_challenges(
        tenant: &str,
        source: TlsSource,
        hosts: Vec<HostPattern>,
        checked: Loaded,
        challenges: Arc<crate::acme::Challenges>,
    ) -> Arc<CertStore> {
        Self::build(tenant, source, hosts, checked, Some(challenges))
    }

    fn build(
        tenant: &str,
        source: TlsSource,
        hosts: Vec<HostPattern>,
        checked: Loaded,
        alpn_challenges: Option<Arc<crate::acme::Challenges>>,
    ) -> Arc<CertStore> {
        let seen = Mutex::new(stamps(&source));
        Arc::new(CertStore {
            tenant: tenant.to_string(),
            source,
            hosts,
            current: ArcSwap::from_pointee(checked),
            seen,
            alpn_challenges,
        })
    }

    /// Serves `loaded` to new handshakes from now on (a certificate ACME
    /// delivered).
    pub fn install(&self, loaded: Loaded) {
        self.current.store(Arc::new(loaded));
    }

    /// When the certificate in use expires (Unix seconds); `None` while a
    /// placeholder stands in.
    pub fn not_after(&self) -> Option<i64> {
        let current = self.current.load();
        (!current.placeholder).then_some(current.not_after)
    }

    /// Seconds until the certificate in use expires (negative: expired).
    pub fn seconds_to_expiry(&self) -> i64 {
        self.current.load().not_after.saturating_sub(unix_now())
    }

    /// Whether there are files to watch (not `self_signed`).
    pub fn has_files(&self) -> bool {
        matches!(self.source, TlsSource::Files { .. })
    }

    /// Reads the files again if they changed since they were last read (or
    /// always, when `force`); a pair that passes the checks replaces the one
    /// in use, anything else is logged and the pair in use stays.
    pub fn reload(&self, force: bool) {
        let now = stamps(&self.source);
        if now.is_none() {
            return; // self_signed: nothing to watch
        }
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if !force && *seen == now {
                return;
            }
            *seen = now;
        }
        match load_certificate(&self.source, &self.hosts) {
            Ok(checked) => {
                for warning in &checked.warnings {
                    warn!(tenant = %self.tenant, "{warning}");
                }
                self.current.store(Arc::new(checked.loaded));
                info!(tenant = %self.tenant, "certificate reloaded: new handshakes use the new pair");
            }
            Err(errors) => {
                for error in &errors {
                    warn!(tenant = %self.tenant, "{error}");
                }
                warn!(tenant = %self.tenant, "the new certificate or key was refused; the pair in use stays (fix the files; they are read again when they change)");
            }
        }
    }
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// Serves the store's current pair to every client (the splitter only sends
/// this tenant names of this tenant).
#[derive(Debug)]
struct CurrentCertificate(Arc<CertStore>);

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(challenges) = &self.0.alpn_challenges {
            if hello
                .alpn()
                .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN))
            {
                // Only a pending challenge's certificate; nothing else is
                // served to `acme-tls/1`.
                return challenges.tls_alpn_certificate(hello.server_name()?);
            }
        }
        let current = self.0.current.load();
        if current.placeholder {
            crate::metrics::count().tls_placeholder_handshakes.inc();
        }
        Some(current.key.clone())
    }
}

/// The cryptography every TLS configuration of this process uses: ring, or
/// aws-lc-rs in a build with the `aws-lc` feature (`bench/providers.sh`
/// measures both).
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    #[cfg(feature = "aws-lc")]
    return rustls::crypto::aws_lc_rs::default_provider();
    #[cfg(not(feature = "aws-lc"))]
    return rustls::crypto::ring::default_provider();
}

/// `der` as a key [`crypto_provider`] signs handshakes with.
pub fn signing_key(
    der: PrivateKeyDer<'static>,
) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
    crypto_provider().key_provider.load_private_key(der)
}

/// Makes [`crypto_provider`] the process default, for the TLS clients that
/// take it from there (Pingora's upstream connector, the ACME client). Call
/// before any of them starts; later calls change nothing.
pub fn install_crypto_provider() {
    let _ = crypto_provider().install_default();
}

/// The rustls server configuration of `policy` serving `store`'s pair, with
/// ALPN h2 then http/1.1; `Err` names what the policy gets wrong, located in
/// the tenant file.
///
/// `tickets`: the tenant's shared session-ticket keys (with
/// `session_tickets = true`); without them sessions resume only on the
/// process that made them (rustls's own cache).
pub fn server_config(
    store: &Arc<CertStore>,
    policy: &TlsPolicy,
    tickets: Option<Arc<dyn rustls::server::ProducesTickets>>,
) -> Result<rustls::ServerConfig, Vec<String>> {
    let mut provider = crypto_provider();
    let mut errors = Vec::new();
    if !policy.cipher_suites.is_empty() {
        provider.cipher_suites = chosen(
            &provider.cipher_suites,
            &policy.cipher_suites,
            |suite| format!("{:?}", suite.suite()),
            &policy.cipher_suites_at,
            "[tls] cipher_suites",
            "a suite",
            &mut errors,
        );
    }
    if !policy.groups.is_empty() {
        provider.kx_groups = chosen(
            &provider.kx_groups,
            &policy.groups,
            |group| format!("{:?}", group.name()),
            &policy.groups_at,
            "[tls] groups",
            "a key-exchange group",
            &mut errors,
        );
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let versions: &[&'static rustls::SupportedProtocolVersion] = match policy.min_version {
        TlsVersion::V12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V13 => &[&rustls::version::TLS13],
    };
    let provider = Arc::new(provider);
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| {
            vec![located(
                &policy.cipher_suites_at.clone().or(policy.groups_at.clone()),
                format!("[tls] the cipher suites and groups leave no way to speak the versions allowed: {e}"),
            )]
        })?;
    let builder = match &policy.client_auth {
        Some(auth) => {
            builder.with_client_cert_verifier(crate::client_cert::verifier(auth, provider)?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(CurrentCertificate(store.clone())));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if store.alpn_challenges.is_some() {
        // Last: rustls picks the first of these the client offers, so only
        // an ACME CA's validation gets it.
        config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    if let Some(tickets) = tickets {
        config.ticketer = tickets;
    }
    // One ticket per handshake, not rustls's two: a browser keeps one session
    // per site and uses a ticket once, so the second was an encryption, three
    // random draws and ~190 bytes on every connection for nothing (OpenSSL
    // also sends one after a resumption). bench/RESULTS.md measures it.
    config.send_tls13_tickets = 1;
    Ok(config)
}

/// The entries of `offered` named in `wanted` (case-insensitive), in the
/// order wanted; an unknown name is an error (in `errors`) listing the known.
fn chosen<T: Copy>(
    offered: &[T],
    wanted: &[String],
    name: impl Fn(&T) -> String,
    at: &Option<Location>,
    key: &str,
    what: &str,
    errors: &mut Vec<String>,
) -> Vec<T> {
    let mut picked = Vec::new();
    for want in wanted {
        match offered.iter().find(|o| name(o).eq_ignore_ascii_case(want)) {
            Some(found) => picked.push(*found),
            None => {
                let known: Vec<String> = offered.iter().map(&name).collect();
                errors.push(located(
                    at,
                    format!(
                        "{key}: {want:?} is not {what} this build offers ({})",
                        known.join(", ")
                    ),
                ));
            }
        }
    }
    picked
}

fn located(at: &Option<Location>, message: String) -> String {
    match at {
        Some(at) => at.error(message).to_string(),
        None => message,
    }
}

/// Pingora TLS settings serving `store`'s pair, with ALPN h2 and http/1.1.
pub fn settings(store: &Arc<CertStore>) -> TlsSettings {
    // Paths stay empty: the resolver supplies the certificate.
    let mut settings = TlsSettings::intermediate("", "").expect("infallible");
    settings.set_cert_resolver(Arc::new(CurrentCertificate(store.clone())));
    settings.enable_h2();
    settings
}

/// A TLS version as logged and counted (`TLSv1.3`; Pingora's digest says
/// `TLSv1_3`).
pub fn version_name(version: &str) -> &str {
    match version {
        "TLSv1_3" => "TLSv1.3",
        "TLSv1_2" => "TLSv1.2",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_wildcard_name_covers_exactly_one_label() {
        let wildcard = names(&["*.shop.test"]);
        let host = |h: &str| HostPattern::parse(h).unwrap();
        assert!(covers(&wildcard, &host("a.shop.test")));
        assert!(!covers(&wildcard, &host("shop.test")));
        assert!(!covers(&wildcard, &host("a.b.shop.test")));
        assert!(covers(&wildcard, &host("*.shop.test")));
        assert!(covers(&names(&["shop.test"]), &host("shop.test")));
        assert!(!covers(&names(&["other.test"]), &host("shop.test")));
    }
}
