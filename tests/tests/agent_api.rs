//! The agent's local API under bad input, and standalone mode on a watched
//! flag file (no collector at all).

use serde_json::{json, Value};
use std::time::Duration;
use tests::*;

const FLAGS: &str = r#"{"flags": {
  "dark-mode": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
    "targeting": {"fractional": [["on", 50], ["off", 50]]}},
  "ratio": {"state": "ENABLED", "variants": {"low": 1.0, "high": 2.5}, "defaultVariant": "low"},
  "region-banner": {"state": "ENABLED", "variants": {"eu": "eu", "other": "other"}, "defaultVariant": "other",
    "targeting": {"if": [{"==": [{"var": "region"}, "eu-west"]}, "eu", null]}},
  "old": {"state": "DISABLED", "variants": {"on": true}, "defaultVariant": "on"}
}}"#;

fn standalone(dir: &std::path::Path, flags: &str) -> (Agent, std::path::PathBuf) {
    let f = write_file(dir, "flags.json", flags);
    let head = "service = \"web\"\nenvironment = \"dev\"\nlabels = { region = \"eu-west\" }";
    let tail = format!(
        "[flags]\nfile = {:?}\npoll_interval = \"100ms\"\n",
        f.display().to_string()
    );
    (Agent::start(&dir.join("agent"), head, None, &tail), f)
}

#[test]
fn ofrep_answers_and_errors_follow_the_protocol() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, _) = standalone(tmp.path(), FLAGS);
    let c = http();
    let post = |path: &str, body: Option<&str>| {
        let mut r = c.post(format!("{}{path}", a.api_url));
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = r.send().unwrap();
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        (status, ctype, resp.text().unwrap())
    };

    // success: value, variant, reason; floats keep their fractional part
    let (st, ct, body) = post(
        "/ofrep/v1/evaluate/flags/ratio",
        Some(r#"{"context":{"targetingKey":"u"}}"#),
    );
    assert_eq!((st, ct.as_deref()), (200, Some("application/json")));
    assert!(body.contains(r#""value":1.0"#), "{body}");
    // the agent's own context (labels) is merged in; request attributes win
    let (_, _, body) = post("/ofrep/v1/evaluate/flags/region-banner", Some("{}"));
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["value"], "eu");
    let (_, _, body) = post(
        "/ofrep/v1/evaluate/flags/region-banner",
        Some(r#"{"context":{"region":"us"}}"#),
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["value"].clone(), v["reason"].clone()),
        (json!("other"), json!("DEFAULT"))
    );
    // empty body = empty context
    assert_eq!(post("/ofrep/v1/evaluate/flags/ratio", None).0, 200);
    // disabled: success without a value
    let (st, _, body) = post("/ofrep/v1/evaluate/flags/old", Some("{}"));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((st, v["reason"].clone()), (200, json!("DISABLED")));
    assert!(v.get("value").is_none(), "{body}");
    assert!(v["variant"].is_string(), "variant always present: {body}");

    // malformed JSON: 400 PARSE_ERROR with the key and details
    let (st, _, body) = post("/ofrep/v1/evaluate/flags/ratio", Some("{\"context\": {"));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (st, v["errorCode"].clone(), v["key"].clone()),
        (400, json!("PARSE_ERROR"), json!("ratio"))
    );
    assert!(
        v["errorDetails"].as_str().unwrap().contains("line 1"),
        "{body}"
    );
    let (st, _, body) = post("/ofrep/v1/evaluate/flags", Some("not json"));
    assert_eq!(
        (
            st,
            serde_json::from_str::<Value>(&body).unwrap()["errorCode"].clone()
        ),
        (400, json!("PARSE_ERROR"))
    );
    let (st, _, body) = post("/ofrep/v1/evaluate/flags/ratio", Some(r#"{"context": 5}"#));
    assert_eq!(
        (
            st,
            serde_json::from_str::<Value>(&body).unwrap()["errorCode"].clone()
        ),
        (400, json!("INVALID_CONTEXT"))
    );
    // unknown flag: 404 FLAG_NOT_FOUND
    let (st, _, body) = post("/ofrep/v1/evaluate/flags/nope", Some("{}"));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((st, v["errorCode"].clone()), (404, json!("FLAG_NOT_FOUND")));
    assert!(v["errorDetails"].is_string());
    let (st, v) = a.get("/v1/flags/nope");
    assert_eq!(
        (st, v["error"]["code"].clone()),
        (404, json!("FLAG_NOT_FOUND"))
    );
    let (st, v) = a.get("/v1/killswitches/nope");
    assert_eq!(
        (st, v["error"]["code"].clone()),
        (404, json!("KILLSWITCH_NOT_FOUND"))
    );
    // over the body limit: 413, and the agent goes on serving
    let big = format!("{{\"context\":{{\"x\":\"{}\"}}}}", "a".repeat(1_100_000));
    assert_eq!(post("/ofrep/v1/evaluate/flags/ratio", Some(&big)).0, 413);
    assert_eq!(post("/ofrep/v1/evaluate/flags/ratio", Some("{}")).0, 200);
    // unknown routes and methods: JSON, never HTML
    let r = c.get(format!("{}/nothing/here", a.api_url)).send().unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(r.json::<Value>().unwrap()["error"]["code"], "NOT_FOUND");
    let r = c.delete(format!("{}/v1/flags", a.api_url)).send().unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert!(r.json::<Value>().unwrap()["error"]["code"].is_string());
}

#[test]
fn bulk_etag_follows_the_evaluated_body() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, _) = standalone(tmp.path(), FLAGS);
    let c = http();
    let bulk = |ctx: Value, etag: Option<&str>| {
        let mut r = c
            .post(format!("{}/ofrep/v1/evaluate/flags", a.api_url))
            .json(&json!({ "context": ctx }));
        if let Some(e) = etag {
            r = r.header("if-none-match", e);
        }
        let resp = r.send().unwrap();
        let status = resp.status().as_u16();
        let etag = resp
            .headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_string());
        (status, etag, resp.text().unwrap())
    };
    let (st, etag, body) = bulk(json!({"targetingKey": "user-1"}), None);
    assert_eq!(st, 200);
    let etag = etag.expect("etag");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["flags"].as_array().unwrap().len(), 4);
    // same context: 304, also with a weak tag or in a list
    assert_eq!(bulk(json!({"targetingKey": "user-1"}), Some(&etag)).0, 304);
    assert_eq!(
        bulk(
            json!({"targetingKey": "user-1"}),
            Some(&format!("\"x\", W/{etag}"))
        )
        .0,
        304
    );
    // another context that changes an answer: 200 with a new tag
    let (st, e2, _) = bulk(
        json!({"targetingKey": "user-1", "region": "us"}),
        Some(&etag),
    );
    assert_eq!(st, 200);
    assert_ne!(e2.unwrap(), etag);
}

