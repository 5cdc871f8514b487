//! Access's console page: users, API tokens and the approval policy form;
//! adding users, changing roles, creating and revoking tokens.

use crate::approvals::{
    self,
    console::{pending_page, submitted},
    Op, Submitted,
};
use crate::console::page::{enc, flashes, notice, page, require_reason, see_other, EnvQ, Flash, S};
use crate::console::render::{self};
use crate::console::PageResult;
use crate::kernel::json::ReasonForm;
use crate::kernel::Role;
use crate::store;
use crate::Ctx;
use axum::extract::{Path, Query, State};
use axum::{Extension, Form};
use maud::html;
use serde::Deserialize;

flashes! {
    /// Outcomes of access's forms.
    pub enum Done {
        Role = "role" => |name| format!("Role of {name} changed."),
        TokenRevoked = "token_revoked" => |name| format!("Token {name} revoked."),
    }
}

// ---- users, tokens, policy ----

pub(crate) async fn users_page(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Query(q): Query<EnvQ>,
) -> PageResult {
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
        (notice::<Done>(&q))
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

pub(crate) async fn user_add(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Form(mut f): Form<super::NewUser>,
) -> PageResult {
    // an empty field asks for a generated password
    f.password = f.password.filter(|p| !p.is_empty());
    let (name, role) = (f.name.clone(), f.role);
    let (out, password) = super::add_user(&ctx, &s.actor, f).await?;
    let secret = password.map(|password| {
        html! {
            div.card.secret {
                h2 { "Password for " (name) " (shown once)" }
                p { code.secret-value { (password) } }
                p.muted { "Give it to " (name) " over a safe channel; it is not stored in plain text and cannot be shown again." }
            }
        }
    });
    match out {
        Submitted::Pending(a) => pending_page(&ctx, &s, &a, secret).await,
        Submitted::Applied(_) => {
            let body = html! {
                p.flash.good { "User " strong { (name) } " added with the " (role.as_str()) " role." }
                @if let Some(m) = secret { (m) }
                p { a href="/console/users" { "← Back to users" } }
            };
            page(&ctx, &s, "users", "User added", body).await
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct RoleForm {
    role: Role,
    #[serde(default)]
    reason: String,
}

pub(crate) async fn user_role(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Path(name): Path<String>,
    Form(f): Form<RoleForm>,
) -> PageResult {
    let actor = s.actor.clone();
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
        &format!(
            "/console/users?done={}&name={}",
            Done::Role.code(),
            enc(&name)
        ),
    )
    .await
}

pub(crate) async fn token_create(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Form(mut f): Form<super::NewToken>,
) -> PageResult {
    // an empty field: the token never expires
    f.expires = f
        .expires
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty());
    let (name, role) = (f.name.clone(), f.role);
    let (out, super::MintedToken { id, secret }) = super::create_token(&ctx, &s.actor, f).await?;
    let shown = html! {
        div.card.secret {
            h2 { "Token " code { (id) } " for " (name) " (shown once)" }
            p { code.secret-value { (secret) } }
            p.muted { "Copy it now: only its hash is stored, so it cannot be shown again." }
        }
    };
    match out {
        Submitted::Pending(a) => pending_page(&ctx, &s, &a, Some(shown)).await,
        Submitted::Applied(_) => {
            let body = html! {
                p.flash.good { "Token created with the " (role.as_str()) " role." }
                (shown)
                p { a href="/console/users" { "← Back to users and tokens" } }
            };
            page(&ctx, &s, "users", "Token created", body).await
        }
    }
}

pub(crate) async fn token_revoke(
    State(ctx): State<Ctx>,
    Extension(s): S,
    Path(id): Path<String>,
    Form(f): Form<ReasonForm>,
) -> PageResult {
    super::revoke_token(&ctx, s.actor.clone(), id.clone(), f.reason).await?;
    Ok(see_other(&format!(
        "/console/users?done={}&name={}",
        Done::TokenRevoked.code(),
        enc(&id)
    )))
}
