//! `/metrics` of the admin listener, in OpenMetrics text. Values are read at
//! scrape time from the hub, the store and the listeners' counters, so there
//! is no state to keep in sync. With `[admin] metrics_token_file`, the
//! endpoint needs `Authorization: Bearer <token>` ([`metrics_guard`]).

use crate::kernel::{bearer, constant_time_eq, ApiError, ApiResult};
use crate::store;
use crate::Ctx;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;

pub async fn render(ctx: &Ctx) -> ApiResult<String> {
    let agents = ctx
        .store
        .read(|c| store::agents::list(c, None, None))
        .await?;
    let revisions = ctx.store.read(store::flags::latest_numbers).await?;
    let mut reg = Registry::with_prefix("opsplane_collector");

    let build = Family::<Vec<(String, String)>, Gauge>::default();
    build
        .get_or_create(&vec![("version".into(), common::VERSION.into())])
        .set(1);
    reg.register("build_info", "Build information", build);

    let by_state = Family::<Vec<(String, String)>, Gauge>::default();
    let now = ctx.clock.now_ms();
    for s in ["connected", "stale", "gone", "revoked"] {
        by_state
            .get_or_create(&vec![("state".into(), s.into())])
            .set(0);
    }
    for a in &agents {
        let s = crate::fleet::agent_state(ctx, a, now);
        by_state
            .get_or_create(&vec![("state".into(), s.into())])
            .inc();
    }
    reg.register("agents", "Enrolled agents by connection state", by_state);

    let latest = Family::<Vec<(String, String)>, Gauge>::default();
    for (env, rev) in revisions {
        latest
            .get_or_create(&vec![("environment".into(), env)])
            .set(rev as i64);
    }
    reg.register("revision_latest", "Newest revision per environment", latest);

    let streams = Gauge::<i64>::default();
    streams.set(ctx.hub.connected_count() as i64);
    reg.register(
        "streams_open",
        "Agents holding an open revision stream",
        streams,
    );

    let open = Family::<Vec<(String, String)>, Gauge>::default();
    let refused = Family::<Vec<(String, String)>, Counter>::default();
    let header_timeouts = Family::<Vec<(String, String)>, Counter>::default();
    let body_timeouts = Family::<Vec<(String, String)>, Counter>::default();
    for (name, st) in [
        ("ingest", &ctx.listeners.ingest),
        ("admin", &ctx.listeners.admin),
        ("status", &ctx.listeners.status),
    ] {
        let l = vec![("listener".to_string(), name.to_string())];
        open.get_or_create(&l)
            .set(st.connections_open.load(Ordering::Relaxed) as i64);
        refused
            .get_or_create(&l)
            .inc_by(st.connections_refused_total.load(Ordering::Relaxed));
        header_timeouts
            .get_or_create(&l)
            .inc_by(st.header_timeouts_total.load(Ordering::Relaxed));
        body_timeouts
            .get_or_create(&l)
            .inc_by(st.body_timeouts_total.load(Ordering::Relaxed));
    }
    reg.register("connections_open", "Connections open per listener", open);
    reg.register(
        "connections_refused",
        "Connections closed at once because the listener was at its cap",
        refused,
    );
    reg.register(
        "header_timeouts",
        "Connections closed because a request head did not arrive in time",
        header_timeouts,
    );
    reg.register(
        "body_timeouts",
        "Requests cut because their body did not arrive in time",
        body_timeouts,
    );

    let mut out = String::new();
    encode(&mut out, &reg).map_err(|_| ApiError::internal())?;
    Ok(out)
}

/// Middleware around the admin router: with a metrics token configured,
/// `GET /metrics` needs it as a bearer token (compared in constant time);
/// without one `/metrics` is open as before.
pub async fn metrics_guard(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    if let Some(want) = &ctx.metrics_token {
        if req.uri().path() == "/metrics" && req.method() == Method::GET {
            let given = bearer(req.headers());
            if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), want.as_bytes())) {
                let body =
                    common::wire::ErrorBody::new("UNAUTHORIZED", "missing or wrong metrics token");
                let mut r = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return r;
            }
        }
    }
    next.run(req).await
}
