//! The systemd protocols, played by the test as systemd would: a
//! `NOTIFY_SOCKET` the test reads (`READY=1` with `STATUS=`, `RELOADING=1` with
//! `MONOTONIC_USEC=` then `READY=1`, `STOPPING=1`, `WATCHDOG=1`), and a
//! listening socket passed as descriptor 3 (`LISTEN_FDS`), used instead of a
//! bind; a passed socket no `[[listen]]` names is a clear error.

use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};
use switchyard_tests::*;

/// The next notification other than `WATCHDOG=1`, within `limit`.
fn next_state(socket: &UnixDatagram, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no notification within {limit:?}");
        socket.set_read_timeout(Some(left)).unwrap();
        // A receive with a timeout is not restarted after a signal handler
        // ran (SIGCHLD: the test's splitter exiting after an upgrade).
        let n = match socket.recv(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            received => received.expect("a notification"),
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text != "WATCHDOG=1" {
            return text;
        }
    }
}

#[test]
fn the_notify_sequence_follows_start_reload_watchdog_and_stop() {
    let dir = TempDir::new("notify");
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = dir.0.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let mut s = SplitterBuilder::new(vec![TenantSpec::echo("alpha", &["alpha.test"])])
        .env("NOTIFY_SOCKET", path.to_str().unwrap())
        .env("WATCHDOG_USEC", "400000")
        .start();

    let ready = next_state(&socket, Duration::from_secs(20));
    assert_eq!(
        ready,
        "READY=1\nSTATUS=serving 1 tenants, 1 of 1 processes ready"
    );
    // WATCHDOG=1 every half of WATCHDOG_USEC.
    let mut buf = [0u8; 64];
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let n = socket.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"WATCHDOG=1");

    let (code, _, stderr) = s.ctl(&["reload"]);
    assert_eq!(code, 0, "{stderr}");
    let reloading = next_state(&socket, Duration::from_secs(10));
    let usec: u64 = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("{reloading:?}"))
        .parse()
        .unwrap();
    assert!(usec > 0);
    assert!(next_state(&socket, Duration::from_secs(10))
        .starts_with("READY=1\nSTATUS=serving 1 tenants"));

    signal(s.proc.pid(), libc::SIGTERM);
    let stopping = next_state(&socket, Duration::from_secs(10));
    assert!(
        stopping.starts_with("STOPPING=1\nSTATUS=stopping (SIGTERM)"),
        "{stopping:?}"
    );
    assert!(s.proc.0.wait().unwrap().success());
}

#[test]
fn after_an_upgrade_the_new_splitter_reports_its_pid_and_readiness() {
    let dir = TempDir::new("notify-upgrade");
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = dir.0.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let s = SplitterBuilder::new(vec![TenantSpec::echo("alpha", &["alpha.test"])])
        .env("NOTIFY_SOCKET", path.to_str().unwrap())
        .splitter_lines("orphan_timeout = \"5s\"")
        .start();
    assert!(next_state(&socket, Duration::from_secs(20)).starts_with("READY=1"));
    let (code, stdout, stderr) = s.ctl(&["upgrade"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let new = upgraded_to(&stdout);
    let _kill = KillOnDrop(new);
    // systemd (NotifyAccess=all) learns the new main pid, then its readiness.
    assert_eq!(
        next_state(&socket, Duration::from_secs(10)),
        format!("MAINPID={new}")
    );
    assert_eq!(
        next_state(&socket, Duration::from_secs(20)),
        "READY=1\nSTATUS=serving 1 tenants, 1 of 1 processes ready"
    );
}

/// The `socket:[INODE]` link of a descriptor.
fn socket_inode(pid: u32, fd: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn a_passed_listening_socket_is_used_instead_of_a_bind() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let ours = socket_inode(
        std::process::id(),
        std::os::fd::AsRawFd::as_raw_fd(&listener),
    );
    let s = SplitterBuilder::new(vec![TenantSpec::echo("alpha", &["alpha.test"])])
        .passed_tls_listener(listener.try_clone().unwrap())
        .start();
    // Served on the passed socket (a bind of the same address would have
    // failed: the test still holds it).
    assert_eq!(https_get(s.tls, "alpha.test", "/").unwrap().status, 200);
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", s.proc.pid()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    assert!(fds.contains(&ours), "the splitter holds {ours}: {fds:?}");
}

#[test]
fn a_passed_socket_no_listen_names_is_refused_with_a_clear_error() {
    let dir = TempDir::new("activation");
    dir.write(
        "tenants/a.toml",
        "[[route]]\npath = \"/\"\nrespond = \"echo\"\n",
    );
    let (front, tenant) = user_lines();
    let host = dir.write(
        "host.toml",
        &format!(
            "[splitter]\nruntime_dir = \"run\"\norphan_timeout = \"1s\"\n{front}[[listen]]\naddr = \"127.0.0.1:{}\"\nprotocol = \"http\"\n[[tenant]]\nname = \"a\"\nhosts = [\"a.test\"]\nconfig = \"tenants/a.toml\"\n{tenant}",
            free_port()
        ),
    );
    let stray = TcpListener::bind("127.0.0.1:0").unwrap();
    let stray_addr = stray.local_addr().unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stray);
    // SAFETY: clears close-on-exec on a descriptor this process owns.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$0\" --config \"$1\" {}",
            as_descriptor_3(fd)
        ))
        .arg(bin("splitter"))
        .arg(&host)
        .env("SWITCHYARD_L7PROXY", bin("l7proxy"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "systemd passed listening sockets for {stray_addr} that no [[listen]]"
        )),
        "{stderr}"
    );
}

#[test]
fn systemd_socket_activate_starts_the_splitter_on_the_first_connection() {
    if Command::new("systemd-socket-activate")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-socket-activate is not installed; the protocol itself is tested above");
        return;
    }
    let dir = TempDir::new("socket-activate");
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    dir.write(
        "tenants/a.toml",
        "[tls]\nself_signed = true\n[[route]]\npath = \"/\"\nrespond = \"echo\"\n",
    );
    let (front, tenant) = user_lines();
    let tls_port = free_port();
    let host = dir.write(
        "host.toml",
        &format!(
            "[splitter]\nruntime_dir = \"run\"\norphan_timeout = \"1s\"\n{front}[[listen]]\naddr = \"127.0.0.1:{tls_port}\"\nprotocol = \"tls\"\n[[tenant]]\nname = \"a\"\nhosts = [\"a.test\"]\nconfig = \"tenants/a.toml\"\n{tenant}"
        ),
    );
    let child = Command::new("systemd-socket-activate")
        .args(["-l", &format!("127.0.0.1:{tls_port}"), "--fdname=https"])
        .arg(format!(
            "--setenv=SWITCHYARD_L7PROXY={}",
            bin("l7proxy").display()
        ))
        .arg("--setenv=RUST_LOG=warn")
        .arg(bin("splitter"))
        .arg("--config")
        .arg(&host)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _activator = Proc(child);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    // The activator holds the socket; the first connection starts the
    // splitter, which serves it once the tenant is ready.
    wait_until(Duration::from_secs(5), || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    let answer = https_get(addr, "a.test", "/").unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["tenant"], "a");
}
