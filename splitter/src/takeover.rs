//! Upgrading the splitter without a moment without a listener and without
//! restarting a tenant (`ctl upgrade`, SIGUSR2).
//!
//! 1. The running splitter (the *outgoing* one) asks its helper to start a new
//!    splitter with `--take-over`.
//! 2. The new one connects to `control.sock` and sends `HandOver`; the answer
//!    carries the listening sockets and the control socket in `SCM_RIGHTS`
//!    (the same sockets: nothing is bound again, no connection is refused).
//! 3. The new one starts its own helper, drops its privileges, and sends
//!    `Commit`. Until then the outgoing splitter serves as before, so a new
//!    splitter that fails changes nothing.
//! 4. The outgoing splitter stops accepting (new connections wait in the
//!    kernel's backlog), finishes the connections it is peeking or holding,
//!    waits for their acknowledgements, releases its helper (which exits
//!    leaving every tenant process running), answers, and exits.
//! 5. Its tenant processes see their handoff sockets close without `Drain`,
//!    re-attach to the new splitter on `handoff.sock` (`Rejoin`), and are
//!    adopted with their pids and connections ([`crate::adoption`]). The new
//!    splitter then accepts.

use crate::fleet::Fleet;
use crate::helper::Helper;
use crate::listener::Front;
use crate::start_error::StartError;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use switchyard_shared::control::{CtlReply, CtlRequest, HandOverReply};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{error, info, warn};

/// Copies of the sockets a take-over hands on.
struct Sockets {
    listeners: Vec<(SocketAddr, OwnedFd)>,
    control: OwnedFd,
}

/// How long a new splitter may take from start to `Commit`.
const COMMIT_WAIT: Duration = Duration::from_secs(60);

/// The outgoing side: what a take-over needs from the running splitter.
pub struct Outgoing {
    /// Copies of the listening sockets with their addresses, and of the
    /// control socket; dropped when the splitter stops accepting (so that a
    /// stopping splitter's ports refuse connections instead of queueing them).
    sockets: std::sync::Mutex<Option<Sockets>>,
    /// Stops the accept loops (also at a normal stop).
    stop_accepting: watch::Sender<bool>,
    front: Arc<Front>,
    helper: Arc<Helper>,
    fleet: Arc<Fleet>,
    /// One take-over at a time.
    busy: tokio::sync::Mutex<()>,
    /// Set once the tenants are released to the new splitter.
    handed_over: watch::Sender<bool>,
}

impl Outgoing {
    /// What a take-over of this splitter hands on: `listeners` and `control`
    /// are copies of the sockets it serves on.
    pub fn new(
        listeners: Vec<(SocketAddr, OwnedFd)>,
        control: OwnedFd,
        stop_accepting: watch::Sender<bool>,
        front: Arc<Front>,
        helper: Arc<Helper>,
        fleet: Arc<Fleet>,
    ) -> Outgoing {
        Outgoing {
            sockets: std::sync::Mutex::new(Some(Sockets { listeners, control })),
            stop_accepting,
            front,
            helper,
            fleet,
            busy: tokio::sync::Mutex::new(()),
            handed_over: watch::channel(false).0,
        }
    }

    /// Resolves when the splitter stops accepting (a normal stop, or a
    /// committed take-over): the control loop then stops too, so that `ctl`
    /// reaches the new splitter.
    pub async fn stopped_accepting(&self) {
        let mut stop = self.stop_accepting.subscribe();
        let _ = stop.wait_for(|stopped| *stopped).await;
    }

