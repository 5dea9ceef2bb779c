//! The TCP transport over real sockets on 127.0.0.1 (listeners on port 0). Every wait polls for
//! up to `common::PATIENCE`; nothing asserts on durations.

mod common;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use common::{
    PATIENCE, assert_closed, large_message, listener, message, raw_handshake, receive_term, send_until_received,
    send_until_unreachable, tcp_options as options, unused_address,
};
use raft_core::{GroupId, Message, NodeId};
use raft_net::frame::{FRAME_BYTES_MIN, HELLO_FRAME_BYTES_MAX, PROTOCOL_VERSION, read_frame, write_frame};
use raft_net::{
    Accept, Connect, Frame, Hello, PeerState, RejectReason, SendError, StartError, TcpOptions, TcpOptionsError,
    TcpTransport, TokioConnector, Transport,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::time::timeout;

const CLUSTER: u64 = 7;

struct Node {
    transport: TcpTransport,
    inbox: mpsc::Receiver<Message>,
}

fn peers_of(id: u64, addresses: &BTreeMap<NodeId, SocketAddr>) -> BTreeMap<NodeId, SocketAddr> {
    addresses.iter().filter(|(peer, _)| **peer != NodeId(id)).map(|(peer, address)| (*peer, *address)).collect()
}

/// Nodes with the given ids, all peers of each other, in one cluster.
async fn start_cluster(ids: &[u64], options: TcpOptions) -> (Vec<Node>, BTreeMap<NodeId, SocketAddr>) {
    let mut listeners = Vec::new();
    for _ in ids {
        listeners.push(listener().await);
    }
    let addresses: BTreeMap<_, _> = ids
        .iter()
        .zip(&listeners)
        .map(|(id, listener)| (NodeId(*id), listener.local_addr().expect("address")))
        .collect();
    let mut nodes = Vec::new();
    for (id, listener) in ids.iter().zip(listeners) {
        let peers = peers_of(*id, &addresses);
        let (transport, inbox) =
            TcpTransport::start(CLUSTER, NodeId(*id), listener, TokioConnector, peers, options.clone()).expect("start");
        nodes.push(Node { transport, inbox });
    }
    (nodes, addresses)
}

/// Node `sender` to send with and node `receiver` to receive with.
fn pair(nodes: &mut [Node], sender: usize, receiver: usize) -> (&Node, &mut Node) {
    assert_ne!(sender, receiver);
    if sender < receiver {
        let (left, right) = nodes.split_at_mut(receiver);
        (&left[sender], &mut right[0])
    } else {
        let (left, right) = nodes.split_at_mut(sender);
        (&right[0], &mut left[receiver])
    }
}

#[tokio::test]
async fn three_nodes_exchange_messages_in_both_directions_and_in_order() {
    let (mut nodes, _) = start_cluster(&[1, 2, 3], options()).await;
    for from in 1..=3_u64 {
        for to in (1..=3_u64).filter(|to| *to != from) {
            let (sender, receiver) = pair(&mut nodes, from as usize - 1, to as usize - 1);
            send_until_received(&sender.transport, &mut receiver.inbox, message(from, to, from * 10 + to)).await;
        }
    }
    assert_eq!(nodes[0].transport.peer_state(NodeId(2)), Some(PeerState::Connected));

    // Once connected, a burst arrives complete and in order (and leaves in batched writes).
    for term in 1000..1500 {
        nodes[0].transport.send(message(1, 2, term)).expect("queue has room");
    }
    let mut received = Vec::new();
    while received.len() < 500 {
        let message = timeout(PATIENCE, nodes[1].inbox.recv()).await.expect("in time").expect("open");
        if message.term.0 >= 1000 {
            received.push(message.term.0);
        }
    }
    assert_eq!(received, (1000..1500).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_full_inbound_channel_pushes_back_without_losing_messages() {
    let tight = TcpOptions { inbound_queue_messages_max: 1, ..options() };
    let (mut nodes, _) = start_cluster(&[1, 2], tight).await;
    let [one, two] = &mut nodes[..] else { panic!("two nodes") };
    send_until_received(&one.transport, &mut two.inbox, message(1, 2, 1)).await;
    for term in 100..400 {
        one.transport.send(message(1, 2, term)).expect("queue has room");
    }
    for term in 100..400 {
        assert_eq!(receive_term(&mut two.inbox, term).await.term.0, term);
    }
}

#[tokio::test]
async fn a_restarted_peer_is_redialed_and_delivery_resumes() {
    let (mut nodes, addresses) = start_cluster(&[1, 2], options()).await;
    let mut two = nodes.pop().expect("node 2");
    let mut one = nodes.pop().expect("node 1");
    send_until_received(&one.transport, &mut two.inbox, message(1, 2, 1)).await;
    send_until_received(&two.transport, &mut one.inbox, message(2, 1, 2)).await;

    two.transport.shutdown().await;
    send_until_unreachable(&one.transport, message(1, 2, 3)).await;

    let (transport, inbox) =
        TcpTransport::bind(CLUSTER, NodeId(2), addresses[&NodeId(2)], peers_of(2, &addresses), options())
            .await
            .expect("restart on the same address");
    let mut two = Node { transport, inbox };
    send_until_received(&one.transport, &mut two.inbox, message(1, 2, 4)).await;
    send_until_received(&two.transport, &mut one.inbox, message(2, 1, 5)).await;
}

#[tokio::test]
async fn send_while_the_peer_is_down_eventually_fails_unreachable() {
    let peers = BTreeMap::from([(NodeId(2), unused_address())]);
    let (one, _inbox) =
        TcpTransport::start(CLUSTER, NodeId(1), listener().await, TokioConnector, peers, options()).expect("start");
    send_until_unreachable(&one, message(1, 2, 1)).await;
    assert_eq!(one.peer_state(NodeId(2)), Some(PeerState::Backoff));
}

#[tokio::test]
async fn send_refuses_unknown_peers_and_foreign_senders() {
    let (nodes, _) = start_cluster(&[1, 2], options()).await;
    assert_eq!(nodes[0].transport.send(message(1, 9, 1)), Err(SendError::UnknownPeer(NodeId(9))));
    assert_eq!(nodes[0].transport.send(message(1, 1, 1)), Err(SendError::UnknownPeer(NodeId(1))));
    assert_eq!(nodes[0].transport.send(message(2, 1, 1)), Err(SendError::ForeignSender(NodeId(2))));
    assert_eq!(nodes[0].transport.peer_state(NodeId(9)), None);
}

#[tokio::test]
async fn handshakes_are_rejected_with_a_typed_reason() {
    let peers = BTreeMap::from([(NodeId(2), unused_address())]);
    let (one, _inbox) =
        TcpTransport::start(CLUSTER, NodeId(1), listener().await, TokioConnector, peers, options()).expect("start");
    let good = Hello::new(CLUSTER, NodeId(2), NodeId(1));
    let cases = [
        (Hello { cluster_id: 99, ..good }, RejectReason::WrongClusterId),
        (Hello { magic: *b"GET ", ..good }, RejectReason::WrongMagic),
        (
            Hello { protocol_version: PROTOCOL_VERSION + 1, ..good },
            RejectReason::UnsupportedVersion { ours: PROTOCOL_VERSION, theirs: PROTOCOL_VERSION + 1 },
        ),
        (Hello { to: NodeId(5), ..good }, RejectReason::NotAddressedToUs),
        (Hello { from: NodeId(9), ..good }, RejectReason::UnknownPeer),
    ];
    for (hello, reason) in cases {
        let (mut stream, reply) = raw_handshake(one.local_address(), hello).await;
        assert_eq!(reply, Frame::HelloRejected { reason });
        assert_closed(&mut stream, "after a rejection").await;
    }
    let (_stream, reply) = raw_handshake(one.local_address(), good).await;
    assert_eq!(reply, Frame::HelloAccepted);
}

#[tokio::test]
async fn a_transport_of_another_cluster_gets_no_message_through() {
    let (listener_one, listener_two) = (listener().await, listener().await);
    let address_one = listener_one.local_addr().expect("address");
    let address_two = listener_two.local_addr().expect("address");
    let (one, mut inbox_one) = TcpTransport::start(
        CLUSTER,
        NodeId(1),
        listener_one,
        TokioConnector,
        BTreeMap::from([(NodeId(2), address_two)]),
        options(),
    )
    .expect("start 1");
    let (stranger, mut inbox_stranger) = TcpTransport::start(
        CLUSTER + 1,
        NodeId(2),
        listener_two,
        TokioConnector,
        BTreeMap::from([(NodeId(1), address_one)]),
        options(),
    )
    .expect("start 2");
    // Both handshakes get rejected (each side checks the other's cluster), so both back off.
    send_until_unreachable(&stranger, message(2, 1, 1)).await;
    send_until_unreachable(&one, message(1, 2, 2)).await;
    // No message frame is ever written before a handshake is accepted: nothing can have arrived.
    assert_eq!(inbox_one.try_recv(), Err(TryRecvError::Empty));
    assert_eq!(inbox_stranger.try_recv(), Err(TryRecvError::Empty));
}

#[tokio::test]
async fn bad_frames_close_only_their_connection() {
    let limit = TcpOptions { frame_bytes_max: FRAME_BYTES_MIN, ..options() };
    let (mut nodes, addresses) = start_cluster(&[1, 2], limit).await;
    let [one, two] = &mut nodes[..] else { panic!("two nodes") };
    // Node 3 is a configured peer of node 1 with no transport: the raw clients speak as node 3.
    one.transport.add_peer(NodeId(3), unused_address());
    let address = addresses[&NodeId(1)];
    send_until_received(&two.transport, &mut one.inbox, message(2, 1, 1)).await;

    let mut garbage = TcpStream::connect(address).await.expect("connect");
    garbage.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    assert_closed(&mut garbage, "garbage instead of a hello").await;

    let mut oversized = TcpStream::connect(address).await.expect("connect");
    oversized.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
    assert_closed(&mut oversized, "an oversized length prefix instead of a hello").await;

    let after_handshake: [&[u8]; 4] = [
        &(FRAME_BYTES_MIN + 1).to_be_bytes(),
        &[0, 0, 0, 3, 0xff, 0xff, 0xff],
        &frame_bytes(&Frame::Message { group: GroupId::DEFAULT, message: message(2, 1, 7) }),
        &frame_bytes(&Frame::Message { group: GroupId::DEFAULT, message: message(3, 2, 8) }),
    ];
    for (case, bytes) in after_handshake.iter().enumerate() {
        let (mut stream, reply) = raw_handshake(address, Hello::new(CLUSTER, NodeId(3), NodeId(1))).await;
        assert_eq!(reply, Frame::HelloAccepted);
        stream.write_all(bytes).await.expect("write");
        assert_closed(&mut stream, &format!("bad frame {case} after the handshake")).await;
    }

    // The legitimate peer never noticed, and nothing from the bad connections was delivered.
    let skipped = send_until_received(&two.transport, &mut one.inbox, message(2, 1, 9)).await;
    assert!(skipped.iter().all(|message| message.term.0 == 1), "delivered from a bad connection: {skipped:?}");
    send_until_received(&one.transport, &mut two.inbox, message(1, 2, 10)).await;
}

fn frame_bytes(frame: &Frame) -> Vec<u8> {
    raft_net::frame::encode_frame(frame, FRAME_BYTES_MIN).expect("encode")
}

#[tokio::test]
async fn a_message_too_large_for_a_frame_is_dropped_and_the_link_survives() {
    let limit = TcpOptions { frame_bytes_max: FRAME_BYTES_MIN, ..options() };
    let (mut nodes, _) = start_cluster(&[1, 2], limit).await;
    let [one, two] = &mut nodes[..] else { panic!("two nodes") };
    send_until_received(&one.transport, &mut two.inbox, message(1, 2, 1)).await;
    let chunk_bytes = 64 * 1024;
    one.transport.send(large_message(1, 2, 10, chunk_bytes)).expect("queued");
    one.transport.send(large_message(1, 2, 11, 2 * FRAME_BYTES_MIN as usize)).expect("queued, dropped later");
    one.transport.send(message(1, 2, 12)).expect("queued");
    let mut terms = Vec::new();
    while terms.last() != Some(&12) {
        let message = timeout(PATIENCE, two.inbox.recv()).await.expect("in time").expect("open");
        if message.term.0 >= 10 {
            terms.push(message.term.0);
        }
    }
    assert_eq!(terms, [10, 12]);
}

#[tokio::test]
async fn peers_can_be_added_and_removed_at_runtime() {
    let (listener_one, listener_two) = (listener().await, listener().await);
    let address_one = listener_one.local_addr().expect("address");
    let address_two = listener_two.local_addr().expect("address");
    let (one, mut inbox_one) =
        TcpTransport::start(CLUSTER, NodeId(1), listener_one, TokioConnector, BTreeMap::new(), options())
            .expect("start 1");
    let peers_of_two = BTreeMap::from([(NodeId(1), address_one)]);
    let (two, mut inbox_two) =
        TcpTransport::start(CLUSTER, NodeId(2), listener_two, TokioConnector, peers_of_two, options())
            .expect("start 2");

    // Node 1 does not know node 2 yet: it refuses the handshake.
    send_until_unreachable(&two, message(2, 1, 1)).await;
    assert!(one.add_peer(NodeId(2), address_two));
    assert!(!one.add_peer(NodeId(1), address_one), "a node is not its own peer");
    assert_eq!(one.peers(), BTreeMap::from([(NodeId(2), address_two)]));
    send_until_received(&two, &mut inbox_one, message(2, 1, 2)).await;
    send_until_received(&one, &mut inbox_two, message(1, 2, 3)).await;

    assert!(one.remove_peer(NodeId(2)));
    assert!(!one.remove_peer(NodeId(2)));
    assert_eq!(one.send(message(1, 2, 4)), Err(SendError::UnknownPeer(NodeId(2))));
    send_until_unreachable(&two, message(2, 1, 5)).await;
    one.shutdown().await;
    two.shutdown().await;
    // Every task has stopped, so the inbound channel ends once the leftovers are read.
    let drain = async { while inbox_one.recv().await.is_some() {} };
    timeout(PATIENCE, drain).await.expect("the inbound channel closes after shutdown");
}

#[tokio::test]
async fn start_refuses_bad_configurations() {
    let options_error = TcpTransport::start(
        CLUSTER,
        NodeId(1),
        listener().await,
        TokioConnector,
        BTreeMap::new(),
        TcpOptions { frame_bytes_max: 10, ..options() },
    );
    assert!(
        matches!(
            options_error,
            Err(StartError::Options(TcpOptionsError::FrameBytesTooSmall { bytes: 10, min: FRAME_BYTES_MIN }))
        ),
        "{:?}",
        options_error.map(|_| ())
    );
    let peers = BTreeMap::from([(NodeId(1), unused_address())]);
    let self_peer = TcpTransport::start(CLUSTER, NodeId(1), listener().await, TokioConnector, peers, options());
    assert!(matches!(self_peer, Err(StartError::PeerIsLocal(NodeId(1)))), "{:?}", self_peer.map(|_| ()));
}

/// A listener that never accepts: shows that the transport takes any [`Accept`] implementation.
struct SilentListener;

impl Accept for SilentListener {
    type Stream = TcpStream;

    async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        std::future::pending().await
    }

    fn local_address(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

/// A failed bind reports the operating system's error whole (kind, errno and message), as the
/// error's source, not just its kind.
#[tokio::test]
async fn a_failed_bind_keeps_the_operating_systems_error() {
    let taken = listener().await;
    let address = taken.local_addr().expect("local address");
    let started = TcpTransport::bind(CLUSTER, NodeId(1), address, BTreeMap::new(), options()).await;
    let Err(error @ StartError::Bind(_)) = started else { panic!("expected Bind, got {:?}", started.map(|_| ())) };
    let source = std::error::Error::source(&error).and_then(|source| source.downcast_ref::<io::Error>());
    let source = source.expect("the source is the std::io::Error");
    assert_eq!(source.kind(), io::ErrorKind::AddrInUse);
    assert!(source.raw_os_error().is_some(), "the errno is kept: {source:?}");
    assert!(error.to_string().contains(&source.to_string()), "the message says it: {error}");
}

#[test]
fn start_needs_a_runtime() {
    let started = TcpTransport::start(CLUSTER, NodeId(1), SilentListener, TokioConnector, BTreeMap::new(), options());
    assert!(matches!(started, Err(StartError::NoRuntime)), "{:?}", started.map(|_| ()));
}

/// Counts the writes that reach the socket, to show that queued messages share them.
#[derive(Clone, Default)]
struct CountingConnector {
    writes: Arc<AtomicUsize>,
}

struct CountingStream {
    inner: TcpStream,
    writes: Arc<AtomicUsize>,
}

impl Connect for CountingConnector {
    type Stream = CountingStream;

    async fn connect(&self, address: SocketAddr) -> io::Result<CountingStream> {
        let inner = TokioConnector.connect(address).await?;
        Ok(CountingStream { inner, writes: Arc::clone(&self.writes) })
    }
}

impl AsyncRead for CountingStream {
    fn poll_read(self: Pin<&mut Self>, context: &mut Context<'_>, buffer: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(context, buffer)
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(self: Pin<&mut Self>, context: &mut Context<'_>, buffer: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(context, buffer);
        if let Poll::Ready(Ok(_)) = written {
            this.writes.fetch_add(1, Ordering::Relaxed);
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(context)
    }
}

#[tokio::test]
async fn queued_messages_leave_in_batched_writes() {
    let (listener_one, listener_two) = (listener().await, listener().await);
    let address_two = listener_two.local_addr().expect("address");
    let connector = CountingConnector::default();
    let writes = Arc::clone(&connector.writes);
    let peers_of_one = BTreeMap::from([(NodeId(2), address_two)]);
    let (one, _inbox_one) =
        TcpTransport::start(CLUSTER, NodeId(1), listener_one, connector, peers_of_one, options()).expect("start 1");
    let peers_of_two = BTreeMap::from([(NodeId(1), one.local_address())]);
    let (_two, mut inbox_two) =
        TcpTransport::start(CLUSTER, NodeId(2), listener_two, TokioConnector, peers_of_two, options())
            .expect("start 2");
    send_until_received(&one, &mut inbox_two, message(1, 2, 1)).await;

    // On this single-threaded runtime the writer cannot run during the burst (send never yields),
    // so it finds all 500 messages queued and writes them together.
    writes.store(0, Ordering::Relaxed);
    for term in 100..600 {
        one.send(message(1, 2, term)).expect("queue has room");
    }
    for term in 100..600 {
        receive_term(&mut inbox_two, term).await;
    }
    let writes = writes.load(Ordering::Relaxed);
    assert!((1..=5).contains(&writes), "500 queued messages took {writes} writes");
}

#[tokio::test]
async fn a_silent_client_is_closed_by_the_handshake_timeout() {
    let quick = TcpOptions { handshake_timeout: Duration::from_millis(100), ..options() };
    let (one, _inbox) =
        TcpTransport::start(CLUSTER, NodeId(1), listener().await, TokioConnector, BTreeMap::new(), quick)
            .expect("start");
    let mut silent = TcpStream::connect(one.local_address()).await.expect("connect");
    assert_closed(&mut silent, "a client that never says hello").await;
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_at_once() {
    // A long handshake timeout, so only the limit can close the second connection.
    let limited = TcpOptions { inbound_connections_max: 1, handshake_timeout: Duration::from_secs(600), ..options() };
    let (one, _inbox) =
        TcpTransport::start(CLUSTER, NodeId(1), listener().await, TokioConnector, BTreeMap::new(), limited)
            .expect("start");
    let _first = TcpStream::connect(one.local_address()).await.expect("connect");
    let mut second = TcpStream::connect(one.local_address()).await.expect("connect");
    assert_closed(&mut second, "a connection beyond inbound_connections_max").await;
}

/// A connection that goes silent after the handshake (a half-open connection: the peer crashed,
/// or a partition lost data) is closed after `idle_timeout`, so its dialer notices and redials;
/// keepalives keep a merely quiet connection open. (Found by the turmoil simulation, seed 166: a
/// connection whose data a partition dropped stayed open and silent for good, and the two
/// voters it joined never elected a leader.)
#[tokio::test]
async fn a_connection_silent_past_the_idle_timeout_is_closed_and_keepalives_keep_one_open() {
    let quick = TcpOptions {
        keepalive_interval: Duration::from_millis(50),
        idle_timeout: Duration::from_millis(300),
        ..options()
    };
    let known = BTreeMap::from([(NodeId(2), unused_address())]);
    let (one, _inbox) =
        TcpTransport::start(CLUSTER, NodeId(1), listener().await, TokioConnector, known, quick.clone()).expect("start");
    let hello = Hello::new(CLUSTER, NodeId(2), NodeId(1));
    let (mut silent, reply) = raw_handshake(one.local_address(), hello).await;
    assert_eq!(reply, Frame::HelloAccepted);
    assert_closed(&mut silent, "a peer that went silent after the handshake").await;

    // A dialing transport with nothing to say sends keepalives, well within the idle timeout.
    let raw = listener().await;
    let address = raw.local_addr().expect("address");
    let peers = BTreeMap::from([(NodeId(1), address)]);
    let (_two, _inbox) =
        TcpTransport::start(CLUSTER, NodeId(2), listener().await, TokioConnector, peers, quick).expect("start");
    let (mut stream, _) = timeout(PATIENCE, raw.accept()).await.expect("dialed in time").expect("accept");
    let hello: Frame = read_frame(&mut stream, HELLO_FRAME_BYTES_MAX, &mut Vec::new()).await.expect("hello");
    assert!(matches!(hello, Frame::Hello(_)));
    write_frame(&mut stream, &Frame::HelloAccepted, HELLO_FRAME_BYTES_MAX).await.expect("accept the hello");
    for _ in 0..3 {
        let frame: Frame = timeout(PATIENCE, read_frame(&mut stream, FRAME_BYTES_MIN, &mut Vec::new()))
            .await
            .expect("a frame in time")
            .expect("a frame");
        assert_eq!(frame, Frame::Keepalive);
    }
}

/// The acceptor's side of the keepalives: a peer that sends only keepalives for twice the idle
/// timeout keeps its connection, and a message it sends after them is delivered.
#[tokio::test]
async fn keepalives_from_a_peer_keep_its_connection_open_past_the_idle_timeout() {
    let quick = TcpOptions {
        keepalive_interval: Duration::from_millis(50),
        idle_timeout: Duration::from_millis(300),
        ..options()
    };
    let known = BTreeMap::from([(NodeId(2), unused_address())]);
    let (one, mut inbox) =
        TcpTransport::start(CLUSTER, NodeId(1), listener().await, TokioConnector, known, quick).expect("start");
    let (mut stream, reply) = raw_handshake(one.local_address(), Hello::new(CLUSTER, NodeId(2), NodeId(1))).await;
    assert_eq!(reply, Frame::HelloAccepted);
    for _ in 0..12 {
        write_frame(&mut stream, &Frame::Keepalive, FRAME_BYTES_MIN).await.expect("the connection is open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stream
        .write_all(&frame_bytes(&Frame::Message { group: GroupId::DEFAULT, message: message(2, 1, 7) }))
        .await
        .expect("the connection is open");
    receive_term(&mut inbox, 7).await;
}

/// The idle timeout counts time without bytes, not time per frame: a frame trickling in slower
/// than `idle_timeout` as a whole, but with bytes arriving all along, is delivered.
#[tokio::test]
async fn a_frame_arriving_slowly_but_steadily_outlasts_the_idle_timeout() {
    let quick = TcpOptions {
        keepalive_interval: Duration::from_millis(50),
        idle_timeout: Duration::from_millis(300),
        ..options()
    };
    let known = BTreeMap::from([(NodeId(2), unused_address())]);
    let (one, mut inbox) =
        TcpTransport::start(CLUSTER, NodeId(1), listener().await, TokioConnector, known, quick).expect("start");
    let (mut stream, reply) = raw_handshake(one.local_address(), Hello::new(CLUSTER, NodeId(2), NodeId(1))).await;
    assert_eq!(reply, Frame::HelloAccepted);
    let bytes = frame_bytes(&Frame::Message { group: GroupId::DEFAULT, message: message(2, 1, 9) });
    let pause = Duration::from_millis(900) / bytes.len() as u32;
    for byte in bytes {
        stream.write_all(&[byte]).await.expect("write a byte");
        tokio::time::sleep(pause).await;
    }
    receive_term(&mut inbox, 9).await;
}
