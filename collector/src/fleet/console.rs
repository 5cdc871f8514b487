//! The fleet's console pages: the overview (fleet map, what is killed,
//! recent changes) and the agents list with revoking.

use super::agent_state;
use crate::audit::console::audit_table;
use crate::console::page::{enc, flashes, html_page, notice, page, see_other, EnvQ, Flash, S};
use crate::console::render::{self, time};
use crate::console::{PageError, PageResult};
use crate::kernel::json::ReasonForm;
use crate::kernel::Role;
use crate::store;
use crate::store::{agents::AgentRow, audit};
use crate::Ctx;
use axum::extract::{Path, Query, State};
use axum::{Extension, Form};
use maud::{html, Markup};

flashes! {
    /// Outcomes of the fleet's forms.
    pub enum Done {
        Revoked = "revoked" => |name| format!("Agent {name} is revoked; its connection is closed."),
    }
}

// ---- overview ----

pub(crate) struct Fleet {
    agents: Vec<(AgentRow, &'static str)>,
    counts: [usize; 4],
}

pub(crate) async fn fleet(
    ctx: &Ctx,
    env: Option<String>,
    service: Option<String>,
) -> Result<Fleet, PageError> {
    let rows = ctx
        .store
        .read(move |c| store::agents::list(c, env.as_deref(), service.as_deref()))
        .await?;
    let now = ctx.clock.now_ms();
    let mut counts = [0usize; 4];
    let agents: Vec<(AgentRow, &'static str)> = rows
        .into_iter()
        .map(|r| {
            let st = agent_state(ctx, &r, now);
            counts[match st {
                "connected" => 0,
                "stale" => 1,
                "gone" => 2,
                _ => 3,
            }] += 1;
            (r, st)
        })
        .collect();
    Ok(Fleet { agents, counts })
}

pub(crate) async fn overview_block(ctx: &Ctx) -> Result<Markup, PageError> {
    let f = fleet(ctx, None, None).await?;
    let now = ctx.clock.now_ms();
    let killed = ctx
        .store
        .read(|c| {
            let mut out = Vec::new();
            for (env, _) in store::flags::latest_numbers(c)? {
                if let Some(r) = store::flags::latest(c, &env)? {
                    for k in r.killswitches.into_iter().filter(|k| k.killed) {
                        out.push((env.clone(), k));
                    }
                }
            }
            Ok(out)
        })
        .await?;
    Ok(html! {
        div.stats {
            div.stat.s-connected { b { (f.counts[0]) } span { "connected" } }
            div.stat.s-stale { b { (f.counts[1]) } span { "stale" } }
            div.stat.s-gone { b { (f.counts[2]) } span { "gone" } }
            div.stat.s-revoked { b { (f.counts[3]) } span { "revoked" } }
            div.stat.s-killed { b { (killed.len()) } span { "switches killed" } }
        }
        @if !killed.is_empty() {
            div.card.killed-now {
                h2 { "Killed right now" }
                ul {
                    @for (env, k) in &killed {
                        li {
                            a href={ "/console/killswitches?env=" (enc(env)) } { strong { (k.name) } }
                            " in " (env)
                            @if let Some(svc) = &k.service { " (service " (svc) ")" }
                            " by " (k.by) ", " (render::ago(k.since_ms, now)) ": " em { (k.reason) }
                        }
                    }
                }
            }
        }
        div.card {
            h2 { "Fleet" }
            @if f.agents.is_empty() {
                p.muted { "No agents have enrolled yet. Create an enrollment token with "
                    code { "opsctl agents enroll-token --env ENV --service SERVICE" } "." }
            } @else {
                div.legend {
                    span.dot.s-connected {} "connected " span.dot.s-stale {} "stale " span.dot.s-gone {} "gone " span.dot.s-revoked {} "revoked"
                }
                div.grid {
                    @for (a, st) in &f.agents {
                        a class={ "tile s-" (st) } href={ "/console/agents?env=" (enc(&a.environment)) "&service=" (enc(&a.service)) }
                            title={ (a.service) " / " (a.instance) " in " (a.environment) " on " (a.host) ": " (st) } {}
                    }
                }
            }
        }
    })
}

pub(crate) async fn overview(State(ctx): State<Ctx>, Extension(s): S) -> PageResult {
    let block = overview_block(&ctx).await?;
    let recent = ctx
        .store
        .read(|c| {
            audit::list(
                c,
                &audit::Filter {
                    limit: Some(10),
                    ..Default::default()
                },
            )
        })
        .await?;
    let now = ctx.clock.now_ms();
    let body = html! {
        div data-live="/console/live/overview" { (block) }
        div.card {
            h2 { "Recent changes" }
            (audit_table(&recent, now, false))
            p { a href="/console/audit" { "All audit entries →" } }
        }
    };
    page(&ctx, &s, "overview", "Overview", body).await
}

pub(crate) async fn overview_live(State(ctx): State<Ctx>) -> PageResult {
    Ok(html_page(overview_block(&ctx).await?))
}

// ---- agents ----

pub(crate) async fn agents(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Query(q): Query<EnvQ>,
) -> PageResult {
    let env = q.env.clone().filter(|e| !e.is_empty());
    let service = q.service.clone().filter(|e| !e.is_empty());
    let all = ctx
        .store
        .read(|c| store::agents::list(c, None, None))
        .await?;
    let mut envs: Vec<&str> = all.iter().map(|a| a.environment.as_str()).collect();
    envs.sort();
    envs.dedup();
    let mut services: Vec<&str> = all.iter().map(|a| a.service.as_str()).collect();
    services.sort();
    services.dedup();
    let f = fleet(&ctx, env.clone(), service.clone()).await?;
    let now = ctx.clock.now_ms();
    let can_revoke = s.can(Role::Operator);
    let body = html! {
        (notice::<Done>(&q))
        form.filters method="get" action="/console/agents" {
            label { "Environment "
                select name="env" {
                    option value="" { "all" }
                    @for e in &envs { option value=(e) selected[env.as_deref() == Some(*e)] { (e) } }
                }
            }
            label { "Service "
                select name="service" {
                    option value="" { "all" }
                    @for sv in &services { option value=(sv) selected[service.as_deref() == Some(*sv)] { (sv) } }
                }
            }
            button type="submit" { "Filter" }
            span.muted { (f.agents.len()) " agents: " (f.counts[0]) " connected, " (f.counts[1]) " stale, " (f.counts[2]) " gone, " (f.counts[3]) " revoked" }
        }
        div.scroll {
            table.list {
                thead { tr {
                    th { "State" } th { "Service" } th { "Env" } th { "Instance / host" } th.wide { "Version" }
                    th { "Last seen" } th.wide { "Revision" } @if can_revoke { th {} }
                } }
                tbody {
                    @for (a, st) in &f.agents {
                        tr {
                            td { span class={ "badge s-" (st) } { (st) } }
                            td { (a.service) }
                            td { (a.environment) }
                            td { (a.instance) br; span.muted { (a.host) " · " code { (a.id) } } }
                            td.wide { (a.version) }
                            td { (time(a.last_seen_ms, now)) }
                            td.wide { @if let Some(r) = a.applied_revision { (r) } @else { span.muted { "none" } } }
                            @if can_revoke {
                                td {
                                    @if a.revoked_ms.is_none() {
                                        details.action {
                                            summary { "Revoke…" }
                                            form method="post" action={ "/console/agents/" (enc(&a.id)) "/revoke" } {
                                                (render::csrf(&s))
                                                input name="reason" required placeholder="reason";
                                                button.danger type="submit" { "Revoke agent" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page(&ctx, &s, "agents", "Agents", body).await
}

pub(crate) async fn agent_revoke(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Path(id): Path<String>,
    Form(f): Form<ReasonForm>,
) -> PageResult {
    let actor = s.actor.clone();
    super::revoke_agent(&ctx, actor, id.clone(), f.reason).await?;
    Ok(see_other(&format!(
        "/console/agents?done={}&name={}",
        Done::Revoked.code(),
        enc(&id)
    )))
}
