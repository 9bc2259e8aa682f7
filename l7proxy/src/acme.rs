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

/// Called with (chain PEM, key PEM) when a new certificate is on disk;
/// `Err(message)` refuses the pair.
pub type Install = Box<dyn Fn(&[u8], &[u8]) -> Result<(), String> + Send + Sync>;

/// The expiry (Unix seconds) of the certificate served now; `None` while the
/// placeholder is served.
pub type CurrentNotAfter = Box<dyn Fn() -> Option<i64> + Send + Sync>;

/// RFC 8737 certificates made, per (name, digest).
type AlpnCache = HashMap<(String, [u8; 32]), Arc<CertifiedKey>>;

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

/// The answers to the CA's pending challenges, read from the files the
/// ordering process writes, so that any process of the tenant answers any
/// challenge.
pub struct Challenges {
    /// `TENANT_DIR/acme/challenges`.
    dir: PathBuf,
    /// RFC 8737 certificates already made, per (name, digest): the CA checks
    /// from several places at once.
    certificates: Mutex<AlpnCache>,
}

impl Challenges {
    /// The challenges of the tenant whose runtime directory is `tenant_dir`.
    pub fn new(tenant_dir: &Path) -> Arc<Challenges> {
        Arc::new(Challenges {
            dir: tenant_dir.join(ACME_DIR).join(CHALLENGES_DIR),
            certificates: Mutex::new(HashMap::new()),
        })
    }

    /// The RFC 8737 certificate for `name` (a TLS server name, as the client
    /// sent it) while a `tls-alpn-01` challenge for it is pending; `None`
    /// otherwise, and for anything that is not a host name.
    pub fn tls_alpn_certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = host_name(name)?;
        let text =
            read_regular(&self.dir.join(TLS_ALPN_01).join(&name), MAX_CHALLENGE_BYTES).ok()?;
        let digest = unhex32(std::str::from_utf8(&text).ok()?.trim())?;
        let key = (name, digest);
        let cached = self.cache().get(&key).cloned();
        if cached.is_some() {
            return cached;
        }
        let certified = match alpn_certificate(&key.0, &key.1) {
            Ok(certified) => Arc::new(certified),
            Err(e) => {
                warn!(name = %key.0, error = %e, "cannot make the tls-alpn-01 certificate");
                return None;
            }
        };
        let mut cache = self.cache();
        if cache.len() >= ALPN_CACHE {
            cache.clear();
        }
        cache.insert(key, certified.clone());
        Some(certified)
    }

    /// The body to answer `GET /.well-known/acme-challenge/TOKEN` with while
    /// an `http-01` challenge with that token is pending; `None` otherwise,
    /// and for anything that is not a base64url token.
    pub fn http_response(&self, token: &str) -> Option<String> {
        if !valid_token(token) {
            return None;
        }
        let bytes = read_regular(&self.dir.join(HTTP_01).join(token), MAX_CHALLENGE_BYTES).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        // A key authorization is "TOKEN.THUMBPRINT".
        let answers_token = text
            .strip_prefix(token)
            .is_some_and(|rest| rest.starts_with('.'));
        answers_token.then_some(text)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, AlpnCache> {
        self.certificates.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl fmt::Debug for Challenges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Challenges")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
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
            // provider; make sure there is one (the tenant uses ring).
            let _ = rustls::crypto::ring::default_provider().install_default();
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

/// The files of one tenant's ACME state.
struct Paths {
    acme: PathBuf,
    account: PathBuf,
    key: PathBuf,
    cert: PathBuf,
    lock: PathBuf,
    retry: PathBuf,
    http: PathBuf,
    alpn: PathBuf,
}

impl Paths {
    fn new(tenant_dir: &Path) -> Paths {
        let acme = tenant_dir.join(ACME_DIR);
        let challenges = acme.join(CHALLENGES_DIR);
        Paths {
            account: acme.join("account.json"),
            key: acme.join("key.pem"),
            cert: acme.join("cert.pem"),
            lock: acme.join("lock"),
            retry: acme.join("retry"),
            http: challenges.join(HTTP_01),
            alpn: challenges.join(TLS_ALPN_01),
            acme,
        }
    }
}

/// `account.json` as read.
#[derive(Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// `account.json` as written.
#[derive(Serialize)]
struct StoredAccountRef<'a> {
    directory: &'a str,
    credentials: &'a AccountCredentials,
}

/// Size, modification time and inode of a file: a new `cert.pem` changes at
/// least one of them.
type Stamp = (u64, Option<SystemTime>, u64);

/// When a certificate starts and stops being valid (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Validity {
    not_before: i64,
    not_after: i64,
}

