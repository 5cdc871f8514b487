//! flagd's own conformance suite, `open-feature/flagd-testbed` 3.9.0 (vendored
//! unmodified under `tests/testbed`, see its README), run against real agents
//! over OFREP.
//!
//! The `.feature` files are parsed with the `gherkin` crate, Scenario Outlines
//! are expanded with their Examples (tags of Feature, Scenario and Examples
//! add up), and every step of the evaluation scenarios is implemented here as
//! an OpenFeature SDK with an OFREP provider would run it: the context goes to
//! `POST /ofrep/v1/evaluate/flags/{key}` of a real `opsplane-agent` in
//! standalone mode, and the answer becomes resolution details the way the
//! OFREP providers do it (see [`resolve`]). A step no definition matches fails
//! the scenario; nothing passes by default.
//!
//! Two runs, each with its own agents: `v2` (the agent's default config, which
//! answers what the newest flagd release answers) and `v3` (`[flags]
//! fractional_bucketing = "v3"`). Features and tags that are about flagd's
//! daemon protocol rather than evaluation are skipped with their reason, listed
//! in [`EXCLUDED_FEATURES`] and [`EXCLUDED_TAGS`] and in the testbed README.
//!
//! Flag sources mirror the testbed image: the default provider reads
//! `allFlags.json`, the merge of every `flags/*.json` not prefixed `selector`
//! (merged here exactly as the image's launchpad does), with the image's static
//! context `injectedmetadata = "set"` (flagd's `context-value`; the agent's
//! equivalent is a config label, merged into every evaluation context); the
//! `selector` option and the "metadata" provider pick the other files, and the
//! evaluator suite uses `evaluator/flags/testkit-flags.json`. One agent per
//! source and run, started when a scenario first needs it.
//!
//! Each run writes a summary to standard error (passed, failed, skipped with
//! reasons, and every failure with expected and got) and fails if any
//! applicable scenario fails.

use regex::Regex;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;
use std::time::Duration;
use tests::{bin, Agent};

/// Source of the vendored files, shown in every summary.
const TESTBED: &str = "open-feature/flagd-testbed 3.9.0 (82ba89e)";

/// Feature files that are not about evaluation, with the reason.
const EXCLUDED_FEATURES: &[(&str, &str)] = &[
    ("gherkin/config.feature", "flagd provider options (resolver, host, port, TLS, deadlines, env vars): configuration of flagd's own provider, not evaluation"),
    ("gherkin/connection.feature", "gRPC/TLS/unix-socket connection, reconnect and fatal status codes of flagd's daemon protocol"),
    ("gherkin/events.feature", "provider events from flagd's gRPC event stream (ready, error, stale, change); OFREP has no event stream"),
    ("gherkin/rpc-caching.feature", "client-side LRU cache of flagd's RPC provider (reason CACHED)"),
    ("gherkin/selector.feature", "sync-source selection of flagd's in-process provider over gRPC sync"),
    ("gherkin/sync-payload.feature", "sync-metadata handling of flagd's in-process provider over gRPC sync"),
];

/// Tags whose scenarios do not apply to an OFREP remote evaluator, with the reason.
const EXCLUDED_TAGS: &[(&str, &str)] = &[
    ("@fractional-v1", "legacy float bucketing that flagd replaced with v2; the agent offers v2 and v3"),
    ("@deprecated", "deprecated @no-default expectations (FLAG_NOT_FOUND), contradicted by @no-default-variant, which replaces them and runs"),
    ("@grace", "needs a lost connection and stale/ready provider events (flagd daemon protocol)"),
    ("@caching", "client-side cache of flagd's RPC provider"),
    ("@events", "provider events from flagd's gRPC event stream"),
];

/// One of the two runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bucketing {
    V2,
    V3,
}

impl Bucketing {
    fn name(self) -> &'static str {
        match self {
            Bucketing::V2 => "v2",
            Bucketing::V3 => "v3",
        }
    }

    /// Extra `[flags]` lines of the agent config for this run.
    fn flags_config(self) -> &'static str {
        match self {
            Bucketing::V2 => "",
            Bucketing::V3 => "fractional_bucketing = \"v3\"\n",
        }
    }

    /// The fractional tag answered by the other run, with the reason.
    fn other(self) -> (&'static str, &'static str) {
        match self {
            Bucketing::V2 => (
                "@fractional-v3",
                "v3 bucketing (canonical CBOR input): answered by the v3 run",
            ),
            Bucketing::V3 => (
                "@fractional-v2",
                "v2 bucketing: answered by the v2 run (default config)",
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// Flag sources

/// Which flag file an agent serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Source {
    /// `flags/allFlags.json` of the testbed image.
    AllFlags,
    /// `rawflags/selector-flags.json`.
    SelectorFlags,
    /// `rawflags/selector-flag-combined-metadata.json` (the "metadata" provider).
    CombinedMetadata,
    /// `evaluator/flags/testkit-flags.json` (the evaluator suite).
    Evaluator,
}

impl Source {
    /// The `selector` option values the testbed uses.
    fn from_selector(selector: &str) -> Result<Source, String> {
        match selector {
            "flags/allFlags.json" => Ok(Source::AllFlags),
            "rawflags/selector-flags.json" => Ok(Source::SelectorFlags),
            "rawflags/selector-flag-combined-metadata.json" => Ok(Source::CombinedMetadata),
            other => Err(format!("unknown selector {other:?}")),
        }
    }

    /// The flag file this source serves: the upstream file byte for byte
    /// (the `$ref` whitespace cases live in its raw text), or the merge.
    fn flag_file_text(self) -> Result<String, String> {
        let read = |rel: &str| -> Result<String, String> {
            let p = testbed_dir().join(rel);
            std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))
        };
        match self {
            Source::AllFlags => {
                all_flags().map(|v| serde_json::to_string_pretty(&v).unwrap_or_default())
            }
            Source::SelectorFlags => read("flags/selector-flags.json"),
            Source::CombinedMetadata => read("flags/selector-flag-combined-metadata.json"),
            Source::Evaluator => read("evaluator/flags/testkit-flags.json"),
        }
    }

    /// The static context the testbed's flagd config adds (`context-value`
    /// of launchpad's `default` config, which loads these two sources).
    fn labels(self) -> &'static str {
        match self {
            Source::AllFlags | Source::SelectorFlags => "labels = { injectedmetadata = \"set\" }\n",
            Source::CombinedMetadata | Source::Evaluator => "",
        }
    }
}

