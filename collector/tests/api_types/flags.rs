//! Flags (apply, set, revisions, approval of a protected change) and kill switches.

use crate::fleet::identity;
use crate::harness::{definition, done, pending, with_warning, Harness};
use common::api::approvals::{Approval, ApprovalResult, ApprovalState, Decision};
use common::api::flags::{
    ApplyRequest, Definition, Flag, FlagChange, Revision, RevisionList, SetRequest,
    DEFINITION_WARNINGS,
};
use common::api::fleet::AgentList;
use common::api::killswitches::{
    DeclareRequest, Declared, KillOutcome, KillRequest, KillSwitchList,
};
use common::api::{ErrorBody, ReasonRequest, Submitted};
use reqwest::StatusCode;
use serde_json::Value;

pub fn apply(env: &str, definition: Value, dry_run: bool, accept_warnings: bool) -> ApplyRequest {
    ApplyRequest {
        environment: env.into(),
        definition,
        reason: if dry_run {
            String::new()
        } else {
            "test".into()
        },
        dry_run,
        accept_warnings,
    }
}

pub async fn flags(h: &Harness, agent: &common::wire::EnrollResponse) {
    let empty: Definition = h.get("GET /flags", "/flags?environment=dev").await;
    assert_eq!(empty.revision, None);

    let (route, path) = ("POST /flags/apply", "/flags/apply");
    let preview: FlagChange = h
        .post(
            &h.alice,
            route,
            path,
            &apply("dev", definition(), true, false),
            StatusCode::OK,
        )
        .await;
    assert!(preview.changed && !preview.diff_text.is_empty());
    let applied: Submitted<FlagChange> = h
        .post(
            &h.alice,
            route,
            path,
            &apply("dev", definition(), false, false),
            StatusCode::OK,
        )
        .await;
    let rev = done(applied).revision.unwrap();
    let refused: ErrorBody = h
        .post(
            &h.alice,
            route,
            path,
            &apply("dev", with_warning(), false, false),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    assert_eq!(refused.error.code, DEFINITION_WARNINGS);
    assert!(!refused.error.warnings.is_empty());
    let warned: FlagChange = h
        .post(
            &h.alice,
            route,
            path,
            &apply("dev", with_warning(), true, false),
            StatusCode::OK,
        )
        .await;
    assert!(!warned.warnings.is_empty());

    let all: Definition = h.get("GET /flags", "/flags?environment=dev").await;
    assert_eq!(all.revision, Some(rev));
    let one: Flag = h.get("GET /flags/{key}", "/flags/a?environment=dev").await;
    assert_eq!(one.flag["defaultVariant"], "on");
    let set = |env: &str| SetRequest {
        environment: env.into(),
        state: Some("DISABLED".into()),
        default_variant: None,
        reason: "test".into(),
    };
    let changed: Submitted<FlagChange> = h
        .post(
            &h.alice,
            "POST /flags/{key}",
            "/flags/a",
            &set("dev"),
            StatusCode::OK,
        )
        .await;
    assert!(done(changed).changed);

    // prod is protected: alice's changes wait; bob approves the apply
    let waits: Submitted<FlagChange> = h
        .post(
            &h.alice,
            route,
            path,
            &apply("prod", definition(), false, false),
            StatusCode::ACCEPTED,
        )
        .await;
    let request = pending(waits);
    assert!(request.accepted_warnings.is_empty());
    let decided = h.approve(&request.id).await;
    assert!(matches!(decided.result, Some(ApprovalResult::Flags(ref c)) if c.changed));
    let waits: Submitted<FlagChange> = h
        .post(
            &h.alice,
            "POST /flags/{key}",
            "/flags/a",
            &set("prod"),
            StatusCode::ACCEPTED,
        )
        .await;
    pending(waits);
    let waits: Submitted<FlagChange> = h
        .post(
            &h.alice,
            route,
            path,
            &apply("prod", with_warning(), false, true),
            StatusCode::ACCEPTED,
        )
        .await;
    let accepted = pending(waits);
    assert!(!accepted.accepted_warnings.is_empty());
    let shown: Approval = h
        .get(
            "GET /approvals/{id}",
            &format!("/approvals/{}", accepted.id),
        )
        .await;
    assert_eq!(shown.accepted_warnings, accepted.accepted_warnings);
    // withdrawn by the requester: the answer has no result
    let rejected: Decision = h
        .post(
            &h.alice,
            "POST /approvals/{id}/reject",
            &format!("/approvals/{}/reject", accepted.id),
            &ReasonRequest {
                reason: "withdrawn".into(),
            },
            StatusCode::OK,
        )
        .await;
    assert_eq!(rejected.approval.state, ApprovalState::Rejected);
    assert!(rejected.result.is_none());

    let history: RevisionList = h
        .get("GET /revisions", "/revisions?environment=dev&limit=10")
        .await;
    assert!(history.revisions.len() >= 2);
    let whole: Revision = h
        .get("GET /revisions/{revision}", &format!("/revisions/{rev}"))
        .await;
    assert_eq!(whole.environment, "dev");

    // the agent reports the first revision: later kill states lag on it
    let hb = common::wire::Heartbeat {
        identity: identity(),
        revision: Some(rev),
        killswitches: vec!["checkout".into()],
        uptime_s: 1,
        flag_source: "collector".into(),
    };
    let resp = h
        .http
        .post(format!("{}{}", h.ingest, common::wire::PATH_HEARTBEAT))
        .bearer_auth(&agent.credential)
        .json(&hb)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let agents: AgentList = h.get("GET /agents", "/agents").await;
    assert_eq!(agents.agents[0].applied_revision, Some(rev));
    assert_eq!(agents.agents[0].killswitches, ["checkout"]);
}

pub async fn killswitches(h: &Harness) {
    let declared: Declared = h
        .post(
            &h.alice,
            "POST /killswitches",
            "/killswitches",
            &DeclareRequest {
                name: "payments".into(),
                description: "card payments".into(),
            },
            StatusCode::OK,
        )
        .await;
    assert!(declared.created);
    let req = |service: Option<&str>| KillRequest {
        environment: "dev".into(),
        service: service.map(Into::into),
        reason: "incident".into(),
    };
    let (kill, revive) = (
        "POST /killswitches/{name}/kill",
        "POST /killswitches/{name}/revive",
    );
    let killed: KillOutcome = h
        .post(
            &h.alice,
            kill,
            "/killswitches/payments/kill",
            &req(None),
            StatusCode::OK,
        )
        .await;
    assert!(killed.changed && killed.state.killed && killed.revision.is_some());
    let again: KillOutcome = h
        .post(
            &h.alice,
            kill,
            "/killswitches/payments/kill",
            &req(None),
            StatusCode::OK,
        )
        .await;
    assert!(!again.changed);
    let scoped: KillOutcome = h
        .post(
            &h.alice,
            kill,
            "/killswitches/payments/kill",
            &req(Some("web")),
            StatusCode::OK,
        )
        .await;
    assert_eq!(scoped.state.service.as_deref(), Some("web"));
    let revived: KillOutcome = h
        .post(
            &h.alice,
            revive,
            "/killswitches/payments/revive",
            &req(None),
            StatusCode::OK,
        )
        .await;
    assert!(!revived.state.killed);

    let list: KillSwitchList = h
        .get("GET /killswitches", "/killswitches?environment=dev")
        .await;
    assert!(list.killswitches.len() >= 2, "{list:?}");
    // the agent never applied these states
    assert!(list.killswitches.iter().any(|k| !k.lagging.is_empty()));
}
