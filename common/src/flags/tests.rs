use super::*;
use serde_json::json;

fn ctx(v: Value) -> EvalContext {
    EvalContext::from_value(v)
}

/// A one-flag set whose string variants are named after their values.
fn rule_set(variants: &[&str], targeting: Value) -> FlagSet {
    let vs: Map<String, Value> = variants.iter().map(|v| (v.to_string(), json!(v))).collect();
    FlagSet::from_value(&json!({"flags": {"f": {
        "state": "ENABLED", "variants": vs, "defaultVariant": variants[0], "targeting": targeting
    }}}))
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Evaluates a rule and returns the resulting variant, "DEFAULT:<v>" for the
/// default path, or "ERROR".
fn run(set: &FlagSet, c: Value) -> String {
    let e = set.evaluate("f", &ctx(c)).unwrap();
    match e.reason {
        Reason::Error => "ERROR".to_string(),
        Reason::Default => format!("DEFAULT:{}", e.variant.unwrap_or("-")),
        _ => e.variant.unwrap().to_string(),
    }
}

/// `{"if": [COND, "yes", "no"]}` evaluated for a context.
fn cond(rule: Value, c: Value) -> String {
    run(
        &rule_set(&["no", "yes"], json!({"if": [rule, "yes", "no"]})),
        c,
    )
}

#[test]
fn operators_table() {
    let cases: Vec<(Value, Value, &str)> = vec![
        // var
        (
            json!({"==": [{"var": "a.b"}, 1]}),
            json!({"a": {"b": 1}}),
            "yes",
        ),
        (json!({"==": [{"var": ["x", 7]}, 7]}), json!({}), "yes"),
        (
            json!({"==": [{"var": ["x", 7]}, 7]}),
            json!({"x": null}),
            "yes",
        ),
        (
            json!({"==": [{"var": "arr.1"}, "b"]}),
            json!({"arr": ["a", "b"]}),
            "yes",
        ),
        (
            json!({"==": [{"var": "a\\.b"}, 2]}),
            json!({"a.b": 2}),
            "yes",
        ),
        (
            json!({"==": [{"var": "$flagd.flagKey"}, "f"]}),
            json!({}),
            "yes",
        ),
        (
            json!({">": [{"var": "$flagd.timestamp"}, 1_600_000_000]}),
            json!({}),
            "yes",
        ),
        (
            json!({"==": [{"var": "targetingKey"}, "u"]}),
            json!({"targetingKey": "u"}),
            "yes",
        ),
        // missing / missing_some
        (
            json!({"!": {"missing": ["a", "b"]}}),
            json!({"a": 1, "b": null}),
            "yes",
        ),
        (json!({"missing": ["a", "b"]}), json!({"a": 1}), "yes"),
        (
            json!({"missing_some": [1, ["a", "b"]]}),
            json!({"a": 1}),
            "no",
        ),
        (
            json!({"missing_some": [2, ["a", "b"]]}),
            json!({"a": 1}),
            "yes",
        ),
        // if / ?: / !, !!
        (json!({"?:": [true, true, false]}), json!({}), "yes"),
        (json!({"!": [{"var": "x"}]}), json!({"x": 0}), "yes"),
        (json!({"!!": [{"var": "x"}]}), json!({"x": []}), "no"),
        (json!({"!!": [{"var": "x"}]}), json!({"x": {}}), "no"),
        (json!({"!!": [{"var": "x"}]}), json!({"x": "0"}), "yes"),
        // equality
        (json!({"==": [{"var": "x"}, 1]}), json!({"x": "1"}), "yes"),
        (json!({"===": [{"var": "x"}, 1]}), json!({"x": "1"}), "no"),
        (json!({"!=": [{"var": "x"}, 2]}), json!({"x": 1}), "yes"),
        (json!({"!==": [{"var": "x"}, "1"]}), json!({"x": 1}), "yes"),
        (json!({"==": [{"var": "x"}, null]}), json!({}), "yes"),
        (
            json!({"==": [{"var": "x"}, "true"]}),
            json!({"x": true}),
            "ERROR",
        ),
        // ordering, including the 3-argument between form
        (json!({"<": [{"var": "x"}, 10]}), json!({"x": 9.5}), "yes"),
        (json!({"<=": [1, {"var": "x"}, 3]}), json!({"x": 3}), "yes"),
        (json!({"<": [1, {"var": "x"}, 3]}), json!({"x": 3}), "no"),
        (json!({">": [{"var": "x"}, 10]}), json!({"x": "11"}), "yes"),
        (json!({">=": [{"var": "x"}, "b"]}), json!({"x": "c"}), "yes"),
        (
            json!({"<": [{"var": "x"}, 10]}),
            json!({"x": "abc"}),
            "ERROR",
        ),
        // flagd-core quirk (shared `prev`): the var on the right is compared with itself
        (json!({"<=": [10, {"var": "x"}]}), json!({"x": "abc"}), "no"),
        // logic
        (
            json!({"or": [false, 0, {"var": "x"}]}),
            json!({"x": "y"}),
            "yes",
        ),
        (json!({"and": [true, {"var": "x"}]}), json!({"x": ""}), "no"),
        // arithmetic
        (
            json!({"==": [{"+": [1, {"var": "x"}]}, 3]}),
            json!({"x": "2"}),
            "yes",
        ),
        (
            json!({"==": [{"-": [{"var": "x"}]}, -2]}),
            json!({"x": 2}),
            "yes",
        ),
        (
            json!({"==": [{"*": [{"var": "x"}, 3]}, 6]}),
            json!({"x": 2}),
            "yes",
        ),
        (
            json!({"==": [{"/": [{"var": "x"}, 4]}, 0.5]}),
            json!({"x": 2}),
            "yes",
        ),
        (
            json!({"==": [{"%": [{"var": "x"}, 4]}, 3]}),
            json!({"x": 7}),
            "yes",
        ),
        (
            json!({"==": [{"/": [1, {"var": "x"}]}, 1]}),
            json!({"x": 0}),
            "ERROR",
        ),
        (
            json!({"==": [{"+": [1, {"var": "x"}]}, 1]}),
            json!({"x": {"a": 1}}),
            "ERROR",
        ),
        (
            json!({"==": [{"max": [1, {"var": "x"}, 3]}, 5]}),
            json!({"x": 5}),
            "yes",
        ),
        (
            json!({"==": [{"min": [1, {"var": "x"}]}, 1]}),
            json!({"x": "0"}),
            "ERROR",
        ),
        // strings
        (
            json!({"==": [{"cat": ["a", {"var": "x"}, 1]}, "anull1"]}),
            json!({}),
            "yes",
        ),
        (
            json!({"==": [{"substr": [{"var": "x"}, -3]}, "com"]}),
            json!({"x": "a.com"}),
            "yes",
        ),
        (
            json!({"==": [{"substr": [{"var": "x"}, 1, 2]}, "bc"]}),
            json!({"x": "abcd"}),
            "yes",
        ),
        (
            json!({"==": [{"substr": [{"var": "x"}, 0, -1]}, "abc"]}),
            json!({"x": "abcd"}),
            "yes",
        ),
        (
            json!({"in": ["@corp", {"var": "x"}]}),
            json!({"x": "me@corp.io"}),
            "yes",
        ),
        (
            json!({"in": [{"var": "x"}, ["a", "b"]]}),
            json!({"x": "b"}),
            "yes",
        ),
        (json!({"in": [{"var": "x"}, ["a", "b"]]}), json!({}), "no"),
        (
            json!({"in": [{"var": "x"}, [1, 2]]}),
            json!({"x": "1"}),
            "no",
        ),
        // arrays
        (
            json!({"in": ["b", {"merge": [["a"], "b", [["c"]]]}]}),
            json!({}),
            "yes",
        ),
        (
            json!({"some": [{"var": "t"}, {"==": [{"var": ""}, "vip"]}]}),
            json!({"t": ["x", "vip"]}),
            "yes",
        ),
        (
            json!({"all": [{"var": "t"}, {">": [{"var": ""}, 1]}]}),
            json!({"t": [2, 3]}),
            "yes",
        ),
        (
            json!({"all": [{"var": "t"}, {">": [{"var": ""}, 1]}]}),
            json!({"t": []}),
            "no",
        ),
        (
            json!({"none": [{"var": "t"}, {"==": [{"var": ""}, 1]}]}),
            json!({"t": [2]}),
            "yes",
        ),
        (
            json!({"==": [{"reduce": [{"var": "t"}, {"+": [{"var": "accumulator"}, {"var": "current"}]}, 0]}, 6]}),
            json!({"t": [1, 2, 3]}),
            "yes",
        ),
        (
            json!({"in": [4, {"map": [{"var": "t"}, {"*": [{"var": ""}, 2]}]}]}),
            json!({"t": [1, 2]}),
            "yes",
        ),
        (
            json!({"in": [2, {"filter": [{"var": "t"}, {">": [{"var": ""}, 1]}]}]}),
            json!({"t": [1, 2]}),
            "yes",
        ),
        (
            json!({"some": [{"var": "t"}, {"==": [{"var": ""}, 1]}]}),
            json!({"t": "abc"}),
            "ERROR",
        ),
        // flagd string operators
        (
            json!({"starts_with": [{"var": "e"}, "adm"]}),
            json!({"e": "admin@x"}),
            "yes",
        ),
        (
            json!({"ends_with": [{"var": "e"}, "@x.io"]}),
            json!({"e": "a@x.io"}),
            "yes",
        ),
        (
            json!({"ends_with": [{"var": "e"}, "@x.io"]}),
            json!({"e": 5}),
            "no",
        ),
    ];
    for (rule, c, want) in cases {
        assert_eq!(cond(rule.clone(), c.clone()), want, "rule {rule} ctx {c}");
    }
}

#[test]
fn sem_ver_table() {
    let cases: &[(&str, &str, &str, bool)] = &[
        ("1.2.3", "=", "1.2.3", true),
        ("v1.2.3", "=", "1.2.3", true),
        ("V1.2.3", "=", "v1.2.3", true),
        ("1.2.3+build", "=", "1.2.3", true),
        ("1.2.4", "!=", "1.2.3", true),
        ("1.2.3-alpha", "<", "1.2.3", true),
        ("1.2.3-alpha.2", "<", "1.2.3-alpha.10", true),
        ("1.2.3-alpha", "<", "1.2.3-beta", true),
        ("2.0.0", ">", "1.99.99", true),
        ("2.0.0", ">=", "2.0.0", true),
        ("1.0.0", "<=", "0.9.0", false),
        ("1.5.0", "^", "1.0.0", true),
        ("2.0.0", "^", "1.0.0", false),
        ("1.2.9", "~", "1.2.0", true),
        ("1.3.0", "~", "1.2.0", false),
        ("1", "=", "1.0.0", true),
        ("1.2", "=", "1.2.0", true),
        (" 1.2.3 ", "=", "1.2.3", true),
    ];
    for (a, op, b, want) in cases {
        let got = cond(json!({"sem_ver": [{"var": "v"}, op, b]}), json!({"v": a}));
        assert_eq!(got, if *want { "yes" } else { "no" }, "{a} {op} {b}");
    }
    // Unparsable versions give null: the default variant.
    for bad in [
        json!("not-a-version"),
        json!("1.2.3.4"),
        json!("01.2.3"),
        json!(null),
        json!({"a": 1}),
    ] {
        let set = rule_set(
            &["no", "yes"],
            json!({"sem_ver": [{"var": "v"}, "=", "1.0.0"]}),
        );
        assert_eq!(run(&set, json!({"v": bad})), "DEFAULT:no", "{bad}");
    }
    // A number is a version too.
    assert_eq!(
        cond(
            json!({"sem_ver": [{"var": "v"}, "=", "2.0.0"]}),
            json!({"v": 2})
        ),
        "yes"
    );
}

#[test]
fn fractional_matches_reference_vectors() {
    // Expected variants computed with @openfeature/flagd-core 4.0.1.
    let def = json!({"flags": {
        "f1": {"state": "ENABLED", "variants": {"red": "r", "blue": "b", "green": "g", "yellow": "y"},
               "defaultVariant": "red",
               "targeting": {"fractional": [["red", 25], ["blue", 25], ["green", 25], ["yellow", 25]]}},
        "f2": {"state": "ENABLED", "variants": {"a": 1, "b": 2, "c": 3}, "defaultVariant": "a",
               "targeting": {"fractional": [{"cat": [{"var": "$flagd.flagKey"}, {"var": "email"}]},
                                             ["a", 10], ["b", 30], ["c", 60]]}},
        "f3": {"state": "ENABLED", "variants": {"x": true, "y": false}, "defaultVariant": "x",
               "targeting": {"fractional": ["fixed-string", ["x", 1], ["y", 1]]}}
    }});
    let set = FlagSet::from_value(&def).unwrap();
    let cases = [
        (
            json!({"targetingKey": "jon@company.com"}),
            ["blue", "b", "x"],
        ),
        (
            json!({"targetingKey": "user-1", "email": "a@b.c"}),
            ["green", "b", "x"],
        ),
        (
            json!({"targetingKey": "4aa5ad08-8e8b-4f64-a2f3-96ab8a5bda0b", "email": "zzz@example.com"}),
            ["green", "c", "x"],
        ),
        (json!({"targetingKey": "x"}), ["yellow", "b", "x"]),
        (json!({"email": "q@q.q"}), ["red", "b", "x"]),
    ];
    for (c, want) in cases {
        let c = ctx(c);
        for (key, w) in ["f1", "f2", "f3"].iter().zip(want) {
            let e = set.evaluate(key, &c).unwrap();
            assert_eq!(e.variant, Some(w), "{key} {c:?}");
        }
    }
    // No targeting key: fractional yields null, so the default applies.
    let e = set.evaluate("f1", &EvalContext::new()).unwrap();
    assert_eq!((e.reason, e.variant), (Reason::Default, Some("red")));
    // Fractional results are TARGETING_MATCH in flagd-core (never SPLIT).
    let e = set
        .evaluate("f1", &ctx(json!({"targetingKey": "x"})))
        .unwrap();
    assert_eq!(e.reason, Reason::TargetingMatch);
}

#[test]
fn fractional_distribution_and_weights() {
    let set = rule_set(
        &["a", "b", "c", "zero"],
        json!({"fractional": [["a", 50], ["b", 30], ["c"], ["zero", 0]]}),
    );
    let mut counts = std::collections::HashMap::new();
    for i in 0..8100 {
        let v = run(&set, json!({"targetingKey": format!("user-{i}")}));
        *counts.entry(v).or_insert(0) += 1;
    }
    let n = |k: &str| counts.get(k).copied().unwrap_or(0) as f64 / 8100.0;
    assert!((n("a") - 50.0 / 81.0).abs() < 0.03, "{counts:?}");
    assert!((n("b") - 30.0 / 81.0).abs() < 0.03, "{counts:?}");
    assert!((n("c") - 1.0 / 81.0).abs() < 0.01, "{counts:?}");
    assert_eq!(n("zero"), 0.0);
}

#[test]
fn results_and_reasons() {
    let set = FlagSet::parse(
        r#"{"flags": {
        "static": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
        "empty-targeting": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on", "targeting": {}},
        "disabled": {"state": "DISABLED", "variants": {"on": true}, "defaultVariant": "on"},
        "no-default": {"state": "ENABLED", "variants": {"on": true}},
        "null-default": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": null,
                         "targeting": {"if": [{"var": "x"}, "on", null]}},
        "bool-result": {"state": "ENABLED", "variants": {"true": 1, "false": 0}, "defaultVariant": "false",
                        "targeting": {"==": [{"var": "x"}, 1]}},
        "number-result": {"state": "ENABLED", "variants": {"1": "one", "2": "two"}, "defaultVariant": "1",
                          "targeting": {"+": [1, 1]}},
        "bad-variant": {"state": "ENABLED", "variants": {"a": "a"}, "defaultVariant": "a",
                        "targeting": {"var": "x"}}
    }, "metadata": {"team": "core", "version": 1}}"#,
    )
    .unwrap();
    let c = ctx(json!({"x": 1}));
    let e = set.evaluate("static", &c).unwrap();
    assert_eq!(e.reason, Reason::Static);
    assert_eq!(e.value.as_deref(), Some(&json!(true)));
    assert!(matches!(e.value, Some(Cow::Borrowed(_))));
    assert_eq!(e.metadata["team"], json!("core"));
    assert_eq!(
        set.evaluate("empty-targeting", &c).unwrap().reason,
        Reason::Static
    );

    let e = set.evaluate("disabled", &c).unwrap();
    assert_eq!(
        (e.reason, e.value.is_none(), e.variant, e.error.is_none()),
        (Reason::Disabled, true, None, true)
    );

    let e = set.evaluate("no-default", &c).unwrap();
    assert_eq!(
        (e.reason, e.value.is_none(), e.variant),
        (Reason::Default, true, None)
    );
    let e = set.evaluate("null-default", &EvalContext::new()).unwrap();
    assert_eq!(
        (e.reason, e.value.is_none(), e.variant),
        (Reason::Default, true, None)
    );
    let e = set.evaluate("null-default", &c).unwrap();
    assert_eq!((e.reason, e.variant), (Reason::TargetingMatch, Some("on")));

    let e = set.evaluate("bool-result", &c).unwrap();
    assert_eq!(
        (e.variant, e.value.as_deref()),
        (Some("true"), Some(&json!(1)))
    );
    let e = set.evaluate("number-result", &c).unwrap();
    assert_eq!(e.variant, Some("2"));

    let e = set.evaluate("bad-variant", &c).unwrap();
    assert_eq!(e.reason, Reason::Error);
    let err = e.error.unwrap();
    assert_eq!(err.code, ErrorCode::General);
    assert!(
        err.message.contains("variant '1' not found"),
        "{}",
        err.message
    );

    assert!(set.evaluate("nope", &c).is_none());
    let all = set.evaluate_all(&c);
    assert_eq!(all.len(), set.len());
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(
        set.keys().collect::<Vec<_>>(),
        all.iter().map(|x| x.0).collect::<Vec<_>>()
    );
}