fn testbed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testbed")
}

/// `allFlags.json` as the testbed image builds it: every `flags/*.json` not
/// prefixed `selector-`, in name order, deep-merged (objects merge key by
/// key, anything else is replaced by the later file).
fn all_flags() -> Result<Value, String> {
    let dir = testbed_dir().join("flags");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") && !n.starts_with("selector-"))
        .collect();
    names.sort();
    let mut merged = Map::new();
    for n in names {
        let p = dir.join(&n);
        let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        match serde_json::from_str(&text) {
            Ok(Value::Object(m)) => deep_merge(&mut merged, m),
            Ok(_) => return Err(format!("{}: not a JSON object", p.display())),
            Err(e) => return Err(format!("{}: {e}", p.display())),
        }
    }
    Ok(Value::Object(merged))
}

fn deep_merge(dst: &mut Map<String, Value>, src: Map<String, Value>) {
    for (k, v) in src {
        match (dst.get_mut(&k), v) {
            (Some(Value::Object(d)), Value::Object(s)) => deep_merge(d, s),
            (_, v) => {
                dst.insert(k, v);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Agents

/// A started agent, or why there is none (every scenario that needs it fails
/// with that reason).
type AgentSlot = Result<Agent, String>;

/// How a failure for want of an agent starts.
const NO_AGENT: &str = "no agent serves";

/// The agents of one run, one per source, started on first use.
struct Agents {
    run: Bucketing,
    dir: PathBuf,
    started: HashMap<Source, AgentSlot>,
    client: reqwest::blocking::Client,
}

impl Agents {
    fn new(run: Bucketing, dir: &Path) -> Agents {
        Agents {
            run,
            dir: dir.to_path_buf(),
            started: HashMap::new(),
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
        }
    }

    fn get(&mut self, source: Source) -> Result<&Agent, String> {
        if !self.started.contains_key(&source) {
            let slot = start_agent(self.run, &self.dir, source);
            self.started.insert(source, slot);
        }
        match &self.started[&source] {
            Ok(a) => Ok(a),
            Err(_) => Err(format!("{NO_AGENT} {source:?} in this run")),
        }
    }

    /// Why agents could not serve, one line per source.
    fn problems(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .started
            .iter()
            .filter_map(|(s, r)| r.as_ref().err().map(|e| format!("{s:?}: {e}")))
            .collect();
        v.sort();
        v
    }
}

/// Writes the flag file and `agent.toml`, checks the config with
/// `check-config` (so a refused key fails fast with the agent's message), and
/// starts the agent; it must be ready, i.e. hold a flag snapshot.
fn start_agent(run: Bucketing, root: &Path, source: Source) -> AgentSlot {
    let dir = root.join(format!("{source:?}").to_lowercase());
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let flags = dir.join("flags.json");
    std::fs::write(&flags, source.flag_file_text()?)
        .map_err(|e| format!("{}: {e}", flags.display()))?;
    let config = dir.join("agent.toml");
    let text = format!(
        "service = \"testbed\"\nenvironment = \"conformance\"\n{}data_dir = {:?}\n[api]\nlisten = \"127.0.0.1:0\"\n[flags]\nfile = {:?}\n{}",
        source.labels(),
        dir.join("data").display().to_string(),
        flags.display().to_string(),
        run.flags_config(),
    );
    std::fs::write(&config, &text).map_err(|e| format!("{}: {e}", config.display()))?;
    let check = Command::new(bin("opsplane-agent"))
        .arg("check-config")
        .arg(&config)
        .output()
        .map_err(|e| format!("check-config: {e}"))?;
    if !check.status.success() {
        return Err(format!(
            "the agent refuses its config ({}): {}",
            check.status,
            String::from_utf8_lossy(&check.stderr).trim()
        ));
    }
    let mut agent = Agent {
        dir: dir.clone(),
        config,
        // set from the agent's `listening` line by `run`
        api_url: String::new(),
        proxy_url: None,
        proc: None,
    };
    agent.run();
    // The flag file is loaded before the listener answers: ready now or never.
    let (status, _) = agent.get("/readyz");
    if status != 200 {
        let log = agent.log_text();
        let why: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("WARN") || l.contains("error"))
            .take(5)
            .collect();
        let why = if why.is_empty() {
            log.trim().to_string()
        } else {
            why.join(" | ")
        };
        return Err(format!(
            "the agent holds no flag snapshot for {source:?} (/readyz {status}); log: {why}"
        ));
    }
    Ok(agent)
}

// ---------------------------------------------------------------------------
// Features and scenarios

/// One step of an expanded scenario.
#[derive(Clone, Debug)]
struct StepSpec {
    keyword: String,
    text: String,
    table: Option<Vec<Vec<String>>>,
    line: usize,
}

/// One runnable scenario: a Scenario, or one Examples row of an Outline.
#[derive(Clone, Debug)]
struct Case {
    file: String,
    line: usize,
    name: String,
    tags: BTreeSet<String>,
    steps: Vec<StepSpec>,
}

/// gherkin-rs refuses a backslash in a table cell unless it starts `\n`,
/// `\|` or `\\`; Cucumber's own parser keeps any other backslash as written
/// (`{\"a\": 1}` and `A\u0000B` in the testbed). Doubling those backslashes
/// first makes gherkin-rs yield exactly what Cucumber yields.
fn keep_unknown_cell_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if !line.trim_start().starts_with('|') {
            out.push_str(line);
            continue;
        }
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.peek() {
                Some(&n) if n == 'n' || n == '|' || n == '\\' => {
                    out.push('\\');
                    out.push(n);
                    chars.next();
                }
                _ => out.push_str("\\\\"),
            }
        }
    }
    out
}

