//! Enrolled agents: identity, per-agent credential (hash), last contact and
//! the revision each has applied.

use super::audit::{self, NewEntry};
use super::schema::Migration;
use super::{OptionalExtension, Result, StoreError};
use crate::auth::{hash_secret, new_secret, Actor, SecretKind};
use common::wire::{AgentIdentity, Heartbeat};
use rusqlite::{params, Connection, Transaction};
use serde::Serialize;
use serde_json::json;

/// The `fleet` capability's migrations: enrolled agents and enrollment
/// tokens (`tokens.rs`). Append only: a released migration never changes
/// (see ARCHITECTURE.md, "Store").
pub const MIGRATIONS: &[Migration] = &[
    // 1: enrollment tokens and enrolled agents
    Migration {
        capability: "fleet",
        version: 1,
        sql: r#"
CREATE TABLE enroll_tokens (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    environment TEXT NOT NULL,
    service TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    expires_ms INTEGER,
    revoked_ms INTEGER,
    uses INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    credential_hash TEXT NOT NULL UNIQUE,
    service TEXT NOT NULL,
    environment TEXT NOT NULL,
    instance TEXT NOT NULL,
    host TEXT NOT NULL,
    version TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}',
    enrolled_ms INTEGER NOT NULL,
    enroll_token_id TEXT,
    last_seen_ms INTEGER NOT NULL,
    applied_revision INTEGER,
    applied_ms INTEGER,
    killswitches TEXT NOT NULL DEFAULT '[]',
    revoked_ms INTEGER
);
CREATE INDEX agents_env ON agents(environment, service);
"#,
    },
    // 2: enrollment tokens with a use count (existing ones keep unlimited
    // uses until they expire or are revoked)
    Migration {
        capability: "fleet",
        version: 2,
        sql: r#"
ALTER TABLE enroll_tokens ADD COLUMN max_uses INTEGER;
"#,
    },
];

#[derive(Debug, Clone, Serialize)]
pub struct AgentRow {
    pub id: String,
    pub service: String,
    pub environment: String,
    pub instance: String,
    pub host: String,
    pub version: String,
    pub labels: serde_json::Value,
    pub enrolled_ms: i64,
    pub last_seen_ms: i64,
    pub applied_revision: Option<u64>,
    pub applied_ms: Option<i64>,
    pub killswitches: Vec<String>,
    pub revoked_ms: Option<i64>,
}

/// What the ingest listener knows about a caller after checking its credential.
#[derive(Debug, Clone)]
pub struct AgentAuth {
    pub id: String,
    pub service: String,
    pub environment: String,
    pub revoked: bool,
}

/// Enrolls an agent with enrollment token `token_id`, taking one of its
/// uses; `None` when the token is revoked, expired or used up by now.
pub fn enroll(
    tx: &Transaction<'_>,
    token_id: &str,
    identity: &AgentIdentity,
) -> Result<Option<(String, String)>> {
    if !super::tokens::consume_enroll_token(tx, token_id)? {
        return Ok(None);
    }
    let (id_part, credential) = new_secret(SecretKind::AgentCredential);
    let now = common::time::now_ms();
    let agent_id = format!("agt_{id_part}");
    tx.execute(
        "INSERT INTO agents (id, credential_hash, service, environment, instance, host, version, labels,
                             enrolled_ms, enroll_token_id, last_seen_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?9)",
        params![
            agent_id,
            hash_secret(&credential),
            identity.service,
            identity.environment,
            identity.instance,
            identity.host,
            identity.version,
            serde_json::to_string(&identity.labels)?,
            now,
            token_id
        ],
    )?;
    Ok(Some((agent_id, credential)))
}

/// Whether agent `id` is revoked (true also when it is unknown).
pub fn is_revoked(conn: &Connection, id: &str) -> Result<bool> {
    Ok(conn
        .query_row("SELECT revoked_ms FROM agents WHERE id = ?1", [id], |r| {
            r.get::<_, Option<i64>>(0)
        })
        .optional()?
        .is_none_or(|revoked| revoked.is_some()))
}

pub fn authenticate(conn: &Connection, credential: &str) -> Result<Option<AgentAuth>> {
    Ok(conn
        .query_row(
            "SELECT id, service, environment, revoked_ms FROM agents WHERE credential_hash = ?1",
            [hash_secret(credential)],
            |r| {
                Ok(AgentAuth {
                    id: r.get(0)?,
                    service: r.get(1)?,
                    environment: r.get(2)?,
                    revoked: r.get::<_, Option<i64>>(3)?.is_some(),
                })
            },
        )
        .optional()?)
}

