//! `Raft::ticks_until_due`: how long a driver that hosts many groups may leave a group unticked.
//! Sound (the ticks before it do nothing, in random clusters) and tight where the next event is
//! known (the tick it names starts the campaign, the heartbeat round, the read's expiry).

mod common;

use common::{Cluster, cluster_tuned};
use raft_core::{MessageBody, NodeId, Raft, ReadError, ReadMode, Role};
use raft_storage::MemStorage;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// Ticks `id` alone `n` times, asserting that each tick does nothing: no output at all, and the
/// same status (role, term, vote, leader, commit, progress, transfer).
fn quiet_ticks(c: &mut Cluster, id: u64, n: u64) {
    let node = c.node_mut(id);
    let before = node.status();
    for tick in 1..=n {
        node.tick();
        let output = node.take_output().expect("memory storage");
        assert!(output.is_empty(), "node {id}: tick {tick} of {n} before the due one did something: {output:?}");
        assert_eq!(node.status(), before, "node {id}: tick {tick} of {n} before the due one changed the state");
    }
}

/// Ticks `id` once and returns the messages it sent.
fn one_tick(node: &mut Raft<MemStorage>) -> Vec<MessageBody> {
    node.tick();
    let output = node.take_output().expect("memory storage");
    output.messages.into_iter().chain(output.messages_after_persist).map(|m| m.body).collect()
}

fn is_vote_request(body: &MessageBody) -> bool {
    matches!(body, MessageBody::VoteRequest { .. })
}

/// A follower that never heard from a leader campaigns exactly when its drawn timeout passes.
#[test]
fn a_fresh_follower_campaigns_on_the_tick_it_names() {
    let mut c = Cluster::new(3);
    let due = c.node(2).ticks_until_due();
    assert_eq!(due, u64::from(c.node(2).randomized_election_ticks()), "the whole timeout is ahead");
    quiet_ticks(&mut c, 2, due - 1);
    let sent = one_tick(c.node_mut(2));
    assert_eq!(c.node(2).role(), Role::PreCandidate);
    assert!(sent.iter().any(is_vote_request), "the due tick asked for pre-votes: {sent:?}");
}

/// A follower cut off from its leader: the campaign starts on the named tick, not before.
#[test]
fn a_follower_of_a_lost_leader_campaigns_on_the_tick_it_names() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(1);
    let due = c.node(2).ticks_until_due();
    assert!(due >= 10, "stickiness to the leader lasts an election timeout: {due}");
    quiet_ticks(&mut c, 2, due - 1);
    let sent = one_tick(c.node_mut(2));
    assert_eq!(c.node(2).role(), Role::PreCandidate, "the due tick started the campaign");
    assert!(sent.iter().any(is_vote_request));
}

/// Timers that ran ahead of the clock (a driver catching up after a stall runs them late, or a
/// scheduler that ran them without the clock): the timeout has passed, but the follower still
/// owes its leader stickiness by the clock. The due tick is the one at which that lapses.
#[test]
fn a_timed_out_follower_within_its_lease_waits_for_the_clock() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(1);
    let timeout = c.node(2).randomized_election_ticks();
    for _ in 0..timeout {
        c.node_mut(2).tick_timers();
    }
    assert_eq!(c.node(2).role(), Role::Follower, "the clock still says the leader's lease holds");
    let _ = c.node_mut(2).take_output();
    let due = c.node(2).ticks_until_due();
    assert_eq!(due, 10, "the whole election timeout by the clock remains");
    quiet_ticks(&mut c, 2, due - 1);
    one_tick(c.node_mut(2));
    assert_eq!(c.node(2).role(), Role::PreCandidate);
}

/// A leader with a heartbeat interval of three ticks: the third tick after a round sends the
/// next one.
#[test]
fn a_leader_sends_its_heartbeats_on_the_tick_it_names() {
    let mut c = cluster_tuned(3, |b| b.heartbeat_ticks(3));
    c.elect(1);
    // Run to a heartbeat round, then check the count from there.
    let mut rounds = 0;
    while rounds == 0 {
        let sent = one_tick(c.node_mut(1));
        rounds = sent.iter().filter(|b| matches!(b, MessageBody::Heartbeat { .. })).count();
    }
    let due = c.node(1).ticks_until_due();
    assert_eq!(due, 3, "a full heartbeat interval ahead");
    quiet_ticks(&mut c, 1, due - 1);
    let sent = one_tick(c.node_mut(1));
    assert!(sent.iter().any(|b| matches!(b, MessageBody::Heartbeat { .. })), "the due tick sent heartbeats: {sent:?}");
}

