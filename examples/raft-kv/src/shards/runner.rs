//! The controller at work: on the node that leads the meta group, a round reads the current
//! routing table, asks every node what the shard replicas it leads report, asks
//! [`controller::reconcile`] what to do, and does it: table changes are proposed to the meta
//! group here, shard changes are asked of the shard's leader, here or on another node (through
//! [`Peers`]). It also makes every node of the table a member of the meta group (a learner
//! unless it is one of the first voters), so that every node holds an applied copy of the table.
//!
//! The runner keeps no state between rounds (a crash of its node hands the work to the next meta
//! leader, which computes the same steps from the same durable state), except when it last heard
//! from each node, for marking the silent ones failed after [`RunnerConfig::failed_after`].

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use raft_core::{ConfChange, NodeId, Role};
use raft_net::ReadConsistency;
use tokio::time::Instant;
use tracing::{debug, info};

use super::controller::{self, Action, Limits, Observed};
use super::node::Inner;
use super::{NodeState, RoutingTable, ShardId, TableChange, TableCommand};

/// A boxed future, for the object-safe [`Peers`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How the controller reaches the other nodes (HTTP between processes; direct calls in tests).
pub trait Peers: Send + Sync {
    /// What the replicas that `node` leads report, by shard; `None` if the node did not answer.
    fn observe(&self, node: NodeId) -> BoxFuture<'_, Option<BTreeMap<ShardId, Observed>>>;
    /// Asks `node`, which leads the action's shard, to carry out `action` (never a table change).
    fn carry_out(&self, node: NodeId, action: Action) -> BoxFuture<'_, Result<(), String>>;
}

/// How the controller runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunnerConfig {
    /// Time between two rounds.
    pub interval: Duration,
    /// The controller's pacing.
    pub limits: Limits,
    /// A node that has not answered for this long is marked failed in the table, and its
    /// replicas are re-created elsewhere.
    pub failed_after: Duration,
}

impl Default for RunnerConfig {
    /// A round a second, a learner within 64 entries may vote, two moves at once, failed after
    /// 30 s of silence.
    fn default() -> Self {
        RunnerConfig {
            interval: Duration::from_secs(1),
            limits: Limits { caught_up_entries: 64, moves_max: 2 },
            failed_after: Duration::from_secs(30),
        }
    }
}

/// A node's own replicas, as the controller (of this node or, through [`Peers`], of another)
/// sees and drives them. Holds the node weakly: it does not keep a stopped node alive.
#[derive(Clone)]
pub struct LocalReplicas(pub(crate) Weak<Inner>);

impl std::fmt::Debug for LocalReplicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalReplicas").finish_non_exhaustive()
    }
}

impl LocalReplicas {
    /// What the replicas this node leads report, by shard; `None` once the node stopped.
    pub async fn observe(&self) -> Option<BTreeMap<ShardId, Observed>> {
        let inner = self.0.upgrade()?;
        let id = inner.id;
        let handles: Vec<_> = inner.lock_shards().iter().map(|(shard, handle)| (*shard, handle.clone())).collect();
        drop(inner);
        let mut observed = BTreeMap::new();
        for (shard, handle) in handles {
            let Ok(status) = handle.status().await else { continue };
            if status.role != Role::Leader {
                continue;
            }
            let membership = &status.membership;
            let mut recently_active: std::collections::BTreeSet<NodeId> =
                status.peers.iter().filter(|(_, peer)| peer.recent_active).map(|(node, _)| *node).collect();
            recently_active.insert(id);
            observed.insert(
                shard,
                Observed {
                    leader: id,
                    voters: membership.voters_incoming.clone(),
                    joint: membership.is_joint(),
                    learners: membership.learners.clone(),
                    lag_entries: status.peers.iter().map(|(node, peer)| (*node, peer.lag_entries)).collect(),
                    recently_active,
                },
            );
        }
        Some(observed)
    }

    /// Carries out a shard action at this node's replica of its shard (which must lead it).
    pub async fn carry_out(&self, action: Action) -> Result<(), String> {
        let inner = self.0.upgrade().ok_or("the node stopped")?;
        let shard = match &action {
            Action::AddLearner { shard, .. } | Action::Change { shard, .. } | Action::TransferLeader { shard, .. } => {
                *shard
            }
            Action::Table(_) => return Err("a table change goes to the meta group".to_owned()),
        };
        let handle = inner.lock_shards().get(&shard).cloned().ok_or(format!("no replica of shard {shard}"))?;
        drop(inner);
        match action {
            Action::AddLearner { node, .. } => {
                handle.change_membership(vec![ConfChange::AddLearner(node)]).await.map(drop).map_err(|e| e.to_string())
            }
            Action::Change { changes, .. } => {
                handle.change_membership(changes).await.map(drop).map_err(|error| error.to_string())
            }
            Action::TransferLeader { to, .. } => {
                handle.transfer_leadership(to).await.map_err(|error| error.to_string())
            }
            Action::Table(_) => Err("a table change goes to the meta group".to_owned()),
        }
    }
}

