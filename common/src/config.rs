//! Config helpers shared by agent and collector: human durations (`"30s"`),
//! sizes (`"64KiB"`), TOML loading that rejects unknown keys, and errors that
//! name file, line and key so `check-config` and startup print one useful line.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Prefix of every environment override; each variable is a const next to the
/// config it overrides so `grep ENV_` lists the whole surface.
pub const ENV_PREFIX: &str = "OPSPLANE_";

/// A config problem, located as precisely as we can: `file:line: key: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one file; `Display` puts one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The text of a config file kept for locating keys when validation (after
/// parsing) finds a problem.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub file: PathBuf,
    pub text: String,
}

impl ConfigSource {
    pub fn read(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: None,
                key: None,
                message: format!("cannot read file: {e}"),
            }])
        })?;
        Ok(Self {
            file: path.to_path_buf(),
            text,
        })
    }

    /// Parses the whole file into `T`; unknown keys are errors when `T` uses
    /// `deny_unknown_fields`. The error names the key path and its line.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigErrors> {
        let de = toml::Deserializer::new(&self.text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let line = inner.span().map(|s| line_of_offset(&self.text, s.start));
            let key = if path.is_empty() || path == "." {
                None
            } else {
                Some(path)
            };
            ConfigErrors(vec![ConfigError {
                file: self.file.clone(),
                line,
                key,
                message: inner.message().trim().to_string(),
            }])
        })
    }

    /// An error for `key` (a dotted path such as `proxy.listen` or
    /// `killswitch[1].status`), with the line where that key is written.
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: self.line_of_key(key),
            key: Some(key.to_string()),
            message: message.into(),
        }
    }

    /// Finds the line of a dotted key path by walking table headers; good
    /// enough for the hand-written files this tool reads.
    pub fn line_of_key(&self, key: &str) -> Option<usize> {
        let mut parts: Vec<&str> = key.split('.').collect();
        let leaf = parts.pop()?;
        let leaf = leaf.split('[').next().unwrap_or(leaf);
        // table path with array indexes, e.g. ["killswitch[1]"]
        let want_table: Vec<(String, Option<usize>)> = parts
            .iter()
            .map(|p| match p.split_once('[') {
                Some((name, rest)) => (
                    name.to_string(),
                    rest.trim_end_matches(']').parse::<usize>().ok(),
                ),
                None => (p.to_string(), None),
            })
            .collect();
        let want_name = want_table
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(".");
        let want_index = want_table.last().and_then(|(_, i)| *i);
        let mut current = String::new();
        let mut array_counts: std::collections::HashMap<String, usize> = Default::default();
        let mut current_index: Option<usize> = None;
        let mut header_line = None;
        for (i, raw) in self.text.lines().enumerate() {
            let line = raw.trim();
            if let Some(h) = line.strip_prefix("[[") {
                let name = h.split("]]").next().unwrap_or("").trim().to_string();
                let n = array_counts.entry(name.clone()).or_insert(0);
                current_index = Some(*n);
                *n += 1;
                current = name;
                if current == want_name && current_index == want_index {
                    header_line = Some(i + 1);
                }
                continue;
            }
            if let Some(h) = line.strip_prefix('[') {
                current = h.split(']').next().unwrap_or("").trim().to_string();
                current_index = None;
                if current == want_name {
                    header_line = Some(i + 1);
                }
                continue;
            }
            let in_table =
                current == want_name && (want_index.is_none() || current_index == want_index);
            if in_table {
                if let Some((k, _)) = line.split_once('=') {
                    if k.trim().trim_matches('"') == leaf {
                        return Some(i + 1);
                    }
                }
            }
        }
        header_line
    }
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Parses `"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"7d"` (and combinations such as `"1h30m"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("invalid duration {s:?}: {e} (use e.g. \"30s\", \"5m\", \"7d\")"))
}

/// Parses a duration and refuses one longer than `max` (`what` names the
/// limit in the message, e.g. "token expiry"): user-supplied durations are
/// always bounded, so no later arithmetic or formatting can overflow.
pub fn parse_duration_max(s: &str, max: Duration, what: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > max {
        return Err(format!(
            "{what} {:?} is too long: at most {}",
            s.trim(),
            humanize(max)
        ));
    }
    Ok(d)
}

/// One year as humantime parses `"1y"` (365.25 days), in milliseconds.
pub const YEAR_MS: u64 = 31_557_600_000;

/// `"10y"`, `"30d"`, `"1h30m"`: the largest units that divide `d` exactly
/// (humantime's own formatting prints every unit down to nanoseconds).
pub fn humanize(d: Duration) -> String {
    const UNITS: [(u64, &str); 6] = [
        // humantime's year: 365.25 days
        (YEAR_MS, "y"),
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
        (1, "ms"),
    ];
    let mut ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, name) in UNITS {
        if ms >= unit {
            out.push_str(&format!("{}{name}", ms / unit));
            ms %= unit;
        }
    }
    out
}

/// Parses `"512"`, `"64KiB"`, `"10MB"`, `"1GiB"` into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (use e.g. \"64KiB\", \"1GiB\")"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => return Err(format!("invalid size unit {other:?} in {s:?}")),
    };
    let v = num * mult as f64;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(format!("size {s:?} out of range"));
    }
    Ok(v as u64)
}

/// A duration written as a human string in config files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// A size written as a human string (or a plain integer of bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => parse_size(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Reads an environment override, ignoring empty values.
pub fn env_override(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Demo {
        service: String,
        #[serde(default)]
        api: Api,
    }
    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Api {
        listen: Option<String>,
        timeout: Option<HumanDuration>,
    }

    fn src(text: &str) -> ConfigSource {
        ConfigSource {
            file: "agent.toml".into(),
            text: text.into(),
        }
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = src("service = \"web\"\n[api]\nlisten = \"x\"\nlisen = 1\n")
            .parse::<Demo>()
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("agent.toml:4: api"), "{msg}");
        assert!(msg.contains("unknown field `lisen`"), "{msg}");
    }

    #[test]
    fn bad_duration_is_located() {
        let e = src("service = \"web\"\n[api]\ntimeout = \"5 parsecs\"\n")
            .parse::<Demo>()
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("agent.toml:3: api.timeout"), "{msg}");
    }

    #[test]
    fn line_of_key_walks_tables_and_arrays() {
        let s = src("a = 1\n[[killswitch]]\nname = \"x\"\n[[killswitch]]\nname = \"y\"\nstatus = 700\n[proxy]\nlisten = \"z\"\n");
        assert_eq!(s.line_of_key("killswitch[1].status"), Some(6));
        assert_eq!(s.line_of_key("killswitch[0].name"), Some(3));
        assert_eq!(s.line_of_key("proxy.listen"), Some(8));
        assert_eq!(s.line_of_key("a"), Some(1));
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert!(parse_duration("").is_err());
        let ten_years = Duration::from_millis(10 * YEAR_MS);
        assert_eq!(
            parse_duration_max("10y", ten_years, "token expiry").unwrap(),
            ten_years
        );
        let e = parse_duration_max("10000y", ten_years, "token expiry").unwrap_err();
        assert!(e.contains("at most 10y"), "{e}");
        let e = parse_duration_max("9223372036854775s", ten_years, "token expiry").unwrap_err();
        assert!(e.contains("at most 10y"), "{e}");
        assert_eq!(humanize(Duration::from_secs(90 * 60)), "1h30m");
        assert!(parse_duration("abc").is_err());
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert!(parse_size("1XB").is_err());
        assert!(parse_size("").is_err());
    }
}
