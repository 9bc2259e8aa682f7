//! The core request path through both tiers, with real processes and sockets:
//! routing by SNI and Host, fragmented ClientHellos, the real client address,
//! misdirected requests, upstream failure, `splitter check`, and descriptor
//! hygiene in the splitter.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use switchyard_tests::*;

fn two_echo_tenants() -> Splitter {
    SplitterBuilder::new(vec![
        TenantSpec::echo("alpha", &["alpha.test", "*.alpha.test"]),
        TenantSpec::echo("beta", &["beta.test"]),
    ])
    .start()
}

#[test]
fn tls_clients_reach_the_tenant_named_by_sni() {
    let s = two_echo_tenants();
    let alpha = https_get(s.tls, "alpha.test", "/hello").unwrap().json();
    let beta = https_get(s.tls, "beta.test", "/hello").unwrap().json();
    let wild = https_get(s.tls, "deep.www.alpha.test", "/").unwrap().json();
    assert_eq!(alpha["tenant"], "alpha");
    assert_eq!(alpha["tls"], true);
    assert_eq!(alpha["path"], "/hello");
    assert_eq!(beta["tenant"], "beta");
    assert_eq!(
        wild["tenant"], "alpha",
        "a wildcard matches one or more labels"
    );
    assert_ne!(alpha["pid"], beta["pid"], "each tenant has its own process");
    let children = s.children();
    for answer in [&alpha, &beta] {
        let pid = answer["pid"].as_u64().unwrap() as u32;
        assert!(
            children.contains(&pid),
            "pid {pid} is a child of the splitter ({children:?})"
        );
    }
}

#[test]
fn plaintext_clients_reach_the_tenant_named_by_host() {
    let s = two_echo_tenants();
    let beta = http_get(s.http, "Beta.Test.:8080", "/").unwrap();
    assert_eq!(beta.status, 200);
    assert_eq!(beta.json()["tenant"], "beta");
    assert_eq!(beta.json()["tls"], false);
    let alpha = http_get(s.http, "x.alpha.test", "/").unwrap().json();
    assert_eq!(alpha["tenant"], "alpha");

    // Absolute-form URI: routed by its authority. A Host that differs from it
    // is refused by the tenant (RFC 9112 §3.2.2), not routed elsewhere.
    for (host, status) in [("beta.test", 200), ("alpha.test", 400)] {
        let mut stream = TcpStream::connect(s.http).unwrap();
        write!(
            stream,
            "GET http://beta.test/abs HTTP/1.1\r\nHost: {host}\r\n\r\n"
        )
        .unwrap();
        let answer = read_response(&mut stream).unwrap();
        assert_eq!(answer.status, status, "Host: {host}");
        if status == 200 {
            assert_eq!(answer.json()["tenant"], "beta");
        }
    }
}

#[test]
fn unknown_names_are_refused() {
    let s = two_echo_tenants();
    // TLS: the connection is closed, so the handshake fails.
    assert!(https_get(s.tls, "nobody.test", "/").is_err());
    // TLS without SNI (an IP-literal client) is refused too.
    assert!(https_get(s.tls, "127.0.0.1", "/").is_err());
    // Plaintext: a 404 naming the host, then close; no Host at all: 400.
    let answer = http_get(s.http, "nobody.test", "/").unwrap();
    assert_eq!(answer.status, 404);
    assert!(String::from_utf8_lossy(&answer.body).contains("nobody.test"));
    let mut stream = TcpStream::connect(s.http).unwrap();
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut stream).unwrap().status, 400);
    // The bare suffix of a wildcard is not matched by it.
    assert_eq!(http_get(s.http, "www.test", "/").unwrap().status, 404);
}

