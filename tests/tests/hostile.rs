//! Hostile input and resource exhaustion at the front door: every malformed
//! input gets its defined outcome on both ports, counted by reason, with no
//! descriptor leaked; slow clients cost no CPU; `max_pending` and descriptor
//! exhaustion are survived; a frozen tenant costs the others nothing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use switchyard_tests::*;

fn with_admin(builder: SplitterBuilder) -> (Splitter, SocketAddr) {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let s = builder.admin(admin).start();
    (s, admin)
}

#[test]
fn every_malformed_input_gets_its_defined_outcome_and_leaks_nothing() {
    let (s, admin) = with_admin(SplitterBuilder::new(vec![TenantSpec::echo(
        "alpha",
        &["alpha.test"],
    )]));
    // Let the kit's readiness probes finish before counting descriptors.
    let before = s.fd_count_stable();

    let good_sni = sni_extension(b"alpha.test");
    let mut huge_padding = vec![good_sni.clone(), (21, vec![0u8; 20_000])];
    let oversized = {
        let hello = client_hello(&huge_padding.split_off(0));
        // Re-frame into 1000-byte records: each record valid, the whole too large.
        split_into_records(&unframe(&hello), 1000)
    };
    let truncated_extension = {
        let mut hello = client_hello(std::slice::from_ref(&good_sni));
        let last = hello.len() - 1;
        hello[last - 14] = 0x40; // the SNI extension now claims more than the message holds
        hello
    };
    let tls_cases: Vec<(&str, Vec<u8>, Outcome, &str)> = vec![
        (
            "plain text",
            b"hello there\r\n\r\n".to_vec(),
            Outcome::Closed,
            "not_tls",
        ),
        (
            "HTTP on the TLS port",
            b"GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n".to_vec(),
            Outcome::Closed,
            "not_tls",
        ),
        ("NUL bytes", vec![0u8; 64], Outcome::Closed, "not_tls"),
        (
            "SSLv2 hello",
            vec![0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0, 0, 0, 0x10],
            Outcome::Closed,
            "sslv2",
        ),
        (
            "record length 0xffff",
            vec![22, 3, 1, 0xff, 0xff, 1, 2, 3],
            Outcome::Closed,
            "bad_record",
        ),
        (
            "truncated extension",
            truncated_extension,
            Outcome::Closed,
            "bad_client_hello",
        ),
        (
            "duplicated SNI extension",
            client_hello(&[good_sni.clone(), good_sni.clone()]),
            Outcome::Closed,
            "bad_client_hello",
        ),
        (
            "empty SNI",
            client_hello(&[sni_extension(b"")]),
            Outcome::Closed,
            "bad_server_name",
        ),
        (
            "SNI of 300 bytes",
            client_hello(&[sni_extension(&[b'a'; 300])]),
            Outcome::Closed,
            "bad_server_name",
        ),
        (
            "SNI with a slash",
            client_hello(&[sni_extension(b"alpha/test")]),
            Outcome::Closed,
            "bad_server_name",
        ),
        (
            "SNI with a space",
            client_hello(&[sni_extension(b"alpha .test")]),
            Outcome::Closed,
            "bad_server_name",
        ),
        (
            "ClientHello over max_peek_bytes",
            oversized,
            Outcome::Closed,
            "too_large",
        ),
        (
            "no SNI, no unknown_host tenant",
            client_hello(&[]),
            Outcome::Closed,
            "unknown_host",
        ),
    ];
    let http_cases: Vec<(&str, Vec<u8>, Outcome, &str)> = vec![
        (
            "HTTP/1.1 without Host",
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            Outcome::Status(400),
            "unknown_host",
        ),
        (
            "HTTP/1.0 without Host",
            b"GET / HTTP/1.0\r\n\r\n".to_vec(),
            Outcome::Status(400),
            "unknown_host",
        ),
        (
            "unknown Host",
            b"GET / HTTP/1.1\r\nHost: nobody.test\r\n\r\n".to_vec(),
            Outcome::Status(404),
            "unknown_host",
        ),
        (
            "Host with a space",
            b"GET / HTTP/1.1\r\nHost: al pha.test\r\n\r\n".to_vec(),
            Outcome::Status(400),
            "bad_host",
        ),
        (
            "two Host headers",
            b"GET / HTTP/1.1\r\nHost: alpha.test\r\nHost: b.test\r\n\r\n".to_vec(),
            Outcome::Status(400),
            "bad_host",
        ),
        (
            "HTTP/2 prior knowledge",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            Outcome::Closed,
            "not_http",
        ),
        ("NUL bytes", vec![0u8; 64], Outcome::Closed, "not_http"),
        (
            "TLS on the HTTP port",
            client_hello(std::slice::from_ref(&good_sni)),
            Outcome::Closed,
            "not_http",
        ),
        (
            "header line over max_peek_bytes",
            format!(
                "GET / HTTP/1.1\r\nHost: alpha.test\r\nX-Long: {}\r\n\r\n",
                "a".repeat(20_000)
            )
            .into_bytes(),
            Outcome::Status(400),
            "too_large",
        ),
    ];
    let mut expected_counts: std::collections::BTreeMap<(String, &str), f64> = Default::default();
    for (port, cases) in [(s.tls, &tls_cases), (s.http, &http_cases)] {
        for (what, bytes, expected, reason) in cases.iter() {
            let outcome = outcome_of(port, bytes);
            assert_eq!(&outcome, expected, "{what} on {port}");
            *expected_counts
                .entry((port.to_string(), reason))
                .or_default() += 1.0;
        }
    }
    for ((listener, reason), count) in expected_counts {
        let prefix =
            format!("switchyard_connections_total{{listener=\"{listener}\",outcome=\"{reason}\"}}");
        let seen = metric(admin, &prefix).unwrap_or(0.0);
        // unknown_host on the HTTP port also counts the kit's probe-free requests only.
        assert!(
            seen >= count,
            "{prefix}: counted {seen}, expected at least {count}"
        );
    }

    // Still serving, and every descriptor of those connections is closed.
    assert_eq!(https_get(s.tls, "alpha.test", "/").unwrap().status, 200);
    let after = fd_count_settled(s.proc.pid(), before);
    assert_eq!(
        after, before,
        "splitter descriptors before {before}, after {after}"
    );
}

