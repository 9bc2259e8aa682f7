//! Running the splitter: bind everything, start the privileged helper, become
//! the unprivileged front, start the tenants, serve until SIGTERM, SIGINT or
//! `ctl stop`, reload on SIGHUP, then drain.

use crate::start_error::StartError;
use crate::{admin, conn, control, fleet, helper, isolation, listener, routing, sandbox};
use std::os::fd::AsFd;
use std::sync::Arc;
use switchyard_shared::config::HostConfig;
use tokio::sync::watch;
use tracing::{error, info, warn};

/// Serves `config` until asked to stop; returns why it could not start.
/// `passed` are listening sockets systemd passed (socket activation), used for
/// the `[[listen]]` entries with the same address; `incoming` is what a
/// splitter being replaced handed over (`--take-over`); `watchdog` is how
/// often to tell systemd the splitter is alive.
pub async fn serve(
    config: HostConfig,
    mut passed: Vec<(std::net::SocketAddr, std::net::TcpListener)>,
    mut incoming: Option<crate::takeover::Incoming>,
    watchdog: Option<std::time::Duration>,
) -> Result<(), StartError> {
    let passed_by = match &mut incoming {
        Some(incoming) => {
            passed.append(&mut incoming.listeners);
            "the splitter this one replaces"
        }
        None => "systemd",
    };
    let config_path = config.path.clone();
    let as_root = nix::unistd::geteuid().is_root();
    crate::helper::locate_l7proxy().map_err(StartError::io("find the l7proxy program"))?;
    for warning in &config.warnings {
        warn!("{warning}");
    }
    let runtime_dir = &config.splitter.runtime_dir;
    std::fs::create_dir_all(runtime_dir).map_err(StartError::io(format!(
        "create runtime_dir {}",
        runtime_dir.display()
    )))?;
    isolation::fit_descriptor_budget(&config)?;

    let mut listeners = Vec::new();
    for listen in &config.listeners {
        if let Some(at) = passed.iter().position(|(addr, _)| *addr == listen.addr) {
            let (_, socket) = passed.swap_remove(at);
            listener::prepare_passed(&socket).map_err(StartError::io(format!(
                "use the socket {passed_by} passed for {}",
                listen.addr
            )))?;
            info!(addr = %listen.addr, protocol = listen.protocol.as_str(), passed_by, "listening (a passed socket: nothing was bound again)");
            listeners.push((socket, listen.clone()));
            continue;
        }
        let socket = listener::bind(listen).map_err(|source| StartError::Listen {
            addr: listen.addr,
            protocol: listen.protocol.as_str(),
            source,
        })?;
        info!(addr = %listen.addr, protocol = listen.protocol.as_str(), proxy_protocol = listen.proxy_protocol, "listening");
        listeners.push((socket, listen.clone()));
    }

    let control_path = control::socket_path(runtime_dir);
    let control_listener = match incoming.as_mut().and_then(|i| i.control.take()) {
        Some(passed) => passed
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixListener::from_std(passed))
            .map_err(StartError::io("use the passed control socket"))?,
        None => control::bind(&control_path)?,
    };
    let admin = match &config.splitter.admin {
        Some(listen) => Some(admin::bind(listen, runtime_dir, &mut passed).await?),
        None => None,
    };
    if !passed.is_empty() {
        let extra: Vec<String> = passed.iter().map(|(addr, _)| addr.to_string()).collect();
        if incoming.is_none() {
            return Err(StartError::UnclaimedPassedSockets {
                addrs: extra.join(", "),
                host_file: config_path.clone(),
            });
        }
        // An upgrade may come with a changed [[listen]] list.
        info!(addrs = %extra.join(", "), "listeners of the replaced splitter that this host file no longer names are closed");
        passed.clear();
    }
    // The helper keeps the privileges this process has now; the front gives
    // them up before it reads a byte from the network.
    let (helper_child, helper_socket) =
        helper::start(&config_path).map_err(StartError::io("start the privileged helper"))?;
    let helper = helper::Helper::new(helper_socket, helper_child.id())
        .map_err(StartError::io("watch the privileged helper's socket"))?;
    tokio::spawn(helper.clone().read_events());
    isolation::become_front(config.splitter.user.as_deref())?;
    // A host file the front cannot read would make every reload fail.
    HostConfig::load_as(&config_path, as_root).map_err(StartError::HostFileHidden)?;
    sandbox::restrict_system_calls()?;
    if let Some(incoming) = incoming {
        // The replaced splitter stops accepting and releases its tenants,
        // which re-attach here (the adoption window is open: their
        // handoff.sock files exist).
        let wait = config.splitter.peek_timeout
            + config.splitter.hold_timeout
            + std::time::Duration::from_secs(10);
        tokio::task::spawn_blocking(move || incoming.commit(wait))
            .await
            .map_err(|e| StartError::TakeOver(e.to_string()))??;
        info!("took over: the replaced splitter released its tenant processes");
        crate::systemd::notify(&format!("MAINPID={}", std::process::id()));
    }

    let front = Arc::new(listener::Front {
        routes: arc_swap::ArcSwap::from_pointee(routing::RoutingTable::default()),
        pending: conn::PendingLimit::new(&config.splitter),
        settings: config.splitter.clone(),
    });
    let fleet = fleet::Fleet::start(&config, helper.clone(), as_root, front.clone());
    crate::metrics::register(Box::new(crate::tenant_metrics::TenantsCollector::new(
        front.clone(),
    )));
    // Copies of every listening socket, for a take-over (`ctl upgrade`).
    let mut handed_on = Vec::new();
    for (socket, listen) in &listeners {
        let copy = socket
            .as_fd()
            .try_clone_to_owned()
            .map_err(StartError::io("copy a listening socket"))?;
        handed_on.push((listen.addr, copy));
    }
    if let Some(copy) = admin.as_ref().and_then(admin::Admin::tcp_copy) {
        handed_on.push(copy);
    }
    let control_copy = control_listener
        .as_fd()
        .try_clone_to_owned()
        .map_err(StartError::io("copy the control socket"))?;
    let admin = admin.map(|admin| tokio::spawn(admin::serve(admin, fleet.clone())));
    if let Some(every) = watchdog {
        tokio::spawn(crate::systemd::keep_watchdog_fed(every));
    }
    if crate::systemd::notifying() {
        let fleet = fleet.clone();
        tokio::spawn(async move {
            // Ready once every tenant's processes are (or after a minute,
            // with the status saying which are not).
            let status = fleet.wait_until_ready(READY_WAIT).await;
            crate::systemd::notify(&format!("READY=1\nSTATUS={status}"));
        });
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let outgoing = Arc::new(crate::takeover::Outgoing::new(
        handed_on,
        control_copy,
        stop_tx,
        front.clone(),
        helper.clone(),
        fleet.clone(),
    ));
    let mut accept_loops = Vec::new();
    for (socket, listen) in listeners {
        accept_loops.push(tokio::spawn(listener::accept_loop(
            front.clone(),
            socket,
            listen,
            stop_rx.clone(),
        )));
    }
    let stop_requested = Arc::new(tokio::sync::Notify::new());
    let control = tokio::spawn(control::serve(
        control_listener,
        fleet.clone(),
        config_path.clone(),
        stop_requested.clone(),
        outgoing.clone(),
    ));

    let reason = wait_for_stop(&fleet, &config_path, &stop_requested, &outgoing).await;
    crate::systemd::notify(&format!(
        "STOPPING=1\nSTATUS=stopping ({reason}): tenants drain"
    ));
    info!(
        reason,
        "stopping: no new connections; tenants drain and finish in-flight requests"
    );
    outgoing.stop_accepting();
    for accept_loop in accept_loops {
        let _ = accept_loop.await;
    }
    fleet.stop().await;
    helper.shut_down().await;
    control.abort();
    if let Some(admin) = admin {
        admin.abort();
    }
    // Root owns the runtime directory; the front may not be able to remove
    // its sockets, and the next start replaces them.
    let _ = std::fs::remove_file(control_path);
    info!("stopped");
    Ok(())
}

