//! ACME (RFC 8555) inside the tenant's own process: it orders a certificate
//! for the tenant's host names from the CA named in `[tls] acme`, answers the
//! CA's `tls-alpn-01` (RFC 8737) or `http-01` challenges itself, and renews
//! before expiry. Until the first certificate is issued the tenant serves its
//! placeholder; a failed order leaves the certificate in use in place.
//!
//! A tenant may run several processes, and the splitter hands connections to
//! them in turn, so the CA's validation may reach any of them. Everything is
//! therefore shared through files in the tenant's runtime directory
//! (`tenants/NAME/`), under `acme/`:
//!
//! | file | holds | written by |
//! | --- | --- | --- |
//! | `account.json` | `{ "directory": URL, "credentials": … }`: the ACME account; another directory URL makes a new account | the ordering process |
//! | `key.pem`, `cert.pem` | the key and chain in use, each replaced atomically (temporary file, `fsync`, rename; key first) | the ordering process; every process watches `cert.pem` |
//! | `challenges/http-01/TOKEN` | the key authorization, while that challenge is pending | the ordering process; any process answers |
//! | `challenges/tls-alpn-01/NAME` | the key authorization's SHA-256 digest in hex, while pending | the ordering process; any process answers |
//! | `lock` | an exclusive `flock`, held by the one process that orders | — |
//! | `retry` | after a failure, when the next order may start and the backoff: shared, so several processes do not multiply the load on the CA | the ordering process |
//!
//! Who can reach them: the tenant's user only. `acme/` and its subdirectories
//! are 0700 and every file 0600; the tenant's processes run as that user.
//! What a client sends reaches the file system only after validation: an
//! `http-01` token must be 1 to 128 base64url characters, a TLS server name a
//! host name (letters, digits, `-` and `.`), so neither can name another file.
//!
//! The task runs on a thread of its own with a current-thread runtime; every
//! order is bounded by [`ORDER_TIMEOUT`]. Request paths only read the small
//! challenge files ([`Challenges`]) and never wait for the task.
//!
//! With `ca = PATH`, the HTTPS client for the directory trusts that CA (the
//! first certificate in the file) instead of the system's roots: this is what
//! `instant-acme` offers.

use instant_acme::{
    Account, AccountBuilder, AccountCredentials, AuthorizationStatus, ChallengeType,
    Error as AcmeError, Identifier, NewAccount, NewOrder, Order, OrderStatus, RetryPolicy,
};
use rand::Rng;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use switchyard_shared::config::{AcmeChallenge, AcmeConfig};
use switchyard_shared::files::{read_regular, MAX_PEM_BYTES};
use switchyard_shared::host::{HostPattern, MAX_HOST_LEN};
use tracing::{error, info, warn};

/// The wait after a first failed order; each further failure doubles it, up
/// to [`MAX_RETRY`]. A success starts again from here.
const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The longest wait between two orders after failures.
const MAX_RETRY: Duration = Duration::from_secs(3600);
/// The most one order may take, from the directory to the certificate.
const ORDER_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the CA may take to validate every challenge.
const POLL_READY: Duration = Duration::from_secs(60);
/// How long the CA may take to issue once the order is finalized.
const POLL_CERTIFICATE: Duration = Duration::from_secs(30);
/// How often the task looks at the clock and at `cert.pem`.
const TICK: Duration = Duration::from_secs(1);
/// The most jitter taken off the renewal time.
const MAX_JITTER: Duration = Duration::from_secs(3600);
/// tls-alpn-01 certificates kept ready, per (name, digest).
const ALPN_CACHE: usize = 64;
/// The most a challenge file may hold.
const MAX_CHALLENGE_BYTES: u64 = 1024;
/// The longest `http-01` token accepted.
const MAX_TOKEN_LEN: usize = 128;
/// The ACME problem type of an account the CA does not know (any more).
const ACCOUNT_GONE: &str = "urn:ietf:params:acme:error:accountDoesNotExist";

const ACME_DIR: &str = "acme";
const CHALLENGES_DIR: &str = "challenges";
const HTTP_01: &str = "http-01";
const TLS_ALPN_01: &str = "tls-alpn-01";

mod challenges;
mod files;
mod task;

pub use challenges::Challenges;
use challenges::{hex, valid_token};
use files::*;
use task::*;

/// Called with (chain PEM, key PEM) when a new certificate is on disk;
/// `Err(message)` refuses the pair.
pub type Install = Box<dyn Fn(&[u8], &[u8]) -> Result<(), String> + Send + Sync>;

