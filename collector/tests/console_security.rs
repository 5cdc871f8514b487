//! Security properties of the admin plane, against a collector started
//! in-process: every declared route (JSON API and console) with every role,
//! CSRF, sessions (renewal, logout, timeouts, throttling), four-eyes
//! invariants, and the admin listener's refusal to bind non-loopback.

use collector::approvals::Policy;
use collector::config::{AdminSettings, Settings};
use collector::kernel::{Actor, Role, Route};
use collector::store;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashMap;

const PASSWORD: &str = "correct-horse-battery";

struct Harness {
    _dir: tempfile::TempDir,
    base: String,
    http: reqwest::Client,
    running: Option<collector::Running>,
    /// the init admin's API token (actor name "admin")
    admin_token: String,
    tokens: HashMap<Role, String>,
    sessions: HashMap<Role, Sess>,
}

#[derive(Clone)]
struct Sess {
    cookie: String,
    csrf: String,
}

fn settings(dir: &std::path::Path, idle_ms: i64, absolute_ms: i64) -> Settings {
    Settings {
        data_dir: dir.to_path_buf(),
        ingest_listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        status_listen: "127.0.0.1:0".parse().unwrap(),
        ingest_tls: None,
        listeners: Default::default(),
        admin: AdminSettings {
            allow_insecure_remote: false,
            secure_cookie: false,
            session_idle_timeout_ms: idle_ms,
            session_absolute_timeout_ms: absolute_ms,
        },
        approvals: Policy {
            protected_environments: vec!["prod".into()],
            grant_roles: true,
            expire_after_ms: 24 * 3600 * 1000,
        },
    }
}

fn user_name(r: Role) -> String {
    format!("u-{}", r.as_str())
}

impl Harness {
    async fn start(idle_ms: i64) -> Harness {
        Self::start_with(idle_ms, 8 * 3600 * 1000).await
    }

    async fn start_with(idle_ms: i64, absolute_ms: i64) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let init = collector::init::init(dir.path()).unwrap();
        let running = collector::start(settings(dir.path(), idle_ms, absolute_ms))
            .await
            .unwrap();
        let base = format!("http://{}", running.admin_addr);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("console-security-test")
            .build()
            .unwrap();
        let st = running.ctx.store.clone();
        let mut tokens = HashMap::new();
        for r in Role::ALL {
            let hash = collector::access::auth::hash_password(PASSWORD).unwrap();
            let t = st
                .write(move |tx| {
                    let a = Actor::system("system:test");
                    store::users::add(tx, &a, &user_name(r), r, &hash, "test")?;
                    // each user's token, owned by that user
                    let owner = Actor::user(&user_name(r), r, "t".into(), "t".into());
                    let (_, secret) = store::tokens::create_api_token(
                        tx,
                        &owner,
                        &format!("t-{}", r.as_str()),
                        r,
                        None,
                        "test",
                    )?;
                    Ok(secret)
                })
                .await
                .unwrap();
            tokens.insert(r, t);
        }
        let def = json!({"flags": {"f1": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"}}});
        let def = store::flags::check_apply(def).await.unwrap();
        st.write(move |tx| {
            let a = Actor::system("system:test");
            store::killswitches::declare(tx, &a, "ks1", "test switch")?;
            store::flags::apply(tx, &a, "dev", &def, "seed")?;
            store::flags::apply(tx, &a, "prod", &def, "seed")?;
            Ok(())
        })
        .await
        .unwrap();
        let mut h = Harness {
            _dir: dir,
            base,
            http,
            running: Some(running),
            admin_token: init.admin_token,
            tokens,
            sessions: HashMap::new(),
        };
        for r in Role::ALL {
            let s = h.login(&user_name(r), PASSWORD).await.expect("login");
            h.sessions.insert(r, s);
        }
        h
    }

    fn ctx(&self) -> &collector::Ctx {
        &self.running.as_ref().unwrap().ctx
    }

    async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown.cancel();
            r.wait().await.unwrap();
        }
    }

    /// Signs in; `None` when refused.
    async fn login(&self, user: &str, password: &str) -> Option<Sess> {
        let resp = self.login_raw(user, password).await;
        if resp.status() != StatusCode::SEE_OTHER {
            return None;
        }
        let cookie = set_cookie(&resp)?;
        let csrf = self.csrf(&cookie).await;
        Some(Sess { cookie, csrf })
    }

    async fn login_raw(&self, user: &str, password: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/console/login", self.base))
            .form(&[
                ("username", user),
                ("password", password),
                ("next", "/console/"),
            ])
            .send()
            .await
            .unwrap()
    }

    async fn csrf(&self, cookie: &str) -> String {
        let body = self.get_page(cookie, "/console/").await.1;
        let i = body.find("name=\"csrf\" value=\"").expect("csrf field") + 19;
        body[i..i + body[i..].find('"').unwrap()].to_string()
    }

