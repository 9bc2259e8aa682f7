//! The control socket (`runtime_dir/control.sock`, mode 0600) and the client
//! behind `splitter ctl`.
//!
//! One request per connection: a JSON line of a [`CtlRequest`]
//! (`{"command": "status" | "restart" | "reload" | "stop", "tenant": "…"}`),
//! answered by one JSON line of a [`CtlReply`]
//! (`{"ok": bool, "message": "…", "status": {…}}`).

use crate::fleet::Fleet;
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
pub fn bind(path: &Path) -> Result<UnixListener, String> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "another splitter is running with this runtime_dir (its control socket {} answers); stop it first",
                path.display()
            ));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("cannot bind control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot restrict control socket {}: {e}", path.display()))?;
    Ok(listener)
}

/// Serves control requests until the splitter stops. `stop` is notified on a
/// `stop` request; `reload` re-reads `config_path`.
pub async fn serve(
    listener: UnixListener,
    fleet: Arc<Fleet>,
    config_path: PathBuf,
    stop: Arc<Notify>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let fleet = fleet.clone();
        let config_path = config_path.clone();
        let stop = stop.clone();
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
            let answer = answer(&line, &fleet, &config_path, &stop).await;
            let line = serde_json::to_string(&answer).unwrap_or_default() + "\n";
            let _ = write.write_all(line.as_bytes()).await;
        });
    }
}

async fn answer(line: &str, fleet: &Fleet, config_path: &Path, stop: &Notify) -> CtlReply {
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
        CtlRequest::Restart { tenant } => fleet.restart(tenant).await,
        CtlRequest::Reload => fleet.reload(config_path).await,
        CtlRequest::Stop => {
            stop.notify_one();
            Ok("stopping: tenants drain, then the splitter exits".to_string())
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

/// Sends one request to the splitter whose runtime directory is `runtime_dir`
/// (the client side of `splitter ctl`).
pub fn request(
    runtime_dir: &Path,
    request: &CtlRequest,
    timeout: Duration,
) -> Result<CtlReply, String> {
    let path = socket_path(runtime_dir);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).map_err(|e| {
        format!(
            "the splitter is not running, or not with this config: cannot connect to {} ({e}). Start it with `splitter --config FILE`",
            path.display()
        )
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(
            format!(
                "{}\n",
                serde_json::to_string(request).map_err(|e| e.to_string())?
            )
            .as_bytes(),
        )
        .map_err(|e| format!("cannot send to {}: {e}", path.display()))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| format!("no answer from the splitter within {timeout:?}: {e}"))?;
    serde_json::from_str(&line)
        .map_err(|e| format!("unreadable answer from the splitter ({e}): {line}"))
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
        if t.processes.is_empty() {
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
