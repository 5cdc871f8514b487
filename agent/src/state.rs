//! The agent's shared state: the snapshot in force (flags compiled once per
//! revision, kill-switch states), the collector connection status and the
//! channels that tell the proxy and the hook runner what is killed. Every
//! answer of the local API is computed from memory here; nothing waits on the
//! collector.

use crate::config::Config;
use crate::metrics::Metrics;
use arc_swap::ArcSwapOption;
use common::flags::{EvalContext, FlagSet};
use common::wire::{AgentIdentity, Revision};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Runs blocking work `f` without holding an async worker: under
/// `block_in_place` on a multi-threaded runtime's thread, directly elsewhere
/// (a blocking thread, no runtime, or a current-thread runtime, which has no
/// other worker to hand its tasks to).
fn off_the_workers<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Collector,
    Cache,
    File,
}

impl Source {
    pub fn as_str(&self) -> &'static str {
        match self {
            Source::Collector => "collector",
            Source::Cache => "cache",
            Source::File => "file",
        }
    }
}

/// One applied revision, immutable.
pub struct Snapshot {
    pub revision: u64,
    pub source: Source,
    /// When this snapshot was received from its source (ms since the epoch).
    pub received_ms: i64,
    /// Compiled once per revision; shared when a cached snapshot is confirmed.
    pub flags: Arc<FlagSet>,
    /// The revision as received, except `flags`, which is left `Null`: the
    /// compiled set keeps the definition, and one copy of a large definition
    /// is enough (use [`Snapshot::full_doc`] for the whole document).
    pub doc: Revision,
    /// Switches killed for this agent's service.
    pub killed: Arc<BTreeSet<String>>,
}

