//! Several Raft groups on the same three nodes, sharing one TCP transport per node (issue 19's
//! "one transport"): each group elects its own leader and replicates its own writes, and the
//! nodes open one connection per direction between each pair, whatever the number of groups.
//! Each group runs its own raft-net driver for now; the worker-pool driver is still to come.

use std::collections::BTreeMap;

use raft_core::{GroupId, NodeId};
use raft_net::{NodeHandle, TcpTransport, TokioConnector};
use raft_storage::MemStorage;
use raft_testkit::{Kv, KvView, eventually, listeners, membership, propose, set, tcp_options};

const GROUPS: u64 = 6;

/// One node: its transport and, per group, a driver and its state machine's view.
struct Node {
    transport: TcpTransport,
    groups: BTreeMap<GroupId, (NodeHandle<Kv>, KvView)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_sharing_one_transport_elect_and_replicate_independently() {
    let ids = [NodeId(1), NodeId(2), NodeId(3)];
    let (sockets, addresses) = listeners(&ids).await.expect("127.0.0.1 listeners");
    let mut nodes = Vec::new();
    for (&id, listener) in ids.iter().zip(sockets) {
        let peers = addresses.iter().filter(|(peer, _)| **peer != id).map(|(p, a)| (*p, *a)).collect();
        let transport =
            TcpTransport::start_node(raft_testkit::CLUSTER, id, listener, TokioConnector, peers, tcp_options())
                .expect("transport");
        let mut groups = BTreeMap::new();
        for group in (1..=GROUPS).map(GroupId) {
            let (group_transport, inbound) = transport.register_group(group).expect("a new group");
            let mut config = raft_testkit::config(id);
            config.addresses = addresses.clone();
            let view = KvView::default();
            let storage = MemStorage::new(membership(&[1, 2, 3]));
            let handle = raft_net::start(config, storage, group_transport, inbound, Kv(view.clone())).expect("started");
            groups.insert(group, (handle, view));
        }
        nodes.push(Node { transport, groups });
    }

    // Every group writes its own key through its own leader, and every replica applies it.
    for group in (1..=GROUPS).map(GroupId) {
        let handles: Vec<NodeHandle<Kv>> = nodes.iter().map(|node| node.groups[&group].0.clone()).collect();
        let key = format!("group-{}", group.0);
        propose(&handles, &ids, 0, set(&key, "written")).await;
    }
    for group in (1..=GROUPS).map(GroupId) {
        let key = format!("group-{}", group.0);
        eventually(&format!("every replica of group {group} applies its key and no other"), || {
            let views: Vec<KvView> = nodes.iter().map(|node| node.groups[&group].1.clone()).collect();
            let key = key.clone();
            async move {
                views.iter().all(|view| {
                    let map = view.map();
                    map.len() == 1 && map.get(key.as_bytes()).is_some_and(|value| &value[..] == b"written")
                })
            }
        })
        .await;
    }

    // One connection per direction between each pair, for all the groups together: each node
    // dials each of its two peers and accepts a connection from each. A connection per group
    // would make at least 2 * GROUPS of each; a reconnect after a timeout on a loaded machine may
    // add one or two, so the bound is "fewer than one per group".
    for node in &nodes {
        let stats = node.transport.stats();
        assert!((2..GROUPS).contains(&stats.connections_dialed), "one dial per peer, not per group: {stats:?}");
        assert!((2..GROUPS).contains(&stats.connections_accepted), "one accept per peer, not per group: {stats:?}");
        assert_eq!(stats.unknown_group_drops, 0, "every group is hosted on every node: {stats:?}");
    }

    for node in nodes {
        for (_, (handle, _)) in node.groups {
            handle.shutdown().await;
        }
        node.transport.shutdown().await;
    }
}
