//! HTTP correctness against misbehaving upstreams: a response that fails after
//! it has started must reach the client as the broken response it is, never as
//! a complete one. A raw-socket upstream misbehaves on command; the tests read
//! the exact bytes the client gets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;
use switchyard_tests::*;

/// An upstream that answers every connection with `answer`, then closes it
/// (after reading the request head).
fn misbehaving_upstream(answer: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(answer);
                let _ = stream.flush();
                std::thread::sleep(Duration::from_millis(50));
            });
        }
    });
    addr
}

/// Everything the client receives for one GET, until the connection closes.
fn raw_exchange(to: SocketAddr, host: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect(to).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .unwrap();
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received);
    received
}

fn body_of(response: &[u8]) -> &[u8] {
    let at = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    &response[at + 4..]
}

fn splitter_for(upstream: SocketAddr) -> Splitter {
    SplitterBuilder::new(vec![TenantSpec::proxy(
        "alpha",
        &["alpha.test"],
        &[upstream],
    )])
    .start()
}

#[test]
fn a_chunked_response_cut_by_the_upstream_reaches_the_client_unterminated() {
    let upstream = misbehaving_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    );
    let s = splitter_for(upstream);
    let received = raw_exchange(s.http, "alpha.test");
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = body_of(&received);
    assert_eq!(
        body, b"5\r\nhello\r\n",
        "the real bytes, then a close: {text}"
    );
    // curl agrees: a partial transfer (18), not a success.
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "10",
            "-H",
            "Host: alpha.test",
        ])
        .arg(format!("http://{}/", s.http))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(18),
        "curl must see a partial transfer"
    );
}

#[test]
fn a_content_length_response_cut_by_the_upstream_stays_short() {
    let upstream = misbehaving_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n0123456789");
    let s = splitter_for(upstream);
    let received = raw_exchange(s.http, "alpha.test");
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("content-length: 40"),
        "{text}"
    );
    assert_eq!(
        body_of(&received),
        b"0123456789",
        "10 real bytes, no filler: {text}"
    );
}

#[test]
fn an_http2_stream_whose_upstream_fails_midway_is_reset() {
    let upstream = misbehaving_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    );
    let s = splitter_for(upstream);
    let out = Command::new("curl")
        .args([
            "-sk",
            "--http2",
            "-o",
            "/dev/null",
            "--max-time",
            "10",
            "--resolve",
        ])
        .arg(format!("alpha.test:{}:127.0.0.1", s.tls.port()))
        .arg(format!("https://alpha.test:{}/", s.tls.port()))
        .arg("-v")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ALPN: server accepted h2") || stderr.contains("h2"),
        "{stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(92),
        "an HTTP/2 stream error:\n{stderr}"
    );
    assert!(
        stderr.contains("INTERNAL_ERROR"),
        "RST_STREAM(INTERNAL_ERROR):\n{stderr}"
    );
}

#[test]
fn an_error_before_the_response_is_short_and_names_no_upstream_address() {
    // An upstream that sends 300 headers of 3,000 bytes: Pingora refuses the
    // head; the client's 502 must not carry it.
    static HUGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let answer = HUGE.get_or_init(|| {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..300 {
            head.extend_from_slice(format!("X-Big-{i}: {}\r\n", "a".repeat(3000)).as_bytes());
        }
        head.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        head
    });
    let upstream = misbehaving_upstream(answer);
    let s = splitter_for(upstream);
    let received = raw_exchange(s.http, "alpha.test");
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.starts_with("HTTP/1.1 502"),
        "{}",
        &text[..text.len().min(300)]
    );
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    let body = body_of(&received);
    assert!(body.len() <= 1024, "error body of {} bytes", body.len());
    let body = String::from_utf8_lossy(body);
    assert!(!body.contains(&upstream.to_string()), "{body}");
    assert!(!body.contains(&upstream.port().to_string()), "{body}");
    assert!(!body.contains("X-Big"), "{body}");
    assert!(body.contains("\"tenant\":\"alpha\""), "{body}");
}

