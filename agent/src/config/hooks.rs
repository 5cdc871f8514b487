//! The hook keys of a `[[killswitch]]` (`on_kill`, `on_revive`,
//! `hook_timeout`): commands from this file only, run without a shell by
//! `exec.rs`.

use super::killswitches::KillswitchSection;
use common::config::{ConfigError, ConfigSource};
use std::time::Duration;

/// Default longest run of one hook.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// The resolved hooks of one kill switch.
pub(super) struct Hooks {
    pub on_kill: Vec<String>,
    pub on_revive: Vec<String>,
    pub timeout: Duration,
}

pub(super) fn resolve(
    src: &ConfigSource,
    key: &dyn Fn(&str) -> String,
    k: &KillswitchSection,
    errs: &mut Vec<ConfigError>,
) -> Hooks {
    for (leaf, cmd) in [("on_kill", &k.on_kill), ("on_revive", &k.on_revive)] {
        if let Some(first) = cmd.first() {
            if first.trim().is_empty() {
                errs.push(src.error(&key(leaf), "the command must not be empty"));
            }
        }
    }
    Hooks {
        on_kill: k.on_kill.clone(),
        on_revive: k.on_revive.clone(),
        timeout: k.hook_timeout.map(|d| d.0).unwrap_or(DEFAULT_HOOK_TIMEOUT),
    }
}
