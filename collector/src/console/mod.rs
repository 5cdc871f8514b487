//! The web ops console, served on the admin listener under `/console/` (and
//! `/`, which leads to it). Server-rendered HTML (maud) with one small
//! embedded script for live updates; no inline script or style, so the
//! Content-Security-Policy can forbid both.
//!
//! Every console request passes [`guard`]: it authenticates the session
//! cookie (idle and absolute timeouts, id renewed when the user's role
//! changed), refuses cross-site POSTs and POSTs without the session's CSRF
//! token, and adds the security headers. Each handler then checks the role
//! it needs on the server; the pages only hide what a role cannot do.

mod login;
mod pages;
mod render;

use crate::api::ApiError;
use crate::auth::{hash_secret, new_secret, Actor, Role, SecretKind};
use crate::store;
use crate::Ctx;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;

pub use login::{Clock, Limiter, SystemClock, Throttled};

/// The login throttle's limits (tests and docs refer to them).
pub mod login_limits {
    pub use super::login::{
        BASE_LOCK_MS, MAX_CONCURRENT_HASHES, MAX_LOCK_MS, MAX_PER_ACCOUNT, MAX_PER_ADDRESS,
        WINDOW_MS,
    };
}

pub const COOKIE: &str = "opsplane_session";
/// Body limit of console forms; flag definitions get [`crate::api::MAX_DEFINITION_BYTES`].
pub const MAX_FORM_BYTES: usize = 64 * 1024;
/// Sessions are touched at most this often (a write per request is wasteful).
const TOUCH_EVERY_MS: i64 = 15_000;
/// Header the console script sends on its background refreshes: they do not
/// count as activity for the idle timeout.
pub const LIVE_HEADER: &str = "x-console-live";

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Console settings and the login throttle.
pub struct ConsoleState {
    pub idle_timeout_ms: i64,
    pub absolute_timeout_ms: i64,
    /// Set `Secure` on the cookie: `[admin] secure_cookie`, for a console
    /// served over HTTPS by a TLS proxy (the listener has no TLS yet).
    pub secure_cookie: bool,
    pub limiter: Limiter,
}

impl ConsoleState {
    pub fn new(s: &crate::config::AdminSettings) -> Self {
        ConsoleState {
            idle_timeout_ms: s.session_idle_timeout_ms,
            absolute_timeout_ms: s.session_absolute_timeout_ms,
            secure_cookie: s.secure_cookie,
            limiter: Limiter::default(),
        }
    }
}

/// The signed-in user of a console request.
#[derive(Clone, Debug)]
pub struct Session {
    pub actor: Actor,
    pub csrf: String,
    pub id_hash: String,
}

impl Session {
    pub fn can(&self, role: Role) -> bool {
        self.actor.role.allows(role)
    }

    pub fn require(&self, role: Role) -> Result<&Actor, PageError> {
        if self.can(role) {
            Ok(&self.actor)
        } else {
            Err(PageError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "This needs the {} role; you ({}) have the {} role.",
                    role.as_str(),
                    self.actor.name,
                    self.actor.role.as_str()
                ),
            ))
        }
    }
}

/// An error shown as an HTML page.
#[derive(Debug)]
pub struct PageError {
    pub status: StatusCode,
    pub message: String,
}

impl PageError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        PageError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<store::StoreError> for PageError {
    fn from(e: store::StoreError) -> Self {
        ApiError::from(e).into()
    }
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError::new(e.status, e.message)
    }
}

impl From<crate::approvals::ApprovalError> for PageError {
    fn from(e: crate::approvals::ApprovalError) -> Self {
        match e {
            crate::approvals::ApprovalError::Store(s) => s.into(),
            crate::approvals::ApprovalError::Forbidden(m) => {
                PageError::new(StatusCode::FORBIDDEN, m)
            }
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let title = match self.status {
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::CONFLICT => "Conflict",
            StatusCode::TOO_MANY_REQUESTS => "Too many attempts",
            s if s.is_server_error() => "Something went wrong",
            _ => "Cannot do that",
        };
        let body = render::error_page(title, &self.message);
        let mut r = html_response(body);
        *r.status_mut() = self.status;
        r
    }
}

pub type PageResult = Result<Response, PageError>;

pub fn html_response(m: maud::Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        m.into_string(),
    )
        .into_response()
}

/// The console's routes, to merge into the admin router.
pub fn router(ctx: Ctx) -> Router<Ctx> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .merge(login::routes())
        .merge(pages::routes())
        .route("/console/static/console.css", get(css))
        .route("/console/static/console.js", get(js))
        .layer(middleware::from_fn_with_state(ctx, guard))
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("static/console.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("static/console.js"),
    )
        .into_response()
}

