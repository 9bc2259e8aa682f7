//! PROXY protocol in (`[[listen]] proxy_protocol = true`): a header from a
//! trusted load balancer gives the client's address, which the tenant uses
//! wherever it would use the socket's peer (forwarding headers, echo, access
//! log); an untrusted peer, a malformed header or none at all is closed and
//! counted.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use switchyard_tests::*;

fn proxied(trusted: &str) -> (Splitter, SocketAddr, Proc) {
    let upstream: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let app = start_upstream(upstream, "app-1");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let s = SplitterBuilder::new(vec![TenantSpec::proxy(
        "alpha",
        &["alpha.test"],
        &[upstream],
    )])
    .proxy_protocol()
    .splitter_lines(&format!(
        "trusted_proxies = [\"{trusted}\"]\nadmin = \"{admin}\"\nadmin_token_file = \"token\""
    ));
    let s = if trusted == "127.0.0.1/32" {
        s.start()
    } else {
        // The kit's readiness probe would be refused: start without it.
        s.start_without_waiting()
    };
    (s, admin, app)
}

fn v2_tcp6(client: &str, port: u16) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x21, 0x00, 36]);
    header.extend_from_slice(&client.parse::<std::net::Ipv6Addr>().unwrap().octets());
    header.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    header.extend_from_slice(&port.to_be_bytes());
    header.extend_from_slice(&443u16.to_be_bytes());
    header
}

#[test]
fn a_trusted_header_gives_the_client_address_on_both_listeners() {
    let (s, _admin, _app) = proxied("127.0.0.1/32");
    // v1 before a plaintext request.
    let mut stream = TcpStream::connect(s.http).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 80\r\n")
        .unwrap();
    let answer = request(&mut stream, "alpha.test", "/", "Connection: close\r\n").unwrap();
    assert_eq!(answer.status, 200);
    let headers = &answer.json()["headers"];
    assert_eq!(headers["x-forwarded-for"], "203.0.113.7");
    assert_eq!(headers["x-real-ip"], "203.0.113.7");
    assert!(
        headers["forwarded"]
            .as_str()
            .unwrap()
            .starts_with("for=203.0.113.7;proto=http"),
        "{headers}"
    );

    // v2 (IPv6 client) before a TLS handshake: the SNI peek sees the
    // ClientHello the header left in place.
    let mut tcp = TcpStream::connect(s.tls).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(&v2_tcp6("2001:db8::7", 4000)).unwrap();
    let mut tls = rustls::StreamOwned::new(tls_client("alpha.test"), tcp);
    let answer = request(&mut tls, "alpha.test", "/echo", "Connection: close\r\n").unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["client_addr"], "[2001:db8::7]:4000");
}

fn closed_without_answer(addr: SocketAddr, bytes: &[u8]) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = stream.write_all(bytes);
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
}

#[test]
fn malformed_or_missing_headers_are_closed_and_counted() {
    let (s, admin, _app) = proxied("127.0.0.1/32");
    for bad in [
        &b"PROXY TCP4 203.0.113.7 10.0.0.1 51000\r\nGET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n"[..],
        b"PROXY TCP4 not-an-address 10.0.0.1 1 2\r\n",
        b"GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c",
    ] {
        closed_without_answer(s.http, bad);
    }
    wait_until(Duration::from_secs(5), || {
        metric(
            admin,
            &format!(
                "switchyard_connections_total{{listener=\"{}\",outcome=\"bad_proxy_header\"}}",
                s.http
            ),
        ) == Some(4.0)
    });
}

#[test]
fn a_header_from_an_untrusted_peer_is_refused() {
    let (s, admin, _app) = proxied("192.0.2.1/32");
    // The admin endpoint is bound after the listeners.
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(admin).is_ok()
    });
    closed_without_answer(
        s.http,
        b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 80\r\nGET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n",
    );
    wait_until(Duration::from_secs(10), || {
        metric(
            admin,
            &format!(
                "switchyard_connections_total{{listener=\"{}\",outcome=\"proxy_untrusted\"}}",
                s.http
            ),
        ) == Some(1.0)
    });
}
