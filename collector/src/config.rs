//! `collector.toml`: typed, unknown keys rejected, validated before anything
//! starts. Environment overrides (`OPSPLANE_*`) for per-deployment settings.

use common::config::{env_override, ConfigError, ConfigErrors, ConfigSource, HumanDuration};
use common::serve::Limits;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const ENV_DATA_DIR: &str = "OPSPLANE_DATA_DIR";
pub const ENV_INGEST_LISTEN: &str = "OPSPLANE_INGEST_LISTEN";
pub const ENV_ADMIN_LISTEN: &str = "OPSPLANE_ADMIN_LISTEN";
pub const ENV_STATUS_LISTEN: &str = "OPSPLANE_STATUS_LISTEN";

pub const DEFAULT_INGEST: &str = "0.0.0.0:7601";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:7602";
pub const DEFAULT_STATUS: &str = "0.0.0.0:7603";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub data_dir: PathBuf,
    /// `postgres://...`; not available yet (SQLite only in this version).
    pub database: Option<String>,
    #[serde(default)]
    pub ingest: IngestListener,
    #[serde(default)]
    pub admin: AdminListener,
    #[serde(default)]
    pub status_page: Listener,
    #[serde(default)]
    pub approvals: ApprovalsConfig,
}

/// `[admin]`: the listener plus console session settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminListener {
    pub listen: Option<String>,
    /// TLS is not implemented on the admin listener yet, so a non-loopback
    /// `listen` is refused unless this is set (plain HTTP: put a TLS proxy
    /// in front).
    #[serde(default)]
    pub allow_insecure_remote: bool,
    /// Mark the session cookie `Secure`. Set it when a TLS proxy serves
    /// the console over HTTPS (the listener itself has no TLS yet).
    #[serde(default)]
    pub secure_cookie: bool,
    /// Console sessions end after this long without a request (default 15m).
    pub session_idle_timeout: Option<String>,
    /// ... and this long after login whatever happens (default 8h).
    pub session_absolute_timeout: Option<String>,
    /// Longest wait for a whole request head (and TLS handshake).
    pub header_timeout: Option<HumanDuration>,
    /// Longest time a whole request body may take.
    pub body_timeout: Option<HumanDuration>,
    /// Idle keep-alive connections are closed after this.
    pub idle_timeout: Option<HumanDuration>,
    /// Most connections open at once; more are closed at once.
    pub max_connections: Option<usize>,
    /// File holding a bearer token required on `/metrics` (open when absent).
    pub metrics_token_file: Option<PathBuf>,
}

/// The limit keys every listener section has (see `common::serve`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ListenerLimits {
    /// Longest wait for a whole request head (and TLS handshake).
    pub header_timeout: Option<HumanDuration>,
    /// Longest time a whole request body may take.
    pub body_timeout: Option<HumanDuration>,
    /// Idle keep-alive connections are closed after this.
    pub idle_timeout: Option<HumanDuration>,
    /// Most connections open at once; more are closed at once.
    pub max_connections: Option<usize>,
}

/// `[approvals]`: the four-eyes policy the collector starts with (admins
/// can change it in the console; the saved version then wins).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// Flag changes in these environments need a second person.
    #[serde(default)]
    pub protected_environments: Vec<String>,
    /// Creating users or tokens with a role, and changing roles, need a
    /// second person (default true).
    pub grant_roles: Option<bool>,
    /// Pending requests expire after this long (default 24h).
    pub expire_after: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub listen: Option<String>,
    /// Longest wait for a whole request head (and TLS handshake).
    pub header_timeout: Option<HumanDuration>,
    /// Longest time a whole request body may take.
    pub body_timeout: Option<HumanDuration>,
    /// Idle keep-alive connections are closed after this.
    pub idle_timeout: Option<HumanDuration>,
    /// Most connections open at once; more are closed at once.
    pub max_connections: Option<usize>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestListener {
    pub listen: Option<String>,
    /// PEM certificate chain; with `tls_key`, agents connect over TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Longest wait for a whole request head (and TLS handshake).
    pub header_timeout: Option<HumanDuration>,
    /// Longest time a whole request body may take.
    pub body_timeout: Option<HumanDuration>,
    /// Idle keep-alive connections are closed after this.
    pub idle_timeout: Option<HumanDuration>,
    /// Most connections open at once; more are closed at once.
    pub max_connections: Option<usize>,
}

/// The validated, resolved settings the collector runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub ingest_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub status_listen: SocketAddr,
    /// `(certificate, key)` PEM files for the ingest listener.
    pub ingest_tls: Option<(PathBuf, PathBuf)>,
    pub admin: AdminSettings,
    pub approvals: crate::approvals::Policy,
    /// Limits of the three listeners and the `/metrics` token.
    pub listeners: ListenerSettings,
}

/// How the three listeners are served.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    pub ingest: Limits,
    pub admin: Limits,
    pub status: Limits,
    /// Bearer token required on the admin listener's `/metrics` when set.
    pub metrics_token: Option<String>,
}

