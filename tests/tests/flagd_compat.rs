//! Compatibility of `common::flags` with the reference implementation,
//! `@openfeature/flagd-core` (pinned in tests/js/package.json).
//!
//! A realistic definition is evaluated for several hundred random contexts
//! (fixed seed) by our engine and by `node tests/js/flagd_eval.mjs`; value,
//! variant, reason and the presence of an error must agree for every
//! (flag, context) pair.
//!
//! Deliberately avoided: rules on `$flagd.timestamp` (clock-dependent) and
//! non-ASCII bucketing strings (flagd-core hashes UTF-16 code units, the flagd
//! daemon and we hash UTF-8 bytes; see the `common::flags` docs).
//!
//! Requires `npm ci --prefix tests/js`.
#![recursion_limit = "512"]

use common::flags::{EvalContext, FlagSet, Reason};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::process::Command;

fn definition() -> Value {
    json!({
        "$schema": "https://flagd.dev/schema/v0/flags.json",
        "metadata": { "flagSetId": "compat", "team": "platform" },
        "$evaluators": {
            "is_staff": { "ends_with": [{ "var": "email" }, "@opsplane.dev"] },
            "is_beta": { "or": [{ "$ref": "is_staff" }, { "==": [{ "var": "beta" }, true] }] }
        },
        "flags": {
            "static-bool": {
                "state": "ENABLED", "variants": { "on": true, "off": false }, "defaultVariant": "on"
            },
            "static-string": {
                "state": "ENABLED", "variants": { "red": "#f00", "blue": "#00f" }, "defaultVariant": "blue",
                "metadata": { "owner": "web" }
            },
            "static-number": {
                "state": "ENABLED", "variants": { "low": 10, "high": 1000.5 }, "defaultVariant": "high",
                "targeting": {}
            },
            "static-object": {
                "state": "ENABLED",
                "variants": { "v1": { "timeout": 30, "retries": [1, 2] }, "v2": { "timeout": 5 } },
                "defaultVariant": "v1"
            },
            "code-default": {
                "state": "ENABLED", "variants": { "a": "A", "b": "B" },
                "targeting": { "if": [{ "==": [{ "var": "plan" }, "gold"] }, "a", null] }
            },
            "disabled": {
                "state": "DISABLED", "variants": { "on": true, "off": false }, "defaultVariant": "on"
            },
            "split-50": {
                "state": "ENABLED", "variants": { "on": true, "off": false }, "defaultVariant": "off",
                "targeting": { "fractional": [["on", 50], ["off", 50]] }
            },
            "split-3way": {
                "state": "ENABLED", "variants": { "control": "c", "treatment-a": "a", "treatment-b": "b" },
                "defaultVariant": "control",
                "targeting": { "fractional": [["control", 80], ["treatment-a", 15], ["treatment-b", 5]] }
            },
            "split-by-email": {
                "state": "ENABLED", "variants": { "red": "red", "green": "green", "blue": "blue" },
                "defaultVariant": "red",
                "targeting": { "fractional": [
                    { "cat": [{ "var": "$flagd.flagKey" }, { "var": "email" }] },
                    ["red", 25], ["green", 25], ["blue"]
                ] }
            },
            "split-implicit-weights": {
                "state": "ENABLED", "variants": { "x": 1, "y": 2, "z": 3 }, "defaultVariant": "x",
                "targeting": { "fractional": [["x"], ["y"], ["z"]] }
            },
            "email-rules": {
                "state": "ENABLED", "variants": { "staff": "staff", "partner": "partner", "other": "other" },
                "defaultVariant": "other",
                "targeting": { "if": [
                    { "$ref": "is_staff" }, "staff",
                    { "starts_with": [{ "var": "email" }, "partner."] }, "partner",
                    null
                ] }
            },
            "version-gate": {
                "state": "ENABLED", "variants": { "new": true, "old": false }, "defaultVariant": "old",
                "targeting": { "if": [
                    { "sem_ver": [{ "var": "version" }, ">=", "2.1.0"] }, "new",
                    { "sem_ver": [{ "var": "version" }, "^", "1.0.0"] }, "old",
                    null
                ] }
            },
            "version-tilde": {
                "state": "ENABLED", "variants": { "yes": "yes", "no": "no" }, "defaultVariant": "no",
                "targeting": { "if": [{ "sem_ver": [{ "var": "version" }, "~", "v2.1"] }, "yes", "no"] }
            },
            "country-in": {
                "state": "ENABLED", "variants": { "eu": "eu", "world": "world" }, "defaultVariant": "world",
                "targeting": { "if": [{ "in": [{ "var": "country" }, ["de", "fr", "it", "es", "nl"]] }, "eu", "world"] }
            },
            "nested-if": {
                "state": "ENABLED",
                "variants": { "gold-beta": 3, "gold": 2, "beta": 1, "none": 0 },
                "defaultVariant": "none",
                "targeting": { "if": [
                    { "==": [{ "var": "plan" }, "gold"] },
                    { "if": [{ "$ref": "is_beta" }, "gold-beta", "gold"] },
                    { "if": [{ "$ref": "is_beta" }, "beta", null] }
                ] }
            },
            "age-threshold": {
                "state": "ENABLED", "variants": { "adult": true, "minor": false }, "defaultVariant": "minor",
                "targeting": { "if": [{ ">=": [{ "var": "age" }, 18] }, "adult", "minor"] }
            },
            "between": {
                "state": "ENABLED", "variants": { "in": "in", "out": "out" }, "defaultVariant": "out",
                "targeting": { "if": [{ "<=": [10, { "var": ["age", 0] }, 65] }, "in", "out"] }
            },
            "boolean-result": {
                "state": "ENABLED", "variants": { "true": "T", "false": "F" }, "defaultVariant": "false",
                "targeting": { "and": [{ "!!": [{ "var": "beta" }] }, { "!": { "missing": ["email"] } }] }
            },
            "cat-variant": {
                "state": "ENABLED",
                "variants": { "tier-gold": 1, "tier-silver": 2, "tier-null": 3, "tier-": 4 },
                "defaultVariant": "tier-",
                "targeting": { "cat": ["tier-", { "var": "plan" }] }
            },
            "arith": {
                "state": "ENABLED", "variants": { "big": "big", "small": "small" }, "defaultVariant": "small",
                "targeting": { "if": [{ ">": [{ "+": [{ "var": "age" }, { "*": [2, 10] }] }, 60] }, "big", "small"] }
            },
            "missing-some": {
                "state": "ENABLED", "variants": { "complete": "c", "partial": "p" }, "defaultVariant": "partial",
                "targeting": { "if": [
                    { "missing_some": [2, ["email", "version", "country"]] }, "partial", "complete"
                ] }
            },
            "some-tags": {
                "state": "ENABLED", "variants": { "tagged": true, "untagged": false }, "defaultVariant": "untagged",
                "targeting": { "if": [
                    { "some": [{ "var": "tags" }, { "==": [{ "var": "" }, "vip"] }] }, "tagged", "untagged"
                ] }
            },
            "substr-domain": {
                "state": "ENABLED", "variants": { "com": "com", "other": "other" }, "defaultVariant": "other",
                "targeting": { "if": [{ "==": [{ "substr": [{ "var": ["email", ""] }, -4] }, ".com"] }, "com", "other"] }
            },
            "strict-eq": {
                "state": "ENABLED", "variants": { "one": 1, "other": 0 }, "defaultVariant": "other",
                "targeting": { "if": [{ "===": [{ "var": "level" }, 1] }, "one", "other"] }
            },
            "loose-eq": {
                "state": "ENABLED", "variants": { "one": 1, "other": 0 }, "defaultVariant": "other",
                "targeting": { "if": [{ "==": [{ "var": "level" }, 1] }, "one", "other"] }
            },
            "flag-key-var": {
                "state": "ENABLED", "variants": { "flag-key-var": "self", "x": "x" }, "defaultVariant": "x",
                "targeting": { "var": "$flagd.flagKey" }
            },
            "unknown-variant": {
                "state": "ENABLED", "variants": { "a": "a", "b": "b" }, "defaultVariant": "a",
                "targeting": { "var": "plan" }
            }
        }
    })
}