#[test]
fn the_unknown_host_tenant_takes_every_unmatched_name() {
    let s = SplitterBuilder::new(vec![
        TenantSpec::echo("alpha", &["alpha.test"]),
        TenantSpec::echo("fallback", &["fallback.test"]),
    ])
    .splitter_lines("unknown_host = \"fallback\"")
    .start();
    assert_eq!(
        https_get(s.tls, "other.test", "/").unwrap().json()["tenant"],
        "fallback"
    );
    assert_eq!(
        https_get(s.tls, "127.0.0.1", "/").unwrap().json()["tenant"],
        "fallback"
    );
    assert_eq!(
        http_get(s.http, "other.test", "/").unwrap().json()["tenant"],
        "fallback"
    );
    let mut stream = TcpStream::connect(s.http).unwrap();
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(
        read_response(&mut stream).unwrap().json()["tenant"],
        "fallback"
    );
    // Names of other tenants are still theirs.
    assert_eq!(
        http_get(s.http, "alpha.test", "/").unwrap().json()["tenant"],
        "alpha"
    );
}

/// Writes a ClientHello for `sni` to a fresh connection with `send`, then
/// completes the handshake and one request.
fn hello_sent_by_hand(
    addr: SocketAddr,
    sni: &str,
    send: impl FnOnce(&mut TcpStream, Vec<u8>),
) -> Response {
    let mut conn = tls_client(sni);
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    send(&mut tcp, hello);
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    request(&mut stream, sni, "/", "").unwrap()
}

#[test]
fn a_client_hello_written_in_small_pieces_with_pauses_is_routed() {
    let s = two_echo_tenants();
    let answer = hello_sent_by_hand(s.tls, "beta.test", |tcp, hello| {
        tcp.set_nodelay(true).unwrap();
        for piece in hello.chunks(hello.len() / 4 + 1) {
            tcp.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(150));
        }
    });
    assert_eq!(answer.json()["tenant"], "beta");
}

#[test]
fn a_client_hello_spanning_two_tls_records_is_routed() {
    let s = two_echo_tenants();
    let answer = hello_sent_by_hand(s.tls, "alpha.test", |tcp, hello| {
        // Re-frame the single handshake record as two records.
        let body = &hello[5..];
        let framed = split_into_records(body, body.len().div_ceil(2));
        assert_eq!(framed.len(), body.len() + 10, "two record headers");
        tcp.write_all(&framed).unwrap();
    });
    assert_eq!(answer.json()["tenant"], "alpha");
}

#[test]
fn the_upstream_sees_the_real_client_address_and_via() {
    let upstream_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _upstream = start_upstream(upstream_addr, "app-1");
    let s = SplitterBuilder::new(vec![TenantSpec::proxy(
        "alpha",
        &["alpha.test"],
        &[upstream_addr],
    )])
    .splitter_lines("trusted_proxies = [\"127.0.0.4/32\"]")
    .start();

    // A client bound to 127.0.0.2 proves the address is the client's own,
    // not the splitter's nor 127.0.0.1.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.2:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.connect(&s.tls.into()).unwrap();
    let tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut stream = rustls::StreamOwned::new(tls_client("alpha.test"), tcp);
    let answer = request(&mut stream, "alpha.test", "/app", "").unwrap();
    assert_eq!(answer.status, 200);
    let seen = answer.json();
    assert_eq!(seen["upstream"], "app-1");
    let headers = &seen["headers"];
    assert_eq!(headers["x-forwarded-for"], "127.0.0.2");
    assert_eq!(
        headers["forwarded"],
        "for=127.0.0.2;proto=https;host=\"alpha.test\""
    );
    assert_eq!(headers["x-forwarded-proto"], "https");
    assert_eq!(headers["x-forwarded-host"], "alpha.test");
    assert_eq!(headers["via"], "1.1 switchyard");
    assert!(headers["x-request-id"].is_string());

    // Plaintext too.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.3:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.connect(&s.http.into()).unwrap();
    let mut tcp: TcpStream = socket.into();
    // A client's own forwarding headers, every line of them, are replaced:
    // it is not a trusted proxy, so it cannot choose the address upstreams see.
    let spoof = "X-Forwarded-For: 10.9.9.9\r\nX-Forwarded-For: 10.8.8.8\r\nForwarded: for=10.9.9.9\r\nX-Real-IP: 10.9.9.9\r\n";
    let seen = request(&mut tcp, "alpha.test", "/", spoof).unwrap().json();
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.3", "replaced");
    assert_eq!(seen["headers"]["x-real-ip"], "127.0.0.3", "replaced");
    assert_eq!(
        seen["headers"]["forwarded"], "for=127.0.0.3;proto=http;host=\"alpha.test\"",
        "replaced"
    );
    assert_eq!(seen["headers"]["x-forwarded-proto"], "http");

    // A peer in trusted_proxies has its headers kept and appended to, all lines.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.4:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.connect(&s.http.into()).unwrap();
    let mut tcp: TcpStream = socket.into();
    let seen = request(&mut tcp, "alpha.test", "/", spoof).unwrap().json();
    assert_eq!(
        seen["headers"]["x-forwarded-for"], "10.9.9.9, 10.8.8.8, 127.0.0.4",
        "appended, like nginx behind a trusted proxy"
    );
    assert_eq!(seen["headers"]["x-real-ip"], "10.9.9.9");
}

