//! A tenant file's `[tls]`: where the certificate comes from (PEM files, a
//! generated one, or ACME) and the policy: versions, cipher suites, groups,
//! client certificates and session tickets.

use super::source::{Location, Source};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    #[serde(default)]
    self_signed: bool,
    acme: Option<Spanned<RawAcme>>,
    min_version: Option<Spanned<String>>,
    cipher_suites: Option<Spanned<Vec<String>>>,
    groups: Option<Spanned<Vec<String>>>,
    client_auth: Option<Spanned<RawClientAuth>>,
    session_tickets: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAcme {
    directory: Option<Spanned<String>>,
    #[serde(default)]
    contact: Vec<Spanned<String>>,
    challenge: Option<Spanned<String>>,
    ca: Option<Spanned<String>>,
    renew_before: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientAuth {
    ca: Option<Spanned<String>>,
    required: Option<bool>,
}

/// The oldest TLS version a tenant accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    V12,
    /// TLS 1.3 only.
    V13,
}

/// `[tls]` policy: versions, cipher suites, key-exchange groups, client
/// certificates and session tickets. Names are checked against the TLS
/// library by the tenant's own process (`check`), at the locations kept here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPolicy {
    /// The oldest version accepted.
    pub min_version: TlsVersion,
    /// Cipher suites by their IANA names (`TLS13_AES_128_GCM_SHA256`, …);
    /// empty: the library's defaults.
    pub cipher_suites: Vec<String>,
    /// Where `cipher_suites` is written.
    pub cipher_suites_at: Option<Location>,
    /// Key-exchange groups (`X25519`, `secp256r1`, …); empty: the defaults.
    pub groups: Vec<String>,
    /// Where `groups` is written.
    pub groups_at: Option<Location>,
    /// Client certificates (mTLS), when asked for.
    pub client_auth: Option<ClientAuth>,
    /// Stateless session tickets whose keys every process of the tenant
    /// shares (`true`, the default), or resumption within one process only.
    pub session_tickets: bool,
}

impl Default for TlsPolicy {
    fn default() -> Self {
        TlsPolicy {
            min_version: TlsVersion::V12,
            cipher_suites: Vec::new(),
            cipher_suites_at: None,
            groups: Vec::new(),
            groups_at: None,
            client_auth: None,
            session_tickets: true,
        }
    }
}

/// `[tls] client_auth = { ca = PATH, required = true }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// The CA certificates (PEM) a client certificate must chain to.
    pub ca: PathBuf,
    /// Where `ca` is written.
    pub ca_at: Location,
    /// Whether a client without a certificate is refused (else it is served
    /// without the verified-subject header).
    pub required: bool,
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
        /// Where the tenant file names `cert`, for problems with its contents.
        cert_at: Location,
        /// Where the tenant file names `key`.
        key_at: Location,
    },
    /// A certificate generated at start for the tenant's hosts (demo and tests).
    SelfSigned,
    /// Certificates ordered from an ACME CA by the tenant's own process.
    Acme(AcmeConfig),
}

/// `[tls] acme = { … }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The CA's directory URL (`https://…`).
    pub directory: String,
    /// Contact URLs (`mailto:…`) for the account.
    pub contact: Vec<String>,
    /// How the CA checks that the tenant controls a name.
    pub challenge: AcmeChallenge,
    /// A CA certificate (PEM) to trust for the directory instead of the
    /// system roots (a test or private CA; only its first certificate).
    pub ca: Option<PathBuf>,
    /// Renew this long before expiry (with jitter).
    pub renew_before: Duration,
    /// Where `acme` is written.
    pub at: Location,
}

/// An ACME challenge type the tenant answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// RFC 8737: a handshake with ALPN `acme-tls/1` on the TLS port.
    TlsAlpn01,
    /// RFC 8555 §8.3: `GET /.well-known/acme-challenge/TOKEN` on port 80.
    Http01,
}

impl AcmeChallenge {
    /// The name in the tenant file and in ACME.
    pub fn name(self) -> &'static str {
        match self {
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
            AcmeChallenge::Http01 => "http-01",
        }
    }
}

/// Whether the file can be read as the TLS loader will read it: a regular file
/// of bounded size. Only the l7proxy (as the tenant's user) loads tenant files;
/// the splitter never does.
fn readable(path: &Path) -> std::io::Result<()> {
    crate::files::read_regular(path, crate::files::MAX_PEM_BYTES).map(drop)
}

/// A PEM file named at `value`, resolved against the tenant file and checked
/// to be readable (an error at `value` otherwise).
fn pem_path(src: &mut Source, value: &Spanned<String>, what: &str) -> PathBuf {
    let path = src.resolve(value.get_ref());
    if let Err(e) = readable(&path) {
        src.error(
            value.span(),
            format!("cannot read {what} {}: {e}", path.display()),
        );
    }
    path
}