fn random_context(rng: &mut StdRng, i: usize) -> Value {
    let mut m = Map::new();
    let alnum = |rng: &mut StdRng, n: usize| -> String {
        const CS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_.";
        (0..n)
            .map(|_| CS[rng.gen_range(0..CS.len())] as char)
            .collect()
    };
    match rng.gen_range(0..20) {
        0 => {}
        1 => {
            m.insert("targetingKey".into(), json!(""));
        }
        _ => {
            let n = rng.gen_range(1..40);
            m.insert(
                "targetingKey".into(),
                json!(format!("user-{i}-{}", alnum(rng, n))),
            );
        }
    }
    let domains = [
        "opsplane.dev",
        "example.com",
        "corp.io",
        "mail.org",
        "opsplane.dev.evil.com",
    ];
    match rng.gen_range(0..10) {
        0 => {}
        1 => {
            m.insert("email".into(), Value::Null);
        }
        2 => {
            let n = rng.gen_range(3..8);
            m.insert(
                "email".into(),
                json!(format!("partner.{}@{}", alnum(rng, n), domains[1])),
            );
        }
        _ => {
            let n = rng.gen_range(1..12);
            let d = domains.choose(rng).unwrap();
            m.insert("email".into(), json!(format!("{}@{d}", alnum(rng, n))));
        }
    }
    let versions = [
        "2.1.0",
        "2.1.5",
        "v2.1.3",
        "2.0.9",
        "1.4.2",
        "1.0.0-beta.1",
        "2.1.0-rc.1",
        "3.0.0",
        "v1.9",
        "2",
        "0.9.0",
        "not-a-version",
        "2.1.0+build.5",
        "01.2.3",
        " 2.2.0 ",
    ];
    match rng.gen_range(0..8) {
        0 => {}
        1 => {
            m.insert("version".into(), json!(rng.gen_range(0..4)));
        }
        _ => {
            m.insert("version".into(), json!(versions.choose(rng).unwrap()));
        }
    }
    let countries = ["de", "fr", "us", "jp", "it", "DE", "es", "nl", ""];
    if rng.gen_bool(0.8) {
        m.insert("country".into(), json!(countries.choose(rng).unwrap()));
    }
    let plans = ["gold", "silver", "bronze", "a", "b"];
    match rng.gen_range(0..6) {
        0 => {}
        1 => {
            m.insert("plan".into(), json!(rng.gen_range(0..3)));
        }
        _ => {
            m.insert("plan".into(), json!(plans.choose(rng).unwrap()));
        }
    }
    match rng.gen_range(0..10) {
        0 => {}
        1 => {
            m.insert("age".into(), json!("abc"));
        }
        2 => {
            m.insert("age".into(), json!(format!("{}", rng.gen_range(0..90))));
        }
        3 => {
            m.insert("age".into(), json!(rng.gen_range(0.0..90.0)));
        }
        4 => {
            m.insert("age".into(), Value::Null);
        }
        _ => {
            m.insert("age".into(), json!(rng.gen_range(0..90)));
        }
    }
    match rng.gen_range(0..5) {
        0 => {}
        1 => {
            m.insert("beta".into(), json!("yes"));
        }
        _ => {
            m.insert("beta".into(), json!(rng.gen_bool(0.5)));
        }
    }
    match rng.gen_range(0..6) {
        0 => {}
        1 => {
            m.insert("level".into(), json!("1"));
        }
        2 => {
            m.insert("level".into(), json!(true));
        }
        _ => {
            m.insert("level".into(), json!(rng.gen_range(0..3)));
        }
    }
    if rng.gen_bool(0.6) {
        let all = ["vip", "new", "churn", "trial"];
        let k = rng.gen_range(0..4);
        let tags: Vec<&str> = all.choose_multiple(rng, k).copied().collect();
        m.insert("tags".into(), json!(tags));
    }
    Value::Object(m)
}