#[test]
fn standalone_flag_file_is_watched_and_bad_files_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, f) = standalone(tmp.path(), FLAGS);
    assert_eq!(a.get("/readyz").0, 200);
    let s = a.status();
    assert_eq!(s["flags"]["source"], "file");
    assert_eq!(s["collector"]["configured"], false);
    assert_eq!(a.get("/v1/flags/ratio").1["value"], 1.0);
    // an edit is picked up
    std::fs::write(
        &f,
        FLAGS.replace(r#""defaultVariant": "low""#, r#""defaultVariant": "high""#),
    )
    .unwrap();
    wait_for("file reloaded", Duration::from_secs(10), || {
        (a.get("/v1/flags/ratio").1["value"] == 2.5).then_some(())
    });
    let rev = a.status()["flags"]["revision"].as_u64().unwrap();
    // an invalid file is refused as a whole; the previous flags stay
    std::fs::write(
        &f,
        FLAGS.replace(r#""defaultVariant": "off""#, r#""defaultVariant": "maybe""#),
    )
    .unwrap();
    wait_for("rejection logged", Duration::from_secs(10), || {
        a.log_text().contains("flag file rejected").then_some(())
    });
    assert!(
        a.log_text().contains("dark-mode"),
        "the message names the flag"
    );
    assert_eq!(a.get("/v1/flags/ratio").1["value"], 2.5);
    assert_eq!(a.status()["flags"]["revision"].as_u64().unwrap(), rev);
    // bulk /v1/flags with query attributes
    let (_, v) = a.get("/v1/flags?region=us");
    assert_eq!(v["flags"]["region-banner"]["value"], "other");
    assert_eq!(v["flags"]["old"]["reason"], "DISABLED");
    // metrics in Prometheus text
    let m = http()
        .get(format!("{}/metrics", a.api_url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(m.contains("opsplane_agent_build_info"), "{m}");
    assert!(m.contains("opsplane_agent_flag_revision"), "{m}");
}

#[test]
fn sigterm_stops_the_agent_quickly() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut a, _) = standalone(tmp.path(), FLAGS);
    let (st, took) = a.proc.as_mut().unwrap().terminate();
    assert!(st.success(), "{st}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn optional_bearer_token_guards_the_local_api() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write_file(tmp.path(), "flags.json", FLAGS);
    let tail = format!("[flags]\nfile = {:?}\n", f.display().to_string());
    let head = "service = \"web\"\nenvironment = \"dev\"";
    let mut a = Agent::start(&tmp.path().join("agent"), head, None, &tail);
    a.proc.as_mut().unwrap().kill9();
    let cfg = std::fs::read_to_string(&a.config)
        .unwrap()
        .replace("[api]\n", "[api]\ntoken = \"s3cret\"\n");
    std::fs::write(&a.config, cfg).unwrap();
    a.run();
    assert_eq!(a.get("/healthz").0, 200);
    assert_eq!(a.get("/v1/flags").0, 401);
    let ok = http()
        .get(format!("{}/v1/flags", a.api_url))
        .bearer_auth("s3cret")
        .send()
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
}

/// POST a bulk evaluation; (status, etag, body).
fn bulk_eval(a: &Agent, ctx: Value) -> (u16, String, String) {
    let resp = http()
        .post(format!("{}/ofrep/v1/evaluate/flags", a.api_url))
        .json(&json!({ "context": ctx }))
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let etag = resp
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, etag, resp.text().unwrap())
}

fn single_eval(a: &Agent, key: &str, ctx: Value) -> Value {
    http()
        .post(format!("{}/ofrep/v1/evaluate/flags/{key}", a.api_url))
        .json(&json!({ "context": ctx }))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

fn bulk_value(body: &str, key: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap();
    v["flags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"] == key)
        .unwrap_or_else(|| panic!("no {key} in {body}"))["value"]
        .clone()
}

#[test]
fn cached_bulk_answers_follow_context_and_revision() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, f) = standalone(tmp.path(), FLAGS);
    let eu = json!({"targetingKey": "user-7", "region": "eu-west"});
    let us = json!({"targetingKey": "user-7", "region": "us"});
    let (st, e1, b1) = bulk_eval(&a, eu.clone());
    assert_eq!(st, 200);
    // the same context again (served from the cache): the same bytes and tag
    let (_, e1b, b1b) = bulk_eval(&a, eu.clone());
    assert_eq!((&e1, &b1), (&e1b, &b1b));
    // the same context written differently is the same merged context
    let (_, e1c, b1c) = bulk_eval(&a, json!({"region": "eu-west", "targetingKey": "user-7"}));
    assert_eq!((&e1, &b1), (&e1c, &b1c));
    // another context never gets the first one's body
    let (_, e2, b2) = bulk_eval(&a, us.clone());
    assert_ne!(e1, e2);
    assert_eq!(bulk_value(&b1, "region-banner"), "eu");
    assert_eq!(bulk_value(&b2, "region-banner"), "other");
    assert_eq!(
        bulk_value(&bulk_eval(&a, eu.clone()).2, "region-banner"),
        "eu"
    );
    // a new revision invalidates what was cached for the same context
    assert_eq!(bulk_value(&b1, "ratio"), 1.0);
    std::fs::write(
        &f,
        FLAGS.replace(r#""defaultVariant": "low""#, r#""defaultVariant": "high""#),
    )
    .unwrap();
    wait_for(
        "bulk answer follows the new file",
        Duration::from_secs(10),
        || (bulk_value(&bulk_eval(&a, eu.clone()).2, "ratio") == 2.5).then_some(()),
    );
    let (_, e3, b3) = bulk_eval(&a, eu.clone());
    assert_ne!(e3, e1);
    assert_eq!(bulk_value(&b3, "region-banner"), "eu");
    // /v1/flags is written by the same encoder: same answers, its own shape
    let (_, v) = a.get("/v1/flags?targetingKey=user-7&region=eu-west");
    assert_eq!(v["flags"]["ratio"]["value"], 2.5);
    assert_eq!(v["flags"]["region-banner"]["variant"], "eu");
    assert_eq!(v["flags"]["old"]["variant"], Value::Null);
    assert!(v["revision"].as_u64().is_some());
}

