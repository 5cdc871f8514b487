//! Cheap bulk evaluation: the answers of `POST /ofrep/v1/evaluate/flags` and
//! `GET /v1/flags` are written straight into one buffer (no intermediate
//! `serde_json::Value` tree, no per-flag map), and the OFREP body with its
//! ETag is kept in a small bounded LRU cache per (snapshot, merged context),
//! because browser SDKs poll again and again with the same context.
//!
//! The bytes written are exactly what serialising the old `Value` trees gave
//! (`serde_json` without `preserve_order`, so object keys sorted); the tests
//! below compare both.

use crate::state::Snapshot;
use axum::body::Bytes;
use axum::http::HeaderValue;
use common::flags::{EvalContext, Evaluation, Reason};
use lru::LruCache;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use xxhash_rust::xxh3::xxh3_64;

/// Most bodies the cache keeps.
pub const CACHE_MAX_ENTRIES: usize = 1024;
/// Most body bytes the cache keeps (bodies plus context keys).
pub const CACHE_MAX_BYTES: usize = 4 << 20;
/// A body larger than this share of [`CACHE_MAX_BYTES`] is not cached.
const CACHE_MAX_ENTRY_DIVISOR: usize = 8;

fn push_str(out: &mut Vec<u8>, s: &str) {
    // writing into a Vec cannot fail, and a str always serialises
    let _ = serde_json::to_writer(&mut *out, s);
}

fn push_value<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // a Value (or a map of them) always serialises; a Vec writer never fails
    let _ = serde_json::to_writer(&mut *out, v);
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(n.to_string().as_bytes());
}

