//! The few system calls Switchyard makes that Rust cannot check, wrapped so the
//! binaries need no `unsafe` of their own (they `forbid` it). Every descriptor
//! becomes an [`OwnedFd`] in the function that received it from the kernel.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use tokio::io::unix::AsyncFd;

/// Accepts one connection: non-blocking and close-on-exec from the start.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let fd = nix::sys::socket::accept4(
        listener.as_raw_fd(),
        nix::sys::socket::SockFlag::SOCK_NONBLOCK | nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )?;
    // SAFETY: accept4 just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Accepts one TCP connection like [`accept`], also returning the peer's
/// address as the kernel reports it (from the same `accept4` call).
pub fn accept_with_peer(
    listener: BorrowedFd<'_>,
) -> io::Result<(OwnedFd, Option<std::net::SocketAddr>)> {
    // SAFETY: the closure passes the zeroed storage and its length to accept4,
    // which writes at most that many bytes and updates the length.
    let (fd, addr) = unsafe {
        socket2::SockAddr::try_init(|storage, len| {
            let fd = libc::accept4(
                listener.as_raw_fd(),
                storage.cast(),
                len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            );
            if fd < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(fd)
            }
        })
    }?;
    // SAFETY: accept4 just returned this new descriptor; nothing else owns it.
    Ok((unsafe { OwnedFd::from_raw_fd(fd) }, addr.as_socket()))
}

/// Sets `TCP_DEFER_ACCEPT` on a listening socket: the kernel completes the
/// handshake but reports the connection to `accept` only once the client has
/// sent data (or after about `seconds`), so the first peek finds bytes to read.
pub fn set_defer_accept(listener: BorrowedFd<'_>, seconds: u32) -> io::Result<()> {
    let value: libc::c_int = seconds.try_into().unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid descriptor, and a pointer to a c_int with its size.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Registers a descriptor-owning value with tokio's reactor.
///
/// The value must own its descriptor (`OwnedFd`, `TcpListener`, …); it stays open
/// and unchanged while registered, and `AsyncFd::into_inner` deregisters it
/// before it is handed on.
pub fn register<T: AsRawFd>(io: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `T` owns its descriptor, which lives as long as the AsyncFd
    // (tokio's requirement since the I/O-safety change of `AsyncFd::new`).
    Ok(unsafe { AsyncFd::register(io) }?)
}

/// Why an inherited descriptor could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum InheritedFdError {
    /// The variable is missing (the process was not started by its parent).
    #[error("{0} is not set")]
    NotSet(String),
    /// The variable does not hold a descriptor number above 2.
    #[error("{env}={value:?} is not a descriptor number above 2")]
    NotANumber {
        /// The variable.
        env: String,
        /// Its value.
        value: String,
    },
    /// The number names no open descriptor.
    #[error("descriptor {fd} from {env} is not open ({source})")]
    NotOpen {
        /// The variable.
        env: String,
        /// The number it held.
        fd: RawFd,
        /// What fcntl said.
        source: nix::Error,
    },
}

