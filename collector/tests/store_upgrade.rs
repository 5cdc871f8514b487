//! Schema versions of the main database: a database made by release 0.1.0
//! (`tests/fixtures/v0_1_0`, one global `meta.schema_version`) opens with
//! its data and gets per-capability versions; a fresh one records every
//! capability's newest version; a database newer than this binary is refused
//! (the store's typed error, and exit 2 from the real binary) and left
//! unchanged. See ARCHITECTURE.md, "Store".

use collector::auth::{self, Actor, Role};
use collector::store::{self, schema, Store, StoreError, DB_FILE};
use rusqlite::Connection;
use std::path::Path;
use std::process::Command;

const FIXTURE: &str = include_str!("fixtures/v0_1_0/opsplane.sql");
/// Release 0.1.0's global migrations 1, 2 and 3, verbatim.
const GLOBAL: [&str; 3] = [
    include_str!("fixtures/v0_1_0/global_1.sql"),
    include_str!("fixtures/v0_1_0/global_2.sql"),
    include_str!("fixtures/v0_1_0/global_3.sql"),
];
const ADMIN_TOKEN: &str = "opsp_17d7ffc4d4a3368eca062bf23495fbc07052089d4800baa2";
const CI_TOKEN: &str = "opsp_57965c3634e72e567d3d1a6f5d3a908903f2c71a28e46b47";
const AGENT_CREDENTIAL: &str = "opsa_32a7fb1d0e9619aaf1238f730b6b42a4193f19c8b96a595e";

/// Writes a database file in `dir` the way `sql` says, with plain SQLite
/// (no store code involved).
fn make_db(dir: &Path, sql: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let conn = Connection::open(dir.join(DB_FILE)).unwrap();
    conn.execute_batch(sql).unwrap();
}

/// A database exactly as release 0.1.0 left it at global version `g`.
fn legacy_db(dir: &Path, g: usize) {
    let mut sql = String::new();
    for m in &GLOBAL[..g] {
        sql.push_str(m);
    }
    sql.push_str(&format!(
        "INSERT INTO meta (key, value) VALUES ('schema_version', '{g}');"
    ));
    make_db(dir, &format!("BEGIN; {sql} COMMIT;"));
}

fn raw(dir: &Path) -> Connection {
    Connection::open(dir.join(DB_FILE)).unwrap()
}

