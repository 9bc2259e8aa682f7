//! What a site owner sees and configures: the access log (fields, file,
//! SIGUSR1 reopening under load), request ids and W3C trace context, `Via` on
//! responses, and routes that answer themselves (redirects, fixed statuses,
//! `force_https`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::Duration;
use switchyard_tests::*;

fn echo_upstream() -> (SocketAddr, Proc) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let proc = start_upstream(addr, "app-1");
    (addr, proc)
}

/// A proxy tenant `alpha` (also answering `localhost`, for wrk's SNI) with
/// `extra` lines appended to its tenant file.
fn alpha(upstream: SocketAddr, extra: &str) -> TenantSpec {
    let mut tenant = TenantSpec::proxy("alpha", &["alpha.test", "localhost"], &[upstream]);
    tenant.file.push_str(extra);
    tenant
}

fn access_log_of(s: &Splitter) -> PathBuf {
    s.dir.0.join("run/tenants/alpha/access.log")
}

/// The access log's lines once there are at least `count`, parsed.
fn wait_for_lines(path: &std::path::Path, count: usize) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    wait_until(Duration::from_secs(5), || {
        lines = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        lines.len() >= count
    });
    lines
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn an_access_line_carries_every_field_and_ids_reach_the_upstream() {
    let (upstream, _app) = echo_upstream();
    let s = SplitterBuilder::new(vec![alpha(
        upstream,
        "[log]\naccess = \"access.log\"\nquery = true\n",
    )])
    .start();
    let mut tls = tls_connect(s.tls, "alpha.test").unwrap();
    let answer = request(
        &mut tls,
        "alpha.test",
        "/shop/cart?item=7",
        &format!("Referer: https://alpha.test/\r\ntraceparent: {TRACEPARENT}\r\nX-Request-Id: client-chosen\r\n"),
    )
    .unwrap();
    assert_eq!(answer.status, 200);
    let seen = answer.json();
    let upstream_header = |name: &str| {
        seen["headers"][name]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    // The trace continues; the client's request id is not trusted by default.
    assert_eq!(upstream_header("traceparent"), TRACEPARENT);
    let request_id = upstream_header("x-request-id");
    assert_ne!(request_id, "client-chosen");
    assert!(!request_id.is_empty());
    // This hop is named on the response too.
    assert_eq!(answer.header("via"), Some("1.1 switchyard"));

    // The kit's own readiness request came first.
    let mut lines = Vec::new();
    wait_until(Duration::from_secs(5), || {
        lines = wait_for_lines(&access_log_of(&s), 1);
        lines.iter().any(|l| l["path"] == "/shop/cart")
    });
    let line = lines.iter().find(|l| l["path"] == "/shop/cart").unwrap();
    assert_eq!(line["tenant"], "alpha");
    assert_eq!(line["host"], "alpha.test");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/shop/cart");
    assert_eq!(line["query"], "item=7");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes_out"].as_u64(), Some(answer.body.len() as u64));
    assert_eq!(line["bytes_in"], 0);
    assert_eq!(line["route"], "/");
    assert_eq!(line["upstream"], "app");
    assert_eq!(line["server"], upstream.to_string());
    assert!(line["upstream_ms"].as_f64().is_some(), "{line}");
    assert!(line["duration_ms"].as_f64().is_some(), "{line}");
    assert_eq!(line["retries"], 0);
    assert_eq!(line["client_ip"], "127.0.0.1");
    assert!(line["client_port"].as_u64().is_some(), "{line}");
    assert!(
        line["tls_version"]
            .as_str()
            .is_some_and(|v| v.contains("1.3") || v.contains("1.2")),
        "{line}"
    );
    assert!(line["tls_cipher"].as_str().is_some(), "{line}");
    assert_eq!(line["alpn"], "http/1.1");
    assert_eq!(line["user_agent"], "switchyard-tests");
    assert_eq!(line["referer"], "https://alpha.test/");
    assert_eq!(line["request_id"], request_id.as_str());
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(
        line["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{line}"
    );

    // Without a traceparent, one is started and logged.
    let answer = http_get(s.http, "alpha.test", "/x").unwrap();
    let started = answer.json()["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(started.len(), 55, "{started}");
    wait_until(Duration::from_secs(5), || {
        lines = wait_for_lines(&access_log_of(&s), 1);
        lines.iter().any(|l| l["path"] == "/x")
    });
    let line = lines.iter().find(|l| l["path"] == "/x").unwrap();
    assert_eq!(line["trace_id"].as_str().unwrap(), &started[3..35]);
    assert_eq!(line["query"], serde_json::Value::Null);
}

#[test]
fn a_trusted_request_id_is_kept_when_well_formed() {
    let (upstream, _app) = echo_upstream();
    let s = SplitterBuilder::new(vec![alpha(upstream, "[log]\ntrust_request_id = true\n")]).start();
    let id_seen = |id: &str| {
        let mut stream = TcpStream::connect(s.http).unwrap();
        let answer = request(
            &mut stream,
            "alpha.test",
            "/",
            &format!("X-Request-Id: {id}\r\nConnection: close\r\n"),
        )
        .unwrap();
        answer.json()["headers"]["x-request-id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(id_seen("9b2e4c1a-req"), "9b2e4c1a-req");
    let replaced = id_seen("has spaces and \"quotes\"");
    assert_ne!(replaced, "has spaces and \"quotes\"");
    assert!(!replaced.contains(' '));
}

#[test]
fn an_upstreams_via_is_kept_and_joined() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nVia: 1.0 origin\r\nVia: 1.1 cache\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
            );
        }
    });
    let s = SplitterBuilder::new(vec![alpha(upstream, "")]).start();
    let answer = http_get(s.http, "alpha.test", "/").unwrap();
    assert_eq!(
        answer.header("via"),
        Some("1.0 origin, 1.1 cache, 1.1 switchyard")
    );
}