impl Default for ListenerSettings {
    fn default() -> Self {
        ListenerSettings {
            // agents keep one stream each and post a heartbeat every 10 s:
            // a longer header timeout keeps their keep-alive connections
            ingest: Limits {
                header_timeout: std::time::Duration::from_secs(30),
                ..Limits::with_max_connections(DEFAULT_INGEST_MAX_CONNECTIONS)
            },
            admin: Limits::with_max_connections(DEFAULT_ADMIN_MAX_CONNECTIONS),
            status: Limits {
                body_timeout: std::time::Duration::from_secs(10),
                ..Limits::with_max_connections(DEFAULT_STATUS_MAX_CONNECTIONS)
            },
            metrics_token: None,
        }
    }
}

pub const DEFAULT_INGEST_MAX_CONNECTIONS: usize = 8192;
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 256;
pub const DEFAULT_STATUS_MAX_CONNECTIONS: usize = 1024;

/// Applies one section's limit keys over its defaults.
fn resolve_limits(
    src: &ConfigSource,
    section: &str,
    given: &ListenerLimits,
    mut limits: Limits,
    errors: &mut Vec<ConfigError>,
) -> Limits {
    for (leaf, value, slot) in [
        (
            "header_timeout",
            given.header_timeout,
            &mut limits.header_timeout,
        ),
        ("body_timeout", given.body_timeout, &mut limits.body_timeout),
        ("idle_timeout", given.idle_timeout, &mut limits.idle_timeout),
    ] {
        match value {
            Some(d) if d.0.is_zero() => {
                errors.push(src.error(&format!("{section}.{leaf}"), "must be longer than zero"))
            }
            Some(d) => *slot = d.0,
            None => {}
        }
    }
    match given.max_connections {
        Some(0) => {
            errors.push(src.error(&format!("{section}.max_connections"), "must be at least 1"))
        }
        Some(n) => limits.max_connections = n,
        None => {}
    }
    limits
}

macro_rules! listener_limits {
    ($section:expr) => {
        ListenerLimits {
            header_timeout: $section.header_timeout,
            body_timeout: $section.body_timeout,
            idle_timeout: $section.idle_timeout,
            max_connections: $section.max_connections,
        }
    };
}

/// Console session settings.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub allow_insecure_remote: bool,
    pub secure_cookie: bool,
    pub session_idle_timeout_ms: i64,
    pub session_absolute_timeout_ms: i64,
}

pub const DEFAULT_SESSION_IDLE: &str = "15m";
pub const DEFAULT_SESSION_ABSOLUTE: &str = "8h";
pub const DEFAULT_APPROVAL_EXPIRY: &str = "24h";

impl Settings {
    /// Defaults for `run --data-dir DIR`.
    pub fn with_data_dir(dir: &Path) -> Result<Settings, ConfigErrors> {
        let cfg = Config {
            data_dir: dir.to_path_buf(),
            database: None,
            ingest: IngestListener::default(),
            admin: AdminListener::default(),
            status_page: Listener::default(),
            approvals: ApprovalsConfig::default(),
        };
        let src = ConfigSource {
            file: PathBuf::from("(command line)"),
            text: String::new(),
        };
        resolve(&src, cfg)
    }

    pub fn load(path: &Path) -> Result<Settings, ConfigErrors> {
        let src = ConfigSource::read(path)?;
        let cfg: Config = src.parse()?;
        resolve(&src, cfg)
    }
}

