//! The library's metrics on real runs (`raft_net::metrics` lists them): a debugging recorder is
//! installed for this whole test binary (the drivers record from their own threads, so it must
//! be the global one), and the counters, histograms and gauges are read back after three nodes
//! over TCP with the durable store elect a leader, commit proposals, refuse one, lose a node and
//! catch it up by snapshot; and after a shared write-ahead log writes a batch.

use std::sync::OnceLock;

use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use raft_core::{Entry, EntryPayload, GroupId, Index, Membership, NodeId, Output, Term};
use raft_net::metrics::{
    APPLIED_INDEX, APPLY_LATENCY_SECONDS, COMMIT_INDEX, COMMIT_LATENCY_SECONDS, DIAL_FAILURES_TOTAL, ELECTIONS_TOTAL,
    HOST_GROUPS, HOST_LEADERS, HOST_PROPOSALS_PENDING, HOST_QUIET_GROUPS, LEADER_CHANGES_TOTAL, MESSAGE_BYTES_TOTAL,
    MESSAGES_TOTAL, PROPOSALS_TOTAL, RECONNECTS_TOTAL, REPLICATION_LAG_ENTRIES, SNAPSHOT_TRANSFERS_TOTAL, TERM,
    WAL_CACHE_BYTES, WAL_FSYNC_BYTES, WAL_FSYNC_ENTRIES, WAL_FSYNC_SECONDS, WAL_GROUPS, WAL_SEGMENT_BYTES,
    WAL_SEGMENTS,
};
use raft_storage::{Identity, SharedWal, StdFs, WalOptions};
use raft_testkit::{
    ClusterBuilder, Kv, NetworkKind, StorageKind, all_applied, propose, propose_many, set, settled_leader,
};

/// What one snapshot of the recorder held: kind, name, labels, value.
struct Recorded(Vec<(MetricKind, String, Labels, DebugValue)>);

/// A metric's labels, as (key, value).
type Labels = Vec<(String, String)>;

impl Recorded {
    /// The values of the metrics of `kind` named `name` whose labels include `labels`.
    fn matching(&self, kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> Vec<&DebugValue> {
        let has =
            |have: &[(String, String)]| labels.iter().all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v));
        self.0.iter().filter(|(k, n, l, _)| *k == kind && n == name && has(l)).map(|(.., value)| value).collect()
    }

    /// The sum of the matching counters.
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let values = self.matching(MetricKind::Counter, name, labels);
        values.iter().map(|value| if let DebugValue::Counter(count) = value { *count } else { 0 }).sum()
    }

    /// Every sample of the matching histograms.
    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        let values = self.matching(MetricKind::Histogram, name, labels);
        values
            .iter()
            .flat_map(|value| if let DebugValue::Histogram(samples) = value { samples.clone() } else { Vec::new() })
            .map(|s| s.0)
            .collect()
    }

    /// The values of the matching gauges.
    fn gauges(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        let values = self.matching(MetricKind::Gauge, name, labels);
        values
            .iter()
            .filter_map(|value| if let DebugValue::Gauge(gauge) = value { Some(gauge.0) } else { None })
            .collect()
    }
}

/// The tests of this binary take turns: a snapshot resets what it read.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The recorder of this binary, installed once.
fn recorder() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("no other recorder in this binary");
        raft_net::metrics::describe();
        snapshotter
    })
}

