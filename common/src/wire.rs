//! Wire types between agent and collector (the ingest listener). These are
//! the only serialised types both sides share; field names are the protocol.
//!
//! Down the spine the collector pushes *revisions* on a long-lived
//! newline-delimited JSON stream (`GET /v1/agent/stream`); up the spine the
//! agent POSTs acknowledgements and heartbeats. Both are opened by the agent.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

pub const PATH_ENROLL: &str = "/v1/agent/enroll";
pub const PATH_STREAM: &str = "/v1/agent/stream";
pub const PATH_ACK: &str = "/v1/agent/ack";
pub const PATH_HEARTBEAT: &str = "/v1/agent/heartbeat";

/// Protocol version sent by the agent in [`PROTOCOL_HEADER`] on every
/// ingest request. Only the major part (before a `.`) must match.
pub const PROTOCOL_VERSION: u32 = 1;

/// The header carrying the agent's protocol version.
pub const PROTOCOL_HEADER: &str = "x-opsplane-protocol";

/// Error code of a refused protocol version (HTTP 400).
pub const PROTOCOL_MISMATCH: &str = "PROTOCOL_MISMATCH";

/// Checks the protocol version an agent sent in [`PROTOCOL_HEADER`].
/// A request without the header is accepted as version 1 (agents before
/// the header was sent on every request); a different major version, or a
/// value that is not a version, is refused with the message to send back,
/// which names both versions.
pub fn check_protocol(sent: Option<&str>) -> Result<(), String> {
    let Some(sent) = sent else {
        return Ok(());
    };
    let major = sent.trim().split('.').next().unwrap_or("");
    if major.parse::<u32>().ok() == Some(PROTOCOL_VERSION) {
        return Ok(());
    }
    let shown: String = sent.chars().take(32).collect();
    Err(format!(
        "the agent speaks protocol {shown:?} and this collector speaks protocol {PROTOCOL_VERSION}: \
         run an agent and a collector of the same protocol"
    ))
}

/// Who an agent is; sent at enrollment and with every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AgentIdentity {
    pub service: String,
    pub environment: String,
    pub instance: String,
    pub host: String,
    pub version: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub token: String,
    pub identity: AgentIdentity,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub agent_id: String,
    /// Per-agent secret, sent as `Authorization: Bearer` from now on.
    pub credential: String,
}

/// One kill switch's central state inside a revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillState {
    pub name: String,
    /// `None`: applies to every service of the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub killed: bool,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub by: String,
    /// When the state last changed (ms since the epoch).
    pub since_ms: i64,
}

/// A whole, numbered, immutable snapshot of what an environment's agents hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    pub revision: u64,
    pub environment: String,
    pub created_ms: i64,
    /// flagd flag-definition document.
    pub flags: Value,
    #[serde(default)]
    pub killswitches: Vec<KillState>,
}

impl Revision {
    /// The state of `name` as seen by an agent of `service`: a service-scoped
    /// entry wins over the environment-wide one.
    pub fn kill_state_for(&self, name: &str, service: &str) -> Option<&KillState> {
        let mut env_wide = None;
        for k in &self.killswitches {
            if k.name != name {
                continue;
            }
            match &k.service {
                Some(s) if s == service => return Some(k),
                None => env_wide = Some(k),
                _ => {}
            }
        }
        env_wide
    }

    /// Every switch name this revision mentions for `service`.
    pub fn kill_names_for<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.killswitches
            .iter()
            .filter(move |k| k.service.as_deref().is_none_or(|s| s == service))
            .map(|k| k.name.as_str())
    }
}

/// One line of the revision stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    Revision(Revision),
    /// Sent every few seconds so both ends notice a dead connection.
    Ping {
        latest: u64,
    },
    /// The agent's credential was revoked; the stream ends.
    Revoked,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ack {
    pub revision: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub identity: AgentIdentity,
    /// Revision applied, if any.
    pub revision: Option<u64>,
    /// Kill switches this agent's own config declares (and enforces).
    #[serde(default)]
    pub killswitches: Vec<String>,
    pub uptime_s: u64,
    pub flag_source: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub latest_revision: u64,
}

/// Error body of every JSON API (agent local API, ingest, admin).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ks(name: &str, service: Option<&str>, killed: bool) -> KillState {
        KillState {
            name: name.into(),
            service: service.map(Into::into),
            killed,
            reason: String::new(),
            by: String::new(),
            since_ms: 0,
        }
    }

    #[test]
    fn service_scoped_state_wins() {
        let r = Revision {
            revision: 1,
            environment: "prod".into(),
            created_ms: 0,
            flags: Value::Null,
            killswitches: vec![ks("pay", None, false), ks("pay", Some("web"), true)],
        };
        assert!(r.kill_state_for("pay", "web").unwrap().killed);
        assert!(!r.kill_state_for("pay", "api").unwrap().killed);
        assert!(r.kill_state_for("nope", "web").is_none());
    }

    #[test]
    fn protocol_check() {
        assert_eq!(check_protocol(None), Ok(()), "missing is accepted as 1");
        assert_eq!(check_protocol(Some("1")), Ok(()));
        assert_eq!(
            check_protocol(Some("1.4")),
            Ok(()),
            "minor versions are compatible"
        );
        for bad in ["2", "0", "2.0", "", "one"] {
            let e = check_protocol(Some(bad)).unwrap_err();
            assert!(
                e.contains(&format!("{bad:?}")) && e.contains("protocol 1"),
                "names both versions: {e}"
            );
        }
    }

    #[test]
    fn stream_event_shape() {
        let s = serde_json::to_string(&StreamEvent::Ping { latest: 3 }).unwrap();
        assert_eq!(s, r#"{"type":"ping","latest":3}"#);
    }
}