/// The handshake message inside a single-record ClientHello.
fn unframe(hello: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = hello;
    while rest.len() >= 5 {
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        out.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
    }
    out
}

fn median_latency(addr: SocketAddr, samples: usize) -> Duration {
    let mut times: Vec<Duration> = (0..samples)
        .map(|_| {
            let start = Instant::now();
            assert_eq!(https_get(addr, "alpha.test", "/").unwrap().status, 200);
            start.elapsed()
        })
        .collect();
    times.sort();
    times[samples / 2]
}

#[test]
fn five_thousand_half_hellos_for_ten_seconds_cost_almost_no_cpu() {
    let _alone = measuring_alone();
    let s = SplitterBuilder::new(vec![TenantSpec::echo("alpha", &["alpha.test"])])
        .splitter_lines("peek_timeout = \"30s\"")
        .start();
    let quiet = median_latency(s.tls, 20);
    let rss_before = rss_kib(s.proc.pid());
    let hello = {
        let mut conn = tls_client("alpha.test");
        let mut bytes = Vec::new();
        conn.write_tls(&mut bytes).unwrap();
        bytes
    };
    let mut crowd = Vec::with_capacity(5000);
    for _ in 0..5000 {
        let mut tcp = TcpStream::connect(s.tls).unwrap();
        tcp.write_all(&hello[..hello.len() / 2]).unwrap();
        crowd.push(tcp);
    }
    std::thread::sleep(Duration::from_millis(500));
    let ticks_before = cpu_ticks(s.proc.pid());
    let started = Instant::now();
    let busy = median_latency(s.tls, 20);
    std::thread::sleep(Duration::from_secs(10).saturating_sub(started.elapsed()));
    let ticks = cpu_ticks(s.proc.pid()) - ticks_before;
    let rss_after = rss_kib(s.proc.pid());
    eprintln!(
        "5000 half ClientHellos for 10 s: splitter CPU {:.2} s ({:.1} % of one core), RSS {} KiB -> {} KiB (+{} KiB); \
         a normal TLS request's median latency {:?} alone, {:?} with the crowd",
        ticks as f64 / 100.0,
        ticks as f64 / 10.0,
        rss_before,
        rss_after,
        rss_after.saturating_sub(rss_before),
        quiet,
        busy
    );
    // 5 % of one core over 10 s is 50 ticks; the 20 measured requests are included.
    assert!(
        ticks <= 50,
        "the splitter used {ticks} ticks in 10 s with 5000 clients waiting"
    );
    assert!(
        busy < quiet * 5 + Duration::from_millis(50),
        "normal clients are not delayed: {quiet:?} -> {busy:?}"
    );
    drop(crowd);
}

