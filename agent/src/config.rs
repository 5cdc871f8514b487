//! `agent.toml`: typed, unknown keys rejected, every problem collected with
//! file, line and key before anything starts. Commands (`on_kill`,
//! `on_revive`) are only ever read from here, never from the collector.

use common::config::{
    env_override, ByteSize, ConfigError, ConfigErrors, ConfigSource, HumanDuration,
};
use common::flags::{Bucketing, CompileOptions};
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

pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:7600";
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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    pub listen: Option<String>,
    /// Optional bearer token required on the local API (not on /healthz, /readyz).
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub max_body: Option<ByteSize>,
    /// Longest wait for a whole request head (default 10s).
    pub header_timeout: Option<HumanDuration>,
    /// Longest time a whole request body may take (default 30s).
    pub body_timeout: Option<HumanDuration>,
    /// Idle keep-alive connections are closed after this (default 60s).
    pub idle_timeout: Option<HumanDuration>,
    /// Most connections open at once (default 512).
    pub max_connections: Option<usize>,
    /// `Host` values accepted besides loopback names and the listen address
    /// (DNS rebinding guard), e.g. a pod IP.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// File holding a bearer token required on `/metrics` (open when absent).
    pub metrics_token_file: Option<PathBuf>,
}

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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagsSection {
    pub file: Option<PathBuf>,
    pub poll_interval: Option<HumanDuration>,
    /// How `fractional` hashes: "v2" (default, what the flagd daemon answers)
    /// or "v3" (flagd's CBOR bucketing; moves every assignment).
    pub fractional_bucketing: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    pub listen: String,
    pub upstream: String,
    pub upstream_timeout: Option<HumanDuration>,
    /// Longest a client may take to send a request head (default 30s).
    pub header_timeout: Option<HumanDuration>,
    /// Longest a request body may make no progress, client to proxy or proxy
    /// to app (default 60s).
    pub body_timeout: Option<HumanDuration>,
    /// Most client connections open at once (default 4096).
    pub max_connections: Option<usize>,
}

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

/// Serving settings of the local API listener.
#[derive(Debug, Clone)]
pub struct ApiHttp {
    pub limits: common::serve::Limits,
    /// Extra accepted `Host` names or addresses (lowercase, without port).
    pub allowed_hosts: Vec<String>,
    /// Bearer token required on `/metrics` when set.
    pub metrics_token: Option<String>,
}

/// Default cap of the local API listener.
pub const DEFAULT_API_MAX_CONNECTIONS: usize = 512;
/// Default cap of the proxy listener (each proxied connection also holds one
/// to the app).
pub const DEFAULT_PROXY_MAX_CONNECTIONS: usize = 4096;