/// Sends `head` (and `body`) on `stream` and reads one response.
fn exchange<S: Read + Write>(stream: &mut S, head: &str, body: &[u8]) -> Response {
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    stream.flush().unwrap();
    read_response(stream).unwrap()
}

fn echo_splitter() -> (Splitter, Proc) {
    let upstream: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let proc = start_upstream(upstream, "app-1");
    (splitter_for(upstream), proc)
}

#[test]
fn request_header_limits_hold_on_every_path() {
    let (s, _upstream) = echo_splitter();
    let big = format!("X-Big: {}\r\n", "a".repeat(64 * 1024));
    // A kept-alive plaintext connection: the splitter saw only the first request.
    let mut plain = TcpStream::connect(s.http).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let first = exchange(
        &mut plain,
        "GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n",
        b"",
    );
    assert_eq!(first.status, 200);
    let second = exchange(
        &mut plain,
        &format!("GET / HTTP/1.1\r\nHost: alpha.test\r\n{big}\r\n"),
        b"",
    );
    assert_eq!(second.status, 431, "{second:?}");
    assert_eq!(
        second.json()["tenant"],
        "alpha",
        "answered by the tenant, not the upstream"
    );
    // TLS, first request.
    let mut tls = tls_connect(s.tls, "alpha.test").unwrap();
    let answer = exchange(
        &mut tls,
        &format!("GET / HTTP/1.1\r\nHost: alpha.test\r\n{big}\r\n"),
        b"",
    );
    assert_eq!(answer.status, 431);
    // Too many header lines, and a URI over the limit.
    let many: String = (0..101).map(|i| format!("X-H{i}: 1\r\n")).collect();
    let mut tls = tls_connect(s.tls, "alpha.test").unwrap();
    let answer = exchange(
        &mut tls,
        &format!("GET / HTTP/1.1\r\nHost: alpha.test\r\n{many}\r\n"),
        b"",
    );
    assert_eq!(answer.status, 431);
    let mut tls = tls_connect(s.tls, "alpha.test").unwrap();
    let uri = format!("/{}", "u".repeat(20 * 1024));
    let answer = exchange(
        &mut tls,
        &format!("GET {uri} HTTP/1.1\r\nHost: alpha.test\r\n\r\n"),
        b"",
    );
    assert_eq!(answer.status, 414);
    // Within the limits, the same connection kind is served.
    let mut tls = tls_connect(s.tls, "alpha.test").unwrap();
    let answer = exchange(
        &mut tls,
        "GET / HTTP/1.1\r\nHost: alpha.test\r\nX-Small: 1\r\n\r\n",
        b"",
    );
    assert_eq!(answer.status, 200);
}

#[test]
fn framing_reaches_the_upstream_one_way_only() {
    let (s, _upstream) = echo_splitter();
    let mut tls = tls_connect(s.tls, "alpha.test").unwrap();
    let lines = |r: &Response| -> Vec<String> {
        r.json()["header_lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect()
    };
    // Repeats of one Content-Length become one.
    let answer = exchange(
        &mut tls,
        "POST / HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 5, 5\r\n\r\n",
        b"hello",
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    let seen = lines(&answer);
    assert_eq!(
        seen.iter()
            .filter(|l| l.starts_with("content-length"))
            .collect::<Vec<_>>(),
        ["content-length: 5"],
        "{seen:?}"
    );
    // Underscore look-alikes of framing headers are dropped.
    let answer = exchange(
        &mut tls,
        "POST / HTTP/1.1\r\nHost: alpha.test\r\nTransfer_Encoding: chunked\r\nContent_Length: 99\r\nX_Custom: kept\r\nContent-Length: 5\r\n\r\n",
        b"hello",
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    let seen = lines(&answer);
    assert!(
        !seen
            .iter()
            .any(|l| l.starts_with("transfer_encoding") || l.starts_with("content_length")),
        "{seen:?}"
    );
    assert!(seen.iter().any(|l| l == "x_custom: kept"), "{seen:?}");
    // A transfer coding the proxy would have to undo: 501, as nginx.
    let mut tls = tls_connect(s.tls, "alpha.test").unwrap();
    let answer = exchange(
        &mut tls,
        "POST / HTTP/1.1\r\nHost: alpha.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"0\r\n\r\n",
    );
    assert_eq!(answer.status, 501, "{answer:?}");
}

#[test]
fn an_upstreams_hop_by_hop_headers_stay_on_its_hop() {
    let upstream = misbehaving_upstream(
        b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: internal\r\nKeep-Alive: timeout=5\r\nX-Public: yes\r\nContent-Length: 2\r\n\r\nok",
    );
    let s = splitter_for(upstream);
    let received = raw_exchange(s.http, "alpha.test");
    let text = String::from_utf8_lossy(&received).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("x-public: yes"), "{text}");
    assert!(!text.contains("x-secret"), "{text}");
    assert!(!text.contains("keep-alive: timeout"), "{text}");
}

/// An upstream that records every request head it receives (as raw text) and
/// answers each with `200` and a 2-byte body, reading request bodies by
/// `Content-Length` or chunked framing as a strict server would.
fn recording_upstream() -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let record = record.clone();
            std::thread::spawn(move || serve_recorded(stream, record));
        }
    });
    (addr, seen)
}

