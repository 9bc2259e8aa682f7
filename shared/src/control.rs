//! The control channel's typed messages: what `splitter ctl` asks the running
//! splitter over `runtime_dir/control.sock` (one JSON line each way), and the
//! status document that `ctl status --json`, the admin endpoint's `/status`
//! and its `/metrics` are built from. Programs outside the repository read
//! this JSON: field names are part of the contract.

use serde::{Deserialize, Serialize};

/// A request to the running splitter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase", deny_unknown_fields)]
pub enum CtlRequest {
    /// The fleet's state.
    Status,
    /// Rolling restart of one tenant.
    Restart {
        /// The tenant's name.
        tenant: String,
    },
    /// Re-read the host file.
    Reload,
    /// Graceful stop.
    Stop,
    /// Replace the running splitter by a new one (`binary`, or the installed
    /// one) that takes over its listeners and tenant processes (as SIGUSR2).
    Upgrade {
        /// Another executable to run.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<std::path::PathBuf>,
    },
    /// Sent by a splitter started to take over: the answer is a
    /// [`HandOverReply`] line with the listening sockets in `SCM_RIGHTS`.
    #[serde(rename = "handover")]
    HandOver,
    /// Sent by the new splitter once it is ready to serve: the old one stops
    /// accepting, finishes what it was peeking or holding, releases its
    /// tenants and answers with a [`CtlReply`] before it exits.
    Commit,
}

/// The running splitter's answer to [`CtlRequest::HandOver`]: the listening
/// sockets that ride with it, in the order of the descriptors, followed by
/// the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandOverReply {
    /// The `[[listen]]` addresses, one descriptor each.
    pub listeners: Vec<std::net::SocketAddr>,
}

impl CtlRequest {
    /// The command's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            CtlRequest::Status => "status",
            CtlRequest::Restart { .. } => "restart",
            CtlRequest::Reload => "reload",
            CtlRequest::Stop => "stop",
            CtlRequest::Upgrade { .. } => "upgrade",
            CtlRequest::HandOver => "handover",
            CtlRequest::Commit => "commit",
        }
    }
}

/// The answer to a [`CtlRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CtlReply {
    /// Whether the request was carried out.
    pub ok: bool,
    /// What happened, or why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The fleet's state (for `status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<FleetStatus>,
}

/// The state of a running splitter and its tenants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// The front's pid.
    pub pid: u32,
    /// The privileged helper's pid.
    pub helper_pid: u32,
    /// Seconds since the splitter started.
    pub uptime_s: u64,
    /// Connections peeking or held now.
    pub pending: usize,
    /// Every tenant, in host-file order.
    pub tenants: Vec<TenantStatus>,
}

/// One tenant's state and counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantStatus {
    /// Its name.
    pub name: String,
    /// The names it serves.
    pub hosts: Vec<String>,
    /// `processes` in the host file.
    pub processes_wanted: usize,
    /// The pool generation serving it (bumped by each rolling restart).
    pub generation: u64,
    /// Connections held for it now.
    pub held_now: usize,
    /// Connections handed to its processes.
    pub handed_off: u64,
    /// Connections that waited for a ready process.
    pub held_total: u64,
    /// Held connections turned away at `hold_timeout`.
    pub hold_timeouts: u64,
    /// Unacknowledged connections handed again after their process died.
    pub rehanded: u64,
    /// Handoffs that found a process's socket full.
    pub socket_full: u64,
    /// Connections turned away because `max_held` were held.
    pub held_full: u64,
    /// Times a process was at `max_unacked`.
    pub unacked_full: u64,
    /// Processes respawned after an unexpected exit.
    pub restarts: u64,
    /// The respawn delay in force, milliseconds (0: none).
    pub respawn_backoff_ms: u64,
    /// Its processes.
    pub processes: Vec<ProcessStatus>,
    /// `start` in the host file: `always` or `on-demand`.
    #[serde(default)]
    pub start: String,
    /// Whether its process pool runs (false only for an on-demand tenant
    /// waiting for its next connection).
    #[serde(default)]
    pub running: bool,
    /// Times an on-demand tenant was started by a connection.
    #[serde(default)]
    pub demand_starts: u64,
    /// Times an on-demand tenant was stopped after `idle_stop`.
    #[serde(default)]
    pub idle_stops: u64,
}

/// One tenant process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessStatus {
    /// Its pid, as the kernel reported it.
    pub pid: u32,
    /// `starting`, `ready`, `draining` or `broken` (its handoff socket failed).
    pub state: String,
    /// Seconds since it was spawned or attached.
    pub uptime_s: f64,
    /// Connections handed to it.
    pub handed_off: u64,
    /// Its pool generation (0 for a process started by hand).
    pub generation: u64,
    /// Started by hand and attached through the tenant's handoff.sock.
    pub attached: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_keep_their_wire_names() {
        let restart = CtlRequest::Restart {
            tenant: "shop".into(),
        };
        assert_eq!(
            serde_json::to_string(&restart).unwrap(),
            r#"{"command":"restart","tenant":"shop"}"#
        );
        assert_eq!(
            serde_json::from_str::<CtlRequest>(r#"{"command":"status"}"#).unwrap(),
            CtlRequest::Status
        );
        assert!(serde_json::from_str::<CtlRequest>(r#"{"command":"explode"}"#).is_err());
        assert!(serde_json::from_str::<CtlRequest>(r#"{"command":"restart"}"#).is_err());
    }
}
