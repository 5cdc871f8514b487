//! The admin listener's routes, composed from every capability's table
//! (`kernel::route`): the listener's own (`/healthz`, `/readyz`, `/metrics`),
//! the console frame's, and each capability's. [`admin_router`] builds the
//! router from [`all`] only, so every route the listener answers is declared
//! with its role: that holds by construction (see the test below).

use crate::kernel::json::{healthz, json_response, not_found};
use crate::kernel::route::{api_guard, Declared, Surface};
use crate::kernel::{ok, Access, ApiResult, Route};
use crate::Ctx;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::json;

/// Every route of the admin listener, in one list.
pub fn all() -> Vec<Route> {
    let mut routes = vec![
        Route::get("/healthz", Access::Public, healthz),
        Route::get("/readyz", Access::Public, readyz),
        // with `[admin] metrics_token_file`, guarded by its bearer token
        // (`metrics::metrics_guard`)
        Route::get("/metrics", Access::Public, metrics),
    ];
    routes.extend(crate::console::routes());
    routes.extend(crate::access::routes());
    routes.extend(crate::fleet::routes());
    routes.extend(crate::flags::routes());
    routes.extend(crate::killswitches::routes());
    routes.extend(crate::approvals::routes());
    routes.extend(crate::audit::routes());
    routes
}

/// The admin listener's router, built from [`all`] and nothing else: each
/// route gets the layer its declaration asks for (role, body limit, CSRF).
pub fn admin_router(ctx: Ctx) -> Router {
    let mut api = Router::new();
    let mut console = Router::new();
    let mut listener = Router::new();
    for r in all() {
        let declared = Declared {
            ctx: ctx.clone(),
            access: r.access,
            body_limit: r.body_limit,
        };
        match r.surface() {
            Surface::Api => {
                let h = r
                    .handler
                    .route_layer(middleware::from_fn_with_state(declared, api_guard));
                api = api.route(r.path, h);
            }
            Surface::Console => {
                let h = r.handler.route_layer(middleware::from_fn_with_state(
                    declared,
                    crate::console::route_guard,
                ));
                console = console.route(r.path, h);
            }
            Surface::Listener => listener = listener.route(r.path, r.handler),
        }
    }
    let console = console.layer(middleware::from_fn_with_state(
        ctx.clone(),
        crate::console::guard,
    ));
    listener
        .merge(api)
        .merge(console)
        .fallback(not_found)
        .layer(middleware::from_fn(no_store))
        .with_state(ctx)
}

async fn no_store(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// How long `/readyz` waits for the store's writer to take a no-op job.
const READY_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// 200 while the store can write; 503 with the reason when its writer is
/// gone, stuck, or the last write failed for a storage reason (disk full,
/// read-only file). Served on the admin and ingest listeners.
pub async fn readyz(State(ctx): State<Ctx>) -> Response {
    match ctx.store.health(READY_PROBE_TIMEOUT).await {
        Ok(()) => ok(&json!({"status": "ready"})),
        Err(reason) => {
            tracing::warn!(reason = %reason, "not ready: the store cannot write");
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "not ready", "reason": reason}),
            )
        }
    }
}

async fn metrics(State(ctx): State<Ctx>) -> ApiResult<Response> {
    let body = crate::metrics::render(&ctx).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The router is built from [`all`] only, so every route it answers is
    /// declared; this checks the declarations themselves: no route twice,
    /// every page in the navigation is a GET console page with a role.
    #[test]
    fn every_route_is_declared_once() {
        let routes = all();
        let mut seen = std::collections::HashSet::new();
        for r in &routes {
            assert!(seen.insert(r.name()), "{} declared twice", r.name());
            if r.nav.is_some() {
                assert_eq!(r.method, axum::http::Method::GET, "{}", r.name());
                assert_eq!(r.surface(), Surface::Console, "{}", r.name());
                assert!(r.role().is_some(), "{}", r.name());
            }
            if r.approvable {
                assert_eq!(r.method, axum::http::Method::POST, "{}", r.name());
            }
        }
        let public: Vec<String> = routes
            .iter()
            .filter(|r| r.role().is_none())
            .map(Route::name)
            .collect();
        assert_eq!(
            public,
            [
                "GET /healthz",
                "GET /readyz",
                "GET /metrics",
                "GET /",
                "GET /console",
                "GET /console/login",
                "POST /console/login",
                "GET /console/static/console.css",
                "GET /console/static/console.js"
            ],
            "public routes"
        );
    }
}