const CONTEXT_FLAGS: &str = r#"{"flags": {
  "by-version": {"state": "ENABLED", "variants": {"agent": "agent", "app": "app", "none": "none"}, "defaultVariant": "none",
    "targeting": {"if": [{"==": [{"var": "version"}, "0.1.0"]}, "agent",
                         {"==": [{"var": "version"}, "2.0.0"]}, "app", null]}},
  "by-service": {"state": "ENABLED", "variants": {"yes": true, "no": false}, "defaultVariant": "no",
    "targeting": {"if": [{"==": [{"var": "service"}, "web"]}, "yes", "no"]}},
  "by-flag-key": {"state": "ENABLED", "variants": {"yes": true, "no": false}, "defaultVariant": "no",
    "targeting": {"if": [{"==": [{"var": "$flagd.flagKey"}, "by-flag-key"]}, "yes", "no"]}},
  "by-time": {"state": "ENABLED", "variants": {"after": "after", "before": "before"}, "defaultVariant": "before",
    "targeting": {"if": [{">": [{"var": "$flagd.timestamp"}, 1600000000]}, "after", "before"]}},
  "time-echo": {"state": "ENABLED", "variants": {"before": "before", "after": "after"}, "defaultVariant": "before",
    "targeting": {"if": [{"<": [{"var": "$flagd.timestamp"}, {"var": "deadline"}]}, "before", "after"]}}
}}"#;

