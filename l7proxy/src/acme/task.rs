//! The ACME task: watches the certificate on disk, orders when renewal is
//! due (one process at a time, under the file lock), backs off on failure.

use super::*;

/// What a certificate order gave: PEM chain and PEM key.
pub(super) struct Issued {
    pub(super) chain: Vec<u8>,
    pub(super) key: Vec<u8>,
}

/// Why an order failed, and for which host when that is known.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) host: Option<String>,
    pub(super) error: String,
}

impl Failure {
    pub(super) fn all(error: impl fmt::Display) -> Failure {
        Failure {
            host: None,
            error: error.to_string(),
        }
    }

    pub(super) fn at(host: &str, error: impl fmt::Display) -> Failure {
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

/// The ACME task of one process.
pub(super) struct Task {
    pub(super) tenant: String,
    pub(super) config: AcmeConfig,
    pub(super) hosts: Vec<String>,
    pub(super) paths: Paths,
    pub(super) install: Install,
    pub(super) current_not_after: CurrentNotAfter,
    /// The account, once restored or created.
    pub(super) account: Option<Account>,
    /// `cert.pem` as last installed (or given up on).
    pub(super) seen: Option<Stamp>,
    /// How many times in a row the pair on disk was refused.
    pub(super) refused: u32,
    /// The jitter (seconds) chosen for the certificate expiring at `.0`.
    pub(super) jitter: Option<(i64, i64)>,
    /// The validity of the last certificate read from disk or issued.
    pub(super) lifetime: Option<Validity>,
    pub(super) lifetime_warned: bool,
    /// The last backoff after a failure; `None` after a success.
    pub(super) backoff: Option<Duration>,
    /// No order before this (a failure's backoff).
    pub(super) retry_at: Option<Instant>,
}

impl Task {
    pub(super) async fn run(mut self) {
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
    pub(super) fn adopt_stored(&mut self) {
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
    pub(super) fn watch(&mut self) {
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
    pub(super) fn due(&mut self) -> bool {
        match (self.current_not_after)() {
            None => true,
            Some(not_after) => unix_now() >= self.renew_at(not_after),
        }
    }

    /// When to renew the certificate expiring at `not_after`: `renew_before`
    /// earlier, less a jitter chosen once per certificate, so that the
    /// tenants of a host do not all renew in the same second.
    pub(super) fn renew_at(&mut self, not_after: i64) -> i64 {
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
    pub(super) fn ordering_lock(&self) -> Result<Option<File>, String> {
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
    pub(super) fn shared_backoff_pending(&mut self) -> bool {
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
    pub(super) async fn attempt(&mut self) {
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
    pub(super) fn failed(&mut self, failure: Failure, shared: bool) {
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
    pub(super) fn store_and_install(&mut self, issued: Issued) -> Result<String, Failure> {
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

    pub(super) fn builder(&self) -> Result<AccountBuilder, Failure> {
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
    pub(super) async fn account(&mut self) -> Result<Account, Failure> {
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
    pub(super) async fn new_account(&mut self) -> Result<Account, Failure> {
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
    pub(super) async fn order(&mut self) -> Result<Issued, Failure> {
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
pub(super) async fn why_invalid(order: &mut Order, what: String) -> Failure {
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

pub(super) fn account_gone(e: &AcmeError) -> bool {
    matches!(e, AcmeError::Api(problem) if problem.r#type.as_deref() == Some(ACCOUNT_GONE))
}

/// Polling: every half second at first, a little slower each time, up to `timeout`.
pub(super) fn poll_policy(timeout: Duration) -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(500))
        .backoff(1.25)
        .timeout(timeout)
}