#[test]
fn past_max_pending_new_connections_are_closed_at_once_and_the_splitter_recovers() {
    let (s, admin) = with_admin(
        SplitterBuilder::new(vec![TenantSpec::echo("alpha", &["alpha.test"])])
            .splitter_lines("max_pending = 20\npeek_timeout = \"30s\""),
    );
    let mut crowd: Vec<TcpStream> = (0..20)
        .map(|_| {
            let tcp = TcpStream::connect(s.http).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            tcp
        })
        .collect();
    wait_until(Duration::from_secs(5), || {
        metric(admin, "switchyard_pending").unwrap_or(0.0) >= 20.0
    });
    let start = Instant::now();
    let mut refused = TcpStream::connect(s.http).unwrap();
    refused
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = refused.write_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n");
    let mut buf = [0u8; 64];
    let n = refused.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "refused fast: {:?}",
        start.elapsed()
    );
    let http = s.http.to_string();
    assert!(
        metric(
            admin,
            &format!("switchyard_connections_total{{listener=\"{http}\",outcome=\"max_pending\"}}")
        )
        .unwrap()
            >= 1.0
    );
    // The old ones are unaffected: one of them finishes its request and is served.
    let answer = request(&mut crowd[0], "alpha.test", "/", "").unwrap();
    assert_eq!(answer.status, 200);
    drop(crowd);
    wait_until(Duration::from_secs(5), || {
        metric(admin, "switchyard_pending").unwrap_or(1.0) == 0.0
    });
    assert_eq!(http_get(s.http, "alpha.test", "/").unwrap().status, 200);
}

