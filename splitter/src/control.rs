//! The control socket (`runtime_dir/control.sock`, mode 0600) and the client
//! behind `splitter ctl`.
//!
//! One request per connection: a JSON line of a [`CtlRequest`]
//! (`{"command": "status" | "restart" | "reload" | "stop", "tenant": "…"}`),
//! answered by one JSON line of a [`CtlReply`]
//! (`{"ok": bool, "message": "…", "status": {…}}`).

use crate::fleet::Fleet;
use crate::start_error::StartError;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use switchyard_shared::control::{CtlReply, CtlRequest, FleetStatus};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::Notify;
use tracing::{info, warn};

/// The control socket's path under `runtime_dir`.
pub fn socket_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("control.sock")
}

/// Binds the control socket, refusing to take it from a splitter still running.
pub fn bind(path: &Path) -> Result<UnixListener, StartError> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(StartError::AlreadyRunning(path.to_path_buf()));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(StartError::io(format!(
        "bind control socket {}",
        path.display()
    )))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
        StartError::io(format!("restrict control socket {}", path.display())),
    )?;
    Ok(listener)
}

/// Serves control requests until the splitter stops. `stop` is notified on a
/// `stop` request; `reload` re-reads `config_path`.
pub async fn serve(
    listener: UnixListener,
    fleet: Arc<Fleet>,
    config_path: PathBuf,
    stop: Arc<Notify>,
    outgoing: Arc<crate::takeover::Outgoing>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Upgraded (or stopping): the new splitter answers from now on.
            _ = outgoing.stopped_accepting() => return,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let fleet = fleet.clone();
        let config_path = config_path.clone();
        let stop = stop.clone();
        let outgoing = outgoing.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(read);
            if tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
                .await
                .is_err()
            {
                return;
            }
            if matches!(serde_json::from_str(&line), Ok(CtlRequest::HandOver)) {
                info!(command = "handover", "control request");
                outgoing.hand_over(reader, write).await;
                return;
            }
            let answer = answer(&line, &fleet, &config_path, &stop, &outgoing).await;
            let line = serde_json::to_string(&answer).unwrap_or_default() + "\n";
            let _ = write.write_all(line.as_bytes()).await;
        });
    }
}

async fn answer(
    line: &str,
    fleet: &Arc<Fleet>,
    config_path: &Path,
    stop: &Notify,
    outgoing: &crate::takeover::Outgoing,
) -> CtlReply {
    let request: CtlRequest = match serde_json::from_str(line) {
        Ok(request) => request,
        Err(e) => return refused(format!("bad control request: {e}")),
    };
    info!(command = request.name(), "control request");
    let result = match &request {
        CtlRequest::Status => {
            return CtlReply {
                ok: true,
                message: None,
                status: Some(fleet.status().await),
            }
        }
        CtlRequest::Restart { tenant } => fleet.restart(tenant).await.map_err(|e| e.to_string()),
        CtlRequest::Reload => fleet.reload(config_path).await.map_err(|e| e.to_string()),
        CtlRequest::Stop => {
            stop.notify_one();
            Ok("stopping: tenants drain, then the splitter exits".to_string())
        }
        CtlRequest::Upgrade { binary } => outgoing.upgrade(binary.clone()).await,
        CtlRequest::HandOver | CtlRequest::Commit => {
            Err("handover and commit are sent only by a splitter started with --take-over".into())
        }
    };
    match result {
        Ok(message) => CtlReply {
            ok: true,
            message: Some(message),
            status: None,
        },
        Err(message) => {
            warn!(command = request.name(), "{message}");
            refused(message)
        }
    }
}

fn refused(message: String) -> CtlReply {
    CtlReply {
        ok: false,
        message: Some(message),
        status: None,
    }
}

