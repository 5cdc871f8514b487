//! Access's JSON API: who am I, users, API tokens.

use crate::approvals::{self, api::submitted};
use crate::kernel::json::ReasonReq;
use crate::kernel::{ok, ApiError, ApiResult, Caller, Json, Role};
use crate::store;
use crate::Ctx;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};

pub(crate) async fn whoami(caller: Caller) -> Response {
    ok(
        &json!({"name": caller.0.name, "role": caller.0.role, "source": caller.0.source, "person": caller.0.person, "token_id": caller.0.token_id}),
    )
}

pub(crate) async fn tokens_list(State(ctx): State<Ctx>) -> ApiResult<Response> {
    let t = ctx.store.read(store::tokens::list_api_tokens).await?;
    Ok(ok(&json!({ "tokens": t })))
}

#[derive(Deserialize)]
pub(crate) struct TokenReq {
    name: String,
    role: Role,
    expires: Option<String>,
    #[serde(default)]
    reason: String,
}

pub(crate) async fn token_create(
    State(ctx): State<Ctx>,
    caller: Caller,
    Json(r): Json<TokenReq>,
) -> ApiResult<Response> {
    let actor = caller.actor();
    let expires = crate::auth::expiry_ms(r.expires.as_deref()).map_err(ApiError::bad_request)?;
    let (id, secret) = crate::auth::new_secret(crate::auth::SecretKind::ApiToken);
    let op = approvals::Op::TokenCreate {
        id,
        name: r.name,
        role: r.role,
        secret_hash: crate::auth::hash_secret(&secret),
        expires_ms: expires,
    };
    let out = approvals::submit(&ctx, &actor, op, &r.reason).await?;
    submitted(out, json!({ "token": secret }))
}

pub(crate) async fn token_revoke(
    State(ctx): State<Ctx>,
    caller: Caller,
    Path(id): Path<String>,
    Json(r): Json<ReasonReq>,
) -> ApiResult<Response> {
    super::revoke_token(&ctx, caller.actor(), id.clone(), r.reason).await?;
    Ok(ok(&json!({"id": id, "revoked": true})))
}

pub(crate) async fn users_list(State(ctx): State<Ctx>) -> ApiResult<Response> {
    let u = ctx.store.read(store::users::list).await?;
    Ok(ok(&json!({ "users": u })))
}

#[derive(Deserialize)]
pub(crate) struct UserReq {
    name: String,
    role: Role,
    password: Option<String>,
    #[serde(default)]
    reason: String,
}

pub(crate) async fn user_add(
    State(ctx): State<Ctx>,
    caller: Caller,
    Json(r): Json<UserReq>,
) -> ApiResult<Response> {
    let actor = caller.actor();
    let (password, generated) = match r.password {
        Some(p) if p.len() >= 12 => (p, false),
        Some(_) => {
            return Err(ApiError::bad_request(
                "password must be at least 12 characters",
            ))
        }
        None => (crate::auth::new_password(), true),
    };
    let hash = tokio::task::spawn_blocking({
        let p = password.clone();
        move || crate::auth::hash_password(&p)
    })
    .await
    .map_err(|_| ApiError::internal())?
    .map_err(|_| ApiError::internal())?;
    let op = approvals::Op::UserAdd {
        name: r.name,
        role: r.role,
        password_hash: hash,
    };
    let out = approvals::submit(&ctx, &actor, op, &r.reason).await?;
    submitted(
        out,
        if generated {
            json!({ "password": password })
        } else {
            Value::Null
        },
    )
}

#[derive(Deserialize)]
pub(crate) struct RoleReq {
    role: Role,
    #[serde(default)]
    reason: String,
}

pub(crate) async fn user_set_role(
    State(ctx): State<Ctx>,
    caller: Caller,
    Path(name): Path<String>,
    Json(r): Json<RoleReq>,
) -> ApiResult<Response> {
    let actor = caller.actor();
    let op = approvals::Op::UserSetRole { name, role: r.role };
    submitted(
        approvals::submit(&ctx, &actor, op, &r.reason).await?,
        Value::Null,
    )
}
