//! Spawning a tenant's l7proxy processes and keeping them alive.
//!
//! Each slot of a tenant's pool has one supervisor task: spawn the process with
//! its end of a fresh `SOCK_SEQPACKET` pair inherited, read what it says
//! (`Hello`, `Ready`, `Ack`, `Draining`), and when it exits give its
//! unacknowledged connections to the rest of the pool and respawn it after a
//! backoff that doubles while the process keeps dying young.

use crate::isolation;
use crate::tenant::{HandoffSocket, ProcKey, Tenant};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchyard_shared::handoff::{self, Message, HANDOFF_FD_ENV};
use tokio::io::unix::AsyncFd;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{error, info, warn};

/// First respawn delay; doubled per quick death up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest respawn delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A process that lived this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How long a stopping process may take before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a draining process may take (its own cap is 10 s plus shutdown).
const DRAIN_GRACE: Duration = Duration::from_secs(15);

/// Environment variables passed through to tenant processes; everything else
/// is cleared.
const PASSED_ENV: &[&str] = &[
    "PATH",
    "RUST_LOG",
    "RUST_BACKTRACE",
    "SWITCHYARD_LOG_FORMAT",
    switchyard_shared::handoff::FAULT_DIE_ON_CONN_ENV,
    MIMALLOC_ARENA_EAGER_COMMIT,
];

/// The l7proxy's allocator (mimalloc) commits each memory arena up front by
/// default; lazily, an idle tenant process measured 11.4 instead of 18.4 MiB
/// RSS and one under load 19 instead of 31 MiB, at the same req/s and CPU
/// (bench/RESULTS.md). The operator's own setting wins.
const MIMALLOC_ARENA_EAGER_COMMIT: &str = "MIMALLOC_ARENA_EAGER_COMMIT";

static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// What every supervisor needs to spawn a process.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    /// Path of the l7proxy binary.
    pub l7proxy: PathBuf,
    /// The host file, passed as `--config`.
    pub host_config: PathBuf,
    /// The splitter's runtime directory (tenant directories go under it).
    pub runtime_dir: PathBuf,
}

impl SpawnSpec {
    /// The l7proxy beside this executable, or `$SWITCHYARD_L7PROXY`.
    pub fn locate(host_config: PathBuf, runtime_dir: PathBuf) -> io::Result<SpawnSpec> {
        let l7proxy = match std::env::var_os("SWITCHYARD_L7PROXY") {
            Some(path) => PathBuf::from(path),
            None => std::env::current_exe()?.with_file_name("l7proxy"),
        };
        if !l7proxy.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "l7proxy binary not found at {} (build it with `cargo build`, or set SWITCHYARD_L7PROXY)",
                    l7proxy.display()
                ),
            ));
        }
        Ok(SpawnSpec {
            l7proxy,
            host_config,
            runtime_dir,
        })
    }
}

