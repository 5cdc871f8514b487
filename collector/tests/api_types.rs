//! The admin API's typed requests and answers (`common::api`) against a
//! collector started in-process: every `/api/v1` route is called with the
//! typed request, and every answer (200 done, 202 waiting for approval, 422
//! warnings, refusals) must deserialise into its type, whose response types
//! reject unknown members, and serialise back to exactly the JSON the
//! collector sent. A member the collector adds, drops, renames or turns
//! `null` without the type following fails here.

use collector::auth::{Actor, Role as StoreRole};
use collector::config::Settings;
use collector::store;
use common::api::access::{
    ApiToken, Role, TokenCreateAnswer, TokenCreateRequest, TokenList, UserAddAnswer,
    UserAddRequest, UserList, UserRole, UserRoleRequest, WhoAmI,
};
use common::api::approvals::{
    Approval, ApprovalList, ApprovalResult, ApprovalState, Decision, Policy, PolicySetRequest,
};
use common::api::audit::{AuditEntry, AuditList, VerifyReport};
use common::api::flags::{
    ApplyRequest, Definition, Flag, FlagChange, Revision, RevisionList, SetRequest,
    DEFINITION_WARNINGS,
};
use common::api::fleet::{
    AgentList, AgentState, EnrollTokenCreated, EnrollTokenList, EnrollTokenRequest, EnvironmentList,
};
use common::api::killswitches::{
    DeclareRequest, Declared, KillOutcome, KillRequest, KillSwitchList,
};
use common::api::{ErrorBody, ReasonRequest, Revoked, Submitted};
use reqwest::{Method, StatusCode};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Mutex;

/// Every route of the admin API; the test fails unless it called each.
const ROUTES: &[&str] = &[
    "GET /whoami",
    "GET /environments",
    "GET /agents",
    "GET /agents/enroll-tokens",
    "POST /agents/enroll-tokens",
    "POST /agents/enroll-tokens/{id}/revoke",
    "POST /agents/{id}/revoke",
    "GET /flags",
    "POST /flags/apply",
    "GET /flags/{key}",
    "POST /flags/{key}",
    "GET /revisions",
    "GET /revisions/{revision}",
    "GET /killswitches",
    "POST /killswitches",
    "POST /killswitches/{name}/kill",
    "POST /killswitches/{name}/revive",
    "GET /audit",
    "GET /audit/verify",
    "GET /audit/export",
    "GET /tokens",
    "POST /tokens",
    "POST /tokens/{id}/revoke",
    "GET /users",
    "POST /users",
    "POST /users/{name}/role",
    "GET /approvals",
    "GET /approvals/{id}",
    "POST /approvals/{id}/approve",
    "POST /approvals/{id}/reject",
    "GET /approval-policy",
    "POST /approval-policy",
];

