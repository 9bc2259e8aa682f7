//! The privileged helper: the only part of the splitter that keeps the rights it
//! was started with (root, in production). The network-facing front starts it
//! before giving up its own privileges and talks to it over a socket pair only
//! they share; see [`serve`] for the helper's side and [`proto`] for the
//! messages.

pub mod proto;
pub mod serve;

use proto::{Envelope, Event, Reply, Request, StopSignal};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tracing::error;

/// Why a request to the privileged helper did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// The request could not be sent.
    #[error("cannot reach the privileged helper: {0}")]
    Unreachable(io::Error),
    /// The helper exited before it answered.
    #[error("the privileged helper went away")]
    Gone,
    /// The helper answered that it would not or could not (for a check: the
    /// problems found in the tenant's file).
    #[error("{0}")]
    Refused(String),
    /// An answer that does not fit the request (a bug in one of the two).
    #[error("unexpected answer from the helper to {request}: {reply}")]
    Unexpected {
        /// What was asked.
        request: &'static str,
        /// What came back.
        reply: String,
    },
}

/// The l7proxy beside this executable, or `$SWITCHYARD_L7PROXY`.
pub fn locate_l7proxy() -> io::Result<std::path::PathBuf> {
    let l7proxy = match std::env::var_os("SWITCHYARD_L7PROXY") {
        Some(path) => std::path::PathBuf::from(path),
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
    Ok(l7proxy)
}

type Answer = (
    Result<Reply, String>,
    Option<OwnedFd>,
    Option<oneshot::Receiver<String>>,
);

/// The front's handle on its helper.
pub struct Helper {
    socket: AsyncFd<OwnedFd>,
    next_id: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    exits: Mutex<HashMap<u32, oneshot::Sender<String>>>,
    /// Set when the front told the helper to exit: its going away is then
    /// expected.
    leaving: std::sync::atomic::AtomicBool,
    pid: u32,
}

/// A tenant process the helper spawned.
pub struct TenantChild {
    /// Its pid (the helper's child, so a pid the tenant cannot choose).
    pub pid: u32,
    /// The splitter's end of its handoff socket.
    pub socket: OwnedFd,
    /// Resolves with its exit status when it exits.
    pub exit: oneshot::Receiver<String>,
}

/// Starts the helper process (this same binary, `splitter helper`), which keeps
/// the privileges this process has now. Call before dropping them.
pub fn start(host_file: &Path) -> io::Result<(std::process::Child, OwnedFd)> {
    let (ours, theirs) = switchyard_shared::handoff::seqpacket_pair()?;
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command
        .arg("helper")
        .arg("--config")
        .arg(host_file)
        .env(proto::HELPER_FD_ENV, theirs.as_raw_fd().to_string())
        .stdin(std::process::Stdio::null());
    // Passed on to a splitter the helper starts for an upgrade.
    if let Some(target) = crate::systemd::notify_target() {
        command.env("NOTIFY_SOCKET", target);
    }
    switchyard_shared::sys::inherit_and_die_with_parent(&mut command, theirs.as_fd());
    let child = command.spawn()?;
    drop(theirs);
    Ok((child, ours))
}

impl Helper {
    /// Wraps the front's end of the helper socket; `pid` is the helper's.
    pub fn new(socket: OwnedFd, pid: u32) -> io::Result<Arc<Helper>> {
        Ok(Arc::new(Helper {
            socket: switchyard_shared::sys::register(socket)?,
            next_id: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
            exits: Mutex::new(HashMap::new()),
            leaving: std::sync::atomic::AtomicBool::new(false),
            pid,
        }))
    }

    /// The helper's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Reads the helper's events until it goes away; then the front cannot
    /// start or stop tenants, so it exits (its supervisor restarts it).
    pub async fn read_events(self: Arc<Self>) {
        loop {
            let received = self
                .socket
                .async_io(tokio::io::Interest::READABLE, |socket| {
                    proto::recv::<Event>(socket.as_fd())
                })
                .await;
            match received {
                Ok(Some((Event::Reply { id, result }, fd))) => {
                    let exit = match &result {
                        Ok(
                            Reply::Spawned { pid }
                            | Reply::Adopted { pid }
                            | Reply::SplitterStarted { pid },
                        ) => {
                            // Registered before any later event is read, so an
                            // immediate exit is not missed.
                            let (tx, rx) = oneshot::channel();
                            self.exits
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(*pid, tx);
                            Some(rx)
                        }
                        _ => None,
                    };
                    if let Some(waiter) = self
                        .waiting
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id)
                    {
                        let _ = waiter.send((result, fd, exit));
                    }
                }
                Ok(Some((Event::Exited { pid, status }, _))) => {
                    if let Some(tx) = self
                        .exits
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&pid)
                    {
                        let _ = tx.send(status);
                    }
                }
                Ok(None) if self.leaving.load(Ordering::Relaxed) => return,
                Ok(None) => break,
                Err(e) => {
                    error!(error = %e, "bad message from the privileged helper");
                    break;
                }
            }
        }
        error!(helper_pid = self.pid, "the privileged helper is gone; the splitter exits so that its supervisor restarts it (tenant processes keep serving and re-attach to the new one)");
        std::process::exit(1);
    }

    async fn call(
        &self,
        request: Request,
    ) -> Result<(Reply, Option<OwnedFd>, Option<oneshot::Receiver<String>>), HelperError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let envelope = Envelope { id, request };
        let sent = self
            .socket
            .async_io(tokio::io::Interest::WRITABLE, |socket| {
                proto::send(socket.as_fd(), &envelope, None)
            })
            .await;
        if let Err(e) = sent {
            self.waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            return Err(HelperError::Unreachable(e));
        }
        let (result, fd, exit) = rx.await.map_err(|_| HelperError::Gone)?;
        result
            .map(|reply| (reply, fd, exit))
            .map_err(HelperError::Refused)
    }

    /// Spawns one process of `tenant`.
    pub async fn spawn(&self, tenant: &str) -> Result<TenantChild, HelperError> {
        match self
            .call(Request::Spawn {
                tenant: tenant.into(),
            })
            .await?
        {
            (Reply::Spawned { pid }, Some(socket), Some(exit)) => {
                Ok(TenantChild { pid, socket, exit })
            }
            other => Err(HelperError::Unexpected {
                request: "a spawn",
                reply: format!("{:?}", other.0),
            }),
        }
    }

    /// Validates `tenant`'s file as its user; `Ok` carries any warnings.
    pub async fn check(&self, tenant: &str) -> Result<String, HelperError> {
        match self
            .call(Request::Check {
                tenant: tenant.into(),
            })
            .await?
        {
            (Reply::Checked { output }, _, _) => Ok(output),
            other => Err(HelperError::Unexpected {
                request: "a check",
                reply: format!("{:?}", other.0),
            }),
        }
    }

    /// The listening `handoff.sock` in `tenant`'s runtime directory, and
    /// whether one was left over from a splitter that did not stop cleanly.
    pub async fn listen(&self, tenant: &str) -> Result<(OwnedFd, bool), HelperError> {
        match self
            .call(Request::Listen {
                tenant: tenant.into(),
            })
            .await?
        {
            (Reply::Listening { stale }, Some(fd), _) => Ok((fd, stale)),
            other => Err(HelperError::Unexpected {
                request: "listen",
                reply: format!("{:?}", other.0),
            }),
        }
    }

    /// Makes the helper read the host file again.
    pub async fn reload(&self) -> Result<(), HelperError> {
        self.call(Request::Reload).await.map(drop)
    }

    /// Has the helper supervise `tenant`'s re-attached process `pid` (the
    /// kernel's pid for its socket); the receiver says when it exits.
    pub async fn adopt(
        &self,
        tenant: &str,
        pid: u32,
    ) -> Result<oneshot::Receiver<String>, HelperError> {
        match self
            .call(Request::Adopt {
                tenant: tenant.into(),
                pid,
            })
            .await?
        {
            (Reply::Adopted { .. }, _, Some(exit)) => Ok(exit),
            other => Err(HelperError::Unexpected {
                request: "adopt",
                reply: format!("{:?}", other.0),
            }),
        }
    }

    /// Starts a new splitter to take over (`binary`, or the installed one);
    /// its pid, and a receiver that says when it exits.
    pub async fn start_splitter(
        &self,
        binary: Option<std::path::PathBuf>,
    ) -> Result<(u32, oneshot::Receiver<String>), HelperError> {
        match self.call(Request::StartSplitter { binary }).await? {
            (Reply::SplitterStarted { pid }, _, Some(exit)) => Ok((pid, exit)),
            other => Err(HelperError::Unexpected {
                request: "start a splitter",
                reply: format!("{:?}", other.0),
            }),
        }
    }

    /// Tells the helper to exit at once, leaving every tenant process running
    /// (they re-attach to the splitter that takes over).
    pub fn release(&self) {
        self.leaving.store(true, Ordering::Relaxed);
        let envelope = Envelope {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            request: Request::Release,
        };
        if let Err(e) = proto::send(self.socket.get_ref().as_fd(), &envelope, None) {
            error!(error = %e, "cannot release the privileged helper");
        }
    }

    /// A clean stop: the helper stops what tenant processes remain, removes
    /// the tenants' `handoff.sock`s and exits; resolves when it has (at most
    /// 20 s).
    pub async fn shut_down(&self) {
        self.leaving.store(true, Ordering::Relaxed);
        let done = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            self.call(Request::Shutdown),
        )
        .await;
        if !matches!(done, Ok(Ok((Reply::ShutDown, _, _)))) {
            error!("the privileged helper did not confirm its clean stop; tenants' handoff.sock may be left over (the next start then waits briefly for orphans)");
        }
    }

    /// Signals a process the helper spawned.
    pub async fn signal(&self, pid: u32, signal: StopSignal) -> Result<(), HelperError> {
        self.call(Request::Signal { pid, signal }).await.map(drop)
    }
}
