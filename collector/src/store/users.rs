//! Console users: name, role, argon2id password hash.

use super::audit::{self, NewEntry};
use super::schema::Migration;
use super::{OptionalExtension, Result, StoreError};
use crate::auth::{Actor, Role};
use rusqlite::{params, Connection, Transaction};
use serde::Serialize;
use serde_json::json;

/// The `access` capability's migrations: users, API tokens (`tokens.rs`)
/// and console sessions (`sessions.rs`). Append only: a released migration
/// never changes (see ARCHITECTURE.md, "Store").
pub const MIGRATIONS: &[Migration] = &[
    // 1: users and API tokens
    Migration {
        capability: "access",
        version: 1,
        sql: r#"
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    disabled_ms INTEGER
);
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    expires_ms INTEGER,
    revoked_ms INTEGER,
    last_used_ms INTEGER
);
"#,
    },
    // 2: console sessions
    Migration {
        capability: "access",
        version: 2,
        sql: r#"
CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY,
    user_name TEXT NOT NULL,
    role TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    source TEXT NOT NULL,
    user_agent TEXT NOT NULL
);
CREATE INDEX sessions_user ON sessions(user_name);
"#,
    },
    // 3: the person behind every token: existing tokens are owned by their
    // creator (init's token by the admin it was made for)
    Migration {
        capability: "access",
        version: 3,
        sql: r#"
ALTER TABLE api_tokens ADD COLUMN owner TEXT NOT NULL DEFAULT '';
UPDATE api_tokens SET owner = CASE WHEN created_by = 'system:init' THEN name ELSE created_by END;
"#,
    },
];

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub created: String,
    pub disabled: bool,
}

pub fn add(
    tx: &Transaction<'_>,
    actor: &Actor,
    name: &str,
    role: Role,
    password_hash: &str,
    reason: &str,
) -> Result<User> {
    validate_name(name)?;
    let exists: Option<i64> = tx
        .query_row("SELECT id FROM users WHERE name = ?1", [name], |r| r.get(0))
        .optional()?;
    if exists.is_some() {
        return Err(StoreError::Conflict(format!(
            "user {name:?} already exists"
        )));
    }
    let now = common::time::now_ms();
    tx.execute(
        "INSERT INTO users (name, role, password_hash, created_ms) VALUES (?1, ?2, ?3, ?4)",
        params![name, role.as_str(), password_hash, now],
    )?;
    audit::append(
        tx,
        NewEntry {
            actor,
            action: "user.add",
            target: format!("user:{name}"),
            reason,
            before: json!(null),
            after: json!({"name": name, "role": role.as_str()}),
        },
    )?;
    Ok(User {
        name: name.into(),
        role,
        created: common::time::rfc3339(now),
        disabled: false,
    })
}

/// Changes a user's role; open sessions notice on their next request and
/// get a new session id.
pub fn set_role(
    tx: &Transaction<'_>,
    actor: &Actor,
    name: &str,
    role: Role,
    reason: &str,
) -> Result<User> {
    let before: Option<(String, i64, Option<i64>)> = tx
        .query_row(
            "SELECT role, created_ms, disabled_ms FROM users WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let (old, created_ms, disabled_ms) =
        before.ok_or_else(|| StoreError::NotFound(format!("no user {name:?}")))?;
    tx.execute(
        "UPDATE users SET role = ?2 WHERE name = ?1",
        params![name, role.as_str()],
    )?;
    if old != role.as_str() {
        audit::append(
            tx,
            NewEntry {
                actor,
                action: "user.set_role",
                target: format!("user:{name}"),
                reason,
                before: json!({"name": name, "role": old}),
                after: json!({"name": name, "role": role.as_str()}),
            },
        )?;
    }
    Ok(User {
        name: name.into(),
        role,
        created: common::time::rfc3339(created_ms),
        disabled: disabled_ms.is_some(),
    })
}

/// Names of enabled users other than `except` whose role is at least `role`.
pub fn others_with_role(conn: &Connection, except: &str, role: Role) -> Result<Vec<String>> {
    Ok(list(conn)?
        .into_iter()
        .filter(|u| !u.disabled && u.name != except && u.role.allows(role))
        .map(|u| u.name)
        .collect())
}

pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
    {
        return Err(StoreError::Invalid(format!(
            "invalid name {name:?}: use 1-64 letters, digits, '-', '_', '.', '@'"
        )));
    }
    Ok(())
}

pub fn list(conn: &Connection) -> Result<Vec<User>> {
    let mut stmt =
        conn.prepare("SELECT name, role, created_ms, disabled_ms FROM users ORDER BY name")?;
    let rows = stmt.query_map([], |r| {
        let role: String = r.get(1)?;
        Ok(User {
            name: r.get(0)?,
            role: role.parse().unwrap_or(Role::Viewer),
            created: common::time::rfc3339(r.get(2)?),
            disabled: r.get::<_, Option<i64>>(3)?.is_some(),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// `(role, password hash)` of an enabled user.
pub fn credentials(conn: &Connection, name: &str) -> Result<Option<(Role, String)>> {
    Ok(conn
        .query_row(
            "SELECT role, password_hash FROM users WHERE name = ?1 AND disabled_ms IS NULL",
            [name],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
        )
        .optional()?
        .map(|(role, hash)| (role.parse().unwrap_or(Role::Viewer), hash)))
}
