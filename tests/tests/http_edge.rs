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