#[test]
fn metadata_flag_wins_over_set() {
    let set = FlagSet::from_value(&json!({
        "metadata": {"team": "core", "env": "prod"},
        "flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a",
                        "metadata": {"team": "web"}}}
    }))
    .unwrap();
    let e = set.evaluate("f", &EvalContext::new()).unwrap();
    assert_eq!(e.metadata["team"], json!("web"));
    assert_eq!(e.metadata["env"], json!("prod"));
}

#[test]
fn refs_resolve_nested_evaluators() {
    let set = FlagSet::from_value(&json!({
        "$evaluators": {
            "staff": {"ends_with": [{"var": "email"}, "@corp.io"]},
            "staff_or_beta": {"or": [{"$ref": "staff"}, {"var": "beta"}]}
        },
        "flags": {"f": {"state": "ENABLED", "variants": {"on": "on", "off": "off"}, "defaultVariant": "off",
                        "targeting": {"if": [{"$ref": "staff_or_beta"}, "on", "off"]}}}
    }))
    .unwrap();
    assert_eq!(run(&set, json!({"email": "a@corp.io"})), "on");
    assert_eq!(run(&set, json!({"beta": true})), "on");
    assert_eq!(run(&set, json!({"email": "a@x.io"})), "off");
}

fn problems(def: Value) -> Vec<String> {
    FlagSet::from_value(&def)
        .expect_err("must be rejected")
        .problems
}

