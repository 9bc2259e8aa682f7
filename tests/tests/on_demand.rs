//! On-demand tenants, black-box: `[[tenant]] start = "on-demand"` spawns no
//! process until a connection for the tenant arrives (it waits in the hold
//! queue meanwhile), and `idle_stop` stops the tenant's processes after that
//! long without a connection. A connection left open keeps the tenant up.

use std::net::TcpStream;
use std::time::{Duration, Instant};
use switchyard_tests::*;

fn on_demand(name: &str, host: &str, idle_stop: &str) -> TenantSpec {
    let mut spec = TenantSpec::echo(name, &[host]);
    spec.host_lines = format!("start = \"on-demand\"\nidle_stop = \"{idle_stop}\"\n");
    spec
}

/// Starts a splitter without waiting for tenants (an on-demand one would
/// start at the kit's probe), only for its control socket.
fn start(tenants: Vec<TenantSpec>) -> Splitter {
    let splitter = SplitterBuilder::new(tenants).start_without_waiting();
    wait_until(Duration::from_secs(20), || splitter.ctl(&["status"]).0 == 0);
    splitter
}

fn tenant_status(splitter: &Splitter, name: &str) -> switchyard_shared::control::TenantStatus {
    splitter
        .status()
        .tenants
        .into_iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no tenant {name} in status"))
}

#[test]
fn a_connection_starts_an_on_demand_tenant_and_idleness_stops_it() {
    let splitter = start(vec![
        TenantSpec::echo("always", &["always.test"]),
        on_demand("lazy", "lazy.test", "2s"),
    ]);
    wait_until(
        Duration::from_secs(20),
        || matches!(http_get(splitter.http, "always.test", "/echo"), Ok(r) if r.status == 200),
    );

    // Nothing runs for the on-demand tenant until a client asks for it.
    let lazy = tenant_status(&splitter, "lazy");
    assert_eq!(lazy.start, "on-demand");
    assert!(!lazy.running, "{lazy:?}");
    assert!(lazy.processes.is_empty(), "{lazy:?}");
    let always = tenant_status(&splitter, "always");
    assert_eq!(always.start, "always");
    assert!(always.running);
    let (_, text, _) = splitter.ctl(&["status"]);
    assert!(
        text.contains("on demand: stopped until its next connection"),
        "{text}"
    );

    // The first TLS request waits while the process starts, then is answered.
    let started = Instant::now();
    let answer = https_get(splitter.tls, "lazy.test", "/echo").unwrap();
    let cold = started.elapsed();
    assert_eq!(answer.status, 200);
    assert!(cold < Duration::from_secs(5), "cold start took {cold:?}");
    let lazy = tenant_status(&splitter, "lazy");
    assert!(lazy.running, "{lazy:?}");
    assert_eq!(lazy.demand_starts, 1);
    assert_eq!(lazy.hold_timeouts, 0);
    let first = splitter.tenant_pids("lazy", "ready");
    assert_eq!(first.len(), 1, "{lazy:?}");

    // Two seconds without a connection: the process is stopped and exits.
    wait_until(Duration::from_secs(10), || {
        let lazy = tenant_status(&splitter, "lazy");
        !lazy.running && lazy.processes.is_empty()
    });
    assert!(!std::path::Path::new(&format!("/proc/{}", first[0])).exists());
    let lazy = tenant_status(&splitter, "lazy");
    assert_eq!(lazy.idle_stops, 1);
    // The always tenant was never touched.
    assert!(tenant_status(&splitter, "always").running);
    assert_eq!(
        http_get(splitter.http, "always.test", "/echo")
            .unwrap()
            .status,
        200
    );

    // The next connection starts it again, with a new process.
    assert_eq!(
        http_get(splitter.http, "lazy.test", "/echo")
            .unwrap()
            .status,
        200
    );
    let lazy = tenant_status(&splitter, "lazy");
    assert_eq!(lazy.demand_starts, 2);
    let second = splitter.tenant_pids("lazy", "ready");
    assert_eq!(second.len(), 1);
    assert_ne!(first, second);
}

#[test]
fn an_open_connection_keeps_an_on_demand_tenant_running() {
    let splitter = start(vec![on_demand("lazy", "lazy.test", "2s")]);
    let mut stream = TcpStream::connect(splitter.http).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let answer = request(&mut stream, "lazy.test", "/echo", "").unwrap();
    assert_eq!(answer.status, 200);

    // Idle for two and a half times idle_stop, but the keep-alive connection
    // is open.
    std::thread::sleep(Duration::from_secs(5));
    let lazy = tenant_status(&splitter, "lazy");
    assert!(lazy.running, "{lazy:?}");
    assert_eq!(lazy.idle_stops, 0);
    let answer = request(&mut stream, "lazy.test", "/echo", "").unwrap();
    assert_eq!(answer.status, 200);

    // Closed: now it stops.
    drop(stream);
    let closed = Instant::now();
    wait_until(Duration::from_secs(10), || {
        !tenant_status(&splitter, "lazy").running
    });
    // Not before idle_stop less the one-second report interval (the last
    // report showing the connection may predate the close by up to that).
    assert!(closed.elapsed() >= Duration::from_millis(900));
}

