//! TLS session tickets that every process of a tenant can open, so a client
//! resumes its session whichever process the splitter hands it to.
//!
//! The ticket key changes every [`ROTATE_EVERY`] by a one-way ratchet (the
//! next key is an HMAC of the current one): every process derives the same
//! key for the same hour without talking to the others, and a key once
//! ratcheted past cannot be recovered from the newer ones. The tenant's
//! runtime directory keeps only the previous hour's key in [`KEY_FILE`]
//! (0600, the tenant's user), so a process that starts later joins the same
//! schedule; each process rewrites it when the hour turns. Tickets are
//! AES-256-GCM with a random nonce; one from the current or the previous
//! hour is accepted, anything else means a full handshake.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::warn;

/// How long one ticket key encrypts new tickets (tickets are accepted for up
/// to twice this).
pub const ROTATE_EVERY: Duration = Duration::from_secs(3600);

/// The key file in the tenant's runtime directory.
pub const KEY_FILE: &str = "tls-tickets.key";

/// Bytes of a key file: the hour's number (big-endian u64), then its key.
const FILE_LEN: usize = 8 + 32;

/// The tenant's shared ticket keys.
pub struct SharedTickets {
    path: PathBuf,
    random: SystemRandom,
    keys: Mutex<Keys>,
}

impl std::fmt::Debug for SharedTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTickets")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The keys of the current hour and the one before.
struct Keys {
    epoch: u64,
    current: [u8; 32],
    previous: [u8; 32],
}

fn epoch_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        / ROTATE_EVERY.as_secs()
}

/// The key of the hour after `key`'s.
fn ratchet(key: &[u8; 32]) -> [u8; 32] {
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, key),
        b"switchyard session ticket key: next hour",
    );
    let mut next = [0u8; 32];
    next.copy_from_slice(tag.as_ref());
    next
}

impl Keys {
    /// The keys of `epoch`, from `key` of an earlier (or the same) `from`.
    fn from_file(from: u64, key: [u8; 32], epoch: u64) -> Keys {
        let mut keys = Keys {
            epoch: from,
            current: key,
            previous: [0; 32],
        };
        keys.advance_to(epoch);
        keys
    }

    /// Ratchets forward to `epoch` (never back).
    fn advance_to(&mut self, epoch: u64) {
        // A process asleep for years catches up in bounded steps.
        let steps = epoch.saturating_sub(self.epoch).min(100_000);
        for _ in 0..steps {
            self.previous = self.current;
            self.current = ratchet(&self.current);
        }
        self.epoch = self.epoch.max(epoch);
    }
}

impl SharedTickets {
    /// The tenant's ticket keys from `tenant_dir` (created there, 0600, by
    /// the first process that finds none).
    pub fn open(tenant_dir: &Path) -> std::io::Result<SharedTickets> {
        let path = tenant_dir.join(KEY_FILE);
        let random = SystemRandom::new();
        let now = epoch_now();
        let (from, key) = match read_key_file(&path)? {
            Some(found) => found,
            None => {
                let mut key = [0u8; 32];
                random
                    .fill(&mut key)
                    .map_err(|_| std::io::Error::other("no random bytes for a ticket key"))?;
                let from = now.saturating_sub(1);
                create_key_file(&path, from, &key)?;
                // Another process may have won the race: use its key.
                read_key_file(&path)?.unwrap_or((from, key))
            }
        };
        let keys = Keys::from_file(from, key, now);
        let tickets = SharedTickets {
            path,
            random,
            keys: Mutex::new(keys),
        };
        if from + 1 < now {
            tickets.save(now);
        }
        Ok(tickets)
    }

    /// The keys now, ratcheted forward (and the file rewritten) when the hour
    /// has turned.
    fn with_keys<T>(&self, use_keys: impl FnOnce(&Keys) -> T) -> T {
        let now = epoch_now();
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.epoch < now {
            keys.advance_to(now);
            let previous = keys.previous;
            drop(keys);
            self.write_previous(now, &previous);
            keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        }
        use_keys(&keys)
    }

    fn save(&self, now: u64) {
        let previous = self.keys.lock().unwrap_or_else(|p| p.into_inner()).previous;
        self.write_previous(now, &previous);
    }

    /// Replaces the file with the previous hour's key (the one a process
    /// starting now needs); every process writes the same bytes.
    fn write_previous(&self, now: u64, previous: &[u8; 32]) {
        let tmp = self
            .path
            .with_extension(format!("key.{}", std::process::id()));
        let written = write_new(&tmp, now.saturating_sub(1), previous)
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            warn!(path = %self.path.display(), error = %e, "cannot rewrite the session ticket key file; processes started later will not resume sessions of this one");
        }
    }
}