impl Default for ApiHttp {
    fn default() -> Self {
        ApiHttp {
            limits: common::serve::Limits::with_max_connections(DEFAULT_API_MAX_CONNECTIONS),
            allowed_hosts: Vec::new(),
            metrics_token: None,
        }
    }
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

#[derive(Debug, Clone)]
pub struct Proxy {
    pub listen: SocketAddr,
    pub upstream: http::Uri,
    pub upstream_timeout: Duration,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
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
        let listen_raw = env_override(ENV_API_LISTEN)
            .or(f.api.listen.clone())
            .unwrap_or_else(|| DEFAULT_API_LISTEN.into());
        let api_listen = listen_raw.parse().unwrap_or_else(|_| {
            errs.push(src.error(
                "api.listen",
                format!("invalid address {listen_raw:?} (expected IP:PORT)"),
            ));
            DEFAULT_API_LISTEN.parse().expect("default")
        });
        let api_token = match (&f.api.token, &f.api.token_file) {
            (Some(_), Some(_)) => {
                errs.push(src.error(
                    "api.token_file",
                    "give api.token or api.token_file, not both",
                ));
                None
            }
            (Some(t), None) if t.trim().is_empty() => {
                errs.push(src.error(
                    "api.token",
                    "is empty; an empty token would leave the API open (remove the key for no token)",
                ));
                None
            }
            (Some(t), None) => Some(t.clone()),
            // an empty file must not quietly mean "no token"
            (None, Some(p)) => match read_secret(p) {
                Ok(t) if t.is_empty() => {
                    errs.push(src.error(
                        "api.token_file",
                        format!(
                            "{} is empty; an empty token would leave the API open",
                            p.display()
                        ),
                    ));
                    None
                }
                Ok(t) => Some(t),
                Err(e) => {
                    errs.push(src.error("api.token_file", e));
                    None
                }
            },
            (None, None) => None,
        };
        let collector = match &f.collector {
            None => None,
            Some(c) => {
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
                        errs.push(
                            src.error("collector.url", "required when [collector] is present"),
                        );
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
        };
        let proxy = f.proxy.as_ref().and_then(|p| {
            let listen_raw = env_override(ENV_PROXY_LISTEN).unwrap_or_else(|| p.listen.clone());
            let listen = listen_raw
                .parse()
                .map_err(|_| {
                    errs.push(src.error(
                        "proxy.listen",
                        format!("invalid address {listen_raw:?} (expected IP:PORT)"),
                    ))
                })
                .ok();
            let upstream = p
                .upstream
                .parse::<http::Uri>()
                .ok()
                .filter(|u| u.scheme_str() == Some("http") && u.authority().is_some());
            if upstream.is_none() {
                errs.push(src.error(
                    "proxy.upstream",
                    format!("{:?} is not an http://host:port URL", p.upstream),
                ));
            }
            Some(Proxy {
                listen: listen?,
                upstream: upstream?,
                upstream_timeout: p
                    .upstream_timeout
                    .map(|d| d.0)
                    .unwrap_or(Duration::from_secs(60)),
                header_timeout: p
                    .header_timeout
                    .map(|d| d.0)
                    .unwrap_or(Duration::from_secs(30)),
                body_timeout: p
                    .body_timeout
                    .map(|d| d.0)
                    .unwrap_or(Duration::from_secs(60)),
                max_connections: p.max_connections.unwrap_or(DEFAULT_PROXY_MAX_CONNECTIONS),
            })
        });
        for (key, d) in [
            (
                "proxy.header_timeout",
                f.proxy.as_ref().and_then(|p| p.header_timeout),
            ),
            (
                "proxy.body_timeout",
                f.proxy.as_ref().and_then(|p| p.body_timeout),
            ),
        ] {
            if d.is_some_and(|d| d.0.is_zero()) {
                errs.push(src.error(key, "must be longer than zero"));
            }
        }
        if f.proxy.as_ref().and_then(|p| p.max_connections) == Some(0) {
            errs.push(src.error("proxy.max_connections", "must be at least 1"));
        }
        let api_http = resolve_api_http(src, &f.api, &mut errs);
        let mut killswitches = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (i, k) in f.killswitch.iter().enumerate() {
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
            if !blocks.is_empty() && f.proxy.is_none() {
                errs.push(src.error(&key("block"), "blocking routes needs a [proxy] section"));
            }
            for (leaf, cmd) in [("on_kill", &k.on_kill), ("on_revive", &k.on_revive)] {
                if let Some(first) = cmd.first() {
                    if first.trim().is_empty() {
                        errs.push(src.error(&key(leaf), "the command must not be empty"));
                    }
                }
            }
            killswitches.push(Killswitch {
                name: k.name.clone(),
                blocks,
                status: status.unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE),
                retry_after: k.retry_after.map(|d| d.0),
                body: k
                    .body
                    .clone()
                    .unwrap_or_else(|| format!("{} is switched off", k.name)),
                on_kill: k.on_kill.clone(),
                on_revive: k.on_revive.clone(),
                hook_timeout: k
                    .hook_timeout
                    .map(|d| d.0)
                    .unwrap_or(Duration::from_secs(30)),
            });
        }
        let bucketing = match f.flags.fractional_bucketing.as_deref() {
            None => Bucketing::default(),
            Some(b) => Bucketing::parse(b).unwrap_or_else(|| {
                errs.push(src.error(
                    "flags.fractional_bucketing",
                    format!("{b:?} is not \"v2\" or \"v3\""),
                ));
                Bucketing::default()
            }),
        };
        if f.collector.is_none() && f.flags.file.is_none() {
            errs.push(src.error(
                "flags.file",
                "without a [collector] section the agent needs a local flag file",
            ));
        }
        if errs.is_empty() {
            Ok(Config {
                service: f.service,
                environment: f.environment,
                instance,
                host,
                data_dir,
                labels: f.labels,
                api_listen,
                api_token,
                max_body_bytes: f.api.max_body.map(|b| b.0 as usize).unwrap_or(1_000_000),
                api_http,
                collector,
                flags_file: f.flags.file,
                flags_poll: f
                    .flags
                    .poll_interval
                    .map(|d| d.0)
                    .unwrap_or(Duration::from_secs(1)),
                flag_options: CompileOptions {
                    bucketing,
                    ..CompileOptions::default()
                },
                proxy,
                killswitches,
            })
        } else {
            Err(ConfigErrors(errs))
        }
    }
}

/// The `[api]` keys about how the listener is served.
fn resolve_api_http(src: &ConfigSource, api: &ApiSection, errs: &mut Vec<ConfigError>) -> ApiHttp {
    let mut limits = ApiHttp::default().limits;
    for (key, given, slot) in [
        (
            "api.header_timeout",
            api.header_timeout,
            &mut limits.header_timeout,
        ),
        (
            "api.body_timeout",
            api.body_timeout,
            &mut limits.body_timeout,
        ),
        (
            "api.idle_timeout",
            api.idle_timeout,
            &mut limits.idle_timeout,
        ),
    ] {
        match given {
            Some(d) if d.0.is_zero() => errs.push(src.error(key, "must be longer than zero")),
            Some(d) => *slot = d.0,
            None => {}
        }
    }
    match api.max_connections {
        Some(0) => errs.push(src.error("api.max_connections", "must be at least 1")),
        Some(n) => limits.max_connections = n,
        None => {}
    }
    let mut allowed_hosts = Vec::new();
    for h in &api.allowed_hosts {
        let host = h.trim().trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() || host.contains(['/', ' ', '@']) {
            errs.push(src.error(
                "api.allowed_hosts",
                format!("{h:?} is not a host name or address"),
            ));
        } else {
            allowed_hosts.push(host);
        }
    }
    let metrics_token = api
        .metrics_token_file
        .as_ref()
        .and_then(|p| match read_secret(p) {
            Ok(t) if t.is_empty() => {
                errs.push(src.error(
                    "api.metrics_token_file",
                    format!("{} is empty", p.display()),
                ));
                None
            }
            Ok(t) => Some(t),
            Err(e) => {
                errs.push(src.error("api.metrics_token_file", e));
                None
            }
        });
    ApiHttp {
        limits,
        allowed_hosts,
        metrics_token,
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