#[test]
fn a_kept_alive_connection_asking_for_another_tenants_host_gets_421() {
    let s = two_echo_tenants();
    for tls in [true, false] {
        let mut plain;
        let mut secure;
        let stream: &mut dyn ReadWrite = if tls {
            secure = tls_connect(s.tls, "alpha.test").unwrap();
            &mut secure
        } else {
            plain = TcpStream::connect(s.http).unwrap();
            &mut plain
        };
        let first = request(stream, "alpha.test", "/", "").unwrap();
        assert_eq!(first.json()["tenant"], "alpha");
        let second = request(stream, "beta.test", "/", "").unwrap();
        assert_eq!(second.status, 421, "tls={tls}");
        let body = second.json();
        assert_eq!(body["tenant"], "alpha");
        assert_eq!(body["owner"], "beta");
        // A name nobody claims is misdirected too.
        let mut again = if tls {
            Box::new(tls_connect(s.tls, "alpha.test").unwrap()) as Box<dyn ReadWrite>
        } else {
            Box::new(TcpStream::connect(s.http).unwrap())
        };
        request(&mut again, "alpha.test", "/", "").unwrap();
        assert_eq!(
            request(&mut again, "nobody.test", "/", "").unwrap().status,
            421
        );
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

#[test]
fn an_unreachable_upstream_gets_a_json_502_naming_tenant_and_request() {
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let s =
        SplitterBuilder::new(vec![TenantSpec::proxy("alpha", &["alpha.test"], &[dead])]).start();
    let answer = http_get(s.http, "alpha.test", "/").unwrap();
    assert_eq!(answer.status, 502);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let body = answer.json();
    assert_eq!(body["tenant"], "alpha");
    assert_eq!(body["upstream"], "app");
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
}

#[test]
fn splitter_check_locates_errors_and_exits_2() {
    let dir = TempDir::new("check");
    dir.write(
        "tenants/a.toml",
        "[[route]]\npath = \"/\"\nupstream = \"missing\"\n",
    );
    let bad = dir.write(
        "host.toml",
        "[splitter]\nthreads = 1\nmax_pending = 100\nbogus = 1\n[[listen]]\naddr = \"127.0.0.1:1\"\nprotocol = \"tls\"\n",
    );
    let (code, _, stderr) = splitter_check(&bad);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("host.toml:4:1: unknown field `bogus`"),
        "{stderr}"
    );

    // Started as root, the front and the tenant need users of their own.
    let (front, tenant) = user_sections();
    let bad_tenant = dir.write(
        "host2.toml",
        &format!("{front}[[listen]]\naddr = \"127.0.0.1:1\"\nprotocol = \"tls\"\n[[tenant]]\nname = \"a\"\nhosts = [\"a.test\"]\nconfig = \"tenants/a.toml\"\n{tenant}"),
    );
    let (code, _, stderr) = splitter_check(&bad_tenant);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("a.toml:3:12: route names upstream \"missing\""),
        "{stderr}"
    );

    // A host file with a problem of its own: the tenant file is checked too,
    // and both problems are reported in one run.
    let both_bad = dir.write(
        "host3.toml",
        &format!("{front}[[listen]]\naddr = \"127.0.0.1:1\"\nprotocol = \"tls\"\n[[tenant]]\nname = \"a\"\nhosts = [\"a.test\"]\nconfig = \"tenants/a.toml\"\nprocesses = 0\n{tenant}"),
    );
    let (code, _, stderr) = splitter_check(&both_bad);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("host3.toml:")
            && stderr.contains(":13: tenant \"a\": processes must be between 1 and 64"),
        "{stderr}"
    );
    assert!(
        stderr.contains("a.toml:3:12: route names upstream \"missing\""),
        "{stderr}"
    );

    dir.write(
        "tenants/a.toml",
        "[[route]]\npath = \"/\"\nrespond = \"echo\"\n",
    );
    let (code, stdout, stderr) = splitter_check(&bad_tenant);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("configuration OK"));
}

