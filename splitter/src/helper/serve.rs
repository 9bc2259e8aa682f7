//! The privileged helper's side: a small loop, run as the user the splitter was
//! started as (root in production), that spawns tenant processes with their
//! identity and limits, checks tenant files as their users, binds per-tenant
//! sockets, and signals its own children (and the orphans it adopted). It
//! reads no network input: its only peer is the front, over a socket pair, and
//! it takes nothing from the front but tenant names, pids it gave out itself,
//! and pids it checks against the tenant's user before adopting them.

use super::proto::{self, Envelope, Event, Reply, Request, StopSignal};
use crate::isolation;
use crate::start_error::StartError;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use switchyard_shared::config::{HostConfig, TenantConfig};
use switchyard_shared::handoff::{self, HANDOFF_FD_ENV};
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

/// How long `l7proxy --check` may take before it is killed.
pub const CHECK_TIME_LIMIT: Duration = Duration::from_secs(10);

/// Most bytes of a check's output kept for the report.
const CHECK_OUTPUT_LIMIT: usize = 16 * 1024;

/// Environment variables passed through to tenant processes; everything else
/// is cleared.
const PASSED_ENV: &[&str] = &[
    "PATH",
    "RUST_LOG",
    "RUST_BACKTRACE",
    "SWITCHYARD_LOG_FORMAT",
    #[cfg(feature = "fault-injection")]
    switchyard_shared::handoff::FAULT_DIE_ON_CONN_ENV,
    MIMALLOC_ARENA_EAGER_COMMIT,
];

/// The l7proxy's allocator (mimalloc) commits each memory arena up front by
/// default; lazily, an idle tenant process uses less memory at the same speed
/// (bench/RESULTS.md). The operator's own setting wins.
const MIMALLOC_ARENA_EAGER_COMMIT: &str = "MIMALLOC_ARENA_EAGER_COMMIT";

struct Helper {
    host_file: PathBuf,
    l7proxy: PathBuf,
    /// This executable, as it was when the helper started: what `ctl
    /// upgrade` runs when given no other binary.
    splitter: PathBuf,
    config: HostConfig,
    socket: AsyncFd<OwnedFd>,
    /// Live children: pid → where to send signals for it.
    children: HashMap<u32, mpsc::UnboundedSender<StopSignal>>,
    exited: mpsc::UnboundedReceiver<(u32, String)>,
    exited_tx: mpsc::UnboundedSender<(u32, String)>,
}

/// Runs the helper until the front closes its socket; then stops every child.
pub fn run(host_file: PathBuf) -> Result<(), StartError> {
    let socket = switchyard_shared::sys::take_inherited_fd(proto::HELPER_FD_ENV)?;
    let config = HostConfig::load(&host_file)?;
    let l7proxy = super::locate_l7proxy().map_err(StartError::io("find the l7proxy program"))?;
    let splitter = std::env::current_exe().map_err(StartError::io("find the splitter program"))?;
    isolation::drop_privileges();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::io("start the helper's runtime"))?;
    runtime.block_on(async move {
        let (exited_tx, exited) = mpsc::unbounded_channel();
        let mut helper = Helper {
            host_file,
            l7proxy,
            splitter,
            config,
            socket: switchyard_shared::sys::register(socket)
                .map_err(StartError::io("watch the socket to the front"))?,
            children: HashMap::new(),
            exited,
            exited_tx,
        };
        helper.serve().await;
        Ok(())
    })
}

impl Helper {
    async fn serve(&mut self) {
        loop {
            tokio::select! {
                received = self.socket.async_io(tokio::io::Interest::READABLE, |socket| proto::recv::<Envelope>(socket.as_fd())) => {
                    match received {
                        Ok(Some((envelope, _fd))) => {
                            match envelope.request {
                                Request::Release => {
                                    // Upgrade: the new splitter adopts every tenant process.
                                    info!("helper: released by the front for an upgrade; tenant processes keep running");
                                    std::process::exit(0);
                                }
                                Request::Shutdown => {
                                    self.shut_down().await;
                                    self.tell(&Event::Reply { id: envelope.id, result: Ok(Reply::ShutDown) }, None).await;
                                    return;
                                }
                                _ => {}
                            }
                            let (result, fd) = self.answer(envelope.request).await;
                            self.tell(&Event::Reply { id: envelope.id, result }, fd.as_ref().map(|f| f.as_fd())).await;
                        }
                        Ok(None) => {
                            // The front died without a clean stop (a crash): tenant
                            // processes keep serving and wait for a new splitter.
                            warn!(children = self.children.len(), "helper: the front went away; leaving tenant processes to re-attach to the next splitter");
                            return;
                        }
                        Err(e) => {
                            // Only the front can write here; a bad message means a bug or a
                            // compromised front: stop serving it.
                            error!(error = %e, "helper: bad request from the front; stopping");
                            self.shut_down().await;
                            return;
                        }
                    }
                }
                Some((pid, status)) = self.exited.recv() => {
                    self.children.remove(&pid);
                    self.tell(&Event::Exited { pid, status }, None).await;
                }
            }
        }
    }

