//! The in-memory fan-out of revisions to connected agents, and the registry
//! of open streams (connection state, revocation). The database stays the
//! source of truth: the hub is rebuilt from it lazily after a restart.

use crate::store::{self, Store};
use bytes::Bytes;
use common::wire::{Revision, StreamEvent};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A revision ready to send: the number and its encoded stream line
/// (serialised once, whatever the number of agents).
#[derive(Debug)]
pub struct Pushed {
    pub revision: u64,
    pub line: Bytes,
}

impl Pushed {
    pub fn new(rev: &Revision) -> Arc<Self> {
        let mut line = serde_json::to_vec(&StreamEvent::Revision(rev.clone())).unwrap_or_default();
        line.push(b'\n');
        Arc::new(Pushed {
            revision: rev.revision,
            line: Bytes::from(line),
        })
    }
}

#[derive(Default)]
pub struct Hub {
    envs: Mutex<HashMap<String, watch::Sender<Arc<Pushed>>>>,
    streams: Mutex<HashMap<String, Vec<(u64, CancellationToken)>>>,
    next_stream: std::sync::atomic::AtomicU64,
}

/// Removes a stream from the registry when the stream task ends.
pub struct StreamGuard {
    hub: Arc<Hub>,
    agent_id: String,
    id: u64,
    pub revoked: CancellationToken,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut s = self.hub.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = s.get_mut(&self.agent_id) {
            v.retain(|(id, _)| *id != self.id);
            if v.is_empty() {
                s.remove(&self.agent_id);
            }
        }
    }
}

fn empty_revision(environment: &str) -> Revision {
    Revision {
        revision: 0,
        environment: environment.into(),
        created_ms: 0,
        flags: store::flags::empty_definition(),
        killswitches: Vec::new(),
    }
}

impl Hub {
    /// A receiver that always holds the environment's newest revision.
    pub async fn subscribe(
        &self,
        store: &Store,
        environment: &str,
    ) -> Result<watch::Receiver<Arc<Pushed>>, store::StoreError> {
        if let Some(tx) = self
            .envs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(environment)
        {
            return Ok(tx.subscribe());
        }
        let env = environment.to_string();
        let latest = store.read(move |c| store::flags::latest(c, &env)).await?;
        let pushed = Pushed::new(&latest.unwrap_or_else(|| empty_revision(environment)));
        let mut envs = self.envs.lock().unwrap_or_else(|p| p.into_inner());
        let tx = envs
            .entry(environment.to_string())
            .or_insert_with(|| watch::channel(pushed.clone()).0);
        // a publish may have raced the read; keep the newer
        tx.send_if_modified(|cur| {
            if pushed.revision > cur.revision {
                *cur = pushed;
                true
            } else {
                false
            }
        });
        Ok(tx.subscribe())
    }

    /// Pushes a newly committed revision to its environment's streams.
    pub fn publish(&self, rev: &Revision) {
        let pushed = Pushed::new(rev);
        let mut envs = self.envs.lock().unwrap_or_else(|p| p.into_inner());
        match envs.get(&rev.environment) {
            Some(tx) => {
                tx.send_if_modified(|cur| {
                    if pushed.revision > cur.revision {
                        *cur = pushed;
                        true
                    } else {
                        false
                    }
                });
            }
            None => {
                envs.insert(rev.environment.clone(), watch::channel(pushed).0);
            }
        }
    }

    pub fn register(self: &Arc<Self>, agent_id: &str) -> StreamGuard {
        let id = self
            .next_stream
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = CancellationToken::new();
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(agent_id.to_string())
            .or_default()
            .push((id, token.clone()));
        StreamGuard {
            hub: self.clone(),
            agent_id: agent_id.to_string(),
            id,
            revoked: token,
        }
    }

    /// Ends every open stream of a revoked agent.
    pub fn revoke(&self, agent_id: &str) {
        if let Some(v) = self
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(agent_id)
        {
            for (_, t) in v {
                t.cancel();
            }
        }
    }

    pub fn is_connected(&self, agent_id: &str) -> bool {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(agent_id)
    }

    pub fn connected_count(&self) -> usize {
        self.streams.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
