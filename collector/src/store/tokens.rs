//! API tokens (for `opsctl` and scripts) and enrollment tokens (for agents).
//! Only hashes are stored; the secret is returned once at creation. Every
//! API token has an owner: the person who created it (who asked for it, when
//! its creation waited for approval), so four-eyes can tell a token's holder
//! from its name. Enrollment tokens are single-use unless created with a
//! count, and can be revoked.

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
    /// The person behind the token.
    pub owner: String,
    pub expires: Option<String>,
    pub revoked: Option<String>,
}

/// Creates a token owned by `actor`'s person.
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
        "INSERT INTO api_tokens (id, name, role, hash, created_ms, created_by, expires_ms, owner)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            id,
            name,
            role.as_str(),
            secret_hash,
            now,
            actor.name,
            expires_ms,
            actor.person
        ],
    )?;
    let token = ApiToken {
        id: id.to_string(),
        name: name.into(),
        role,
        created: common::time::rfc3339(now),
        created_by: actor.name.clone(),
        owner: actor.person.clone(),
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
            after: json!({"id": id, "name": name, "role": role.as_str(), "owner": token.owner, "expires": token.expires}),
        },
    )?;
    Ok(token)
}

/// Whether API token `id` still works (known, not revoked, not expired).
pub fn api_token_usable(conn: &Connection, id: &str) -> Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM api_tokens
             WHERE id = ?1 AND revoked_ms IS NULL AND (expires_ms IS NULL OR expires_ms > ?2)",
            params![id, common::time::now_ms()],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
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
        "SELECT id, name, role, created_ms, created_by, expires_ms, revoked_ms, owner FROM api_tokens ORDER BY created_ms",
    )?;
    let rows = stmt.query_map([], |r| {
        let role: String = r.get(2)?;
        Ok(ApiToken {
            id: r.get(0)?,
            name: r.get(1)?,
            role: role.parse().unwrap_or(Role::Viewer),
            created: common::time::rfc3339(r.get(3)?),
            created_by: r.get(4)?,
            owner: r.get(7)?,
            expires: r.get::<_, Option<i64>>(5)?.map(common::time::rfc3339),
            revoked: r.get::<_, Option<i64>>(6)?.map(common::time::rfc3339),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// An API token that authenticated a request.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub owner: String,
}

/// The token if it is known, not revoked and not expired.
pub fn authenticate_api_token(conn: &Connection, secret: &str) -> Result<Option<TokenAuth>> {
    let now = common::time::now_ms();
    Ok(conn
        .query_row(
            "SELECT id, name, role, owner FROM api_tokens
             WHERE hash = ?1 AND revoked_ms IS NULL AND (expires_ms IS NULL OR expires_ms > ?2)",
            params![hash_secret(secret), now],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            },
        )
        .optional()?
        .and_then(|(id, name, role, owner)| {
            role.parse().ok().map(|role| TokenAuth {
                id,
                name,
                role,
                owner,
            })
        }))
}

/// Most agents one enrollment token may enroll.
pub const MAX_ENROLL_USES: u32 = 10_000;

#[derive(Debug, Clone, Serialize)]
pub struct EnrollToken {
    pub id: String,
    pub environment: String,
    pub service: String,
    pub expires: Option<String>,
    /// How many agents it may enroll.
    pub max_uses: Option<u32>,
    /// How many it enrolled.
    pub uses: u32,
    pub created: String,
    pub created_by: String,
    pub revoked: Option<String>,
}

#[allow(clippy::too_many_arguments)]
pub fn create_enroll_token(
    tx: &Transaction<'_>,
    actor: &Actor,
    environment: &str,
    service: &str,
    expires_ms: Option<i64>,
    max_uses: u32,
) -> Result<(EnrollToken, String)> {
    super::users::validate_name(environment)?;
    super::users::validate_name(service)?;
    if max_uses == 0 || max_uses > MAX_ENROLL_USES {
        return Err(StoreError::Invalid(format!(
            "an enrollment token enrolls 1 to {MAX_ENROLL_USES} agents, not {max_uses}"
        )));
    }
    let (id, secret) = new_secret(SecretKind::EnrollToken);
    let now = common::time::now_ms();
    tx.execute(
        "INSERT INTO enroll_tokens (id, hash, environment, service, created_ms, created_by, expires_ms, max_uses)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![id, hash_secret(&secret), environment, service, now, actor.name, expires_ms, max_uses],
    )?;
    let t = EnrollToken {
        id: id.clone(),
        environment: environment.into(),
        service: service.into(),
        expires: expires_ms.map(common::time::rfc3339),
        max_uses: Some(max_uses),
        uses: 0,
        created: common::time::rfc3339(now),
        created_by: actor.name.clone(),
        revoked: None,
    };
    audit::append(
        tx,
        NewEntry {
            actor,
            action: "agent.enroll_token.create",
            target: format!("enroll_token:{id}"),
            reason: "",
            before: json!(null),
            after: json!({"id": t.id, "environment": t.environment, "service": t.service, "expires": t.expires, "max_uses": max_uses}),
        },
    )?;
    Ok((t, secret))
}

/// Every enrollment token, newest first.
pub fn list_enroll_tokens(conn: &Connection) -> Result<Vec<EnrollToken>> {
    let mut stmt = conn.prepare(
        "SELECT id, environment, service, expires_ms, max_uses, uses, created_ms, created_by, revoked_ms
         FROM enroll_tokens ORDER BY created_ms DESC, id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(EnrollToken {
            id: r.get(0)?,
            environment: r.get(1)?,
            service: r.get(2)?,
            expires: r.get::<_, Option<i64>>(3)?.map(common::time::rfc3339),
            max_uses: r
                .get::<_, Option<i64>>(4)?
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            uses: u32::try_from(r.get::<_, i64>(5)?).unwrap_or(u32::MAX),
            created: common::time::rfc3339(r.get(6)?),
            created_by: r.get(7)?,
            revoked: r.get::<_, Option<i64>>(8)?.map(common::time::rfc3339),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn revoke_enroll_token(
    tx: &Transaction<'_>,
    actor: &Actor,
    id: &str,
    reason: &str,
) -> Result<()> {
    let n = tx.execute(
        "UPDATE enroll_tokens SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
        params![id, common::time::now_ms()],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(format!(
            "no active enrollment token with id {id:?}"
        )));
    }
    audit::append(
        tx,
        NewEntry {
            actor,
            action: "agent.enroll_token.revoke",
            target: format!("enroll_token:{id}"),
            reason,
            before: json!({"revoked": false}),
            after: json!({"revoked": true}),
        },
    )?;
    Ok(())
}

/// `(id, environment, service)` of a usable enrollment token (not revoked,
/// not expired, uses left). Enrollment consumes a use with
/// [`consume_enroll_token`] in its own transaction.
pub fn find_enroll_token(
    conn: &Connection,
    secret: &str,
) -> Result<Option<(String, String, String)>> {
    Ok(conn
        .query_row(
            "SELECT id, environment, service FROM enroll_tokens
             WHERE hash = ?1 AND revoked_ms IS NULL AND (expires_ms IS NULL OR expires_ms > ?2)
               AND (max_uses IS NULL OR uses < max_uses)",
            params![hash_secret(secret), common::time::now_ms()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?)
}

/// Takes one use of enrollment token `id` inside the enrolling transaction;
/// false when it is revoked, expired or used up (so two agents racing for
/// the last use cannot both get it).
pub fn consume_enroll_token(tx: &Transaction<'_>, id: &str) -> Result<bool> {
    let n = tx.execute(
        "UPDATE enroll_tokens SET uses = uses + 1
         WHERE id = ?1 AND revoked_ms IS NULL AND (expires_ms IS NULL OR expires_ms > ?2)
           AND (max_uses IS NULL OR uses < max_uses)",
        params![id, common::time::now_ms()],
    )?;
    Ok(n == 1)
}