impl Snapshot {
    /// The revision document as received, definitions included (for the
    /// on-disk copy and for re-applying).
    pub fn full_doc(&self) -> Revision {
        Revision {
            flags: self.flags.definition().clone(),
            ..self.doc.clone()
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct CollectorStatus {
    pub connected: bool,
    pub last_contact_ms: Option<i64>,
    pub agent_id: Option<String>,
    pub last_error: Option<String>,
    pub revoked: bool,
}

pub struct Shared {
    pub config: Arc<Config>,
    pub identity: AgentIdentity,
    /// The agent's own evaluation context (identity and labels).
    pub base_ctx: EvalContext,
    pub snapshot: ArcSwapOption<Snapshot>,
    pub killed_tx: watch::Sender<Arc<BTreeSet<String>>>,
    /// Revision applied last (tests and benchmarks wait on it).
    pub applied_tx: watch::Sender<Option<u64>>,
    pub ready_tx: watch::Sender<bool>,
    collector: Mutex<CollectorStatus>,
    pub metrics: Arc<Metrics>,
    pub proxy_metrics: Option<Arc<crate::proxy::ProxyMetrics>>,
    pub started: std::time::Instant,
}

#[derive(Debug, thiserror::Error)]
#[error("revision {revision} rejected: {reason}")]
pub struct Rejected {
    pub revision: u64,
    pub reason: String,
}

impl Shared {
    pub fn new(
        config: Arc<Config>,
        proxy_metrics: Option<Arc<crate::proxy::ProxyMetrics>>,
    ) -> Self {
        let identity = AgentIdentity {
            service: config.service.clone(),
            environment: config.environment.clone(),
            instance: config.instance.clone(),
            host: config.host.clone(),
            version: common::VERSION.into(),
            labels: config.labels.clone(),
        };
        let mut base_ctx = EvalContext::new();
        for (k, v) in &config.labels {
            base_ctx.insert(k.clone(), Value::String(v.clone()));
        }
        base_ctx.insert("service", Value::String(identity.service.clone()));
        base_ctx.insert("environment", Value::String(identity.environment.clone()));
        base_ctx.insert("instance", Value::String(identity.instance.clone()));
        base_ctx.insert("host", Value::String(identity.host.clone()));
        // no `version`: in rules it means the app's version (docs/agent-api.md)
        Shared {
            config,
            identity,
            base_ctx,
            snapshot: ArcSwapOption::empty(),
            killed_tx: watch::channel(Arc::new(BTreeSet::new())).0,
            applied_tx: watch::channel(None).0,
            ready_tx: watch::channel(false).0,
            collector: Mutex::new(CollectorStatus::default()),
            metrics: Arc::new(Metrics::default()),
            proxy_metrics,
            started: std::time::Instant::now(),
        }
    }

    /// Compiles and installs `rev` as a whole, or leaves the snapshot in force
    /// untouched. The proxy and the hook runner see the new kill states at once.
    ///
    /// Compiling a large definition is blocking work: called from a worker
    /// of the (multi-threaded) runtime, it runs under `block_in_place`, so the
    /// worker's other tasks move to another thread meanwhile; from a blocking
    /// thread (`spawn_blocking`) or outside a runtime it simply runs.
    pub fn apply(
        &self,
        rev: Revision,
        source: Source,
        received_ms: i64,
    ) -> Result<Arc<Snapshot>, Rejected> {
        // the compiled set takes the definition over (kept once, not twice)
        let mut rev = rev;
        let definition = std::mem::take(&mut rev.flags);
        let opts = self.config.flag_options;
        let compiled = off_the_workers(move || FlagSet::from_owned_with(definition, &opts));
        let flags = compiled.map_err(|e| {
            Metrics::inc(&self.metrics.revisions_rejected);
            Rejected {
                revision: rev.revision,
                reason: e.to_string(),
            }
        })?;
        let killed: BTreeSet<String> = rev
            .killswitches
            .iter()
            .map(|k| k.name.as_str())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|n| {
                rev.kill_state_for(n, &self.identity.service)
                    .is_some_and(|k| k.killed)
            })
            .map(String::from)
            .collect();
        let snap = Arc::new(Snapshot {
            revision: rev.revision,
            source,
            received_ms,
            flags: Arc::new(flags),
            doc: rev,
            killed: Arc::new(killed),
        });
        self.snapshot.store(Some(snap.clone()));
        self.killed_tx.send_if_modified(|cur| {
            if **cur != *snap.killed {
                *cur = snap.killed.clone();
                true
            } else {
                false
            }
        });
        Metrics::inc(&self.metrics.revisions_applied);
        self.applied_tx.send_replace(Some(snap.revision));
        self.ready_tx.send_replace(true);
        Ok(snap)
    }

    /// Installs `snap` again with another `source` and receive time, without
    /// compiling it again (a cached snapshot the collector says is current).
    /// Kill states and the revision are unchanged, so the proxy and the hooks
    /// are not told anything.
    pub fn relabel(&self, snap: &Snapshot, source: Source, received_ms: i64) -> Arc<Snapshot> {
        let relabelled = Arc::new(Snapshot {
            revision: snap.revision,
            source,
            received_ms,
            flags: snap.flags.clone(),
            doc: snap.doc.clone(),
            killed: snap.killed.clone(),
        });
        self.snapshot.store(Some(relabelled.clone()));
        self.applied_tx.send_replace(Some(relabelled.revision));
        self.ready_tx.send_replace(true);
        relabelled
    }

    pub fn collector_status(&self) -> CollectorStatus {
        self.collector
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn update_collector(&self, f: impl FnOnce(&mut CollectorStatus)) {
        f(&mut self.collector.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Seconds since the snapshot in force was last confirmed current: by the
    /// collector (any stream line while connected) or by its source file.
    pub fn snapshot_age_s(&self, snap: &Snapshot) -> f64 {
        let now = common::time::now_ms();
        let confirmed = match snap.source {
            Source::Collector => {
                let c = self.collector_status();
                c.last_contact_ms
                    .unwrap_or(snap.received_ms)
                    .max(snap.received_ms)
            }
            Source::Cache | Source::File => snap.received_ms,
        };
        ((now - confirmed).max(0) as f64) / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// The blocking work waits for a task that can only run if the worker
    /// it was called on handed its tasks over: with one worker, running the
    /// work on the worker itself would never see the message.
    #[test]
    fn blocking_work_does_not_hold_the_only_worker() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let got = rt.block_on(async {
            tokio::spawn(async {
                let (tx, rx) = mpsc::channel::<()>();
                let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
                // a task queued on the same (only) worker
                tokio::spawn(async move {
                    let _ = go_rx.await;
                    let _ = tx.send(());
                });
                off_the_workers(move || {
                    let _ = go_tx.send(());
                    rx.recv_timeout(Duration::from_secs(10)).is_ok()
                })
            })
            .await
            .unwrap()
        });
        assert!(got, "the blocking work held the worker");
        // Elsewhere it simply runs.
        assert_eq!(off_the_workers(|| 7), 7);
        let ct = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(ct.block_on(async { off_the_workers(|| 8) }), 8);
        assert_eq!(rt.block_on(async { off_the_workers(|| 9) }), 9);
    }

    fn shared_with(extra: &str) -> Shared {
        use common::config::ConfigSource;
        let src = ConfigSource {
            file: "agent.toml".into(),
            text: format!(
                "service = \"web\"\nenvironment = \"prod\"\n[flags]\nfile = \"/nonexistent.json\"\n{extra}"
            ),
        };
        let file: crate::config::File = src.parse().unwrap();
        Shared::new(Arc::new(Config::resolve(&src, file).unwrap()), None)
    }

    /// `[flags] fractional_bucketing` decides how every revision compiles
    /// (expected buckets from flagd-testbed 3.9 `fractional-basic-flag`).
    #[test]
    fn revisions_compile_with_the_configured_bucketing() {
        let buckets: Vec<Value> = (1..=25)
            .map(|i| serde_json::json!([format!("bucket{i}"), 4]))
            .collect();
        let mut variants = serde_json::Map::new();
        for i in 1..=25 {
            variants.insert(format!("bucket{i}"), Value::String(format!("bucket{i}")));
        }
        variants.insert("fallback".into(), "fallback".into());
        let mut fractional = vec![serde_json::json!({"var": "hashing_input"})];
        fractional.extend(buckets);
        let flags = serde_json::json!({"flags": {"f": {
            "state": "ENABLED", "variants": variants, "defaultVariant": "fallback",
            "targeting": {"fractional": fractional}}}});
        let rev = || Revision {
            revision: 1,
            environment: "prod".into(),
            created_ms: 0,
            flags: flags.clone(),
            killswitches: Vec::new(),
        };
        let ctx = |v: Value| {
            let mut c = EvalContext::new();
            c.insert("hashing_input", v);
            c
        };
        let v3 = shared_with("fractional_bucketing = \"v3\"\n");
        let snap = v3.apply(rev(), Source::Collector, 0).unwrap();
        let variant = |s: &Snapshot, v: Value| {
            s.flags
                .evaluate("f", &ctx(v))
                .unwrap()
                .variant
                .map(String::from)
        };
        assert_eq!(
            variant(&snap, Value::from(123)).as_deref(),
            Some("bucket20")
        );
        assert_eq!(
            variant(&snap, Value::from("user1")).as_deref(),
            Some("bucket22")
        );
        let v2 = shared_with("");
        let snap = v2.apply(rev(), Source::Collector, 0).unwrap();
        // v2 hashes strings only: a number gives the default variant.
        assert_eq!(
            variant(&snap, Value::from(123)).as_deref(),
            Some("fallback")
        );
    }
}
