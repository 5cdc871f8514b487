//! Console login sessions. Only a SHA-256 hash of the session id is stored
//! (the id is a 192-bit random secret, like API tokens), with the role the
//! session was issued for, so a role change is noticed and the id renewed.
//! Logins, failed logins and logouts are audited here, in the same
//! transaction as the session row.

use super::audit::{self, NewEntry};
use super::{OptionalExtension, Result};
use crate::auth::{Actor, Role};
use rusqlite::{params, Connection, Transaction};
use serde_json::json;

#[derive(Debug, Clone)]
pub struct SessionRow {
    pub user: String,
    /// The user's role now (from `users`).
    pub role: Role,
    /// The role the session id was issued for.
    pub issued_role: Role,
    pub csrf: String,
    pub created_ms: i64,
    pub last_seen_ms: i64,
}

/// A short, non-secret reference to a session for the audit log.
fn session_ref(id_hash: &str) -> String {
    id_hash.chars().take(12).collect()
}

/// Creates a session after a successful login and audits the login.
pub fn login(tx: &Transaction<'_>, actor: &Actor, id_hash: &str, csrf: &str) -> Result<()> {
    let now = common::time::now_ms();
    tx.execute(
        "INSERT INTO sessions (id_hash, user_name, role, csrf, created_ms, last_seen_ms, source, user_agent)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7)",
        params![id_hash, actor.name, actor.role.as_str(), csrf, now, actor.source, actor.user_agent],
    )?;
    audit::append(
        tx,
        NewEntry {
            actor,
            action: "auth.login",
            target: format!("user:{}", actor.name),
            reason: "",
            before: json!(null),
            after: json!({"session": session_ref(id_hash)}),
        },
    )?;
    Ok(())
}

/// Audits a refused login; `name` is what was typed (not trusted).
pub fn login_failed(tx: &Transaction<'_>, actor: &Actor, name: &str, why: &str) -> Result<()> {
    let name: String = name.chars().take(64).collect();
    audit::append(
        tx,
        NewEntry {
            actor,
            action: "auth.login_failed",
            target: format!("user:{name}"),
            reason: why,
            before: json!(null),
            after: json!(null),
        },
    )?;
    Ok(())
}

/// Deletes the session (logout) and audits it; false when it did not exist.
pub fn logout(tx: &Transaction<'_>, actor: &Actor, id_hash: &str) -> Result<bool> {
    let n = tx.execute("DELETE FROM sessions WHERE id_hash = ?1", [id_hash])?;
    if n > 0 {
        audit::append(
            tx,
            NewEntry {
                actor,
                action: "auth.logout",
                target: format!("user:{}", actor.name),
                reason: "",
                before: json!({"session": session_ref(id_hash)}),
                after: json!(null),
            },
        )?;
    }
    Ok(n > 0)
}

/// The session and its user's current role; `None` when unknown or the user
/// is disabled or gone.
pub fn lookup(conn: &Connection, id_hash: &str) -> Result<Option<SessionRow>> {
    Ok(conn
        .query_row(
            "SELECT s.user_name, u.role, s.role, s.csrf, s.created_ms, s.last_seen_ms
             FROM sessions s JOIN users u ON u.name = s.user_name AND u.disabled_ms IS NULL
             WHERE s.id_hash = ?1",
            [id_hash],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            },
        )
        .optional()?
        .map(
            |(user, role, issued, csrf, created_ms, last_seen_ms)| SessionRow {
                user,
                role: role.parse().unwrap_or(Role::Viewer),
                issued_role: issued.parse().unwrap_or(Role::Viewer),
                csrf,
                created_ms,
                last_seen_ms,
            },
        ))
}

pub fn touch(tx: &Transaction<'_>, id_hash: &str, now_ms: i64) -> Result<()> {
    tx.execute(
        "UPDATE sessions SET last_seen_ms = ?2 WHERE id_hash = ?1",
        params![id_hash, now_ms],
    )?;
    Ok(())
}

/// Replaces the session id and its CSRF token (after a role change),
/// keeping the session's start time so the absolute timeout still counts
/// from the login.
pub fn rotate(
    tx: &Transaction<'_>,
    old_hash: &str,
    new_hash: &str,
    new_csrf: &str,
    role: Role,
    now_ms: i64,
) -> Result<bool> {
    let n = tx.execute(
        "UPDATE sessions SET id_hash = ?2, role = ?3, last_seen_ms = ?4, csrf = ?5 WHERE id_hash = ?1",
        params![old_hash, new_hash, role.as_str(), now_ms, new_csrf],
    )?;
    Ok(n > 0)
}

/// Ends one session without an audit entry (it timed out).
pub fn expire(tx: &Transaction<'_>, id_hash: &str) -> Result<()> {
    tx.execute("DELETE FROM sessions WHERE id_hash = ?1", [id_hash])?;
    Ok(())
}

/// Deletes sessions idle since before `idle_cutoff_ms` or started before
/// `absolute_cutoff_ms`; returns how many.
pub fn purge(tx: &Transaction<'_>, idle_cutoff_ms: i64, absolute_cutoff_ms: i64) -> Result<usize> {
    Ok(tx.execute(
        "DELETE FROM sessions WHERE last_seen_ms < ?1 OR created_ms < ?2",
        params![idle_cutoff_ms, absolute_cutoff_ms],
    )?)
}

pub fn count(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0))?)
}
