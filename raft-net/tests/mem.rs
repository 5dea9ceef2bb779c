//! The in-memory network: delivery, partitions, crashes, and the bounded inbound queue. Nothing
//! here needs a runtime: sends are synchronous and `try_recv` reads what arrived.

mod common;

use std::num::NonZeroUsize;

use common::message;
use raft_core::{Message, NodeId};
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
