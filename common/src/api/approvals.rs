//! Four-eyes approvals: the requests waiting for (or decided by) a second
//! person (`/approvals`), approving and rejecting them, and the policy of
//! which changes need one (`/approval-policy`).

use super::access::{TokenCreated, UserRole};
use super::flags::FlagChange;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `GET /approvals?state=S&limit=N`: `state` one of [`ApprovalState`] or
/// `all` (every state unless given); 100 unless `limit` says otherwise.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApprovalsQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// `GET /approvals`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalList {
    pub approvals: Vec<Approval>,
}

/// A request for a change that needs a second person (`GET /approvals/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub id: String,
    /// The audit action the change records (`flags.apply`, ...).
    pub action: String,
    pub target: String,
    /// What the change does, as shown to the approver: a list of
    /// `common::diff::Change`.
    pub diff: Value,
    pub reason: String,
    /// The requester as recorded (a user, or `token:NAME (owner PERSON)`).
    pub requested_by: String,
    /// The person behind the request: nobody approves their own.
    pub requested_person: String,
    pub requested_token_id: Option<String>,
    /// The requester's role when asking, as recorded.
    pub requested_role: String,
    pub created: String,
    pub created_ms: i64,
    pub expires: String,
    pub expires_ms: i64,
    pub state: ApprovalState,
    pub decided_by: Option<String>,
    pub decided: Option<String>,
    pub decision_reason: Option<String>,
    /// The definition warnings a `flags apply` request accepted; left out
    /// when none (and in the answers of approve and reject).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepted_warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalState {
    Pending,
    Approved,
    Rejected,
    Expired,
}

impl ApprovalState {
    pub fn as_str(&self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Rejected => "rejected",
            ApprovalState::Expired => "expired",
        }
    }
}

impl std::fmt::Display for ApprovalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer of `POST /approvals/{id}/approve` (with the `result` of the
/// change, done at once) and of `.../reject` (without). Approving an
/// expired request is refused with 409 `EXPIRED`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub approval: Approval,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ApprovalResult>,
}

/// What an approved change did: the answer the change would have had
/// without approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ApprovalResult {
    Flags(FlagChange),
    TokenCreated(TokenCreated),
    Policy(Policy),
    User(UserRole),
}

/// Which changes need a second person's approval (`GET /approval-policy`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Flag changes (set, apply) in these environments.
    pub protected_environments: Vec<String>,
    /// Creating users or API tokens and changing roles.
    pub grant_roles: bool,
    /// Pending requests expire after this long.
    pub expire_after_ms: i64,
}

/// `POST /approval-policy`: always waits for a second admin; answers
/// `Submitted<Policy>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicySetRequest {
    #[serde(flatten)]
    pub policy: Policy,
    /// Required.
    #[serde(default)]
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_result_is_told_apart_by_its_members() {
        let r = |v| serde_json::from_value::<ApprovalResult>(v).unwrap();
        assert!(matches!(
            r(json!({"name": "u", "role": "viewer"})),
            ApprovalResult::User(_)
        ));
        assert!(matches!(
            r(json!({"id": "t", "name": "u", "role": "viewer", "expires": null})),
            ApprovalResult::TokenCreated(_)
        ));
        assert!(matches!(
            r(json!({"protected_environments": [], "grant_roles": true, "expire_after_ms": 60000})),
            ApprovalResult::Policy(_)
        ));
        assert!(matches!(
            r(json!({"revision": 3, "changed": true, "diff": [], "diff_text": "", "warnings": []})),
            ApprovalResult::Flags(_)
        ));
    }

    #[test]
    fn policy_request_is_flat() {
        let req: PolicySetRequest = serde_json::from_value(json!({
            "protected_environments": ["prod"], "grant_roles": false,
            "expire_after_ms": 60000, "reason": "r"
        }))
        .unwrap();
        assert_eq!(req.policy.protected_environments, ["prod"]);
        assert_eq!(req.reason, "r");
    }
}
