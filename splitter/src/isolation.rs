//! What keeps tenants apart: their user and group, a runtime directory only
//! they can enter, resource limits (`RLIMIT_NOFILE`; memory and CPU through a
//! cgroup v2 child group where the host allows), and a splitter that gives up
//! the privileges it no longer needs once its sockets are bound.

use crate::start_error::StartError;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use switchyard_shared::config::{Limits, TenantConfig};
use tracing::{info, warn};

/// The uid and gid a tenant's processes run as (`None`: the splitter's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: Option<u32>,
    /// Group id.
    pub gid: Option<u32>,
}

/// Resolves the tenant's `user` and `group` names.
pub fn identity(config: &TenantConfig) -> io::Result<Identity> {
    let mut identity = Identity {
        uid: None,
        gid: None,
    };
    if let Some(name) = &config.user {
        let user = nix::unistd::User::from_name(name)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("user {name:?} does not exist (tenant {})", config.name),
            )
        })?;
        identity.uid = Some(user.uid.as_raw());
        identity.gid = Some(user.gid.as_raw());
    }
    if let Some(name) = &config.group {
        let group = nix::unistd::Group::from_name(name)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("group {name:?} does not exist (tenant {})", config.name),
            )
        })?;
        identity.gid = Some(group.gid.as_raw());
    }
    Ok(identity)
}

/// Applies `identity` to a command (supplementary groups are cleared by the
/// standard library when the uid changes).
pub fn apply_identity(command: &mut std::process::Command, identity: Identity) {
    use std::os::unix::process::CommandExt;
    if let Some(gid) = identity.gid {
        command.gid(gid);
    }
    if let Some(uid) = identity.uid {
        command.uid(uid);
    }
}

/// Creates `runtime_dir/tenants/NAME`, owned by the tenant's identity, mode 0700.
pub fn tenant_dir(runtime_dir: &Path, name: &str, identity: Identity) -> io::Result<PathBuf> {
    let dir = runtime_dir.join("tenants").join(name);
    std::fs::create_dir_all(&dir)?;
    std::os::unix::fs::chown(&dir, identity.uid, identity.gid)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// Makes the command's process take the `nofile` limit (checked against the
/// splitter's own hard limit, which a child may not exceed).
pub fn apply_nofile(command: &mut std::process::Command, limits: &Limits) -> io::Result<()> {
    let Some(nofile) = limits.nofile else {
        return Ok(());
    };
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    if nofile > hard {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("limits.nofile = {nofile} is above the splitter's own hard limit {hard}; raise the splitter's (e.g. LimitNOFILE= in its unit)"),
        ));
    }
    switchyard_shared::sys::limit_open_files(command, nofile);
    Ok(())
}

/// Puts a freshly spawned process of `tenant` under its memory and CPU limits.
pub fn apply_cgroup_limits(tenant: &str, pid: u32, limits: &Limits) {
    if limits.memory.is_none() && limits.cpu.is_none() {
        return;
    }
    match own_cgroup() {
        Ok(base) => {
            if let Err(e) = join_cgroup(base, tenant, pid, limits) {
                warn!(
                    tenant,
                    pid,
                    cgroup = %base.join(format!("tenant-{tenant}")).display(),
                    error = %e,
                    "memory/cpu limits not applied: cannot set up the tenant's cgroup (under systemd: Delegate=yes in the unit)"
                );
            }
        }
        Err(why) => warn!(
            tenant,
            "memory/cpu limits not applied: {why} (nofile still applies)"
        ),
    }
}

