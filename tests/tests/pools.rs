//! Upstream pools of a tenant, black-box: real backends on loopback, a real
//! l7proxy (standalone, so the pool is all that is under test), real clients
//! and wrk.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use switchyard_tests::dns::DnsServer;
use switchyard_tests::*;

fn loopback() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// `N` echo-upstream backends named `b0`, `b1`, … on free loopback ports.
fn backends<const N: usize>() -> ([SocketAddr; N], Vec<Proc>) {
    let addrs: [SocketAddr; N] = std::array::from_fn(|_| loopback());
    let procs = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| start_upstream(*a, &format!("b{i}")))
        .collect();
    (addrs, procs)
}

fn quoted(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which backend answered: echo-upstream puts its name in the body.
fn backend_of(response: &Response) -> String {
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    response.json()["upstream"].as_str().unwrap().to_string()
}

/// Sends `count` requests on one keep-alive connection and counts the backends.
fn spread(addr: SocketAddr, count: usize, extra: impl Fn(usize) -> String) -> Vec<String> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (0..count)
        .map(|i| backend_of(&request(&mut stream, "app.test", "/", &extra(i)).unwrap()))
        .collect()
}

fn counts(names: &[String]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for name in names {
        *counts.entry(name.clone()).or_insert(0) += 1;
    }
    counts
}

