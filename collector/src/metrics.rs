//! `/metrics` of the admin listener, in OpenMetrics text. Values are read at
//! scrape time from the hub and the store, so there is no state to keep in sync.

use crate::api::ApiResult;
use crate::store;
use crate::Ctx;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
    let now = common::time::now_ms();
    for s in ["connected", "stale", "gone", "revoked"] {
        by_state
            .get_or_create(&vec![("state".into(), s.into())])
            .set(0);
    }
    for a in &agents {
        let s = crate::admin::agent_state(ctx, a, now);
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

    let mut out = String::new();
    encode(&mut out, &reg).map_err(|_| crate::api::ApiError::internal())?;
    Ok(out)
}
