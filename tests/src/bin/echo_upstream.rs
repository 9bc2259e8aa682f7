//! `echo-upstream`: a small HTTP/1.1 backend for the demo, tests and benchmarks.
//!
//! Answers every request with JSON describing what it received (method, path,
//! headers — as a map and as the exact lines — the peer address, its own
//! name), keeping connections alive.
//! `--body-size N` answers with an N-byte body instead (for benchmarks).
//!
//! For pool tests: `?delay_ms=N` waits before answering, `?size=N` answers with
//! N bytes of `x` (the method and path then go in `X-Echo-Request`), `/status/NNN` answers
//! with that status, an `Upgrade` request is switched (101) and then echoes
//! bytes, and `--register URL --upstream NAME` keeps the server registered with
//! (sending `$SWITCHYARD_REGISTRATION_TOKEN` as its bearer token)
//! a tenant's registration API (retrying until the API answers, renewing at a
//! third of `--ttl`).
//!
//! Usage: `echo-upstream --listen 127.0.0.1:18101 [--name app-1] [--body-size 100]
//!         [--register http://127.0.0.1:9901 --upstream app [--ttl 3s]]`

use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Options {
    listen: String,
    name: String,
    body_size: Option<usize>,
    register: Option<String>,
    upstream: String,
    ttl: String,
}

fn options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mut listen = None;
    let mut name = "echo-upstream".to_string();
    let mut body_size = None;
    let mut register = None;
    let mut upstream = "app".to_string();
    let mut ttl = "3s".to_string();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next(),
            "--name" => name = args.next().ok_or("--name needs a value")?,
            "--register" => register = Some(args.next().ok_or("--register needs a URL")?),
            "--upstream" => upstream = args.next().ok_or("--upstream needs a name")?,
            "--ttl" => {
                ttl = args.next().ok_or("--ttl needs a duration")?;
                switchyard_shared::units::parse_duration(&ttl).map_err(|e| e.to_string())?;
            }
            "--body-size" => {
                body_size = Some(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .ok_or("--body-size needs a number")?,
                )
            }
            "-h" | "--help" => {
                return Err(
                    "usage: echo-upstream --listen ADDR [--name NAME] [--body-size BYTES] [--register URL --upstream NAME [--ttl 3s]]".into(),
                )
            }
            other => return Err(format!("unknown argument {other:?}; see --help")),
        }
    }
    Ok(Options {
        listen: listen.ok_or("--listen ADDR is required")?,
        name,
        body_size,
        register,
        upstream,
        ttl,
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
    if let Some(url) = options.register.clone() {
        let addr = listener.local_addr()?.to_string();
        tokio::spawn(keep_registered(
            url,
            options.upstream.clone(),
            addr,
            options.ttl.clone(),
        ));
    }
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
        let (head_len, response, close, body_len, delay, upgrade, chunked) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let mut body_len = 0usize;
                    let mut close = request.version == Some(0);
                    let mut upgrade = false;
                    let mut chunked = false;
                    let path = request.path.unwrap_or("");
                    let delay = path
                        .split_once("delay_ms=")
                        .and_then(|(_, v)| v.split('&').next()?.parse::<u64>().ok())
                        .map(Duration::from_millis);
                    let status: u16 = path
                        .strip_prefix("/status/")
                        .and_then(|v| v.get(..3)?.parse().ok())
                        .unwrap_or(200);
                    let mut header_map = serde_json::Map::new();
                    let mut header_lines = Vec::new();
                    for h in request.headers.iter() {
                        header_lines.push(serde_json::Value::String(format!(
                            "{}: {}",
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value)
                        )));
                        let value = String::from_utf8_lossy(h.value).into_owned();
                        if h.name.eq_ignore_ascii_case("content-length") {
                            body_len = value.trim().parse().unwrap_or(0);
                        }
                        if h.name.eq_ignore_ascii_case("connection") {
                            close = value.eq_ignore_ascii_case("close");
                        }
                        if h.name.eq_ignore_ascii_case("upgrade") {
                            upgrade = true;
                        }
                        if h.name.eq_ignore_ascii_case("transfer-encoding")
                            && value.to_ascii_lowercase().contains("chunked")
                        {
                            chunked = true;
                        }
                        header_map.insert(
                            h.name.to_ascii_lowercase(),
                            serde_json::Value::String(value),
                        );
                    }
                    let size = path
                        .split_once("size=")
                        .and_then(|(_, v)| v.split('&').next()?.parse::<usize>().ok());
                    let body = match (fixed_body, size) {
                        (Some(body), _) => body.to_vec(),
                        (None, Some(size)) => vec![b'x'; size],
                        (None, None) => {
                            let mut json = serde_json::json!({
                                "upstream": name,
                                "method": request.method.unwrap_or(""),
                                "path": request.path.unwrap_or(""),
                                "headers": header_map,
                                "header_lines": header_lines,
                                "peer": peer,
                            })
                            .to_string();
                            json.push('\n');
                            json.into_bytes()
                        }
                    };
                    if upgrade {
                        let response = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".to_vec();
                        break (len, response, false, body_len, delay, true, chunked);
                    }
                    let mut response = format!(
                        "HTTP/1.1 {status} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}\r\n",
                        if status == 200 { "OK" } else { "Status" },
                        if fixed_body.is_some() {
                            "text/plain"
                        } else {
                            "application/json"
                        },
                        body.len(),
                        if close { "Connection: close\r\n" } else { "" }
                    )
                    .into_bytes();
                    if size.is_some() {
                        // Before the blank line that ends the head.
                        let at = response.len() - 2;
                        let echo = format!(
                            "X-Echo-Request: {} {}\r\n",
                            request.method.unwrap_or(""),
                            path
                        );
                        response.splice(at..at, echo.into_bytes());
                    }
                    response.extend_from_slice(&body);
                    break (len, response, close, body_len, delay, false, chunked);
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
        // Discard the request body (Content-Length, or chunked), so that the
        // next request on the connection starts where it should.
        if chunked {
            buf.drain(..head_len);
            if !skip_chunked_body(&mut stream, &mut buf).await? {
                return Ok(());
            }
        } else {
            while buf.len() < head_len + body_len {
                let mut chunk = [0u8; 8192];
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..head_len + body_len);
        }
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        stream.write_all(&response).await?;
        if upgrade {
            // The connection now carries the upgraded protocol: echo it.
            stream.write_all(&buf).await?;
            let (mut reader, mut writer) = stream.split();
            tokio::io::copy(&mut reader, &mut writer).await?;
            return Ok(());
        }
        if close {
            return Ok(());
        }
    }
}