/// The certificate source and policy of `raw`; problems are recorded in `src`.
pub(super) fn validate_tls(src: &mut Source, raw: &RawTls) -> (Option<TlsSource>, TlsPolicy) {
    let mut policy = TlsPolicy::default();
    if let Some(version) = &raw.min_version {
        match version.get_ref().as_str() {
            "1.2" => policy.min_version = TlsVersion::V12,
            "1.3" => policy.min_version = TlsVersion::V13,
            other => src.error(
                version.span(),
                format!("[tls] min_version = {other:?}: use \"1.2\" or \"1.3\""),
            ),
        }
    }
    if let Some(suites) = &raw.cipher_suites {
        policy.cipher_suites = suites.get_ref().clone();
        policy.cipher_suites_at = Some(src.locate(suites.span()));
    }
    if let Some(groups) = &raw.groups {
        policy.groups = groups.get_ref().clone();
        policy.groups_at = Some(src.locate(groups.span()));
    }
    if let Some(client_auth) = &raw.client_auth {
        match &client_auth.get_ref().ca {
            Some(ca) => {
                policy.client_auth = Some(ClientAuth {
                    ca: pem_path(src, ca, "the client CA"),
                    ca_at: src.locate(ca.span()),
                    required: client_auth.get_ref().required.unwrap_or(true),
                })
            }
            None => src.error(
                client_auth.span(),
                "[tls] client_auth needs ca = \"PATH\" (the CA certificates, PEM, that client certificates must chain to)",
            ),
        }
    }
    if let Some(tickets) = raw.session_tickets {
        policy.session_tickets = tickets;
    }
    let source = match (&raw.cert, &raw.key, raw.self_signed, &raw.acme) {
        (None, None, true, None) => Some(TlsSource::SelfSigned),
        (Some(cert), Some(key), false, None) => Some(TlsSource::Files {
            cert: pem_path(src, cert, "TLS certificate"),
            key: pem_path(src, key, "TLS key"),
            cert_at: src.locate(cert.span()),
            key_at: src.locate(key.span()),
        }),
        (None, None, false, Some(acme)) => validate_acme(src, acme).map(TlsSource::Acme),
        (_, _, _, Some(acme)) => {
            src.error(
                acme.span(),
                "[tls] sets acme and a cert/key or self_signed; choose one",
            );
            None
        }
        (_, _, true, None) => {
            src.error(
                0..0,
                "[tls] sets self_signed = true and a cert/key; choose one",
            );
            None
        }
        _ => {
            src.error(
                0..0,
                "[tls] needs both cert and key (or self_signed = true, or acme = { … })",
            );
            None
        }
    };
    (source, policy)
}

fn validate_acme(src: &mut Source, raw: &Spanned<RawAcme>) -> Option<AcmeConfig> {
    let at = src.locate(raw.span());
    let acme = raw.get_ref();
    let mut ok = true;
    let directory = match &acme.directory {
        Some(url) if url.get_ref().starts_with("https://") => url.get_ref().clone(),
        Some(url) => {
            src.error(
                url.span(),
                format!(
                    "[tls] acme.directory = {:?}: an ACME directory is an https:// URL",
                    url.get_ref()
                ),
            );
            ok = false;
            String::new()
        }
        None => {
            src.error(
                raw.span(),
                "[tls] acme needs directory = \"https://…\" (the CA's ACME directory URL)",
            );
            ok = false;
            String::new()
        }
    };
    for contact in &acme.contact {
        if !contact.get_ref().starts_with("mailto:") {
            src.error(
                contact.span(),
                format!(
                    "[tls] acme.contact {:?}: write contacts as \"mailto:ADDRESS\"",
                    contact.get_ref()
                ),
            );
            ok = false;
        }
    }
    let challenge = match acme.challenge.as_ref().map(|c| (c, c.get_ref().as_str())) {
        None | Some((_, "tls-alpn-01")) => AcmeChallenge::TlsAlpn01,
        Some((_, "http-01")) => AcmeChallenge::Http01,
        Some((c, "dns-01")) => {
            src.error(
                c.span(),
                "[tls] acme.challenge = \"dns-01\" is not supported: use \"tls-alpn-01\" or \"http-01\"",
            );
            ok = false;
            AcmeChallenge::TlsAlpn01
        }
        Some((c, other)) => {
            src.error(
                c.span(),
                format!("[tls] acme.challenge = {other:?}: use \"tls-alpn-01\" or \"http-01\""),
            );
            ok = false;
            AcmeChallenge::TlsAlpn01
        }
    };
    let ca = acme
        .ca
        .as_ref()
        .map(|ca| pem_path(src, ca, "the ACME directory's CA"));
    let mut renew_before = Duration::from_secs(30 * 86_400);
    if let Some(value) = &acme.renew_before {
        match crate::units::parse_duration(value.get_ref()) {
            Ok(d) if d >= Duration::from_secs(1) => renew_before = d,
            Ok(_) => {
                src.error(value.span(), "[tls] acme.renew_before must be at least 1s");
                ok = false;
            }
            Err(e) => {
                src.error(value.span(), format!("[tls] acme.renew_before: {e}"));
                ok = false;
            }
        }
    }
    ok.then(|| AcmeConfig {
        directory,
        contact: acme.contact.iter().map(|c| c.get_ref().clone()).collect(),
        challenge,
        ca,
        renew_before,
        at,
    })
}
