//! `raft-kv recover`: recovery from a lost quorum, offline, on one survivor's data directory.
//!
//! The node must be stopped: its store is held while it runs, and recovery refuses a store in
//! use. Afterwards the node is the only voter of its cluster: start it with `serve` (without
//! `--bootstrap`), then add new nodes with `serve --join`. See `raft_storage::recover` for what
//! recovery costs (writes that only the lost nodes had are gone) and what must never happen after
//! it (the lost nodes coming back with their old data; another survivor starting with its store).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use raft_core::NodeId;
use raft_storage::recover::become_sole_voter;
use raft_storage::{DiskOptions, DiskStorage, Identity, StdFs};

/// `raft-kv recover`.
#[derive(Args, Clone)]
pub struct RecoverArgs {
    /// The surviving node's id.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub id: u64,
    /// Its data directory (the node must not be running).
    #[arg(long)]
    pub data: PathBuf,
    /// The cluster id it was started with.
    #[arg(long, default_value_t = 1)]
    pub cluster_id: u64,
}

/// Makes node `args.id` the only voter of its cluster, keeping every entry its store has.
pub fn run(args: RecoverArgs) -> anyhow::Result<()> {
    let id = NodeId(args.id);
    let identity = Identity { cluster_id: args.cluster_id, node_id: id };
    let mut store = DiskStorage::open(StdFs, &args.data, identity, DiskOptions::default())
        .with_context(|| format!("opening the store in {} (is the node stopped?)", args.data.display()))?;
    let recovered = become_sole_voter(&mut store, id).context("rewriting the membership")?;
    let previous: Vec<String> = recovered.previous.all_voters().iter().map(|voter| voter.to_string()).collect();
    println!(
        "node {id} is now the only voter (it was one of {}): membership entry {} in term {}. \
         Start it with `raft-kv serve` (no --bootstrap), then add nodes with `serve --join`; \
         never start the lost nodes, or another survivor, with their old data.",
        previous.join(", "),
        recovered.index,
        recovered.term
    );
    Ok(())
}