#[test]
fn refusals_name_flag_and_problem() {
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"flags": {"checkout": {"state": "ENABLED", "variants": {"a": 1, "b": 2}, "defaultVariant": "on"}}}),
            r#"flag "checkout": defaultVariant "on" is not one of the variants [a, b]"#,
        ),
        (
            json!({"flags": {"m": {"state": "ENABLED", "variants": {"a": 1, "b": "x"}, "defaultVariant": "a"}}}),
            r#"flag "m": variants mix types"#,
        ),
        (
            json!({"flags": {"s": {"state": "ON", "variants": {"a": 1}, "defaultVariant": "a"}}}),
            r#"flag "s": invalid state "ON""#,
        ),
        (
            json!({"flags": {"u": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "colour": 1}}}),
            r#"flag "u": unknown field "colour""#,
        ),
        (
            json!({"flags": {}, "flagz": {}}),
            r#"unknown top-level field "flagz""#,
        ),
        (json!({"nothing": 1}), "missing \"flags\" object"),
        (
            json!({"flags": {"t": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": "a"}}}),
            r#"flag "t": targeting must be a JsonLogic object"#,
        ),
        (
            json!({"flags": {"md": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a",
                                    "metadata": {"x": {"y": 1}}}}}),
            r#"flag "md": metadata "x" must be a string, number or boolean"#,
        ),
    ];
    for (def, want) in cases {
        let ps = problems(def.clone());
        assert!(
            ps.iter().any(|p| p.starts_with(want) || p.contains(want)),
            "expected a problem like {want:?}, got {ps:?}"
        );
    }
}

