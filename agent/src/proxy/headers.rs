//! Header handling of the proxy: hop-by-hop headers removed, `X-Forwarded-*` added,
//! `Accept` negotiation and the JSON error answers.

use super::*;

/// Hop-by-hop headers always removed (RFC 9110 §7.6.1, plus the extras Go removes).
pub(super) const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
    "trailer",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Removes `Connection`, every header it names, and the fixed hop-by-hop headers.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| n != header::HOST)
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

pub(super) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(super) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(super) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

pub(super) fn add_forwarded(
    headers: &mut HeaderMap,
    peer: SocketAddr,
    target_authority: Option<&Authority>,
    trust: bool,
) {
    let ip = peer.ip().to_canonical().to_string();
    let mut xff: Vec<u8> = Vec::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        let v = v.as_bytes().trim_ascii();
        if !v.is_empty() {
            xff.extend_from_slice(v);
            xff.extend_from_slice(b", ");
        }
    }
    xff.extend_from_slice(ip.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&xff) {
        headers.insert(X_FORWARDED_FOR, v);
    }

    if !trust || !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if !trust || !headers.contains_key(&X_FORWARDED_HOST) {
        let host = headers
            .get(header::HOST)
            .cloned()
            .or_else(|| target_authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
        match host {
            Some(h) => {
                headers.insert(X_FORWARDED_HOST, h);
            }
            None => {
                headers.remove(X_FORWARDED_HOST);
            }
        }
    }
}

/// True when the `Accept` header prefers JSON over text: the best-q `application/json` (or
/// `…+json`) range beats the best-q `text/…` range, ties going to whichever was listed first.
/// `*/*` and `application/*` count for neither, so `Accept: */*` and browsers get text.
pub fn prefers_json(headers: &HeaderMap) -> bool {
    // (q, position) of the best range of each kind.
    let mut json: Option<(f32, usize)> = None;
    let mut text: Option<(f32, usize)> = None;
    let ranges = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    for (pos, range) in ranges.enumerate() {
        let mut params = range.split(';');
        let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut q = 1.0f32;
        for p in params {
            if let Some((k, v)) = p.split_once('=') {
                if k.trim().eq_ignore_ascii_case("q") {
                    q = v
                        .trim()
                        .parse::<f32>()
                        .ok()
                        .filter(|q| q.is_finite())
                        .unwrap_or(0.0);
                }
            }
        }
        if q <= 0.0 {
            continue;
        }
        let slot = if media == "application/json"
            || (media.starts_with("application/") && media.ends_with("+json"))
        {
            &mut json
        } else if media.starts_with("text/") {
            &mut text
        } else {
            continue;
        };
        if slot.is_none_or(|(best, _)| q > best) {
            *slot = Some((q, pos));
        }
    }
    match (json, text) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some((jq, jp)), Some((tq, tp))) => jq > tq || (jq == tq && jp < tp),
    }
}

pub(super) fn json_error(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    let body = format!(
        "{{\"error\":{{\"code\":{},\"message\":{}}}}}",
        json_string(code),
        json_string(message)
    );
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `s` as a JSON string literal.
pub(super) fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
