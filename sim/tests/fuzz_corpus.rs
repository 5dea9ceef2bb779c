//! Replays the stored fuzz corpora of the simulator's harnesses (`fuzz/corpus/node_inputs` and
//! `fuzz/corpus/cluster_schedule`), so that a plain `cargo test` runs every seed and every
//! regression input. Set `FUZZ_INPUT=<absolute path>` to run one file (e.g. a new crash artifact).

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
        let data = std::fs::read(&file).expect("corpus files are readable");
        eprintln!("replaying {}", file.display());
        harness(&data);
    }
}

#[test]
fn node_inputs_corpus() {
    replay("node_inputs", sim::fuzzing::node_inputs);
}

#[test]
fn cluster_schedule_corpus() {
    replay("cluster_schedule", sim::fuzzing::cluster_schedule);
}
