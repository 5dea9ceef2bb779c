//! Many Raft groups on one node-level TCP transport, over real sockets on 127.0.0.1: one
//! connection per direction carries every group, to the right group and in order; unknown groups
//! are dropped and counted; a stuck group does not hold the others up; writes are batched across
//! groups; garbage after a handshake harms nothing. Every wait polls for up to `common::PATIENCE`.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{
    PATIENCE, assert_closed, listener, message, raw_handshake, receive_term, send_until_received,
    tcp_options as options, unused_address,
};
use raft_core::{GroupId, Message, NodeId};
use raft_net::frame::encode_frame;
use raft_net::{
    Frame, Hello, RegisterGroupError, TcpGroupTransport, TcpOptions, TcpStats, TcpTransport, TokioConnector, Transport,
};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::time::timeout;

const CLUSTER: u64 = 7;

/// One group on one node: its transport and its inbound messages.
struct Group {
    transport: TcpGroupTransport,
    inbox: mpsc::Receiver<Message>,
}

/// A node's transport and the groups registered on it, by id.
struct Node {
    transport: TcpTransport,
    groups: BTreeMap<GroupId, Group>,
}

impl Node {
    fn group(&mut self, group: u64) -> &mut Group {
        self.groups.get_mut(&GroupId(group)).expect("a registered group")
    }
}

/// Two nodes, 1 and 2, peers of each other, each started with no group and then hosting
/// `groups_of_one` and `groups_of_two`.
async fn two_nodes(groups_of_one: &[u64], groups_of_two: &[u64], options: TcpOptions) -> (Node, Node) {
    let listeners = [listener().await, listener().await];
    let addresses: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().expect("address")).collect();
    let mut nodes = Vec::new();
    for ((id, listener), groups) in (1..=2_u64).zip(listeners).zip([groups_of_one, groups_of_two]) {
        let peer = 3 - id;
        let peers = BTreeMap::from([(NodeId(peer), addresses[peer as usize - 1])]);
        let transport = TcpTransport::start_node(CLUSTER, NodeId(id), listener, TokioConnector, peers, options.clone())
            .expect("start");
        let groups = groups
            .iter()
            .map(|group| {
                let (transport, inbox) = transport.register_group(GroupId(*group)).expect("a new group");
                (GroupId(*group), Group { transport, inbox })
            })
            .collect();
        nodes.push(Node { transport, groups });
    }
    let two = nodes.pop().expect("node 2");
    let one = nodes.pop().expect("node 1");
    (one, two)
}

/// Connects both directions through group `group` (messages sent before a connection exists
/// are dropped, so this retries until each arrives).
async fn connect_both_ways(one: &mut Node, two: &mut Node, group: u64) {
    let (to_two, to_one) = (message(1, 2, 1), message(2, 1, 1));
    let sender = one.group(group).transport.clone();
    send_until_received(&sender, &mut two.group(group).inbox, to_two).await;
    let sender = two.group(group).transport.clone();
    send_until_received(&sender, &mut one.group(group).inbox, to_one).await;
}

/// The terms of everything in `inbox` now, skipping the term-1 messages of
/// [`connect_both_ways`] (retries may leave duplicates).
fn drain(inbox: &mut mpsc::Receiver<Message>) -> Vec<u64> {
    std::iter::from_fn(|| inbox.try_recv().ok()).map(|message| message.term.0).filter(|term| *term != 1).collect()
}

/// Receives from `inbox` until `count` messages of terms other than 1 arrived.
async fn receive(inbox: &mut mpsc::Receiver<Message>, count: usize) -> Vec<u64> {
    let mut terms = Vec::new();
    while terms.len() < count {
        let message = timeout(PATIENCE, inbox.recv()).await.expect("in time").expect("open");
        if message.term.0 != 1 {
            terms.push(message.term.0);
        }
    }
    terms
}

