//! The flag engine: flagd flag definitions, compiled once per revision into an
//! immutable plan and evaluated with few allocations.
//!
//! # Format
//!
//! The flagd flag-definition JSON (<https://flagd.dev/reference/flag-definitions/>):
//! `{"$schema"?, "flags": {KEY: {state, variants, defaultVariant?, targeting?,
//! metadata?}}, "$evaluators"?, "metadata"?}`. `{"$ref": NAME}` anywhere in a
//! rule refers to the named evaluator. Each evaluator is compiled once and
//! shared by every rule that refers to it (never copied in), and at the top
//! scope of one evaluation its value is computed once however often it is
//! referred to, so a chain of evaluators each referring to the previous one
//! twice stays linear in size and time. A `$ref` to nothing, or a cycle,
//! makes the flag answer `PARSE_ERROR`, as flagd does.
//!
//! # Semantics: which flagd
//!
//! Evaluation results match `@openfeature/flagd-core` 4.0.1 (the reference the
//! compatibility test `tests/tests/flagd_compat.rs` runs against). That package
//! runs its rules on `json-logic-engine` 5.x in compiled mode, whose JsonLogic
//! differs from the classic `json-logic-js` in ways that change results, and we
//! follow it:
//!
//! * empty arrays **and empty objects** are falsy;
//! * arithmetic and non-strict comparisons on values that do not convert to a
//!   number (`"abc" < 1`, `true == "true"`, any object or array) are
//!   evaluation **errors** (reason `ERROR`, code `GENERAL`), as is division or
//!   modulo by zero; `min`/`max` accept numbers only;
//! * `var` of a missing path *or of a `null` value* gives the default;
//! * `cat` writes `null` as `"null"` (a missing attribute in a bucketing
//!   expression gives e.g. `"my-flagnull"`, as in flagd-core);
//! * `missing` reports keys that are absent (a `null` value is present);
//! * `in` on a string is a substring test, on an array a strict-equality test.
//! * compiled rules share one temporary (`prev`) that `var`, `or`, `and` and
//!   comparisons assign and that a comparison's type check reads, so e.g.
//!   `{"<=": [10, {"var": "age"}]}` with `"age": "abc"` is `false`, not an
//!   error. We replay that register (see `logic::Env`) to agree exactly.
//!
//! Targeting results: `null` → the default variant with reason `DEFAULT`;
//! anything else is converted to a string as JavaScript does (`true` →
//! `"true"`, `1` → `"1"`) and must name a variant (reason `TARGETING_MATCH`,
//! also for `fractional`: flagd-core never reports `SPLIT`), otherwise the
//! evaluation fails with `GENERAL`. No targeting or `{}` → `STATIC`. A
//! `DISABLED` flag evaluates to reason `DISABLED` with no value. A missing,
//! `null` or `""` `defaultVariant` means "code default": reason `DEFAULT`, no
//! value, no variant.
//!
//! `fractional` hashes with MurmurHash3 x86 32-bit, seed 0, and picks
//! `(hash as u64 * total_weight) >> 32` against the cumulative integer
//! weights (default 1; a negative weight counts as 0; a weight that is not an
//! integer, or a total above `i32::MAX`, gives `null`). What is hashed is a
//! compile option, [`Bucketing`]: **v2** (the default, what the flagd daemon
//! answers up to its newest release) hashes the UTF-8 bytes of
//! `flagKey + targetingKey` or of the string the first argument yields (any
//! other value gives `null`); **v3** (flagd's ADR
//! "fractional-non-string-rand-units", flagd-testbed 3.9 `@fractional-v3`)
//! hashes the deterministic CBOR encoding of whatever non-null value the first
//! argument yields, or of `[flagKey, targetingKey]` (`cbor.rs`).
//!
//! # Deliberate differences from flagd-core
//!
//! * **Hashing of non-ASCII bucketing strings.** flagd-core hashes JavaScript
//!   UTF-16 code units with `imurmurhash` (one "byte" per code unit), while the
//!   flagd daemon (Go) hashes UTF-8 bytes. We hash UTF-8 like the daemon, so a
//!   migration from flagd moves nobody; for ASCII strings all three agree.
//! * **What loads.** A flag whose targeting flagd would load is served and
//!   answers as flagd does at evaluation time; each such problem is listed in
//!   [`FlagSet::warnings`], naming the flag and the problem. Unknown
//!   operators, operations with several keys, `$ref` to nothing (or in a
//!   cycle) and lazy operators without an argument array make the flag answer
//!   `PARSE_ERROR` (the value is the caller's default); wrong arity of
//!   `starts_with`, `ends_with`, `sem_ver`, an unknown `sem_ver` operator
//!   and literal `fractional` buckets that are malformed, not integers, above
//!   `i32::MAX` in sum give `null` (the default variant); a negative weight
//!   counts as 0; a literal `fractional` bucket naming no variant fails with
//!   `GENERAL` when picked; a constant sub-expression that always fails
//!   (`{"/": [1, 0]}`) fails with `GENERAL`. Structural problems are still
//!   refused whole, listing every problem ([`DefinitionError`]): invalid
//!   JSON, unknown fields, a missing or invalid `state`, `variants` or
//!   `defaultVariant`, non-object targeting, mixed variant types, metadata
//!   values that are not primitives, and our limits (rule depth, compiled
//!   size). flagd only logs schema violations; we refuse them.
//! * `{"var": "$flagd"}` (the whole injected object) gives `null`; only
//!   `$flagd.flagKey` and `$flagd.timestamp` are provided. `"../"` scope
//!   climbing in `var` inside `map`/`filter` is not supported. Strings are
//!   indexed by character, not by UTF-16 code unit (`substr`), and
//!   `"abc".length`-style property reads on strings give `null`.
//!
//! # Why our own evaluator rather than `datalogic-rs`
//!
//! `datalogic-rs` implements classic JsonLogic (json-logic-js truthiness, `==`
//! coercions, `cat`, `missing`), which differs from flagd-core's engine in the
//! ways listed above, so matching flagd would have meant overriding most
//! operators anyway; its values live in an arena per evaluation and the flagd
//! variables (`$flagd.flagKey`, `$flagd.timestamp`) would have to be merged
//! into a copied context on every call. Our compact evaluator borrows from the
//! plan and the context (a static flag allocates nothing; a typical rule
//! allocates nothing or one string), pre-evaluates constant sub-expressions,
//! pre-checks literal `fractional` buckets, hashes `flagKey + targetingKey`
//! without concatenating, and has no dependency beyond `semver`.
//!
//! # Limits
//!
//! Rules deeper than [`MAX_RULE_DEPTH`] operators, counted through `$ref`,
//! are rejected (so evaluation recursion is bounded by the plan, never by the
//! context); JSON text is parsed with serde_json's recursion limit (128). A
//! definition compiling to more than [`CompileOptions::max_compiled_nodes`]
//! nodes (default [`MAX_COMPILED_NODES`], each evaluator counted once) is
//! refused, naming the largest flag and the budget, as is a
//! `map`/`filter`/`all`/`some`/`none`/`reduce` body whose `$ref`s expand to
//! more than [`MAX_COMPILED_NODES`] nodes (a body runs once per element, where
//! evaluators are not memoised). Evaluation never panics, whatever the
//! context (weights of `1e300` or `i64::MAX` included).

