//! A tenant, a local user or a client attacking the others (run as root; the
//! attackers run as other Unix users). Each test states the attack, runs it,
//! and shows that it fails while the victim keeps being served.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use switchyard_tests::*;

fn require_root() {
    assert!(
        running_as_root(),
        "hostile-tenant tests need root (they run attackers as other users); run them as root, as CI does"
    );
}

/// Runs `attack` while wrk loads the victim tenant (`victim.test`, keep-alive,
/// 8 connections, `seconds` long), and asserts the victim saw no error at all.
fn with_victim_under_load<T>(s: &Splitter, seconds: u32, attack: impl FnOnce() -> T) -> T {
    let url = format!("http://{}/echo", s.http);
    let load = std::thread::spawn(move || wrk(&url, "victim.test", seconds, 8, false));
    std::thread::sleep(Duration::from_millis(300));
    let outcome = attack();
    let report = load.join().unwrap();
    assert!(report.requests > 100, "{}", report.output);
    assert_eq!(
        report.socket_errors + report.read_errors,
        0,
        "{}",
        report.output
    );
    assert_eq!(report.non_2xx, 0, "{}", report.output);
    outcome
}

/// A client connected from the loopback address `from`.
fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&format!("{from}:0").parse::<SocketAddr>().unwrap().into())?;
    socket.connect(&to.into())?;
    Ok(socket.into())
}

/// POSTs `body` to `/v1/register` over the Unix socket `socket` as `uid`.
fn register_over(socket: &std::path::Path, body: &str, uid: u32) -> String {
    curl_unix_as(socket, "http://x/v1/register", Some(body), uid)
}

#[test]
fn another_user_cannot_reach_a_tenants_registration_socket() {
    require_root();
    let attacker = system_user("swy-attacker");
    let mut tenant = TenantSpec::echo("victim", &["victim.test"]);
    tenant.file = "[[upstream]]\nname = \"app\"\nregistration = true\n[[route]]\npath = \"/echo\"\nrespond = \"echo\"\n[[route]]\npath = \"/\"\nupstream = \"app\"\n[registration]\n".into();
    let s = SplitterBuilder::new(vec![tenant]).start();
    let socket = s.dir.0.join("run/tenants/victim/register.sock");
    wait_until(Duration::from_secs(10), || socket.exists());
    let body = r#"{"upstream":"app","addr":"127.0.0.1:9"}"#;
    // The attacker cannot even connect (0700 directory, 0600 socket) …
    with_victim_under_load(&s, 3, || {
        for _ in 0..20 {
            assert_eq!(register_over(&socket, body, attacker), "000");
        }
    });
    // … while the tenant's own user registers.
    assert_eq!(
        register_over(&socket, body, system_user(TENANT_USER)),
        "200"
    );
    // Registrations may point only where allow_addrs allows (loopback), and
    // unix: servers only inside the tenant's directory.
    for elsewhere in [
        r#"{"upstream":"app","addr":"10.1.2.3:80"}"#,
        r#"{"upstream":"app","addr":"unix:/etc/other.sock"}"#,
    ] {
        assert_eq!(register_over(&socket, elsewhere, 0), "403", "{elsewhere}");
    }
}

#[test]
fn allow_users_opens_the_registration_socket_to_those_users_only() {
    require_root();
    let friend = system_user("swy-friend");
    let stranger = system_user("swy-attacker");
    let mut tenant = TenantSpec::echo("victim", &["victim.test"]);
    tenant.file = "[[upstream]]\nname = \"app\"\nregistration = true\n[[route]]\npath = \"/echo\"\nrespond = \"echo\"\n[[route]]\npath = \"/\"\nupstream = \"app\"\n[registration]\nallow_users = [\"swy-friend\"]\n".into();
    let s = SplitterBuilder::new(vec![tenant]).start();
    let socket = s.dir.0.join("run/tenants/victim/register.sock");
    wait_until(Duration::from_secs(10), || socket.exists());
    let body = r#"{"upstream":"app","addr":"127.0.0.1:9"}"#;
    assert_eq!(register_over(&socket, body, friend), "200");
    // The stranger now reaches the socket, but the kernel says who it is:
    // the connection is closed without an answer.
    assert_eq!(register_over(&socket, body, stranger), "000");
    // The directory lets others pass but not list.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(s.dir.0.join("run/tenants/victim"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o711);
}

