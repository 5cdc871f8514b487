//! Revisions and flag definitions. A revision is a whole, numbered, immutable
//! snapshot of an environment (flag definitions plus every kill-switch state);
//! numbers are global and only grow, so an agent's "since" is unambiguous.
//!
//! Compiling a definition can take long (up to the engine's size budget), so
//! it never runs on the store's writer thread, where it would hold up every
//! other write (a kill among them), nor on an async worker: [`check_apply`],
//! [`check_set`] and [`preview`] compile on the blocking pool, and the writer
//! functions ([`apply`], [`set`]) only write what was checked. A change
//! computed from the current definition (`set`) carries the revision it was
//! computed from, and the writer refuses it as stale ([`is_stale`]) when the
//! environment has moved on since, so the caller checks again.

use super::audit::{self, NewEntry};
use super::schema::Migration;
use super::{OptionalExtension, Result, Store, StoreError};
use crate::auth::Actor;
use common::diff::Change;
use common::flags::{DefinitionError, FlagSet};
use common::wire::{KillState, Revision};
use rusqlite::{params, Connection, Transaction};
use serde::Serialize;
use serde_json::{json, Value};
use std::cell::Cell;

/// The `flags` capability's migrations: revisions. Append only: a released
/// migration never changes (see ARCHITECTURE.md, "Store").
pub const MIGRATIONS: &[Migration] = &[
    // 1: revisions
    Migration {
        capability: "flags",
        version: 1,
        sql: r#"
CREATE TABLE revisions (
    revision INTEGER PRIMARY KEY,
    environment TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    summary TEXT NOT NULL,
    flags TEXT NOT NULL,
    killswitches TEXT NOT NULL
);
CREATE INDEX revisions_env ON revisions(environment, revision);
"#,
    },
];