fn serve_recorded(mut stream: TcpStream, record: std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    continue;
                }
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        record.lock().unwrap().push(head.clone());
        buf.drain(..end + 4);
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        if head.contains("transfer-encoding: chunked") {
            // Read to the end of the chunked body (the last-chunk and trailer end).
            while !buf.windows(5).any(|w| w == b"0\r\n\r\n") {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let at = buf.windows(5).position(|w| w == b"0\r\n\r\n").unwrap();
            buf.drain(..at + 5);
        } else if let Some(length) = length {
            while buf.len() < length {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.drain(..length);
        }
        if stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
    }
}

#[test]
fn request_smuggling_probes_keep_failing() {
    let (upstream, seen) = recording_upstream();
    let s = splitter_for(upstream);
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: alpha.test\r\n\r\n";
    let probes: Vec<(&str, String)> = vec![
        (
            "CL.TE",
            format!("POST / HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "TE.CL",
            format!("POST / HTTP/1.1\r\nHost: alpha.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n", smuggled.len()),
        ),
        (
            "obfuscated TE (xchunked)",
            format!("POST / HTTP/1.1\r\nHost: alpha.test\r\nTransfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "obfuscated TE (two lines)",
            format!("POST / HTTP/1.1\r\nHost: alpha.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "TE with a space before the colon",
            format!("POST / HTTP/1.1\r\nHost: alpha.test\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "duplicate Content-Length",
            format!("POST / HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello{smuggled}"),
        ),
        (
            "chunk size overflow",
            format!("POST / HTTP/1.1\r\nHost: alpha.test\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nx\r\n0\r\n\r\n{smuggled}"),
        ),
    ];
    for (name, probe) in probes {
        seen.lock().unwrap().clear();
        let mut stream = TcpStream::connect(s.http).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        stream.write_all(probe.as_bytes()).unwrap();
        let mut received = Vec::new();
        let _ = stream.read_to_end(&mut received);
        let text = String::from_utf8_lossy(&received);
        let responses = text.matches("HTTP/1.1 ").count();
        let upstream_saw = seen.lock().unwrap().clone();
        assert!(
            responses <= 1,
            "{name}: the client got {responses} responses:\n{text}"
        );
        for head in &upstream_saw {
            assert!(
                !head.starts_with("get /smuggled"),
                "{name}: smuggled through:\n{upstream_saw:?}"
            );
            assert!(
                !(head.contains("content-length:") && head.contains("transfer-encoding:")),
                "{name}: ambiguous framing reached the upstream:\n{head}"
            );
            if let Some(te) = head
                .lines()
                .find_map(|l| l.strip_prefix("transfer-encoding:"))
            {
                assert_eq!(te.trim(), "chunked", "{name}: {head}");
            }
        }
        assert!(upstream_saw.len() <= 1, "{name}: {upstream_saw:?}");
    }
}

#[test]
fn a_101_to_a_request_that_asked_for_no_upgrade_is_a_502() {
    let upstream = misbehaving_upstream(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nraw bytes",
    );
    let s = splitter_for(upstream);
    let received = raw_exchange(s.http, "alpha.test");
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    assert!(!text.contains("raw bytes"), "{text}");
}

#[test]
fn an_upgraded_tunnel_whose_upstream_times_out_is_closed_without_error_text() {
    // The upstream switches protocols, then says nothing for longer than the
    // tenant's read_timeout.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            );
            std::thread::sleep(Duration::from_secs(6));
        }
    });
    let mut tenant = TenantSpec::proxy("alpha", &["alpha.test"], &[upstream]);
    tenant.file = tenant
        .file
        .replace("retries = 1\n", "retries = 1\nread_timeout = \"1s\"\n");
    let s = SplitterBuilder::new(vec![tenant]).start();
    let mut stream = TcpStream::connect(s.http).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(8)))
        .unwrap();
    stream
        .write_all(b"GET /chat HTTP/1.1\r\nHost: alpha.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .unwrap();
    let started = std::time::Instant::now();
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received);
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed at the read timeout"
    );
    let after_head = body_of(&received);
    assert!(
        after_head.is_empty(),
        "nothing written into the tunnel: {:?}",
        String::from_utf8_lossy(after_head)
    );
}

