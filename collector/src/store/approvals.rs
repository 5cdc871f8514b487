//! Four-eyes approval requests and the approval policy. A request stores the
//! operation to run (`payload`) and the exact diff it showed; what runs on
//! approval is decided in `crate::approvals`, inside the approval's own
//! transaction. Every step (request, approve, reject, expire) is audited here.

use super::audit::{self, NewEntry};
use super::schema::Migration;
use super::{schema, OptionalExtension, Result, StoreError};
use crate::auth::Actor;
use rusqlite::{params, Connection, Transaction};
use serde::Serialize;
use serde_json::{json, Value};

/// The `approvals` capability's migrations: four-eyes requests. Append
/// only: a released migration never changes (see ARCHITECTURE.md, "Store").
pub const MIGRATIONS: &[Migration] = &[
    // 1: four-eyes requests
    Migration {
        capability: "approvals",
        version: 1,
        sql: r#"
CREATE TABLE approvals (
    id TEXT PRIMARY KEY,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    payload TEXT NOT NULL,
    diff TEXT NOT NULL,
    reason TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    requested_role TEXT NOT NULL,
    requested_source TEXT NOT NULL,
    requested_user_agent TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    decided_by TEXT,
    decided_ms INTEGER,
    decision_reason TEXT
);
CREATE INDEX approvals_state ON approvals(state, created_ms);
"#,
    },
    // 2: the person behind every request (four-eyes compares persons, not
    // names): the owner of the token named as requester, else the user of
    // that name. Reads `api_tokens.owner` (access 3): access comes first in
    // `schema::MAIN`
    Migration {
        capability: "approvals",
        version: 2,
        sql: r#"
ALTER TABLE approvals ADD COLUMN requested_person TEXT NOT NULL DEFAULT '';
ALTER TABLE approvals ADD COLUMN requested_token_id TEXT;
UPDATE approvals SET requested_person = COALESCE(
    (SELECT t.owner FROM api_tokens t
     WHERE t.name = approvals.requested_by
       AND NOT EXISTS (SELECT 1 FROM users u WHERE u.name = approvals.requested_by)
     ORDER BY t.created_ms LIMIT 1),
    requested_by);
"#,
    },
];

#[derive(Debug, Clone, Serialize)]
pub struct Approval {
    pub id: String,
    pub action: String,
    pub target: String,
    #[serde(skip)]
    pub payload: Value,
    pub diff: Value,
    pub reason: String,
    /// The requester as recorded (a user, or `token:NAME (owner PERSON)`).
    pub requested_by: String,
    /// The person behind the request: nobody approves their own.
    pub requested_person: String,
    /// The API token the request came with, if any: revoking it withdraws
    /// the request's standing.
    pub requested_token_id: Option<String>,
    pub requested_role: String,
    #[serde(skip)]
    pub requested_source: String,
    #[serde(skip)]
    pub requested_user_agent: String,
    pub created: String,
    pub created_ms: i64,
    pub expires: String,
    pub expires_ms: i64,
    /// pending, approved, rejected or expired
    pub state: String,
    pub decided_by: Option<String>,
    pub decided: Option<String>,
    pub decision_reason: Option<String>,
}

impl Approval {
    /// The requester as the actor of the change once approved.
    pub fn requester(&self) -> Actor {
        Actor {
            name: self.requested_by.clone(),
            role: self
                .requested_role
                .parse()
                .unwrap_or(crate::auth::Role::Viewer),
            source: self.requested_source.clone(),
            user_agent: self.requested_user_agent.clone(),
            person: self.requested_person.clone(),
            token_id: self.requested_token_id.clone(),
        }
    }
}

const COLUMNS: &str = "id, action, target, payload, diff, reason, requested_by, requested_role,
    requested_source, requested_user_agent, created_ms, expires_ms, state, decided_by, decided_ms, decision_reason,
    requested_person, requested_token_id";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Approval> {
    let payload: String = r.get(3)?;
    let diff: String = r.get(4)?;
    let created_ms: i64 = r.get(10)?;
    let expires_ms: i64 = r.get(11)?;
    let decided_ms: Option<i64> = r.get(14)?;
    Ok(Approval {
        id: r.get(0)?,
        action: r.get(1)?,
        target: r.get(2)?,
        payload: serde_json::from_str(&payload).unwrap_or(Value::Null),
        diff: serde_json::from_str(&diff).unwrap_or(Value::Null),
        reason: r.get(5)?,
        requested_by: r.get(6)?,
        requested_role: r.get(7)?,
        requested_source: r.get(8)?,
        requested_user_agent: r.get(9)?,
        created: common::time::rfc3339(created_ms),
        created_ms,
        expires: common::time::rfc3339(expires_ms),
        expires_ms,
        state: r.get(12)?,
        decided_by: r.get(13)?,
        decided: decided_ms.map(common::time::rfc3339),
        decision_reason: r.get(15)?,
        requested_person: r.get(16)?,
        requested_token_id: r.get(17)?,
    })
}

