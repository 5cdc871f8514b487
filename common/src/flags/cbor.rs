//! Deterministic CBOR (RFC 8949 §4.2.1, core deterministic encoding) of JSON
//! values: the bytes that fractional bucketing v3 hashes.
//!
//! flagd's ADR "fractional-non-string-rand-units" fixes the encoding: a
//! number without a fractional part in `[-2^63, 2^64-1]` is an integer
//! (major type 0 or 1; `-0.0` is `0`), any other number the shortest float
//! (half, single, double) that holds it exactly; strings are text strings
//! (major type 3); map keys are sorted by the bytewise order of their
//! encodings. Hand-written rather than taken from a CBOR crate because the
//! number normalisation is flagd's own and the crates we looked at
//! (`ciborium`, `serde_cbor`) keep a map's iteration order instead of
//! sorting keys by their encoding; the encoder is small and tested against
//! the RFC's examples and the testbed's expected buckets.

use super::jsval::Val;
use serde_json::Value;

/// Appends the encoding of `v` to `out`.
pub(crate) fn encode_val(v: &Val<'_>, out: &mut Vec<u8>) {
    match v {
        Val::Null => out.push(0xf6),
        Val::Bool(false) => out.push(0xf4),
        Val::Bool(true) => out.push(0xf5),
        Val::Num(n) => encode_number(*n, out),
        Val::Str(s) => encode_text(s, out),
        Val::Arr(items) => {
            head(4, items.len() as u64, out);
            for i in items {
                encode_val(i, out);
            }
        }
        Val::Ref(r) => encode_value(r, out),
    }
}

/// Appends the encoding of `v` to `out`.
pub(crate) fn encode_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(0xf6),
        Value::Bool(false) => out.push(0xf4),
        Value::Bool(true) => out.push(0xf5),
        // Numbers as flagd sees them: IEEE doubles.
        Value::Number(n) => encode_number(n.as_f64().unwrap_or(f64::NAN), out),
        Value::String(s) => encode_text(s, out),
        Value::Array(items) => {
            head(4, items.len() as u64, out);
            for i in items {
                encode_value(i, out);
            }
        }
        Value::Object(m) => {
            // Keys sorted by their encoded bytes: for text strings that is
            // shorter first, then bytewise.
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_by(|a, b| {
                a.len()
                    .cmp(&b.len())
                    .then_with(|| a.as_bytes().cmp(b.as_bytes()))
            });
            head(5, keys.len() as u64, out);
            for k in keys {
                encode_text(k, out);
                encode_value(&m[k.as_str()], out);
            }
        }
    }
}

fn encode_text(s: &str, out: &mut Vec<u8>) {
    head(3, s.len() as u64, out);
    out.extend_from_slice(s.as_bytes());
}

