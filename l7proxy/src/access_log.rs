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

use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard_shared::config::{AccessTarget, LogConfig, LogFormat};
use tracing::warn;

/// How often the writer writes what is waiting (a line reaches the file at
/// most this late).
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// Bytes of lines that may wait for the writer before new ones are dropped.
pub const MAX_PENDING_BYTES: usize = 4 << 20;

/// One request, as logged. Borrowed fields: nothing is copied to build it.
#[derive(Serialize)]
pub struct Entry<'a> {
    /// RFC 3339 UTC time the request started, milliseconds.
    pub time: String,
    pub tenant: &'a str,
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<&'a str>,
    pub status: u16,
    /// Request body bytes read from the client.
    pub bytes_in: usize,
    /// Response body bytes written to the client.
    pub bytes_out: usize,
    pub duration_ms: f64,
    pub route: &'a str,
    pub upstream: Option<&'a str>,
    /// The server of the last attempt.
    #[serde(serialize_with = "as_display")]
    pub server: Option<&'a switchyard_shared::config::ServerAddr>,
    /// From the last attempt's start to its response header.
    pub upstream_ms: Option<f64>,
    /// Attempts after the first.
    pub retries: usize,
    pub client_ip: Option<std::net::IpAddr>,
    pub client_port: Option<u16>,
    /// `TLSv1.3`, `TLSv1.2`.
    pub tls_version: Option<String>,
    pub tls_cipher: Option<&'a str>,
    pub alpn: Option<&'static str>,
    pub user_agent: Option<&'a str>,
    pub referer: Option<&'a str>,
    pub request_id: &'a str,
    pub trace_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

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
        let mut lines = pending.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() >= MAX_PENDING_BYTES {
            drop(lines);
            crate::metrics::count().access_log_dropped.inc();
            return;
        }
        // Formatted in place: no allocation for the line, and a failed
        // format leaves nothing half-written.
        let start = lines.len();
        let written = match self.format {
            LogFormat::Json => serde_json::to_writer(&mut *lines, entry).is_ok(),
            LogFormat::Text => {
                lines.extend_from_slice(text_line(entry).as_bytes());
                true
            }
        };
        match written {
            true => lines.push(b'\n'),
            false => lines.truncate(start),
        }
    }

    /// Makes the writer reopen its file before it writes again (SIGUSR1).
    pub fn reopen(&self) {
        if let (Some(pending), Some(writer)) = (&self.pending, &self.writer) {
            pending.reopen.store(true, Ordering::Release);
            writer.unpark();
        }
    }
}

/// Serialises an optional value through its `Display` (no string is built
/// first).
fn as_display<S: serde::Serializer, T: std::fmt::Display>(
    value: &Option<&T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.collect_str(value),
        None => serializer.serialize_none(),
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

/// The entry as `key=value` pairs (values with spaces or quotes quoted).
fn text_line(entry: &Entry<'_>) -> String {
    let value = serde_json::to_value(entry).unwrap_or_default();
    let mut line = String::with_capacity(512);
    if let serde_json::Value::Object(fields) = value {
        for (key, value) in fields {
            let text = match value {
                serde_json::Value::Null => "-".to_string(),
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&key);
            line.push('=');
            if text.is_empty()
                || text.contains([' ', '"', '='])
                || text.chars().any(char::is_control)
            {
                line.push_str(&serde_json::Value::String(text).to_string());
            } else {
                line.push_str(&text);
            }
        }
    }
    line
}

/// `time` as RFC 3339 UTC with milliseconds.
pub fn rfc3339(time: std::time::SystemTime) -> String {
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