pub fn heartbeat(tx: &Transaction<'_>, id: &str, hb: &Heartbeat) -> Result<()> {
    let now = common::time::now_ms();
    tx.execute(
        "UPDATE agents SET last_seen_ms = ?2, instance = ?3, host = ?4, version = ?5, labels = ?6,
                killswitches = ?7,
                applied_ms = CASE WHEN ?8 IS NOT NULL AND (applied_revision IS NULL OR applied_revision != ?8) THEN ?2 ELSE applied_ms END,
                applied_revision = COALESCE(?8, applied_revision)
         WHERE id = ?1",
        params![
            id,
            now,
            hb.identity.instance,
            hb.identity.host,
            hb.identity.version,
            serde_json::to_string(&hb.identity.labels)?,
            serde_json::to_string(&hb.killswitches)?,
            hb.revision.map(|r| r as i64),
        ],
    )?;
    Ok(())
}

pub fn ack(tx: &Transaction<'_>, id: &str, revision: u64) -> Result<()> {
    let now = common::time::now_ms();
    tx.execute(
        "UPDATE agents SET applied_revision = ?2, applied_ms = ?3, last_seen_ms = ?3 WHERE id = ?1",
        params![id, revision as i64, now],
    )?;
    Ok(())
}

/// Records a batch of acknowledgements in one transaction.
pub fn ack_many(tx: &Transaction<'_>, acks: &[(String, u64, i64)]) -> Result<()> {
    let mut stmt = tx.prepare_cached(
        "UPDATE agents SET applied_revision = ?2, applied_ms = ?3, last_seen_ms = ?3 WHERE id = ?1",
    )?;
    for (id, rev, at) in acks {
        stmt.execute(params![id, *rev as i64, at])?;
    }
    Ok(())
}

const COLUMNS: &str =
    "id, service, environment, instance, host, version, labels, enrolled_ms, last_seen_ms,
    applied_revision, applied_ms, killswitches, revoked_ms";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AgentRow> {
    let labels: String = r.get(6)?;
    let ks: String = r.get(11)?;
    Ok(AgentRow {
        id: r.get(0)?,
        service: r.get(1)?,
        environment: r.get(2)?,
        instance: r.get(3)?,
        host: r.get(4)?,
        version: r.get(5)?,
        labels: serde_json::from_str(&labels).unwrap_or(json!({})),
        enrolled_ms: r.get(7)?,
        last_seen_ms: r.get(8)?,
        applied_revision: r.get::<_, Option<i64>>(9)?.map(|v| v as u64),
        applied_ms: r.get(10)?,
        killswitches: serde_json::from_str(&ks).unwrap_or_default(),
        revoked_ms: r.get(12)?,
    })
}

pub fn list(
    conn: &Connection,
    environment: Option<&str>,
    service: Option<&str>,
) -> Result<Vec<AgentRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM agents
         WHERE (?1 IS NULL OR environment = ?1) AND (?2 IS NULL OR service = ?2)
         ORDER BY environment, service, instance, id"
    ))?;
    let rows = stmt.query_map(params![environment, service], row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn get(conn: &Connection, id: &str) -> Result<Option<AgentRow>> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM agents WHERE id = ?1"),
            [id],
            row,
        )
        .optional()?)
}

pub fn revoke(tx: &Transaction<'_>, actor: &Actor, id: &str, reason: &str) -> Result<()> {
    let before = get(tx, id)?.ok_or_else(|| StoreError::NotFound(format!("no agent {id:?}")))?;
    if before.revoked_ms.is_some() {
        return Err(StoreError::Conflict(format!(
            "agent {id} is already revoked"
        )));
    }
    tx.execute(
        "UPDATE agents SET revoked_ms = ?2 WHERE id = ?1",
        params![id, common::time::now_ms()],
    )?;
    audit::append(
        tx,
        NewEntry {
            actor,
            action: "agent.revoke",
            target: format!("agent:{id}"),
            reason,
            before: json!({"revoked": false, "service": before.service, "environment": before.environment, "instance": before.instance}),
            after: json!({"revoked": true, "service": before.service, "environment": before.environment, "instance": before.instance}),
        },
    )?;
    Ok(())
}

/// Environments anything is known for (agents, tokens, revisions).
pub fn environments(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT environment FROM agents UNION SELECT environment FROM enroll_tokens
         UNION SELECT environment FROM revisions ORDER BY 1",
    )?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
