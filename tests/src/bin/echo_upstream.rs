//! `echo-upstream`: a small HTTP/1.1 backend for the demo, tests and benchmarks.
//!
//! Answers every request with JSON describing what it received (method, path,
//! headers, the peer address, its own name), keeping connections alive.
//! `--body-size N` answers with an N-byte body instead (for benchmarks).
//!
//! Usage: `echo-upstream --listen 127.0.0.1:18101 [--name app-1] [--body-size 100]`

use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Options {
    listen: String,
    name: String,
    body_size: Option<usize>,
}

fn options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mut listen = None;
    let mut name = "echo-upstream".to_string();
    let mut body_size = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next(),
            "--name" => name = args.next().ok_or("--name needs a value")?,
            "--body-size" => {
                body_size = Some(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .ok_or("--body-size needs a number")?,
                )
            }
            "-h" | "--help" => {
                return Err(
                    "usage: echo-upstream --listen ADDR [--name NAME] [--body-size BYTES]".into(),
                )
            }
            other => return Err(format!("unknown argument {other:?}; see --help")),
        }
    }
    Ok(Options {
        listen: listen.ok_or("--listen ADDR is required")?,
        name,
        body_size,
    })
}

fn main() -> std::process::ExitCode {
    let options = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("echo-upstream: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match runtime.block_on(serve(options)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo-upstream: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(options: Options) -> io::Result<()> {
    let listener = TcpListener::bind(&options.listen).await?;
    eprintln!(
        "echo-upstream {} listening on {}",
        options.name,
        listener.local_addr()?
    );
    let name: &'static str = Box::leak(options.name.into_boxed_str());
    let fixed_body: Option<&'static [u8]> = options
        .body_size
        .map(|n| &*Box::leak(vec![b'x'; n].into_boxed_slice()));
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = connection(stream, name, fixed_body).await;
        });
    }
}

async fn connection(
    mut stream: TcpStream,
    name: &str,
    fixed_body: Option<&[u8]>,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let peer = stream.peer_addr()?.to_string();
    let mut buf = Vec::with_capacity(8192);
    loop {
        // Read until a complete header block is buffered.
        let (head_len, response, close, body_len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let mut body_len = 0usize;
                    let mut close = request.version == Some(0);
                    let mut header_map = serde_json::Map::new();
                    for h in request.headers.iter() {
                        let value = String::from_utf8_lossy(h.value).into_owned();
                        if h.name.eq_ignore_ascii_case("content-length") {
                            body_len = value.trim().parse().unwrap_or(0);
                        }
                        if h.name.eq_ignore_ascii_case("connection") {
                            close = value.eq_ignore_ascii_case("close");
                        }
                        header_map.insert(
                            h.name.to_ascii_lowercase(),
                            serde_json::Value::String(value),
                        );
                    }
                    let body = match fixed_body {
                        Some(body) => body.to_vec(),
                        None => {
                            let mut json = serde_json::json!({
                                "upstream": name,
                                "method": request.method.unwrap_or(""),
                                "path": request.path.unwrap_or(""),
                                "headers": header_map,
                                "peer": peer,
                            })
                            .to_string();
                            json.push('\n');
                            json.into_bytes()
                        }
                    };
                    let mut response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}\r\n",
                        if fixed_body.is_some() {
                            "text/plain"
                        } else {
                            "application/json"
                        },
                        body.len(),
                        if close { "Connection: close\r\n" } else { "" }
                    )
                    .into_bytes();
                    response.extend_from_slice(&body);
                    break (len, response, close, body_len);
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => {
                    stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await?;
                    return Ok(());
                }
            }
            if buf.len() > 64 * 1024 {
                return Ok(());
            }
            let mut chunk = [0u8; 8192];
            let n =
                tokio::time::timeout(Duration::from_secs(60), stream.read(&mut chunk)).await??;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        // Discard the request body (Content-Length only; chunked is not needed here).
        while buf.len() < head_len + body_len {
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.drain(..head_len + body_len);
        stream.write_all(&response).await?;
        if close {
            return Ok(());
        }
    }
}
