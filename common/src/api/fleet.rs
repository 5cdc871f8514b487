//! Fleet: environments, enrolled agents (`/agents`) and enrollment tokens
//! (`/agents/enroll-tokens`). Revoking either takes a [`ReasonRequest`] and
//! answers [`Revoked`].
//!
//! [`ReasonRequest`]: super::ReasonRequest
//! [`Revoked`]: super::Revoked

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `GET /environments`: every environment an agent reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentList {
    pub environments: Vec<String>,
}

/// `GET /agents?environment=E&service=S`, both optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// `GET /agents`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentList {
    pub agents: Vec<Agent>,
}

/// An enrolled agent: identity, last contact, the revision it applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub id: String,
    pub service: String,
    pub environment: String,
    pub instance: String,
    pub host: String,
    pub version: String,
    pub labels: BTreeMap<String, String>,
    pub enrolled_ms: i64,
    pub last_seen_ms: i64,
    pub applied_revision: Option<u64>,
    pub applied_ms: Option<i64>,
    /// Kill switches its own config enforces.
    pub killswitches: Vec<String>,
    pub revoked_ms: Option<i64>,
    pub state: AgentState,
    /// `last_seen_ms` as RFC 3339.
    pub last_seen: String,
}

/// How an agent stands with the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    /// Its revision stream is open now.
    Connected,
    /// No open stream, but heard from recently.
    Stale,
    /// Not heard from for long.
    Gone,
    /// Its credential was revoked.
    Revoked,
}

impl AgentState {
    pub fn as_str(&self) -> &'static str {
        match self {
            AgentState::Connected => "connected",
            AgentState::Stale => "stale",
            AgentState::Gone => "gone",
            AgentState::Revoked => "revoked",
        }
    }
}

impl std::fmt::Display for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST /agents/enroll-tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollTokenRequest {
    pub environment: String,
    pub service: String,
    /// `"24h"` unless given.
    pub expires: Option<String>,
    /// How many agents it may enroll (1 unless given).
    pub uses: Option<u32>,
}

/// The answer of `POST /agents/enroll-tokens`, with the secret (shown once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollTokenCreated {
    pub id: String,
    pub environment: String,
    pub service: String,
    pub expires: Option<String>,
    /// How many agents it may enroll.
    pub uses: Option<u32>,
    pub token: String,
}

/// `GET /agents/enroll-tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollTokenList {
    pub enroll_tokens: Vec<EnrollToken>,
}

/// An enrollment token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollToken {
    pub id: String,
    pub environment: String,
    pub service: String,
    pub expires: Option<String>,
    /// How many agents it may enroll.
    pub max_uses: Option<u32>,
    /// How many it enrolled.
    pub uses: u32,
    pub created: String,
    pub created_by: String,
    pub revoked: Option<String>,
}
