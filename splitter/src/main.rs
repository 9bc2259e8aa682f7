//! `splitter`: Switchyard's front tier.
//!
//! Accepts every connection on the shared ports, peeks at the TLS ClientHello's
//! SNI or the HTTP `Host` without consuming a byte, and hands the socket itself to
//! one of the tenant's l7proxy processes over `SCM_RIGHTS`. After the handoff the
//! splitter touches no byte of the connection. It links no TLS stack and never
//! opens a tenant's private key.

#![forbid(unsafe_code)]

mod admin;
mod adoption;
mod attach;
mod conn;
mod control;
mod fleet;
mod helper;
mod isolation;
mod listener;
mod metrics;
mod process;
mod reject;
mod routing;
mod sandbox;
mod server;
mod start_error;
mod systemd;
mod takeover;
mod tenant;
mod tenant_metrics;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use switchyard_shared::config::HostConfig;
use switchyard_shared::control::CtlRequest;
use tracing::{error, info, warn};

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
    splitter ctl --config /etc/switchyard/host.toml restart shop\n  \
    splitter ctl --config /etc/switchyard/host.toml upgrade   replace the splitter, keep every site running (as SIGUSR2)\n\n\
    Logs go to stderr; RUST_LOG sets the level, SWITCHYARD_LOG_FORMAT=json gives JSON lines."
)]
struct Cli {
    /// The host file (TOML), e.g. /etc/switchyard/host.toml.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Take over the listeners and tenant processes of the splitter running
    /// with this host file (what `ctl upgrade` starts; not for operators).
    #[arg(long, hide = true)]
    take_over: bool,
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
    /// The privileged helper the running splitter starts for itself (not for
    /// operators): it spawns tenant processes as their users.
    #[command(hide = true)]
    Helper,
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
    /// Replace the running splitter without a gap (as SIGUSR2): a new one
    /// takes over the listening sockets and adopts every tenant process (same
    /// pids, same connections); a new one that fails leaves this one serving.
    Upgrade {
        /// Run this executable instead of the installed one (a regular file
        /// owned by root, writable by no one else).
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
    },
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
    if let Some(Command::Helper) = cli.command {
        switchyard_shared::logging::init("splitter-helper");
        return match helper::serve::run(config_path) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("privileged helper: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Check) = cli.command {
        return check(&config_path);
    }
    let config = match HostConfig::load(&config_path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("splitter: configuration is invalid; nothing was started");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::Check | Command::Ctl { .. } | Command::Helper) => {
            unreachable!("handled above")
        }
        None => run(config, cli.take_over),
    }
}

/// `splitter check`: the host file here, each tenant file by `l7proxy --check`
/// run as the tenant's user (the splitter never reads a tenant's files).
///
/// Every problem that can be found is reported: a host file with errors (but
/// valid syntax) still has the tenant files it names checked.
fn check(config_path: &std::path::Path) -> ExitCode {
    let (config, host_errors) =
        match HostConfig::load_for_check(config_path, nix::unistd::geteuid().is_root()) {
            Ok(loaded) => loaded,
            Err(errors) => {
                eprintln!("{errors}");
                eprintln!("splitter check: configuration is invalid");
                return ExitCode::from(2);
            }
        };
    let config = &config;
    for warning in &config.warnings {
        eprintln!("{warning}");
    }
    let mut failed = false;
    if let Some(errors) = host_errors {
        eprintln!("{errors}");
        failed = true;
    }
    let l7proxy = match helper::locate_l7proxy() {
        Ok(path) => path,
        Err(e) => {
            eprintln!("splitter check: {e}");
            return ExitCode::from(2);
        }
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("splitter check: cannot start a runtime");
        return ExitCode::from(2);
    };
    // Tenant files that exist are checked even when the host file has errors
    // (a missing one is among those errors already).
    for tenant in config.tenants.iter().filter(|t| t.config.is_file()) {
        match runtime.block_on(helper::serve::check_tenant(&l7proxy, &config.path, tenant)) {
            Ok(output) => {
                if !output.is_empty() {
                    eprintln!("{output}");
                }
            }
            Err(e) => {
                eprintln!("{e}");
                failed = true;
            }
        }
    }
    if failed {
        eprintln!("splitter check: configuration is invalid");
        return ExitCode::from(2);
    }
    println!(
        "{}: configuration OK ({} listeners, {} tenants)",
        config.path.display(),
        config.listeners.len(),
        config.tenants.len()
    );
    ExitCode::SUCCESS
}

fn ctl(config_path: &std::path::Path, action: CtlAction) -> ExitCode {
    // Only the runtime directory is needed to find the splitter, so a host file
    // being edited (invalid for now) does not lock the operator out; a reload
    // is validated by the splitter itself, which reports any error.
    let runtime_dir = match HostConfig::runtime_dir_of(config_path) {
        Ok(dir) => dir,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "splitter ctl: cannot find runtime_dir in {}; fix the file's syntax first",
                config_path.display()
            );
            return ExitCode::from(2);
        }
    };
    if matches!(action, CtlAction::Reload) {
        // Say what is wrong at once, before asking the splitter (which checks
        // again, tenant files included, and changes nothing on an error).
        if let Err(errors) = HostConfig::load(config_path) {
            eprintln!("{errors}");
            eprintln!("splitter ctl: reload not sent: the host file is invalid; nothing changed");
            return ExitCode::from(2);
        }
    }
    let (request, json_output) = match action {
        CtlAction::Status { json } => (CtlRequest::Status, json),
        CtlAction::Restart { tenant } => (CtlRequest::Restart { tenant }, false),
        CtlAction::Reload => (CtlRequest::Reload, false),
        CtlAction::Stop => (CtlRequest::Stop, false),
        CtlAction::Upgrade { binary } => (
            CtlRequest::Upgrade {
                binary: binary.map(|path| std::fs::canonicalize(&path).unwrap_or(path)),
            },
            false,
        ),
    };
    control::run_client(&runtime_dir, &request, json_output)
}

fn run(config: HostConfig, take_over: bool) -> ExitCode {
    switchyard_shared::logging::init("splitter");
    if config.splitter.sched_batch {
        // Before the runtime exists, so that all its threads inherit it.
        match switchyard_shared::sys::set_batch_scheduling() {
            Ok(()) => info!("scheduling policy SCHED_BATCH (sched_batch = true): under load the splitter yields the CPU to tenant processes and hands off several connections per wake-up"),
            Err(e) => warn!(error = %e, "cannot switch to SCHED_BATCH; running under the normal policy (set sched_batch = false to silence this)"),
        }
    }
    // Before the runtime starts threads: these read and clear environment
    // variables, and the notification socket is connected while connecting
    // is still allowed.
    systemd::connect_notify_socket();
    let watchdog = systemd::watchdog_interval();
    let passed = match systemd::inherited_listeners() {
        Ok(passed) => passed,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let incoming = match take_over {
        true => match takeover::take_over(&config.splitter.runtime_dir) {
            Ok(incoming) => Some(incoming),
            Err(e) => {
                error!("{e}");
                return ExitCode::FAILURE;
            }
        },
        false => None,
    };
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
    match runtime.block_on(server::serve(config, passed, incoming, watchdog)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            error!("{message}");
            ExitCode::FAILURE
        }
    }
}
