//! The admin listener's JSON API (`/api/v1/...`), used by `opsctl` and the
//! console. Every route checks the caller's role on the server; every
//! mutation goes through the store, which writes its audit entry in the same
//! transaction, and newly committed revisions are pushed to agents.

use crate::api::{healthz, not_found, ApiError, ApiResult, BodyLimit, Json};
use crate::approvals;
use crate::auth::{Actor, Role};
use crate::store::{
    self,
    agents::AgentRow,
    approvals::Approval,
    audit,
    flags::{FlagChange, FlagError},
};
use crate::Ctx;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, Request, State};
use axum::http::{header, request::Parts, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::net::SocketAddr;

/// An agent not heard from for this long counts as gone.
pub const GONE_AFTER_MS: i64 = 10 * 60 * 1000;

pub fn router(ctx: Ctx) -> Router {
    let api = Router::new()
        .route("/whoami", get(whoami))
        .route("/environments", get(environments))
        .route("/agents", get(agents_list))
        .route(
            "/agents/enroll-tokens",
            get(enroll_tokens_list).post(enroll_token_create),
        )
        .route(
            "/agents/enroll-tokens/{id}/revoke",
            post(enroll_token_revoke),
        )
        .route("/agents/{id}/revoke", post(agent_revoke))
        .route("/flags", get(flags_get_all))
        .route(
            "/flags/apply",
            post(flags_apply).layer(axum::Extension(BodyLimit(crate::api::MAX_DEFINITION_BYTES))),
        )
        .route("/flags/{key}", get(flag_get).post(flag_set))
        .route("/revisions", get(revisions_list))
        .route("/revisions/{revision}", get(revision_get))
        .route(
            "/killswitches",
            get(killswitches_list).post(killswitch_create),
        )
        .route("/killswitches/{name}/kill", post(kill))
        .route("/killswitches/{name}/revive", post(revive))
        .route("/audit", get(audit_list))
        .route("/audit/verify", get(audit_verify))
        .route("/audit/export", get(audit_export))
        .route("/tokens", get(tokens_list).post(token_create))
        .route("/tokens/{id}/revoke", post(token_revoke))
        .route("/users", get(users_list).post(user_add))
        .route("/users/{name}/role", post(user_set_role))
        .route("/approvals", get(approvals_list))
        .route("/approvals/{id}", get(approval_get))
        .route("/approvals/{id}/approve", post(approval_approve))
        .route("/approvals/{id}/reject", post(approval_reject))
        .route("/approval-policy", get(policy_get).post(policy_set))
        .fallback(not_found);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/api/v1", api)
        .merge(crate::console::router(ctx.clone()))
        .fallback(not_found)
        .layer(middleware::from_fn(no_store))
        .with_state(ctx)
}

async fn no_store(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// The authenticated caller of an admin route.
pub struct Caller(pub Actor);

impl Caller {
    pub fn require(&self, role: Role) -> ApiResult<&Actor> {
        if self.0.role.allows(role) {
            Ok(&self.0)
        } else {
            Err(ApiError::forbidden(format!(
                "this needs the {} role; {} has {}",
                role.as_str(),
                self.0.name,
                self.0.role.as_str()
            )))
        }
    }
}

impl FromRequestParts<Ctx> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, ctx: &Ctx) -> Result<Self, ApiError> {
        let source = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string())
            .unwrap_or_else(|| "unknown".into());
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .chars()
            .take(200)
            .collect::<String>();
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|s| s.trim().to_string())
            .ok_or_else(|| {
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
}

fn require_reason(reason: &str) -> ApiResult<()> {
    if reason.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "REASON_REQUIRED",
            "a reason is required for this change",
        ));
    }
    Ok(())
}

fn ok<T: Serialize>(v: &T) -> Response {
    crate::api::json_response(StatusCode::OK, v)
}

async fn whoami(caller: Caller) -> Response {
    ok(
        &json!({"name": caller.0.name, "role": caller.0.role, "source": caller.0.source, "person": caller.0.person, "token_id": caller.0.token_id}),
    )
}

