//! Four-eyes approvals: which operations need a second person (the policy),
//! and the one place that runs those operations, whether at once or later on
//! approval. Both the JSON API and the console go through [`submit`],
//! [`approve`] and [`reject`]; nothing here bypasses the store functions, so
//! an approved change writes the same revision and audit entries as a direct
//! one, inside the approval's transaction.
//!
//! Invariants: nobody approves their own request (admins included): requests
//! and approvers are compared by person (a token's owner), however each
//! arrives, session or any of their tokens; a request whose token was revoked
//! or whose person no longer has the role cannot be approved; the approver
//! needs the role the operation needs; what runs is exactly what was shown (the
//! diff is recomputed and must match); emergency actions (kill, revive)
//! never come here.
//!
//! Routes: `GET /api/v1/approvals`, `GET /api/v1/approvals/{id}`,
//! `POST /api/v1/approvals/{id}/approve`, `.../reject`,
//! `GET|POST /api/v1/approval-policy`; console `/console/approvals`, its
//! approve and reject forms, and `/console/policy`. Audit actions: [`Action`].

pub mod api;
pub mod console;
mod run;

pub use run::*;

use crate::kernel::{Role, Route};
use crate::store;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

crate::audit::actions! {
    /// Audit actions of approvals.
    pub enum Action {
        Request => "approval.request",
        Approve => "approval.approve",
        Reject => "approval.reject",
        Expire => "approval.expire",
        PolicySet => "approvals.policy.set",
    }
}

pub fn routes() -> Vec<Route> {
    vec![
        Route::get("/api/v1/approvals", Role::Viewer, api::approvals_list),
        Route::get("/api/v1/approvals/{id}", Role::Viewer, api::approval_get),
        Route::post(
            "/api/v1/approvals/{id}/approve",
            Role::Operator,
            api::approval_approve,
        ),
        // a viewer may withdraw their own request (made before a role
        // change); deciding on another's request needs the operation's role,
        // checked in `decide`
        Route::post(
            "/api/v1/approvals/{id}/reject",
            Role::Viewer,
            api::approval_reject,
        ),
        Route::get("/api/v1/approval-policy", Role::Viewer, api::policy_get),
        Route::post("/api/v1/approval-policy", Role::Admin, api::policy_set).approvable(),
        Route::get("/console/approvals", Role::Viewer, console::approvals_page).nav(
            "approvals",
            "Approvals",
            60,
        ),
        Route::post(
            "/console/approvals/{id}/approve",
            Role::Operator,
            console::approval_approve,
        ),
        Route::post(
            "/console/approvals/{id}/reject",
            Role::Viewer,
            console::approval_reject,
        ),
        Route::post("/console/policy", Role::Admin, console::policy_set).approvable(),
    ]
}

/// Which operations need a second person's approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Flag changes (set, apply) in these environments.
    pub protected_environments: Vec<String>,
    /// Creating users or API tokens (each carries a role) and changing roles.
    pub grant_roles: bool,
    /// Pending requests expire after this long.
    pub expire_after_ms: i64,
}

/// Longest time a request may wait for approval.
pub const MAX_EXPIRE_AFTER: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);
/// Shortest time a request waits for approval.
pub const MIN_EXPIRE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Parses a request expiry (`"24h"`) within [`MIN_EXPIRE_AFTER`] and
/// [`MAX_EXPIRE_AFTER`], into milliseconds.
pub fn parse_expire_after(s: &str) -> Result<i64, String> {
    let d = common::config::parse_duration_max(s, MAX_EXPIRE_AFTER, "request expiry")?;
    if d < MIN_EXPIRE_AFTER {
        return Err("requests must stay open at least one minute".into());
    }
    Ok(d.as_millis() as i64)
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            protected_environments: Vec::new(),
            grant_roles: true,
            expire_after_ms: 24 * 3600 * 1000,
        }
    }
}

