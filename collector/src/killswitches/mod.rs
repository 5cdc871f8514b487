//! Kill switches: named switches an operator kills or revives per
//! environment (optionally per service); the agents' proxies enforce them.
//! A kill is an emergency action: it never waits for an approval, and the new
//! revision is pushed to the agents as soon as it commits. The rollout view
//! ([`killswitch_views`]: how many live agents applied a state) is shared by
//! the API and the console.
//!
//! Routes: `GET|POST /api/v1/killswitches`,
//! `POST /api/v1/killswitches/{name}/kill`, `.../revive` (responder);
//! console `/console/killswitches`, `/console/live/killswitches`,
//! `/console/killswitches/confirm`, `/console/killswitches/kill`, `.../revive`.
//! Audit actions: [`Action`].

pub mod api;
pub mod console;

use crate::fleet::agent_state;
use crate::kernel::{Actor, ApiResult, Role, Route};
use crate::store::{self, agents::AgentRow, killswitches::KillOutcome};
use crate::Ctx;
use serde::Serialize;
use serde_json::{json, Value};

crate::audit::actions! {
    /// Audit actions of kill switches.
    pub enum Action {
        Create => "killswitch.create",
        Kill => "killswitch.kill",
        Revive => "killswitch.revive",
    }
}

pub fn routes() -> Vec<Route> {
    vec![
        Route::get("/api/v1/killswitches", Role::Viewer, api::killswitches_list),
        Route::post(
            "/api/v1/killswitches",
            Role::Operator,
            api::killswitch_create,
        ),
        Route::post(
            "/api/v1/killswitches/{name}/kill",
            Role::Responder,
            api::kill,
        ),
        Route::post(
            "/api/v1/killswitches/{name}/revive",
            Role::Responder,
            api::revive,
        ),
        Route::get("/console/killswitches", Role::Viewer, console::killswitches).nav(
            "killswitches",
            "Kill switches",
            40,
        ),
        Route::get(
            "/console/live/killswitches",
            Role::Viewer,
            console::killswitches_live,
        ),
        Route::get(
            "/console/killswitches/confirm",
            Role::Responder,
            console::kill_confirm,
        ),
        Route::post("/console/killswitches/kill", Role::Responder, console::kill),
        Route::post(
            "/console/killswitches/revive",
            Role::Responder,
            console::revive,
        ),
    ]
}

/// Kills or revives a switch and pushes the new revision to the agents at
/// once. Emergency action: never waits for an approval. Needs a reason.
pub async fn set_kill(
    ctx: &Ctx,
    actor: Actor,
    environment: String,
    service: Option<String>,
    name: String,
    killed: bool,
    reason: String,
) -> ApiResult<KillOutcome> {
    crate::kernel::error::require_reason(&reason)?;
    let (outcome, rev) = ctx
        .store
        .write(move |tx| {
            store::killswitches::set_state(
                tx,
                &actor,
                &environment,
                service.as_deref(),
                &name,
                killed,
                &reason,
            )
        })
        .await?;
    if let Some(rev) = rev {
        ctx.hub.publish(&rev);
    }
    Ok(outcome)
}

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
    let now = ctx.clock.now_ms();
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
