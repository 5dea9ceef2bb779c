//! `--recovery-groups G --recovery-mib M`: how long a node takes to recover a shared write-ahead
//! log that holds G groups and M MiB of entries (issue 19). The log is written with the same
//! batched writes a `Host` makes (one fsync per batch of 64 groups), closed, then opened again
//! and every group's core built from its store (`Raft::new`, which reads the group's hard state,
//! membership, snapshot and log bounds), as a restarting node does before its groups run.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, GroupId, HardState, Index, Membership, NodeId, Options, Output, Raft, Term};
use raft_storage::{GroupStore, Identity, SharedWal, StdFs, WalOptions};

use crate::cluster::BenchResult;

/// The payload of every entry.
const ENTRY_BYTES: usize = 4096;
/// Entries per group per write (a busy group's batch).
const ENTRIES_PER_WRITE: u64 = 16;
/// Groups per write (a worker's batch).
const GROUPS_PER_WRITE: usize = 64;

/// Writes the log, reopens it and reports the times.
pub fn measure(groups: u64, mib: u64, dir: &Path) -> BenchResult<()> {
    if groups == 0 || mib == 0 {
        return Err("--recovery-groups and --recovery-mib must be at least 1".into());
    }
    let root = tempfile::Builder::new().prefix("bench-recovery-").tempdir_in(dir)?;
    let path = root.path().join("wal");
    let identity = Identity { cluster_id: 0xBE7D, node_id: NodeId(1) };
    let membership = Membership::new([NodeId(1), NodeId(2), NodeId(3)]);
    let total_entries = (mib << 20) / ENTRY_BYTES as u64;
    let per_group = (total_entries / groups).max(1);
    eprintln!(
        "[recovery] writing {groups} groups x {per_group} entries of {ENTRY_BYTES} B ({:.0} MiB) into {} ...",
        (groups * per_group * ENTRY_BYTES as u64) as f64 / f64::from(1 << 20),
        path.display()
    );
    let started = Instant::now();
    {
        let wal = SharedWal::create(StdFs, &path, identity, WalOptions::default())?;
        let mut stores: Vec<GroupStore> =
            (1..=groups).map(|group| wal.create_group(GroupId(group), membership.clone())).collect::<Result<_, _>>()?;
        let payload = Bytes::from(vec![0x5a; ENTRY_BYTES]);
        let mut next = 1;
        let mut reported = Instant::now();
        while next <= per_group {
            let last = (next + ENTRIES_PER_WRITE - 1).min(per_group);
            for chunk in stores.chunks_mut(GROUPS_PER_WRITE) {
                let mut outputs: Vec<Output> = chunk
                    .iter()
                    .map(|_| Output {
                        hard_state: (next == 1).then_some(HardState {
                            term: Term(1),
                            vote: Some(NodeId(1)),
                            commit: Index(0),
                        }),
                        entries: (next..=last)
                            .map(|index| Entry {
                                term: Term(1),
                                index: Index(index),
                                payload: EntryPayload::Normal(payload.clone()),
                            })
                            .collect(),
                        ..Output::default()
                    })
                    .collect();
                let mut batch: Vec<(&mut GroupStore, &mut Output)> = chunk.iter_mut().zip(outputs.iter_mut()).collect();
                wal.write_batch(&mut batch)?;
            }
            next = last + 1;
            if reported.elapsed() >= Duration::from_secs(5) {
                eprintln!("[recovery] written {} of {per_group} entries per group", next - 1);
                reported = Instant::now();
            }
        }
        eprintln!(
            "[recovery] written in {:.1} s ({} segments); closing the log",
            started.elapsed().as_secs_f64(),
            wal.segment_count()
        );
    }
    let cold = drop_page_cache();
    eprintln!("[recovery] reopening ({}) ...", if cold { "page cache dropped" } else { "page cache warm" });
    let started = Instant::now();
    let wal = SharedWal::open(StdFs, &path, identity, WalOptions::default())?;
    let opened = started.elapsed();
    let options = Options::default();
    let mut last_indexes = 0;
    for group in wal.groups() {
        let raft = Raft::new(NodeId(1), options.clone(), wal.group(group)?)?;
        last_indexes += raft.last_index().0;
    }
    let built = started.elapsed();
    if last_indexes != groups * per_group {
        return Err(format!("recovered {last_indexes} entries, wrote {}", groups * per_group).into());
    }
    println!(
        "recovery: {groups} groups, {:.0} MiB of entries ({} entries, {} segments), {}: log opened in {:.2} s, \
         every group's core built in {:.2} s more, {:.2} s in all",
        (groups * per_group * ENTRY_BYTES as u64) as f64 / f64::from(1 << 20),
        groups * per_group,
        wal.segment_count(),
        if cold { "cold page cache" } else { "warm page cache" },
        opened.as_secs_f64(),
        (built - opened).as_secs_f64(),
        built.as_secs_f64()
    );
    Ok(())
}

/// Asks Linux to drop its page cache (needs root; a no-op elsewhere). Returns whether it did.
fn drop_page_cache() -> bool {
    // Dirty pages are written first, so that dropping leaves nothing of the log in memory.
    let synced = std::process::Command::new("sync").status().is_ok_and(|status| status.success());
    synced && std::fs::write("/proc/sys/vm/drop_caches", b"3\n").is_ok()
}
