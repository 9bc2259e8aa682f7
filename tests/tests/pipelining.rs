//! HTTP/1.1 pipelining (RFC 9112 §9.3.2): requests sent before the previous
//! response arrived are answered, in order, on the handed path and on a
//! standalone `--listen`, including while a large response is still being
//! written; a request body never swallows or becomes the next request, and a
//! pipelined request for another tenant's host still gets 421.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use switchyard_tests::*;

fn proxied_splitter() -> (Splitter, Proc) {
    let upstream: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let proc = start_upstream(upstream, "app-1");
    let s = SplitterBuilder::new(vec![
        TenantSpec::proxy("alpha", &["alpha.test"], &[upstream]),
        TenantSpec::echo("beta", &["beta.test"]),
    ])
    .start();
    (s, proc)
}

/// Writes `requests` in one write, then reads `count` responses in order.
fn pipelined<S: Read + Write>(stream: S, requests: &str, count: usize) -> Vec<Response> {
    let mut reader = BufReader::new(stream);
    reader.get_mut().write_all(requests.as_bytes()).unwrap();
    reader.get_mut().flush().unwrap();
    (0..count)
        .map(|i| {
            read_response_from(&mut reader)
                .unwrap_or_else(|e| panic!("response {} of {count}: {e}", i + 1))
        })
        .collect()
}

fn get(host: &str, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")
}

fn path_answered(response: &Response) -> String {
    assert_eq!(response.status, 200, "{response:?}");
    response.json()["path"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn plain(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

#[test]
fn three_pipelined_requests_are_answered_in_order_on_every_path() {
    let (s, _upstream) = proxied_splitter();
    let three = format!(
        "{}{}{}",
        get("alpha.test", "/one"),
        get("alpha.test", "/two"),
        get("alpha.test", "/three")
    );
    // Plaintext: the splitter peeked the first request only.
    let answers = pipelined(plain(s.http), &three, 3);
    let paths: Vec<String> = answers.iter().map(path_answered).collect();
    assert_eq!(paths, ["/one", "/two", "/three"]);
    // TLS.
    let answers = pipelined(tls_connect(s.tls, "alpha.test").unwrap(), &three, 3);
    let paths: Vec<String> = answers.iter().map(path_answered).collect();
    assert_eq!(paths, ["/one", "/two", "/three"]);

    // A standalone tenant (`--listen`).
    let upstream: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _app = start_upstream(upstream, "app-2");
    let tenant = StandaloneTenant::start(&format!(
        "[[upstream]]\nname = \"app\"\nservers = [\"{upstream}\"]\n[[route]]\nupstream = \"app\"\n"
    ));
    tenant.wait_until_served();
    let three = format!(
        "{}{}{}",
        get("app.test", "/one"),
        get("app.test", "/two"),
        get("app.test", "/three")
    );
    let answers = pipelined(plain(tenant.addr), &three, 3);
    let paths: Vec<String> = answers.iter().map(path_answered).collect();
    assert_eq!(paths, ["/one", "/two", "/three"]);
}

#[test]
fn a_request_sent_while_a_large_response_is_written_waits_its_turn() {
    let (s, _upstream) = proxied_splitter();
    const SIZE: usize = 2 * 1024 * 1024;
    for tls in [false, true] {
        let stream: Box<dyn ReadWrite> = if tls {
            Box::new(tls_connect(s.tls, "alpha.test").unwrap())
        } else {
            Box::new(plain(s.http))
        };
        let mut reader = BufReader::new(stream);
        reader
            .get_mut()
            .write_all(get("alpha.test", &format!("/big?size={SIZE}")).as_bytes())
            .unwrap();
        // Read a little of the response, so it is surely under way, then send
        // the next request on the same connection.
        let mut first_bytes = [0u8; 1024];
        reader.read_exact(&mut first_bytes).unwrap();
        reader
            .get_mut()
            .write_all(get("alpha.test", "/after").as_bytes())
            .unwrap();
        let mut rest = Vec::new();
        let head_and_body = {
            let mut all = first_bytes.to_vec();
            let at = all
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("the head in the first KiB");
            let head = String::from_utf8_lossy(&all[..at]).to_string();
            assert!(head.contains(&format!("Content-Length: {SIZE}")), "{head}");
            let body_so_far = all.split_off(at + 4);
            rest.resize(SIZE - body_so_far.len(), 0);
            reader
                .read_exact(&mut rest)
                .unwrap_or_else(|e| panic!("tls={tls}: the large response was cut short: {e}"));
            body_so_far.len() + rest.len()
        };
        assert_eq!(head_and_body, SIZE);
        assert!(rest.iter().all(|b| *b == b'x'));
        let second = read_response_from(&mut reader).unwrap();
        assert_eq!(second.status, 200);
        assert_eq!(path_answered(&second), "/after", "tls={tls}");
    }
}

/// Both `TcpStream` and the TLS stream, boxed.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

#[test]
fn a_request_body_is_never_taken_for_the_next_request() {
    let (s, _upstream) = proxied_splitter();
    // The body is exactly Content-Length bytes; what follows is a request.
    let requests = format!(
        "POST /form HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 22\r\n\r\nGET /inside HTTP/1.1\r\n{}",
        get("alpha.test", "/next")
    );
    let answers = pipelined(plain(s.http), &requests, 2);
    assert_eq!(answers[0].status, 200, "{:?}", answers[0]);
    assert_eq!(answers[0].json()["method"], "POST");
    assert_eq!(path_answered(&answers[0]), "/form");
    assert_eq!(path_answered(&answers[1]), "/next");
    // A chunked body followed by a request.
    let requests = format!(
        "POST /chunked HTTP/1.1\r\nHost: alpha.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{}",
        get("alpha.test", "/next")
    );
    let answers = pipelined(tls_connect(s.tls, "alpha.test").unwrap(), &requests, 2);
    assert_eq!(path_answered(&answers[0]), "/chunked");
    assert_eq!(path_answered(&answers[1]), "/next");
}

#[test]
fn a_pipelined_request_for_another_tenant_gets_421() {
    let (s, _upstream) = proxied_splitter();
    let requests = format!(
        "{}{}{}",
        get("alpha.test", "/one"),
        get("beta.test", "/stolen"),
        get("alpha.test", "/three")
    );
    let mut reader = BufReader::new(plain(s.http));
    reader.get_mut().write_all(requests.as_bytes()).unwrap();
    let first = read_response_from(&mut reader).unwrap();
    assert_eq!(path_answered(&first), "/one");
    let second = read_response_from(&mut reader).unwrap();
    assert_eq!(second.status, 421);
    assert_eq!(second.json()["tenant"], "alpha");
    // Whatever follows a 421 is never answered by beta.
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest);
    assert!(!rest.contains("\"tenant\":\"beta\""), "{rest}");
}
