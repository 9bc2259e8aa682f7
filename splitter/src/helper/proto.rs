//! The typed messages between the front and its privileged helper, one
//! `SOCK_SEQPACKET` datagram each (JSON of these types; a descriptor may ride
//! along in `SCM_RIGHTS`).
//!
//! The helper trusts nothing in a request but the tenant's *name*: who a
//! tenant runs as, its limits and its files come from the host file the helper
//! reads itself, and it signals only processes it spawned and has not reaped,
//! or adopted after checking their user and holding a pidfd for them.

use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

/// The environment variable naming the helper's end of the socket pair.
pub const HELPER_FD_ENV: &str = "SWITCHYARD_HELPER_FD";

/// The largest datagram either side sends (a `check` report is cut to fit).
pub const MAX_DATAGRAM: usize = 64 * 1024;

/// What the front asks of the helper.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Request {
    /// Spawn one l7proxy process of the tenant; the reply carries the
    /// splitter's end of its handoff socket.
    Spawn {
        /// The tenant's name.
        tenant: String,
    },
    /// Validate the tenant's file by running `l7proxy --check` as its user.
    Check {
        /// The tenant's name.
        tenant: String,
    },
    /// Create the tenant's runtime directory and bind its `handoff.sock` (for
    /// processes started by hand); the reply carries the listening socket.
    Listen {
        /// The tenant's name.
        tenant: String,
    },
    /// Read the host file again; later requests use the new one.
    Reload,
    /// Supervise a process of the tenant that a previous splitter spawned and
    /// that re-attached (`Rejoin`): `pid` is the kernel's (`SO_PEERCRED`), and
    /// the helper checks that it runs as the tenant's user before it holds a
    /// pidfd for it. It is then signalled and its exit reported like a child.
    Adopt {
        /// The tenant's name.
        tenant: String,
        /// The process's pid from `SO_PEERCRED`.
        pid: u32,
    },
    /// Start a new splitter that takes over from this one (`ctl upgrade`,
    /// SIGUSR2): the helper's own executable, or `binary` if it is a regular
    /// file owned by root (or the helper's user) and writable by nobody else.
    /// Its exit is reported like a child's.
    StartSplitter {
        /// Another executable to run.
        binary: Option<std::path::PathBuf>,
    },
    /// The front is handing over to a new splitter: exit now, leaving every
    /// tenant process running (they re-attach to the new splitter).
    Release,
    /// The front stops cleanly: stop what tenant processes remain, remove the
    /// tenants' `handoff.sock`s, and exit.
    Shutdown,
    /// Signal a tenant process the helper spawned and has not reaped.
    Signal {
        /// Its pid, as the helper reported it.
        pid: u32,
        /// Which signal.
        signal: StopSignal,
    },
}

/// The signals the front may have sent.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGTERM: finish in-flight work and exit.
    Term,
    /// SIGKILL.
    Kill,
}

/// A request with the number its reply will carry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Envelope {
    /// Chosen by the front, echoed in the reply.
    pub id: u64,
    /// The request.
    pub request: Request,
}

/// What a request achieved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Reply {
    /// A process was spawned (its handoff socket is attached).
    Spawned {
        /// Its pid.
        pid: u32,
    },
    /// The tenant file is valid; what `l7proxy --check` printed (warnings).
    Checked {
        /// Its output.
        output: String,
    },
    /// The listening socket is attached.
    Listening {
        /// A `handoff.sock` was left over from a splitter that did not stop
        /// cleanly: orphaned processes may come back.
        stale: bool,
    },
    /// The process is supervised (its exit will be reported).
    Adopted {
        /// Its pid.
        pid: u32,
    },
    /// The helper stopped what remained and is exiting.
    ShutDown,
    /// The new splitter runs (its exit will be reported).
    SplitterStarted {
        /// Its pid.
        pid: u32,
    },
    /// The host file was read again.
    Reloaded,
    /// The signal was sent.
    Signalled,
}

/// What the helper tells the front.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Event {
    /// The answer to request `id`.
    Reply {
        /// The request's number.
        id: u64,
        /// What happened, or why it failed (written for the operator).
        result: Result<Reply, String>,
    },
    /// A process the helper spawned exited.
    Exited {
        /// Its pid.
        pid: u32,
        /// How it ended, e.g. "exit status: 2" or "signal: 9 (SIGKILL)".
        status: String,
    },
}

/// Sends `value` as one datagram with `fd` attached when given.
pub fn send<T: Serialize>(
    socket: BorrowedFd<'_>,
    value: &T,
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    if bytes.len() > MAX_DATAGRAM {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "helper message too large",
        ));
    }
    switchyard_shared::handoff::send_bytes(socket, &bytes, fd)
}

/// Receives one datagram without blocking: `Ok(None)` when the peer closed.
pub fn recv<T: for<'de> Deserialize<'de>>(
    socket: BorrowedFd<'_>,
) -> io::Result<Option<(T, Option<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let Some((len, mut fds)) = switchyard_shared::handoff::recv_bytes(socket, &mut buf)? else {
        return Ok(None);
    };
    if fds.len() > 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "more than one descriptor in a helper message; closed them",
        ));
    }
    let value = serde_json::from_slice(&buf[..len])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Some((value, fds.pop())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn messages_round_trip_with_a_descriptor() {
        let (a, b) = switchyard_shared::handoff::seqpacket_pair().unwrap();
        let request = Envelope {
            id: 7,
            request: Request::Signal {
                pid: 42,
                signal: StopSignal::Term,
            },
        };
        send(a.as_fd(), &request, Some(a.as_fd())).unwrap();
        let (got, fd): (Envelope, _) = recv(b.as_fd()).unwrap().unwrap();
        assert_eq!(got, request);
        assert!(fd.is_some());
        send(
            a.as_fd(),
            &Event::Exited {
                pid: 1,
                status: "x".into(),
            },
            None,
        )
        .unwrap();
        assert!(
            recv::<Envelope>(b.as_fd()).is_err(),
            "an event is not a request"
        );
        // The descriptor that travelled was `a` itself: close both copies.
        drop(fd);
        drop(a);
        assert!(recv::<Event>(b.as_fd()).unwrap().is_none());
    }
}
