//! A real OpenFeature SDK against a real agent: the Python `openfeature-sdk`
//! with the `openfeature-provider-ofrep` provider (exact pins in
//! `tests/py/requirements.txt`) resolves every flag type, a targeting rule, a
//! fractional rollout, disabled and unknown flags and type mismatches from a
//! standalone agent serving a flag file, as an application would.
//!
//! Requires `tests/py/setup.sh` (creates `tests/py/.venv`).

use common::flags::{EvalContext, FlagSet};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use tests::*;

const FLAGS: &str = r#"{"flags": {
  "bool-flag": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
  "string-flag": {"state": "ENABLED", "variants": {"blue": "blue", "red": "red"}, "defaultVariant": "red",
    "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "blue", null]}},
  "int-flag": {"state": "ENABLED", "variants": {"small": 3, "big": 100}, "defaultVariant": "small",
    "targeting": {"if": [{"==": [{"var": "plan"}, "premium"]}, "big", null]}},
  "float-flag": {"state": "ENABLED", "variants": {"low": 1.0, "high": 2.5}, "defaultVariant": "low",
    "targeting": {"if": [{"var": "beta"}, "high", null]}},
  "object-flag": {"state": "ENABLED", "variants": {"v1": {"color": "red", "sizes": [1, 2, 3], "ratio": 0.5}, "v2": {"color": "blue"}},
    "defaultVariant": "v1"},
  "rollout": {"state": "ENABLED", "variants": {"control": "control", "treatment": "treatment"}, "defaultVariant": "control",
    "targeting": {"fractional": [["control", 50], ["treatment", 50]]}},
  "disabled-flag": {"state": "DISABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"},
  "disabled-string-flag": {"state": "DISABLED", "variants": {"a": "agent-value"}, "defaultVariant": "a"}
}}"#;

fn sdk_results(agent_url: &str) -> Map<String, Value> {
    let py_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py");
    let python = py_dir.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `tests/py/setup.sh` (needs python3 >= 3.10 with venv) before running this test",
        python.display()
    );
    let out = Command::new(&python)
        .arg(py_dir.join("ofrep_sdk_check.py"))
        .arg(agent_url)
        .output()
        .expect("running the Python OpenFeature SDK check");
    assert!(
        out.status.success(),
        "ofrep_sdk_check.py failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "SDK output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    v.as_object().expect("object of cases").clone()
}

/// (value, variant, reason, error code) as the SDK reported them.
fn outcome(r: &Map<String, Value>, id: &str) -> (Value, Value, Value, Value) {
    let c = r
        .get(id)
        .unwrap_or_else(|| panic!("case {id} missing from the SDK output"));
    (
        c["value"].clone(),
        c["variant"].clone(),
        c["reason"].clone(),
        c["error_code"].clone(),
    )
}

#[test]
fn python_openfeature_sdk_resolves_flags_through_ofrep() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write_file(tmp.path(), "flags.json", FLAGS);
    let head = "service = \"web\"\nenvironment = \"dev\"";
    let tail = format!("[flags]\nfile = {:?}\n", f.display().to_string());
    let a = Agent::start(&tmp.path().join("agent"), head, None, &tail);
    wait_for("agent ready", Duration::from_secs(20), || {
        (a.get("/readyz").0 == 200).then_some(())
    });

    let r = sdk_results(&a.api_url);
    let ok = |id: &str, value: Value, variant: &str, reason: &str| {
        assert_eq!(
            outcome(&r, id),
            (value, json!(variant), json!(reason), Value::Null),
            "case {id}: {}",
            r[id]
        );
    };

    // every type, static / targeting match / default
    ok("bool-static", json!(true), "on", "STATIC");
    ok("bool-no-context", json!(true), "on", "STATIC");
    ok("string-match", json!("blue"), "blue", "TARGETING_MATCH");
    ok("string-default", json!("red"), "red", "DEFAULT");
    // no targetingKey: the provider leaves it out, the agent treats it as absent
    ok("string-no-key", json!("blue"), "blue", "TARGETING_MATCH");
    ok("int-match", json!(100), "big", "TARGETING_MATCH");
    ok("int-default", json!(3), "small", "DEFAULT");
    assert_eq!(r["int-match"]["value_type"], "int");
    ok("float-default", json!(1.0), "low", "DEFAULT");
    ok("float-match", json!(2.5), "high", "TARGETING_MATCH");
    // 1.0 must reach Python as a float, or the provider raises TYPE_MISMATCH
    assert_eq!(
        r["float-default"]["value_type"], "float",
        "{}",
        r["float-default"]
    );
    assert_eq!(r["float-match"]["value_type"], "float");
    ok(
        "object-static",
        json!({"color": "red", "sizes": [1, 2, 3], "ratio": 0.5}),
        "v1",
        "STATIC",
    );
    assert_eq!(r["object-static"]["value_type"], "dict");

    // DISABLED: evaluated successfully, no value, so the caller's default applies
    let (v, _, reason, err) = outcome(&r, "disabled");
    assert_eq!(
        (v, reason, err),
        (json!(true), json!("DISABLED"), Value::Null),
        "{}",
        r["disabled"]
    );
    let (v, _, reason, err) = outcome(&r, "disabled-string");
    assert_eq!(
        (v, reason, err),
        (json!("caller-default"), json!("DISABLED"), Value::Null),
        "{}",
        r["disabled-string"]
    );

    // unknown flag: the caller's default with FLAG_NOT_FOUND
    let (v, _, reason, err) = outcome(&r, "unknown");
    assert_eq!(
        (v, reason, err),
        (json!("fallback"), json!("ERROR"), json!("FLAG_NOT_FOUND")),
        "{}",
        r["unknown"]
    );

    // type mismatches are raised client side; the caller's default is returned
    for (id, default) in [
        ("mismatch-string-as-bool", json!(true)),
        ("mismatch-float-as-int", json!(7)),
        ("mismatch-object-as-string", json!("s")),
    ] {
        let (v, _, reason, err) = outcome(&r, id);
        assert_eq!(
            (v, reason, err),
            (default, json!("ERROR"), json!("TYPE_MISMATCH")),
            "case {id}: {}",
            r[id]
        );
    }

    // the fractional rollout: each user in the bucket, with the reason, that
    // the flag engine (and so flagd) gives them; both buckets used
    let set = FlagSet::parse(FLAGS).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..40 {
        let id = format!("rollout-user-{i}");
        let mut ctx = EvalContext::new();
        ctx.insert("targetingKey", json!(format!("user-{i}")));
        let e = set.evaluate("rollout", &ctx).unwrap();
        let want = e.variant.unwrap();
        // flagd reports a fractional bucket as TARGETING_MATCH, and so do we
        assert_eq!(e.reason.as_str(), "TARGETING_MATCH");
        ok(&id, json!(want), want, e.reason.as_str());
        seen.insert(want.to_string());
    }
    assert_eq!(
        seen.len(),
        2,
        "40 users should land in both buckets: {seen:?}"
    );
}
