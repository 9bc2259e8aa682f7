//! Tenant isolation as root: tenant processes run as their users with no
//! supplementary groups, no new privileges and their limits; the splitter keeps
//! only the capabilities it needs; a process started by hand joins only as the
//! tenant's user. Skipped, with the reason printed, when not run as root.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;
use switchyard_tests::*;

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIPPED: isolation tests need root (switching users); CI runs them as root");
    }
    root
}

/// Creates a system user if missing; returns its uid.
fn user(name: &str) -> u32 {
    let lookup = || {
        Command::new("id")
            .args(["-u", name])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<u32>()
                    .unwrap()
            })
    };
    if let Some(uid) = lookup() {
        return uid;
    }
    let status = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ])
        .status()
        .expect("useradd");
    assert!(
        status.success() || lookup().is_some(),
        "useradd {name} failed"
    );
    lookup().unwrap()
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
    if !running_as_root() {
        return;
    }
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

    // The splitter's capabilities are reduced: no NET_BIND_SERVICE (10), no SYS_ADMIN (21).
    let cap_eff = u64::from_str_radix(&status_field(s.proc.pid() as u64, "CapEff"), 16).unwrap();
    let ours = u64::from_str_radix(&status_field(std::process::id() as u64, "CapEff"), 16).unwrap();
    eprintln!("splitter CapEff {cap_eff:016x} (the test, as root: {ours:016x})");
    assert!(
        cap_eff & (1 << 10) == 0 && cap_eff & (1 << 21) == 0,
        "CapEff {cap_eff:x}"
    );
    assert!(
        cap_eff & (1 << 6) != 0 && cap_eff & (1 << 7) != 0,
        "SETGID and SETUID kept: {cap_eff:x}"
    );

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
    assert_eq!(
        s.status()["tenants"][0]["processes"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

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
