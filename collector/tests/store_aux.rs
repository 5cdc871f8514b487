//! A capability's own database file (`Store::open_aux`): its own writer
//! thread, WAL, private files and schema versions, so that a write held up
//! there never makes a write to the main database wait (a kill's commit
//! behind bulk ingest). The capability here exists only in this test.

use collector::auth::Actor;
use collector::store::{self, schema, schema::Migration, Store, StoreError};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

const BULK: &[Migration] = &[
    Migration {
        capability: "bulk_test",
        version: 1,
        sql: "CREATE TABLE samples (ts_ms INTEGER NOT NULL, value REAL NOT NULL);",
    },
    Migration {
        capability: "bulk_test",
        version: 2,
        sql: "CREATE INDEX samples_ts ON samples(ts_ms);",
    },
];
const BULK_FILE: schema::Registry = &[BULK];

/// Long enough for any honest commit on a loaded machine; a write stuck
/// behind the other file's writer never finishes at all.
const PATIENCE: Duration = Duration::from_secs(30);

fn kill(store: &Store, name: &'static str) -> store::Result<u64> {
    store.write_blocking(move |tx| {
        let actor = Actor::system("system:test");
        store::killswitches::declare(tx, &actor, name, "d")?;
        let (_, revision) =
            store::killswitches::set_state(tx, &actor, "prod", None, name, true, "incident")?;
        Ok(revision.map_or(0, |r| r.revision))
    })
}

fn count_samples(aux: &Store) -> i64 {
    aux.read_blocking(|c| Ok(c.query_row("SELECT COUNT(*) FROM samples", [], |r| r.get(0))?))
        .unwrap()
}

#[test]
fn a_held_aux_writer_does_not_hold_up_the_main_store() {
    let dir = tempfile::tempdir().unwrap();
    let main = Store::open(dir.path()).unwrap();
    let aux = Store::open_aux(dir.path(), "bulk_test", BULK_FILE).unwrap();

    // the aux writer takes a job that holds its write transaction open
    // until released
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let held = {
        let aux = aux.clone();
        std::thread::spawn(move || {
            aux.write_blocking(move |tx| {
                tx.execute("INSERT INTO samples VALUES (1, 1.0)", [])?;
                started_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                Ok(())
            })
        })
    };
    started_rx.recv_timeout(PATIENCE).unwrap();
    // a second aux write queues behind the held one
    let (queued_tx, queued_rx) = mpsc::channel();
    let queued = {
        let aux = aux.clone();
        std::thread::spawn(move || {
            let r = aux.write_blocking(|tx| {
                tx.execute("INSERT INTO samples VALUES (2, 2.0)", [])?;
                Ok(())
            });
            queued_tx.send(()).unwrap();
            r
        })
    };

    // meanwhile a kill commits on the main store, and is readable
    let (done_tx, done_rx) = mpsc::channel();
    {
        let main = main.clone();
        std::thread::spawn(move || done_tx.send(kill(&main, "checkout")).unwrap());
    }
    let revision = done_rx
        .recv_timeout(PATIENCE)
        .expect("the main store's write waited for the aux writer")
        .unwrap();
    assert_eq!(revision, 1);
    let latest = main
        .read_blocking(|c| store::flags::latest(c, "prod"))
        .unwrap()
        .unwrap();
    assert!(latest
        .killswitches
        .iter()
        .any(|k| k.name == "checkout" && k.killed));
    // the aux writer was busy all along: its second write has not run, and
    // the held write is not visible
    assert!(queued_rx.try_recv().is_err());
    assert_eq!(count_samples(&aux), 0);

    release_tx.send(()).unwrap();
    held.join().unwrap().unwrap();
    queued.join().unwrap().unwrap();
    assert_eq!(count_samples(&aux), 2);
    aux.close();
    main.close();
}

