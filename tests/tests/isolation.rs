//! Tenant isolation as root: tenant processes run as their users with no
//! supplementary groups, no new privileges and their limits; the network-facing
//! front runs as its own user with no capabilities, and only its helper keeps
//! root; a process started by hand joins only as the tenant's user. Fails when
//! not run as root (CI runs as root).

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;
use switchyard_tests::*;

fn require_root() {
    assert!(
        running_as_root(),
        "the isolation tests need root (they switch users); run them as root, as CI does"
    );
}

fn user(name: &str) -> u32 {
    system_user(name)
}

fn status_field(pid: u64, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or("")
        .trim()
        .to_string()
}

#[test]
fn tenants_run_as_their_users_and_the_splitter_drops_privileges() {
    require_root();
    let uid_a = user("sy-test-a");
    let uid_b = user("sy-test-b");
    let mut alpha = TenantSpec::echo("alpha", &["alpha.test"]);
    alpha.host_lines = "user = \"sy-test-a\"\n[tenant.limits]\nnofile = 4096\n".into();
    let s = SplitterBuilder::new(vec![alpha, TenantSpec::echo("beta", &["beta.test"])]).start();

    let pid = s.tenant_pids("alpha", "ready")[0];
    assert_eq!(
        status_field(pid, "Uid").split_whitespace().next(),
        Some(uid_a.to_string().as_str())
    );
    assert_eq!(
        status_field(pid, "Groups"),
        "",
        "supplementary groups cleared"
    );
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert!(nofile.contains("4096"), "{nofile}");
    let answer = http_get(s.http, "alpha.test", "/").unwrap();
    assert_eq!(answer.json()["pid"], pid);

    let dir = std::fs::metadata(s.dir.0.join("run/tenants/alpha")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&dir), uid_a);
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&dir.permissions()) & 0o777,
        0o700
    );

    // The network-facing front is unprivileged: its own user, no capability
    // at all (not even in the bounding set), and no way to gain any.
    let front = s.proc.pid() as u64;
    let front_uid = system_user(FRONT_USER).to_string();
    assert!(
        status_field(front, "Uid")
            .split_whitespace()
            .all(|id| id == front_uid),
        "front Uid {}",
        status_field(front, "Uid")
    );
    assert_eq!(status_field(front, "CapEff"), "0000000000000000");
    assert_eq!(status_field(front, "CapPrm"), "0000000000000000");
    assert_eq!(status_field(front, "CapBnd"), "0000000000000000");
    assert_eq!(status_field(front, "NoNewPrivs"), "1");
    assert_eq!(
        status_field(front, "Seccomp"),
        "2",
        "the system-call allow-list is on"
    );
    assert_eq!(status_field(front, "Groups"), "");
    // Only the helper (the front's one child) keeps root, and it is the tenants' parent.
    let helper = children_of(s.proc.pid());
    assert_eq!(helper.len(), 1, "the front's only child is the helper");
    assert_eq!(
        status_field(helper[0] as u64, "Uid")
            .split_whitespace()
            .next(),
        Some("0")
    );
    assert!(children_of(helper[0]).contains(&(pid as u32)));

    // A process started by hand as the wrong user is refused …
    let mut wrong = Command::new(bin("l7proxy"))
        .args(["--tenant", "alpha", "--config"])
        .arg(&s.config)
        .uid(uid_b)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let exited = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        wrong.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = wrong.kill();
    }
    let _ = wrong.wait();
    assert!(exited, "the refused process stops");
    assert_eq!(s.status().tenants[0].processes.len(), 1);

    // … and one started as the tenant's user joins the pool.
    let right = Proc(
        Command::new(bin("l7proxy"))
            .args(["--tenant", "alpha", "--config"])
            .arg(&s.config)
            .uid(uid_a)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(Duration::from_secs(10), || {
        s.tenant_pids("alpha", "ready").len() == 2
    });
    assert!(s
        .tenant_pids("alpha", "ready")
        .contains(&(right.pid() as u64)));
}
