//! The front never takes the sites down: a splitter that dies leaves its
//! tenant processes serving, and the next splitter adopts them; `ctl upgrade`
//! replaces the splitter under load without restarting any tenant.

use std::net::TcpStream;
use std::thread;
use std::time::Duration;
use switchyard_tests::*;

fn alive(pid: u64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn two_tenants(orphan_timeout: &str) -> SplitterBuilder {
    SplitterBuilder::new(vec![
        TenantSpec::echo("alpha", &["alpha.test"]),
        TenantSpec::echo("beta", &["beta.test"]),
    ])
    .splitter_lines(&format!("orphan_timeout = \"{orphan_timeout}\""))
}

/// A kept-alive connection's next request, answered by process `pid`.
fn answered_by(stream: &mut TcpStream, host: &str) -> u64 {
    let response = request(stream, host, "/echo", "").expect("kept-alive connection answered");
    assert_eq!(response.status, 200);
    response.json()["pid"].as_u64().expect("echo names its pid")
}

#[test]
fn a_killed_splitter_leaves_tenants_serving_and_the_next_one_adopts_them() {
    let mut s = two_tenants("30s").start();
    let alpha = s.tenant_pids("alpha", "ready");
    let beta = s.tenant_pids("beta", "ready");
    assert_eq!((alpha.len(), beta.len()), (1, 1));
    let mut kept = TcpStream::connect(s.http).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(answered_by(&mut kept, "alpha.test"), alpha[0]);

    signal(s.proc.pid(), libc::SIGKILL);
    let _ = s.proc.0.wait();
    thread::sleep(Duration::from_millis(300));
    // The established connection is still served, by the same process.
    for _ in 0..3 {
        assert_eq!(answered_by(&mut kept, "alpha.test"), alpha[0]);
    }
    assert!(
        alive(alpha[0]) && alive(beta[0]),
        "tenant processes outlive the splitter"
    );

    s.start_again();
    wait_until(
        Duration::from_secs(15),
        || matches!(http_get(s.http, "alpha.test", "/echo"), Ok(r) if r.status == 200),
    );
    // Adopted, not respawned: the same pids serve new connections.
    wait_until(Duration::from_secs(10), || {
        s.tenant_pids("alpha", "ready") == alpha && s.tenant_pids("beta", "ready") == beta
    });
    let fresh = http_get(s.http, "beta.test", "/echo").unwrap();
    assert_eq!(fresh.json()["pid"].as_u64(), Some(beta[0]));
    assert_eq!(answered_by(&mut kept, "alpha.test"), alpha[0]);
    let status = s.status();
    assert!(
        status.tenants.iter().all(|t| t.restarts == 0),
        "no tenant was restarted: {status:?}"
    );
    // The adopted processes are supervised: one killed is replaced.
    signal(alpha[0] as u32, libc::SIGKILL);
    wait_until(Duration::from_secs(15), || {
        let now = s.tenant_pids("alpha", "ready");
        now.len() == 1 && now != alpha
    });
}

#[test]
fn orphans_without_a_splitter_drain_and_exit_after_orphan_timeout() {
    let mut s = two_tenants("1s").start();
    let pids = [
        s.tenant_pids("alpha", "ready"),
        s.tenant_pids("beta", "ready"),
    ]
    .concat();
    signal(s.proc.pid(), libc::SIGKILL);
    let _ = s.proc.0.wait();
    thread::sleep(Duration::from_millis(500));
    assert!(
        pids.iter().all(|p| alive(*p)),
        "still serving within orphan_timeout"
    );
    wait_until(Duration::from_secs(10), || pids.iter().all(|p| !alive(*p)));
}

#[test]
fn a_clean_stop_leaves_no_orphans_and_the_next_start_spawns_at_once() {
    let mut s = two_tenants("30s").start();
    let pids = [
        s.tenant_pids("alpha", "ready"),
        s.tenant_pids("beta", "ready"),
    ]
    .concat();
    signal(s.proc.pid(), libc::SIGTERM);
    let status = s.proc.0.wait().unwrap();
    assert!(status.success(), "clean stop: {status}");
    assert!(
        pids.iter().all(|p| !alive(*p)),
        "tenants drained with the splitter"
    );
    let handoff = s.dir.0.join("run/tenants/alpha/handoff.sock");
    assert!(
        !handoff.exists(),
        "the clean stop removed {}",
        handoff.display()
    );
    s.start_again();
    let started = std::time::Instant::now();
    wait_until(
        Duration::from_secs(15),
        || matches!(http_get(s.http, "alpha.test", "/echo"), Ok(r) if r.status == 200),
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "no adoption window after a clean stop (took {:?})",
        started.elapsed()
    );
}