/// The initial byte(s): major type and argument, shortest form.
fn head(major: u8, n: u64, out: &mut Vec<u8>) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if let Ok(b) = u8::try_from(n) {
        out.extend_from_slice(&[m | 24, b]);
    } else if let Ok(s) = u16::try_from(n) {
        out.push(m | 25);
        out.extend_from_slice(&s.to_be_bytes());
    } else if let Ok(w) = u32::try_from(n) {
        out.push(m | 26);
        out.extend_from_slice(&w.to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

/// 2^63 and 2^64 as doubles (exact).
const TWO_63: f64 = 9_223_372_036_854_775_808.0;
const TWO_64: f64 = 18_446_744_073_709_551_616.0;

fn encode_number(x: f64, out: &mut Vec<u8>) {
    if x.is_finite() && x.trunc() == x && (-TWO_63..TWO_64).contains(&x) {
        if x >= 0.0 {
            // Also -0.0, which compares equal to 0.0.
            head(0, x as u64, out);
        } else {
            // -1 - n, computed without leaving u64: |x| >= 1 is exact.
            head(1, (-x) as u64 - 1, out);
        }
        return;
    }
    if let Some(h) = f16_exact(x) {
        out.push(0xf9);
        out.extend_from_slice(&h.to_be_bytes());
    } else if x.is_nan() || f64::from(x as f32) == x {
        out.push(0xfa);
        out.extend_from_slice(&(x as f32).to_bits().to_be_bytes());
    } else {
        out.push(0xfb);
        out.extend_from_slice(&x.to_bits().to_be_bytes());
    }
}

/// `x` as an IEEE half float when that holds it exactly.
fn f16_exact(x: f64) -> Option<u16> {
    let sign = if x.is_sign_negative() { 0x8000u16 } else { 0 };
    if x.is_nan() {
        return Some(0x7e00);
    }
    if x.is_infinite() {
        return Some(sign | 0x7c00);
    }
    if x == 0.0 {
        return Some(sign);
    }
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32 - 1023;
    let mant = bits & ((1u64 << 52) - 1);
    if (-14..=15).contains(&exp) {
        // Normal half: 10 mantissa bits, the 42 below must be zero.
        if mant & ((1u64 << 42) - 1) != 0 {
            return None;
        }
        return Some(sign | (((exp + 15) as u16) << 10) | (mant >> 42) as u16);
    }
    if (-24..-14).contains(&exp) {
        // Subnormal half: x = m * 2^-24 with m < 1024.
        let sig = mant | (1u64 << 52);
        let shift = (28 - exp) as u32; // 52 - (exp + 24)
        if sig & ((1u64 << shift) - 1) != 0 {
            return None;
        }
        return Some(sign | (sig >> shift) as u16);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hex(v: &Value) -> String {
        let mut out = Vec::new();
        encode_value(v, &mut out);
        out.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn rfc8949_appendix_a_examples() {
        let cases: Vec<(Value, &str)> = vec![
            (json!(0), "00"),
            (json!(1), "01"),
            (json!(10), "0a"),
            (json!(23), "17"),
            (json!(24), "1818"),
            (json!(25), "1819"),
            (json!(100), "1864"),
            (json!(1000), "1903e8"),
            (json!(1000000), "1a000f4240"),
            (json!(1000000000000u64), "1b000000e8d4a51000"),
            (json!(-1), "20"),
            (json!(-10), "29"),
            (json!(-100), "3863"),
            (json!(-1000), "3903e7"),
            (json!(1.5), "f93e00"),
            (json!(100000.5), "fa47c35040"),
            (json!(3.4028234663852886e38), "fa7f7fffff"),
            (json!(1.0e300), "fb7e37e43c8800759c"),
            (json!(5.960464477539063e-8), "f90001"),
            (json!(0.00006103515625), "f90400"),
            (json!(-4.1), "fbc010666666666666"),
            (json!(false), "f4"),
            (json!(true), "f5"),
            (json!(null), "f6"),
            (json!(""), "60"),
            (json!("a"), "6161"),
            (json!("IETF"), "6449455446"),
            (json!("\u{00fc}"), "62c3bc"),
            (json!([]), "80"),
            (json!([1, 2, 3]), "83010203"),
            (json!([1, [2, 3], [4, 5]]), "8301820203820405"),
            (json!({}), "a0"),
            (json!({"a": 1, "b": [2, 3]}), "a26161016162820203"),
        ];
        for (v, want) in cases {
            assert_eq!(hex(&v), want, "{v}");
        }
    }

    #[test]
    fn flagd_number_normalisation_and_key_order() {
        // Integral floats are integers; -0.0 is 0; outside [-2^63, 2^64) a float.
        assert_eq!(hex(&json!(1.0)), "01");
        assert_eq!(hex(&json!(-0.0)), "00");
        assert_eq!(hex(&json!(-2.0)), "21");
        assert_eq!(hex(&json!(9007199254740992.0)), "1b0020000000000000");
        assert_eq!(hex(&json!(-9223372036854775808.0)), "3b7fffffffffffffff");
        assert_eq!(hex(&json!(18446744073709551616.0)), "fa5f800000");
        assert_eq!(hex(&json!(1e20)), "fb4415af1d78b58c40");
        assert_eq!(hex(&json!(65504.0)), "19ffe0");
        assert_eq!(hex(&json!(0.5)), "f93800");
        // Shorter keys first, then bytewise.
        assert_eq!(
            hex(&json!({"aa": 2, "z": 1})),
            hex(&json!({"z": 1, "aa": 2}))
        );
        assert!(hex(&json!({"aa": 2, "z": 1})).starts_with("a2617a01"));
        let mut out = Vec::new();
        encode_val(
            &Val::Arr(vec![Val::Str("f".into()), Val::Num(2.5)]),
            &mut out,
        );
        assert_eq!(out, [0x82, 0x61, b'f', 0xf9, 0x41, 0x00]);
    }
}
