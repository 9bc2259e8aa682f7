//! The front's system-call allow-list (seccomp-bpf, through `seccompiler`).
//!
//! Once the front runs as its unprivileged user, it needs only a few dozen
//! system calls: epoll, accept, peek, send a descriptor, close, read the host
//! file on reload, log, allocate. Everything else fails with `EPERM`: no new
//! socket, no `connect`, no `execve`, no `ptrace`, no signal to another process,
//! no change of identity. A bug in the code that parses internet input then
//! cannot open a way out even where the kernel would let the user do so.
//! `EPERM` rather than a kill: a call missed here shows up as an error in the
//! log, not as a dead front.
//!
//! The list was taken from `strace -f` of the front through start-up, load,
//! bad input, `ctl status`, reload, restart and stop, plus what the runtime and
//! the allocator may call on other paths (threads, timers, memory).

use crate::start_error::StartError;

/// The system calls the front may make.
#[cfg(target_arch = "x86_64")]
const ALLOWED: &[i64] = &[
    // I/O on descriptors the front already has.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_lseek,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_ioctl,
    // Reading the host file on reload (and /etc/passwd for user names).
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fstat,
    libc::SYS_readlink,
    libc::SYS_getdents64,
    libc::SYS_unlink,
    // Sockets it already has: accept, peek, hand off, answer.
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    // The runtime: readiness, timers, wake-ups, threads of its own.
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_epoll_ctl,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_gettimeofday,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
    libc::SYS_getrandom,
    // Memory.
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    // Signals to itself (SIGHUP/SIGTERM handlers, abort).
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_tgkill,
    libc::SYS_restart_syscall,
    // Who am I (user lookups, logs).
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Installs the allow-list on every thread of the front. From then on a call
/// outside [`ALLOWED`] fails with `EPERM`.
#[cfg(target_arch = "x86_64")]
pub fn restrict_system_calls() -> Result<(), StartError> {
    let program = program()?;
    seccompiler::apply_filter_all_threads(&program).map_err(|e| StartError::Seccomp {
        what: "install",
        detail: e.to_string(),
    })
}

#[cfg(target_arch = "x86_64")]
fn program() -> Result<seccompiler::BpfProgram, StartError> {
    use seccompiler::{SeccompAction, SeccompFilter, TargetArch};
    let rules: std::collections::BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        ALLOWED.iter().map(|call| (*call, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| StartError::Seccomp {
        what: "build",
        detail: e.to_string(),
    })?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| StartError::Seccomp {
            what: "compile",
            detail: e.to_string(),
        })
}

/// Elsewhere the allow-list is not written yet: the front runs without it, and
/// says so.
#[cfg(not(target_arch = "x86_64"))]
pub fn restrict_system_calls() -> Result<(), StartError> {
    tracing::warn!(
        arch = std::env::consts::ARCH,
        "no system-call allow-list for this architecture; the front runs without one"
    );
    Ok(())
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    /// Applied to one thread of the test process: what the front needs works,
    /// an unlisted call (a new socket, running a program) is refused.
    #[test]
    fn unlisted_calls_are_refused_and_listed_ones_work() {
        let program = super::program().unwrap();
        let outcome = std::thread::spawn(move || {
            seccompiler::apply_filter(&program).unwrap();
            let socket = std::net::TcpListener::bind("127.0.0.1:0").map(drop);
            let exec = std::process::Command::new("/bin/true").status().map(drop);
            let file = std::fs::read_to_string("/proc/self/status").map(drop);
            (socket, exec, file, std::process::id())
        })
        .join()
        .unwrap();
        let (socket, exec, file, pid) = outcome;
        assert_eq!(socket.unwrap_err().raw_os_error(), Some(libc::EPERM));
        assert!(exec.is_err(), "execve is refused");
        assert!(file.is_ok(), "reading a file still works: {file:?}");
        assert_eq!(pid, std::process::id());
    }
}
