//! Schema versioning. Each capability declares its own numbered migrations
//! beside its SQL (`MIGRATIONS` in its store file); a database file lists the
//! capabilities it holds ([`MAIN`] for `opsplane.db`, one list per extra
//! file, see [`super::Store::open_aux`]) and records how far each got in
//! `schema_versions`. At open, in one transaction: a file newer than this
//! binary is refused ([`StoreError::TooNew`]), a file of release 0.1.0 (one
//! global `meta.schema_version`) is converted, and the missing migrations
//! run in list order. A recorded version is never lowered.

use super::{OptionalExtension, Result, StoreError};
use rusqlite::{Connection, Transaction};
use std::path::Path;

/// One numbered step of one capability's schema. Versions run 1, 2, 3...
/// within a capability; a released migration never changes.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub capability: &'static str,
    pub version: u32,
    pub sql: &'static str,
}

/// The capabilities of one database file, in the order their migrations run:
/// a migration may read the tables of the capabilities listed before its own.
pub type Registry = &'static [&'static [Migration]];

/// The store's own table: `meta`, small key/value state of the main file
/// (the audit head, the saved approval policy).
pub const MIGRATIONS: &[Migration] = &[Migration {
    capability: "store",
    version: 1,
    sql: "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
}];

/// The capabilities of the main database file (`opsplane.db`): the control
/// data, every table of which a kill or a flag change may touch.
pub const MAIN: Registry = &[
    MIGRATIONS,
    super::users::MIGRATIONS,        // access
    super::agents::MIGRATIONS,       // fleet
    super::flags::MIGRATIONS,        // flags
    super::killswitches::MIGRATIONS, // killswitches
    super::audit::MIGRATIONS,        // audit
    super::approvals::MIGRATIONS,    // approvals (reads access)
];

/// Release 0.1.0 recorded one global number in `meta.schema_version`; its
/// migration N is what these per-capability versions hold (entry N-1). A
/// capability absent from an entry was not created yet.
const LEGACY: &[&[(&str, u32)]] = &[
    // 1: the foundation
    &[
        ("store", 1),
        ("access", 1),
        ("fleet", 1),
        ("flags", 1),
        ("killswitches", 1),
        ("audit", 1),
    ],
    // 2: console sessions and four-eyes requests
    &[
        ("store", 1),
        ("access", 2),
        ("fleet", 1),
        ("flags", 1),
        ("killswitches", 1),
        ("audit", 1),
        ("approvals", 1),
    ],
    // 3: token owners, requesting persons, enrollment use counts
    &[
        ("store", 1),
        ("access", 3),
        ("fleet", 2),
        ("flags", 1),
        ("killswitches", 1),
        ("audit", 1),
        ("approvals", 2),
    ],
];

/// The name [`StoreError::TooNew`] gives release 0.1.0's global version.
pub const LEGACY_GLOBAL: &str = "schema (global)";

const VERSIONS_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS schema_versions (capability TEXT PRIMARY KEY, version INTEGER NOT NULL);";

/// The newest version of each capability of `registry`, in order.
pub fn newest(registry: Registry) -> Vec<(&'static str, u32)> {
    registry
        .iter()
        .filter_map(|m| m.last().map(|l| (l.capability, l.version)))
        .collect()
}

/// Checks a registry is well formed: each list non-empty, of one
/// capability, numbered 1..n; no capability twice.
pub fn check_registry(registry: Registry) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for list in registry {
        let Some(first) = list.first() else {
            return Err(StoreError::Invalid("a capability has no migration".into()));
        };
        if !seen.insert(first.capability) {
            return Err(StoreError::Invalid(format!(
                "capability {:?} is listed twice",
                first.capability
            )));
        }
        for (i, m) in list.iter().enumerate() {
            if m.capability != first.capability || m.version as usize != i + 1 {
                return Err(StoreError::Invalid(format!(
                    "migration {} {} is out of place in the list of {:?} (expected version {})",
                    m.capability,
                    m.version,
                    first.capability,
                    i + 1
                )));
            }
        }
    }
    Ok(())
}