#[test]
fn a_tcp_registration_listener_needs_a_token() {
    let registration: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let tenant = StandaloneTenant::start(&format!(
        "[[upstream]]\nname = \"app\"\nregistration = true\n[[route]]\nupstream = \"app\"\n[registration]\nlisten = \"{registration}\"\n"
    ));
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(registration).is_ok()
    });
    let mut stream = TcpStream::connect(registration).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let anonymous = request(&mut stream, "x", "/v1/upstreams", "Connection: close\r\n").unwrap();
    assert_eq!(anonymous.status, 401);
    let mut stream = TcpStream::connect(registration).unwrap();
    let wrong = request(
        &mut stream,
        "x",
        "/v1/upstreams",
        "Authorization: Bearer switchyard-test-token-0123456788\r\nConnection: close\r\n",
    )
    .unwrap();
    assert_eq!(wrong.status, 401);
    assert_eq!(
        http_get_authorized(registration, "x", "/v1/upstreams")
            .unwrap()
            .status,
        200
    );
    drop(tenant);
}

#[test]
fn check_refuses_unsafe_configurations_with_their_locations() {
    require_root();
    let dir = TempDir::new("unsafe");
    dir.write("tenants/a.toml", "[[route]]\nrespond = \"echo\"\n");
    dir.write(
        "tenants/b.toml",
        "[[upstream]]\nname = \"app\"\nregistration = true\n[[route]]\nupstream = \"app\"\n[registration]\nlisten = \"127.0.0.1:9901\"\n",
    );
    dir.write(
        "tenants/c.toml",
        "[[upstream]]\nname = \"app\"\nregistration = true\n[[route]]\nupstream = \"app\"\n[registration]\nlisten = \"unix:../../x.sock\"\n",
    );
    system_user(FRONT_USER);
    system_user(TENANT_USER);
    let host = dir.write(
        "host.toml",
        "[splitter]\nruntime_dir = \"run\"\nadmin = \"127.0.0.1:9900\"\n[[listen]]\naddr = \"127.0.0.1:1\"\nprotocol = \"http\"\n\
         [[tenant]]\nname = \"a\"\nhosts = [\"a.test\"]\nconfig = \"tenants/a.toml\"\n\
         [[tenant]]\nname = \"r\"\nhosts = [\"r.test\"]\nconfig = \"tenants/a.toml\"\nuser = \"root\"\n",
    );
    let (code, _, err) = splitter_check(&host);
    assert_eq!(code, 2, "{err}");
    let host_path = host.display().to_string();
    for expected in [
        "[splitter] user is required",
        "admin = \"127.0.0.1:9900\" is a TCP address",
        "tenant \"a\" has no user",
        "is uid 0",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    assert!(
        err.lines()
            .all(|l| !l.contains(&host_path) || l.splitn(4, ':').count() == 4),
        "{err}"
    );

    // Tenant files: checked as the tenant's user, every problem located.
    let host = dir.write(
        "host.toml",
        &format!("[splitter]\nruntime_dir = \"run\"\nuser = \"{FRONT_USER}\"\n[[listen]]\naddr = \"127.0.0.1:1\"\nprotocol = \"http\"\n\
         [[tenant]]\nname = \"b\"\nhosts = [\"b.test\"]\nconfig = \"tenants/b.toml\"\nuser = \"{TENANT_USER}\"\n\
         [[tenant]]\nname = \"c\"\nhosts = [\"c.test\"]\nconfig = \"tenants/c.toml\"\nuser = \"{TENANT_USER}\"\n"),
    );
    let (code, _, err) = splitter_check(&host);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("b.toml:7:10: [registration] listen \"127.0.0.1:9901\" is a TCP address"),
        "{err}"
    );
    assert!(
        err.contains("c.toml:7:10: [registration] listen \"unix:../../x.sock\""),
        "{err}"
    );
    assert!(
        err.contains("share the user"),
        "a shared user is a warning: {err}"
    );
}

