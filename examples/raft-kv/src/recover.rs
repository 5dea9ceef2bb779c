//! `raft-kv recover`: recovery from a lost quorum, offline, on one survivor's data directory.
//!
//! The node must be stopped: its store is held while it runs, and recovery refuses a store in
//! use. Afterwards the node is the only voter of the groups recovered: start it with `serve`
//! (without `--bootstrap`), then add new nodes with `serve --join`. See `raft_storage::recover`
//! for what recovery costs (writes that only the lost nodes had are gone) and what must never
//! happen after it (the lost nodes coming back with their old data; another survivor starting
//! with its store).
//!
//! A single-group node has one store ([`DiskStorage`]); a sharded node (`serve --shards`) has one
//! shared write-ahead log holding the meta group (the routing table) and its shard groups. For a
//! sharded store the operator names the groups that lost their majority (`--meta`, `--shard N`,
//! or `--all`): recovering a group whose majority still runs elsewhere would fork it.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use raft_core::{GroupId, NodeId};
use raft_kv::shards::{META_GROUP, ShardId};
use raft_storage::recover::{Recovered, become_sole_voter, latest_membership};
use raft_storage::{DiskOptions, DiskStorage, Identity, SharedWal, StdFs, WalOptions};

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
    /// A sharded node's store: recover the meta group (the routing table).
    #[arg(long)]
    pub meta: bool,
    /// A sharded node's store: recover this shard's group (repeat, or separate with commas).
    #[arg(long = "shard", value_name = "SHARD", value_delimiter = ',')]
    pub shards: Vec<u32>,
    /// A sharded node's store: recover every group it holds (when every group lost its
    /// majority, as when two of three nodes are lost with three replicas per shard).
    #[arg(long, conflicts_with_all = ["meta", "shards"])]
    pub all: bool,
}

impl RecoverArgs {
    fn sharded(&self) -> bool {
        self.meta || self.all || !self.shards.is_empty()
    }
}

/// Makes node `args.id` the only voter of its cluster (single group) or of the groups named
/// (sharded), keeping every entry its store has.
pub fn run(args: RecoverArgs) -> anyhow::Result<()> {
    let id = NodeId(args.id);
    let identity = Identity { cluster_id: args.cluster_id, node_id: id };
    if args.sharded() {
        return recover_groups(&args, identity);
    }
    let mut store = match DiskStorage::open(StdFs, &args.data, identity, DiskOptions::default()) {
        Ok(store) => store,
        Err(error) => {
            // A sharded node's store: say which groups it holds, and how to name them.
            if let Ok(wal) = SharedWal::open(StdFs, &args.data, identity, WalOptions::default()) {
                bail!(
                    "{} holds a sharded node's store; name the groups that lost their majority with \
                     --meta, --shard N or --all (recovering a group whose majority still runs \
                     elsewhere would fork it). Its groups:\n{}",
                    args.data.display(),
                    describe(&wal)
                );
            }
            return Err(error)
                .with_context(|| format!("opening the store in {} (is the node stopped?)", args.data.display()));
        }
    };
    let recovered = become_sole_voter(&mut store, id).context("rewriting the membership")?;
    println!(
        "node {id} is now the only voter (it was one of {}): membership entry {} in term {}. \
         Start it with `raft-kv serve` (no --bootstrap), then add nodes with `serve --join`; \
         never start the lost nodes, or another survivor, with their old data.",
        voters(&recovered),
        recovered.index,
        recovered.term
    );
    Ok(())
}