/// An upstream that reads the request head, then sends `answer` one byte every
/// `gap`, each well within the tenant's `read_timeout`.
fn trickling_upstream(answer: &'static [u8], gap: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                for byte in answer {
                    if stream.write_all(&[*byte]).is_err() {
                        return;
                    }
                    std::thread::sleep(gap);
                }
            });
        }
    });
    addr
}

#[test]
fn a_trickled_response_header_is_a_504_at_response_header_timeout() {
    // 38 header bytes at 250 ms each would take 9.5 s; every read is far
    // inside read_timeout (1 s), the whole header is not inside 2 s.
    let upstream = trickling_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        Duration::from_millis(250),
    );
    let mut tenant = TenantSpec::proxy("alpha", &["alpha.test"], &[upstream]);
    tenant.file = tenant.file.replace(
        "retries = 1\n",
        "retries = 0\nread_timeout = \"1s\"\nresponse_header_timeout = \"2s\"\n",
    );
    let s = SplitterBuilder::new(vec![tenant]).start();
    let started = std::time::Instant::now();
    let received = raw_exchange(s.http, "alpha.test");
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
    assert!(!text.contains("\r\n\r\nok"), "{text}");
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(5),
        "answered after {took:?}, not at the 2 s header deadline"
    );
}

#[test]
fn response_header_timeout_defaults_to_read_timeout() {
    let upstream = trickling_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        Duration::from_millis(250),
    );
    let mut tenant = TenantSpec::proxy("alpha", &["alpha.test"], &[upstream]);
    tenant.file = tenant
        .file
        .replace("retries = 1\n", "retries = 0\nread_timeout = \"1s\"\n");
    let s = SplitterBuilder::new(vec![tenant]).start();
    let started = std::time::Instant::now();
    let received = raw_exchange(s.http, "alpha.test");
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(4));
}

/// Writes `head` one byte every 200 ms until the peer closes (or 8 s pass);
/// returns how long the peer took to close and what it sent.
fn dribble<S: Read + Write>(stream: &mut S, head: &[u8]) -> (Duration, Vec<u8>) {
    let started = std::time::Instant::now();
    for byte in head {
        if stream
            .write_all(&[*byte])
            .and_then(|_| stream.flush())
            .is_err()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        if started.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received);
    (started.elapsed(), received)
}

