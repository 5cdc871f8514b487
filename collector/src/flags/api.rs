//! The flags' JSON API: definitions (read, apply, set one flag) and revisions.

use crate::approvals::api::submitted;
use crate::kernel::json::EnvQuery;
use crate::kernel::{ok, ApiError, ApiResult, Caller, ErrorCode, Json};
use crate::store;
use crate::store::flags::FlagChange;
use crate::Ctx;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};

pub(crate) async fn flags_get_all(
    State(ctx): State<Ctx>,
    Query(q): Query<EnvQuery>,
) -> ApiResult<Response> {
    let latest = super::latest(&ctx, &q.environment).await?;
    let (revision, definition) = match latest {
        Some(r) => (Some(r.revision), r.flags),
        None => (None, store::flags::empty_definition()),
    };
    Ok(ok(
        &json!({"environment": q.environment, "revision": revision, "definition": definition}),
    ))
}

pub(crate) async fn flag_get(
    State(ctx): State<Ctx>,
    Path(key): Path<String>,
    Query(q): Query<EnvQuery>,
) -> ApiResult<Response> {
    let latest = super::latest(&ctx, &q.environment).await?;
    let flag = latest
        .as_ref()
        .and_then(|r| r.flags.get("flags").and_then(|f| f.get(&key)).cloned())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::FlagNotFound,
                format!(
                    "flag {key:?} is not defined in environment {:?}",
                    q.environment
                ),
            )
        })?;
    Ok(ok(
        &json!({"key": key, "environment": q.environment, "revision": latest.map(|r| r.revision), "flag": flag}),
    ))
}

#[derive(Deserialize)]
pub(crate) struct ApplyReq {
    environment: String,
    definition: Value,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    dry_run: bool,
    /// Apply even though the definition has warnings (they are recorded).
    #[serde(default)]
    accept_warnings: bool,
}

pub(crate) async fn flags_apply(
    State(ctx): State<Ctx>,
    caller: Caller,
    Json(r): Json<ApplyReq>,
) -> ApiResult<Response> {
    let refused = |e| {
        super::refusal(
            e,
            "the definition",
            "apply it with accept_warnings (opsctl flags apply --accept-warnings) to serve it anyway",
        )
    };
    if r.dry_run {
        // compiled on the blocking pool; nothing goes through the writer
        let change = super::preview(&ctx, &r.environment, r.definition)
            .await
            .map_err(refused)?;
        return Ok(ok(&change_view(change)));
    }
    let out = super::apply(
        &ctx,
        &caller.0,
        r.environment,
        r.definition,
        r.accept_warnings,
        &r.reason,
    )
    .await
    .map_err(|e| api_refusal(e, refused))?;
    submitted(out, Value::Null)
}

fn api_refusal(
    e: super::Refused,
    check: impl FnOnce(store::flags::FlagError) -> ApiError,
) -> ApiError {
    match e {
        super::Refused::Rule(e) => e,
        super::Refused::Check(e) => check(e),
    }
}

fn change_view(c: FlagChange) -> Value {
    json!({"revision": c.revision, "changed": c.changed, "diff": c.diff, "diff_text": common::diff::render(&c.diff), "warnings": c.warnings})
}

#[derive(Deserialize)]
pub(crate) struct FlagSetReq {
    environment: String,
    state: Option<String>,
    default_variant: Option<String>,
    #[serde(default)]
    reason: String,
}

pub(crate) async fn flag_set(
    State(ctx): State<Ctx>,
    caller: Caller,
    Path(key): Path<String>,
    Json(r): Json<FlagSetReq>,
) -> ApiResult<Response> {
    let out = super::set_flag(
        &ctx,
        &caller.0,
        r.environment,
        key,
        r.state,
        r.default_variant,
        &r.reason,
    )
    .await
    .map_err(|e| {
        api_refusal(e, |e| {
            super::refusal(
                e,
                "the changed definition",
                "the revision in force does not have them: apply the whole definition with accept_warnings (opsctl flags apply --accept-warnings) to accept them",
            )
        })
    })?;
    submitted(out, Value::Null)
}

#[derive(Deserialize)]
pub(crate) struct HistoryQuery {
    environment: String,
    limit: Option<usize>,
}

pub(crate) async fn revisions_list(
    State(ctx): State<Ctx>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(100).min(10_000);
    let h = ctx
        .store
        .read(move |c| store::flags::history(c, &q.environment, limit))
        .await?;
    Ok(ok(&json!({ "revisions": h })))
}

pub(crate) async fn revision_get(
    State(ctx): State<Ctx>,
    Path(n): Path<u64>,
) -> ApiResult<Response> {
    let r = ctx
        .store
        .read(move |c| store::flags::get(c, n))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no revision {n}")))?;
    Ok(ok(&r))
}