/// What one evaluation of flag `key` answers: the variant, `DEFAULT:<v>`,
/// or the error code.
fn answer(set: &FlagSet, key: &str, c: Value) -> String {
    let e = set.evaluate(key, &ctx(c)).unwrap();
    match (e.reason, &e.error) {
        (Reason::Error, Some(err)) => err.code.as_str().to_string(),
        (Reason::Default, _) => format!("DEFAULT:{}", e.variant.unwrap_or("-")),
        _ => e.variant.unwrap_or("-").to_string(),
    }
}

/// Problems flagd loads: the flag is served, answers as flagd does, and
/// the problem is a warning naming the flag.
#[test]
fn flagd_loadable_problems_are_warnings_answered_at_evaluation() {
    let ab = json!({"a": "a", "b": "b"});
    let cases: Vec<(Value, Value, &str, &str)> = vec![
        (
            json!({"fractionl": [["a", 1]]}),
            json!({}),
            r#"flag "f": targeting: unknown operator "fractionl" (did you mean "fractional"?)"#,
            "PARSE_ERROR",
        ),
        (
            json!({"if": [true, "a", {"bogus": 1}]}),
            json!({}),
            r#"unknown operator "bogus""#,
            "PARSE_ERROR",
        ),
        (
            json!({"$ref": "rules"}),
            json!({}),
            r#"flag "f": $ref "rules" not found in $evaluators"#,
            "PARSE_ERROR",
        ),
        (
            json!({"if": [{"var": "x"}, "a"], "or": []}),
            json!({}),
            r#"flag "f": targeting: an operation must have exactly one key"#,
            "PARSE_ERROR",
        ),
        (
            json!({"fractional": [{"var": "targetingKey"}, ["a", -1], ["b", 2]]}),
            json!({"targetingKey": "u"}),
            r#"flag "f": targeting: fractional: weight -1 of variant "a" is negative and counts as 0"#,
            "b",
        ),
        (
            json!({"fractional": [{"var": "targetingKey"}, ["a", 1.5], ["b", 2]]}),
            json!({"targetingKey": "u"}),
            r#"flag "f": targeting: fractional: bucket ["a",1.5]: a bucket weight must be an integer"#,
            "DEFAULT:a",
        ),
        (
            json!({"fractional": [["a", 2147483647], ["b", 1]]}),
            json!({"targetingKey": "u"}),
            "weights sum to 2147483648, more than 2147483647",
            "DEFAULT:a",
        ),
        (
            json!({"fractional": [{"var": "targetingKey"}, ["c", 1]]}),
            json!({"targetingKey": "u"}),
            r#"flag "f": targeting: fractional: variant "c" is not one of the variants [a, b]"#,
            "GENERAL",
        ),
        (
            json!({"sem_ver": [{"var": "v"}, "=>", "1.0.0"]}),
            json!({"v": "1.0.0"}),
            r#"flag "f": targeting: sem_ver: unknown operator "=>""#,
            "DEFAULT:a",
        ),
        (
            json!({"sem_ver": [{"var": "v"}, "="]}),
            json!({"v": "1.0.0"}),
            r#"flag "f": targeting: "sem_ver" needs 3 arguments, found 2"#,
            "DEFAULT:a",
        ),
        (
            json!({"starts_with": [{"var": "e"}]}),
            json!({"e": "abc"}),
            r#"flag "f": targeting: "starts_with" needs 2 arguments, found 1"#,
            "DEFAULT:a",
        ),
        (
            json!({"/": [1, 0]}),
            json!({}),
            r#"flag "f": targeting: "/" on constant arguments fails"#,
            "GENERAL",
        ),
    ];
    for (targeting, c, want, answers) in cases {
        let def = json!({"flags": {"f": {"state": "ENABLED", "variants": ab, "defaultVariant": "a",
                                          "targeting": targeting}}});
        let set = FlagSet::from_value(&def)
            .unwrap_or_else(|e| panic!("{targeting} must load (flagd loads it), got {e}"));
        assert!(
            set.warnings().iter().any(|w| w.contains(want)),
            "{targeting}: expected a warning like {want:?}, got {:?}",
            set.warnings()
        );
        assert_eq!(answer(&set, "f", c), answers, "{targeting}");
    }
}

#[test]
fn ref_cycle_is_a_parse_error() {
    let set = FlagSet::from_value(&json!({
        "flags": {"c": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a",
                        "targeting": {"$ref": "e1"}}},
        "$evaluators": {"e1": {"$ref": "e2"}, "e2": {"$ref": "e1"}}}))
    .unwrap();
    assert!(
        set.warnings().iter().any(|w| w.contains("$ref cycle")),
        "{:?}",
        set.warnings()
    );
    assert_eq!(answer(&set, "c", json!({})), "PARSE_ERROR");
}

#[test]
fn refusals_and_warnings_are_collected_together() {
    let err = FlagSet::from_value(&json!({"flags": {
        "a": {"state": "ENABLED", "variants": {"x": 1}, "defaultVariant": "y"},
        "b": {"state": "NOPE", "variants": {"x": 1}, "defaultVariant": "x"},
        "c": {"state": "ENABLED", "variants": {"x": 1}, "defaultVariant": "x",
              "targeting": {"if": [{"bogus": 1}, "x", {"$ref": "missing"}]}}
    }}))
    .unwrap_err();
    assert_eq!(err.problems.len(), 2, "{err}");
    let text = err.to_string();
    for part in [r#"flag "a""#, r#"flag "b""#] {
        assert!(text.contains(part), "{text}");
    }
    assert!(text.contains("; "));
    let set = FlagSet::from_value(&json!({"flags": {
        "c": {"state": "ENABLED", "variants": {"x": 1}, "defaultVariant": "x",
              "targeting": {"if": [{"bogus": 1}, "x", {"$ref": "missing"}]}}
    }}))
    .unwrap();
    let w = set.warnings().join("; ");
    for part in [r#"unknown operator "bogus""#, r#"$ref "missing""#] {
        assert!(w.contains(part), "{w}");
    }
}

#[test]
fn malformed_json_reports_line_and_column() {
    let err = FlagSet::parse("{\n  \"flags\": {\n    \"a\": }\n}").unwrap_err();
    assert_eq!(err.problems.len(), 1);
    assert!(
        err.problems[0].starts_with("invalid JSON at line 3, column"),
        "{err}"
    );
    let deep = "[".repeat(10_000);
    assert!(FlagSet::parse(&deep).is_err());
}

#[test]
fn deep_rules_are_rejected() {
    let mut rule = json!({"var": "x"});
    for _ in 0..200 {
        rule = json!({"!": [rule]});
    }
    let ps = problems(
        json!({"flags": {"d": {"state": "ENABLED", "variants": {"a": 1},
                                           "defaultVariant": "a", "targeting": rule}}}),
    );
    assert!(
        ps.iter().any(|p| p.contains("nested deeper than")),
        "{ps:?}"
    );
}

