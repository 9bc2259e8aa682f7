//! Running the splitter: bind everything, drop privileges, start the tenants,
//! serve until SIGTERM, SIGINT or `ctl stop`, reload on SIGHUP, then drain.

use crate::{admin, conn, control, fleet, isolation, listener, process, routing};
use std::sync::Arc;
use switchyard_shared::config::HostConfig;
use tokio::sync::watch;
use tracing::{error, info};

/// Serves `config` until asked to stop; returns why it could not start.
pub async fn serve(config: HostConfig) -> Result<(), String> {
    let config_path = config.path.clone();
    let spec = process::SpawnSpec::locate(config_path.clone(), config.splitter.runtime_dir.clone())
        .map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&config.splitter.runtime_dir).map_err(|e| {
        format!(
            "cannot create runtime_dir {}: {e}",
            config.splitter.runtime_dir.display()
        )
    })?;

    let mut listeners = Vec::new();
    for listen in &config.listeners {
        let socket = listener::bind(listen).map_err(|e| {
            format!(
                "cannot listen on {} ({}): {e}; is another server using the port?",
                listen.addr,
                listen.protocol.as_str()
            )
        })?;
        info!(addr = %listen.addr, protocol = listen.protocol.as_str(), "listening");
        listeners.push((socket, listen.protocol));
    }

    let control_listener = control::bind(&control::socket_path(&config.splitter.runtime_dir))?;
    let front = Arc::new(listener::Front {
        routes: arc_swap::ArcSwap::from_pointee(routing::RoutingTable::default()),
        pending: conn::PendingLimit::new(config.splitter.max_pending),
        settings: config.splitter.clone(),
    });
    let fleet = fleet::Fleet::start(&config, spec, front.clone());
    let handoff_path = config
        .splitter
        .runtime_dir
        .join(switchyard_shared::handoff::HANDOFF_SOCKET_NAME);
    let handoff_listener = switchyard_shared::handoff::seqpacket_listen(&handoff_path)
        .map_err(|e| format!("cannot listen on {}: {e}", handoff_path.display()))?;
    // Anyone may connect; SO_PEERCRED decides who joins which tenant.
    let _ = std::fs::set_permissions(
        &handoff_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    );
    let admin = match config.splitter.admin {
        Some(addr) => Some(admin::bind(addr).await?),
        None => None,
    };
    // Every socket is bound: keep only what starting tenants needs.
    isolation::drop_privileges();
    let admin = admin.map(|listener| tokio::spawn(admin::serve(listener, fleet.clone())));
    let attach = tokio::spawn(process::admit_attached(handoff_listener, fleet.clone()));

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut accept_loops = Vec::new();
    for (socket, protocol) in listeners {
        accept_loops.push(tokio::spawn(listener::accept_loop(
            front.clone(),
            socket,
            protocol,
            stop_rx.clone(),
        )));
    }
    let stop_requested = Arc::new(tokio::sync::Notify::new());
    let control_path = control::socket_path(&config.splitter.runtime_dir);
    let control = tokio::spawn(control::serve(
        control_listener,
        fleet.clone(),
        config_path.clone(),
        stop_requested.clone(),
    ));

    let reason = wait_for_stop(&fleet, &config_path, &stop_requested).await;
    info!(
        reason,
        "stopping: no new connections; tenants drain and finish in-flight requests"
    );
    let _ = stop_tx.send(true);
    for accept_loop in accept_loops {
        let _ = accept_loop.await;
    }
    fleet.stop().await;
    control.abort();
    attach.abort();
    if let Some(admin) = admin {
        admin.abort();
    }
    let _ = std::fs::remove_file(control_path);
    let _ = std::fs::remove_file(handoff_path);
    info!("stopped");
    Ok(())
}

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