/// The expiry (Unix seconds) of the certificate served now; `None` while the
/// placeholder is served.
pub type CurrentNotAfter = Box<dyn Fn() -> Option<i64> + Send + Sync>;

/// Checks that ACME can serve `hosts`: every problem, located at the `acme`
/// key, as `FILE:LINE:COL: message` lines. A wildcard cannot be ordered
/// without DNS-01, which a tenant cannot answer; neither can an IP address or
/// a name a CA does not issue for.
pub fn check(config: &AcmeConfig, hosts: &[HostPattern]) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    if hosts.is_empty() {
        errors.push(
            config
                .at
                .error("[tls] acme: the tenant has no host names to order a certificate for")
                .to_string(),
        );
    }
    for host in hosts {
        let problem = match host {
            HostPattern::Wildcard(_) => Some(format!(
                "[tls] acme cannot cover the wildcard host {host}: a CA issues wildcards only with DNS-01 challenges, which the tenant cannot answer; list the names, or use cert/key files"
            )),
            HostPattern::Exact(name) if name.parse::<std::net::IpAddr>().is_ok() => Some(format!(
                "[tls] acme cannot cover the host {name}: it is an IP address; ACME orders here are for DNS names (use cert/key files)"
            )),
            HostPattern::Exact(name) if host_name(name).as_deref() != Some(name.as_str()) => {
                Some(format!(
                    "[tls] acme cannot cover the host {name}: a CA issues only for names of letters, digits, '-' and '.'"
                ))
            }
            HostPattern::Exact(_) => None,
        };
        if let Some(problem) = problem {
            errors.push(config.at.error(problem).to_string());
        }
    }
    match errors.is_empty() {
        true => Ok(()),
        false => Err(errors),
    }
}

/// The certificate ACME left on disk for the tenant whose runtime directory is
/// `tenant_dir`, as (chain PEM, key PEM), if there is one: read at start so a
/// restarted process serves the last certificate at once.
pub fn stored_certificate(tenant_dir: &Path) -> Option<(Vec<u8>, Vec<u8>)> {
    read_pair(&Paths::new(tenant_dir))
}

/// Starts the ACME task on a thread of its own and returns at once.
///
/// `install` is called with (chain PEM, key PEM) whenever a new certificate
/// is on disk, ordered by this process or by another one of the tenant; it
/// returns `Err(message)` when it refuses the pair (then the task logs it and
/// treats it as a failed order). `current_not_after` gives the expiry (Unix
/// seconds) of the certificate served now, `None` while the placeholder is.
pub fn start(
    tenant: String,
    config: AcmeConfig,
    hosts: Vec<String>,
    tenant_dir: PathBuf,
    install: Install,
    current_not_after: CurrentNotAfter,
) {
    let name = tenant.clone();
    let spawned = std::thread::Builder::new()
        .name("acme".into())
        .spawn(move || {
            // instant-acme's HTTPS client takes the process's default
            // provider; make sure there is one.
            crate::tls::install_crypto_provider();
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    error!(tenant = %tenant, error = %e, "cannot start the ACME task; the current certificate stays and is not renewed");
                    return;
                }
            };
            let task = Task {
                paths: Paths::new(&tenant_dir),
                tenant,
                config,
                hosts,
                install,
                current_not_after,
                account: None,
                seen: None,
                refused: 0,
                jitter: None,
                lifetime: None,
                lifetime_warned: false,
                backoff: None,
                retry_at: None,
            };
            runtime.block_on(task.run());
        });
    if let Err(e) = spawned {
        error!(tenant = %name, error = %e, "cannot start the ACME thread; the current certificate stays and is not renewed");
    }
}

