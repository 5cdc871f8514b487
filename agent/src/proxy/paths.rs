//! Path normalisation and matching of kill-switch routes.
//!
//! # Matching (why `/api//pay`, `/api/./pay`, `/api/%70ay` cannot bypass `/api/pay`)
//!
//! The proxy forwards the path untouched, so it must block every spelling that the *app*
//! might route to the killed endpoint. Apps differ (some decode `%2F`, some resolve `..`,
//! some do not, Java containers strip `;params`, some routers are case-insensitive), so the
//! rule is: **a block matches when any plausible interpretation of the request path starts
//! with the normalised prefix.** Over-blocking a near-identical spelling is the safe side of a
//! kill switch. The interpretations (`path_views`) are:
//!
//! * **raw**: the path as received (ASCII-lowercased);
//! * **collapsed**: percent-decoded repeatedly until stable (at most 4 rounds, so `%2570` is
//!   caught for apps that decode twice; `%2F` becomes `/`), `\` treated as `/`, `;params`
//!   stripped from each segment, empty segments (`//`) dropped, `.`/`..` kept verbatim —
//!   what an app that does not resolve dot-segments sees;
//! * **resolved**: as *collapsed*, with `.` dropped and `..` removing the previous segment
//!   (never above the root) — what an app that resolves dot-segments sees.
//!
//! All views and prefixes are ASCII-lowercased (case-insensitive routers exist) and compared
//! as bytes, so a path that decodes to invalid UTF-8 is still compared. A trailing `/` is
//! kept, so a prefix `/api/pay/` only blocks what is below `/api/pay`. The prefix is a plain
//! byte prefix, as the configuration key says: `/api/pay` also blocks `/api/payments`
//! (write `/api/pay/` to block only below it). The configured prefix itself goes through
//! the *resolved* normalisation.
//!
//! Methods: compared case-insensitively; a block for `GET` also blocks `HEAD` (frameworks run
//! the GET handler for HEAD); method-override headers (`X-HTTP-Method-Override`,
//! `X-HTTP-Method`, `X-Method-Override`) are honoured as an alternative method. A `_method`
//! field inside a form body cannot be seen without buffering the body and is not checked.
//!

use super::rules::CompiledRule;
use super::*;

pub(super) const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];
/// Percent-decoding rounds for matching (catches double and triple encoding).
pub(super) const MAX_DECODE_ROUNDS: usize = 4;

/// Index of the first rule that is killed and has a matching block.
pub(super) fn find_block(
    rules: &[CompiledRule],
    killed: &BTreeSet<String>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Option<usize> {
    if killed.is_empty() {
        return None;
    }
    let mut views: Option<[Vec<u8>; 3]> = None;
    for (i, rule) in rules.iter().enumerate() {
        if !killed.contains(&rule.name) {
            continue;
        }
        let views = views.get_or_insert_with(|| path_views(path));
        let hit = rule.blocks.iter().any(|b| {
            method_matches(b.method.as_ref(), method, headers)
                && views.iter().any(|v| v.starts_with(&b.prefix))
        });
        if hit {
            return Some(i);
        }
    }
    None
}

pub(super) fn method_matches(want: Option<&Method>, got: &Method, headers: &HeaderMap) -> bool {
    let Some(want) = want else { return true };
    let is_wanted = |m: &str| {
        let m = m.trim();
        m.eq_ignore_ascii_case(want.as_str())
            || (*want == Method::GET && m.eq_ignore_ascii_case("HEAD"))
    };
    if is_wanted(got.as_str()) {
        return true;
    }
    METHOD_OVERRIDE_HEADERS.iter().any(|name| {
        headers
            .get_all(*name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(is_wanted))
    })
}

/// The configured prefix in the *resolved* normalisation (see the module docs).
pub(super) fn normalize_prefix(prefix: &str) -> Vec<u8> {
    let [_, _, resolved] = path_views(prefix);
    resolved
}

/// The three interpretations of a request path that are matched: `[raw, collapsed,
/// resolved]`, all lowercased (see the module docs).
pub(super) fn path_views(path: &str) -> [Vec<u8>; 3] {
    let mut raw = path.as_bytes().to_ascii_lowercase();
    if !raw.starts_with(b"/") {
        raw.insert(0, b'/');
    }

    let mut decoded = path.as_bytes().to_vec();
    for _ in 0..MAX_DECODE_ROUNDS {
        match percent_decode(&decoded) {
            Some(d) => decoded = d,
            None => break,
        }
    }
    for b in decoded.iter_mut() {
        if *b == b'\\' {
            *b = b'/';
        }
    }
    decoded.make_ascii_lowercase();

    let mut collapsed = Vec::with_capacity(decoded.len() + 1);
    let mut stack: Vec<&[u8]> = Vec::new();
    let mut last_empty = true; // the path so far ends with a separator
    let mut last_dot = false; // the last segment was `.` or `..`
    for seg in decoded.split(|b| *b == b'/') {
        let seg = match seg.iter().position(|b| *b == b';') {
            Some(p) => &seg[..p],
            None => seg,
        };
        last_empty = seg.is_empty();
        last_dot = false;
        if seg.is_empty() {
            continue;
        }
        collapsed.push(b'/');
        collapsed.extend_from_slice(seg);
        match seg {
            b"." => last_dot = true,
            b".." => {
                stack.pop();
                last_dot = true;
            }
            _ => stack.push(seg),
        }
    }
    if collapsed.is_empty() || last_empty {
        collapsed.push(b'/');
    }

    let mut resolved = Vec::with_capacity(decoded.len() + 1);
    for seg in &stack {
        resolved.push(b'/');
        resolved.extend_from_slice(seg);
    }
    if resolved.is_empty() || last_empty || last_dot {
        resolved.push(b'/');
    }
    [raw, collapsed, resolved]
}

/// One round of `%XX` decoding; `None` when there was nothing to decode. Malformed escapes
/// are kept as they are.
pub(super) fn percent_decode(input: &[u8]) -> Option<Vec<u8>> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    if !input.contains(&b'%') {
        return None;
    }
    let mut out = Vec::with_capacity(input.len());
    let mut changed = false;
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' && i + 2 < input.len() {
            if let (Some(h), Some(l)) = (hex(input[i + 1]), hex(input[i + 2])) {
                out.push(h << 4 | l);
                changed = true;
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    changed.then_some(out)
}