mod cbor;
mod jsval;
mod logic;
mod murmur;
#[cfg(test)]
mod tests;

use logic::{Compiler, Env, Node, RefTable, Refs, Scope};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

pub use logic::{MAX_COMPILED_NODES, MAX_RULE_DEPTH};

/// How `fractional` turns its bucketing value into a hash.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Bucketing {
    /// What the flagd daemon answers up to its newest release (flagd v0.16.1,
    /// core v0.15.6): MurmurHash3 of the bucketing *string* (UTF-8), or of
    /// `flagKey + targetingKey`; a non-string bucketing value gives `null`.
    #[default]
    V2,
    /// flagd's ADR "fractional-non-string-rand-units" (flagd-testbed 3.9
    /// `@fractional-v3`): MurmurHash3 of the deterministic CBOR encoding of
    /// any non-null bucketing value, or of `[flagKey, targetingKey]`; a
    /// `null` bucketing value gives `null` (the default variant). Moves
    /// every assignment made under v2.
    V3,
}

impl Bucketing {
    pub fn as_str(&self) -> &'static str {
        match self {
            Bucketing::V2 => "v2",
            Bucketing::V3 => "v3",
        }
    }

    /// `"v2"` or `"v3"`.
    pub fn parse(s: &str) -> Option<Bucketing> {
        match s {
            "v2" => Some(Bucketing::V2),
            "v3" => Some(Bucketing::V3),
            _ => None,
        }
    }
}

