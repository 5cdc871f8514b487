//! Flag definitions with warnings (problems flagd loads anyway) through the
//! console and four-eyes approval, against a collector started in-process:
//! the preview lists them with an "apply despite these warnings" checkbox,
//! applying needs it ticked, the approver sees what the requester accepted,
//! and the audit entry records it. Every step here compiles a definition
//! (preview, apply, set, approve); `store::flags::compile` refuses to run
//! anywhere but the blocking pool, so these steps also prove that none of
//! them compiles on the store's writer thread or an async worker.

use collector::approvals::Policy;
use collector::config::Settings;
use collector::kernel::{Actor, Role};
use collector::store;
use reqwest::StatusCode;
use serde_json::{json, Value};

const PASSWORD: &str = "correct-horse-battery";

fn seed_definition() -> Value {
    json!({"flags": {"a": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"}}})
}

/// `a` as seeded, plus `beta` with an operator flagd does not know.
fn with_warning() -> Value {
    json!({"flags": {
        "a": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
        "beta": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                 "targeting": {"if": [{"no_such_op": [{"var": "plan"}]}, "on", "off"]}}}})
}

struct Harness {
    _dir: tempfile::TempDir,
    base: String,
    http: reqwest::Client,
    running: Option<collector::Running>,
    admin_token: String,
    /// alice's own API token (an operator)
    alice_token: String,
}

#[derive(Clone)]
struct Sess {
    cookie: String,
    csrf: String,
}

impl Harness {
    async fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let init = collector::init::init(dir.path()).unwrap();
        let mut settings = Settings::with_data_dir(dir.path()).unwrap();
        settings.ingest_listen = "127.0.0.1:0".parse().unwrap();
        settings.admin_listen = "127.0.0.1:0".parse().unwrap();
        settings.status_listen = "127.0.0.1:0".parse().unwrap();
        settings.approvals = Policy {
            protected_environments: vec!["prod".into()],
            grant_roles: true,
            expire_after_ms: 24 * 3600 * 1000,
        };
        let running = collector::start(settings).await.unwrap();
        let base = format!("http://{}", running.admin_addr);
        let st = running.ctx.store.clone();
        let hash = collector::access::auth::hash_password(PASSWORD).unwrap();
        let seed = store::flags::check_apply(seed_definition()).await.unwrap();
        let alice_token = st
            .write(move |tx| {
                let sys = Actor::system("system:test");
                for name in ["alice", "bob"] {
                    store::users::add(tx, &sys, name, Role::Operator, &hash, "test")?;
                }
                let alice = Actor::user("alice", Role::Operator, "test".into(), String::new());
                let (_, secret) = store::tokens::create_api_token(
                    tx,
                    &alice,
                    "alice-ci",
                    Role::Operator,
                    None,
                    "test",
                )?;
                for env in ["dev", "prod"] {
                    store::flags::apply(tx, &sys, env, &seed, "seed")?;
                }
                Ok(secret)
            })
            .await
            .unwrap();
        Harness {
            _dir: dir,
            base,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            running: Some(running),
            admin_token: init.admin_token,
            alice_token,
        }
    }

    fn store(&self) -> store::Store {
        self.running.as_ref().unwrap().ctx.store.clone()
    }

    async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown.cancel();
            r.wait().await.unwrap();
        }
    }

    async fn login(&self, user: &str) -> Sess {
        let resp = self
            .http
            .post(format!("{}/console/login", self.base))
            .form(&[
                ("username", user),
                ("password", PASSWORD),
                ("next", "/console/"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER, "login {user}");
        let cookie = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix("opsplane_session="))
            .map(|v| v.split(';').next().unwrap_or("").to_string())
            .expect("session cookie");
        let body = self.page(&cookie, "/console/").await.1;
        let i = body.find("name=\"csrf\" value=\"").expect("csrf field") + 19;
        let csrf = body[i..i + body[i..].find('"').unwrap()].to_string();
        Sess { cookie, csrf }
    }

    async fn page(&self, cookie: &str, path: &str) -> (StatusCode, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", format!("opsplane_session={cookie}"))
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    async fn post_form(
        &self,
        s: &Sess,
        path: &str,
        fields: &[(&str, &str)],
    ) -> (StatusCode, String) {
        let mut f: Vec<(&str, &str)> = fields.to_vec();
        f.push(("csrf", &s.csrf));
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", format!("opsplane_session={}", s.cookie))
            .form(&f)
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    async fn api(&self, token: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let url = format!("{}/api/v1{path}", self.base);
        let req = match body {
            Some(b) => self.http.post(url).json(&b),
            None => self.http.get(url),
        };
        let r = req.bearer_auth(token).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn latest(&self, env: &'static str) -> common::wire::Revision {
        self.store()
            .read(move |c| store::flags::latest(c, env))
            .await
            .unwrap()
            .expect("a revision")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_apply_needs_the_warnings_accepted_and_the_approver_sees_them() {
    let h = Harness::start().await;
    let alice = h.login("alice").await;
    let definition = serde_json::to_string_pretty(&with_warning()).unwrap();
    let before = h.latest("prod").await.revision;

    // the preview lists each warning and asks for the checkbox
    let (status, body) = h
        .post_form(
            &alice,
            "/console/flags/preview",
            &[
                ("env", "prod"),
                ("definition", &definition),
                ("reason", "beta"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("id=\"definition-warnings\""), "{body}");
    assert!(
        body.contains("no_such_op") && body.contains("beta"),
        "{body}"
    );
    assert!(body.contains("name=\"accept_warnings\""), "{body}");
    assert!(body.contains("apply despite these warnings"), "{body}");

    // not ticked: refused, listing the warnings, nothing requested
    let (status, body) = h
        .post_form(
            &alice,
            "/console/flags/apply",
            &[
                ("env", "prod"),
                ("definition", &definition),
                ("reason", "beta"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("no_such_op"), "{body}");
    let pending = h
        .store()
        .read(|c| store::approvals::list(c, Some("pending"), 10))
        .await
        .unwrap();
    assert!(pending.is_empty());

    // ticked: prod is protected, so it waits for bob, with the warnings
    let (status, body) = h
        .post_form(
            &alice,
            "/console/flags/apply",
            &[
                ("env", "prod"),
                ("definition", &definition),
                ("reason", "beta"),
                ("accept_warnings", "1"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(
        body.contains("accepted-warnings") && body.contains("no_such_op"),
        "{body}"
    );
    assert_eq!(h.latest("prod").await.revision, before);

    // the API shows the approver what was accepted
    let (_, list) = h.api(&h.admin_token, "/approvals", None).await;
    let a = &list["approvals"][0];
    let id = a["id"].as_str().expect("a pending request").to_string();
    let accepted = a["accepted_warnings"]
        .as_array()
        .expect("accepted_warnings");
    assert_eq!(accepted.len(), 1, "{a}");
    assert!(accepted[0].as_str().unwrap().contains("no_such_op"));
    let (_, one) = h
        .api(&h.admin_token, &format!("/approvals/{id}"), None)
        .await;
    assert_eq!(one["accepted_warnings"], a["accepted_warnings"]);

    // and so does the console's approvals page; bob approves there
    let bob = h.login("bob").await;
    let (_, page) = h.page(&bob.cookie, "/console/approvals").await;
    assert!(
        page.contains("accepted-warnings") && page.contains("no_such_op"),
        "{page}"
    );
    let (status, body) = h
        .post_form(
            &bob,
            &format!("/console/approvals/{id}/approve"),
            &[("reason", "ok")],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let now = h.latest("prod").await;
    assert!(now.revision > before);
    assert!(now.flags["flags"].get("beta").is_some());

    // the audit entry of the change records the accepted warnings
    let entries = h
        .store()
        .read(|c| {
            store::audit::list(
                c,
                &store::audit::Filter {
                    action: Some("flags.apply".into()),
                    limit: Some(1),
                    ..Default::default()
                },
            )
        })
        .await
        .unwrap();
    let recorded = entries[0]
        .diff
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["path"] == "/accepted_warnings")
        .cloned()
        .unwrap_or_else(|| panic!("no accepted_warnings in {:?}", entries[0].diff));
    assert_eq!(recorded["after"], json!(accepted));

    // flags set on the flag with warnings: those were accepted already
    let (status, body) = h
        .post_form(
            &bob,
            "/console/flags/set",
            &[
                ("env", "dev"),
                ("key", "a"),
                ("state", "DISABLED"),
                ("reason", "x"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_apply_set_and_dry_run_with_warnings() {
    let h = Harness::start().await;
    // dev is not protected: applied at once when accepted
    let (status, v) = h
        .api(
            &h.alice_token,
            "/flags/apply",
            Some(json!({"environment": "dev", "definition": with_warning(), "reason": "r"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["code"], "DEFINITION_WARNINGS");
    assert_eq!(v["error"]["warnings"].as_array().map(Vec::len), Some(1));

    let (status, v) = h
        .api(
            &h.alice_token,
            "/flags/apply",
            Some(json!({"environment": "dev", "definition": with_warning(), "dry_run": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["changed"], true);
    assert_eq!(v["warnings"].as_array().map(Vec::len), Some(1));

    let (status, v) = h
        .api(
            &h.alice_token,
            "/flags/apply",
            Some(json!({"environment": "dev", "definition": with_warning(), "reason": "r", "accept_warnings": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["warnings"].as_array().map(Vec::len), Some(1));

    // a set on the flag that has the warning keeps it without asking
    let (status, v) = h
        .api(
            &h.alice_token,
            "/flags/beta",
            Some(json!({"environment": "dev", "state": "DISABLED", "reason": "off"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["changed"], true);

    // prod is protected: the pending answer carries the accepted warnings
    let (status, v) = h
        .api(
            &h.alice_token,
            "/flags/apply",
            Some(json!({"environment": "prod", "definition": with_warning(), "reason": "r", "accept_warnings": true})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(
        v["approval"]["accepted_warnings"].as_array().map(Vec::len),
        Some(1),
        "{v}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_refuses_warnings_the_request_did_not_accept() {
    let h = Harness::start().await;
    let before = h.latest("prod").await.revision;
    let (status, v) = h
        .api(
            &h.alice_token,
            "/flags/apply",
            Some(json!({"environment": "prod", "definition": with_warning(), "reason": "r", "accept_warnings": true})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let id = v["approval"]["id"].as_str().unwrap().to_string();
    // a request recorded without the acceptance (as one made before the
    // definition gained its warning would be)
    h.store()
        .write(|tx| {
            tx.execute(
                "UPDATE approvals SET payload = json_remove(payload, '$.accepted_warnings')",
                [],
            )?;
            Ok(())
        })
        .await
        .unwrap();
    let bob = h.login("bob").await;
    let (status, body) = h
        .post_form(
            &bob,
            &format!("/console/approvals/{id}/approve"),
            &[("reason", "ok")],
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body.contains("did not accept") && body.contains("no_such_op"),
        "{body}"
    );
    assert_eq!(h.latest("prod").await.revision, before);
    let still = h
        .store()
        .read(move |c| store::approvals::get(c, &id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(still.state, "pending");
    h.stop().await;
}