#[test]
fn a_client_dribbling_its_header_is_closed_at_client_header_timeout() {
    let mut tenant = TenantSpec::echo("alpha", &["alpha.test"]);
    tenant
        .file
        .push_str("[http]\nclient_header_timeout = \"2s\"\n");
    let s = SplitterBuilder::new(vec![tenant]).start();
    let slow_head = format!(
        "GET / HTTP/1.1\r\nHost: alpha.test\r\n{}\r\n",
        "X-Slow: 1\r\n".repeat(6)
    );

    // TLS, the first request (the splitter saw only the ClientHello).
    let mut tls = tls_connect(s.tls, "alpha.test").unwrap();
    tls.sock
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let (took, received) = dribble(&mut tls, slow_head.as_bytes());
    assert!(
        received.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&received)
    );
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );

    // Plaintext, a kept-alive second request.
    let mut plain = TcpStream::connect(s.http).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let first = exchange(
        &mut plain,
        "GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n",
        b"",
    );
    assert_eq!(first.status, 200);
    // Idle well past client_header_timeout: the idle wait is keepalive_timeout's.
    std::thread::sleep(Duration::from_secs(3));
    let (took, received) = dribble(&mut plain, slow_head.as_bytes());
    assert!(
        received.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&received)
    );
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );

    // A header sent at once is served on a new connection as before.
    let mut tls = tls_connect(s.tls, "alpha.test").unwrap();
    assert_eq!(exchange(&mut tls, &slow_head, b"").status, 200);
}

/// Asserts the tenant's metrics count one timeout of `kind`.
fn assert_counted_once(tenant: &StandaloneTenant, kind: &str) {
    let metrics = http_get_authorized(tenant.registration, "localhost", "/metrics").unwrap();
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(
        text.contains(&format!(
            "switchyard_tenant_timeouts_total{{kind=\"{kind}\",tenant=\"t\"}} 1"
        )),
        "{text}"
    );
}

