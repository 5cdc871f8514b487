//! `[flags]`: the local flag file (standalone mode, or a bootstrap until
//! the collector answers), how often it is polled, and how `fractional`
//! buckets.

use common::config::{ConfigError, ConfigSource, HumanDuration};
use common::flags::{Bucketing, CompileOptions};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagsSection {
    pub file: Option<PathBuf>,
    pub poll_interval: Option<HumanDuration>,
    /// How `fractional` hashes: "v2" (default, what the flagd daemon answers)
    /// or "v3" (flagd's CBOR bucketing; moves every assignment).
    pub fractional_bucketing: Option<String>,
}

/// The resolved `[flags]` section.
pub(super) struct Flags {
    pub file: Option<PathBuf>,
    pub poll: Duration,
    pub options: CompileOptions,
}

pub(super) fn resolve(
    src: &ConfigSource,
    flags: &FlagsSection,
    has_collector: bool,
    errs: &mut Vec<ConfigError>,
) -> Flags {
    let bucketing = match flags.fractional_bucketing.as_deref() {
        None => Bucketing::default(),
        Some(b) => Bucketing::parse(b).unwrap_or_else(|| {
            errs.push(src.error(
                "flags.fractional_bucketing",
                format!("{b:?} is not \"v2\" or \"v3\""),
            ));
            Bucketing::default()
        }),
    };
    if !has_collector && flags.file.is_none() {
        errs.push(src.error(
            "flags.file",
            "without a [collector] section the agent needs a local flag file",
        ));
    }
    Flags {
        file: flags.file.clone(),
        poll: flags
            .poll_interval
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(1)),
        options: CompileOptions {
            bucketing,
            ..CompileOptions::default()
        },
    }
}