#[test]
fn matches_flagd_core() {
    let js_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js");
    assert!(
        js_dir.join("node_modules/@openfeature/flagd-core").is_dir(),
        "tests/js/node_modules is missing: run `npm ci --prefix tests/js` (needs node >= 18) \
         before running this test"
    );

    let def = definition();
    let set = FlagSet::from_value(&def).expect("definition compiles");

    let mut rng = StdRng::seed_from_u64(0x0f1a_9d5e);
    let contexts: Vec<Value> = (0..400).map(|i| random_context(&mut rng, i)).collect();

    let dir = tempfile::tempdir().unwrap();
    let def_path = dir.path().join("def.json");
    let ctx_path = dir.path().join("contexts.json");
    std::fs::write(&def_path, serde_json::to_vec(&def).unwrap()).unwrap();
    std::fs::write(&ctx_path, serde_json::to_vec(&contexts).unwrap()).unwrap();

    let out = Command::new("node")
        .arg(js_dir.join("flagd_eval.mjs"))
        .arg(&def_path)
        .arg(&ctx_path)
        .output()
        .expect("running node (is Node.js >= 18 installed?)");
    assert!(
        out.status.success(),
        "flagd_eval.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Vec<Map<String, Value>> =
        serde_json::from_slice(&out.stdout).expect("flagd_eval.mjs prints JSON");
    assert_eq!(reference.len(), contexts.len());

    let mut compared = 0usize;
    let mut mismatches = Vec::new();
    let mut reasons = std::collections::BTreeMap::<String, usize>::new();
    for (ctx_json, want_row) in contexts.iter().zip(&reference) {
        let ctx = EvalContext::from_map(ctx_json.as_object().unwrap().clone());
        assert_eq!(
            want_row.len(),
            set.len(),
            "flagd-core and we see different flag sets"
        );
        for (key, got) in set.evaluate_all(&ctx) {
            let want = &want_row[key];
            compared += 1;
            *reasons.entry(got.reason.as_str().to_string()).or_default() += 1;
            let got_value = got.value.as_deref().cloned();
            let want_value = want.get("value").cloned();
            let got_variant = got.variant.map(str::to_string);
            let want_variant = want
                .get("variant")
                .and_then(Value::as_str)
                .map(str::to_string);
            let want_reason = want["reason"].as_str().unwrap();
            let same_value = match (&got_value, &want_value) {
                (Some(Value::Number(a)), Some(Value::Number(b))) => a.as_f64() == b.as_f64(),
                (a, b) => a == b,
            };
            let same_error = got.error.is_some() == want.get("errorCode").is_some();
            if !same_value
                || got_variant != want_variant
                || got.reason.as_str() != want_reason
                || !same_error
            {
                mismatches.push(format!(
                    "flag {key} ctx {ctx_json}: ours value={got_value:?} variant={got_variant:?} reason={} error={:?}; flagd-core {want}",
                    got.reason.as_str(),
                    got.error
                ));
            }
        }
    }
    eprintln!("compared {compared} (flag, context) pairs; our reasons: {reasons:?}");
    assert!(
        mismatches.is_empty(),
        "{} of {compared} pairs differ from flagd-core:\n{}",
        mismatches.len(),
        mismatches
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The data must exercise every outcome, or the comparison proves little.
    for r in [
        Reason::Static,
        Reason::TargetingMatch,
        Reason::Default,
        Reason::Disabled,
        Reason::Error,
    ] {
        assert!(reasons.contains_key(r.as_str()), "no {r} outcome exercised");
    }
}