/// When the runner last heard from each node (its only memory between rounds).
#[derive(Debug, Default)]
pub(crate) struct LastHeard(Mutex<BTreeMap<NodeId, Instant>>);

/// Runs controller rounds on `inner`'s node until it stops; a round does something only while
/// the node leads the meta group.
pub(crate) async fn run(inner: Weak<Inner>, peers: Arc<dyn Peers>, config: RunnerConfig) {
    let heard = LastHeard::default();
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if inner.strong_count() == 0 {
            return;
        }
        if let Err(error) = round(&inner, peers.as_ref(), config, &heard).await {
            debug!(%error, "controller round");
        }
    }
}

/// One round (see the module docs).
async fn round(inner: &Weak<Inner>, peers: &dyn Peers, config: RunnerConfig, heard: &LastHeard) -> Result<(), String> {
    let node = inner.upgrade().ok_or("stopped")?;
    let (id, meta) = (node.id, node.meta.clone());
    drop(node);
    let status = meta.status().await.map_err(|error| error.to_string())?;
    if status.role != Role::Leader {
        heard.0.lock().unwrap_or_else(PoisonError::into_inner).clear(); // A new term of office starts afresh.
        return Ok(());
    }
    // Current, not a cached copy: reconcile must not undo a finished move (see `controller`).
    let table: RoutingTable =
        meta.read(ReadConsistency::Linearizable, |meta| meta.table().clone()).await.map_err(|e| e.to_string())?;
    if table.version() == 0 {
        return Ok(());
    }
    // Every node of the table follows the meta group (one change per round: the core takes one
    // membership change at a time).
    if let Some(missing) = table.nodes().keys().find(|node| !status.membership.is_member(**node)) {
        let added = meta.change_membership(vec![ConfChange::AddLearner(*missing)]).await;
        info!(node = missing.0, ok = added.is_ok(), "adding a node to the meta group as a learner");
        return Ok(());
    }
    let mut observed = BTreeMap::new();
    let now = Instant::now();
    for node in table.nodes().keys().copied() {
        let answer = if node == id { LocalReplicas(inner.clone()).observe().await } else { peers.observe(node).await };
        let silent_since = match answer {
            Some(leading) => {
                heard.0.lock().unwrap_or_else(PoisonError::into_inner).insert(node, now);
                observed.extend(leading);
                continue;
            }
            None => *heard.0.lock().unwrap_or_else(PoisonError::into_inner).entry(node).or_insert(now),
        };
        let state = table.nodes().get(&node).map(|entry| entry.state);
        if now.duration_since(silent_since) >= config.failed_after && state == Some(NodeState::Active) {
            info!(node = node.0, "marking a silent node failed: its replicas will be re-created elsewhere");
            propose(&meta, &table, TableChange::SetNodeState { id: node, state: NodeState::Failed }).await?;
            return Ok(());
        }
    }
    for action in controller::reconcile(&table, &observed, config.limits) {
        debug!(?action, "controller action");
        match action {
            Action::Table(command) => {
                let applied = meta.propose(bytes::Bytes::from(command.encode())).await.map_err(|e| e.to_string())?;
                if let Err(refused) = applied {
                    return Err(format!("the table refused {command:?}: {refused}"));
                }
            }
            shard_action => {
                let shard = match &shard_action {
                    Action::AddLearner { shard, .. }
                    | Action::Change { shard, .. }
                    | Action::TransferLeader { shard, .. } => *shard,
                    Action::Table(_) => continue,
                };
                let Some(leader) = observed.get(&shard).map(|seen| seen.leader) else { continue };
                let done = if leader == id {
                    LocalReplicas(inner.clone()).carry_out(shard_action).await
                } else {
                    peers.carry_out(leader, shard_action).await
                };
                if let Err(error) = done {
                    debug!(shard = shard.0, %error, "shard action not carried out");
                }
            }
        }
    }
    Ok(())
}

/// Proposes `change` conditional on `table`'s version.
async fn propose(
    meta: &raft_net::NodeHandle<super::Meta>,
    table: &RoutingTable,
    change: TableChange,
) -> Result<(), String> {
    let command = TableCommand { expected_version: Some(table.version()), change };
    match meta.propose(bytes::Bytes::from(command.encode())).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(refused)) => Err(refused.to_string()),
        Err(error) => Err(error.to_string()),
    }
}
