//! The runtime value of the rule evaluator, with the JavaScript coercions that
//! `json-logic-engine` (the engine inside `@openfeature/flagd-core`) applies.
//!
//! Values borrow from the compiled plan or from the evaluation context
//! wherever possible; only computed strings and arrays own their data.

use serde_json::Value;
use std::borrow::Cow;
use std::fmt::Write as _;

/// Nesting limit when walking arrays held in values (stringifying, copying).
pub(crate) const MAX_VALUE_DEPTH: usize = 64;

#[derive(Clone, Debug)]
pub(crate) enum Val<'v> {
    Null,
    Bool(bool),
    Num(f64),
    Str(Cow<'v, str>),
    /// An array built during evaluation (`merge`, `map`, `filter`, ...).
    Arr(Vec<Val<'v>>),
    /// A borrowed JSON array or object (never a primitive: see [`Val::from_ref`]).
    Ref(&'v Value),
}

impl<'v> Val<'v> {
    #[inline]
    pub(crate) fn from_ref(v: &'v Value) -> Val<'v> {
        match v {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => Val::Num(n.as_f64().unwrap_or(f64::NAN)),
            Value::String(s) => Val::Str(Cow::Borrowed(s.as_str())),
            Value::Array(_) | Value::Object(_) => Val::Ref(v),
        }
    }

    #[inline]
    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Val::Null)
    }

    #[inline]
    pub(crate) fn is_str_or_null(&self) -> bool {
        matches!(self, Val::Null | Val::Str(_))
    }

    /// Arrays and objects (JS `typeof x === 'object'` for a non-null x).
    #[inline]
    pub(crate) fn is_object_like(&self) -> bool {
        matches!(self, Val::Arr(_) | Val::Ref(_))
    }

    /// `engine.truthy` of json-logic-engine: like JS, except that empty
    /// arrays and empty objects are falsy.
    pub(crate) fn truthy(&self) -> bool {
        match self {
            Val::Null => false,
            Val::Bool(b) => *b,
            Val::Num(n) => *n != 0.0 && !n.is_nan(),
            Val::Str(s) => !s.is_empty(),
            Val::Arr(a) => !a.is_empty(),
            Val::Ref(Value::Array(a)) => !a.is_empty(),
            Val::Ref(Value::Object(o)) => !o.is_empty(),
            Val::Ref(_) => true,
        }
    }

    /// JS `ToNumber` (objects and arrays give NaN; callers reject them first).
    pub(crate) fn to_number(&self) -> f64 {
        match self {
            Val::Null => 0.0,
            Val::Bool(b) => f64::from(u8::from(*b)),
            Val::Num(n) => *n,
            Val::Str(s) => str_to_number(s),
            _ => f64::NAN,
        }
    }

    /// Converts into an owned JSON value (used for constant folding).
    pub(crate) fn to_value(&self) -> Value {
        self.to_value_depth(0)
    }

    fn to_value_depth(&self, depth: usize) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(*b),
            Val::Num(n) => num_to_value(*n),
            Val::Str(s) => Value::String(s.to_string()),
            Val::Arr(a) if depth < MAX_VALUE_DEPTH => {
                Value::Array(a.iter().map(|v| v.to_value_depth(depth + 1)).collect())
            }
            Val::Arr(_) => Value::Null,
            Val::Ref(v) => (*v).clone(),
        }
    }

    /// Iterates an array value (owned or borrowed); `None` if not an array.
    pub(crate) fn array_len(&self) -> Option<usize> {
        match self {
            Val::Arr(a) => Some(a.len()),
            Val::Ref(Value::Array(a)) => Some(a.len()),
            _ => None,
        }
    }

    pub(crate) fn array_get(&self, i: usize) -> Option<Val<'v>> {
        match self {
            Val::Arr(a) => a.get(i).cloned(),
            Val::Ref(Value::Array(a)) => a.get(i).map(Val::from_ref),
            _ => None,
        }
    }
}

/// Numbers that are integral and in range become JSON integers, like JS does
/// when it serialises them.
pub(crate) fn num_to_value(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

/// JS `ToNumber` on a string.
pub(crate) fn str_to_number(s: &str) -> f64 {
    let t = s.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
    if t.is_empty() {
        return 0.0;
    }
    let radix = |p: &str, r: u32| -> f64 {
        if p.is_empty() || !p.chars().all(|c| c.is_digit(r)) {
            return f64::NAN;
        }
        u128::from_str_radix(p, r).map_or(f64::NAN, |v| v as f64)
    };
    if let Some(p) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return radix(p, 16);
    }
    if let Some(p) = t.strip_prefix("0o").or_else(|| t.strip_prefix("0O")) {
        return radix(p, 8);
    }
    if let Some(p) = t.strip_prefix("0b").or_else(|| t.strip_prefix("0B")) {
        return radix(p, 2);
    }
    match t {
        "Infinity" | "+Infinity" => return f64::INFINITY,
        "-Infinity" => return f64::NEG_INFINITY,
        _ => {}
    }
    // Rust also accepts "inf", "nan", "infinity" (any case): JS does not.
    let body = t.trim_start_matches(['+', '-']);
    if !body.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return f64::NAN;
    }
    if !t
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
    {
        return f64::NAN;
    }
    t.parse::<f64>().unwrap_or(f64::NAN)
}

