//! `opsctl flags apply` against a real collector: definitions flagd would
//! load with problems (warnings) are refused unless accepted, shown by dry
//! runs, recorded when accepted; definitions flagd refuses stay refused
//! whole; and a `$ref` explosion is refused naming the compile budget
//! while a kill issued at the same time goes through.

use serde_json::Value;
use std::path::PathBuf;
use tests::*;

const SEED: &str = r#"{"flags":{"a":{"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"on"}}}"#;

/// `a` as seeded, plus `beta` whose targeting uses an operator flagd does
/// not know: flagd loads it and answers `beta` with PARSE_ERROR.
const WITH_WARNING: &str = r#"{"flags":{
  "a":{"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"on"},
  "beta":{"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"off",
          "targeting":{"if":[{"no_such_op":[{"var":"plan"}]},"on","off"]}}}}"#;

fn revision(c: &Collector) -> Option<u64> {
    c.json(&["flags", "list", "--env", "prod"])["revision"].as_u64()
}

fn file(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
    write_file(dir, name, text)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn warnings_refuse_apply_unless_accepted_and_are_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Collector::start(tmp.path());
    let seed = file(tmp.path(), "seed.json", SEED);
    c.ok(&[
        "flags",
        "apply",
        seed.to_str().unwrap(),
        "--env",
        "prod",
        "--reason",
        "seed",
    ]);
    let rev = revision(&c);
    let warn = file(tmp.path(), "warn.json", WITH_WARNING);
    let warn = warn.to_str().unwrap();

    // refused, every warning named with its flag, nothing applied
    let out = c.opsctl(&["flags", "apply", warn, "--env", "prod", "--reason", "r"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("1 warning")
            && err.contains("\"beta\"")
            && err.contains("no_such_op")
            && err.contains("--accept-warnings"),
        "{err}"
    );
    assert_eq!(revision(&c), rev);

    // --json: the refusal on standard output, the warnings as an array
    let out = c.opsctl(&[
        "--json", "flags", "apply", warn, "--env", "prod", "--reason", "r",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json refusal");
    assert_eq!(v["error"]["code"], "DEFINITION_WARNINGS");
    let warnings = v["error"]["warnings"].as_array().expect("array");
    assert_eq!(warnings.len(), 1, "{v}");
    assert!(warnings[0].as_str().unwrap().contains("beta"), "{v}");

    // the API answers 422 with the same list
    let resp = http()
        .post(format!("{}/api/v1/flags/apply", c.admin_url))
        .bearer_auth(&c.admin_token)
        .json(&serde_json::json!({"environment": "prod", "reason": "r",
            "definition": serde_json::from_str::<Value>(WITH_WARNING).unwrap()}))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 422);
    let body: Value = resp.json().unwrap();
    assert_eq!(body["error"]["warnings"].as_array().map(Vec::len), Some(1));

    // a dry run prints the diff and the warnings, and applies nothing
    let out = c.ok(&["flags", "apply", warn, "--env", "prod", "--dry-run"]);
    assert!(
        out.contains("/flags/beta")
            && out.contains("warnings (1)")
            && out.contains("no_such_op")
            && out.contains("dry run"),
        "{out}"
    );
    let v = c.json(&["flags", "apply", warn, "--env", "prod", "--dry-run"]);
    assert_eq!(v["warnings"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(revision(&c), rev);

    // accepted: applied, and the audit entry records what was accepted
    let out = c.ok(&[
        "flags",
        "apply",
        warn,
        "--env",
        "prod",
        "--reason",
        "beta ships later",
        "--accept-warnings",
    ]);
    assert!(
        out.contains("accepted warnings (1)") && out.contains("applied as revision"),
        "{out}"
    );
    let applied = revision(&c);
    assert!(applied > rev);
    let audit = c.json(&["audit", "list", "--action", "flags.apply", "--limit", "1"]);
    let entry = &audit["entries"][0];
    assert_eq!(entry["reason"], "beta ships later");
    let recorded = entry["diff"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["path"] == "/accepted_warnings")
        .unwrap_or_else(|| panic!("no accepted_warnings in {entry}"));
    assert!(recorded["after"][0]
        .as_str()
        .unwrap()
        .contains("no_such_op"));

    // flags set keeps warnings the revision already had
    let v = c.json(&[
        "flags", "set", "beta", "--env", "prod", "--state", "DISABLED", "--reason", "off",
    ]);
    assert_eq!(v["changed"], true, "{v}");
    c.ok(&[
        "flags",
        "set",
        "a",
        "--env",
        "prod",
        "--default-variant",
        "off",
        "--reason",
        "x",
    ]);

    // what flagd refuses stays refused whole, accepted or not
    let bad = file(
        tmp.path(),
        "bad.json",
        r#"{"flags":{"a":{"state":"ENABLED","variants":{"on":true},"defaultVariant":"maybe"}}}"#,
    );
    let before = revision(&c);
    let out = c.opsctl(&[
        "flags",
        "apply",
        bad.to_str().unwrap(),
        "--env",
        "prod",
        "--reason",
        "x",
        "--accept-warnings",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("maybe"), "{}", text(&out.stderr));
    assert_eq!(revision(&c), before);
}

/// A 20-level `$ref` chain (each evaluator references the previous one
/// twice: 1.2 KB that inlines to about two million nodes), used by `rule`.
fn ref_chain(rule: &str) -> String {
    let mut evaluators = vec![r#""e0": {"==": [{"var": "plan"}, "pro"]}"#.to_string()];
    for i in 1..=20 {
        evaluators.push(format!(
            r#""e{i}": {{"and": [{{"$ref": "e{p}"}}, {{"$ref": "e{p}"}}]}}"#,
            p = i - 1
        ));
    }
    format!(
        r#"{{"$evaluators": {{{}}}, "flags": {{"bomb": {{"state": "ENABLED", "variants": {{"on": true, "off": false}},
           "defaultVariant": "off", "targeting": {{"if": [{rule}, "on", "off"]}}}}}}}}"#,
        evaluators.join(", ")
    )
}

