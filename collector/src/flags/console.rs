//! The flags' console pages: definitions per environment, set one flag,
//! diff two revisions, preview and apply a whole definition.

use crate::approvals::{self, console::submitted};
use crate::console::page::{enc, env_tabs, flashes, notice, page, pick_env, EnvQ, Flash, S};
use crate::console::render::{self, diff_table};
use crate::console::{PageError, PageResult};
use crate::kernel::{ErrorCode, Role};
use crate::store;
use crate::Ctx;
use axum::extract::{Query, State};
use axum::{Extension, Form};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Value};

flashes! {
    /// Outcomes of the flags' forms.
    pub enum Done {
        Flag = "flag" => |name| format!("Flag {name} changed and pushed to agents."),
        Applied = "applied" => |name| "Definition applied and pushed to agents.".to_string(),
    }
}

// ---- flags ----

pub(crate) async fn flags(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Query(q): Query<EnvQ>,
) -> PageResult {
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
        (notice::<Done>(&q))
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
pub(crate) struct FlagSetForm {
    env: String,
    key: String,
    state: Option<String>,
    default_variant: Option<String>,
    #[serde(default)]
    reason: String,
}

pub(crate) async fn flag_set(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Form(f): Form<FlagSetForm>,
) -> PageResult {
    // warnings the revision already had were accepted when it was applied
    let out = super::set_flag(
        &ctx,
        &s.actor,
        f.env.clone(),
        f.key.clone(),
        f.state.filter(|v| !v.is_empty()),
        f.default_variant.filter(|v| !v.is_empty()),
        &f.reason,
    )
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
            "/console/flags?env={}&done={}&name={}",
            enc(&f.env),
            Done::Flag.code(),
            enc(&f.key)
        ),
    )
    .await
}

#[derive(Deserialize)]
pub(crate) struct DiffQ {
    env: Option<String>,
    a: Option<String>,
    b: Option<String>,
}

pub(crate) async fn flags_diff(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Query(q): Query<DiffQ>,
) -> PageResult {
    let parse = |v: &Option<String>| v.as_deref().and_then(|x| x.parse::<u64>().ok());
    let (Some(a), Some(b)) = (parse(&q.a), parse(&q.b)) else {
        return Err(PageError::bad_request("Pick two revisions to compare."));
    };
    let (ra, rb) = ctx
        .store
        .read(move |c| Ok((store::flags::get(c, a)?, store::flags::get(c, b)?)))
        .await?;
    let (Some(ra), Some(rb)) = (ra, rb) else {
        return Err(PageError::new(ErrorCode::NotFound, "No such revision."));
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
pub(crate) struct DefinitionForm {
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
fn flag_refusal(e: super::Refused, hint: &str) -> PageError {
    use store::flags::FlagError;
    let e = match e {
        super::Refused::Rule(e) => return e.into(),
        super::Refused::Check(e) => e,
    };
    match e {
        FlagError::Definition(d) => PageError::bad_request(format!(
            "The definition is invalid (flagd would refuse it): {}",
            d.problems.join("; ")
        )),
        FlagError::Warnings(w) => PageError::new(
            ErrorCode::DefinitionWarnings,
            format!(
                "The definition has {} warning(s), problems flagd loads anyway and answers at evaluation time:\n{}\n{hint}",
                w.len(),
                w.iter().map(|w| format!("- {w}")).collect::<Vec<_>>().join("\n")
            ),
        ),
        FlagError::Store(e) => e.into(),
    }
}

pub(crate) fn warnings_list(warnings: &[String]) -> Markup {
    html! {
        ul.warnings { @for w in warnings { li { (w) } } }
    }
}

pub(crate) async fn flags_preview(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Form(f): Form<DefinitionForm>,
) -> PageResult {
    let def = parse_definition(&f.definition)?;
    // compiled on the blocking pool; a preview never uses the writer
    let change = super::preview(&ctx, &f.env, def)
        .await
        .map_err(|e| flag_refusal(super::Refused::Check(e), ""))?;
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

pub(crate) async fn flags_apply(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Form(f): Form<DefinitionForm>,
) -> PageResult {
    let def = parse_definition(&f.definition)?;
    let accept = f.accept_warnings.is_some_and(|v| !v.is_empty());
    let out = super::apply(&ctx, &s.actor, f.env.clone(), def, accept, &f.reason)
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
        &format!(
            "/console/flags?env={}&done={}",
            enc(&f.env),
            Done::Applied.code()
        ),
    )
    .await
}
