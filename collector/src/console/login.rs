//! Sign-in and sign-out, and the login throttle. Failed attempts are counted
//! per account and per source address over a sliding window; past the limit
//! every attempt (even with the right password) is refused with the time to
//! wait, so guessing gains nothing. The counts live in memory: a restart
//! clears them (acceptable: a restart is slow and visible in the logs).

use super::{
    render, secure, session_cookie, source_of, user_agent_of, PageError, PageResult, Session,
};
use crate::auth::{hash_secret, new_secret, verify_password, Actor, Role, SecretKind};
use crate::store;
use crate::Ctx;
use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Mutex;

/// Failed attempts are remembered this long.
pub const WINDOW_MS: i64 = 15 * 60 * 1000;
/// Failures per account within the window before it is locked.
pub const MAX_PER_ACCOUNT: usize = 5;
/// Failures per source address within the window before it is locked.
pub const MAX_PER_ADDRESS: usize = 20;
/// Bound on the number of remembered keys (memory stays bounded under a flood).
const MAX_KEYS: usize = 50_000;

#[derive(Default)]
pub struct Limiter {
    failures: Mutex<HashMap<String, Vec<i64>>>,
}

impl Limiter {
    /// Seconds to wait before `user` may try again from `addr`, if locked.
    pub fn locked_for(&self, user: &str, addr: &str, now_ms: i64) -> Option<(i64, &'static str)> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let check = |key: String, max: usize, what: &'static str| -> Option<(i64, &'static str)> {
            let v = map.get(&key)?;
            let recent: Vec<i64> = v
                .iter()
                .copied()
                .filter(|t| now_ms - t < WINDOW_MS)
                .collect();
            if recent.len() >= max {
                // wait until the oldest counted failure leaves the window
                let oldest = recent[recent.len() - max];
                Some(((oldest + WINDOW_MS - now_ms) / 1000 + 1, what))
            } else {
                None
            }
        };
        check(format!("user:{user}"), MAX_PER_ACCOUNT, "this account")
            .or_else(|| check(format!("addr:{addr}"), MAX_PER_ADDRESS, "your address"))
    }

    pub fn fail(&self, user: &str, addr: &str, now_ms: i64) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_KEYS {
            map.retain(|_, v| v.iter().any(|t| now_ms - t < WINDOW_MS));
            if map.len() >= MAX_KEYS {
                map.clear();
            }
        }
        for key in [format!("user:{user}"), format!("addr:{addr}")] {
            let v = map.entry(key).or_default();
            v.retain(|t| now_ms - t < WINDOW_MS);
            v.push(now_ms);
        }
    }

    pub fn succeed(&self, user: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&format!("user:{user}"));
    }
}

pub fn routes() -> Router<Ctx> {
    Router::new()
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
}

#[derive(Deserialize, Default)]
struct LoginQuery {
    next: Option<String>,
}

/// Only local console paths are followed after login (no open redirect).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/console/") && !n.starts_with("//") && !n.contains('\\') => {
            n.to_string()
        }
        _ => "/console/".into(),
    }
}

async fn login_page(Query(q): Query<LoginQuery>) -> Response {
    super::html_response(render::login_page(&safe_next(q.next.as_deref()), None, ""))
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    next: Option<String>,
}

/// Verifies against this when the user does not exist, so the answer takes
/// as long as for a real account.
fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| crate::auth::hash_password("not a real password").unwrap_or_default())
}