/// The splitter's own cgroup v2 directory, where tenant groups are made
/// (under systemd: the service's cgroup, delegated with `Delegate=yes`), as it
/// was when first asked (the helper moves itself into a leaf below it). Never
/// the root of the hierarchy.
fn own_cgroup() -> Result<&'static Path, &'static str> {
    static OWN: std::sync::OnceLock<Result<PathBuf, &'static str>> = std::sync::OnceLock::new();
    OWN.get_or_init(|| {
        let mount = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .iter()
            .map(Path::new)
            .find(|p| p.join("cgroup.controllers").is_file())
            .ok_or("this host has no cgroup v2 hierarchy")?;
        let listing = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|_| "cannot read /proc/self/cgroup")?;
        let own = listing
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or("the splitter is in no cgroup v2 group")?;
        let relative = own.trim().trim_start_matches('/');
        if relative.is_empty() {
            return Err("the splitter runs in the root cgroup; tenant groups are only made in a cgroup delegated to it (run it as a systemd service with Delegate=yes)");
        }
        let base = mount.join(relative);
        nix::unistd::access(&base, nix::unistd::AccessFlags::W_OK)
            .map_err(|_| "the splitter's cgroup is not writable (under systemd: Delegate=yes in the unit)")?;
        Ok(base)
    })
    .as_ref()
    .map(PathBuf::as_path)
    .map_err(|why| *why)
}

fn join_cgroup(base: &Path, tenant: &str, pid: u32, limits: &Limits) -> io::Result<()> {
    // cgroup v2 lets a group hand controllers to its children only when it
    // has no processes of its own: the splitter's processes move to a leaf
    // beside the tenants' groups (once; writing a pid already there is a
    // no-op).
    let supervisor = base.join("supervisor");
    std::fs::create_dir_all(&supervisor)?;
    std::fs::write(
        supervisor.join("cgroup.procs"),
        std::process::id().to_string(),
    )?;
    std::fs::write(
        supervisor.join("cgroup.procs"),
        nix::unistd::getppid().as_raw().to_string(),
    )?;
    std::fs::write(base.join("cgroup.subtree_control"), "+memory +cpu")?;
    let group = base.join(format!("tenant-{tenant}"));
    std::fs::create_dir_all(&group)?;
    if let Some(memory) = limits.memory {
        std::fs::write(group.join("memory.max"), memory.to_string())?;
    }
    if let Some(cpu) = limits.cpu {
        let period = 100_000u64;
        std::fs::write(
            group.join("cpu.max"),
            format!("{} {period}", (cpu * period as f64) as u64),
        )?;
    }
    std::fs::write(group.join("cgroup.procs"), pid.to_string())?;
    Ok(())
}

/// Capabilities the splitter keeps after its sockets are bound, when it runs as
/// root: to start tenants as their users (SETUID, SETGID), prepare their runtime
/// directories (CHOWN, FOWNER, DAC_OVERRIDE, DAC_READ_SEARCH), signal them (KILL)
/// and raise their limits (SYS_RESOURCE); and for the splitter it starts on
/// `ctl upgrade`, which inherits this set: bind a new privileged port
/// (NET_BIND_SERVICE) and clear its own front's bounding set (SETPCAP).
const KEPT: &[caps::Capability] = &[
    caps::Capability::CAP_NET_BIND_SERVICE,
    caps::Capability::CAP_SETPCAP,
    caps::Capability::CAP_SETUID,
    caps::Capability::CAP_SETGID,
    caps::Capability::CAP_CHOWN,
    caps::Capability::CAP_FOWNER,
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_DAC_READ_SEARCH,
    caps::Capability::CAP_KILL,
    caps::Capability::CAP_SYS_RESOURCE,
];

/// Drops every capability but [`KEPT`] from the splitter (effective, permitted,
/// inheritable and bounding sets). Does nothing when not running as root.
pub fn drop_privileges() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let permitted = caps::read(None, caps::CapSet::Permitted).unwrap_or_default();
    let keep: caps::CapsHashSet = KEPT
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    let result = (|| -> Result<(), caps::errors::CapsError> {
        for cap in caps::all() {
            if !keep.contains(&cap) && caps::has_cap(None, caps::CapSet::Bounding, cap)? {
                caps::drop(None, caps::CapSet::Bounding, cap)?;
            }
        }
        caps::set(None, caps::CapSet::Inheritable, &caps::CapsHashSet::new())?;
        caps::set(None, caps::CapSet::Effective, &keep)?;
        caps::set(None, caps::CapSet::Permitted, &keep)?;
        Ok(())
    })();
    match result {
        Ok(()) => info!(kept = ?keep, "dropped every other capability"),
        Err(e) => warn!(error = %e, "cannot drop capabilities; running with all of root's"),
    }
}