#[test]
fn a_fifo_or_dev_zero_named_in_a_tenant_file_cannot_stall_a_reload() {
    require_root();
    let (s, _) = victim_and_attacker("", None);
    let fifo = s.dir.0.join("fifo");
    nix_mkfifo(&fifo);
    with_victim_under_load(&s, 4, || reload_naming(&s, &fifo));
}

/// Reloads with the attacker's tenant file naming `fifo`, then `/dev/zero`, as
/// its certificate and key: each reload is refused at once.
fn reload_naming(s: &Splitter, fifo: &std::path::Path) {
    for target in [fifo.display().to_string(), "/dev/zero".to_string()] {
        s.dir.write(
            "tenants/attacker.toml",
            &format!(
                "[tls]\ncert = \"{target}\"\nkey = \"{target}\"\n[[route]]\nrespond = \"echo\"\n"
            ),
        );
        // A host-file change makes the reload check the attacker's file.
        let host = std::fs::read_to_string(&s.config).unwrap();
        std::fs::write(
            &s.config,
            host.replace("attacker.test\"]", "attacker.test\", \"x.attacker.test\"]"),
        )
        .unwrap();
        let started = Instant::now();
        let (code, out, err) = s.ctl(&["reload"]);
        assert_ne!(code, 0, "{out}{err}");
        assert!(
            started.elapsed() < Duration::from_secs(12),
            "the check is time-limited"
        );
        assert!(
            format!("{out}{err}").contains("not a regular file"),
            "{out}{err}"
        );
        std::fs::write(&s.config, host).unwrap();
        // The front kept serving throughout.
        assert_eq!(
            http_get(s.http, "victim.test", "/echo").unwrap().status,
            200
        );
    }
}

fn nix_mkfifo(path: &std::path::Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

#[test]
fn one_source_address_cannot_take_every_pending_place() {
    let _alone = measuring_alone();
    raise_open_file_limit(12_000);
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let s = SplitterBuilder::new(vec![TenantSpec::echo("victim", &["victim.test"])])
        .splitter_lines(&format!(
            "max_pending_per_ip = 256\nmax_conn_rate_per_ip = 0\npeek_timeout = \"10s\"\nadmin = \"{admin}\"\nadmin_token_file = \"token\""
        ))
        .start();
    // 10,000 half-sent requests from 127.0.0.5: only 256 are kept waiting.
    let mut held = with_victim_under_load(&s, 5, || {
        let mut held = Vec::new();
        for _ in 0..10_000 {
            if let Ok(mut c) = connect_from("127.0.0.5", s.http) {
                let _ = c.write_all(b"GET / HTTP/1.1\r\nHo");
                held.push(c);
            }
        }
        held
    });
    // Another source is served meanwhile, every time.
    for _ in 0..100 {
        let mut other = connect_from("127.0.0.6", s.http).unwrap();
        other
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let answer = request(&mut other, "victim.test", "/echo", "").unwrap();
        assert_eq!(answer.status, 200);
    }
    let mut closed = 0;
    for c in &mut held {
        c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut buf = [0u8; 1];
        match c.read(&mut buf) {
            Ok(0) => closed += 1,
            Err(e)
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                closed += 1
            }
            _ => {}
        }
    }
    assert!(
        closed >= held.len() - 256,
        "connections past max_pending_per_ip are closed at once ({closed} of {})",
        held.len()
    );
    assert!(
        held.len() >= 9_000,
        "the attack really ran: {} connected",
        held.len()
    );
    // Each refusal is counted by its reason.
    let metrics = String::from_utf8(
        http_get_authorized(admin, "admin", "/metrics")
            .unwrap()
            .body,
    )
    .unwrap();
    let refused: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("switchyard_connections_total")
                && l.contains("outcome=\"max_pending_per_ip\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        refused >= (held.len() - 256) as f64,
        "counted: {refused}\n{metrics}"
    );
}

