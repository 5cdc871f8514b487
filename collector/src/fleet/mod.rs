//! The fleet: agents, how they enroll (enrollment tokens), the ingest
//! listener they talk to ([`ingest`]), and the in-memory [`hub`] that pushes
//! revisions down their open streams. Agent state (connected, stale, gone,
//! revoked) is computed here for the API, the console and `/metrics`.
//!
//! Routes: `GET /api/v1/environments`, `GET /api/v1/agents`,
//! `GET|POST /api/v1/agents/enroll-tokens`,
//! `POST /api/v1/agents/enroll-tokens/{id}/revoke`,
//! `POST /api/v1/agents/{id}/revoke`; console `/console/` (overview),
//! `/console/live/overview`, `/console/agents` and its revoke form; the
//! ingest listener's routes are in [`ingest`]. Audit actions: [`Action`].

pub mod api;
pub mod console;
pub mod hub;
pub mod ingest;

use crate::kernel::error::require_reason;
use crate::kernel::{Actor, ApiResult, Role, Route};
use crate::store::{self, agents::AgentRow};
use crate::Ctx;
use serde::Serialize;

crate::audit::actions! {
    /// Audit actions of the fleet.
    pub enum Action {
        Revoke => "agent.revoke",
        EnrollTokenCreate => "agent.enroll_token.create",
        EnrollTokenRevoke => "agent.enroll_token.revoke",
    }
}

pub fn routes() -> Vec<Route> {
    vec![
        Route::get("/api/v1/environments", Role::Viewer, api::environments),
        Route::get("/api/v1/agents", Role::Viewer, api::agents_list),
        Route::get(
            "/api/v1/agents/enroll-tokens",
            Role::Operator,
            api::enroll_tokens_list,
        ),
        Route::post(
            "/api/v1/agents/enroll-tokens",
            Role::Operator,
            api::enroll_token_create,
        ),
        Route::post(
            "/api/v1/agents/enroll-tokens/{id}/revoke",
            Role::Operator,
            api::enroll_token_revoke,
        ),
        Route::post(
            "/api/v1/agents/{id}/revoke",
            Role::Operator,
            api::agent_revoke,
        ),
        Route::get("/console/", Role::Viewer, console::overview).nav("overview", "Overview", 10),
        Route::get(
            "/console/live/overview",
            Role::Viewer,
            console::overview_live,
        ),
        Route::get("/console/agents", Role::Viewer, console::agents).nav("agents", "Agents", 20),
        Route::post(
            "/console/agents/{id}/revoke",
            Role::Operator,
            console::agent_revoke,
        ),
    ]
}

/// An agent not heard from for this long counts as gone.
pub const GONE_AFTER_MS: i64 = 10 * 60 * 1000;

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

/// Revokes an agent and ends its open streams. Like every revocation it
/// needs a reason.
pub async fn revoke_agent(ctx: &Ctx, actor: Actor, id: String, reason: String) -> ApiResult<()> {
    require_reason(&reason)?;
    let id2 = id.clone();
    ctx.store
        .write(move |tx| store::agents::revoke(tx, &actor, &id2, &reason))
        .await?;
    ctx.hub.revoke(&id);
    Ok(())
}

/// Revokes enrollment token `id` (it enrolls no further agent); needs a reason.
pub async fn revoke_enroll_token(
    ctx: &Ctx,
    actor: Actor,
    id: String,
    reason: String,
) -> ApiResult<()> {
    require_reason(&reason)?;
    ctx.store
        .write(move |tx| store::tokens::revoke_enroll_token(tx, &actor, &id, &reason))
        .await?;
    Ok(())
}
