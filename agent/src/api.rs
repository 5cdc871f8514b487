//! The agent's local API (SPEC section 6): health, readiness, status,
//! metrics, flags and kill switches as plain JSON, and OFREP single and bulk
//! evaluation so any OpenFeature SDK works unchanged. Every answer comes from
//! memory; errors are JSON, never HTML.

use crate::metrics::Metrics;
use crate::state::{Shared, Snapshot};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use common::flags::{EvalContext, Evaluation, Reason};
use common::wire::ErrorBody;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

pub mod bulk;
pub use bulk::BulkCache;

pub type AppState = Arc<Shared>;

pub fn router(shared: AppState) -> Router {
    let bulk_cache = Arc::new(BulkCache::default());
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/flags", get(flags_all))
        .route("/v1/flags/{key}", get(flag_one))
        .route("/v1/killswitches", get(killswitches_all))
        .route("/v1/killswitches/{name}", get(killswitch_one))
        .route(
            "/ofrep/v1/evaluate/flags",
            post(ofrep_bulk).layer(axum::Extension(bulk_cache)),
        )
        .route("/ofrep/v1/evaluate/flags/{key}", post(ofrep_single))
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            require_token,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(protected)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "method not allowed on this route",
            )
        })
        .with_state(shared)
}

fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn json_value<T: Serialize>(status: StatusCode, v: &T) -> Response {
    json_bytes(status, serde_json::to_vec(v).unwrap_or_default())
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    json_value(status, &ErrorBody::new(code, message))
}