/// Raises this test process's soft open-file limit to `want` (or the hard limit).
fn raise_open_file_limit(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_cur.max(want.min(limit.rlim_max));
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

#[test]
fn a_fast_source_meets_its_connection_rate_limit_and_others_do_not() {
    let s = SplitterBuilder::new(vec![TenantSpec::echo("victim", &["victim.test"])])
        .splitter_lines("max_conn_rate_per_ip = 20")
        .start();
    // The bucket starts full (20) and earns 20 a second: how many may pass
    // depends on how long the 60 attempts took on a busy machine.
    let started = Instant::now();
    let mut passed = 0;
    for _ in 0..60 {
        let mut c = connect_from("127.0.0.7", s.http).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        if matches!(
            request(&mut c, "victim.test", "/echo", "Connection: close\r\n"),
            Ok(r) if r.status == 200
        ) {
            passed += 1;
        }
    }
    let allowed = 20 + (20.0 * started.elapsed().as_secs_f64()).ceil() as usize;
    assert!(
        passed <= allowed && passed < 60,
        "{passed} of 60 passed in {:?}; at most {allowed} may",
        started.elapsed()
    );
    let mut c = connect_from("127.0.0.8", s.http).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        request(&mut c, "victim.test", "/echo", "").unwrap().status,
        200
    );
}

/// Starts `fake-tenant` as `uid` against the tenant's handoff.sock.
fn fake_tenant(
    socket: &std::path::Path,
    tenant: &str,
    mode: &str,
    uid: u32,
) -> std::process::Child {
    Command::new(bin("fake-tenant"))
        .arg("--socket")
        .arg(socket)
        .args(["--tenant", tenant, "--mode", mode])
        .uid(uid)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits up to `limit` for `child` to exit; returns its stdout.
fn finished(mut child: std::process::Child, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the fake tenant was not disconnected within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    out
}

/// The victim and an attacker tenant whose user is `swy-evil`.
fn victim_and_attacker(builder_lines: &str, nofile: Option<u64>) -> (Splitter, u32) {
    let evil = system_user("swy-evil");
    let mut attacker = TenantSpec::echo("attacker", &["attacker.test"]);
    attacker.host_lines = "user = \"swy-evil\"\n".into();
    let mut builder =
        SplitterBuilder::new(vec![TenantSpec::echo("victim", &["victim.test"]), attacker])
            .splitter_lines(builder_lines);
    if let Some(limit) = nofile {
        builder = builder.nofile(limit);
    }
    (builder.start(), evil)
}

#[test]
fn a_tenant_that_never_acknowledges_cannot_exhaust_the_front() {
    require_root();
    let _alone = measuring_alone();
    let (s, evil) = victim_and_attacker("max_pending = 300\nmax_unacked = 32", Some(1024));
    let socket = s.dir.0.join("run/tenants/attacker/handoff.sock");
    let fake = fake_tenant(&socket, "attacker", "no-ack", evil);
    wait_until(Duration::from_secs(10), || {
        s.tenant_pids("attacker", "ready").len() == 2
    });

    // The attacker's own clients keep opening connections, half of which go
    // to the process that never acknowledges; the victim is under load.
    let http = s.http;
    // The victim's kept-alive connections are open before the flood: the
    // flood comes from the same address and may fill max_pending with held
    // connections, which refuses *new* connections of anyone on it (per-IP
    // limits keep real attackers apart; here they are one address).
    let load = std::thread::spawn(move || {
        wrk(&format!("http://{http}/echo"), "victim.test", 4, 16, false)
    });
    std::thread::sleep(Duration::from_millis(500));
    let flood = std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(3);
        let mut opened = 0;
        while Instant::now() < until && opened < 3000 {
            if let Ok(mut c) = TcpStream::connect(http) {
                let _ = c.write_all(
                    b"GET /echo HTTP/1.1\r\nHost: attacker.test\r\nConnection: close\r\n\r\n",
                );
                opened += 1;
            }
        }
        opened
    });
    let report = load.join().unwrap();
    let opened = flood.join().unwrap();
    assert!(report.requests > 100, "{}", report.output);
    assert_eq!(
        report.socket_errors + report.read_errors,
        0,
        "{}",
        report.output
    );
    assert_eq!(report.non_2xx, 0, "{}", report.output);

    // Past the ack deadline the process is dropped from the pool.
    let out = finished(fake, Duration::from_secs(15));
    let received = out.lines().filter(|l| l.starts_with("received")).count();
    assert!(
        (1..=32).contains(&received),
        "at most max_unacked handed to it: {received}\n{out}"
    );
    assert!(out.contains("disconnected"), "{out}");
    // The front never came near its descriptor limit, and still answers.
    let fds = s.fd_count();
    assert!(
        fds < 900,
        "{fds} descriptors after {opened} attack connections"
    );
    let (code, _, err) = s.ctl(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        http_get(s.http, "victim.test", "/echo").unwrap().status,
        200
    );
    assert_eq!(
        http_get(s.http, "attacker.test", "/echo").unwrap().status,
        200
    );
}

