//! The in-memory network: delivery, partitions, crashes, and the bounded inbound queue. Nothing
//! here needs a runtime: sends are synchronous and `try_recv` reads what arrived.

mod common;

use std::num::NonZeroUsize;

use common::message;
use raft_core::{GroupId, Message, NodeId};
use raft_net::{JoinError, MemNetwork, SendError, Transport};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

fn drain(inbox: &mut mpsc::Receiver<Message>) -> Vec<u64> {
    std::iter::from_fn(|| inbox.try_recv().ok()).map(|message| message.term.0).collect()
}

#[test]
fn delivers_in_send_order_to_the_addressee_only() {
    let network = MemNetwork::default();
    let (one, mut inbox_one) = network.join(NodeId(1)).expect("join 1");
    let (two, mut inbox_two) = network.join(NodeId(2)).expect("join 2");
    let (_three, mut inbox_three) = network.join(NodeId(3)).expect("join 3");
    for term in 1..=5 {
        one.send(message(1, 2, term)).expect("send 1 -> 2");
    }
    two.send(message(2, 1, 9)).expect("send 2 -> 1");
    assert_eq!(drain(&mut inbox_two), [1, 2, 3, 4, 5]);
    assert_eq!(drain(&mut inbox_one), [9]);
    assert_eq!(inbox_three.try_recv(), Err(TryRecvError::Empty));
    assert_eq!(one.local_id(), NodeId(1));
}

#[test]
fn refuses_unknown_peers_and_foreign_senders() {
    let network = MemNetwork::default();
    let (one, _inbox) = network.join(NodeId(1)).expect("join 1");
    assert_eq!(one.send(message(1, 7, 1)), Err(SendError::UnknownPeer(NodeId(7))));
    assert_eq!(one.send(message(2, 1, 1)), Err(SendError::ForeignSender(NodeId(2))));
    assert_eq!(network.join(NodeId(1)).map(|_| ()), Err(JoinError::AlreadyJoined(NodeId(1))));
}

#[test]
fn disconnect_drops_both_ways_and_reconnect_restores() {
    let network = MemNetwork::default();
    let (one, mut inbox_one) = network.join(NodeId(1)).expect("join 1");
    let (two, mut inbox_two) = network.join(NodeId(2)).expect("join 2");
    network.disconnect(NodeId(1), NodeId(2));
    assert_eq!(one.send(message(1, 2, 1)), Err(SendError::Unreachable(NodeId(2))));
    assert_eq!(two.send(message(2, 1, 2)), Err(SendError::Unreachable(NodeId(1))));
    network.reconnect(NodeId(2), NodeId(1));
    one.send(message(1, 2, 3)).expect("send after reconnect");
    two.send(message(2, 1, 4)).expect("send after reconnect");
    assert_eq!(drain(&mut inbox_two), [3]);
    assert_eq!(drain(&mut inbox_one), [4]);

    network.disconnect_one_way(NodeId(1), NodeId(2));
    assert_eq!(one.send(message(1, 2, 5)), Err(SendError::Unreachable(NodeId(2))));
    two.send(message(2, 1, 6)).expect("the other direction still works");
    assert_eq!(drain(&mut inbox_one), [6]);
    assert!(!network.is_link_up(NodeId(1), NodeId(2)));
    assert!(network.is_link_up(NodeId(2), NodeId(1)));
}

#[test]
fn isolate_cuts_every_link_and_heal_restores() {
    let network = MemNetwork::default();
    let (one, mut inbox_one) = network.join(NodeId(1)).expect("join 1");
    let (two, _inbox_two) = network.join(NodeId(2)).expect("join 2");
    let (three, mut inbox_three) = network.join(NodeId(3)).expect("join 3");
    network.isolate(NodeId(2));
    assert_eq!(one.send(message(1, 2, 1)), Err(SendError::Unreachable(NodeId(2))));
    assert_eq!(two.send(message(2, 3, 2)), Err(SendError::Unreachable(NodeId(3))));
    one.send(message(1, 3, 3)).expect("1 and 3 are not isolated");
    three.send(message(3, 1, 4)).expect("1 and 3 are not isolated");
    network.heal(NodeId(2));
    two.send(message(2, 3, 5)).expect("healed");
    assert_eq!(drain(&mut inbox_three), [3, 5]);
    assert_eq!(drain(&mut inbox_one), [4]);

    network.isolate(NodeId(1));
    network.disconnect(NodeId(2), NodeId(3));
    network.heal_all();
    one.send(message(1, 2, 6)).expect("healed");
    two.send(message(2, 3, 7)).expect("healed");
}

