//! HTTP clients for the tests: a real one (`ureq`) for the happy paths, small
//! HTTP/1.1 readers and writers over plain sockets where the exact bytes matter
//! (kept-alive and pipelined connections, hostile input), and curl for Unix
//! sockets and another user.

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

/// `GET path` from `addr` over plaintext with `Host: host`, by a real HTTP
/// client (a new connection, no retries). Any status is an `Ok` response.
pub fn http_get(addr: SocketAddr, host: &str, path: &str) -> io::Result<Response> {
    call(client_request("GET", addr, path).set("Host", host), None)
}

/// A request to `addr` by `ureq`, on a connection of its own, with a 10 s
/// timeout; redirects are answers, not followed.
fn client_request(method: &str, addr: SocketAddr, path: &str) -> ureq::Request {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .max_idle_connections(0)
        .redirects(0)
        .user_agent("switchyard-tests")
        .build()
        .request(method, &format!("http://{addr}{path}"))
}

/// Sends `request` (with `body`, if any) and reads the whole response; error
/// statuses are responses too.
fn call(request: ureq::Request, body: Option<&str>) -> io::Result<Response> {
    let sent = match body {
        Some(body) => request.send_string(body),
        None => request.call(),
    };
    let response = match sent {
        Ok(response) | Err(ureq::Error::Status(_, response)) => response,
        Err(ureq::Error::Transport(e)) => return Err(io::Error::other(e.to_string())),
    };
    let status = response.status();
    let mut headers: Vec<(String, String)> = Vec::new();
    for name in response.headers_names() {
        if headers.iter().any(|(seen, _)| *seen == name) {
            continue;
        }
        let values: Vec<String> = response.all(&name).into_iter().map(String::from).collect();
        headers.extend(values.into_iter().map(|value| (name.clone(), value)));
    }
    let mut body = Vec::new();
    response.into_reader().read_to_end(&mut body)?;
    Ok(Response {
        status,
        headers,
        body,
    })
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

/// Sends `POST path` with a JSON body and the test token to `addr` (the
/// registration API on TCP) and reads the response.
pub fn post_json(addr: SocketAddr, path: &str, body: &str) -> io::Result<Response> {
    let request = client_request("POST", addr, path)
        .set("Authorization", &format!("Bearer {TEST_TOKEN}"))
        .set("Content-Type", "application/json");
    call(request, Some(body))
}

/// `GET path` with `Authorization: Bearer TEST_TOKEN` (registration API and
/// admin endpoints on TCP).
pub fn http_get_authorized(addr: SocketAddr, host: &str, path: &str) -> io::Result<Response> {
    let request = client_request("GET", addr, path)
        .set("Host", host)
        .set("Authorization", &format!("Bearer {TEST_TOKEN}"));
    call(request, None)
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
