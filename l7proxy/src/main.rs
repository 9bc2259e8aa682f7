//! `l7proxy`: one tenant's proxy process.
//!
//! Spawned by the splitter, it serves the sockets the splitter hands it over
//! `SCM_RIGHTS`; run by hand with `--listen`, it is the same tenant on a listener
//! of its own (the single-tier baseline). Either way it is a Pingora `Server`
//! terminating TLS with the tenant's own certificate, routing by path, and
//! proxying to the tenant's upstream pools ([`pool`]), which backends may join
//! through the registration API ([`registration`]).

#![forbid(unsafe_code)]

mod access_log;
mod acme;
mod background;
mod client_cert;
mod handed;
mod http_rules;
mod ip_text;
mod metrics;
mod pool;
mod proxy;
mod registration;
mod request_stats;
mod routes;
mod rules;
mod service;
mod session_tickets;
mod shutdown;
mod signals;
mod tls;

use clap::Parser;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use switchyard_shared::config::{AcmeChallenge, AcmeConfig, HostConfig, TenantFile, TlsSource};
use switchyard_shared::handoff::HANDOFF_FD_ENV;
use switchyard_shared::host::HostPattern;
use tracing::{error, info};

/// Switchyard's tenant process: a Pingora proxy for one site.
///
/// Normally spawned by `splitter`, which hands it connections. With `--listen`
/// it accepts connections itself (no splitter needed).
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    long_about = None,
    after_help = "Examples:\n  \
    l7proxy --tenant shop --config /etc/switchyard/host.toml                     join the running splitter's pool (as the tenant's user)\n  \
    l7proxy --tenant shop --config /etc/switchyard/host.toml --listen 127.0.0.1:9443,tls   serve alone, without a splitter\n\n\
    The splitter normally spawns this process itself. SIGTERM drains it: in-flight requests finish, then it exits.\n\
    With [registration] in the tenant file it also serves the registration API there\n\
    (POST /v1/register, POST /v1/deregister, GET /v1/upstreams, GET /metrics).\n\
    Started by hand, give it MIMALLOC_ARENA_EAGER_COMMIT=0 as the splitter does (less memory when idle)."
)]
struct Cli {
    /// The tenant to serve, as named in the host file.
    #[arg(long, value_name = "NAME")]
    tenant: String,
    /// The host file that names the tenant and its tenant file.
    #[arg(long, value_name = "HOSTFILE")]
    config: PathBuf,
    /// Listen here instead of taking connections from the splitter:
    /// `ADDR` for plaintext HTTP, `ADDR,tls` for TLS (e.g. `127.0.0.1:9443,tls`).
    #[arg(long, value_name = "ADDR[,tls]")]
    listen: Option<String>,
    /// Validate the tenant's file (and its certificate and key) and exit: 0 when
    /// valid, 2 with `FILE:LINE:COL: message` lines when not. `splitter check`,
    /// reload and restart run this as the tenant's user.
    #[arg(long)]
    check: bool,
}