async fn require_token(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(want) = &s.config.api_token {
        let h = req.headers();
        let given = h
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| h.get("x-api-key").and_then(|v| v.to_str().ok()));
        if !given.is_some_and(|g| constant_time_eq(g.trim().as_bytes(), want.as_bytes())) {
            return error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "missing or wrong API token",
            );
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn healthz() -> Response {
    json_bytes(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
}

async fn readyz(State(s): State<AppState>) -> Response {
    match s.snapshot.load().as_ref() {
        Some(snap) => json_value(
            StatusCode::OK,
            &json!({"status": "ready", "revision": snap.revision, "source": snap.source.as_str()}),
        ),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "NOT_READY",
            "no flag snapshot yet (collector not reached and no cached copy)",
        ),
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    let mut r = Response::new(Body::from(crate::metrics::render(&s)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

async fn status(State(s): State<AppState>) -> Response {
    let snap = s.snapshot.load();
    let c = s.collector_status();
    let flags = match snap.as_ref() {
        Some(sn) => {
            let stale = match sn.source {
                crate::state::Source::Cache => true,
                crate::state::Source::Collector => !c.connected,
                crate::state::Source::File => false,
            };
            json!({"revision": sn.revision, "age_s": s.snapshot_age_s(sn), "source": sn.source.as_str(), "stale": stale, "count": sn.flags.len()})
        }
        None => json!({"revision": null, "age_s": null, "source": null, "stale": true, "count": 0}),
    };
    let id = &s.identity;
    let body = json!({
        "agent": {
            "id": c.agent_id,
            "service": id.service,
            "environment": id.environment,
            "instance": id.instance,
            "host": id.host,
            "version": id.version,
            "labels": id.labels,
            "uptime_s": s.started.elapsed().as_secs(),
        },
        "collector": {
            "configured": s.config.collector.is_some(),
            "url": s.config.collector.as_ref().map(|c| c.url.clone()),
            "connected": c.connected,
            "last_contact": c.last_contact_ms.map(common::time::rfc3339),
            "last_error": c.last_error,
            "revoked": c.revoked,
        },
        "flags": flags,
        "killswitches": {
            "killed": snap.as_ref().map(|sn| sn.killed.iter().cloned().collect::<Vec<_>>()).unwrap_or_default(),
            "enforced": s.config.killswitches.iter().map(|k| k.name.clone()).collect::<Vec<_>>(),
        },
        "maintenance": [],
        "checks": {},
    });
    json_value(StatusCode::OK, &body)
}

fn not_ready() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "NOT_READY",
        "no flag snapshot yet",
    )
}

/// Query parameters become context attributes (strings).
fn query_context(s: &Shared, q: &HashMap<String, String>) -> EvalContext {
    let overlay: Map<String, Value> = q
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    EvalContext::merged(&s.base_ctx, &overlay)
}

fn local_view(e: &Evaluation<'_>) -> Value {
    let mut m = Map::new();
    if let Some(v) = &e.value {
        m.insert("value".into(), v.as_ref().clone());
    }
    m.insert(
        "variant".into(),
        e.variant
            .map(|v| Value::String(v.into()))
            .unwrap_or(Value::Null),
    );
    m.insert("reason".into(), Value::String(e.reason.as_str().into()));
    if let Some(err) = &e.error {
        m.insert(
            "error".into(),
            json!({"code": err.code.as_str(), "message": err.message}),
        );
    }
    Value::Object(m)
}

async fn flags_all(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    Metrics::inc(&s.metrics.eval_local);
    let snap = s.snapshot.load_full();
    let Some(snap) = snap else { return not_ready() };
    let ctx = query_context(&s, &q);
    let evals = snap.flags.evaluate_all(&ctx);
    let mut out = Vec::with_capacity(64 + evals.len() * 96);
    bulk::write_local_all(&mut out, snap.revision, &evals);
    json_bytes(StatusCode::OK, out)
}

async fn flag_one(
    State(s): State<AppState>,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    Metrics::inc(&s.metrics.eval_local);
    let snap = s.snapshot.load_full();
    let Some(snap) = snap else { return not_ready() };
    let ctx = query_context(&s, &q);
    match snap.flags.evaluate(&key, &ctx) {
        None => error(
            StatusCode::NOT_FOUND,
            "FLAG_NOT_FOUND",
            format!("flag {key:?} is not defined"),
        ),
        Some(e) => {
            let mut v = local_view(&e);
            v["key"] = Value::String(key);
            v["revision"] = json!(snap.revision);
            json_value(StatusCode::OK, &v)
        }
    }
}

fn killswitch_view(s: &Shared, snap: &Snapshot, name: &str) -> Option<Value> {
    let declared = s.config.killswitches.iter().any(|k| k.name == name);
    match snap.doc.kill_state_for(name, &s.identity.service) {
        Some(k) => Some(json!({
            "name": name,
            "killed": k.killed,
            "reason": k.reason,
            "since": common::time::rfc3339(k.since_ms),
            "by": k.by,
            "service": k.service,
        })),
        None if declared => Some(
            json!({"name": name, "killed": false, "reason": "", "since": null, "by": null, "service": null}),
        ),
        None => None,
    }
}

async fn killswitches_all(State(s): State<AppState>) -> Response {
    let snap = s.snapshot.load_full();
    let Some(snap) = snap else { return not_ready() };
    let mut names: std::collections::BTreeSet<&str> =
        snap.doc.kill_names_for(&s.identity.service).collect();
    names.extend(s.config.killswitches.iter().map(|k| k.name.as_str()));
    let mut out = Map::new();
    for n in names {
        if let Some(mut v) = killswitch_view(&s, &snap, n) {
            if let Some(o) = v.as_object_mut() {
                o.remove("name");
            }
            out.insert(n.to_string(), v);
        }
    }
    json_value(
        StatusCode::OK,
        &json!({"revision": snap.revision, "killswitches": out}),
    )
}

async fn killswitch_one(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    let snap = s.snapshot.load_full();
    let Some(snap) = snap else { return not_ready() };
    match killswitch_view(&s, &snap, &name) {
        Some(mut v) => {
            v["revision"] = json!(snap.revision);
            json_value(StatusCode::OK, &v)
        }
        None => error(
            StatusCode::NOT_FOUND,
            "KILLSWITCH_NOT_FOUND",
            format!("kill switch {name:?} is not known here (treat as not killed)"),
        ),
    }
}

// ---- OFREP ----

#[derive(Serialize)]
struct OfrepSuccess<'a> {
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a Value>,
    reason: &'static str,
    /// Always present (the Python provider requires it); empty when there is none.
    variant: &'a str,
    metadata: &'a Map<String, Value>,
}

#[derive(Serialize)]
struct OfrepFailure<'a> {
    key: &'a str,
    #[serde(rename = "errorCode")]
    error_code: &'a str,
    #[serde(rename = "errorDetails")]
    error_details: &'a str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum OfrepItem<'a> {
    Ok(OfrepSuccess<'a>),
    Err(OfrepFailure<'a>),
}

fn ofrep_item<'a>(key: &'a str, e: &'a Evaluation<'a>) -> OfrepItem<'a> {
    match (&e.reason, &e.error) {
        (Reason::Error, Some(err)) => OfrepItem::Err(OfrepFailure {
            key,
            error_code: err.code.as_str(),
            error_details: &err.message,
        }),
        _ => OfrepItem::Ok(OfrepSuccess {
            key,
            value: e.value.as_deref(),
            reason: e.reason.as_str(),
            variant: e.variant.unwrap_or(""),
            metadata: e.metadata,
        }),
    }
}

/// The OFREP request body: missing body, `{}` or a missing `context` are an
/// empty context (as real SDKs send); anything unparsable is `PARSE_ERROR`.
fn ofrep_context(
    s: &Shared,
    body: &[u8],
) -> Result<EvalContext, (StatusCode, &'static str, String)> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(s.base_ctx.clone());
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            "PARSE_ERROR",
            format!(
                "invalid JSON at line {} column {}: {e}",
                e.line(),
                e.column()
            ),
        )
    })?;
    let Value::Object(mut top) = v else {
        return Err((
            StatusCode::BAD_REQUEST,
            "INVALID_CONTEXT",
            "the request body must be a JSON object".into(),
        ));
    };
    match top.remove("context") {
        None | Some(Value::Null) => Ok(s.base_ctx.clone()),
        // A targetingKey that is not a string is passed on as flagd does:
        // rules see it as it is, and `fractional` treats it as missing (the
        // default variant), rather than refusing the whole evaluation.
        Some(Value::Object(ctx)) => Ok(EvalContext::merged(&s.base_ctx, &ctx)),
        Some(_) => Err((
            StatusCode::BAD_REQUEST,
            "INVALID_CONTEXT",
            "context must be a JSON object".into(),
        )),
    }
}