/// How long `/readyz` waits for the store's writer to take a no-op job.
const READY_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// 200 while the store can write; 503 with the reason when its writer is
/// gone, stuck, or the last write failed for a storage reason (disk full,
/// read-only file). Served on the admin and ingest listeners.
pub async fn readyz(State(ctx): State<Ctx>) -> Response {
    match ctx.store.health(READY_PROBE_TIMEOUT).await {
        Ok(()) => ok(&json!({"status": "ready"})),
        Err(reason) => {
            tracing::warn!(reason = %reason, "not ready: the store cannot write");
            crate::api::json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "not ready", "reason": reason}),
            )
        }
    }
}

async fn environments(State(ctx): State<Ctx>, caller: Caller) -> ApiResult<Response> {
    caller.require(Role::Viewer)?;
    let envs = ctx.store.read(store::agents::environments).await?;
    Ok(ok(&json!({ "environments": envs })))
}

// ---- agents ----

#[derive(Deserialize)]
struct AgentFilter {
    environment: Option<String>,
    service: Option<String>,
}

#[derive(Serialize)]
pub struct AgentView {
    #[serde(flatten)]
    pub row: AgentRow,
    pub state: &'static str,
    pub last_seen: String,
}

pub fn agent_state(ctx: &Ctx, row: &AgentRow, now_ms: i64) -> &'static str {
    if row.revoked_ms.is_some() {
        "revoked"
    } else if ctx.hub.is_connected(&row.id) {
        "connected"
    } else if now_ms - row.last_seen_ms < GONE_AFTER_MS {
        "stale"
    } else {
        "gone"
    }
}