#[test]
fn sigusr1_reopens_the_access_log_under_load_losing_no_line() {
    let _alone = measuring_alone();
    let (upstream, _app) = echo_upstream();
    let s = SplitterBuilder::new(vec![alpha(upstream, "[log]\naccess = \"access.log\"\n")]).start();
    let pid = s.tenant_pids("alpha", "ready")[0];
    let log = access_log_of(&s);
    let url = format!("http://{}/", s.http);
    let load = thread::spawn(move || wrk(&url, "alpha.test", 4, 8, false));
    thread::sleep(Duration::from_millis(1500));
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    signal(pid as u32, libc::SIGUSR1);
    let report = load.join().unwrap();
    assert_eq!(
        report.socket_errors + report.non_2xx,
        0,
        "{}",
        report.output
    );
    // Let the writer catch up (it writes a batch every 50 ms, later on a busy
    // machine), then count.
    let read = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
    let (mut old, mut new) = (String::new(), String::new());
    wait_until(Duration::from_secs(10), || {
        (old, new) = (read(&rotated), read(&log));
        old.ends_with('\n')
            && new.ends_with('\n')
            && (old.lines().count() + new.lines().count()) as u64 >= report.requests
    });
    assert!(!old.is_empty() && !new.is_empty(), "both files have lines");
    let mut count = 0u64;
    for line in old.lines().chain(new.lines()) {
        let parsed: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("split or broken line ({e}): {line:?}"));
        assert_eq!(parsed["tenant"], "alpha");
        count += 1;
    }
    assert!(old.ends_with('\n') && new.ends_with('\n'));
    // Every completed request has its line; a request cut at wrk's end (one
    // per connection) may too, and so does the kit's readiness probe.
    assert!(
        count >= report.requests && count <= report.requests + 8 + 1,
        "{count} lines for {} requests",
        report.requests
    );
    assert_eq!(
        s.tenant_pids("alpha", "ready"),
        [pid],
        "SIGUSR1 did not stop the process"
    );
}

