//! The audit log's JSON API: list (filtered), verify the chain, export.

use crate::kernel::{ok, ApiError, ApiResult};
use crate::store::audit;
use crate::Ctx;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
pub(crate) struct AuditQuery {
    since: Option<String>,
    until: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    limit: Option<usize>,
}

/// `"24h"` (ago) or an RFC 3339 time.
fn parse_time(s: &str) -> ApiResult<i64> {
    if let Some(t) = common::time::parse_rfc3339(s) {
        return Ok(t);
    }
    let d = common::config::parse_duration(s).map_err(ApiError::bad_request)?;
    Ok(common::time::now_ms() - d.as_millis() as i64)
}

pub(crate) async fn audit_list(
    State(ctx): State<Ctx>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Response> {
    let f = audit::Filter {
        since_ms: q.since.as_deref().map(parse_time).transpose()?,
        until_ms: q.until.as_deref().map(parse_time).transpose()?,
        actor: q.actor.filter(|s| !s.is_empty()),
        action: q.action.filter(|s| !s.is_empty()),
        target: q.target.filter(|s| !s.is_empty()),
        limit: q.limit,
    };
    let entries = ctx.store.read(move |c| audit::list(c, &f)).await?;
    Ok(ok(&json!({ "entries": entries })))
}

pub(crate) async fn audit_verify(State(ctx): State<Ctx>) -> ApiResult<Response> {
    let report = ctx.store.read(audit::verify).await?;
    Ok(ok(&report))
}

#[derive(Deserialize)]
pub(crate) struct ExportQuery {
    format: Option<String>,
}

pub(crate) async fn audit_export(
    State(ctx): State<Ctx>,
    Query(q): Query<ExportQuery>,
) -> ApiResult<Response> {
    let format = q.format.unwrap_or_else(|| "jsonl".into());
    let (ctype, csv) = match format.as_str() {
        "jsonl" => ("application/x-ndjson", false),
        "csv" => ("text/csv; charset=utf-8", true),
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown format {other:?} (jsonl or csv)"
            )))
        }
    };
    let body = ctx.store.read(move |c| audit::export(c, csv)).await?;
    Ok(([(header::CONTENT_TYPE, ctype)], body).into_response())
}
