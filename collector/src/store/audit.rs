//! The audit log: one row per admin mutation, written in the mutation's own
//! transaction and chained by SHA-256 (each entry's hash covers the previous
//! hash and every field), so an edited, deleted or reordered entry breaks the
//! chain. `meta.audit_head` holds the newest `seq:hash`, so cutting entries
//! off the end is caught too (unless the head is rewritten as well: keep
//! exports elsewhere for that; see ARCHITECTURE.md).

use super::schema::Migration;
use super::{schema, OptionalExtension, Result};
use crate::auth::Actor;
use rusqlite::{params, Connection, Transaction};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `audit` capability's migrations: the chained log. Append only: a
/// released migration never changes (see ARCHITECTURE.md, "Store").
pub const MIGRATIONS: &[Migration] = &[
    // 1: the hash-chained log
    Migration {
        capability: "audit",
        version: 1,
        sql: r#"
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    source TEXT NOT NULL,
    user_agent TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    reason TEXT NOT NULL,
    diff TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_ts ON audit(ts_ms);
CREATE INDEX audit_actor ON audit(actor, ts_ms);
"#,
    },
];

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub ts_ms: i64,
    pub time: String,
    pub actor: String,
    pub role: String,
    pub source: String,
    pub user_agent: String,
    pub action: String,
    pub target: String,
    pub reason: String,
    /// JSON diff (list of changes) between before and after.
    pub diff: Value,
    pub prev_hash: String,
    pub hash: String,
}

/// What a mutation records; the store fills in seq, time and the chain.
#[derive(Debug, Clone)]
pub struct NewEntry<'a> {
    pub actor: &'a Actor,
    pub action: &'a str,
    pub target: String,
    pub reason: &'a str,
    pub before: Value,
    pub after: Value,
}

fn entry_hash(prev: &str, e: &AuditEntry) -> String {
    // canonical form: a JSON array of the fields in a fixed order (a tuple
    // serializes to exactly that array, without copying every field into a
    // `Value` first: verify hashes every entry)
    let body = (
        e.seq,
        e.ts_ms,
        &e.actor,
        &e.role,
        &e.source,
        &e.user_agent,
        &e.action,
        &e.target,
        &e.reason,
        &e.diff,
    );
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(serde_json::to_vec(&body).unwrap_or_default());
    hex::encode(h.finalize())
}

#[cfg(test)]
mod hash_tests {
    use super::*;

    #[test]
    fn tuple_form_is_the_canonical_array() {
        let e = AuditEntry {
            seq: 7,
            ts_ms: 1_700_000_000_123,
            time: String::new(),
            actor: "a\"b".into(),
            role: "admin".into(),
            source: "127.0.0.1".into(),
            user_agent: "ua/1 ü".into(),
            action: "flags.set".into(),
            target: "flag:prod/x".into(),
            reason: "why\nnot".into(),
            diff: serde_json::json!([{"path": "/b", "after": {"z": 1, "a": [1, 2]}}]),
            prev_hash: String::new(),
            hash: String::new(),
        };
        let old = serde_json::json!([
            e.seq,
            e.ts_ms,
            e.actor,
            e.role,
            e.source,
            e.user_agent,
            e.action,
            e.target,
            e.reason,
            e.diff
        ]);
        let mut h = Sha256::new();
        h.update(GENESIS.as_bytes());
        h.update(b"\n");
        h.update(old.to_string().as_bytes());
        assert_eq!(entry_hash(GENESIS, &e), hex::encode(h.finalize()));
    }
}

/// Appends one entry inside the caller's transaction.
pub fn append(tx: &Transaction<'_>, new: NewEntry<'_>) -> Result<AuditEntry> {
    let (last_seq, prev): (i64, String) = tx
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok((0, GENESIS.to_string())),
            e => Err(e),
        })?;
    let ts_ms = common::time::now_ms();
    let diff = serde_json::to_value(common::diff::diff(&new.before, &new.after))?;
    let mut e = AuditEntry {
        seq: last_seq + 1,
        ts_ms,
        time: common::time::rfc3339(ts_ms),
        actor: new.actor.name.clone(),
        role: new.actor.role.as_str().to_string(),
        source: new.actor.source.clone(),
        user_agent: new.actor.user_agent.clone(),
        action: new.action.to_string(),
        target: new.target,
        reason: new.reason.to_string(),
        diff,
        prev_hash: prev.clone(),
        hash: String::new(),
    };
    e.hash = entry_hash(&prev, &e);
    tx.execute(
        "INSERT INTO audit (seq, ts_ms, actor, role, source, user_agent, action, target, reason, diff, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            e.seq, e.ts_ms, e.actor, e.role, e.source, e.user_agent, e.action, e.target, e.reason,
            e.diff.to_string(), e.prev_hash, e.hash
        ],
    )?;
    schema::meta_set(tx, "audit_head", &format!("{}:{}", e.seq, e.hash))?;
    Ok(e)
}