    /// A clean stop: every tenant process still running is stopped, and the
    /// tenants' `handoff.sock`s are removed (so the next start does not wait
    /// for orphans).
    async fn shut_down(&mut self) {
        for tenant in &self.config.tenants {
            let path = self
                .config
                .splitter
                .runtime_dir
                .join("tenants")
                .join(&tenant.name)
                .join(handoff::HANDOFF_SOCKET_NAME);
            let _ = std::fs::remove_file(path);
        }
        for signal in self.children.values() {
            let _ = signal.send(StopSignal::Term);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !self.children.is_empty() {
            match tokio::time::timeout_at(deadline, self.exited.recv()).await {
                Ok(Some((pid, _))) => {
                    self.children.remove(&pid);
                }
                _ => break,
            }
        }
    }

    async fn tell(&self, event: &Event, fd: Option<std::os::fd::BorrowedFd<'_>>) {
        let sent = self
            .socket
            .async_io(tokio::io::Interest::WRITABLE, |socket| {
                proto::send(socket.as_fd(), event, fd)
            })
            .await;
        if let Err(e) = sent {
            warn!(error = %e, "helper: cannot tell the front");
        }
    }

    fn tenant(&self, name: &str) -> Result<TenantConfig, String> {
        self.config
            .tenant(name)
            .cloned()
            .ok_or_else(|| format!("no tenant {name:?} in {}", self.host_file.display()))
    }

    async fn answer(&mut self, request: Request) -> (Result<Reply, String>, Option<OwnedFd>) {
        match request {
            Request::Spawn { tenant } => match self
                .tenant(&tenant)
                .and_then(|t| self.spawn(&t).map_err(|e| e.to_string()))
            {
                Ok((pid, socket)) => (Ok(Reply::Spawned { pid }), Some(socket)),
                Err(e) => (Err(e), None),
            },
            Request::Check { tenant } => {
                // Against the host file on disk: a reload checks its new tenants
                // before anything changes.
                let result = match HostConfig::load(&self.host_file) {
                    Ok(config) => match config.tenant(&tenant) {
                        Some(t) => check_tenant(&self.l7proxy, &self.host_file, t)
                            .await
                            .map(|output| Reply::Checked { output }),
                        None => Err(format!(
                            "no tenant {tenant:?} in {}",
                            self.host_file.display()
                        )),
                    },
                    Err(e) => Err(format!("the host file is invalid:\n{e}")),
                };
                (result, None)
            }
            Request::Listen { tenant } => match self
                .tenant(&tenant)
                .and_then(|t| self.listen(&t).map_err(|e| e.to_string()))
            {
                Ok((listener, stale)) => (Ok(Reply::Listening { stale }), Some(listener)),
                Err(e) => (Err(e), None),
            },
            Request::Adopt { tenant, pid } => {
                let result = self
                    .tenant(&tenant)
                    .and_then(|t| self.adopt(&t, pid))
                    .map(|()| Reply::Adopted { pid });
                (result, None)
            }
            Request::StartSplitter { binary } => {
                let result = self
                    .start_splitter(binary)
                    .map(|pid| Reply::SplitterStarted { pid });
                (result, None)
            }
            Request::Release | Request::Shutdown => (Err("handled by the loop".into()), None),
            Request::Reload => match HostConfig::load(&self.host_file) {
                Ok(config) => {
                    self.config = config;
                    (Ok(Reply::Reloaded), None)
                }
                Err(e) => (Err(format!("the host file is invalid:\n{e}")), None),
            },
            Request::Signal { pid, signal } => match self.children.get(&pid) {
                Some(tx) if tx.send(signal).is_ok() => (Ok(Reply::Signalled), None),
                _ => (
                    Err(format!(
                        "pid {pid} is not a live tenant process of this splitter"
                    )),
                    None,
                ),
            },
        }
    }

    fn spawn(&mut self, tenant: &TenantConfig) -> io::Result<(u32, OwnedFd)> {
        let identity = isolation::identity(tenant)?;
        isolation::tenant_dir(&self.config.splitter.runtime_dir, &tenant.name, identity)?;
        let (ours, theirs) = handoff::seqpacket_pair()?;
        let mut command = tenant_command(&self.l7proxy, &self.host_file, tenant, identity)?;
        command.env(HANDOFF_FD_ENV, theirs.as_raw_fd().to_string());
        // The child inherits its end of the handoff socket. It outlives the
        // helper and the front: when they crash or hand over to a new
        // splitter, it keeps serving and re-attaches (bounded by
        // `orphan_timeout`).
        switchyard_shared::sys::inherit_outliving_parent(&mut command, theirs.as_fd());
        // Under `sched_batch` the splitter would pass SCHED_BATCH on; tenants serve
        // requests and get the normal policy back. (Without it, they inherit whatever
        // policy the operator started the splitter with.)
        if switchyard_shared::sys::scheduling_policy(0).is_ok_and(|p| p == libc::SCHED_BATCH) {
            switchyard_shared::sys::normal_scheduling_in_child(&mut command);
        }
        let mut child = tokio::process::Command::from(command).spawn()?;
        drop(theirs);
        let pid = child.id().unwrap_or(0);
        isolation::apply_cgroup_limits(&tenant.name, pid, &tenant.limits);
        let (signal_tx, mut signals) = mpsc::unbounded_channel();
        self.children.insert(pid, signal_tx);
        let exited = self.exited_tx.clone();
        // One task owns the child: it is reaped only here, so a pid it signals
        // is still this child's, never a reused one.
        tokio::spawn(async move {
            let status = loop {
                tokio::select! {
                    status = child.wait() => break status,
                    Some(signal) = signals.recv() => {
                        let signal = match signal {
                            StopSignal::Term => nix::sys::signal::Signal::SIGTERM,
                            StopSignal::Kill => nix::sys::signal::Signal::SIGKILL,
                        };
                        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
                    }
                }
            };
            let status = match status {
                Ok(status) => status.to_string(),
                Err(e) => format!("unknown ({e})"),
            };
            let _ = exited.send((pid, status));
        });
        Ok((pid, ours))
    }

    fn listen(&self, tenant: &TenantConfig) -> io::Result<(OwnedFd, bool)> {
        let identity = isolation::identity(tenant)?;
        let dir = isolation::tenant_dir(&self.config.splitter.runtime_dir, &tenant.name, identity)?;
        let path = dir.join(handoff::HANDOFF_SOCKET_NAME);
        let stale = path.symlink_metadata().is_ok();
        // Owner-only from the start (umask), then given to the tenant's user
        // without following a link it may have put in its own directory.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let listener = handoff::seqpacket_listen(&path);
        nix::sys::stat::umask(old);
        let listener = listener?;
        std::os::unix::fs::lchown(&path, identity.uid, identity.gid)?;
        info!(tenant = %tenant.name, path = %path.display(), stale, "hand-started and orphaned processes of this tenant join here");
        Ok((listener, stale))
    }

    /// Supervises `tenant`'s re-attached process `pid` (the kernel's pid for
    /// its socket): only a live process running as the tenant's user, held by
    /// a pidfd from then on, so a reused pid is never signalled.
    fn adopt(&mut self, tenant: &TenantConfig, pid: u32) -> Result<(), String> {
        let identity = isolation::identity(tenant).map_err(|e| e.to_string())?;
        let expected = identity
            .uid
            .unwrap_or_else(|| nix::unistd::getuid().as_raw());
        if self.children.contains_key(&pid) {
            return Err(format!("pid {pid} is already supervised"));
        }
        let pidfd = switchyard_shared::sys::pidfd_open(pid)
            .map_err(|e| format!("pid {pid}: cannot open a pidfd ({e})"))?;
        let uid = switchyard_shared::sys::process_uid(pid)
            .map_err(|e| format!("pid {pid}: cannot read its user ({e})"))?;
        // Read after the pidfd was opened: if the process behind the pidfd is
        // still alive, the uid was its own.
        let alive = nix::poll::poll(
            &mut [nix::poll::PollFd::new(
                pidfd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )],
            nix::poll::PollTimeout::ZERO,
        )
        .is_ok_and(|ready| ready == 0);
        if !alive {
            return Err(format!("pid {pid} has exited"));
        }
        if uid != expected {
            return Err(format!(
                "pid {pid} runs as uid {uid}, not as tenant {:?}'s user (uid {expected}); not adopted",
                tenant.name
            ));
        }
        let pidfd = switchyard_shared::sys::register(pidfd).map_err(|e| e.to_string())?;
        let (signal_tx, mut signals) = mpsc::unbounded_channel();
        self.children.insert(pid, signal_tx);
        let exited = self.exited_tx.clone();
        let tenant_name = tenant.name.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = pidfd.readable() => break,
                    Some(signal) = signals.recv() => {
                        let signal = match signal {
                            StopSignal::Term => nix::sys::signal::Signal::SIGTERM,
                            StopSignal::Kill => nix::sys::signal::Signal::SIGKILL,
                        };
                        if let Err(e) = switchyard_shared::sys::pidfd_send_signal(pidfd.get_ref().as_fd(), signal) {
                            warn!(tenant = %tenant_name, pid, error = %e, "cannot signal an adopted process");
                        }
                    }
                }
            }
            let _ = exited.send((
                pid,
                "exited (adopted: its exit status went to its first parent)".to_string(),
            ));
        });
        info!(tenant = %tenant.name, pid, "adopted a tenant process a previous splitter had spawned");
        Ok(())
    }

    /// Starts the splitter that takes over from this one: this executable,
    /// or `binary` when it is a regular file owned by root (or by this
    /// helper's user) that no one else may write. Its exit is reported.
    fn start_splitter(&mut self, binary: Option<PathBuf>) -> Result<u32, String> {
        use std::os::unix::fs::MetadataExt;
        let program = match binary {
            None => self.splitter.clone(),
            Some(path) => {
                let meta = std::fs::metadata(&path)
                    .map_err(|e| format!("--binary {}: {e}", path.display()))?;
                let me = nix::unistd::geteuid().as_raw();
                if !meta.is_file() {
                    return Err(format!("--binary {}: not a regular file", path.display()));
                }
                if meta.uid() != 0 && meta.uid() != me {
                    return Err(format!(
                        "--binary {}: owned by uid {}; the new splitter runs with the helper's rights, so its binary must be owned by root (or uid {me})",
                        path.display(),
                        meta.uid()
                    ));
                }
                if meta.mode() & 0o022 != 0 {
                    return Err(format!(
                        "--binary {}: writable by group or others (mode {:o}); make it 0755",
                        path.display(),
                        meta.mode() & 0o7777
                    ));
                }
                path
            }
        };
        let mut command = tokio::process::Command::new(&program);
        command
            .arg("--config")
            .arg(&self.host_file)
            .arg("--take-over")
            .stdin(Stdio::null());
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let pid = child.id().unwrap_or(0);
        let exited = self.exited_tx.clone();
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(status) => status.to_string(),
                Err(e) => format!("unknown ({e})"),
            };
            let _ = exited.send((pid, status));
        });
        info!(pid, program = %program.display(), "started a new splitter to take over");
        Ok(pid)
    }
}