/// mimalloc instead of glibc malloc: Pingora makes and frees dozens of
/// allocations per request, and mimalloc costs less CPU for them
/// (bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The longest a draining process waits for in-flight requests before it exits.
const DRAIN_GRACE_SECONDS: u64 = 10;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Files this process creates (registrations, logs, sockets) are its user's
    // alone unless it opens them up on purpose.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    switchyard_shared::logging::init("l7proxy");
    tls::install_crypto_provider();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            error!("{message}");
            eprintln!("l7proxy: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let host = match cli.check {
        // `splitter check` reports the host file's own problems; this checks
        // the tenant's file even when another part of the host file is wrong.
        true => HostConfig::load_for_check(&cli.config, false).map(|(host, _)| host),
        false => HostConfig::load_as(&cli.config, false),
    }
    .map_err(|e| e.to_string())?;
    let entry = host
        .tenant(&cli.tenant)
        .ok_or_else(|| {
            format!(
                "tenant {:?} is not in {} (tenants: {})",
                cli.tenant,
                cli.config.display(),
                host.tenants
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?
        .clone();
    let file = TenantFile::load(&entry.config).map_err(|e| e.to_string())?;
    if cli.check {
        if let Some(source) = &file.tls {
            if let TlsSource::Acme(acme) = source {
                acme::check(acme, &entry.hosts).map_err(|errors| errors.join("\n"))?;
            }
            let checked =
                tls::load_certificate(source, &entry.hosts).map_err(|errors| errors.join("\n"))?;
            for warning in &checked.warnings {
                println!("{warning}");
            }
            let store = tls::CertStore::new(
                &entry.name,
                source.clone(),
                entry.hosts.clone(),
                checked.loaded,
            );
            tls::server_config(&store, &file.tls_policy, None)
                .map_err(|errors| errors.join("\n"))?;
        }
        for warning in &file.warnings {
            println!("{warning}");
        }
        println!("{}: tenant {} OK", entry.config.display(), entry.name);
        return Ok(());
    }
    for warning in &file.warnings {
        tracing::warn!("{warning}");
    }

    let hosts = Arc::new(arc_swap::ArcSwap::from_pointee(proxy::HostView::new(
        &host,
        &entry.name,
    )));

    // Registrations live in the tenant's runtime directory, shared by every
    // process of its pool and by the next generation after a restart.
    let tenant_dir = host.splitter.runtime_dir.join("tenants").join(&entry.name);
    let registry = match file.upstreams.iter().any(|u| u.registration) {
        true => Some(Arc::new(pool::registry::Registry::open(&tenant_dir).map_err(
            |e| {
                format!(
                    "tenant {}: cannot keep registrations in {} ({e}); the directory must be writable by the tenant's user",
                    entry.name,
                    tenant_dir.display()
                )
            },
        )?)),
        false => None,
    };
    // Pools run their first discovery before the server starts.
    let setup = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let upstreams = setup.block_on(async {
        let mut built = Vec::new();
        for config in &file.upstreams {
            built.push(
                pool::Pool::build(&entry.name, config.clone(), registry.clone())
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok::<_, String>(built)
    })?;
    drop(setup);
    let routes = routes::RouteTable::new(&file.routes, &upstreams);
    let stop = shutdown::Stop::new();
    // The same checks as `--check`: a pair that would fail every handshake
    // (or has expired) is refused before anything is served.
    let refused = |errors: Vec<String>| {
        format!(
            "tenant {}: its certificate is refused:\n{}",
            entry.name,
            errors.join("\n")
        )
    };
    let mut acme_challenges = None;
    let certificate = match &file.tls {
        Some(TlsSource::Acme(acme)) => {
            acme::check(acme, &entry.hosts).map_err(refused)?;
            // The last certificate ordered, if it still passes the checks;
            // else the placeholder until an order succeeds.
            let checked = match acme::stored_certificate(&tenant_dir).map(|(chain, key)| {
                tls::check_acme_pair(&chain, &key, &tenant_dir, &acme.at, &entry.hosts)
            }) {
                Some(Ok(stored)) => stored,
                _ => tls::load_certificate(&TlsSource::Acme(acme.clone()), &entry.hosts)
                    .map_err(refused)?,
            };
            let challenges = acme::Challenges::new(&tenant_dir);
            acme_challenges = Some(challenges.clone());
            let store = tls::CertStore::with_alpn_challenges(
                &entry.name,
                TlsSource::Acme(acme.clone()),
                entry.hosts.clone(),
                checked.loaded,
                challenges,
            );
            start_acme(&entry.name, acme, &entry.hosts, &tenant_dir, &store);
            Some(store)
        }
        Some(source) => {
            let checked = tls::load_certificate(source, &entry.hosts).map_err(refused)?;
            for warning in &checked.warnings {
                tracing::warn!(tenant = %entry.name, "{warning}");
            }
            Some(tls::CertStore::new(
                &entry.name,
                source.clone(),
                entry.hosts.clone(),
                checked.loaded,
            ))
        }
        None => None,
    };
    let access = access_log::AccessLog::open(&file.log, &tenant_dir)
        .map_err(|e| format!("tenant {}: {e}", entry.name))?;
    let logic = proxy::TenantProxy::new(
        entry.name.clone(),
        hosts.clone(),
        routes,
        proxy::TenantSettings {
            trusted_proxies: host.splitter.trusted_proxies.clone(),
            http: file.http.clone(),
            log: file.log.clone(),
            force_https: file.force_https,
            acme_challenges: acme_challenges
                .filter(|_| matches!(&file.tls, Some(TlsSource::Acme(a)) if a.challenge == AcmeChallenge::Http01)),
        },
        access.clone(),
        stop.tracker.clone(),
    );

    let conf = ServerConf {
        threads: entry.threads,
        // A draining process exits as soon as its connections are done (see
        // `HandoffService::drain`); this caps the wait. Pingora's default is 300 s.
        grace_period_seconds: Some(DRAIN_GRACE_SECONDS),
        graceful_shutdown_timeout_seconds: Some(1),
        // Timeouts of a second or more on tokio's timer instead of Pingora's
        // "fast timeout", whose clock thread wakes every 10 ms for the life of
        // the process: idle tenants then cost CPU for nothing (bench/RESULTS.md).
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        pid_file: String::new(),
        upgrade_sock: String::new(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let conf = server.configuration.clone();

    // One thread for the background tasks (`background`).
    let mut tasks = background::Together::default().with(shutdown::Drained {
        tenant: entry.name.clone(),
        stop: stop.clone(),
        settle: service::IDLE_CLOSE_AFTER,
        grace: std::time::Duration::from_secs(DRAIN_GRACE_SECONDS),
    });
    if !upstreams.is_empty() {
        tasks = tasks.with(pool::PoolUpkeep {
            pools: upstreams.clone(),
        });
    }
    if let (Some(settings), Some(registry)) = (&file.registration, &registry) {
        server.add_service(registration_service(
            &entry.name,
            settings,
            &tenant_dir,
            registry.clone(),
            upstreams.clone(),
            certificate.clone(),
        )?);
    }
    // SIGHUP re-reads the certificate (as does a change of its files, and the
    // splitter's reload), SIGUSR1 reopens the access log; neither stops the
    // process.
    tasks = tasks.with(signals::TenantSignals {
        certificate: certificate.clone(),
        access: access.clone(),
    });
    server.add_service(pingora::services::background::background_service(
        "tasks", tasks,
    ));

    match cli.listen {
        Some(listen) => {
            let (addr, want_tls) = match listen.split_once(',') {
                Some((addr, "tls")) => (addr.to_string(), true),
                Some((_, other)) => {
                    return Err(format!(
                        "--listen {listen:?}: unknown option {other:?}; use ADDR or ADDR,tls"
                    ))
                }
                None => (listen.clone(), false),
            };
            let mut service = pingora::proxy::http_proxy_service_with_name(
                &conf,
                logic,
                &format!("listen {}", entry.name),
            );
            if let Some(app) = service.app_logic_mut() {
                app.server_options = Some(proxy::server_options(&file.http));
            }
            if want_tls {
                let cert = certificate.as_ref().ok_or_else(|| {
                    format!(
                        "--listen {listen}: tenant {} has no [tls] section",
                        entry.name
                    )
                })?;
                if file.tls_policy != Default::default() {
                    tracing::warn!(tenant = %entry.name, "[tls] min_version, cipher_suites and groups apply to connections handed by the splitter; a standalone --listen uses Pingora's defaults");
                }
                service.add_tls_with_settings(&addr, None, tls::settings(cert));
            } else {
                service.add_tcp(&addr);
            }
            info!(tenant = %entry.name, addr = %addr, tls = want_tls, "serving standalone (no splitter)");
            server.add_service(service);
        }
        None => {
            let spawned = std::env::var_os(HANDOFF_FD_ENV).is_some();
            let socket = match std::env::var_os(HANDOFF_FD_ENV) {
                // Spawned by the splitter: the socket is inherited.
                Some(_) => switchyard_shared::sys::take_inherited_fd(HANDOFF_FD_ENV)
                    .map_err(|e| e.to_string())?,
                // Started by hand (e.g. a systemd unit per site): join the pool.
                None => {
                    let path = tenant_dir.join(switchyard_shared::handoff::HANDOFF_SOCKET_NAME);
                    let socket = switchyard_shared::handoff::seqpacket_connect(&path).map_err(|e| {
                        format!(
                            "cannot join the splitter at {} ({e}); is it running with this host file? To run without a splitter pass --listen ADDR[,tls]",
                            path.display()
                        )
                    })?;
                    info!(tenant = %entry.name, path = %path.display(), "joining the splitter's pool over handoff.sock");
                    socket
                }
            };
            let mut app = pingora::proxy::http_proxy(&conf, logic);
            app.server_options = Some(proxy::server_options(&file.http));
            let acceptor = match &certificate {
                Some(cert) => {
                    // Shared ticket keys: a session resumes on whichever
                    // process the splitter hands the next connection to.
                    let tickets: Option<Arc<dyn rustls::server::ProducesTickets>> = match file
                        .tls_policy
                        .session_tickets
                    {
                        true => match session_tickets::SharedTickets::open(&tenant_dir) {
                            Ok(tickets) => Some(Arc::new(tickets)),
                            Err(e) => {
                                tracing::warn!(tenant = %entry.name, error = %e, "cannot use the shared session ticket keys; sessions resume only on the process that made them");
                                None
                            }
                        },
                        false => None,
                    };
                    Some(pingora::listeners::tls::Acceptor::from_server_config(
                        Arc::new(
                            tls::server_config(cert, &file.tls_policy, tickets)
                                .map_err(|errors| errors.join("\n"))?,
                        ),
                    ))
                }
                None => None,
            };
            let service = service::HandoffService::new(
                &entry.name,
                socket,
                app,
                acceptor,
                entry.threads,
                stop.clone(),
            )
            .record_client_certificates(file.tls_policy.client_auth.is_some())
            .reload_hosts_from(cli.config.clone(), hosts, certificate.clone())
            .rejoin_when_orphaned(service::Rejoin {
                path: tenant_dir.join(switchyard_shared::handoff::HANDOFF_SOCKET_NAME),
                timeout: host.splitter.orphan_timeout,
                spawned,
            });
            server.add_service(service);
        }
    }
    // What start-up freed (parsing the host file, checking the certificate)
    // goes back to the system: this thread only waits from here on.
    drop(host);
    switchyard_shared::sys::release_free_memory();
    // SIGTERM, a drain from the splitter, or the splitter going away: the
    // same graceful stop (`shutdown`).
    server.run(RunArgs {
        shutdown_signal: stop.signal(),
    });
    Ok(())
}

/// The registration API as a Pingora listening service. A TCP listener uses
/// `SO_REUSEPORT`, so every process of the tenant (and both generations during
/// a rolling restart) can listen on the same address; they share one registry.
fn registration_service(
    tenant: &str,
    settings: &switchyard_shared::config::RegistrationConfig,
    tenant_dir: &std::path::Path,
    registry: Arc<pool::registry::Registry>,
    pools: Vec<Arc<pool::Pool>>,
    certificate: Option<Arc<tls::CertStore>>,
) -> Result<pingora::services::listening::Service<registration::PeerCheck>, String> {
    use std::os::unix::fs::PermissionsExt;
    use switchyard_shared::config::RegistrationListen;
    let token = match &settings.listen {
        RegistrationListen::Tcp { token_file, .. } => Some(
            switchyard_shared::token::read_token(token_file)
                .map_err(|e| format!("tenant {tenant}: [registration] token_file: {e}"))?,
        ),
        RegistrationListen::Unix(_) => None,
    };
    let api = registration::RegistrationApi {
        tenant: tenant.to_string(),
        registry,
        metrics: metrics::TenantMetrics::new(tenant, pools.clone(), certificate),
        pools,
        tenant_dir: tenant_dir.to_path_buf(),
        allow_addrs: settings.allow_addrs.clone(),
        token,
    };
    let own = nix::unistd::getuid().as_raw();
    let mut uids = vec![own, 0];
    uids.extend(&settings.allow_uids);
    let others_allowed = !settings.allow_uids.is_empty() || !settings.allow_gids.is_empty();
    let check_peers = matches!(settings.listen, RegistrationListen::Unix(_));
    let app = registration::PeerCheck::new(api, check_peers, uids, settings.allow_gids.clone());
    let mut service =
        pingora::services::listening::Service::new(format!("registration {tenant}"), app);
    match &settings.listen {
        RegistrationListen::Tcp { addr, .. } => {
            let mut options = pingora::listeners::TcpSocketOptions::default();
            options.so_reuseport = Some(true);
            service.add_tcp_with_settings(&addr.to_string(), options);
            info!(tenant, %addr, "registration API listening (bearer token required)");
        }
        RegistrationListen::Unix(path) => {
            let path = tenant_dir.join(path);
            // Other users reach the socket only when the tenant file allows
            // some: then the directory lets them pass (not list) and the socket
            // is open, and SO_PEERCRED decides; otherwise both stay owner-only.
            let (dir_mode, socket_mode) = if others_allowed {
                (0o711, 0o666)
            } else {
                (0o700, 0o600)
            };
            std::fs::set_permissions(tenant_dir, std::fs::Permissions::from_mode(dir_mode))
                .map_err(|e| {
                    format!(
                        "tenant {tenant}: cannot set the mode of {}: {e}",
                        tenant_dir.display()
                    )
                })?;
            service.add_uds(
                &path.to_string_lossy(),
                Some(std::fs::Permissions::from_mode(socket_mode)),
            );
            info!(tenant, path = %path.display(), "registration API listening (callers checked by SO_PEERCRED)");
        }
    }
    Ok(service)
}

/// Starts ordering (and renewing) the tenant's certificate from its ACME CA;
/// what arrives is checked as files are and then served by `store`.
fn start_acme(
    tenant: &str,
    acme: &AcmeConfig,
    hosts: &[HostPattern],
    tenant_dir: &std::path::Path,
    store: &Arc<tls::CertStore>,
) {
    let names = hosts
        .iter()
        .filter_map(|h| match h {
            HostPattern::Exact(name) => Some(name.clone()),
            HostPattern::Wildcard(_) => None,
        })
        .collect();
    let installing = store.clone();
    let (dir, at, checked_hosts) = (tenant_dir.to_path_buf(), acme.at.clone(), hosts.to_vec());
    let serving = store.clone();
    acme::start(
        tenant.to_string(),
        acme.clone(),
        names,
        tenant_dir.to_path_buf(),
        Box::new(move |chain: &[u8], key: &[u8]| {
            let checked = tls::check_acme_pair(chain, key, &dir, &at, &checked_hosts)
                .map_err(|errors| errors.join("; "))?;
            installing.install(checked.loaded);
            Ok(())
        }),
        Box::new(move || serving.not_after()),
    );
}
