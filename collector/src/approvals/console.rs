//! The approvals' console pages: pending and recent requests, approve,
//! reject or withdraw, the policy form's handler; and the "waiting for
//! approval" answer of any approvable change ([`submitted`]).

use crate::approvals::{self, Decided, Op, Submitted};
use crate::console::page::{enc, flashes, notice, page, require_reason, see_other, EnvQ, Flash, S};
use crate::console::render::{self, diff_table, time};
use crate::console::{PageError, PageResult, Session};
use crate::flags::console::warnings_list;
use crate::kernel::json::ReasonForm;
use crate::kernel::Role;
use crate::store;
use crate::store::approvals::Approval;
use crate::Ctx;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::{Extension, Form};
use maud::{html, Markup};
use serde::Deserialize;

flashes! {
    /// Outcomes of approvable changes and of the approvals' forms.
    pub enum Done {
        NoChange = "nochange" => |name| "Nothing changed.".to_string(),
        Approved = "approved" => |name| format!("Request {name} approved; the change is in force."),
        Rejected = "rejected" => |name| format!("Request {name} rejected."),
        Expired = "expired" => |name| format!("Request {name} had expired; nothing changed."),
        Policy = "policy" => |name| "Approval policy saved.".to_string(),
    }
}

/// After a change that may need approval: back to the page, or the
/// "waiting for approval" page.
pub(crate) async fn submitted(ctx: &Ctx, s: &Session, out: Submitted, back: &str) -> PageResult {
    match out {
        Submitted::Applied(e) if !e.changed => {
            let path = back.split('?').next().unwrap_or(back);
            let env = back.split(['?', '&']).find(|p| p.starts_with("env="));
            Ok(see_other(&match env {
                Some(e) => format!("{path}?{e}&done={}", Done::NoChange.code()),
                None => format!("{path}?done={}", Done::NoChange.code()),
            }))
        }
        Submitted::Applied(_) => Ok(see_other(back)),
        Submitted::Pending(a) => pending_page(ctx, s, &a, None).await,
    }
}

pub(crate) async fn pending_page(
    ctx: &Ctx,
    s: &Session,
    a: &Approval,
    secret: Option<Markup>,
) -> PageResult {
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

// ---- approvals ----

pub(crate) async fn approvals_page(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Query(q): Query<EnvQ>,
) -> PageResult {
    let (pending, recent) = ctx
        .store
        .read(|c| {
            Ok((
                store::approvals::list(c, Some("pending"), 200)?,
                store::approvals::list(c, None, 50)?,
            ))
        })
        .await?;
    let now = ctx.clock.now_ms();
    let body = html! {
        (notice::<Done>(&q))
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

pub(crate) async fn approval_approve(
    ctx: State<Ctx>,
    s: S,
    id: Path<String>,
    f: Form<ReasonForm>,
) -> PageResult {
    decide(ctx, s, id, f, true).await
}

pub(crate) async fn approval_reject(
    ctx: State<Ctx>,
    s: S,
    id: Path<String>,
    f: Form<ReasonForm>,
) -> PageResult {
    decide(ctx, s, id, f, false).await
}

async fn decide(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Path(id): Path<String>,
    Form(f): Form<ReasonForm>,
    approve: bool,
) -> PageResult {
    let d = if approve {
        approvals::approve(&ctx, &s.actor, &id, &f.reason).await?
    } else {
        approvals::reject(&ctx, &s.actor, &id, &f.reason).await?
    };
    Ok(decided(&id, d))
}

fn decided(id: &str, d: Decided) -> Response {
    let done = match d {
        Decided::Approved(..) => Done::Approved,
        Decided::Rejected(_) => Done::Rejected,
        Decided::Expired(_) => Done::Expired,
    };
    see_other(&format!(
        "/console/approvals?done={}&name={}",
        done.code(),
        enc(id)
    ))
}

#[derive(Deserialize)]
pub(crate) struct PolicyForm {
    #[serde(default)]
    protected_environments: String,
    grant_roles: Option<String>,
    #[serde(default)]
    expire_after: String,
    #[serde(default)]
    reason: String,
}

pub(crate) async fn policy_set(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Form(f): Form<PolicyForm>,
) -> PageResult {
    let actor = s.actor.clone();
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
    submitted(
        &ctx,
        &s,
        out,
        &format!("/console/users?done={}", Done::Policy.code()),
    )
    .await
}
