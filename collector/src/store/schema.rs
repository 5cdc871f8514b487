//! Schema and migrations, applied in order at open; `meta.schema_version`
//! records how far a database got.

use super::Result;
use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: the foundation
    r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    disabled_ms INTEGER
);
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    expires_ms INTEGER,
    revoked_ms INTEGER,
    last_used_ms INTEGER
);
CREATE TABLE enroll_tokens (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    environment TEXT NOT NULL,
    service TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    expires_ms INTEGER,
    revoked_ms INTEGER,
    uses INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    credential_hash TEXT NOT NULL UNIQUE,
    service TEXT NOT NULL,
    environment TEXT NOT NULL,
    instance TEXT NOT NULL,
    host TEXT NOT NULL,
    version TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}',
    enrolled_ms INTEGER NOT NULL,
    enroll_token_id TEXT,
    last_seen_ms INTEGER NOT NULL,
    applied_revision INTEGER,
    applied_ms INTEGER,
    killswitches TEXT NOT NULL DEFAULT '[]',
    revoked_ms INTEGER
);
CREATE INDEX agents_env ON agents(environment, service);
CREATE TABLE revisions (
    revision INTEGER PRIMARY KEY,
    environment TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    summary TEXT NOT NULL,
    flags TEXT NOT NULL,
    killswitches TEXT NOT NULL
);
CREATE INDEX revisions_env ON revisions(environment, revision);
CREATE TABLE killswitch_state (
    environment TEXT NOT NULL,
    service TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL,
    killed INTEGER NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    since_ms INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    PRIMARY KEY (environment, service, name)
);
CREATE TABLE killswitch_decl (
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL
);
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
    // 2: console sessions and four-eyes approval requests
    r#"
CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY,
    user_name TEXT NOT NULL,
    role TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    source TEXT NOT NULL,
    user_agent TEXT NOT NULL
);
CREATE INDEX sessions_user ON sessions(user_name);
CREATE TABLE approvals (
    id TEXT PRIMARY KEY,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    payload TEXT NOT NULL,
    diff TEXT NOT NULL,
    reason TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    requested_role TEXT NOT NULL,
    requested_source TEXT NOT NULL,
    requested_user_agent TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    decided_by TEXT,
    decided_ms INTEGER,
    decision_reason TEXT
);
CREATE INDEX approvals_state ON approvals(state, created_ms);
"#,
    // 3: the person behind every token and request (four-eyes compares
    // persons, not names); enrollment tokens with a use count. Existing
    // tokens are owned by their creator (init's token by the admin it was
    // made for); existing requests by the owner of the token named as their
    // requester, else by the user of that name. Existing enrollment tokens
    // keep unlimited uses (until they expire or are revoked).
    r#"
ALTER TABLE api_tokens ADD COLUMN owner TEXT NOT NULL DEFAULT '';
UPDATE api_tokens SET owner = CASE WHEN created_by = 'system:init' THEN name ELSE created_by END;
ALTER TABLE approvals ADD COLUMN requested_person TEXT NOT NULL DEFAULT '';
ALTER TABLE approvals ADD COLUMN requested_token_id TEXT;
UPDATE approvals SET requested_person = COALESCE(
    (SELECT t.owner FROM api_tokens t
     WHERE t.name = approvals.requested_by
       AND NOT EXISTS (SELECT 1 FROM users u WHERE u.name = approvals.requested_by)
     ORDER BY t.created_ms LIMIT 1),
    requested_by);
ALTER TABLE enroll_tokens ADD COLUMN max_uses INTEGER;
"#,
];

pub fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction()?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    )?;
    let current: usize = tx
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get::<_, String>(0),
        )
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        // the first migration creates meta itself
        let sql = if i == 0 {
            sql.replacen(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
                "",
                1,
            )
        } else {
            sql.to_string()
        };
        tx.execute_batch(&sql)?;
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [MIGRATIONS.len().to_string()],
    )?;
    tx.commit()?;
    Ok(())
}

pub fn meta_get(conn: &Connection, key: &str) -> Result<Option<String>> {
    use super::OptionalExtension;
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

pub fn meta_set(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [key, value],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database at schema 2 gets owners for its tokens and persons for its
    /// requests (init's token belongs to the admin it was made for; a request
    /// made with a token to the token's owner).
    #[test]
    fn migration_3_ties_tokens_and_requests_to_persons() {
        let mut conn = Connection::open_in_memory().unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute_batch(MIGRATIONS[0]).unwrap();
        tx.execute_batch(MIGRATIONS[1]).unwrap();
        tx.execute_batch(
            "INSERT INTO meta VALUES ('schema_version', '2');
             INSERT INTO users (name, role, password_hash, created_ms) VALUES ('admin', 'admin', 'x', 1), ('alice', 'admin', 'x', 1);
             INSERT INTO api_tokens (id, name, role, hash, created_ms, created_by) VALUES
                ('t1', 'admin', 'admin', 'h1', 1, 'system:init'),
                ('t2', 'bob', 'operator', 'h2', 2, 'alice');
             INSERT INTO approvals (id, action, target, payload, diff, reason, requested_by, requested_role,
                requested_source, requested_user_agent, created_ms, expires_ms, state) VALUES
                ('a1', 'flags.set', 'f', '{}', '[]', '', 'bob', 'operator', 's', 'u', 1, 2, 'pending'),
                ('a2', 'flags.set', 'f', '{}', '[]', '', 'alice', 'admin', 's', 'u', 1, 2, 'pending');",
        )
        .unwrap();
        tx.commit().unwrap();
        migrate(&mut conn).unwrap();
        let owner = |id: &str| -> String {
            conn.query_row("SELECT owner FROM api_tokens WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap()
        };
        assert_eq!(owner("t1"), "admin");
        assert_eq!(owner("t2"), "alice");
        let person = |id: &str| -> String {
            conn.query_row(
                "SELECT requested_person FROM approvals WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap()
        };
        assert_eq!(person("a1"), "alice");
        assert_eq!(person("a2"), "alice");
    }
}