fn take(snapshotter: &Snapshotter) -> Recorded {
    let recorded = snapshotter.snapshot().into_vec().into_iter().map(|(key, _, _, value)| {
        let (kind, key) = key.into_parts();
        let labels = key.labels().map(|label| (label.key().to_string(), label.value().to_string())).collect();
        (kind, key.name().to_string(), labels, value)
    });
    Recorded(recorded.collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_cluster_records_proposals_elections_messages_snapshots_and_fsyncs() {
    let _turn = TURN.lock().await;
    let snapshotter = recorder();
    let builder = ClusterBuilder::new(3)
        .network(NetworkKind::Tcp)
        .storage(StorageKind::disk())
        .configure(raft_testkit::snapshotting);
    let mut cluster = builder.start(|_| Kv::default()).await.expect("the cluster starts");
    let leader = settled_leader(&cluster.running()).await;
    propose_many(&cluster.handles(), &cluster.ids(), 0..20, 4).await;
    // A follower refuses a proposal.
    let follower = cluster.running().into_iter().find(|member| member.id != leader).expect("a follower").id;
    let refused = cluster.member(follower).expect("runs").handle.propose(set("refused", "x")).await;
    assert!(refused.is_err(), "a follower accepted a proposal");

    // Node 3 misses enough of the log to need a snapshot when it comes back.
    let down = NodeId(3);
    cluster.stop(down).await.expect("node 3 runs");
    let (handles, ids) = (cluster.handles(), cluster.ids());
    propose_many(&handles, &ids, 20..1000, 32).await;
    let last = propose(&handles, &ids, 0, set("last", "entry")).await;
    cluster.restart(down).await.expect("node 3 restarts");
    all_applied(&cluster.running(), last).await;
    // A leader's lag gauges are sampled once per tick: let a few pass.
    tokio::time::sleep(raft_testkit::TICK * 4).await;
    let leader = settled_leader(&cluster.running()).await;
    let recorded = take(snapshotter);
    cluster.shutdown().await;

    let group = ("group", "0");
    assert!(recorded.counter(PROPOSALS_TOTAL, &[group, ("outcome", "applied")]) >= 1001);
    assert!(recorded.counter(PROPOSALS_TOTAL, &[("outcome", "refused")]) >= 1);
    assert!(recorded.counter(ELECTIONS_TOTAL, &[group]) >= 1);
    // Every node learned of a leader at least once.
    for id in ["1", "2", "3"] {
        assert!(recorded.counter(LEADER_CHANGES_TOTAL, &[("node", id)]) >= 1, "node {id} saw no leader");
    }
    // Node 3 received and installed a snapshot; a leader sent it.
    assert!(recorded.counter(SNAPSHOT_TRANSFERS_TOTAL, &[("event", "sent")]) >= 1);
    assert!(recorded.counter(SNAPSHOT_TRANSFERS_TOTAL, &[("node", "3"), ("event", "received")]) >= 1);
    assert!(recorded.counter(SNAPSHOT_TRANSFERS_TOTAL, &[("node", "3"), ("event", "installed")]) >= 1);

    let commits = recorded.samples(COMMIT_LATENCY_SECONDS, &[group]);
    assert!(!commits.is_empty() && commits.iter().all(|seconds| *seconds >= 0.0 && *seconds < 60.0), "{commits:?}");
    assert!(!recorded.samples(APPLY_LATENCY_SECONDS, &[group, ("node", "3")]).is_empty());

    // Each node's log synced what it appended; a node's syncs cover at least every entry once.
    for id in ["1", "2", "3"] {
        let wal = [("node", id), ("wal", "group")];
        assert!(!recorded.samples(WAL_FSYNC_SECONDS, &wal).is_empty(), "node {id} recorded no fsync");
        assert!(recorded.samples(WAL_FSYNC_BYTES, &wal).iter().sum::<f64>() > 0.0);
    }
    let synced_entries: f64 = recorded.samples(WAL_FSYNC_ENTRIES, &[("node", "1"), ("wal", "group")]).iter().sum();
    assert!(synced_entries >= 1001.0, "node 1 synced {synced_entries} entries");

    // Appends went both ways between the leader and each peer, by kind; and heartbeats.
    let leader_label = leader.to_string();
    let sent = [("node", leader_label.as_str()), ("kind", "append_entries"), ("direction", "sent")];
    assert!(recorded.counter(MESSAGES_TOTAL, &sent) >= 1);
    assert!(recorded.counter(MESSAGE_BYTES_TOTAL, &sent) > recorded.counter(MESSAGES_TOTAL, &sent));
    let received = [("peer", leader_label.as_str()), ("kind", "append_entries"), ("direction", "received")];
    assert!(recorded.counter(MESSAGES_TOTAL, &received) >= 1);
    assert!(recorded.counter(MESSAGES_TOTAL, &[("kind", "append_response"), ("direction", "received")]) >= 1);
    assert!(recorded.counter(MESSAGES_TOTAL, &[("kind", "install_snapshot"), ("peer", "3")]) >= 1);
    // Node 3's peers lost their connection to it and dialed it again once it was back.
    assert!(recorded.counter(RECONNECTS_TOTAL, &[("peer", "3")]) >= 1);
    assert!(recorded.counter(DIAL_FAILURES_TOTAL, &[("peer", "3")]) >= 1);

    // The gauges: the leader's term, commit and applied index; its peers' lag (caught up).
    let leader_group = [("node", leader_label.as_str()), group];
    let terms = recorded.gauges(TERM, &leader_group);
    assert!(!terms.is_empty() && terms.iter().all(|term| *term >= 1.0), "{terms:?}");
    // Node 3's commit index is the core's, also right after its snapshot install.
    let node_3 = [("node", "3"), group];
    assert!(recorded.gauges(COMMIT_INDEX, &node_3).iter().any(|index| *index >= last.0 as f64));
    assert!(recorded.gauges(COMMIT_INDEX, &leader_group).iter().any(|index| *index >= last.0 as f64));
    assert!(recorded.gauges(APPLIED_INDEX, &leader_group).iter().any(|index| *index >= last.0 as f64));
    let lags = recorded.gauges(REPLICATION_LAG_ENTRIES, &leader_group);
    assert_eq!(lags.len(), 2, "one lag gauge per peer of the leader");
    assert!(lags.iter().all(|lag| *lag == 0.0), "both peers caught up: {lags:?}");
}

#[test]
fn a_shared_wal_records_each_group_commit_fsync() {
    let _turn = TURN.blocking_lock();
    let snapshotter = recorder();
    let dir = tempfile::tempdir().expect("a temp dir");
    let identity = Identity { cluster_id: 7, node_id: NodeId(9) };
    let wal = SharedWal::create(StdFs, dir.path(), identity, WalOptions::default()).expect("created");
    let mut one = wal.create_group(GroupId(1), Membership::new([NodeId(9)])).expect("group 1");
    let mut two = wal.create_group(GroupId(2), Membership::new([NodeId(9)])).expect("group 2");
    let entry = |index| Entry { index: Index(index), term: Term(1), payload: EntryPayload::Noop };
    let mut first = Output { entries: vec![entry(1)], ..Output::default() };
    let mut second = Output { entries: vec![entry(1), entry(2)], ..Output::default() };
    wal.write_batch(&mut [(&mut one, &mut first), (&mut two, &mut second)]).expect("written");
    let recorded = take(snapshotter);

    let labels = [("node", "9"), ("wal", "shared")];
    assert_eq!(recorded.samples(WAL_FSYNC_SECONDS, &labels).len(), 1, "one fsync for the batch of two groups");
    assert_eq!(recorded.samples(WAL_FSYNC_ENTRIES, &labels), [3.0]);
    assert!(recorded.samples(WAL_FSYNC_BYTES, &labels)[0] > 0.0);
    // The node-wide view of the log: its size on disk, its cache, its groups, as of that commit.
    assert_eq!(recorded.gauges(WAL_SEGMENT_BYTES, &labels), [wal.segment_bytes() as f64]);
    assert!(wal.segment_bytes() > 0);
    assert_eq!(recorded.gauges(WAL_SEGMENTS, &labels), [wal.segment_count() as f64]);
    assert_eq!(recorded.gauges(WAL_CACHE_BYTES, &labels), [wal.cache_bytes() as f64]);
    assert!(wal.cache_bytes() > 0, "the three entries are cached");
    assert_eq!(recorded.gauges(WAL_GROUPS, &labels), [2.0]);
    wal.remove_group(GroupId(1)).expect("removed");
    assert_eq!(take(snapshotter).gauges(WAL_GROUPS, &labels), [1.0], "a removal is seen at once");
    // A compaction that frees whole segments shows at once: the write's own reclamation first.
    let options = WalOptions { segment_bytes_max: 4096, ..WalOptions::default() };
    let dir = tempfile::tempdir().expect("a temp dir");
    let identity = Identity { cluster_id: 7, node_id: NodeId(8) };
    let wal = SharedWal::create(StdFs, dir.path(), identity, options).expect("created");
    let mut group = wal.create_group(GroupId(1), Membership::new([NodeId(8)])).expect("group 1");
    for index in 1..=40 {
        let payload = EntryPayload::Normal(vec![7; 500].into());
        let mut output =
            Output { entries: vec![Entry { index: Index(index), term: Term(1), payload }], ..Output::default() };
        wal.write_batch(&mut [(&mut group, &mut output)]).expect("written");
    }
    let labels = [("node", "8"), ("wal", "shared")];
    let segments_before = take(snapshotter).gauges(WAL_SEGMENTS, &labels);
    assert!(segments_before[0] > 2.0, "several segments: {segments_before:?}");
    raft_storage::LogStore::compact(&mut group, Index(40), Term(1)).expect("compacted");
    let recorded = take(snapshotter);
    assert_eq!(recorded.gauges(WAL_SEGMENTS, &labels), [wal.segment_count() as f64]);
    assert!((wal.segment_count() as f64) < segments_before[0], "segments reclaimed");
    assert_eq!(recorded.gauges(WAL_SEGMENT_BYTES, &labels), [wal.segment_bytes() as f64]);
}

#[test]
fn a_disk_store_counts_every_byte_an_fsync_covers_also_across_a_segment_rotation() {
    let _turn = TURN.blocking_lock();
    let snapshotter = recorder();
    let entries: Vec<Entry> = (1..=10)
        .map(|index| Entry { index: Index(index), term: Term(1), payload: EntryPayload::Normal(vec![7; 100].into()) })
        .collect();
    // The same entries in one append, into one segment (node 11) or rotating every two (node 12).
    for (node, segment_bytes_max) in [(11, 1 << 20), (12, 300)] {
        let dir = tempfile::tempdir().expect("a temp dir");
        let identity = Identity { cluster_id: 7, node_id: NodeId(node) };
        let options = raft_storage::DiskOptions { segment_bytes_max, ..raft_storage::DiskOptions::default() };
        let mut store =
            raft_storage::DiskStorage::create(StdFs, dir.path(), identity, Membership::new([NodeId(node)]), options)
                .expect("created");
        raft_storage::LogStore::persist(&mut store, None, &entries).expect("written");
        assert!(node != 12 || store.segment_count() > 1, "node 12's append rotates segments");
    }
    let recorded = take(snapshotter);
    let bytes = |node| recorded.samples(WAL_FSYNC_BYTES, &[("node", node), ("wal", "group")]);
    assert_eq!(bytes("11").len(), 1);
    assert_eq!(bytes("12"), bytes("11"), "the same records, whatever the segments they went to");
    assert_eq!(recorded.samples(WAL_FSYNC_ENTRIES, &[("node", "12"), ("wal", "group")]), [10.0]);
}

/// A host's node-wide gauges: the groups it runs, the leaders its node holds, the quiet groups
/// and the proposals pending, set by its ticker once a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_reports_its_groups_leaders_and_pending_proposals() {
    let _turn = TURN.lock().await;
    let snapshotter = recorder();
    let id = NodeId(1);
    let network = raft_net::MemNetwork::new(std::num::NonZeroUsize::new(64).expect("non-zero"));
    let config =
        raft_net::HostConfig { thread_name: "metrics-host".to_string(), ..raft_net::HostConfig::with_workers(1) };
    let host = raft_net::Host::start(config).expect("host");
    let mut handles = Vec::new();
    for group in (1..=3).map(GroupId) {
        // Groups 1 and 2: this node alone, so it leads them; group 3 waits for a peer that
        // never comes, so it has no leader.
        let voters = if group.0 == 3 { vec![id, NodeId(2)] } else { vec![id] };
        let store = raft_storage::MemStorage::new(Membership::new(voters));
        let (transport, inbound) = network.join_group(id, group).expect("joined");
        let handle =
            host.add_group(group, raft_testkit::config(id), store, transport, inbound, Kv::default()).expect("added");
        handles.push(handle);
    }
    for handle in &handles[..2] {
        propose(std::slice::from_ref(handle), &[id], 0, set("k", "v")).await;
    }
    let labels = [("host", "metrics-host")];
    let gauge = |recorded: &Recorded, name| recorded.gauges(name, &labels).first().copied();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let recorded = take(snapshotter);
        let seen =
            [HOST_GROUPS, HOST_LEADERS, HOST_QUIET_GROUPS, HOST_PROPOSALS_PENDING].map(|name| gauge(&recorded, name));
        if seen == [Some(3.0), Some(2.0), Some(0.0), Some(0.0)] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the gauges never showed 3 groups, 2 led: {seen:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    host.shutdown().await;
    let recorded = take(snapshotter);
    let seen = [HOST_GROUPS, HOST_LEADERS].map(|name| gauge(&recorded, name));
    assert_eq!(seen, [Some(0.0), Some(0.0)], "a host shut down runs nothing");
}
