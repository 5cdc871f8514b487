//! The in-memory fan-out of revisions to connected agents, and the registry
//! of open streams (connection state, revocation). The database stays the
//! source of truth: the hub is rebuilt from it lazily after a restart.
//!
//! An agent holds at most [`MAX_STREAMS_PER_AGENT`] streams: a new stream
//! past the cap closes the oldest (no event is sent; a live agent simply
//! reconnects), so a leaked credential cannot pile up connections, and an
//! agent restarting before its old connection timed out is never refused.
//! Revoked agents are remembered, so a stream registered just after a
//! revocation is told at once (the ingest listener re-checks the database
//! after registering, for revocations from before a restart).

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

/// Most open streams one agent credential may hold.
pub const MAX_STREAMS_PER_AGENT: usize = 2;

/// One open stream: its id and how to end it.
struct OpenStream {
    id: u64,
    revoked: CancellationToken,
    replaced: CancellationToken,
}

#[derive(Default)]
pub struct Hub {
    envs: Mutex<HashMap<String, watch::Sender<Arc<Pushed>>>>,
    streams: Mutex<Streams>,
    next_stream: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Streams {
    open: HashMap<String, Vec<OpenStream>>,
    /// Agents revoked since the start (a later stream is told at once).
    revoked: std::collections::HashSet<String>,
}

/// Removes a stream from the registry when the stream task ends.
pub struct StreamGuard {
    hub: Arc<Hub>,
    agent_id: String,
    id: u64,
    /// Cancelled when the agent is revoked: the stream says so and ends.
    pub revoked: CancellationToken,
    /// Cancelled when a newer stream of the same agent took this one's place.
    pub replaced: CancellationToken,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut s = self.hub.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = s.open.get_mut(&self.agent_id) {
            v.retain(|o| o.id != self.id);
            if v.is_empty() {
                s.open.remove(&self.agent_id);
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

    /// Registers a stream of `agent_id`, closing its oldest streams past
    /// [`MAX_STREAMS_PER_AGENT`]; the guard's `revoked` is already cancelled
    /// when the agent was revoked.
    pub fn register(self: &Arc<Self>, agent_id: &str) -> StreamGuard {
        let id = self
            .next_stream
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (revoked, replaced) = (CancellationToken::new(), CancellationToken::new());
        let mut s = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if s.revoked.contains(agent_id) {
            revoked.cancel();
        }
        let v = s.open.entry(agent_id.to_string()).or_default();
        while v.len() >= MAX_STREAMS_PER_AGENT {
            let oldest = v.remove(0);
            oldest.replaced.cancel();
            tracing::info!(agent = %agent_id, "a newer stream replaces the agent's oldest");
        }
        v.push(OpenStream {
            id,
            revoked: revoked.clone(),
            replaced: replaced.clone(),
        });
        StreamGuard {
            hub: self.clone(),
            agent_id: agent_id.to_string(),
            id,
            revoked,
            replaced,
        }
    }

    /// Ends every open stream of a revoked agent, and any it opens later.
    pub fn revoke(&self, agent_id: &str) {
        let mut s = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        s.revoked.insert(agent_id.to_string());
        if let Some(v) = s.open.get(agent_id) {
            for o in v {
                o.revoked.cancel();
            }
        }
    }

    pub fn is_connected(&self, agent_id: &str) -> bool {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .open
            .contains_key(agent_id)
    }

    pub fn connected_count(&self) -> usize {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .open
            .len()
    }

    /// How many streams `agent_id` holds open.
    pub fn stream_count(&self, agent_id: &str) -> usize {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .open
            .get(agent_id)
            .map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_per_agent_are_capped_oldest_first() {
        let hub = Arc::new(Hub::default());
        let guards: Vec<StreamGuard> = (0..5).map(|_| hub.register("agt_a")).collect();
        assert_eq!(hub.stream_count("agt_a"), MAX_STREAMS_PER_AGENT);
        let replaced = guards.iter().filter(|g| g.replaced.is_cancelled()).count();
        assert_eq!(replaced, 5 - MAX_STREAMS_PER_AGENT);
        assert!(!guards[4].replaced.is_cancelled() && !guards[3].replaced.is_cancelled());
        assert!(guards.iter().all(|g| !g.revoked.is_cancelled()));
        drop(guards);
        assert_eq!(hub.stream_count("agt_a"), 0);
        assert!(!hub.is_connected("agt_a"));
    }

    #[test]
    fn a_stream_registered_after_a_revocation_is_told_at_once() {
        let hub = Arc::new(Hub::default());
        let open = hub.register("agt_b");
        hub.revoke("agt_b");
        assert!(open.revoked.is_cancelled());
        // the race: the credential was checked before the revocation, the
        // stream registers after it
        let late = hub.register("agt_b");
        assert!(late.revoked.is_cancelled());
        assert!(!hub.register("agt_c").revoked.is_cancelled());
    }
}
