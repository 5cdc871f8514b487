//! `agent.toml`: typed, unknown keys rejected, every problem collected with
//! file, line and key before anything starts. Commands (`on_kill`,
//! `on_revive`) are only ever read from here, never from the collector.
//!
//! This file holds the top-level keys, the resolved [`Config`] and the
//! loading; each section has its own file: `api.rs` (`[api]`),
//! `collector.rs` (`[collector]`, the spine), `flags.rs` (`[flags]`),
//! `proxy.rs` (`[proxy]`), `killswitches.rs` (`[[killswitch]]`) and
//! `hooks.rs` (the hook keys of a kill switch).

mod api;
mod collector;
mod flags;
mod hooks;
mod killswitches;
mod proxy;

pub use api::{ApiHttp, ApiSection, DEFAULT_API_LISTEN, DEFAULT_API_MAX_CONNECTIONS};
pub use collector::{Collector, CollectorSection};
pub use flags::FlagsSection;
pub use hooks::DEFAULT_HOOK_TIMEOUT;
pub use killswitches::{BlockSection, Killswitch, KillswitchSection};
pub use proxy::{Proxy, ProxySection, DEFAULT_PROXY_MAX_CONNECTIONS};

use common::config::{env_override, ConfigError, ConfigErrors, ConfigSource};
use common::flags::CompileOptions;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const ENV_COLLECTOR_URL: &str = "OPSPLANE_COLLECTOR_URL";
pub const ENV_ENROLL_TOKEN: &str = "OPSPLANE_ENROLL_TOKEN";
pub const ENV_API_LISTEN: &str = "OPSPLANE_API_LISTEN";
pub const ENV_PROXY_LISTEN: &str = "OPSPLANE_PROXY_LISTEN";
/// The agent's own name: the collector reads `OPSPLANE_DATA_DIR`, so one environment can hold both.
pub const ENV_DATA_DIR: &str = "OPSPLANE_AGENT_DATA_DIR";
pub const ENV_INSTANCE: &str = "OPSPLANE_INSTANCE";

pub const DEFAULT_DATA_DIR: &str = "/var/lib/opsplane-agent";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub service: String,
    pub environment: String,
    pub instance: Option<String>,
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub api: ApiSection,
    pub collector: Option<CollectorSection>,
    #[serde(default)]
    pub flags: FlagsSection,
    pub proxy: Option<ProxySection>,
    #[serde(default)]
    pub killswitch: Vec<KillswitchSection>,
}

/// The resolved settings the agent runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub service: String,
    pub environment: String,
    pub instance: String,
    pub host: String,
    pub data_dir: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub api_listen: SocketAddr,
    pub api_token: Option<String>,
    pub max_body_bytes: usize,
    /// How the local API listener is served: limits, Host check, metrics token.
    pub api_http: ApiHttp,
    pub collector: Option<Collector>,
    pub flags_file: Option<PathBuf>,
    pub flags_poll: Duration,
    /// How every revision and the flag file are compiled.
    pub flag_options: CompileOptions,
    pub proxy: Option<Proxy>,
    pub killswitches: Vec<Killswitch>,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
}

fn read_secret(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let src = ConfigSource::read(path)?;
        let file: File = src.parse()?;
        Self::resolve(&src, file)
    }

    pub fn resolve(src: &ConfigSource, f: File) -> Result<Config, ConfigErrors> {
        let mut errs: Vec<ConfigError> = Vec::new();
        if !valid_name(&f.service) {
            errs.push(src.error("service", "required: 1-64 letters, digits, '-', '_', '.'"));
        }
        if !valid_name(&f.environment) {
            errs.push(src.error(
                "environment",
                "required: 1-64 letters, digits, '-', '_', '.'",
            ));
        }
        let host = hostname();
        let instance = env_override(ENV_INSTANCE)
            .or(f.instance.clone())
            .unwrap_or_else(|| host.clone());
        let data_dir = env_override(ENV_DATA_DIR)
            .map(PathBuf::from)
            .or(f.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let access = api::resolve_access(src, &f.api, &mut errs);
        let collector = f
            .collector
            .as_ref()
            .and_then(|c| collector::resolve(src, c, &mut errs));
        let proxy = f
            .proxy
            .as_ref()
            .and_then(|p| proxy::resolve(src, p, &mut errs));
        let api_http = api::resolve_http(src, &f.api, &mut errs);
        let killswitches = killswitches::resolve(src, &f.killswitch, f.proxy.is_some(), &mut errs);
        let flags = flags::resolve(src, &f.flags, f.collector.is_some(), &mut errs);
        if errs.is_empty() {
            Ok(Config {
                service: f.service,
                environment: f.environment,
                instance,
                host,
                data_dir,
                labels: f.labels,
                api_listen: access.listen,
                api_token: access.token,
                max_body_bytes: access.max_body_bytes,
                api_http,
                collector,
                flags_file: flags.file,
                flags_poll: flags.poll,
                flag_options: flags.options,
                proxy,
                killswitches,
            })
        } else {
            Err(ConfigErrors(errs))
        }
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::flags::Bucketing;

    fn load(text: &str) -> Result<Config, ConfigErrors> {
        let src = ConfigSource {
            file: "agent.toml".into(),
            text: text.into(),
        };
        let f: File = src.parse()?;
        Config::resolve(&src, f)
    }

    #[test]
    fn minimal_standalone() {
        let c =
            load("service = \"web\"\nenvironment = \"prod\"\n[flags]\nfile = \"/tmp/f.json\"\n")
                .unwrap();
        assert_eq!(c.api_listen.to_string(), DEFAULT_API_LISTEN);
        assert!(c.collector.is_none());
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let e = load(
            "service = \"web\"\nenvironment = \"prod\"\n[collector]\nurl = \"ftp://x\"\n[[killswitch]]\nname = \"pay\"\nstatus = 200\nblock = [{ path_prefix = \"api\" }]\n",
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(s.contains("agent.toml:4: collector.url"), "{s}");
        assert!(s.contains("agent.toml:7: killswitch[0].status"), "{s}");
        assert!(s.contains("killswitch[0].block"), "{s}");
        assert_eq!(e.0.len(), 4, "{s}");
    }

    #[test]
    fn fractional_bucketing_defaults_to_v2_and_is_checked() {
        let base = "service = \"web\"\nenvironment = \"prod\"\n[flags]\nfile = \"/tmp/f.json\"\n";
        let c = load(base).unwrap();
        assert_eq!(c.flag_options.bucketing, Bucketing::V2);
        let c = load(&format!("{base}fractional_bucketing = \"v3\"\n")).unwrap();
        assert_eq!(c.flag_options.bucketing, Bucketing::V3);
        let c = load(&format!("{base}fractional_bucketing = \"v2\"\n")).unwrap();
        assert_eq!(c.flag_options.bucketing, Bucketing::V2);
        let e = load(&format!("{base}fractional_bucketing = \"v4\"\n")).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("agent.toml:5: flags.fractional_bucketing") && s.contains("\"v4\""),
            "{s}"
        );
    }
}