impl fmt::Display for Bucketing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a definition is compiled. The default is what the existing
/// constructors ([`FlagSet::parse`], [`FlagSet::from_value`],
/// [`FlagSet::from_owned`]) use.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    pub bucketing: Bucketing,
    /// Budget of compiled nodes for the whole definition (each `$evaluators`
    /// entry counted once); a definition over it is refused.
    pub max_compiled_nodes: u64,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            bucketing: Bucketing::default(),
            max_compiled_nodes: MAX_COMPILED_NODES,
        }
    }
}

/// A compiled, immutable set of flags (one revision). `Send + Sync`; share it
/// behind an `Arc`.
#[derive(Debug)]
pub struct FlagSet {
    definition: Value,
    /// Sorted by key.
    flags: Vec<Flag>,
    metadata: Map<String, Value>,
    /// Problems flagd would load anyway (answered at evaluation time), each
    /// naming the flag and the problem.
    warnings: Vec<String>,
    /// Compiled size (see [`FlagSet::compiled_nodes`]).
    compiled_nodes: u64,
}

#[derive(Debug)]
struct Flag {
    key: Box<str>,
    enabled: bool,
    /// Sorted by name.
    variants: Vec<(Box<str>, Value)>,
    default: Option<usize>,
    targeting: Option<Node>,
    /// Why the targeting cannot run (unknown operator, `$ref` to nothing,
    /// ...): flagd loads such a flag and answers `PARSE_ERROR`.
    parse_error: Option<Box<str>>,
    /// Whether the targeting can meet one `$evaluators` entry twice in an
    /// evaluation (its value is then computed once and remembered).
    memo_refs: bool,
    /// Set metadata with the flag's own merged over it.
    metadata: Map<String, Value>,
}

/// Why a definition was rejected: every problem found, each naming the flag
/// (or the part of the file) and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionError {
    pub problems: Vec<String>,
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("; "))
    }
}

impl std::error::Error for DefinitionError {}

/// The evaluation context: an object of attributes; the targeting key is the
/// `targetingKey` attribute.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalContext {
    /// Always a `Value::Object`.
    attrs: Value,
}

impl Default for EvalContext {
    fn default() -> Self {
        Self::new()
    }
}

impl EvalContext {
    pub fn new() -> Self {
        EvalContext {
            attrs: Value::Object(Map::new()),
        }
    }

    pub fn from_map(m: Map<String, Value>) -> Self {
        EvalContext {
            attrs: Value::Object(m),
        }
    }

    /// A context from any JSON value: an object is taken as is, anything else
    /// gives an empty context.
    pub fn from_value(v: Value) -> Self {
        match v {
            Value::Object(m) => Self::from_map(m),
            _ => Self::new(),
        }
    }

    pub fn insert(&mut self, k: impl Into<String>, v: Value) {
        if let Value::Object(m) = &mut self.attrs {
            m.insert(k.into(), v);
        }
    }

    /// `base` with `overlay`'s attributes added; `overlay` wins.
    pub fn merged(base: &EvalContext, overlay: &Map<String, Value>) -> Self {
        let mut out = base.clone();
        if let Value::Object(m) = &mut out.attrs {
            for (k, v) in overlay {
                m.insert(k.clone(), v.clone());
            }
        }
        out
    }

    pub fn targeting_key(&self) -> Option<&str> {
        self.get("targetingKey").and_then(Value::as_str)
    }

    pub fn get(&self, k: &str) -> Option<&Value> {
        self.attrs.as_object().and_then(|m| m.get(k))
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        static EMPTY: OnceLock<Map<String, Value>> = OnceLock::new();
        self.attrs
            .as_object()
            .unwrap_or_else(|| EMPTY.get_or_init(Map::new))
    }

