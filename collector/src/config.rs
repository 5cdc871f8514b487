//! `collector.toml`: typed, unknown keys rejected, validated before anything
//! starts. Environment overrides (`OPSPLANE_*`) for per-deployment settings.

use common::config::{env_override, ConfigError, ConfigErrors, ConfigSource};
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
    pub admin: Listener,
    #[serde(default)]
    pub status_page: Listener,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestListener {
    pub listen: Option<String>,
    /// PEM certificate chain; with `tls_key`, agents connect over TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
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
}

impl Settings {
    /// Defaults for `run --data-dir DIR`.
    pub fn with_data_dir(dir: &Path) -> Result<Settings, ConfigErrors> {
        let cfg = Config {
            data_dir: dir.to_path_buf(),
            database: None,
            ingest: IngestListener::default(),
            admin: Listener::default(),
            status_page: Listener::default(),
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
    if errors.is_empty() {
        Ok(Settings {
            data_dir,
            ingest_listen,
            admin_listen,
            status_listen,
            ingest_tls,
        })
    } else {
        Err(ConfigErrors(errors))
    }
}