pub fn empty_definition() -> Value {
    json!({"flags": {}})
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Revision> {
    let flags: String = r.get(3)?;
    let ks: String = r.get(4)?;
    Ok(Revision {
        revision: r.get::<_, i64>(0)? as u64,
        environment: r.get(1)?,
        created_ms: r.get(2)?,
        flags: serde_json::from_str(&flags).unwrap_or_else(|_| empty_definition()),
        killswitches: serde_json::from_str(&ks).unwrap_or_default(),
    })
}

pub fn latest(conn: &Connection, environment: &str) -> Result<Option<Revision>> {
    Ok(conn
        .query_row(
            "SELECT revision, environment, created_ms, flags, killswitches FROM revisions
             WHERE environment = ?1 ORDER BY revision DESC LIMIT 1",
            [environment],
            row,
        )
        .optional()?)
}

pub fn get(conn: &Connection, revision: u64) -> Result<Option<Revision>> {
    Ok(conn
        .query_row(
            "SELECT revision, environment, created_ms, flags, killswitches FROM revisions WHERE revision = ?1",
            [revision as i64],
            row,
        )
        .optional()?)
}

/// The newest revision number of every environment.
pub fn latest_numbers(conn: &Connection) -> Result<Vec<(String, u64)>> {
    let mut stmt =
        conn.prepare("SELECT environment, MAX(revision) FROM revisions GROUP BY environment")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

#[derive(Debug, Clone, Serialize)]
pub struct RevisionInfo {
    pub revision: u64,
    pub environment: String,
    pub created: String,
    pub actor: String,
    pub summary: String,
}

pub fn history(conn: &Connection, environment: &str, limit: usize) -> Result<Vec<RevisionInfo>> {
    let mut stmt = conn.prepare(
        "SELECT revision, environment, created_ms, actor, summary FROM revisions
         WHERE environment = ?1 ORDER BY revision DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![environment, limit as i64], |r| {
        Ok(RevisionInfo {
            revision: r.get::<_, i64>(0)? as u64,
            environment: r.get(1)?,
            created: common::time::rfc3339(r.get(2)?),
            actor: r.get(3)?,
            summary: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Writes the next revision of `environment` with the given content.
pub fn insert_revision(
    tx: &Transaction<'_>,
    environment: &str,
    actor: &Actor,
    summary: &str,
    flags: Value,
    killswitches: Vec<KillState>,
) -> Result<Revision> {
    let next: i64 = tx.query_row(
        "SELECT COALESCE(MAX(revision), 0) + 1 FROM revisions",
        [],
        |r| r.get(0),
    )?;
    let now = common::time::now_ms();
    tx.execute(
        "INSERT INTO revisions (revision, environment, created_ms, actor, summary, flags, killswitches)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            next,
            environment,
            now,
            actor.name,
            summary,
            flags.to_string(),
            serde_json::to_string(&killswitches)?
        ],
    )?;
    Ok(Revision {
        revision: next as u64,
        environment: environment.into(),
        created_ms: now,
        flags,
        killswitches,
    })
}

/// The revision in force, its definition and kill states.
#[allow(clippy::type_complexity)]
fn current_definition(
    tx: &Connection,
    environment: &str,
) -> Result<(Option<u64>, Value, Vec<KillState>)> {
    Ok(match latest(tx, environment)? {
        Some(r) => (Some(r.revision), r.flags, r.killswitches),
        None => (None, empty_definition(), Vec::new()),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct FlagChange {
    /// The revision now in force (unchanged when nothing changed).
    pub revision: Option<u64>,
    pub changed: bool,
    pub diff: Vec<Change>,
    /// The warnings of the definition in force after the change (or, in a
    /// preview, of the definition previewed): problems flagd loads anyway,
    /// each naming the flag and the problem.
    pub warnings: Vec<String>,
}

/// Name of the store's writer thread (given in [`Store::open`]; a test
/// below keeps the two in step).
pub const WRITER_THREAD: &str = "store-writer";

/// Why a flag change was refused before it reached the writer.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    /// flagd itself would refuse it (invalid JSON, schema violation, over
    /// the compiled-size budget): refused whole.
    #[error("invalid definition: {0}")]
    Definition(DefinitionError),
    /// flagd would load it, with these problems; applying needs them
    /// accepted (`--accept-warnings`).
    #[error("the definition has {} warning(s) (accept them to apply it anyway): {}", .0.len(), .0.join("; "))]
    Warnings(Vec<String>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FlagError {
    /// The same refusal as a store error, for callers that only speak those.
    pub fn into_store(self) -> StoreError {
        match self {
            FlagError::Store(e) => e,
            other => StoreError::Invalid(other.to_string()),
        }
    }
}

thread_local! {
    /// Set on the blocking-pool threads while [`off_writer`] runs a closure:
    /// the only place definitions are compiled.
    static IN_COMPILE_POOL: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` on the blocking thread pool (never the store's writer, never an
/// async worker), where [`compile`] is allowed.
async fn off_writer<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FlagError> + Send + 'static,
) -> Result<T, FlagError> {
    struct Allowed;
    impl Drop for Allowed {
        fn drop(&mut self) {
            IN_COMPILE_POOL.with(|c| c.set(false));
        }
    }
    tokio::task::spawn_blocking(move || {
        IN_COMPILE_POOL.with(|c| c.set(true));
        let _allowed = Allowed;
        f()
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "flag definition check did not finish");
        FlagError::Store(StoreError::Closed)
    })?
}

/// Compiles `definition`. Refuses to run anywhere but inside [`off_writer`]:
/// a definition compiled on the writer thread holds up every other write
/// (a 1.2 KB `$ref` chain once held a kill for 13 s), and on an async worker
/// it stalls every request that worker serves.
pub fn compile(definition: &Value) -> Result<FlagSet, FlagError> {
    // the main writer, or the writer of a capability's own file
    let on_writer = std::thread::current()
        .name()
        .is_some_and(|n| n.starts_with(WRITER_THREAD));
    if on_writer || !IN_COMPILE_POOL.with(Cell::get) {
        tracing::error!(
            on_writer,
            "flag definition compiled outside the blocking pool; refused"
        );
        return Err(FlagError::Store(StoreError::Invalid(
            "internal error: flag definitions are compiled only on the blocking pool".into(),
        )));
    }
    FlagSet::from_value(definition).map_err(FlagError::Definition)
}

/// A whole definition compiled for `flags apply`. What it contains does not
/// depend on the revision in force, so it cannot go stale. Only
/// [`check_apply`] makes one: the writer trusts it.
#[derive(Debug, Clone)]
pub struct CheckedApply {
    definition: Value,
    /// Every warning of the definition.
    warnings: Vec<String>,
}

impl CheckedApply {
    /// Every warning of the definition, each naming the flag and the problem.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// Compiles a definition for `flags apply`, off the writer.
pub async fn check_apply(definition: Value) -> Result<CheckedApply, FlagError> {
    off_writer(move || {
        let set = compile(&definition)?;
        let warnings = set.warnings().to_vec();
        drop(set);
        Ok(CheckedApply {
            definition,
            warnings,
        })
    })
    .await
}

/// The diff and warnings that applying `definition` to `environment` would
/// give (dry run, console preview); writes nothing and never uses the writer.
pub async fn preview(
    store: &Store,
    environment: &str,
    definition: Value,
) -> Result<FlagChange, FlagError> {
    super::users::validate_name(environment)?;
    let store = store.clone();
    let environment = environment.to_string();
    off_writer(move || {
        let set = compile(&definition)?;
        let current = store.read_blocking(|c| latest(c, &environment))?;
        let (revision, before) = match current {
            Some(r) => (Some(r.revision), r.flags),
            None => (None, empty_definition()),
        };
        let diff = common::diff::diff(&before, &definition);
        Ok(FlagChange {
            revision,
            changed: !diff.is_empty(),
            diff,
            warnings: set.warnings().to_vec(),
        })
    })
    .await
}

/// One flag's change (`flags set`) computed from the revision in force and
/// compiled, for [`set`] to write if that revision is still in force. Only
/// [`check_set`] makes one: the writer trusts it.
#[derive(Debug, Clone)]
pub struct CheckedSet {
    environment: String,
    key: String,
    /// The revision the change was computed from (`None`: the environment
    /// had none).
    base_revision: Option<u64>,
    /// The whole definition after the change.
    definition: Value,
    warnings: Vec<String>,
    /// Warnings the revision it changes did not have (those it had were
    /// accepted when that revision was applied).
    new_warnings: Vec<String>,
}

impl CheckedSet {
    /// Every warning of the changed definition.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The warnings the revision it changes did not have.
    pub fn new_warnings(&self) -> &[String] {
        &self.new_warnings
    }
}

/// Computes and compiles a change of one flag's state or default variant,
/// off the writer.
pub async fn check_set(
    store: &Store,
    environment: &str,
    key: &str,
    state: Option<&str>,
    default_variant: Option<&str>,
) -> Result<CheckedSet, FlagError> {
    if let Some(s) = state {
        if s != "ENABLED" && s != "DISABLED" {
            return Err(StoreError::Invalid(format!(
                "state must be ENABLED or DISABLED, not {s:?}"
            ))
            .into());
        }
    }
    let store = store.clone();
    let (environment, key) = (environment.to_string(), key.to_string());
    let (state, default_variant) = (state.map(String::from), default_variant.map(String::from));
    off_writer(move || {
        let current = store.read_blocking(|c| latest(c, &environment))?;
        let (base_revision, before) = match current {
            Some(r) => (Some(r.revision), r.flags),
            None => (None, empty_definition()),
        };
        let mut after = before.clone();
        let flag = after
            .get_mut("flags")
            .and_then(|f| f.get_mut(&key))
            .and_then(|f| f.as_object_mut())
            .ok_or_else(|| {
                StoreError::NotFound(format!(
                    "flag {key:?} is not defined in environment {environment:?}"
                ))
            })?;
        if let Some(s) = state {
            flag.insert("state".into(), json!(s));
        }
        if let Some(v) = default_variant {
            flag.insert("defaultVariant".into(), json!(v));
        }
        let warnings = compile(&after)?.warnings().to_vec();
        // a stored revision that no longer compiles has no accepted warnings
        let accepted = compile(&before)
            .map(|s| s.warnings().to_vec())
            .unwrap_or_default();
        let new_warnings = not_in(&warnings, &accepted);
        Ok(CheckedSet {
            environment,
            key,
            base_revision,
            definition: after,
            warnings,
            new_warnings,
        })
    })
    .await
}

/// The warnings of `after` that `before` does not have.
fn not_in(after: &[String], before: &[String]) -> Vec<String> {
    after
        .iter()
        .filter(|w| !before.contains(w))
        .cloned()
        .collect()
}

const STALE_PREFIX: &str = "the flags of environment";

/// Whether `e` is the writer's refusal of a change computed from a revision
/// that is no longer in force (check again, then retry).
pub fn is_stale(e: &StoreError) -> bool {
    matches!(e, StoreError::Conflict(m) if m.starts_with(STALE_PREFIX))
}

/// Replaces the environment's whole definition (declarative `flags apply`)
/// with one checked by [`check_apply`]; its warnings were accepted, and the
/// audit entry records them (`accepted_warnings`).
pub fn apply(
    tx: &Transaction<'_>,
    actor: &Actor,
    environment: &str,
    checked: &CheckedApply,
    reason: &str,
) -> Result<(FlagChange, Option<Revision>)> {
    super::users::validate_name(environment)?;
    let (current_rev, before, kills) = current_definition(tx, environment)?;
    let definition = &checked.definition;
    let diff = common::diff::diff(&before, definition);
    if diff.is_empty() {
        return Ok((
            FlagChange {
                revision: current_rev,
                changed: false,
                diff,
                warnings: checked.warnings.clone(),
            },
            None,
        ));
    }
    let summary = summarize(&diff);
    let rev = insert_revision(tx, environment, actor, &summary, definition.clone(), kills)?;
    let mut after = definition.clone();
    if let (false, Some(obj)) = (checked.warnings.is_empty(), after.as_object_mut()) {
        obj.insert("accepted_warnings".into(), json!(checked.warnings));
    }
    audit::append(
        tx,
        NewEntry {
            actor,
            action: "flags.apply",
            target: format!("flags:{environment}"),
            reason,
            before,
            after,
        },
    )?;
    Ok((
        FlagChange {
            revision: Some(rev.revision),
            changed: true,
            diff,
            warnings: checked.warnings.clone(),
        },
        Some(rev),
    ))
}

/// Writes one flag's change checked by [`check_set`], unless the
/// environment's revision moved on since (then a stale conflict: check
/// again).
pub fn set(
    tx: &Transaction<'_>,
    actor: &Actor,
    checked: &CheckedSet,
    reason: &str,
) -> Result<(FlagChange, Option<Revision>)> {
    let (environment, key) = (&checked.environment, &checked.key);
    let (current_rev, before, kills) = current_definition(tx, environment)?;
    if current_rev != checked.base_revision {
        return Err(StoreError::Conflict(format!(
            "{STALE_PREFIX} {environment:?} changed while the change was being checked (revision {} is now {}); try again",
            checked.base_revision.map_or("none".into(), |r| r.to_string()),
            current_rev.map_or("none".into(), |r| r.to_string()),
        )));
    }
    let after = &checked.definition;
    let diff = common::diff::diff(&before, after);
    if diff.is_empty() {
        return Ok((
            FlagChange {
                revision: current_rev,
                changed: false,
                diff,
                warnings: checked.warnings.clone(),
            },
            None,
        ));
    }
    let rev = insert_revision(
        tx,
        environment,
        actor,
        &summarize(&diff),
        after.clone(),
        kills,
    )?;
    audit::append(
        tx,
        NewEntry {
            actor,
            action: "flags.set",
            target: format!("flag:{environment}/{key}"),
            reason,
            before: before["flags"][key].clone(),
            after: after["flags"][key].clone(),
        },
    )?;
    Ok((
        FlagChange {
            revision: Some(rev.revision),
            changed: true,
            diff,
            warnings: checked.warnings.clone(),
        },
        Some(rev),
    ))
}

/// "flags: +a ~b -c" from a definition diff.
fn summarize(diff: &[Change]) -> String {
    let mut keys: Vec<String> = Vec::new();
    for c in diff {
        let mut parts = c.path.trim_start_matches('/').split('/');
        let key = match (parts.next(), parts.next()) {
            (Some("flags"), Some(k)) => {
                let whole = parts.next().is_none();
                let sign = match (whole, c.kind()) {
                    (true, "added") => "+",
                    (true, "removed") => "-",
                    _ => "~",
                };
                format!("{sign}{k}")
            }
            (Some(other), _) => format!("~{other}"),
            _ => "~".into(),
        };
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    format!("flags: {}", keys.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn actor() -> Actor {
        Actor::user("tester", Role::Admin, "test".into(), String::new())
    }

    fn def(state: &str) -> Value {
        json!({"flags": {"a": {"state": state, "variants": {"on": true, "off": false}, "defaultVariant": "on"}}})
    }

    #[test]
    fn the_writer_thread_has_the_name_compile_checks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let name = store
            .write_blocking(|_| Ok(std::thread::current().name().map(String::from)))
            .unwrap();
        assert_eq!(name.as_deref(), Some(WRITER_THREAD));
        store.close();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn definitions_compile_only_on_the_blocking_pool() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // on the writer thread: refused
        let on_writer = store
            .write(|_| {
                Ok(compile(&def("ENABLED"))
                    .map(|_| ())
                    .map_err(|e| e.to_string()))
            })
            .await
            .unwrap();
        assert!(
            on_writer.unwrap_err().contains("blocking pool"),
            "compile ran on the writer"
        );
        // on an async worker: refused
        assert!(compile(&def("ENABLED")).is_err());
        // even inside the pool when the writer runs it
        let nested = off_writer({
            let store = store.clone();
            move || {
                Ok(store.write_blocking(|_| {
                    Ok(compile(&def("ENABLED"))
                        .map(|_| ())
                        .map_err(|e| e.to_string()))
                })?)
            }
        })
        .await
        .unwrap();
        assert!(nested.is_err());
        // on the blocking pool: compiled
        let c = check_apply(def("ENABLED")).await.unwrap();
        assert!(c.warnings.is_empty());
        store.close();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn set_computed_from_an_old_revision_is_refused_as_stale() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let seed = check_apply(def("ENABLED")).await.unwrap();
        store
            .write(move |tx| apply(tx, &actor(), "prod", &seed, "seed"))
            .await
            .unwrap();
        let checked = check_set(&store, "prod", "a", Some("DISABLED"), None)
            .await
            .unwrap();
        assert!(checked.new_warnings.is_empty());
        // the environment moves on (a kill writes a revision too)
        store
            .write(|tx| {
                let (_, flags, kills) = current_definition(tx, "prod")?;
                insert_revision(tx, "prod", &actor(), "kill", flags, kills)
            })
            .await
            .unwrap();
        let stale = checked.clone();
        let err = store
            .write(move |tx| set(tx, &actor(), &stale, "x"))
            .await
            .unwrap_err();
        assert!(is_stale(&err), "{err}");
        // checked again against the new revision, it goes through
        let again = check_set(&store, "prod", "a", Some("DISABLED"), None)
            .await
            .unwrap();
        let (change, rev) = store
            .write(move |tx| set(tx, &actor(), &again, "x"))
            .await
            .unwrap();
        assert!(change.changed && rev.is_some());
        store.close();
    }

    #[test]
    fn only_warnings_the_changed_revision_lacks_are_new() {
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(not_in(&w(&["a", "b"]), &w(&["b", "a"])).is_empty());
        assert_eq!(not_in(&w(&["a", "c"]), &w(&["a"])), w(&["c"]));
        assert_eq!(not_in(&w(&["a"]), &[]), w(&["a"]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn preview_and_check_refuse_definitions_flagd_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let bad = json!({"flags": {"a": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "nope"}}});
        assert!(matches!(
            check_apply(bad.clone()).await,
            Err(FlagError::Definition(_))
        ));
        assert!(matches!(
            preview(&store, "prod", bad).await,
            Err(FlagError::Definition(_))
        ));
        let p = preview(&store, "prod", def("ENABLED")).await.unwrap();
        assert!(p.changed && p.revision.is_none());
        store.close();
    }
}
