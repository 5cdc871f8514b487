//! Kill switches: their state per environment with how many agents applied
//! it (`GET /killswitches`), declaring one, and kill/revive (emergency
//! actions: never waiting for approval).

use crate::wire::KillState;
use serde::{Deserialize, Serialize};

/// `GET /killswitches?environment=E`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KillSwitchList {
    pub environment: String,
    pub killswitches: Vec<KillSwitch>,
}

/// One known switch in one scope (environment-wide, or one service) with
/// how many of the live agents it applies to have applied its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KillSwitch {
    pub name: String,
    /// Set when declared centrally.
    pub description: Option<String>,
    /// Services whose agents report enforcing it.
    pub enforced_by_services: Vec<String>,
    /// `None`: every service of the environment.
    pub service: Option<String>,
    pub killed: bool,
    pub reason: String,
    pub by: String,
    pub since: Option<String>,
    /// The revision that set the state.
    pub revision: Option<u64>,
    pub applied: usize,
    pub agents: usize,
    /// Live agents that have not applied the state yet.
    pub lagging: Vec<LaggingAgent>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaggingAgent {
    pub id: String,
    pub service: String,
    pub instance: String,
    pub host: String,
    pub applied_revision: Option<u64>,
}

/// `POST /killswitches`: declare a switch apps check themselves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeclareRequest {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

/// The answer of `POST /killswitches`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Declared {
    pub name: String,
    pub created: bool,
}

/// `POST /killswitches/{name}/kill` and `.../revive`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KillRequest {
    pub environment: String,
    /// `None`: every service of the environment.
    pub service: Option<String>,
    /// Required.
    #[serde(default)]
    pub reason: String,
}

/// The answer of kill and revive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KillOutcome {
    pub changed: bool,
    /// The revision now in force.
    pub revision: Option<u64>,
    pub state: KillState,
}
