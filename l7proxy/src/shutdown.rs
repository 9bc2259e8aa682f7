//! How a tenant process stops: one policy for every way in.
//!
//! SIGTERM, a `Drain` from the splitter, or the splitter going away all start
//! the same graceful stop. [`StopSignal`] is the `ShutdownSignalWatch` handed to
//! Pingora's `Server::run`, so Pingora broadcasts the stop to every service
//! (listeners stop accepting, kept-alive connections answer `Connection:
//! close`). [`Drained`] then exits the process as soon as the work tracked in
//! [`Stop::tracker`] is done (handed connections, and requests on Pingora's own
//! listener), instead of sleeping out Pingora's whole grace period; the grace
//! period stays the upper bound. SIGINT is Pingora's fast shutdown.

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// The process's stop switch and the work a stop waits for.
#[derive(Clone)]
pub struct Stop {
    requested: Arc<watch::Sender<bool>>,
    /// Connections (handed path) and requests (every path) in flight.
    pub tracker: TaskTracker,
}

impl Stop {
    /// A switch not yet pulled, tracking nothing.
    pub fn new() -> Stop {
        Stop {
            requested: Arc::new(watch::channel(false).0),
            tracker: TaskTracker::new(),
        }
    }

    /// Starts a graceful stop, as SIGTERM would (idempotent).
    pub fn request(&self) {
        self.requested.send_replace(true);
    }

    /// The watch to give Pingora's `Server::run`.
    pub fn signal(&self) -> Box<dyn ShutdownSignalWatch> {
        Box::new(StopSignal {
            requested: self.requested.subscribe(),
        })
    }
}

impl Default for Stop {
    fn default() -> Stop {
        Stop::new()
    }
}

/// Pingora's view of [`Stop`]: resolves on SIGTERM, SIGQUIT (there is no
/// listener hand-over in a tenant process) or a requested stop, gracefully; on
/// SIGINT, fast.
struct StopSignal {
    requested: watch::Receiver<bool>,
}

#[async_trait]
impl ShutdownSignalWatch for StopSignal {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut quit), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
            signal(SignalKind::interrupt()),
        ) else {
            warn!("cannot watch SIGTERM/SIGQUIT/SIGINT; only a drain from the splitter stops this process gracefully");
            let mut requested = self.requested.clone();
            let _ = requested.wait_for(|stop| *stop).await;
            return ShutdownSignal::GracefulTerminate;
        };
        let mut requested = self.requested.clone();
        tokio::select! {
            _ = term.recv() => ShutdownSignal::GracefulTerminate,
            _ = quit.recv() => ShutdownSignal::GracefulTerminate,
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = requested.wait_for(|stop| *stop) => ShutdownSignal::GracefulTerminate,
        }
    }
}

/// A background service that exits the process once a graceful stop has begun
/// and the tracked work is done, or after `grace`.
pub struct Drained {
    /// The tenant, for the log lines.
    pub tenant: String,
    /// What the stop waits for.
    pub stop: Stop,
    /// How long kept-alive connections get to finish their current request
    /// before idle ones are closed (Pingora's `cleanup`, run by each service).
    pub settle: Duration,
    /// The longest wait for in-flight work.
    pub grace: Duration,
}

#[async_trait]
impl BackgroundService for Drained {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if !*shutdown.borrow() && shutdown.changed().await.is_err() {
            return;
        }
        info!(
            tenant = %self.tenant,
            in_flight = self.stop.tracker.len(),
            "draining: no new connections; finishing in-flight requests"
        );
        tokio::time::sleep(self.settle).await;
        self.stop.tracker.close();
        match tokio::time::timeout(self.grace, self.stop.tracker.wait()).await {
            Ok(()) => info!(tenant = %self.tenant, "drained: every connection finished; exiting"),
            Err(_) => warn!(
                tenant = %self.tenant,
                in_flight = self.stop.tracker.len(),
                grace = ?self.grace,
                "grace period over with requests still in flight; exiting"
            ),
        }
        std::process::exit(0);
    }
}
