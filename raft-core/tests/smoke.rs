//! End-to-end smoke tests of the scripted network: elect, replicate, fail over.

mod common;

use common::Cluster;
use raft_core::{Index, Role, Term};

#[test]
fn three_nodes_elect_replicate_and_apply() {
    let mut c = Cluster::new(3);
    c.elect(1);
    assert_eq!(c.node(1).term(), Term(1));
    assert_eq!(c.node(2).leader(), Some(raft_core::NodeId(1)));
    let index = c.propose(1, b"hello").expect("leader accepts");
    assert_eq!(index, Index(2)); // after the leader's no-op
    c.ticks(2);
    for id in 1..=3 {
        assert_eq!(c.node(id).commit_index(), Index(2), "node {id}");
        assert_eq!(c.applied_data(id), vec![bytes::Bytes::from_static(b"hello")]);
        assert_eq!(c.log_of(id), vec![(1, 1), (2, 1)]);
    }
}

#[test]
fn a_leader_emerges_by_ticking_alone_and_survives_a_crash() {
    let mut c = Cluster::new(5);
    c.ticks(40);
    let first = c.leader().expect("a leader after 40 ticks");
    c.propose(first, b"a").expect("leader accepts");
    c.crash(first);
    c.ticks(60);
    let second = c.leader().expect("a new leader");
    assert_ne!(first, second);
    c.propose(second, b"b").expect("leader accepts");
    c.ticks(3);
    c.restart(first);
    c.ticks(10);
    for id in 1..=5 {
        assert_eq!(c.node(id).role() == Role::Leader, id == second);
        assert_eq!(c.applied_data(id), vec![bytes::Bytes::from_static(b"a"), bytes::Bytes::from_static(b"b")]);
    }
}