fn definition() -> Value {
    json!({"flags": {"a": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"}}})
}

/// `a`, plus `beta` with an operator flagd does not know (a warning).
fn with_warning() -> Value {
    json!({"flags": {
        "a": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
        "beta": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                 "targeting": {"if": [{"no_such_op": [{"var": "plan"}]}, "on", "off"]}}}})
}

struct Harness {
    _dir: tempfile::TempDir,
    base: String,
    ingest: String,
    http: reqwest::Client,
    running: Option<collector::Running>,
    /// init's admin token (person `admin`)
    admin: String,
    /// bob, a second admin: approves what admin asks
    bob: String,
    /// alice, an operator
    alice: String,
    called: Mutex<BTreeSet<&'static str>>,
}

impl Harness {
    async fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let init = collector::init::init(dir.path()).unwrap();
        let mut settings = Settings::with_data_dir(dir.path()).unwrap();
        settings.ingest_listen = "127.0.0.1:0".parse().unwrap();
        settings.admin_listen = "127.0.0.1:0".parse().unwrap();
        settings.status_listen = "127.0.0.1:0".parse().unwrap();
        settings.approvals = collector::approvals::Policy {
            protected_environments: vec!["prod".into()],
            grant_roles: true,
            expire_after_ms: 24 * 3600 * 1000,
        };
        let running = collector::start(settings).await.unwrap();
        let hash = collector::auth::hash_password("correct-horse-battery").unwrap();
        let (bob, alice) = running
            .ctx
            .store
            .write(move |tx| {
                let sys = Actor::system("system:test");
                let mut tokens = Vec::new();
                for (name, role) in [("bob", StoreRole::Admin), ("alice", StoreRole::Operator)] {
                    store::users::add(tx, &sys, name, role, &hash, "test")?;
                    let me = Actor::user(name, role, "test".into(), String::new());
                    let (_, secret) =
                        store::tokens::create_api_token(tx, &me, name, role, None, "test")?;
                    tokens.push(secret);
                }
                Ok((tokens[0].clone(), tokens[1].clone()))
            })
            .await
            .unwrap();
        Harness {
            _dir: dir,
            base: format!("http://{}/api/v1", running.admin_addr),
            ingest: format!("http://{}", running.ingest_addr),
            http: reqwest::Client::new(),
            running: Some(running),
            admin: init.admin_token,
            bob,
            alice,
            called: Mutex::new(BTreeSet::new()),
        }
    }

    async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown.cancel();
            r.wait().await.unwrap();
        }
    }

    /// Calls `route` (a [`ROUTES`] entry) at `path` and returns the status
    /// and the body as text.
    async fn raw(
        &self,
        token: &str,
        route: &'static str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, String) {
        assert!(ROUTES.contains(&route), "{route} is not in ROUTES");
        self.called.lock().unwrap().insert(route);
        let method = if route.starts_with("POST ") {
            Method::POST
        } else {
            Method::GET
        };
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        (resp.status(), resp.text().await.unwrap())
    }

    /// Calls `route` and checks the answer is `want` and round-trips
    /// through `T` unchanged.
    async fn call<T: DeserializeOwned + Serialize>(
        &self,
        token: &str,
        route: &'static str,
        path: &str,
        body: Option<&dyn erased::Body>,
        want: StatusCode,
    ) -> T {
        let body = body.map(|b| b.to_value());
        let (status, text) = self.raw(token, route, path, body).await;
        assert_eq!(status, want, "{route} ({path}): {text}");
        typed(&format!("{route} ({path})"), &text)
    }

    async fn get<T: DeserializeOwned + Serialize>(&self, route: &'static str, path: &str) -> T {
        self.call(&self.admin, route, path, None, StatusCode::OK)
            .await
    }

    async fn post<T: DeserializeOwned + Serialize>(
        &self,
        token: &str,
        route: &'static str,
        path: &str,
        body: &dyn erased::Body,
        want: StatusCode,
    ) -> T {
        self.call(token, route, path, Some(body), want).await
    }

    /// Approves request `id` as bob.
    async fn approve(&self, id: &str) -> Decision {
        let d: Decision = self
            .post(
                &self.bob,
                "POST /approvals/{id}/approve",
                &format!("/approvals/{id}/approve"),
                &ReasonRequest::default(),
                StatusCode::OK,
            )
            .await;
        assert_eq!(d.approval.state, ApprovalState::Approved);
        d
    }
}