    pub fn into_map(self) -> Map<String, Value> {
        match self.attrs {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }
}

impl From<Map<String, Value>> for EvalContext {
    fn from(m: Map<String, Value>) -> Self {
        Self::from_map(m)
    }
}

/// The result of evaluating one flag.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation<'a> {
    /// `None` when DISABLED, when the default variant is the code default, or
    /// on error.
    pub value: Option<Cow<'a, Value>>,
    pub variant: Option<&'a str>,
    pub reason: Reason,
    /// Set when `reason == Reason::Error`.
    pub error: Option<EvalError>,
    /// Flag metadata merged over the set metadata (the flag wins).
    pub metadata: &'a Map<String, Value>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Static,
    TargetingMatch,
    Split,
    Default,
    Disabled,
    Error,
}

impl Reason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Static => "STATIC",
            Reason::TargetingMatch => "TARGETING_MATCH",
            Reason::Split => "SPLIT",
            Reason::Default => "DEFAULT",
            Reason::Disabled => "DISABLED",
            Reason::Error => "ERROR",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvalError {
    pub code: ErrorCode,
    pub message: String,
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for EvalError {}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    ParseError,
    TargetingKeyMissing,
    InvalidContext,
    General,
}

impl ErrorCode {
    /// The OFREP error code.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::ParseError => "PARSE_ERROR",
            ErrorCode::TargetingKeyMissing => "TARGETING_KEY_MISSING",
            ErrorCode::InvalidContext => "INVALID_CONTEXT",
            ErrorCode::General => "GENERAL",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const TOP_LEVEL_KEYS: &[&str] = &["$schema", "flags", "$evaluators", "metadata"];
const FLAG_KEYS: &[&str] = &[
    "state",
    "variants",
    "defaultVariant",
    "targeting",
    "metadata",
];

fn empty_map() -> &'static Map<String, Value> {
    static EMPTY: OnceLock<Map<String, Value>> = OnceLock::new();
    EMPTY.get_or_init(Map::new)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check_metadata(where_: &str, v: &Value, problems: &mut Vec<String>) -> Map<String, Value> {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if !matches!(x, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
                    problems.push(format!(
                        "{where_}metadata \"{k}\" must be a string, number or boolean, found {}",
                        type_name(x)
                    ));
                }
            }
            m.clone()
        }
        other => {
            problems.push(format!(
                "{where_}metadata must be an object, found {}",
                type_name(other)
            ));
            Map::new()
        }
    }
}

impl FlagSet {
    /// A set with no flags.
    pub fn empty() -> FlagSet {
        FlagSet {
            definition: serde_json::json!({ "flags": {} }),
            flags: Vec::new(),
            metadata: Map::new(),
            warnings: Vec::new(),
            compiled_nodes: 0,
        }
    }

    /// Parses and compiles a definition; rejects it as a whole, listing every
    /// problem (malformed JSON is reported with line and column).
    pub fn parse(json: &str) -> Result<FlagSet, DefinitionError> {
        Self::parse_with(json, &CompileOptions::default())
    }

    /// As [`FlagSet::parse`], with options.
    pub fn parse_with(json: &str, opts: &CompileOptions) -> Result<FlagSet, DefinitionError> {
        let v: Value = serde_json::from_str(json).map_err(|e| DefinitionError {
            problems: vec![format!(
                "invalid JSON at line {}, column {}: {}",
                e.line(),
                e.column(),
                strip_position(&e.to_string())
            )],
        })?;
        Self::compile(v, opts)
    }

    /// Compiles an already parsed definition.
    pub fn from_value(v: &Value) -> Result<FlagSet, DefinitionError> {
        Self::compile(v.clone(), &CompileOptions::default())
    }

    /// As [`FlagSet::from_value`], with options.
    pub fn from_value_with(v: &Value, opts: &CompileOptions) -> Result<FlagSet, DefinitionError> {
        Self::compile(v.clone(), opts)
    }

    /// Compiles an already parsed definition it takes over (no copy: a
    /// 350-flag definition is about 1 MB as a `Value`).
    pub fn from_owned(v: Value) -> Result<FlagSet, DefinitionError> {
        Self::compile(v, &CompileOptions::default())
    }