/// A fake tenant run as the attacker tenant's user floods its handoff socket
/// (`mode`, at most 300,000 datagrams) while the victim is under load: it is
/// cut off long before its flood ends, and only the real process is left.
fn flood_is_cut_off(mode: &str) {
    require_root();
    let (s, evil) = victim_and_attacker("", None);
    let socket = s.dir.0.join("run/tenants/attacker/handoff.sock");
    let (out, flooded_for) = with_victim_under_load(&s, 3, || {
        let started = Instant::now();
        let out = finished(
            fake_tenant(&socket, "attacker", mode, evil),
            Duration::from_secs(10),
        );
        (out, started.elapsed())
    });
    let sent: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("sent "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        sent < 300_000,
        "{mode}: disconnected before its flood ended: {sent} sent"
    );
    assert!(out.contains("disconnected"), "{out}");
    assert!(
        flooded_for < Duration::from_secs(3),
        "{mode}: the flood went on for {flooded_for:?}"
    );
    assert_eq!(
        s.tenant_pids("attacker", "ready").len(),
        1,
        "only the real process is left"
    );
}

#[test]
fn a_tenant_process_sending_garbage_is_disconnected_at_once() {
    flood_is_cut_off("garbage");
}

/// Valid statistics, but far more often than once a second: the front stops
/// parsing them at the second.
#[test]
fn a_tenant_process_flooding_statistics_is_disconnected_at_once() {
    flood_is_cut_off("stats-flood");
}

/// Valid two-byte `Ready`s as fast as it can: bounded like every message a
/// process can send unasked, so it cannot hold the front's thread.
#[test]
fn a_tenant_process_flooding_ready_is_disconnected_at_once() {
    flood_is_cut_off("ready-flood");
}

/// `Ack`s that acknowledge nothing: the same.
#[test]
fn a_tenant_process_flooding_empty_acks_is_disconnected_at_once() {
    flood_is_cut_off("ack-flood");
}

/// Descriptors sent the wrong way, more than a message carries: the process
/// is disconnected, and every descriptor the kernel installed in the
/// splitter is closed (not one kept per attempt).
#[test]
fn descriptors_a_tenant_process_sends_are_closed_not_kept() {
    require_root();
    let (s, evil) = victim_and_attacker("", None);
    let socket = s.dir.0.join("run/tenants/attacker/handoff.sock");
    let before = s.fd_count_stable();
    for count in [1, 8, 8, 64, 64] {
        let fake = Command::new(bin("fake-tenant"))
            .arg("--socket")
            .arg(&socket)
            .args(["--tenant", "attacker", "--mode", "descriptors", "--count"])
            .arg(count.to_string())
            .uid(evil)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = finished(fake, Duration::from_secs(10));
        assert!(out.contains("disconnected"), "{out}");
    }
    let after = fd_count_settled(s.proc.pid(), before);
    assert_eq!(
        after, before,
        "splitter descriptors before {before}, after {after}"
    );
    assert_eq!(s.tenant_pids("attacker", "ready").len(), 1);
}

/// A few reports at once are not a flood: a healthy process's reports bunch
/// up after a stall (its timer catches up, or the front read several queued).
#[test]
fn a_tenant_process_whose_reports_bunch_up_stays_connected() {
    require_root();
    let (s, evil) = victim_and_attacker("", None);
    let socket = s.dir.0.join("run/tenants/attacker/handoff.sock");
    let mut bunched = Command::new(bin("fake-tenant"))
        .arg("--socket")
        .arg(&socket)
        .args([
            "--tenant",
            "attacker",
            "--mode",
            "stats-flood",
            "--count",
            "4",
        ])
        .uid(evil)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), || {
        s.tenant_pids("attacker", "ready").len() == 2
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        bunched.try_wait().unwrap().is_none(),
        "four reports at once were taken for a flood"
    );
    assert_eq!(s.tenant_pids("attacker", "ready").len(), 2);
    let _ = bunched.kill();
    let _ = bunched.wait();
}