fn tag(t: &str) -> String {
    format!("@{}", t.trim_start_matches('@'))
}

/// Parses one feature file's text and expands it into cases.
fn expand_feature(file: &str, text: &str) -> Result<Vec<Case>, String> {
    let feature = gherkin::Feature::parse(keep_unknown_cell_escapes(text), Default::default())
        .map_err(|e| format!("{file}: gherkin parse error: {e}"))?;
    let feature_tags: BTreeSet<String> = feature.tags.iter().map(|t| tag(t)).collect();
    let mut groups: Vec<(
        Option<&gherkin::Background>,
        BTreeSet<String>,
        &gherkin::Scenario,
    )> = Vec::new();
    for s in &feature.scenarios {
        groups.push((feature.background.as_ref(), feature_tags.clone(), s));
    }
    for r in &feature.rules {
        let mut tags = feature_tags.clone();
        tags.extend(r.tags.iter().map(|t| tag(t)));
        for s in &r.scenarios {
            groups.push((
                r.background.as_ref().or(feature.background.as_ref()),
                tags.clone(),
                s,
            ));
        }
    }
    let to_spec = |s: &gherkin::Step| StepSpec {
        keyword: s.keyword.trim().to_string(),
        text: s.value.clone(),
        table: s.table.as_ref().map(|t| t.rows.clone()),
        line: s.position.line,
    };
    let mut cases = Vec::new();
    for (background, tags, scenario) in groups {
        let mut tags = tags;
        tags.extend(scenario.tags.iter().map(|t| tag(t)));
        let mut steps: Vec<StepSpec> = background
            .map(|b| b.steps.iter().map(to_spec).collect())
            .unwrap_or_default();
        steps.extend(scenario.steps.iter().map(to_spec));
        let base = format!("{} › {}", feature.name.trim(), scenario.name.trim());
        if scenario.examples.is_empty() {
            cases.push(Case {
                file: file.to_string(),
                line: scenario.position.line,
                name: base,
                tags,
                steps,
            });
            continue;
        }
        for ex in &scenario.examples {
            let Some(table) = &ex.table else { continue };
            let Some((header, rows)) = table.rows.split_first() else {
                continue;
            };
            let mut ex_tags = tags.clone();
            ex_tags.extend(ex.tags.iter().map(|t| tag(t)));
            for (i, row) in rows.iter().enumerate() {
                let subst = |s: &str| {
                    let mut out = s.to_string();
                    for (h, v) in header.iter().zip(row) {
                        out = out.replace(&format!("<{h}>"), v);
                    }
                    out
                };
                let steps = steps
                    .iter()
                    .map(|s| StepSpec {
                        keyword: s.keyword.clone(),
                        text: subst(&s.text),
                        table: s.table.as_ref().map(|t| {
                            t.iter()
                                .map(|r| r.iter().map(|c| subst(c)).collect())
                                .collect()
                        }),
                        line: s.line,
                    })
                    .collect();
                let values: Vec<String> = header
                    .iter()
                    .zip(row)
                    .map(|(h, v)| format!("{h}={v}"))
                    .collect();
                cases.push(Case {
                    file: file.to_string(),
                    line: table.position.line + 1 + i,
                    name: format!(
                        "{base} [{}#{}: {}]",
                        ex.name
                            .as_deref()
                            .map(|n| format!("{} ", n.trim()))
                            .unwrap_or_default(),
                        i + 1,
                        values.join(", ")
                    ),
                    tags: ex_tags.clone(),
                    steps,
                });
            }
        }
    }
    Ok(cases)
}

/// Every vendored feature file (relative path), in a stable order.
fn feature_files() -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["gherkin", "evaluator/gherkin"] {
        let dir = testbed_dir().join(sub);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".feature"))
            .collect();
        names.sort();
        out.extend(names.into_iter().map(|n| format!("{sub}/{n}")));
    }
    out
}

// ---------------------------------------------------------------------------
// Values

/// The flag types of the steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FlagType {
    Boolean,
    String,
    Integer,
    Float,
    Object,
}

impl FlagType {
    fn parse(s: &str) -> Result<FlagType, String> {
        match s {
            "Boolean" => Ok(FlagType::Boolean),
            "String" => Ok(FlagType::String),
            "Integer" => Ok(FlagType::Integer),
            "Float" => Ok(FlagType::Float),
            "Object" => Ok(FlagType::Object),
            other => Err(format!("unknown flag type {other:?}")),
        }
    }

    /// Whether an OFREP value has this type, as a typed OpenFeature SDK checks
    /// it: integers must be integral JSON numbers, floats any number.
    fn accepts(self, v: &Value) -> bool {
        match self {
            FlagType::Boolean => v.is_boolean(),
            FlagType::String => v.is_string(),
            FlagType::Integer => v.is_i64() || v.is_u64(),
            FlagType::Float => v.is_number(),
            FlagType::Object => v.is_object() || v.is_array(),
        }
    }
}

