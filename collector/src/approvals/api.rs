//! The approvals' JSON API: requests (list, show, approve, reject) and the
//! policy; and how an approvable change is answered ([`submitted`]).

use crate::approvals;
use crate::kernel::error::require_reason;
use crate::kernel::json::ReasonReq;
use crate::kernel::{ok, ApiError, ApiResult, Caller, ErrorCode, Json};
use crate::store;
use crate::store::approvals::Approval;
use crate::Ctx;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

/// 200 with the result, or 202 with the pending request when the change
/// waits for a second person's approval. `extra` members (a secret shown
/// once) are added to either answer.
pub(crate) fn submitted(out: approvals::Submitted, extra: Value) -> ApiResult<Response> {
    let (status, mut v) = match out {
        approvals::Submitted::Applied(e) => (StatusCode::OK, e.output),
        approvals::Submitted::Pending(a) => (
            StatusCode::ACCEPTED,
            json!({"pending": true, "approval": approval_view(&a), "message": format!("waiting for approval by another person: request {}", a.id)}),
        ),
    };
    if let (Some(obj), Value::Object(more)) = (v.as_object_mut(), extra) {
        obj.extend(more);
    }
    Ok(crate::kernel::json_response(status, &v))
}

/// A request as answered, with the warnings a `flags apply` request
/// accepted (`accepted_warnings`), so whoever approves sees them.
fn approval_view(a: &Approval) -> Value {
    let mut v = serde_json::to_value(a).unwrap_or(Value::Null);
    if let (Some(obj), Ok(op)) = (
        v.as_object_mut(),
        serde_json::from_value::<approvals::Op>(a.payload.clone()),
    ) {
        if !op.accepted_warnings().is_empty() {
            obj.insert("accepted_warnings".into(), json!(op.accepted_warnings()));
        }
    }
    v
}

#[derive(Deserialize)]
pub(crate) struct ApprovalsQuery {
    state: Option<String>,
    limit: Option<usize>,
}

pub(crate) async fn approvals_list(
    State(ctx): State<Ctx>,
    Query(q): Query<ApprovalsQuery>,
) -> ApiResult<Response> {
    let state = q.state.filter(|s| !s.is_empty() && s != "all");
    let limit = q.limit.unwrap_or(100);
    let list = ctx
        .store
        .read(move |c| store::approvals::list(c, state.as_deref(), limit))
        .await?;
    let list: Vec<Value> = list.iter().map(approval_view).collect();
    Ok(ok(&json!({ "approvals": list })))
}

pub(crate) async fn approval_get(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let a = ctx
        .store
        .read(move |c| store::approvals::get(c, &id))
        .await?
        .ok_or_else(|| ApiError::not_found("no such approval request"))?;
    Ok(ok(&approval_view(&a)))
}

fn decided_view(d: approvals::Decided) -> Response {
    match d {
        approvals::Decided::Approved(a, e) => ok(&json!({"approval": a, "result": e.output})),
        approvals::Decided::Rejected(a) => ok(&json!({ "approval": a })),
        approvals::Decided::Expired(a) => ApiError::new(
            ErrorCode::Expired,
            format!("request {} expired at {}; nothing changed", a.id, a.expires),
        )
        .into_response(),
    }
}

// the caller is the token's owner: a requester cannot approve with any
// token of theirs
pub(crate) async fn approval_approve(
    ctx: State<Ctx>,
    caller: Caller,
    id: Path<String>,
    r: Json<ReasonReq>,
) -> ApiResult<Response> {
    decide(ctx, caller, id, r, true).await
}

pub(crate) async fn approval_reject(
    ctx: State<Ctx>,
    caller: Caller,
    id: Path<String>,
    r: Json<ReasonReq>,
) -> ApiResult<Response> {
    decide(ctx, caller, id, r, false).await
}

async fn decide(
    State(ctx): State<Ctx>,
    caller: Caller,
    Path(id): Path<String>,
    Json(r): Json<ReasonReq>,
    approve: bool,
) -> ApiResult<Response> {
    let d = if approve {
        approvals::approve(&ctx, &caller.0, &id, &r.reason).await?
    } else {
        approvals::reject(&ctx, &caller.0, &id, &r.reason).await?
    };
    Ok(decided_view(d))
}

pub(crate) async fn policy_get(State(ctx): State<Ctx>) -> ApiResult<Response> {
    Ok(ok(&approvals::policy(&ctx).await?))
}

#[derive(Deserialize)]
pub(crate) struct PolicyReq {
    #[serde(flatten)]
    policy: approvals::Policy,
    #[serde(default)]
    reason: String,
}

pub(crate) async fn policy_set(
    State(ctx): State<Ctx>,
    caller: Caller,
    Json(r): Json<PolicyReq>,
) -> ApiResult<Response> {
    let actor = caller.actor();
    require_reason(&r.reason)?;
    submitted(
        approvals::set_policy(&ctx, &actor, r.policy, &r.reason).await?,
        Value::Null,
    )
}
