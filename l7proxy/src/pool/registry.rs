//! Servers that registered themselves, kept in a small JSON file in the
//! tenant's runtime directory so that every process of the tenant's pool — and
//! the next generation after a rolling restart — sees the same registrations.
//!
//! Writers hold an exclusive lock on `registrations.lock` while they read,
//! change and atomically replace `registrations.json`; readers notice a new
//! file by its inode and modification time.

use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use switchyard_shared::config::{ServerAddr, ServerSpec};

/// One registration as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Entry {
    upstream: String,
    addr: String,
    weight: usize,
    /// Milliseconds since the Unix epoch after which the entry is gone.
    expires_ms: u64,
}

/// A live registration.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The server and its weight.
    pub spec: ServerSpec,
    /// Time left before it lapses without a renewal.
    pub expires_in: Duration,
}

#[derive(Default)]
struct Cache {
    entries: Vec<Entry>,
    /// (inode, mtime ns, len) of the file the entries came from.
    stamp: Option<(u64, i128, u64)>,
}

/// The registrations of one tenant.
pub struct Registry {
    file: PathBuf,
    lock: PathBuf,
    cache: Mutex<Cache>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn stamp(path: &Path) -> Option<(u64, i128, u64)> {
    let meta = fs::metadata(path).ok()?;
    Some((
        meta.ino(),
        meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        meta.len(),
    ))
}

impl Registry {
    /// Opens (creating the directory if needed) the registry in `dir`.
    pub fn open(dir: &Path) -> io::Result<Registry> {
        fs::create_dir_all(dir)?;
        let registry = Registry {
            file: dir.join("registrations.json"),
            lock: dir.join("registrations.lock"),
            cache: Mutex::new(Cache::default()),
        };
        // Fail at start, not at the first registration, when the directory is
        // not writable by this process.
        File::options()
            .create(true)
            .append(true)
            .open(&registry.lock)?;
        registry.refresh();
        Ok(registry)
    }

    /// The file registrations are kept in.
    pub fn path(&self) -> &Path {
        &self.file
    }

    fn read_file(&self) -> Vec<Entry> {
        match fs::read(&self.file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %self.file.display(), error = %e, "the registrations file is not valid JSON; starting from an empty list");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        }
    }

    /// Re-reads the file if another process changed it; true when it did.
    pub fn refresh(&self) -> bool {
        let now = stamp(&self.file);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.stamp == now && now.is_some() {
            return false;
        }
        cache.entries = self.read_file();
        cache.stamp = now;
        true
    }

    /// Changes the stored list under the lock, then replaces the file.
    fn update<T>(&self, change: impl FnOnce(&mut Vec<Entry>) -> T) -> io::Result<T> {
        let lock = File::options().create(true).append(true).open(&self.lock)?;
        lock.lock()?;
        let mut entries = self.read_file();
        let now = unix_ms(SystemTime::now());
        entries.retain(|e| e.expires_ms > now);
        let result = change(&mut entries);
        let tmp = self
            .file
            .with_extension(format!("json.{}", std::process::id()));
        fs::write(
            &tmp,
            serde_json::to_vec_pretty(&entries).map_err(io::Error::other)?,
        )?;
        fs::rename(&tmp, &self.file)?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.stamp = stamp(&self.file);
        cache.entries = entries;
        drop(cache);
        lock.unlock()?;
        Ok(result)
    }

    /// Adds or renews a server; true when it was not registered before.
    pub fn register(&self, upstream: &str, spec: &ServerSpec, ttl: Duration) -> io::Result<bool> {
        let addr = spec.addr.to_string();
        let expires_ms = unix_ms(SystemTime::now() + ttl);
        self.update(|entries| {
            match entries
                .iter_mut()
                .find(|e| e.upstream == upstream && e.addr == addr)
            {
                Some(entry) => {
                    entry.expires_ms = expires_ms;
                    entry.weight = spec.weight;
                    false
                }
                None => {
                    entries.push(Entry {
                        upstream: upstream.to_string(),
                        addr,
                        weight: spec.weight,
                        expires_ms,
                    });
                    true
                }
            }
        })
    }

    /// Removes a server; true when it was registered.
    pub fn deregister(&self, upstream: &str, addr: &ServerAddr) -> io::Result<bool> {
        let addr = addr.to_string();
        self.update(|entries| {
            let before = entries.len();
            entries.retain(|e| !(e.upstream == upstream && e.addr == addr));
            entries.len() != before
        })
    }

    /// The registrations of `upstream` that have not lapsed.
    pub fn live(&self, upstream: &str) -> Vec<Registered> {
        let now = unix_ms(SystemTime::now());
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .entries
            .iter()
            .filter(|e| e.upstream == upstream && e.expires_ms > now)
            .filter_map(|e| {
                Some(Registered {
                    spec: ServerSpec {
                        addr: ServerAddr::parse(&e.addr).ok()?,
                        weight: e.weight,
                    },
                    expires_in: Duration::from_millis(e.expires_ms - now),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(port: u16) -> ServerSpec {
        ServerSpec {
            addr: ServerAddr::Tcp(format!("127.0.0.1:{port}").parse().unwrap()),
            weight: 1,
        }
    }

    #[test]
    fn registrations_are_shared_through_the_file_and_lapse() {
        let dir = std::env::temp_dir().join(format!("sy-registry-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let a = Registry::open(&dir).unwrap();
        let b = Registry::open(&dir).unwrap();
        assert!(a
            .register("app", &spec(1), Duration::from_secs(60))
            .unwrap());
        assert!(!a
            .register("app", &spec(1), Duration::from_secs(60))
            .unwrap());
        assert!(a
            .register("app", &spec(2), Duration::from_millis(50))
            .unwrap());
        assert!(b.refresh());
        assert_eq!(b.live("app").len(), 2);
        assert!(b.live("other").is_empty());
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(b.live("app").len(), 1);
        assert!(b.deregister("app", &spec(1).addr).unwrap());
        assert!(!b.deregister("app", &spec(1).addr).unwrap());
        assert!(a.refresh());
        assert!(a.live("app").is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