/// What a certificate order gave: PEM chain and PEM key.
struct Issued {
    chain: Vec<u8>,
    key: Vec<u8>,
}

/// Why an order failed, and for which host when that is known.
#[derive(Debug)]
struct Failure {
    host: Option<String>,
    error: String,
}

impl Failure {
    fn all(error: impl fmt::Display) -> Failure {
        Failure {
            host: None,
            error: error.to_string(),
        }
    }

    fn at(host: &str, error: impl fmt::Display) -> Failure {
        Failure {
            host: Some(host.to_string()),
            error: error.to_string(),
        }
    }
}

impl From<AcmeError> for Failure {
    fn from(e: AcmeError) -> Failure {
        // A problem about one identifier names it in a subproblem.
        let host = match &e {
            AcmeError::Api(problem) => {
                problem
                    .subproblems
                    .iter()
                    .find_map(|sub| match &sub.identifier {
                        Some(Identifier::Dns(name)) => Some(name.clone()),
                        _ => None,
                    })
            }
            _ => None,
        };
        Failure {
            host,
            error: e.to_string(),
        }
    }
}

/// The removal of the challenge files an order wrote, when it is done
/// (issued, failed, or abandoned at its time limit).
struct Posted(Vec<PathBuf>);

impl Drop for Posted {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

/// The ACME task of one process.
struct Task {
    tenant: String,
    config: AcmeConfig,
    hosts: Vec<String>,
    paths: Paths,
    install: Install,
    current_not_after: CurrentNotAfter,
    /// The account, once restored or created.
    account: Option<Account>,
    /// `cert.pem` as last installed (or given up on).
    seen: Option<Stamp>,
    /// How many times in a row the pair on disk was refused.
    refused: u32,
    /// The jitter (seconds) chosen for the certificate expiring at `.0`.
    jitter: Option<(i64, i64)>,
    /// The validity of the last certificate read from disk or issued.
    lifetime: Option<Validity>,
    lifetime_warned: bool,
    /// The last backoff after a failure; `None` after a success.
    backoff: Option<Duration>,
    /// No order before this (a failure's backoff).
    retry_at: Option<Instant>,
}

impl Task {
    async fn run(mut self) {
        if self.hosts.is_empty() {
            warn!(tenant = %self.tenant, "ACME has no host names to order a certificate for; the placeholder stays");
            return;
        }
        self.adopt_stored();
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.watch();
            if !self.due() || self.retry_at.is_some_and(|at| Instant::now() < at) {
                continue;
            }
            let lock = match self.ordering_lock() {
                Ok(Some(lock)) => lock,
                // Another process of the tenant is ordering: watch for its result.
                Ok(None) => continue,
                Err(e) => {
                    self.failed(Failure::all(e), false);
                    continue;
                }
            };
            // Another process may have renewed just before we got the lock.
            self.watch();
            if self.due() && !self.shared_backoff_pending() {
                self.attempt().await;
            }
            drop(lock);
        }
    }

    /// At start: when the certificate served is the one on disk (the caller
    /// installed [`stored_certificate`]), it is not installed again.
    fn adopt_stored(&mut self) {
        let (Some(served), Some(now)) = ((self.current_not_after)(), stamp(&self.paths.cert))
        else {
            return;
        };
        if let Some((valid, _)) = read_pair(&self.paths).and_then(|(cert, _)| validity(&cert)) {
            if valid.not_after == served {
                self.seen = Some(now);
                self.lifetime = Some(valid);
            }
        }
    }

