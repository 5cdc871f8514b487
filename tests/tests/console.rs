//! Browser test of the ops console: starts the real `opsplane-collector` and
//! `opsplane-agent` binaries, prepares users, flags and a kill switch through
//! the admin API, then runs `node tests/js/console.test.mjs` (Playwright
//! driving headless Chromium) and asserts that it passed. Screenshots of
//! every page (1280 px and phone width) land in
//! `<target dir>/console-screenshots/`.
//!
//! Needs Debian's `chromium` and the npm packages of `tests/js`:
//!     apt-get install -y chromium nodejs npm
//!     npm ci --prefix tests/js

use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";

fn target_dir() -> PathBuf {
    // target/debug/deps/console-xxxx → target/debug
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("deps dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

fn binary(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo test --workspace` (it builds the binaries first)",
        p.display()
    );
    p
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child when the test ends, however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Api {
    base: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl Api {
    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().expect("admin API reachable");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }
    fn post(&self, path: &str, body: Value) -> Value {
        let (status, v) = self.call(reqwest::Method::POST, path, Some(body));
        assert_eq!(status, 200, "POST {path}: {v}");
        v
    }
    fn get(&self, path: &str) -> Value {
        let (status, v) = self.call(reqwest::Method::GET, path, None);
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }
}

/// Fails with the setup commands when the browser tooling is missing.
fn require_browser_tooling(js_dir: &Path) {
    let mut missing = Vec::new();
    if Command::new("node")
        .arg("--version")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        missing.push("node (apt-get install -y nodejs npm)");
    }
    if !js_dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        missing.push("the npm packages of tests/js (npm ci --prefix tests/js)");
    }
    if !Path::new(CHROMIUM).exists() {
        missing.push("Debian's chromium (apt-get update && apt-get install -y chromium)");
    }
    assert!(
        missing.is_empty(),
        "the console browser test needs: {}. Install them and run again (never `npx playwright install`).",
        missing.join("; ")
    );
}

#[test]
fn console_in_a_real_browser() {
    let root = repo_root();
    let js_dir = root.join("tests/js");
    require_browser_tooling(&js_dir);
    let collector_bin = binary("opsplane-collector");
    let agent_bin = binary("opsplane-agent");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("collector");

    // init: admin password and API token
    let out = Command::new(&collector_bin)
        .args(["init", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let admin_password = text
        .lines()
        .find_map(|l| l.strip_prefix("admin password (shown once): "))
        .expect("admin password in init output")
        .trim()
        .to_string();
    let admin_token = text.lines().last().unwrap().trim().to_string();

    let (ingest, admin, status) = (free_port(), free_port(), free_port());
    let cfg = tmp.path().join("collector.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {data:?}\n[ingest]\nlisten = \"127.0.0.1:{ingest}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [status_page]\nlisten = \"127.0.0.1:{status}\"\n[approvals]\nprotected_environments = [\"prod\"]\n"
        ),
    )
    .unwrap();
    let _collector = Proc(
        Command::new(&collector_bin)
            .args(["run", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{admin}");
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    wait_until("the collector", Duration::from_secs(20), || {
        http.get(format!("{base}/healthz"))
            .send()
            .map(|r| r.status().is_success())
            .unwrap_or(false)
    });
    let api = Api {
        base: base.clone(),
        token: admin_token,
        http: http.clone(),
    };

    // flags first, while the admin is the only user (nobody to ask yet)
    let definition = json!({"flags": {
        "new-checkout": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"if": [{"starts_with": [{"var": "targetingKey"}, "beta-"]}, "on", "off"]}},
        "banner-color": {"state": "ENABLED", "variants": {"red": "#c00", "blue": "#00c"}, "defaultVariant": "blue",
            "targeting": {"fractional": [["red", 50], ["blue", 50]]}}
    }});
    api.post(
        "/flags/apply",
        json!({"environment": "prod", "definition": definition, "reason": "initial flags"}),
    );
    let (operator_pw, viewer_pw) = ("operator-password-1", "viewer-password-12");
    api.post(
        "/users",
        json!({"name": "olivia", "role": "operator", "password": operator_pw}),
    );
    api.post(
        "/users",
        json!({"name": "victor", "role": "viewer", "password": viewer_pw}),
    );
    let enroll = api.post(
        "/agents/enroll-tokens",
        json!({"environment": "prod", "service": "checkout"}),
    );

    // a real agent that enforces the switch
    let agent_port = free_port();
    let agent_cfg = tmp.path().join("agent.toml");
    std::fs::write(
        &agent_cfg,
        format!(
            "service = \"checkout\"\nenvironment = \"prod\"\ninstance = \"checkout-1\"\ndata_dir = {:?}\n\
             [api]\nlisten = \"127.0.0.1:{agent_port}\"\n[collector]\nurl = \"http://127.0.0.1:{ingest}\"\ntoken = {:?}\n\
             [[killswitch]]\nname = \"payments\"\n",
            tmp.path().join("agent"),
            enroll["token"].as_str().unwrap()
        ),
    )
    .unwrap();
    let _agent = Proc(
        Command::new(&agent_bin)
            .args(["run", "--config"])
            .arg(&agent_cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    wait_until(
        "the agent to connect and report its kill switch",
        Duration::from_secs(30),
        || {
            let a = api.get("/agents?environment=prod");
            let connected = a["agents"]
                .as_array()
                .is_some_and(|v| v.iter().any(|x| x["state"] == "connected"));
            let k = api.get("/killswitches?environment=prod");
            connected
                && k["killswitches"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|x| x["name"] == "payments"))
        },
    );

    let shots = target_dir()
        .parent()
        .unwrap_or(&target_dir())
        .join("console-screenshots");
    let out = Command::new("node")
        .arg(js_dir.join("console.test.mjs"))
        .current_dir(&js_dir)
        .env("CONSOLE_URL", &base)
        .env("ENV", "prod")
        .env("SWITCH", "payments")
        .env("FLAG", "new-checkout")
        .env("AGENT_API", format!("http://127.0.0.1:{agent_port}"))
        .env("ADMIN_USER", "admin")
        .env("ADMIN_PASSWORD", &admin_password)
        .env("OPERATOR_USER", "olivia")
        .env("OPERATOR_PASSWORD", operator_pw)
        .env("VIEWER_USER", "victor")
        .env("VIEWER_PASSWORD", viewer_pw)
        .env("SCREENSHOT_DIR", &shots)
        .env("CHROMIUM", CHROMIUM)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "console browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all console scenarios passed"));
    // the audit chain is intact after everything the browser did
    assert_eq!(api.get("/audit/verify")["ok"], true);
}
