//! The per-tenant series of the splitter's `/metrics`, read from the tenants'
//! own counters when scraped ([`TenantsCollector`], registered once), so each
//! count lives in one place only.

use crate::conn::PendingLimit;
use crate::listener::Front;
use crate::tenant::{ProcState, Tenant};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A tenant counter as a Prometheus family, and where to read it.
type TenantCounter = (IntCounterVec, fn(&Tenant) -> &AtomicU64);

/// Reads every routed tenant's counters and the pending count at scrape time.
pub struct TenantsCollector {
    front: Arc<Front>,
    /// One scrape at a time: each rebuilds the series from the tenants.
    scrape: Mutex<()>,
    counters: Vec<TenantCounter>,
    held_now: IntGaugeVec,
    ready: IntGaugeVec,
    pending: IntGauge,
}

impl TenantsCollector {
    /// A collector over the tenants `front` routes to.
    pub fn new(front: Arc<Front>) -> TenantsCollector {
        let counter = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["tenant"]).expect("valid metric")
        };
        let gauge = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["tenant"]).expect("valid metric")
        };
        let counters: Vec<TenantCounter> = vec![
            (
                counter(
                    "switchyard_handoffs_total",
                    "Connections handed to a tenant process",
                ),
                |t| &t.counters.handed,
            ),
            (
                counter(
                    "switchyard_held_total",
                    "Connections that waited for a ready tenant process",
                ),
                |t| &t.counters.held,
            ),
            (
                counter(
                    "switchyard_hold_timeouts_total",
                    "Held connections turned away at hold_timeout",
                ),
                |t| &t.counters.hold_timeouts,
            ),
            (
                counter(
                    "switchyard_rehanded_total",
                    "Unacknowledged connections handed again after their process died",
                ),
                |t| &t.counters.rehanded,
            ),
            (
                counter(
                    "switchyard_handoff_socket_full_total",
                    "Handoffs that found a process's handoff socket full",
                ),
                |t| &t.counters.socket_full,
            ),
            (
                counter(
                    "switchyard_process_restarts_total",
                    "Tenant processes respawned after an unexpected exit",
                ),
                |t| &t.counters.restarts,
            ),
        ];
        TenantsCollector {
            front,
            scrape: Mutex::new(()),
            counters,
            held_now: gauge(
                "switchyard_held",
                "Connections waiting for a ready tenant process now",
            ),
            ready: gauge(
                "switchyard_ready_processes",
                "Tenant processes taking connections now",
            ),
            pending: IntGauge::new(
                "switchyard_pending",
                "Connections being peeked or held (limit: max_pending)",
            )
            .expect("valid metric"),
        }
    }

    fn pending_limit(&self) -> &PendingLimit {
        &self.front.pending
    }
}

impl Collector for TenantsCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut descs: Vec<&Desc> = self.counters.iter().flat_map(|(c, _)| c.desc()).collect();
        descs.extend(self.held_now.desc());
        descs.extend(self.ready.desc());
        descs.extend(self.pending.desc());
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        // Tenants come and go with reloads: only the current ones.
        for (vec, _) in &self.counters {
            vec.reset();
        }
        self.held_now.reset();
        self.ready.reset();
        let routes = self.front.routes.load();
        for tenant in routes.tenants() {
            let name = [tenant.name()];
            for (vec, read) in &self.counters {
                vec.with_label_values(&name)
                    .inc_by(read(tenant).load(Ordering::Relaxed));
            }
            let (procs, held) = tenant.snapshot();
            self.held_now.with_label_values(&name).set(held as i64);
            let ready = procs.iter().filter(|p| p.state == ProcState::Ready).count();
            self.ready.with_label_values(&name).set(ready as i64);
        }
        self.pending.set(self.pending_limit().current() as i64);
        let mut families: Vec<MetricFamily> = self
            .counters
            .iter()
            .flat_map(|(vec, _)| vec.collect())
            .collect();
        families.extend(self.held_now.collect());
        families.extend(self.ready.collect());
        families.extend(self.pending.collect());
        families
    }
}