    /// Installs a `cert.pem` another process of the tenant wrote.
    fn watch(&mut self) {
        let Some(now) = stamp(&self.paths.cert) else {
            return;
        };
        if self.seen == Some(now) {
            return;
        }
        // Being replaced while read: read again at the next tick.
        let Some((cert, key)) = read_pair(&self.paths) else {
            return;
        };
        let result = match validity(&cert) {
            Some((valid, shown)) => (self.install)(&cert, &key).map(|()| (valid, shown)),
            None => Err("the certificate does not parse".to_string()),
        };
        match result {
            Ok((valid, shown)) => {
                self.seen = Some(now);
                self.refused = 0;
                self.lifetime = Some(valid);
                self.backoff = None;
                self.retry_at = None;
                info!(tenant = %self.tenant, not_after = %shown, "ACME certificate ordered by another process of the tenant; new handshakes use it");
            }
            Err(e) => {
                // Key and chain may have been caught between their renames:
                // a few more looks before giving up on this file.
                self.refused += 1;
                if self.refused >= 3 {
                    self.seen = Some(now);
                    self.refused = 0;
                    warn!(tenant = %self.tenant, file = %self.paths.cert.display(), error = %e, "the ACME certificate on disk is refused; the current certificate stays");
                }
            }
        }
    }

    /// Whether a certificate should be ordered now.
    fn due(&mut self) -> bool {
        match (self.current_not_after)() {
            None => true,
            Some(not_after) => unix_now() >= self.renew_at(not_after),
        }
    }

    /// When to renew the certificate expiring at `not_after`: `renew_before`
    /// earlier, less a jitter chosen once per certificate, so that the
    /// tenants of a host do not all renew in the same second.
    fn renew_at(&mut self, not_after: i64) -> i64 {
        let jitter = match self.jitter {
            Some((at, jitter)) if at == not_after => jitter,
            _ => {
                let most = (self.config.renew_before / 10).min(MAX_JITTER).as_secs();
                let jitter = i64::try_from(rand::thread_rng().gen_range(0..=most)).unwrap_or(0);
                self.jitter = Some((not_after, jitter));
                jitter
            }
        };
        let renew_before = i64::try_from(self.config.renew_before.as_secs()).unwrap_or(i64::MAX);
        let at = not_after
            .saturating_sub(renew_before)
            .saturating_sub(jitter);
        match self.lifetime {
            // A certificate due as soon as issued would be ordered again and
            // again: renew it after two thirds of its life instead.
            Some(life) if life.not_after == not_after && at <= life.not_before => {
                if !self.lifetime_warned {
                    self.lifetime_warned = true;
                    warn!(tenant = %self.tenant, renew_before = ?self.config.renew_before, lifetime_seconds = life.not_after - life.not_before, "[tls] acme.renew_before is longer than the CA's certificates live; renewing after two thirds of their life instead");
                }
                life.not_before + (life.not_after - life.not_before) * 2 / 3
            }
            _ => at,
        }
    }

    /// The tenant's ordering lock, if no other process holds it.
    fn ordering_lock(&self) -> Result<Option<File>, String> {
        make_dirs(&self.paths)
            .map_err(|e| format!("cannot create {}: {e}", self.paths.acme.display()))?;
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.paths.lock)
            .map_err(|e| format!("cannot open {}: {e}", self.paths.lock.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => {
                Err(format!("cannot lock {}: {e}", self.paths.lock.display()))
            }
        }
    }

    /// Whether another process's failure asks to wait still (read under the lock).
    fn shared_backoff_pending(&mut self) -> bool {
        let Some((not_before, _)) = read_retry(&self.paths.retry) else {
            return false;
        };
        let wait = not_before - unix_now();
        if wait <= 0 {
            return false;
        }
        self.retry_at = Some(Instant::now() + Duration::from_secs(wait.unsigned_abs()));
        true
    }

    /// One order, bounded in time, then the files and `install`.
    async fn attempt(&mut self) {
        info!(tenant = %self.tenant, hosts = ?self.hosts, directory = %self.config.directory, challenge = self.config.challenge.name(), "ordering an ACME certificate");
        let ordered = match tokio::time::timeout(ORDER_TIMEOUT, self.order()).await {
            Ok(result) => result,
            Err(_) => Err(Failure::all(format!(
                "the order did not complete within {ORDER_TIMEOUT:?}; abandoned"
            ))),
        };
        match ordered.and_then(|issued| self.store_and_install(issued)) {
            Ok(shown) => {
                self.backoff = None;
                self.retry_at = None;
                let _ = fs::remove_file(&self.paths.retry);
                info!(tenant = %self.tenant, hosts = ?self.hosts, not_after = %shown, "ACME certificate issued; new handshakes use it");
            }
            Err(failure) => self.failed(failure, true),
        }
    }