#[test]
fn the_splitter_keeps_no_descriptor_of_finished_connections() {
    let s = two_echo_tenants();
    // Warm up: the first connections may allocate lazily.
    https_get(s.tls, "alpha.test", "/").unwrap();
    http_get(s.http, "beta.test", "/").unwrap();
    let before = s.fd_count_stable();
    for i in 0..40 {
        https_get(s.tls, "alpha.test", "/").unwrap();
        http_get(s.http, "beta.test", "/").unwrap();
        let _ = http_get(s.http, "nobody.test", "/");
        // Garbage on both ports, and clients that leave mid-hello.
        let mut junk = TcpStream::connect(if i % 2 == 0 { s.tls } else { s.http }).unwrap();
        junk.write_all(b"\x00\x01garbage\r\n\r\n").unwrap();
        let mut half = TcpStream::connect(s.tls).unwrap();
        half.write_all(&[22, 3, 1, 2, 0, 1]).unwrap();
        drop(half);
        let mut buf = [0u8; 64];
        let _ = junk.read(&mut buf);
    }
    let after = fd_count_settled(s.proc.pid(), before);
    assert_eq!(
        after, before,
        "splitter descriptors: {before} before the traffic, {after} after"
    );
}

#[test]
fn clients_that_send_half_a_hello_cost_no_cpu_while_they_wait() {
    let _alone = measuring_alone();
    let s = two_echo_tenants();
    let hello = {
        let mut conn = tls_client("alpha.test");
        let mut bytes = Vec::new();
        conn.write_tls(&mut bytes).unwrap();
        bytes
    };
    // Half a ClientHello and waiting; half a ClientHello and shutting the write
    // side (a readiness tokio never clears); half a request on the HTTP port.
    let mut waiting = Vec::new();
    for i in 0..300 {
        let (addr, bytes): (SocketAddr, &[u8]) = match i % 3 {
            0 | 1 => (s.tls, &hello[..hello.len() / 2]),
            _ => (s.http, b"GET / HTTP/1.1\r\nHost: alp"),
        };
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.write_all(bytes).unwrap();
        if i % 3 == 1 {
            tcp.shutdown(std::net::Shutdown::Write).unwrap();
        }
        waiting.push(tcp);
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(s.proc.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(s.proc.pid()) - before;
    assert!(
        used <= 5,
        "the splitter used {used}/100 s of CPU in 1 s with 300 clients waiting: it is spinning"
    );
    // And a normal client is served meanwhile.
    assert_eq!(
        https_get(s.tls, "beta.test", "/").unwrap().json()["tenant"],
        "beta"
    );
}