/// Records a pending request and audits it.
#[allow(clippy::too_many_arguments)]
pub fn create(
    tx: &Transaction<'_>,
    actor: &Actor,
    action: &str,
    target: &str,
    payload: &Value,
    diff: &Value,
    reason: &str,
    expires_ms: i64,
) -> Result<Approval> {
    let (id_part, _) = crate::auth::new_secret(crate::auth::SecretKind::Session);
    let id = format!("apr_{id_part}");
    let now = common::time::now_ms();
    tx.execute(
        "INSERT INTO approvals (id, action, target, payload, diff, reason, requested_by, requested_role,
                                requested_source, requested_user_agent, created_ms, expires_ms, state,
                                requested_person, requested_token_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 'pending', ?13, ?14)",
        params![
            id,
            action,
            target,
            payload.to_string(),
            diff.to_string(),
            reason,
            actor.name,
            actor.role.as_str(),
            actor.source,
            actor.user_agent,
            now,
            expires_ms,
            actor.person,
            actor.token_id
        ],
    )?;
    audit::append(
        tx,
        NewEntry {
            actor,
            action: "approval.request",
            target: format!("approval:{id}"),
            reason,
            before: json!(null),
            after: json!({"action": action, "target": target, "changes": diff, "expires": common::time::rfc3339(expires_ms)}),
        },
    )?;
    get(tx, &id)?.ok_or_else(|| StoreError::NotFound(format!("no approval request {id}")))
}

pub fn get(conn: &Connection, id: &str) -> Result<Option<Approval>> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM approvals WHERE id = ?1"),
            [id],
            row,
        )
        .optional()?)
}

/// Newest first; `state` filters (e.g. "pending").
pub fn list(conn: &Connection, state: Option<&str>, limit: usize) -> Result<Vec<Approval>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM approvals WHERE (?1 IS NULL OR state = ?1) ORDER BY created_ms DESC, id LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![state, limit.min(10_000) as i64], row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn pending_count(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM approvals WHERE state = 'pending'",
        [],
        |r| r.get(0),
    )?)
}

/// Marks a pending request approved or rejected and audits the decision.
pub fn decide(
    tx: &Transaction<'_>,
    actor: &Actor,
    a: &Approval,
    approved: bool,
    reason: &str,
) -> Result<()> {
    let state = if approved { "approved" } else { "rejected" };
    let n = tx.execute(
        "UPDATE approvals SET state = ?2, decided_by = ?3, decided_ms = ?4, decision_reason = ?5
         WHERE id = ?1 AND state = 'pending'",
        params![a.id, state, actor.name, common::time::now_ms(), reason],
    )?;
    if n == 0 {
        return Err(StoreError::Conflict(format!(
            "request {} is no longer pending",
            a.id
        )));
    }
    audit::append(
        tx,
        NewEntry {
            actor,
            action: if approved {
                "approval.approve"
            } else {
                "approval.reject"
            },
            target: format!("approval:{}", a.id),
            reason,
            before: json!({"state": "pending", "action": a.action, "target": a.target, "requested_by": a.requested_by}),
            after: json!({"state": state, "action": a.action, "target": a.target, "requested_by": a.requested_by}),
        },
    )?;
    Ok(())
}

/// Expires every pending request past its deadline, one audit entry each.
pub fn expire_due(tx: &Transaction<'_>, actor: &Actor, now_ms: i64) -> Result<usize> {
    let due: Vec<Approval> = {
        let mut stmt = tx.prepare(&format!(
            "SELECT {COLUMNS} FROM approvals WHERE state = 'pending' AND expires_ms <= ?1"
        ))?;
        let rows = stmt.query_map([now_ms], row)?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for a in &due {
        tx.execute(
            "UPDATE approvals SET state = 'expired', decided_by = ?2, decided_ms = ?3 WHERE id = ?1",
            params![a.id, actor.name, now_ms],
        )?;
        audit::append(
            tx,
            NewEntry {
                actor,
                action: "approval.expire",
                target: format!("approval:{}", a.id),
                reason: "nobody approved it in time",
                before: json!({"state": "pending", "action": a.action, "target": a.target, "requested_by": a.requested_by}),
                after: json!({"state": "expired", "action": a.action, "target": a.target, "requested_by": a.requested_by}),
            },
        )?;
    }
    Ok(due.len())
}

const POLICY_KEY: &str = "approval_policy";

/// The policy as last saved from the console or API (`None`: the config's).
pub fn policy(conn: &Connection) -> Result<Option<Value>> {
    Ok(schema::meta_get(conn, POLICY_KEY)?.and_then(|s| serde_json::from_str(&s).ok()))
}

pub fn set_policy(
    tx: &Transaction<'_>,
    actor: &Actor,
    before: &Value,
    after: &Value,
    reason: &str,
) -> Result<()> {
    schema::meta_set(tx, POLICY_KEY, &after.to_string())?;
    audit::append(
        tx,
        NewEntry {
            actor,
            action: "approvals.policy.set",
            target: "approval_policy".into(),
            reason,
            before: before.clone(),
            after: after.clone(),
        },
    )?;
    Ok(())
}
