//! Shared pieces of Opsplane: the wire types exchanged by agent and collector,
//! the flag engine (flagd definition format, compiled once per revision), config
//! helpers (durations, sizes, errors that name file, line and key) and a small
//! JSON diff used by the audit log and `flags apply`; the admin API's request
//! and response types (`api`), shared by the collector and `opsctl`.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod config;
pub mod diff;
pub mod flags;
pub mod lifecycle;
pub mod serve;
pub mod telemetry;
pub mod time;
pub mod wire;

/// The version every binary reports (`--version`, `/v1/status`, `_build_info`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
