//! `splitter`: Switchyard's front tier.
//!
//! Accepts every connection on the shared ports, peeks at the TLS ClientHello's
//! SNI or the HTTP `Host` without consuming a byte, and hands the socket itself to
//! one of the tenant's l7proxy processes over `SCM_RIGHTS`. After the handoff the
//! splitter touches no byte of the connection. It links no TLS stack and never
//! opens a tenant's private key.

#![forbid(unsafe_code)]

mod admin;
mod conn;
mod control;
mod fleet;
mod isolation;
mod listener;
mod metrics;
mod process;
mod reject;
mod routing;
mod tenant;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use switchyard_shared::config::HostConfig;
use tokio::sync::watch;
use tracing::{error, info};

/// Switchyard's front tier: routes connections on shared ports to per-site
/// l7proxy processes by TLS SNI or HTTP Host, handing over the socket itself.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    long_about = None,
    after_help = "Examples:\n  \
    splitter --config /etc/switchyard/host.toml            run (foreground; SIGHUP reloads, SIGTERM/SIGINT stop gracefully)\n  \
    splitter check --config /etc/switchyard/host.toml      validate the host file and every tenant file\n  \
    splitter ctl --config /etc/switchyard/host.toml status\n  \
    splitter ctl --config /etc/switchyard/host.toml restart shop\n\n\
    Logs go to stderr; RUST_LOG sets the level, SWITCHYARD_LOG_FORMAT=json gives JSON lines."
)]
struct Cli {
    /// The host file (TOML), e.g. /etc/switchyard/host.toml.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate the host file and every tenant file it names, like `nginx -t`.
    /// Prints `FILE:LINE:COL: message` for each problem; exits 0 when valid, 2 when not.
    Check,
    /// Control a running splitter through `runtime_dir/control.sock`.
    Ctl {
        #[command(subcommand)]
        action: CtlAction,
    },
}

#[derive(Subcommand, Debug)]
enum CtlAction {
    /// Tenants, their processes (pid, state, uptime, connections handed off),
    /// held connections, restarts.
    Status {
        /// Print the JSON document instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Rolling restart of one tenant: new processes first, then the old ones
    /// drain; no connection is lost. Picks up a changed tenant file.
    Restart {
        /// The tenant's name.
        tenant: String,
    },
    /// Re-read the host file: add and remove tenants, change hosts (as SIGHUP).
    Reload,
    /// Graceful stop: stop accepting, drain every tenant, exit (as SIGTERM).
    Stop,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(config_path) = cli.config else {
        eprintln!("splitter: --config FILE is required (the host file, e.g. config/demo.toml)");
        return ExitCode::from(2);
    };
    if let Some(Command::Ctl { action }) = cli.command {
        return ctl(&config_path, action);
    }
    // One absolute path, so a reload compares like with like.
    let config_path = std::fs::canonicalize(&config_path).unwrap_or(config_path);
    let config = match HostConfig::load_all(&config_path) {
        Ok((config, _tenant_files)) => config,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("splitter: configuration is invalid; nothing was started");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::Check) => {
            println!(
                "{}: configuration OK ({} listeners, {} tenants)",
                config_path.display(),
                config.listeners.len(),
                config.tenants.len()
            );
            ExitCode::SUCCESS
        }
        Some(Command::Ctl { .. }) => unreachable!("handled above"),
        None => run(config),
    }
}

fn ctl(config_path: &std::path::Path, action: CtlAction) -> ExitCode {
    // Only the runtime directory is needed to find the splitter; a reload is
    // validated by the splitter itself, which reports any error.
    let config = match HostConfig::load(config_path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("splitter ctl: the host file is invalid; fix it first (`splitter check --config {}`)", config_path.display());
            return ExitCode::from(2);
        }
    };
    let (request, json_output) = match &action {
        CtlAction::Status { json } => (serde_json::json!({"command": "status"}), *json),
        CtlAction::Restart { tenant } => (
            serde_json::json!({"command": "restart", "tenant": tenant}),
            false,
        ),
        CtlAction::Reload => (serde_json::json!({"command": "reload"}), false),
        CtlAction::Stop => (serde_json::json!({"command": "stop"}), false),
    };
    let timeout = std::time::Duration::from_secs(90);
    match control::request(&config.splitter.runtime_dir, &request, timeout) {
        Ok(answer) if answer["ok"] == true => {
            if let Some(status) = answer.get("status") {
                if json_output {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(status).unwrap_or_default()
                    );
                } else {
                    print!("{}", control::render_status(status));
                }
            } else if let Some(message) = answer["message"].as_str() {
                println!("{message}");
            }
            ExitCode::SUCCESS
        }
        Ok(answer) => {
            eprintln!(
                "splitter ctl: {}",
                answer["message"].as_str().unwrap_or("request failed")
            );
            ExitCode::FAILURE
        }
        Err(message) => {
            eprintln!("splitter ctl: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: HostConfig) -> ExitCode {
    switchyard_shared::logging::init("splitter");
    let threads = config.splitter.threads;
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("splitter")
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            error!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: HostConfig) -> Result<(), String> {
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
