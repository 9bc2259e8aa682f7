//! Admission of l7proxy processes started by hand (a systemd unit per site,
//! say) on a tenant's own `handoff.sock`: who may join, how fast, and how
//! many; once admitted they are read like supervised processes
//! ([`crate::process::read_messages`]) but never respawned.

use crate::helper::Helper;
use crate::tenant::{HandoffSocket, Tenant, MAX_ATTACHED};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;
use switchyard_shared::handoff::{self, Message};
use tracing::{error, info, warn};

/// Most log lines a minute about refused joiners on one tenant's handoff.sock;
/// the rest are counted, not written.
const REFUSAL_LOGS_PER_MINUTE: u32 = 10;

/// How many hand-started processes may be saying `Hello` at once, per tenant.
const MAX_UNADMITTED: usize = 4;
/// How long a hand-started process has to say `Hello`.
const HELLO_DEADLINE: Duration = Duration::from_secs(1);
/// Admits l7proxy processes started by hand on the tenant's own
/// `runtime_dir/tenants/NAME/handoff.sock` (in a 0700 directory owned by the
/// tenant's user, so only that user and root can connect), until the tenant
/// is removed.
///
/// A process is admitted only if its `SO_PEERCRED` uid is the tenant's user's
/// (or the splitter's own when the tenant has none). Such processes are not
/// supervised: they are not respawned, and a rolling restart leaves them alone.
pub async fn admit_attached(tenant: Arc<Tenant>, helper: Arc<Helper>, allowed_uid: u32) {
    let listener = match helper.listen(tenant.name()).await {
        Ok((listener, stale)) => {
            tenant.orphans.open_window(stale);
            listener
        }
        Err(e) => {
            tenant.orphans.open_window(false);
            error!(tenant = %tenant.name(), error = %e, "processes started by hand cannot join this tenant");
            return;
        }
    };
    let listener = match switchyard_shared::sys::register(listener) {
        Ok(listener) => listener,
        Err(e) => {
            error!(tenant = %tenant.name(), error = %e, "cannot watch the tenant's handoff.sock");
            return;
        }
    };
    let admitting = Arc::new(tokio::sync::Semaphore::new(MAX_UNADMITTED));
    // The tenant's user can connect as often as it likes: every line it can
    // cause goes through one throttle.
    let logs = Arc::new(std::sync::Mutex::new(
        switchyard_shared::throttle::Throttle::new(REFUSAL_LOGS_PER_MINUTE),
    ));
    loop {
        let Ok(mut guard) = listener.readable().await else {
            return;
        };
        match switchyard_shared::sys::accept(listener.get_ref().as_fd()) {
            Ok(socket) => {
                let Ok(permit) = admitting.clone().try_acquire_owned() else {
                    if allow(&logs) {
                        warn!(tenant = %tenant.name(), "handoff.sock: too many processes saying Hello at once; refused one");
                    }
                    continue;
                };
                tokio::spawn(attach(
                    socket,
                    tenant.clone(),
                    allowed_uid,
                    permit,
                    logs.clone(),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
            Err(e) => {
                if allow(&logs) {
                    warn!(tenant = %tenant.name(), error = %e, "accept on handoff.sock failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn attach(
    socket: OwnedFd,
    tenant: Arc<Tenant>,
    allowed_uid: u32,
    permit: tokio::sync::OwnedSemaphorePermit,
    logs: Arc<std::sync::Mutex<switchyard_shared::throttle::Throttle>>,
) {
    let name = tenant.name().to_string();
    let peer = match handoff::peer_credentials(socket.as_fd()) {
        Ok(peer) => peer,
        Err(e) => {
            if allow(&logs) {
                warn!(tenant = %name, error = %e, "handoff.sock: cannot read the peer's credentials; refused");
            }
            return;
        }
    };
    if peer.uid != allowed_uid {
        if allow(&logs) {
            warn!(tenant = %name, pid = peer.pid, uid = peer.uid, expected_uid = allowed_uid, "handoff.sock: refused a process running as the wrong user (start it as the tenant's `user`)");
        }
        return;
    }
    let Ok(socket) = switchyard_shared::sys::register(socket) else {
        return;
    };
    let hello = tokio::time::timeout(HELLO_DEADLINE, async {
        let received = socket
            .async_io(tokio::io::Interest::READABLE, |socket| {
                handoff::recv(socket.as_fd())
            })
            .await;
        received.ok().flatten().map(|received| received.message)
    })
    .await;
    let orphan = match hello {
        Ok(Some(Ok(Message::Hello { tenant: said, .. }))) if said == name => false,
        Ok(Some(Ok(Message::Rejoin { tenant: said, .. }))) if said == name => true,
        Ok(Some(Err(e))) => {
            if allow(&logs) {
                warn!(tenant = %name, pid = peer.pid, error = %e, "handoff.sock: refused a process speaking another protocol");
            }
            return;
        }
        _ => {
            if allow(&logs) {
                warn!(tenant = %name, pid = peer.pid, "handoff.sock: refused a process that did not say Hello for this tenant in time");
            }
            return;
        }
    };
    drop(permit);
    if orphan {
        rejoin(tenant, Arc::new(socket), peer.pid, logs).await;
        return;
    }
    if tenant.attached_count() >= MAX_ATTACHED {
        if allow(&logs) {
            warn!(tenant = %name, pid = peer.pid, max = MAX_ATTACHED, "handoff.sock: refused a process: the tenant has the most hand-started processes allowed");
        }
        return;
    }
    let socket: HandoffSocket = Arc::new(socket);
    let key = crate::tenant::new_key();
    tenant.add_attached(key, socket.clone(), peer.pid);
    if allow(&logs) {
        info!(tenant = %name, pid = peer.pid, uid = peer.uid, "a process started by hand joined the pool");
    }
    // Queued acknowledgements are read before the deadline is looked at.
    let reason = tokio::select! {
        biased;
        reason = crate::process::read_messages(&tenant, key, &socket) => reason,
        _ = crate::process::watch_acks(&tenant, key) => "it stopped acknowledging connections".to_string(),
    };
    // One that closed its socket reads nothing more: its connections go to
    // others. One cut off may still read them: not handed a second time.
    if reason == crate::process::END_OF_FILE {
        tenant.remove_process(key);
    } else {
        tenant.remove_live_process(key);
    }
    if allow(&logs) {
        info!(tenant = %name, pid = peer.pid, reason = %reason, "a process started by hand left the pool");
    }
}

/// A process a previous splitter spawned came back: it waits for a slot to
/// adopt it; when every slot is filled it is asked to drain (it finishes what
/// it has, then exits).
async fn rejoin(
    tenant: Arc<Tenant>,
    socket: HandoffSocket,
    pid: u32,
    logs: Arc<std::sync::Mutex<switchyard_shared::throttle::Throttle>>,
) {
    let key = crate::tenant::new_key();
    let offered = tenant.orphans.offer(crate::adoption::Orphan {
        key,
        pid,
        socket: socket.clone(),
    });
    // A stopped on-demand tenant starts a pool to adopt it.
    tenant.nudge();
    if offered.is_err() {
        if allow(&logs) {
            warn!(tenant = %tenant.name(), pid, max = crate::adoption::MAX_WAITING, "handoff.sock: refused a re-attaching process: too many are waiting for a slot");
        }
        return;
    }
    tokio::time::sleep(crate::adoption::CLAIM_WAIT).await;
    if tenant.orphans.withdraw(key).is_none() {
        return; // a slot adopted it
    }
    if allow(&logs) {
        info!(tenant = %tenant.name(), pid, "a process of a previous splitter re-attached, but every slot is filled; asking it to drain");
    }
    // It reads the Drain before the end of the socket, and drains; the
    // socket is not kept.
    let _ = handoff::send(socket.get_ref().as_fd(), &Message::Drain, None);
}

/// Whether the throttle lets one more line through.
fn allow(logs: &std::sync::Mutex<switchyard_shared::throttle::Throttle>) -> bool {
    logs.lock().unwrap_or_else(|p| p.into_inner()).allow()
}