#[test]
fn handoff_sockets_admit_only_their_tenants_user_and_no_idle_crowd() {
    require_root();
    let (s, evil) = victim_and_attacker("", None);
    // Another user cannot reach the attacker's socket, nor the victim's.
    let stranger = system_user("swy-attacker");
    let victim_socket = s.dir.0.join("run/tenants/victim/handoff.sock");
    let out = finished(
        fake_tenant(&victim_socket, "victim", "no-ack", evil),
        Duration::from_secs(5),
    );
    assert!(out.contains("cannot connect"), "{out}");
    let attacker_socket = s.dir.0.join("run/tenants/attacker/handoff.sock");
    let out = finished(
        fake_tenant(&attacker_socket, "attacker", "no-ack", stranger),
        Duration::from_secs(5),
    );
    assert!(out.contains("cannot connect"), "{out}");
    // The tenant's own user opening silent connections: each is closed within
    // the Hello deadline, and the victim is served meanwhile.
    let started = Instant::now();
    with_victim_under_load(&s, 3, || {
        let crowd: Vec<_> = (0..20)
            .map(|_| fake_tenant(&attacker_socket, "attacker", "silent", evil))
            .collect();
        for fake in crowd {
            let out = finished(fake, Duration::from_secs(5));
            assert!(out.contains("disconnected"), "{out}");
        }
    });
    assert!(started.elapsed() < Duration::from_secs(6));
    assert_eq!(s.tenant_pids("attacker", "ready").len(), 1);
}

#[test]
fn a_pid_a_tenant_reports_is_never_signalled() {
    require_root();
    let (s, evil) = victim_and_attacker("", None);
    // The bystander: a root process the attacker would like the splitter to kill.
    let mut bystander = Command::new("sleep").arg("60").spawn().unwrap();
    let socket = s.dir.0.join("run/tenants/attacker/handoff.sock");
    let fake = Command::new(bin("fake-tenant"))
        .arg("--socket")
        .arg(&socket)
        .args(["--tenant", "attacker", "--mode", "no-ack", "--pid"])
        .arg(bystander.id().to_string())
        .uid(evil)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let fake_pid = fake.id() as u64;
    wait_until(Duration::from_secs(10), || {
        s.tenant_pids("attacker", "ready").len() == 2
    });
    // The pool lists the pid the kernel reported, not the claimed one.
    let pids = s.tenant_pids("attacker", "ready");
    assert!(pids.contains(&fake_pid), "{pids:?}");
    assert!(!pids.contains(&(bystander.id() as u64)), "{pids:?}");
    // A reload that changes names reaches every process (a message, not a signal).
    let host = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        host.replace("attacker.test\"]", "attacker.test\", \"y.attacker.test\"]"),
    )
    .unwrap();
    let (code, out, err) = s.ctl(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "the bystander is alive"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
    let mut fake = Proc(fake);
    let _ = fake.0.kill();
}

#[test]
fn the_admin_endpoint_is_closed_to_strangers() {
    require_root();
    // On TCP: a token.
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let s = SplitterBuilder::new(vec![TenantSpec::echo("victim", &["victim.test"])])
        .admin(admin)
        .start();
    assert_eq!(http_get(admin, "admin", "/metrics").unwrap().status, 401);
    assert_eq!(http_get(admin, "admin", "/status").unwrap().status, 401);
    assert_eq!(
        http_get_authorized(admin, "admin", "/status")
            .unwrap()
            .status,
        200
    );
    drop(s);
    // On a Unix socket: root only (it is bound before the front drops root).
    let s = SplitterBuilder::new(vec![TenantSpec::echo("victim", &["victim.test"])])
        .splitter_lines("admin = \"unix:admin.sock\"")
        .start();
    let socket = s.dir.0.join("run/admin.sock");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let get = |uid: u32| curl_unix_as(&socket, "http://admin/metrics", None, uid);
    assert_eq!(get(system_user("swy-attacker")), "000");
    assert_eq!(get(0), "200");
}