/// Registers this server with a tenant's registration API and renews the
/// registration at a third of its TTL, retrying every 200 ms while the API
/// does not answer (the proxy may start after the backend).
async fn keep_registered(url: String, upstream: String, addr: String, ttl: String) {
    let api = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let renew_every = switchyard_shared::units::parse_duration(&ttl)
        .map(|ttl| ttl / 3)
        .unwrap_or(Duration::from_secs(1));
    let body = serde_json::json!({"upstream": upstream, "addr": addr, "ttl": ttl}).to_string();
    let request = format!(
        "POST /v1/register HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        std::env::var("SWITCHYARD_REGISTRATION_TOKEN").unwrap_or_default(),
        body.len()
    );
    let mut registered = false;
    loop {
        let answer = async {
            let mut stream = TcpStream::connect(&api).await?;
            stream.write_all(request.as_bytes()).await?;
            // The status line is the answer: no need to wait for the close.
            let mut reply = Vec::new();
            let mut buf = [0u8; 1024];
            while !reply.windows(2).any(|w| w == b"\r\n") {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                reply.extend_from_slice(&buf[..n]);
            }
            Ok::<_, io::Error>(reply)
        };
        let ok = matches!(
            tokio::time::timeout(Duration::from_secs(2), answer).await,
            Ok(Ok(reply)) if reply.starts_with(b"HTTP/1.1 200")
        );
        if ok && !registered {
            eprintln!("echo-upstream: registered {addr} in {upstream} at {api}");
        }
        registered = ok;
        let wait = if ok {
            renew_every
        } else {
            Duration::from_millis(200)
        };
        tokio::time::sleep(wait).await;
    }
}

/// Removes one chunked body (and its trailer section) from the front of
/// `buf`, reading more as needed; false when the client closed first.
async fn skip_chunked_body(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    async fn more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }
    loop {
        let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
            if !more(stream, buf).await? {
                return Ok(false);
            }
            continue;
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).to_string();
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // The trailer section ends with an empty line.
            loop {
                if let Some(end) = buf[line_end..].windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.drain(..line_end + end + 4);
                    return Ok(true);
                }
                if buf.len() >= line_end + 4 && &buf[line_end..line_end + 4] == b"\r\n\r\n" {
                    buf.drain(..line_end + 4);
                    return Ok(true);
                }
                if !more(stream, buf).await? {
                    return Ok(false);
                }
            }
        }
        while buf.len() < line_end + 2 + size + 2 {
            if !more(stream, buf).await? {
                return Ok(false);
            }
        }
        buf.drain(..line_end + 2 + size + 2);
    }
}
