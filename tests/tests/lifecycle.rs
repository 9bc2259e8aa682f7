//! The tenant lifecycle under real load: rolling restart, crash and respawn,
//! death before acknowledgement, reload, graceful stop, and `splitter ctl`.

use std::net::SocketAddr;
use std::thread;
use std::time::Duration;
use switchyard_tests::*;

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}

#[test]
fn rolling_restart_under_load_loses_nothing() {
    let _alone = measuring_alone();
    let s = SplitterBuilder::new(vec![
        TenantSpec::echo("alpha", &["alpha.test"]),
        TenantSpec::echo("beta", &["beta.test"]),
    ])
    .start();
    for close in [false, true] {
        let alpha_before = s.tenant_pids("alpha", "ready");
        let beta_before = s.tenant_pids("beta", "ready");
        let http = s.http;
        let a = thread::spawn(move || wrk(&url(http), "alpha.test", 4, 16, close));
        let b = thread::spawn(move || wrk(&url(http), "beta.test", 4, 16, close));
        thread::sleep(Duration::from_millis(1500));
        let (code, stdout, stderr) = s.ctl(&["restart", "alpha"]);
        assert_eq!(code, 0, "restart failed: {stdout}{stderr}");
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        a.assert_clean(&format!("alpha during restart (close={close})"));
        b.assert_clean(&format!("beta during alpha's restart (close={close})"));
        let alpha_after = s.tenant_pids("alpha", "ready");
        assert_eq!(alpha_after.len(), 1);
        assert_ne!(alpha_after, alpha_before, "alpha has new processes");
        assert_eq!(
            s.tenant_pids("beta", "ready"),
            beta_before,
            "beta was not touched"
        );
    }
    // The old processes drained and exited.
    wait_until(Duration::from_secs(20), || {
        s.status().tenants[0].processes.len() == 1
    });
}

