//! The console's pages and form handlers. Reads go through the store's read
//! pool; every change goes through the same functions as the JSON API
//! (`crate::approvals` for what may need four eyes, the store otherwise), so
//! roles, audit entries and pushes to agents are identical. Each handler
//! checks its role first: hiding a button is a convenience, the check is here.

use super::render::{self, diff_table, layout, time, Chrome};
use super::{PageError, PageResult, Session};
use crate::admin::{agent_state, killswitch_views, KillSwitchView};
use crate::approvals::{self, Decided, Op, Submitted};
use crate::auth::Role;
use crate::store::{self, agents::AgentRow, approvals::Approval, audit};
use crate::Ctx;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Value};

pub fn routes() -> Router<Ctx> {
    Router::new()
        .route("/console/", get(overview))
        .route("/console/live/overview", get(overview_live))
        .route("/console/agents", get(agents))
        .route("/console/agents/{id}/revoke", post(agent_revoke))
        .route("/console/flags", get(flags))
        .route("/console/flags/set", post(flag_set))
        .route("/console/flags/diff", get(flags_diff))
        .route("/console/flags/preview", post(flags_preview))
        .route("/console/flags/apply", post(flags_apply))
        .route("/console/killswitches", get(killswitches))
        .route("/console/live/killswitches", get(killswitches_live))
        .route("/console/killswitches/confirm", get(kill_confirm))
        .route("/console/killswitches/kill", post(kill))
        .route("/console/killswitches/revive", post(revive))
        .route("/console/audit", get(audit_page))
        .route("/console/audit/verify", get(audit_verify))
        .route("/console/audit/export", get(audit_export))
        .route("/console/approvals", get(approvals_page))
        .route("/console/approvals/{id}/approve", post(approval_approve))
        .route("/console/approvals/{id}/reject", post(approval_reject))
        .route("/console/users", get(users_page).post(user_add))
        .route("/console/users/{name}/role", post(user_role))
        .route("/console/tokens", post(token_create))
        .route("/console/tokens/{id}/revoke", post(token_revoke))
        .route("/console/policy", post(policy_set))
}

type S = Extension<Session>;

fn html_page(m: Markup) -> Response {
    super::html_response(m)
}

async fn page(ctx: &Ctx, s: &Session, active: &str, title: &str, body: Markup) -> PageResult {
    let pending = ctx.store.read(store::approvals::pending_count).await?;
    let chrome = Chrome {
        session: s,
        pending_approvals: pending,
    };
    Ok(html_page(layout(&chrome, active, title, body)))
}

fn require_reason(reason: &str) -> Result<(), PageError> {
    if reason.trim().is_empty() {
        return Err(PageError::bad_request(
            "A reason is required: go back and say why.",
        ));
    }
    Ok(())
}

fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

fn enc(s: &str) -> String {
    render::url_encode(s)
}

/// Which environment a page shows: the one asked for, else the first known.
async fn pick_env(
    ctx: &Ctx,
    asked: Option<String>,
) -> Result<(Vec<String>, Option<String>), PageError> {
    let mut envs = ctx.store.read(store::agents::environments).await?;
    let env = match asked.filter(|e| !e.is_empty()) {
        Some(e) => {
            store::users::validate_name(&e)?;
            if !envs.contains(&e) {
                envs.push(e.clone());
            }
            Some(e)
        }
        None => envs.first().cloned(),
    };
    Ok((envs, env))
}

fn env_tabs(base: &str, envs: &[String], current: Option<&str>, protected: &[String]) -> Markup {
    html! {
        nav.tabs aria-label="Environment" {
            @for e in envs {
                a href={ (base) "?env=" (enc(e)) } class=@if Some(e.as_str()) == current { "active" } {
                    (e)
                    @if protected.contains(e) { " " span.lock title="protected: flag changes need a second person" { "protected" } }
                }
            }
        }
    }
}

#[derive(Deserialize, Default)]
struct EnvQ {
    env: Option<String>,
    service: Option<String>,
    done: Option<String>,
    name: Option<String>,
}

fn done_text(q: &EnvQ) -> Option<String> {
    let name = q
        .name
        .clone()
        .filter(|n| store::users::validate_name(n).is_ok())
        .unwrap_or_default();
    Some(match q.done.as_deref()? {
        "killed" => format!("{name} is now killed. Agents are applying it; watch the count below."),
        "revived" => format!("{name} is revived. Agents are applying it; watch the count below."),
        "unchanged" => format!("{name} was already in that state; nothing changed."),
        "revoked" => format!("Agent {name} is revoked; its connection is closed."),
        "flag" => format!("Flag {name} changed and pushed to agents."),
        "nochange" => "Nothing changed.".to_string(),
        "applied" => "Definition applied and pushed to agents.".to_string(),
        "approved" => format!("Request {name} approved; the change is in force."),
        "rejected" => format!("Request {name} rejected."),
        "expired" => format!("Request {name} had expired; nothing changed."),
        "role" => format!("Role of {name} changed."),
        "token_revoked" => format!("Token {name} revoked."),
        "policy" => "Approval policy saved.".to_string(),
        _ => return None,
    })
}

// ---- overview ----