fn versions_of(conn: &Connection) -> Vec<(String, i64)> {
    let mut stmt = conn
        .prepare("SELECT capability, version FROM schema_versions ORDER BY capability")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

fn newest_versions() -> Vec<(String, i64)> {
    let mut v: Vec<(String, i64)> = schema::newest(schema::MAIN)
        .into_iter()
        .map(|(c, n)| (c.to_string(), i64::from(n)))
        .collect();
    v.sort();
    v
}

/// Every table, index and column as SQLite records them.
fn schema_of(conn: &Connection) -> Vec<(String, String, String)> {
    let mut stmt = conn
        .prepare(
            "SELECT type, name, COALESCE(sql, '') FROM sqlite_master
             WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

fn fresh_schema() -> Vec<(String, String, String)> {
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path()).unwrap().close();
    schema_of(&raw(dir.path()))
}

fn legacy_version(conn: &Connection) -> Option<String> {
    conn.query_row(
        "SELECT value FROM meta WHERE key = 'schema_version'",
        [],
        |r| r.get(0),
    )
    .ok()
}

#[test]
fn a_database_of_release_0_1_0_opens_with_all_its_data() {
    let dir = tempfile::tempdir().unwrap();
    make_db(dir.path(), FIXTURE);
    let store = Store::open(dir.path()).unwrap();

    // the versions are recorded per capability, the global one is gone
    let conn = raw(dir.path());
    assert_eq!(versions_of(&conn), newest_versions());
    assert_eq!(legacy_version(&conn), None);
    // the same schema as a database made by this binary
    assert_eq!(schema_of(&conn), fresh_schema());

    // flags and revisions
    let staging = store
        .read_blocking(|c| store::flags::latest(c, "staging"))
        .unwrap()
        .unwrap();
    assert_eq!(staging.revision, 4);
    let flags = staging.flags["flags"].as_object().unwrap();
    assert!(flags.contains_key("new-checkout") && flags.contains_key("banner"));
    let checkout = staging
        .killswitches
        .iter()
        .find(|k| k.name == "checkout")
        .unwrap();
    assert!(checkout.killed);
    assert_eq!(checkout.reason, "incident 42");
    let payments = staging
        .killswitches
        .iter()
        .find(|k| k.name == "payments")
        .unwrap();
    assert_eq!(payments.service.as_deref(), Some("web"));
    assert!(!payments.killed);
    let prod = store
        .read_blocking(|c| store::flags::latest(c, "prod"))
        .unwrap()
        .unwrap();
    assert_eq!(prod.revision, 5);
    assert_eq!(prod.flags["flags"]["banner"]["defaultVariant"], "b");
    for n in 1..=5u64 {
        assert!(store
            .read_blocking(move |c| store::flags::get(c, n))
            .unwrap()
            .is_some());
    }
    let declared = store.read_blocking(store::killswitches::declared).unwrap();
    let mut names: Vec<_> = declared.iter().map(|d| d.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["checkout", "payments"]);

    // the audit chain still verifies, head included
    let report = store.read_blocking(store::audit::verify).unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.entries, 17);
    assert_eq!(
        report.head_hash,
        "0ff052a12edbf6a822416da70e40439d688aa31d013a993254ec4a11dd9edd1a"
    );

    // tokens, users, sessions, agents, enrollment tokens
    let admin = store
        .read_blocking(|c| store::tokens::authenticate_api_token(c, ADMIN_TOKEN))
        .unwrap()
        .unwrap();
    assert_eq!((admin.role, admin.owner.as_str()), (Role::Admin, "admin"));
    let ci = store
        .read_blocking(|c| store::tokens::authenticate_api_token(c, CI_TOKEN))
        .unwrap()
        .unwrap();
    assert_eq!((ci.name.as_str(), ci.role), ("ci", Role::Operator));
    let (role, hash) = store
        .read_blocking(|c| store::users::credentials(c, "alice"))
        .unwrap()
        .unwrap();
    assert_eq!(role, Role::Admin);
    assert!(auth::verify_password("alice-password-123456", &hash));
    assert_eq!(store.read_blocking(store::sessions::count).unwrap(), 1);
    let agent = store
        .read_blocking(|c| store::agents::authenticate(c, AGENT_CREDENTIAL))
        .unwrap()
        .unwrap();
    assert_eq!(
        (agent.environment.as_str(), agent.revoked),
        ("staging", false)
    );
    let row = store
        .read_blocking(move |c| store::agents::get(c, &agent.id))
        .unwrap()
        .unwrap();
    assert_eq!(row.applied_revision, Some(4));
    let enroll = store
        .read_blocking(store::tokens::list_enroll_tokens)
        .unwrap();
    assert_eq!(enroll.len(), 1);
    assert_eq!((enroll[0].max_uses, enroll[0].uses), (Some(3), 1));

    // approvals: one approved, two pending, each with its person
    let approved = store
        .read_blocking(|c| store::approvals::get(c, "apr_8ddee6b5"))
        .unwrap()
        .unwrap();
    assert_eq!(approved.state, "approved");
    assert_eq!(approved.decided_by.as_deref(), Some("alice"));
    assert_eq!(approved.requested_person, "admin");
    let pending = store
        .read_blocking(|c| store::approvals::list(c, Some("pending"), 10))
        .unwrap();
    let mut ids: Vec<_> = pending.iter().map(|a| a.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["apr_04830b88", "apr_e021e87e"]);

    // and it takes writes that chain on: a kill
    store
        .write_blocking(|tx| {
            store::killswitches::set_state(
                tx,
                &Actor::system("system:test"),
                "staging",
                None,
                "payments",
                true,
                "after the upgrade",
            )
        })
        .unwrap();
    let latest = store
        .read_blocking(|c| store::flags::latest(c, "staging"))
        .unwrap()
        .unwrap();
    assert_eq!(latest.revision, 6);
    let report = store.read_blocking(store::audit::verify).unwrap();
    assert!(report.ok && report.entries == 18, "{report:?}");
    store.close();

    // a second open changes nothing
    Store::open(dir.path()).unwrap().close();
    assert_eq!(versions_of(&raw(dir.path())), newest_versions());
}

/// Each global version release 0.1.0 could have left converts to exactly
/// the per-capability versions whose migrations it had run: the missing
/// ones run once, none twice, and the result is the schema of a fresh file.
#[test]
fn each_global_version_of_release_0_1_0_converts_exactly() {
    let fresh = fresh_schema();
    for g in 1..=GLOBAL.len() {
        let dir = tempfile::tempdir().unwrap();
        legacy_db(dir.path(), g);
        Store::open(dir.path())
            .unwrap_or_else(|e| panic!("global {g}: {e}"))
            .close();
        let conn = raw(dir.path());
        assert_eq!(schema_of(&conn), fresh, "global {g}");
        assert_eq!(versions_of(&conn), newest_versions(), "global {g}");
        assert_eq!(legacy_version(&conn), None);
    }
}

/// A database at global version 2 gets owners for its tokens and persons for
/// its requests when access 3 and approvals 2 run (init's token belongs to
/// the admin it was made for; a request made with a token to the token's
/// owner).
#[test]
fn upgrading_ties_tokens_and_requests_to_persons() {
    let dir = tempfile::tempdir().unwrap();
    legacy_db(dir.path(), 2);
    raw(dir.path())
        .execute_batch(
            "INSERT INTO users (name, role, password_hash, created_ms) VALUES ('admin', 'admin', 'x', 1), ('alice', 'admin', 'x', 1);
             INSERT INTO api_tokens (id, name, role, hash, created_ms, created_by) VALUES
                ('t1', 'admin', 'admin', 'h1', 1, 'system:init'),
                ('t2', 'bob', 'operator', 'h2', 2, 'alice');
             INSERT INTO approvals (id, action, target, payload, diff, reason, requested_by, requested_role,
                requested_source, requested_user_agent, created_ms, expires_ms, state) VALUES
                ('a1', 'flags.set', 'f', '{}', '[]', '', 'bob', 'operator', 's', 'u', 1, 2, 'pending'),
                ('a2', 'flags.set', 'f', '{}', '[]', '', 'alice', 'admin', 's', 'u', 1, 2, 'pending');",
        )
        .unwrap();
    Store::open(dir.path()).unwrap().close();
    let conn = raw(dir.path());
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

#[test]
fn a_fresh_database_records_every_capability_at_its_newest_version() {
    let dir = tempfile::tempdir().unwrap();
    collector::init::init(dir.path()).unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut v = store.read_blocking(schema::versions).unwrap();
    v.sort();
    assert_eq!(v, newest_versions());
    // every capability of the main file is there
    let names: Vec<_> = v.iter().map(|(c, _)| c.as_str()).collect();
    for c in [
        "store",
        "access",
        "fleet",
        "flags",
        "killswitches",
        "audit",
        "approvals",
    ] {
        assert!(names.contains(&c), "{c}");
    }
    store.close();
}

/// How a database can be newer than this binary.
enum Newer {
    /// A capability this binary knows, one version further.
    Version,
    /// A capability this binary does not know.
    Capability,
    /// Release 0.1.0's global version, past the last one it had.
    Global,
}

fn newer_db(dir: &Path, how: Newer) -> (String, i64, Option<u32>) {
    match how {
        Newer::Version => {
            Store::open(dir).unwrap().close();
            let (c, v) = schema::newest(schema::MAIN)[3];
            raw(dir)
                .execute(
                    "UPDATE schema_versions SET version = ?2 WHERE capability = ?1",
                    rusqlite::params![c, v + 1],
                )
                .unwrap();
            (c.to_string(), i64::from(v + 1), Some(v))
        }
        Newer::Capability => {
            Store::open(dir).unwrap().close();
            raw(dir)
                .execute("INSERT INTO schema_versions VALUES ('pagers', 7)", [])
                .unwrap();
            ("pagers".into(), 7, None)
        }
        Newer::Global => {
            legacy_db(dir, 3);
            raw(dir)
                .execute(
                    "UPDATE meta SET value = '4' WHERE key = 'schema_version'",
                    [],
                )
                .unwrap();
            (schema::LEGACY_GLOBAL.into(), 4, Some(3))
        }
    }
}

/// Schema, versions and global version of a file.
type Snapshot = (
    Vec<(String, String, String)>,
    Vec<(String, i64)>,
    Option<String>,
);

/// The file's content, to show a refused open left it alone.
fn snapshot(dir: &Path) -> Snapshot {
    let conn = raw(dir);
    let versions = if schema_of(&conn)
        .iter()
        .any(|(_, n, _)| n == "schema_versions")
    {
        versions_of(&conn)
    } else {
        Vec::new()
    };
    (schema_of(&conn), versions, legacy_version(&conn))
}

#[test]
fn a_newer_database_is_refused_and_its_versions_never_lowered() {
    for how in [Newer::Version, Newer::Capability, Newer::Global] {
        let dir = tempfile::tempdir().unwrap();
        let (capability, found, known) = newer_db(dir.path(), how);
        let before = snapshot(dir.path());
        for _ in 0..2 {
            let Err(e) = Store::open(dir.path()) else {
                panic!("{capability}: a newer database opened");
            };
            let msg = e.to_string();
            match e {
                StoreError::TooNew {
                    file,
                    capability: c,
                    found: f,
                    known: k,
                } => {
                    assert_eq!(file, dir.path().join(DB_FILE));
                    assert_eq!((c.as_str(), f, k), (capability.as_str(), found, known));
                }
                other => panic!("{capability}: {other:?}"),
            }
            let path = dir.path().join(DB_FILE);
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains(&capability), "{msg}");
            assert!(msg.contains(&format!("version {found}")), "{msg}");
            assert!(msg.contains(common::VERSION), "{msg}");
            match known {
                Some(k) => assert!(msg.contains(&format!("up to version {k}")), "{msg}"),
                None => assert!(msg.contains("does not know"), "{msg}"),
            }
            // nothing was written: the newer versions stand
            assert_eq!(snapshot(dir.path()), before, "{capability}");
        }
        // init on it refuses the same way, and anyhow keeps the type: exit 2
        let e = collector::init::init(dir.path()).err().unwrap();
        assert_eq!(store::exit_code(&e), 2, "{e:#}");
        assert_eq!(snapshot(dir.path()), before, "{capability}");
    }
    let other = anyhow::anyhow!("something else");
    assert_eq!(store::exit_code(&other), 1);
}

/// The real binary, `run` and `init` on a newer database: exit 2, and a
/// message naming the file, the capability and both versions.
#[test]
fn the_binary_refuses_a_newer_database_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (capability, found, known) = newer_db(&data, Newer::Version);
    let before = snapshot(&data);
    let bin = env!("CARGO_BIN_EXE_opsplane-collector");
    let runs = [vec!["run", "--data-dir"], vec!["init", "--data-dir"]];
    for args in runs {
        let out = Command::new(bin)
            .args(&args)
            .arg(&data)
            .env_remove("OPSPLANE_DATA_DIR")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let path = data.join(DB_FILE);
        for part in [
            path.display().to_string(),
            capability.clone(),
            format!("version {found}"),
            format!("up to version {}", known.unwrap()),
            "newer".to_string(),
        ] {
            assert!(stderr.contains(&part), "{args:?}: {part:?} not in {stderr}");
        }
        assert_eq!(snapshot(&data), before);
    }
}