async fn read_limited(s: &Shared, body: Body) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, s.config.max_body_bytes).await.map_err(|_| {
        json_value(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"errorCode": "GENERAL", "errorDetails": format!("request body larger than {} bytes", s.config.max_body_bytes)}),
        )
    })
}

async fn ofrep_single(State(s): State<AppState>, Path(key): Path<String>, body: Body) -> Response {
    Metrics::inc(&s.metrics.eval_ofrep_single);
    let bytes = match read_limited(&s, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let failure = |status: StatusCode, code: &str, details: &str| {
        json_value(
            status,
            &OfrepFailure {
                key: &key,
                error_code: code,
                error_details: details,
            },
        )
    };
    let ctx = match ofrep_context(&s, &bytes) {
        Ok(c) => c,
        Err((st, code, msg)) => return failure(st, code, &msg),
    };
    let snap = s.snapshot.load_full();
    let Some(snap) = snap else {
        return json_value(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"errorDetails": "no flag snapshot yet"}),
        );
    };
    match snap.flags.evaluate(&key, &ctx) {
        None => failure(
            StatusCode::NOT_FOUND,
            "FLAG_NOT_FOUND",
            &format!("flag '{key}' was not found"),
        ),
        Some(e) => {
            let item = ofrep_item(&key, &e);
            let status = if matches!(item, OfrepItem::Err(_)) {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            };
            json_value(status, &item)
        }
    }
}

/// `If-None-Match` per RFC 9110: `*` or a list of entity tags, weak comparison.
fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_string();
    let want = strip(etag);
    headers.get_all(header::IF_NONE_MATCH).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim() == "*" || strip(t) == want))
            .unwrap_or(false)
    })
}

async fn ofrep_bulk(
    State(s): State<AppState>,
    axum::Extension(cache): axum::Extension<Arc<BulkCache>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    Metrics::inc(&s.metrics.eval_ofrep_bulk);
    let bytes = match read_limited(&s, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let ctx = match ofrep_context(&s, &bytes) {
        Ok(c) => c,
        Err((st, code, msg)) => {
            return json_value(st, &json!({"errorCode": code, "errorDetails": msg}))
        }
    };
    let snap = s.snapshot.load_full();
    let Some(snap) = snap else {
        return json_value(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"errorDetails": "no flag snapshot yet"}),
        );
    };
    let ctx_key = bulk::context_key(&ctx);
    let hash = bulk::hash_key(&ctx_key);
    let before_s = bulk::now_s();
    let hit = match cache.get(&snap, hash, &ctx_key, before_s) {
        Some(hit) => hit,
        None => {
            let evals = snap.flags.evaluate_all(&ctx);
            let mut out = Vec::with_capacity(cache.size_hint());
            bulk::write_ofrep_bulk(&mut out, snap.revision, &evals);
            drop(evals);
            cache.note_size(out.len());
            // the ETag covers the evaluated body, so a context change never gets a stale 304
            let hit = bulk::Hit::new(snap.revision, out);
            let after_s = bulk::now_s();
            if after_s == before_s {
                cache.put(&snap, hash, &ctx_key, &hit, before_s);
            }
            hit
        }
    };
    if etag_matches(&headers, hit.etag.to_str().unwrap_or_default()) {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r.headers_mut().insert(header::ETAG, hit.etag);
        return r;
    }
    let mut r = Response::new(Body::from(hit.body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(header::ETAG, hit.etag);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_parsing() {
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"a\", W/\"b\""),
        );
        assert!(etag_matches(&h, "\"b\""));
        assert!(etag_matches(&h, "\"a\""));
        assert!(!etag_matches(&h, "\"c\""));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(etag_matches(&h, "\"zzz\""));
        assert!(!etag_matches(&HeaderMap::new(), "\"a\""));
    }
}