#[test]
fn the_context_has_no_agent_version_but_has_flagd_variables() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, _) = standalone(tmp.path(), CONTEXT_FLAGS);
    // no version from the app: the rule does not see the agent's own version
    let v = single_eval(&a, "by-version", json!({"targetingKey": "u"}));
    assert_eq!(v["value"], "none", "{v}");
    let v = single_eval(
        &a,
        "by-version",
        json!({"targetingKey": "u", "version": "2.0.0"}),
    );
    assert_eq!(v["value"], "app", "{v}");
    let (_, body) = a.get("/v1/flags/by-version");
    assert_eq!(body["value"], "none", "{body}");
    // the other identity keys stay
    assert_eq!(single_eval(&a, "by-service", json!({}))["value"], true);
    // $flagd.flagKey and $flagd.timestamp, single and bulk
    let v = single_eval(&a, "by-flag-key", json!({}));
    assert_eq!(v["value"], true, "{v}");
    let v = single_eval(&a, "by-time", json!({}));
    assert_eq!(v["value"], "after", "{v}");
    let (st, _, body) = bulk_eval(&a, json!({"targetingKey": "u"}));
    assert_eq!(st, 200);
    assert_eq!(bulk_value(&body, "by-flag-key"), true);
    assert_eq!(bulk_value(&body, "by-time"), "after");
    assert_eq!(bulk_value(&body, "by-version"), "none");
    // a time-dependent set is never served stale from the cache: with a
    // deadline a second or two ahead, the same context flips once it passes
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ctx = json!({"targetingKey": "u", "deadline": now_s + 2});
    assert_eq!(
        bulk_value(&bulk_eval(&a, ctx.clone()).2, "time-echo"),
        "before"
    );
    wait_for("the deadline passes", Duration::from_secs(10), || {
        (bulk_value(&bulk_eval(&a, ctx.clone()).2, "time-echo") == "after").then_some(())
    });
}

#[test]
fn an_empty_api_token_file_is_a_config_error() {
    let tmp = tempfile::tempdir().unwrap();
    let flags = write_file(tmp.path(), "flags.json", FLAGS);
    for (name, content) in [("empty.token", ""), ("blank.token", "  \n\t\n")] {
        let token = write_file(tmp.path(), name, content);
        let cfg = write_file(
            tmp.path(),
            "agent.toml",
            &format!(
                "service = \"web\"\nenvironment = \"dev\"\ndata_dir = {:?}\n[api]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n[flags]\nfile = {:?}\n",
                tmp.path().join("data").display().to_string(),
                token.display().to_string(),
                flags.display().to_string()
            ),
        );
        for args in [
            vec!["check-config", cfg.to_str().unwrap()],
            vec!["run", "--config", cfg.to_str().unwrap()],
        ] {
            let out = std::process::Command::new(bin("opsplane-agent"))
                .args(&args)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?} with {name}: {err}");
            assert!(
                err.contains("agent.toml:6") && err.contains("api.token_file"),
                "names file, line and key: {err}"
            );
            assert!(err.contains(name), "names the token file: {err}");
        }
    }
}
