//! `[collector]`: where the spine connects (URL, enrollment token, CA),
//! and how often it reports.

use super::{env_override, read_secret, ENV_COLLECTOR_URL, ENV_ENROLL_TOKEN};
use common::config::{ConfigError, ConfigSource, HumanDuration};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorSection {
    pub url: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub heartbeat_interval: Option<HumanDuration>,
    /// PEM file of the CA that signed the collector's certificate (https URLs);
    /// the system's web roots are trusted otherwise.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Collector {
    pub url: String,
    /// Enrollment token (needed until the agent holds its own credential).
    pub enroll_token: Option<String>,
    pub heartbeat_interval: Duration,
    /// Extra trusted CA certificate (PEM) for an https collector.
    pub ca_pem: Option<Vec<u8>>,
}

pub(super) fn resolve(
    src: &ConfigSource,
    c: &CollectorSection,
    errs: &mut Vec<ConfigError>,
) -> Option<Collector> {
    let url = env_override(ENV_COLLECTOR_URL).or(c.url.clone());
    let url = match url {
        Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
            Some(u.trim_end_matches('/').to_string())
        }
        Some(u) => {
            errs.push(src.error(
                "collector.url",
                format!("{u:?} is not an http:// or https:// URL"),
            ));
            None
        }
        None => {
            errs.push(src.error("collector.url", "required when [collector] is present"));
            None
        }
    };
    let enroll_token = match (env_override(ENV_ENROLL_TOKEN), &c.token, &c.token_file) {
        (Some(t), _, _) => Some(t),
        (None, Some(_), Some(_)) => {
            errs.push(src.error(
                "collector.token_file",
                "give collector.token or collector.token_file, not both",
            ));
            None
        }
        (None, Some(t), None) => Some(t.clone()),
        // a missing token file is fine once enrolled: checked at startup
        (None, None, Some(p)) => read_secret(p).ok(),
        (None, None, None) => None,
    };
    let hb = c
        .heartbeat_interval
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(10));
    if hb < Duration::from_secs(1) {
        errs.push(src.error("collector.heartbeat_interval", "must be at least 1s"));
    }
    let ca_pem = c.ca_file.as_ref().and_then(|p| match std::fs::read(p) {
        Ok(b) if reqwest::Certificate::from_pem(&b).is_ok() => Some(b),
        Ok(_) => {
            errs.push(src.error(
                "collector.ca_file",
                format!("{} holds no PEM certificate", p.display()),
            ));
            None
        }
        Err(e) => {
            errs.push(src.error(
                "collector.ca_file",
                format!("cannot read {}: {e}", p.display()),
            ));
            None
        }
    });
    url.map(|url| Collector {
        url,
        enroll_token,
        heartbeat_interval: hb,
        ca_pem,
    })
}
