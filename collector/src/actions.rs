//! Direct mutations whose effect does not end at the database: the store
//! transaction (with its audit entry) followed by what the in-memory hub must
//! do about it. The JSON API and the console both call these, so neither can
//! commit a kill without pushing it or revoke an agent without closing its
//! stream. (Changes that may wait for approval go through `approvals`.)

use crate::auth::Actor;
use crate::store::{self, killswitches::KillOutcome};
use crate::Ctx;

/// Kills or revives a switch and pushes the new revision to the agents at once.
/// Emergency action: never waits for an approval.
pub async fn set_kill(
    ctx: &Ctx,
    actor: Actor,
    environment: String,
    service: Option<String>,
    name: String,
    killed: bool,
    reason: String,
) -> store::Result<KillOutcome> {
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

/// Revokes an agent and ends its open streams.
pub async fn revoke_agent(
    ctx: &Ctx,
    actor: Actor,
    id: String,
    reason: String,
) -> store::Result<()> {
    let id2 = id.clone();
    ctx.store
        .write(move |tx| store::agents::revoke(tx, &actor, &id2, &reason))
        .await?;
    ctx.hub.revoke(&id);
    Ok(())
}