#[test]
fn routes_answer_redirects_and_fixed_statuses_and_force_https() {
    let mut tenant = TenantSpec::echo("alpha", &["alpha.test"]);
    let tls_port = free_port();
    tenant.file.push_str(&format!(
        "[[route]]\npath = \"/old\"\nrespond = \"redirect\"\nto = \"https\"\nstatus = 301\n[[route]]\npath = \"/moved\"\nrespond = \"redirect\"\nto = \"https://alpha.test:{tls_port}/landing\"\n[[route]]\npath = \"/gone\"\nrespond = \"status\"\nstatus = 410\nbody = \"this page is gone\\n\"\n"
    ));
    let s = SplitterBuilder::new(vec![tenant])
        .tls_port(tls_port)
        .start();
    let old = http_get(s.http, "alpha.test", "/old/page?x=1").unwrap();
    assert_eq!(old.status, 301);
    assert_eq!(
        old.header("location"),
        Some("https://alpha.test/old/page?x=1")
    );
    let gone = http_get(s.http, "alpha.test", "/gone").unwrap();
    assert_eq!(gone.status, 410);
    assert_eq!(gone.body, b"this page is gone\n");
    // curl follows the redirect to the TLS listener and gets the echo.
    let out = Command::new("curl")
        .args(["-sk", "-L", "--max-time", "10", "--resolve"])
        .arg(format!("alpha.test:{}:127.0.0.1", s.http.port()))
        .args(["--resolve", &format!("alpha.test:{tls_port}:127.0.0.1")])
        .arg(format!("http://alpha.test:{}/moved", s.http.port()))
        .output()
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(body["path"], "/landing");
    assert_eq!(body["tls"], true);

    // force_https: every plaintext request is a 308 to https; TLS is served.
    let mut forced = TenantSpec::echo("alpha", &["alpha.test"]);
    forced.file = format!("force_https = true\n{}", forced.file);
    let s = SplitterBuilder::new(vec![forced]).start();
    let plain = http_get(s.http, "alpha.test", "/a/b?c=d").unwrap();
    assert_eq!(plain.status, 308);
    assert_eq!(plain.header("location"), Some("https://alpha.test/a/b?c=d"));
    assert_eq!(https_get(s.tls, "alpha.test", "/a").unwrap().status, 200);
}

#[test]
fn header_rules_reach_the_upstream_and_the_client() {
    let (upstream, _app) = echo_upstream();
    let mut tenant = TenantSpec::proxy("alpha", &["alpha.test"], &[upstream]);
    tenant.file = tenant.file.replace(
        "retries = 1\n",
        "retries = 1\nrequest_headers = { set = { \"X-Upstream\" = \"$upstream\" } }\nresponse_headers = { set = { \"X-Served-By\" = \"$upstream\" } }\n",
    );
    tenant.file.push_str(
        "[[route]]\npath = \"/ruled\"\nupstream = \"app\"\nrequest_headers = { set = { \"X-Route\" = \"$host for $client_ip\" }, add = { \"X-Multi\" = \"two\" }, remove = [\"X-Drop-Me\"] }\nresponse_headers = { add = { \"X-Frame-Options\" = \"DENY\" } }\n",
    );
    let s = SplitterBuilder::new(vec![tenant]).start();
    let mut stream = TcpStream::connect(s.http).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let answer = request(
        &mut stream,
        "alpha.test",
        "/ruled",
        "X-Drop-Me: secret\r\nX-Multi: one\r\nConnection: close\r\n",
    )
    .unwrap();
    assert_eq!(answer.status, 200);
    let seen = answer.json();
    let lines: Vec<&str> = seen["header_lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    assert!(
        lines.contains(&"x-route: alpha.test for 127.0.0.1"),
        "{lines:?}"
    );
    assert!(lines.contains(&"x-upstream: app"), "{lines:?}");
    assert!(
        lines.contains(&"x-multi: one") && lines.contains(&"x-multi: two"),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("x-drop-me")),
        "{lines:?}"
    );
    assert_eq!(answer.header("x-served-by"), Some("app"));
    assert_eq!(answer.header("x-frame-options"), Some("DENY"));
    // Another route of the same upstream gets the upstream's rules only.
    let plain = http_get(s.http, "alpha.test", "/").unwrap();
    assert_eq!(plain.header("x-served-by"), Some("app"));
    assert_eq!(plain.header("x-frame-options"), None);
}