/// `groups` groups on both nodes send interleaved bursts both ways: every message reaches its
/// own group, in its group's send order, and the two nodes keep one connection per direction.
async fn groups_share_one_connection_per_direction(groups: u64) {
    let ids: Vec<u64> = (1..=groups).collect();
    let (mut one, mut two) = two_nodes(&ids, &ids, options()).await;
    connect_both_ways(&mut one, &mut two, 1).await;
    let per_group = 40;
    for index in 0..per_group {
        for group in 1..=groups {
            let term = group * 1000 + index;
            one.group(group).transport.send(message(1, 2, term)).expect("queue has room");
            two.group(group).transport.send(message(2, 1, term)).expect("queue has room");
        }
    }
    for group in 1..=groups {
        let expected: Vec<u64> = (0..per_group).map(|index| group * 1000 + index).collect();
        assert_eq!(receive(&mut two.group(group).inbox, expected.len()).await, expected, "group {group} on node 2");
        assert_eq!(receive(&mut one.group(group).inbox, expected.len()).await, expected, "group {group} on node 1");
    }
    for node in [&one, &two] {
        let stats = node.transport.stats();
        assert_eq!((stats.connections_dialed, stats.connections_accepted), (1, 1), "{groups} groups: {stats:?}");
        assert_eq!(stats.unknown_group_drops, 0);
    }
    for node in [&mut one, &mut two] {
        for (group, member) in &mut node.groups {
            assert_eq!(drain(&mut member.inbox), Vec::<u64>::new(), "group {group} got more");
        }
    }
}

#[tokio::test]
async fn two_groups_share_one_connection_per_direction_and_keep_their_order() {
    groups_share_one_connection_per_direction(2).await;
}

#[tokio::test]
async fn twenty_groups_share_one_connection_per_direction_and_keep_their_order() {
    groups_share_one_connection_per_direction(20).await;
}

/// The one-group API and the group API are the same machinery: a transport started with
/// `TcpTransport::start` talks to one started with `start_node` that registered the default group,
/// and more groups can join the first one later.
#[tokio::test]
async fn the_single_group_start_is_the_default_group_of_a_node_transport() {
    let (listener_one, listener_two) = (listener().await, listener().await);
    let (address_one, address_two) = (listener_one.local_addr().expect("one"), listener_two.local_addr().expect("two"));
    let (one, mut inbox_one) = TcpTransport::start(
        CLUSTER,
        NodeId(1),
        listener_one,
        TokioConnector,
        BTreeMap::from([(NodeId(2), address_two)]),
        options(),
    )
    .expect("start 1");
    assert_eq!(one.groups(), [GroupId::DEFAULT]);
    assert_eq!(
        one.register_group(GroupId::DEFAULT).map(|_| ()),
        Err(RegisterGroupError::AlreadyRegistered(GroupId::DEFAULT))
    );
    let two = TcpTransport::start_node(
        CLUSTER,
        NodeId(2),
        listener_two,
        TokioConnector,
        BTreeMap::from([(NodeId(1), address_one)]),
        options(),
    )
    .expect("start 2");
    let (default_two, mut inbox_two) = two.register_group(GroupId::DEFAULT).expect("register");
    send_until_received(&one, &mut inbox_two, message(1, 2, 5)).await;
    send_until_received(&default_two, &mut inbox_one, message(2, 1, 6)).await;

    let (five_one, mut five_inbox_one) = one.register_group(GroupId(5)).expect("register on a started node");
    let (five_two, mut five_inbox_two) = two.register_group(GroupId(5)).expect("register");
    assert_eq!(five_one.group(), GroupId(5));
    five_two.send(message(2, 1, 7)).expect("queued");
    default_two.send(message(2, 1, 8)).expect("queued");
    five_one.send(message(1, 2, 9)).expect("queued");
    assert_eq!(receive_term(&mut five_inbox_one, 7).await.term.0, 7);
    assert_eq!(receive_term(&mut inbox_one, 8).await.term.0, 8);
    assert_eq!(receive_term(&mut five_inbox_two, 9).await.term.0, 9);
    assert_eq!(one.stats().connections_dialed, 1);
}