fn registered(tenant: &StandaloneTenant, addr: SocketAddr, ttl: &str) -> Response {
    post_json(
        tenant.registration,
        "/v1/register",
        &format!(r#"{{"upstream":"app","addr":"{addr}","ttl":"{ttl}"}}"#),
    )
    .unwrap()
}

fn server_entry(tenant: &StandaloneTenant, addr: SocketAddr) -> Option<serde_json::Value> {
    tenant
        .servers("app")
        .into_iter()
        .find(|s| s["addr"] == addr.to_string())
}

#[test]
fn round_robin_gives_each_of_three_backends_a_third() {
    let (addrs, _backends) = backends::<3>();
    let tenant = StandaloneTenant::start(&format!(
        "[[upstream]]\nname = \"app\"\nservers = [{}]\nlb = \"round_robin\"\n[[route]]\nupstream = \"app\"\n",
        quoted(&addrs)
    ));
    let by_backend = counts(&spread(tenant.addr, 3000, |_| String::new()));
    println!("3000 requests, round robin: {by_backend:?}");
    assert_eq!(by_backend.len(), 3);
    for (name, n) in &by_backend {
        assert!(
            (950..=1050).contains(n),
            "{name} got {n} of 3000 requests, not a third ±5%"
        );
    }
}

#[test]
fn weights_and_least_conn_share_by_weight() {
    let (addrs, _backends) = backends::<2>();
    for lb in ["round_robin", "least_conn"] {
        let tenant = StandaloneTenant::start(&format!(
            "[[upstream]]\nname = \"app\"\nservers = [\"{} weight=3\", \"{}\"]\nlb = \"{lb}\"\n[[route]]\nupstream = \"app\"\n",
            addrs[0], addrs[1]
        ));
        let by_backend = counts(&spread(tenant.addr, 800, |_| String::new()));
        println!("{lb}, weights 3:1, 800 requests: {by_backend:?}");
        let heavy = by_backend["b0"] as f64 / 800.0;
        assert!(
            (0.70..=0.80).contains(&heavy),
            "{lb}: the weight-3 server got {heavy:.2} of the requests, not 0.75"
        );
    }
}

#[test]
fn consistent_hash_keeps_keys_and_moves_only_the_removed_servers_keys() {
    let (addrs, _backends) = backends::<3>();
    let tenant = StandaloneTenant::start(
        "[[upstream]]\nname = \"app\"\nregistration = true\nlb = \"consistent_hash\"\nhash_key = \"header:X-User\"\n[[route]]\nupstream = \"app\"\n[registration]\nlisten = \"{registration}\"\n",
    );
    for addr in addrs {
        assert_eq!(registered(&tenant, addr, "1h").status, 200);
    }
    wait_until(Duration::from_secs(5), || tenant.servers("app").len() == 3);
    let keys = 300;
    let user = |i: usize| format!("X-User: user-{i}\r\n");
    let before = spread(tenant.addr, keys, user);
    // Each key stays on its server.
    assert_eq!(spread(tenant.addr, keys, user), before);
    let spread_before = counts(&before);
    println!("300 keys over 3 servers: {spread_before:?}");
    assert_eq!(spread_before.len(), 3, "every server owns some keys");

    let gone = post_json(
        tenant.registration,
        "/v1/deregister",
        &format!(r#"{{"upstream":"app","addr":"{}"}}"#, addrs[1]),
    )
    .unwrap();
    assert_eq!(gone.status, 200);
    wait_until(Duration::from_secs(5), || tenant.servers("app").len() == 2);
    let after = spread(tenant.addr, keys, user);
    let mut moved_of_others = 0;
    for (old, new) in before.iter().zip(&after) {
        assert_ne!(new, "b1", "a key still went to the removed server");
        if old != "b1" && old != new {
            moved_of_others += 1;
        }
    }
    println!(
        "after removing b1: {:?}; keys of the other servers that moved: {moved_of_others}",
        counts(&after)
    );
    assert_eq!(
        moved_of_others, 0,
        "only the removed server's keys may move"
    );
}

#[test]
fn kill_9_of_one_backend_under_load_loses_nothing_and_it_gets_no_more_requests() {
    let addrs = [loopback(), loopback(), loopback()];
    let mut backends: Vec<Option<Proc>> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| Some(start_upstream(*a, &format!("b{i}"))))
        .collect();
    let tenant = StandaloneTenant::start(&format!(
        "[[upstream]]\nname = \"app\"\nservers = [{}]\nretries = 2\nregistration = true\nhealth = {{ kind = \"http\", path = \"/healthz\", interval = \"200ms\", rise = 2, fall = 2 }}\n[[route]]\nupstream = \"app\"\n[registration]\nlisten = \"{{registration}}\"\n",
        quoted(&addrs)
    ));
    let url = format!("http://{}/", tenant.addr);
    let load = std::thread::spawn(move || wrk(&url, "app.test", 6, 16, false));
    std::thread::sleep(Duration::from_secs(2));
    backends[1].take(); // SIGKILL, reaped
    let report = load.join().unwrap();
    println!(
        "wrk, kill -9 of one of three backends after 2 s: {} requests, {} non-2xx, {} socket errors",
        report.requests, report.non_2xx, report.socket_errors
    );
    assert!(report.requests > 1000, "{}", report.output);
    assert_eq!(report.non_2xx, 0, "{}", report.output);
    assert_eq!(report.socket_errors, 0, "{}", report.output);

    let dead = server_entry(&tenant, addrs[1]).unwrap();
    assert_eq!(dead["health_check"], "down", "{dead}");
    assert_eq!(dead["healthy"], false);
    let requests_then = dead["requests"].as_u64().unwrap();
    let more = spread(tenant.addr, 300, |_| String::new());
    assert!(!more.contains(&"b1".to_string()));
    let dead = server_entry(&tenant, addrs[1]).unwrap();
    assert_eq!(
        dead["requests"].as_u64().unwrap(),
        requests_then,
        "the dead server got requests after its health check failed: {dead}"
    );
    let live = counts(&more);
    assert_eq!(live.len(), 2, "{live:?}");

    // The same, as Prometheus metrics.
    let metrics = http_get_authorized(tenant.registration, "localhost", "/metrics").unwrap();
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8(metrics.body).unwrap();
    let up_of = |addr: SocketAddr| {
        text.lines()
            .find(|l| {
                l.starts_with("switchyard_upstream_server_up{")
                    && l.contains(&format!("server=\"{addr}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned)
    };
    assert_eq!(up_of(addrs[1]).as_deref(), Some("0"), "{text}");
    assert_eq!(up_of(addrs[0]).as_deref(), Some("1"), "{text}");
    assert!(text.contains("tenant=\"t\""), "{text}");
    // The requests that met the dead server went to another: retries.
    let retries: u64 = text
        .lines()
        .find(|l| l.starts_with("switchyard_tenant_upstream_retries_total{tenant=\"t\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(retries > 0, "{text}");
    assert!(
        text.contains(
            "switchyard_tenant_upstream_duration_seconds_count{tenant=\"t\",upstream=\"app\"}"
        ),
        "{text}"
    );
}

#[test]
fn all_servers_down_gets_503_json_at_once() {
    let dead = [loopback(), loopback()];
    // Active checks find both down (passive health alone never takes every
    // server out: see the panic-mode test).
    let tenant = StandaloneTenant::start(&format!(
        "[[upstream]]\nname = \"app\"\nservers = [{}]\nconnect_timeout = \"2s\"\nhealth = {{ kind = \"tcp\", interval = \"100ms\", timeout = \"100ms\", fall = 1 }}\n[[route]]\nupstream = \"app\"\n",
        quoted(&dead)
    ));
    wait_until(Duration::from_secs(5), || tenant.get("/").status == 503);
    let started = Instant::now();
    let next = tenant.get("/");
    let took = started.elapsed();
    println!("with every server down: {} in {took:?}", next.status);
    assert_eq!(next.status, 503);
    let body = next.json();
    assert_eq!(body["upstream"], "app");
    assert!(next.header("retry-after").is_some());
    assert!(body["error"].as_str().unwrap().contains("every server"));
    assert!(took < Duration::from_millis(500), "took {took:?}");
}

/// Answers every request head on `stream` with `status()` and a JSON body
/// naming `name`, until the client closes.
fn answer_each_request(
    mut stream: std::net::TcpStream,
    name: &str,
    status: impl Fn() -> &'static str,
) {
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(k) => seen.extend_from_slice(&buf[..k]),
        }
        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            seen.drain(..end + 4);
            let body = format!("{{\"upstream\":\"{name}\"}}");
            let answer = format!(
                "HTTP/1.1 {}\r\nContent-Length: {}\r\n\r\n{body}",
                status(),
                body.len()
            );
            if stream.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    }
}

/// A server that resets its first `resets` connections (RST, as a crashing
/// backend does), then answers every request `200` with its `name`.
fn resetting_server(resets: usize, name: &'static str) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            if n < resets {
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                drop(stream);
                continue;
            }
            std::thread::spawn(move || answer_each_request(stream, name, || "200 OK"));
        }
    });
    addr
}

#[test]
fn a_one_server_pool_is_never_ejected() {
    // A burst of resets from the only server: the requests they hit fail, but
    // the server is never taken out, so nothing gets a proxy-made 503 once it
    // answers again.
    let server = resetting_server(4, "only");
    let tenant = StandaloneTenant::start(&format!(
        "[[upstream]]\nname = \"app\"\nservers = [\"{server}\"]\nretries = 0\npassive = {{ failures = 1, steps = [\"30s\"] }}\n[[route]]\nupstream = \"app\"\n",
    ));
    let statuses: Vec<u16> = (0..12).map(|_| tenant.get("/").status).collect();
    assert!(!statuses.contains(&503), "{statuses:?}");
    assert_eq!(&statuses[statuses.len() - 6..], [200; 6], "{statuses:?}");
}

#[test]
fn when_every_server_is_ejected_all_are_used() {
    // Both servers reset their first connections and are ejected for 30 s;
    // they answer again at once, and panic mode sends requests to them
    // instead of answering 503 for half a minute.
    let servers = [resetting_server(2, "a"), resetting_server(2, "b")];
    let tenant = StandaloneTenant::start(&format!(
        "[[upstream]]\nname = \"app\"\nservers = [{}]\nretries = 0\npassive = {{ failures = 1, steps = [\"30s\"] }}\n[[route]]\nupstream = \"app\"\n",
        quoted(&servers)
    ));
    let statuses: Vec<u16> = (0..12).map(|_| tenant.get("/").status).collect();
    assert!(!statuses.contains(&503), "{statuses:?}");
    assert_eq!(&statuses[statuses.len() - 4..], [200; 4], "{statuses:?}");
}

/// A server answering `503` while `failing` is set, `200` with `name` after.
fn flaky_server(
    name: &'static str,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let failing = failing.clone();
            std::thread::spawn(move || {
                answer_each_request(stream, name, || {
                    if failing.load(std::sync::atomic::Ordering::SeqCst) {
                        "503 Service Unavailable"
                    } else {
                        "200 OK"
                    }
                })
            });
        }
    });
    addr
}