    /// Stops the accept loops (a normal stop, or a committed take-over).
    pub fn stop_accepting(&self) {
        self.stop_accepting.send_replace(true);
        self.sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// `ctl upgrade` / SIGUSR2: starts a new splitter (`binary`, or this
    /// one's) and waits until it has taken over, or has failed to.
    pub async fn upgrade(&self, binary: Option<std::path::PathBuf>) -> Result<String, String> {
        let (pid, exit) = self.helper.start_splitter(binary).await.map_err(|e| {
            format!("upgrade failed: cannot start a new splitter: {e}; this splitter keeps serving")
        })?;
        let mut handed_over = self.handed_over.subscribe();
        tokio::select! {
            status = exit => Err(format!(
                "upgrade failed: the new splitter (pid {pid}) exited before taking over ({}); this splitter keeps serving (see the new splitter's log lines above)",
                status.unwrap_or_else(|_| "unknown".into())
            )),
            _ = handed_over.wait_for(|done| *done) => Ok(format!(
                "upgraded: splitter pid {pid} serves the listeners and the tenant processes; pid {} exits",
                std::process::id()
            )),
            _ = tokio::time::sleep(COMMIT_WAIT) => Err(format!(
                "upgrade failed: the new splitter (pid {pid}) did not take over within {COMMIT_WAIT:?}; this splitter keeps serving"
            )),
        }
    }

    /// Serves a new splitter's take-over on a control connection whose first
    /// line was `HandOver`. Returns only if the take-over was abandoned.
    pub async fn hand_over(
        &self,
        mut reader: tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
        mut writer: tokio::net::unix::OwnedWriteHalf,
    ) {
        let Ok(_busy) = self.busy.try_lock() else {
            let _ = writer
                .write_all(refusal("another take-over is in progress").as_bytes())
                .await;
            return;
        };
        let copies: std::io::Result<(Vec<SocketAddr>, Vec<OwnedFd>)> = {
            let sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
            match sockets.as_ref() {
                None => Err(std::io::Error::other("this splitter is stopping")),
                Some(sockets) => sockets
                    .listeners
                    .iter()
                    .map(|(_, fd)| fd)
                    .chain([&sockets.control])
                    .map(|fd| fd.try_clone())
                    .collect::<std::io::Result<Vec<_>>>()
                    .map(|fds| (sockets.listeners.iter().map(|(a, _)| *a).collect(), fds)),
            }
        };
        let (addrs, copies) = match copies {
            Ok(copies) => copies,
            Err(e) => {
                let _ = writer.write_all(refusal(&e.to_string()).as_bytes()).await;
                return;
            }
        };
        let reply = HandOverReply { listeners: addrs };
        let line = serde_json::to_string(&reply).expect("serialisable") + "\n";
        let fds: Vec<_> = copies.iter().map(|fd| fd.as_fd()).collect();
        let stream = writer.as_ref();
        let sent = stream
            .async_io(tokio::io::Interest::WRITABLE, || {
                switchyard_shared::handoff::send_with_fds(stream.as_fd(), line.as_bytes(), &fds)
            })
            .await;
        if let Err(e) = sent {
            warn!(error = %e, "take-over: cannot pass the listening sockets; still serving");
            return;
        }
        info!(
            listeners = reply.listeners.len(),
            "take-over: listening sockets passed to a new splitter; serving until it commits"
        );
        let mut line = String::new();
        let committed = matches!(
            tokio::time::timeout(COMMIT_WAIT, reader.read_line(&mut line)).await,
            Ok(Ok(n)) if n > 0
        ) && matches!(serde_json::from_str(&line), Ok(CtlRequest::Commit));
        if !committed {
            warn!("take-over abandoned: the new splitter went away or did not commit; this splitter keeps serving");
            return;
        }
        info!("take-over committed: no longer accepting; finishing the connections being peeked or held");
        self.stop_accepting();
        let settings = &self.front.settings;
        let limit = settings.peek_timeout + settings.hold_timeout + Duration::from_secs(1);
        let deadline = tokio::time::Instant::now() + limit;
        while (self.front.pending.current() > 0 || self.fleet.unacknowledged().await > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = self.front.pending.current();
        if left > 0 {
            warn!(
                connections = left,
                "take-over: connections still being peeked after {limit:?} are closed"
            );
        }
        self.helper.release();
        let done = CtlReply {
            ok: true,
            message: Some("released".into()),
            status: None,
        };
        let line = serde_json::to_string(&done).expect("serialisable") + "\n";
        if let Err(e) = writer.write_all(line.as_bytes()).await {
            error!(error = %e, "take-over: cannot tell the new splitter that the tenants are released");
        }
        self.handed_over.send_replace(true);
        // Let a waiting `ctl upgrade` hear the outcome.
        tokio::time::sleep(Duration::from_millis(200)).await;
        info!("handed over to the new splitter; exiting (tenant processes keep running and re-attach to it)");
        std::process::exit(0);
    }
}

fn refusal(message: &str) -> String {
    let reply = CtlReply {
        ok: false,
        message: Some(message.into()),
        status: None,
    };
    serde_json::to_string(&reply).expect("serialisable") + "\n"
}

/// The incoming side: what a splitter started with `--take-over` received.
pub struct Incoming {
    stream: std::os::unix::net::UnixStream,
    /// The listening sockets, by address.
    pub listeners: Vec<(SocketAddr, std::net::TcpListener)>,
    /// The control socket.
    pub control: Option<std::os::unix::net::UnixListener>,
}

/// Asks the splitter running on `runtime_dir` for its sockets (blocking; at
/// start, before the runtime and before privileges are dropped).
pub fn take_over(runtime_dir: &Path) -> Result<Incoming, StartError> {
    let fail = |what: String| StartError::TakeOver(what);
    let path = crate::control::socket_path(runtime_dir);
    let mut stream = std::os::unix::net::UnixStream::connect(&path)
        .map_err(|e| fail(format!("cannot reach it at {} ({e})", path.display())))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| fail(e.to_string()))?;
    let request = serde_json::to_string(&CtlRequest::HandOver).expect("serialisable") + "\n";
    stream
        .write_all(request.as_bytes())
        .map_err(|e| fail(format!("cannot ask for its sockets ({e})")))?;
    let mut buf = vec![0u8; 64 * 1024];
    let (len, mut fds) = switchyard_shared::handoff::recv_with_fds(stream.as_fd(), &mut buf)
        .map_err(|e| fail(format!("no sockets received ({e})")))?
        .ok_or_else(|| fail("it closed the connection".into()))?;
    let mut text = buf[..len].to_vec();
    if !text.ends_with(b"\n") {
        let mut rest = Vec::new();
        BufReader::new(&stream)
            .read_until(b'\n', &mut rest)
            .map_err(|e| fail(e.to_string()))?;
        text.extend(rest);
    }
    let reply: HandOverReply = serde_json::from_slice(&text).map_err(|_| {
        fail(format!(
            "it refused: {}",
            String::from_utf8_lossy(&text).trim()
        ))
    })?;
    if fds.len() != reply.listeners.len() + 1 {
        return Err(fail(format!(
            "{} descriptors for {} listeners and the control socket",
            fds.len(),
            reply.listeners.len()
        )));
    }
    let control: OwnedFd = fds.pop().expect("counted");
    let listeners = reply
        .listeners
        .into_iter()
        .zip(fds)
        .map(|(addr, fd)| (addr, std::net::TcpListener::from(fd)))
        .collect();
    info!(path = %path.display(), "took the listening sockets of the running splitter");
    Ok(Incoming {
        stream,
        listeners,
        control: Some(std::os::unix::net::UnixListener::from(control)),
    })
}

impl Incoming {
    /// Tells the outgoing splitter to stop accepting and release its tenant
    /// processes; returns once it has (blocking, up to `wait`).
    pub fn commit(mut self, wait: Duration) -> Result<(), StartError> {
        let fail = |what: String| StartError::TakeOver(what);
        self.stream
            .set_read_timeout(Some(wait))
            .map_err(|e| fail(e.to_string()))?;
        let request = serde_json::to_string(&CtlRequest::Commit).expect("serialisable") + "\n";
        self.stream
            .write_all(request.as_bytes())
            .map_err(|e| fail(format!("cannot commit ({e})")))?;
        let mut line = String::new();
        BufReader::new(&self.stream)
            .read_line(&mut line)
            .map_err(|e| fail(format!("no answer to the commit within {wait:?} ({e})")))?;
        match serde_json::from_str::<CtlReply>(&line) {
            Ok(CtlReply { ok: true, .. }) => Ok(()),
            _ => Err(fail(format!(
                "the commit was not confirmed: {}",
                line.trim()
            ))),
        }
    }
}