    /// Logs a failure and sets the next attempt: [`FIRST_RETRY`], then twice
    /// the last wait, up to [`MAX_RETRY`]. With `shared` (under the lock), the
    /// wait is recorded for the tenant's other processes too.
    fn failed(&mut self, failure: Failure, shared: bool) {
        let previous = match shared {
            true => read_retry(&self.paths.retry)
                .map(|(_, backoff)| backoff)
                .or(self.backoff),
            false => self.backoff,
        };
        let backoff = previous.map_or(FIRST_RETRY, |last| (last * 2).min(MAX_RETRY));
        self.backoff = Some(backoff);
        self.retry_at = Some(Instant::now() + backoff);
        if shared {
            let not_before = unix_now().saturating_add_unsigned(backoff.as_secs());
            let text = format!("{not_before} {}\n", backoff.as_secs());
            if let Err(e) = write_file(&self.paths.retry, text.as_bytes(), false) {
                warn!(tenant = %self.tenant, file = %self.paths.retry.display(), error = %e, "cannot record when to retry the ACME order for the tenant's other processes");
            }
        }
        let host = failure.host.unwrap_or_else(|| self.hosts.join(", "));
        warn!(tenant = %self.tenant, host = %host, error = %failure.error, "ACME order failed; the current certificate stays; retrying in {backoff:?}");
    }

    /// Writes the new pair (key first) and installs it; the certificate's
    /// expiry, as shown in logs.
    fn store_and_install(&mut self, issued: Issued) -> Result<String, Failure> {
        let (valid, shown) = validity(&issued.chain)
            .ok_or_else(|| Failure::all("the certificate chain the CA sent does not parse"))?;
        let written = write_file(&self.paths.key, &issued.key, true)
            .and_then(|()| write_file(&self.paths.cert, &issued.chain, true));
        match written {
            Ok(()) => {
                self.seen = stamp(&self.paths.cert);
                self.refused = 0;
            }
            Err(e) => {
                warn!(tenant = %self.tenant, dir = %self.paths.acme.display(), error = %e, "cannot save the ACME certificate: this process serves it, but the tenant's other processes and the next start cannot");
            }
        }
        self.lifetime = Some(valid);
        (self.install)(&issued.chain, &issued.key)
            .map_err(|e| Failure::all(format!("the issued certificate was refused: {e}")))?;
        Ok(shown)
    }

    fn builder(&self) -> Result<AccountBuilder, Failure> {
        let built = match &self.config.ca {
            Some(ca) => Account::builder_with_root(ca),
            None => Account::builder(),
        };
        built.map_err(|e| {
            Failure::all(format!(
                "cannot set up the HTTPS client for {}: {e}",
                self.config.directory
            ))
        })
    }