impl Policy {
    pub fn requires(&self, op: &Op) -> bool {
        match op {
            Op::FlagSet { environment, .. } | Op::FlagApply { environment, .. } => {
                self.protected_environments.iter().any(|e| e == environment)
            }
            Op::UserAdd { .. } | Op::UserSetRole { .. } | Op::TokenCreate { .. } => {
                self.grant_roles
            }
            // otherwise one admin could switch the protection off and then
            // change protected flags alone
            Op::PolicySet { .. } => true,
        }
    }
}

/// An operation that may have to wait for approval.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    FlagSet {
        environment: String,
        key: String,
        state: Option<String>,
        default_variant: Option<String>,
        /// Compiled off the writer just before the write; never stored.
        #[serde(skip)]
        checked: Option<Arc<store::flags::CheckedSet>>,
    },
    FlagApply {
        environment: String,
        definition: Value,
        /// The definition's warnings the requester accepted
        /// (`--accept-warnings`), shown to the approver.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        accepted_warnings: Vec<String>,
        /// Compiled off the writer just before the write; never stored.
        #[serde(skip)]
        checked: Option<Arc<store::flags::CheckedApply>>,
    },
    UserAdd {
        name: String,
        role: Role,
        /// argon2id hash of the password shown to the requester.
        password_hash: String,
    },
    UserSetRole {
        name: String,
        role: Role,
    },
    TokenCreate {
        id: String,
        name: String,
        role: Role,
        /// SHA-256 of the secret shown to the requester.
        secret_hash: String,
        expires_ms: Option<i64>,
    },
    PolicySet {
        policy: Policy,
        /// The config's policy, in force while none was saved.
        config_default: Policy,
    },
}

impl Op {
    /// `flags set`: one flag's state and/or default variant.
    pub fn flag_set(
        environment: String,
        key: String,
        state: Option<String>,
        default_variant: Option<String>,
    ) -> Op {
        Op::FlagSet {
            environment,
            key,
            state,
            default_variant,
            checked: None,
        }
    }

    /// `flags apply`: a whole definition.
    pub fn flag_apply(environment: String, definition: Value) -> Op {
        Op::FlagApply {
            environment,
            definition,
            accepted_warnings: Vec::new(),
            checked: None,
        }
    }

    /// The warnings a `flags apply` request accepted.
    pub fn accepted_warnings(&self) -> &[String] {
        match self {
            Op::FlagApply {
                accepted_warnings, ..
            } => accepted_warnings,
            _ => &[],
        }
    }

    /// The role needed to perform (and so to approve) the operation.
    /// Every variant names its role: a new operation cannot fall through to
    /// a default.
    pub fn required_role(&self) -> Role {
        match self {
            Op::FlagSet { .. } | Op::FlagApply { .. } => Role::Operator,
            Op::UserAdd { .. } | Op::UserSetRole { .. } | Op::TokenCreate { .. } => Role::Admin,
            Op::PolicySet { .. } => Role::Admin,
        }
    }

    /// The audit action the operation is recorded under.
    pub fn action(&self) -> &'static str {
        match self {
            Op::FlagSet { .. } => crate::flags::Action::Set.as_str(),
            Op::FlagApply { .. } => crate::flags::Action::Apply.as_str(),
            Op::UserAdd { .. } => crate::access::Action::UserAdd.as_str(),
            Op::UserSetRole { .. } => crate::access::Action::UserSetRole.as_str(),
            Op::TokenCreate { .. } => crate::access::Action::TokenCreate.as_str(),
            Op::PolicySet { .. } => Action::PolicySet.as_str(),
        }
    }

    pub fn target(&self) -> String {
        match self {
            Op::FlagSet {
                environment, key, ..
            } => format!("flag:{environment}/{key}"),
            Op::FlagApply { environment, .. } => format!("flags:{environment}"),
            Op::UserAdd { name, .. } | Op::UserSetRole { name, .. } => format!("user:{name}"),
            Op::TokenCreate { id, .. } => format!("token:{id}"),
            Op::PolicySet { .. } => "approval_policy".into(),
        }
    }
}