#[test]
fn never_panics_on_odd_contexts() {
    let rules = [
        json!({"if": [{"<": [{"var": "a"}, 5]}, "yes", "no"]}),
        json!({"cat": [{"var": "a"}, {"var": "b"}]}),
        json!({"fractional": [{"var": "a"}, ["yes", 1], ["no", 1]]}),
        json!({"fractional": [["yes", 1], ["no", 1]]}),
        json!({"sem_ver": [{"var": "a"}, {"var": "b"}, "1.0.0"]}),
        json!({"substr": [{"var": "a"}, {"var": "b"}, {"var": "c"}]}),
        json!({"in": [{"var": "a"}, {"var": "b"}]}),
        json!({"map": [{"var": "a"}, {"+": [{"var": ""}, 1]}]}),
        json!({"reduce": [{"var": "a"}, {"cat": [{"var": "accumulator"}, {"var": "current"}]}]}),
        json!({"%": [{"var": "a"}, {"var": "b"}]}),
        json!({"max": {"var": "a"}}),
        json!({"+": {"var": "a"}}),
        json!({"var": {"cat": ["a", ".", {"var": "b"}]}}),
        json!({"missing": {"var": "a"}}),
        json!({"starts_with": {"var": "a"}}),
        json!({"fractional": {"var": "a"}}),
    ];
    let mut deep = json!(1);
    for _ in 0..100 {
        deep = json!([deep]);
    }
    let values = [
        json!(null),
        json!(1e308),
        json!(-1e308),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(""),
        json!("ü✓\u{0}"),
        json!([]),
        json!({}),
        json!([null, [1, [2]]]),
        json!({"a": {"b": []}}),
        deep,
        json!("9".repeat(400)),
        json!(true),
        json!(-0.0),
        json!(3.5),
    ];
    for rule in &rules {
        let set = rule_set(&["no", "yes"], rule.clone());
        for a in &values {
            for b in [json!(0), json!("x"), json!(-3), json!([1]), json!(null)] {
                let c = json!({"a": a, "b": b, "c": -1, "targetingKey": a});
                let _ = run(&set, c);
            }
        }
    }
}

#[test]
fn static_evaluation_borrows() {
    let set = rule_set(&["a", "b"], json!({"if": [{"var": "x"}, "b", "a"]}));
    let e = set.evaluate("f", &ctx(json!({"x": true}))).unwrap();
    assert!(matches!(e.value, Some(Cow::Borrowed(_))));
    assert_eq!(e.variant, Some("b"));
}

#[test]
fn context_helpers() {
    let mut base = EvalContext::new();
    base.insert("targetingKey", json!("u1"));
    base.insert("plan", json!("free"));
    let mut overlay = Map::new();
    overlay.insert("plan".into(), json!("gold"));
    let m = EvalContext::merged(&base, &overlay);
    assert_eq!(m.targeting_key(), Some("u1"));
    assert_eq!(m.get("plan"), Some(&json!("gold")));
    assert_eq!(base.get("plan"), Some(&json!("free")));
    assert!(FlagSet::empty().is_empty());
    assert_eq!(Reason::TargetingMatch.as_str(), "TARGETING_MATCH");
    assert_eq!(
        ErrorCode::TargetingKeyMissing.as_str(),
        "TARGETING_KEY_MISSING"
    );
}

#[test]
fn flagset_is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<FlagSet>();
}

/// flagd's conformance suite (flagd-testbed v3.9.0, see
/// `testdata/flagd-testbed/README.md`): every flag file loads, and the flags
/// flagd loads with problems answer as the suite expects.
const TESTBED: &[(&str, &str)] = &[
    (
        "changing-flag.json",
        include_str!("testdata/flagd-testbed/changing-flag.json"),
    ),
    (
        "custom-ops.json",
        include_str!("testdata/flagd-testbed/custom-ops.json"),
    ),
    (
        "disabled-flags.json",
        include_str!("testdata/flagd-testbed/disabled-flags.json"),
    ),
    (
        "edge-case-flags.json",
        include_str!("testdata/flagd-testbed/edge-case-flags.json"),
    ),
    (
        "evaluator-refs.json",
        include_str!("testdata/flagd-testbed/evaluator-refs.json"),
    ),
    (
        "metadata-flags.json",
        include_str!("testdata/flagd-testbed/metadata-flags.json"),
    ),
    (
        "selector-flag-combined-metadata.json",
        include_str!("testdata/flagd-testbed/selector-flag-combined-metadata.json"),
    ),
    (
        "selector-flags.json",
        include_str!("testdata/flagd-testbed/selector-flags.json"),
    ),
    (
        "testing-flags.json",
        include_str!("testdata/flagd-testbed/testing-flags.json"),
    ),
    (
        "testkit-flags.json",
        include_str!("testdata/flagd-testbed/testkit-flags.json"),
    ),
    (
        "zero-flags.json",
        include_str!("testdata/flagd-testbed/zero-flags.json"),
    ),
];