#[test]
fn a_server_answering_5xx_is_ejected_for_its_step_and_comes_back() {
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let servers = [
        flaky_server("flaky", failing.clone()),
        flaky_server("steady", std::sync::Arc::new(Default::default())),
    ];
    let tenant = StandaloneTenant::start(&format!(
        "[[upstream]]\nname = \"app\"\nservers = [{}]\npassive = {{ failures = 1, steps = [\"5s\"] }}\n[[route]]\nupstream = \"app\"\n",
        quoted(&servers)
    ));
    // Its 503 is relayed once (a response is never retried), then it is out.
    let first: Vec<Response> = (0..2).map(|_| tenant.get("/")).collect();
    assert!(first.iter().any(|r| r.status == 503), "{first:?}");
    let during: Vec<String> = (0..10)
        .map(|_| {
            let r = tenant.get("/");
            assert_eq!(r.status, 200);
            r.json()["upstream"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(during.iter().all(|n| n == "steady"), "{during:?}");
    // Mended, and its step over: it gets requests again.
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(5200));
    let after: Vec<String> = (0..10)
        .map(|_| {
            tenant.get("/").json()["upstream"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(after.iter().any(|n| n == "flaky"), "{after:?}");
}

#[test]
fn backends_register_in_any_order_under_load_and_lapse_without_renewal() {
    let registration_addr = loopback();
    let spawn_registering = |addr: SocketAddr, name: &str| {
        Proc(
            Command::new(bin("echo-upstream"))
                .args(["--listen", &addr.to_string(), "--name", name])
                .args(["--register", &format!("http://{registration_addr}")])
                .args(["--upstream", "app", "--ttl", "3s"])
                .env("SWITCHYARD_REGISTRATION_TOKEN", TEST_TOKEN)
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    // Started before the proxy: it keeps trying until the API answers.
    let first = loopback();
    let _early = spawn_registering(first, "early");
    std::thread::sleep(Duration::from_millis(600));

    let tenant = StandaloneTenant::start(&format!(
        "[[upstream]]\nname = \"app\"\nregistration = true\n[[route]]\nupstream = \"app\"\n[registration]\nlisten = \"{registration_addr}\"\n"
    ));
    let tenant = StandaloneTenant {
        registration: registration_addr,
        ..tenant
    };
    tenant.wait_until_served();
    assert_eq!(backend_of(&tenant.get("/")), "early");

    let url = format!("http://{}/", tenant.addr);
    let load = std::thread::spawn(move || wrk(&url, "app.test", 5, 8, false));
    std::thread::sleep(Duration::from_secs(1));
    let late: Vec<SocketAddr> = (0..3).map(|_| loopback()).collect();
    let started = Instant::now();
    let _late: Vec<Proc> = late
        .iter()
        .enumerate()
        .map(|(i, a)| spawn_registering(*a, &format!("late{i}")))
        .collect();
    let mut joined = Vec::new();
    for addr in &late {
        wait_until(Duration::from_secs(5), || {
            server_entry(&tenant, *addr).is_some_and(|s| s["requests"].as_u64() > Some(0))
        });
        joined.push(started.elapsed());
    }
    let report = load.join().unwrap();
    println!(
        "three backends registering under load got traffic after {joined:?} (from their start); wrk: {} requests, {} non-2xx, {} socket errors",
        report.requests, report.non_2xx, report.socket_errors
    );
    assert!(joined.iter().all(|t| *t < Duration::from_secs(2)));
    assert_eq!(report.non_2xx, 0, "{}", report.output);
    assert_eq!(report.socket_errors, 0, "{}", report.output);
    for entry in tenant.servers("app") {
        assert_eq!(entry["origin"], "registered");
    }

    // Registered once, never renewed: gone after its TTL.
    let once = loopback();
    let _once = start_upstream(once, "once");
    let reply = registered(&tenant, once, "1s");
    assert_eq!(reply.status, 200, "{reply:?}");
    wait_until(Duration::from_secs(2), || {
        server_entry(&tenant, once).is_some()
    });
    let registered_at = Instant::now();
    wait_until(Duration::from_secs(5), || {
        server_entry(&tenant, once).is_none()
    });
    println!(
        "a registration with ttl 1s left the pool {:?} after it was seen",
        registered_at.elapsed()
    );
    assert_eq!(tenant.servers("app").len(), 4);
}

#[test]
fn max_in_flight_queues_then_503s_and_nothing_hangs() {
    let slow = loopback();
    let _backend = start_upstream(slow, "slow");
    let tenant = StandaloneTenant::start(&format!(
        "[[upstream]]\nname = \"app\"\nservers = [\"{slow}\"]\nregistration = true\nmax_in_flight = 2\nqueue_timeout = \"300ms\"\n[[route]]\nupstream = \"app\"\n[registration]\nlisten = \"{{registration}}\"\n"
    ));
    let burst = |round: usize| {
        let started = Instant::now();
        let clients: Vec<_> = (0..20)
            .map(|_| {
                let addr = tenant.addr;
                std::thread::spawn(move || {
                    let r = http_get(addr, "app.test", "/slow?delay_ms=1000").unwrap();
                    (r.status, r.header("retry-after").map(str::to_owned), r)
                })
            })
            .collect();
        let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        let took = started.elapsed();
        let ok = results.iter().filter(|(s, _, _)| *s == 200).count();
        let refused: Vec<_> = results.iter().filter(|(s, _, _)| *s == 503).collect();
        println!(
            "round {round}: 20 clients, max_in_flight 2: {ok} × 200, {} × 503, all done in {took:?}",
            refused.len()
        );
        assert_eq!(ok, 2);
        assert_eq!(refused.len(), 18);
        for (_, retry_after, response) in refused {
            assert_eq!(retry_after.as_deref(), Some("1"));
            assert!(response.json()["error"]
                .as_str()
                .unwrap()
                .contains("max_in_flight"));
        }
        assert!(took < Duration::from_secs(3), "a client hung: {took:?}");
    };
    burst(1);
    let rss_after_first = rss_kib(tenant.proc.pid());
    for round in 2..=5 {
        burst(round);
    }
    let rss_after_last = rss_kib(tenant.proc.pid());
    println!(
        "l7proxy RSS after round 1: {rss_after_first} KiB, after round 5: {rss_after_last} KiB"
    );
    // Counted in the tenant's request metrics (its own, standalone).
    let metrics = String::from_utf8(
        http_get_authorized(tenant.registration, "localhost", "/metrics")
            .unwrap()
            .body,
    )
    .unwrap();
    assert!(
        metrics.contains("switchyard_tenant_max_in_flight_rejections_total{tenant=\"t\"} 90"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_tenant_requests_total{tenant=\"t\",route=\"/\",upstream=\"app\",status_class=\"5xx\"} 90"),
        "{metrics}"
    );
    assert!(
        rss_after_last < rss_after_first + 4096,
        "memory grew from {rss_after_first} to {rss_after_last} KiB"
    );
}

#[test]
fn dns_discovery_follows_srv_answers() {
    let (addrs, _backends) = backends::<3>();
    let srv = |a: &SocketAddr| (0u16, 10u16, a.port(), "backend.test.".to_string());
    let dns = DnsServer::start("_app._tcp.test", vec![srv(&addrs[0])]);
    let tenant = StandaloneTenant::start(&format!(
        "[[upstream]]\nname = \"app\"\nregistration = true\ndiscovery = {{ dns = \"_app._tcp.test\", interval = \"200ms\", resolver = \"{}\" }}\n[[route]]\nupstream = \"app\"\n[registration]\nlisten = \"{{registration}}\"\n",
        dns.addr
    ));
    tenant.wait_until_served();
    assert_eq!(
        counts(&spread(tenant.addr, 30, |_| String::new()))
            .keys()
            .collect::<Vec<_>>(),
        ["b0"]
    );
    assert_eq!(tenant.servers("app")[0]["origin"], "dns");

    dns.set(vec![srv(&addrs[1]), srv(&addrs[2])]);
    let changed = Instant::now();
    wait_until(Duration::from_secs(5), || {
        let seen = counts(&spread(tenant.addr, 30, |_| String::new()));
        seen.len() == 2 && !seen.contains_key("b0")
    });
    println!(
        "the pool followed a new SRV answer within {:?}",
        changed.elapsed()
    );
}

#[test]
fn dns_discovery_falls_back_to_a_records_with_the_configured_port() {
    let (addrs, _backends) = backends::<1>();
    // No SRV records for the name; its A record is 127.0.0.1.
    let dns = DnsServer::start("app.test", Vec::new());
    let tenant = StandaloneTenant::start(&format!(
        "[[upstream]]\nname = \"app\"\ndiscovery = {{ dns = \"app.test\", port = {}, interval = \"200ms\", resolver = \"{}\" }}\n[[route]]\nupstream = \"app\"\n",
        addrs[0].port(),
        dns.addr
    ));
    tenant.wait_until_served();
    assert_eq!(backend_of(&tenant.get("/")), "b0");
}

#[test]
fn bad_registration_requests_get_400_and_change_nothing() {
    let good = loopback();
    let _backend = start_upstream(good, "good");
    let tenant = StandaloneTenant::start(&format!(
        "[[upstream]]\nname = \"app\"\nservers = [\"{good}\"]\nregistration = true\n[[upstream]]\nname = \"fixed\"\nservers = [\"{good}\"]\n[[route]]\nupstream = \"app\"\n[registration]\nlisten = \"{{registration}}\"\n"
    ));
    let before = tenant.upstreams();
    let cases: &[(&str, &str, &str, u16)] = &[
        ("not JSON", "/v1/register", "{upstream: app", 400),
        ("not an object", "/v1/register", "[1, 2]", 400),
        ("missing addr", "/v1/register", r#"{"upstream":"app"}"#, 400),
        (
            "unknown field",
            "/v1/register",
            r#"{"upstream":"app","addr":"127.0.0.1:9","ttl":"5s","color":"red"}"#,
            400,
        ),
        (
            "unknown upstream",
            "/v1/register",
            r#"{"upstream":"nope","addr":"127.0.0.1:9"}"#,
            400,
        ),
        (
            "upstream without registration",
            "/v1/register",
            r#"{"upstream":"fixed","addr":"127.0.0.1:9"}"#,
            400,
        ),
        (
            "address that does not parse",
            "/v1/register",
            r#"{"upstream":"app","addr":"127.0.0.1"}"#,
            400,
        ),
        (
            "host name instead of IP",
            "/v1/register",
            r#"{"upstream":"app","addr":"example.com:80"}"#,
            400,
        ),
        (
            "port 0",
            "/v1/register",
            r#"{"upstream":"app","addr":"127.0.0.1:0"}"#,
            400,
        ),
        (
            "unspecified address",
            "/v1/register",
            r#"{"upstream":"app","addr":"0.0.0.0:80"}"#,
            400,
        ),
        (
            "relative unix path",
            "/v1/register",
            r#"{"upstream":"app","addr":"unix:app.sock"}"#,
            400,
        ),
        (
            "zero TTL",
            "/v1/register",
            r#"{"upstream":"app","addr":"127.0.0.1:9","ttl":"0s"}"#,
            400,
        ),
        (
            "absurd TTL",
            "/v1/register",
            r#"{"upstream":"app","addr":"127.0.0.1:9","ttl":"100h"}"#,
            400,
        ),
        (
            "TTL without unit",
            "/v1/register",
            r#"{"upstream":"app","addr":"127.0.0.1:9","ttl":"10"}"#,
            400,
        ),
        (
            "weight 0",
            "/v1/register",
            r#"{"upstream":"app","addr":"127.0.0.1:9","weight":0}"#,
            400,
        ),
        (
            "deregister unknown upstream",
            "/v1/deregister",
            r#"{"upstream":"nope","addr":"127.0.0.1:9"}"#,
            400,
        ),
        (
            "deregister bad address",
            "/v1/deregister",
            r#"{"upstream":"app","addr":"nine"}"#,
            400,
        ),
        (
            "deregister a static server",
            "/v1/deregister",
            &format!(r#"{{"upstream":"app","addr":"{good}"}}"#),
            404,
        ),
        ("unknown endpoint", "/v1/registr", "{}", 404),
        ("GET-only endpoint", "/v1/upstreams", "{}", 405),
    ];
    for (what, path, body, status) in cases {
        let reply = post_json(tenant.registration, path, body).unwrap();
        assert_eq!(reply.status, *status, "{what}: {reply:?}");
        let message = reply.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(!message.is_empty(), "{what}: no message");
        println!("{what}: {status} {message}");
    }
    let oversized = format!(
        r#"{{"upstream":"app","addr":"127.0.0.1:9","ttl":"{}"}}"#,
        "9".repeat(70_000)
    );
    assert_eq!(
        post_json(tenant.registration, "/v1/register", &oversized)
            .unwrap()
            .status,
        413
    );
    let get_register =
        http_get_authorized(tenant.registration, "localhost", "/v1/register").unwrap();
    assert_eq!(get_register.status, 405);
    assert_eq!(get_register.header("allow"), Some("POST"));

    let mut after = tenant.upstreams();
    // Counters aside, nothing changed.
    for upstreams in [&mut after] {
        for u in upstreams["upstreams"].as_array_mut().unwrap() {
            for s in u["servers"].as_array_mut().unwrap() {
                s["requests"] = 0.into();
            }
        }
    }
    assert_eq!(after, before);
    // The proxy still serves.
    assert_eq!(backend_of(&tenant.get("/")), "good");
}

#[test]
fn websocket_upgrade_is_passed_through() {
    let addr = loopback();
    let _backend = start_upstream(addr, "ws");
    let tenant = StandaloneTenant::start(&format!(
        "[[upstream]]\nname = \"app\"\nservers = [\"{addr}\"]\n[[route]]\nupstream = \"app\"\n"
    ));
    let mut stream = TcpStream::connect(tenant.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "closed during the head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for message in [&b"hello through two hops"[..], b"and again"] {
        stream.write_all(message).unwrap();
        let mut echoed = vec![0u8; message.len()];
        stream.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed, message);
    }
}

/// A TLS backend: another l7proxy, on its own listener, with `tls` as its
/// `[tls]` section and the echo responder; it answers backend.test and
/// app.test (the name the front tenant forwards).
fn tls_backend(dir: &TempDir, tls: &str) -> (SocketAddr, Proc) {
    dir.write(
        "tenants/b.toml",
        &format!("[tls]\n{tls}\n[[route]]\nrespond = \"echo\"\n"),
    );
    let host = dir.write(
        "host.toml",
        &format!("[splitter]\nruntime_dir = \"run\"\norphan_timeout = \"1s\"\n[[listen]]\naddr = \"127.0.0.1:{}\"\nprotocol = \"tls\"\n[[tenant]]\nname = \"b\"\nhosts = [\"backend.test\", \"app.test\"]\nconfig = \"tenants/b.toml\"\n", free_port()),
    );
    let addr = loopback();
    let backend = Proc(
        Command::new(bin("l7proxy"))
            .args(["--tenant", "b", "--config"])
            .arg(&host)
            .args(["--listen", &format!("{addr},tls")])
            .spawn()
            .unwrap(),
    );
    wait_until(Duration::from_secs(20), || TcpStream::connect(addr).is_ok());
    (addr, backend)
}

#[test]
fn upstream_tls_with_sni_h2_and_verification() {
    let backend_dir = TempDir::new("tls-backend");
    let (backend_addr, _backend) = tls_backend(&backend_dir, "self_signed = true");
    let tenant = StandaloneTenant::start(&format!(
        "[[upstream]]\nname = \"app\"\nservers = [\"{backend_addr}\"]\ntls = {{ sni = \"backend.test\", verify = false }}\nh2 = true\n[[upstream]]\nname = \"strict\"\nservers = [\"{backend_addr}\"]\ntls = {{ sni = \"backend.test\" }}\n[[route]]\nupstream = \"app\"\n[[route]]\npath = \"/strict\"\nupstream = \"strict\"\n"
    ));
    let reply = tenant.get("/hello");
    assert_eq!(reply.status, 200, "{reply:?}");
    let echo = reply.json();
    println!(
        "through TLS upstream: tls={} version={} host={}",
        echo["tls"], echo["version"], echo["host"]
    );
    assert_eq!(echo["tls"], true);
    assert_eq!(echo["version"], "HTTP/2.0");
    // The Host header is forwarded as the client sent it.
    assert_eq!(echo["host"], "app.test");

    // Verification on, and the generated certificate is trusted by no one.
    let strict = tenant.get("/strict");
    assert_eq!(strict.status, 502, "{strict:?}");
}

#[test]
fn registrations_reach_every_process_of_the_pool_and_survive_a_rolling_restart() {
    let _alone = measuring_alone();
    let backend = loopback();
    let _backend = start_upstream(backend, "registered");
    let registration = loopback();
    let mut tenant = TenantSpec::echo("shop", &["shop.test"]);
    tenant.file = format!(
        "[[upstream]]\nname = \"app\"\nregistration = true\n[[route]]\npath = \"/\"\nupstream = \"app\"\n[[route]]\npath = \"/echo\"\nrespond = \"echo\"\n[registration]\nlisten = \"{registration}\"\n"
    );
    tenant.processes = 2;
    let s = SplitterBuilder::new(vec![tenant]).start();
    wait_until(Duration::from_secs(10), || {
        s.tenant_pids("shop", "ready").len() == 2
    });
    // Either process may take the registration (SO_REUSEPORT); both serve it.
    let reply = post_json(
        registration,
        "/v1/register",
        &format!(r#"{{"upstream":"app","addr":"{backend}","ttl":"1h"}}"#),
    )
    .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen_by = |pids: &mut std::collections::BTreeSet<u64>| {
        // New connections take turns over the processes: the echo names
        // them, and every proxied request must reach the registered backend.
        for _ in 0..10 {
            let echo = http_get(s.http, "shop.test", "/echo").unwrap().json();
            pids.insert(echo["pid"].as_u64().unwrap());
        }
        for _ in 0..40 {
            let r = http_get(s.http, "shop.test", "/").unwrap();
            assert_eq!(backend_of(&r), "registered");
        }
    };
    // The process that did not take the POST reads the registration from
    // the shared file within about 250 ms (later on a busy machine): wait
    // until ten new connections in a row, which take turns over both
    // processes, all reach the backend.
    wait_until(Duration::from_secs(5), || {
        (0..10).all(|_| matches!(http_get(s.http, "shop.test", "/"), Ok(r) if r.status == 200))
    });
    let mut pids = Default::default();
    seen_by(&mut pids);
    assert_eq!(pids.len(), 2, "both processes answered: {pids:?}");

    let http = s.http;
    let load =
        std::thread::spawn(move || wrk(&format!("http://{http}/"), "shop.test", 4, 8, false));
    std::thread::sleep(Duration::from_millis(1000));
    let (code, out, err) = s.ctl(&["restart", "shop"]);
    assert_eq!(code, 0, "{out}{err}");
    let report = load.join().unwrap();
    println!(
        "rolling restart of a 2-process tenant whose only server is registered: {} requests, {} non-2xx, {} socket errors",
        report.requests, report.non_2xx, report.socket_errors
    );
    assert_eq!(report.non_2xx, 0, "{}", report.output);
    assert_eq!(report.socket_errors, 0, "{}", report.output);
    let mut after = Default::default();
    seen_by(&mut after);
    assert!(
        after.is_disjoint(&pids),
        "new generation: {after:?} vs {pids:?}"
    );
}

#[test]
fn upstream_tls_verifies_against_a_configured_ca() {
    // A certificate for backend.test, trusted through `ca` in the tenant file.
    let generated = rcgen::generate_simple_self_signed(vec!["backend.test".to_string()]).unwrap();
    let backend_dir = TempDir::new("tls-ca-backend");
    let cert = backend_dir.write("backend.pem", &generated.cert.pem());
    backend_dir.write("backend.key", &generated.key_pair.serialize_pem());
    let (backend_addr, _backend) = tls_backend(
        &backend_dir,
        "cert = \"../backend.pem\"\nkey = \"../backend.key\"",
    );
    let tenant = StandaloneTenant::start(&format!(
        "[[upstream]]\nname = \"app\"\nservers = [\"{backend_addr}\"]\ntls = {{ sni = \"backend.test\", ca = \"{}\" }}\n[[upstream]]\nname = \"wrong-name\"\nservers = [\"{backend_addr}\"]\ntls = {{ sni = \"other.test\", ca = \"{}\" }}\n[[route]]\nupstream = \"app\"\n[[route]]\npath = \"/wrong\"\nupstream = \"wrong-name\"\n",
        cert.display(),
        cert.display()
    ));
    let reply = tenant.get("/");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["tls"], true);
    // The same CA, but the certificate is not for the name sent and checked.
    let wrong = tenant.get("/wrong");
    assert_eq!(wrong.status, 502, "{wrong:?}");
}
