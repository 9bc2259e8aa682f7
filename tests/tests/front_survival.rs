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
    let mut s = two_tenants("5s").start();
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
    // An adopted process drains on a rolling restart like a spawned one.
    let (code, stdout, stderr) = s.ctl(&["restart", "beta"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    wait_until(Duration::from_secs(15), || !alive(beta[0]));
    // The adopted processes are supervised: one killed is replaced.
    signal(alpha[0] as u32, libc::SIGKILL);
    wait_until(Duration::from_secs(15), || {
        let now = s.tenant_pids("alpha", "ready");
        now.len() == 1 && now != alpha
    });
}

#[test]
fn orphans_without_a_splitter_drain_and_exit_after_orphan_timeout() {
    let mut s = two_tenants("3s").start();
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
fn orphans_whose_log_reader_went_away_still_exit() {
    // A closed stderr (the log collector died): every log line fails with
    // EPIPE. That must cost the lines, not the process's way out.
    let mut s = two_tenants("1s").piped_stderr().start();
    drop(s.proc.0.stderr.take());
    let pids = [
        s.tenant_pids("alpha", "ready"),
        s.tenant_pids("beta", "ready"),
    ]
    .concat();
    assert_eq!(
        https_get(s.tls, "alpha.test", "/").unwrap().status,
        200,
        "serving with nobody reading its log"
    );
    signal(s.proc.pid(), libc::SIGKILL);
    let _ = s.proc.0.wait();
    wait_until(Duration::from_secs(10), || pids.iter().all(|p| !alive(*p)));
}

#[test]
fn a_clean_stop_leaves_no_orphans_and_the_next_start_spawns_at_once() {
    let mut s = two_tenants("5s").start();
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

/// The inode of the socket listening on 127.0.0.1:`port` (from /proc/net/tcp).
fn listening_inode(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local = fields.get(1)?;
        let listening = fields.get(3)? == &"0A";
        let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
        (listening && local_port == port).then(|| fields.get(9)?.parse().ok())?
    })
}

/// Whether process `pid` holds the socket with this inode.
fn holds_socket(pid: u32, inode: u64) -> bool {
    let wanted = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == wanted)
            })
        })
        .unwrap_or(false)
}

#[test]
fn ctl_upgrade_under_load_keeps_the_listening_sockets_and_every_tenant_process() {
    let _alone = measuring_alone();
    let s = two_tenants("5s").start();
    let alpha = s.tenant_pids("alpha", "ready");
    let beta = s.tenant_pids("beta", "ready");
    let old = s.proc.pid();
    let (http_inode, tls_inode) = (
        listening_inode(s.http.port()).unwrap(),
        listening_inode(s.tls.port()).unwrap(),
    );
    assert!(holds_socket(old, http_inode));
    let url = format!("http://{}/", s.http);
    let (keep_alive, close) = {
        let url2 = url.clone();
        (
            thread::spawn(move || wrk(&url, "alpha.test", 5, 16, false)),
            thread::spawn(move || wrk(&url2, "beta.test", 5, 8, true)),
        )
    };
    thread::sleep(Duration::from_millis(1500));
    let (code, stdout, stderr) = s.ctl(&["upgrade"]);
    assert_eq!(code, 0, "upgrade failed: {stdout}{stderr}");
    assert!(stdout.contains("upgraded"), "{stdout}");
    let (keep_alive, close) = (keep_alive.join().unwrap(), close.join().unwrap());
    let new = upgraded_to(&stdout);
    let _new = KillOnDrop(new);
    keep_alive.assert_clean("keep-alive");
    close.assert_clean("Connection: close");
    assert_ne!(new, old, "a new splitter serves");
    wait_until(Duration::from_secs(5), || !alive(u64::from(old)));
    // The same sockets, not a rebind, now held by the new splitter.
    assert_eq!(listening_inode(s.http.port()), Some(http_inode));
    assert_eq!(listening_inode(s.tls.port()), Some(tls_inode));
    assert!(holds_socket(new, http_inode) && holds_socket(new, tls_inode));
    // The same tenant processes, adopted.
    assert_eq!(s.tenant_pids("alpha", "ready"), alpha);
    assert_eq!(s.tenant_pids("beta", "ready"), beta);
    assert!(s.status().tenants.iter().all(|t| t.restarts == 0));
    let answer = http_get(s.http, "alpha.test", "/echo").unwrap();
    assert_eq!(answer.json()["pid"].as_u64(), Some(alpha[0]));
}

#[test]
fn an_upgrade_to_a_binary_that_fails_leaves_the_old_splitter_serving() {
    let s = two_tenants("5s").start();
    let alpha = s.tenant_pids("alpha", "ready");
    let (code, stdout, stderr) = s.ctl(&["upgrade", "--binary", "/bin/false"]);
    assert_ne!(code, 0, "{stdout}{stderr}");
    assert!(
        stderr.contains("upgrade failed") && stderr.contains("keeps serving"),
        "{stderr}"
    );
    assert_eq!(s.status().pid, s.proc.pid());
    assert_eq!(s.tenant_pids("alpha", "ready"), alpha);
    let answer = http_get(s.http, "alpha.test", "/echo").unwrap();
    assert_eq!(answer.status, 200);
    // A binary others may write is refused before anything runs.
    let writable = s.dir.0.join("splitter-copy");
    std::fs::copy(bin("splitter"), &writable).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, _, stderr) = s.ctl(&["upgrade", "--binary", writable.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(stderr.contains("writable by group or others"), "{stderr}");
}
