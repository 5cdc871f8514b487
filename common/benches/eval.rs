//! Flag evaluation in-process: `cargo bench -p common --bench eval`.
//!
//! Targets: a static flag <= 0.2 us, a targeting or fractional rule <= 1.5 us.
//! For comparison, flagd's Go evaluator takes ~1.4 us per static flag and
//! 7-11 us per targeting or fractional rule (its committed benchmark.txt).

use common::flags::{EvalContext, FlagSet};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use serde_json::{json, Map, Value};

fn definition() -> Value {
    json!({
        "$evaluators": {
            "staff": { "ends_with": [{ "var": "email" }, "@opsplane.dev"] }
        },
        "flags": {
            "static-bool": {
                "state": "ENABLED", "variants": { "on": true, "off": false }, "defaultVariant": "on"
            },
            "targeting": {
                "state": "ENABLED",
                "variants": { "staff": "staff", "eu-beta": "eu-beta", "other": "other" },
                "defaultVariant": "other",
                "targeting": { "if": [
                    { "$ref": "staff" }, "staff",
                    { "and": [
                        { "starts_with": [{ "var": "plan" }, "beta-"] },
                        { "in": [{ "var": "country" }, ["de", "fr", "it", "es", "nl"]] }
                    ] }, "eu-beta",
                    null
                ] }
            },
            "fractional": {
                "state": "ENABLED",
                "variants": { "control": "c", "a": "a", "b": "b" },
                "defaultVariant": "control",
                "targeting": { "fractional": [["control", 80], ["a", 15], ["b", 5]] }
            },
            "fractional-by-email": {
                "state": "ENABLED",
                "variants": { "on": true, "off": false },
                "defaultVariant": "off",
                "targeting": { "fractional": [
                    { "cat": [{ "var": "$flagd.flagKey" }, { "var": "email" }] }, ["on", 50], ["off", 50]
                ] }
            },
            "sem-ver": {
                "state": "ENABLED", "variants": { "new": true, "old": false }, "defaultVariant": "old",
                "targeting": { "if": [{ "sem_ver": [{ "var": "version" }, ">=", "2.1.0"] }, "new", "old"] }
            }
        }
    })
}

/// 350 flags: a mix of static, targeting and fractional ones (~Unleash's
/// "realistic" 350-flag data set size).
fn big_definition() -> Value {
    let mut flags = Map::new();
    for i in 0..350 {
        let f = match i % 4 {
            0 => {
                json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"})
            }
            1 => {
                json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                        "targeting": {"if": [{"in": [{"var": "country"}, ["de", "fr"]]}, "on", "off"]}})
            }
            2 => {
                json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                        "targeting": {"fractional": [["on", 10], ["off", 90]]}})
            }
            _ => {
                json!({"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": "a",
                        "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "b", null]},
                        "metadata": {"owner": "team-x"}})
            }
        };
        flags.insert(format!("flag-{i:03}"), f);
    }
    json!({ "flags": flags, "metadata": {"flagSetId": "bench"} })
}

fn context() -> EvalContext {
    let mut c = EvalContext::new();
    c.insert(
        "targetingKey",
        json!("4aa5ad08-8e8b-4f64-a2f3-96ab8a5bda0b"),
    );
    c.insert("email", json!("someone@example.com"));
    c.insert("plan", json!("beta-gold"));
    c.insert("country", json!("fr"));
    c.insert("version", json!("2.3.1"));
    c
}

fn bench(c: &mut Criterion) {
    let set = FlagSet::from_value(&definition()).unwrap();
    let ctx = context();
    for (name, key) in [
        ("static", "static-bool"),
        ("targeting (ends_with/starts_with/in/if)", "targeting"),
        ("fractional", "fractional"),
        ("fractional by cat(flagKey, email)", "fractional-by-email"),
        ("sem_ver", "sem-ver"),
    ] {
        assert!(set.evaluate(key, &ctx).unwrap().value.is_some(), "{key}");
        c.bench_function(name, |b| {
            b.iter(|| {
                let e = set.evaluate(black_box(key), black_box(&ctx)).unwrap();
                black_box(e.variant);
            })
        });
    }

    let big = FlagSet::from_value(&big_definition()).unwrap();
    c.bench_function("evaluate_all (350 flags)", |b| {
        b.iter(|| black_box(big.evaluate_all(black_box(&ctx))).len())
    });
    let text = serde_json::to_string(&big_definition()).unwrap();
    c.bench_function("parse + compile (350 flags)", |b| {
        b.iter(|| FlagSet::parse(black_box(&text)).unwrap().len())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
