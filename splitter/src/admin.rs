//! The admin HTTP endpoint (`[splitter] admin`): `GET /metrics` (Prometheus
//! text) and `GET /status` (the JSON of `ctl status --json`). Plain HTTP/1.1,
//! one request per connection.
//!
//! Who can read it: on `unix:PATH` (mode 0600 in `runtime_dir`, created by the
//! user the splitter was started as, root in production) that user only; on
//! `IP:port` whoever sends `Authorization: Bearer TOKEN`
//! with the token of `admin_token_file` (`401` otherwise).

use crate::fleet::Fleet;
use crate::start_error::StartError;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use switchyard_shared::config::AdminListen;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tracing::{info, warn};

/// Admin requests answered at once; more wait in the kernel's backlog.
const MAX_CONCURRENT: usize = 16;

/// A bound admin endpoint.
pub enum Admin {
    /// On a Unix socket.
    Unix(UnixListener),
    /// On TCP, guarded by a bearer token.
    Tcp(TcpListener, String),
}

/// Binds the admin endpoint (`unix:` paths relative to `runtime_dir`).
pub async fn bind(
    listen: &AdminListen,
    runtime_dir: &Path,
    passed: &mut Vec<(std::net::SocketAddr, std::net::TcpListener)>,
) -> Result<Admin, StartError> {
    match listen {
        AdminListen::Unix(path) => {
            let path = runtime_dir.join(path);
            let _ = std::fs::remove_file(&path);
            let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
            let listener = UnixListener::bind(&path);
            nix::sys::stat::umask(old);
            let listener = listener.map_err(StartError::io(format!(
                "bind the admin socket {}",
                path.display()
            )))?;
            info!(path = %path.display(), "admin endpoint (mode 0600): GET /metrics, GET /status");
            Ok(Admin::Unix(listener))
        }
        AdminListen::Tcp { addr, token_file } => {
            let token = switchyard_shared::token::read_token(token_file)?;
            let listener = match passed.iter().position(|(a, _)| a == addr) {
                // Taken over from the splitter this one replaces.
                Some(at) => {
                    let (_, socket) = passed.swap_remove(at);
                    socket
                        .set_nonblocking(true)
                        .and_then(|()| TcpListener::from_std(socket))
                        .map_err(StartError::io(format!(
                            "use the passed admin socket {addr}"
                        )))?
                }
                None => TcpListener::bind(addr)
                    .await
                    .map_err(StartError::io(format!("bind the admin address {addr}")))?,
            };
            info!(addr = %addr, "admin endpoint (bearer token required): GET /metrics, GET /status");
            Ok(Admin::Tcp(listener, token))
        }
    }
}

impl Admin {
    /// A copy of a TCP admin listener and its address (for a take-over; a
    /// Unix one is bound again by path).
    pub fn tcp_copy(&self) -> Option<(std::net::SocketAddr, std::os::fd::OwnedFd)> {
        use std::os::fd::AsFd;
        match self {
            Admin::Tcp(listener, _) => Some((
                listener.local_addr().ok()?,
                listener.as_fd().try_clone_to_owned().ok()?,
            )),
            Admin::Unix(_) => None,
        }
    }
}

/// Serves admin requests forever.
pub async fn serve(admin: Admin, fleet: Arc<Fleet>) {
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let fleet = fleet.clone();
        let accepted = match &admin {
            Admin::Unix(listener) => listener.accept().await.map(|(stream, _)| {
                tokio::spawn(async move {
                    answer(stream, fleet, None).await;
                    drop(permit);
                });
            }),
            Admin::Tcp(listener, token) => listener.accept().await.map(|(stream, _)| {
                let token = token.clone();
                tokio::spawn(async move {
                    answer(stream, fleet, Some(&token)).await;
                    drop(permit);
                });
            }),
        };
        if let Err(e) = accepted {
            warn!(error = %e, "admin accept failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Whether the request head carries `Authorization: Bearer TOKEN` (compared in
/// constant time).
fn authorized(head: &str, token: &str) -> bool {
    head.lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("authorization")
                && switchyard_shared::token::bearer_matches(value, token)
        })
    })
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    fleet: Arc<Fleet>,
    token: Option<&str>,
) {
    let mut head = Vec::with_capacity(1024);
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return;
    }
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let allowed = token.is_none_or(|token| authorized(&line, token));
    let (status, content_type, body) = match (method, path.split('?').next().unwrap_or("")) {
        _ if !allowed => (
            "401 Unauthorized",
            "text/plain",
            "send Authorization: Bearer TOKEN (the token in admin_token_file)\n".to_string(),
        ),
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4",
            crate::metrics::render() + &fleet.tenant_stats_text().await,
        ),
        ("GET", "/status") => (
            "200 OK",
            "application/json",
            serde_json::to_string_pretty(&fleet.status().await).unwrap_or_default() + "\n",
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try GET /metrics or GET /status\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn bearer_tokens() {
        let head =
            "GET /metrics HTTP/1.1\r\nHost: x\r\nauthorization: Bearer s3cret-token-0123\r\n\r\n";
        assert!(super::authorized(head, "s3cret-token-0123"));
        assert!(!super::authorized(head, "s3cret-token-0124"));
        assert!(!super::authorized(
            "GET / HTTP/1.1\r\n\r\n",
            "s3cret-token-0123"
        ));
    }
}
