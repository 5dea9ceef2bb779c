//! Replays the stored fuzz corpora of the `wal_recovery` and `shared_wal_recovery` targets
//! (`fuzz/corpus/<target>`) through their harnesses, so that a plain `cargo test` runs every seed
//! and every regression input. Set `FUZZ_INPUT=<absolute path>` to run one file instead (e.g. a
//! new crash artifact) through both.

use std::path::{Path, PathBuf};

fn replay(target: &str, harness: fn(&[u8])) {
    if let Some(file) = std::env::var_os("FUZZ_INPUT") {
        harness(&std::fs::read(&file).expect("FUZZ_INPUT is readable"));
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).expect("the corpus directory exists").map(|e| e.expect("entry").path()).collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus {} is empty", dir.display());
    for file in files {
        eprintln!("replaying {}", file.display());
        harness(&std::fs::read(&file).expect("corpus files are readable"));
    }
}

#[test]
fn wal_recovery_corpus() {
    replay("wal_recovery", raft_storage::fuzzing::wal_recovery);
}

#[test]
fn shared_wal_recovery_corpus() {
    replay("shared_wal_recovery", raft_storage::fuzzing::shared_wal_recovery);
}