#[test]
fn client_header_timeouts_are_counted() {
    let tenant = StandaloneTenant::start(
        "[http]\nclient_header_timeout = \"1s\"\nkeepalive_timeout = \"1s\"\n[[upstream]]\nname = \"app\"\nregistration = true\n[[route]]\npath = \"/\"\nrespond = \"echo\"\n[registration]\nlisten = \"{registration}\"\n",
    );
    let mut stream = TcpStream::connect(tenant.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    // Nothing at all on a new connection: the first request's clock runs from the start.
    let started = std::time::Instant::now();
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received);
    assert!(received.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_counted_once(&tenant, "client_header");
    // One request on a kept-alive connection, then idle past keepalive_timeout.
    let stream = TcpStream::connect(tenant.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut reader = std::io::BufReader::new(stream);
    reader
        .get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .unwrap();
    assert_eq!(read_response_from(&mut reader).unwrap().status, 200);
    let idle = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    assert!(rest.is_empty());
    assert!(
        idle.elapsed() < Duration::from_secs(4),
        "{:?}",
        idle.elapsed()
    );
    assert_counted_once(&tenant, "keepalive");
}

#[test]
fn an_http10_client_gets_no_1xx_response() {
    let upstream = misbehaving_upstream(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    );
    let s = splitter_for(upstream);
    for (version, expect_1xx) in [("HTTP/1.0", false), ("HTTP/1.1", true)] {
        let mut stream = TcpStream::connect(s.http).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(
                format!("GET / {version}\r\nHost: alpha.test\r\nConnection: close\r\nExpect: 100-continue\r\n\r\n")
                    .as_bytes(),
            )
            .unwrap();
        let mut received = Vec::new();
        let _ = stream.read_to_end(&mut received);
        let text = String::from_utf8_lossy(&received);
        assert_eq!(
            text.contains("103 Early Hints"),
            expect_1xx,
            "{version}: {text}"
        );
        assert!(text.contains(" 200 OK\r\n"), "{version}: {text}");
        if !expect_1xx {
            assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
            assert!(text.ends_with("\r\n\r\nok"), "{text}");
        }
    }
}

/// `curl --http2` to the tenant over TLS with `args`; its exit code and output.
fn curl_h2(s: &Splitter, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new("curl")
        .args(["-sk", "--http2", "--max-time", "10", "--resolve"])
        .arg(format!("alpha.test:{}:127.0.0.1", s.tls.port()))
        .args(args)
        .arg(format!("https://alpha.test:{}/", s.tls.port()))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn http2_requests_reach_an_http1_upstream_well_framed() {
    let (upstream, seen) = recording_upstream();
    let s = splitter_for(upstream);

    // Several `cookie` fields (RFC 9113 §8.2.3): one line upstream, joined with "; ".
    let (code, body, stderr) = curl_h2(&s, &["-H", "cookie: a=1", "-H", "cookie: b=2"]);
    assert_eq!((code, body.as_str()), (Some(0), "ok"), "{stderr}");
    let heads = seen.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let cookies: Vec<&str> = heads[0]
        .lines()
        .filter(|l| l.starts_with("cookie:"))
        .collect();
    assert_eq!(cookies, ["cookie: a=1; b=2"], "{}", heads[0]);

    // A declared content-length the DATA frames do not match is a stream
    // error; no complete request with that framing is answered.
    seen.lock().unwrap().clear();
    let (code, body, stderr) = curl_h2(
        &s,
        &["-v", "-H", "content-length: 10", "--data-binary", "abc"],
    );
    assert_ne!(
        body, "ok",
        "a mismatched body was answered by the upstream: {stderr}"
    );
    assert_eq!(code, Some(92), "an HTTP/2 stream error: {stderr}");
    assert!(stderr.contains("PROTOCOL_ERROR"), "{stderr}");
    let heads = seen.lock().unwrap().clone();
    assert!(
        heads.iter().all(|h| !h.contains("content-length: 3")),
        "the body was re-framed as if complete: {heads:?}"
    );
    // The connection's other streams, and new connections, are unaffected.
    let (code, body, stderr) = curl_h2(&s, &[]);
    assert_eq!((code, body.as_str()), (Some(0), "ok"), "{stderr}");
}

#[test]
fn a_kept_alive_request_with_two_host_headers_is_a_400() {
    let (upstream, seen) = recording_upstream();
    let s = SplitterBuilder::new(vec![
        TenantSpec::proxy("alpha", &["alpha.test"], &[upstream]),
        TenantSpec::echo("beta", &["beta.test"]),
    ])
    .start();
    let mut plain = TcpStream::connect(s.http).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let first = exchange(
        &mut plain,
        "GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n",
        b"",
    );
    assert_eq!(first.status, 200);
    // The splitter saw only the first request; the tenant refuses the
    // ambiguous one itself, whichever Host comes first.
    let second = exchange(
        &mut plain,
        "GET /two HTTP/1.1\r\nHost: alpha.test\r\nHost: beta.test\r\n\r\n",
        b"",
    );
    assert_eq!(second.status, 400, "{second:?}");
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "only the first reached the upstream"
    );
}

/// An upstream that sends `head_and_some` then, after a pause, either resets
/// the connection (RST) or goes silent for `silence`.
fn failing_midway(head_and_some: &'static [u8], reset: bool, silence: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(head_and_some);
                std::thread::sleep(Duration::from_millis(200));
                if reset {
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    drop(stream);
                } else {
                    std::thread::sleep(silence);
                }
            });
        }
    });
    addr
}

#[test]
fn a_body_reset_or_stalled_midway_reaches_the_client_short() {
    for (reset, what) in [(true, "reset"), (false, "read timeout")] {
        let upstream = failing_midway(
            b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n0123456789",
            reset,
            Duration::from_secs(6),
        );
        let mut tenant = TenantSpec::proxy("alpha", &["alpha.test"], &[upstream]);
        tenant.file = tenant
            .file
            .replace("retries = 1\n", "retries = 1\nread_timeout = \"1s\"\n");
        let s = SplitterBuilder::new(vec![tenant]).start();
        let started = std::time::Instant::now();
        let received = raw_exchange(s.http, "alpha.test");
        let text = String::from_utf8_lossy(&received);
        assert!(text.starts_with("HTTP/1.1 200"), "{what}: {text}");
        assert_eq!(
            body_of(&received),
            b"0123456789",
            "{what}: the real bytes only, then a close: {text}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: closed after {:?}",
            started.elapsed()
        );
    }
}