fn resolve(src: &ConfigSource, cfg: Config) -> Result<Settings, ConfigErrors> {
    let mut errors: Vec<ConfigError> = Vec::new();
    if let Some(db) = &cfg.database {
        errors.push(src.error(
            "database",
            format!("{db:?}: only the embedded SQLite store is available in this version; remove the key"),
        ));
    }
    let mut addr = |key: &str, env: &str, given: &Option<String>, default: &str| -> SocketAddr {
        let raw = env_override(env)
            .or_else(|| given.clone())
            .unwrap_or_else(|| default.into());
        match raw.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                errors.push(src.error(
                    key,
                    format!("invalid listen address {raw:?} (expected IP:PORT)"),
                ));
                default.parse().expect("default address")
            }
        }
    };
    let ingest_listen = addr(
        "ingest.listen",
        ENV_INGEST_LISTEN,
        &cfg.ingest.listen,
        DEFAULT_INGEST,
    );
    let admin_listen = addr(
        "admin.listen",
        ENV_ADMIN_LISTEN,
        &cfg.admin.listen,
        DEFAULT_ADMIN,
    );
    let status_listen = addr(
        "status_page.listen",
        ENV_STATUS_LISTEN,
        &cfg.status_page.listen,
        DEFAULT_STATUS,
    );
    let ingest_tls = match (&cfg.ingest.tls_cert, &cfg.ingest.tls_key) {
        (Some(c), Some(k)) => {
            for (key, p) in [("ingest.tls_cert", c), ("ingest.tls_key", k)] {
                if !p.is_file() {
                    errors.push(src.error(key, format!("{} is not a readable file", p.display())));
                }
            }
            Some((c.clone(), k.clone()))
        }
        (None, None) => None,
        (Some(_), None) => {
            errors.push(src.error("ingest.tls_cert", "tls_key is needed as well"));
            None
        }
        (None, Some(_)) => {
            errors.push(src.error("ingest.tls_key", "tls_cert is needed as well"));
            None
        }
    };
    let data_dir = env_override(ENV_DATA_DIR)
        .map(PathBuf::from)
        .unwrap_or(cfg.data_dir);
    if data_dir.as_os_str().is_empty() {
        errors.push(src.error("data_dir", "must not be empty"));
    }
    let listens = [
        ("ingest.listen", ingest_listen),
        ("admin.listen", admin_listen),
        ("status_page.listen", status_listen),
    ];
    for (i, (k1, a1)) in listens.iter().enumerate() {
        for (k2, a2) in &listens[i + 1..] {
            if a1 == a2 && a1.port() != 0 {
                errors.push(src.error(k2, format!("same address as {k1} ({a1}): the admin plane is never shared with another listener")));
            }
        }
    }
    if !admin_listen.ip().is_loopback() && !cfg.admin.allow_insecure_remote {
        errors.push(src.error(
            "admin.listen",
            format!(
                "{admin_listen} is not a loopback address and the admin listener has no TLS yet; \
                 serve it on 127.0.0.1 behind a TLS proxy, or set [admin] allow_insecure_remote = true to accept plain HTTP"
            ),
        ));
    }
    let mut duration_ms = |key: &str, given: &Option<String>, default: &str| -> i64 {
        let raw = given.clone().unwrap_or_else(|| default.into());
        match common::config::parse_duration(&raw) {
            Ok(d) if !d.is_zero() => d.as_millis() as i64,
            Ok(_) => {
                errors.push(src.error(key, "must be longer than zero"));
                1
            }
            Err(e) => {
                errors.push(src.error(key, e));
                1
            }
        }
    };
    let admin = AdminSettings {
        allow_insecure_remote: cfg.admin.allow_insecure_remote,
        secure_cookie: cfg.admin.secure_cookie,
        session_idle_timeout_ms: duration_ms(
            "admin.session_idle_timeout",
            &cfg.admin.session_idle_timeout,
            DEFAULT_SESSION_IDLE,
        ),
        session_absolute_timeout_ms: duration_ms(
            "admin.session_absolute_timeout",
            &cfg.admin.session_absolute_timeout,
            DEFAULT_SESSION_ABSOLUTE,
        ),
    };
    let approvals = crate::approvals::Policy {
        protected_environments: cfg.approvals.protected_environments.clone(),
        grant_roles: cfg.approvals.grant_roles.unwrap_or(true),
        expire_after_ms: duration_ms(
            "approvals.expire_after",
            &cfg.approvals.expire_after,
            DEFAULT_APPROVAL_EXPIRY,
        ),
    };
    if !(0..=crate::approvals::MAX_EXPIRE_AFTER.as_millis() as i64)
        .contains(&approvals.expire_after_ms)
    {
        errors.push(src.error(
            "approvals.expire_after",
            format!(
                "at most {}",
                common::config::humanize(crate::approvals::MAX_EXPIRE_AFTER)
            ),
        ));
    }
    for env in &approvals.protected_environments {
        if !crate::kernel::names::is_valid(env) {
            errors.push(src.error(
                "approvals.protected_environments",
                format!("invalid environment name {env:?}"),
            ));
        }
    }
    let defaults = ListenerSettings::default();
    let metrics_token = cfg.admin.metrics_token_file.as_ref().and_then(|p| {
        match std::fs::read_to_string(p).map(|t| t.trim().to_string()) {
            Ok(t) if !t.is_empty() => Some(t),
            Ok(_) => {
                errors.push(src.error(
                    "admin.metrics_token_file",
                    format!("{} is empty", p.display()),
                ));
                None
            }
            Err(e) => {
                errors.push(src.error(
                    "admin.metrics_token_file",
                    format!("cannot read {}: {e}", p.display()),
                ));
                None
            }
        }
    });
    let listeners = ListenerSettings {
        ingest: resolve_limits(
            src,
            "ingest",
            &listener_limits!(cfg.ingest),
            defaults.ingest,
            &mut errors,
        ),
        admin: resolve_limits(
            src,
            "admin",
            &listener_limits!(cfg.admin),
            defaults.admin,
            &mut errors,
        ),
        status: resolve_limits(
            src,
            "status_page",
            &listener_limits!(cfg.status_page),
            defaults.status,
            &mut errors,
        ),
        metrics_token,
    };
    if errors.is_empty() {
        Ok(Settings {
            listeners,
            data_dir,
            ingest_listen,
            admin_listen,
            status_listen,
            ingest_tls,
            admin,
            approvals,
        })
    } else {
        Err(ConfigErrors(errors))
    }
}