fn row_to_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEntry> {
    let diff: String = r.get(9)?;
    let ts_ms: i64 = r.get(1)?;
    Ok(AuditEntry {
        seq: r.get(0)?,
        ts_ms,
        time: common::time::rfc3339(ts_ms),
        actor: r.get(2)?,
        role: r.get(3)?,
        source: r.get(4)?,
        user_agent: r.get(5)?,
        action: r.get(6)?,
        target: r.get(7)?,
        reason: r.get(8)?,
        diff: serde_json::from_str(&diff).unwrap_or(Value::String(diff)),
        prev_hash: r.get(10)?,
        hash: r.get(11)?,
    })
}

const COLUMNS: &str =
    "seq, ts_ms, actor, role, source, user_agent, action, target, reason, diff, prev_hash, hash";

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Filter {
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub actor: Option<String>,
    pub action: Option<String>,
    /// substring of the target
    pub target: Option<String>,
    pub limit: Option<usize>,
}

/// Newest first.
pub fn list(conn: &Connection, f: &Filter) -> Result<Vec<AuditEntry>> {
    let mut sql = format!("SELECT {COLUMNS} FROM audit WHERE 1=1");
    let mut args: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
    if let Some(s) = f.since_ms {
        sql.push_str(" AND ts_ms >= ?");
        args.push(Box::new(s));
    }
    if let Some(u) = f.until_ms {
        sql.push_str(" AND ts_ms <= ?");
        args.push(Box::new(u));
    }
    if let Some(a) = &f.actor {
        // a person's own entries and those of their API tokens
        // (`token:NAME (owner PERSON)`)
        sql.push_str(
            " AND (actor = ? OR (actor LIKE 'token:%' AND substr(actor, -(length(?) + 9)) = ' (owner ' || ? || ')'))",
        );
        for _ in 0..3 {
            args.push(Box::new(a.clone()));
        }
    }
    if let Some(a) = &f.action {
        sql.push_str(" AND action = ?");
        args.push(Box::new(a.clone()));
    }
    if let Some(t) = &f.target {
        sql.push_str(" AND instr(target, ?) > 0");
        args.push(Box::new(t.clone()));
    }
    sql.push_str(" ORDER BY seq DESC LIMIT ?");
    args.push(Box::new(f.limit.unwrap_or(1000).min(100_000) as i64));
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), row_to_entry)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every entry in chain order, streamed to `each` (export, verify).
pub fn for_each(conn: &Connection, mut each: impl FnMut(AuditEntry) -> Result<()>) -> Result<()> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY seq ASC"))?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        each(row_to_entry(r)?)?;
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub entries: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_seq: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    pub head_hash: String,
}

