//! Kill-switch state per environment (and optionally per service), central
//! declarations, and the names agents report they enforce.

use super::audit::{self, NewEntry};
use super::schema::Migration;
use super::{flags, Result, StoreError};
use crate::auth::Actor;
use common::wire::{KillState, Revision};
use rusqlite::{params, Connection, Transaction};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;

/// The `killswitches` capability's migrations: states and declarations.
/// Append only: a released migration never changes (see ARCHITECTURE.md,
/// "Store").
pub const MIGRATIONS: &[Migration] = &[
    // 1: kill-switch state and central declarations
    Migration {
        capability: "killswitches",
        version: 1,
        sql: r#"
CREATE TABLE killswitch_state (
    environment TEXT NOT NULL,
    service TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL,
    killed INTEGER NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    since_ms INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    PRIMARY KEY (environment, service, name)
);
CREATE TABLE killswitch_decl (
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL
);
"#,
    },
];

#[derive(Debug, Clone, Serialize)]
pub struct Declared {
    pub name: String,
    pub description: String,
}

pub fn validate_name(name: &str) -> Result<()> {
    super::users::validate_name(name)
}

pub fn declare(tx: &Transaction<'_>, actor: &Actor, name: &str, description: &str) -> Result<()> {
    validate_name(name)?;
    let n = tx.execute(
        "INSERT INTO killswitch_decl (name, description, created_ms, created_by) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(name) DO NOTHING",
        params![name, description, common::time::now_ms(), actor.name],
    )?;
    if n == 0 {
        return Err(StoreError::Conflict(format!(
            "kill switch {name:?} is already declared"
        )));
    }
    audit::append(
        tx,
        NewEntry {
            actor,
            action: "killswitch.create",
            target: format!("killswitch:{name}"),
            reason: "",
            before: json!(null),
            after: json!({"name": name, "description": description}),
        },
    )?;
    Ok(())
}

pub fn declared(conn: &Connection) -> Result<Vec<Declared>> {
    let mut stmt = conn.prepare("SELECT name, description FROM killswitch_decl ORDER BY name")?;
    let rows = stmt.query_map([], |r| {
        Ok(Declared {
            name: r.get(0)?,
            description: r.get(1)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every switch name known in `environment`, with where it is known from:
/// central declarations, agents' configs (with the services declaring it),
/// and existing states.
pub fn known(conn: &Connection, environment: &str) -> Result<BTreeMap<String, Known>> {
    let mut out: BTreeMap<String, Known> = BTreeMap::new();
    for d in declared(conn)? {
        out.entry(d.name).or_default().description = Some(d.description);
    }
    let mut stmt = conn.prepare(
        "SELECT DISTINCT service, j.value FROM agents, json_each(agents.killswitches) AS j
         WHERE environment = ?1 AND revoked_ms IS NULL",
    )?;
    let rows = stmt.query_map([environment], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    for row in rows {
        let (service, name) = row?;
        let k = out.entry(name).or_default();
        if !k.enforced_by_services.contains(&service) {
            k.enforced_by_services.push(service);
        }
    }
    let mut stmt =
        conn.prepare("SELECT DISTINCT name FROM killswitch_state WHERE environment = ?1")?;
    let rows = stmt.query_map([environment], |r| r.get::<_, String>(0))?;
    for name in rows {
        out.entry(name?).or_default();
    }
    Ok(out)
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Known {
    pub description: Option<String>,
    pub enforced_by_services: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KillOutcome {
    pub changed: bool,
    pub revision: Option<u64>,
    pub state: KillState,
}

/// Kills or revives `name` in `environment` (for one service, or all). A new
/// revision carries the environment's complete kill-switch state.
#[allow(clippy::too_many_arguments)]
pub fn set_state(
    tx: &Transaction<'_>,
    actor: &Actor,
    environment: &str,
    service: Option<&str>,
    name: &str,
    killed: bool,
    reason: &str,
) -> Result<(KillOutcome, Option<Revision>)> {
    let known = known(tx, environment)?;
    if !known.contains_key(name) {
        let names: Vec<&str> = known.keys().map(|s| s.as_str()).collect();
        return Err(StoreError::NotFound(format!(
            "unknown kill switch {name:?} in environment {environment:?}; known: {}",
            if names.is_empty() {
                "(none)".to_string()
            } else {
                names.join(", ")
            }
        )));
    }
    let svc = service.unwrap_or("");
    let latest = flags::latest(tx, environment)?;
    let current = latest.as_ref().and_then(|r| {
        r.killswitches
            .iter()
            .find(|k| k.name == name && k.service.as_deref().unwrap_or("") == svc)
            .cloned()
    });
    if current.as_ref().map(|c| c.killed) == Some(killed) || (current.is_none() && !killed) {
        let state = current.unwrap_or(KillState {
            name: name.into(),
            service: service.map(Into::into),
            killed,
            reason: String::new(),
            by: String::new(),
            since_ms: 0,
        });
        return Ok((
            KillOutcome {
                changed: false,
                revision: latest.map(|r| r.revision),
                state,
            },
            None,
        ));
    }
    let now = common::time::now_ms();
    let state = KillState {
        name: name.into(),
        service: service.map(Into::into),
        killed,
        reason: reason.into(),
        by: actor.name.clone(),
        since_ms: now,
    };
    let (flags_def, mut kills) = match latest {
        Some(r) => (r.flags, r.killswitches),
        None => (flags::empty_definition(), Vec::new()),
    };
    kills.retain(|k| !(k.name == name && k.service.as_deref().unwrap_or("") == svc));
    kills.push(state.clone());
    kills.sort_by(|a, b| (&a.name, &a.service).cmp(&(&b.name, &b.service)));
    let verb = if killed { "kill" } else { "revive" };
    let scope = service.map(|s| format!("/{s}")).unwrap_or_default();
    let rev = flags::insert_revision(
        tx,
        environment,
        actor,
        &format!("{verb} {name}{scope}"),
        flags_def,
        kills,
    )?;
    tx.execute(
        "INSERT INTO killswitch_state (environment, service, name, killed, reason, actor, since_ms, revision)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT(environment, service, name) DO UPDATE SET killed = excluded.killed,
            reason = excluded.reason, actor = excluded.actor, since_ms = excluded.since_ms, revision = excluded.revision",
        params![environment, svc, name, killed, reason, actor.name, now, rev.revision as i64],
    )?;
    audit::append(
        tx,
        NewEntry {
            actor,
            action: if killed {
                "killswitch.kill"
            } else {
                "killswitch.revive"
            },
            target: format!("killswitch:{environment}{scope}/{name}"),
            reason,
            before: json!({"killed": !killed}),
            after: json!({"killed": killed}),
        },
    )?;
    Ok((
        KillOutcome {
            changed: true,
            revision: Some(rev.revision),
            state,
        },
        Some(rev),
    ))
}

/// `(service, name) -> revision at which the current state was set`.
pub fn state_revisions(
    conn: &Connection,
    environment: &str,
) -> Result<BTreeMap<(String, String), u64>> {
    let mut stmt = conn
        .prepare("SELECT service, name, revision FROM killswitch_state WHERE environment = ?1")?;
    let rows = stmt.query_map([environment], |r| {
        Ok((
            (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
            r.get::<_, i64>(2)? as u64,
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
