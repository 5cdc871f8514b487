//! The kill switches' console pages: the switches of an environment with
//! their rollout, the confirmation page, kill and revive.

use super::{killswitch_views, KillSwitchView};
use crate::console::page::{
    enc, env_tabs, flashes, html_page, notice, page, pick_env, see_other, EnvQ, Flash, S,
};
use crate::console::render::{self};
use crate::console::{PageError, PageResult, Session};
use crate::kernel::Role;
use crate::Ctx;
use axum::extract::{Query, State};
use axum::{Extension, Form};
use maud::{html, Markup};
use serde::Deserialize;

flashes! {
    /// Outcomes of the kill switches' forms.
    pub enum Done {
        Killed = "killed" => |name| format!("{name} is now killed. Agents are applying it; watch the count below."),
        Revived = "revived" => |name| format!("{name} is revived. Agents are applying it; watch the count below."),
        Unchanged = "unchanged" => |name| format!("{name} was already in that state; nothing changed."),
    }
}

// ---- kill switches ----

/// Laggards named on a switch card; the rest are counted.
const MAX_LAGGARDS_SHOWN: usize = 12;

fn switch_card(s: &Session, env: &str, k: &KillSwitchView) -> Markup {
    let scope = k.service.as_deref();
    let confirm = |action: &str| {
        let mut u = format!(
            "/console/killswitches/confirm?env={}&name={}&action={action}",
            enc(env),
            enc(&k.name)
        );
        if let Some(svc) = scope {
            u.push_str(&format!("&service={}", enc(svc)));
        }
        u
    };
    html! {
        div class={ "card switch " (if k.killed { "is-killed" } else { "is-alive" }) } {
            div.switch-head {
                h2 { (k.name) @if let Some(svc) = scope { span.muted { " · service " (svc) } } }
                span class={ "state " (if k.killed { "killed" } else { "alive" }) } { @if k.killed { "KILLED" } @else { "ALIVE" } }
            }
            @if let Some(d) = k.description.as_deref().filter(|d| !d.is_empty()) { p { (d) } }
            @if !k.enforced_by_services.is_empty() { p.muted { "Enforced by: " (k.enforced_by_services.join(", ")) } }
            @if k.killed || !k.by.is_empty() {
                p { @if k.killed { "Killed" } @else { "Revived" } " by " strong { (k.by) }
                    @if let Some(t) = &k.since { " at " (render::short_time(t)) } ": " em { (k.reason) } }
            }
            p.applied data-applied=(k.applied) data-agents=(k.agents) {
                @if k.revision.is_some() {
                    "Applied by " strong.applied-count { (k.applied) " of " (k.agents) } " agents"
                    @if k.applied == k.agents { " ✓" }
                } @else {
                    (k.agents) " agents · never pulled"
                }
            }
            @if !k.lagging.is_empty() {
                p.lagging { "Not yet applied: "
                    @for (i, a) in k.lagging.iter().take(MAX_LAGGARDS_SHOWN).enumerate() {
                        @if i > 0 { ", " }
                        (a["service"].as_str().unwrap_or("?")) "/" (a["instance"].as_str().unwrap_or("?"))
                        " (" code { (a["id"].as_str().unwrap_or("?")) } ")"
                    }
                    @if k.lagging.len() > MAX_LAGGARDS_SHOWN {
                        " and " (k.lagging.len() - MAX_LAGGARDS_SHOWN) " more ("
                        a href={ "/console/agents?env=" (enc(env)) } { "see agents" } ")"
                    }
                }
            }
            @if s.can(Role::Responder) {
                @if k.killed {
                    a.big.revive href=(confirm("revive")) { "Revive " (k.name) " in " (env) }
                } @else {
                    a.big.kill href=(confirm("kill")) { "Kill " (k.name) " in " (env) }
                }
            }
        }
    }
}

pub(crate) async fn switches_block(ctx: &Ctx, s: &Session, env: &str) -> Result<Markup, PageError> {
    let views = killswitch_views(ctx, env).await?;
    Ok(html! {
        @if views.is_empty() {
            p.muted { "No kill switches are known in " (env) ". Agents report the switches their config declares; "
                "declare others with " code { "opsctl killswitches create NAME" } "." }
        }
        div.switches { @for k in &views { (switch_card(s, env, k)) } }
    })
}

