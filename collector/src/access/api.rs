//! Access's JSON API: who am I, users, API tokens.

use crate::approvals::{self, api::submitted};
use crate::kernel::json::ReasonReq;
use crate::kernel::{ok, ApiResult, Caller, Json, Role};
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

pub(crate) async fn token_create(
    State(ctx): State<Ctx>,
    caller: Caller,
    Json(r): Json<super::NewToken>,
) -> ApiResult<Response> {
    let (out, minted) = super::create_token(&ctx, &caller.0, r).await?;
    submitted(out, json!({ "token": minted.secret }))
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

pub(crate) async fn user_add(
    State(ctx): State<Ctx>,
    caller: Caller,
    Json(r): Json<super::NewUser>,
) -> ApiResult<Response> {
    let (out, password) = super::add_user(&ctx, &caller.0, r).await?;
    let extra = match password {
        Some(p) => json!({ "password": p }),
        None => Value::Null,
    };
    submitted(out, extra)
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