#[test]
fn a_full_inbound_queue_fails_the_send() {
    let network = MemNetwork::new(NonZeroUsize::new(2).expect("2 is not zero"));
    let (one, _inbox_one) = network.join(NodeId(1)).expect("join 1");
    let (_two, mut inbox_two) = network.join(NodeId(2)).expect("join 2");
    one.send(message(1, 2, 1)).expect("room for 2");
    one.send(message(1, 2, 2)).expect("room for 2");
    assert_eq!(one.send(message(1, 2, 3)), Err(SendError::QueueFull(NodeId(2))));
    assert_eq!(drain(&mut inbox_two), [1, 2]);
    one.send(message(1, 2, 4)).expect("room again");
    assert_eq!(drain(&mut inbox_two), [4]);
}

#[test]
fn a_removed_node_is_unreachable_and_its_old_handle_closed_after_a_restart() {
    let network = MemNetwork::default();
    let (one, _inbox_one) = network.join(NodeId(1)).expect("join 1");
    let (two, _inbox_two) = network.join(NodeId(2)).expect("join 2");
    assert!(network.remove(NodeId(2)));
    assert!(!network.remove(NodeId(2)));
    assert_eq!(one.send(message(1, 2, 1)), Err(SendError::Unreachable(NodeId(2))));
    assert_eq!(two.send(message(2, 1, 2)), Err(SendError::Closed));

    let (two_again, mut inbox_two_again) = network.join(NodeId(2)).expect("restart 2");
    one.send(message(1, 2, 3)).expect("delivered to the new incarnation");
    two_again.send(message(2, 1, 4)).expect("the new incarnation sends");
    assert_eq!(two.send(message(2, 1, 5)), Err(SendError::Closed), "the old incarnation stays closed");
    assert_eq!(drain(&mut inbox_two_again), [3]);
}

#[test]
fn a_dropped_receiver_makes_its_node_unreachable() {
    let network = MemNetwork::default();
    let (one, _inbox_one) = network.join(NodeId(1)).expect("join 1");
    let (_two, inbox_two) = network.join(NodeId(2)).expect("join 2");
    drop(inbox_two);
    assert_eq!(one.send(message(1, 2, 1)), Err(SendError::Unreachable(NodeId(2))));
}

#[tokio::test]
async fn works_as_a_trait_object_under_a_runtime() {
    let network = MemNetwork::default();
    let (one, _inbox_one) = network.join(NodeId(1)).expect("join 1");
    let (_two, mut inbox_two) = network.join(NodeId(2)).expect("join 2");
    let transport: Box<dyn Transport> = Box::new(one);
    transport.send(message(1, 2, 1)).expect("send");
    assert_eq!(inbox_two.recv().await, Some(message(1, 2, 1)));
}