#[test]
fn out_of_descriptors_the_accept_loop_backs_off_without_spinning_and_recovers() {
    let _alone = measuring_alone();
    // The splitter refuses to start with a limit its budget does not fit, so
    // the limit is cut under it while it runs (as `prlimit --pid` or a
    // mistaken unit would): it then runs out after a few dozen connections.
    let dir = TempDir::new("emfile");
    let (front_user, tenant_user) = user_lines();
    dir.write(
        "tenants/alpha.toml",
        "[[route]]\npath = \"/\"\nrespond = \"echo\"\n",
    );
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.write(
        "host.toml",
        &format!(
            "[splitter]\nruntime_dir = \"run\"\norphan_timeout = \"1s\"\npeek_timeout = \"30s\"\nmax_pending_per_ip = 1000\n{front_user}[[listen]]\naddr = \"{http}\"\nprotocol = \"http\"\n\
             [[tenant]]\nname = \"alpha\"\nhosts = [\"alpha.test\"]\nconfig = \"tenants/alpha.toml\"\n{tenant_user}"
        ),
    );
    let child = std::process::Command::new(bin("splitter"))
        .arg("--config")
        .arg(&config)
        .env("SWITCHYARD_L7PROXY", bin("l7proxy"))
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut splitter = Proc(child);
    wait_until(
        Duration::from_secs(20),
        || matches!(http_get(http, "alpha.test", "/"), Ok(r) if r.status == 200),
    );
    let pid = splitter.pid();
    // As the front's own user: lowering a limit needs no privilege then.
    let mut prlimit = std::process::Command::new("prlimit");
    prlimit.args(["--pid", &pid.to_string(), "--nofile=64:64"]);
    if running_as_root() {
        use std::os::unix::process::CommandExt;
        let uid = system_user(FRONT_USER);
        let gid = std::fs::metadata(format!("/proc/{pid}"))
            .map(|m| std::os::unix::fs::MetadataExt::gid(&m))
            .unwrap();
        prlimit.uid(uid).gid(gid);
    }
    assert!(prlimit.status().unwrap().success(), "prlimit --pid");
    let crowd: Vec<TcpStream> = (0..120)
        .filter_map(|_| TcpStream::connect(http).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let ticks = cpu_ticks(pid) - before;
    assert!(
        ticks <= 20,
        "the accept loop spins on EMFILE: {ticks} ticks in 2 s"
    );
    drop(crowd);
    wait_until(
        Duration::from_secs(35),
        || matches!(http_get(http, "alpha.test", "/"), Ok(r) if r.status == 200),
    );
    let _ = splitter.0.kill();
    let mut log = String::new();
    splitter
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    let warnings = log.matches("accept is out of resources").count();
    assert!(warnings >= 1, "EMFILE is logged:\n{log}");
    assert!(
        warnings <= 4,
        "at most once per second: {warnings} lines in ~2.5 s"
    );
}

#[test]
fn a_frozen_tenant_costs_the_others_nothing_and_is_served_after_sigcont() {
    let _alone = measuring_alone();
    let s = SplitterBuilder::new(vec![
        TenantSpec::echo("alpha", &["alpha.test"]),
        TenantSpec::echo("beta", &["beta.test"]),
    ])
    .splitter_lines("hold_timeout = \"30s\"")
    .start();
    let frozen = s.tenant_pids("alpha", "ready")[0] as u32;
    signal(frozen, libc::SIGSTOP);
    // Enough connections to fill the frozen process's handoff socket.
    let mut waiting = Vec::new();
    for _ in 0..400 {
        let mut tcp = TcpStream::connect(s.http).unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n")
            .unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        waiting.push(tcp);
    }
    let http = s.http;
    let beta =
        std::thread::spawn(move || wrk(&format!("http://{http}/"), "beta.test", 3, 8, false));
    let beta = beta.join().unwrap();
    assert!(beta.requests > 100, "{}", beta.output);
    assert_eq!(beta.socket_errors + beta.non_2xx, 0, "{}", beta.output);
    // The premise: alpha could not take them all (its socket filled, or it
    // reached max_unacked), so the splitter had to hold some.
    let alpha = &s.status().tenants[0];
    let full = alpha.socket_full;
    let at_cap = alpha.unacked_full;
    eprintln!("while alpha was frozen: {full} handoffs found its socket full, {at_cap} found it at max_unacked");
    assert!(
        full + at_cap > 0,
        "the frozen process never refused a connection: {alpha:?}"
    );
    signal(frozen, libc::SIGCONT);
    for mut tcp in waiting {
        let answer = read_response(&mut tcp).expect("answered after SIGCONT");
        assert_eq!(answer.status, 200);
    }
}

#[test]
fn a_storm_of_mixed_connections_leaves_descriptors_and_memory_at_baseline() {
    let _alone = measuring_alone();
    let s = SplitterBuilder::new(vec![TenantSpec::echo("alpha", &["alpha.test"])]).start();
    let tenant = s.tenant_pids("alpha", "ready")[0] as u32;
    let storm = || {
        for i in 0..150 {
            assert_eq!(https_get(s.tls, "alpha.test", "/").unwrap().status, 200);
            assert_eq!(http_get(s.http, "alpha.test", "/").unwrap().status, 200);
            let _ = outcome_of(
                if i % 2 == 0 { s.tls } else { s.http },
                b"\x16\x03\x01\xff\xffgarbage",
            );
            let mut half = TcpStream::connect(s.tls).unwrap();
            half.write_all(&[22, 3, 1, 1, 0, 1, 0]).unwrap();
            half.shutdown(std::net::Shutdown::Both).unwrap();
        }
    };
    storm(); // warm-up: allocators and caches reach their working size
    let (splitter_fds, tenant_fds) = (s.fd_count_stable(), fd_count_stable(tenant));
    let (splitter_rss, tenant_rss) = (rss_kib(s.proc.pid()), rss_kib(tenant));
    for round in 1..=2 {
        storm();
        assert_eq!(
            fd_count_settled(s.proc.pid(), splitter_fds),
            splitter_fds,
            "splitter descriptors after round {round}"
        );
        assert_eq!(
            fd_count_settled(tenant, tenant_fds),
            tenant_fds,
            "tenant descriptors after round {round}"
        );
    }
    let (splitter_rss_after, tenant_rss_after) = (rss_kib(s.proc.pid()), rss_kib(tenant));
    eprintln!(
        "after 2 more storms of 600 connections: splitter RSS {splitter_rss} -> {splitter_rss_after} KiB, \
         tenant RSS {tenant_rss} -> {tenant_rss_after} KiB; descriptors back to {splitter_fds} / {tenant_fds}"
    );
    assert!(
        splitter_rss_after <= splitter_rss + 2048,
        "splitter memory grows with connections"
    );
    assert!(
        tenant_rss_after <= tenant_rss + 4096,
        "tenant memory grows with connections"
    );
}

#[test]
fn a_client_sending_one_byte_at_a_time_is_closed_at_peek_timeout() {
    let _alone = measuring_alone();
    let (s, admin) = with_admin(
        SplitterBuilder::new(vec![TenantSpec::echo("alpha", &["alpha.test"])])
            .splitter_lines("peek_timeout = \"1s\""),
    );
    let request = b"GET / HTTP/1.1\r\nHost: alpha.test\r\nX-Slow: yes\r\n\r\n";
    let mut tcp = TcpStream::connect(s.http).unwrap();
    tcp.set_nodelay(true).unwrap();
    let start = Instant::now();
    let mut closed_at = None;
    for byte in request.iter() {
        if tcp.write_all(&[*byte]).is_err() {
            closed_at = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let closed_at = closed_at.unwrap_or_else(|| {
        // All written: the close shows as end of file (or a reset) when reading.
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        let _ = tcp.read(&mut buf);
        start.elapsed()
    });
    assert!(
        closed_at >= Duration::from_millis(900) && closed_at < Duration::from_millis(2500),
        "closed after {closed_at:?}, peek_timeout is 1 s"
    );
    let http = s.http.to_string();
    let text = String::from_utf8(
        http_get_authorized(admin, "admin", "/metrics")
            .unwrap()
            .body,
    )
    .unwrap();
    let line =
        format!("switchyard_connections_total{{listener=\"{http}\",outcome=\"peek_timeout\"}} 1");
    assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
}

/// A process that stops acknowledging (frozen here) is killed after the ack
/// deadline, and the connections it never took are answered by its sibling.
#[test]
fn connections_of_a_process_past_the_ack_deadline_are_answered_by_another() {
    let mut alpha = TenantSpec::echo("alpha", &["alpha.test"]);
    alpha.processes = 2;
    let s = SplitterBuilder::new(vec![alpha])
        .splitter_lines("hold_timeout = \"30s\"")
        .start();
    wait_until(Duration::from_secs(10), || {
        s.tenant_pids("alpha", "ready").len() == 2
    });
    let pids = s.tenant_pids("alpha", "ready");
    let frozen = pids[0] as u32;
    // Not left stopped forever if the test fails.
    let _frozen = KillOnDrop(frozen);
    signal(frozen, libc::SIGSTOP);
    // Stopped for real before the first connection (a process still running
    // for a moment would acknowledge some, and then hold them frozen).
    let state = || {
        std::fs::read_to_string(format!("/proc/{frozen}/stat"))
            .ok()
            .and_then(|s| s[s.rfind(')')? + 2..].chars().next())
    };
    wait_until(Duration::from_secs(5), || state() == Some('T'));
    let started = Instant::now();
    let mut waiting = Vec::new();
    for _ in 0..20 {
        let mut tcp = TcpStream::connect(s.http).unwrap();
        tcp.write_all(b"GET /echo HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n")
            .unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        waiting.push(tcp);
    }
    for mut tcp in waiting {
        let answer = read_response(&mut tcp).expect("answered");
        assert_eq!(answer.status, 200);
        let by = answer.json()["pid"].as_u64().unwrap();
        assert_ne!(by, frozen as u64, "answered by the frozen process");
    }
    // Some waited for the deadline (the rotation gave the frozen one its share).
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // And it was killed (gone, or a zombie until reaped).
    wait_until(Duration::from_secs(10), || {
        matches!(state(), None | Some('Z'))
    });
    assert!(s.status().tenants[0].rehanded >= 1);
}
