//! Request and response types of the collector's admin JSON API
//! (`/api/v1/...`), defined once for the collector's handlers and for
//! `opsctl`. One module per capability; this file holds what several share:
//! the error body, the reason-only request, the answer of a change that may
//! wait for a second person's approval ([`Submitted`]).
//!
//! Field names, optionality and enum strings are contracts (see
//! `docs/` and ARCHITECTURE.md): a field is `Option` exactly where the
//! collector answers `null`, and skipped exactly where it leaves it out.
//! Response types accept members they do not know (an older `opsctl` keeps
//! working against a newer collector); `collector/tests/api_types/` instead
//! checks that every answer serialises back to exactly the JSON the
//! collector sent, so a member added, dropped, renamed or turned `null`
//! without the type following fails there.

pub mod access;
pub mod approvals;
pub mod audit;
pub mod flags;
pub mod fleet;
pub mod killswitches;

pub use access::Role;

use serde::{Deserialize, Serialize};

/// Where the admin API is mounted on the admin listener.
pub const PREFIX: &str = "/api/v1";

/// The body of every refusal: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`FORBIDDEN`, `DEFINITION_WARNINGS`, ...).
    pub code: String,
    pub message: String,
    /// Only with [`flags::DEFINITION_WARNINGS`]: every warning nobody accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `?environment=E`, the query of every per-environment list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentQuery {
    pub environment: String,
}

/// A body carrying only the reason recorded in the audit log (revokes,
/// approve, reject).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReasonRequest {
    #[serde(default)]
    pub reason: String,
}

/// The answer of every revoke (agents, enrollment tokens, API tokens).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revoked {
    pub id: String,
    pub revoked: bool,
}

/// The answer of a change that may wait for a second person: 200 with the
/// result `T`, or 202 with the pending request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Submitted<T> {
    /// Waiting for approval (HTTP 202); tried first: its `pending` member
    /// tells it apart.
    Pending(Box<Pending>),
    /// Done at once (HTTP 200).
    Done(T),
}

impl<T> Submitted<T> {
    /// The pending request, if the change waits for approval.
    pub fn pending(&self) -> Option<&Pending> {
        match self {
            Submitted::Pending(p) => Some(p),
            Submitted::Done(_) => None,
        }
    }
}

/// A change waiting for a second person's approval (HTTP 202).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// Always `true`.
    pub pending: bool,
    pub approval: approvals::Approval,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn submitted_tells_pending_from_done() {
        let done: Submitted<access::UserRole> =
            serde_json::from_value(json!({"name": "u", "role": "viewer"})).unwrap();
        assert!(done.pending().is_none());
        let pending: Submitted<access::UserRole> = serde_json::from_value(json!({
            "pending": true,
            "message": "waiting",
            "approval": {
                "id": "apr_1", "action": "user.add", "target": "user:u", "diff": [],
                "reason": "", "requested_by": "admin", "requested_person": "admin",
                "requested_token_id": null, "requested_role": "admin",
                "created": "t", "created_ms": 1, "expires": "t", "expires_ms": 2,
                "state": "pending", "decided_by": null, "decided": null,
                "decision_reason": null
            }
        }))
        .unwrap();
        assert_eq!(pending.pending().unwrap().approval.id, "apr_1");
    }

    #[test]
    fn error_warnings_only_when_there_are_some() {
        let e = ErrorBody {
            error: ErrorDetail {
                code: "FORBIDDEN".into(),
                message: "no".into(),
                warnings: Vec::new(),
            },
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"error": {"code": "FORBIDDEN", "message": "no"}})
        );
    }
}
