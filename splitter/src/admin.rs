//! The admin HTTP endpoint (`[splitter] admin`): `GET /metrics` (Prometheus
//! text) and `GET /status` (the JSON of `ctl status --json`). Plain HTTP/1.1,
//! one request per connection; bind it to loopback or a private address.

use crate::fleet::Fleet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

/// Binds the admin address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot bind the admin address {addr}: {e}"))?;
    info!(addr = %addr, "admin endpoint: GET /metrics, GET /status");
    Ok(listener)
}

/// Serves admin requests forever.
pub async fn serve(listener: TcpListener, fleet: Arc<Fleet>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream, fleet.clone()));
            }
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, fleet: Arc<Fleet>) {
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
    let (status, content_type, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4",
            crate::metrics::render(&fleet.status().await),
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
