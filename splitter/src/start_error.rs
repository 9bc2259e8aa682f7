//! Why the splitter (or its helper) could not start: one typed error for the
//! start-up path, each variant written for the operator who has to fix it.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use switchyard_shared::config::ConfigErrors;
use switchyard_shared::sys::InheritedFdError;
use switchyard_shared::token::TokenError;

/// A failure before the splitter serves.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A file-system or socket step failed.
    #[error("cannot {what}: {source}")]
    Io {
        /// The step, e.g. "bind control socket /run/switchyard/control.sock".
        what: String,
        /// Why.
        source: io::Error,
    },
    /// A process-attribute step (user, groups, capabilities, limits) failed.
    #[error("cannot {what}: {detail}")]
    Privileges {
        /// The step, e.g. "switch to user \"swy-front\"".
        what: String,
        /// What the system said.
        detail: String,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({protocol}): {source}; is another server using the port?")]
    Listen {
        /// The `[[listen]]` address.
        addr: SocketAddr,
        /// Its protocol.
        protocol: &'static str,
        /// Why.
        source: io::Error,
    },
    /// Another splitter answers on this runtime directory's control socket.
    #[error("another splitter is running with this runtime_dir (its control socket {} answers); stop it first", .0.display())]
    AlreadyRunning(PathBuf),
    /// The host file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    /// The front, once unprivileged, cannot read the host file.
    #[error("after dropping privileges the front cannot read the host file ({0}); make it readable by [splitter] user")]
    HostFileHidden(ConfigErrors),
    /// The admin endpoint's token file is unusable.
    #[error("admin_token_file: {0}")]
    AdminToken(#[from] TokenError),
    /// The helper was not started by a splitter.
    #[error(transparent)]
    InheritedFd(#[from] InheritedFdError),
    /// `[splitter] user` is missing or unusable while running as root.
    #[error("[splitter] user: {0}")]
    FrontUser(String),
    /// The privileges did not go away (a kernel or setup surprise).
    #[error("the front is still privileged after switching users; refusing to serve")]
    StillPrivileged,
    /// The configuration could hold more descriptors than the limit allows.
    #[error("the configuration needs up to {budget} descriptors (max_pending {max_pending} + per tenant process max_unacked {max_unacked} + 1, doubled during rolling restarts, + a reserve) but the open-file limit is {limit}: lower max_pending or max_unacked, or raise the limit (LimitNOFILE= in the unit, `ulimit -n`)")]
    DescriptorBudget {
        /// Descriptors the configuration may need.
        budget: u64,
        /// The hard `RLIMIT_NOFILE`.
        limit: u64,
        /// `[splitter] max_pending`.
        max_pending: usize,
        /// `[splitter] max_unacked`.
        max_unacked: usize,
    },
    /// systemd passed sockets that no `[[listen]]` names.
    #[error("systemd passed listening sockets for {addrs} that no [[listen]] in {} names; add them to the host file or remove them from the socket unit", host_file.display())]
    UnclaimedPassedSockets {
        /// The passed sockets' addresses.
        addrs: String,
        /// The host file.
        host_file: PathBuf,
    },
    /// `--take-over`: the running splitter did not hand over.
    #[error("cannot take over from the running splitter: {0}; it keeps serving")]
    TakeOver(String),
    /// The system-call filter could not be built or installed.
    #[error("cannot {what} the system-call filter: {detail}")]
    Seccomp {
        /// "build", "compile" or "install".
        what: &'static str,
        /// What seccompiler said.
        detail: String,
    },
}

impl StartError {
    /// An I/O step that failed: `what` completes "cannot …".
    pub fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> StartError {
        let what = what.into();
        move |source| StartError::Io { what, source }
    }

    /// A privilege step that failed: `what` completes "cannot …".
    pub fn privileges<E: std::fmt::Display>(
        what: impl Into<String>,
    ) -> impl FnOnce(E) -> StartError {
        let what = what.into();
        move |e| StartError::Privileges {
            what,
            detail: e.to_string(),
        }
    }
}