/// A JSON value that keeps object keys in the order written (a later
/// duplicate replaces the value in place, as `JSON.parse` does), so object
/// context values reach the agent as an SDK sends them, unsorted.
#[derive(Clone, Debug)]
enum Ordered {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Ordered>),
    Object(Vec<(String, Ordered)>),
}

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Ordered, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Ordered, E> {
                Ok(Ordered::Null)
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Ordered, E> {
                Ok(Ordered::Bool(b))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Ordered, E> {
                Ok(Ordered::Number(n.into()))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Ordered, E> {
                Ok(Ordered::Number(n.into()))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Ordered, E> {
                serde_json::Number::from_f64(n)
                    .map(Ordered::Number)
                    .ok_or_else(|| E::custom("non-finite number"))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Ordered, E> {
                Ok(Ordered::String(s.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Ordered, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element()? {
                    v.push(x);
                }
                Ok(Ordered::Array(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Ordered, A::Error> {
                let mut v: Vec<(String, Ordered)> = Vec::new();
                while let Some((k, x)) = a.next_entry::<String, Ordered>()? {
                    match v.iter_mut().find(|(kk, _)| *kk == k) {
                        Some(slot) => slot.1 = x,
                        None => v.push((k, x)),
                    }
                }
                Ok(Ordered::Object(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Ordered {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Ordered::Null => s.serialize_unit(),
            Ordered::Bool(b) => s.serialize_bool(*b),
            Ordered::Number(n) => n.serialize(s),
            Ordered::String(x) => s.serialize_str(x),
            Ordered::Array(v) => {
                let mut seq = s.serialize_seq(Some(v.len()))?;
                for x in v {
                    seq.serialize_element(x)?;
                }
                seq.end()
            }
            Ordered::Object(v) => {
                let mut m = s.serialize_map(Some(v.len()))?;
                for (k, x) in v {
                    m.serialize_entry(k, x)?;
                }
                m.end()
            }
        }
    }
}

/// Parses an Object cell: JSON as written, or with the `\"` the evaluator
/// suite writes for quotes inside a table cell.
fn parse_object_text(text: &str) -> Result<Ordered, String> {
    serde_json::from_str::<Ordered>(text)
        .or_else(|_| serde_json::from_str::<Ordered>(&text.replace("\\\"", "\"")))
        .map_err(|e| format!("not a JSON object: {text:?}: {e}"))
}

/// A typed step value (defaults, context values, expectations), converted as
/// flagd's own evaluator harness (`core/pkg/evaluator/gherkin_test.go` in
/// open-feature/flagd) converts it: a `String` is taken verbatim, "null"
/// included. Some provider harnesses turn "null" into null instead, but the
/// one row that has it (v3 "basic types", `null` → `bucket8`) was computed
/// from the string: CBOR `"null"` buckets to 8, CBOR null to 12.
fn typed_value(ty: FlagType, text: &str) -> Result<Ordered, String> {
    Ok(match ty {
        FlagType::Boolean => match text.to_ascii_lowercase().as_str() {
            "true" => Ordered::Bool(true),
            "false" => Ordered::Bool(false),
            _ => return Err(format!("not a Boolean: {text:?}")),
        },
        FlagType::String => Ordered::String(text.to_string()),
        FlagType::Integer => Ordered::Number(
            text.trim()
                .parse::<i64>()
                .map_err(|e| format!("not an Integer: {text:?}: {e}"))?
                .into(),
        ),
        FlagType::Float => {
            let f: f64 = text
                .trim()
                .parse()
                .map_err(|e| format!("not a Float: {text:?}: {e}"))?;
            Ordered::Number(
                serde_json::Number::from_f64(f).ok_or_else(|| format!("not finite: {text:?}"))?,
            )
        }
        FlagType::Object => parse_object_text(text)?,
    })
}

fn to_value(o: &Ordered) -> Value {
    serde_json::to_value(o).unwrap_or(Value::Null)
}

/// JSON equality where numbers compare by value (`100` equals `100.0`).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

// ---------------------------------------------------------------------------
// OFREP answer → resolution details

/// What an OpenFeature client gets back from an OFREP provider.
#[derive(Clone, Debug, PartialEq)]
struct Resolution {
    value: Value,
    variant: Option<String>,
    reason: String,
    error_code: Option<String>,
    error_message: Option<String>,
    /// Flag metadata, primitives only (OpenFeature's flag metadata type).
    metadata: Map<String, Value>,
    /// The HTTP status of the answer, for failure messages.
    http_status: u16,
}

impl std::fmt::Display for Resolution {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "value {} reason {} variant {} error {}{} metadata {} (HTTP {})",
            self.value,
            self.reason,
            self.variant.as_deref().unwrap_or("-"),
            self.error_code.as_deref().unwrap_or("-"),
            self.error_message
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default(),
            Value::Object(self.metadata.clone()),
            self.http_status
        )
    }
}

fn primitive_metadata(v: Option<&Value>) -> Map<String, Value> {
    match v {
        Some(Value::Object(m)) => m
            .iter()
            .filter(|(_, v)| v.is_string() || v.is_number() || v.is_boolean())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        _ => Map::new(),
    }
}

/// Turns an OFREP single-evaluation answer into resolution details as the
/// OFREP providers do (`@openfeature/ofrep-core` `toResolutionDetails` and
/// `handleEvaluationError`, the Python provider's `_typecheck_flag_value`):
/// - an error body (`errorCode`) gives the caller's default, reason ERROR and
///   that code (any other failed answer: GENERAL);
/// - a success without a value (DISABLED, or no variant chosen) gives the
///   caller's default with the answer's reason (DEFAULT when there is none);
/// - a value of another type than the flag type asked for gives the caller's
///   default, reason ERROR and TYPE_MISMATCH.
fn resolve(status: u16, body: &str, ty: FlagType, default: &Value) -> Resolution {
    let error = |code: &str, message: String, metadata: Map<String, Value>| Resolution {
        value: default.clone(),
        variant: None,
        reason: "ERROR".into(),
        error_code: Some(code.into()),
        error_message: Some(message),
        metadata,
        http_status: status,
    };
    let parsed: Option<Map<String, Value>> = match serde_json::from_str(body) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    };
    let Some(m) = parsed else {
        return error(
            if (200..300).contains(&status) {
                "PARSE_ERROR"
            } else {
                "GENERAL"
            },
            format!("HTTP {status} with a body that is not a JSON object: {body:.200}"),
            Map::new(),
        );
    };
    if !(200..300).contains(&status) || m.contains_key("errorCode") {
        let code = m
            .get("errorCode")
            .and_then(Value::as_str)
            .filter(|_| matches!(status, 400 | 404) || (200..300).contains(&status))
            .unwrap_or("GENERAL");
        let details = m
            .get("errorDetails")
            .and_then(Value::as_str)
            .unwrap_or_default();
        return error(
            code,
            format!("HTTP {status}: {details}"),
            primitive_metadata(m.get("metadata")),
        );
    }
    let variant = m.get("variant").and_then(Value::as_str).map(str::to_string);
    let reason = m.get("reason").and_then(Value::as_str).map(str::to_string);
    let metadata = primitive_metadata(m.get("metadata"));
    match m.get("value") {
        None | Some(Value::Null) => Resolution {
            value: default.clone(),
            variant,
            reason: reason.unwrap_or_else(|| "DEFAULT".into()),
            error_code: None,
            error_message: None,
            metadata,
            http_status: status,
        },
        Some(v) if !ty.accepts(v) => error(
            "TYPE_MISMATCH",
            format!("a {ty:?} flag was asked for, the value is {v}"),
            metadata,
        ),
        Some(v) => Resolution {
            value: v.clone(),
            variant,
            reason: reason.unwrap_or_default(),
            error_code: None,
            error_message: None,
            metadata,
            http_status: status,
        },
    }
}

// ---------------------------------------------------------------------------
// Steps

/// The state of one scenario.
#[derive(Default)]
struct World {
    source: Option<Source>,
    selector: Option<Source>,
    flag: Option<(FlagType, String, Value)>,
    /// Context entries in the order the steps set them, as JSON text.
    context: Vec<(String, String)>,
    result: Option<Resolution>,
}

impl World {
    fn set_context(&mut self, key: &str, value: &Ordered) {
        let text = serde_json::to_string(value).unwrap_or_else(|_| "null".into());
        match self.context.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = text,
            None => self.context.push((key.to_string(), text)),
        }
    }

    fn result(&self) -> Result<&Resolution, String> {
        self.result
            .as_ref()
            .ok_or_else(|| "no evaluation happened before this step".to_string())
    }

    fn flag(&self) -> Result<&(FlagType, String, Value), String> {
        self.flag
            .as_ref()
            .ok_or_else(|| "no flag was named before this step".to_string())
    }

    /// The OFREP request body: `{"context": {...}}`, keys in step order.
    fn body(&self) -> String {
        let mut s = String::from("{\"context\":{");
        for (i, (k, v)) in self.context.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&serde_json::to_string(k).unwrap_or_default());
            s.push(':');
            s.push_str(v);
        }
        s.push_str("}}");
        s
    }

    fn evaluate(&mut self, agents: &mut Agents) -> Result<(), String> {
        let source = self
            .source
            .ok_or("the flag was evaluated before a provider or evaluator was set up")?;
        let (ty, key, default) = self.flag()?.clone();
        let agent = agents.get(source)?;
        let mut url = reqwest::Url::parse(&agent.api_url).map_err(|e| e.to_string())?;
        url.path_segments_mut()
            .map_err(|_| "agent url cannot be a base")?
            .extend(["ofrep", "v1", "evaluate", "flags", &key]);
        let body = self.body();
        let r = agents
            .client
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .map_err(|e| format!("OFREP request failed: {e}"))?;
        let status = r.status().as_u16();
        let text = r
            .text()
            .map_err(|e| format!("OFREP answer unreadable: {e}"))?;
        self.result = Some(resolve(status, &text, ty, &default));
        Ok(())
    }
}

static STEPS: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    [
        (r#"^an option "([^"]*)" of type "([^"]*)" with value "(.*)"$"#, "option"),
        (r#"^a (stable|metadata) flagd provider$"#, "provider"),
        (r#"^an evaluator$"#, "evaluator"),
        (
            r#"^a (Boolean|String|Integer|Float|Object)-flag with key "([^"]*)" and a (?:default|fallback) value "(.*)"$"#,
            "flag",
        ),
        (
            r#"^a context containing a key "([^"]*)", with type "([^"]*)" and with value "(.*)"$"#,
            "context",
        ),
        (
            r#"^a context containing a nested property with outer key "([^"]*)" and inner key "([^"]*)", with value "(.*)"$"#,
            "nested",
        ),
        (r#"^a context containing a targeting key with value "(.*)"$"#, "targeting-key"),
        (r#"^the flag was evaluated with details$"#, "evaluate"),
        (r#"^the resolved details value should be "(.*)"$"#, "value"),
        (r#"^the reason should be "(.*)"$"#, "reason"),
        (r#"^the error-code should be "(.*)"$"#, "error-code"),
        (r#"^the variant should be "(.*)"$"#, "variant"),
        (r#"^the resolved metadata should contain$"#, "metadata"),
        (r#"^the resolved metadata is empty$"#, "metadata-empty"),
    ]
    .into_iter()
    .map(|(p, n)| (Regex::new(p).expect("step pattern"), n))
    .collect()
});

/// Runs one step; `Err` is the failure message.
fn run_step(world: &mut World, step: &StepSpec, agents: &mut Agents) -> Result<(), String> {
    let Some((re, name)) = STEPS.iter().find(|(re, _)| re.is_match(&step.text)) else {
        return Err("no step definition matches this step".into());
    };
    let caps = re.captures(&step.text).ok_or("step did not match")?;
    let arg = |i: usize| caps.get(i).map(|m| m.as_str()).unwrap_or_default();
    match *name {
        "option" => match (arg(1), arg(2), arg(3)) {
            // The runner caches nothing: every evaluation is a request.
            ("cache", "CacheType", "disabled") => Ok(()),
            ("selector", "String", s) => {
                world.selector = Some(Source::from_selector(s)?);
                Ok(())
            }
            (o, t, v) => Err(format!(
                "provider option {o:?} ({t}) = {v:?} is not supported"
            )),
        },
        "provider" => {
            world.source = Some(match (arg(1), world.selector) {
                ("stable", Some(s)) => s,
                ("stable", None) => Source::AllFlags,
                // launchpad's "metadata" config: the combined-metadata file only
                ("metadata", Some(Source::CombinedMetadata) | None) => Source::CombinedMetadata,
                (p, s) => return Err(format!("a {p} provider with selector {s:?} is not set up")),
            });
            Ok(())
        }
        "evaluator" => {
            world.source = Some(Source::Evaluator);
            Ok(())
        }
        "flag" => {
            let ty = FlagType::parse(arg(1))?;
            let default = to_value(&typed_value(ty, arg(3))?);
            world.flag = Some((ty, arg(2).to_string(), default));
            Ok(())
        }
        "context" => {
            let ty = FlagType::parse(arg(2))?;
            let v = typed_value(ty, arg(3))?;
            world.set_context(arg(1), &v);
            Ok(())
        }
        "nested" => {
            // flagd's step definitions add `{outer: {inner: value}}`, the
            // value always a string.
            let v = Ordered::Object(vec![(arg(2).to_string(), Ordered::String(arg(3).into()))]);
            world.set_context(arg(1), &v);
            Ok(())
        }
        "targeting-key" => {
            world.set_context("targetingKey", &Ordered::String(arg(1).into()));
            Ok(())
        }
        "evaluate" => world.evaluate(agents),
        "value" => {
            let (ty, _, _) = world.flag()?;
            let want = to_value(&typed_value(*ty, arg(1))?);
            let got = world.result()?;
            if json_eq(&want, &got.value) && (*ty != FlagType::Float || got.value.is_number()) {
                Ok(())
            } else {
                Err(format!("expected value {want}, got {got}"))
            }
        }
        "reason" => {
            let got = world.result()?;
            if got.reason == arg(1) {
                Ok(())
            } else {
                Err(format!("expected reason {}, got {got}", arg(1)))
            }
        }
        "error-code" => {
            let got = world.result()?;
            let want = Some(arg(1)).filter(|s| !s.is_empty());
            if got.error_code.as_deref() == want {
                Ok(())
            } else {
                Err(format!(
                    "expected error code {}, got {got}",
                    want.unwrap_or("(none)")
                ))
            }
        }
        "variant" => {
            let got = world.result()?;
            if got.variant.as_deref() == Some(arg(1)) {
                Ok(())
            } else {
                Err(format!("expected variant {}, got {got}", arg(1)))
            }
        }
        "metadata" => {
            let got = world.result()?;
            let table = step.table.as_ref().ok_or("the step has no table")?;
            let (header, rows) = table.split_first().ok_or("empty table")?;
            let col = |name: &str| {
                header
                    .iter()
                    .position(|h| h == name)
                    .ok_or_else(|| format!("table has no {name:?} column"))
            };
            let (k, t, v) = (col("key")?, col("metadata_type")?, col("value")?);
            let mut problems = Vec::new();
            for row in rows {
                let ty = FlagType::parse(&row[t])?;
                let want = to_value(&typed_value(ty, &row[v])?);
                match got.metadata.get(&row[k]) {
                    Some(g) if json_eq(&want, g) && ty.accepts(g) => {}
                    g => problems.push(format!(
                        "{}: expected {want} ({:?}), got {}",
                        row[k],
                        ty,
                        g.map(|g| g.to_string()).unwrap_or_else(|| "nothing".into())
                    )),
                }
            }
            if problems.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "metadata differs: {}; got {got}",
                    problems.join("; ")
                ))
            }
        }
        "metadata-empty" => {
            let got = world.result()?;
            if got.metadata.is_empty() {
                Ok(())
            } else {
                Err(format!("expected no metadata, got {got}"))
            }
        }
        other => Err(format!("step {other} has no implementation")),
    }
}

// ---------------------------------------------------------------------------
// Runs

enum Outcome {
    Passed,
    Failed(String),
    Skipped(String),
}

/// Why a case does not apply to this run, if it does not.
fn skip_reason(case: &Case, run: Bucketing) -> Option<String> {
    if let Some((_, why)) = EXCLUDED_FEATURES.iter().find(|(f, _)| *f == case.file) {
        return Some(format!("{}: {why}", case.file));
    }
    let (other, why) = run.other();
    EXCLUDED_TAGS
        .iter()
        .copied()
        .chain([(other, why)])
        .find(|(t, _)| case.tags.contains(*t))
        .map(|(t, why)| format!("{t}: {why}"))
}

fn run_case(case: &Case, agents: &mut Agents) -> Outcome {
    let mut world = World::default();
    for step in &case.steps {
        if let Err(e) = run_step(&mut world, step, agents) {
            return Outcome::Failed(format!(
                "step `{} {}` (line {}): {e}\n      request body {}",
                step.keyword,
                step.text,
                step.line,
                world.body()
            ));
        }
    }
    Outcome::Passed
}

struct Report {
    agent_problems: Vec<String>,
    passed: usize,
    /// Passed scenarios per feature file.
    passed_by_file: BTreeMap<String, usize>,
    failed: Vec<(String, String)>,
    skipped: BTreeMap<String, usize>,
}

fn run_suite(run: Bucketing) -> Report {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut agents = Agents::new(run, tmp.path());
    let mut report = Report {
        agent_problems: Vec::new(),
        passed: 0,
        passed_by_file: BTreeMap::new(),
        failed: Vec::new(),
        skipped: BTreeMap::new(),
    };
    for file in feature_files() {
        let text = std::fs::read_to_string(testbed_dir().join(&file)).expect("feature file");
        let cases = match expand_feature(&file, &text) {
            Ok(c) => c,
            Err(e) => {
                report.failed.push((file.clone(), e));
                continue;
            }
        };
        if cases.is_empty() {
            report
                .failed
                .push((file.clone(), "no scenario found in this feature".into()));
        }
        for case in cases {
            let outcome = match skip_reason(&case, run) {
                Some(why) => Outcome::Skipped(why),
                None => run_case(&case, &mut agents),
            };
            match outcome {
                Outcome::Passed => {
                    report.passed += 1;
                    *report.passed_by_file.entry(case.file.clone()).or_default() += 1;
                }
                Outcome::Failed(e) => report
                    .failed
                    .push((format!("{}:{} {}", case.file, case.line, case.name), e)),
                Outcome::Skipped(why) => *report.skipped.entry(why).or_default() += 1,
            }
        }
    }
    report.agent_problems = agents.problems();
    report
}

/// Writes the summary straight to standard error (not captured by the test
/// harness, so it shows in every run) and fails on any failed scenario.
fn check(run: Bucketing, report: &Report) {
    let mut s = String::new();
    let skipped: usize = report.skipped.values().sum();
    let _ = writeln!(
        s,
        "\n== {TESTBED}, run {} ({}): scenarios passed {}, failed {}, skipped {}",
        run.name(),
        match run {
            Bucketing::V2 => "agent default config",
            Bucketing::V3 => "agent with [flags] fractional_bucketing = \"v3\"",
        },
        report.passed,
        report.failed.len(),
        skipped
    );
    let by_file: Vec<String> = report
        .passed_by_file
        .iter()
        .map(|(f, n)| format!("{f} {n}"))
        .collect();
    let _ = writeln!(s, "   passed per feature: {}", by_file.join(", "));
    for (why, n) in &report.skipped {
        let _ = writeln!(s, "   skipped {n:>3}  {why}");
    }
    for p in &report.agent_problems {
        let _ = writeln!(s, "   AGENT PROBLEM {p}");
    }
    // Scenarios that failed only because their agent could not start are
    // counted, not listed one by one: the agent problem above says it all.
    let (no_agent, failed): (Vec<_>, Vec<_>) = report
        .failed
        .iter()
        .partition(|(_, e)| e.contains(NO_AGENT));
    for (name, e) in failed {
        let _ = writeln!(s, "   FAILED {name}\n      {e}");
    }
    if let Some((first, _)) = no_agent.first() {
        let _ = writeln!(
            s,
            "   FAILED {} scenarios for want of an agent (see AGENT PROBLEM), the first: {first}",
            no_agent.len()
        );
    }
    let _ = std::io::stderr().write_all(s.as_bytes());
    assert!(
        report.passed + report.failed.len() > 100,
        "run {}: only {} applicable scenarios found; the runner lost scenarios",
        run.name(),
        report.passed + report.failed.len()
    );
    assert!(
        report.failed.is_empty(),
        "run {}: {} of {} applicable testbed scenarios failed (list above)",
        run.name(),
        report.failed.len(),
        report.failed.len() + report.passed
    );
}

#[test]
fn testbed_v2_default_bucketing() {
    let report = run_suite(Bucketing::V2);
    check(Bucketing::V2, &report);
}

#[test]
fn testbed_v3_bucketing() {
    let report = run_suite(Bucketing::V3);
    check(Bucketing::V3, &report);
}

// ---------------------------------------------------------------------------
// The runner's own rules

fn no_agents() -> Agents {
    Agents::new(Bucketing::V2, Path::new("/nonexistent"))
}

#[test]
fn an_unknown_step_fails_the_scenario() {
    let cases = expand_feature(
        "x.feature",
        "Feature: f\n  Scenario: s\n    Given an evaluator\n    Then the moon should be made of cheese\n",
    )
    .expect("parses");
    assert_eq!(cases.len(), 1);
    match run_case(&cases[0], &mut no_agents()) {
        Outcome::Failed(e) => assert!(e.contains("no step definition matches"), "{e}"),
        _ => panic!("an unknown step must fail"),
    }
}

#[test]
fn an_assertion_without_an_evaluation_fails() {
    let cases = expand_feature(
        "x.feature",
        "Feature: f\n  Scenario: s\n    Given an evaluator\n    And a String-flag with key \"k\" and a fallback value \"d\"\n    Then the resolved details value should be \"d\"\n",
    )
    .expect("parses");
    assert!(matches!(
        run_case(&cases[0], &mut no_agents()),
        Outcome::Failed(_)
    ));
}

#[test]
fn outlines_expand_per_examples_row_with_examples_tags() {
    let text = "@f\nFeature: f\n  Background:\n    Given an evaluator\n  @s\n  Scenario Outline: o\n    Given a String-flag with key \"<k>\" and a fallback value \"x\"\n    @fractional-v2\n    Examples: v2\n      | k |\n      | a |\n      | b |\n    @fractional-v3\n    Examples: v3\n      | k |\n      | c |\n";
    let cases = expand_feature("x.feature", text).expect("parses");
    assert_eq!(cases.len(), 3);
    assert_eq!(cases[0].steps.len(), 2, "background steps come first");
    assert_eq!(
        cases[1].steps[1].text,
        "a String-flag with key \"b\" and a fallback value \"x\""
    );
    for c in &cases[..2] {
        assert!(
            c.tags.contains("@f") && c.tags.contains("@s") && c.tags.contains("@fractional-v2")
        );
    }
    assert!(cases[2].tags.contains("@fractional-v3"));
    assert!(skip_reason(&cases[0], Bucketing::V3).is_some());
    assert!(skip_reason(&cases[0], Bucketing::V2).is_none());
    assert!(skip_reason(&cases[2], Bucketing::V2).is_some());
    assert!(skip_reason(&cases[2], Bucketing::V3).is_none());
}

#[test]
fn table_cells_keep_backslashes_as_cucumber_does() {
    let text = "Feature: f\n  Scenario Outline: o\n    Given an evaluator\n    Examples:\n      | v |\n      | A\\u0000B |\n      | {\\\"a\\\": 1} |\n      | a\\|b |\n      | c\\\\d |\n";
    let cases = expand_feature("x.feature", text).expect("parses");
    let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert!(names[0].ends_with("v=A\\u0000B]"), "{names:?}");
    assert!(names[1].ends_with("v={\\\"a\\\": 1}]"), "{names:?}");
    assert!(names[2].ends_with("v=a|b]"), "{names:?}");
    assert!(names[3].ends_with("v=c\\d]"), "{names:?}");
    assert_eq!(
        to_value(&typed_value(FlagType::Object, "{\\\"a\\\": 1}").unwrap()),
        json!({"a": 1})
    );
}

#[test]
fn object_context_values_keep_their_key_order() {
    let v = typed_value(
        FlagType::Object,
        r#"{"b": 2, "a": {"z": 1, "y": []}, "b": 3}"#,
    )
    .unwrap();
    assert_eq!(
        serde_json::to_string(&v).unwrap(),
        r#"{"b":3,"a":{"z":1,"y":[]}}"#
    );
    assert!(matches!(
        typed_value(FlagType::String, "null").unwrap(),
        Ordered::String(s) if s == "null"
    ));
    assert_eq!(
        serde_json::to_string(&typed_value(FlagType::Float, "-0.0").unwrap()).unwrap(),
        "-0.0"
    );
}

#[test]
fn ofrep_answers_become_resolution_details_as_providers_do() {
    let d = json!("dflt");
    let ok = resolve(
        200,
        r#"{"key":"k","value":"hi","reason":"STATIC","variant":"greeting","metadata":{"a":1,"o":{"x":1}}}"#,
        FlagType::String,
        &d,
    );
    assert_eq!(ok.value, json!("hi"));
    assert_eq!(ok.reason, "STATIC");
    assert_eq!(ok.variant.as_deref(), Some("greeting"));
    assert_eq!(ok.error_code, None);
    assert_eq!(
        Value::Object(ok.metadata),
        json!({"a": 1}),
        "only primitive metadata"
    );

    let disabled = resolve(
        200,
        r#"{"key":"k","reason":"DISABLED","variant":"","metadata":{}}"#,
        FlagType::String,
        &d,
    );
    assert_eq!(
        (
            disabled.value,
            disabled.reason.as_str(),
            disabled.error_code
        ),
        (d.clone(), "DISABLED", None)
    );

    let no_reason = resolve(200, r#"{"key":"k"}"#, FlagType::String, &d);
    assert_eq!(
        (no_reason.value, no_reason.reason.as_str()),
        (d.clone(), "DEFAULT")
    );

    let mismatch = resolve(
        200,
        r#"{"key":"k","value":"uno","reason":"STATIC"}"#,
        FlagType::Integer,
        &json!(13),
    );
    assert_eq!(
        (
            mismatch.value,
            mismatch.reason.as_str(),
            mismatch.error_code.as_deref()
        ),
        (json!(13), "ERROR", Some("TYPE_MISMATCH"))
    );
    let float_for_int = resolve(
        200,
        r#"{"key":"k","value":2.5,"reason":"STATIC"}"#,
        FlagType::Integer,
        &json!(1),
    );
    assert_eq!(float_for_int.error_code.as_deref(), Some("TYPE_MISMATCH"));
    let int_for_float = resolve(
        200,
        r#"{"key":"k","value":2,"reason":"STATIC"}"#,
        FlagType::Float,
        &json!(0.1),
    );
    assert_eq!(int_for_float.value, json!(2));

    let parse = resolve(
        400,
        r#"{"key":"k","errorCode":"PARSE_ERROR","errorDetails":"bad"}"#,
        FlagType::String,
        &d,
    );
    assert_eq!(
        (
            parse.value,
            parse.reason.as_str(),
            parse.error_code.as_deref()
        ),
        (d.clone(), "ERROR", Some("PARSE_ERROR"))
    );
    let missing = resolve(
        404,
        r#"{"key":"k","errorCode":"FLAG_NOT_FOUND","errorDetails":"no"}"#,
        FlagType::String,
        &d,
    );
    assert_eq!(missing.error_code.as_deref(), Some("FLAG_NOT_FOUND"));
    let unavailable = resolve(
        503,
        r#"{"errorDetails":"no flag snapshot yet"}"#,
        FlagType::String,
        &d,
    );
    assert_eq!(
        (unavailable.value, unavailable.error_code.as_deref()),
        (d.clone(), Some("GENERAL"))
    );
    let garbage = resolve(200, "<html>", FlagType::String, &d);
    assert_eq!(garbage.error_code.as_deref(), Some("PARSE_ERROR"));
}

#[test]
fn all_flags_merges_like_the_testbed_image() {
    let all = all_flags().expect("merge");
    let flags = all["flags"].as_object().expect("flags");
    assert!(flags.contains_key("boolean-flag") && flags.contains_key("fractional-flag"));
    assert!(
        !flags.contains_key("selector-flag"),
        "selector-* files stay out"
    );
    assert_eq!(all["$evaluators"].as_object().map(|m| m.len()), Some(1));
    let mut a = json!({"x": {"p": 1, "q": [1]}, "y": 1})
        .as_object()
        .cloned()
        .unwrap();
    deep_merge(
        &mut a,
        json!({"x": {"q": [2], "r": 3}, "y": {"z": 1}})
            .as_object()
            .cloned()
            .unwrap(),
    );
    assert_eq!(
        Value::Object(a),
        json!({"x": {"p": 1, "q": [2], "r": 3}, "y": {"z": 1}})
    );
}
