//! Access: who may do what. Users (with a role and an argon2id password),
//! API tokens (a role, an owner, shown once), console sessions, and the
//! secrets and hashing of [`auth`]. Roles and the caller extractor live in
//! the kernel; sign-in, sign-out and the login throttle are part of the
//! console frame (`console::login`).
//!
//! Routes: `GET /api/v1/whoami`, `GET|POST /api/v1/users`,
//! `POST /api/v1/users/{name}/role`, `GET|POST /api/v1/tokens`,
//! `POST /api/v1/tokens/{id}/revoke`; console `/console/users` and its forms.
//! Adding users, creating tokens and changing roles may wait for an
//! approval. Audit actions: [`Action`].

pub mod api;
pub mod auth;
pub mod console;

use crate::kernel::{Role, Route};

crate::audit::actions! {
    /// Audit actions of access.
    pub enum Action {
        Login => "auth.login",
        LoginFailed => "auth.login_failed",
        Logout => "auth.logout",
        UserAdd => "user.add",
        UserSetRole => "user.set_role",
        TokenCreate => "token.create",
        TokenRevoke => "token.revoke",
    }
}

pub fn routes() -> Vec<Route> {
    vec![
        Route::get("/api/v1/whoami", Role::Viewer, api::whoami),
        Route::get("/api/v1/users", Role::Viewer, api::users_list),
        Route::post("/api/v1/users", Role::Admin, api::user_add).approvable(),
        Route::post("/api/v1/users/{name}/role", Role::Admin, api::user_set_role).approvable(),
        Route::get("/api/v1/tokens", Role::Admin, api::tokens_list),
        Route::post("/api/v1/tokens", Role::Admin, api::token_create).approvable(),
        Route::post("/api/v1/tokens/{id}/revoke", Role::Admin, api::token_revoke),
        Route::get("/console/users", Role::Viewer, console::users_page).nav("users", "Users", 70),
        Route::post("/console/users", Role::Admin, console::user_add).approvable(),
        Route::post(
            "/console/users/{name}/role",
            Role::Admin,
            console::user_role,
        )
        .approvable(),
        Route::post("/console/tokens", Role::Admin, console::token_create).approvable(),
        Route::post(
            "/console/tokens/{id}/revoke",
            Role::Admin,
            console::token_revoke,
        ),
    ]
}

/// Revokes API token `id`; like every revocation it needs a reason.
pub async fn revoke_token(
    ctx: &crate::Ctx,
    actor: crate::kernel::Actor,
    id: String,
    reason: String,
) -> crate::kernel::ApiResult<()> {
    crate::kernel::error::require_reason(&reason)?;
    ctx.store
        .write(move |tx| crate::store::tokens::revoke_api_token(tx, &actor, &id, &reason))
        .await?;
    Ok(())
}