#[test]
fn a_rolling_restart_of_an_on_demand_tenant_counts_as_activity() {
    let splitter = start(vec![on_demand("lazy", "lazy.test", "4s")]);
    let answer = http_get(splitter.http, "lazy.test", "/echo").unwrap();
    assert_eq!(answer.status, 200);
    let first = splitter.tenant_pids("lazy", "ready");
    assert_eq!(first.len(), 1);

    // Restarted shortly before idle_stop would stop it (its last busy moment
    // is the request, or the process's report of it up to a second later).
    std::thread::sleep(Duration::from_millis(2500));
    let (code, stdout, stderr) = splitter.ctl(&["restart", "lazy"]);
    let restarted = Instant::now();
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("tenant lazy restarted"), "{stdout}");

    // The new process serves for idle_stop from the restart, not from the
    // request: still running three seconds later (counted from the request
    // it would have stopped four to five seconds after it).
    std::thread::sleep(Duration::from_secs(3).saturating_sub(restarted.elapsed()));
    let lazy = tenant_status(&splitter, "lazy");
    assert!(lazy.running, "stopped within 3 s of a restart: {lazy:?}");
    let now = splitter.tenant_pids("lazy", "ready");
    assert!(now.len() == 1 && now != first, "{first:?} → {now:?}");

    // Then it stops like any idle tenant.
    wait_until(Duration::from_secs(10), || {
        let lazy = tenant_status(&splitter, "lazy");
        !lazy.running && lazy.processes.is_empty()
    });
    let lazy = tenant_status(&splitter, "lazy");
    assert_eq!((lazy.demand_starts, lazy.idle_stops), (1, 1), "{lazy:?}");
}

#[test]
fn connections_held_during_a_cold_start_are_all_answered() {
    let splitter = start(vec![on_demand("lazy", "lazy.test", "10m")]);
    let clients: Vec<_> = (0..20)
        .map(|i| {
            let addr = if i % 2 == 0 {
                splitter.tls
            } else {
                splitter.http
            };
            std::thread::spawn(move || match i % 2 {
                0 => https_get(addr, "lazy.test", "/echo").map(|r| r.status),
                _ => http_get(addr, "lazy.test", "/echo").map(|r| r.status),
            })
        })
        .collect();
    for client in clients {
        assert_eq!(client.join().unwrap().unwrap(), 200);
    }
    let lazy = tenant_status(&splitter, "lazy");
    assert_eq!(lazy.demand_starts, 1, "{lazy:?}");
    assert_eq!(lazy.processes.len(), 1, "{lazy:?}");
}

#[test]
fn a_reload_switches_a_tenant_between_always_and_on_demand() {
    let splitter = start(vec![on_demand("lazy", "lazy.test", "10m")]);
    assert!(!tenant_status(&splitter, "lazy").running);
    let host = std::fs::read_to_string(&splitter.config).unwrap();
    std::fs::write(
        &splitter.config,
        host.replace("start = \"on-demand\"", "start = \"always\""),
    )
    .unwrap();
    let (code, _, stderr) = splitter.ctl(&["reload"]);
    assert_eq!(code, 0, "{stderr}");
    wait_until(Duration::from_secs(20), || {
        splitter.tenant_pids("lazy", "ready").len() == 1
    });
    let lazy = tenant_status(&splitter, "lazy");
    assert_eq!(lazy.start, "always");
    assert_eq!(lazy.demand_starts, 0);

    // Back to on-demand with a short idle_stop: it stops without a connection.
    std::fs::write(
        &splitter.config,
        host.replace("idle_stop = \"10m\"", "idle_stop = \"1s\""),
    )
    .unwrap();
    let (code, _, stderr) = splitter.ctl(&["reload"]);
    assert_eq!(code, 0, "{stderr}");
    wait_until(Duration::from_secs(15), || {
        let lazy = tenant_status(&splitter, "lazy");
        !lazy.running && lazy.processes.is_empty()
    });
}

#[test]
fn bad_start_and_idle_stop_values_are_located() {
    let dir = TempDir::new("on-demand-check");
    dir.write(
        "tenants/a.toml",
        "[[route]]\npath = \"/\"\nrespond = \"echo\"\n",
    );
    let (front, tenant) = user_sections();
    let config = dir.write(
        "host.toml",
        &format!("{front}[[listen]]\naddr = \"127.0.0.1:1\"\nprotocol = \"http\"\n[[tenant]]\nname = \"a\"\nhosts = [\"a.test\"]\nconfig = \"tenants/a.toml\"\nstart = \"sometimes\"\nidle_stop = \"0s\"\n{tenant}"),
    );
    let offset = front.lines().count();
    let (code, _, stderr) = splitter_check(&config);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "host.toml:{}:9: tenant \"a\": start = \"sometimes\" is not a start policy",
            offset + 8
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "host.toml:{}:13: tenant \"a\": idle_stop must be at least \"1s\"",
            offset + 9
        )),
        "{stderr}"
    );
}

#[test]
fn an_upgrade_keeps_a_running_on_demand_tenant_and_its_stopped_neighbour() {
    let splitter = start(vec![
        on_demand("warm", "warm.test", "10m"),
        on_demand("cold", "cold.test", "10m"),
    ]);
    assert_eq!(
        http_get(splitter.http, "warm.test", "/echo")
            .unwrap()
            .status,
        200
    );
    let warm = splitter.tenant_pids("warm", "ready");
    assert_eq!(warm.len(), 1);

    let (code, stdout, stderr) = splitter.ctl(&["upgrade"]);
    assert_eq!(code, 0, "upgrade failed: {stdout}{stderr}");
    let _new = KillOnDrop(upgraded_to(&stdout));
    // The running tenant's process was adopted, not replaced; the stopped
    // one stayed stopped.
    wait_until(Duration::from_secs(10), || {
        splitter.tenant_pids("warm", "ready") == warm
    });
    let answer = http_get(splitter.http, "warm.test", "/echo").unwrap();
    assert_eq!(answer.json()["pid"].as_u64(), Some(warm[0]));
    let cold = tenant_status(&splitter, "cold");
    assert!(!cold.running && cold.processes.is_empty(), "{cold:?}");
    assert_eq!(
        http_get(splitter.http, "cold.test", "/echo")
            .unwrap()
            .status,
        200
    );
}