    /// The account: kept, restored from `account.json`, or created.
    async fn account(&mut self) -> Result<Account, Failure> {
        if let Some(account) = &self.account {
            return Ok(account.clone());
        }
        let stored = read_regular(&self.paths.account, MAX_PEM_BYTES)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<StoredAccount>(&bytes).ok())
            .filter(|stored| stored.directory == self.config.directory);
        let account = match stored {
            Some(stored) => match self.builder()?.from_credentials(stored.credentials).await {
                Ok(account) => account,
                Err(e @ (AcmeError::KeyRejected | AcmeError::Crypto | AcmeError::Str(_))) => {
                    warn!(tenant = %self.tenant, file = %self.paths.account.display(), error = %e, "the stored ACME account is unusable; creating a new one");
                    self.new_account().await?
                }
                Err(e) => return Err(e.into()),
            },
            None => self.new_account().await?,
        };
        self.account = Some(account.clone());
        Ok(account)
    }

    /// Creates an account on the directory and saves it in `account.json`.
    async fn new_account(&mut self) -> Result<Account, Failure> {
        let contacts: Vec<&str> = self.config.contact.iter().map(String::as_str).collect();
        let (account, credentials) = self
            .builder()?
            .create(
                &NewAccount {
                    contact: contacts.as_slice(),
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.config.directory.clone(),
                None,
            )
            .await?;
        let saved = serde_json::to_vec_pretty(&StoredAccountRef {
            directory: &self.config.directory,
            credentials: &credentials,
        })
        .map_err(io::Error::other)
        .and_then(|bytes| write_file(&self.paths.account, &bytes, true));
        match saved {
            Ok(()) => {
                info!(tenant = %self.tenant, directory = %self.config.directory, account = %account.id(), "ACME account created")
            }
            Err(e) => {
                warn!(tenant = %self.tenant, file = %self.paths.account.display(), error = %e, "cannot save the new ACME account; the next start creates another")
            }
        }
        self.account = Some(account.clone());
        Ok(account)
    }

    /// One order for every host: challenges answered through the files,
    /// validated, finalized (the key is made here), and the chain fetched.
    async fn order(&mut self) -> Result<Issued, Failure> {
        let account = self.account().await?;
        let identifiers: Vec<Identifier> = self
            .hosts
            .iter()
            .map(|host| Identifier::Dns(host.clone()))
            .collect();
        let mut order = match account.new_order(&NewOrder::new(&identifiers)).await {
            Ok(order) => order,
            Err(e) if account_gone(&e) => {
                // The CA lost its state (pebble keeps none across runs).
                warn!(tenant = %self.tenant, directory = %self.config.directory, "the ACME CA does not know the stored account; creating a new one");
                self.account = None;
                let account = self.new_account().await?;
                account.new_order(&NewOrder::new(&identifiers)).await?
            }
            Err(e) => return Err(e.into()),
        };
        let kind = match self.config.challenge {
            AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            AcmeChallenge::Http01 => ChallengeType::Http01,
        };
        // Answers a crashed process left behind are for orders long gone.
        clear_dir(&self.paths.http);
        clear_dir(&self.paths.alpn);
        let mut posted = Posted(Vec::new());
        let mut authorizations = order.authorizations();
        while let Some(result) = authorizations.next().await {
            let mut authz = result?;
            let name = authz.identifier().to_string();
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                status => {
                    return Err(Failure::at(
                        &name,
                        format!("the CA reports the authorization as {status:?}"),
                    ))
                }
            }
            let mut challenge = authz.challenge(kind.clone()).ok_or_else(|| {
                Failure::at(
                    &name,
                    format!(
                        "the CA offers no {} challenge",
                        self.config.challenge.name()
                    ),
                )
            })?;
            let answer = challenge.key_authorization();
            let (path, content) = match self.config.challenge {
                AcmeChallenge::Http01 => {
                    if !valid_token(&challenge.token) {
                        return Err(Failure::at(
                            &name,
                            "the CA's challenge token is not base64url; refused",
                        ));
                    }
                    (
                        self.paths.http.join(&challenge.token),
                        answer.as_str().to_string(),
                    )
                }
                AcmeChallenge::TlsAlpn01 => {
                    let Some(file) = host_name(&name) else {
                        return Err(Failure::at(
                            &name,
                            "the CA's identifier is not a host name; refused",
                        ));
                    };
                    (self.paths.alpn.join(file), hex(answer.digest().as_ref()))
                }
            };
            posted.0.push(path.clone());
            write_file(&path, content.as_bytes(), false).map_err(|e| {
                Failure::at(
                    &name,
                    format!("cannot write the challenge answer {}: {e}", path.display()),
                )
            })?;
            challenge
                .set_ready()
                .await
                .map_err(|e| Failure::at(&name, e))?;
        }
        let status = order.poll_ready(&poll_policy(POLL_READY)).await;
        drop(posted);
        match status {
            Ok(OrderStatus::Ready) => {}
            Ok(status) => {
                return Err(why_invalid(&mut order, format!("the order is {status:?}")).await)
            }
            Err(e) => return Err(why_invalid(&mut order, e.to_string()).await),
        }
        let key = order.finalize().await?;
        let chain = order
            .poll_certificate(&poll_policy(POLL_CERTIFICATE))
            .await?;
        Ok(Issued {
            chain: chain.into_bytes(),
            key: key.into_bytes(),
        })
    }
}