#[test]
fn a_rate_limit_answers_429_at_the_right_count() {
    let mut tenant = TenantSpec::echo("alpha", &["alpha.test"]);
    tenant.file.push_str(
        "[[route]]\npath = \"/limited\"\nrespond = \"echo\"\nrate_limit = { requests = 3, window = \"10s\" }\n[[route]]\npath = \"/per-user\"\nrespond = \"echo\"\nrate_limit = { per = \"header:X-User\", requests = 2, window = \"10s\" }\n",
    );
    let s = SplitterBuilder::new(vec![tenant]).start();
    let statuses: Vec<u16> = (0..5)
        .map(|_| http_get(s.http, "alpha.test", "/limited").unwrap().status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let refused = http_get(s.http, "alpha.test", "/limited").unwrap();
    assert_eq!(refused.header("retry-after"), Some("10"));
    assert_eq!(refused.json()["route"], "/limited");
    // Other routes are not limited.
    assert_eq!(http_get(s.http, "alpha.test", "/").unwrap().status, 200);
    // Per header value: each user has its own count.
    let as_user = |user: &str| {
        let mut stream = TcpStream::connect(s.http).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        request(
            &mut stream,
            "alpha.test",
            "/per-user",
            &format!("X-User: {user}\r\nConnection: close\r\n"),
        )
        .unwrap()
        .status
    };
    let ann: Vec<u16> = (0..3).map(|_| as_user("ann")).collect();
    let bob: Vec<u16> = (0..2).map(|_| as_user("bob")).collect();
    assert_eq!(ann, [200, 200, 429]);
    assert_eq!(bob, [200, 200]);
}

#[test]
fn a_route_compresses_responses_for_clients_that_accept_it() {
    let (upstream, _app) = echo_upstream();
    let mut tenant = TenantSpec::proxy("alpha", &["alpha.test"], &[upstream]);
    tenant.file.push_str(
        "[[route]]\npath = \"/packed\"\nupstream = \"app\"\ncompress = [\"zstd\", \"br\", \"gzip\"]\n",
    );
    let s = SplitterBuilder::new(vec![tenant]).start();
    let fetch = |path: &str, encoding: &str| {
        let out = Command::new("curl")
            .args(["-s", "-v", "--compressed", "--max-time", "10"])
            .args(["-H", "Host: alpha.test", "-H"])
            .arg(format!("Accept-Encoding: {encoding}"))
            .arg(format!("http://{}{path}", s.http))
            .output()
            .unwrap();
        (
            out.stdout,
            String::from_utf8_lossy(&out.stderr).to_ascii_lowercase(),
        )
    };
    for encoding in ["zstd", "br", "gzip"] {
        let (body, trace) = fetch("/packed?size=20000", encoding);
        assert!(
            trace.contains(&format!("< content-encoding: {encoding}")),
            "{encoding}: {trace}"
        );
        assert_eq!(body.len(), 20_000, "{encoding}: decoded by curl: {trace}");
        assert!(body.iter().all(|b| *b == b'x'));
    }
    // A route without `compress`, and a client that accepts none: as sent.
    let (body, trace) = fetch("/other?size=20000", "gzip");
    assert!(!trace.contains("content-encoding"), "{trace}");
    assert_eq!(body.len(), 20_000);
    let (_, trace) = fetch("/packed?size=20000", "identity");
    assert!(!trace.contains("content-encoding"), "{trace}");
}
