//! The control socket (`runtime_dir/control.sock`, mode 0600) and the client
//! behind `splitter ctl`.
//!
//! One request per connection: a JSON line `{"command": "status" | "restart" |
//! "reload" | "stop", "tenant": "…"}`, answered by one JSON line
//! `{"ok": bool, "message": "…", "status": {…}}`.

use crate::fleet::Fleet;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
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
            let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
        });
    }
}

async fn answer(line: &str, fleet: &Fleet, config_path: &Path, stop: &Notify) -> Value {
    let request: Value = match serde_json::from_str(line) {
        Ok(request) => request,
        Err(e) => return json!({"ok": false, "message": format!("bad control request: {e}")}),
    };
    let command = request["command"].as_str().unwrap_or("");
    info!(
        command,
        tenant = request["tenant"].as_str(),
        "control request"
    );
    let result = match command {
        "status" => return json!({"ok": true, "status": fleet.status().await}),
        "restart" => match request["tenant"].as_str() {
            Some(tenant) => fleet.restart(tenant).await,
            None => Err("restart needs a tenant name".to_string()),
        },
        "reload" => fleet.reload(config_path).await,
        "stop" => {
            stop.notify_one();
            Ok("stopping: tenants drain, then the splitter exits".to_string())
        }
        other => Err(format!(
            "unknown command {other:?}; use status, restart, reload or stop"
        )),
    };
    match result {
        Ok(message) => json!({"ok": true, "message": message}),
        Err(message) => {
            warn!(command, "{message}");
            json!({"ok": false, "message": message})
        }
    }
}

/// Sends one request to the splitter whose runtime directory is `runtime_dir`
/// (the client side of `splitter ctl`).
pub fn request(runtime_dir: &Path, request: &Value, timeout: Duration) -> Result<Value, String> {
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
        .write_all(format!("{request}\n").as_bytes())
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
    request: &Value,
    json_output: bool,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    // A rolling restart waits for the new processes: allow it the time.
    let timeout = Duration::from_secs(90);
    match self::request(runtime_dir, request, timeout) {
        Ok(answer) if answer["ok"] == true => {
            if let Some(status) = answer.get("status") {
                if json_output {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(status).unwrap_or_default()
                    );
                } else {
                    print!("{}", render_status(status));
                }
            } else if let Some(message) = answer["message"].as_str() {
                println!("{message}");
            }
            ExitCode::SUCCESS
        }
        Ok(answer) => {
            eprintln!(
                "splitter ctl: {}",
                answer["message"].as_str().unwrap_or("request failed")
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
pub fn render_status(status: &Value) -> String {
    let mut out = format!(
        "splitter pid {}, up {}s, {} connections peeking or held\n",
        status["pid"], status["uptime_s"], status["pending"]
    );
    for t in status["tenants"].as_array().into_iter().flatten() {
        let hosts: Vec<&str> = t["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h.as_str())
            .collect();
        out.push_str(&format!(
            "tenant {}  hosts {}  generation {}  handed {}  held now {}  hold timeouts {}  restarts {}\n",
            t["name"].as_str().unwrap_or("?"),
            hosts.join(","),
            t["generation"],
            t["handed_off"],
            t["held_now"],
            t["hold_timeouts"],
            t["restarts"],
        ));
        let procs = t["processes"].as_array().cloned().unwrap_or_default();
        if procs.is_empty() {
            out.push_str("  (no process running)\n");
        }
        for p in procs {
            out.push_str(&format!(
                "  pid {:<8} {:<9} up {:>7}s  handed {}\n",
                p["pid"],
                p["state"].as_str().unwrap_or("?"),
                p["uptime_s"],
                p["handed_off"]
            ));
        }
    }
    out
}
