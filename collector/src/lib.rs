//! The Opsplane collector as a library: the binaries (`opsplane-collector`,
//! `opsctl`) are thin, and tests start a collector in-process with [`start`].
#![forbid(unsafe_code)]

pub mod actions;
pub mod admin;
pub mod api;
pub mod approvals;
pub mod auth;
pub mod config;
pub mod console;
pub mod hub;
pub mod ingest;
pub mod init;
pub mod metrics;
pub mod status;
pub mod store;
pub mod tls;

use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared state of the listeners.
pub struct CtxInner {
    pub store: store::Store,
    pub hub: Arc<hub::Hub>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// The four-eyes policy from the config (a policy saved in the console wins).
    pub approval_defaults: approvals::Policy,
    pub console: console::ConsoleState,
}

pub type Ctx = Arc<CtxInner>;

/// A running collector.
pub struct Running {
    pub ingest_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub status_addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub ctx: Ctx,
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
    let ctx: Ctx = Arc::new(CtxInner {
        store,
        hub: Arc::new(hub::Hub::default()),
        shutdown: shutdown.clone(),
        tracker: TaskTracker::new(),
        approval_defaults: settings.approvals.clone(),
        console: console::ConsoleState::new(&settings.admin),
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
    let mut plain = vec![
        (admin, admin::router(ctx.clone())),
        (status, status::router()),
    ];
    match tls {
        Some(acceptor) => {
            servers.spawn(tls::serve(
                ingest,
                acceptor,
                ingest::router(ctx.clone()),
                shutdown.clone(),
            ));
        }
        None => plain.push((ingest, ingest::router(ctx.clone()))),
    }
    for (listener, app) in plain {
        let token = shutdown.clone();
        servers.spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
        });
    }
    ctx.tracker.spawn(housekeeping(ctx.clone()));
    tracing::info!(ingest = %ingest_addr, ingest_tls = settings.ingest_tls.is_some(), admin = %admin_addr, status = %status_addr, version = common::VERSION, "collector listening");
    Ok(Running {
        ingest_addr,
        admin_addr,
        status_addr,
        shutdown,
        ctx,
        servers,
    })
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