/// Recovers the groups `args` names in a sharded node's shared write-ahead log.
fn recover_groups(args: &RecoverArgs, identity: Identity) -> anyhow::Result<()> {
    let id = identity.node_id;
    let wal = SharedWal::open(StdFs, &args.data, identity, WalOptions::default())
        .with_context(|| format!("opening the sharded store in {} (is the node stopped?)", args.data.display()))?;
    let held = wal.groups();
    let mut wanted: BTreeSet<GroupId> = if args.all {
        held.iter().copied().collect()
    } else {
        let mut wanted: BTreeSet<GroupId> = args.shards.iter().map(|shard| ShardId(*shard).group()).collect();
        if args.meta {
            wanted.insert(META_GROUP);
        }
        wanted
    };
    // Every group named must be here, with this node among its voters, before anything is
    // written: a learner's replica (an empty one waiting to be added, say) made the only voter
    // would serve a shard without its data.
    if let Some(missing) = wanted.iter().find(|group| !held.contains(group)) {
        bail!("node {id} holds no replica of {}; its groups:\n{}", name(*missing), describe(&wal));
    }
    let voting = |group: &GroupId| {
        let membership = wal.group(*group).ok().and_then(|store| latest_membership(&store).ok());
        membership.is_some_and(|membership| membership.all_voters().contains(&id))
    };
    let not_voting: Vec<GroupId> = wanted.iter().copied().filter(|group| !voting(group)).collect();
    if !not_voting.is_empty() {
        let names: Vec<String> = not_voting.iter().map(|group| name(*group)).collect();
        if !args.all {
            bail!("node {id} is not a voter of {}; its groups:\n{}", names.join(", "), describe(&wal));
        }
        println!("left as they are (node {id} is not a voter of them): {}", names.join(", "));
        wanted.retain(|group| !not_voting.contains(group));
    }
    let mut done = Vec::new();
    for group in wanted {
        if let Some(shard) = ShardId::of_group(group) {
            // Noted first (a crash before the rewrite leaves it noted; run recover again): the
            // controller resets the table's record of the shard's members from this node's
            // reports, which may be below the record of the majority that was lost.
            raft_kv::shards::node::note_recovered(&args.data, &[shard].into())
                .map_err(anyhow::Error::msg)
                .with_context(|| {
                    format!("noting {} as recovered (recovered before it: {})", name(group), done.join(", "))
                })?;
        }
        let mut store = wal.group(group).with_context(|| format!("opening {}", name(group)))?;
        let recovered = become_sole_voter(&mut store, id).with_context(|| {
            format!("rewriting the membership of {} (recovered before it: {})", name(group), done.join(", "))
        })?;
        done.push(name(group));
        println!(
            "{}: node {id} is now the only voter (it was one of {}): membership entry {} in term {}.",
            name(group),
            voters(&recovered),
            recovered.index,
            recovered.term
        );
    }
    println!(
        "Start node {id} with `raft-kv serve` (no --bootstrap). The controller marks the lost nodes \
         failed after --failed-after seconds and re-creates their replicas on the nodes that run \
         or join (`serve --join`); never start the lost nodes, or another survivor of a recovered \
         group, with their old data."
    );
    Ok(())
}

/// A group's name for the operator.
fn name(group: GroupId) -> String {
    match ShardId::of_group(group) {
        Some(shard) => format!("shard {}", shard.0),
        None if group == META_GROUP => "the meta group".to_owned(),
        None => format!("group {}", group.0),
    }
}

/// The voters before recovery, for the operator.
fn voters(recovered: &Recovered) -> String {
    let voters: Vec<String> = recovered.previous.all_voters().iter().map(|voter| voter.to_string()).collect();
    voters.join(", ")
}

/// One line per group of `wal`: its name and its latest membership.
fn describe(wal: &SharedWal<StdFs>) -> String {
    let mut lines = Vec::new();
    for group in wal.groups() {
        let membership = wal.group(group).ok().and_then(|store| latest_membership(&store).ok());
        let voters = membership.map_or_else(
            || "unknown".to_owned(),
            |membership| membership.all_voters().iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        );
        lines.push(format!("  {} (--{}): voters {voters}", name(group), flag(group)));
    }
    lines.join("\n")
}

/// The flag that names `group`.
fn flag(group: GroupId) -> String {
    match ShardId::of_group(group) {
        Some(shard) => format!("shard {}", shard.0),
        None => "meta".to_owned(),
    }
}