pub fn source_of(req: &Request) -> String {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

pub fn user_agent_of(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}

pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

pub fn session_cookie(state: &ConsoleState, id: &str) -> String {
    let secure = if state.secure_cookie { "; Secure" } else { "" };
    format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict{secure}")
}

pub fn clear_cookie(state: &ConsoleState) -> String {
    let secure = if state.secure_cookie { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `path` is reachable without a session.
fn is_public(path: &str) -> bool {
    path == "/"
        || path == "/console"
        || path == "/console/login"
        || path.starts_with("/console/static/")
}

/// A session as loaded for one request.
struct Loaded {
    session: Session,
    /// The cookie of a renewed session id.
    renewed_cookie: Option<String>,
    /// The CSRF token replaced by this very request's renewal: accepted for
    /// this request only (its form was rendered before the renewal).
    replaced_csrf: Option<String>,
}

/// Looks the session up and applies the timeouts; renews the id when the
/// user's role changed since it was issued. Returns the new cookie if so.
async fn load_session(
    ctx: &Ctx,
    sid: &str,
    source: String,
    user_agent: String,
    live: bool,
) -> Result<Option<Loaded>, store::StoreError> {
    let mut id_hash = hash_secret(sid);
    let h = id_hash.clone();
    let Some(row) = ctx
        .store
        .read(move |c| store::sessions::lookup(c, &h))
        .await?
    else {
        return Ok(None);
    };
    let now = common::time::now_ms();
    let st = &ctx.console;
    if now - row.last_seen_ms > st.idle_timeout_ms || now - row.created_ms > st.absolute_timeout_ms
    {
        let h = id_hash.clone();
        ctx.store
            .write(move |tx| store::sessions::expire(tx, &h))
            .await?;
        return Ok(None);
    }
    let mut cookie = None;
    let mut csrf = row.csrf.clone();
    let mut replaced_csrf = None;
    if row.role != row.issued_role {
        // a new id and a new CSRF token: forms of the old session stop working
        let (_, new_id) = new_secret(SecretKind::Session);
        let (_, new_csrf) = new_secret(SecretKind::Session);
        let new_hash = hash_secret(&new_id);
        let (old, nh, nc, role) = (
            id_hash.clone(),
            new_hash.clone(),
            new_csrf.clone(),
            row.role,
        );
        if ctx
            .store
            .write(move |tx| store::sessions::rotate(tx, &old, &nh, &nc, role, now))
            .await?
        {
            tracing::info!(user = %row.user, role = role.as_str(), "role changed; session id and csrf token renewed");
            cookie = Some(session_cookie(st, &new_id));
            id_hash = new_hash;
            replaced_csrf = Some(std::mem::replace(&mut csrf, new_csrf));
        }
    } else if !live && now - row.last_seen_ms > TOUCH_EVERY_MS {
        let h = id_hash.clone();
        ctx.store
            .write(move |tx| store::sessions::touch(tx, &h, now))
            .await?;
    }
    Ok(Some(Loaded {
        session: Session {
            actor: Actor::user(&row.user, row.role, source, user_agent),
            csrf,
            id_hash,
        },
        renewed_cookie: cookie,
        replaced_csrf,
    }))
}

/// Authentication, CSRF and security headers for every console route.
async fn guard(State(ctx): State<Ctx>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let post = req.method() == Method::POST;
    let mut set_cookie = None;

    if post {
        // Fetch metadata: browsers say where a request comes from; anything
        // but the console's own origin (or a non-browser client) is refused.
        let site = req
            .headers()
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok());
        if matches!(site, Some("cross-site") | Some("same-site")) {
            return secure(
                forbidden_csrf("cross-site form submissions are refused"),
                None,
            );
        }
    }

    if !is_public(&path) {
        let live = req.headers().contains_key(LIVE_HEADER);
        let source = source_of(&req);
        let ua = user_agent_of(req.headers());
        let loaded = match cookie_value(req.headers(), COOKIE) {
            Some(sid) => match load_session(&ctx, &sid, source, ua, live).await {
                Ok(s) => s,
                Err(e) => return secure(PageError::from(e).into_response(), None),
            },
            None => None,
        };
        let Some(Loaded {
            session,
            renewed_cookie: renewed,
            replaced_csrf,
        }) = loaded
        else {
            if live {
                return secure(StatusCode::UNAUTHORIZED.into_response(), None);
            }
            let next_path = if post {
                "/console/".to_string()
            } else {
                path.clone()
            };
            let to = format!("/console/login?next={}", render::url_encode(&next_path));
            return secure(
                Redirect::to(&to).into_response(),
                Some(clear_cookie(&ctx.console)),
            );
        };
        set_cookie = renewed;
        if post {
            let limit = if path.starts_with("/console/flags/") {
                crate::api::MAX_DEFINITION_BYTES
            } else {
                MAX_FORM_BYTES
            };
            let (parts, body) = req.into_parts();
            let bytes = match axum::body::to_bytes(body, limit).await {
                Ok(b) => b,
                Err(_) => {
                    return secure(
                        PageError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!("form larger than {limit} bytes"),
                        )
                        .into_response(),
                        set_cookie,
                    )
                }
            };
            let fields: Vec<(String, String)> =
                serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
            let given = fields
                .iter()
                .find(|(k, _)| k == "csrf")
                .map(|(_, v)| v.as_str())
                .unwrap_or("");
            let matches = constant_time_eq(given.as_bytes(), session.csrf.as_bytes())
                || replaced_csrf
                    .as_ref()
                    .is_some_and(|old| constant_time_eq(given.as_bytes(), old.as_bytes()));
            if !matches {
                tracing::warn!(user = %session.actor.name, path = %path, "console post without a valid csrf token refused");
                return secure(forbidden_csrf("the form's security token is missing or wrong; reload the page and try again"), set_cookie);
            }
            req = Request::from_parts(parts, Body::from(bytes));
        }
        req.extensions_mut().insert(session);
    }
    let resp = next.run(req).await;
    secure(resp, set_cookie)
}

fn forbidden_csrf(msg: &str) -> Response {
    PageError::new(StatusCode::FORBIDDEN, msg).into_response()
}

/// Adds the console's security headers (and a renewed session cookie).
fn secure(mut resp: Response, cookie: Option<String>) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.append(header::SET_COOKIE, c);
    }
    resp
}

/// Deletes sessions past their idle or absolute timeout.
pub async fn purge_sessions(ctx: &Ctx) -> store::Result<usize> {
    let now = common::time::now_ms();
    let (idle, abs) = (
        now - ctx.console.idle_timeout_ms,
        now - ctx.console.absolute_timeout_ms,
    );
    ctx.store
        .write(move |tx| store::sessions::purge(tx, idle, abs))
        .await
}
