//! Unit tests of the proxy's parts: matching, answers, headers.

use super::headers::*;
use super::paths::*;
use super::rules::*;
use super::*;

fn rule(name: &str, method: Option<Method>, prefix: &str) -> CompiledRule {
    CompiledRule::new(&KillRule {
        name: name.into(),
        blocks: vec![BlockMatch {
            method,
            path_prefix: prefix.into(),
        }],
        status: StatusCode::SERVICE_UNAVAILABLE,
        retry_after_secs: Some(120),
        body: "paused".into(),
    })
}

fn killed(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn blocked(path: &str) -> bool {
    let rules = [rule("pay", Some(Method::POST), "/api/pay")];
    find_block(
        &rules,
        &killed(&["pay"]),
        &Method::POST,
        path,
        &HeaderMap::new(),
    )
    .is_some()
}

fn s(v: &[u8]) -> &str {
    std::str::from_utf8(v).unwrap()
}

#[test]
fn views_normalise() {
    let [raw, collapsed, resolved] = path_views("/API//x/./../Pay%2fnow;jsessionid=1/");
    assert_eq!(s(&raw), "/api//x/./../pay%2fnow;jsessionid=1/");
    assert_eq!(s(&collapsed), "/api/x/./../pay/now/");
    assert_eq!(s(&resolved), "/api/pay/now/");
    let [_, _, r] = path_views("/a/b/..");
    assert_eq!(s(&r), "/a/");
    let [_, _, r] = path_views("/../../..");
    assert_eq!(s(&r), "/");
    let [_, c, r] = path_views("");
    assert_eq!((s(&c), s(&r)), ("/", "/"));
    let [_, _, r] = path_views("*");
    assert_eq!(s(&r), "/*");
}

#[test]
fn percent_decoding() {
    assert_eq!(percent_decode(b"/a%70"), Some(b"/ap".to_vec()));
    assert_eq!(percent_decode(b"/a%7"), None);
    assert_eq!(percent_decode(b"/a%zz%"), None);
    assert_eq!(percent_decode(b"%"), None);
    assert_eq!(percent_decode(b"%2570"), Some(b"%70".to_vec()));
    // Invalid UTF-8 after decoding must not panic and still compares as bytes.
    let [_, _, r] = path_views("/api/%ff%fe");
    assert_eq!(r, b"/api/\xff\xfe".to_vec());
}

#[test]
fn bypass_spellings_are_blocked() {
    for p in [
        "/api/pay",
        "/api/pay/123",
        "/api/payments",
        "/api//pay",
        "//api/pay",
        "/api/./pay",
        "/api/x/../pay",
        "/api/%70ay",
        "/api/%2570ay",
        "/api%2Fpay",
        "/api%2fpay",
        "/%61%70%69/%70%61%79",
        "/API/PAY",
        "/api\\pay",
        "/api;x=1/pay",
        "/api/..;/api/pay",
        "/api/%2e/pay",
        "/api/%2e%2e/api/pay",
        // An app that does not resolve `..` routes this under /api/pay.
        "/api/pay/../other",
    ] {
        assert!(blocked(p), "{p} should be blocked");
    }
    for p in [
        "/api",
        "/api/pa",
        "/api/other",
        "/apipay",
        "/v2/api/pay",
        "/",
        "",
    ] {
        assert!(!blocked(p), "{p} should pass");
    }
}

#[test]
fn methods() {
    let rules = [rule("pay", Some(Method::POST), "/api/pay")];
    let k = killed(&["pay"]);
    let h = HeaderMap::new();
    assert!(find_block(&rules, &k, &Method::GET, "/api/pay", &h).is_none());
    let odd = Method::from_bytes(b"post").unwrap();
    assert!(find_block(&rules, &k, &odd, "/api/pay", &h).is_some());
    let mut ov = HeaderMap::new();
    ov.insert("x-http-method-override", HeaderValue::from_static("post"));
    assert!(find_block(&rules, &k, &Method::GET, "/api/pay", &ov).is_some());

    let rules = [rule("feed", Some(Method::GET), "/feed")];
    let k = killed(&["feed"]);
    assert!(find_block(&rules, &k, &Method::HEAD, "/feed", &h).is_some());
    assert!(find_block(&rules, &k, &Method::POST, "/feed", &h).is_none());

    let rules = [rule("all", None, "/")];
    let k = killed(&["all"]);
    assert!(find_block(&rules, &k, &Method::DELETE, "/anything", &h).is_some());
    assert!(find_block(&rules, &k, &Method::GET, "", &h).is_some());
}

#[test]
fn only_killed_rules_and_first_wins() {
    let rules = [
        rule("a", None, "/x"),
        rule("b", None, "/x/y"),
        rule("c", None, "/z/"),
    ];
    let h = HeaderMap::new();
    assert_eq!(
        find_block(&rules, &killed(&[]), &Method::GET, "/x", &h),
        None
    );
    assert_eq!(
        find_block(&rules, &killed(&["zzz"]), &Method::GET, "/x", &h),
        None
    );
    assert_eq!(
        find_block(&rules, &killed(&["a", "b"]), &Method::GET, "/x/y", &h),
        Some(0)
    );
    assert_eq!(
        find_block(&rules, &killed(&["b"]), &Method::GET, "/x/y/z", &h),
        Some(1)
    );
    assert_eq!(
        find_block(&rules, &killed(&["b"]), &Method::GET, "/x", &h),
        None
    );
    // Trailing slash in the prefix: only below it.
    assert_eq!(
        find_block(&rules, &killed(&["c"]), &Method::GET, "/z", &h),
        None
    );
    assert_eq!(
        find_block(&rules, &killed(&["c"]), &Method::GET, "/z/", &h),
        Some(2)
    );
    assert_eq!(
        find_block(&rules, &killed(&["c"]), &Method::GET, "/z//q", &h),
        Some(2)
    );
    assert_eq!(
        find_block(&rules, &killed(&["c"]), &Method::GET, "/zz", &h),
        None
    );
}

#[test]
fn accept_negotiation() {
    let accept = |v: &str| {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        prefers_json(&h)
    };
    assert!(!prefers_json(&HeaderMap::new()));
    assert!(accept("application/json"));
    assert!(accept("application/problem+json"));
    assert!(accept("application/json, text/plain, */*"));
    assert!(!accept("*/*"));
    assert!(!accept(
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    ));
    assert!(!accept("text/plain, application/json"));
    assert!(accept("text/plain;q=0.5, application/json"));
    assert!(!accept("application/json;q=0, text/plain;q=0.1"));
    assert!(!accept("application/json;q=nan"));
}

#[test]
fn blocked_response_shape() {
    let mut r = rule("pay \"x\"", None, "/");
    r.text_body = Bytes::from_static(b"t");
    let resp = r.response(true);
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()[header::RETRY_AFTER], "120");
    assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
    assert_eq!(resp.headers()["x-opsplane-killswitch"], "pay \"x\"");
    assert_eq!(
        r.json_body,
        Bytes::from_static(
            br#"{"error":{"code":"KILLED","message":"paused","killswitch":"pay \"x\""}}"#
        )
    );
    // A name that cannot be a header value and a 1xx status must not panic.
    let odd = CompiledRule::new(&KillRule {
        name: "bad\nname".into(),
        blocks: vec![],
        status: StatusCode::CONTINUE,
        retry_after_secs: None,
        body: "\u{1}".into(),
    });
    let resp = odd.response(false);
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().get("x-opsplane-killswitch").is_none());
    assert_eq!(
        odd.json_body,
        Bytes::from_static(
            br#"{"error":{"code":"KILLED","message":"\u0001","killswitch":"bad\nname"}}"#
        )
    );
}

