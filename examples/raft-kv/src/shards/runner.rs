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

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use raft_core::{ConfChange, NodeId, Role};
use raft_net::ReadConsistency;
use tokio::time::Instant;
use tracing::{debug, info};

use super::controller::{self, Action, Holdings, Limits, NodeReport, Observed};
use super::node::{Inner, META_VOTERS_MAX};
use super::{NodeState, RoutingTable, ShardId, TableChange, TableCommand};

/// A boxed future, for the object-safe [`Peers`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How the controller reaches the other nodes (HTTP between processes; direct calls in tests).
pub trait Peers: Send + Sync {
    /// What the replicas that `node` leads report, and which replicas it holds; `None` if the
    /// node did not answer.
    fn observe(&self, node: NodeId) -> BoxFuture<'_, Option<NodeReport>>;
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
    /// A node that has not answered for this long, and for [`SILENT_ROUNDS_MIN`] rounds in a
    /// row, is marked failed in the table, and its replicas are re-created elsewhere.
    pub failed_after: Duration,
    /// How long one call to a node (or one action at a local replica) may take before the round
    /// goes on without it.
    pub call_timeout: Duration,
}

/// The fewest rounds in a row a node must have failed to answer before it is marked failed
/// (besides [`RunnerConfig::failed_after`]): one slow round is not a dead node.
pub const SILENT_ROUNDS_MIN: u32 = 3;