/// Brings the database at `path` (open on `conn`) to the newest version of
/// every capability of `registry`, or refuses it when it is newer than this
/// binary. All or nothing: one transaction.
pub fn migrate(conn: &mut Connection, path: &Path, registry: Registry) -> Result<()> {
    check_registry(registry)?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let recorded = recorded_versions(&tx, path, registry)?;
    for list in registry {
        let capability = list[0].capability;
        let at = recorded
            .iter()
            .find(|(c, _)| c == capability)
            .map_or(0, |(_, v)| *v);
        for m in list.iter().filter(|m| i64::from(m.version) > at) {
            tx.execute_batch(m.sql).map_err(|e| {
                StoreError::Invalid(format!(
                    "{}: migration {} {} failed: {e}",
                    path.display(),
                    m.capability,
                    m.version
                ))
            })?;
            record(&tx, m.capability, m.version)?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// The versions recorded in the file, after refusing a file newer than
/// `registry` and converting one of release 0.1.0.
fn recorded_versions(
    tx: &Transaction<'_>,
    path: &Path,
    registry: Registry,
) -> Result<Vec<(String, i64)>> {
    let too_new = |capability: &str, found: i64, known: Option<u32>| StoreError::TooNew {
        file: path.to_path_buf(),
        capability: capability.to_string(),
        found,
        known,
    };
    if table_exists(tx, "schema_versions")? {
        let mut stmt = tx.prepare("SELECT capability, version FROM schema_versions")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let newest = newest(registry);
        for (capability, found) in &rows {
            match newest.iter().find(|(c, _)| c == capability) {
                None => return Err(too_new(capability, *found, None)),
                Some((_, known)) if *found > i64::from(*known) => {
                    return Err(too_new(capability, *found, Some(*known)))
                }
                Some(_) => {}
            }
        }
        return Ok(rows);
    }
    let legacy: Option<String> = if table_exists(tx, "meta")? {
        tx.query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()?
    } else {
        None
    };
    tx.execute_batch(VERSIONS_TABLE)?;
    let Some(legacy) = legacy else {
        // a new file
        return Ok(Vec::new());
    };
    let global: i64 = legacy.trim().parse().map_err(|_| {
        StoreError::Invalid(format!(
            "{}: unreadable schema version {legacy:?}",
            path.display()
        ))
    })?;
    if global > LEGACY.len() as i64 {
        return Err(too_new(LEGACY_GLOBAL, global, Some(LEGACY.len() as u32)));
    }
    let versions: &[(&str, u32)] = match usize::try_from(global) {
        Ok(g) if g >= 1 => LEGACY[g - 1],
        _ => &[],
    };
    // release 0.1.0 kept only the main file
    let known = newest(registry);
    if let Some((c, _)) = versions
        .iter()
        .find(|(c, _)| !known.iter().any(|(k, _)| k == c))
    {
        return Err(StoreError::Invalid(format!(
            "{}: holds the global schema version of release 0.1.0 but not capability {c:?}",
            path.display()
        )));
    }
    for (capability, version) in versions {
        record(tx, capability, *version)?;
    }
    // release 0.1.0 would read a missing version as 0 and fail at its
    // first migration (its tables exist): it cannot open the file any more
    tx.execute("DELETE FROM meta WHERE key = 'schema_version'", [])?;
    tracing::info!(
        file = %path.display(),
        global,
        "converted the schema version of release 0.1.0 to per-capability versions"
    );
    Ok(versions
        .iter()
        .map(|(c, v)| (c.to_string(), i64::from(*v)))
        .collect())
}

/// Records that `capability` is at `version`; never lowers it.
fn record(tx: &Transaction<'_>, capability: &str, version: u32) -> Result<()> {
    tx.execute(
        "INSERT INTO schema_versions (capability, version) VALUES (?1, ?2)
         ON CONFLICT(capability) DO UPDATE SET version = MAX(version, excluded.version)",
        rusqlite::params![capability, version],
    )?;
    Ok(())
}

fn table_exists(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// The versions recorded in a database, by capability.
pub fn versions(conn: &Connection) -> Result<Vec<(String, i64)>> {
    let mut stmt =
        conn.prepare("SELECT capability, version FROM schema_versions ORDER BY capability")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

pub fn meta_get(conn: &Connection, key: &str) -> Result<Option<String>> {
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

    #[test]
    fn the_main_registry_is_well_formed() {
        check_registry(MAIN).unwrap();
    }

    /// Every entry of the 0.1.0 mapping names a capability of the main file
    /// at a version it has, and the last entry is where the main file was
    /// when versions became per capability (migrations added since come
    /// after it).
    #[test]
    fn the_legacy_mapping_names_known_versions() {
        let newest = newest(MAIN);
        for entry in LEGACY {
            for (c, v) in *entry {
                let (_, known) = newest.iter().find(|(n, _)| n == c).unwrap();
                assert!(*v >= 1 && v <= known, "{c} {v}");
            }
        }
        for w in LEGACY.windows(2) {
            for (c, v) in w[0] {
                let later = w[1].iter().find(|(n, _)| n == c).unwrap().1;
                assert!(later >= *v, "{c} goes down");
            }
        }
    }

    #[test]
    fn a_malformed_registry_is_refused() {
        const GAP: &[Migration] = &[
            Migration {
                capability: "x",
                version: 1,
                sql: "",
            },
            Migration {
                capability: "x",
                version: 3,
                sql: "",
            },
        ];
        const MIXED: &[Migration] = &[
            Migration {
                capability: "x",
                version: 1,
                sql: "",
            },
            Migration {
                capability: "y",
                version: 2,
                sql: "",
            },
        ];
        const X: &[Migration] = &[Migration {
            capability: "x",
            version: 1,
            sql: "",
        }];
        const EMPTY: &[Migration] = &[];
        assert!(check_registry(&[GAP]).is_err());
        assert!(check_registry(&[MIXED]).is_err());
        assert!(check_registry(&[X, X]).is_err());
        assert!(check_registry(&[EMPTY]).is_err());
        check_registry(&[X]).unwrap();
    }
}
