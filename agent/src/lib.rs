//! The Opsplane agent as a library: `main.rs` is thin, and tests and
//! benchmarks start agents in-process with [`start`].
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod disk;
pub mod exec;
pub mod flagfile;
pub mod guard;
pub mod hooks;
pub mod metrics;
pub mod proxy;
pub mod spine;
pub mod state;

use anyhow::Context;
use common::lifecycle::{self, Gate};
use state::Shared;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub struct Running {
    pub api_addr: SocketAddr,
    pub proxy_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    /// Cancelling it stops everything: the listeners and the background work.
    pub shutdown: CancellationToken,
    /// Cancelling it stops only the background work (sync, hooks, the flag
    /// file watcher); a child of `shutdown`.
    pub work: CancellationToken,
    /// Readiness and in-flight requests of the local API.
    pub gate: Gate,
    /// The background work.
    tracker: TaskTracker,
    /// The listeners.
    servers: TaskTracker,
}

/// Binds the listeners, loads the last-known-good snapshot (or the local flag
/// file) and starts syncing. Serving starts at once.
pub async fn start(config: config::Config) -> anyhow::Result<Running> {
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let proxy_metrics = config
        .proxy
        .as_ref()
        .map(|_| Arc::new(proxy::ProxyMetrics::default()));
    let shared = Arc::new(Shared::new(config.clone(), proxy_metrics.clone()));
    let shutdown = CancellationToken::new();
    let work = shutdown.child_token();
    let tracker = TaskTracker::new();
    let servers = TaskTracker::new();
    let gate = Gate::new();

    // what to serve before anything else answers
    if config.collector.is_some() {
        if spine::load_cached(&shared).is_none() {
            if let Some(f) = &config.flags_file {
                // no snapshot yet: a local file bootstraps until the collector answers
                match flagfile::load(&shared, f, 0) {
                    Ok(_) => {
                        tracing::info!(path = %f.display(), "serving the local flag file until the collector answers")
                    }
                    Err(e) => tracing::warn!(error = %e, "flag file not loaded"),
                }
            }
        }
    } else if let Some(f) = &config.flags_file {
        if let Err(e) = flagfile::load(&shared, f, 1) {
            tracing::error!(error = %e, "flag file not loaded; /readyz stays 503 until it is valid");
        }
        tracker.spawn(flagfile::watch(shared.clone(), f.clone(), work.clone()));
    }

    let api_listener = TcpListener::bind(config.api_listen)
        .await
        .with_context(|| format!("cannot listen on {} (api.listen)", config.api_listen))?;
    let api_addr = api_listener.local_addr()?;
    let app = api::router(shared.clone()).layer(axum::middleware::from_fn_with_state(
        shared.clone(),
        guard::api_guard,
    ));
    let token = shutdown.clone();
    let limits = config.api_http.limits;
    let stats = shared.metrics.api_listener.clone();
    let api_gate = gate.clone();
    servers.spawn(async move {
        let serve_app = move |req: http::Request<common::serve::RequestBody>, _peer| {
            let app = app.clone();
            async move {
                use tower::ServiceExt;
                match app.oneshot(req.map(axum::body::Body::new)).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                }
            }
        };
        if let Err(e) = common::serve::serve_plain(
            api_listener,
            api_gate.wrap(serve_app),
            limits,
            stats,
            token,
            SHUTDOWN_GRACE,
        )
        .await
        {
            tracing::error!(error = %e, "local API stopped");
        }
    });

    let mut proxy_addr = None;
    if let (Some(p), Some(pm)) = (&config.proxy, proxy_metrics) {
        let listener = TcpListener::bind(p.listen)
            .await
            .with_context(|| format!("cannot listen on {} (proxy.listen)", p.listen))?;
        proxy_addr = Some(listener.local_addr()?);
        let mut settings = proxy::ProxySettings::new(p.upstream.clone());
        settings.upstream_header_timeout = p.upstream_timeout;
        settings.client_header_timeout = p.header_timeout;
        settings.body_timeout = p.body_timeout;
        settings.max_connections = p.max_connections;
        let rules: Vec<proxy::KillRule> = config
            .killswitches
            .iter()
            .filter(|k| !k.blocks.is_empty())
            .map(|k| proxy::KillRule {
                name: k.name.clone(),
                blocks: k
                    .blocks
                    .iter()
                    .map(|(m, p)| proxy::BlockMatch {
                        method: m.clone(),
                        path_prefix: p.clone(),
                    })
                    .collect(),
                status: k.status,
                retry_after_secs: k.retry_after.map(|d| d.as_secs().max(1)),
                body: k.body.clone(),
            })
            .collect();
        let killed_rx = shared.killed_tx.subscribe();
        let token = shutdown.clone();
        servers.spawn(async move {
            if let Err(e) =
                proxy::serve(listener, settings, Arc::new(rules), killed_rx, pm, token).await
            {
                tracing::error!(error = %e, "proxy stopped");
            }
        });
    }

    tracker.spawn(hooks::run(
        config.killswitches.clone(),
        config.data_dir.clone(),
        shared.killed_tx.subscribe(),
        shared.ready_tx.subscribe(),
        shared.metrics.clone(),
        work.clone(),
    ));
    if config.collector.is_some() {
        tracker.spawn(spine::run(shared.clone(), tracker.clone(), work.clone()));
    }
    tracing::info!(api = %api_addr, proxy = ?proxy_addr, service = %config.service, environment = %config.environment, version = common::VERSION, "agent started");
    Ok(Running {
        api_addr,
        proxy_addr,
        shared,
        shutdown,
        work,
        gate,
        tracker,
        servers,
    })
}

impl Running {
    /// Waits for shutdown, then drains every task with a deadline.
    pub async fn wait(self) {
        self.shutdown.cancelled().await;
        self.tracker.close();
        self.servers.close();
        let drain = async {
            tokio::join!(self.tracker.wait(), self.servers.wait());
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            tracing::warn!("tasks still running after the grace period; exiting anyway");
        }
        tracing::info!("agent stopped");
    }
}

/// The agent as the shared start/stop sequence drives it (`docs/lifecycle.md`):
/// the local API and the proxy keep answering while sync and hooks stop.
impl lifecycle::Service for Running {
    fn listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut l = vec![("api", self.api_addr)];
        if let Some(p) = self.proxy_addr {
            l.push(("proxy", p));
        }
        l
    }

    fn gate(&self) -> &Gate {
        &self.gate
    }

    fn stop_work(&self) {
        self.work.cancel();
    }

    fn work_done(&self) -> lifecycle::BoxFuture<()> {
        let tracker = self.tracker.clone();
        Box::pin(async move {
            tracker.close();
            tracker.wait().await;
        })
    }

    fn finish(self) -> lifecycle::BoxFuture<()> {
        self.shutdown.cancel();
        Box::pin(self.wait())
    }

    fn before_exit(&self) -> Box<dyn FnOnce() + Send> {
        // a hook still running (past the grace period, or at a forced exit)
        // is not left behind
        Box::new(exec::kill_all_running)
    }
}
