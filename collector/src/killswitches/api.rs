//! The kill switches' JSON API: list, declare, kill, revive.

use super::killswitch_views;
use crate::kernel::json::EnvQuery;
use crate::kernel::{ok, ApiResult, Caller, Json};
use crate::store;
use crate::Ctx;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

pub(crate) async fn killswitches_list(
    State(ctx): State<Ctx>,
    Query(q): Query<EnvQuery>,
) -> ApiResult<Response> {
    let views = killswitch_views(&ctx, &q.environment).await?;
    Ok(ok(
        &json!({"environment": q.environment, "killswitches": views}),
    ))
}

#[derive(Deserialize)]
pub(crate) struct CreateSwitchReq {
    name: String,
    #[serde(default)]
    description: String,
}

pub(crate) async fn killswitch_create(
    State(ctx): State<Ctx>,
    caller: Caller,
    Json(r): Json<CreateSwitchReq>,
) -> ApiResult<Response> {
    let actor = caller.actor();
    let name = r.name.clone();
    ctx.store
        .write(move |tx| store::killswitches::declare(tx, &actor, &r.name, &r.description))
        .await?;
    Ok(ok(&json!({"name": name, "created": true})))
}

#[derive(Deserialize)]
pub(crate) struct KillReq {
    environment: String,
    service: Option<String>,
    #[serde(default)]
    reason: String,
}

pub(crate) async fn kill(
    state: State<Ctx>,
    caller: Caller,
    name: Path<String>,
    body: Json<KillReq>,
) -> ApiResult<Response> {
    set_kill(state, caller, name, body, true).await
}

pub(crate) async fn revive(
    state: State<Ctx>,
    caller: Caller,
    name: Path<String>,
    body: Json<KillReq>,
) -> ApiResult<Response> {
    set_kill(state, caller, name, body, false).await
}

pub(crate) async fn set_kill(
    State(ctx): State<Ctx>,
    caller: Caller,
    Path(name): Path<String>,
    Json(r): Json<KillReq>,
    killed: bool,
) -> ApiResult<Response> {
    let actor = caller.actor();
    let outcome = super::set_kill(
        &ctx,
        actor,
        r.environment,
        r.service,
        name,
        killed,
        r.reason,
    )
    .await?;
    Ok(ok(&outcome))
}
