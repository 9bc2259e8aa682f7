//! Several Switchyard hosts behind an L4 load balancer (docs/many-hosts.md),
//! on loopback: HAProxy in `mode tcp` with `send-proxy-v2` and health checks
//! in front of two splitters serving the same two tenants.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;
use switchyard_tests::*;

fn host() -> Splitter {
    SplitterBuilder::new(vec![
        TenantSpec::echo("alpha", &["alpha.test"]),
        TenantSpec::echo("beta", &["beta.test"]),
    ])
    .proxy_protocol()
    .splitter_lines("trusted_proxies = [\"127.0.0.1\"]\norphan_timeout = \"10s\"")
    .start()
}

/// HAProxy in TCP mode on `front`, sending PROXY v2 to both splitters' HTTP
/// listeners, checking them every 200 ms.
fn haproxy(dir: &TempDir, front: SocketAddr, a: SocketAddr, b: SocketAddr) -> Proc {
    let config = dir.write(
        "haproxy.cfg",
        &format!(
            "global\n  maxconn 4096\n\
             defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n  retries 3\n  option redispatch\n\
             frontend fe\n  bind {front}\n  default_backend hosts\n\
             backend hosts\n  balance roundrobin\n\
             \x20 server a {a} send-proxy-v2 check check-send-proxy inter 200ms fall 2 rise 2\n\
             \x20 server b {b} send-proxy-v2 check check-send-proxy inter 200ms fall 2 rise 2\n"
        ),
    );
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&config)
        .stdout(Stdio::null())
        .spawn()
        .expect("haproxy runs (scripts/setup.sh installs it)");
    let proc = Proc(child);
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(front).is_ok()
    });
    proc
}

/// `GET /echo` for `host` through `front`, from the client address `from`.
fn echo_from(from: &str, front: SocketAddr, host: &str) -> Response {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&format!("{from}:0").parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.connect(&front.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let response = request(&mut stream, host, "/echo", "Connection: close\r\n").unwrap();
    let _ = stream.flush();
    response
}

#[test]
fn two_hosts_behind_haproxy_survive_one_killed_under_load() {
    let _alone = measuring_alone();
    let a = host();
    let b = host();
    let front: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _haproxy = haproxy(&a.dir, front, a.http, b.http);
    // Both hosts serve through the balancer, and the tenants see the real
    // client's address (from the PROXY v2 header), not HAProxy's.
    let pids_a = [
        a.tenant_pids("alpha", "ready"),
        a.tenant_pids("beta", "ready"),
    ]
    .concat();
    let mut seen = std::collections::HashSet::new();
    wait_until(Duration::from_secs(10), || {
        let answer = echo_from("127.0.0.7", front, "alpha.test");
        assert_eq!(answer.status, 200);
        let json = answer.json();
        let client = json["client_addr"].as_str().unwrap_or_default().to_string();
        assert!(client.starts_with("127.0.0.7:"), "client address {client}");
        seen.insert(json["pid"].as_u64());
        seen.len() == 2
    });

    let url = format!("http://{front}/");
    let load = |seconds| {
        let (url, url2) = (url.clone(), url.clone());
        (
            thread::spawn(move || wrk(&url, "alpha.test", seconds, 16, false)),
            thread::spawn(move || wrk(&url2, "beta.test", seconds, 8, true)),
        )
    };
    // The kill costs at most the connections the dead front was peeking.
    let (keep_alive, close) = load(4);
    thread::sleep(Duration::from_millis(1500));
    signal(a.proc.pid(), libc::SIGKILL);
    let (keep_alive, close) = (keep_alive.join().unwrap(), close.join().unwrap());
    for (report, what) in [(&keep_alive, "keep-alive"), (&close, "Connection: close")] {
        assert!(
            report.requests > 100,
            "{what}: too few requests\n{}",
            report.output
        );
        assert!(
            report.socket_errors <= 24,
            "{what}: socket errors\n{}",
            report.output
        );
        assert_eq!(report.non_2xx, 0, "{what}: non-2xx\n{}", report.output);
    }
    // Once HAProxy's checks (every 200 ms, down after 2 failures) have marked
    // it down: not one error.
    thread::sleep(Duration::from_millis(1000));
    let (keep_alive, close) = load(2);
    let (keep_alive, close) = (keep_alive.join().unwrap(), close.join().unwrap());
    keep_alive.assert_clean("keep-alive after mark-down");
    close.assert_clean("Connection: close after mark-down");
    // The killed host's tenants kept serving the connections they had; new
    // ones all go to the other host.
    for pid in &pids_a {
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
    for _ in 0..10 {
        let answer = echo_from("127.0.0.8", front, "beta.test");
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.json()["pid"].as_u64(),
            Some(b.tenant_pids("beta", "ready")[0])
        );
    }
}
