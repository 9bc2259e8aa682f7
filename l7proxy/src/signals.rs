//! What a tenant process does on signals other than the stop signals (those
//! are [`crate::shutdown`]'s): SIGHUP re-reads the certificate, SIGUSR1 reopens
//! the access log (the logrotate convention). Neither ever stops the process.
//! The certificate files are also looked at every second.

use crate::access_log::AccessLog;
use crate::tls::CertStore;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{info, warn};

/// The background service that answers SIGHUP and SIGUSR1.
pub struct TenantSignals {
    /// The certificate in use, when the tenant serves TLS.
    pub certificate: Option<Arc<CertStore>>,
    /// The access log.
    pub access: Arc<AccessLog>,
}

async fn next(signal: &mut Option<Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[async_trait::async_trait]
impl BackgroundService for TenantSignals {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup = signal(SignalKind::hangup()).ok();
        let mut user1 = signal(SignalKind::user_defined1()).ok();
        if hangup.is_none() || user1.is_none() {
            warn!("cannot watch SIGHUP/SIGUSR1; the certificate is still re-read when its files change");
        }
        let watched = self.certificate.as_ref().filter(|c| c.has_files());
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick(), if watched.is_some() => {
                    // Reads happen only when the files changed, on this
                    // background thread, not on the request threads.
                    if let Some(certificate) = watched {
                        certificate.reload(false);
                    }
                }
                _ = next(&mut hangup) => match watched {
                    Some(certificate) => certificate.reload(true),
                    None => info!("SIGHUP: this tenant has no certificate files to re-read"),
                },
                _ = next(&mut user1) => {
                    info!("SIGUSR1: reopening the access log");
                    self.access.reopen();
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
