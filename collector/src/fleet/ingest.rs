//! The ingest listener: where agents enroll, hold their revision stream,
//! acknowledge applied revisions and send heartbeats. Nothing of the admin
//! plane is routed here.

use crate::kernel::json::{healthz, not_found};
use crate::kernel::{bearer, ApiError, ApiResult, ErrorCode, Json};
use crate::store::{self, agents::AgentAuth};
use crate::Ctx;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use common::wire::{
    self, Ack, EnrollRequest, EnrollResponse, Heartbeat, HeartbeatReply, StreamEvent,
};
use serde::Deserialize;
use std::time::Duration;

/// How often an idle stream carries a ping line.
pub const PING_INTERVAL: Duration = Duration::from_secs(10);

pub fn router(ctx: Ctx) -> Router {
    Router::new()
        .route(wire::PATH_ENROLL, post(enroll))
        .route(wire::PATH_STREAM, get(stream))
        .route(wire::PATH_ACK, post(ack))
        .route(wire::PATH_HEARTBEAT, post(heartbeat))
        // every agent route above checks the protocol version; the probes below do not
        .route_layer(axum::middleware::from_fn(protocol_check))
        .route("/healthz", get(healthz))
        .route("/readyz", get(crate::routes::readyz))
        .fallback(not_found)
        .with_state(ctx)
}

/// Refuses an agent whose `X-Opsplane-Protocol` has another major version
/// (400 `PROTOCOL_MISMATCH`, naming both); a request without it counts as
/// version 1 (see `common::wire::check_protocol`).
async fn protocol_check(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let sent = req
        .headers()
        .get(wire::PROTOCOL_HEADER)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    if let Err(message) = wire::check_protocol(sent) {
        tracing::warn!(sent = ?sent, ours = wire::PROTOCOL_VERSION, "agent refused: protocol mismatch");
        return ApiError::new(ErrorCode::ProtocolMismatch, message).into_response();
    }
    next.run(req).await
}

async fn authenticate(ctx: &Ctx, headers: &HeaderMap) -> ApiResult<AgentAuth> {
    let cred = bearer(headers)
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "missing agent credential"))?
        .to_string();
    let auth = ctx
        .store
        .read(move |c| store::agents::authenticate(c, &cred))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::UnknownAgent,
                "unknown agent credential; enroll again",
            )
        })?;
    if auth.revoked {
        return Err(ApiError::new(
            ErrorCode::AgentRevoked,
            "this agent was revoked",
        ));
    }
    Ok(auth)
}

async fn enroll(State(ctx): State<Ctx>, Json(req): Json<EnrollRequest>) -> ApiResult<Response> {
    let token = req.token.clone();
    let found = ctx
        .store
        .read(move |c| store::tokens::find_enroll_token(c, &token))
        .await?;
    let Some((token_id, env, service)) = found else {
        return Err(ApiError::new(
            ErrorCode::InvalidEnrollToken,
            "enrollment token unknown, expired, revoked or used up",
        ));
    };
    let id = &req.identity;
    if id.environment != env || id.service != service {
        return Err(ApiError::new(
            ErrorCode::EnrollMismatch,
            format!(
                "this enrollment token is for service {service:?} in environment {env:?}, but the agent says service {:?} in environment {:?}",
                id.service, id.environment
            ),
        ));
    }
    let identity = req.identity.clone();
    // the use is taken in the enrolling transaction: concurrent enrollments
    // cannot share the last use
    let (agent_id, credential) = ctx
        .store
        .write(move |tx| store::agents::enroll(tx, &token_id, &identity))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidEnrollToken,
                "enrollment token unknown, expired, revoked or used up",
            )
        })?;
    tracing::info!(agent = %agent_id, service = %id.service, environment = %id.environment, instance = %id.instance, "agent enrolled");
    Ok(crate::kernel::json_response(
        StatusCode::OK,
        &EnrollResponse {
            agent_id,
            credential,
        },
    ))
}

#[derive(Deserialize)]
struct StreamQuery {
    since: Option<u64>,
}

async fn stream(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> ApiResult<Response> {
    let agent = authenticate(&ctx, &headers).await?;
    let mut rx = ctx.hub.subscribe(&ctx.store, &agent.environment).await?;
    let guard = ctx.hub.register(&agent.id);
    // registered first, checked again: a revocation that committed after
    // the credential check either finds this stream in the hub or is seen here
    let id = agent.id.clone();
    if guard.revoked.is_cancelled()
        || ctx
            .store
            .read(move |c| store::agents::is_revoked(c, &id))
            .await?
    {
        return Err(ApiError::new(
            ErrorCode::AgentRevoked,
            "this agent was revoked",
        ));
    }
    let (tx, body_rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let shutdown = ctx.shutdown.clone();
    let agent_id = agent.id.clone();
    ctx.tracker.spawn(async move {
        let _guard = &guard;
        let mut sent = q.since;
        // the first tick fires at once: an agent that is already current
        // learns so immediately
        let mut ping = tokio::time::interval(PING_INTERVAL);
        loop {
            let current = rx.borrow_and_update().clone();
            if sent != Some(current.revision) {
                if tx.send(Ok(current.line.clone())).await.is_err() {
                    break;
                }
                sent = Some(current.revision);
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { break },
                _ = ping.tick() => {
                    let line = ping_line(current.revision);
                    if tx.send(Ok(line)).await.is_err() { break }
                }
                _ = guard.revoked.cancelled() => {
                    let mut l = serde_json::to_vec(&StreamEvent::Revoked).unwrap_or_default();
                    l.push(b'\n');
                    let _ = tx.send(Ok(Bytes::from(l))).await;
                    break;
                }
                _ = guard.replaced.cancelled() => {
                    tracing::debug!(agent = %agent_id, "stream replaced by a newer one");
                    break;
                }
                _ = shutdown.cancelled() => break,
                _ = tx.closed() => break,
            }
        }
        tracing::debug!(agent = %agent_id, "stream closed");
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(body_rx));
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

fn ping_line(latest: u64) -> Bytes {
    let mut l = serde_json::to_vec(&StreamEvent::Ping { latest }).unwrap_or_default();
    l.push(b'\n');
    Bytes::from(l)
}

async fn ack(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Json(a): Json<Ack>,
) -> ApiResult<StatusCode> {
    let agent = authenticate(&ctx, &headers).await?;
    ctx.store
        .write(move |tx| store::agents::ack(tx, &agent.id, a.revision))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn heartbeat(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Json(hb): Json<Heartbeat>,
) -> ApiResult<Response> {
    let agent = authenticate(&ctx, &headers).await?;
    if hb.identity.environment != agent.environment || hb.identity.service != agent.service {
        return Err(ApiError::new(
            ErrorCode::IdentityChanged,
            format!(
                "this agent enrolled as service {:?} in environment {:?}; enroll again to change that",
                agent.service, agent.environment
            ),
        ));
    }
    let id = agent.id.clone();
    ctx.store
        .write(move |tx| store::agents::heartbeat(tx, &id, &hb))
        .await?;
    let rx = ctx.hub.subscribe(&ctx.store, &agent.environment).await?;
    let latest = rx.borrow().revision;
    Ok(crate::kernel::json_response(
        StatusCode::OK,
        &HeartbeatReply {
            latest_revision: latest,
        },
    ))
}
