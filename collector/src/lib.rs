//! The Opsplane collector as a library: the binaries (`opsplane-collector`,
//! `opsctl`) are thin, and tests start a collector in-process with [`start`].
#![forbid(unsafe_code)]

//!
//! The collector is cut by capability over a small kernel (see
//! ARCHITECTURE.md, "Code map"): [`kernel`] holds what every capability
//! uses; [`access`], [`fleet`], [`flags`], [`killswitches`], [`approvals`]
//! and [`audit`] each hold their JSON API, console pages, routes and audit
//! actions; [`routes`] composes the admin listener from their tables.

pub mod access;
pub mod approvals;
pub mod audit;
pub mod config;
pub mod console;
pub mod flags;
pub mod fleet;
pub mod init;
pub mod kernel;
pub mod killswitches;
pub mod metrics;
pub mod routes;
pub mod status;
pub mod store;
pub mod tls;

/// Roles, actors and secrets under their former path, which the store and
/// `opsctl` still use.
pub use access::auth;

use anyhow::Context;
use axum::extract::ConnectInfo;
use axum::Router;
use common::serve::{ListenerStats, RequestBody};
use futures_util::future::BoxFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared state of the listeners.
pub struct CtxInner {
    pub store: store::Store,
    pub hub: Arc<fleet::hub::Hub>,
    /// Where every capability gets the time (tests swap it).
    pub clock: Arc<kernel::ClockHandle>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// The four-eyes policy from the config (a policy saved in the console wins).
    pub approval_defaults: approvals::Policy,
    pub console: console::ConsoleState,
    /// Connection counters of the three listeners (exported on `/metrics`).
    pub listeners: ListenerStatsSet,
    /// Bearer token required on the admin listener's `/metrics` when set.
    pub metrics_token: Option<String>,
}

/// Connection counters of the ingest, admin and status listeners.
#[derive(Debug, Default)]
pub struct ListenerStatsSet {
    pub ingest: Arc<ListenerStats>,
    pub admin: Arc<ListenerStats>,
    pub status: Arc<ListenerStats>,
}

pub type Ctx = Arc<CtxInner>;

/// A running collector.
pub struct Running {
    pub ingest_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub status_addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub ctx: Ctx,
    /// Readiness and in-flight requests of the three listeners (docs/lifecycle.md).
    pub gate: common::lifecycle::Gate,
    servers: tokio::task::JoinSet<std::io::Result<()>>,
}

/// How long shutdown waits for open connections before giving up on them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Opens the store and binds the three listeners; serving starts at once.
pub async fn start(settings: config::Settings) -> anyhow::Result<Running> {
    if !store::Store::exists(&settings.data_dir) {
        anyhow::bail!(
            "no database in {}: run `opsplane-collector init --data-dir {}` first",
            settings.data_dir.display(),
            settings.data_dir.display()
        );
    }
    let store = store::Store::open(&settings.data_dir).context("opening the database")?;
    let shutdown = CancellationToken::new();
    let clock = Arc::new(kernel::ClockHandle::default());
    let ctx: Ctx = Arc::new(CtxInner {
        store,
        hub: Arc::new(fleet::hub::Hub::default()),
        clock: clock.clone(),
        shutdown: shutdown.clone(),
        tracker: TaskTracker::new(),
        approval_defaults: settings.approvals.clone(),
        console: console::ConsoleState::new(&settings.admin, clock),
        listeners: ListenerStatsSet::default(),
        metrics_token: settings.listeners.metrics_token.clone(),
    });
    let bind = |addr: SocketAddr, what: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} ({what})"))
    };
    let ingest = bind(settings.ingest_listen, "ingest.listen").await?;
    let admin = bind(settings.admin_listen, "admin.listen").await?;
    let status = bind(settings.status_listen, "status_page.listen").await?;
    let (ingest_addr, admin_addr, status_addr) = (
        ingest.local_addr()?,
        admin.local_addr()?,
        status.local_addr()?,
    );

    let tls = match &settings.ingest_tls {
        Some((cert, key)) => {
            Some(tls::acceptor(cert, key).context("loading the ingest TLS certificate")?)
        }
        None => None,
    };
    let mut servers = tokio::task::JoinSet::new();
    let gate = common::lifecycle::Gate::new();
    let limits = &settings.listeners;
    let grace = SHUTDOWN_GRACE.saturating_sub(Duration::from_secs(1));
    let admin_app = routes::admin_router(ctx.clone()).layer(axum::middleware::from_fn_with_state(
        ctx.clone(),
        metrics::metrics_guard,
    ));
    let plain = [
        (admin, admin_app, limits.admin, ctx.listeners.admin.clone()),
        (
            status,
            status::router(),
            limits.status,
            ctx.listeners.status.clone(),
        ),
    ];
    for (listener, app, limits, stats) in plain {
        servers.spawn(common::serve::serve_plain(
            listener,
            gate.wrap(serve_router(app)),
            limits,
            stats,
            shutdown.clone(),
            grace,
        ));
    }
    let ingest_app = gate.wrap(serve_router(fleet::ingest::router(ctx.clone())));
    let ingest_stats = ctx.listeners.ingest.clone();
    match tls {
        Some(acceptor) => {
            servers.spawn(tls::serve(
                ingest,
                acceptor,
                ingest_app,
                limits.ingest,
                ingest_stats,
                shutdown.clone(),
                grace,
            ));
        }
        None => {
            servers.spawn(common::serve::serve_plain(
                ingest,
                ingest_app,
                limits.ingest,
                ingest_stats,
                shutdown.clone(),
                grace,
            ));
        }
    }
    ctx.tracker.spawn(housekeeping(ctx.clone()));
    tracing::info!(ingest = %ingest_addr, ingest_tls = settings.ingest_tls.is_some(), admin = %admin_addr, status = %status_addr, version = common::VERSION, "collector listening");
    Ok(Running {
        ingest_addr,
        admin_addr,
        status_addr,
        shutdown,
        ctx,
        gate,
        servers,
    })
}

/// The function that serves one request with `router`, the peer address
/// given to handlers as `ConnectInfo`.
pub fn serve_router(
    router: Router,
) -> impl Fn(http::Request<RequestBody>, SocketAddr) -> BoxFuture<'static, axum::response::Response>
       + Clone
       + Send
       + Sync
       + Unpin
       + 'static {
    move |req, peer| {
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        Box::pin(async move {
            use tower::ServiceExt;
            match router.oneshot(req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            }
        })
    }
}

/// How often expired approval requests and console sessions are cleared.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(30);

/// Expires overdue four-eyes requests (audited) and deletes timed-out sessions.
async fn housekeeping(ctx: Ctx) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match approvals::expire_due(&ctx).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(requests = n, "approval requests expired"),
            Err(e) => tracing::warn!(error = %e, "cannot expire approval requests"),
        }
        if let Err(e) = console::purge_sessions(&ctx).await {
            tracing::warn!(error = %e, "cannot purge console sessions");
        }
    }
}

impl Running {
    /// Serves until the shutdown token is cancelled, then drains with a deadline.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        self.shutdown.cancelled().await;
        self.ctx.tracker.close();
        let drain = async {
            while let Some(r) = self.servers.join_next().await {
                if let Ok(Err(e)) = r {
                    tracing::warn!(error = %e, "listener ended with an error");
                }
            }
            self.ctx.tracker.wait().await;
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            tracing::warn!("connections still open after the grace period; closing them");
            self.servers.abort_all();
        }
        let store = self.ctx.store.clone();
        tokio::task::spawn_blocking(move || store.close())
            .await
            .ok();
        tracing::info!("collector stopped");
        Ok(())
    }
}