#[tokio::test]
async fn a_message_for_a_group_the_node_does_not_host_is_dropped_and_counted() {
    let (mut one, mut two) = two_nodes(&[1, 2], &[1, 2, 3], options()).await;
    connect_both_ways(&mut one, &mut two, 1).await;
    for term in 300..305 {
        two.group(3).transport.send(message(2, 1, term)).expect("the sender cannot know");
    }
    two.group(2).transport.send(message(2, 1, 200)).expect("queued");
    // Same connection, so everything sent before the marker has been read when it arrives.
    receive_term(&mut one.group(2).inbox, 200).await;
    let stats = one.transport.stats();
    assert_eq!(stats.unknown_group_drops, 5, "{stats:?}");
    assert_eq!(one.transport.groups(), [GroupId(1), GroupId(2)], "no group was created");
    assert_eq!(drain(&mut one.group(1).inbox), Vec::<u64>::new(), "nothing went to another group");
    assert_eq!(drain(&mut one.group(2).inbox), Vec::<u64>::new(), "nothing went to another group");

    // Unregistering stops delivery; the other group carries on over the same connection.
    assert!(one.transport.unregister_group(GroupId(2)));
    assert!(!one.transport.unregister_group(GroupId(2)));
    assert_eq!(one.transport.groups(), [GroupId(1)]);
    for term in 210..213 {
        two.group(2).transport.send(message(2, 1, term)).expect("queued");
    }
    two.group(1).transport.send(message(2, 1, 100)).expect("queued");
    receive_term(&mut one.group(1).inbox, 100).await;
    assert_eq!(one.transport.stats().unknown_group_drops, 8);
    let inbox = &mut one.group(2).inbox;
    let after: Vec<u64> = std::iter::from_fn(|| inbox.try_recv().ok()).map(|m| m.term.0).collect();
    assert_eq!(after, Vec::<u64>::new(), "delivered after unregistering");
    // The readers let go of the unregistered queue on their next message: the receiver ends.
    assert_eq!(inbox.try_recv(), Err(TryRecvError::Disconnected));

    // Registered again, the group receives again.
    let (_, mut inbox) = one.transport.register_group(GroupId(2)).expect("register again");
    two.group(2).transport.send(message(2, 1, 220)).expect("queued");
    receive_term(&mut inbox, 220).await;
}

/// A group whose driver stops taking messages fills its queue: the reader waits
/// `inbound_full_timeout` once, then drops that group's messages while its queue stays full, and
/// the other group on the same connection keeps receiving everything.
#[tokio::test]
async fn a_stuck_group_loses_its_messages_but_does_not_stall_the_others() {
    let tight = TcpOptions { inbound_queue_messages_max: 2, inbound_full_timeout: Duration::from_secs(1), ..options() };
    let (mut one, mut two) = two_nodes(&[1, 2], &[1, 2], tight).await;
    send_until_received(&one.group(2).transport.clone(), &mut two.group(2).inbox, message(1, 2, 1)).await;
    for term in 100..130 {
        one.group(1).transport.send(message(1, 2, term)).expect("queued");
    }
    for term in 200..220 {
        one.group(2).transport.send(message(1, 2, term)).expect("queued");
    }
    // Group 2's queue holds 2 too, but its reader (this test) keeps taking.
    assert_eq!(receive(&mut two.group(2).inbox, 20).await, (200..220).collect::<Vec<_>>());
    let stats = two.transport.stats();
    // Without the rule that a group found full once is not waited for again, the reader would
    // wait a second for each of the 28 and group 2 would not be served within the patience.
    assert_eq!(stats.inbound_full_drops, 28, "{stats:?}");
    assert_eq!(drain(&mut two.group(1).inbox), [100, 101], "what fit before the queue was full");
    // The group has room again: its messages are delivered again.
    one.group(1).transport.send(message(1, 2, 131)).expect("queued");
    receive_term(&mut two.group(1).inbox, 131).await;
    assert_eq!(two.transport.stats().inbound_full_drops, 28);
}

