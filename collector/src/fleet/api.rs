//! The fleet's JSON API: environments, agents, enrollment tokens, revoking an agent.

use super::{agent_state, AgentView};
use crate::kernel::json::ReasonReq;
use crate::kernel::{ok, ApiError, ApiResult, Caller, Json};
use crate::store;
use crate::Ctx;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

pub(crate) async fn environments(State(ctx): State<Ctx>) -> ApiResult<Response> {
    let envs = ctx.store.read(store::agents::environments).await?;
    Ok(ok(&json!({ "environments": envs })))
}

#[derive(Deserialize)]
pub(crate) struct AgentFilter {
    environment: Option<String>,
    service: Option<String>,
}

pub(crate) async fn agents_list(
    State(ctx): State<Ctx>,
    Query(f): Query<AgentFilter>,
) -> ApiResult<Response> {
    let rows = ctx
        .store
        .read(move |c| store::agents::list(c, f.environment.as_deref(), f.service.as_deref()))
        .await?;
    let now = ctx.clock.now_ms();
    let views: Vec<AgentView> = rows
        .into_iter()
        .map(|row| AgentView {
            state: agent_state(&ctx, &row, now),
            last_seen: common::time::rfc3339(row.last_seen_ms),
            row,
        })
        .collect();
    Ok(ok(&json!({ "agents": views })))
}

#[derive(Deserialize)]
pub(crate) struct EnrollTokenReq {
    environment: String,
    service: String,
    expires: Option<String>,
    /// How many agents it may enroll (1 unless given).
    uses: Option<u32>,
}

pub(crate) async fn enroll_token_create(
    State(ctx): State<Ctx>,
    caller: Caller,
    Json(r): Json<EnrollTokenReq>,
) -> ApiResult<Response> {
    let actor = caller.actor();
    let expires = crate::auth::expiry_ms(Some(r.expires.as_deref().unwrap_or("24h")))
        .map_err(ApiError::bad_request)?;
    let uses = r.uses.unwrap_or(1);
    let (t, secret) = ctx
        .store
        .write(move |tx| {
            store::tokens::create_enroll_token(
                tx,
                &actor,
                &r.environment,
                &r.service,
                expires,
                uses,
            )
        })
        .await?;
    Ok(ok(
        &json!({"id": t.id, "environment": t.environment, "service": t.service, "expires": t.expires, "uses": t.max_uses, "token": secret}),
    ))
}

pub(crate) async fn enroll_tokens_list(State(ctx): State<Ctx>) -> ApiResult<Response> {
    let t = ctx.store.read(store::tokens::list_enroll_tokens).await?;
    Ok(ok(&json!({ "enroll_tokens": t })))
}

pub(crate) async fn enroll_token_revoke(
    State(ctx): State<Ctx>,
    caller: Caller,
    Path(id): Path<String>,
    Json(r): Json<ReasonReq>,
) -> ApiResult<Response> {
    super::revoke_enroll_token(&ctx, caller.actor(), id.clone(), r.reason).await?;
    Ok(ok(&json!({"id": id, "revoked": true})))
}

pub(crate) async fn agent_revoke(
    State(ctx): State<Ctx>,
    caller: Caller,
    Path(id): Path<String>,
    Json(r): Json<ReasonReq>,
) -> ApiResult<Response> {
    let actor = caller.actor();
    super::revoke_agent(&ctx, actor, id.clone(), r.reason).await?;
    Ok(ok(&json!({"id": id, "revoked": true})))
}