    /// As [`FlagSet::from_owned`], with options.
    pub fn from_owned_with(v: Value, opts: &CompileOptions) -> Result<FlagSet, DefinitionError> {
        Self::compile(v, opts)
    }

    fn compile(definition: Value, opts: &CompileOptions) -> Result<FlagSet, DefinitionError> {
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let Value::Object(top) = &definition else {
            return Err(DefinitionError {
                problems: vec![format!(
                    "the definition must be a JSON object with \"flags\", found {}",
                    type_name(&definition)
                )],
            });
        };
        for k in top.keys() {
            if !TOP_LEVEL_KEYS.contains(&k.as_str()) {
                problems.push(format!(
                    "unknown top-level field \"{k}\" (expected $schema, flags, $evaluators, metadata)"
                ));
            }
        }
        let metadata = match top.get("metadata") {
            None => Map::new(),
            Some(m) => check_metadata("", m, &mut problems),
        };
        let evaluators = match top.get("$evaluators") {
            None | Some(Value::Null) => None,
            Some(Value::Object(e)) => Some(e),
            Some(other) => {
                problems.push(format!(
                    "$evaluators must be an object, found {}",
                    type_name(other)
                ));
                None
            }
        };
        // Every evaluator is compiled once (used or not) and shared by the
        // rules that refer to it; its problems are reported once.
        let refs = RefTable::new(evaluators, opts.bucketing);
        RefTable::compile_all(&refs);
        for r in &refs.borrow().reports {
            let strip = |p: &str| p.strip_prefix("targeting: ").unwrap_or(p).to_string();
            for p in &r.fatal {
                problems.push(format!("$evaluators \"{}\": {}", r.name, strip(p)));
            }
            for p in r.parse_errors.iter().chain(&r.warnings) {
                warnings.push(format!("$evaluators \"{}\": {}", r.name, strip(p)));
            }
        }
        let mut node_counts: Vec<(u64, &str)> = Vec::new();
        let mut flags = Vec::new();
        match top.get("flags") {
            None => problems.push("missing \"flags\" object".to_string()),
            Some(Value::Object(fm)) => {
                for (key, def) in fm {
                    if let Some(f) = compile_flag(
                        key,
                        def,
                        &refs,
                        &mut node_counts,
                        &metadata,
                        &mut problems,
                        &mut warnings,
                    ) {
                        flags.push(f);
                    }
                }
            }
            Some(other) => problems.push(format!(
                "\"flags\" must be an object, found {}",
                type_name(other)
            )),
        }
        let evaluator_nodes = refs.borrow().nodes;
        drop(refs);
        let compiled_nodes = node_counts
            .iter()
            .fold(evaluator_nodes, |sum, (n, _)| sum.saturating_add(*n));
        if compiled_nodes > opts.max_compiled_nodes {
            let largest = node_counts
                .iter()
                .max()
                .map(|(n, k)| {
                    format!(
                        " (largest: flag \"{k}\", {n} nodes; $evaluators: {evaluator_nodes} nodes)"
                    )
                })
                .unwrap_or_default();
            problems.push(format!(
                "the rules compile to {compiled_nodes} nodes, above the budget of {} nodes{largest}",
                opts.max_compiled_nodes
            ));
        }
        if !problems.is_empty() {
            return Err(DefinitionError { problems });
        }
        flags.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(FlagSet {
            compiled_nodes,
            definition,
            flags,
            metadata,
            warnings,
        })
    }

    /// The source definition as given.
    pub fn definition(&self) -> &Value {
        &self.definition
    }

    /// Problems that flagd would load anyway and answer at evaluation time
    /// (unknown operator, wrong argument count, `$ref` to nothing, ...): the
    /// set is served, but `opsctl flags apply` and the console refuse it
    /// unless told to accept warnings.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Nodes of the compiled rules, each `$evaluators` entry counted once
    /// (it is compiled once and shared); at most
    /// [`CompileOptions::max_compiled_nodes`].
    pub fn compiled_nodes(&self) -> u64 {
        self.compiled_nodes
    }

