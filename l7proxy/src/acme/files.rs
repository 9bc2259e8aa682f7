//! The files the tenant's processes share under `acme/`: where they are,
//! how they are read (bounded, regular files only) and written (0600,
//! atomically).

use super::*;

/// The files of one tenant's ACME state.
pub(super) struct Paths {
    pub(super) acme: PathBuf,
    pub(super) account: PathBuf,
    pub(super) key: PathBuf,
    pub(super) cert: PathBuf,
    pub(super) lock: PathBuf,
    pub(super) retry: PathBuf,
    pub(super) http: PathBuf,
    pub(super) alpn: PathBuf,
}

impl Paths {
    pub(super) fn new(tenant_dir: &Path) -> Paths {
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
pub(super) struct StoredAccount {
    pub(super) directory: String,
    pub(super) credentials: AccountCredentials,
}

/// `account.json` as written.
#[derive(Serialize)]
pub(super) struct StoredAccountRef<'a> {
    pub(super) directory: &'a str,
    pub(super) credentials: &'a AccountCredentials,
}

/// Size, modification time and inode of a file: a new `cert.pem` changes at
/// least one of them.
pub(super) type Stamp = (u64, Option<SystemTime>, u64);

/// When a certificate starts and stops being valid (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Validity {
    pub(super) not_before: i64,
    pub(super) not_after: i64,
}

/// The removal of the challenge files an order wrote, when it is done
/// (issued, failed, or abandoned at its time limit).
pub(super) struct Posted(pub(super) Vec<PathBuf>);

impl Drop for Posted {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

pub(super) fn stamp(path: &Path) -> Option<Stamp> {
    fs::metadata(path)
        .ok()
        .map(|meta| (meta.len(), meta.modified().ok(), meta.ino()))
}

/// (chain, key) from `cert.pem` and `key.pem`; `None` when either is missing
/// or `cert.pem` was replaced while they were read.
pub(super) fn read_pair(paths: &Paths) -> Option<(Vec<u8>, Vec<u8>)> {
    let before = stamp(&paths.cert)?;
    // The key first: a writer replaces the key, then the chain.
    let key = read_regular(&paths.key, MAX_PEM_BYTES).ok()?;
    let cert = read_regular(&paths.cert, MAX_PEM_BYTES).ok()?;
    (stamp(&paths.cert)? == before && !key.is_empty() && !cert.is_empty()).then_some((cert, key))
}

/// The end-entity certificate's validity, and its expiry as logs show it.
pub(super) fn validity(chain_pem: &[u8]) -> Option<(Validity, String)> {
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
pub(super) fn read_retry(path: &Path) -> Option<(i64, Duration)> {
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
pub(super) fn make_dirs(paths: &Paths) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true).mode(0o700);
    builder.create(&paths.http)?;
    builder.create(&paths.alpn)?;
    fs::set_permissions(&paths.acme, fs::Permissions::from_mode(0o700))
}

pub(super) fn clear_dir(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Replaces `path` with `bytes` atomically: a 0600 temporary file beside it,
/// then a rename; with `durable`, the data and the directory are synced too.
pub(super) fn write_file(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
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

pub(super) fn write_then_rename(
    tmp: &Path,
    path: &Path,
    bytes: &[u8],
    durable: bool,
) -> io::Result<()> {
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