/// JS `Number.prototype.toString()` (radix 10).
pub(crate) fn fmt_num(n: f64, out: &mut String) {
    if n.is_nan() {
        out.push_str("NaN");
    } else if n.is_infinite() {
        out.push_str(if n > 0.0 { "Infinity" } else { "-Infinity" });
    } else if n == 0.0 {
        out.push('0');
    } else {
        let a = n.abs();
        if (1e-6..1e21).contains(&a) {
            let _ = write!(out, "{n}");
        } else {
            // Rust gives "1e21" / "1.5e-7"; JS gives "1e+21" / "1.5e-7".
            let s = format!("{n:e}");
            match s.split_once('e') {
                Some((m, e)) if !e.starts_with('-') => {
                    let _ = write!(out, "{m}e+{e}");
                }
                _ => out.push_str(&s),
            }
        }
    }
}

/// JS `String(x)`; `null` is "null" and, inside arrays, "".
pub(crate) fn to_js_string<'v>(v: &Val<'v>) -> Cow<'v, str> {
    match v {
        Val::Str(s) => s.clone(),
        Val::Null => Cow::Borrowed("null"),
        Val::Bool(true) => Cow::Borrowed("true"),
        Val::Bool(false) => Cow::Borrowed("false"),
        _ => {
            let mut s = String::new();
            append_js_string(v, &mut s, 0);
            Cow::Owned(s)
        }
    }
}

pub(crate) fn append_js_string(v: &Val<'_>, out: &mut String, depth: usize) {
    match v {
        Val::Null => out.push_str("null"),
        Val::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Val::Num(n) => fmt_num(*n, out),
        Val::Str(s) => out.push_str(s),
        Val::Arr(a) => {
            for (i, e) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if !e.is_null() && depth < MAX_VALUE_DEPTH {
                    append_js_string(e, out, depth + 1);
                }
            }
        }
        Val::Ref(Value::Array(a)) => {
            for (i, e) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if !e.is_null() && depth < MAX_VALUE_DEPTH {
                    append_js_string(&Val::from_ref(e), out, depth + 1);
                }
            }
        }
        Val::Ref(_) => out.push_str("[object Object]"),
    }
}

/// JS `===` (and `SameValueZero` for `Array.prototype.includes`, except NaN).
pub(crate) fn strict_eq(a: &Val<'_>, b: &Val<'_>) -> bool {
    match (a, b) {
        (Val::Null, Val::Null) => true,
        (Val::Bool(x), Val::Bool(y)) => x == y,
        (Val::Num(x), Val::Num(y)) => x == y,
        (Val::Str(x), Val::Str(y)) => x == y,
        (Val::Ref(x), Val::Ref(y)) => std::ptr::eq(*x, *y),
        _ => false,
    }
}

/// `===` between a runtime value and a JSON value (for `in` over constant arrays).
#[inline]
pub(crate) fn strict_eq_value(a: &Val<'_>, b: &Value) -> bool {
    match (a, b) {
        (Val::Null, Value::Null) => true,
        (Val::Bool(x), Value::Bool(y)) => x == y,
        (Val::Num(x), Value::Number(y)) => y.as_f64() == Some(*x),
        (Val::Str(x), Value::String(y)) => x.as_ref() == y.as_str(),
        (Val::Ref(x), y) => std::ptr::eq(*x, y),
        _ => false,
    }
}

/// JS `==` for values that passed json-logic-engine's `compareCheck` (no
/// objects or arrays).
pub(crate) fn loose_eq(a: &Val<'_>, b: &Val<'_>) -> bool {
    match (a, b) {
        (Val::Null, Val::Null) => true,
        (Val::Null, _) | (_, Val::Null) => false,
        (Val::Str(x), Val::Str(y)) => x == y,
        (Val::Ref(x), Val::Ref(y)) => std::ptr::eq(*x, *y),
        _ => a.to_number() == b.to_number(),
    }
}

/// JS abstract relational comparison; `None` when NaN is involved.
pub(crate) fn js_cmp(a: &Val<'_>, b: &Val<'_>) -> Option<std::cmp::Ordering> {
    match (a, b) {
        // JS compares UTF-16 code units; UTF-8 byte order equals code point
        // order, which differs only for astral vs U+E000..U+FFFF.
        (Val::Str(x), Val::Str(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        _ => a.to_number().partial_cmp(&b.to_number()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_number_like_js() {
        let cases: &[(&str, f64)] = &[
            ("", 0.0),
            ("  12 ", 12.0),
            ("1e3", 1000.0),
            ("0x1A", 26.0),
            ("-1.5", -1.5),
            (".5", 0.5),
            ("Infinity", f64::INFINITY),
        ];
        for (s, n) in cases {
            assert_eq!(str_to_number(s), *n, "{s:?}");
        }
        for s in ["abc", "inf", "nan", "1a", "infinity", "--1", "0x"] {
            assert!(str_to_number(s).is_nan(), "{s:?}");
        }
    }

    #[test]
    fn number_formatting_like_js() {
        let cases: &[(f64, &str)] = &[
            (1.0, "1"),
            (-0.0, "0"),
            (1.5, "1.5"),
            (1e21, "1e+21"),
            (123456789012.0, "123456789012"),
            (1e-7, "1e-7"),
            (0.000001, "0.000001"),
        ];
        for (n, s) in cases {
            let mut out = String::new();
            fmt_num(*n, &mut out);
            assert_eq!(out, *s);
        }
    }
}
