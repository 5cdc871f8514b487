//! Revisions and flag definitions. A revision is a whole, numbered, immutable
//! snapshot of an environment (flag definitions plus every kill-switch state);
//! numbers are global and only grow, so an agent's "since" is unambiguous.

use super::audit::{self, NewEntry};
use super::{OptionalExtension, Result, StoreError};
use crate::auth::Actor;
use common::diff::Change;
use common::flags::FlagSet;
use common::wire::{KillState, Revision};
use rusqlite::{params, Connection, Transaction};
use serde::Serialize;
use serde_json::{json, Value};

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

fn current_definition(tx: &Connection, environment: &str) -> Result<(Value, Vec<KillState>)> {
    Ok(match latest(tx, environment)? {
        Some(r) => (r.flags, r.killswitches),
        None => (empty_definition(), Vec::new()),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct FlagChange {
    /// The revision now in force (unchanged when nothing changed).
    pub revision: Option<u64>,
    pub changed: bool,
    pub diff: Vec<Change>,
}

/// Replaces the environment's whole definition (declarative `flags apply`).
/// The caller has validated `definition` with [`FlagSet::from_value`].
pub fn apply(
    tx: &Transaction<'_>,
    actor: &Actor,
    environment: &str,
    definition: Value,
    reason: &str,
    dry_run: bool,
) -> Result<(FlagChange, Option<Revision>)> {
    super::users::validate_name(environment)?;
    let (before, kills) = current_definition(tx, environment)?;
    let diff = common::diff::diff(&before, &definition);
    let current_rev = latest(tx, environment)?.map(|r| r.revision);
    if diff.is_empty() || dry_run {
        return Ok((
            FlagChange {
                revision: current_rev,
                changed: !diff.is_empty(),
                diff,
            },
            None,
        ));
    }
    let summary = summarize(&diff);
    let rev = insert_revision(tx, environment, actor, &summary, definition.clone(), kills)?;
    audit::append(
        tx,
        NewEntry {
            actor,
            action: "flags.apply",
            target: format!("flags:{environment}"),
            reason,
            before,
            after: definition,
        },
    )?;
    Ok((
        FlagChange {
            revision: Some(rev.revision),
            changed: true,
            diff,
        },
        Some(rev),
    ))
}

/// Changes one flag's state or default variant.
#[allow(clippy::too_many_arguments)]
pub fn set(
    tx: &Transaction<'_>,
    actor: &Actor,
    environment: &str,
    key: &str,
    state: Option<&str>,
    default_variant: Option<&str>,
    reason: &str,
) -> Result<(FlagChange, Option<Revision>)> {
    let (before, kills) = current_definition(tx, environment)?;
    let mut after = before.clone();
    let flag = after
        .get_mut("flags")
        .and_then(|f| f.get_mut(key))
        .and_then(|f| f.as_object_mut())
        .ok_or_else(|| {
            StoreError::NotFound(format!(
                "flag {key:?} is not defined in environment {environment:?}"
            ))
        })?;
    if let Some(s) = state {
        if s != "ENABLED" && s != "DISABLED" {
            return Err(StoreError::Invalid(format!(
                "state must be ENABLED or DISABLED, not {s:?}"
            )));
        }
        flag.insert("state".into(), json!(s));
    }
    if let Some(v) = default_variant {
        flag.insert("defaultVariant".into(), json!(v));
    }
    FlagSet::from_value(&after).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let diff = common::diff::diff(&before, &after);
    if diff.is_empty() {
        return Ok((
            FlagChange {
                revision: latest(tx, environment)?.map(|r| r.revision),
                changed: false,
                diff,
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