fn testbed(name: &str) -> FlagSet {
    let (_, text) = TESTBED.iter().find(|(n, _)| *n == name).expect("vendored");
    FlagSet::parse(text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn flagd_testbed_files_all_load() {
    for (name, text) in TESTBED {
        let set = FlagSet::parse(text).unwrap_or_else(|e| panic!("{name} must load: {e}"));
        assert!(!set.is_empty(), "{name}");
        let raw: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            set.len(),
            raw["flags"].as_object().unwrap().len(),
            "{name}: every flag is served"
        );
        for w in set.warnings() {
            assert!(
                w.starts_with("flag \"") || w.starts_with("$evaluators \""),
                "{w}"
            );
        }
    }
    // Warnings name the flag and the problem.
    let w = testbed("edge-case-flags.json").warnings().join("\n");
    for part in [
        r#"flag "error-targeting-flag": targeting: unknown operator "invalid""#,
        r#"flag "fractional-negative-weight-flag": targeting: fractional: weight -50"#,
        r#"flag "starts-with-wrong-args-flag": targeting: "starts_with" needs 2 arguments"#,
        r#"flag "semver-invalid-operator-flag": targeting: sem_ver: unknown operator "===""#,
    ] {
        assert!(w.contains(part), "{part} not in\n{w}");
    }
    // No warning for `fractional` in an `if` condition (its values are not variants).
    assert!(
        !testbed("custom-ops.json")
            .warnings()
            .iter()
            .any(|w| w.contains("fractional-as-condition")),
        "{:?}",
        testbed("custom-ops.json").warnings()
    );
}

#[test]
fn flagd_testbed_answers_for_flags_with_problems() {
    // (file, flag, context, answer) as in the testbed's gherkin scenarios
    // (gherkin/targeting.feature, evaluator/gherkin/*.feature).
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        (
            "edge-case-flags.json",
            "error-targeting-flag",
            json!({}),
            "PARSE_ERROR",
        ),
        (
            "edge-case-flags.json",
            "targeting-null-variant-flag",
            json!({}),
            "DEFAULT:two",
        ),
        (
            "edge-case-flags.json",
            "missing-variant-targeting-flag",
            json!({}),
            "GENERAL",
        ),
        (
            "edge-case-flags.json",
            "empty-targeting-flag",
            json!({}),
            "false",
        ),
        (
            "edge-case-flags.json",
            "targeting-null-flag",
            json!({}),
            "DEFAULT:two",
        ),
        (
            "edge-case-flags.json",
            "semver-invalid-version-flag",
            json!({"version": "not-a-version"}),
            "DEFAULT:fallback",
        ),
        (
            "edge-case-flags.json",
            "semver-invalid-operator-flag",
            json!({"version": "1.0.0"}),
            "DEFAULT:fallback",
        ),
        (
            "edge-case-flags.json",
            "semver-wrong-args-flag",
            json!({"version": "1.0.0"}),
            "DEFAULT:fallback",
        ),
        (
            "edge-case-flags.json",
            "fractional-null-bucket-key-flag",
            json!({}),
            "DEFAULT:fallback",
        ),
        (
            "edge-case-flags.json",
            "starts-with-non-string-flag",
            json!({"num": 123}),
            "DEFAULT:fallback",
        ),
        (
            "edge-case-flags.json",
            "ends-with-non-string-flag",
            json!({"num": 123}),
            "DEFAULT:fallback",
        ),
        (
            "edge-case-flags.json",
            "starts-with-wrong-args-flag",
            json!({}),
            "DEFAULT:fallback",
        ),
        (
            "edge-case-flags.json",
            "ends-with-wrong-args-flag",
            json!({}),
            "DEFAULT:fallback",
        ),
        (
            "edge-case-flags.json",
            "fractional-zero-weights-flag",
            json!({"targetingKey": "any-user"}),
            "DEFAULT:fallback",
        ),
        (
            "edge-case-flags.json",
            "fractional-negative-weight-flag",
            json!({"targetingKey": "any-user"}),
            "two",
        ),
        (
            "evaluator-refs.json",
            "ref-to-nonexistent-evaluator-flag",
            json!({}),
            "PARSE_ERROR",
        ),
        (
            "evaluator-refs.json",
            "some-email-targeted-flag",
            json!({"email": "ballmer@macrosoft.com"}),
            "hi",
        ),
        (
            "custom-ops.json",
            "fractional-as-condition-flag",
            json!({"targetingKey": "some-targeting-key"}),
            "big",
        ),
        (
            "custom-ops.json",
            "fractional-as-condition-false-flag",
            json!({"targetingKey": "some-targeting-key"}),
            "small",
        ),
        (
            "testkit-flags.json",
            "fractional-as-condition-flag",
            json!({"targetingKey": "some-targeting-key"}),
            "big",
        ),
        (
            "testkit-flags.json",
            "fractional-negative-weight-flag",
            json!({"targetingKey": "any-user"}),
            "two",
        ),
        (
            "testkit-flags.json",
            "string-targeted-zero-flag",
            json!({"email": "ballmer@macrosoft.com"}),
            "zero",
        ),
        // zero-flags.json refers to an evaluator it does not define.
        (
            "zero-flags.json",
            "string-targeted-zero-flag",
            json!({"email": "ballmer@macrosoft.com"}),
            "PARSE_ERROR",
        ),
        ("zero-flags.json", "string-zero-flag", json!({}), "zero"),
    ];
    for (file, key, c, want) in cases {
        let set = testbed(file);
        assert_eq!(answer(&set, key, c.clone()), want, "{file} {key} {c}");
    }
}

/// The testbed runs flagd on every `flags/*.json` but the `selector-` ones
/// deep-merged into one file (its launchpad's `allFlags.json`): that loads too.
#[test]
fn flagd_testbed_combined_file_loads() {
    fn merge(dst: &mut Value, src: Value) {
        if let (Value::Object(d), Value::Object(s)) = (dst, src) {
            for (k, v) in s {
                match d.get_mut(&k) {
                    Some(x) if x.is_object() && v.is_object() => merge(x, v),
                    _ => {
                        d.insert(k, v);
                    }
                }
            }
        }
    }
    let mut all = json!({});
    for (name, text) in TESTBED {
        if !name.starts_with("selector-") && *name != "testkit-flags.json" {
            merge(&mut all, serde_json::from_str(text).unwrap());
        }
    }
    let set = FlagSet::from_value(&all).unwrap_or_else(|e| panic!("{e}"));
    // With the shared $evaluators, zero-flags.json's $ref resolves.
    assert_eq!(
        answer(
            &set,
            "string-targeted-zero-flag",
            json!({"email": "ballmer@macrosoft.com"})
        ),
        "zero"
    );
    assert_eq!(
        answer(
            &set,
            "integer-targeted-zero-flag",
            json!({"email": "ballmer@none.com"})
        ),
        "DEFAULT:zero"
    );
}

fn v3() -> CompileOptions {
    CompileOptions {
        bucketing: Bucketing::V3,
        ..CompileOptions::default()
    }
}

/// Examples from the testbed's `@fractional-v3` scenarios
/// (gherkin/targeting.feature) against its `custom-ops.json`.
#[test]
fn fractional_v3_matches_testbed_examples() {
    let (_, text) = TESTBED
        .iter()
        .find(|(n, _)| *n == "custom-ops.json")
        .unwrap();
    let set = FlagSet::parse_with(text, &v3()).unwrap();
    let basic = |input: Value| {
        answer(
            &set,
            "fractional-basic-flag",
            json!({ "hashing_input": input }),
        )
    };
    let cases: Vec<(Value, &str)> = vec![
        (json!(true), "bucket5"),
        (json!(false), "bucket1"),
        (json!("user1"), "bucket22"),
        (json!("user2"), "bucket16"),
        (json!(123), "bucket20"),
        (json!(456), "bucket12"),
        (json!(1.23), "bucket14"),
        (json!(4.56), "bucket18"),
        (json!("123"), "bucket22"),
        (json!("null"), "bucket8"),
        (json!(0), "bucket8"),
        (json!(1.0), "bucket23"),
        (json!(1), "bucket23"),
        (json!(-2.0), "bucket12"),
        (json!(9007199254740992.0), "bucket10"),
        (json!(-0.0), "bucket8"),
        (json!(2147483648u64), "bucket25"),
        (json!(-2147483649i64), "bucket18"),
        (json!(4294967296u64), "bucket19"),
        (json!(-25), "bucket16"),
        (json!(1e20), "bucket19"),
        (json!(65504.0), "bucket16"),
        (json!(65505.0), "bucket17"),
        (json!(0.00006103515625), "bucket22"),
        (json!(5.960_464_477_539_063e-8), "bucket23"), // 2^-24
        (json!(3.4028234663852886e38), "bucket10"),
        (json!(1.7976931348623157e308), "bucket17"),
        (json!(f64::from_bits(1)), "bucket2"), // 4.9406564584124654e-324
        (json!({"a": 1, "b": 2}), "bucket23"),
        (json!({"b": 2, "a": 1}), "bucket23"),
        (json!({"z": 1, "aa": 2}), "bucket21"),
        (json!({"aaa": 1, "ÿ": 2}), "bucket12"),
        (json!({"b": -0.0, "a": {"b": 1}, "c": 0.0}), "bucket8"),
        (
            json!({"café": "façade", "b": {"résumé": {"ÿ": true}}}),
            "bucket22",
        ),
        (json!({}), "bucket3"),
        (json!({"a": [1, "two", true, [], null]}), "bucket23"),
        (json!({"x": [{"a": {"b": null}}]}), "bucket6"),
        (json!(""), "bucket4"),
    ];
    for (input, want) in cases {
        assert_eq!(basic(input.clone()), want, "{input}");
    }
    // A null (missing) bucketing value gives the default variant.
    assert_eq!(
        answer(&set, "fractional-basic-flag", json!({})),
        "DEFAULT:fallback"
    );
    // flagKey + targetingKey is hashed as the CBOR array [flagKey, targetingKey].
    let tk = |key: &str, t: &str| answer(&set, key, json!({ "targetingKey": t }));
    assert_eq!(tk("fractional-flag-shorthand", "jon@company.com"), "tails");
    assert_eq!(tk("fractional-flag-shorthand", "jane@company.com"), "tails");
    let name = |key: &str, n: &str| answer(&set, key, json!({ "user": {"name": n} }));
    for (n, want) in [
        ("jack", "diamonds"),
        ("queen", "diamonds"),
        ("ten", "clubs"),
        ("nine", "clubs"),
        ("3", "spades"),
    ] {
        assert_eq!(name("fractional-flag", n), want, "{n}");
    }
    for (n, want) in [
        ("seven", "hearts"),
        ("eight", "hearts"),
        ("nine", "diamonds"),
        ("two", "diamonds"),
    ] {
        assert_eq!(name("fractional-flag-A-shared-seed", n), want, "{n}");
    }
    // v2 (the default) still answers the @fractional-v2 examples.
    let v2 = FlagSet::parse(text).unwrap();
    for (n, want) in [
        ("jack", "hearts"),
        ("queen", "spades"),
        ("ten", "clubs"),
        ("nine", "diamonds"),
        ("3", "clubs"),
    ] {
        assert_eq!(
            answer(&v2, "fractional-flag", json!({ "user": {"name": n} })),
            want,
            "{n}"
        );
    }
    // and gives null for a non-string bucketing value.
    assert_eq!(
        answer(
            &v2,
            "fractional-basic-flag",
            json!({ "hashing_input": 123 })
        ),
        "DEFAULT:fallback"
    );
}

