//! Access: tokens, users, roles, through approval and, once the policy
//! says so, at once.

use crate::harness::{done, pending, Harness};
use common::api::access::{
    Role, TokenCreateAnswer, TokenCreateRequest, TokenList, UserAddAnswer, UserAddRequest,
    UserList, UserRole, UserRoleRequest,
};
use common::api::approvals::{
    ApprovalList, ApprovalResult, ApprovalState, Policy, PolicySetRequest,
};
use common::api::Submitted;
use reqwest::StatusCode;

pub async fn access(h: &Harness) {
    let tokens: TokenList = h.get("GET /tokens", "/tokens").await;
    assert_eq!(tokens.tokens.len(), 3);
    let create = TokenCreateRequest {
        name: "ci".into(),
        role: Role::Viewer,
        expires: Some("30d".into()),
        reason: String::new(),
    };
    let waits: TokenCreateAnswer = h
        .post(
            &h.admin,
            "POST /tokens",
            "/tokens",
            &create,
            StatusCode::ACCEPTED,
        )
        .await;
    assert!(waits.token.starts_with("opsp_"));
    let d = h.approve(&pending(waits.outcome).id).await;
    assert!(matches!(d.result, Some(ApprovalResult::TokenCreated(ref t)) if t.name == "ci"));

    let add = |name: &str, password: Option<&str>| UserAddRequest {
        name: name.into(),
        role: Role::Viewer,
        password: password.map(Into::into),
        reason: String::new(),
    };
    let generated: UserAddAnswer = h
        .post(
            &h.admin,
            "POST /users",
            "/users",
            &add("carol", None),
            StatusCode::ACCEPTED,
        )
        .await;
    assert!(generated.password.is_some());
    let d = h.approve(&pending(generated.outcome).id).await;
    assert!(matches!(d.result, Some(ApprovalResult::User(ref u)) if u.name == "carol"));
    let given: UserAddAnswer = h
        .post(
            &h.admin,
            "POST /users",
            "/users",
            &add("dave", Some("long-enough-password")),
            StatusCode::ACCEPTED,
        )
        .await;
    assert!(given.password.is_none());
    pending(given.outcome);

    let role = UserRoleRequest {
        role: Role::Responder,
        reason: "on call".into(),
    };
    let waits: Submitted<UserRole> = h
        .post(
            &h.admin,
            "POST /users/{name}/role",
            "/users/carol/role",
            &role,
            StatusCode::ACCEPTED,
        )
        .await;
    let d = h.approve(&pending(waits).id).await;
    assert!(matches!(d.result, Some(ApprovalResult::User(ref u)) if u.role == Role::Responder));

    let users: UserList = h.get("GET /users", "/users").await;
    assert!(users.users.iter().any(|u| u.name == "carol"));
    let list: ApprovalList = h.get("GET /approvals", "/approvals").await;
    assert!(list.approvals.len() >= 6);
    let open: ApprovalList = h
        .get("GET /approvals", "/approvals?state=pending&limit=50")
        .await;
    assert!(open
        .approvals
        .iter()
        .all(|a| a.state == ApprovalState::Pending));
}

/// The policy, changed with bob's approval; then grants no longer wait.
pub async fn policy(h: &Harness) {
    let before: Policy = h.get("GET /approval-policy", "/approval-policy").await;
    assert!(before.grant_roles);
    let set = PolicySetRequest {
        policy: Policy {
            grant_roles: false,
            ..before
        },
        reason: "fewer approvals".into(),
    };
    let waits: Submitted<Policy> = h
        .post(
            &h.admin,
            "POST /approval-policy",
            "/approval-policy",
            &set,
            StatusCode::ACCEPTED,
        )
        .await;
    let d = h.approve(&pending(waits).id).await;
    assert!(matches!(d.result, Some(ApprovalResult::Policy(ref p)) if !p.grant_roles));

    let added: UserAddAnswer = h
        .post(
            &h.admin,
            "POST /users",
            "/users",
            &UserAddRequest {
                name: "erin".into(),
                role: Role::Viewer,
                password: None,
                reason: String::new(),
            },
            StatusCode::OK,
        )
        .await;
    assert!(added.password.is_some());
    assert_eq!(done(added.outcome).name, "erin");
    let role = UserRoleRequest {
        role: Role::Operator,
        reason: "promoted".into(),
    };
    let changed: Submitted<UserRole> = h
        .post(
            &h.admin,
            "POST /users/{name}/role",
            "/users/erin/role",
            &role,
            StatusCode::OK,
        )
        .await;
    assert_eq!(done(changed).role, Role::Operator);
    let create = TokenCreateRequest {
        name: "deploy".into(),
        role: Role::Operator,
        expires: None,
        reason: String::new(),
    };
    let created: TokenCreateAnswer = h
        .post(&h.admin, "POST /tokens", "/tokens", &create, StatusCode::OK)
        .await;
    assert_eq!(done(created.outcome).expires, None);
}
