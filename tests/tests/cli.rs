//! Command lines as users and scripts meet them: exit codes, config errors
//! that name file, line and key, roles, secrets printed once, the audit log
//! (tamper detection, export), and refused input.

use std::process::Command;
use tests::*;

fn run(bin_name: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin(bin_name)).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_and_version_exit_zero_and_bad_usage_exits_two() {
    for b in ["opsplane-agent", "opsplane-collector", "opsctl"] {
        let (code, out, _) = run(b, &["--version"]);
        assert_eq!(code, 0, "{b} --version");
        assert!(out.contains(env!("CARGO_PKG_VERSION")), "{b}: {out}");
        assert_eq!(run(b, &["--help"]).0, 0, "{b} --help");
        assert_eq!(run(b, &["no-such-verb"]).0, 2, "{b} bad verb");
    }
}

#[test]
fn config_errors_name_file_line_and_key_and_exit_two() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write_file(
        tmp.path(),
        "agent.toml",
        "service = \"web\"\nenvironment = \"prod\"\n[api]\nlisten = \"127.0.0.1:7600\"\nlisten_adress = \"x\"\n",
    );
    let (code, _, err) = run("opsplane-agent", &["check-config", f.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("agent.toml:5") && err.contains("api") && err.contains("listen_adress"),
        "{err}"
    );
    // `run` refuses the same file the same way
    let (code, _, err2) = run("opsplane-agent", &["run", "--config", f.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert_eq!(err, err2);

    let f = write_file(
        tmp.path(),
        "bad-values.toml",
        "service = \"web\"\nenvironment = \"\"\n[collector]\nurl = \"ftp://x\"\n",
    );
    let (code, _, err) = run("opsplane-agent", &["check-config", f.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("bad-values.toml:2: environment"), "{err}");
    assert!(err.contains("bad-values.toml:4: collector.url"), "{err}");

    let f = write_file(
        tmp.path(),
        "collector.toml",
        "data_dir = \"/tmp/x\"\n[admin]\nlisten = \"nonsense\"\n[ingest]\nport = 1\n",
    );
    let (code, _, err) = run("opsplane-collector", &["check-config", f.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("collector.toml:5") && err.contains("port"),
        "{err}"
    );

    let f = write_file(
        tmp.path(),
        "ok.toml",
        "data_dir = \"/tmp/x\"\n[admin]\nlisten = \"127.0.0.1:7602\"\n",
    );
    assert_eq!(
        run("opsplane-collector", &["check-config", f.to_str().unwrap()]).0,
        0
    );
    let (code, _, err) = run(
        "opsplane-agent",
        &["check-config", "/nonexistent/agent.toml"],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("/nonexistent/agent.toml") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn init_twice_fails_and_token_file_is_private() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Collector::start(tmp.path());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(tmp.path().join("admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (code, _, err) = run(
        "opsplane-collector",
        &[
            "init",
            "--data-dir",
            tmp.path().join("collector-data").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("already initialised"), "{err}");
    // no token: usage error
    let out = Command::new(bin("opsctl"))
        .args(["agents", "list"])
        .env("OPSPLANE_URL", &c.admin_url)
        .env_remove("OPSPLANE_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // wrong token: refused
    let out = c.opsctl_as("opsp_0000", &["agents", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

#[test]
fn secrets_are_printed_once_on_the_last_line_and_stored_hashed() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Collector::start(tmp.path());
    let out = c.ok(&[
        "agents",
        "enroll-token",
        "--env",
        "prod",
        "--service",
        "web",
        "--expires",
        "1h",
    ]);
    let last = out.lines().last().unwrap();
    assert!(last.starts_with("opse_") && !last.contains(' '), "{out}");
    let out = c.ok(&[
        "tokens",
        "create",
        "--name",
        "ci",
        "--role",
        "viewer",
        "--expires",
        "30d",
    ]);
    let secret = out.lines().last().unwrap().to_string();
    assert!(secret.starts_with("opsp_"), "{out}");
    // the token works, and the database holds no secret in clear
    assert!(c.opsctl_as(&secret, &["agents", "list"]).status.success());
    let db = std::fs::read(tmp.path().join("collector-data/opsplane.db")).unwrap();
    let wal = std::fs::read(tmp.path().join("collector-data/opsplane.db-wal")).unwrap_or_default();
    for blob in [&db, &wal] {
        assert!(
            !String::from_utf8_lossy(blob).contains(&secret[5..]),
            "token stored in clear"
        );
        assert!(
            !String::from_utf8_lossy(blob).contains(&last[5..]),
            "enroll token stored in clear"
        );
    }
    // revoked: refused at once
    let id = c.json(&["tokens", "list"])["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ci")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    c.ok(&["tokens", "revoke", &id, "--reason", "ci is gone"]);
    assert_eq!(
        c.opsctl_as(&secret, &["agents", "list"]).status.code(),
        Some(1)
    );
    // users add prints a generated password last
    let out = c.ok(&["users", "add", "alice", "--role", "operator"]);
    assert_eq!(out.lines().last().unwrap().len(), 20, "{out}");
    let pw = write_file(tmp.path(), "pw", "a-long-enough-password\n");
    let out = c.ok(&[
        "users",
        "add",
        "bob",
        "--role",
        "viewer",
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    assert!(!out.contains("password"), "{out}");
}

#[test]
fn roles_are_enforced_on_every_mutation() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Collector::start(tmp.path());
    c.ok(&["killswitches", "create", "pay", "--description", "payments"]);
    let flags = write_file(
        tmp.path(),
        "f.json",
        r#"{"flags":{"a":{"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"on"}}}"#,
    );
    let f = flags.to_str().unwrap();
    c.ok(&["flags", "apply", f, "--env", "prod", "--reason", "seed"]);
    let viewer = c.token("v", "viewer");
    let responder = c.token("r", "responder");
    let operator = c.token("o", "operator");
    // (command, least role that may run it)
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["kill", "pay", "--env", "prod", "--reason", "x"],
            "responder",
        ),
        (
            vec!["revive", "pay", "--env", "prod", "--reason", "x"],
            "responder",
        ),
        (
            vec![
                "flags", "set", "a", "--env", "prod", "--state", "DISABLED", "--reason", "x",
            ],
            "operator",
        ),
        (
            vec!["flags", "apply", f, "--env", "staging", "--reason", "x"],
            "operator",
        ),
        (
            vec!["killswitches", "create", "k2", "--description", "x"],
            "operator",
        ),
        (
            vec![
                "agents",
                "enroll-token",
                "--env",
                "prod",
                "--service",
                "web",
            ],
            "operator",
        ),
        (
            vec!["tokens", "create", "--name", "t", "--role", "viewer"],
            "admin",
        ),
        (vec!["users", "add", "u", "--role", "viewer"], "admin"),
        (vec!["audit", "export"], "admin"),
    ];
    let rank = |r: &str| {
        ["viewer", "responder", "operator", "admin"]
            .iter()
            .position(|x| *x == r)
            .unwrap()
    };
    for (args, least) in &cases {
        for (role, tok) in [
            ("viewer", &viewer),
            ("responder", &responder),
            ("operator", &operator),
        ] {
            let out = c.opsctl_as(tok, args);
            let allowed = rank(role) >= rank(least);
            if allowed {
                assert!(
                    out.status.success(),
                    "{role} should run {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            } else {
                assert_eq!(out.status.code(), Some(1), "{role} must not run {args:?}");
                assert!(
                    String::from_utf8_lossy(&out.stderr).contains("403"),
                    "{role} {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    // a viewer reads everything but secrets
    for args in [
        vec!["agents", "list"],
        vec!["flags", "list", "--env", "prod"],
        vec!["audit", "list"],
        vec!["killswitches", "list", "--env", "prod"],
        vec!["audit", "verify"],
    ] {
        assert!(
            c.opsctl_as(&viewer, &args).status.success(),
            "viewer {args:?}"
        );
    }
    assert_eq!(
        c.opsctl_as(&viewer, &["tokens", "list"]).status.code(),
        Some(1)
    );
}

#[test]
fn bad_definitions_and_unknown_switches_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Collector::start(tmp.path());
    let good = write_file(
        tmp.path(),
        "good.json",
        r#"{"flags":{"a":{"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"on"}}}"#,
    );
    let rev = c.json(&[
        "flags",
        "apply",
        good.to_str().unwrap(),
        "--env",
        "prod",
        "--reason",
        "seed",
    ])["revision"]
        .as_u64()
        .unwrap();
    let bad = write_file(
        tmp.path(),
        "bad.json",
        r#"{"flags":{"a":{"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"maybe"}}}"#,
    );
    let out = c.opsctl(&[
        "flags",
        "apply",
        bad.to_str().unwrap(),
        "--env",
        "prod",
        "--reason",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"a\"") && err.contains("maybe"), "{err}");
    let broken = write_file(tmp.path(), "broken.json", "{\"flags\": {\n  \"a\": \n}");
    let out = c.opsctl(&[
        "flags",
        "apply",
        broken.to_str().unwrap(),
        "--env",
        "prod",
        "--reason",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("broken.json:3"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        c.json(&["flags", "list", "--env", "prod"])["revision"].as_u64(),
        Some(rev)
    );

    // dry run prints the diff and applies nothing
    let next = write_file(
        tmp.path(),
        "next.json",
        r#"{"flags":{"a":{"state":"DISABLED","variants":{"on":true,"off":false},"defaultVariant":"on"}}}"#,
    );
    let out = c.ok(&[
        "flags",
        "apply",
        next.to_str().unwrap(),
        "--env",
        "prod",
        "--dry-run",
    ]);
    assert!(
        out.contains("/flags/a/state") && out.contains("dry run"),
        "{out}"
    );
    assert_eq!(
        c.json(&["flags", "list", "--env", "prod"])["revision"].as_u64(),
        Some(rev)
    );
    // a reason is required
    assert_eq!(
        c.opsctl(&["flags", "apply", next.to_str().unwrap(), "--env", "prod"])
            .status
            .code(),
        Some(2)
    );

    c.ok(&[
        "killswitches",
        "create",
        "checkout-payments",
        "--description",
        "x",
    ]);
    let out = c.opsctl(&[
        "kill",
        "checkout-payment",
        "--env",
        "prod",
        "--reason",
        "typo",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown kill switch") && err.contains("checkout-payments"),
        "{err}"
    );
}

#[test]
fn audit_chain_detects_edits_deletions_and_reordering() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Collector::start(tmp.path());
    c.ok(&["killswitches", "create", "pay", "--description", "payments"]);
    for i in 0..3 {
        c.ok(&["kill", "pay", "--env", "prod", "--reason", &format!("k{i}")]);
        c.ok(&[
            "revive",
            "pay",
            "--env",
            "prod",
            "--reason",
            &format!("r{i}"),
        ]);
    }
    let out = c.ok(&["audit", "verify"]);
    assert!(out.contains("intact"), "{out}");
    // export: JSON lines and CSV with every entry
    let jsonl = c.ok(&["audit", "export"]);
    let n = jsonl.lines().count();
    assert!(n >= 9, "{jsonl}");
    let first: serde_json::Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert_eq!(first["seq"], 1);
    let csv = c.ok(&["audit", "export", "--format", "csv"]);
    assert_eq!(csv.lines().count(), n + 1);
    assert!(csv.starts_with("seq,time,actor"));
    let kill_entry = jsonl
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["action"] == "killswitch.kill")
        .unwrap();
    assert_eq!(kill_entry["reason"], "k0");
    assert_eq!(kill_entry["source"], "127.0.0.1");
    assert!(kill_entry["user_agent"]
        .as_str()
        .unwrap()
        .starts_with("opsctl/"));
    assert_eq!(kill_entry["diff"][0]["after"], true, "{kill_entry}");

    drop(c);

    // every kind of tampering is caught and the first bad entry named
    // (entries: 1 user, 2 token, 3 switch, 4 kill, 5 revive, 6 kill)
    let cases = [
        (
            "UPDATE audit SET reason = 'nothing to see' WHERE seq = 5;",
            "entry 5 was modified",
        ),
        ("DELETE FROM audit WHERE seq = 4;", "entry 4 is missing"),
        (
            "CREATE TEMP TABLE t AS SELECT * FROM audit WHERE seq IN (4, 5);
             DELETE FROM audit WHERE seq IN (4, 5);
             INSERT INTO audit SELECT CASE seq WHEN 4 THEN 5 ELSE 4 END, ts_ms, actor, role, source,
                 user_agent, action, target, reason, diff, prev_hash, hash FROM t;",
            "entry 4",
        ),
        ("DELETE FROM audit WHERE seq = 6;", "removed from the end"),
    ];
    for (sql, expected) in cases {
        let (code, out) = verify_after_tampering(sql);
        assert_eq!(code, Some(1), "{sql}: {out}");
        assert!(
            out.contains(expected),
            "{sql}: expected {expected:?} in {out}"
        );
    }
}

/// A fresh collector with six audit entries, `sql` run on its database while
/// it is stopped, then `opsctl audit verify`: (exit code, output).
fn verify_after_tampering(sql: &str) -> (Option<i32>, String) {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Collector::start(tmp.path());
    c.ok(&["killswitches", "create", "pay", "--description", "payments"]);
    c.ok(&["kill", "pay", "--env", "prod", "--reason", "k"]);
    c.ok(&["revive", "pay", "--env", "prod", "--reason", "r"]);
    c.ok(&["kill", "pay", "--env", "prod", "--reason", "k"]);
    assert!(c.ok(&["audit", "verify"]).contains("intact: 6 entries"));
    c.stop();
    let conn = rusqlite::Connection::open(tmp.path().join("collector-data/opsplane.db")).unwrap();
    conn.execute_batch(sql).unwrap();
    drop(conn);
    c.run();
    let out = c.opsctl(&["audit", "verify"]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_example_configs_in_deploy_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let (code, out, err) = run(
        "opsplane-agent",
        &[
            "check-config",
            root.join("deploy/agent.toml").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(
        "opsplane-collector",
        &[
            "check-config",
            root.join("deploy/collector.toml").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let demo = std::fs::read_to_string(root.join("deploy/demo/flags.json")).unwrap();
    common::flags::FlagSet::parse(&demo).expect("demo flags are valid");
}

#[test]
fn admin_and_ingest_refuse_bad_bodies_with_json_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Collector::start(tmp.path());
    let h = http();
    // malformed JSON: 400 naming the position
    let r = h
        .post(format!("{}/api/v1/killswitches", c.admin_url))
        .bearer_auth(&c.admin_token)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["error"]["code"], "PARSE_ERROR");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 1 column"),
        "{v}"
    );
    // over the limit: 413
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(1_100_000));
    let r = h
        .post(format!("{}/api/v1/killswitches", c.admin_url))
        .bearer_auth(&c.admin_token)
        .body(big.clone())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    assert_eq!(
        r.json::<serde_json::Value>().unwrap()["error"]["code"],
        "PAYLOAD_TOO_LARGE"
    );
    let r = h
        .post(format!("{}/v1/agent/enroll", c.ingest_url))
        .body(big)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // the collector is still fine
    assert!(c.opsctl(&["agents", "list"]).status.success());
    // ingest: no credential, bad credential, bad enrollment token
    let r = h
        .get(format!("{}/v1/agent/stream", c.ingest_url))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = h
        .get(format!("{}/v1/agent/stream", c.ingest_url))
        .bearer_auth("opsa_nope")
        .send()
        .unwrap();
    assert_eq!(
        r.json::<serde_json::Value>().unwrap()["error"]["code"],
        "UNKNOWN_AGENT"
    );
    let r = h
        .post(format!("{}/v1/agent/enroll", c.ingest_url))
        .json(&serde_json::json!({"token": "opse_nope", "identity": {"service": "web", "environment": "prod", "instance": "i", "host": "h", "version": "1"}}))
        .send()
        .unwrap();
    assert_eq!(
        r.json::<serde_json::Value>().unwrap()["error"]["code"],
        "INVALID_ENROLL_TOKEN"
    );
    // the admin plane is not on the ingest or status listeners
    for base in [&c.ingest_url, &c.status_url] {
        let r = h
            .get(format!("{base}/api/v1/agents"))
            .bearer_auth(&c.admin_token)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 404, "{base}");
    }
    // every listener answers /healthz; the admin one also /metrics
    for base in [&c.ingest_url, &c.admin_url, &c.status_url] {
        assert_eq!(
            h.get(format!("{base}/healthz"))
                .send()
                .unwrap()
                .status()
                .as_u16(),
            200
        );
    }
    let m = h
        .get(format!("{}/metrics", c.admin_url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(m.contains("opsplane_collector_build_info"), "{m}");
}

/// `audit verify` is total: a wrong column type is reported as the first bad
/// entry (exit 1, not an HTTP 500), and a fully emptied log is tampering.
#[test]
fn audit_verify_names_wrong_types_and_an_emptied_log() {
    let cases = [
        (
            "UPDATE audit SET actor = x'00ff' WHERE seq = 3;",
            "entry 3 was modified",
        ),
        (
            "UPDATE audit SET ts_ms = 'yesterday' WHERE seq = 2;",
            "entry 2 was modified",
        ),
        ("DELETE FROM audit;", "the log is empty"),
        (
            "DELETE FROM audit; DELETE FROM meta WHERE key = 'audit_head';",
            "the log is empty",
        ),
    ];
    for (sql, expected) in cases {
        let (code, out) = verify_after_tampering(sql);
        assert_eq!(code, Some(1), "{sql}: {out}");
        assert!(
            out.contains(expected),
            "{sql}: expected {expected:?} in {out}"
        );
    }
}

/// Far-future and overflowing expiries are refused with the limit named
/// (opsctl exit 2, the API 400), and the store goes on writing.
#[test]
fn far_future_expiries_are_refused_and_the_store_keeps_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Collector::start(tmp.path());
    for expires in ["10000y", "9223372036854775s"] {
        for args in [
            vec![
                "agents",
                "enroll-token",
                "--env",
                "prod",
                "--service",
                "web",
                "--expires",
                expires,
            ],
            vec![
                "tokens",
                "create",
                "--name",
                "far",
                "--role",
                "viewer",
                "--expires",
                expires,
            ],
        ] {
            let out = c.opsctl(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert!(err.contains("at most 10y"), "{args:?}: {err}");
        }
        // the API refuses the same, whoever calls it
        for (path, body) in [
            (
                "/api/v1/agents/enroll-tokens",
                serde_json::json!({"environment": "prod", "service": "web", "expires": expires}),
            ),
            (
                "/api/v1/tokens",
                serde_json::json!({"name": "far", "role": "viewer", "expires": expires}),
            ),
        ] {
            let r = http()
                .post(format!("{}{path}", c.admin_url))
                .bearer_auth(&c.admin_token)
                .json(&body)
                .send()
                .unwrap();
            assert_eq!(r.status().as_u16(), 400, "{path} {expires}");
            assert!(r.text().unwrap().contains("at most 10y"));
        }
    }
    // the longest allowed expiry works, and later writes still do
    c.ok(&[
        "agents",
        "enroll-token",
        "--env",
        "prod",
        "--service",
        "web",
        "--expires",
        "10y",
    ]);
    c.ok(&["killswitches", "create", "pay", "--description", "payments"]);
    c.ok(&[
        "kill",
        "pay",
        "--env",
        "prod",
        "--reason",
        "after the far-future attempt",
    ]);
    let r = http()
        .get(format!("{}/readyz", c.admin_url))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = http()
        .get(format!("{}/readyz", c.ingest_url))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

fn enroll(c: &Collector, token: &str, instance: &str) -> u16 {
    http()
        .post(format!("{}/v1/agent/enroll", c.ingest_url))
        .json(&serde_json::json!({
            "token": token,
            "identity": {"service": "web", "environment": "prod", "instance": instance,
                         "host": "h", "version": "1", "labels": {}}
        }))
        .send()
        .unwrap()
        .status()
        .as_u16()
}

/// Enrollment tokens are single-use unless created with a count, even under
/// concurrent enrollment; they can be listed and revoked.
#[test]
fn enrollment_tokens_are_single_use_countable_and_revocable() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Collector::start(tmp.path());
    // single use, with eight agents racing for it
    let once = c.json(&[
        "agents",
        "enroll-token",
        "--env",
        "prod",
        "--service",
        "web",
    ])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let results: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let (c, once) = (&c, &once);
                s.spawn(move || enroll(c, once, &format!("race-{i}")))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        results.iter().filter(|s| **s == 200).count(),
        1,
        "{results:?}"
    );
    assert!(
        results.iter().all(|s| *s == 200 || *s == 401),
        "{results:?}"
    );
    // with a count
    let v = c.json(&[
        "agents",
        "enroll-token",
        "--env",
        "prod",
        "--service",
        "web",
        "--uses",
        "2",
    ]);
    let twice = v["token"].as_str().unwrap().to_string();
    assert_eq!(enroll(&c, &twice, "a"), 200);
    assert_eq!(enroll(&c, &twice, "b"), 200);
    assert_eq!(enroll(&c, &twice, "c"), 401);
    // listed with their uses, and revocable
    let v = c.json(&[
        "agents",
        "enroll-token",
        "--env",
        "prod",
        "--service",
        "web",
        "--uses",
        "5",
    ]);
    let (id, spare) = (
        v["id"].as_str().unwrap().to_string(),
        v["token"].as_str().unwrap().to_string(),
    );
    let list = c.json(&["agents", "enroll-tokens", "list"]);
    let row = list["enroll_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        (row["uses"].as_u64(), row["max_uses"].as_u64()),
        (Some(0), Some(5))
    );
    c.ok(&[
        "agents",
        "enroll-tokens",
        "revoke",
        &id,
        "--reason",
        "leaked",
    ]);
    assert_eq!(enroll(&c, &spare, "d"), 401);
    let out = c.opsctl(&[
        "agents",
        "enroll-tokens",
        "revoke",
        &id,
        "--reason",
        "again",
    ]);
    assert_eq!(out.status.code(), Some(1), "revoking twice fails");
    let audit = c.json(&["audit", "list", "--action", "agent.enroll_token.revoke"]);
    assert_eq!(audit["entries"].as_array().unwrap().len(), 1);
    // an operator may, a viewer may not
    let viewer = c.token("watcher", "viewer");
    assert_eq!(
        c.opsctl_as(&viewer, &["agents", "enroll-tokens", "list"])
            .status
            .code(),
        Some(1)
    );
}
