//! The agent's own metrics (`/metrics`, OpenMetrics text). Hot-path counters
//! are plain atomics; the exposition is built at scrape time.

use crate::state::Shared;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::serve::ListenerStats;

#[derive(Default)]
pub struct Metrics {
    pub eval_ofrep_single: AtomicU64,
    pub eval_ofrep_bulk: AtomicU64,
    pub eval_local: AtomicU64,
    pub revisions_applied: AtomicU64,
    pub revisions_rejected: AtomicU64,
    pub stream_connects: AtomicU64,
    /// Connection counters of the local API listener.
    pub api_listener: Arc<ListenerStats>,
    hook_runs: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Metrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn hook_run(&self, hook: &'static str, result: &'static str) {
        *self
            .hook_runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((hook, result))
            .or_default() += 1;
    }
}

type Labels = Vec<(String, String)>;

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g = Gauge::<i64>::default();
    g.set(v);
    reg.register(name, help, g);
}

pub fn render(shared: &Shared) -> String {
    let m = &shared.metrics;
    let mut reg = Registry::with_prefix("opsplane_agent");
    let build = Family::<Labels, Gauge>::default();
    build
        .get_or_create(&vec![
            ("version".into(), common::VERSION.into()),
            ("service".into(), shared.config.service.clone()),
            ("environment".into(), shared.config.environment.clone()),
        ])
        .set(1);
    reg.register("build_info", "Build and identity information", build);

    let evals = Family::<Labels, Counter>::default();
    for (api, c) in [
        ("ofrep_single", &m.eval_ofrep_single),
        ("ofrep_bulk", &m.eval_ofrep_bulk),
        ("local", &m.eval_local),
    ] {
        evals
            .get_or_create(&vec![("api".into(), api.into())])
            .inc_by(c.load(Ordering::Relaxed));
    }
    reg.register(
        "flag_evaluation_requests",
        "Flag evaluation requests served",
        evals,
    );

    let snap = shared.snapshot.load();
    gauge(
        &mut reg,
        "flag_revision",
        "Revision of the flag snapshot in force (-1: none)",
        snap.as_ref().map(|s| s.revision as i64).unwrap_or(-1),
    );
    gauge(
        &mut reg,
        "flag_snapshot_age_seconds",
        "Seconds since the snapshot in force was last confirmed by its source",
        snap.as_ref()
            .map(|s| shared.snapshot_age_s(s) as i64)
            .unwrap_or(-1),
    );
    gauge(
        &mut reg,
        "flags",
        "Flags in the snapshot in force",
        snap.as_ref().map(|s| s.flags.len() as i64).unwrap_or(0),
    );
    let cs = shared.collector_status();
    gauge(
        &mut reg,
        "collector_connected",
        "1 while the revision stream to the collector is open",
        cs.connected as i64,
    );
    counter(
        &mut reg,
        "revisions_applied",
        "Revisions applied",
        m.revisions_applied.load(Ordering::Relaxed),
    );
    counter(
        &mut reg,
        "revisions_rejected",
        "Revisions rejected as invalid",
        m.revisions_rejected.load(Ordering::Relaxed),
    );
    counter(
        &mut reg,
        "stream_connects",
        "Revision stream connections opened",
        m.stream_connects.load(Ordering::Relaxed),
    );

    let hooks = Family::<Labels, Counter>::default();
    for ((hook, result), n) in m.hook_runs.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        hooks
            .get_or_create(&vec![
                ("hook".into(), (*hook).into()),
                ("result".into(), (*result).into()),
            ])
            .inc_by(*n);
    }
    reg.register("hook_runs", "Kill-switch hook runs by result", hooks);

    let mut listeners: Vec<(&str, ListenerCounts)> =
        vec![("api", ListenerCounts::from(&*m.api_listener))];
    if let Some(p) = &shared.proxy_metrics {
        listeners.push((
            "proxy",
            ListenerCounts {
                open: p.connections_open.load(Ordering::Relaxed),
                refused: p.connections_refused_total.load(Ordering::Relaxed),
                header_timeouts: 0,
                body_timeouts: p.body_timeouts_total.load(Ordering::Relaxed),
            },
        ));
    }
    register_listeners(&mut reg, &listeners);

    if let Some(p) = &shared.proxy_metrics {
        counter(
            &mut reg,
            "proxy_tunnels_closed_by_kill",
            "Upgraded tunnels (WebSockets) closed because a kill now blocks their route",
            p.tunnels_closed_by_kill_total.load(Ordering::Relaxed),
        );
        counter(
            &mut reg,
            "proxy_requests",
            "Requests received by the proxy",
            p.requests_total.load(Ordering::Relaxed),
        );
        counter(
            &mut reg,
            "proxy_upstream_errors",
            "Proxy requests that failed upstream",
            p.upstream_errors_total.load(Ordering::Relaxed),
        );
        let blocked = Family::<Labels, Counter>::default();
        for k in &shared.config.killswitches {
            blocked
                .get_or_create(&vec![("killswitch".into(), k.name.clone())])
                .inc_by(p.blocked_for(&k.name));
        }
        reg.register(
            "proxy_blocked",
            "Proxy requests answered by a kill switch",
            blocked,
        );
    }
    let mut out = String::new();
    let _ = encode(&mut out, &reg);
    out
}

/// The connection counters of one listener, as exported.
pub struct ListenerCounts {
    pub open: u64,
    pub refused: u64,
    pub header_timeouts: u64,
    pub body_timeouts: u64,
}

impl From<&ListenerStats> for ListenerCounts {
    fn from(s: &ListenerStats) -> Self {
        ListenerCounts {
            open: s.connections_open.load(Ordering::Relaxed),
            refused: s.connections_refused_total.load(Ordering::Relaxed),
            header_timeouts: s.header_timeouts_total.load(Ordering::Relaxed),
            body_timeouts: s.body_timeouts_total.load(Ordering::Relaxed),
        }
    }
}

/// Registers the per-listener connection metrics, labelled `listener`.
fn register_listeners(reg: &mut Registry, listeners: &[(&str, ListenerCounts)]) {
    let open = Family::<Labels, Gauge>::default();
    let refused = Family::<Labels, Counter>::default();
    let header = Family::<Labels, Counter>::default();
    let body = Family::<Labels, Counter>::default();
    for (name, c) in listeners {
        let l = vec![("listener".to_string(), (*name).to_string())];
        open.get_or_create(&l).set(c.open as i64);
        refused.get_or_create(&l).inc_by(c.refused);
        header.get_or_create(&l).inc_by(c.header_timeouts);
        body.get_or_create(&l).inc_by(c.body_timeouts);
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
        header,
    );
    reg.register(
        "body_timeouts",
        "Requests cut because their body did not arrive in time",
        body,
    );
}
