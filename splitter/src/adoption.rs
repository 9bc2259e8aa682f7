//! Adoption of tenant processes that a previous splitter spawned: after a
//! crash or an upgrade they re-attach on the tenant's `handoff.sock` with
//! `Rejoin`, and fill the tenant's process slots instead of new spawns.
//!
//! A slot about to spawn first asks [`Orphans::claim`]. When the tenant's
//! `handoff.sock` was left over from a splitter that did not stop cleanly,
//! the adoption window is open for [`ADOPTION_WINDOW`]: the slot waits for an
//! orphan until then, and spawns only if none comes.

use crate::tenant::{HandoffSocket, ProcKey};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// How long a starting splitter waits for orphans of a tenant whose
/// `handoff.sock` was left over (orphans retry every 100 ms).
pub const ADOPTION_WINDOW: Duration = Duration::from_secs(3);

/// How long an orphan waits for a free slot before it is asked to drain.
pub const CLAIM_WAIT: Duration = Duration::from_secs(2);

/// Most re-attached processes waiting for a slot at once, per tenant; more
/// are refused (each holds a descriptor of the front's while it waits).
pub const MAX_WAITING: usize = 16;

/// How long a slot waits to learn whether orphans may come.
const WINDOW_UNKNOWN_WAIT: Duration = Duration::from_secs(2);

/// A re-attached process waiting for a slot.
#[derive(Debug)]
pub struct Orphan {
    /// Its key in the pool once adopted.
    pub key: ProcKey,
    /// Its pid from `SO_PEERCRED` (the kernel's, not its own word).
    pub pid: u32,
    /// The splitter's end of its new handoff socket.
    pub socket: HandoffSocket,
}

/// The orphans of one tenant, and whether more may come.
#[derive(Debug)]
pub struct Orphans {
    waiting: Mutex<Vec<Orphan>>,
    arrived: Notify,
    /// `None` until the tenant's `handoff.sock` is bound; then until when
    /// orphans are waited for (a past instant: not at all).
    window: watch::Sender<Option<Instant>>,
}

impl Default for Orphans {
    fn default() -> Self {
        Orphans {
            waiting: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            window: watch::channel(None).0,
        }
    }
}

impl Orphans {
    /// Says whether orphans may come: `stale` when the tenant's
    /// `handoff.sock` was left over from a splitter that did not stop cleanly.
    pub fn open_window(&self, stale: bool) {
        let until = Instant::now()
            + if stale {
                ADOPTION_WINDOW
            } else {
                Duration::ZERO
            };
        self.window.send_replace(Some(until));
    }

    /// A re-attached process offers itself to a slot; given back when
    /// [`MAX_WAITING`] are waiting already.
    pub fn offer(&self, orphan: Orphan) -> Result<(), Orphan> {
        let mut waiting = self.lock();
        if waiting.len() >= MAX_WAITING {
            return Err(orphan);
        }
        waiting.push(orphan);
        drop(waiting);
        self.arrived.notify_waiters();
        Ok(())
    }

    /// Whether any orphan waits for a slot.
    pub fn any(&self) -> bool {
        !self.lock().is_empty()
    }

    /// Takes back the orphan `key` if no slot claimed it.
    pub fn withdraw(&self, key: ProcKey) -> Option<Orphan> {
        let mut waiting = self.lock();
        let at = waiting.iter().position(|o| o.key == key)?;
        Some(waiting.swap_remove(at))
    }

    /// For a slot about to spawn: an orphan to adopt instead, waiting for one
    /// while the adoption window is open.
    pub async fn claim(&self) -> Option<Orphan> {
        let mut window = self.window.subscribe();
        let _ = tokio::time::timeout(WINDOW_UNKNOWN_WAIT, window.wait_for(Option::is_some)).await;
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(orphan) = self.lock().pop() {
                return Some(orphan);
            }
            let until = (*window.borrow())?;
            if Instant::now() >= until {
                return None;
            }
            tokio::select! {
                _ = arrived => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Orphan>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}
