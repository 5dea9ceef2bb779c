//! Nodes over real TCP facing a member of another cluster, garbage and oversized frames, and
//! clients that ask a follower.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use raft_core::{Index, NodeId};
use raft_net::frame::{HELLO_FRAME_BYTES_MAX, read_frame, write_frame};
use raft_net::{Frame, Hello, ProposeError};
use raft_testkit::{
    CLUSTER, Kv, Member, PATIENCE, Tcp, all_applied, config, create_disk, listeners, membership, propose, propose_many,
    set, settled_leader, tcp_options,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const VOTERS: [u64; 3] = [1, 2, 3];

/// Three nodes over TCP and durable stores in `dirs`; node `id`'s handshakes say it is in
/// cluster `cluster_of(id)`.
async fn cluster(dirs: &[tempfile::TempDir], cluster_of: impl Fn(u64) -> u64) -> (Vec<Member<Kv>>, AddressBook) {
    raft_testkit::init_tracing(); // RUST_LOG shows the crates' logs (for failing tests).
    let ids: Vec<NodeId> = VOTERS.iter().map(|id| NodeId(*id)).collect();
    let (sockets, addresses) = listeners(&ids).await.expect("listeners on 127.0.0.1");
    let members = ids
        .iter()
        .zip(sockets)
        .zip(dirs)
        .map(|((&id, listener), dir)| {
            let mut config = config(id);
            config.addresses = addresses.clone();
            let storage = create_disk(dir.path(), CLUSTER, id, membership(&VOTERS)).expect("create store");
            let wiring = Tcp::loopback(cluster_of(id.0), listener, &addresses, tcp_options());
            Member::start(config, storage, wiring, Kv::default()).expect("the node starts")
        })
        .collect();
    (members, addresses)
}

type AddressBook = BTreeMap<NodeId, SocketAddr>;

fn temp_dirs() -> Vec<tempfile::TempDir> {
    VOTERS.iter().map(|_| tempfile::tempdir().expect("temp dir")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_never_gets_a_message_through() {
    let dirs = temp_dirs();
    // Node 3 believes it belongs to cluster 99: every handshake between it and the others fails.
    let (members, _) = cluster(&dirs, |id| if id == 3 { 99 } else { CLUSTER }).await;
    let good: Vec<&Member<Kv>> = members[..2].iter().collect();
    settled_leader(&good).await;
    let handles: Vec<_> = good.iter().map(|m| m.handle.clone()).collect();
    let ids: Vec<_> = good.iter().map(|m| m.id).collect();
    propose_many(&handles, &ids, 0..50, 8).await;
    let last = propose(&handles, &ids, 0, set("last", "entry")).await;
    all_applied(&good, last).await;

    let outsider = members[2].handle.status().await.expect("node 3 runs");
    assert_eq!((outsider.leader, outsider.commit, outsider.applied), (None, Index(0), Index(0)));
    assert!(members[2].view.map().is_empty());
    for member in &good {
        let status = member.handle.status().await.expect("runs");
        if let Some(peer) = status.peers.get(&NodeId(3)) {
            assert_eq!(peer.match_index, Index(0), "node {} replicated to the outsider", member.id);
        }
    }
    for member in members {
        member.handle.shutdown().await;
    }
}

/// Waits until the node closes `stream` (end of stream or reset).
async fn assert_closed(stream: &mut TcpStream, what: &str) {
    let wait = async {
        let mut buffer = [0; 256];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    timeout(PATIENCE, wait).await.unwrap_or_else(|_| panic!("the node did not close the connection: {what}"));
}

async fn connect(address: SocketAddr) -> TcpStream {
    TcpStream::connect(address).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_close_the_connection_and_harm_nothing() {
    let dirs = temp_dirs();
    let (members, addresses) = cluster(&dirs, |_| CLUSTER).await;
    let all: Vec<&Member<Kv>> = members.iter().collect();
    let leader = settled_leader(&all).await;
    let target = members[leader.0 as usize - 1].handle.clone();
    let address = addresses[&leader];

    let mut stream = connect(address).await;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: raft\r\n\r\n").await.expect("write garbage");
    assert_closed(&mut stream, "garbage instead of a hello").await;

    let mut stream = connect(address).await;
    stream.write_all(&u32::MAX.to_be_bytes()).await.expect("write a huge length");
    stream.write_all(&[0; 64]).await.expect("write some payload");
    assert_closed(&mut stream, "an oversized hello").await;

    // A stranger that passes the handshake (posing as a peer) and then sends junk.
    let peer = if leader == NodeId(1) { NodeId(2) } else { NodeId(1) };
    for junk in [u32::MAX.to_be_bytes().to_vec(), [&8_u32.to_be_bytes()[..], &[0xff; 8]].concat()] {
        let mut stream = connect(address).await;
        let hello = Frame::Hello(Hello::new(CLUSTER, peer, leader));
        write_frame(&mut stream, &hello, HELLO_FRAME_BYTES_MAX).await.expect("write hello");
        let reply: Frame = read_frame(&mut stream, HELLO_FRAME_BYTES_MAX, &mut Vec::new()).await.expect("reply");
        assert_eq!(reply, Frame::HelloAccepted);
        stream.write_all(&junk).await.expect("write junk");
        assert_closed(&mut stream, "junk after the handshake").await;
    }

    // The node still commits.
    let handles: Vec<_> = members.iter().map(|m| m.handle.clone()).collect();
    let ids: Vec<_> = members.iter().map(|m| m.id).collect();
    let first = ids.iter().position(|id| *id == leader).expect("the leader is a member");
    let index = propose(&handles, &ids, first, set("after", "junk")).await;
    all_applied(&all, index).await;
    assert!(target.status().await.is_ok());
    for member in members {
        member.handle.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_answers_not_leader_with_the_leader_and_its_address() {
    let dirs = temp_dirs();
    let (members, addresses) = cluster(&dirs, |_| CLUSTER).await;
    let all: Vec<&Member<Kv>> = members.iter().collect();
    let leader = settled_leader(&all).await;
    let follower = members.iter().find(|m| m.id != leader).expect("a follower");
    match follower.handle.propose(set("to", "follower")).await {
        Err(
            error @ ProposeError::Refused {
                reason: raft_core::ProposeError::NotLeader { leader: Some(named) },
                leader_address: Some(address),
            },
        ) => {
            assert_eq!(named, leader);
            assert_eq!(address, addresses[&leader]);
            assert_eq!(error.leader_hint(), Some((leader, Some(addresses[&leader]))));
        }
        other => panic!("expected NotLeader with the leader's address, got {other:?}"),
    }
    for member in members {
        member.handle.shutdown().await;
    }
}