/// Request bodies of any typed request.
mod erased {
    pub trait Body {
        fn to_value(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Body for T {
        fn to_value(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap()
        }
    }
}

/// `text` as `T`, checked to serialise back to the same JSON.
fn typed<T: DeserializeOwned + Serialize>(what: &str, text: &str) -> T {
    let raw: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
    let t: T = serde_json::from_value(raw.clone())
        .unwrap_or_else(|e| panic!("{what}: does not fit its type: {e}\n{raw:#}"));
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(back, raw, "{what}: the type does not round-trip the answer");
    t
}

fn pending<T>(s: Submitted<T>) -> Approval {
    match s {
        Submitted::Pending(p) => {
            assert!(p.pending);
            assert_eq!(p.approval.state, ApprovalState::Pending);
            p.approval
        }
        Submitted::Done(_) => panic!("expected a request waiting for approval"),
    }
}

fn done<T>(s: Submitted<T>) -> T {
    match s {
        Submitted::Done(t) => t,
        Submitted::Pending(p) => panic!("expected done, got pending {}", p.approval.id),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_route_answers_its_type() {
    let h = Harness::start().await;
    let agent = fleet(&h).await;
    flags(&h, &agent).await;
    killswitches(&h).await;
    access(&h).await;
    policy(&h).await;
    revokes(&h, &agent.agent_id).await;
    audit(&h).await;
    refusals(&h).await;
    let called = h.called.lock().unwrap().clone();
    let missed: Vec<_> = ROUTES.iter().filter(|r| !called.contains(*r)).collect();
    assert!(missed.is_empty(), "routes never called: {missed:?}");
    h.stop().await;
}

/// Enrollment tokens, an agent enrolled over the ingest listener, the
/// agent list; returns the agent's id and credential.
async fn fleet(h: &Harness) -> common::wire::EnrollResponse {
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

fn identity() -> common::wire::AgentIdentity {
    common::wire::AgentIdentity {
        service: "web".into(),
        environment: "dev".into(),
        instance: "web-1".into(),
        host: "h1".into(),
        version: "1.0".into(),
        labels: [("zone".to_string(), "a".to_string())].into(),
    }
}

fn apply(env: &str, definition: Value, dry_run: bool, accept_warnings: bool) -> ApplyRequest {
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

async fn flags(h: &Harness, agent: &common::wire::EnrollResponse) {
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

async fn killswitches(h: &Harness) {
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

async fn access(h: &Harness) {
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
async fn policy(h: &Harness) {
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

async fn revokes(h: &Harness, agent_id: &str) {
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

async fn audit(h: &Harness) {
    let all: AuditList = h.get("GET /audit", "/audit").await;
    assert!(all.entries.len() > 10);
    let some: AuditList = h
        .get(
            "GET /audit",
            "/audit?since=1h&until=2999-01-01T00:00:00Z&actor=alice&action=flags.apply&limit=5",
        )
        .await;
    assert!(!some.entries.is_empty() && some.entries.len() <= 5);
    let report: VerifyReport = h.get("GET /audit/verify", "/audit/verify").await;
    assert!(report.ok && report.first_bad_seq.is_none());

    let (status, jsonl) = h
        .raw(&h.admin, "GET /audit/export", "/audit/export", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    for (i, line) in jsonl.lines().enumerate() {
        let _: AuditEntry = typed(&format!("export line {}", i + 1), line);
    }
    let (status, csv) = h
        .raw(
            &h.admin,
            "GET /audit/export",
            "/audit/export?format=csv",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(csv.starts_with("seq,"), "{csv}");
}

/// Refusals answer the error body: unknown token, missing role, unknown
/// flag, approving one's own request, a bad query.
async fn refusals(h: &Harness) {
    let e: ErrorBody = h
        .call(
            "opsp_nope",
            "GET /whoami",
            "/whoami",
            None,
            StatusCode::UNAUTHORIZED,
        )
        .await;
    assert_eq!(e.error.code, "UNAUTHORIZED");
    let e: ErrorBody = h
        .call(
            &h.alice,
            "GET /tokens",
            "/tokens",
            None,
            StatusCode::FORBIDDEN,
        )
        .await;
    assert_eq!(e.error.code, "FORBIDDEN");
    let e: ErrorBody = h
        .call(
            &h.admin,
            "GET /flags/{key}",
            "/flags/zzz?environment=dev",
            None,
            StatusCode::NOT_FOUND,
        )
        .await;
    assert_eq!(e.error.code, "FLAG_NOT_FOUND");
    let e: ErrorBody = h
        .call(
            &h.admin,
            "GET /audit/export",
            "/audit/export?format=xml",
            None,
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert_eq!(e.error.code, "BAD_REQUEST");
    let open: ApprovalList = h.get("GET /approvals", "/approvals?state=pending").await;
    let mine = open
        .approvals
        .iter()
        .find(|a| a.requested_person == "alice")
        .expect("alice's flags set in prod still waits");
    let e: ErrorBody = h
        .post(
            &h.alice,
            "POST /approvals/{id}/approve",
            &format!("/approvals/{}/approve", mine.id),
            &ReasonRequest::default(),
            StatusCode::FORBIDDEN,
        )
        .await;
    assert_eq!(e.error.code, "FORBIDDEN");
}