    async fn get_page(&self, cookie: &str, path: &str) -> (StatusCode, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", format!("opsplane_session={cookie}"))
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    async fn console_post(
        &self,
        s: &Sess,
        path: &str,
        fields: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut f: Vec<(&str, &str)> = fields.to_vec();
        f.push(("csrf", &s.csrf));
        self.http
            .post(format!("{}{path}", self.base))
            .header("cookie", format!("opsplane_session={}", s.cookie))
            .form(&f)
            .send()
            .await
            .unwrap()
    }

    async fn api(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    async fn api_post(&self, token: &str, path: &str, body: Value) -> reqwest::Response {
        self.api(token, reqwest::Method::POST, path, Some(body))
            .await
    }

    /// A pending request to change a prod flag, made by the init admin.
    async fn pending_flag_request(&self) -> String {
        // alternate the state so every request changes something
        let st = self.ctx().store.clone();
        let cur = st
            .read(|c| store::flags::latest(c, "prod"))
            .await
            .unwrap()
            .unwrap()
            .flags["flags"]["f1"]["state"]
            .as_str()
            .unwrap()
            .to_string();
        let next = if cur == "ENABLED" {
            "DISABLED"
        } else {
            "ENABLED"
        };
        let r = self
            .api_post(
                &self.admin_token,
                "/flags/f1",
                json!({"environment": "prod", "state": next, "reason": "test"}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let v: Value = r.json().await.unwrap();
        v["approval"]["id"].as_str().unwrap().to_string()
    }

    async fn new_agent(&self, n: usize) -> String {
        let st = self.ctx().store.clone();
        st.write(move |tx| {
            let a = Actor::system("system:test");
            let (t, _) = store::tokens::create_enroll_token(tx, &a, "dev", "web", None, 1)?;
            let id = common::wire::AgentIdentity {
                service: "web".into(),
                environment: "dev".into(),
                instance: format!("web-{n}"),
                host: "host".into(),
                version: "1".into(),
                labels: Default::default(),
            };
            Ok(store::agents::enroll(tx, &t.id, &id)?
                .expect("a fresh token")
                .0)
        })
        .await
        .unwrap()
    }

    async fn new_enroll_token(&self) -> String {
        let st = self.ctx().store.clone();
        st.write(move |tx| {
            let a = Actor::system("system:test");
            Ok(
                store::tokens::create_enroll_token(tx, &a, "dev", "web", None, 1)?
                    .0
                    .id,
            )
        })
        .await
        .unwrap()
    }

    async fn new_api_token(&self, n: usize) -> String {
        let st = self.ctx().store.clone();
        st.write(move |tx| {
            let (t, _) = store::tokens::create_api_token(
                tx,
                &Actor::system("system:test"),
                &format!("spare-{n}"),
                Role::Viewer,
                None,
                "",
            )?;
            Ok(t.id)
        })
        .await
        .unwrap()
    }
}

fn set_cookie(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("opsplane_session="))
        .map(|v| v.split(';').next().unwrap_or("").to_string())
        .filter(|v| !v.is_empty())
}

/// A pending request made by `role`'s own person (as if they had had the
/// role it needs when asking): anyone may withdraw their own request.
async fn own_request(h: &Harness, role: Role, n: usize) -> String {
    let st = h.ctx().store.clone();
    st.write(move |tx| {
        let me = Actor::user(&user_name(role), role, "t".into(), "t".into());
        let op = collector::approvals::Op::flag_set(
            "prod".into(),
            "f1".into(),
            Some("DISABLED".into()),
            None,
        );
        let payload = serde_json::to_value(&op).unwrap();
        let a = store::approvals::create(
            tx,
            &me,
            op.action(),
            &format!("{}-{n}", op.target()),
            &payload,
            &json!([]),
            "mine",
            common::time::now_ms() + 3_600_000,
        )?;
        Ok(a.id)
    })
    .await
    .unwrap()
}

/// One request to route `r` as `role` (attempt `n`): the fixture every
/// declared route needs. A route without one fails the matrix, so a new
/// route cannot go untested.
async fn call(h: &Harness, r: &Route, role: Role, n: usize) -> reqwest::Response {
    let tok = h.tokens[&role].clone();
    let s = h.sessions[&role].clone();
    let def = json!({"flags": {"f1": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": if n.is_multiple_of(2) { "on" } else { "off" }}}});
    let def_text = def.to_string();
    let uname = format!("new-{}-{n}", role.as_str());
    let api = |p: &str| p.strip_prefix("/api/v1").unwrap().to_string();
    match (r.method.as_str(), r.path) {
        ("POST", "/api/v1/agents/enroll-tokens") => h.api_post(&tok, &api(r.path), json!({"environment": "dev", "service": "web"})).await,
        ("POST", "/api/v1/agents/enroll-tokens/{id}/revoke") => {
            let id = h.new_enroll_token().await;
            h.api_post(&tok, &format!("/agents/enroll-tokens/{id}/revoke"), json!({"reason": "t"})).await
        }
        ("POST", "/api/v1/agents/{id}/revoke") => {
            let id = h.new_agent(n).await;
            h.api_post(&tok, &format!("/agents/{id}/revoke"), json!({"reason": "t"})).await
        }
        ("POST", "/api/v1/flags/apply") => h.api_post(&tok, "/flags/apply", json!({"environment": "dev", "definition": def, "reason": "t"})).await,
        ("POST", "/api/v1/flags/{key}") => h.api_post(&tok, "/flags/f1", json!({"environment": "dev", "state": "DISABLED", "reason": "t"})).await,
        ("POST", "/api/v1/killswitches") => h.api_post(&tok, "/killswitches", json!({"name": format!("decl-{n}"), "description": "d"})).await,
        ("POST", "/api/v1/killswitches/{name}/kill") => h.api_post(&tok, "/killswitches/ks1/kill", json!({"environment": "dev", "reason": "t"})).await,
        ("POST", "/api/v1/killswitches/{name}/revive") => h.api_post(&tok, "/killswitches/ks1/revive", json!({"environment": "dev", "reason": "t"})).await,
        ("POST", "/api/v1/tokens") => h.api_post(&tok, "/tokens", json!({"name": uname, "role": "viewer"})).await,
        ("POST", "/api/v1/tokens/{id}/revoke") => {
            let id = h.new_api_token(n).await;
            h.api_post(&tok, &format!("/tokens/{id}/revoke"), json!({"reason": "t"})).await
        }
        ("POST", "/api/v1/users") => h.api_post(&tok, "/users", json!({"name": uname, "role": "viewer"})).await,
        ("POST", "/api/v1/users/{name}/role") => h.api_post(&tok, "/users/u-viewer/role", json!({"role": "responder", "reason": "t"})).await,
        ("POST", "/api/v1/approvals/{id}/approve") => {
            let id = h.pending_flag_request().await;
            h.api_post(&tok, &format!("/approvals/{id}/approve"), json!({"reason": "ok"})).await
        }
        ("POST", "/api/v1/approvals/{id}/reject") => {
            let id = own_request(h, role, n).await;
            h.api_post(&tok, &format!("/approvals/{id}/reject"), json!({"reason": "no"})).await
        }
        ("POST", "/api/v1/approval-policy") => {
            h.api_post(&tok, "/approval-policy", json!({"protected_environments": ["prod"], "grant_roles": true, "expire_after_ms": 86400000, "reason": "t"}))
                .await
        }
        ("GET", "/api/v1/approvals/{id}") => {
            let id = h.pending_flag_request().await;
            h.api(&tok, reqwest::Method::GET, &format!("/approvals/{id}"), None).await
        }
        ("GET", p) if p.starts_with("/api/v1/") => {
            let path = api(p).replace("{key}", "f1").replace("{revision}", "1");
            h.api(&tok, reqwest::Method::GET, &format!("{path}?environment=dev"), None).await
        }
        ("POST", "/console/agents/{id}/revoke") => {
            let id = h.new_agent(n + 1000).await;
            h.console_post(&s, &format!("/console/agents/{id}/revoke"), &[("reason", "t")]).await
        }
        ("POST", "/console/flags/set") => {
            h.console_post(&s, r.path, &[("env", "dev"), ("key", "f1"), ("state", "ENABLED"), ("default_variant", "on"), ("reason", "t")])
                .await
        }
        ("POST", "/console/flags/preview" | "/console/flags/apply") => {
            h.console_post(&s, r.path, &[("env", "dev"), ("definition", &def_text), ("reason", "t")]).await
        }
        ("POST", "/console/killswitches/kill" | "/console/killswitches/revive") => {
            h.console_post(&s, r.path, &[("env", "dev"), ("name", "ks1"), ("reason", "t")]).await
        }
        ("POST", "/console/approvals/{id}/approve") => {
            let id = h.pending_flag_request().await;
            h.console_post(&s, &format!("/console/approvals/{id}/approve"), &[("reason", "ok")]).await
        }
        ("POST", "/console/approvals/{id}/reject") => {
            let id = own_request(h, role, n + 1000).await;
            h.console_post(&s, &format!("/console/approvals/{id}/reject"), &[("reason", "no")]).await
        }
        ("POST", "/console/users") => h.console_post(&s, r.path, &[("name", &format!("c{uname}")), ("role", "viewer")]).await,
        ("POST", "/console/users/{name}/role") => {
            h.console_post(&s, "/console/users/u-viewer/role", &[("role", "responder"), ("reason", "t")]).await
        }
        ("POST", "/console/tokens") => h.console_post(&s, r.path, &[("name", &format!("c{uname}")), ("role", "viewer")]).await,
        ("POST", "/console/tokens/{id}/revoke") => {
            let id = h.new_api_token(n + 1000).await;
            h.console_post(&s, &format!("/console/tokens/{id}/revoke"), &[("reason", "t")]).await
        }
        ("POST", "/console/policy") => {
            h.console_post(&s, r.path, &[("protected_environments", "prod"), ("grant_roles", "on"), ("expire_after", "24h"), ("reason", "t")])
                .await
        }
        ("POST", "/console/login") => h.login_raw(&user_name(role), PASSWORD).await,
        ("POST", "/console/logout") => {
            // a session of its own: the harness's stay signed in
            let own = h.login(&user_name(role), PASSWORD).await.expect("login");
            h.console_post(&own, r.path, &[]).await
        }
        ("GET", p) if p == "/" || p.starts_with("/console") => {
            let query = match p {
                "/console/flags/diff" => "?env=dev&a=1&b=2",
                "/console/killswitches/confirm" => "?env=dev&name=ks1&action=kill",
                "/console/audit/export" => "?format=csv",
                _ => "?env=dev",
            };
            h.http
                .get(format!("{}{p}{query}", h.base))
                .header("cookie", format!("opsplane_session={}", s.cookie))
                .send()
                .await
                .unwrap()
        }
        ("GET", p) => h.http.get(format!("{}{p}", h.base)).send().await.unwrap(),
        _ => panic!("no request for {}: add one to the role matrix", r.name()),
    }
}

/// Every route the admin listener declares (`collector::routes::all`, the
/// table the router is built from, so the matrix cannot miss a route), of
/// every method, with every role: below the declared minimum 403; at or
/// above it 200 or 303, or 202 where the route is declared approvable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_with_every_role() {
    let h = Harness::start(15 * 60 * 1000).await;
    let mut failures = Vec::new();
    let mut n = 0;
    let routes = collector::routes::all();
    assert!(routes.len() > 60, "{} routes declared", routes.len());
    for r in &routes {
        for role in Role::ALL {
            n += 1;
            let status = call(&h, r, role, n).await.status();
            let allowed = r.role().is_none_or(|needed| role.allows(needed));
            let ok = if allowed {
                status == StatusCode::OK
                    || status == StatusCode::SEE_OTHER
                    || (r.approvable && status == StatusCode::ACCEPTED)
            } else {
                status == StatusCode::FORBIDDEN
            };
            if !ok {
                failures.push(format!(
                    "{} as {}: got {status}, expected {}",
                    r.name(),
                    role.as_str(),
                    if allowed {
                        "200/303 (202 if approvable)"
                    } else {
                        "403"
                    }
                ));
            }
        }
    }
    // deciding on another person's request needs the operation's role,
    // beyond the route's minimum (which lets anyone withdraw their own)
    for role in [Role::Viewer, Role::Responder] {
        let id = h.pending_flag_request().await;
        let r = h
            .api_post(
                &h.tokens[&role],
                &format!("/approvals/{id}/reject"),
                json!({"reason": "no"}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{}", role.as_str());
        let r = h
            .console_post(
                &h.sessions[&role],
                &format!("/console/approvals/{id}/reject"),
                &[("reason", "no")],
            )
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{}", role.as_str());
    }
    assert!(
        failures.is_empty(),
        "role matrix failures:\n{}",
        failures.join("\n")
    );
    h.stop().await;
}

/// The roles the contract gives the mutating routes (and the admin-only
/// reads), written out independently of the route tables: the matrix above
/// proves the tables are enforced, this that they say what they must.
const CONTRACT: &[(&str, Role)] = &[
    ("POST /api/v1/agents/enroll-tokens", Role::Operator),
    (
        "POST /api/v1/agents/enroll-tokens/{id}/revoke",
        Role::Operator,
    ),
    ("GET /api/v1/agents/enroll-tokens", Role::Operator),
    ("POST /api/v1/agents/{id}/revoke", Role::Operator),
    ("POST /api/v1/flags/apply", Role::Operator),
    ("POST /api/v1/flags/{key}", Role::Operator),
    ("POST /api/v1/killswitches", Role::Operator),
    ("POST /api/v1/killswitches/{name}/kill", Role::Responder),
    ("POST /api/v1/killswitches/{name}/revive", Role::Responder),
    ("POST /api/v1/tokens", Role::Admin),
    ("POST /api/v1/tokens/{id}/revoke", Role::Admin),
    ("POST /api/v1/users", Role::Admin),
    ("POST /api/v1/users/{name}/role", Role::Admin),
    ("POST /api/v1/approvals/{id}/approve", Role::Operator),
    // anyone may withdraw their own request; deciding on another's needs
    // the operation's role (checked by the approval, see the matrix)
    ("POST /api/v1/approvals/{id}/reject", Role::Viewer),
    ("POST /api/v1/approval-policy", Role::Admin),
    ("GET /api/v1/audit/export", Role::Admin),
    ("GET /api/v1/tokens", Role::Admin),
    ("POST /console/agents/{id}/revoke", Role::Operator),
    ("POST /console/flags/set", Role::Operator),
    ("POST /console/flags/preview", Role::Operator),
    ("POST /console/flags/apply", Role::Operator),
    ("POST /console/killswitches/kill", Role::Responder),
    ("POST /console/killswitches/revive", Role::Responder),
    ("POST /console/approvals/{id}/approve", Role::Operator),
    ("POST /console/approvals/{id}/reject", Role::Viewer),
    ("POST /console/users", Role::Admin),
    ("POST /console/users/{name}/role", Role::Admin),
    ("POST /console/tokens", Role::Admin),
    ("POST /console/tokens/{id}/revoke", Role::Admin),
    ("POST /console/policy", Role::Admin),
    ("GET /console/audit/export", Role::Admin),
    ("GET /console/killswitches/confirm", Role::Responder),
];

#[test]
fn route_tables_give_the_contract_roles() {
    let routes = collector::routes::all();
    for (name, role) in CONTRACT {
        let r = routes
            .iter()
            .find(|r| r.name() == *name)
            .unwrap_or_else(|| panic!("{name} is not declared"));
        assert_eq!(r.role(), Some(*role), "{name}");
    }
    // every other POST needs a role named here, or is sign-in
    for r in routes.iter().filter(|r| r.method == "POST") {
        assert!(
            r.path == "/console/login"
                || r.path == "/console/logout"
                || CONTRACT.iter().any(|(n, _)| *n == r.name()),
            "{}: add its contract role",
            r.name()
        );
    }
    // kill and revive never wait for an approval
    for r in routes
        .iter()
        .filter(|r| r.path.contains("kill") || r.path.contains("revive"))
    {
        assert!(!r.approvable, "{}", r.name());
    }
}

/// A revocation needs a reason, through the API as through the console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_need_a_reason() {
    let h = Harness::start(15 * 60 * 1000).await;
    let tok = h.tokens[&Role::Admin].clone();
    let agent = h.new_agent(1).await;
    let enroll = h.new_enroll_token().await;
    let token = h.new_api_token(1).await;
    for path in [
        format!("/agents/{agent}/revoke"),
        format!("/agents/enroll-tokens/{enroll}/revoke"),
        format!("/tokens/{token}/revoke"),
    ] {
        for body in [json!({}), json!({"reason": "  "})] {
            let r = h.api_post(&tok, &path, body).await;
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "REASON_REQUIRED", "{path}");
        }
    }
    let s = h.sessions[&Role::Admin].clone();
    for path in [
        format!("/console/agents/{agent}/revoke"),
        format!("/console/tokens/{token}/revoke"),
    ] {
        let r = h.console_post(&s, &path, &[("reason", "")]).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
    }
    // nothing was revoked
    let r = h.api(&tok, reqwest::Method::GET, "/agents", None).await;
    let v: Value = r.json().await.unwrap();
    assert!(v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["state"] != "revoked"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrf_and_cross_site_posts_are_refused() {
    let h = Harness::start(15 * 60 * 1000).await;
    let s = h.sessions[&Role::Admin].clone();
    let kill = |fields: Vec<(&'static str, String)>, site: Option<&'static str>| {
        let mut req = h
            .http
            .post(format!("{}/console/killswitches/kill", h.base))
            .header("cookie", format!("opsplane_session={}", s.cookie))
            .form(&fields);
        if let Some(site) = site {
            req = req.header("sec-fetch-site", site);
        }
        req.send()
    };
    let base = vec![
        ("env", "dev".to_string()),
        ("name", "ks1".to_string()),
        ("reason", "t".to_string()),
    ];
    // no token
    assert_eq!(
        kill(base.clone(), None).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    // a wrong token (another user's)
    let mut wrong = base.clone();
    wrong.push(("csrf", h.sessions[&Role::Viewer].csrf.clone()));
    assert_eq!(
        kill(wrong, None).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    // the right token from another site
    let mut right = base.clone();
    right.push(("csrf", s.csrf.clone()));
    assert_eq!(
        kill(right.clone(), Some("cross-site"))
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    // nothing was killed so far
    let killed = h
        .ctx()
        .store
        .read(|c| store::flags::latest(c, "dev"))
        .await
        .unwrap()
        .unwrap()
        .killswitches;
    assert!(killed.iter().all(|k| !k.killed));
    // the right token from the console itself works
    assert_eq!(
        kill(right, Some("same-origin")).await.unwrap().status(),
        StatusCode::SEE_OTHER
    );
    // no session at all: sent to the login page, nothing done
    let r = h
        .http
        .post(format!("{}/console/killswitches/revive", h.base))
        .form(&base)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/console/login"));
    // security headers and cookie flags
    let r = h.login_raw("u-viewer", PASSWORD).await;
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'")
            && csp.contains("script-src 'self'")
            && !csp.contains("unsafe-inline")
    );
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(r.headers().contains_key("referrer-policy"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_renew_end_and_throttle() {
    let h = Harness::start(15 * 60 * 1000).await;
    // a new id at every login
    let a = h.login("u-operator", PASSWORD).await.unwrap();
    let b = h.login("u-operator", PASSWORD).await.unwrap();
    assert_ne!(a.cookie, b.cookie);
    // only the hash is stored
    let raw = a.cookie.clone();
    let stored = h
        .ctx()
        .store
        .read(move |c| store::sessions::lookup(c, &raw))
        .await
        .unwrap();
    assert!(stored.is_none(), "session ids must be stored hashed");

    // role change: the next request renews the id, the old one stops working
    let st = h.ctx().store.clone();
    st.write(|tx| {
        store::users::set_role(
            tx,
            &Actor::system("system:test"),
            "u-operator",
            Role::Responder,
            "t",
        )
        .map(|_| ())
    })
    .await
    .unwrap();
    let r = h
        .http
        .get(format!("{}/console/agents", h.base))
        .header("cookie", format!("opsplane_session={}", a.cookie))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let renewed = set_cookie(&r).expect("a renewed session cookie");
    assert_ne!(renewed, a.cookie);
    assert_eq!(
        h.get_page(&a.cookie, "/console/agents").await.0,
        StatusCode::SEE_OTHER
    );
    let (status, page) = h.get_page(&renewed, "/console/agents").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("role-responder"),
        "the page shows the new role"
    );

    // logout ends the session on the server
    let r = h.console_post(&b, "/console/logout", &[]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        h.get_page(&b.cookie, "/console/").await.0,
        StatusCode::SEE_OTHER
    );

    // throttling: five failures lock the account, even for the right password
    for _ in 0..5 {
        assert_eq!(
            h.login_raw("u-viewer", "wrong password!").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let r = h.login_raw("u-viewer", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("Too many failed sign-in attempts for this account"));
    // another account from the same address is still fine (address limit is higher)
    assert!(h.login("u-admin", PASSWORD).await.is_some());

    // logins, failures and logouts are audited with address and user agent
    let entries = h
        .ctx()
        .store
        .read(|c| store::audit::list(c, &store::audit::Filter::default()))
        .await
        .unwrap();
    let find = |action: &str| {
        entries
            .iter()
            .find(|e| e.action == action)
            .unwrap_or_else(|| panic!("no {action} entry"))
    };
    for action in ["auth.login", "auth.login_failed", "auth.logout"] {
        let e = find(action);
        assert_eq!(e.source, "127.0.0.1", "{action}");
        assert_eq!(e.user_agent, "console-security-test", "{action}");
    }
    assert!(h.ctx().store.read(store::audit::verify).await.unwrap().ok);
    h.stop().await;
}

/// A clock for the collector that the test moves by hand, starting now.
fn manual_clock(h: &Harness) -> std::sync::Arc<ManualClock> {
    let clock = std::sync::Arc::new(ManualClock(common::time::now_ms().into()));
    h.ctx().clock.set(clock.clone());
    clock
}

impl ManualClock {
    fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_time_out() {
    const IDLE: i64 = 60_000;
    let h = Harness::start(IDLE).await;
    let clock = manual_clock(&h);
    let s = h.sessions[&Role::Viewer].clone();
    // activity keeps a session alive past the idle timeout from its start
    for _ in 0..3 {
        clock.advance(IDLE / 2);
        let (status, _) = h.get_page(&s.cookie, "/console/").await;
        assert_eq!(status, StatusCode::OK, "an active session stays");
    }
    clock.advance(IDLE + 1);
    let (status, _) = h.get_page(&s.cookie, "/console/").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "an idle session must end");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_sessions_still_end_at_the_absolute_timeout() {
    const IDLE: i64 = 20 * 60_000;
    const ABSOLUTE: i64 = 3_600_000;
    let h = Harness::start_with(IDLE, ABSOLUTE).await;
    let clock = manual_clock(&h);
    let s = h
        .login(&user_name(Role::Viewer), PASSWORD)
        .await
        .expect("login");
    // busy the whole time: every request counts as activity for the idle timer
    let mut elapsed = 0;
    while elapsed + IDLE / 2 < ABSOLUTE {
        clock.advance(IDLE / 2);
        elapsed += IDLE / 2;
        let (status, _) = h.get_page(&s.cookie, "/console/agents").await;
        assert_eq!(
            status,
            StatusCode::OK,
            "the session is valid before its absolute timeout ({elapsed} ms)"
        );
    }
    // a minute past the absolute timeout (the login took real time after
    // the clock was set), though active within the idle timeout
    clock.advance(ABSOLUTE - elapsed + 60_000);
    let (status, _) = h.get_page(&s.cookie, "/console/agents").await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "an active session must end at the absolute timeout"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_eyes() {
    let h = Harness::start(15 * 60 * 1000).await;
    let id = h.pending_flag_request().await;
    // the flag did not change yet
    let state = |h: &Harness| {
        let st = h.ctx().store.clone();
        async move {
            st.read(|c| store::flags::latest(c, "prod"))
                .await
                .unwrap()
                .unwrap()
                .flags["flags"]["f1"]["state"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    assert_eq!(state(&h).await, "ENABLED");
    // the requester (an admin) cannot approve it, by token or in the console
    let r = h
        .api_post(
            &h.admin_token,
            &format!("/approvals/{id}/approve"),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // a token the requester minted counts as the requester
    let st = h.ctx().store.clone();
    let minted = st
        .write(|tx| {
            let a = Actor::user("admin", Role::Admin, "t".into(), "t".into());
            Ok(store::tokens::create_api_token(tx, &a, "sneaky", Role::Admin, None, "")?.1)
        })
        .await
        .unwrap();
    let r = h
        .api_post(&minted, &format!("/approvals/{id}/approve"), json!({}))
        .await;
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "a token minted by the requester must not approve"
    );
    // a responder may not approve a flag change
    let r = h
        .api_post(
            &h.tokens[&Role::Responder],
            &format!("/approvals/{id}/approve"),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(state(&h).await, "ENABLED");
    // an operator approves: the change applies at once
    let r = h
        .console_post(
            &h.sessions[&Role::Operator],
            &format!("/console/approvals/{id}/approve"),
            &[("reason", "looks right")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(state(&h).await, "DISABLED");
    // many approvers at once: the change applies exactly once
    let id3 = h.pending_flag_request().await;
    let mut calls = Vec::new();
    for _ in 0..10 {
        for r in [Role::Operator, Role::Admin] {
            let (http, base, tok, id3) = (
                h.http.clone(),
                h.base.clone(),
                h.tokens[&r].clone(),
                id3.clone(),
            );
            calls.push(tokio::spawn(async move {
                http.post(format!("{base}/api/v1/approvals/{id3}/approve"))
                    .bearer_auth(tok)
                    .json(&json!({}))
                    .send()
                    .await
                    .unwrap()
                    .status()
            }));
        }
    }
    let mut oks = 0;
    for c in calls {
        match c.await.unwrap() {
            StatusCode::OK => oks += 1,
            StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(oks, 1, "exactly one approval applies the change");
    assert_eq!(state(&h).await, "ENABLED");
    let entries = h
        .ctx()
        .store
        .read(|c| store::audit::list(c, &store::audit::Filter::default()))
        .await
        .unwrap();
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.action == "approval.approve" && e.target == format!("approval:{id3}"))
            .count(),
        1
    );

    // a requester demoted since asking cannot get the change through
    let sess = h.sessions[&Role::Operator].clone();
    let r = h
        .console_post(
            &sess,
            "/console/flags/set",
            &[
                ("env", "prod"),
                ("key", "f1"),
                ("state", "DISABLED"),
                ("default_variant", "on"),
                ("reason", "t"),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let demoted = h
        .ctx()
        .store
        .read(|c| store::approvals::list(c, Some("pending"), 10))
        .await
        .unwrap();
    let demoted = demoted
        .iter()
        .find(|a| a.requested_by == "u-operator")
        .unwrap()
        .id
        .clone();
    h.ctx()
        .store
        .write(|tx| {
            store::users::set_role(
                tx,
                &Actor::system("system:test"),
                "u-operator",
                Role::Viewer,
                "t",
            )
            .map(|_| ())
        })
        .await
        .unwrap();
    let r = h
        .api_post(
            &h.tokens[&Role::Admin],
            &format!("/approvals/{demoted}/approve"),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(state(&h).await, "ENABLED");
    h.ctx()
        .store
        .write(|tx| {
            store::users::set_role(
                tx,
                &Actor::system("system:test"),
                "u-operator",
                Role::Operator,
                "t",
            )
            .map(|_| ())
        })
        .await
        .unwrap();
    let r = h
        .api_post(
            &h.admin_token,
            &format!("/approvals/{demoted}/reject"),
            json!({"reason": "stale"}),
        )
        .await;
    let status = r.status();
    assert_eq!(status, StatusCode::OK, "{}", r.text().await.unwrap());

    // approving twice does nothing more
    let r = h
        .api_post(
            &h.tokens[&Role::Admin],
            &format!("/approvals/{id}/approve"),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    // audited: request, the change (by the requester, naming the approver), approval
    let entries = h
        .ctx()
        .store
        .read(|c| store::audit::list(c, &store::audit::Filter::default()))
        .await
        .unwrap();
    let target = format!("approval:{id}");
    // (the request came with the init admin's API token: recorded as a
    // token, with the person behind it)
    assert!(entries.iter().any(|e| e.action == "approval.request"
        && e.target == target
        && e.actor == "token:admin (owner admin)"));
    assert!(entries
        .iter()
        .any(|e| e.action == "approval.approve" && e.target == target && e.actor == "u-operator"));
    assert!(entries.iter().any(|e| e.action == "flags.set"
        && e.actor == "token:admin (owner admin)"
        && e.reason.contains("approved by u-operator")));

    // the console requester sees no approve button on their own request
    let id2 = {
        let s = &h.sessions[&Role::Operator];
        let r = h
            .console_post(
                s,
                "/console/flags/set",
                &[
                    ("env", "prod"),
                    ("key", "f1"),
                    ("state", "DISABLED"),
                    ("default_variant", "on"),
                    ("reason", "t"),
                ],
            )
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let list = h
            .ctx()
            .store
            .read(|c| store::approvals::list(c, Some("pending"), 10))
            .await
            .unwrap();
        list.iter()
            .find(|a| a.requested_by == "u-operator")
            .unwrap()
            .id
            .clone()
    };
    let (_, page) = h
        .get_page(&h.sessions[&Role::Operator].cookie, "/console/approvals")
        .await;
    let card = &page[page.find(&format!("approval-{id2}")).unwrap()..];
    let card = &card[..card.find("</table>").unwrap_or(card.len())];
    assert!(
        !card.contains("/approve\""),
        "no approve form on one's own request"
    );
    let r = h
        .console_post(
            &h.sessions[&Role::Operator],
            &format!("/console/approvals/{id2}/approve"),
            &[],
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // expiry is audited and ends the request
    let st = h.ctx().store.clone();
    let n = st
        .write(|tx| {
            store::approvals::expire_due(
                tx,
                &Actor::system("system:approvals"),
                common::time::now_ms() + 2 * 86_400_000,
            )
        })
        .await
        .unwrap();
    assert!(n >= 1);
    let r = h
        .api_post(
            &h.tokens[&Role::Admin],
            &format!("/approvals/{id2}/approve"),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let entries = h
        .ctx()
        .store
        .read(|c| store::audit::list(c, &store::audit::Filter::default()))
        .await
        .unwrap();
    assert!(entries
        .iter()
        .any(|e| e.action == "approval.expire" && e.target == format!("approval:{id2}")));

    // emergency actions never wait, even in a protected environment
    let r = h
        .api_post(
            &h.tokens[&Role::Responder],
            "/killswitches/ks1/kill",
            json!({"environment": "prod", "reason": "fire"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    // granting a role waits too, and the diff names the role
    let r = h
        .api_post(
            &h.admin_token,
            "/users/u-viewer/role",
            json!({"role": "admin", "reason": "t"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["approval"]["diff"][0]["after"], "admin");

    // switching the protection off waits for a second admin too
    let r = h
        .api_post(&h.admin_token, "/approval-policy", json!({"protected_environments": [], "grant_roles": true, "expire_after_ms": 86400000, "reason": "t"}))
        .await;
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "weakening the policy needs a second admin"
    );
    let p: Value = h
        .api(
            &h.admin_token,
            reqwest::Method::GET,
            "/approval-policy",
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(p["protected_environments"], json!(["prod"]));
    h.stop().await;
}

#[test]
fn admin_listener_refuses_non_loopback_without_the_explicit_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(
        &f,
        "data_dir = \"/tmp/x\"\n[admin]\nlisten = \"0.0.0.0:7602\"\n",
    )
    .unwrap();
    let e = Settings::load(&f).unwrap_err().to_string();
    assert!(
        e.contains("admin.listen") && e.contains("allow_insecure_remote"),
        "{e}"
    );
    std::fs::write(
        &f,
        "data_dir = \"/tmp/x\"\n[admin]\nlisten = \"0.0.0.0:7602\"\nallow_insecure_remote = true\n",
    )
    .unwrap();
    assert!(Settings::load(&f).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_cookie_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    collector::init::init(dir.path()).unwrap();
    let mut s = settings(dir.path(), 60_000, 8 * 3600 * 1000);
    s.admin.secure_cookie = true;
    let running = collector::start(s).await.unwrap();
    let hash = collector::access::auth::hash_password(PASSWORD).unwrap();
    running
        .ctx
        .store
        .write(move |tx| {
            store::users::add(tx, &Actor::system("t"), "alice", Role::Viewer, &hash, "").map(|_| ())
        })
        .await
        .unwrap();
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("http://{}/console/login", running.admin_addr))
        .form(&[("username", "alice"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("; Secure")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    running.shutdown.cancel();
    running.wait().await.unwrap();
}

/// A token minted by `owner` (a user) with `role`; returns `(id, secret)`.
async fn token_of(h: &Harness, owner: &str, name: &str, role: Role) -> (String, String) {
    let (owner, name) = (owner.to_string(), name.to_string());
    h.ctx()
        .store
        .write(move |tx| {
            let a = Actor::user(&owner, Role::Admin, "t".into(), "t".into());
            let (t, secret) = store::tokens::create_api_token(tx, &a, &name, role, None, "")?;
            Ok((t.id, secret))
        })
        .await
        .unwrap()
}

/// A pending prod flag change requested with `token`; returns its id.
async fn flag_request_with(h: &Harness, token: &str) -> String {
    let cur = h
        .ctx()
        .store
        .read(|c| store::flags::latest(c, "prod"))
        .await
        .unwrap()
        .unwrap()
        .flags["flags"]["f1"]["state"]
        .as_str()
        .unwrap()
        .to_string();
    let next = if cur == "ENABLED" {
        "DISABLED"
    } else {
        "ENABLED"
    };
    let r = h
        .api_post(
            token,
            "/flags/f1",
            json!({"environment": "prod", "state": next, "reason": "via a token"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let v: Value = r.json().await.unwrap();
    v["approval"]["id"].as_str().unwrap().to_string()
}

/// Four-eyes compares persons: a request made with an API token belongs to
/// the token's owner, whatever the token is called, and that person cannot
/// approve it by session or by any of their tokens. A request whose token
/// was revoked cannot be approved. Tokens are unmistakable in the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_eyes_through_tokens() {
    let h = Harness::start(15 * 60 * 1000).await;
    // u-admin mints an operator token named like another user
    let (_, bob) = token_of(&h, "u-admin", "bob", Role::Operator).await;
    let id = flag_request_with(&h, &bob).await;
    let a = h
        .ctx()
        .store
        .read({
            let id = id.clone();
            move |c| store::approvals::get(c, &id)
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.requested_person, "u-admin");
    assert_eq!(a.requested_by, "token:bob (owner u-admin)");
    // the token's owner cannot approve: not in the console...
    let r = h
        .console_post(
            &h.sessions[&Role::Admin],
            &format!("/console/approvals/{id}/approve"),
            &[("reason", "mine")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "the owner's session");
    // ...nor with another token of theirs, nor with the requesting token
    for tok in [h.tokens[&Role::Admin].clone(), bob.clone()] {
        let r = h
            .api_post(&tok, &format!("/approvals/{id}/approve"), json!({}))
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "the owner's token");
    }
    // another person can
    let r = h
        .api_post(
            &h.tokens[&Role::Operator],
            &format!("/approvals/{id}/approve"),
            json!({"reason": "ok"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    // a request whose token was revoked cannot be approved any more
    let (bob2_id, bob2) = token_of(&h, "u-operator", "bob2", Role::Operator).await;
    let id2 = flag_request_with(&h, &bob2).await;
    let r = h
        .api_post(
            &h.admin_token,
            &format!("/tokens/{bob2_id}/revoke"),
            json!({"reason": "leaked"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = h
        .api_post(
            &h.tokens[&Role::Admin],
            &format!("/approvals/{id2}/approve"),
            json!({"reason": "ok"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().await.unwrap().contains("revoked"));
    // rejecting it still works
    let r = h
        .api_post(
            &h.tokens[&Role::Admin],
            &format!("/approvals/{id2}/reject"),
            json!({"reason": "token revoked"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    // the audit log names the token and its owner, never "bob" alone
    let entries = h
        .ctx()
        .store
        .read(|c| store::audit::list(c, &store::audit::Filter::default()))
        .await
        .unwrap();
    assert!(entries.iter().all(|e| e.actor != "bob"));
    assert!(entries.iter().any(|e| e.action == "approval.request"
        && e.target == format!("approval:{id}")
        && e.actor == "token:bob (owner u-admin)"));
    // filtering by a person finds what their tokens did
    let mine = h
        .ctx()
        .store
        .read(|c| {
            store::audit::list(
                c,
                &store::audit::Filter {
                    actor: Some("u-admin".into()),
                    ..Default::default()
                },
            )
        })
        .await
        .unwrap();
    assert!(mine
        .iter()
        .any(|e| e.actor == "token:bob (owner u-admin)" && e.action == "approval.request"));
    assert!(h.ctx().store.read(store::audit::verify).await.unwrap().ok);
    h.stop().await;
}

/// A clock the test moves by hand (sessions, the login throttle).
struct ManualClock(std::sync::atomic::AtomicI64);

impl collector::kernel::Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// 40 simultaneous wrong passwords: each attempt is counted before its
/// password is hashed, so at most the account's budget is hashed (and
/// audited as failed) and the rest are refused at once with Retry-After;
/// the right password is refused during the lock, accepted after it; the
/// lock backs off exponentially; a busy address does not lock out users
/// who did not fail (every user behind a TLS proxy shares one address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_throttle_counts_before_hashing() {
    use collector::console::login_limits::*;
    let h = Harness::start(15 * 60 * 1000).await;
    let clock = manual_clock(&h);
    let advance = |ms: i64| clock.advance(ms);
    let failed_before = failed_logins(&h).await;
    let mut calls = Vec::new();
    for i in 0..40 {
        let (http, base) = (h.http.clone(), h.base.clone());
        calls.push(tokio::spawn(async move {
            let r = http
                .post(format!("{base}/console/login"))
                .form(&[
                    ("username", "u-viewer"),
                    ("password", &format!("wrong-{i}")),
                ])
                .send()
                .await
                .unwrap();
            let retry = r.headers().get("retry-after").is_some();
            (r.status(), retry)
        }));
    }
    let mut unauthorized = 0;
    let mut throttled = 0;
    for c in calls {
        match c.await.unwrap() {
            (StatusCode::UNAUTHORIZED, _) => unauthorized += 1,
            (StatusCode::TOO_MANY_REQUESTS, true) => throttled += 1,
            // no hashing slot in time (a loaded test machine): not hashed either
            (StatusCode::SERVICE_UNAVAILABLE, true) => throttled += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        unauthorized <= MAX_PER_ACCOUNT,
        "{unauthorized} passwords hashed"
    );
    assert_eq!(unauthorized + throttled, 40);
    assert_eq!(failed_logins(&h).await - failed_before, unauthorized);
    // locked: the right password is refused too
    let r = h.login_raw("u-viewer", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: i64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= BASE_LOCK_MS / 1000, "{retry}");
    // after the lock, one more failure locks again, twice as long
    advance(BASE_LOCK_MS);
    assert_eq!(
        h.login_raw("u-viewer", "still wrong").await.status(),
        StatusCode::UNAUTHORIZED
    );
    advance(BASE_LOCK_MS);
    assert_eq!(
        h.login_raw("u-viewer", PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the second lock lasts twice as long"
    );
    advance(BASE_LOCK_MS);
    assert!(h.login("u-viewer", PASSWORD).await.is_some());

    // many accounts failing from one address (a proxy): a user who did not
    // fail still signs in
    for i in 0..MAX_PER_ADDRESS {
        assert_eq!(
            h.login_raw(&format!("nobody-{i}"), "guess").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert!(h.login("u-operator", PASSWORD).await.is_some());
    h.stop().await;
}

async fn failed_logins(h: &Harness) -> usize {
    h.ctx()
        .store
        .read(|c| {
            store::audit::list(
                c,
                &store::audit::Filter {
                    action: Some("auth.login_failed".into()),
                    limit: Some(100_000),
                    ..Default::default()
                },
            )
        })
        .await
        .unwrap()
        .len()
}

/// The CSRF token changes with the session id: at every login, and when a
/// role change renews the id (the old token stops working).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrf_token_rotates_with_the_session_id() {
    let h = Harness::start(15 * 60 * 1000).await;
    let a = h.login("u-operator", PASSWORD).await.unwrap();
    let b = h.login("u-operator", PASSWORD).await.unwrap();
    assert_ne!(a.csrf, b.csrf, "a new csrf token at every login");
    // a role change renews the session id, and with it the csrf token
    h.ctx()
        .store
        .write(|tx| {
            store::users::set_role(
                tx,
                &Actor::system("system:test"),
                "u-operator",
                Role::Admin,
                "t",
            )
            .map(|_| ())
        })
        .await
        .unwrap();
    let r = h
        .http
        .get(format!("{}/console/", h.base))
        .header("cookie", format!("opsplane_session={}", a.cookie))
        .send()
        .await
        .unwrap();
    let renewed = set_cookie(&r).expect("a renewed session cookie");
    let new_csrf = h.csrf(&renewed).await;
    assert_ne!(new_csrf, a.csrf, "the csrf token is renewed with the id");
    let old = Sess {
        cookie: renewed.clone(),
        csrf: a.csrf.clone(),
    };
    let fields = [("env", "dev"), ("name", "ks1"), ("reason", "t")];
    let r = h
        .console_post(&old, "/console/killswitches/kill", &fields)
        .await;
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "the old csrf token is refused"
    );
    let new = Sess {
        cookie: renewed,
        csrf: new_csrf,
    };
    let r = h
        .console_post(&new, "/console/killswitches/kill", &fields)
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    h.stop().await;
}

/// When the database cannot be written (here SQLite's own "database or
/// disk is full"), writes answer 500 and `/readyz` on the admin and ingest
/// listeners answers 503 with the reason, while `/healthz` stays 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_tells_when_the_store_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let init = collector::init::init(dir.path()).unwrap();
    let running = collector::start(settings(dir.path(), 60_000, 8 * 3600 * 1000))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let admin = format!("http://{}", running.admin_addr);
    let ingest = format!("http://{}", running.ingest_addr);
    for base in [&admin, &ingest] {
        let r = http.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    // no page may be added to the database any more
    running
        .ctx
        .store
        .write(|tx| {
            let pages: i64 = tx.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            tx.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
            Ok(())
        })
        .await
        .unwrap();
    let mut refused = false;
    for i in 0..200 {
        let r = http
            .post(format!("{admin}/api/v1/killswitches"))
            .bearer_auth(&init.admin_token)
            .json(&json!({"name": format!("s{i}"), "description": "x".repeat(4000)}))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::INTERNAL_SERVER_ERROR {
            refused = true;
            break;
        }
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert!(refused, "a full database refuses writes");
    for base in [&admin, &ingest] {
        let r = http.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let v: Value = r.json().await.unwrap();
        let reason = v["reason"].as_str().unwrap();
        assert!(reason.contains("full"), "{reason}");
        let r = http.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    running.shutdown.cancel();
    running.wait().await.unwrap();
}

/// One agent credential holds at most `MAX_STREAMS_PER_AGENT` streams: a
/// new stream closes the oldest (over real HTTP on the ingest listener).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_per_agent_are_capped() {
    use futures_util::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    collector::init::init(dir.path()).unwrap();
    let running = collector::start(settings(dir.path(), 60_000, 8 * 3600 * 1000))
        .await
        .unwrap();
    let (agent_id, credential) = running
        .ctx
        .store
        .write(|tx| {
            let a = Actor::system("system:test");
            let (t, _) = store::tokens::create_enroll_token(tx, &a, "dev", "web", None, 1)?;
            let id = common::wire::AgentIdentity {
                service: "web".into(),
                environment: "dev".into(),
                instance: "w".into(),
                host: "h".into(),
                version: "1".into(),
                labels: Default::default(),
            };
            Ok(store::agents::enroll(tx, &t.id, &id)?.expect("fresh token"))
        })
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/agent/stream", running.ingest_addr);
    let mut streams = Vec::new();
    for _ in 0..5 {
        let r = http
            .get(&url)
            .bearer_auth(&credential)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let mut body = r.bytes_stream();
        // the first line (the current revision) arrives at once
        body.next().await.unwrap().unwrap();
        streams.push(body);
    }
    let cap = collector::fleet::hub::MAX_STREAMS_PER_AGENT;
    assert_eq!(running.ctx.hub.stream_count(&agent_id), cap);
    // the oldest streams were closed by the server
    for s in streams.iter_mut().take(5 - cap) {
        let end = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while let Some(chunk) = s.next().await {
                if chunk.is_err() {
                    break;
                }
            }
        })
        .await;
        assert!(end.is_ok(), "a replaced stream ends");
    }
    running.shutdown.cancel();
    running.wait().await.unwrap();
}