/// Takes ownership of a descriptor inherited from the parent, named by the
/// environment variable `env`, and marks it close-on-exec.
pub fn take_inherited_fd(env: &str) -> Result<OwnedFd, InheritedFdError> {
    let value = std::env::var(env).map_err(|_| InheritedFdError::NotSet(env.to_string()))?;
    let fd: RawFd =
        value
            .parse()
            .ok()
            .filter(|fd| *fd > 2)
            .ok_or_else(|| InheritedFdError::NotANumber {
                env: env.to_string(),
                value: value.clone(),
            })?;
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|source| InheritedFdError::NotOpen {
        env: env.to_string(),
        fd,
        source,
    })?;
    // SAFETY: the descriptor is open (fcntl succeeded) and the parent passed it
    // for this process to own; the variable is removed so nothing takes it twice.
    std::env::remove_var(env);
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Takes ownership of descriptor `fd`, passed by the service manager (socket
/// activation, `LISTEN_FDS`), and marks it close-on-exec. The caller takes each
/// number once.
pub fn take_passed_fd(fd: RawFd) -> std::io::Result<OwnedFd> {
    if fd <= 2 {
        return Err(std::io::Error::other(
            "descriptors 0-2 are never passed sockets",
        ));
    }
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    // SAFETY: the descriptor is open (fcntl succeeded) and was passed for this
    // process to own; the caller takes each number once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Prepares `command` so the child inherits `fd` (under the same number),
/// receives SIGTERM if the thread that spawned it dies (the splitter exiting),
/// and can never gain privileges (`PR_SET_NO_NEW_PRIVS`: no setuid binaries,
/// no file capabilities).
pub fn inherit_and_die_with_parent(command: &mut std::process::Command, fd: BorrowedFd<'_>) {
    inherit(command, fd, true);
}

/// Prepares `command` so the child inherits `fd` (under the same number) and
/// can never gain privileges, but outlives its parent: a tenant process keeps
/// serving when the splitter that spawned it crashes or is upgraded (it then
/// waits, bounded, for a splitter to re-attach to).
pub fn inherit_outliving_parent(command: &mut std::process::Command, fd: BorrowedFd<'_>) {
    inherit(command, fd, false);
}

fn inherit(command: &mut std::process::Command, fd: BorrowedFd<'_>, die_with_parent: bool) {
    use std::os::unix::process::CommandExt;
    let raw = fd.as_raw_fd();
    // SAFETY: between fork and exec only async-signal-safe calls are made
    // (fcntl, prctl), on a descriptor number valid in the child.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            if die_with_parent && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A pidfd for `pid` (`pidfd_open(2)`): it stays bound to that process even
/// after the pid is reused, becomes readable when the process exits, and is
/// how a process that is not our child is signalled and watched.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a plain system call with integer arguments; on success it
    // returns a new descriptor that this function then owns.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `signal` to the process behind `pidfd` (`pidfd_send_signal(2)`).
pub fn pidfd_send_signal(
    pidfd: BorrowedFd<'_>,
    signal: nix::sys::signal::Signal,
) -> io::Result<()> {
    // SAFETY: a plain system call on a descriptor we borrow, with no siginfo.
    let result = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The real uid a running process has, from `/proc/PID/status`.
pub fn process_uid(pid: u32) -> io::Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        .and_then(|uid| uid.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "no Uid line in /proc/PID/status",
            )
        })
}

/// Puts the calling thread, and every thread or process it creates from now on,
/// under `SCHED_BATCH`: the kernel never lets it preempt a running task when it
/// wakes up; it runs when the CPU is free or at the next scheduler tick. No
/// privilege is needed (it only gives up priority).
pub fn set_batch_scheduling() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The scheduling policy of thread or process `pid` (0: the calling thread), as
/// `libc::SCHED_*`.
pub fn scheduling_policy(pid: i32) -> io::Result<i32> {
    // SAFETY: a plain query; an unknown pid gives ESRCH.
    let policy = unsafe { libc::sched_getscheduler(pid) };
    if policy < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(policy)
}

/// Makes `command`'s child switch to the normal policy (`SCHED_OTHER`) before it
/// executes. Best effort: a child that may not switch keeps its parent's policy
/// and still starts.
pub fn normal_scheduling_in_child(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: sched_setscheduler is a plain system call, async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            let param = libc::sched_param { sched_priority: 0 };
            libc::sched_setscheduler(0, libc::SCHED_OTHER, &param);
            Ok(())
        });
    }
}

/// Makes `command`'s child set its open-file limit (`RLIMIT_NOFILE`, soft and
/// hard) to `limit` before it runs. Lowering always works; raising works up to
/// the splitter's own hard limit.
pub fn limit_open_files(command: &mut std::process::Command, limit: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe; `value` lives in the closure.
    unsafe {
        command.pre_exec(move || {
            let value = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &value) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Makes `command`'s child unable to gain privileges (`PR_SET_NO_NEW_PRIVS`)
/// and receive SIGKILL if the thread that spawned it dies.
pub fn no_new_privileges(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sets `PR_SET_NO_NEW_PRIVS` on the calling process: from now on no `execve`
/// can grant it privileges (setuid binaries, file capabilities).
pub fn forbid_new_privileges() -> io::Result<()> {
    // SAFETY: a plain prctl on the calling process.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `SO_PEERCRED` of the Unix socket with descriptor number `fd`, for callers
/// (Pingora's streams) that expose only the number of a socket they own and
/// keep open during the call.
pub fn peer_credentials_of(fd: RawFd) -> io::Result<crate::handoff::PeerCredentials> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: the caller's stream owns this open descriptor for the duration
    // of the call; it is only borrowed for one getsockopt.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    crate::handoff::peer_credentials(fd)
}

/// Gives the memory the allocator (mimalloc) holds free back to the system
/// now. A thread that frees much and then only sleeps (the l7proxy's main
/// thread after start-up, which parsed a host file of perhaps a thousand
/// tenants) would otherwise keep it for the life of the process: mimalloc
/// returns free pages only when the thread that freed them allocates again.
#[cfg(feature = "mimalloc")]
pub fn release_free_memory() {
    // SAFETY: mi_collect only walks the allocator's own structures; it takes
    // no pointers and is safe to call from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
