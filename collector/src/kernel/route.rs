//! One declaration per route. Each capability lists every route it serves,
//! API and console, in one table of [`Route`]s: method, path, the minimum
//! role, whether it may wait for an approval, its body limit, and for a
//! console page its navigation entry. `crate::routes` builds the admin
//! router from these tables only, with the role check as a layer made from
//! the declaration ([`api_guard`] here, `console::route_guard` for pages), so
//! a handler cannot forget it; the console's navigation bar and the
//! role-matrix test (`collector/tests/console_security.rs`) read the same
//! tables.

use super::caller::{Caller, Role};
use super::error::ApiError;
use super::json::{BodyLimit, MAX_BODY_BYTES, MAX_DEFINITION_BYTES};
use crate::Ctx;
use axum::extract::{Request, State};
use axum::handler::Handler;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};

/// Body limit of console forms; flag definitions get [`MAX_DEFINITION_BYTES`].
pub const MAX_FORM_BYTES: usize = 64 * 1024;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: health, sign-in, static files (each documents why).
    Public,
    /// A caller with at least this role.
    Role(Role),
}

impl From<Role> for Access {
    fn from(r: Role) -> Self {
        Access::Role(r)
    }
}

/// Which part of the admin listener serves a route (from its path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// `/api/v1/...`: JSON, authenticated by API token.
    Api,
    /// `/console/...` (and `/`): HTML, authenticated by session.
    Console,
    /// `/healthz`, `/readyz`, `/metrics`.
    Listener,
}

/// A console page's entry in the navigation bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nav {
    /// The key pages pass to the layout to mark themselves active.
    pub key: &'static str,
    pub label: &'static str,
    /// Position in the bar, lowest first.
    pub order: u16,
}

/// One route as declared in a capability's table.
pub struct Route {
    pub method: Method,
    /// The full path as served, with `{param}` segments.
    pub path: &'static str,
    pub access: Access,
    /// Whether the change may wait for a second person (answers 202).
    pub approvable: bool,
    pub body_limit: usize,
    pub nav: Option<Nav>,
    pub handler: MethodRouter<Ctx>,
}

impl Route {
    fn new<H, T>(method: Method, path: &'static str, access: Access, h: H) -> Route
    where
        H: Handler<T, Ctx>,
        T: 'static,
    {
        let filter = if method == Method::POST {
            MethodFilter::POST
        } else {
            MethodFilter::GET
        };
        let mut r = Route {
            method,
            path,
            access,
            approvable: false,
            body_limit: MAX_BODY_BYTES,
            nav: None,
            handler: on(filter, h),
        };
        if r.surface() == Surface::Console {
            r.body_limit = MAX_FORM_BYTES;
        }
        r
    }

    pub fn get<H, T>(path: &'static str, access: impl Into<Access>, h: H) -> Route
    where
        H: Handler<T, Ctx>,
        T: 'static,
    {
        Route::new(Method::GET, path, access.into(), h)
    }

    pub fn post<H, T>(path: &'static str, access: impl Into<Access>, h: H) -> Route
    where
        H: Handler<T, Ctx>,
        T: 'static,
    {
        Route::new(Method::POST, path, access.into(), h)
    }

    /// The change may wait for an approval (answers 202 then).
    pub fn approvable(mut self) -> Route {
        self.approvable = true;
        self
    }

    /// The route takes a flag definition: [`MAX_DEFINITION_BYTES`].
    pub fn definition_body(mut self) -> Route {
        self.body_limit = MAX_DEFINITION_BYTES;
        self
    }

    /// A console page listed in the navigation bar.
    pub fn nav(mut self, key: &'static str, label: &'static str, order: u16) -> Route {
        self.nav = Some(Nav { key, label, order });
        self
    }

    /// The minimum role, `None` for a public route.
    pub fn role(&self) -> Option<Role> {
        match self.access {
            Access::Public => None,
            Access::Role(r) => Some(r),
        }
    }

    pub fn surface(&self) -> Surface {
        if self.path.starts_with("/api/") {
            Surface::Api
        } else if self.path == "/" || self.path.starts_with("/console") {
            Surface::Console
        } else {
            Surface::Listener
        }
    }

    /// `"POST /api/v1/flags/apply"`.
    pub fn name(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// What a route's layer knows of its declaration.
#[derive(Clone)]
pub struct Declared {
    pub ctx: Ctx,
    pub access: Access,
    pub body_limit: usize,
}

/// The layer of every API route: sets the declared body limit, and for a
/// route with a role authenticates the API token (401) and checks the role
/// (403) before the handler runs; the handler takes the [`Caller`].
pub async fn api_guard(State(d): State<Declared>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(BodyLimit(d.body_limit));
    if let Access::Role(needed) = d.access {
        let caller = match Caller::authenticate(&d.ctx, &parts).await {
            Ok(c) => c,
            Err(e) => return e.into_response(),
        };
        if !caller.0.role.allows(needed) {
            return ApiError::role_needed(needed, &caller.0).into_response();
        }
        parts.extensions.insert(caller);
    }
    next.run(Request::from_parts(parts, body)).await
}
