//! Time: the clock judges every promise about time (a leader's lease, a follower's stickiness to
//! its leader); the timers only decide when to act. A driver that stalled or was paused brings
//! the clock up to date before it hands over what arrived meanwhile, and may run the timers late
//! (docs/pitfalls.md #29: a paused leader must not serve lease reads from a lease that ran out).

mod common;

use common::{Cluster, cluster_tuned, message};
use raft_core::{Index, MessageBody, NodeId, ReadMode, ReadState, Role, StepError, Term};

/// Three nodes with lease reads (election 10 ticks, drift bound 2), led by node 1 in term 1, its
/// no-op committed and a quorum's answers fresh.
fn lease_cluster() -> Cluster {
    let mut c = cluster_tuned(3, |b| b.lease_reads(true).clock_drift_max_ticks(2));
    c.elect(1);
    c.ticks(2);
    c.reads.values_mut().for_each(Vec::clear);
    c
}

fn reads_of(c: &mut Cluster, id: u64) -> Vec<ReadState> {
    std::mem::take(c.reads.get_mut(&NodeId(id)).expect("known node"))
}

fn vote_request(from: u64, to: u64, term: u64) -> raft_core::Message {
    let body =
        MessageBody::VoteRequest { pre_vote: false, last_log_index: Index(1), last_log_term: Term(1), transfer: false };
    message(from, to, term, body)
}

/// A leader paused past its lease: when it resumes, its driver advances the clock before it
/// hands over the read that was queued during the pause. The lease no longer holds, although
/// the timers have not run (so check-quorum has not stepped it down): the read waits for a
/// heartbeat round like a ReadIndex read, and is not served from the lease.
#[test]
fn a_leader_whose_clock_caught_up_after_a_pause_serves_no_lease_read_at_once() {
    let mut c = lease_cluster();
    // Without the clock, the lease looks as fresh as before the pause: this is what a driver
    // that handed over queued reads before the missed time served (stale).
    c.node_mut(1).read(1, ReadMode::Lease).expect("taken");
    c.process(NodeId(1));
    assert_eq!(reads_of(&mut c, 1), vec![ReadState { id: 1, result: Ok(Index(1)) }]);

    c.isolate(1);
    c.node_mut(1).advance_clock(30);
    assert_eq!(c.node(1).role(), Role::Leader, "the timers did not run: no step-down yet");
    c.node_mut(1).read(2, ReadMode::Lease).expect("taken");
    c.process(NodeId(1));
    c.deliver_all();
    assert_eq!(reads_of(&mut c, 1), vec![], "an expired lease serves nothing");
}

/// The lease ends by the clock alone: `election_ticks - clock_drift_max_ticks` (8) ticks after
/// the round a quorum answered, whether or not the timers ran.
#[test]
fn the_lease_ends_by_the_clock_at_its_last_tick() {
    let mut c = lease_cluster();
    c.isolate(1);
    // The last answered round went out at the current tick (the last tick of lease_cluster).
    c.node_mut(1).advance_clock(7);
    c.node_mut(1).read(1, ReadMode::Lease).expect("taken");
    c.process(NodeId(1));
    assert_eq!(reads_of(&mut c, 1), vec![ReadState { id: 1, result: Ok(Index(1)) }], "7 ticks later: it holds");
    c.node_mut(1).advance_clock(1);
    c.node_mut(1).read(2, ReadMode::Lease).expect("taken");
    c.process(NodeId(1));
    assert_eq!(reads_of(&mut c, 1), vec![], "8 ticks later: it is over");
}

/// A follower's timers ran ahead of its clock (a driver that caught up missed ticks after it
/// handled a heartbeat that arrived late): it still owes its leader `election_ticks` of
/// stickiness by the clock, so it neither campaigns nor votes for another node. Without this,
/// it would vote (for itself or another) inside the lease its leader serves reads under.
#[test]
fn a_follower_whose_timers_ran_ahead_of_its_clock_keeps_its_promise_to_the_leader() {
    let mut c = lease_cluster();
    c.isolate(2);
    for _ in 0..40 {
        c.node_mut(2).tick_timers();
    }
    c.process(NodeId(2));
    assert_eq!(c.node(2).role(), Role::Follower, "no campaign inside the lease");
    assert_eq!(c.node(2).term(), Term(1));
    let refused = c.node_mut(2).step(vote_request(3, 2, 2));
    assert_eq!(refused, Err(StepError::Ignored(raft_core::Ignored::LeaderSticky { leader: Some(NodeId(1)) })));

    // Once the clock says the promise is over, the next timer tick campaigns.
    c.node_mut(2).advance_clock(10);
    c.node_mut(2).tick_timers();
    assert_eq!(c.node(2).role(), Role::PreCandidate, "it campaigns (pre-vote is on by default)");
}

/// Stickiness ends by the clock too: a follower whose clock advanced past `election_ticks` since
/// it heard its leader considers a vote request, although its timers did not run.
#[test]
fn a_follower_whose_clock_ran_past_the_lease_considers_votes_without_timer_ticks() {
    let mut c = lease_cluster();
    c.isolate(2);
    c.node_mut(2).advance_clock(9);
    let refused = c.node_mut(2).step(vote_request(3, 2, 2));
    assert_eq!(
        refused,
        Err(StepError::Ignored(raft_core::Ignored::LeaderSticky { leader: Some(NodeId(1)) })),
        "9 ticks: still sticky"
    );
    c.node_mut(2).advance_clock(1);
    assert_eq!(c.node_mut(2).step(vote_request(3, 2, 2)), Ok(()));
    assert_eq!(c.node(2).term(), Term(2));
}
