//! Every SQL statement of the collector lives in store code: no source file
//! of `collector/src` outside `collector/src/store/` may name `rusqlite`
//! (see ARCHITECTURE.md, "Store").

use std::path::{Path, PathBuf};

/// TEMPORARY: files outside the store that still name `rusqlite`, to be
/// moved into store code and removed from this list (the list only
/// shrinks; an entry that no longer names it fails the test too, so it is
/// taken out).
const KNOWN_OUTSIDE: &[&str] = &[];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn rusqlite_is_named_only_in_store_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let store = root.join("src/store");
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    assert!(files.len() > 10, "found only {files:?}");
    let mut outside = Vec::new();
    for f in &files {
        if f.starts_with(&store) {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        if text.contains("rusqlite") {
            let rel = f.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            outside.push(rel);
        }
    }
    let new: Vec<_> = outside
        .iter()
        .filter(|f| !KNOWN_OUTSIDE.contains(&f.as_str()))
        .collect();
    assert!(
        new.is_empty(),
        "rusqlite named outside collector/src/store: {new:?}; put the SQL in store code"
    );
    let stale: Vec<_> = KNOWN_OUTSIDE
        .iter()
        .filter(|f| !outside.iter().any(|o| o == *f))
        .collect();
    assert!(
        stale.is_empty(),
        "{stale:?} no longer name rusqlite (or are gone): take them out of KNOWN_OUTSIDE"
    );
}