/// A leader whose transfer to an unreachable node is under way: the tick that abandons the
/// transfer (an election timeout after it began) is the due one, although it sends nothing.
#[test]
fn a_leader_abandons_a_transfer_on_the_tick_it_names() {
    let mut c = cluster_tuned(3, |b| b.heartbeat_ticks(9));
    c.elect(1);
    c.isolate(3);
    c.tick_node(1, 5);
    c.node_mut(1).transfer_leadership(NodeId(3)).expect("a voter");
    c.deliver_all();
    // Four ticks to the heartbeat round, one more to the check of the quorum (node 2 answers).
    c.tick_node(1, 5);
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(c.node(1).status().transfer_target, Some(NodeId(3)));
    let due = c.node(1).ticks_until_due();
    assert_eq!(due, 5, "the transfer has five of its ten ticks left; the next round is eight away");
    quiet_ticks(&mut c, 1, due - 1);
    c.node_mut(1).tick();
    assert_eq!(c.node(1).status().transfer_target, None, "the due tick abandoned the transfer");
}

/// A learner never campaigns: no tick is ever due for it.
#[test]
fn nothing_is_ever_due_for_a_learner() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.add_node(4);
    assert_eq!(c.node(4).ticks_until_due(), u64::MAX);
    quiet_ticks(&mut c, 4, 100);
}

/// A read a follower forwarded to a leader that does not answer fails on the tick it names,
/// before the follower's own election timeout.
#[test]
fn a_forwarded_read_expires_on_the_tick_it_names() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(1);
    c.node_mut(2).read(7, ReadMode::ReadIndex).expect("taken: the leader is known");
    let _ = c.node_mut(2).take_output();
    let due = c.node(2).ticks_until_due();
    assert_eq!(due, 10, "an election timeout by the clock");
    quiet_ticks(&mut c, 2, due - 1);
    c.node_mut(2).tick();
    let output = c.node_mut(2).take_output().expect("memory storage");
    assert_eq!(output.reads.len(), 1, "the due tick failed the read");
    assert_eq!(output.reads[0].id, 7);
    assert_eq!(output.reads[0].result, Err(ReadError::TimedOut));
}

/// Random clusters: at random moments a random node is ticked alone for one less than its due
/// count, and none of those ticks may do anything.
#[test]
fn no_tick_before_the_due_one_does_anything_in_random_clusters() {
    let mut checked = 0u64;
    for seed in 0..150u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let lease = seed % 2 == 0;
        let mut c = cluster_tuned(3 + 2 * (seed % 2), |b| {
            b.heartbeat_ticks(1 + (seed % 3) as u32).lease_reads(lease).clock_drift_max_ticks(2)
        });
        let n = c.nodes.len() as u64;
        let mut read_id = 0;
        for _ in 0..120 {
            let node = 1 + rng.next_u64() % n;
            match rng.next_u64() % 10 {
                0..=3 => c.tick_all(),
                4 => {
                    if let Some(leader) = c.leader() {
                        let _ = c.propose(leader, b"x");
                        c.deliver_all();
                    }
                }
                5 => {
                    read_id += 1;
                    let mode = if lease { ReadMode::Lease } else { ReadMode::ReadIndex };
                    let _ = c.node_mut(node).read(read_id, mode);
                    c.process(NodeId(node));
                }
                6 if rng.next_u64() % 2 == 0 => c.isolate(node),
                6 => {
                    if let Some(leader) = c.leader() {
                        let _ = c.node_mut(leader).transfer_leadership(NodeId(node));
                        c.process(NodeId(leader));
                    }
                }
                7 => c.heal(),
                8 => {
                    for _ in 0..rng.next_u64() % 5 {
                        c.node_mut(node).tick_timers();
                    }
                    c.process(NodeId(node));
                }
                _ => {
                    c.process_all();
                    let _ = c.deliver_one();
                }
            }
            c.process(NodeId(node));
            let due = c.node(node).ticks_until_due();
            assert!(due >= 1);
            let quiet = due.saturating_sub(1).min(40);
            quiet_ticks(&mut c, node, quiet);
            checked += quiet;
        }
    }
    assert!(checked > 10_000, "the test ticked enough quiet ticks to mean something: {checked}");
}

/// At the largest term no campaign can start (it would need a term of its own): nothing is due.
#[test]
fn nothing_is_due_at_the_largest_term() {
    let ids = common::ids(3);
    let options = common::options(NodeId(2), true, true);
    let mut node = common::node_with_log(NodeId(2), &ids, &[1], u64::MAX, options);
    assert_eq!(node.ticks_until_due(), u64::MAX);
    for _ in 0..30 {
        node.tick();
        assert!(node.take_output().expect("memory storage").is_empty());
    }
}