pub(crate) async fn killswitches(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Query(q): Query<EnvQ>,
) -> PageResult {
    let (envs, env) = pick_env(&ctx, q.env.clone()).await?;
    let Some(env) = env else {
        return page(
            &ctx,
            &s,
            "killswitches",
            "Kill switches",
            html! { p.muted { "No environments yet." } },
        )
        .await;
    };
    let block = switches_block(&ctx, &s, &env).await?;
    let body = html! {
        (notice::<Done>(&q))
        (env_tabs("/console/killswitches", &envs, Some(&env), &[]))
        div data-live={ "/console/live/killswitches?env=" (enc(&env)) } { (block) }
    };
    page(&ctx, &s, "killswitches", "Kill switches", body).await
}

pub(crate) async fn killswitches_live(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Query(q): Query<EnvQ>,
) -> PageResult {
    let env = q.env.unwrap_or_default();
    crate::kernel::names::validate(&env)?;
    Ok(html_page(switches_block(&ctx, &s, &env).await?))
}

#[derive(Deserialize)]
pub(crate) struct ConfirmQ {
    env: String,
    name: String,
    service: Option<String>,
    action: String,
}

pub(crate) async fn kill_confirm(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Query(q): Query<ConfirmQ>,
) -> PageResult {
    let killing = q.action == "kill";
    let verb = if killing { "Kill" } else { "Revive" };
    let scope = q.service.clone().filter(|x| !x.is_empty());
    let body = html! {
        div class={ "card confirm " (if killing { "is-killed" } else { "is-alive" }) } {
            p { @if killing {
                    "Every agent in " strong { (q.env) } @if let Some(svc) = &scope { " for service " strong { (svc) } }
                    " will start enforcing " strong { (q.name) } " as soon as it gets the change (usually within a second)."
                } @else {
                    "Agents in " strong { (q.env) } @if let Some(svc) = &scope { " for service " strong { (svc) } }
                    " will stop enforcing " strong { (q.name) } "."
                } }
            form method="post" action={ "/console/killswitches/" (if killing { "kill" } else { "revive" }) } {
                (render::csrf(&s))
                input type="hidden" name="env" value=(q.env);
                input type="hidden" name="name" value=(q.name);
                @if let Some(svc) = &scope { input type="hidden" name="service" value=(svc); }
                label { "Reason (recorded in the audit log)" input name="reason" required autofocus placeholder="e.g. payments provider outage"; }
                button type="submit" class={ "big " (if killing { "kill" } else { "revive" }) } { (verb) " " (q.name) " now" }
                " " a href={ "/console/killswitches?env=" (enc(&q.env)) } { "Cancel" }
            }
        }
    };
    page(
        &ctx,
        &s,
        "killswitches",
        &format!("{verb} {} in {}?", q.name, q.env),
        body,
    )
    .await
}

#[derive(Deserialize)]
pub(crate) struct KillForm {
    env: String,
    name: String,
    service: Option<String>,
    #[serde(default)]
    reason: String,
}

pub(crate) async fn kill(state: State<Ctx>, s: S, f: Form<KillForm>) -> PageResult {
    set_kill(state, s, f, true).await
}

pub(crate) async fn revive(state: State<Ctx>, s: S, f: Form<KillForm>) -> PageResult {
    set_kill(state, s, f, false).await
}

/// Emergency actions never wait for approval.
async fn set_kill(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Form(f): Form<KillForm>,
    killed: bool,
) -> PageResult {
    let actor = s.actor.clone();
    let (env, name) = (f.env.clone(), f.name.clone());
    let service = f.service.filter(|x| !x.is_empty());
    let outcome = super::set_kill(&ctx, actor, f.env, service, f.name, killed, f.reason).await?;
    let done = if !outcome.changed {
        Done::Unchanged
    } else if killed {
        Done::Killed
    } else {
        Done::Revived
    };
    Ok(see_other(&format!(
        "/console/killswitches?env={}&done={}&name={}",
        enc(&env),
        done.code(),
        enc(&name)
    )))
}