    /// The set-level metadata.
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.metadata
    }

    pub fn len(&self) -> usize {
        self.flags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    /// Flag keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.flags.iter().map(|f| &*f.key)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    /// Whether the flag is `DISABLED` (`None` if unknown).
    pub fn is_disabled(&self, key: &str) -> Option<bool> {
        self.find(key).map(|f| !f.enabled)
    }

    fn find(&self, key: &str) -> Option<&Flag> {
        self.flags
            .binary_search_by(|f| (*f.key).cmp(key))
            .ok()
            .map(|i| &self.flags[i])
    }

    /// Evaluates one flag; `None` if there is no such flag.
    pub fn evaluate<'a>(&'a self, key: &str, ctx: &EvalContext) -> Option<Evaluation<'a>> {
        self.find(key).map(|f| f.evaluate(ctx))
    }

    /// Evaluates every flag (DISABLED ones included), sorted by key.
    pub fn evaluate_all<'a>(&'a self, ctx: &EvalContext) -> Vec<(&'a str, Evaluation<'a>)> {
        self.flags
            .iter()
            .map(|f| (&*f.key, f.evaluate(ctx)))
            .collect()
    }
}

fn strip_position(msg: &str) -> &str {
    match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    }
}

fn compile_flag<'d>(
    key: &'d str,
    def: &'d Value,
    refs: &Refs<'d>,
    node_counts: &mut Vec<(u64, &'d str)>,
    set_metadata: &Map<String, Value>,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Option<Flag> {
    let start = problems.len();
    let pfx = format!("flag \"{key}\": ");
    if key.is_empty() {
        problems.push("a flag key must not be empty".to_string());
    }
    let Value::Object(def) = def else {
        problems.push(format!("{pfx}must be an object, found {}", type_name(def)));
        return None;
    };
    for k in def.keys() {
        if !FLAG_KEYS.contains(&k.as_str()) {
            problems.push(format!(
                "{pfx}unknown field \"{k}\" (expected state, variants, defaultVariant, targeting, metadata)"
            ));
        }
    }
    let enabled = match def.get("state") {
        Some(Value::String(s)) if s == "ENABLED" => true,
        Some(Value::String(s)) if s == "DISABLED" => false,
        None => {
            problems.push(format!("{pfx}missing state (ENABLED or DISABLED)"));
            false
        }
        Some(other) => {
            problems.push(format!(
                "{pfx}invalid state {other} (expected \"ENABLED\" or \"DISABLED\")"
            ));
            false
        }
    };
    let mut variants: Vec<(Box<str>, Value)> = Vec::new();
    match def.get("variants") {
        Some(Value::Object(vs)) if !vs.is_empty() => {
            let kind = |v: &Value| match v {
                Value::Array(_) | Value::Object(_) => "object",
                other => type_name(other),
            };
            let mut kinds: Vec<&str> = Vec::new();
            for (name, v) in vs {
                if v.is_null() {
                    problems.push(format!("{pfx}variant \"{name}\" must not be null"));
                    continue;
                }
                if !kinds.contains(&kind(v)) {
                    kinds.push(kind(v));
                }
                variants.push((name.as_str().into(), v.clone()));
            }
            if kinds.len() > 1 {
                problems.push(format!(
                    "{pfx}variants mix types ({}); all variants of a flag must have the same type",
                    kinds.join(", ")
                ));
            }
        }
        Some(Value::Object(_)) => problems.push(format!("{pfx}variants must not be empty")),
        None => problems.push(format!("{pfx}missing variants")),
        Some(other) => problems.push(format!(
            "{pfx}variants must be an object, found {}",
            type_name(other)
        )),
    }
    variants.sort_by(|a, b| a.0.cmp(&b.0));
    let names = || {
        variants
            .iter()
            .map(|v| &*v.0)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let default = match def.get("defaultVariant") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => match variants.iter().position(|v| &*v.0 == s.as_str()) {
            Some(i) => Some(i),
            None => {
                if !variants.is_empty() {
                    problems.push(format!(
                        "{pfx}defaultVariant \"{s}\" is not one of the variants [{}]",
                        names()
                    ));
                }
                None
            }
        },
        Some(other) => {
            problems.push(format!(
                "{pfx}defaultVariant must be a string or null, found {}",
                type_name(other)
            ));
            None
        }
    };
    let mut parse_error = None;
    let targeting = match def.get("targeting") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) if m.is_empty() => None,
        Some(t @ Value::Object(_)) => {
            let mut c = Compiler::new(refs.clone());
            c.variants = Some(match def.get("variants") {
                Some(Value::Object(vs)) => vs.keys().map(String::as_str).collect(),
                _ => Vec::new(),
            });
            let node = c.compile(t);
            node_counts.push((c.stats.nodes, key));
            for p in c.fatal {
                problems.push(format!("{pfx}{p}"));
            }
            for p in &c.parse_errors {
                warnings.push(format!("{pfx}{p}; the flag answers PARSE_ERROR"));
            }
            for p in c.warnings {
                warnings.push(format!("{pfx}{p}"));
            }
            parse_error = c
                .parse_errors
                .into_iter()
                .next()
                .map(String::into_boxed_str);
            Some(node)
        }
        Some(other) => {
            problems.push(format!(
                "{pfx}targeting must be a JsonLogic object, found {}",
                type_name(other)
            ));
            None
        }
    };
    let mut metadata = set_metadata.clone();
    if let Some(m) = def.get("metadata") {
        for (k, v) in check_metadata(&pfx, m, problems) {
            metadata.insert(k, v);
        }
    }
    if problems.len() > start {
        return None;
    }
    Some(Flag {
        key: key.into(),
        enabled,
        variants,
        default,
        memo_refs: targeting.as_ref().is_some_and(Node::meets_a_ref_twice),
        targeting,
        parse_error,
        metadata,
    })
}

