//! Replays the stored fuzz corpus of the `frames` target (`fuzz/corpus/frames`) through its
//! harness, so that a plain `cargo test` runs every seed and every regression input. Set
//! `FUZZ_INPUT=<absolute path>` to run one file instead (e.g. a new crash artifact).

use std::path::{Path, PathBuf};

#[test]
fn frames_corpus() {
    if let Some(file) = std::env::var_os("FUZZ_INPUT") {
        raft_net::fuzzing::frames(&std::fs::read(&file).expect("FUZZ_INPUT is readable"));
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/frames");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).expect("the corpus directory exists").map(|e| e.expect("entry").path()).collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus {} is empty", dir.display());
    for file in files {
        eprintln!("replaying {}", file.display());
        raft_net::fuzzing::frames(&std::fs::read(&file).expect("corpus files are readable"));
    }
}
