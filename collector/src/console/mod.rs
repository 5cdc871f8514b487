//! The web ops console, served on the admin listener under `/console/` (and
//! `/`, which leads to it). Server-rendered HTML (maud) with one small
//! embedded script for live updates; no inline script or style, so the
//! Content-Security-Policy can forbid both.
//!
//! This module is the console's frame only; each capability's pages live in
//! its own folder (`flags/console.rs`, ...). Every console request passes
//! [`guard`]: it authenticates the session cookie (idle and absolute
//! timeouts, id renewed when the user's role changed), refuses cross-site
//! POSTs, and adds the security headers. Then [`route_guard`], built from
//! the route's declaration (`kernel::route`), reads a POST's form within the
//! route's body limit, refuses it without the session's CSRF token, and
//! checks the route's role; the pages only hide what a role cannot do.

mod login;
pub mod page;
pub mod render;

pub use page::*;

use crate::access::auth::{hash_secret, new_secret, SecretKind};
use crate::kernel::route::Declared;
use crate::kernel::{constant_time_eq, Access, Actor, ApiError, ErrorCode, Role, Route};
use crate::store;
use crate::Ctx;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

pub use crate::kernel::caller::user_agent_of;
pub use crate::kernel::route::MAX_FORM_BYTES;
pub use crate::kernel::{Clock, SystemClock};
pub use login::{Limiter, Throttled};

/// The login throttle's limits (tests and docs refer to them).
pub mod login_limits {
    pub use super::login::{
        BASE_LOCK_MS, MAX_CONCURRENT_HASHES, MAX_LOCK_MS, MAX_PER_ACCOUNT, MAX_PER_ADDRESS,
        WINDOW_MS,
    };
}

pub const COOKIE: &str = "opsplane_session";
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
    pub fn new(
        s: &crate::config::AdminSettings,
        clock: std::sync::Arc<crate::kernel::ClockHandle>,
    ) -> Self {
        ConsoleState {
            idle_timeout_ms: s.session_idle_timeout_ms,
            absolute_timeout_ms: s.session_absolute_timeout_ms,
            secure_cookie: s.secure_cookie,
            limiter: Limiter::new(clock),
        }
    }
}

/// The signed-in user of a console request.
#[derive(Clone, Debug)]
pub struct Session {
    /// The signed-in user: the same caller type as an API token's.
    pub actor: Actor,
    pub csrf: String,
    pub id_hash: String,
    /// The CSRF token replaced by this very request's renewal: accepted for
    /// this request only (its form was rendered before the renewal).
    pub replaced_csrf: Option<String>,
}

impl Session {
    pub fn can(&self, role: Role) -> bool {
        self.actor.role.allows(role)
    }
}

/// The API's error ([`ApiError`], same codes) rendered as an HTML page.
#[derive(Debug)]
pub struct PageError(pub ApiError);

impl PageError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        PageError(ApiError::new(code, message))
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
}

impl From<store::StoreError> for PageError {
    fn from(e: store::StoreError) -> Self {
        PageError(e.into())
    }
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError(e)
    }
}

impl From<crate::approvals::ApprovalError> for PageError {
    fn from(e: crate::approvals::ApprovalError) -> Self {
        PageError(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let title = match status {
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::CONFLICT => "Conflict",
            StatusCode::TOO_MANY_REQUESTS => "Too many attempts",
            s if s.is_server_error() => "Something went wrong",
            _ => "Cannot do that",
        };
        let body = render::error_page(title, &self.0.message);
        let mut r = html_response(body);
        *r.status_mut() = status;
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

/// The frame's own routes: the way in, sign-in and sign-out, static files.
pub fn routes() -> Vec<Route> {
    vec![
        Route::get("/", Access::Public, to_console),
        Route::get("/console", Access::Public, to_console),
        Route::get("/console/login", Access::Public, login::login_page),
        // reads its own form (no session yet, so no CSRF token)
        Route::post("/console/login", Access::Public, login::login),
        // any signed-in user, with the session's CSRF token
        Route::post("/console/logout", Role::Viewer, login::logout),
        Route::get("/console/static/console.css", Access::Public, css),
        Route::get("/console/static/console.js", Access::Public, js),
    ]
}

async fn to_console() -> Redirect {
    Redirect::to("/console/")
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
    crate::kernel::caller::source_of(req.extensions())
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

/// Whether `path` is reachable without a session: the console paths whose
/// routes are declared [`Access::Public`] (read once from the tables).
fn is_public(path: &str) -> bool {
    static PUBLIC: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    PUBLIC
        .get_or_init(|| {
            crate::routes::all()
                .into_iter()
                .filter(|r| r.access == Access::Public)
                .map(|r| r.path)
                .collect()
        })
        .contains(&path)
}

/// A session as loaded for one request.
struct Loaded {
    session: Session,
    /// The cookie of a renewed session id.
    renewed_cookie: Option<String>,
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
    let now = ctx.clock.now_ms();
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
            replaced_csrf,
        },
        renewed_cookie: cookie,
    }))
}

/// Authentication, CSRF and security headers for every console route.
pub async fn guard(State(ctx): State<Ctx>, mut req: Request, next: Next) -> Response {
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
        req.extensions_mut().insert(session);
    }
    let resp = next.run(req).await;
    secure(resp, set_cookie)
}

/// The layer of every console route, made from its declaration: for a
/// POST, reads the form within the route's body limit (413) and refuses it
/// without the session's CSRF token (403); then checks the route's role
/// (403). Public routes pass untouched.
pub async fn route_guard(State(d): State<Declared>, req: Request, next: Next) -> Response {
    let Access::Role(needed) = d.access else {
        return next.run(req).await;
    };
    let Some(session) = req.extensions().get::<Session>().cloned() else {
        // [`guard`] lets no request without a session this far
        return PageError(ApiError::internal()).into_response();
    };
    let mut req = req;
    if req.method() == Method::POST {
        let limit = d.body_limit;
        let (parts, body) = req.into_parts();
        let bytes = match axum::body::to_bytes(body, limit).await {
            Ok(b) => b,
            Err(_) => {
                return PageError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("form larger than {limit} bytes"),
                )
                .into_response()
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
            || session
                .replaced_csrf
                .as_ref()
                .is_some_and(|old| constant_time_eq(given.as_bytes(), old.as_bytes()));
        if !matches {
            tracing::warn!(user = %session.actor.name, path = %parts.uri.path(), "console post without a valid csrf token refused");
            return forbidden_csrf(
                "the form's security token is missing or wrong; reload the page and try again",
            );
        }
        req = Request::from_parts(parts, Body::from(bytes));
    }
    if !session.can(needed) {
        return PageError::new(
            ErrorCode::Forbidden,
            format!(
                "This needs the {} role; you ({}) have the {} role.",
                needed.as_str(),
                session.actor.name,
                session.actor.role.as_str()
            ),
        )
        .into_response();
    }
    next.run(req).await
}

fn forbidden_csrf(msg: &str) -> Response {
    PageError::new(ErrorCode::Forbidden, msg).into_response()
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
    let now = ctx.clock.now_ms();
    let (idle, abs) = (
        now - ctx.console.idle_timeout_ms,
        now - ctx.console.absolute_timeout_ms,
    );
    ctx.store
        .write(move |tx| store::sessions::purge(tx, idle, abs))
        .await
}
