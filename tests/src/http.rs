//! Small HTTP/1.1 clients over plain sockets (exact bytes, no hidden retries),
//! and curl for Unix sockets and another user.

use super::*;

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request on `stream` and reads the response (Content-Length bodies,
/// or until close).
pub fn request<S: Read + Write + ?Sized>(
    stream: &mut S,
    host: &str,
    path: &str,
    extra: &str,
) -> io::Result<Response> {
    // One write: a request in several small segments meets Nagle's algorithm
    // and the peer's delayed ACK (~40 ms per request on a kept-alive connection).
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: switchyard-tests\r\n{extra}\r\n"
    );
    stream.write_all(head.as_bytes())?;
    stream.flush()?;
    read_response(stream)
}

/// Reads one HTTP/1.1 response. (Bytes of a following pipelined response may
/// be read too and lost: to read several, use [`read_response_from`].)
pub fn read_response<S: Read + ?Sized>(stream: &mut S) -> io::Result<Response> {
    read_response_from(&mut BufReader::new(stream))
}

/// Reads one HTTP/1.1 response from `reader`, leaving what follows it buffered
/// there (pipelined responses are read one after another).
pub fn read_response_from<R: BufRead>(reader: &mut R) -> io::Result<Response> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {line:?}"),
            )
        })?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body)?;
        }
        None => {
            reader.read_to_end(&mut body)?;
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Connects to `addr` over plaintext and sends one request.
pub fn http_get(addr: SocketAddr, host: &str, path: &str) -> io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    request(&mut stream, host, path, "")
}

/// Reads the value of a metric line starting with `prefix` from the admin endpoint.
pub fn metric(admin: SocketAddr, prefix: &str) -> Option<f64> {
    let text =
        String::from_utf8(http_get_authorized(admin, "admin", "/metrics").ok()?.body).ok()?;
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Sends `POST path` with a JSON body to `addr` and reads the response.
pub fn post_json(addr: SocketAddr, path: &str, body: &str) -> io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let message = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TEST_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(message.as_bytes())?;
    stream.flush()?;
    read_response(&mut stream)
}

/// `GET path` with `Authorization: Bearer TEST_TOKEN` (registration API and
/// admin endpoints on TCP).
pub fn http_get_authorized(addr: SocketAddr, host: &str, path: &str) -> io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    request(
        &mut stream,
        host,
        path,
        &format!("Authorization: Bearer {TEST_TOKEN}\r\nConnection: close\r\n"),
    )
}

/// GETs (or, with `body`, POSTs) `url` over the Unix socket `socket` with curl
/// run as `uid`; the HTTP status curl saw ("000": no answer, e.g. it could not
/// connect).
pub fn curl_unix_as(socket: &Path, url: &str, body: Option<&str>, uid: u32) -> String {
    use std::os::unix::process::CommandExt;
    let mut curl = Command::new("curl");
    curl.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
        "--unix-socket",
    ])
    .arg(socket);
    if let Some(body) = body {
        curl.args(["-d", body]);
    }
    let out = curl
        .arg(url)
        .uid(uid)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