#[test]
fn hop_by_hop_removed() {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONNECTION,
        HeaderValue::from_static("keep-alive, X-Secret, host"),
    );
    h.insert("x-secret", HeaderValue::from_static("1"));
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    h.insert(header::HOST, HeaderValue::from_static("app.example"));
    h.insert("x-kept", HeaderValue::from_static("1"));
    strip_hop_by_hop(&mut h);
    let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["host", "x-kept"]);
}

#[test]
fn forwarded_headers() {
    let peer: SocketAddr = "[::ffff:10.0.0.7]:5000".parse().unwrap();
    let mut h = HeaderMap::new();
    h.insert(header::HOST, HeaderValue::from_static("app.example"));
    h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
    h.append(X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    let mut trusted = h.clone();
    add_forwarded(&mut h, peer, None, false);
    assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.0.0.7");
    assert_eq!(h[X_FORWARDED_PROTO], "http");
    assert_eq!(h[X_FORWARDED_HOST], "app.example");
    add_forwarded(&mut trusted, peer, None, true);
    assert_eq!(trusted[X_FORWARDED_PROTO], "https");
    assert_eq!(trusted[X_FORWARDED_HOST], "app.example");
}

#[test]
fn upstream_validation() {
    assert!(upstream_parts(&"http://127.0.0.1:3000".parse().unwrap()).is_ok());
    assert!(upstream_parts(&"https://127.0.0.1:3000".parse().unwrap()).is_err());
    assert!(upstream_parts(&"/relative".parse().unwrap()).is_err());
}