#[test]
fn ctl_reports_unknown_tenants_and_a_splitter_that_is_not_running() {
    let s = SplitterBuilder::new(vec![TenantSpec::echo("alpha", &["alpha.test"])]).start();
    let (code, _, stderr) = s.ctl(&["restart", "nope"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("no tenant named \"nope\" (tenants: alpha)"),
        "{stderr}"
    );
    let (code, stdout, _) = s.ctl(&["status"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("tenant alpha") && stdout.contains("ready"),
        "{stdout}"
    );
    let mode = std::fs::metadata(s.dir.0.join("run/control.sock")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    let (code, stdout, _) = s.ctl(&["stop"]);
    assert_eq!(code, 0, "{stdout}");
    let mut s = s;
    let status = s.proc.0.wait().unwrap();
    assert!(
        status.success(),
        "ctl stop ends the splitter with exit 0: {status}"
    );
    let (code, _, stderr) = s.ctl(&["status"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("the splitter is not running"), "{stderr}");
}

#[test]
fn a_killed_process_is_respawned_and_its_new_connections_are_held_meanwhile() {
    let _alone = measuring_alone();
    let s = SplitterBuilder::new(vec![
        TenantSpec::echo("alpha", &["alpha.test"]),
        TenantSpec::echo("beta", &["beta.test"]),
    ])
    .start();
    let http = s.http;
    let b = thread::spawn(move || wrk(&url(http), "beta.test", 3, 8, false));
    thread::sleep(Duration::from_millis(500));
    let victim = s.tenant_pids("alpha", "ready")[0];
    signal(victim as u32, libc::SIGKILL);
    // Connections arriving during the outage are held, then answered.
    let answers: Vec<_> = (0..5)
        .map(|_| thread::spawn(move || http_get(http, "alpha.test", "/").map(|r| r.status)))
        .collect();
    for answer in answers {
        assert_eq!(answer.join().unwrap().unwrap(), 200);
    }
    b.join().unwrap().assert_clean("beta while alpha crashed");
    let after = s.tenant_pids("alpha", "ready");
    assert_eq!(after.len(), 1);
    assert_ne!(after[0], victim);
    assert_eq!(s.status().tenants[0].restarts, 1);
}

#[test]
fn with_two_processes_killing_one_loses_no_new_connection() {
    let _alone = measuring_alone();
    let mut spec = TenantSpec::echo("alpha", &["alpha.test"]);
    spec.processes = 2;
    let s = SplitterBuilder::new(vec![spec]).start();
    wait_until(Duration::from_secs(10), || {
        s.tenant_pids("alpha", "ready").len() == 2
    });
    let http = s.http;
    let load = thread::spawn(move || wrk(&url(http), "alpha.test", 3, 8, true));
    thread::sleep(Duration::from_millis(1000));
    signal(s.tenant_pids("alpha", "ready")[0] as u32, libc::SIGKILL);
    let report = load.join().unwrap();
    // Connection-per-request: every request is a new connection. The killed
    // process takes its in-flight requests with it (at most one per wrk
    // connection); no new connection may be refused.
    assert!(report.requests > 100, "{}", report.output);
    assert!(
        report.socket_errors + report.non_2xx <= 8,
        "only requests in flight in the killed process may fail\n{}",
        report.output
    );
}

#[test]
fn a_connection_handed_to_a_process_that_dies_before_acking_is_served_by_another() {
    let dir = TempDir::new("fault");
    // The tenant's user must be able to delete the marker.
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let marker = dir.0.join("die-on-next-conn");
    let mut spec = TenantSpec::echo("alpha", &["alpha.test"]);
    spec.processes = 2;
    let s = SplitterBuilder::new(vec![spec])
        .env(
            switchyard_shared::handoff::FAULT_DIE_ON_CONN_ENV,
            marker.to_str().unwrap(),
        )
        .start();
    wait_until(Duration::from_secs(10), || {
        s.tenant_pids("alpha", "ready").len() == 2
    });
    std::fs::write(&marker, b"").unwrap();
    let answer = http_get(s.http, "alpha.test", "/").unwrap();
    assert_eq!(answer.status, 200);
    assert!(
        !marker.exists(),
        "no process took the fault: build the binaries with `--features splitter/fault-injection,l7proxy/fault-injection` (./test.sh does)"
    );
    let status = s.status();
    assert_eq!(status.tenants[0].rehanded, 1, "{status:?}");
}

#[test]
fn reload_adds_and_removes_tenants_while_a_third_serves_without_error() {
    let _alone = measuring_alone();
    let s = SplitterBuilder::new(vec![
        TenantSpec::echo("keep", &["keep.test"]),
        TenantSpec::echo("gone", &["gone.test"]),
    ])
    .start();
    let keep_pids = s.tenant_pids("keep", "ready");
    let http = s.http;
    let load = thread::spawn(move || wrk(&url(http), "keep.test", 4, 16, false));
    thread::sleep(Duration::from_millis(1000));
    // Rewrite the host file: "gone" removed, "new" added, "keep" gains a host.
    let host = std::fs::read_to_string(&s.config).unwrap();
    let host = host.replace(
        "name = \"gone\"\nhosts = [\"gone.test\"]",
        "name = \"new\"\nhosts = [\"new.test\"]",
    );
    let host = host.replace(
        "hosts = [\"keep.test\"]",
        "hosts = [\"keep.test\", \"also-keep.test\"]",
    );
    std::fs::copy(
        s.dir.0.join("tenants/gone.toml"),
        s.dir.0.join("tenants/new.toml"),
    )
    .unwrap();
    let host = host.replace("tenants/gone.toml", "tenants/new.toml");
    std::fs::write(&s.config, host).unwrap();
    let (code, stdout, stderr) = s.ctl(&["reload"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("tenant new: added") && stdout.contains("tenant gone: removed"),
        "{stdout}"
    );
    load.join().unwrap().assert_clean("keep during reload");
    assert_eq!(
        s.tenant_pids("keep", "ready"),
        keep_pids,
        "keep's processes stay"
    );
    wait_until(
        Duration::from_secs(10),
        || matches!(http_get(s.http, "new.test", "/"), Ok(r) if r.status == 200),
    );
    assert_eq!(http_get(s.http, "gone.test", "/").unwrap().status, 404);
    // keep answers its new name (its processes re-read their hosts on SIGHUP).
    wait_until(
        Duration::from_secs(5),
        || matches!(http_get(s.http, "also-keep.test", "/"), Ok(r) if r.status == 200 && r.json()["tenant"] == "keep"),
    );

    // An invalid host file changes nothing and says why.
    std::fs::write(&s.config, "[splitter]\nbogus = 1\n").unwrap();
    let (code, _, stderr) = s.ctl(&["reload"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("unknown field `bogus`"), "{stderr}");
    assert_eq!(http_get(s.http, "keep.test", "/").unwrap().status, 200);
}

#[test]
fn sigterm_under_load_answers_every_in_flight_request_and_exits_0() {
    let _alone = measuring_alone();
    let mut s = SplitterBuilder::new(vec![TenantSpec::echo("alpha", &["alpha.test"])]).start();
    let children = s.children();
    let http = s.http;
    let load = thread::spawn(move || wrk(&url(http), "alpha.test", 3, 16, false));
    thread::sleep(Duration::from_millis(1000));
    signal(s.proc.pid(), libc::SIGTERM);
    let status = s.proc.0.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    let report = load.join().unwrap();
    // After the stop, new connections are refused (wrk counts connect errors);
    // what was in flight was answered: no read errors, no non-2xx.
    assert!(report.requests > 100, "{}", report.output);
    assert_eq!(report.non_2xx, 0, "{}", report.output);
    assert_eq!(
        report.read_errors, 0,
        "no request lost mid-flight\n{}",
        report.output
    );
    for pid in children {
        wait_until(Duration::from_secs(5), || {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        });
    }
}

#[test]
fn the_admin_endpoint_serves_metrics_and_status() {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let s = SplitterBuilder::new(vec![TenantSpec::echo("alpha", &["alpha.test"])])
        .admin(admin)
        .start();
    for _ in 0..3 {
        http_get(s.http, "alpha.test", "/").unwrap();
    }
    http_get(s.http, "nobody.test", "/").unwrap();
    let metrics = http_get_authorized(admin, "admin", "/metrics").unwrap();
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8(metrics.body).unwrap();
    let http = s.http.to_string();
    let routed = format!("switchyard_connections_total{{listener=\"{http}\",outcome=\"routed\"}}");
    let count = |prefix: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    };
    // The kit's readiness probe made at least one more request.
    assert!(count(&routed) >= 4, "{text}");
    assert_eq!(
        count(&format!(
            "switchyard_connections_total{{listener=\"{http}\",outcome=\"unknown_host\"}}"
        )),
        1
    );
    assert!(count("switchyard_handoffs_total{tenant=\"alpha\"}") >= 4);
    assert_eq!(count("switchyard_ready_processes{tenant=\"alpha\"}"), 1);
    assert!(text.contains("switchyard_peek_seconds_bucket"), "{text}");
    assert!(
        text.contains("switchyard_handoff_seconds_bucket{tenant=\"alpha\""),
        "{text}"
    );

    let status = http_get_authorized(admin, "admin", "/status")
        .unwrap()
        .json();
    assert_eq!(status["tenants"][0]["name"], "alpha");
    assert_eq!(status["tenants"][0]["processes"][0]["state"], "ready");
    assert_eq!(
        http_get_authorized(admin, "admin", "/nope").unwrap().status,
        404
    );
}

#[test]
fn a_restart_picks_up_a_changed_tenant_file_and_refuses_an_invalid_one() {
    let s = SplitterBuilder::new(vec![TenantSpec::echo("alpha", &["alpha.test"])]).start();
    let file = s.dir.0.join("tenants/alpha.toml");
    // Only /v2 is routed now: / becomes 404 once the new processes serve.
    std::fs::write(
        &file,
        "[tls]\nself_signed = true\n[[route]]\npath = \"/v2\"\nrespond = \"echo\"\n",
    )
    .unwrap();
    assert_eq!(
        http_get(s.http, "alpha.test", "/").unwrap().status,
        200,
        "nothing changes before the restart"
    );
    let (code, stdout, stderr) = s.ctl(&["restart", "alpha"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(http_get(s.http, "alpha.test", "/").unwrap().status, 404);
    assert_eq!(http_get(s.http, "alpha.test", "/v2").unwrap().status, 200);

    std::fs::write(&file, "[[route]]\npath = \"/\"\nupstream = \"missing\"\n").unwrap();
    let pids = s.tenant_pids("alpha", "ready");
    let (code, _, stderr) = s.ctl(&["restart", "alpha"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("alpha.toml:3:12: route names upstream \"missing\""),
        "{stderr}"
    );
    assert_eq!(
        s.tenant_pids("alpha", "ready"),
        pids,
        "the running processes stay"
    );
}

#[test]
fn a_connection_held_past_hold_timeout_gets_503_with_retry_after() {
    let s = SplitterBuilder::new(vec![TenantSpec::echo("alpha", &["alpha.test"])])
        .splitter_lines("hold_timeout = \"50ms\"")
        .start();
    // The respawn waits at least 100 ms (doubling with each quick death): a
    // request in that window is held, then turned away. A slow machine can
    // miss the window (the request is then served), so the kill is repeated.
    let mut answer = None;
    for _ in 0..5 {
        wait_until(Duration::from_secs(10), || {
            s.tenant_pids("alpha", "ready").len() == 1
        });
        let victim = s.tenant_pids("alpha", "ready")[0];
        signal(victim as u32, libc::SIGKILL);
        wait_until(Duration::from_secs(5), || {
            s.tenant_pids("alpha", "ready").is_empty()
        });
        let got = http_get(s.http, "alpha.test", "/").unwrap();
        if got.status != 200 {
            answer = Some(got);
            break;
        }
    }
    let answer = answer.expect("no request was held while the tenant respawned");
    assert_eq!(answer.status, 503);
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert!(s.status().tenants[0].hold_timeouts >= 1);
    // And the tenant is back shortly after.
    wait_until(
        Duration::from_secs(10),
        || matches!(http_get(s.http, "alpha.test", "/"), Ok(r) if r.status == 200),
    );
}

#[test]
fn sighup_reloads_the_host_file() {
    let s = SplitterBuilder::new(vec![TenantSpec::echo("alpha", &["alpha.test"])]).start();
    std::fs::copy(
        s.dir.0.join("tenants/alpha.toml"),
        s.dir.0.join("tenants/beta.toml"),
    )
    .unwrap();
    let mut host = std::fs::read_to_string(&s.config).unwrap();
    host.push_str(
        "[[tenant]]\nname = \"beta\"\nhosts = [\"beta.test\"]\nconfig = \"tenants/beta.toml\"\n",
    );
    if running_as_root() {
        host.push_str(&format!("user = \"{TENANT_USER}\"\n"));
    }
    std::fs::write(&s.config, host).unwrap();
    signal(s.proc.pid(), libc::SIGHUP);
    wait_until(
        Duration::from_secs(10),
        || matches!(http_get(s.http, "beta.test", "/"), Ok(r) if r.status == 200 && r.json()["tenant"] == "beta"),
    );
}

#[test]
fn reload_says_which_changes_wait_for_a_restart() {
    let s = SplitterBuilder::new(vec![TenantSpec::echo("alpha", &["alpha.test"])]).start();
    let host = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        host.replace("peek_timeout = \"2s\"", "peek_timeout = \"3s\""),
    )
    .unwrap();
    let (code, stdout, stderr) = s.ctl(&["reload"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("apply when the splitter restarts"),
        "{stdout}"
    );
}

/// Scheduling policy of every thread of `pid`.
fn thread_policies(pid: u32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| t.ok()?.file_name().to_str()?.parse::<i32>().ok())
        // A thread that exited meanwhile is skipped.
        .filter_map(|tid| switchyard_shared::sys::scheduling_policy(tid).ok())
        .collect()
}

#[test]
fn the_splitter_runs_under_sched_batch_and_its_tenants_do_not() {
    let s = SplitterBuilder::new(vec![TenantSpec::echo("alpha", &["alpha.test"])])
        .splitter_lines("threads = 2")
        .start();
    let splitter = thread_policies(s.proc.pid());
    assert!(splitter.len() >= 3, "main and two workers: {splitter:?}");
    assert!(
        splitter.iter().all(|&p| p == libc::SCHED_BATCH),
        "every splitter thread under SCHED_BATCH: {splitter:?}"
    );
    let tenant = thread_policies(s.tenant_pids("alpha", "ready")[0] as u32);
    assert!(
        !tenant.is_empty() && tenant.iter().all(|&p| p == libc::SCHED_OTHER),
        "tenant threads keep the normal policy: {tenant:?}"
    );

    let normal = SplitterBuilder::new(vec![TenantSpec::echo("alpha", &["alpha.test"])])
        .splitter_lines("sched_batch = false")
        .start();
    let policies = thread_policies(normal.proc.pid());
    assert!(
        policies.iter().all(|&p| p == libc::SCHED_OTHER),
        "sched_batch = false: {policies:?}"
    );
}

#[test]
fn ctl_works_while_the_host_file_is_being_edited_and_reload_says_how_tenant_files_apply() {
    let s = SplitterBuilder::new(vec![TenantSpec::echo("alpha", &["alpha.test"])]).start();
    let host = std::fs::read_to_string(&s.config).unwrap();
    // Half-edited: valid TOML, invalid settings.
    std::fs::write(
        &s.config,
        host.replace("[splitter]\n", "[splitter]\nbogus = 1\n"),
    )
    .unwrap();
    let (code, stdout, stderr) = s.ctl(&["status"]);
    assert_eq!(code, 0, "status needs only runtime_dir: {stderr}");
    assert!(stdout.contains("tenant alpha"), "{stdout}");
    let (code, _, stderr) = s.ctl(&["reload"]);
    assert_ne!(code, 0, "the reload itself is refused");
    assert!(stderr.contains("unknown field `bogus`"), "{stderr}");
    std::fs::write(&s.config, &host).unwrap();
    let (code, stdout, stderr) = s.ctl(&["reload"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("splitter ctl restart TENANT"), "{stdout}");
}

#[test]
fn a_standalone_tenant_finishes_its_requests_on_sigterm_then_exits_promptly() {
    let upstream: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _app = start_upstream(upstream, "app-1");
    let mut tenant = StandaloneTenant::start(&format!(
        "[[upstream]]\nname = \"app\"\nservers = [\"{upstream}\"]\n[[route]]\nupstream = \"app\"\n"
    ));
    tenant.wait_until_served();
    let addr = tenant.addr;
    let slow = thread::spawn(move || http_get(addr, "app.test", "/?delay_ms=1500"));
    thread::sleep(Duration::from_millis(300));
    let stopped = std::time::Instant::now();
    signal(tenant.proc.pid(), libc::SIGTERM);
    let status = loop {
        if let Some(status) = tenant.proc.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(8),
            "still running 8 s after SIGTERM"
        );
        thread::sleep(Duration::from_millis(50));
    };
    let took = stopped.elapsed();
    assert!(status.success(), "exit status {status}");
    let answer = slow
        .join()
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(answer.status, 200);
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_secs(5),
        "exited {took:?} after SIGTERM: it should wait for the in-flight request (1.2 s more), not for Pingora's whole grace period"
    );
}