struct Fleet {
    agents: Vec<(AgentRow, &'static str)>,
    counts: [usize; 4],
}

async fn fleet(
    ctx: &Ctx,
    env: Option<String>,
    service: Option<String>,
) -> Result<Fleet, PageError> {
    let rows = ctx
        .store
        .read(move |c| store::agents::list(c, env.as_deref(), service.as_deref()))
        .await?;
    let now = common::time::now_ms();
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

async fn overview_block(ctx: &Ctx) -> Result<Markup, PageError> {
    let f = fleet(ctx, None, None).await?;
    let now = common::time::now_ms();
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

async fn overview(State(ctx): State<Ctx>, Extension(s): S) -> PageResult {
    s.require(Role::Viewer)?;
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
    let now = common::time::now_ms();
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

async fn overview_live(State(ctx): State<Ctx>, Extension(s): S) -> PageResult {
    s.require(Role::Viewer)?;
    Ok(html_page(overview_block(&ctx).await?))
}

// ---- agents ----

async fn agents(State(ctx): State<Ctx>, Extension(s): S, Query(q): Query<EnvQ>) -> PageResult {
    s.require(Role::Viewer)?;
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
    let now = common::time::now_ms();
    let can_revoke = s.can(Role::Operator);
    let body = html! {
        (render::notice(done_text(&q).as_deref()))
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

#[derive(Deserialize)]
struct ReasonForm {
    #[serde(default)]
    reason: String,
}

async fn agent_revoke(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Path(id): Path<String>,
    Form(f): Form<ReasonForm>,
) -> PageResult {
    let actor = s.require(Role::Operator)?.clone();
    require_reason(&f.reason)?;
    crate::actions::revoke_agent(&ctx, actor, id.clone(), f.reason).await?;
    Ok(see_other(&format!(
        "/console/agents?done=revoked&name={}",
        enc(&id)
    )))
}

// ---- flags ----

async fn flags(State(ctx): State<Ctx>, Extension(s): S, Query(q): Query<EnvQ>) -> PageResult {
    s.require(Role::Viewer)?;
    let (envs, env) = pick_env(&ctx, q.env.clone()).await?;
    let policy = approvals::policy(&ctx).await?;
    let Some(env) = env else {
        return page(
            &ctx,
            &s,
            "flags",
            "Flags",
            html! { p.muted { "No environments yet." } },
        )
        .await;
    };
    let e2 = env.clone();
    let (latest, history) = ctx
        .store
        .read(move |c| {
            Ok((
                store::flags::latest(c, &e2)?,
                store::flags::history(c, &e2, 50)?,
            ))
        })
        .await?;
    let protected = policy.protected_environments.contains(&env);
    let can_edit = s.can(Role::Operator);
    let definition = latest
        .as_ref()
        .map(|r| r.flags.clone())
        .unwrap_or_else(store::flags::empty_definition);
    let flags = definition
        .get("flags")
        .and_then(|f| f.as_object())
        .cloned()
        .unwrap_or_default();
    let body = html! {
        (render::notice(done_text(&q).as_deref()))
        (env_tabs("/console/flags", &envs, Some(&env), &policy.protected_environments))
        @if protected {
            p.flash.warn { "Environment " strong { (env) } " is protected: every flag change here waits for a second person's approval." }
        }
        p.muted {
            @if let Some(r) = &latest { "Revision " (r.revision) " · " (flags.len()) " flags" } @else { "No flags defined in " (env) " yet." }
        }
        @for (key, flag) in &flags {
            @let state = flag.get("state").and_then(|v| v.as_str()).unwrap_or("?");
            @let default = flag.get("defaultVariant").and_then(|v| v.as_str()).unwrap_or("");
            @let variants = flag.get("variants").and_then(|v| v.as_object()).cloned().unwrap_or_default();
            @let rule = render::targeting(flag.get("targeting").unwrap_or(&Value::Null));
            div.card.flag id={ "flag-" (key) } {
                h2 { (key) " " span class={ "badge " (if state == "ENABLED" { "on" } else { "off" }) } { (state) } }
                table.kv {
                    tr { th { "Variants" } td {
                        @for (name, val) in &variants {
                            span class={ "variant" @if name == default { " default" } } {
                                (name) " = " code { (val.to_string()) }
                                @if name == default { " (default)" }
                            }
                        }
                    } }
                    tr { th { "Targeting" } td {
                        @if rule.is_empty() { span.muted { "none: everyone gets the default variant" } }
                        @else { code.rule { (rule) } }
                    } }
                }
                @if can_edit {
                    form.change method="post" action="/console/flags/set" {
                        (render::csrf(&s))
                        input type="hidden" name="env" value=(env);
                        input type="hidden" name="key" value=(key);
                        label { "State "
                            select name="state" {
                                option value="ENABLED" selected[state == "ENABLED"] { "ENABLED" }
                                option value="DISABLED" selected[state == "DISABLED"] { "DISABLED" }
                            }
                        }
                        label { "Default "
                            select name="default_variant" {
                                @for name in variants.keys() { option value=(name) selected[name == default] { (name) } }
                            }
                        }
                        label.grow { "Reason " input name="reason" required placeholder="why (required)"; }
                        button.primary type="submit" { @if protected { "Request change" } @else { "Save change" } }
                    }
                }
            }
        }
        div.card {
            h2 { "Revision history" }
            @if history.is_empty() { p.muted { "No revisions yet." } } @else {
                form method="get" action="/console/flags/diff" {
                    input type="hidden" name="env" value=(env);
                    div.scroll {
                        table.list {
                            thead { tr { th { "From" } th { "To" } th { "Revision" } th { "When" } th { "By" } th { "Summary" } } }
                            tbody {
                                @for (i, h) in history.iter().enumerate() {
                                    tr {
                                        td { input type="radio" name="a" value=(h.revision) checked[i == 1 || (history.len() == 1 && i == 0)] aria-label={ "from revision " (h.revision) }; }
                                        td { input type="radio" name="b" value=(h.revision) checked[i == 0] aria-label={ "to revision " (h.revision) }; }
                                        td { (h.revision) }
                                        td { (render::short_time(&h.created)) }
                                        td { (h.actor) }
                                        td { (h.summary) }
                                    }
                                }
                            }
                        }
                    }
                    button type="submit" { "Compare selected revisions" }
                }
            }
        }
        @if can_edit {
            div.card {
                h2 { "Apply a definition file" }
                p.muted { "Paste or load a flagd JSON file. It replaces every flag in " strong { (env) } "; you see the diff before anything changes." }
                form method="post" action="/console/flags/preview" {
                    (render::csrf(&s))
                    input type="hidden" name="env" value=(env);
                    label { "Load file " input type="file" accept=".json,application/json" data-load-into="definition"; }
                    textarea id="definition" name="definition" rows="10" required spellcheck="false" {
                        (serde_json::to_string_pretty(&definition).unwrap_or_default())
                    }
                    label { "Reason " input name="reason" required placeholder="why (required)"; }
                    button.primary type="submit" { "Preview changes" }
                }
            }
        }
    };
    page(&ctx, &s, "flags", "Flags", body).await
}

#[derive(Deserialize)]
struct FlagSetForm {
    env: String,
    key: String,
    state: Option<String>,
    default_variant: Option<String>,
    #[serde(default)]
    reason: String,
}

async fn flag_set(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Form(f): Form<FlagSetForm>,
) -> PageResult {
    let actor = s.require(Role::Operator)?.clone();
    require_reason(&f.reason)?;
    let op = Op::flag_set(
        f.env.clone(),
        f.key.clone(),
        f.state.filter(|v| !v.is_empty()),
        f.default_variant.filter(|v| !v.is_empty()),
    );
    // warnings the revision already had were accepted when it was applied
    let out = approvals::submit_checked(&ctx, &actor, op, false, &f.reason)
        .await
        .map_err(|e| {
            flag_refusal(
                e,
                "This change brings warnings the revision in force does not have. To accept them, apply the whole definition and tick \"apply despite these warnings\".",
            )
        })?;
    submitted(
        &ctx,
        &s,
        out,
        &format!(
            "/console/flags?env={}&done=flag&name={}",
            enc(&f.env),
            enc(&f.key)
        ),
    )
    .await
}

/// After a change that may need approval: back to the page, or the
/// "waiting for approval" page.
async fn submitted(ctx: &Ctx, s: &Session, out: Submitted, back: &str) -> PageResult {
    match out {
        Submitted::Applied(e) if !e.changed => {
            let path = back.split('?').next().unwrap_or(back);
            let env = back.split(['?', '&']).find(|p| p.starts_with("env="));
            Ok(see_other(&match env {
                Some(e) => format!("{path}?{e}&done=nochange"),
                None => format!("{path}?done=nochange"),
            }))
        }
        Submitted::Applied(_) => Ok(see_other(back)),
        Submitted::Pending(a) => pending_page(ctx, s, &a, None).await,
    }
}

async fn pending_page(ctx: &Ctx, s: &Session, a: &Approval, secret: Option<Markup>) -> PageResult {
    let body = html! {
        p.flash.warn { "This change needs a second person. It takes effect when someone else approves request "
            code { (a.id) } " (before " (render::short_time(&a.expires)) ")." }
        @if let Some(m) = secret { (m) }
        div.card { h2 { "What will change" } (diff_table(&a.diff)) (accepted_warnings(a)) }
        p { a href="/console/approvals" { "See all pending requests →" } }
    };
    let mut r = page(ctx, s, "approvals", "Waiting for approval", body).await?;
    *r.status_mut() = StatusCode::ACCEPTED;
    Ok(r)
}

/// The warnings a `flags apply` request accepted, for whoever approves it.
fn accepted_warnings(a: &Approval) -> Markup {
    let op = serde_json::from_value::<Op>(a.payload.clone()).ok();
    let warnings = op.as_ref().map(Op::accepted_warnings).unwrap_or_default();
    html! {
        @if !warnings.is_empty() {
            div.flash.warn.accepted-warnings {
                p { "The requester accepted " strong { (warnings.len()) " warning(s)" } " of this definition (flagd loads it, but answers these flags with an error or their default variant):" }
                (warnings_list(warnings))
            }
        }
    }
}

#[derive(Deserialize)]
struct DiffQ {
    env: Option<String>,
    a: Option<String>,
    b: Option<String>,
}

async fn flags_diff(State(ctx): State<Ctx>, Extension(s): S, Query(q): Query<DiffQ>) -> PageResult {
    s.require(Role::Viewer)?;
    let parse = |v: &Option<String>| v.as_deref().and_then(|x| x.parse::<u64>().ok());
    let (Some(a), Some(b)) = (parse(&q.a), parse(&q.b)) else {
        return Err(PageError::bad_request("Pick two revisions to compare."));
    };
    let (ra, rb) = ctx
        .store
        .read(move |c| Ok((store::flags::get(c, a)?, store::flags::get(c, b)?)))
        .await?;
    let (Some(ra), Some(rb)) = (ra, rb) else {
        return Err(PageError::new(StatusCode::NOT_FOUND, "No such revision."));
    };
    let doc = |r: &common::wire::Revision| json!({"flags": r.flags.get("flags").cloned().unwrap_or(json!({})), "killswitches": r.killswitches});
    let diff =
        serde_json::to_value(common::diff::diff(&doc(&ra), &doc(&rb))).unwrap_or(Value::Null);
    let env = q.env.unwrap_or(ra.environment.clone());
    let body = html! {
        p { "From revision " strong { (a) } " (" (ra.environment) ", " (common::time::rfc3339(ra.created_ms)) ") to revision "
            strong { (b) } " (" (rb.environment) ", " (common::time::rfc3339(rb.created_ms)) ")." }
        (diff_table(&diff))
        p { a href={ "/console/flags?env=" (enc(&env)) } { "← Back to flags" } }
    };
    page(&ctx, &s, "flags", "Compare revisions", body).await
}

#[derive(Deserialize)]
struct DefinitionForm {
    env: String,
    #[serde(default)]
    definition: String,
    #[serde(default)]
    reason: String,
    /// The "apply despite these warnings" checkbox (present when ticked).
    #[serde(default)]
    accept_warnings: Option<String>,
}

fn parse_definition(text: &str) -> Result<Value, PageError> {
    serde_json::from_str(text).map_err(|e| {
        PageError::bad_request(format!(
            "The definition is not valid JSON (line {}, column {}): {e}",
            e.line(),
            e.column()
        ))
    })
}

/// A refused flag change as a page: an invalid definition (400), or its
/// warnings, each on its own line (422), followed by `hint`.
fn flag_refusal(e: store::flags::FlagError, hint: &str) -> PageError {
    use store::flags::FlagError;
    match e {
        FlagError::Definition(d) => PageError::bad_request(format!(
            "The definition is invalid (flagd would refuse it): {}",
            d.problems.join("; ")
        )),
        FlagError::Warnings(w) => PageError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "The definition has {} warning(s), problems flagd loads anyway and answers at evaluation time:\n{}\n{hint}",
                w.len(),
                w.iter().map(|w| format!("- {w}")).collect::<Vec<_>>().join("\n")
            ),
        ),
        FlagError::Store(e) => e.into(),
    }
}

fn warnings_list(warnings: &[String]) -> Markup {
    html! {
        ul.warnings { @for w in warnings { li { (w) } } }
    }
}

async fn flags_preview(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Form(f): Form<DefinitionForm>,
) -> PageResult {
    s.require(Role::Operator)?;
    let def = parse_definition(&f.definition)?;
    // compiled on the blocking pool; a preview never uses the writer
    let change = store::flags::preview(&ctx.store, &f.env, def)
        .await
        .map_err(|e| flag_refusal(e, ""))?;
    let protected = approvals::policy(&ctx)
        .await?
        .protected_environments
        .contains(&f.env);
    let diff = serde_json::to_value(&change.diff).unwrap_or(Value::Null);
    let body = html! {
        p { "Applying this file to " strong { (f.env) } " makes these changes:" }
        div.card { (diff_table(&diff)) }
        @if !change.warnings.is_empty() {
            div.flash.warn id="definition-warnings" {
                p { strong { (change.warnings.len()) " warning(s)" } ": flagd loads this definition, but answers these flags with an error or their default variant at evaluation time." }
                (warnings_list(&change.warnings))
            }
        }
        @if change.changed {
            form.change method="post" action="/console/flags/apply" {
                (render::csrf(&s))
                input type="hidden" name="env" value=(f.env);
                input type="hidden" name="definition" value=(f.definition);
                label.grow { "Reason " input name="reason" required value=(f.reason); }
                @if !change.warnings.is_empty() {
                    label.check { input type="checkbox" name="accept_warnings" value="1" required; "apply despite these warnings" }
                }
                button.primary type="submit" { @if protected { "Request approval for these changes" } @else { "Apply these changes" } }
                " " a href={ "/console/flags?env=" (enc(&f.env)) } { "Cancel" }
            }
        } @else {
            p { a href={ "/console/flags?env=" (enc(&f.env)) } { "← Back to flags" } }
        }
    };
    page(&ctx, &s, "flags", "Preview", body).await
}

async fn flags_apply(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Form(f): Form<DefinitionForm>,
) -> PageResult {
    let actor = s.require(Role::Operator)?.clone();
    require_reason(&f.reason)?;
    let def = parse_definition(&f.definition)?;
    let op = Op::flag_apply(f.env.clone(), def);
    let accept = f.accept_warnings.is_some_and(|v| !v.is_empty());
    let out = approvals::submit_checked(&ctx, &actor, op, accept, &f.reason)
        .await
        .map_err(|e| {
            flag_refusal(
                e,
                "Go back, read them, and tick \"apply despite these warnings\" to apply it anyway.",
            )
        })?;
    submitted(
        &ctx,
        &s,
        out,
        &format!("/console/flags?env={}&done=applied", enc(&f.env)),
    )
    .await
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

async fn switches_block(ctx: &Ctx, s: &Session, env: &str) -> Result<Markup, PageError> {
    let views = killswitch_views(ctx, env).await?;
    Ok(html! {
        @if views.is_empty() {
            p.muted { "No kill switches are known in " (env) ". Agents report the switches their config declares; "
                "declare others with " code { "opsctl killswitches create NAME" } "." }
        }
        div.switches { @for k in &views { (switch_card(s, env, k)) } }
    })
}

async fn killswitches(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Query(q): Query<EnvQ>,
) -> PageResult {
    s.require(Role::Viewer)?;
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
        (render::notice(done_text(&q).as_deref()))
        (env_tabs("/console/killswitches", &envs, Some(&env), &[]))
        div data-live={ "/console/live/killswitches?env=" (enc(&env)) } { (block) }
    };
    page(&ctx, &s, "killswitches", "Kill switches", body).await
}

async fn killswitches_live(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Query(q): Query<EnvQ>,
) -> PageResult {
    s.require(Role::Viewer)?;
    let env = q.env.unwrap_or_default();
    store::users::validate_name(&env)?;
    Ok(html_page(switches_block(&ctx, &s, &env).await?))
}

#[derive(Deserialize)]
struct ConfirmQ {
    env: String,
    name: String,
    service: Option<String>,
    action: String,
}

async fn kill_confirm(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Query(q): Query<ConfirmQ>,
) -> PageResult {
    s.require(Role::Responder)?;
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
struct KillForm {
    env: String,
    name: String,
    service: Option<String>,
    #[serde(default)]
    reason: String,
}

async fn kill(state: State<Ctx>, s: S, f: Form<KillForm>) -> PageResult {
    set_kill(state, s, f, true).await
}

async fn revive(state: State<Ctx>, s: S, f: Form<KillForm>) -> PageResult {
    set_kill(state, s, f, false).await
}

/// Emergency actions never wait for approval.
async fn set_kill(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Form(f): Form<KillForm>,
    killed: bool,
) -> PageResult {
    let actor = s.require(Role::Responder)?.clone();
    require_reason(&f.reason)?;
    let (env, name) = (f.env.clone(), f.name.clone());
    let service = f.service.filter(|x| !x.is_empty());
    let outcome =
        crate::actions::set_kill(&ctx, actor, f.env, service, f.name, killed, f.reason).await?;
    let done = if !outcome.changed {
        "unchanged"
    } else if killed {
        "killed"
    } else {
        "revived"
    };
    Ok(see_other(&format!(
        "/console/killswitches?env={}&done={done}&name={}",
        enc(&env),
        enc(&name)
    )))
}

// ---- audit ----

#[derive(Deserialize, Default)]
struct AuditQ {
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
}

/// `datetime-local` values (`2026-11-23T01:02`, taken as UTC) or RFC 3339.
fn parse_when(s: &Option<String>) -> Result<Option<i64>, PageError> {
    let Some(s) = s.as_deref().map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let full = if s.len() == 16 {
        format!("{s}:00Z")
    } else {
        s.to_string()
    };
    common::time::parse_rfc3339(&full).map(Some).ok_or_else(|| {
        PageError::bad_request(format!("cannot read the time {s:?}; use 2026-11-23T14:00"))
    })
}

fn audit_table(entries: &[audit::AuditEntry], now: i64, with_diff: bool) -> Markup {
    html! {
        @if entries.is_empty() { p.muted { "No entries." } } @else {
            div.audit {
                @for e in entries {
                    div.entry {
                        div.entry-head {
                            span.seq { "#" (e.seq) }
                            span.action { code { (e.action) } }
                            span.target { (e.target) }
                            span.actor { strong { (e.actor) } @if e.actor != "anonymous" { " (" (e.role) ")" } }
                            span.when { (time(e.ts_ms, now)) }
                        }
                        @if !e.reason.is_empty() { div.reason { "Reason: " em { (e.reason) } } }
                        @if with_diff {
                            div.meta.muted { "from " (e.source) @if !e.user_agent.is_empty() { " · " span.ua title="reported by the client, not verified" { (e.user_agent) } } }
                            @if let Some(changes) = requested_changes(e) {
                                div.muted { "Requested changes:" }
                                (diff_table(changes))
                            } @else if e.diff.as_array().is_some_and(|d| !d.is_empty()) {
                                (diff_table(&e.diff))
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The changes a four-eyes request asked for, from its audit entry.
fn requested_changes(e: &audit::AuditEntry) -> Option<&Value> {
    if e.action != "approval.request" {
        return None;
    }
    e.diff.get(0)?.get("after")?.get("changes")
}

async fn audit_page(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Query(q): Query<AuditQ>,
) -> PageResult {
    s.require(Role::Viewer)?;
    let limit = q
        .limit
        .as_deref()
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(100)
        .clamp(1, 1000);
    let f = audit::Filter {
        since_ms: parse_when(&q.since)?,
        until_ms: parse_when(&q.until)?,
        actor: q.actor.clone().filter(|s| !s.is_empty()),
        action: q.action.clone().filter(|s| !s.is_empty()),
        target: q.target.clone().filter(|s| !s.is_empty()),
        limit: Some(limit),
    };
    let entries = ctx.store.read(move |c| audit::list(c, &f)).await?;
    let now = common::time::now_ms();
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    let body = html! {
        form.filters method="get" action="/console/audit" {
            label { "Actor " input name="actor" value=(v(&q.actor)) placeholder="e.g. admin"; }
            label { "Action " input name="action" value=(v(&q.action)) placeholder="e.g. killswitch.kill" list="actions"; }
            datalist id="actions" {
                @for a in ["auth.login", "auth.login_failed", "auth.logout", "flags.set", "flags.apply", "killswitch.kill", "killswitch.revive",
                           "agent.revoke", "user.add", "user.set_role", "token.create", "token.revoke", "approval.request", "approval.approve",
                           "approval.reject", "approval.expire", "approvals.policy.set"] { option value=(a) {} }
            }
            label { "Target contains " input name="target" value=(v(&q.target)); }
            label { "From (UTC) " input type="datetime-local" name="since" value=(v(&q.since)); }
            label { "To (UTC) " input type="datetime-local" name="until" value=(v(&q.until)); }
            button.primary type="submit" { "Search" }
        }
        div.toolbar {
            a.button href="/console/audit/verify" { "Verify chain" }
            @if s.can(Role::Admin) {
                a.button href="/console/audit/export?format=jsonl" { "Export JSONL" }
                a.button href="/console/audit/export?format=csv" { "Export CSV" }
            }
            span.muted { "Showing the newest " (entries.len()) " matching entries." }
        }
        (audit_table(&entries, now, true))
    };
    page(&ctx, &s, "audit", "Audit log", body).await
}

async fn audit_verify(State(ctx): State<Ctx>, Extension(s): S) -> PageResult {
    s.require(Role::Viewer)?;
    let r = ctx.store.read(audit::verify).await?;
    let body = html! {
        @if r.ok {
            div.card.verify.ok {
                h2 { "✓ The audit chain is intact" }
                p { (r.entries) " entries checked; every entry links to the one before it and matches its hash." }
                p.muted { "Head hash: " code { (r.head_hash) } }
            }
        } @else {
            div.card.verify.bad {
                h2 { "✗ The audit chain is broken" }
                p { "First bad entry: " strong { (r.first_bad_seq.unwrap_or(0)) } ". " (r.problem.clone().unwrap_or_default()) }
                p { "Compare with an exported copy to see what was changed." }
            }
        }
        p { a href="/console/audit" { "← Back to the audit log" } }
    };
    page(&ctx, &s, "audit", "Verify audit chain", body).await
}

#[derive(Deserialize)]
struct ExportQ {
    format: Option<String>,
}

async fn audit_export(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Query(q): Query<ExportQ>,
) -> PageResult {
    s.require(Role::Admin)?;
    let csv = match q.format.as_deref().unwrap_or("jsonl") {
        "jsonl" => false,
        "csv" => true,
        other => {
            return Err(PageError::bad_request(format!(
                "unknown format {other:?} (jsonl or csv)"
            )))
        }
    };
    let body = ctx.store.read(move |c| audit::export(c, csv)).await?;
    let (ctype, file) = if csv {
        ("text/csv; charset=utf-8", "audit.csv")
    } else {
        ("application/x-ndjson", "audit.jsonl")
    };
    Ok((
        [
            (header::CONTENT_TYPE, ctype.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
        ],
        body,
    )
        .into_response())
}

// ---- approvals ----

async fn approvals_page(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Query(q): Query<EnvQ>,
) -> PageResult {
    s.require(Role::Viewer)?;
    let (pending, recent) = ctx
        .store
        .read(|c| {
            Ok((
                store::approvals::list(c, Some("pending"), 200)?,
                store::approvals::list(c, None, 50)?,
            ))
        })
        .await?;
    let now = common::time::now_ms();
    let body = html! {
        (render::notice(done_text(&q).as_deref()))
        @if pending.is_empty() { p.muted { "Nothing is waiting for approval." } }
        @for a in &pending {
            @let needed = serde_json::from_value::<Op>(a.payload.clone()).map(|o| o.required_role()).unwrap_or(Role::Admin);
            @let own = a.requested_person == s.actor.person;
            div.card.approval id={ "approval-" (a.id) } {
                h2 { code { (a.action) } " " (a.target) }
                p { "Requested by " strong { (a.requested_by) } " (" (a.requested_role) ") " (time(a.created_ms, now))
                    ". Reason: " em { (a.reason) } ". Expires " (render::short_time(&a.expires)) "." }
                (diff_table(&a.diff))
                (accepted_warnings(a))
                @if own {
                    p.muted { "You made this request: another person with the " (needed.as_str()) " role must approve it." }
                    form.inline method="post" action={ "/console/approvals/" (a.id) "/reject" } {
                        (render::csrf(&s))
                        input type="hidden" name="reason" value="withdrawn by the requester";
                        button type="submit" { "Withdraw request" }
                    }
                } @else if s.can(needed) {
                    div.decide {
                        form.inline method="post" action={ "/console/approvals/" (a.id) "/approve" } {
                            (render::csrf(&s))
                            input name="reason" placeholder="note (optional)";
                            button.primary type="submit" { "Approve" }
                        }
                        form.inline method="post" action={ "/console/approvals/" (a.id) "/reject" } {
                            (render::csrf(&s))
                            input name="reason" required placeholder="why not (required)";
                            button.danger type="submit" { "Reject" }
                        }
                    }
                } @else {
                    p.muted { "Approving this needs the " (needed.as_str()) " role." }
                }
            }
        }
        div.card {
            h2 { "Recent requests" }
            div.scroll {
                table.list {
                    thead { tr { th { "Request" } th { "Action" } th { "Target" } th { "By" } th { "State" } th { "Decided by" } } }
                    tbody {
                        @for a in &recent {
                            tr {
                                td { code { (a.id) } }
                                td { (a.action) }
                                td { (a.target) }
                                td { (a.requested_by) }
                                td { span class={ "badge st-" (a.state) } { (a.state) } }
                                td { (a.decided_by.clone().unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
        }
    };
    page(&ctx, &s, "approvals", "Approvals", body).await
}

async fn approval_approve(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Path(id): Path<String>,
    Form(f): Form<ReasonForm>,
) -> PageResult {
    let actor = s.require(Role::Operator)?.clone();
    let d = approvals::approve(&ctx, &actor, &id, &f.reason).await?;
    Ok(decided(&id, d))
}

async fn approval_reject(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Path(id): Path<String>,
    Form(f): Form<ReasonForm>,
) -> PageResult {
    let actor = s.require(Role::Viewer)?.clone();
    require_reason(&f.reason)?;
    let d = approvals::reject(&ctx, &actor, &id, &f.reason).await?;
    Ok(decided(&id, d))
}

fn decided(id: &str, d: Decided) -> Response {
    let done = match d {
        Decided::Approved(..) => "approved",
        Decided::Rejected(_) => "rejected",
        Decided::Expired(_) => "expired",
    };
    see_other(&format!("/console/approvals?done={done}&name={}", enc(id)))
}

// ---- users, tokens, policy ----

async fn users_page(State(ctx): State<Ctx>, Extension(s): S, Query(q): Query<EnvQ>) -> PageResult {
    s.require(Role::Viewer)?;
    let admin = s.can(Role::Admin);
    let (users, tokens) = ctx
        .store
        .read(move |c| {
            Ok((
                store::users::list(c)?,
                if admin {
                    store::tokens::list_api_tokens(c)?
                } else {
                    Vec::new()
                },
            ))
        })
        .await?;
    let policy = approvals::policy(&ctx).await?;
    let body = html! {
        (render::notice(done_text(&q).as_deref()))
        @if !admin { p.muted { "Only admins manage users, tokens and the approval policy." } }
        div.card {
            h2 { "Users" }
            div.scroll {
                table.list {
                    thead { tr { th { "Name" } th { "Role" } th { "Created" } @if admin { th { "Change role" } } } }
                    tbody {
                        @for u in &users {
                            tr {
                                td { (u.name) @if u.disabled { " " span.muted { "(disabled)" } } }
                                td { span class={ "role role-" (u.role.as_str()) } { (u.role.as_str()) } }
                                td { (render::short_time(&u.created)) }
                                @if admin {
                                    td {
                                        form.inline method="post" action={ "/console/users/" (enc(&u.name)) "/role" } {
                                            (render::csrf(&s))
                                            (render::role_select("role", u.role))
                                            input name="reason" required placeholder="reason";
                                            button type="submit" { "Set role" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if admin {
                h3 { "Add a user" }
                form.change method="post" action="/console/users" {
                    (render::csrf(&s))
                    label { "Name " input name="name" required pattern="[A-Za-z0-9._@-]{1,64}"; }
                    label { "Role " (render::role_select("role", Role::Viewer)) }
                    label { "Password " input name="password" type="password" minlength="12" placeholder="leave empty to generate" autocomplete="new-password"; }
                    label.grow { "Reason " input name="reason" placeholder="why"; }
                    button.primary type="submit" { "Add user" }
                }
            }
        }
        @if admin {
            div.card {
                h2 { "API tokens" }
                div.scroll {
                    table.list {
                        thead { tr { th { "Id" } th { "Name" } th { "Role" } th { "Created" } th { "Expires" } th { "" } } }
                        tbody {
                            @for t in &tokens {
                                tr {
                                    td { code { (t.id) } }
                                    td { (t.name) }
                                    td { (t.role.as_str()) }
                                    td { (render::short_time(&t.created)) " by " (t.created_by) }
                                    td { (t.expires.as_deref().map(render::short_time).unwrap_or_else(|| "never".into())) }
                                    td {
                                        @if let Some(r) = &t.revoked { span.muted { "revoked " (r) } } @else {
                                            form.inline method="post" action={ "/console/tokens/" (enc(&t.id)) "/revoke" } {
                                                (render::csrf(&s))
                                                input name="reason" required placeholder="reason";
                                                button.danger type="submit" { "Revoke" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                h3 { "Create a token" }
                form.change method="post" action="/console/tokens" {
                    (render::csrf(&s))
                    label { "Name " input name="name" required pattern="[A-Za-z0-9._@-]{1,64}"; }
                    label { "Role " (render::role_select("role", Role::Viewer)) }
                    label { "Expires " input name="expires" value="30d" placeholder="30d, 12h or never"; }
                    label.grow { "Reason " input name="reason" placeholder="why"; }
                    button.primary type="submit" { "Create token" }
                }
            }
            div.card {
                h2 { "Approval policy" }
                p.muted { "These changes wait for a second person (as does changing this policy). Kill and revive never wait." }
                form.change method="post" action="/console/policy" {
                    (render::csrf(&s))
                    label.grow { "Protected environments (comma-separated) "
                        input name="protected_environments" value=(policy.protected_environments.join(", ")) placeholder="prod"; }
                    label.check { input type="checkbox" name="grant_roles" value="on" checked[policy.grant_roles];
                        " Creating users and tokens, and changing roles" }
                    label { "Requests expire after " input name="expire_after" value=(humanize_ms(policy.expire_after_ms)); }
                    label.grow { "Reason " input name="reason" required placeholder="why"; }
                    button.primary type="submit" { "Save policy" }
                }
            }
        }
    };
    page(&ctx, &s, "users", "Users and tokens", body).await
}

fn humanize_ms(ms: i64) -> String {
    if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

#[derive(Deserialize)]
struct UserForm {
    name: String,
    role: Role,
    password: Option<String>,
    #[serde(default)]
    reason: String,
}

async fn user_add(State(ctx): State<Ctx>, Extension(s): S, Form(f): Form<UserForm>) -> PageResult {
    let actor = s.require(Role::Admin)?.clone();
    let (password, generated) = match f.password.filter(|p| !p.is_empty()) {
        Some(p) if p.len() >= 12 => (p, false),
        Some(_) => {
            return Err(PageError::bad_request(
                "The password must be at least 12 characters.",
            ))
        }
        None => (crate::auth::new_password(), true),
    };
    let p2 = password.clone();
    let hash = tokio::task::spawn_blocking(move || crate::auth::hash_password(&p2))
        .await
        .map_err(|_| {
            PageError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot hash the password",
            )
        })?
        .map_err(|e| PageError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let op = Op::UserAdd {
        name: f.name.clone(),
        role: f.role,
        password_hash: hash,
    };
    let out = approvals::submit(&ctx, &actor, op, &f.reason).await?;
    let secret = generated.then(|| {
        html! {
            div.card.secret {
                h2 { "Password for " (f.name) " (shown once)" }
                p { code.secret-value { (password) } }
                p.muted { "Give it to " (f.name) " over a safe channel; it is not stored in plain text and cannot be shown again." }
            }
        }
    });
    match out {
        Submitted::Pending(a) => pending_page(&ctx, &s, &a, secret).await,
        Submitted::Applied(_) => {
            let body = html! {
                p.flash.good { "User " strong { (f.name) } " added with the " (f.role.as_str()) " role." }
                @if let Some(m) = secret { (m) }
                p { a href="/console/users" { "← Back to users" } }
            };
            page(&ctx, &s, "users", "User added", body).await
        }
    }
}

#[derive(Deserialize)]
struct RoleForm {
    role: Role,
    #[serde(default)]
    reason: String,
}

async fn user_role(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Path(name): Path<String>,
    Form(f): Form<RoleForm>,
) -> PageResult {
    let actor = s.require(Role::Admin)?.clone();
    require_reason(&f.reason)?;
    let op = Op::UserSetRole {
        name: name.clone(),
        role: f.role,
    };
    let out = approvals::submit(&ctx, &actor, op, &f.reason).await?;
    submitted(
        &ctx,
        &s,
        out,
        &format!("/console/users?done=role&name={}", enc(&name)),
    )
    .await
}

#[derive(Deserialize)]
struct TokenForm {
    name: String,
    role: Role,
    expires: Option<String>,
    #[serde(default)]
    reason: String,
}

async fn token_create(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Form(f): Form<TokenForm>,
) -> PageResult {
    let actor = s.require(Role::Admin)?.clone();
    let expires = f
        .expires
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty());
    let expires_ms = crate::auth::expiry_ms(expires).map_err(PageError::bad_request)?;
    let (id, secret) = crate::auth::new_secret(crate::auth::SecretKind::ApiToken);
    let op = Op::TokenCreate {
        id: id.clone(),
        name: f.name.clone(),
        role: f.role,
        secret_hash: crate::auth::hash_secret(&secret),
        expires_ms,
    };
    let out = approvals::submit(&ctx, &actor, op, &f.reason).await?;
    let shown = html! {
        div.card.secret {
            h2 { "Token " code { (id) } " for " (f.name) " (shown once)" }
            p { code.secret-value { (secret) } }
            p.muted { "Copy it now: only its hash is stored, so it cannot be shown again." }
        }
    };
    match out {
        Submitted::Pending(a) => pending_page(&ctx, &s, &a, Some(shown)).await,
        Submitted::Applied(_) => {
            let body = html! {
                p.flash.good { "Token created with the " (f.role.as_str()) " role." }
                (shown)
                p { a href="/console/users" { "← Back to users and tokens" } }
            };
            page(&ctx, &s, "users", "Token created", body).await
        }
    }
}

async fn token_revoke(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Path(id): Path<String>,
    Form(f): Form<ReasonForm>,
) -> PageResult {
    let actor = s.require(Role::Admin)?.clone();
    require_reason(&f.reason)?;
    let id2 = id.clone();
    ctx.store
        .write(move |tx| store::tokens::revoke_api_token(tx, &actor, &id2, &f.reason))
        .await?;
    Ok(see_other(&format!(
        "/console/users?done=token_revoked&name={}",
        enc(&id)
    )))
}

#[derive(Deserialize)]
struct PolicyForm {
    #[serde(default)]
    protected_environments: String,
    grant_roles: Option<String>,
    #[serde(default)]
    expire_after: String,
    #[serde(default)]
    reason: String,
}

async fn policy_set(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Form(f): Form<PolicyForm>,
) -> PageResult {
    let actor = s.require(Role::Admin)?.clone();
    require_reason(&f.reason)?;
    let expire_after_ms =
        approvals::parse_expire_after(f.expire_after.trim()).map_err(PageError::bad_request)?;
    let mut envs: Vec<String> = f
        .protected_environments
        .split(',')
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    envs.sort();
    envs.dedup();
    let policy = approvals::Policy {
        protected_environments: envs,
        grant_roles: f.grant_roles.is_some(),
        expire_after_ms,
    };
    let out = approvals::set_policy(&ctx, &actor, policy, &f.reason).await?;
    submitted(&ctx, &s, out, "/console/users?done=policy").await
}
