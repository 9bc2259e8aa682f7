//! The tenant's access log: one line per request (JSON, or the same fields as
//! `key=value` text), to a file in the tenant's runtime directory or to
//! standard error.
//!
//! Writing never blocks a request: a line is formatted into a shared buffer
//! that a writer thread writes out every [`FLUSH_EVERY`] in one call (as
//! nginx's `access_log … buffer= flush=`), so a request never wakes another
//! thread. When the writer lags (a slow disk) and [`MAX_PENDING_BYTES`] are
//! waiting, new lines are dropped and counted
//! (`switchyard_tenant_access_log_dropped_total`). SIGUSR1 reopens the file
//! (the logrotate convention: rename, then signal).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard_shared::config::{AccessTarget, LogConfig, LogFormat};
use tracing::warn;

mod line;
pub use line::Entry;

/// How often the writer writes what is waiting (a line reaches the file at
/// most this late).
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// Bytes of lines that may wait for the writer before new ones are dropped.
pub const MAX_PENDING_BYTES: usize = 4 << 20;

/// The tenant's access log.
pub struct AccessLog {
    format: LogFormat,
    /// Whether the query string is logged.
    pub with_query: bool,
    /// `None`: lines are not written (stderr with `RUST_LOG` below info for
    /// the `access` target, e.g. `RUST_LOG=warn`).
    pending: Option<Arc<Pending>>,
    /// The writer thread, woken early by a reopen.
    writer: Option<std::thread::Thread>,
}

/// Lines waiting for the writer, and its reopen request.
struct Pending {
    lines: Mutex<Vec<u8>>,
    reopen: AtomicBool,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// Where the writer thread writes.
enum Output {
    Stderr,
    File { path: PathBuf, file: File },
}

impl Output {
    fn open(path: &std::path::Path) -> io::Result<File> {
        // 0600 through the process umask: the tenant's own.
        OpenOptions::new().create(true).append(true).open(path)
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Output::Stderr => io::stderr().lock().write_all(bytes),
            Output::File { file, .. } => file.write_all(bytes),
        }
    }
}

impl AccessLog {
    /// Opens the log of `config` (a file relative to `tenant_dir`) and starts
    /// its writer thread.
    pub fn open(
        config: &LogConfig,
        tenant_dir: &std::path::Path,
    ) -> Result<Arc<AccessLog>, String> {
        let off = |format| {
            Arc::new(AccessLog {
                format,
                with_query: config.query,
                pending: None,
                writer: None,
            })
        };
        let output = match &config.access {
            // On stderr the lines follow the log filter, as they always have:
            // `RUST_LOG=warn` (or `access=off`) keeps them out.
            AccessTarget::Stderr if !tracing::enabled!(target: "access", tracing::Level::INFO) => {
                return Ok(off(config.format));
            }
            AccessTarget::Stderr => Output::Stderr,
            AccessTarget::File(relative) => {
                let path = tenant_dir.join(relative);
                if let Some(dir) = path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let file = Output::open(&path)
                    .map_err(|e| format!("[log] access: cannot open {}: {e}", path.display()))?;
                Output::File { path, file }
            }
        };
        let pending = Arc::new(Pending {
            lines: Mutex::new(Vec::with_capacity(64 * 1024)),
            reopen: AtomicBool::new(false),
        });
        let shared = pending.clone();
        let writer = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(&shared, output))
            .map_err(|e| format!("cannot start the access log writer: {e}"))?;
        Ok(Arc::new(AccessLog {
            format: config.format,
            with_query: config.query,
            pending: Some(pending),
            writer: Some(writer.thread().clone()),
        }))
    }

    /// Whether lines are written at all.
    pub fn is_on(&self) -> bool {
        self.pending.is_some()
    }

    /// Queues one line; drops it (counted) when the writer lags.
    pub fn write(&self, entry: &Entry<'_>) {
        let Some(pending) = &self.pending else {
            return;
        };
        thread_local! {
            /// The line being formatted, outside the shared buffer's lock.
            static LINE: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(1024));
        }
        LINE.with_borrow_mut(|line| {
            line.clear();
            line::write(line, self.format, entry);
            let mut lines = pending.lines.lock().unwrap_or_else(|p| p.into_inner());
            if lines.len() >= MAX_PENDING_BYTES {
                drop(lines);
                crate::metrics::count().access_log_dropped.inc();
                return;
            }
            lines.extend_from_slice(line);
        });
    }

    /// Makes the writer reopen its file before it writes again (SIGUSR1).
    pub fn reopen(&self) {
        if let (Some(pending), Some(writer)) = (&self.pending, &self.writer) {
            pending.reopen.store(true, Ordering::Release);
            writer.unpark();
        }
    }
}

/// The writer thread: every [`FLUSH_EVERY`] (or at once on a reopen), takes
/// what is waiting and writes it in one call.
fn write_lines(pending: &Pending, mut output: Output) {
    let mut failing = false;
    let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        std::thread::park_timeout(FLUSH_EVERY);
        std::mem::swap(
            &mut batch,
            &mut *pending.lines.lock().unwrap_or_else(|p| p.into_inner()),
        );
        // Lines written before the reopen belong to the old file.
        if !batch.is_empty() {
            match output.write_all(&batch) {
                Ok(()) => failing = false,
                Err(e) => {
                    if !failing {
                        warn!(error = %e, "cannot write the access log; lines are lost until it works again");
                    }
                    failing = true;
                }
            }
            batch.clear();
        }
        if pending.reopen.swap(false, Ordering::AcqRel) {
            if let Output::File { path, file } = &mut output {
                let _ = file.flush();
                match Output::open(path) {
                    Ok(fresh) => *file = fresh,
                    Err(e) => {
                        warn!(path = %path.display(), error = %e, "cannot reopen the access log; still writing to the old file")
                    }
                }
            }
        }
    }
}
