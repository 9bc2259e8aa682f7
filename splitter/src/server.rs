//! Running the splitter: bind everything, start the privileged helper, become
//! the unprivileged front, start the tenants, serve until SIGTERM, SIGINT or
//! `ctl stop`, reload on SIGHUP, then drain.

use crate::start_error::StartError;
use crate::{admin, conn, control, fleet, helper, isolation, listener, routing, sandbox};
use std::sync::Arc;
use switchyard_shared::config::HostConfig;
use tokio::sync::watch;
use tracing::{error, info, warn};

/// Serves `config` until asked to stop; returns why it could not start.
/// `passed` are listening sockets systemd passed (socket activation), used for
/// the `[[listen]]` entries with the same address; `watchdog` is how often to
/// tell systemd the splitter is alive.
pub async fn serve(
    config: HostConfig,
    mut passed: Vec<(std::net::SocketAddr, std::net::TcpListener)>,
    watchdog: Option<std::time::Duration>,
) -> Result<(), StartError> {
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
                "use the socket systemd passed for {}",
                listen.addr
            )))?;
            info!(addr = %listen.addr, protocol = listen.protocol.as_str(), "listening (socket passed by systemd)");
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

    if !passed.is_empty() {
        let extra: Vec<String> = passed.iter().map(|(addr, _)| addr.to_string()).collect();
        return Err(StartError::UnclaimedPassedSockets {
            addrs: extra.join(", "),
            host_file: config_path.clone(),
        });
    }

    let control_path = control::socket_path(runtime_dir);
    let control_listener = control::bind(&control_path)?;
    let admin = match &config.splitter.admin {
        Some(listen) => Some(admin::bind(listen, runtime_dir).await?),
        None => None,
    };
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

    let front = Arc::new(listener::Front {
        routes: arc_swap::ArcSwap::from_pointee(routing::RoutingTable::default()),
        pending: conn::PendingLimit::new(&config.splitter),
        settings: config.splitter.clone(),
    });
    let fleet = fleet::Fleet::start(&config, helper.clone(), as_root, front.clone());
    crate::metrics::register(Box::new(crate::tenant_metrics::TenantsCollector::new(
        front.clone(),
    )));
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
    ));

    let reason = wait_for_stop(&fleet, &config_path, &stop_requested).await;
    crate::systemd::notify(&format!(
        "STOPPING=1\nSTATUS=stopping ({reason}): tenants drain"
    ));
    info!(
        reason,
        "stopping: no new connections; tenants drain and finish in-flight requests"
    );
    let _ = stop_tx.send(true);
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

/// Waits for SIGTERM, SIGINT or `ctl stop`, reloading on SIGHUP meanwhile.
async fn wait_for_stop(
    fleet: &fleet::Fleet,
    config_path: &std::path::Path,
    stop: &tokio::sync::Notify,
) -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
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
        }
    }
}
