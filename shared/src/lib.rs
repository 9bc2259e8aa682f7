//! Code that both Switchyard binaries need, and nothing else.
//!
//! * [`config`]: the host file and tenant files — schema, parsing and whole-file
//!   validation, with every error located as `FILE:LINE:COL`.
//! * [`handoff`]: the versioned wire protocol between the splitter and an l7proxy
//!   process, carrying accepted sockets in `SCM_RIGHTS`.
//! * [`host`]: host-name normalisation and the exact/wildcard host table.
//! * [`units`]: duration and size strings (`"500ms"`, `"256MiB"`).
//! * [`logging`]: the `tracing` subscriber both binaries install.
//!
//! The splitter links this crate, so it must stay free of Pingora and of anything
//! that reads private keys.

pub mod config;
pub mod handoff;
pub mod host;
pub mod logging;
pub mod units;