/// The failure of an order that did not become ready: the first invalid
/// authorization's host and its challenge's error, when the CA gives them.
async fn why_invalid(order: &mut Order, what: String) -> Failure {
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        if authz.status != AuthorizationStatus::Invalid {
            continue;
        }
        let name = authz.identifier().to_string();
        let detail = authz
            .challenges
            .iter()
            .find_map(|challenge| challenge.error.as_ref())
            .map_or_else(
                || "the CA refused the authorization".to_string(),
                |problem| problem.to_string(),
            );
        return Failure::at(&name, format!("{what}: {detail}"));
    }
    Failure::all(what)
}

fn account_gone(e: &AcmeError) -> bool {
    matches!(e, AcmeError::Api(problem) if problem.r#type.as_deref() == Some(ACCOUNT_GONE))
}

/// Polling: every half second at first, a little slower each time, up to `timeout`.
fn poll_policy(timeout: Duration) -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(500))
        .backoff(1.25)
        .timeout(timeout)
}

/// The RFC 8737 certificate for `name`: self-signed, naming only `name`, with
/// the critical acmeIdentifier extension holding `digest`.
fn alpn_certificate(name: &str, digest: &[u8; 32]) -> Result<CertifiedKey, String> {
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing_key))
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

/// Whether `token` is 1 to 128 base64url characters (RFC 8555 §8.3).
fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// 64 hex digits as 32 bytes.
fn unhex32(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        *byte = u8::try_from(high * 16 + low).ok()?;
    }
    Some(out)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn stamp(path: &Path) -> Option<Stamp> {
    fs::metadata(path)
        .ok()
        .map(|meta| (meta.len(), meta.modified().ok(), meta.ino()))
}

/// (chain, key) from `cert.pem` and `key.pem`; `None` when either is missing
/// or `cert.pem` was replaced while they were read.
fn read_pair(paths: &Paths) -> Option<(Vec<u8>, Vec<u8>)> {
    let before = stamp(&paths.cert)?;
    // The key first: a writer replaces the key, then the chain.
    let key = read_regular(&paths.key, MAX_PEM_BYTES).ok()?;
    let cert = read_regular(&paths.cert, MAX_PEM_BYTES).ok()?;
    (stamp(&paths.cert)? == before && !key.is_empty() && !cert.is_empty()).then_some((cert, key))
}

/// The end-entity certificate's validity, and its expiry as logs show it.
fn validity(chain_pem: &[u8]) -> Option<(Validity, String)> {
    let der: CertificateDer<'static> = CertificateDer::pem_slice_iter(chain_pem).next()?.ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let period = cert.validity();
    Some((
        Validity {
            not_before: period.not_before.timestamp(),
            not_after: period.not_after.timestamp(),
        },
        period.not_after.to_string(),
    ))
}

/// `retry`: (not before, Unix seconds; the backoff that set it), bounded so
/// that a damaged file cannot stop orders for longer than [`MAX_RETRY`].
fn read_retry(path: &Path) -> Option<(i64, Duration)> {
    let bytes = read_regular(path, MAX_CHALLENGE_BYTES).ok()?;
    let text = std::str::from_utf8(&bytes).ok()?;
    let mut fields = text.split_whitespace();
    let not_before: i64 = fields.next()?.parse().ok()?;
    let backoff: u64 = fields.next()?.parse().ok()?;
    let latest = unix_now().saturating_add_unsigned(MAX_RETRY.as_secs());
    Some((
        not_before.min(latest),
        Duration::from_secs(backoff).min(MAX_RETRY),
    ))
}

/// `acme/` and its challenge directories, owner-only.
fn make_dirs(paths: &Paths) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true).mode(0o700);
    builder.create(&paths.http)?;
    builder.create(&paths.alpn)?;
    fs::set_permissions(&paths.acme, fs::Permissions::from_mode(0o700))
}

fn clear_dir(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Replaces `path` with `bytes` atomically: a 0600 temporary file beside it,
/// then a rename; with `durable`, the data and the directory are synced too.
fn write_file(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("file");
    // A leading dot: never a host name or a token, so never read as an answer.
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = write_then_rename(&tmp, path, bytes, durable);
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
        return written;
    }
    if durable {
        if let Some(dir) = path.parent() {
            let _ = File::open(dir).and_then(|dir| dir.sync_all());
        }
    }
    Ok(())
}

fn write_then_rename(tmp: &Path, path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)?;
    // A left-over temporary file keeps its mode through open: set it.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    if durable {
        file.sync_all()?;
    }
    fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
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