/// Keeps one slot of `tenant`'s pool (in pool generation `generation`) filled
/// until `stop` turns true; then drains the slot's process.
pub async fn supervise(
    tenant: Arc<Tenant>,
    spec: SpawnSpec,
    generation: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = MIN_BACKOFF;
    while !*stop.borrow() {
        let started = Instant::now();
        match spawn(&tenant, &spec, generation) {
            Ok((key, child, socket)) => {
                let pid = child.id().unwrap_or(0);
                info!(tenant = %tenant.name(), pid, "tenant process started");
                let status = run(&tenant, key, child, socket, &mut stop).await;
                tenant.remove_process(key);
                if *stop.borrow() {
                    info!(tenant = %tenant.name(), pid, "tenant process stopped");
                    return;
                }
                let lived = started.elapsed();
                tenant.counters.restarts.fetch_add(1, Ordering::Relaxed);
                error!(
                    tenant = %tenant.name(),
                    pid,
                    status = %status,
                    lived_ms = lived.as_millis() as u64,
                    "tenant process exited; respawning (see its log lines above for the cause)"
                );
                if lived >= STABLE_AFTER {
                    backoff = MIN_BACKOFF;
                } else if backoff >= MAX_BACKOFF {
                    error!(
                        tenant = %tenant.name(),
                        backoff_s = backoff.as_secs(),
                        "tenant keeps crashing; respawning at the slowest rate (fix its configuration or upstream, then `splitter ctl restart`)"
                    );
                }
            }
            Err(e) => error!(
                tenant = %tenant.name(),
                error = %e,
                l7proxy = %spec.l7proxy.display(),
                "cannot spawn tenant process; retrying"
            ),
        }
        tenant
            .counters
            .backoff_ms
            .store(backoff.as_millis() as u64, Ordering::Relaxed);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => {}
        }
        tenant.counters.backoff_ms.store(0, Ordering::Relaxed);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn spawn(
    tenant: &Arc<Tenant>,
    spec: &SpawnSpec,
    generation: u64,
) -> io::Result<(ProcKey, Child, HandoffSocket)> {
    let config = tenant.config();
    let identity = isolation::identity(&config)?;
    isolation::tenant_dir(&spec.runtime_dir, tenant.name(), identity)?;
    let (ours, theirs) = handoff::seqpacket_pair()?;
    let mut command = std::process::Command::new(&spec.l7proxy);
    isolation::apply_identity(&mut command, identity);
    isolation::apply_nofile(&mut command, &config.limits)?;
    command
        .arg("--tenant")
        .arg(tenant.name())
        .arg("--config")
        .arg(&spec.host_config)
        .env_clear()
        .env(HANDOFF_FD_ENV, theirs.as_raw_fd().to_string())
        .env(MIMALLOC_ARENA_EAGER_COMMIT, "0")
        .stdin(Stdio::null());
    for name in PASSED_ENV {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    // The child inherits its end of the handoff socket, and a tenant must not
    // outlive a splitter that was killed outright.
    switchyard_shared::sys::inherit_and_die_with_parent(&mut command, theirs.as_fd());
    // Under `sched_batch` the splitter would pass SCHED_BATCH on; tenants serve
    // requests and get the normal policy back. (Without it, they inherit whatever
    // policy the operator started the splitter with.)
    if switchyard_shared::sys::scheduling_policy(0).is_ok_and(|p| p == libc::SCHED_BATCH) {
        switchyard_shared::sys::normal_scheduling_in_child(&mut command);
    }
    let child = Command::from(command).kill_on_drop(true).spawn()?;
    drop(theirs);
    if let Some(pid) = child.id() {
        isolation::apply_cgroup_limits(tenant.name(), pid, &config.limits);
    }
    let socket: HandoffSocket = Arc::new(switchyard_shared::sys::register(ours)?);
    let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
    tenant.add_process(key, generation, socket.clone());
    Ok((key, child, socket))
}

/// Serves one process until it exits (or is stopped); returns its exit status.
async fn run(
    tenant: &Arc<Tenant>,
    key: ProcKey,
    mut child: Child,
    socket: HandoffSocket,
    stop: &mut watch::Receiver<bool>,
) -> String {
    let pid = child.id().unwrap_or(0);
    let asked_to_stop = tokio::select! {
        status = child.wait() => return describe(status),
        reason = read_messages(tenant, key, &socket) => {
            warn!(tenant = %tenant.name(), pid, reason = %reason, "handoff socket closed; stopping the process");
            false
        }
        _ = stop.changed() => true,
    };
    tenant.mark_draining(key);
    // Asked to stop: drain gracefully (in-flight requests finish, then the
    // process exits). A process whose socket failed gets SIGTERM instead.
    if asked_to_stop {
        match handoff::send(socket.get_ref().as_fd(), &Message::Drain, None) {
            Ok(()) => {
                if let Ok(status) = tokio::time::timeout(DRAIN_GRACE, child.wait()).await {
                    return describe(status);
                }
                warn!(tenant = %tenant.name(), pid, grace = ?DRAIN_GRACE, "process did not drain in time; sending SIGTERM");
            }
            Err(e) => {
                warn!(tenant = %tenant.name(), pid, error = %e, "cannot send Drain; sending SIGTERM")
            }
        }
    }
    terminate(&mut child, pid).await
}

async fn terminate(child: &mut Child, pid: u32) -> String {
    if pid != 0 {
        // Our own child, not yet reaped: the pid cannot have been reused.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(status) => describe(status),
        Err(_) => {
            let _ = child.kill().await;
            format!("killed after {STOP_GRACE:?} grace")
        }
    }
}

fn describe(status: io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(e) => format!("unknown ({e})"),
    }
}

/// Reads the process's messages until its socket closes; returns why it stopped.
async fn read_messages(tenant: &Arc<Tenant>, key: ProcKey, socket: &AsyncFd<OwnedFd>) -> String {
    loop {
        let mut guard = match socket.readable().await {
            Ok(guard) => guard,
            Err(e) => return e.to_string(),
        };
        loop {
            match handoff::recv(socket.get_ref().as_fd()) {
                Ok(Some(received)) => {
                    if !received.fds.is_empty() {
                        warn!(tenant = %tenant.name(), count = received.fds.len(), "tenant process sent descriptors; closed them");
                    }
                    match received.message {
                        Ok(Message::Hello { tenant: name, pid }) => {
                            if name != tenant.name() {
                                return format!("process says it serves tenant {name:?}");
                            }
                            tenant.set_pid(key, pid);
                        }
                        Ok(Message::Ready) => tenant.mark_ready(key),
                        Ok(Message::Ack { up_to_seq }) => tenant.acknowledge(key, up_to_seq),
                        Ok(Message::Draining) => tenant.mark_draining(key),
                        Ok(other) => {
                            warn!(tenant = %tenant.name(), message = ?other, "unexpected message from a tenant process; ignored")
                        }
                        Err(e) => return format!("protocol error: {e}"),
                    }
                }
                Ok(None) => return "end of file".to_string(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    warn!(tenant = %tenant.name(), error = %e, "bad datagram from a tenant process; ignored")
                }
                Err(e) => return e.to_string(),
            }
        }
    }
}

/// Accepts l7proxy processes started by hand on `runtime_dir/handoff.sock`.
///
/// A process is admitted into its tenant's pool only if its `SO_PEERCRED` uid is
/// the tenant's configured `user` (or the splitter's own uid when the tenant has
/// none). Such processes are not supervised: they are not respawned, and a
/// rolling restart leaves them alone (they are pool generation 0).
pub async fn admit_attached(listener: OwnedFd, fleet: Arc<crate::fleet::Fleet>) {
    let listener = match switchyard_shared::sys::register(listener) {
        Ok(listener) => listener,
        Err(e) => {
            error!(error = %e, "cannot watch handoff.sock; processes started by hand cannot join");
            return;
        }
    };
    loop {
        let Ok(mut guard) = listener.readable().await else {
            return;
        };
        match switchyard_shared::sys::accept(listener.get_ref().as_fd()) {
            Ok(socket) => {
                tokio::spawn(attach(socket, fleet.clone()));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
            Err(e) => {
                warn!(error = %e, "accept on handoff.sock failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn attach(socket: OwnedFd, fleet: Arc<crate::fleet::Fleet>) {
    let uid = match handoff::peer_uid(socket.as_fd()) {
        Ok(uid) => uid,
        Err(e) => {
            warn!(error = %e, "handoff.sock: cannot read the peer's credentials; refused");
            return;
        }
    };
    let Ok(socket) = switchyard_shared::sys::register(socket) else {
        return;
    };
    // The first message must be Hello, within a few seconds.
    let hello = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let mut guard = socket.readable().await.ok()?;
            match handoff::recv(socket.get_ref().as_fd()) {
                Ok(Some(received)) => return Some(received.message),
                Ok(None) => return None,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(_) => return None,
            }
        }
    })
    .await;
    let (name, pid) = match hello {
        Ok(Some(Ok(Message::Hello { tenant, pid }))) => (tenant, pid),
        Ok(Some(Err(e))) => {
            warn!(uid, error = %e, "handoff.sock: refused a process speaking another protocol");
            return;
        }
        _ => {
            warn!(
                uid,
                "handoff.sock: refused a process that did not say Hello"
            );
            return;
        }
    };
    let Some(tenant) = fleet.tenant(&name).await else {
        warn!(uid, pid, tenant = %name, "handoff.sock: refused a process for an unknown tenant");
        return;
    };
    let allowed = match tenant.config().user {
        Some(user) => match nix::unistd::User::from_name(&user) {
            Ok(Some(user)) => user.uid.as_raw(),
            _ => {
                warn!(tenant = %name, user = %user, "handoff.sock: the tenant's user does not exist; refused");
                return;
            }
        },
        None => nix::unistd::getuid().as_raw(),
    };
    if uid != allowed {
        warn!(
            tenant = %name,
            pid,
            uid,
            expected_uid = allowed,
            "handoff.sock: refused a process running as the wrong user (start it as the tenant's `user`)"
        );
        return;
    }
    let socket: HandoffSocket = Arc::new(socket);
    let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
    tenant.add_process(key, 0, socket.clone());
    tenant.set_pid(key, pid);
    info!(tenant = %name, pid, uid, "a process started by hand joined the pool");
    let reason = read_messages(&tenant, key, &socket).await;
    tenant.remove_process(key);
    info!(tenant = %name, pid, reason = %reason, "a process started by hand left the pool");
}
