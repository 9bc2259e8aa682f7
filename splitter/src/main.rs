//! `splitter`: Switchyard's front tier.
//!
//! Accepts every connection on the shared ports, peeks at the TLS ClientHello's
//! SNI or the HTTP `Host` without consuming a byte, and hands the socket itself to
//! one of the tenant's l7proxy processes over `SCM_RIGHTS`. After the handoff the
//! splitter touches no byte of the connection. It links no TLS stack and never
//! opens a tenant's private key.

#![forbid(unsafe_code)]

mod conn;
mod listener;
mod peek;
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
#[command(version, about, long_about = None)]
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(config_path) = cli.config else {
        eprintln!("splitter: --config FILE is required (the host file, e.g. config/demo.toml)");
        return ExitCode::from(2);
    };
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
        None => run(config),
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
    let config_path = std::fs::canonicalize(&config.path)
        .map_err(|e| format!("cannot resolve {}: {e}", config.path.display()))?;
    let spec = process::SpawnSpec::locate(config_path).map_err(|e| e.to_string())?;
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

    let tenants: Vec<Arc<tenant::Tenant>> = config
        .tenants
        .iter()
        .map(|t| tenant::Tenant::new(t.clone(), config.splitter.hold_timeout))
        .collect();
    let front = Arc::new(listener::Front {
        routes: routing::RoutingTable::new(&config),
        pending: conn::PendingLimit::new(config.splitter.max_pending),
        settings: config.splitter.clone(),
        tenants: tenants.clone(),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut supervisors = Vec::new();
    for tenant in &tenants {
        tokio::spawn(tenant.clone().expire_held());
        for _ in 0..tenant.config.processes {
            supervisors.push(tokio::spawn(process::supervise(
                tenant.clone(),
                spec.clone(),
                stop_rx.clone(),
            )));
        }
    }
    for (socket, protocol) in listeners {
        tokio::spawn(listener::accept_loop(
            front.clone(),
            socket,
            protocol,
            stop_rx.clone(),
        ));
    }

    let signal = wait_for_stop_signal().await;
    info!(
        signal,
        "stopping: no new connections; tenants get SIGTERM and finish in-flight requests"
    );
    let _ = stop_tx.send(true);
    for supervisor in supervisors {
        let _ = supervisor.await;
    }
    info!("stopped");
    Ok(())
}

async fn wait_for_stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        unreachable!()
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