/// Why `splitter ctl` got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Nothing listens on the control socket.
    #[error("the splitter is not running, or not with this config: cannot connect to {} ({source}). Start it with `splitter --config FILE`", path.display())]
    NotRunning {
        /// The control socket.
        path: PathBuf,
        /// Why the connection failed.
        source: std::io::Error,
    },
    /// The request could not be sent.
    #[error("cannot send to {}: {source}", path.display())]
    Send {
        /// The control socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No answer arrived in time.
    #[error("no answer from the splitter within {timeout:?}: {source}")]
    NoAnswer {
        /// How long `ctl` waited.
        timeout: Duration,
        /// Why the read ended.
        source: std::io::Error,
    },
    /// The answer is not a control reply (a splitter of another version?).
    #[error("unreadable answer from the splitter ({source}): {line}")]
    Unreadable {
        /// The line received.
        line: String,
        /// Why it does not parse.
        source: serde_json::Error,
    },
}

/// Sends one request to the splitter whose runtime directory is `runtime_dir`
/// (the client side of `splitter ctl`).
pub fn request(
    runtime_dir: &Path,
    request: &CtlRequest,
    timeout: Duration,
) -> Result<CtlReply, CtlError> {
    let path = socket_path(runtime_dir);
    let mut stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(source) => return Err(CtlError::NotRunning { path, source }),
    };
    let mut message = serde_json::to_string(request).expect("a CtlRequest always serialises");
    message.push('\n');
    let sent = stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.write_all(message.as_bytes()));
    if let Err(source) = sent {
        return Err(CtlError::Send { path, source });
    }
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|source| CtlError::NoAnswer { timeout, source })?;
    serde_json::from_str(&line).map_err(|source| CtlError::Unreadable { line, source })
}

/// `splitter ctl`: sends `request`, prints the answer (the status as JSON when
/// `json_output`), and says how it went in the exit code (1: refused or no splitter).
pub fn run_client(
    runtime_dir: &Path,
    request: &CtlRequest,
    json_output: bool,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    // A rolling restart waits for the new processes: allow it the time.
    let timeout = Duration::from_secs(90);
    match self::request(runtime_dir, request, timeout) {
        Ok(CtlReply {
            ok: true,
            status,
            message,
        }) => {
            match (status, message) {
                (Some(status), _) if json_output => println!(
                    "{}",
                    serde_json::to_string_pretty(&status).unwrap_or_default()
                ),
                (Some(status), _) => print!("{}", render_status(&status)),
                (None, Some(message)) => println!("{message}"),
                (None, None) => {}
            }
            ExitCode::SUCCESS
        }
        Ok(CtlReply { message, .. }) => {
            eprintln!(
                "splitter ctl: {}",
                message.as_deref().unwrap_or("request failed")
            );
            ExitCode::FAILURE
        }
        Err(message) => {
            eprintln!("splitter ctl: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Renders `ctl status` for a person.
pub fn render_status(status: &FleetStatus) -> String {
    let mut out = format!(
        "splitter pid {} (helper {}), up {}s, {} connections peeking or held\n",
        status.pid, status.helper_pid, status.uptime_s, status.pending
    );
    for t in &status.tenants {
        out.push_str(&format!(
            "tenant {}  hosts {}  generation {}  handed {}  held now {}  hold timeouts {}  restarts {}\n",
            t.name,
            t.hosts.join(","),
            t.generation,
            t.handed_off,
            t.held_now,
            t.hold_timeouts,
            t.restarts,
        ));
        if t.start == "on-demand" {
            out.push_str(&format!(
                "  on demand: {}, started {} times, stopped idle {} times\n",
                if t.running {
                    "running"
                } else {
                    "stopped until its next connection"
                },
                t.demand_starts,
                t.idle_stops
            ));
        }
        if t.processes.is_empty() && t.running {
            out.push_str("  (no process running)\n");
        }
        for p in &t.processes {
            out.push_str(&format!(
                "  pid {:<8} {:<9} up {:>7}s  handed {}{}\n",
                p.pid,
                p.state,
                p.uptime_s,
                p.handed_off,
                if p.attached {
                    "  (started by hand)"
                } else {
                    ""
                }
            ));
        }
    }
    out
}