/// One OFREP evaluation: `{"key","value"?,"reason","variant","metadata"}`, or
/// `{"key","errorCode","errorDetails"}` for an evaluation that failed.
pub fn write_ofrep_item(out: &mut Vec<u8>, key: &str, e: &Evaluation<'_>) {
    out.extend_from_slice(br#"{"key":"#);
    push_str(out, key);
    match (&e.reason, &e.error) {
        (Reason::Error, Some(err)) => {
            out.extend_from_slice(br#","errorCode":"#);
            push_str(out, err.code.as_str());
            out.extend_from_slice(br#","errorDetails":"#);
            push_str(out, &err.message);
        }
        _ => {
            if let Some(v) = &e.value {
                out.extend_from_slice(br#","value":"#);
                push_value(out, v.as_ref());
            }
            out.extend_from_slice(br#","reason":"#);
            push_str(out, e.reason.as_str());
            // always present (the Python provider requires it); empty when there is none
            out.extend_from_slice(br#","variant":"#);
            push_str(out, e.variant.unwrap_or(""));
            out.extend_from_slice(br#","metadata":"#);
            push_value(out, e.metadata);
        }
    }
    out.push(b'}');
}

/// The OFREP bulk answer: `{"flags":[...],"metadata":{"revision":N}}`.
pub fn write_ofrep_bulk(out: &mut Vec<u8>, revision: u64, evals: &[(&str, Evaluation<'_>)]) {
    out.extend_from_slice(br#"{"flags":["#);
    for (i, (k, e)) in evals.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_ofrep_item(out, k, e);
    }
    out.extend_from_slice(br#"],"metadata":{"revision":"#);
    push_u64(out, revision);
    out.extend_from_slice(b"}}");
}

/// One flag of the local API: `{"error"?,"reason","value"?,"variant"}` (keys
/// sorted, as the `Value` map it replaces serialised them).
pub fn write_local_item(out: &mut Vec<u8>, e: &Evaluation<'_>) {
    out.push(b'{');
    if let Some(err) = &e.error {
        out.extend_from_slice(br#""error":{"code":"#);
        push_str(out, err.code.as_str());
        out.extend_from_slice(br#","message":"#);
        push_str(out, &err.message);
        out.extend_from_slice(b"},");
    }
    out.extend_from_slice(br#""reason":"#);
    push_str(out, e.reason.as_str());
    if let Some(v) = &e.value {
        out.extend_from_slice(br#","value":"#);
        push_value(out, v.as_ref());
    }
    out.extend_from_slice(br#","variant":"#);
    match e.variant {
        Some(v) => push_str(out, v),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
}

/// `GET /v1/flags`: `{"flags":{KEY:{...}},"revision":N}`. `evals` is sorted by
/// key (as [`common::flags::FlagSet::evaluate_all`] returns it).
pub fn write_local_all(out: &mut Vec<u8>, revision: u64, evals: &[(&str, Evaluation<'_>)]) {
    out.extend_from_slice(br#"{"flags":{"#);
    for (i, (k, e)) in evals.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_str(out, k);
        out.push(b':');
        write_local_item(out, e);
    }
    out.extend_from_slice(br#"},"revision":"#);
    push_u64(out, revision);
    out.push(b'}');
}

/// The strong ETag of an evaluated body: revision and a hash of the bytes, so
/// a context change never gets a stale 304.
pub fn etag_for(revision: u64, body: &[u8]) -> HeaderValue {
    let s = format!("\"{revision:x}-{:016x}\"", xxh3_64(body));
    HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// The cache key of a merged context: its canonical JSON bytes (object keys
/// are sorted, so the same context always gives the same bytes).
pub fn context_key(ctx: &EvalContext) -> Vec<u8> {
    serde_json::to_vec(ctx.as_map()).unwrap_or_default()
}

/// Whether evaluating `definition` can depend on the time (`$flagd.timestamp`,
/// the whole `$flagd` object, or a `var` whose path is computed at evaluation
/// time and so could name either). Conservative: `true` when unsure.
pub fn may_read_time(definition: &Value) -> bool {
    fn names_time(path: &str) -> bool {
        path.starts_with("$flagd") && path != "$flagd.flagKey"
    }
    match definition {
        Value::Object(m) => {
            if let Some(arg) = m.get("var") {
                let literal_path = match arg {
                    Value::String(p) => Some(p.as_str()),
                    Value::Number(_) | Value::Null => Some(""),
                    Value::Array(a) => match a.first() {
                        None => Some(""),
                        Some(Value::String(p)) => Some(p.as_str()),
                        Some(Value::Number(_)) | Some(Value::Null) => Some(""),
                        Some(_) => None,
                    },
                    _ => None,
                };
                match literal_path {
                    None => return true,
                    Some(p) if names_time(p) => return true,
                    Some(_) => {}
                }
            }
            m.values().any(may_read_time)
        }
        Value::Array(a) => a.iter().any(may_read_time),
        _ => false,
    }
}

/// The wall-clock second, as `$flagd.timestamp` sees it.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

struct Entry {
    alloc_bytes: usize,
    /// The whole context key, compared on every hit: a hash collision never
    /// serves another context's body.
    ctx: Box<[u8]>,
    body: Bytes,
    etag: HeaderValue,
    /// The second the body was evaluated in (matters only for time-dependent sets).
    second_s: u64,
}

impl Entry {
    fn cost_bytes(&self) -> usize {
        self.ctx.len() + self.alloc_bytes
    }
}

struct Inner {
    /// The snapshot the entries were evaluated against; a new one clears them.
    snapshot: Weak<Snapshot>,
    /// Whether that snapshot's flags may read the time: then an entry is
    /// served only within the second it was evaluated in.
    time_dependent: bool,
    entries: LruCache<u64, Entry>,
    bytes: usize,
}

/// An evaluated body and its ETag, as served and as cached.
pub struct Hit {
    pub body: Bytes,
    pub etag: HeaderValue,
    /// Bytes allocated for the body (its buffer may be larger than the body).
    alloc_bytes: usize,
}

impl Hit {
    /// Takes the written buffer over; the ETag is computed over its bytes.
    pub fn new(revision: u64, body: Vec<u8>) -> Hit {
        Hit {
            etag: etag_for(revision, &body),
            alloc_bytes: body.capacity(),
            body: Bytes::from(body),
        }
    }
}

/// Evaluated OFREP bulk bodies per (snapshot, merged context), bounded in
/// entries and bytes, least recently used evicted first.
pub struct BulkCache {
    inner: Mutex<Inner>,
    /// Length of the last body written, to size the next buffer at once.
    last_len: AtomicUsize,
    max_entries: usize,
    max_bytes: usize,
}

impl Default for BulkCache {
    fn default() -> Self {
        Self::new(CACHE_MAX_ENTRIES, CACHE_MAX_BYTES)
    }
}

impl BulkCache {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        BulkCache {
            inner: Mutex::new(Inner {
                snapshot: Weak::new(),
                time_dependent: false,
                entries: LruCache::unbounded(),
                bytes: 0,
            }),
            last_len: AtomicUsize::new(0),
            max_entries,
            max_bytes,
        }
    }

    /// A capacity for the next body's buffer (the last body's length plus a margin).
    pub fn size_hint(&self) -> usize {
        let n = self.last_len.load(Ordering::Relaxed);
        n + n / 8 + 256
    }

    pub fn note_size(&self, len: usize) {
        self.last_len.store(len, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops every entry when `snap` is not the snapshot they were made for.
    fn sync_snapshot(inner: &mut Inner, snap: &Arc<Snapshot>) {
        if !std::ptr::eq(inner.snapshot.as_ptr(), Arc::as_ptr(snap)) {
            inner.entries.clear();
            inner.bytes = 0;
            inner.snapshot = Arc::downgrade(snap);
            inner.time_dependent = may_read_time(snap.flags.definition());
        }
    }

    pub fn get(&self, snap: &Arc<Snapshot>, hash: u64, ctx: &[u8], now_s: u64) -> Option<Hit> {
        let mut inner = self.lock();
        Self::sync_snapshot(&mut inner, snap);
        let time_dependent = inner.time_dependent;
        let e = inner.entries.get(&hash)?;
        if *e.ctx != *ctx || (time_dependent && e.second_s != now_s) {
            return None;
        }
        Some(Hit {
            body: e.body.clone(),
            etag: e.etag.clone(),
            alloc_bytes: e.alloc_bytes,
        })
    }

    /// Keeps a body evaluated for `snap` and `ctx` in second `second_s`.
    pub fn put(&self, snap: &Arc<Snapshot>, hash: u64, ctx: &[u8], hit: &Hit, second_s: u64) {
        let entry = Entry {
            alloc_bytes: hit.alloc_bytes,
            ctx: ctx.into(),
            body: hit.body.clone(),
            etag: hit.etag.clone(),
            second_s,
        };
        let cost = entry.cost_bytes();
        if cost > self.max_bytes / CACHE_MAX_ENTRY_DIVISOR || self.max_entries == 0 {
            return;
        }
        let mut inner = self.lock();
        Self::sync_snapshot(&mut inner, snap);
        if let Some(old) = inner.entries.put(hash, entry) {
            inner.bytes -= old.cost_bytes();
        }
        inner.bytes += cost;
        while inner.entries.len() > self.max_entries || inner.bytes > self.max_bytes {
            match inner.entries.pop_lru() {
                Some((_, old)) => inner.bytes -= old.cost_bytes(),
                None => break,
            }
        }
    }

    /// (entries, bytes) held now.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.entries.len(), inner.bytes)
    }
}

/// The hash the cache is keyed on.
pub fn hash_key(ctx: &[u8]) -> u64 {
    xxh3_64(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Source;
    use common::flags::FlagSet;
    use common::wire::Revision;
    use serde_json::{json, Map};

    // ---- the Value-tree encoders this module replaced, kept as the reference ----

    fn old_ofrep_item(key: &str, e: &Evaluation<'_>) -> Value {
        match (&e.reason, &e.error) {
            (Reason::Error, Some(err)) => {
                json!({"key": key, "errorCode": err.code.as_str(), "errorDetails": err.message})
            }
            _ => {
                let mut m = Map::new();
                m.insert("key".into(), json!(key));
                if let Some(v) = &e.value {
                    m.insert("value".into(), v.as_ref().clone());
                }
                m.insert("reason".into(), json!(e.reason.as_str()));
                m.insert("variant".into(), json!(e.variant.unwrap_or("")));
                m.insert("metadata".into(), Value::Object(e.metadata.clone()));
                Value::Object(m)
            }
        }
    }

    /// The old struct serialisation kept field order (key, value, reason,
    /// variant, metadata / key, errorCode, errorDetails); a `Map` sorts, so
    /// the reference is written by hand in struct order.
    fn old_ofrep_item_bytes(key: &str, e: &Evaluation<'_>) -> String {
        let v = old_ofrep_item(key, e);
        let order: &[&str] = if v.get("errorCode").is_some() {
            &["key", "errorCode", "errorDetails"]
        } else {
            &["key", "value", "reason", "variant", "metadata"]
        };
        let parts: Vec<String> = order
            .iter()
            .filter_map(|k| v.get(*k).map(|x| format!("{}:{}", json!(k), x)))
            .collect();
        format!("{{{}}}", parts.join(","))
    }

    fn old_local_view(e: &Evaluation<'_>) -> Value {
        let mut m = Map::new();
        if let Some(v) = &e.value {
            m.insert("value".into(), v.as_ref().clone());
        }
        m.insert(
            "variant".into(),
            e.variant
                .map(|v| Value::String(v.into()))
                .unwrap_or(Value::Null),
        );
        m.insert("reason".into(), Value::String(e.reason.as_str().into()));
        if let Some(err) = &e.error {
            m.insert(
                "error".into(),
                json!({"code": err.code.as_str(), "message": err.message}),
            );
        }
        Value::Object(m)
    }

    fn sample_set() -> FlagSet {
        FlagSet::from_value(&json!({
            "metadata": {"set": "s\"1", "n": 2.5},
            "flags": {
                "static": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
                "disabled": {"state": "DISABLED", "variants": {"on": true}, "defaultVariant": "on"},
                "no-default": {"state": "ENABLED", "variants": {"a": "x"}, "defaultVariant": null},
                "obj \u{e9}\"\n": {"state": "ENABLED", "variants": {"v": {"a": [1, 2.5, "\u{1}"], "b": null}},
                          "defaultVariant": "v", "metadata": {"owner": "team-x"}},
                "targeted": {"state": "ENABLED", "variants": {"yes": 1, "no": 0}, "defaultVariant": "no",
                             "targeting": {"if": [{"==": [{"var": "country"}, "de"]}, "yes", null]}},
                "bad-variant": {"state": "ENABLED", "variants": {"a": "a"}, "defaultVariant": "a",
                                "targeting": {"var": "pick"}},
                "split": {"state": "ENABLED", "variants": {"a": 1.5, "b": -2}, "defaultVariant": "a",
                          "targeting": {"fractional": [["a", 50], ["b", 50]]}}
            }
        }))
        .expect("valid set")
    }

    #[test]
    fn encoders_write_what_the_value_trees_wrote() {
        let set = sample_set();
        for ctx in [
            json!({}),
            json!({"targetingKey": "u-1", "country": "de", "pick": "zzz"}),
            json!({"targetingKey": "u-2", "country": "fr", "pick": "a"}),
        ] {
            let ctx = EvalContext::from_value(ctx);
            let evals = set.evaluate_all(&ctx);

            let mut out = Vec::new();
            write_ofrep_bulk(&mut out, 42, &evals);
            let items: Vec<String> = evals
                .iter()
                .map(|(k, e)| old_ofrep_item_bytes(k, e))
                .collect();
            let want = format!(
                "{{\"flags\":[{}],\"metadata\":{{\"revision\":42}}}}",
                items.join(",")
            );
            assert_eq!(String::from_utf8(out).unwrap(), want);

            let mut out = Vec::new();
            write_local_all(&mut out, 7, &evals);
            let mut flags = Map::new();
            for (k, e) in &evals {
                flags.insert(k.to_string(), old_local_view(e));
            }
            let want = serde_json::to_string(&json!({"revision": 7, "flags": flags})).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }

    fn snapshot(rev: u64, flags: Value) -> Arc<Snapshot> {
        Arc::new(Snapshot {
            revision: rev,
            source: Source::File,
            received_ms: 0,
            flags: Arc::new(FlagSet::from_value(&flags).expect("valid set")),
            doc: Revision {
                revision: rev,
                environment: "e".into(),
                created_ms: 0,
                flags: Value::Null,
                killswitches: Vec::new(),
            },
            killed: Default::default(),
        })
    }

    fn hit(body: &str) -> Hit {
        Hit::new(1, body.as_bytes().to_vec())
    }

    fn static_flags() -> Value {
        json!({"flags": {"f": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"}}})
    }

    #[test]
    fn a_hash_collision_never_serves_another_contexts_body() {
        let c = BulkCache::default();
        let s = snapshot(1, static_flags());
        c.put(&s, 99, b"{\"a\":1}", &hit("body-a"), 0);
        assert_eq!(c.get(&s, 99, b"{\"a\":1}", 0).unwrap().body, "body-a");
        // same hash, other context: a miss, never body-a
        assert!(c.get(&s, 99, b"{\"b\":2}", 0).is_none());
    }

    #[test]
    fn a_new_snapshot_invalidates_every_entry() {
        let c = BulkCache::default();
        let s1 = snapshot(1, static_flags());
        c.put(&s1, 1, b"k", &hit("old"), 0);
        assert!(c.get(&s1, 1, b"k", 0).is_some());
        // even with the same revision number, another snapshot is another cache
        let s2 = snapshot(1, static_flags());
        assert!(c.get(&s2, 1, b"k", 0).is_none());
        assert_eq!(c.usage(), (0, 0));
    }

    #[test]
    fn bounded_in_entries_and_bytes_lru_first() {
        let s = snapshot(1, static_flags());
        let c = BulkCache::new(3, 1 << 20);
        for i in 0..5u64 {
            c.put(&s, i, &[i as u8], &hit("x"), 0);
            if i == 2 {
                // touch 0 so 1 is the least recently used
                assert!(c.get(&s, 0, &[0], 0).is_some());
            }
        }
        assert_eq!(c.usage().0, 3);
        assert!(c.get(&s, 0, &[0], 0).is_some());
        assert!(c.get(&s, 1, &[1], 0).is_none());
        assert!(c.get(&s, 2, &[2], 0).is_none());

        let c = BulkCache::new(1000, 8 * 100);
        let body = "y".repeat(99);
        for i in 0..50u64 {
            c.put(&s, i, &[i as u8], &hit(&body), 0);
        }
        let (n, bytes) = c.usage();
        assert!(bytes <= 800, "{bytes} bytes kept");
        assert_eq!(n, 8);
        // a body bigger than an eighth of the budget is not kept at all
        c.put(&s, 1000, b"big", &hit(&"z".repeat(200)), 0);
        assert!(c.get(&s, 1000, b"big", 0).is_none());
    }

    #[test]
    fn time_dependent_sets_are_served_only_within_the_second() {
        let c = BulkCache::default();
        let s = snapshot(
            1,
            json!({"flags": {"t": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                    "targeting": {"if": [{">": [{"var": "$flagd.timestamp"}, 0]}, "on", "off"]}}}}),
        );
        c.put(&s, 1, b"k", &hit("b"), 100);
        assert!(c.get(&s, 1, b"k", 100).is_some());
        assert!(c.get(&s, 1, b"k", 101).is_none());
        // a time-free set keeps its entries across seconds
        let s2 = snapshot(2, static_flags());
        c.put(&s2, 1, b"k", &hit("b"), 100);
        assert!(c.get(&s2, 1, b"k", 5000).is_some());
    }

    #[test]
    fn time_detection_is_conservative() {
        for (def, want) in [
            (json!({"var": "email"}), false),
            (json!({"var": "$flagd.flagKey"}), false),
            (json!({"var": ["a.b", 3]}), false),
            (json!({"var": 0}), false),
            (json!({"var": "$flagd.timestamp"}), true),
            (json!({"var": "$flagd"}), true),
            (json!({"var": ["$flagd.timestamp"]}), true),
            (json!({"var": {"cat": ["$flagd.", "timestamp"]}}), true),
            (json!({"var": [{"var": "field"}]}), true),
            (
                json!({"if": [true, {"x": [{"var": "$flagd.timestamp"}]}]}),
                true,
            ),
            (
                json!({"$evaluators": {"e": {"var": "$flagd.timestamp"}}}),
                true,
            ),
        ] {
            assert_eq!(may_read_time(&def), want, "{def}");
        }
    }
}