impl Default for RunnerConfig {
    /// A round a second, a learner within 64 entries may vote, two moves at once, failed after
    /// 30 s of silence, 5 s per call.
    fn default() -> Self {
        RunnerConfig {
            interval: Duration::from_secs(1),
            limits: Limits { caught_up_entries: 64, moves_max: 2 },
            failed_after: Duration::from_secs(30),
            call_timeout: Duration::from_secs(5),
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
    /// What the replicas this node leads report, by shard, and which replicas it holds; `None`
    /// once the node stopped.
    pub async fn observe(&self) -> Option<NodeReport> {
        let inner = self.0.upgrade()?;
        let id = inner.id;
        let handles: Vec<_> = inner.lock_shards().iter().map(|(shard, handle)| (*shard, handle.clone())).collect();
        let (recovered, held) = (inner.recovered(), inner.held());
        drop(inner);
        let mut observed = BTreeMap::new();
        for (shard, handle) in handles {
            let Ok(status) = handle.status().await else { continue };
            if status.role != Role::Leader {
                continue;
            }
            let membership = &status.membership;
            let mut recently_active: BTreeSet<NodeId> =
                status.peers.iter().filter(|(_, peer)| peer.recent_active).map(|(node, _)| *node).collect();
            recently_active.insert(id);
            let committed = &status.committed_membership;
            observed.insert(
                shard,
                Observed {
                    leader: id,
                    term: status.term,
                    commit: status.commit,
                    committed_members: (!committed.is_joint()).then(|| committed.members()),
                    voters: membership.voters_incoming.clone(),
                    joint: membership.is_joint(),
                    learners: membership.learners.clone(),
                    lag_entries: status.peers.iter().map(|(node, peer)| (*node, peer.lag_entries)).collect(),
                    recently_active,
                    recovered: recovered.contains(&shard),
                },
            );
        }
        Some(NodeReport { leading: observed, held })
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

/// Since when, and for how many rounds in a row, each node has not answered (the runner's only
/// memory between rounds; a node that answers is forgotten here).
#[derive(Debug, Default)]
pub(crate) struct Silences(Mutex<BTreeMap<NodeId, (Instant, u32)>>);

impl Silences {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, (Instant, u32)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes a round in which `node` did not answer; whether it has now been silent long enough
    /// to be marked failed.
    fn silent(&self, node: NodeId, now: Instant, config: &RunnerConfig) -> bool {
        let mut silences = self.lock();
        let (since, rounds) = silences.entry(node).or_insert((now, 0));
        *rounds += 1;
        now.duration_since(*since) >= config.failed_after && *rounds >= SILENT_ROUNDS_MIN
    }
}

/// Runs controller rounds on `inner`'s node until it stops; a round does something only while
/// the node leads the meta group.
pub(crate) async fn run(inner: Weak<Inner>, peers: Arc<dyn Peers>, config: RunnerConfig) {
    let silences = Silences::default();
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if inner.strong_count() == 0 {
            return;
        }
        if let Err(error) = round(&inner, peers.as_ref(), config, &silences).await {
            debug!(%error, "controller round");
        }
    }
}

/// `future`, or an error once `config.call_timeout` has passed.
async fn timed<T>(config: RunnerConfig, future: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(config.call_timeout, future).await.map_err(|_| "timed out".to_owned())
}

/// One round (see the module docs).
async fn round(
    inner: &Weak<Inner>,
    peers: &dyn Peers,
    config: RunnerConfig,
    silences: &Silences,
) -> Result<(), String> {
    let node = inner.upgrade().ok_or("stopped")?;
    let (id, meta) = (node.id, node.meta.clone());
    drop(node);
    let status = timed(config, meta.status()).await?.map_err(|error| error.to_string())?;
    if status.role != Role::Leader {
        silences.lock().clear(); // A new term of office starts afresh.
        return Ok(());
    }
    // Current, not a cached copy: reconcile must not undo a finished move (see `controller`).
    let read = meta.read(ReadConsistency::Linearizable, |meta| meta.table().clone());
    let table: RoutingTable = timed(config, read).await?.map_err(|error| error.to_string())?;
    if table.version() == 0 {
        return Ok(());
    }
    if let Some(change) = meta_change(&table, &status, config.limits.caught_up_entries) {
        info!(?change, "changing the meta group's membership");
        let changed = timed(config, meta.change_membership(change)).await?;
        return changed.map(drop).map_err(|error| error.to_string());
    }
    // Each node's report; of two reports for one shard, the higher term's.
    let mut observed: BTreeMap<ShardId, Observed> = BTreeMap::new();
    let mut held = Holdings::new();
    let now = Instant::now();
    for (&node, entry) in table.nodes() {
        let answer = if node == id {
            timed(config, LocalReplicas(inner.clone()).observe()).await.ok().flatten()
        } else {
            timed(config, peers.observe(node)).await.ok().flatten()
        };
        let Some(report) = answer else {
            // A draining node too: one that never answers again would otherwise slow every
            // round by a call timeout for good (forgotten, it is refused a restart on its data).
            if entry.state != NodeState::Failed && silences.silent(node, now, &config) {
                info!(node = node.0, "marking a silent node failed: its replicas will be re-created elsewhere");
                let failed = TableChange::SetNodeState { id: node, state: NodeState::Failed };
                return propose(&meta, &table, failed).await;
            }
            continue;
        };
        silences.lock().remove(&node);
        if entry.state == NodeState::Failed {
            info!(node = node.0, "a node marked failed answers again: active");
            return propose(&meta, &table, TableChange::SetNodeState { id: node, state: NodeState::Active }).await;
        }
        held.insert(node, report.held);
        for (shard, seen) in report.leading {
            if observed.get(&shard).is_none_or(|other| seen.term > other.term) {
                observed.insert(shard, seen);
            }
        }
    }
    // Table changes: observations freely, and one change conditional on the version (after it
    // the version has moved, and the next round recomputes the rest from the new table).
    let mut conditional_done = false;
    for action in controller::reconcile(&table, &observed, &held, config.limits) {
        debug!(?action, "controller action");
        match action {
            Action::Table(command) => {
                if command.expected_version.is_some() && std::mem::replace(&mut conditional_done, true) {
                    continue;
                }
                let proposed = timed(config, meta.propose(bytes::Bytes::from(command.encode()))).await;
                match proposed {
                    Ok(Ok(Ok(_))) => {}
                    Ok(Ok(Err(refused))) => debug!(?command, %refused, "the table refused a change"),
                    Ok(Err(error)) => return Err(error.to_string()), // No longer the leader, say.
                    Err(error) => return Err(error),
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
                    timed(config, LocalReplicas(inner.clone()).carry_out(shard_action)).await
                } else {
                    timed(config, peers.carry_out(leader, shard_action)).await
                };
                if let Err(error) = done.and_then(|done| done) {
                    debug!(shard = shard.0, %error, "shard action not carried out");
                }
            }
        }
    }
    Ok(())
}

/// The next change of the meta group's own membership, if any (one at a time, as the core takes
/// them): a node of the table that is not a member becomes a learner; a member the table no
/// longer has is removed; a voter on a failed or draining node is replaced by a caught-up learner
/// on an active node (so that the table stays writable when voters go), and stays a learner: a
/// draining node still has replicas to delete, which it does only on a table it reads from the
/// meta group, so it leaves the group only once the table has forgotten it (`controller`
/// forgets a drained node only once it reports holding no replica).
fn meta_change(table: &RoutingTable, status: &raft_net::NodeStatus, caught_up_entries: u64) -> Option<Vec<ConfChange>> {
    let membership = &status.membership;
    if membership.is_joint() {
        return None; // The leader leaves it by itself.
    }
    if let Some(missing) = table.nodes().keys().find(|node| !membership.is_member(**node)) {
        return Some(vec![ConfChange::AddLearner(*missing)]);
    }
    if let Some(gone) = membership.members().into_iter().find(|node| !table.nodes().contains_key(node)) {
        return Some(vec![ConfChange::Remove(gone)]);
    }
    let state = |node: &NodeId| table.nodes().get(node).map(|entry| entry.state);
    let ready = |node: &&NodeId| {
        state(node) == Some(NodeState::Active)
            && status.peers.get(node).is_some_and(|peer| peer.recent_active && peer.lag_entries <= caught_up_entries)
    };
    let replacement = membership.learners.iter().find(ready)?;
    if let Some(leaving) = membership.voters_incoming.iter().find(|node| state(node) != Some(NodeState::Active)) {
        return Some(vec![ConfChange::AddVoter(*replacement), ConfChange::AddLearner(*leaving)]);
    }
    // Fewer voters than it should have (a lost-quorum recovery left one, say): caught-up
    // learners vote, in one change, but only to reach an odd count (two voters need both, and
    // would survive no more failures than one).
    let active = table.nodes().values().filter(|entry| entry.state == NodeState::Active).count();
    let want = active.min(META_VOTERS_MAX);
    let voters = membership.voters_incoming.len();
    if voters >= want || want % 2 == 0 {
        return None;
    }
    let ready: Vec<NodeId> = membership.learners.iter().filter(ready).copied().collect();
    (ready.len() >= want - voters)
        .then(|| ready[..want - voters].iter().map(|node| ConfChange::AddVoter(*node)).collect())
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use raft_core::{Index, Membership, ProgressState, Term};
    use raft_net::{NodeStatus, PeerStatus};

    use super::*;
    use crate::shards::NodeEntry;

    /// A table of nodes `ids` (their states as given) with one shard on the first.
    fn table(nodes: &[(u64, NodeState)]) -> RoutingTable {
        let address = SocketAddr::from(([127, 0, 0, 1], 1));
        let entries = nodes
            .iter()
            .map(|(id, _)| (NodeId(*id), NodeEntry { raft: address, http: address, state: NodeState::Active }));
        let create = TableChange::Create {
            replication: 1,
            nodes: entries.collect(),
            replicas: vec![[NodeId(nodes[0].0)].into()],
        };
        let mut table = RoutingTable::default();
        table.apply(&TableCommand { expected_version: None, change: create }).expect("created");
        for (id, state) in nodes {
            let change = TableChange::SetNodeState { id: NodeId(*id), state: *state };
            table.apply(&TableCommand { expected_version: None, change }).expect("a known node");
        }
        table
    }

    /// The meta leader's status: `membership`, and each learner's lag (all heard from).
    fn status(membership: Membership, lags: &[(u64, u64)]) -> NodeStatus {
        let peer = |lag| PeerStatus {
            match_index: Index(0),
            next_index: Index(1),
            state: ProgressState::Replicate,
            lag_entries: lag,
            recent_active: true,
        };
        NodeStatus {
            id: NodeId(1),
            role: Role::Leader,
            term: Term(1),
            leader: Some(NodeId(1)),
            commit: Index(0),
            applied: Index(0),
            last_index: Index(0),
            peers: lags.iter().map(|(id, lag)| (NodeId(*id), peer(*lag))).collect(),
            committed_membership: membership.clone(),
            membership,
            transfer_target: None,
            reads_pending: 0,
        }
    }

    fn members(voters: &[u64], learners: &[u64]) -> Membership {
        let mut membership = Membership::new(voters.iter().map(|id| NodeId(*id)));
        membership.learners = learners.iter().map(|id| NodeId(*id)).collect();
        membership
    }

    #[test]
    fn the_meta_group_follows_the_table() {
        use NodeState::{Active, Draining, Failed};
        // A node of the table that is not a member joins as a learner.
        let all = table(&[(1, Active), (2, Active), (3, Active), (4, Active)]);
        let change = meta_change(&all, &status(members(&[1, 2, 3], &[]), &[]), 8);
        assert_eq!(change, Some(vec![ConfChange::AddLearner(NodeId(4))]));
        // A member the table no longer has is removed.
        let three = table(&[(1, Active), (2, Active), (3, Active)]);
        let change = meta_change(&three, &status(members(&[1, 2, 3], &[4]), &[]), 8);
        assert_eq!(change, Some(vec![ConfChange::Remove(NodeId(4))]));
        // A voter on a failed or draining node is replaced by a caught-up learner, in one
        // change, and stays a learner (a drained node reads the table until it is forgotten).
        let failed = table(&[(1, Active), (2, Active), (3, Failed), (4, Active)]);
        let change = meta_change(&failed, &status(members(&[1, 2, 3], &[4]), &[(4, 2)]), 8);
        assert_eq!(change, Some(vec![ConfChange::AddVoter(NodeId(4)), ConfChange::AddLearner(NodeId(3))]));
        let drained = table(&[(1, Active), (2, Active), (3, Draining), (4, Active)]);
        let change = meta_change(&drained, &status(members(&[1, 2, 3], &[4]), &[(4, 2)]), 8);
        assert_eq!(change, Some(vec![ConfChange::AddVoter(NodeId(4)), ConfChange::AddLearner(NodeId(3))]));
        // Demoted, it is left alone until the table forgets it.
        assert_eq!(meta_change(&drained, &status(members(&[1, 2, 4], &[3]), &[(3, 2)]), 8), None);
        // ... but not by a learner far behind, nor on a draining node; nothing changes then.
        assert_eq!(meta_change(&failed, &status(members(&[1, 2, 3], &[4]), &[(4, 100)]), 8), None);
        let draining = table(&[(1, Active), (2, Active), (3, Failed), (4, Draining)]);
        assert_eq!(meta_change(&draining, &status(members(&[1, 2, 3], &[4]), &[(4, 0)]), 8), None);
        // Too few voters (one left by a recovery): caught-up learners vote, up to three, but
        // never to an even count.
        let one = table(&[(1, Active), (2, Failed), (3, Active), (4, Active)]);
        let change = meta_change(&one, &status(members(&[1], &[2, 3, 4]), &[(3, 0), (4, 0)]), 8);
        assert_eq!(change, Some(vec![ConfChange::AddVoter(NodeId(3)), ConfChange::AddVoter(NodeId(4))]));
        assert_eq!(meta_change(&one, &status(members(&[1], &[2, 3, 4]), &[(3, 0), (4, 100)]), 8), None);
        let pair = table(&[(1, Active), (2, Failed), (3, Active)]);
        assert_eq!(meta_change(&pair, &status(members(&[1], &[2, 3]), &[(3, 0)]), 8), None, "two voters need both");
        let started_on_two = table(&[(1, Active), (2, Active), (3, Active)]);
        let change = meta_change(&started_on_two, &status(members(&[1, 2], &[3]), &[(3, 0)]), 8);
        assert_eq!(change, Some(vec![ConfChange::AddVoter(NodeId(3))]));
        let three = table(&[(1, Active), (2, Active), (3, Active), (4, Active)]);
        assert_eq!(meta_change(&three, &status(members(&[1, 2, 3], &[4]), &[(4, 0)]), 8), None);
        let two = table(&[(1, Active), (2, Active)]);
        assert_eq!(meta_change(&two, &status(members(&[1, 2], &[]), &[]), 8), None);
        // Nothing while a joint configuration is being left.
        let mut joint = members(&[1, 2, 4], &[]);
        joint.voters_outgoing = [1, 2, 3].map(NodeId).into();
        assert_eq!(meta_change(&failed, &status(joint, &[]), 8), None);
    }

    #[test]
    fn a_node_is_marked_failed_only_after_long_and_repeated_silence() {
        let config = RunnerConfig { failed_after: Duration::from_secs(10), ..RunnerConfig::default() };
        let silences = Silences::default();
        let start = Instant::now();
        let node = NodeId(2);
        assert!(!silences.silent(node, start, &config));
        assert!(!silences.silent(node, start + Duration::from_secs(11), &config), "two rounds are not enough");
        assert!(silences.silent(node, start + Duration::from_secs(12), &config), "long enough, three rounds");
        silences.lock().remove(&node); // It answered.
        assert!(!silences.silent(node, start + Duration::from_secs(13), &config), "the count starts over");
        assert!(!silences.silent(node, start + Duration::from_secs(14), &config));
        assert!(!silences.silent(node, start + Duration::from_secs(15), &config), "three rounds, but 2 s");
    }
}