/// How long the splitter waits for its tenants before telling systemd it is
/// ready anyway.
const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits for SIGTERM, SIGINT or `ctl stop`, reloading on SIGHUP and
/// upgrading on SIGUSR2 meanwhile.
async fn wait_for_stop(
    fleet: &Arc<fleet::Fleet>,
    config_path: &std::path::Path,
    stop: &tokio::sync::Notify,
    outgoing: &Arc<crate::takeover::Outgoing>,
) -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut usr2)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined2()),
    ) else {
        error!("cannot install signal handlers; stop with `splitter ctl stop`");
        stop.notified().await;
        return "ctl stop";
    };
    loop {
        tokio::select! {
            _ = term.recv() => return "SIGTERM",
            _ = int.recv() => return "SIGINT",
            _ = stop.notified() => return "ctl stop",
            _ = hup.recv() => {
                info!("SIGHUP: reloading the host file");
                if let Err(e) = fleet.reload(config_path).await {
                    error!("{e}");
                }
            }
            _ = usr2.recv() => {
                info!("SIGUSR2: starting a new splitter to take over");
                let outgoing = outgoing.clone();
                tokio::spawn(async move {
                    match outgoing.upgrade(None).await {
                        Ok(done) => info!("{done}"),
                        Err(e) => error!("{e}"),
                    }
                });
            }
        }
    }
}
