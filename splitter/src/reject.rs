//! Turning a client away: a short HTTP answer for plaintext clients, a plain
//! close for TLS ones.

use crate::conn::ClientConn;
use std::os::fd::OwnedFd;
use std::time::Duration;
use switchyard_shared::config::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Answers a plaintext client with `status` and closes; closes a TLS client.
///
/// After the answer the write side is shut and unread request bytes are drained
/// for a moment, so the kernel does not turn the close into a reset that would
/// destroy the answer before the client reads it.
pub fn turn_away(conn: ClientConn, status: u16, reason: &str, extra_header: Option<&str>) {
    match conn.protocol {
        Protocol::Tls => drop(conn),
        Protocol::Http => {
            let body = format!("{reason}\n");
            let response = format!(
                "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n{body}",
                status_text(status),
                body.len(),
                extra_header.map(|h| format!("{h}\r\n")).unwrap_or_default(),
            );
            tokio::spawn(answer_and_close(conn.fd, response));
        }
    }
}

fn status_text(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

async fn answer_and_close(fd: OwnedFd, response: String) {
    let std_stream = std::net::TcpStream::from(fd);
    let Ok(mut stream) = tokio::net::TcpStream::from_std(std_stream) else {
        return;
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}