/// `$evaluators` e0..e20 where each refers to the previous one twice: inlined,
/// that is 2^20 copies of e0 (the 1.2 KB definition that took 27 s and
/// 262 MB to apply, and about a second per evaluation).
fn ref_chain(levels: usize, op: &str) -> Map<String, Value> {
    let mut evs = Map::new();
    evs.insert("e0".into(), json!({"==": [{"var": "x"}, 1]}));
    for i in 1..=levels {
        let prev = format!("e{}", i - 1);
        evs.insert(
            format!("e{i}"),
            json!({ op: [{"$ref": prev}, {"$ref": prev}] }),
        );
    }
    evs
}

#[test]
fn ref_chain_compiles_once_and_evaluates_each_evaluator_once() {
    for op in ["and", "or"] {
        let def = json!({
            "$evaluators": ref_chain(20, op),
            "flags": {"f": {"state": "ENABLED", "variants": {"on": true, "off": false},
                            "defaultVariant": "off",
                            "targeting": {"if": [{"$ref": "e20"}, "on", "off"]}}}
        });
        assert!(def.to_string().len() < 1_500, "{}", def.to_string().len());
        let set = FlagSet::from_value(&def).unwrap_or_else(|e| panic!("{e}"));
        // Each evaluator compiled once and shared: about 3 nodes per level,
        // where inlining gave millions.
        assert!(set.compiled_nodes() < 100, "{}", set.compiled_nodes());
        assert!(set.warnings().is_empty(), "{:?}", set.warnings());
        assert_eq!(answer(&set, "f", json!({"x": 1})), "on");
        assert_eq!(answer(&set, "f", json!({"x": 2})), "off");
        // Evaluation visits each shared evaluator once, not 2^20 times.
        let flag = set.find("f").unwrap();
        assert!(flag.memo_refs);
        let target = flag.targeting.as_ref().unwrap();
        for x in [1, 2] {
            let c = json!({ "x": x });
            let mut env = Env::new(&c, "f");
            env.memo = flag.memo_refs;
            logic::eval(target, &env, Scope::Root).unwrap();
            assert!(
                env.steps.get() < 200,
                "{op} x={x}: {} steps",
                env.steps.get()
            );
        }
    }
}