#[test]
fn an_aux_file_has_its_own_writer_versions_and_private_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let main = Store::open(&data).unwrap();
    let aux = Store::open_aux(&data, "bulk_test", BULK_FILE).unwrap();
    assert_eq!(aux.path(), data.join("bulk_test.db"));

    // its own writer thread (not the main one), named after the file
    let name = |s: &Store| {
        s.write_blocking(|_| Ok(std::thread::current().name().map(String::from)))
            .unwrap()
            .unwrap()
    };
    assert_eq!(name(&main), store::flags::WRITER_THREAD);
    assert_eq!(
        name(&aux),
        format!("{}-bulk_test", store::flags::WRITER_THREAD)
    );

    // its own versions: only its capability, at its newest; none of its
    // tables in the main file, none of the main file's in it
    assert_eq!(
        aux.read_blocking(schema::versions).unwrap(),
        vec![("bulk_test".to_string(), 2)]
    );
    let has = |s: &Store, table: &'static str| {
        s.read_blocking(move |c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = ?1",
                [table],
                |r| r.get::<_, i64>(0),
            )? == 1)
        })
        .unwrap()
    };
    assert!(has(&aux, "samples") && !has(&main, "samples"));
    assert!(!has(&aux, "audit") && has(&main, "audit"));
    assert!(!main
        .read_blocking(schema::versions)
        .unwrap()
        .iter()
        .any(|(c, _)| c == "bulk_test"));

    // WAL and 0600, like the main file
    aux.write_blocking(|tx| {
        tx.execute("INSERT INTO samples VALUES (1, 1.0)", [])?;
        Ok(())
    })
    .unwrap();
    let mode: String = aux
        .read_blocking(|c| Ok(c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?))
        .unwrap();
    assert_eq!(mode, "wal");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["bulk_test.db", "bulk_test.db-wal", "bulk_test.db-shm"] {
            let p = data.join(f);
            let m = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(m, 0o600, "{f}");
        }
    }
    aux.close();
    main.close();
    // reopening runs nothing again and keeps the rows
    let aux = Store::open_aux(&data, "bulk_test", BULK_FILE).unwrap();
    assert_eq!(count_samples(&aux), 1);
    aux.close();
}

#[test]
fn an_aux_file_newer_than_the_binary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // a later binary added a migration: this one knows only the first
    const OLDER: &[Migration] = &[BULK[0]];
    Store::open_aux(dir.path(), "bulk_test", BULK_FILE)
        .unwrap()
        .close();
    match Store::open_aux(dir.path(), "bulk_test", &[OLDER]) {
        Err(StoreError::TooNew {
            file,
            capability,
            found,
            known,
        }) => {
            assert_eq!(file, dir.path().join("bulk_test.db"));
            assert_eq!(
                (capability.as_str(), found, known),
                ("bulk_test", 2, Some(1))
            );
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    // a file holding a capability this binary does not have in it
    const OTHER: &[Migration] = &[Migration {
        capability: "other_test",
        version: 1,
        sql: "CREATE TABLE other (x INTEGER);",
    }];
    match Store::open_aux(dir.path(), "bulk_test", &[OTHER]) {
        Err(StoreError::TooNew {
            capability, known, ..
        }) => assert_eq!((capability.as_str(), known), ("bulk_test", None)),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // refused twice, and still at version 2 for the binary that knows it
    let aux = Store::open_aux(dir.path(), "bulk_test", BULK_FILE).unwrap();
    assert_eq!(
        aux.read_blocking(schema::versions).unwrap(),
        vec![("bulk_test".to_string(), 2)]
    );
    aux.close();
}

#[test]
fn an_aux_file_name_must_be_plain_and_not_the_main_file() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["", "opsplane", "../x", "Metrics", "a.b", "a/b"] {
        assert!(
            matches!(
                Store::open_aux(dir.path(), bad, BULK_FILE),
                Err(StoreError::Invalid(_))
            ),
            "{bad:?}"
        );
    }
    assert!(!Path::new(&dir.path().join("opsplane.db")).exists());
}
