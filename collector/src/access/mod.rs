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

/// A user to add, as the API's body and the console's form give it.
#[derive(serde::Deserialize)]
pub struct NewUser {
    pub name: String,
    pub role: crate::kernel::Role,
    /// Generated (and shown once) when not given.
    pub password: Option<String>,
    #[serde(default)]
    pub reason: String,
}

/// Adds a user, or asks for approval; returns the outcome and the password
/// generated for them, if one was (shown once).
pub async fn add_user(
    ctx: &crate::Ctx,
    actor: &crate::kernel::Actor,
    u: NewUser,
) -> crate::kernel::ApiResult<(crate::approvals::Submitted, Option<String>)> {
    use crate::kernel::ApiError;
    let (password, generated) = match u.password {
        Some(p) if p.len() >= 12 => (p, false),
        Some(_) => {
            return Err(ApiError::bad_request(
                "password must be at least 12 characters",
            ))
        }
        None => (auth::new_password(), true),
    };
    let p = password.clone();
    let hash = tokio::task::spawn_blocking(move || auth::hash_password(&p))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(|e| {
            tracing::error!(error = %e, "cannot hash a password");
            ApiError::internal()
        })?;
    let op = crate::approvals::Op::UserAdd {
        name: u.name,
        role: u.role,
        password_hash: hash,
    };
    let out = crate::approvals::submit(ctx, actor, op, &u.reason).await?;
    Ok((out, generated.then_some(password)))
}

/// An API token to create, as the API's body and the console's form give it.
#[derive(serde::Deserialize)]
pub struct NewToken {
    pub name: String,
    pub role: crate::kernel::Role,
    /// `"30d"`, `"never"`; never expires when not given.
    pub expires: Option<String>,
    #[serde(default)]
    pub reason: String,
}

/// A token just made: its id and its secret (shown once).
pub struct MintedToken {
    pub id: String,
    pub secret: String,
}

/// Creates an API token, or asks for approval (the secret is shown to the
/// requester either way: only its hash is stored).
pub async fn create_token(
    ctx: &crate::Ctx,
    actor: &crate::kernel::Actor,
    t: NewToken,
) -> crate::kernel::ApiResult<(crate::approvals::Submitted, MintedToken)> {
    let expires_ms =
        auth::expiry_ms(t.expires.as_deref()).map_err(crate::kernel::ApiError::bad_request)?;
    let (id, secret) = auth::new_secret(auth::SecretKind::ApiToken);
    let op = crate::approvals::Op::TokenCreate {
        id: id.clone(),
        name: t.name,
        role: t.role,
        secret_hash: auth::hash_secret(&secret),
        expires_ms,
    };
    let out = crate::approvals::submit(ctx, actor, op, &t.reason).await?;
    Ok((out, MintedToken { id, secret }))
}