async fn login(State(ctx): State<Ctx>, req: Request) -> PageResult {
    let source = source_of(&req);
    let user_agent = user_agent_of(req.headers());
    // a session already held by this browser ends at the next sign-in
    let previous = super::cookie_value(req.headers(), super::COOKIE).map(|c| hash_secret(&c));
    let bytes = axum::body::to_bytes(req.into_body(), super::MAX_FORM_BYTES)
        .await
        .map_err(|_| PageError::new(StatusCode::PAYLOAD_TOO_LARGE, "form too large"))?;
    let form: LoginForm = serde_urlencoded::from_bytes(&bytes)
        .map_err(|_| PageError::bad_request("malformed sign-in form"))?;
    let next = safe_next(form.next.as_deref());
    let username: String = form.username.trim().chars().take(64).collect();
    let now = common::time::now_ms();
    let anonymous = Actor::user(
        "anonymous",
        Role::Viewer,
        source.clone(),
        user_agent.clone(),
    );
    let refuse = |status: StatusCode, msg: String| {
        let mut r = super::html_response(render::login_page(&next, Some(&msg), &username));
        *r.status_mut() = status;
        r
    };
    if let Some((secs, what)) = ctx.console.limiter.locked_for(&username, &source, now) {
        // not audited one by one: a locked-out flood must not fill the audit
        // log (the failures that caused the lock are audited)
        tracing::debug!(user = %username, source = %source, "console sign-in throttled");
        let wait = if secs >= 60 {
            format!("{} min", (secs + 59) / 60)
        } else {
            format!("{secs} s")
        };
        return Ok(refuse(
            StatusCode::TOO_MANY_REQUESTS,
            format!("Too many failed sign-in attempts for {what}. Try again in {wait}."),
        ));
    }
    let u = username.clone();
    let creds = ctx
        .store
        .read(move |c| store::users::credentials(c, &u))
        .await?;
    let password = form.password;
    let (role, ok) = {
        let stored = creds.as_ref().map(|c| c.1.clone());
        // hashing (even the dummy's first computation) stays off the runtime
        let ok = tokio::task::spawn_blocking(move || {
            verify_password(&password, stored.as_deref().unwrap_or_else(|| dummy_hash()))
        })
        .await
        .unwrap_or(false);
        (creds.map(|c| c.0), ok)
    };
    let Some(role) = role.filter(|_| ok) else {
        ctx.console.limiter.fail(&username, &source, now);
        let (a, u) = (anonymous, username.clone());
        ctx.store
            .write(move |tx| {
                store::sessions::login_failed(tx, &a, &u, "wrong user name or password")
            })
            .await?;
        tracing::warn!(user = %username, source = %source, "console sign-in failed");
        return Ok(refuse(
            StatusCode::UNAUTHORIZED,
            "Wrong user name or password.".into(),
        ));
    };
    ctx.console.limiter.succeed(&username);
    // a new session id at every login (no fixation)
    let (_, sid) = new_secret(SecretKind::Session);
    let (_, csrf) = new_secret(SecretKind::Session);
    let actor = Actor::user(&username, role, source, user_agent);
    let h = hash_secret(&sid);
    ctx.store
        .write(move |tx| {
            if let Some(old) = previous {
                store::sessions::expire(tx, &old)?;
            }
            store::sessions::login(tx, &actor, &h, &csrf)
        })
        .await?;
    tracing::info!(user = %username, role = role.as_str(), "console sign-in");
    let mut resp = Redirect::to(&next).into_response();
    if let Ok(v) = session_cookie(&ctx.console, &sid).parse() {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(resp)
}

async fn logout(State(ctx): State<Ctx>, Extension(session): Extension<Session>) -> PageResult {
    let (actor, h) = (session.actor.clone(), session.id_hash.clone());
    ctx.store
        .write(move |tx| store::sessions::logout(tx, &actor, &h))
        .await?;
    let resp = Redirect::to("/console/login?signed_out=1").into_response();
    Ok(secure(resp, Some(super::clear_cookie(&ctx.console))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_locks_account_then_address_and_releases() {
        let l = Limiter::default();
        let t0 = 1_000_000;
        for i in 0..MAX_PER_ACCOUNT as i64 {
            assert!(l.locked_for("alice", "10.0.0.1", t0 + i).is_none());
            l.fail("alice", "10.0.0.1", t0 + i);
        }
        let (secs, what) = l
            .locked_for("alice", "10.0.0.9", t0 + 10)
            .expect("account locked");
        assert_eq!(what, "this account");
        assert!(secs > 0 && secs <= WINDOW_MS / 1000 + 1);
        // another account from the same address is not locked yet
        assert!(l.locked_for("bob", "10.0.0.1", t0 + 10).is_none());
        // after the window the account is free again
        assert!(l
            .locked_for("alice", "10.0.0.1", t0 + WINDOW_MS + 10)
            .is_none());
        // many accounts from one address lock the address
        for i in 0..MAX_PER_ADDRESS {
            l.fail(&format!("u{i}"), "10.0.0.2", t0);
        }
        assert_eq!(
            l.locked_for("fresh", "10.0.0.2", t0 + 1).map(|x| x.1),
            Some("your address")
        );
        l.succeed("alice");
        assert!(l.locked_for("alice", "10.0.0.3", t0 + 20).is_none());
    }

    #[test]
    fn only_local_console_paths_are_followed_after_login() {
        assert_eq!(
            safe_next(Some("/console/flags?env=prod")),
            "/console/flags?env=prod"
        );
        assert_eq!(safe_next(Some("https://evil.example/")), "/console/");
        assert_eq!(safe_next(Some("//evil.example/console/")), "/console/");
        assert_eq!(safe_next(Some("/console/\\evil")), "/console/");
        assert_eq!(safe_next(None), "/console/");
    }
}
