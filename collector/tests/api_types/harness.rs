//! The collector under test, its callers, and the round-trip check.

use collector::auth::{Actor, Role as StoreRole};
use collector::config::Settings;
use collector::store;
use common::api::approvals::{Approval, ApprovalState, Decision};
use common::api::{ReasonRequest, Submitted};
use reqwest::{Method, StatusCode};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::ROUTES;

pub fn definition() -> Value {
    json!({"flags": {"a": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"}}})
}

/// `a`, plus `beta` with an operator flagd does not know (a warning).
pub fn with_warning() -> Value {
    json!({"flags": {
        "a": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
        "beta": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                 "targeting": {"if": [{"no_such_op": [{"var": "plan"}]}, "on", "off"]}}}})
}

pub struct Harness {
    _dir: tempfile::TempDir,
    base: String,
    pub ingest: String,
    pub http: reqwest::Client,
    running: Option<collector::Running>,
    /// init's admin token (person `admin`)
    pub admin: String,
    /// bob, a second admin: approves what admin asks
    pub bob: String,
    /// alice, an operator
    pub alice: String,
    pub called: Mutex<BTreeSet<&'static str>>,
}

impl Harness {
    pub async fn start() -> Harness {
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

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown.cancel();
            r.wait().await.unwrap();
        }
    }

    /// Calls `route` (a [`ROUTES`] entry) at `path` and returns the status
    /// and the body as text.
    pub async fn raw(
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
    pub async fn call<T: DeserializeOwned + Serialize>(
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

    pub async fn get<T: DeserializeOwned + Serialize>(&self, route: &'static str, path: &str) -> T {
        self.call(&self.admin, route, path, None, StatusCode::OK)
            .await
    }

    pub async fn post<T: DeserializeOwned + Serialize>(
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
    pub async fn approve(&self, id: &str) -> Decision {
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
pub mod erased {
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
pub fn typed<T: DeserializeOwned + Serialize>(what: &str, text: &str) -> T {
    let raw: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
    let t: T = serde_json::from_value(raw.clone())
        .unwrap_or_else(|e| panic!("{what}: does not fit its type: {e}\n{raw:#}"));
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(back, raw, "{what}: the type does not round-trip the answer");
    t
}

pub fn pending<T>(s: Submitted<T>) -> Approval {
    match s {
        Submitted::Pending(p) => {
            assert!(p.pending);
            assert_eq!(p.approval.state, ApprovalState::Pending);
            p.approval
        }
        Submitted::Done(_) => panic!("expected a request waiting for approval"),
    }
}

pub fn done<T>(s: Submitted<T>) -> T {
    match s {
        Submitted::Done(t) => t,
        Submitted::Pending(p) => panic!("expected done, got pending {}", p.approval.id),
    }
}