impl Flag {
    fn resolved<'a>(&'a self, idx: usize, reason: Reason) -> Evaluation<'a> {
        let (name, value) = &self.variants[idx];
        Evaluation {
            value: Some(Cow::Borrowed(value)),
            variant: Some(name),
            reason,
            error: None,
            metadata: &self.metadata,
        }
    }

    fn without_value(&self, reason: Reason, error: Option<EvalError>) -> Evaluation<'_> {
        Evaluation {
            value: None,
            variant: None,
            reason,
            error,
            metadata: &self.metadata,
        }
    }

    fn default_eval(&self, reason: Reason) -> Evaluation<'_> {
        match self.default {
            Some(i) => self.resolved(i, reason),
            None => self.without_value(Reason::Default, None),
        }
    }

    /// A flag whose targeting cannot run answers `PARSE_ERROR`, as in flagd.
    #[cold]
    fn parse_error_eval(&self, problem: &str) -> Evaluation<'_> {
        self.without_value(
            Reason::Error,
            Some(EvalError {
                code: ErrorCode::ParseError,
                message: format!(
                    "error parsing targeting rule for flag '{}': {problem}",
                    self.key
                ),
            }),
        )
    }

    fn evaluate<'a>(&'a self, ctx: &EvalContext) -> Evaluation<'a> {
        if !self.enabled {
            return self.without_value(Reason::Disabled, None);
        }
        let Some(rule) = &self.targeting else {
            return self.default_eval(Reason::Static);
        };
        if let Some(p) = &self.parse_error {
            return self.parse_error_eval(p);
        }
        let mut env = Env::new(&ctx.attrs, &self.key);
        env.memo = self.memo_refs;
        let result = match logic::eval(rule, &env, Scope::Root) {
            Ok(v) => v,
            Err(e) => {
                return self.without_value(
                    Reason::Error,
                    Some(EvalError {
                        code: ErrorCode::General,
                        message: format!(
                            "error evaluating targeting rule for flag '{}': {}",
                            self.key, e.0
                        ),
                    }),
                )
            }
        };
        if result.is_null() {
            return self.default_eval(Reason::Default);
        }
        let name = jsval::to_js_string(&result);
        match self.variants.binary_search_by(|v| (*v.0).cmp(&name)) {
            Ok(i) => self.resolved(i, Reason::TargetingMatch),
            Err(_) => self.without_value(
                Reason::Error,
                Some(EvalError {
                    code: ErrorCode::General,
                    message: format!(
                        "variant '{}' not found in flag with key '{}'",
                        truncate(&name, 100),
                        self.key
                    ),
                }),
            ),
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

impl<'a> Evaluation<'a> {
    /// The metadata of an evaluation that found no flag.
    pub fn empty_metadata() -> &'static Map<String, Value> {
        empty_map()
    }
}
