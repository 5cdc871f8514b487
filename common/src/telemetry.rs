//! Logging setup shared by the binaries: human text by default, JSON lines
//! with `--log-format json`; level from `OPSPLANE_LOG` (or `RUST_LOG`).

use tracing_subscriber::EnvFilter;

pub const ENV_LOG: &str = "OPSPLANE_LOG";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(format!("unknown log format {s:?} (text or json)")),
        }
    }
}

/// Installs the global subscriber; logs go to stderr so stdout stays for
/// command output. Safe to call twice (the second call is ignored).
pub fn init_logging(format: LogFormat) {
    let filter = std::env::var(ENV_LOG)
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
