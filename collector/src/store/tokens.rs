//! API tokens (for `opsctl` and scripts) and enrollment tokens (for agents).
//! Only hashes are stored; the secret is returned once at creation.

use super::audit::{self, NewEntry};
use super::{OptionalExtension, Result, StoreError};
use crate::auth::{hash_secret, new_secret, Actor, Role, SecretKind};
use rusqlite::{params, Connection, Transaction};
use serde::Serialize;
use serde_json::json;

#[derive(Debug, Clone, Serialize)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created: String,
    pub created_by: String,
    pub expires: Option<String>,
    pub revoked: Option<String>,
}

pub fn create_api_token(
    tx: &Transaction<'_>,
    actor: &Actor,
    name: &str,
    role: Role,
    expires_ms: Option<i64>,
    reason: &str,
) -> Result<(ApiToken, String)> {
    let (id, secret) = new_secret(SecretKind::ApiToken);
    let token = insert_api_token(
        tx,
        actor,
        &id,
        &hash_secret(&secret),
        name,
        role,
        expires_ms,
        reason,
    )?;
    Ok((token, secret))
}

/// Stores a token whose secret was generated earlier (a four-eyes request
/// shows the secret to its requester once; approval makes it valid).
#[allow(clippy::too_many_arguments)]
pub fn insert_api_token(
    tx: &Transaction<'_>,
    actor: &Actor,
    id: &str,
    secret_hash: &str,
    name: &str,
    role: Role,
    expires_ms: Option<i64>,
    reason: &str,
) -> Result<ApiToken> {
    super::users::validate_name(name)?;
    let now = common::time::now_ms();
    tx.execute(
        "INSERT INTO api_tokens (id, name, role, hash, created_ms, created_by, expires_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            id,
            name,
            role.as_str(),
            secret_hash,
            now,
            actor.name,
            expires_ms
        ],
    )?;
    let token = ApiToken {
        id: id.to_string(),
        name: name.into(),
        role,
        created: common::time::rfc3339(now),
        created_by: actor.name.clone(),
        expires: expires_ms.map(common::time::rfc3339),
        revoked: None,
    };
    audit::append(
        tx,
        NewEntry {
            actor,
            action: "token.create",
            target: format!("token:{id}"),
            reason,
            before: json!(null),
            after: json!({"id": id, "name": name, "role": role.as_str(), "expires": token.expires}),
        },
    )?;
    Ok(token)
}

/// Who created the API token `secret` (to stop a requester approving their
/// own four-eyes request with a token they minted themselves).
pub fn creator_of(conn: &Connection, secret: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT created_by FROM api_tokens WHERE hash = ?1",
            [hash_secret(secret)],
            |r| r.get(0),
        )
        .optional()?)
}

pub fn revoke_api_token(tx: &Transaction<'_>, actor: &Actor, id: &str, reason: &str) -> Result<()> {
    let n = tx.execute(
        "UPDATE api_tokens SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
        params![id, common::time::now_ms()],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(format!(
            "no active token with id {id:?}"
        )));
    }
    audit::append(
        tx,
        NewEntry {
            actor,
            action: "token.revoke",
            target: format!("token:{id}"),
            reason,
            before: json!({"revoked": false}),
            after: json!({"revoked": true}),
        },
    )?;
    Ok(())
}

pub fn list_api_tokens(conn: &Connection) -> Result<Vec<ApiToken>> {
    let mut stmt = conn.prepare(
        "SELECT id, name, role, created_ms, created_by, expires_ms, revoked_ms FROM api_tokens ORDER BY created_ms",
    )?;
    let rows = stmt.query_map([], |r| {
        let role: String = r.get(2)?;
        Ok(ApiToken {
            id: r.get(0)?,
            name: r.get(1)?,
            role: role.parse().unwrap_or(Role::Viewer),
            created: common::time::rfc3339(r.get(3)?),
            created_by: r.get(4)?,
            expires: r.get::<_, Option<i64>>(5)?.map(common::time::rfc3339),
            revoked: r.get::<_, Option<i64>>(6)?.map(common::time::rfc3339),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The token's `(id, name, role)` if it is known, not revoked and not expired.
pub fn authenticate_api_token(
    conn: &Connection,
    secret: &str,
) -> Result<Option<(String, String, Role)>> {
    let now = common::time::now_ms();
    Ok(conn
        .query_row(
            "SELECT id, name, role FROM api_tokens
             WHERE hash = ?1 AND revoked_ms IS NULL AND (expires_ms IS NULL OR expires_ms > ?2)",
            params![hash_secret(secret), now],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )
        .optional()?
        .and_then(|(id, name, role)| role.parse().ok().map(|role| (id, name, role))))
}

#[derive(Debug, Clone, Serialize)]
pub struct EnrollToken {
    pub id: String,
    pub environment: String,
    pub service: String,
    pub expires: Option<String>,
}

pub fn create_enroll_token(
    tx: &Transaction<'_>,
    actor: &Actor,
    environment: &str,
    service: &str,
    expires_ms: Option<i64>,
) -> Result<(EnrollToken, String)> {
    super::users::validate_name(environment)?;
    super::users::validate_name(service)?;
    let (id, secret) = new_secret(SecretKind::EnrollToken);
    tx.execute(
        "INSERT INTO enroll_tokens (id, hash, environment, service, created_ms, created_by, expires_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![id, hash_secret(&secret), environment, service, common::time::now_ms(), actor.name, expires_ms],
    )?;
    let t = EnrollToken {
        id: id.clone(),
        environment: environment.into(),
        service: service.into(),
        expires: expires_ms.map(common::time::rfc3339),
    };
    audit::append(
        tx,
        NewEntry {
            actor,
            action: "agent.enroll_token.create",
            target: format!("enroll_token:{id}"),
            reason: "",
            before: json!(null),
            after: serde_json::to_value(&t)?,
        },
    )?;
    Ok((t, secret))
}

/// `(id, environment, service)` of a usable enrollment token.
pub fn find_enroll_token(
    conn: &Connection,
    secret: &str,
) -> Result<Option<(String, String, String)>> {
    Ok(conn
        .query_row(
            "SELECT id, environment, service FROM enroll_tokens
             WHERE hash = ?1 AND revoked_ms IS NULL AND (expires_ms IS NULL OR expires_ms > ?2)",
            params![hash_secret(secret), common::time::now_ms()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?)
}