/// Turns this process into the unprivileged front: when it runs as root, it
/// clears its capability bounding set, takes `user`'s uid and gid with no
/// supplementary groups (which empties its capability sets), and in every
/// case sets `no_new_privs`. Call after every privileged socket is bound and
/// the helper is started.
pub fn become_front(user: Option<&str>) -> Result<(), StartError> {
    use nix::unistd::{getegid, geteuid, getgid, getuid, setgid, setgroups, setuid, User};
    if geteuid().is_root() {
        let name = user.ok_or_else(|| {
            StartError::FrontUser(
                "not set, and the splitter runs as root; set it to an unprivileged user".into(),
            )
        })?;
        let user = User::from_name(name)
            .map_err(|e| StartError::FrontUser(format!("{name:?}: {e}")))?
            .ok_or_else(|| StartError::FrontUser(format!("{name:?} does not exist")))?;
        if user.uid.is_root() {
            return Err(StartError::FrontUser(format!(
                "{name:?} is uid 0; name an unprivileged user"
            )));
        }
        for cap in caps::all() {
            if caps::has_cap(None, caps::CapSet::Bounding, cap).unwrap_or(false) {
                caps::drop(None, caps::CapSet::Bounding, cap)
                    .map_err(StartError::privileges("clear the capability bounding set"))?;
            }
        }
        caps::clear(None, caps::CapSet::Inheritable)
            .map_err(StartError::privileges("clear inheritable capabilities"))?;
        setgroups(&[]).map_err(StartError::privileges("drop supplementary groups"))?;
        setgid(user.gid).map_err(StartError::privileges(format!(
            "switch to group {}",
            user.gid
        )))?;
        setuid(user.uid).map_err(StartError::privileges(format!("switch to user {name:?}")))?;
        if getuid().is_root()
            || geteuid().is_root()
            || getgid() != user.gid
            || getegid() != user.gid
        {
            return Err(StartError::StillPrivileged);
        }
        info!(user = name, uid = user.uid.as_raw(), "the network-facing front runs unprivileged; the helper keeps the rights to start tenants");
    } else if let Some(name) = user {
        if nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .is_none_or(|u| u.uid != getuid())
        {
            warn!(
                user = name,
                "[splitter] user is ignored: the splitter was not started as root"
            );
        }
    }
    switchyard_shared::sys::forbid_new_privileges()
        .map_err(StartError::privileges("set no_new_privs"))?;
    Ok(())
}

/// Descriptors kept free for the splitter's own needs (logs, control and admin
/// connections, the helper, reloads).
const RESERVED_FDS: u64 = 64;

/// The most descriptors the splitter may hold under `config`: every peeking
/// or held connection, every unacknowledged one of every process (twice the
/// pool during a rolling restart, plus the hand-started ones), every handoff
/// socket, and a reserve.
pub fn descriptor_budget(config: &switchyard_shared::config::HostConfig) -> u64 {
    let per_process = config.splitter.max_unacked as u64 + 1;
    let processes: u64 = config
        .tenants
        .iter()
        .map(|t| 2 * t.processes as u64 + crate::tenant::MAX_ATTACHED as u64)
        .sum();
    config.splitter.max_pending as u64
        + processes * per_process
        + 2 * config.tenants.len() as u64
        + config.listeners.len() as u64
        + RESERVED_FDS
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and refuses to start when
/// the [`descriptor_budget`] does not fit, so that no tenant and no client can
/// make the splitter run out of descriptors.
pub fn fit_descriptor_budget(
    config: &switchyard_shared::config::HostConfig,
) -> Result<(), StartError> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(StartError::privileges("read the open-file limit"))?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(StartError::privileges(format!(
            "raise the open-file limit to {hard}"
        )))?;
    }
    let budget = descriptor_budget(config);
    if budget > hard {
        return Err(StartError::DescriptorBudget {
            budget,
            limit: hard,
            max_pending: config.splitter.max_pending,
            max_unacked: config.splitter.max_unacked,
        });
    }
    info!(
        budget,
        limit = hard,
        "descriptor budget fits the open-file limit"
    );
    Ok(())
}