/// The command that runs `l7proxy` for `tenant` as its user, with its limits,
/// a minimal environment and no way to gain privileges.
fn tenant_command(
    l7proxy: &Path,
    host_file: &Path,
    tenant: &TenantConfig,
    identity: isolation::Identity,
) -> io::Result<std::process::Command> {
    let mut command = std::process::Command::new(l7proxy);
    isolation::apply_identity(&mut command, identity);
    isolation::apply_nofile(&mut command, &tenant.limits)?;
    command
        .arg("--tenant")
        .arg(&tenant.name)
        .arg("--config")
        .arg(host_file)
        .env_clear()
        .env(MIMALLOC_ARENA_EAGER_COMMIT, "0")
        .stdin(Stdio::null());
    for name in PASSED_ENV {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    Ok(command)
}

/// Runs `l7proxy --check` for `tenant` as its user, within [`CHECK_TIME_LIMIT`]:
/// its output on success, on failure what it printed (or why it did not finish).
pub async fn check_tenant(
    l7proxy: &Path,
    host_file: &Path,
    tenant: &TenantConfig,
) -> Result<String, String> {
    let identity = isolation::identity(tenant).map_err(|e| e.to_string())?;
    let mut command =
        tenant_command(l7proxy, host_file, tenant, identity).map_err(|e| e.to_string())?;
    command
        .arg("--check")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "error");
    switchyard_shared::sys::no_new_privileges(&mut command);
    let mut child = tokio::process::Command::from(command)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            format!(
                "tenant {}: cannot run {} --check: {e}",
                tenant.name,
                l7proxy.display()
            )
        })?;
    let mut stdout = child
        .stdout
        .take()
        .expect("piped")
        .take(CHECK_OUTPUT_LIMIT as u64);
    let mut stderr = child
        .stderr
        .take()
        .expect("piped")
        .take(CHECK_OUTPUT_LIMIT as u64);
    let run = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        // What does not fit the limit is left unread (the child may then block
        // on a full pipe, and the time limit ends it).
        let _ = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        let status = child.wait().await;
        (status, out, err)
    };
    match tokio::time::timeout(CHECK_TIME_LIMIT, run).await {
        Ok((Ok(status), out, err)) => {
            let mut text = String::from_utf8_lossy(&out).into_owned();
            text.push_str(&String::from_utf8_lossy(&err));
            let text = text.trim_end().to_string();
            if status.success() {
                Ok(text)
            } else if text.is_empty() {
                Err(format!("tenant {}: its file check failed ({status})", tenant.name))
            } else {
                Err(text)
            }
        }
        Ok((Err(e), _, _)) => Err(format!("tenant {}: cannot wait for the check: {e}", tenant.name)),
        Err(_) => Err(format!(
            "tenant {}: checking its file took longer than {CHECK_TIME_LIMIT:?} and was stopped (does it name a FIFO or a device?)",
            tenant.name
        )),
    }
}