async fn agents_list(
    State(ctx): State<Ctx>,
    caller: Caller,
    Query(f): Query<AgentFilter>,
) -> ApiResult<Response> {
    caller.require(Role::Viewer)?;
    let rows = ctx
        .store
        .read(move |c| store::agents::list(c, f.environment.as_deref(), f.service.as_deref()))
        .await?;
    let now = common::time::now_ms();
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
struct EnrollTokenReq {
    environment: String,
    service: String,
    expires: Option<String>,
    /// How many agents it may enroll (1 unless given).
    uses: Option<u32>,
}

async fn enroll_token_create(
    State(ctx): State<Ctx>,
    caller: Caller,
    Json(r): Json<EnrollTokenReq>,
) -> ApiResult<Response> {
    let actor = caller.require(Role::Operator)?.clone();
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

async fn enroll_tokens_list(State(ctx): State<Ctx>, caller: Caller) -> ApiResult<Response> {
    caller.require(Role::Operator)?;
    let t = ctx.store.read(store::tokens::list_enroll_tokens).await?;
    Ok(ok(&json!({ "enroll_tokens": t })))
}

async fn enroll_token_revoke(
    State(ctx): State<Ctx>,
    caller: Caller,
    Path(id): Path<String>,
    Json(r): Json<ReasonReq>,
) -> ApiResult<Response> {
    let actor = caller.require(Role::Operator)?.clone();
    let id2 = id.clone();
    ctx.store
        .write(move |tx| store::tokens::revoke_enroll_token(tx, &actor, &id2, &r.reason))
        .await?;
    Ok(ok(&json!({"id": id, "revoked": true})))
}

#[derive(Deserialize)]
struct ReasonReq {
    #[serde(default)]
    reason: String,
}

async fn agent_revoke(
    State(ctx): State<Ctx>,
    caller: Caller,
    Path(id): Path<String>,
    Json(r): Json<ReasonReq>,
) -> ApiResult<Response> {
    let actor = caller.require(Role::Operator)?.clone();
    crate::actions::revoke_agent(&ctx, actor, id.clone(), r.reason).await?;
    Ok(ok(&json!({"id": id, "revoked": true})))
}

// ---- flags ----

#[derive(Deserialize)]
struct EnvQuery {
    environment: String,
}

async fn flags_get_all(
    State(ctx): State<Ctx>,
    caller: Caller,
    Query(q): Query<EnvQuery>,
) -> ApiResult<Response> {
    caller.require(Role::Viewer)?;
    let env = q.environment.clone();
    let latest = ctx
        .store
        .read(move |c| store::flags::latest(c, &env))
        .await?;
    let (revision, definition) = match latest {
        Some(r) => (Some(r.revision), r.flags),
        None => (None, store::flags::empty_definition()),
    };
    Ok(ok(
        &json!({"environment": q.environment, "revision": revision, "definition": definition}),
    ))
}

async fn flag_get(
    State(ctx): State<Ctx>,
    caller: Caller,
    Path(key): Path<String>,
    Query(q): Query<EnvQuery>,
) -> ApiResult<Response> {
    caller.require(Role::Viewer)?;
    let env = q.environment.clone();
    let latest = ctx
        .store
        .read(move |c| store::flags::latest(c, &env))
        .await?;
    let flag = latest
        .as_ref()
        .and_then(|r| r.flags.get("flags").and_then(|f| f.get(&key)).cloned())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "FLAG_NOT_FOUND",
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
struct ApplyReq {
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

/// A refused flag change: a plain API error, or 422 `DEFINITION_WARNINGS`
/// whose error object lists every warning (`warnings`, an array).
enum FlagApiError {
    Api(ApiError),
    Warnings {
        message: String,
        warnings: Vec<String>,
    },
}

impl From<ApiError> for FlagApiError {
    fn from(e: ApiError) -> Self {
        FlagApiError::Api(e)
    }
}

impl From<store::StoreError> for FlagApiError {
    fn from(e: store::StoreError) -> Self {
        FlagApiError::Api(e.into())
    }
}

impl FlagApiError {
    /// `subject` names what has the warnings, `hint` how to accept them.
    fn new(e: FlagError, subject: &str, hint: &str) -> Self {
        match e {
            FlagError::Definition(d) => FlagApiError::Api(ApiError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_DEFINITION",
                d.to_string(),
            )),
            FlagError::Warnings(warnings) => FlagApiError::Warnings {
                message: format!(
                    "{subject} has {} warning(s) (flagd would load it and answer these at evaluation time): {}; {hint}",
                    warnings.len(),
                    warnings.join("; ")
                ),
                warnings,
            },
            FlagError::Store(s) => FlagApiError::Api(s.into()),
        }
    }
}

impl IntoResponse for FlagApiError {
    fn into_response(self) -> Response {
        match self {
            FlagApiError::Api(e) => e.into_response(),
            FlagApiError::Warnings { message, warnings } => crate::api::json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({"error": {"code": "DEFINITION_WARNINGS", "message": message, "warnings": warnings}}),
            ),
        }
    }
}

async fn flags_apply(
    State(ctx): State<Ctx>,
    caller: Caller,
    Json(r): Json<ApplyReq>,
) -> Result<Response, FlagApiError> {
    let actor = caller.require(Role::Operator)?.clone();
    if !r.dry_run {
        require_reason(&r.reason)?;
    }
    let refused = |e| {
        FlagApiError::new(
            e,
            "the definition",
            "apply it with accept_warnings (opsctl flags apply --accept-warnings) to serve it anyway",
        )
    };
    if r.dry_run {
        // compiled on the blocking pool; nothing goes through the writer
        let change = store::flags::preview(&ctx.store, &r.environment, r.definition)
            .await
            .map_err(refused)?;
        return Ok(ok(&change_view(change)));
    }
    let op = approvals::Op::flag_apply(r.environment, r.definition);
    let out = approvals::submit_checked(&ctx, &actor, op, r.accept_warnings, &r.reason)
        .await
        .map_err(refused)?;
    Ok(submitted(out, Value::Null)?)
}

/// 200 with the result, or 202 with the pending request when the change
/// waits for a second person's approval. `extra` members (a secret shown
/// once) are added to either answer.
fn submitted(out: approvals::Submitted, extra: Value) -> ApiResult<Response> {
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
    Ok(crate::api::json_response(status, &v))
}

fn change_view(c: FlagChange) -> Value {
    json!({"revision": c.revision, "changed": c.changed, "diff": c.diff, "diff_text": common::diff::render(&c.diff), "warnings": c.warnings})
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
struct FlagSetReq {
    environment: String,
    state: Option<String>,
    default_variant: Option<String>,
    #[serde(default)]
    reason: String,
}

async fn flag_set(
    State(ctx): State<Ctx>,
    caller: Caller,
    Path(key): Path<String>,
    Json(r): Json<FlagSetReq>,
) -> Result<Response, FlagApiError> {
    let actor = caller.require(Role::Operator)?.clone();
    require_reason(&r.reason)?;
    if r.state.is_none() && r.default_variant.is_none() {
        return Err(ApiError::bad_request("give state or default_variant").into());
    }
    let op = approvals::Op::flag_set(r.environment, key, r.state, r.default_variant);
    // warnings the revision already had were accepted when it was applied;
    // a new one needs the whole definition applied with accept_warnings
    let out = approvals::submit_checked(&ctx, &actor, op, false, &r.reason)
        .await
        .map_err(|e| {
            FlagApiError::new(
                e,
                "the changed definition",
                "the revision in force does not have them: apply the whole definition with accept_warnings (opsctl flags apply --accept-warnings) to accept them",
            )
        })?;
    Ok(submitted(out, Value::Null)?)
}

#[derive(Deserialize)]
struct HistoryQuery {
    environment: String,
    limit: Option<usize>,
}

async fn revisions_list(
    State(ctx): State<Ctx>,
    caller: Caller,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<Response> {
    caller.require(Role::Viewer)?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    let h = ctx
        .store
        .read(move |c| store::flags::history(c, &q.environment, limit))
        .await?;
    Ok(ok(&json!({ "revisions": h })))
}

async fn revision_get(
    State(ctx): State<Ctx>,
    caller: Caller,
    Path(n): Path<u64>,
) -> ApiResult<Response> {
    caller.require(Role::Viewer)?;
    let r = ctx
        .store
        .read(move |c| store::flags::get(c, n))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no revision {n}")))?;
    Ok(ok(&r))
}

// ---- kill switches ----

#[derive(Serialize)]
pub struct KillSwitchView {
    pub name: String,
    pub description: Option<String>,
    pub enforced_by_services: Vec<String>,
    pub service: Option<String>,
    pub killed: bool,
    pub reason: String,
    pub by: String,
    pub since: Option<String>,
    pub revision: Option<u64>,
    pub applied: usize,
    pub agents: usize,
    pub lagging: Vec<Value>,
}

/// Every known switch of `environment` with its state and how many of the
/// live agents it applies to have applied that state.
pub async fn killswitch_views(ctx: &Ctx, environment: &str) -> ApiResult<Vec<KillSwitchView>> {
    let env = environment.to_string();
    let (known, latest, state_revs, agents) = ctx
        .store
        .read(move |c| {
            Ok((
                store::killswitches::known(c, &env)?,
                store::flags::latest(c, &env)?,
                store::killswitches::state_revisions(c, &env)?,
                store::agents::list(c, Some(&env), None)?,
            ))
        })
        .await?;
    let now = common::time::now_ms();
    let live: Vec<&AgentRow> = agents
        .iter()
        .filter(|a| matches!(agent_state(ctx, a, now), "connected" | "stale"))
        .collect();
    let mut out = Vec::new();
    for (name, k) in known {
        let states: Vec<_> = latest
            .as_ref()
            .map(|r| {
                r.killswitches
                    .iter()
                    .filter(|s| s.name == name)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let scopes: Vec<Option<common::wire::KillState>> = if states.is_empty() {
            vec![None]
        } else {
            states.into_iter().map(Some).collect()
        };
        for st in scopes {
            let service = st.as_ref().and_then(|s| s.service.clone());
            let rev = st.as_ref().and_then(|s| {
                state_revs
                    .get(&(s.service.clone().unwrap_or_default(), name.clone()))
                    .copied()
            });
            let scoped: Vec<&&AgentRow> = live
                .iter()
                .filter(|a| service.as_deref().is_none_or(|s| s == a.service))
                .collect();
            let lagging: Vec<Value> = scoped
                .iter()
                .filter(|a| match rev {
                    Some(r) => a.applied_revision.is_none_or(|ar| ar < r),
                    None => false,
                })
                .map(|a| json!({"id": a.id, "service": a.service, "instance": a.instance, "host": a.host, "applied_revision": a.applied_revision}))
                .collect();
            out.push(KillSwitchView {
                name: name.clone(),
                description: k.description.clone(),
                enforced_by_services: k.enforced_by_services.clone(),
                service,
                killed: st.as_ref().is_some_and(|s| s.killed),
                reason: st.as_ref().map(|s| s.reason.clone()).unwrap_or_default(),
                by: st.as_ref().map(|s| s.by.clone()).unwrap_or_default(),
                since: st.as_ref().map(|s| common::time::rfc3339(s.since_ms)),
                revision: rev,
                applied: scoped.len() - lagging.len(),
                agents: scoped.len(),
                lagging,
            });
        }
    }
    Ok(out)
}

async fn killswitches_list(
    State(ctx): State<Ctx>,
    caller: Caller,
    Query(q): Query<EnvQuery>,
) -> ApiResult<Response> {
    caller.require(Role::Viewer)?;
    let views = killswitch_views(&ctx, &q.environment).await?;
    Ok(ok(
        &json!({"environment": q.environment, "killswitches": views}),
    ))
}

#[derive(Deserialize)]
struct CreateSwitchReq {
    name: String,
    #[serde(default)]
    description: String,
}

async fn killswitch_create(
    State(ctx): State<Ctx>,
    caller: Caller,
    Json(r): Json<CreateSwitchReq>,
) -> ApiResult<Response> {
    let actor = caller.require(Role::Operator)?.clone();
    let name = r.name.clone();
    ctx.store
        .write(move |tx| store::killswitches::declare(tx, &actor, &r.name, &r.description))
        .await?;
    Ok(ok(&json!({"name": name, "created": true})))
}

#[derive(Deserialize)]
struct KillReq {
    environment: String,
    service: Option<String>,
    #[serde(default)]
    reason: String,
}

async fn kill(
    state: State<Ctx>,
    caller: Caller,
    name: Path<String>,
    body: Json<KillReq>,
) -> ApiResult<Response> {
    set_kill(state, caller, name, body, true).await
}

async fn revive(
    state: State<Ctx>,
    caller: Caller,
    name: Path<String>,
    body: Json<KillReq>,
) -> ApiResult<Response> {
    set_kill(state, caller, name, body, false).await
}

async fn set_kill(
    State(ctx): State<Ctx>,
    caller: Caller,
    Path(name): Path<String>,
    Json(r): Json<KillReq>,
    killed: bool,
) -> ApiResult<Response> {
    let actor = caller.require(Role::Responder)?.clone();
    require_reason(&r.reason)?;
    let outcome = crate::actions::set_kill(
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

// ---- audit ----

#[derive(Deserialize)]
struct AuditQuery {
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

async fn audit_list(
    State(ctx): State<Ctx>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Response> {
    caller.require(Role::Viewer)?;
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

async fn audit_verify(State(ctx): State<Ctx>, caller: Caller) -> ApiResult<Response> {
    caller.require(Role::Viewer)?;
    let report = ctx.store.read(audit::verify).await?;
    Ok(ok(&report))
}

#[derive(Deserialize)]
struct ExportQuery {
    format: Option<String>,
}

async fn audit_export(
    State(ctx): State<Ctx>,
    caller: Caller,
    Query(q): Query<ExportQuery>,
) -> ApiResult<Response> {
    caller.require(Role::Admin)?;
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

// ---- tokens and users ----

async fn tokens_list(State(ctx): State<Ctx>, caller: Caller) -> ApiResult<Response> {
    caller.require(Role::Admin)?;
    let t = ctx.store.read(store::tokens::list_api_tokens).await?;
    Ok(ok(&json!({ "tokens": t })))
}

#[derive(Deserialize)]
struct TokenReq {
    name: String,
    role: Role,
    expires: Option<String>,
    #[serde(default)]
    reason: String,
}

async fn token_create(
    State(ctx): State<Ctx>,
    caller: Caller,
    Json(r): Json<TokenReq>,
) -> ApiResult<Response> {
    let actor = caller.require(Role::Admin)?.clone();
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

async fn token_revoke(
    State(ctx): State<Ctx>,
    caller: Caller,
    Path(id): Path<String>,
    Json(r): Json<ReasonReq>,
) -> ApiResult<Response> {
    let actor = caller.require(Role::Admin)?.clone();
    let id2 = id.clone();
    ctx.store
        .write(move |tx| store::tokens::revoke_api_token(tx, &actor, &id2, &r.reason))
        .await?;
    Ok(ok(&json!({"id": id, "revoked": true})))
}

async fn users_list(State(ctx): State<Ctx>, caller: Caller) -> ApiResult<Response> {
    caller.require(Role::Viewer)?;
    let u = ctx.store.read(store::users::list).await?;
    Ok(ok(&json!({ "users": u })))
}

#[derive(Deserialize)]
struct UserReq {
    name: String,
    role: Role,
    password: Option<String>,
    #[serde(default)]
    reason: String,
}

async fn user_add(
    State(ctx): State<Ctx>,
    caller: Caller,
    Json(r): Json<UserReq>,
) -> ApiResult<Response> {
    let actor = caller.require(Role::Admin)?.clone();
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
struct RoleReq {
    role: Role,
    #[serde(default)]
    reason: String,
}

async fn user_set_role(
    State(ctx): State<Ctx>,
    caller: Caller,
    Path(name): Path<String>,
    Json(r): Json<RoleReq>,
) -> ApiResult<Response> {
    let actor = caller.require(Role::Admin)?.clone();
    let op = approvals::Op::UserSetRole { name, role: r.role };
    submitted(
        approvals::submit(&ctx, &actor, op, &r.reason).await?,
        Value::Null,
    )
}

// ---- four-eyes approvals ----

#[derive(Deserialize)]
struct ApprovalsQuery {
    state: Option<String>,
    limit: Option<usize>,
}

async fn approvals_list(
    State(ctx): State<Ctx>,
    caller: Caller,
    Query(q): Query<ApprovalsQuery>,
) -> ApiResult<Response> {
    caller.require(Role::Viewer)?;
    let state = q.state.filter(|s| !s.is_empty() && s != "all");
    let limit = q.limit.unwrap_or(100);
    let list = ctx
        .store
        .read(move |c| store::approvals::list(c, state.as_deref(), limit))
        .await?;
    let list: Vec<Value> = list.iter().map(approval_view).collect();
    Ok(ok(&json!({ "approvals": list })))
}

async fn approval_get(
    State(ctx): State<Ctx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Viewer)?;
    let a = ctx
        .store
        .read(move |c| store::approvals::get(c, &id))
        .await?
        .ok_or_else(|| ApiError::not_found("no such approval request"))?;
    Ok(ok(&approval_view(&a)))
}

fn approval_error(e: approvals::ApprovalError) -> ApiError {
    match e {
        approvals::ApprovalError::Store(s) => s.into(),
        approvals::ApprovalError::Forbidden(m) => ApiError::forbidden(m),
    }
}

fn decided_view(d: approvals::Decided) -> Response {
    match d {
        approvals::Decided::Approved(a, e) => ok(&json!({"approval": a, "result": e.output})),
        approvals::Decided::Rejected(a) => ok(&json!({ "approval": a })),
        approvals::Decided::Expired(a) => ApiError::new(
            StatusCode::CONFLICT,
            "EXPIRED",
            format!("request {} expired at {}; nothing changed", a.id, a.expires),
        )
        .into_response(),
    }
}

async fn approval_approve(
    State(ctx): State<Ctx>,
    caller: Caller,
    Path(id): Path<String>,
    Json(r): Json<ReasonReq>,
) -> ApiResult<Response> {
    // the caller is the token's owner: a requester cannot approve with any
    // token of theirs
    let actor = caller.require(Role::Operator)?.clone();
    let d = approvals::approve(&ctx, &actor, &id, &r.reason)
        .await
        .map_err(approval_error)?;
    Ok(decided_view(d))
}

async fn approval_reject(
    State(ctx): State<Ctx>,
    caller: Caller,
    Path(id): Path<String>,
    Json(r): Json<ReasonReq>,
) -> ApiResult<Response> {
    let actor = caller.require(Role::Viewer)?.clone();
    require_reason(&r.reason)?;
    let d = approvals::reject(&ctx, &actor, &id, &r.reason)
        .await
        .map_err(approval_error)?;
    Ok(decided_view(d))
}

async fn policy_get(State(ctx): State<Ctx>, caller: Caller) -> ApiResult<Response> {
    caller.require(Role::Viewer)?;
    Ok(ok(&approvals::policy(&ctx).await?))
}

#[derive(Deserialize)]
struct PolicyReq {
    #[serde(flatten)]
    policy: approvals::Policy,
    #[serde(default)]
    reason: String,
}

async fn policy_set(
    State(ctx): State<Ctx>,
    caller: Caller,
    Json(r): Json<PolicyReq>,
) -> ApiResult<Response> {
    let actor = caller.require(Role::Admin)?.clone();
    require_reason(&r.reason)?;
    submitted(
        approvals::set_policy(&ctx, &actor, r.policy, &r.reason).await?,
        Value::Null,
    )
}

// ---- metrics ----

async fn metrics(State(ctx): State<Ctx>) -> ApiResult<Response> {
    let body = crate::metrics::render(&ctx).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response())
}