/// `raw` as a host name a CA issues for, lower case and without a trailing
/// dot; `None` unless it has only letters, digits, `-` and `.`, in labels of
/// 1 to 63 characters, 253 at most in all (so it is never `.`, `..` or a path).
fn host_name(raw: &str) -> Option<String> {
    let name = raw.strip_suffix('.').unwrap_or(raw).to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.len() <= MAX_HOST_LEN
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    valid.then_some(name)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::challenges::unhex32;
    use super::*;
    use switchyard_shared::config::Location;

    fn config() -> AcmeConfig {
        AcmeConfig {
            directory: "https://ca.test/dir".into(),
            contact: Vec::new(),
            challenge: AcmeChallenge::TlsAlpn01,
            ca: None,
            renew_before: Duration::from_secs(30 * 86_400),
            at: Location {
                file: PathBuf::from("t.toml"),
                line: 2,
                column: 8,
            },
        }
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sy-acme-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn check_refuses_wildcards_and_ip_addresses_where_acme_is_written() {
        let hosts = [
            HostPattern::parse("shop.test").unwrap(),
            HostPattern::parse("*.shop.test").unwrap(),
            HostPattern::parse("127.0.0.1").unwrap(),
        ];
        let errors = check(&config(), &hosts).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("t.toml:2:8: "), "{errors:?}");
        assert!(
            errors[0].contains("wildcard host *.shop.test"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("127.0.0.1: it is an IP address"),
            "{errors:?}"
        );
        assert!(check(&config(), &hosts[..1]).is_ok());
    }

    #[test]
    fn only_host_names_and_base64url_tokens_reach_the_file_system() {
        assert_eq!(host_name("Shop.Test.").as_deref(), Some("shop.test"));
        for bad in [
            "", ".", "..", "../etc", "a/b", "a..b", "a_b.test", "a b", "é.test",
        ] {
            assert_eq!(host_name(bad), None, "{bad:?}");
        }
        assert!(valid_token("aB3-_x"));
        let long = "x".repeat(129);
        for bad in ["", ".", "..", "a.b", "a/b", "a b", long.as_str()] {
            assert!(!valid_token(bad), "{bad:?}");
        }
    }

    #[test]
    fn hex_round_trips() {
        let digest: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37)).collect();
        let text = hex(&digest);
        assert_eq!(text.len(), 64);
        assert_eq!(unhex32(&text).unwrap().to_vec(), digest);
        assert_eq!(unhex32(&text[..62]), None);
        assert_eq!(unhex32(&text.replace('a', "g")), None);
    }

    #[test]
    fn challenges_are_answered_from_the_files() {
        let dir = scratch("challenges");
        let paths = Paths::new(&dir);
        make_dirs(&paths).unwrap();
        let challenges = Challenges::new(&dir);

        assert_eq!(challenges.http_response("tok-1"), None);
        write_file(&paths.http.join("tok-1"), b"tok-1.thumb", false).unwrap();
        assert_eq!(
            challenges.http_response("tok-1").as_deref(),
            Some("tok-1.thumb")
        );
        assert_eq!(challenges.http_response("../tok-1"), None);
        // A file that does not answer its token is not served.
        write_file(&paths.http.join("tok-2"), b"other.thumb", false).unwrap();
        assert_eq!(challenges.http_response("tok-2"), None);

        assert!(challenges.tls_alpn_certificate("shop.test").is_none());
        let digest = [7u8; 32];
        write_file(
            &paths.alpn.join("shop.test"),
            hex(&digest).as_bytes(),
            false,
        )
        .unwrap();
        let first = challenges.tls_alpn_certificate("SHOP.test.").unwrap();
        let again = challenges.tls_alpn_certificate("shop.test").unwrap();
        assert!(Arc::ptr_eq(&first, &again), "made once, then cached");
        let (_, cert) = x509_parser::parse_x509_certificate(first.cert[0].as_ref()).unwrap();
        let acme = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("the acmeIdentifier extension");
        assert!(acme.critical);
        assert!(acme.value.ends_with(&digest));
        // Removed when the order is done: no longer answered.
        fs::remove_file(paths.alpn.join("shop.test")).unwrap();
        assert!(challenges.tls_alpn_certificate("shop.test").is_none());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn files_are_written_owner_only_and_read_as_a_pair() {
        let dir = scratch("files");
        let paths = Paths::new(&dir);
        make_dirs(&paths).unwrap();
        assert_eq!(stored_certificate(&dir), None);
        write_file(&paths.key, b"KEY", true).unwrap();
        write_file(&paths.cert, b"CERT", true).unwrap();
        assert_eq!(
            stored_certificate(&dir),
            Some((b"CERT".to_vec(), b"KEY".to_vec()))
        );
        for path in [&paths.key, &paths.cert] {
            let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        let mode = fs::metadata(&paths.acme).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_retry_file_delays_an_hour_at_most() {
        let dir = scratch("retry");
        let path = dir.join("retry");
        fs::write(&path, format!("{} 999999\n", i64::MAX)).unwrap();
        let (not_before, backoff) = read_retry(&path).unwrap();
        assert!(not_before <= unix_now() + 3600);
        assert_eq!(backoff, MAX_RETRY);
        fs::write(&path, "garbage").unwrap();
        assert_eq!(read_retry(&path), None);
        let _ = fs::remove_dir_all(&dir);
    }
}