fn apply_in_background(
    c: &Collector,
    path: &std::path::Path,
) -> std::thread::JoinHandle<std::process::Output> {
    let (admin_url, token, path) = (
        c.admin_url.clone(),
        c.admin_token.clone(),
        path.to_str().unwrap().to_string(),
    );
    std::thread::spawn(move || {
        std::process::Command::new(bin("opsctl"))
            .args(["flags", "apply", &path, "--env", "prod", "--reason", "bomb"])
            .args(["--accept-warnings"])
            .env("OPSPLANE_URL", admin_url)
            .env("OPSPLANE_TOKEN", token)
            .output()
            .unwrap()
    })
}

/// Kills and revives `checkout` until `apply` is done, each one going
/// through; returns how many.
fn kill_until_done(c: &Collector, apply: &std::thread::JoinHandle<std::process::Output>) -> u64 {
    let mut kills: u64 = 0;
    loop {
        let verb = if kills.is_multiple_of(2) {
            "kill"
        } else {
            "revive"
        };
        c.ok(&[verb, "checkout", "--env", "prod", "--reason", "incident"]);
        kills += 1;
        if apply.is_finished() {
            return kills;
        }
    }
}

#[test]
fn a_ref_explosion_is_refused_naming_the_budget_while_a_kill_goes_through() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Collector::start(tmp.path());
    let seed = file(tmp.path(), "seed.json", SEED);
    c.ok(&[
        "flags",
        "apply",
        seed.to_str().unwrap(),
        "--env",
        "prod",
        "--reason",
        "seed",
    ]);
    c.ok(&["killswitches", "create", "checkout", "--description", "x"]);
    let rev = revision(&c);

    // in an iteration body the chain is evaluated once per element, so its
    // expanded size counts: over the budget, refused whole
    let bomb = file(
        tmp.path(),
        "bomb.json",
        &ref_chain(r#"{"some": [{"var": "xs"}, {"$ref": "e20"}]}"#),
    );
    assert!(std::fs::metadata(&bomb).unwrap().len() < 1500);
    let apply = apply_in_background(&c, &bomb);
    let kills = kill_until_done(&c, &apply);
    let out = apply.join().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("above the budget") && err.contains("\"bomb\""),
        "{err}"
    );
    let listed = c.json(&["flags", "list", "--env", "prod"]);
    assert!(listed["definition"]["flags"].get("bomb").is_none());
    // each kill and revive wrote its revision; the definition none
    assert_eq!(revision(&c), rev.map(|r| r + kills));

    // used directly, the shared evaluators compile once: applied
    let chain = file(tmp.path(), "chain.json", &ref_chain(r#"{"$ref": "e20"}"#));
    let apply = apply_in_background(&c, &chain);
    kill_until_done(&c, &apply);
    let out = apply.join().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = c.json(&["flags", "list", "--env", "prod"]);
    assert!(listed["definition"]["flags"].get("bomb").is_some());
}
