//! Heartbeats up the spine (`POST /v1/agent/heartbeat`, every
//! `heartbeat_interval`): identity, the applied revision and the kill
//! switches this agent's config enforces.

use super::{error_code, Ctx};
use crate::disk::Credential;
use crate::state::Source;
use common::wire::{self, Heartbeat};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub(super) async fn heartbeats(
    ctx: Arc<Ctx>,
    mut cred_rx: watch::Receiver<Option<Credential>>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            // a fresh credential: report at once
            r = cred_rx.changed() => if r.is_err() { return },
            _ = ctx.shutdown.cancelled() => return,
        }
        let Some(cred) = cred_rx.borrow_and_update().clone() else {
            continue;
        };
        if ctx.shared.collector_status().revoked {
            return;
        }
        let snap = ctx.shared.snapshot.load();
        let hb = Heartbeat {
            identity: ctx.shared.identity.clone(),
            revision: snap
                .as_ref()
                .filter(|s| s.source != Source::File)
                .map(|s| s.revision),
            killswitches: ctx
                .shared
                .config
                .killswitches
                .iter()
                .map(|k| k.name.clone())
                .collect(),
            uptime_s: ctx.shared.started.elapsed().as_secs(),
            flag_source: snap
                .as_ref()
                .map(|s| s.source.as_str())
                .unwrap_or("none")
                .into(),
        };
        let r = ctx
            .http
            .post(format!("{}{}", ctx.url, wire::PATH_HEARTBEAT))
            .bearer_auth(&cred.credential)
            .json(&hb)
            .send()
            .await;
        match r {
            Ok(resp) if resp.status().is_success() => {
                let now = common::time::now_ms();
                ctx.shared
                    .update_collector(|s| s.last_contact_ms = Some(now));
            }
            Ok(resp) => {
                let (status, code, msg) = error_code(resp).await;
                tracing::warn!(status, code = %code, message = %msg, "heartbeat refused");
            }
            Err(e) => tracing::debug!(error = %e, "heartbeat failed"),
        }
    }
}