#[test]
fn groups_on_the_same_nodes_get_only_their_own_messages_in_order() {
    let network = MemNetwork::default();
    let (one_a, mut inbox_one_a) = network.join_group(NodeId(1), GroupId(10)).expect("join 1 in 10");
    let (one_b, _inbox_one_b) = network.join_group(NodeId(1), GroupId(20)).expect("join 1 in 20");
    let (_two_a, mut inbox_two_a) = network.join_group(NodeId(2), GroupId(10)).expect("join 2 in 10");
    let (two_b, mut inbox_two_b) = network.join_group(NodeId(2), GroupId(20)).expect("join 2 in 20");
    assert_eq!((one_a.group(), two_b.group()), (GroupId(10), GroupId(20)));
    for term in 1..=3 {
        one_a.send(message(1, 2, term)).expect("send in 10");
        one_b.send(message(1, 2, term + 100)).expect("send in 20");
    }
    two_b.send(message(2, 1, 7)).expect("send in 20");
    assert_eq!(drain(&mut inbox_two_a), [1, 2, 3]);
    assert_eq!(drain(&mut inbox_two_b), [101, 102, 103]);
    assert_eq!(inbox_one_a.try_recv(), Err(TryRecvError::Empty), "group 20's message stayed in group 20");
    assert_eq!(network.groups(NodeId(1)), [GroupId(10), GroupId(20)]);
    assert_eq!(network.join_group(NodeId(1), GroupId(10)).map(|_| ()), Err(JoinError::AlreadyJoined(NodeId(1))));
    // Partitions are the node's: every group is cut.
    network.disconnect(NodeId(1), NodeId(2));
    assert_eq!(one_a.send(message(1, 2, 4)), Err(SendError::Unreachable(NodeId(2))));
    assert_eq!(one_b.send(message(1, 2, 5)), Err(SendError::Unreachable(NodeId(2))));
}

#[test]
fn a_message_for_a_group_the_node_does_not_host_is_dropped_and_counted() {
    let network = MemNetwork::default();
    let (one, _inbox_one) = network.join_group(NodeId(1), GroupId(3)).expect("join 1 in 3");
    let (_two, mut inbox_two) = network.join(NodeId(2)).expect("join 2 in the default group");
    one.send(message(1, 2, 1)).expect("dropped by the network, as over TCP");
    one.send(message(1, 2, 2)).expect("dropped by the network, as over TCP");
    assert_eq!(network.unknown_group_drops(NodeId(2)), 2);
    assert_eq!(network.unknown_group_drops(NodeId(1)), 0);
    assert_eq!(network.groups(NodeId(2)), [GroupId::DEFAULT], "no group was created");
    assert_eq!(inbox_two.try_recv(), Err(TryRecvError::Empty), "nothing reached the default group");
}

#[test]
fn leaving_a_group_stops_its_delivery_and_closes_its_handles_only() {
    let network = MemNetwork::default();
    let (one_a, _inbox_one_a) = network.join_group(NodeId(1), GroupId(1)).expect("join");
    let (one_b, _inbox_one_b) = network.join_group(NodeId(1), GroupId(2)).expect("join");
    let (two_a, mut inbox_two_a) = network.join_group(NodeId(2), GroupId(1)).expect("join");
    let (_two_b, mut inbox_two_b) = network.join_group(NodeId(2), GroupId(2)).expect("join");
    assert!(network.leave_group(NodeId(2), GroupId(1)));
    assert!(!network.leave_group(NodeId(2), GroupId(1)));
    assert_eq!(two_a.send(message(2, 1, 1)), Err(SendError::Closed), "its handles are closed");
    one_a.send(message(1, 2, 2)).expect("dropped and counted");
    one_b.send(message(1, 2, 3)).expect("the other group still delivers");
    assert_eq!(network.unknown_group_drops(NodeId(2)), 1);
    assert_eq!(inbox_two_a.try_recv(), Err(TryRecvError::Disconnected));
    assert_eq!(drain(&mut inbox_two_b), [3]);

    // Joined again, the group receives again; the handle from before stays closed.
    let (two_a_again, mut inbox_again) = network.join_group(NodeId(2), GroupId(1)).expect("join again");
    one_a.send(message(1, 2, 4)).expect("delivered");
    assert_eq!(drain(&mut inbox_again), [4]);
    two_a_again.send(message(2, 1, 5)).expect("the new handle sends");
    assert_eq!(two_a.send(message(2, 1, 6)), Err(SendError::Closed));

    // A crash takes every group of the node down.
    assert!(network.remove(NodeId(2)));
    assert_eq!(network.groups(NodeId(2)), Vec::<GroupId>::new());
    assert_eq!(one_b.send(message(1, 2, 7)), Err(SendError::Unreachable(NodeId(2))));
    assert_eq!(two_a_again.send(message(2, 1, 8)), Err(SendError::Closed));
}