fn aead_key(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte AES-256 key"))
}

impl rustls::server::ProducesTickets for SharedTickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        ROTATE_EVERY.as_secs() as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let (epoch, key) = self.with_keys(|keys| (keys.epoch, aead_key(&keys.current)));
        let mut ticket = Vec::with_capacity(8 + NONCE_LEN + plain.len() + 16);
        ticket.extend_from_slice(&epoch.to_be_bytes());
        ticket.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(epoch.to_be_bytes()),
            &mut sealed,
        )
        .ok()?;
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < 8 + NONCE_LEN + 16 {
            return None;
        }
        let epoch = u64::from_be_bytes(ticket[..8].try_into().ok()?);
        let nonce: [u8; NONCE_LEN] = ticket[8..8 + NONCE_LEN].try_into().ok()?;
        let key = self.with_keys(|keys| {
            if epoch == keys.epoch {
                Some(aead_key(&keys.current))
            } else if epoch + 1 == keys.epoch {
                Some(aead_key(&keys.previous))
            } else {
                None
            }
        })?;
        let mut sealed = ticket[8 + NONCE_LEN..].to_vec();
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(epoch.to_be_bytes()),
                &mut sealed,
            )
            .ok()?;
        Some(plain.to_vec())
    }
}

/// The file's hour and key; `None` when there is no file yet. A file of the
/// wrong size or kind is an error (the operator should remove it).
fn read_key_file(path: &Path) -> std::io::Result<Option<(u64, [u8; 32])>> {
    match switchyard_shared::files::read_regular(path, 4096) {
        Ok(bytes) if bytes.len() == FILE_LEN => {
            let epoch = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
            let key: [u8; 32] = bytes[8..].try_into().expect("32 bytes");
            Ok(Some((epoch, key)))
        }
        Ok(bytes) => Err(std::io::Error::other(format!(
            "{} holds {} bytes, not {FILE_LEN}; remove it (a new key is made)",
            path.display(),
            bytes.len()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes a new file at `path` (0600), failing if it exists.
fn write_new(path: &Path, epoch: u64, key: &[u8; 32]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(&epoch.to_be_bytes())?;
    file.write_all(key)?;
    file.sync_all()
}

/// Creates the key file unless another process did first (then its key is
/// the one read back).
fn create_key_file(path: &Path, epoch: u64, key: &[u8; 32]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("key.new.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    write_new(&tmp, epoch, key)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tickets-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn two_processes_open_each_others_tickets() {
        let dir = temp_dir("shared");
        let a = SharedTickets::open(&dir).unwrap();
        let b = SharedTickets::open(&dir).unwrap();
        let ticket = a.encrypt(b"session state").unwrap();
        assert_eq!(b.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        // Tampering is refused.
        let mut bad = ticket.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(b.decrypt(&bad), None);
        assert_eq!(b.decrypt(&ticket[..10]), None);
        let mode = std::fs::metadata(dir.join(KEY_FILE)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        // Another tenant's keys open nothing.
        let other = SharedTickets::open(&temp_dir("other")).unwrap();
        assert_eq!(other.decrypt(&ticket), None);
    }

    #[test]
    fn the_ratchet_moves_forward_only() {
        let key = [7u8; 32];
        let later = Keys::from_file(10, key, 12);
        assert_eq!(later.epoch, 12);
        assert_eq!(later.previous, ratchet(&key));
        assert_eq!(later.current, ratchet(&ratchet(&key)));
        // A process that read the file an hour later derives the same keys.
        let joined = Keys::from_file(11, ratchet(&key), 12);
        assert_eq!(joined.current, later.current);
        assert_eq!(joined.previous, later.previous);
    }

    #[test]
    fn a_ticket_from_two_hours_ago_is_refused() {
        let dir = temp_dir("old");
        let tickets = SharedTickets::open(&dir).unwrap();
        let ticket = tickets.encrypt(b"x").unwrap();
        {
            let mut keys = tickets.keys.lock().unwrap();
            let epoch = keys.epoch;
            keys.advance_to(epoch + 1);
        }
        assert!(
            tickets.decrypt(&ticket).is_some(),
            "the previous hour's ticket is accepted"
        );
        {
            let mut keys = tickets.keys.lock().unwrap();
            let epoch = keys.epoch;
            keys.advance_to(epoch + 1);
        }
        assert_eq!(tickets.decrypt(&ticket), None);
    }
}
