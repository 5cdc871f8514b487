//! `[[killswitch]]`: the kill switches this agent enforces: the routes the
//! proxy blocks and the answer it gives (the hook keys are read by
//! `hooks.rs` beside this file).

use super::valid_name;
use common::config::{ConfigError, ConfigSource, HumanDuration};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KillswitchSection {
    pub name: String,
    #[serde(default)]
    pub block: Vec<BlockSection>,
    pub status: Option<u16>,
    pub retry_after: Option<HumanDuration>,
    pub body: Option<String>,
    #[serde(default)]
    pub on_kill: Vec<String>,
    #[serde(default)]
    pub on_revive: Vec<String>,
    pub hook_timeout: Option<HumanDuration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockSection {
    pub method: Option<String>,
    pub path_prefix: String,
}

#[derive(Debug, Clone)]
pub struct Killswitch {
    pub name: String,
    pub blocks: Vec<(Option<http::Method>, String)>,
    pub status: http::StatusCode,
    pub retry_after: Option<Duration>,
    pub body: String,
    pub on_kill: Vec<String>,
    pub on_revive: Vec<String>,
    pub hook_timeout: Duration,
}

pub(super) fn resolve(
    src: &ConfigSource,
    sections: &[KillswitchSection],
    has_proxy: bool,
    errs: &mut Vec<ConfigError>,
) -> Vec<Killswitch> {
    let mut killswitches = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (i, k) in sections.iter().enumerate() {
        let key = |leaf: &str| format!("killswitch[{i}].{leaf}");
        if !valid_name(&k.name) {
            errs.push(src.error(&key("name"), "1-64 letters, digits, '-', '_', '.'"));
        } else if !seen.insert(k.name.clone()) {
            errs.push(src.error(
                &key("name"),
                format!("kill switch {:?} declared twice", k.name),
            ));
        }
        let status = http::StatusCode::from_u16(k.status.unwrap_or(503))
            .ok()
            .filter(|s| (400..=599).contains(&s.as_u16()));
        if status.is_none() {
            errs.push(src.error(&key("status"), "must be an HTTP error status (400-599)"));
        }
        let mut blocks = Vec::new();
        for b in &k.block {
            let method = match &b.method {
                None => None,
                Some(m) => match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                    Ok(m) => Some(m),
                    Err(_) => {
                        errs.push(src.error(&key("block"), format!("invalid method {m:?}")));
                        None
                    }
                },
            };
            if !b.path_prefix.starts_with('/') {
                errs.push(src.error(
                    &key("block"),
                    format!("path_prefix {:?} must start with '/'", b.path_prefix),
                ));
            }
            blocks.push((method, b.path_prefix.clone()));
        }
        if !blocks.is_empty() && !has_proxy {
            errs.push(src.error(&key("block"), "blocking routes needs a [proxy] section"));
        }
        let hooks = super::hooks::resolve(src, &key, k, errs);
        killswitches.push(Killswitch {
            name: k.name.clone(),
            blocks,
            status: status.unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE),
            retry_after: k.retry_after.map(|d| d.0),
            body: k
                .body
                .clone()
                .unwrap_or_else(|| format!("{} is switched off", k.name)),
            on_kill: hooks.on_kill,
            on_revive: hooks.on_revive,
            hook_timeout: hooks.timeout,
        });
    }
    killswitches
}
