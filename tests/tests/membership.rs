//! Membership changes and leadership transfers through the node handle, over the in-memory
//! network: a learner joins, catches up and is promoted; a voter is removed; leadership moves to
//! a chosen node, and the old leader then points proposals at it.

use raft_core::{ConfChange, Membership, MembershipError, NodeId, Role, TransferError};
use raft_net::{MembershipChangeError, NodeEvent, ProposeError, TransferLeadershipError};
use raft_storage::MemStorage;
use raft_testkit::{
    Cluster, ClusterBuilder, Kv, Member, PATIENCE, change_membership, eventually, membership, propose, set,
    settled_leader,
};
use tokio::time::Instant;

/// Three voters over the in-memory network and stores.
async fn mem_cluster() -> Cluster<Kv> {
    raft_testkit::init_tracing(); // RUST_LOG shows the crates' logs (for failing tests).
    ClusterBuilder::new(3).start(|_| Kv::default()).await.expect("the cluster starts")
}

fn member(members: &[Member<Kv>], id: NodeId) -> &Member<Kv> {
    members.iter().find(|m| m.id == id).expect("a member")
}

async fn write_some(members: &[Member<Kv>], keys: std::ops::Range<usize>) {
    let handles: Vec<_> = members.iter().map(|m| m.handle.clone()).collect();
    let ids: Vec<_> = members.iter().map(|m| m.id).collect();
    for key in keys {
        propose(&handles, &ids, 0, set(&format!("key{key}"), "value")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_joins_catches_up_is_promoted_and_a_voter_is_removed() {
    let mut cluster = mem_cluster().await;
    let leader_id = settled_leader(&cluster.running()).await;
    write_some(cluster.members(), 0..20).await;

    // A new node with no membership: it waits for the leader.
    let new = cluster.start_node(NodeId(4), MemStorage::new(Membership::default())).await.expect("node 4 starts");
    let mut new_events = new.handle.events();
    let members = cluster.members();
    let leader = member(members, leader_id);
    let follower = members.iter().find(|m| m.id != leader_id && m.id != NodeId(4)).expect("a follower");

    // Only the leader changes the membership; a change with no effect is refused.
    let refused = follower.handle.change_membership(vec![ConfChange::AddLearner(NodeId(4))]).await;
    assert!(
        matches!(refused, Err(MembershipChangeError::Refused { reason: MembershipError::NotLeader { leader: Some(id) }, .. }) if id == leader_id),
        "{refused:?}"
    );
    assert_eq!(refused.expect_err("refused").leader_hint().map(|(leader, _)| leader), Some(leader_id));
    let refused = leader.handle.change_membership(vec![ConfChange::Remove(NodeId(99))]).await;
    assert!(
        matches!(refused, Err(MembershipChangeError::Refused { reason: MembershipError::NoEffect(NodeId(99)), .. })),
        "{refused:?}"
    );

    let joined = change_membership(&leader.handle, vec![ConfChange::AddLearner(NodeId(4))]).await;
    assert!(joined.learners.contains(&NodeId(4)) && !joined.is_joint(), "{joined:?}");
    let new = member(members, NodeId(4));
    let commit = leader.handle.status().await.expect("runs").commit;
    // Membership entries do not reach the state machine: compare the node's applied index.
    eventually("the learner catches up", || async {
        new.handle.status().await.is_ok_and(|status| status.applied >= commit)
    })
    .await;
    assert_eq!(new.view.map(), leader.view.map());
    let learner_status = new.handle.status().await.expect("runs");
    assert_eq!(learner_status.membership, joined);

    let promoted = change_membership(&leader.handle, vec![ConfChange::AddVoter(NodeId(4))]).await;
    assert_eq!(promoted, membership(&[1, 2, 3, 4]));
    let leader_status = leader.handle.status().await.expect("runs");
    assert!(!leader_status.membership.is_joint());
    // The new node saw its membership change (at least to the final one).
    eventually("the new node reports the promotion", || {
        let event = new_events.try_recv();
        async move { matches!(event, Ok(NodeEvent::MembershipChanged(m)) if m == membership(&[1, 2, 3, 4])) }
    })
    .await;

    let removed_id = follower.id;
    let after = change_membership(&leader.handle, vec![ConfChange::Remove(removed_id)]).await;
    assert!(!after.is_member(removed_id) && after.voters_incoming.len() == 3, "{after:?}");
    cluster.stop(removed_id).await.expect("the removed node runs");
    write_some(cluster.members(), 20..30).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_to_the_chosen_node_and_the_old_leader_redirects_proposals() {
    let cluster = mem_cluster().await;
    let members = cluster.members();
    let all = cluster.running();
    let old_id = settled_leader(&all).await;
    write_some(members, 0..5).await;
    let old = member(members, old_id);
    let target = members.iter().find(|m| m.id != old_id).expect("a follower").id;

    let refused = member(members, target).handle.transfer_leadership(old_id).await;
    assert!(
        matches!(refused, Err(TransferLeadershipError::Refused { reason: TransferError::NotLeader { .. }, .. })),
        "{refused:?}"
    );
    let refused = old.handle.transfer_leadership(NodeId(99)).await;
    assert!(
        matches!(refused, Err(TransferLeadershipError::Refused { reason: TransferError::NotAVoter(NodeId(99)), .. })),
        "{refused:?}"
    );

    // A transfer can time out on a busy machine: try again until the target leads.
    let deadline = Instant::now() + PATIENCE;
    while let Err(error) = old.handle.transfer_leadership(target).await {
        assert!(Instant::now() < deadline, "the transfer never completed: {error}");
        if error.leader_hint().is_some_and(|(leader, _)| leader == target) {
            break;
        }
    }
    let status = member(members, target).handle.status().await.expect("runs");
    assert_eq!(status.role, Role::Leader);

    let redirected = old.handle.propose(set("after", "transfer")).await;
    assert!(
        matches!(redirected, Err(ref error) if error.leader_hint().is_some_and(|(leader, _)| leader == target)),
        "{redirected:?}"
    );
    write_some(members, 5..10).await;
    for member in members {
        member.handle.shutdown().await;
    }
}

/// A leader hands no new entries out while it transfers leadership, and says so: the proposal
/// comes back as the core's `TransferInProgress` refusal, not as the driver's `TooBusy` (its own
/// queue full), which it once collapsed into.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_during_a_transfer_is_refused_as_such_not_as_too_busy() {
    let cluster = mem_cluster().await;
    let members = cluster.members();
    let all = cluster.running();
    let leader_id = settled_leader(&all).await;
    let leader = member(members, leader_id);
    let target = members.iter().find(|m| m.id != leader_id).expect("a follower").id;
    // The target never hears `TimeoutNow`: the transfer stays in progress until the core
    // abandons it an election timeout later, and the leader keeps its quorum meanwhile.
    cluster.network().isolate(target);

    let deadline = Instant::now() + PATIENCE;
    let mut transfer = None;
    let refused = loop {
        assert!(Instant::now() < deadline, "no proposal met the transfer");
        if transfer.as_ref().is_none_or(tokio::task::JoinHandle::is_finished) {
            // The previous transfer was abandoned (or has not started): start another.
            let handle = leader.handle.clone();
            transfer = Some(tokio::spawn(async move { handle.transfer_leadership(target).await }));
        }
        match leader.handle.propose(set("during", "transfer")).await {
            // Proposed before the transfer started.
            Ok(_) => continue,
            Err(error) => break error,
        }
    };
    assert!(
        matches!(
            refused,
            ProposeError::Refused { reason: raft_core::ProposeError::TransferInProgress, leader_address: None }
        ),
        "a proposal during a transfer: {refused:?}"
    );
    assert_eq!(refused.leader_hint(), None);

    let transfer = transfer.expect("started").await.expect("the transfer task ends");
    assert!(matches!(transfer, Err(TransferLeadershipError::TimedOut)), "{transfer:?}");
    cluster.network().heal(target);
    write_some(members, 0..5).await;
    for member in members {
        member.handle.shutdown().await;
    }
}
