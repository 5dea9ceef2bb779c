//! The membership as the cluster says it is. A membership request whose outcome is unknown (the
//! leadership changed, the answer timed out) may or may not have been applied, and one that
//! failed may have been retried by the server: the suite must not guess. It reads the
//! membership from the leader once the leader has committed it, and takes that as its view of
//! the members (which the faults target, the clients talk to, and the final checks expect to
//! converge).

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::Run;
use super::cluster::Cluster;
use super::faults::note;

/// How long reading a committed membership may take (a leader must be elected and commit).
pub const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the leader is given between its two status answers to commit what it has.
pub const SETTLE_PAUSE: Duration = Duration::from_millis(150);

/// Voters and learners, each in id order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// The voters.
    pub voters: Vec<u64>,
    /// The learners.
    pub learners: Vec<u64>,
}

impl Membership {
    /// Voters and learners, in id order.
    pub fn members(&self) -> Vec<u64> {
        let mut members: Vec<u64> = self.voters.iter().chain(&self.learners).copied().collect();
        members.sort_unstable();
        members.dedup();
        members
    }

    /// Whether `id` is a voter or a learner.
    pub fn has(&self, id: u64) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }
}

/// What became of a removal whose answer did not say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemovalOutcome {
    /// The node is no longer a member: the replacement goes on.
    Applied,
    /// The node is still a member: the replacement is rolled back.
    NotApplied,
    /// The membership could not be read: the suite keeps its view.
    Unknown,
}

/// What became of the removal of node `id`, given the committed membership (if one was read).
pub fn removal_outcome(id: u64, membership: Option<&Membership>) -> RemovalOutcome {
    match membership {
        Some(membership) if membership.has(id) => RemovalOutcome::NotApplied,
        Some(_) => RemovalOutcome::Applied,
        None => RemovalOutcome::Unknown,
    }
}

/// The ids in `status[field]`, if it is a list of ids.
fn ids(status: &Value, field: &str) -> Option<Vec<u64>> {
    status[field].as_array()?.iter().map(Value::as_u64).collect()
}

/// The membership that `first`, a leader's status, shows, if `second`, a later status of the
/// same node, proves it committed: still the leader of the same term, the same membership, no
/// change half done (no outgoing voters), and a commit index that reached `first`'s last log
/// index (so every membership entry `first` knew of is committed, and no later leader can
/// undo it).
pub fn settled(first: &Value, second: &Value) -> Option<Membership> {
    let leader = |status: &Value| status["role"] == "leader";
    if !leader(first) || !leader(second) || first["id"] != second["id"] || first["term"] != second["term"] {
        return None;
    }
    if !ids(first, "voters_outgoing")?.is_empty() || !ids(second, "voters_outgoing")?.is_empty() {
        return None;
    }
    let membership = Membership { voters: ids(first, "voters")?, learners: ids(first, "learners")? };
    let same = ids(second, "voters")? == membership.voters && ids(second, "learners")? == membership.learners;
    let committed = second["commit"].as_u64()? >= first["last_index"].as_u64()?;
    (same && committed && !membership.voters.is_empty()).then_some(membership)
}

/// The committed membership, read from whichever running node leads (a member or not in the
/// suite's view), retried until `patience` ends.
pub async fn read(cluster: &Cluster, patience: Duration) -> Option<Membership> {
    let start = Instant::now();
    let nodes: Vec<u64> = cluster.nodes.keys().copied().collect();
    while start.elapsed() < patience {
        if let Some((leader, _, first)) = cluster.leader_among(&nodes).await {
            tokio::time::sleep(SETTLE_PAUSE).await;
            if let Some(second) = cluster.status(leader).await
                && let Some(membership) = settled(&first, &second)
            {
                return Some(membership);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Reads the committed membership and makes its members the suite's (the clients' targets
/// follow), saying what changed; `context` says why. Keeps the suite's view when it cannot read
/// one.
pub async fn sync(run: &mut Run, context: &str) -> Option<Membership> {
    let Some(membership) = read(&run.cluster, MEMBERSHIP_TIMEOUT).await else {
        let (seconds, members) = (MEMBERSHIP_TIMEOUT.as_secs(), run.cluster.members.clone());
        note(run, &format!("{context}: no committed membership read within {seconds} s; members stay {members:?}"));
        return None;
    };
    let (known, strangers): (Vec<u64>, Vec<u64>) =
        membership.members().into_iter().partition(|id| run.cluster.nodes.contains_key(id));
    if !strangers.is_empty() {
        note(run, &format!("{context}: the membership holds nodes the suite never started: {strangers:?}"));
    }
    let mut before = run.cluster.members.clone();
    before.sort_unstable();
    if before != known {
        note(
            run,
            &format!(
                "{context}: the cluster says the members are {known:?} (voters {:?}), not {before:?}",
                membership.voters
            ),
        );
        run.cluster.members = known;
        run.refresh_targets();
    }
    Some(membership)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn status(
        role: &str,
        term: u64,
        voters: &[u64],
        outgoing: &[u64],
        learners: &[u64],
        commit: u64,
        last: u64,
    ) -> Value {
        json!({ "id": 2, "role": role, "term": term, "voters": voters, "voters_outgoing": outgoing,
                "learners": learners, "commit": commit, "applied": commit, "last_index": last })
    }

    /// A membership counts once the same leader, in the same term, has committed everything its
    /// first answer had in its log, and no change is half done.
    #[test]
    fn a_membership_is_settled_once_the_leader_committed_it() {
        let first = status("leader", 5, &[2, 3], &[], &[4], 40, 42);
        let membership = Membership { voters: vec![2, 3], learners: vec![4] };
        assert_eq!(settled(&first, &status("leader", 5, &[2, 3], &[], &[4], 42, 45)), Some(membership.clone()));
        assert_eq!(membership.members(), [2, 3, 4]);
        // Not yet committed.
        assert_eq!(settled(&first, &status("leader", 5, &[2, 3], &[], &[4], 41, 45)), None);
        // Another term, or no longer the leader: its log may have been cut.
        assert_eq!(settled(&first, &status("leader", 6, &[2, 3], &[], &[4], 50, 50)), None);
        assert_eq!(settled(&first, &status("follower", 5, &[2, 3], &[], &[4], 50, 50)), None);
        // A joint membership (a removal half done), or one that changed in between.
        let joint = status("leader", 5, &[2, 3], &[1, 2, 3], &[], 42, 42);
        assert_eq!(settled(&joint, &joint), None);
        assert_eq!(settled(&first, &status("leader", 5, &[2, 3, 4], &[], &[], 42, 45)), None);
        // Not a status at all.
        assert_eq!(settled(&json!(null), &first), None);
    }

    /// A removal of unknown outcome goes on when the node is gone, is rolled back when it is
    /// still a voter or a learner, and leaves the suite's view alone when nothing was read.
    #[test]
    fn a_removal_of_unknown_outcome_follows_the_membership() {
        let gone = Membership { voters: vec![2, 3], learners: vec![] };
        let kept = Membership { voters: vec![1, 2, 3], learners: vec![] };
        let learner = Membership { voters: vec![2, 3], learners: vec![1] };
        assert_eq!(removal_outcome(1, Some(&gone)), RemovalOutcome::Applied);
        assert_eq!(removal_outcome(1, Some(&kept)), RemovalOutcome::NotApplied);
        assert_eq!(removal_outcome(1, Some(&learner)), RemovalOutcome::NotApplied);
        assert_eq!(removal_outcome(1, None), RemovalOutcome::Unknown);
    }
}
