//! Wall-clock helpers: milliseconds since the epoch inside the code, RFC 3339
//! at the edges (JSON answers, CLI output). Formatting is total: any `i64`
//! gives a string (times past what RFC 3339 can write are clamped), so no
//! stored or user-supplied time can make a formatter panic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `9999-12-31T23:59:59.999Z`, the last instant RFC 3339 (four-digit years)
/// can write.
pub const MAX_RFC3339_MS: i64 = 253_402_300_799_999;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `2026-11-23T01:02:03.456Z`; times before the epoch print as the epoch and
/// times after year 9999 as [`MAX_RFC3339_MS`].
pub fn rfc3339(ms: i64) -> String {
    let clamped = ms.clamp(0, MAX_RFC3339_MS);
    // both bounds are far inside what `SystemTime` holds on every platform
    let t = UNIX_EPOCH + Duration::from_millis(clamped as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Formats any `SystemTime` (clamped like [`rfc3339`]).
pub fn rfc3339_system(t: SystemTime) -> String {
    let ms = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(_) => 0,
    };
    rfc3339(ms)
}

pub fn parse_rfc3339(s: &str) -> Option<i64> {
    humantime::parse_rfc3339_weak(s)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_millis()).ok())
}

/// `now + after`, saturating instead of overflowing.
pub fn add_ms(now_ms: i64, after_ms: i64) -> i64 {
    now_ms.saturating_add(after_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let s = rfc3339(1_700_000_000_123);
        assert_eq!(s, "2023-11-14T22:13:20.123Z");
        assert_eq!(parse_rfc3339(&s), Some(1_700_000_000_123));
    }

    #[test]
    fn formatting_is_total() {
        for ms in [
            i64::MIN,
            -1,
            0,
            MAX_RFC3339_MS,
            MAX_RFC3339_MS + 1,
            // `--expires 10000y` from now
            now_ms() + 10_000 * 365 * 86_400_000,
            i64::MAX,
        ] {
            let s = rfc3339(ms);
            assert!(s.ends_with('Z'), "{ms}: {s}");
        }
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(i64::MIN), "1970-01-01T00:00:00.000Z");
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(rfc3339_system(far), "9999-12-31T23:59:59.999Z");
        assert_eq!(add_ms(i64::MAX - 1, 10), i64::MAX);
    }
}
