//! Code that both Switchyard binaries need, and nothing else.
//!
//! * [`config`]: the host file and tenant files — schema, parsing and whole-file
//!   validation, with every error located as `FILE:LINE:COL`.
//! * [`control`]: the typed control-channel messages and the status document.
//! * [`handoff`]: the versioned wire protocol between the splitter and an l7proxy
//!   process, carrying accepted sockets in `SCM_RIGHTS`.
//! * [`host`]: host-name normalisation and the exact/wildcard host table.
//! * [`units`]: duration and size strings (`"500ms"`, `"256MiB"`).
//! * [`logging`]: the `tracing` subscriber both binaries install.
//! * [`files`]: reading files named by someone untrusted (regular files, bounded).
//! * [`throttle`]: bounds on log lines a peer can trigger.
//! * [`token`]: bearer tokens for TCP endpoints (read, compared in constant time).
//! * [`net`]: CIDR and port-range rules (`trusted_proxies`, `allow_addrs`).
//!
//! * [`sys`]: safe wrappers over the system calls the binaries need.
//!
//! The splitter links this crate, so it must stay free of Pingora and of anything
//! that reads private keys. `unsafe` code lives only in [`handoff`] (descriptors
//! received with `SCM_RIGHTS`) and [`sys`]; the binaries forbid it.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod control;
pub mod files;
#[allow(unsafe_code)]
pub mod handoff;
pub mod host;
pub mod logging;
pub mod net;
#[allow(unsafe_code)]
pub mod sys;
pub mod tenant_stats;
pub mod text;
pub mod throttle;
pub mod token;
pub mod units;