/// Reads an entry without trusting the stored types: a column holding the
/// wrong type (tampering) is a problem to report, not a database error.
fn raw_entry(r: &rusqlite::Row<'_>) -> std::result::Result<AuditEntry, String> {
    use rusqlite::types::ValueRef;
    const NAMES: [&str; 12] = [
        "seq",
        "ts_ms",
        "actor",
        "role",
        "source",
        "user_agent",
        "action",
        "target",
        "reason",
        "diff",
        "prev_hash",
        "hash",
    ];
    fn kind(v: &ValueRef<'_>) -> &'static str {
        match v {
            ValueRef::Null => "null",
            ValueRef::Integer(_) => "an integer",
            ValueRef::Real(_) => "a real number",
            ValueRef::Text(_) => "text",
            ValueRef::Blob(_) => "a blob",
        }
    }
    let text = |i: usize| -> std::result::Result<String, String> {
        match r.get_ref(i).map_err(|e| e.to_string())? {
            ValueRef::Text(t) => String::from_utf8(t.to_vec())
                .map_err(|_| format!("its {} is not valid text", NAMES[i])),
            other => Err(format!(
                "its {} holds {} instead of text",
                NAMES[i],
                kind(&other)
            )),
        }
    };
    let int = |i: usize| -> std::result::Result<i64, String> {
        match r.get_ref(i).map_err(|e| e.to_string())? {
            ValueRef::Integer(n) => Ok(n),
            other => Err(format!(
                "its {} holds {} instead of an integer",
                NAMES[i],
                kind(&other)
            )),
        }
    };
    let ts_ms = int(1)?;
    let diff = text(9)?;
    Ok(AuditEntry {
        seq: int(0)?,
        ts_ms,
        time: String::new(),
        actor: text(2)?,
        role: text(3)?,
        source: text(4)?,
        user_agent: text(5)?,
        action: text(6)?,
        target: text(7)?,
        reason: text(8)?,
        diff: serde_json::from_str(&diff).unwrap_or(Value::String(diff)),
        prev_hash: text(10)?,
        hash: text(11)?,
    })
}

/// Walks the chain from the start; reports the first entry that does not
/// fit. Total: whatever was done to the table (edited values, wrong column
/// types, deleted rows, an emptied log) is a report, never an error. The
/// first entry of an initialised collector's log is init's, so an empty log
/// is tampering too.
pub fn verify(conn: &Connection) -> Result<VerifyReport> {
    let mut expected_seq = 1i64;
    let mut prev = GENESIS.to_string();
    let mut bad: Option<(i64, String)> = None;
    let mut count = 0i64;
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY seq ASC"))?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        count += 1;
        if bad.is_some() {
            continue;
        }
        let e = match raw_entry(r) {
            Ok(e) => e,
            Err(problem) => {
                let seq = match r.get_ref(0) {
                    Ok(rusqlite::types::ValueRef::Integer(n)) => n,
                    _ => expected_seq,
                };
                bad = Some((seq, format!("entry {seq} was modified: {problem}")));
                continue;
            }
        };
        if e.seq != expected_seq {
            bad = Some((
                expected_seq.min(e.seq),
                if e.seq > expected_seq {
                    format!(
                        "entry {expected_seq} is missing (deleted?): the next entry is {}",
                        e.seq
                    )
                } else {
                    format!("entry {} is out of order", e.seq)
                },
            ));
            continue;
        }
        if e.prev_hash != prev {
            bad = Some((
                e.seq,
                format!(
                    "entry {} does not link to entry {} (reordered or replaced)",
                    e.seq,
                    e.seq - 1
                ),
            ));
            continue;
        }
        if entry_hash(&prev, &e) != e.hash {
            bad = Some((
                e.seq,
                format!(
                    "entry {} was modified: its hash does not match its content",
                    e.seq
                ),
            ));
            continue;
        }
        prev = e.hash.clone();
        expected_seq += 1;
    }
    if bad.is_none() && count == 0 {
        bad = Some((
            1,
            "the log is empty, but it begins with the init entry: every entry was deleted".into(),
        ));
    }
    if bad.is_none() {
        let head: Option<std::result::Result<String, ()>> = conn
            .query_row("SELECT value FROM meta WHERE key = 'audit_head'", [], |r| {
                Ok(match r.get_ref(0)? {
                    rusqlite::types::ValueRef::Text(t) => {
                        String::from_utf8(t.to_vec()).map_err(|_| ())
                    }
                    _ => Err(()),
                })
            })
            .optional()?;
        let want = format!("{}:{}", expected_seq - 1, prev);
        match head {
            Some(Ok(h)) if h == want => {}
            Some(Ok(h)) => {
                let head_seq = h
                    .split(':')
                    .next()
                    .and_then(|s| s.parse::<i64>().ok())
                    .unwrap_or(0);
                bad = Some((
                    expected_seq,
                    format!("the log ends at entry {} but its recorded head is {} (entries removed from the end?)", expected_seq - 1, head_seq),
                ));
            }
            Some(Err(())) => {
                bad = Some((
                    expected_seq,
                    "the recorded head of the log was modified".into(),
                ))
            }
            None => bad = Some((1, "the recorded head of the log is missing".into())),
        }
    }
    Ok(VerifyReport {
        ok: bad.is_none(),
        entries: count,
        first_bad_seq: bad.as_ref().map(|b| b.0),
        problem: bad.map(|b| b.1),
        head_hash: prev,
    })
}

/// The whole log in chain order, as JSON lines or CSV (with a header).
pub fn export(conn: &Connection, csv: bool) -> Result<String> {
    let mut out = String::new();
    if csv {
        out.push_str(CSV_HEADER);
        out.push('\n');
    }
    for_each(conn, |e| {
        if csv {
            out.push_str(&csv_row(&e));
        } else {
            out.push_str(&serde_json::to_string(&e)?);
        }
        out.push('\n');
        Ok(())
    })?;
    Ok(out)
}

/// CSV header and row for `audit export --format csv`.
pub const CSV_HEADER: &str =
    "seq,time,actor,role,source,user_agent,action,target,reason,diff,prev_hash,hash";

pub fn csv_row(e: &AuditEntry) -> String {
    fn q(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    }
    [
        e.seq.to_string(),
        e.time.clone(),
        q(&e.actor),
        q(&e.role),
        q(&e.source),
        q(&e.user_agent),
        q(&e.action),
        q(&e.target),
        q(&e.reason),
        q(&e.diff.to_string()),
        e.prev_hash.clone(),
        e.hash.clone(),
    ]
    .join(",")
}
