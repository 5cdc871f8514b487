//! Fleet: enrollment tokens, an agent enrolled over the ingest listener, revokes.

use crate::harness::Harness;
use common::api::access::{ApiToken, Role, TokenList, WhoAmI};
use common::api::fleet::{
    AgentList, AgentState, EnrollTokenCreated, EnrollTokenList, EnrollTokenRequest, EnvironmentList,
};
use common::api::{ReasonRequest, Revoked};
use reqwest::StatusCode;

/// Enrollment tokens, an agent enrolled over the ingest listener, the
/// agent list; returns the agent's id and credential.
pub async fn fleet(h: &Harness) -> common::wire::EnrollResponse {
    let me: WhoAmI = h.get("GET /whoami", "/whoami").await;
    assert_eq!((me.role, me.person.as_str()), (Role::Admin, "admin"));
    assert!(me.token_id.is_some());

    let created: EnrollTokenCreated = h
        .post(
            &h.admin,
            "POST /agents/enroll-tokens",
            "/agents/enroll-tokens",
            &EnrollTokenRequest {
                environment: "dev".into(),
                service: "web".into(),
                expires: None,
                uses: Some(2),
            },
            StatusCode::OK,
        )
        .await;
    assert_eq!(created.uses, Some(2));
    let list: EnrollTokenList = h
        .get("GET /agents/enroll-tokens", "/agents/enroll-tokens")
        .await;
    assert_eq!(list.enroll_tokens.len(), 1);

    let enrolled: common::wire::EnrollResponse = h
        .http
        .post(format!("{}{}", h.ingest, common::wire::PATH_ENROLL))
        .json(&common::wire::EnrollRequest {
            token: created.token,
            identity: identity(),
        })
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let envs: EnvironmentList = h.get("GET /environments", "/environments").await;
    assert_eq!(envs.environments, ["dev"]);
    let agents: AgentList = h
        .get("GET /agents", "/agents?environment=dev&service=web")
        .await;
    assert_eq!(agents.agents.len(), 1);
    assert_eq!(agents.agents[0].labels["zone"], "a");
    assert_ne!(agents.agents[0].state, AgentState::Revoked);
    let none: AgentList = h.get("GET /agents", "/agents?environment=nope").await;
    assert!(none.agents.is_empty());
    enrolled
}

pub fn identity() -> common::wire::AgentIdentity {
    common::wire::AgentIdentity {
        service: "web".into(),
        environment: "dev".into(),
        instance: "web-1".into(),
        host: "h1".into(),
        version: "1.0".into(),
        labels: [("zone".to_string(), "a".to_string())].into(),
    }
}

pub async fn revokes(h: &Harness, agent_id: &str) {
    let reason = ReasonRequest {
        reason: "test".into(),
    };
    let tokens: TokenList = h.get("GET /tokens", "/tokens").await;
    let ci: &ApiToken = tokens.tokens.iter().find(|t| t.name == "ci").unwrap();
    let r: Revoked = h
        .post(
            &h.admin,
            "POST /tokens/{id}/revoke",
            &format!("/tokens/{}/revoke", ci.id),
            &reason,
            StatusCode::OK,
        )
        .await;
    assert!(r.revoked);
    let tokens: TokenList = h.get("GET /tokens", "/tokens").await;
    assert!(tokens.tokens.iter().any(|t| t.revoked.is_some()));

    let list: EnrollTokenList = h
        .get("GET /agents/enroll-tokens", "/agents/enroll-tokens")
        .await;
    let id = &list.enroll_tokens[0].id;
    let _: Revoked = h
        .post(
            &h.admin,
            "POST /agents/enroll-tokens/{id}/revoke",
            &format!("/agents/enroll-tokens/{id}/revoke"),
            &reason,
            StatusCode::OK,
        )
        .await;
    let _: Revoked = h
        .post(
            &h.admin,
            "POST /agents/{id}/revoke",
            &format!("/agents/{agent_id}/revoke"),
            &reason,
            StatusCode::OK,
        )
        .await;
    let agents: AgentList = h.get("GET /agents", "/agents").await;
    assert_eq!(agents.agents[0].state, AgentState::Revoked);
    let list: EnrollTokenList = h
        .get("GET /agents/enroll-tokens", "/agents/enroll-tokens")
        .await;
    assert!(list.enroll_tokens[0].revoked.is_some());
}