#[test]
fn ref_chain_in_an_iteration_body_is_refused_by_the_budget() {
    // A `map` body runs once per element, where shared evaluators are not
    // memoised: its expanded size counts.
    let def = json!({
        "$evaluators": ref_chain(20, "and"),
        "flags": {"f": {"state": "ENABLED", "variants": {"on": true, "off": false},
                        "defaultVariant": "off",
                        "targeting": {"if": [{"some": [{"var": "xs"}, {"$ref": "e20"}]}, "on", "off"]}}}
    });
    let err = FlagSet::from_value(&def).unwrap_err().to_string();
    assert!(
        err.contains(r#"flag "f": targeting: a map/filter/all/some/none/reduce body expands to"#)
            && err.contains("above the budget of 1000000 nodes"),
        "{err}"
    );
    // A short chain in a body is fine.
    let def = json!({
        "$evaluators": ref_chain(3, "and"),
        "flags": {"f": {"state": "ENABLED", "variants": {"on": true, "off": false},
                        "defaultVariant": "off",
                        "targeting": {"if": [{"some": [{"var": "xs"}, {"$ref": "e3"}]}, "on", "off"]}}}
    });
    let set = FlagSet::from_value(&def).unwrap();
    assert_eq!(answer(&set, "f", json!({"xs": [{"x": 2}, {"x": 1}]})), "on");
    assert_eq!(answer(&set, "f", json!({"xs": [{"x": 2}]})), "off");
}

#[test]
fn definitions_over_the_node_budget_are_refused() {
    let rule = |n: usize| json!({"in": [{"var": "x"}, (0..n).map(|i| json!({"var": format!("k{i}")})).collect::<Vec<_>>()]});
    let def = json!({"flags": {
        "small": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": rule(10)},
        "big": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": rule(2_000)}
    }});
    let opts = CompileOptions {
        max_compiled_nodes: 1_000,
        ..CompileOptions::default()
    };
    let err = FlagSet::from_value_with(&def, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nodes, above the budget of 1000 nodes (largest: flag \"big\""),
        "{err}"
    );
    let set = FlagSet::from_value(&def).unwrap();
    assert!(set.compiled_nodes() > 2_000 && set.compiled_nodes() < 2_100);
}

#[test]
fn depth_counts_through_refs() {
    let def = |levels: usize| {
        let mut evs = Map::new();
        evs.insert("e0".into(), json!({"var": "x"}));
        for i in 1..=levels {
            evs.insert(
                format!("e{i}"),
                json!({"!": [{"$ref": format!("e{}", i - 1)}]}),
            );
        }
        let top = format!("e{levels}");
        json!({"$evaluators": evs, "flags": {"f": {"state": "ENABLED", "variants": {"a": 1},
               "defaultVariant": "a", "targeting": {"if": [{"$ref": top}, "a", null]}}}})
    };
    let set = FlagSet::from_value(&def(20)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(answer(&set, "f", json!({"x": true})), "a");
    let err = FlagSet::from_value(&def(40)).unwrap_err().to_string();
    assert!(err.contains("nested deeper than 64 levels"), "{err}");
}

/// Weights computed from the context can be anything: never an overflow
/// (a panic in debug builds), always flagd's answer (`null`: the default).
#[test]
fn huge_weights_from_the_context_do_not_overflow() {
    let set = rule_set(
        &["a", "b"],
        json!({"fractional": [{"var": "targetingKey"}, ["a", {"var": "wa"}], ["b", {"var": "wb"}]]}),
    );
    let spread = rule_set(&["a", "b"], json!({"fractional": {"var": "args"}}));
    let big: Vec<Value> = vec![
        json!(1e300),
        json!(-1e300),
        json!(i64::MAX),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(f64::MAX),
        json!(2147483648i64),
    ];
    for w in &big {
        for other in [json!(1), json!(2147483647), w.clone()] {
            let c = json!({"targetingKey": "u", "wa": w, "wb": other});
            let got = run(&set, c.clone());
            // a negative weight counts as 0, so "b" takes everything when valid
            let want = if w.as_f64().unwrap() < 0.0
                && other.as_f64().unwrap() <= 2147483647.0
                && other.as_f64().unwrap() > 0.0
            {
                "b"
            } else {
                "DEFAULT:a"
            };
            assert_eq!(got, want, "{c}");
            let args = json!({"targetingKey": "u", "args": ["u", ["a", w], ["b", other]]});
            assert_eq!(run(&spread, args.clone()), want, "{args}");
        }
    }
    // Sums overflowing: i32::MAX twice, and many maximal weights.
    let c = json!({"targetingKey": "u", "wa": 2147483647, "wb": 2147483647});
    assert_eq!(run(&set, c), "DEFAULT:a");
    let many: Vec<Value> = (0..10_000).map(|_| json!(["a", 2147483647])).collect();
    let mut args = vec![json!("u")];
    args.extend(many);
    assert_eq!(run(&spread, json!({"args": args})), "DEFAULT:a");
}

/// flagd provides `$flagd.flagKey` and `$flagd.timestamp` to rules, also
/// through a shared evaluator (each flag sees its own key).
#[test]
fn flagd_properties_are_available_to_rules() {
    let set = FlagSet::from_value(&json!({
        "$evaluators": {"is_beta_flag": {"starts_with": [{"var": "$flagd.flagKey"}, "beta-"]}},
        "flags": {
            "beta-search": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                            "targeting": {"if": [{"$ref": "is_beta_flag"}, "on", "off"]}},
            "search": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                       "targeting": {"if": [{"$ref": "is_beta_flag"}, "on", "off"]}},
            "key": {"state": "ENABLED", "variants": {"key": "key", "other": "other"}, "defaultVariant": "other",
                    "targeting": {"if": [{"==": [{"var": "$flagd.flagKey"}, "key"]}, "key", "other"]}},
            "fresh": {"state": "ENABLED", "variants": {"yes": "yes", "no": "no"}, "defaultVariant": "no",
                      "targeting": {"if": [{"and": [
                          {">=": [{"var": "$flagd.timestamp"}, {"var": "from"}]},
                          {"<=": [{"var": "$flagd.timestamp"}, {"var": "to"}]}]}, "yes", "no"]}}
        }
    }))
    .unwrap();
    assert_eq!(answer(&set, "beta-search", json!({})), "on");
    assert_eq!(answer(&set, "search", json!({})), "off");
    assert_eq!(answer(&set, "key", json!({})), "key");
    // The timestamp is now, in whole seconds since the epoch.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let window = json!({"from": now - 5, "to": now + 60});
    assert_eq!(answer(&set, "fresh", window), "yes");
    assert_eq!(
        answer(&set, "fresh", json!({"from": now + 3600, "to": now + 7200})),
        "no"
    );
    // The context cannot override them.
    let spoof =
        json!({"$flagd": {"flagKey": "key", "timestamp": 0}, "from": now - 5, "to": now + 60});
    assert_eq!(answer(&set, "search", spoof.clone()), "off");
    assert_eq!(answer(&set, "fresh", spoof), "yes");
}

/// `version` is an ordinary attribute: the engine injects nothing.
#[test]
fn version_is_not_special() {
    let set = rule_set(
        &["old", "new"],
        json!({"if": [{"sem_ver": [{"var": "version"}, ">=", "2.0.0"]}, "new", "old"]}),
    );
    assert_eq!(run(&set, json!({"version": "2.1.0"})), "new");
    assert_eq!(run(&set, json!({"version": "1.9.0"})), "old");
    // No version in the context: sem_ver gives null, a false condition.
    assert_eq!(run(&set, json!({})), "old");
    let bare = rule_set(&["old", "new"], json!({"var": "version"}));
    assert_eq!(run(&bare, json!({})), "DEFAULT:old");
    assert_eq!(run(&bare, json!({"version": "new"})), "new");
}

#[test]
fn a_single_use_of_each_evaluator_needs_no_memo() {
    let set = FlagSet::from_value(&json!({
        "$evaluators": {"a": {"or": vec![json!({"var": "x"}); 20]}, "b": {"!": {"$ref": "a"}}},
        "flags": {
            "once": {"state": "ENABLED", "variants": {"on": 1, "off": 0}, "defaultVariant": "off",
                     "targeting": {"if": [{"$ref": "b"}, "on", "off"]}},
            "twice": {"state": "ENABLED", "variants": {"on": 1, "off": 0}, "defaultVariant": "off",
                      "targeting": {"if": [{"and": [{"$ref": "b"}, {"$ref": "a"}]}, "on", "off"]}}
        }
    }))
    .unwrap();
    assert!(!set.find("once").unwrap().memo_refs);
    assert!(set.find("twice").unwrap().memo_refs);
    assert_eq!(answer(&set, "once", json!({})), "on");
    assert_eq!(answer(&set, "twice", json!({"x": true})), "off");
}

/// A first argument that evaluates to an array is a bucket, and the
/// targeting key is hashed, as in flagd and flagd-core.
#[test]
fn fractional_first_argument_evaluating_to_a_bucket() {
    for opts in [CompileOptions::default(), v3()] {
        for buckets in [json!(["b", 0]), json!({"var": "second"})] {
            let def = json!({"flags": {"f": {"state": "ENABLED", "variants": {"a": "a", "b": "b"},
                "defaultVariant": "b", "targeting": {"fractional": [{"var": "first"}, buckets]}}}});
            let set = FlagSet::from_value_with(&def, &opts).unwrap();
            let c = json!({"targetingKey": "u", "first": ["a", 1], "second": ["b", 0]});
            assert_eq!(answer(&set, "f", c), "a", "{buckets}");
            let c = json!({"first": ["a", 1], "second": ["b", 0]});
            assert_eq!(answer(&set, "f", c), "DEFAULT:b", "{buckets}");
        }
    }
}
