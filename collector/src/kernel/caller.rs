//! Who is calling: roles, the [`Actor`] every audit entry records, and the
//! [`Caller`] of an admin API route, authenticated from its API token. The
//! console's signed-in user is an [`Actor`] too (`console::Session`). Bearer
//! parsing and constant-time comparison live here, once.

use super::error::{ApiError, ApiResult};
use crate::store;
use crate::Ctx;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::{header, request::Parts, HeaderMap};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;

/// The roles of the admin plane; each includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Responder,
    Operator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Responder, Role::Operator, Role::Admin];

    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Responder => "responder",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn allows(&self, needed: Role) -> bool {
        *self >= needed
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "responder" => Ok(Role::Responder),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!(
                "unknown role {s:?} (viewer, responder, operator or admin)"
            )),
        }
    }
}

/// Who is calling an admin route; recorded in every audit entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// As recorded in the audit log: a user's name, `token:NAME (owner
    /// PERSON)` for an API token (a colon never appears in a user name, so a
    /// token cannot pass for a user), or `system:...` for the collector.
    pub name: String,
    pub role: Role,
    pub source: String,
    pub user_agent: String,
    /// The person accountable: the user, or the owner of the API token used.
    /// Four-eyes compares persons, never display names.
    pub person: String,
    /// The API token used, if any.
    pub token_id: Option<String>,
}

impl Actor {
    /// The collector itself (init, internal housekeeping).
    pub fn system(name: &str) -> Self {
        Actor {
            name: name.into(),
            role: Role::Admin,
            source: "local".into(),
            user_agent: "opsplane-collector".into(),
            person: name.into(),
            token_id: None,
        }
    }

    /// A signed-in user (console).
    pub fn user(name: &str, role: Role, source: String, user_agent: String) -> Self {
        Actor {
            name: name.into(),
            role,
            source,
            user_agent,
            person: name.into(),
            token_id: None,
        }
    }

    /// A caller holding API token `token_id` named `token_name`, owned by `owner`.
    pub fn token(
        token_id: &str,
        token_name: &str,
        owner: &str,
        role: Role,
        source: String,
        user_agent: String,
    ) -> Self {
        Actor {
            name: token_actor_name(token_name, owner),
            role,
            source,
            user_agent,
            person: owner.into(),
            token_id: Some(token_id.into()),
        }
    }
}

/// How an API token appears as an actor: `token:ci (owner alice)`.
pub fn token_actor_name(token_name: &str, owner: &str) -> String {
    format!("token:{token_name} (owner {owner})")
}

/// The secret of an `Authorization: Bearer ...` header, trimmed.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Constant-time comparison of two secrets (of their SHA-256 digests, so
/// the length is not revealed either).
pub fn constant_time_eq(given: &[u8], want: &[u8]) -> bool {
    let a = Sha256::digest(given);
    let b = Sha256::digest(want);
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The caller's address, as recorded in audit entries.
pub fn source_of(parts_ext: &axum::http::Extensions) -> String {
    parts_ext
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The caller's `User-Agent`, clipped to 200 characters.
pub fn user_agent_of(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}

/// The authenticated caller of an admin API route. The route's layer
/// (`kernel::route`) authenticates it and checks the declared role before
/// the handler runs; the handler takes it from the request.
#[derive(Debug, Clone)]
pub struct Caller(pub Actor);

impl Caller {
    /// Authenticates the API token of a request.
    pub async fn authenticate(ctx: &Ctx, parts: &Parts) -> ApiResult<Caller> {
        let source = source_of(&parts.extensions);
        let user_agent = user_agent_of(&parts.headers);
        let token = bearer(&parts.headers).map(str::to_string).ok_or_else(|| {
            ApiError::unauthorized("missing API token (Authorization: Bearer opsp_...)")
        })?;
        let found = ctx
            .store
            .read(move |c| store::tokens::authenticate_api_token(c, &token))
            .await?;
        let t =
            found.ok_or_else(|| ApiError::unauthorized("unknown, expired or revoked API token"))?;
        Ok(Caller(Actor::token(
            &t.id, &t.name, &t.owner, t.role, source, user_agent,
        )))
    }

    pub fn actor(&self) -> Actor {
        self.0.clone()
    }
}

impl FromRequestParts<Ctx> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, ctx: &Ctx) -> Result<Self, ApiError> {
        match parts.extensions.get::<Caller>() {
            Some(c) => Ok(c.clone()),
            None => Caller::authenticate(ctx, parts).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin.allows(Role::Operator));
        assert!(Role::Responder.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Responder));
        assert!(!Role::Operator.allows(Role::Admin));
    }

    #[test]
    fn bearer_and_comparison() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer  opsp_x ".parse().unwrap());
        assert_eq!(bearer(&h), Some("opsp_x"));
        h.insert(header::AUTHORIZATION, "Basic x".parse().unwrap());
        assert_eq!(bearer(&h), None);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
