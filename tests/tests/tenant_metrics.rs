//! Per-tenant request metrics: counted in each tenant process, summed over a
//! tenant's processes by the splitter, shown by the admin endpoint for every
//! tenant and by a tenant's own socket for that tenant only.

use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;
use switchyard_tests::*;

/// The sum of every sample of `family` whose labels contain all of `labels`.
fn sample_sum(text: &str, family: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn scrape(addr: SocketAddr, host: &str) -> String {
    let response = http_get_authorized(addr, host, "/metrics").unwrap();
    assert_eq!(response.status, 200);
    String::from_utf8(response.body).unwrap()
}

/// `requests` GETs over `connections` kept-alive connections (the splitter
/// spreads connections over the tenant's processes); each must be answered
/// with `status`, so a miscount names the request that caused it.
fn load(
    addr: SocketAddr,
    host: &str,
    path: &str,
    status: u16,
    connections: usize,
    requests: usize,
) {
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let (host, path) = (host.to_string(), path.to_string());
            thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                for n in 0..requests / connections {
                    let r = request(&mut stream, &host, &path, "")
                        .unwrap_or_else(|e| panic!("request {n} to {host}{path}: {e}"));
                    assert_eq!(r.status, status, "request {n} to {host}{path}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn a_two_process_tenant_is_summed_correctly_and_never_goes_backwards() {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let registration: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut alpha = TenantSpec::echo("alpha", &["alpha.test"]);
    alpha.processes = 2;
    alpha.file = format!(
        "[[upstream]]\nname = \"app\"\nregistration = true\n[[route]]\npath = \"/\"\nrespond = \"echo\"\n[[route]]\npath = \"/missing\"\nrespond = \"status\"\nstatus = 404\nbody = \"no\\n\"\n[registration]\nlisten = \"{registration}\"\n"
    );
    let s = SplitterBuilder::new(vec![alpha, TenantSpec::echo("beta", &["beta.test"])])
        .admin(admin)
        .start();
    wait_until(Duration::from_secs(10), || {
        s.tenant_pids("alpha", "ready").len() == 2
    });
    let ok = |text: &str| {
        sample_sum(
            text,
            "switchyard_tenant_requests_total",
            &["tenant=\"alpha\"", "route=\"/\"", "status_class=\"2xx\""],
        )
    };
    let missing = |text: &str| {
        sample_sum(
            text,
            "switchyard_tenant_requests_total",
            &[
                "tenant=\"alpha\"",
                "route=\"/missing\"",
                "status_class=\"4xx\"",
            ],
        )
    };
    // The kit's readiness probes are counted too: wait for their reports
    // (about every second), then count from there.
    wait_until(Duration::from_secs(10), || {
        ok(&scrape(admin, "admin")) >= 1.0
    });
    thread::sleep(Duration::from_millis(2500));
    let ready_requests = ok(&scrape(admin, "admin"));

    load(s.http, "alpha.test", "/", 200, 10, 1000);
    load(s.http, "alpha.test", "/missing", 404, 2, 50);
    load(s.http, "beta.test", "/", 200, 1, 7);
    // Both processes served some of it.
    let status = s.status();
    let alpha_status = status.tenants.iter().find(|t| t.name == "alpha").unwrap();
    assert!(
        alpha_status
            .processes
            .iter()
            .filter(|p| p.handed_off > 0)
            .count()
            == 2,
        "{alpha_status:?}"
    );
    let beta_ok = |text: &str| {
        sample_sum(
            text,
            "switchyard_tenant_requests_total",
            &["tenant=\"beta\"", "status_class=\"2xx\""],
        )
    };
    // Reports arrive about every second, from each process on its own
    // clock: wait for beta's as well as alpha's.
    let mut first = String::new();
    wait_until(Duration::from_secs(10), || {
        first = scrape(admin, "admin");
        ok(&first) - ready_requests >= 1000.0 && missing(&first) >= 50.0 && beta_ok(&first) >= 7.0
    });
    assert_eq!(
        ok(&first) - ready_requests,
        1000.0,
        "counted from {ready_requests}: {first}"
    );
    assert_eq!(missing(&first), 50.0, "{first}");
    // A later scrape shows the same sums.
    let text = scrape(admin, "admin");
    assert_eq!(
        ok(&text),
        ok(&first),
        "went backwards: {first}\n---\n{text}"
    );
    assert_eq!(missing(&text), 50.0, "{text}");
    assert!(beta_ok(&text) >= 7.0, "{text}");
    let count = sample_sum(
        &text,
        "switchyard_tenant_request_duration_seconds_count",
        &["tenant=\"alpha\"", "route=\"/\""],
    );
    assert!(count >= 1000.0, "{text}");
    assert!(
        sample_sum(
            &text,
            "switchyard_tenant_bytes_total",
            &["tenant=\"alpha\"", "direction=\"out\""]
        ) > 0.0
    );
    // The splitter's own series are there too.
    assert!(
        text.contains("switchyard_handoffs_total{tenant=\"alpha\"}"),
        "{text}"
    );

    // Never backwards across scrapes while processes live (under more load).
    let http = s.http;
    let more = thread::spawn(move || load(http, "alpha.test", "/", 200, 4, 400));
    let mut last = 0.0;
    for _ in 0..8 {
        let now = ok(&scrape(admin, "admin"));
        assert!(now >= last, "went backwards: {last} then {now}");
        last = now;
        thread::sleep(Duration::from_millis(300));
    }
    more.join().unwrap();

    // The tenant's own socket: its series only, the same sum.
    // Both processes listen on it (SO_REUSEPORT) and each shows the sums the
    // splitter sent back after its own last report: wait until every scrape
    // shows the whole load.
    wait_until(Duration::from_secs(10), || {
        (0..8).all(|_| ok(&scrape(registration, "localhost")) - ready_requests >= 1400.0)
    });
    let own = scrape(registration, "localhost");
    assert!(!own.contains("tenant=\"beta\""), "{own}");
    assert!(
        own.contains("# TYPE switchyard_tenant_requests_total counter"),
        "{own}"
    );
    let mut last = 0.0;
    for _ in 0..5 {
        let now = ok(&scrape(registration, "localhost"));
        assert!(
            now >= last,
            "the tenant's own count went backwards: {last} then {now}"
        );
        last = now;
    }
}

#[test]
fn tls_handshakes_and_open_connections_are_counted() {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let s = SplitterBuilder::new(vec![TenantSpec::echo("alpha", &["alpha.test"])])
        .admin(admin)
        .start();
    for _ in 0..3 {
        let out = std::process::Command::new("curl")
            .args(["-sk", "--max-time", "10", "--resolve"])
            .arg(format!("alpha.test:{}:127.0.0.1", s.tls.port()))
            .arg(format!("https://alpha.test:{}/", s.tls.port()))
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    // An open kept-alive connection is counted while it lives.
    let mut kept = TcpStream::connect(s.http).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    request(&mut kept, "alpha.test", "/", "").unwrap();
    wait_until(Duration::from_secs(10), || {
        let text = scrape(admin, "admin");
        sample_sum(
            &text,
            "switchyard_tenant_tls_handshakes_total",
            &["tenant=\"alpha\"", "version=\"TLSv1.3\""],
        ) >= 3.0
            && sample_sum(
                &text,
                "switchyard_tenant_connections",
                &["tenant=\"alpha\""],
            ) >= 1.0
    });
    drop(kept);
}
