//! The tenants and their supervisors: start, rolling restart, reload, stop.
//!
//! Each tenant runs one *generation* of supervisors at a time (one per process
//! slot). A rolling restart starts a new generation, waits until all its
//! processes are `Ready`, takes the old generation out of rotation and asks its
//! processes to drain; no connection is refused meanwhile. A reload builds a new
//! routing table and swaps it in atomically.
//!
//! Each tenant also has a *keeper* task that starts and stops its pool by
//! its `start` policy: an `always` tenant's pool runs from the start; an
//! `on-demand` tenant's first pool starts when a connection for it is held
//! (or an orphan of a previous splitter comes back), and stops once it has
//! had no connection for `idle_stop`.

use crate::helper::{Helper, HelperError};
use crate::listener::Front;
use crate::process::supervise;
use crate::routing::RoutingTable;
use crate::tenant::{Origin, Tenant};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use switchyard_shared::config::{
    ConfigErrors, HostConfig, ListenerConfig, SplitterSettings, StartPolicy, TenantConfig,
};
use switchyard_shared::control::{FleetStatus, ProcessStatus, TenantStatus};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// How long a rolling restart waits for the new processes to say `Ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

struct Generation {
    id: u64,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Generation {
    fn start(tenant: &Arc<Tenant>, helper: &Arc<Helper>, id: u64) -> Generation {
        let (stop, stop_rx) = watch::channel(false);
        let tasks = (0..tenant.config().processes)
            .map(|_| {
                tokio::spawn(supervise(
                    tenant.clone(),
                    helper.clone(),
                    id,
                    stop_rx.clone(),
                ))
            })
            .collect();
        Generation { id, stop, tasks }
    }

    /// Drains the generation's processes; resolves when they have exited.
    async fn retire(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

struct Running {
    tenant: Arc<Tenant>,
    /// The pool serving now; `None` while an on-demand tenant is stopped.
    generation: Option<Generation>,
    /// The id of the latest generation started (0: none yet).
    generation_id: u64,
    /// Admits processes started by hand on the tenant's handoff.sock.
    admission: JoinHandle<()>,
    /// Starts and stops the pool by the tenant's `start` policy.
    keeper: Option<JoinHandle<()>>,
}

impl Running {
    /// Stops the tenant's tasks; the returned future drains its processes.
    fn close(self) -> impl std::future::Future<Output = ()> {
        self.tenant.close();
        self.admission.abort();
        if let Some(keeper) = self.keeper {
            keeper.abort();
        }
        async move {
            if let Some(generation) = self.generation {
                generation.retire().await;
            }
        }
    }
}

/// Every tenant the splitter runs.
pub struct Fleet {
    helper: Arc<Helper>,
    /// Whether the splitter was started as root (the host file's rules for a
    /// root splitter apply on reload too).
    as_root: bool,
    front: Arc<Front>,
    started: Instant,
    running: Mutex<Vec<Running>>,
    /// Serialises restarts, reloads and stop; `running` is only held briefly.
    operations: Mutex<()>,
    /// The listeners bound at start (a reload cannot rebind them).
    listeners: Vec<ListenerConfig>,
}

impl Fleet {
    /// Starts every tenant of `config` and routes to them through `front`.
    pub fn start(
        config: &HostConfig,
        helper: Arc<Helper>,
        as_root: bool,
        front: Arc<Front>,
    ) -> Arc<Fleet> {
        let running: Vec<Running> = config
            .tenants
            .iter()
            .map(|t| start_tenant(t.clone(), &helper, config))
            .collect();
        let tenants: Vec<Arc<Tenant>> = running.iter().map(|r| r.tenant.clone()).collect();
        front
            .routes
            .store(Arc::new(RoutingTable::new(config, &tenants)));
        let fleet = Arc::new(Fleet {
            helper,
            as_root,
            front,
            started: Instant::now(),
            running: Mutex::new(running),
            operations: Mutex::new(()),
            listeners: config.listeners.clone(),
        });
        {
            let mut running = fleet
                .running
                .try_lock()
                .expect("nothing else has the fleet yet");
            for run in running.iter_mut() {
                run.keeper = Some(fleet.spawn_keeper(&run.tenant));
            }
        }
        fleet
    }

    fn spawn_keeper(self: &Arc<Self>, tenant: &Arc<Tenant>) -> JoinHandle<()> {
        tokio::spawn(keep(Arc::downgrade(self), tenant.clone()))
    }

    /// Starts `tenant`'s pool if it has none (a stopped on-demand tenant, or
    /// an `always` tenant switched from on-demand by a reload).
    async fn start_pool(&self, tenant: &Arc<Tenant>) {
        let mut running = self.running.lock().await;
        let Some(run) = running.iter_mut().find(|r| Arc::ptr_eq(&r.tenant, tenant)) else {
            return;
        };
        if run.generation.is_some() || tenant.is_closed() {
            return;
        }
        run.generation_id += 1;
        run.generation = Some(Generation::start(tenant, &self.helper, run.generation_id));
        if tenant.config().start == StartPolicy::OnDemand {
            tenant
                .counters
                .demand_starts
                .fetch_add(1, Ordering::Relaxed);
            info!(
                tenant = tenant.name(),
                generation = run.generation_id,
                "on-demand tenant: a connection came; starting its processes"
            );
        }
    }

    /// Stops `tenant`'s pool if it has been idle for `idle_stop`; returns
    /// whether it did.
    async fn stop_if_idle(&self, tenant: &Arc<Tenant>, idle_stop: Duration) -> bool {
        // Not during a restart, reload or upgrade: one of them may be waiting
        // for the processes this would stop. The keeper looks again shortly.
        let Ok(_operation) = self.operations.try_lock() else {
            return false;
        };
        let generation = {
            let mut running = self.running.lock().await;
            let Some(run) = running.iter_mut().find(|r| Arc::ptr_eq(&r.tenant, tenant)) else {
                return false;
            };
            if run.generation.is_none() || !tenant.retire_if_idle(idle_stop) {
                return false;
            }
            run.generation.take()
        };
        tenant.counters.idle_stops.fetch_add(1, Ordering::Relaxed);
        info!(
            tenant = tenant.name(),
            idle_stop = ?idle_stop,
            "on-demand tenant: no connection for idle_stop; stopping its processes (its next connection starts them again)"
        );
        if let Some(generation) = generation {
            tokio::spawn(generation.retire());
        }
        true
    }

    /// Whether `tenant`'s pool runs.
    async fn pool_runs(&self, tenant: &Arc<Tenant>) -> Option<bool> {
        let running = self.running.lock().await;
        running
            .iter()
            .find(|r| Arc::ptr_eq(&r.tenant, tenant))
            .map(|r| r.generation.is_some())
    }

    /// Rolling restart of `name`: new processes first, then the old ones drain.
    /// A tenant file changed on disk is picked up; an invalid one is refused.
    pub async fn restart(&self, name: &str) -> Result<String, FleetError> {
        let _operation = self.operations.lock().await;
        self.restart_now(name).await
    }

    async fn restart_now(&self, name: &str) -> Result<String, FleetError> {
        let (tenant, old_id, runs) = {
            let running = self.running.lock().await;
            let run = running
                .iter()
                .find(|r| r.tenant.name() == name)
                .ok_or_else(|| unknown_tenant(name, &running))?;
            (
                run.tenant.clone(),
                run.generation_id,
                run.generation.is_some(),
            )
        };
        let config = tenant.config();
        self.helper
            .check(name)
            .await
            .map_err(|source| FleetError::NotRestarted {
                tenant: name.to_string(),
                source,
            })?;
        if !runs {
            return Ok(format!(
                "tenant {name} is on demand and stopped: its file is valid, and its next connection starts it"
            ));
        }
        let mut became_ready = tenant.watch_ready();
        let new_id = {
            let mut running = self.running.lock().await;
            match running.iter_mut().find(|r| Arc::ptr_eq(&r.tenant, &tenant)) {
                Some(run) => {
                    run.generation_id += 1;
                    run.generation_id
                }
                None => old_id + 1,
            }
        };
        let new = Generation::start(&tenant, &self.helper, new_id);
        let deadline = Instant::now() + READY_TIMEOUT;
        while tenant.ready_in_generation(new.id) < config.processes {
            let waited = tokio::time::timeout_at(deadline.into(), became_ready.changed()).await;
            if waited.is_err() {
                let id = new.id;
                new.retire().await;
                return Err(FleetError::NotReady {
                    tenant: name.to_string(),
                    generation: id,
                });
            }
        }
        tenant.retire_other_generations(new.id);
        tenant.mark_busy();
        let old = {
            let mut running = self.running.lock().await;
            match running.iter_mut().find(|r| Arc::ptr_eq(&r.tenant, &tenant)) {
                Some(run) => run.generation.replace(new),
                None => Some(new), // removed meanwhile: drain what was just started
            }
        };
        info!(
            tenant = name,
            generation = new_id,
            "rolling restart: new processes ready; draining the old ones"
        );
        if let Some(old) = old {
            tokio::spawn(old.retire());
        }
        Ok(format!(
            "tenant {name} restarted: generation {new_id} ready ({} processes); generation {old_id} draining",
            config.processes
        ))
    }

    /// Re-reads the host file: new tenants are spawned, removed ones drained,
    /// changed ones updated (hosts) or restarted (anything else), and the routing
    /// table is swapped atomically. An invalid file changes nothing.
    pub async fn reload(
        self: &Arc<Self>,
        config_path: &std::path::Path,
    ) -> Result<String, FleetError> {
        let _operation = self.operations.lock().await;
        crate::systemd::reloading();
        let outcome = self.reload_now(config_path).await;
        let status = self.ready_summary().await;
        crate::systemd::notify(&format!("READY=1\nSTATUS={status}"));
        outcome
    }

    /// Waits until every tenant has all its processes ready, at most `limit`;
    /// returns the status line for systemd.
    pub async fn wait_until_ready(&self, limit: Duration) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        // A stopped on-demand tenant is not waited for.
        let tenants: Vec<Arc<Tenant>> = {
            let running = self.running.lock().await;
            running
                .iter()
                .filter(|r| r.generation.is_some())
                .map(|r| r.tenant.clone())
                .collect()
        };
        for tenant in tenants {
            let mut became_ready = tenant.watch_ready();
            while tenant.ready_count() < tenant.config().processes {
                if tokio::time::timeout_at(deadline, became_ready.changed())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        self.ready_summary().await
    }

    /// "N tenants, M of P processes ready[; not ready: …]".
    async fn ready_summary(&self) -> String {
        let running = self.running.lock().await;
        let (mut ready, mut wanted, mut stopped) = (0, 0, 0);
        let mut late = Vec::new();
        for run in running.iter() {
            if run.generation.is_none() {
                stopped += 1;
                continue;
            }
            let (have, want) = (run.tenant.ready_count(), run.tenant.config().processes);
            ready += have.min(want);
            wanted += want;
            if have == 0 {
                late.push(run.tenant.name().to_string());
            }
        }
        let mut status = format!(
            "serving {} tenants, {ready} of {wanted} processes ready",
            running.len()
        );
        if stopped > 0 {
            status.push_str(&format!(
                "; {stopped} on-demand tenants stopped until their next connection"
            ));
        }
        if !late.is_empty() {
            status.push_str(&format!("; not ready: {}", late.join(", ")));
        }
        status
    }

    async fn reload_now(
        self: &Arc<Self>,
        config_path: &std::path::Path,
    ) -> Result<String, FleetError> {
        let config =
            HostConfig::load_as(config_path, self.as_root).map_err(FleetError::InvalidHostFile)?;
        // Tenant files are checked by the tenants' own users, never read here:
        // every added or changed tenant, before anything changes.
        let to_check: Vec<String> = {
            let running = self.running.lock().await;
            config
                .tenants
                .iter()
                .filter(|t| !running.iter().any(|r| &r.tenant.config() == *t))
                .map(|t| t.name.clone())
                .collect()
        };
        let mut problems = Vec::new();
        for name in &to_check {
            if let Err(e) = self.helper.check(name).await {
                problems.push(e.to_string());
            }
        }
        if !problems.is_empty() {
            return Err(FleetError::InvalidTenantFiles(problems.join("\n")));
        }
        self.helper
            .reload()
            .await
            .map_err(FleetError::HelperRefusedReload)?;
        let mut running = self.running.lock().await;
        let mut notes = Vec::new();
        if config.listeners != self.listeners {
            notes.push("[[listen]] changed: a reload does not rebind listeners; restart the splitter to apply".to_string());
        }
        let settings = SplitterSettings {
            unknown_host: self.front.settings.unknown_host.clone(),
            ..config.splitter.clone()
        };
        if settings != self.front.settings {
            notes.push(
                "[splitter] settings other than unknown_host changed: they apply when the splitter restarts".to_string(),
            );
        }
        let mut kept: Vec<Running> = Vec::new();
        let mut to_restart = Vec::new();
        let mut to_retire = Vec::new();
        for run in running.drain(..) {
            match config.tenant(run.tenant.name()) {
                Some(new) => {
                    let old = run.tenant.config();
                    if new == &old {
                        kept.push(run);
                        continue;
                    }
                    let hosts_only = TenantConfig {
                        hosts: old.hosts.clone(),
                        ..new.clone()
                    } == old;
                    run.tenant.set_config(new.clone());
                    if hosts_only {
                        notes.push(format!("tenant {}: hosts changed", new.name));
                    } else {
                        notes.push(format!(
                            "tenant {}: settings changed, rolling restart",
                            new.name
                        ));
                        to_restart.push(new.name.clone());
                    }
                    kept.push(run);
                }
                None => {
                    notes.push(format!("tenant {}: removed, draining", run.tenant.name()));
                    to_retire.push(run);
                }
            }
        }
        for t in &config.tenants {
            if !kept.iter().any(|r| r.tenant.name() == t.name) {
                notes.push(format!("tenant {}: added", t.name));
                let mut run = start_tenant(t.clone(), &self.helper, &config);
                run.keeper = Some(self.spawn_keeper(&run.tenant));
                kept.push(run);
            }
        }
        let tenants: Vec<Arc<Tenant>> = kept.iter().map(|r| r.tenant.clone()).collect();
        self.front
            .routes
            .store(Arc::new(RoutingTable::new(&config, &tenants)));
        // Every process re-reads the host file for its 421 checks (the names
        // of every tenant, and who takes unknown names) and its certificate
        // files, if they changed.
        for run in &kept {
            run.tenant.notify_hosts_changed();
            // Its keeper looks at `start` and `idle_stop` again.
            run.tenant.nudge();
        }
        *running = kept;
        drop(running);
        for run in to_retire {
            tokio::spawn(run.close());
        }
        for name in to_restart {
            if let Err(e) = self.restart_now(&name).await {
                notes.push(e.to_string());
            }
        }
        if notes.is_empty() {
            notes.push("no change".into());
        }
        info!(changes = %notes.join("; "), "reloaded the host file");
        // The splitter never reads tenant files, so it cannot see their edits.
        notes.push(
            "(a reload re-reads the host file only; a tenant whose own file changed picks it up with `splitter ctl restart TENANT`)"
                .into(),
        );
        Ok(notes.join("\n"))
    }

    /// Every tenant's request statistics (summed over its processes) as
    /// Prometheus text, for the admin endpoint's `/metrics`.
    pub async fn tenant_stats_text(&self) -> String {
        let stats: Vec<(String, switchyard_shared::tenant_stats::TenantStats)> = {
            let running = self.running.lock().await;
            running
                .iter()
                .map(|r| (r.tenant.name().to_string(), r.tenant.stats()))
                .collect()
        };
        let named: Vec<(&str, &switchyard_shared::tenant_stats::TenantStats)> =
            stats.iter().map(|(name, s)| (name.as_str(), s)).collect();
        let mut text = String::new();
        switchyard_shared::tenant_stats::render(&named, &mut text);
        text
    }

    /// Connections held for a tenant, or handed and not yet acknowledged.
    pub async fn unacknowledged(&self) -> usize {
        let running = self.running.lock().await;
        running.iter().map(|r| r.tenant.in_flight()).sum()
    }

    /// Drains every tenant; resolves when all their processes have exited.
    pub async fn stop(&self) {
        let _operation = self.operations.lock().await;
        let mut running = self.running.lock().await;
        let waits: Vec<_> = running
            .drain(..)
            .map(|run| tokio::spawn(run.close()))
            .collect();
        for wait in waits {
            let _ = wait.await;
        }
    }

    /// The state of every tenant and process, as `ctl status --json` prints it.
    pub async fn status(&self) -> FleetStatus {
        let running = self.running.lock().await;
        let tenants = running
            .iter()
            .map(|run| {
                let t = &run.tenant;
                let config = t.config();
                let (procs, held) = t.snapshot();
                let count = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
                TenantStatus {
                    name: t.name().to_string(),
                    hosts: config.hosts.iter().map(|h| h.to_string()).collect(),
                    processes_wanted: config.processes,
                    generation: run.generation_id,
                    held_now: held,
                    handed_off: count(&t.counters.handed),
                    held_total: count(&t.counters.held),
                    hold_timeouts: count(&t.counters.hold_timeouts),
                    rehanded: count(&t.counters.rehanded),
                    socket_full: count(&t.counters.socket_full),
                    held_full: count(&t.counters.held_full),
                    unacked_full: count(&t.counters.unacked_full),
                    restarts: count(&t.counters.restarts),
                    respawn_backoff_ms: count(&t.counters.backoff_ms),
                    processes: procs
                        .iter()
                        .map(|p| ProcessStatus {
                            pid: p.pid,
                            state: p.state.as_str().to_string(),
                            uptime_s: (p.uptime_s * 10.0).round() / 10.0,
                            handed_off: p.handed,
                            generation: match p.origin {
                                Origin::Supervised { generation } => generation,
                                Origin::Attached => 0,
                            },
                            attached: p.origin == Origin::Attached,
                        })
                        .collect(),
                    start: config.start.as_str().to_string(),
                    running: run.generation.is_some(),
                    demand_starts: count(&t.counters.demand_starts),
                    idle_stops: count(&t.counters.idle_stops),
                }
            })
            .collect();
        FleetStatus {
            pid: std::process::id(),
            helper_pid: self.helper.pid(),
            uptime_s: self.started.elapsed().as_secs(),
            pending: self.front.pending.current(),
            tenants,
        }
    }
}

fn start_tenant(config: TenantConfig, helper: &Arc<Helper>, host: &HostConfig) -> Running {
    let allowed_uid = crate::isolation::identity(&config)
        .ok()
        .and_then(|identity| identity.uid)
        .unwrap_or_else(|| nix::unistd::getuid().as_raw());
    let tenant = Tenant::new(
        config,
        host.splitter.hold_timeout,
        host.splitter.max_unacked,
    );
    tokio::spawn(tenant.clone().expire_held());
    let generation = (tenant.config().start == StartPolicy::Always)
        .then(|| Generation::start(&tenant, helper, 1));
    let admission = tokio::spawn(crate::attach::admit_attached(
        tenant.clone(),
        helper.clone(),
        allowed_uid,
    ));
    Running {
        generation_id: u64::from(generation.is_some()),
        tenant,
        generation,
        admission,
        keeper: None,
    }
}

/// A tenant's keeper: starts its pool when it has none and should (an
/// `always` tenant, or an on-demand tenant a connection is waiting for), and
/// stops an on-demand tenant's pool after `idle_stop` without a connection.
/// Ends when the tenant is removed or the fleet is gone.
async fn keep(fleet: Weak<Fleet>, tenant: Arc<Tenant>) {
    loop {
        if tenant.is_closed() {
            return;
        }
        let config = tenant.config();
        let pause = {
            let Some(fleet) = fleet.upgrade() else { return };
            let Some(runs) = fleet.pool_runs(&tenant).await else {
                return;
            };
            match (config.start, runs) {
                (StartPolicy::Always, false) => {
                    fleet.start_pool(&tenant).await;
                    continue;
                }
                (StartPolicy::OnDemand, false) => {
                    if tenant.has_waiting() {
                        fleet.start_pool(&tenant).await;
                        continue;
                    }
                    None
                }
                (StartPolicy::Always, true) => None,
                (StartPolicy::OnDemand, true) => {
                    let idle = tenant.idle_for();
                    if idle >= config.idle_stop
                        && fleet.stop_if_idle(&tenant, config.idle_stop).await
                    {
                        continue;
                    }
                    // Look again when it could first have been idle long
                    // enough (a connection meanwhile moves that on).
                    Some(
                        config
                            .idle_stop
                            .saturating_sub(idle)
                            .max(Duration::from_millis(100)),
                    )
                }
            }
        };
        match pause {
            None => tenant.nudged().await,
            Some(pause) => {
                tokio::select! {
                    _ = tenant.nudged() => {}
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

fn unknown_tenant(name: &str, running: &[Running]) -> FleetError {
    warn!(tenant = name, "control: unknown tenant");
    FleetError::UnknownTenant {
        name: name.to_string(),
        known: running
            .iter()
            .map(|r| r.tenant.name())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Why a restart or reload was refused or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// No running tenant has this name.
    #[error("no tenant named {name:?} (tenants: {known})")]
    UnknownTenant {
        /// The name asked for.
        name: String,
        /// The running tenants' names, comma-separated.
        known: String,
    },
    /// The tenant's file is invalid or could not be checked; nothing changed.
    #[error("tenant {tenant} not restarted: {}", match source {
        HelperError::Refused(problems) => format!("its file is invalid:\n{problems}"),
        other => format!("its file could not be checked: {other}"),
    })]
    NotRestarted {
        /// The tenant.
        tenant: String,
        /// What the check said.
        source: HelperError,
    },
    /// The new processes did not become ready; the old ones keep serving.
    #[error("tenant {tenant}: the new processes (generation {generation}) were not ready within {READY_TIMEOUT:?}; the old ones keep serving (see the tenant's log lines)")]
    NotReady {
        /// The tenant.
        tenant: String,
        /// The generation that was started and stopped again.
        generation: u64,
    },
    /// The host file is invalid; nothing changed.
    #[error("reload refused, nothing changed:\n{0}")]
    InvalidHostFile(ConfigErrors),
    /// Added or changed tenants' files are invalid; nothing changed.
    #[error("reload refused, nothing changed:\n{0}")]
    InvalidTenantFiles(String),
    /// The helper could not re-read the host file; nothing changed.
    #[error("reload refused, nothing changed: {0}")]
    HelperRefusedReload(HelperError),
}