/// Messages of many groups queued for one peer in one burst leave in a few batched writes (one
/// write and one flush each), not one per message or per group.
#[tokio::test]
async fn many_groups_sending_in_one_burst_share_batched_writes() {
    let ids: Vec<u64> = (1..=32).collect();
    let (mut one, mut two) = two_nodes(&ids, &ids, options()).await;
    connect_both_ways(&mut one, &mut two, 1).await;
    let before = one.transport.stats();
    // On this single-threaded runtime the writer cannot run during the burst (send never yields),
    // so it finds all 320 messages queued.
    for index in 0..10 {
        for group in 1..=32 {
            one.group(group).transport.send(message(1, 2, group * 1000 + index)).expect("queue has room");
        }
    }
    for group in 1..=32 {
        let expected: Vec<u64> = (0..10).map(|index| group * 1000 + index).collect();
        assert_eq!(receive(&mut two.group(group).inbox, 10).await, expected, "group {group}");
    }
    let after = one.transport.stats();
    let (batches, messages) =
        (after.batches_written - before.batches_written, after.messages_written - before.messages_written);
    assert_eq!(messages, 320);
    assert!((1..=5).contains(&batches), "320 messages of 32 groups took {batches} writes: {after:?}");
}

/// Random bytes after a valid handshake (behind a valid message tag or not) close the stranger's
/// connection or are dropped as unknown groups; no group is created, and the hosted groups keep
/// receiving from the legitimate peer. (The typed error each case ends with is checked, against
/// the frame decoder, by the `frames` fuzz harness, which runs this reader over the same kind of
/// bytes.)
#[tokio::test]
async fn random_bytes_after_a_handshake_create_no_group_and_harm_no_group() {
    let (mut one, mut two) = two_nodes(&[1, 2], &[1, 2], options()).await;
    connect_both_ways(&mut one, &mut two, 1).await;
    // Node 3 is a peer of node 1 with no transport: the raw clients speak as node 3.
    one.transport.add_peer(NodeId(3), unused_address());
    let address = one.transport.local_address();
    let mut rng = ChaCha8Rng::seed_from_u64(19);
    for case in 0..24 {
        let mut payload = vec![0; (rng.next_u32() % 64) as usize];
        rng.fill_bytes(&mut payload);
        let bytes = match case % 3 {
            // Raw garbage.
            0 => payload,
            // A frame of the right length holding a message tag, a group and garbage.
            1 => {
                let mut frame = vec![3, (rng.next_u32() % 4) as u8];
                frame.extend_from_slice(&payload);
                let mut bytes = (frame.len() as u32).to_be_bytes().to_vec();
                bytes.extend_from_slice(&frame);
                bytes
            }
            // A valid message of an unknown group, then garbage.
            _ => {
                let frame = Frame::Message { group: GroupId(9), message: message(3, 1, 5) };
                let mut bytes = encode_frame(&frame, 1024).expect("encode");
                bytes.extend_from_slice(&payload);
                bytes
            }
        };
        let (mut stream, reply) = raw_handshake(address, Hello::new(CLUSTER, NodeId(3), NodeId(1))).await;
        assert_eq!(reply, Frame::HelloAccepted);
        stream.write_all(&bytes).await.expect("write");
        stream.shutdown().await.expect("end the stream");
        assert_closed(&mut stream, &format!("random bytes, case {case}")).await;
    }
    assert_eq!(one.transport.groups(), [GroupId(1), GroupId(2)], "no group was created");
    two.group(2).transport.send(message(2, 1, 50)).expect("queued");
    two.group(1).transport.send(message(2, 1, 51)).expect("queued");
    receive_term(&mut one.group(2).inbox, 50).await;
    receive_term(&mut one.group(1).inbox, 51).await;
    let stats: TcpStats = one.transport.stats();
    assert!(stats.unknown_group_drops >= 8, "the valid unknown-group messages were counted: {stats:?}");
    // Delivery to the hosted groups came only from node 2.
    for group in [1, 2] {
        let inbox = &mut one.group(group).inbox;
        let strangers: Vec<Message> =
            std::iter::from_fn(|| inbox.try_recv().ok()).filter(|m| m.from != NodeId(2)).collect();
        assert!(strangers.is_empty(), "group {group} got {strangers:?}");
    }
}
