//! Reads through the node driver: linearizable reads on the leader and on followers see every
//! acknowledged write, lease reads need the option, stale reads need no leader, a leader cut off
//! from the majority serves no linearizable read, and shutdown or a failing disk resolves every
//! pending read with a typed error.

use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use raft_core::{NodeId, Options, OptionsBuilder, ReadError as Refusal};
use raft_net::{MemNetwork, NodeHandle, ReadConsistency, ReadError};
use raft_storage::testing::SimFs;
use raft_storage::{DiskOptions, DiskStorage, Identity, MemStorage};
use raft_testkit::{
    CLUSTER, Cluster, ClusterBuilder, Kv, Member, NetworkKind, PATIENCE, POLL, StorageKind, config, eventually,
    membership, propose, set, settled_leader,
};
use tokio::time::{Instant, sleep, timeout};

const VOTERS: [u64; 3] = [1, 2, 3];

/// How long the tests wait for a read that must not return a value: long enough for many
/// election timeouts (10 ticks of 20 ms), short enough to keep the suite quick.
const NO_ANSWER_WAIT: Duration = Duration::from_secs(2);

/// The value of `key` in node `handle`'s state machine, read as fresh as `consistency` asks.
async fn read_key(
    handle: &NodeHandle<Kv>,
    consistency: ReadConsistency,
    key: &str,
) -> Result<Option<Bytes>, ReadError> {
    let key = Bytes::copy_from_slice(key.as_bytes());
    handle.read(consistency, move |kv: &Kv| kv.0.lock().map.get(&key).cloned()).await
}

/// Like [`read_key`], retrying a linearizable read that failed for a reason worth retrying (a
/// leadership change, no leader for now, a busy core) until [`PATIENCE`] runs out.
async fn read_key_retrying(handle: &NodeHandle<Kv>, key: &str) -> Option<Bytes> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let outcome = timeout(PATIENCE, read_key(handle, ReadConsistency::Linearizable, key)).await;
        match outcome.expect("a linearizable read in a healthy cluster answers") {
            Ok(value) => return value,
            Err(ReadError::Refused(Refusal::LeaderChanged | Refusal::NoLeader | Refusal::TooManyPending)) => {}
            Err(error) => panic!("read failed: {error}"),
        }
        assert!(Instant::now() < deadline, "no read of {key} succeeded");
        sleep(POLL).await;
    }
}

/// The test options (quick elections) changed by `tune`; each start draws a fresh seed.
fn tuned(tune: impl Fn(OptionsBuilder) -> OptionsBuilder) -> Options {
    let builder = Options::builder().election_ticks(10).heartbeat_ticks(2);
    tune(builder).build().expect("valid options")
}

/// Three nodes over the in-memory network and stores, with options changed by `tune`.
async fn mem_cluster(tune: impl Fn(OptionsBuilder) -> OptionsBuilder + Send + Sync + 'static) -> Cluster<Kv> {
    raft_testkit::init_tracing(); // RUST_LOG shows the crates' logs (for failing tests).
    let builder = ClusterBuilder::new(3).configure(move |config| config.options = tuned(&tune));
    builder.start(|_| Kv::default()).await.expect("the cluster starts")
}

/// Three nodes over the in-memory network, each with a durable store on its own disk of `disks`
/// (whose faults the test controls), with options changed by `tune`.
async fn disk_cluster(
    disks: &[SimFs],
    tune: impl Fn(OptionsBuilder) -> OptionsBuilder + Send + Sync + 'static,
) -> Cluster<Kv> {
    let store = |id: NodeId| {
        let identity = Identity { cluster_id: CLUSTER, node_id: id };
        let fs = disks[id.0 as usize - 1].clone();
        Ok(DiskStorage::create(fs, "/data", identity, membership(&VOTERS), DiskOptions::default())?)
    };
    let builder = ClusterBuilder::new(3).configure(move |config| config.options = tuned(&tune));
    builder.start_with(store, |_| Kv::default()).await.expect("the cluster starts")
}

fn handles(members: &[Member<Kv>]) -> (Vec<NodeHandle<Kv>>, Vec<NodeId>) {
    (members.iter().map(|m| m.handle.clone()).collect(), members.iter().map(|m| m.id).collect())
}

/// The settled leader's position in `members`.
async fn leader_position(members: &[Member<Kv>]) -> usize {
    let all: Vec<&Member<Kv>> = members.iter().collect();
    let leader = settled_leader(&all).await;
    members.iter().position(|m| m.id == leader).expect("the leader is a member")
}

async fn shutdown_all(members: &[Member<Kv>]) {
    for member in members {
        member.handle.shutdown().await;
    }
}

/// Over TCP and the WAL: each write, once `propose` returns, is seen by a linearizable read on
/// the next node in turn (the leader and both followers), with no waiting in between. The same
/// key is overwritten every time, so a read that missed the last write would see the one before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_write_is_visible_to_a_linearizable_read_on_every_node() {
    let builder = ClusterBuilder::new(3).network(NetworkKind::Tcp).storage(StorageKind::disk());
    let cluster = builder.start(|_| Kv::default()).await.expect("the cluster starts");
    let members = cluster.members();
    let leader = leader_position(members).await;
    let (all_handles, ids) = handles(members);
    let mut stale_misses = 0;
    for i in 0..300_usize {
        let value = i.to_string();
        propose(&all_handles, &ids, leader, set("x", &value)).await;
        let reader = &members[i % members.len()].handle;
        // For contrast: a stale read on a follower may still see the previous write.
        let stale = read_key(reader, ReadConsistency::Stale, "x").await.expect("a stale read answers");
        if stale.as_deref() != Some(value.as_bytes()) {
            stale_misses += 1;
        }
        let read = read_key_retrying(reader, "x").await;
        assert_eq!(read.as_deref(), Some(value.as_bytes()), "write {i} missed by a read on node {}", i % 3 + 1);
    }
    eprintln!("stale reads that missed the acknowledged write: {stale_misses} of 300");
    shutdown_all(members).await;
}

/// Sets its flag when dropped: when the task holding it ends, even by a panic.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Concurrent writes and linearizable reads on all three nodes: a read never sees an older value
/// than the last write acknowledged before the read was asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_linearizable_reads_never_go_back_before_an_acknowledged_write() {
    let cluster = mem_cluster(|b| b).await;
    let members = cluster.members();
    let leader = leader_position(members).await;
    let (all_handles, ids) = handles(members);
    let acknowledged = Arc::new(AtomicU64::new(0));
    let writer_done = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (all_handles, ids, acknowledged) = (all_handles.clone(), ids.clone(), Arc::clone(&acknowledged));
        let done = SetOnDrop(Arc::clone(&writer_done));
        async move {
            let _done = done;
            for i in 1..=300_u64 {
                propose(&all_handles, &ids, leader, set("x", &i.to_string())).await;
                acknowledged.store(i, Ordering::SeqCst);
            }
        }
    });
    let mut readers = Vec::new();
    for handle in all_handles {
        let (acknowledged, writer_done) = (Arc::clone(&acknowledged), Arc::clone(&writer_done));
        readers.push(tokio::spawn(async move {
            let mut reads = 0_u64;
            while !writer_done.load(Ordering::SeqCst) {
                let floor = acknowledged.load(Ordering::SeqCst);
                let value = read_key_retrying(&handle, "x").await;
                let seen = value.map_or(0, |v| std::str::from_utf8(&v).expect("utf-8").parse().expect("a number"));
                assert!(seen >= floor, "read {seen} after write {floor} was acknowledged");
                reads += 1;
            }
            reads
        }));
    }
    // Readers first: one that fails ends the test at once.
    for reader in readers {
        assert!(reader.await.expect("a reader ran") > 0);
    }
    writer.await.expect("the writer ran");
    assert_eq!(acknowledged.load(Ordering::SeqCst), 300);
    shutdown_all(members).await;
}

/// A lone voter confirms reads at once, with nobody to ask: they must be handed out although
/// the core has nothing else to do (no peer traffic, no ticks' output).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_serves_linearizable_and_lease_reads() {
    let network = MemNetwork::default();
    let id = NodeId(1);
    let mut config = config(id);
    config.options = tuned(|b| b.lease_reads(true));
    let member = Member::start(config, MemStorage::new(membership(&[1])), &network, Kv::default()).expect("starts");
    settled_leader(&[&member]).await;
    for i in 0..20_usize {
        let value = i.to_string();
        member.handle.propose(set("x", &value)).await.expect("a lone voter commits");
        for consistency in [ReadConsistency::Linearizable, ReadConsistency::Lease] {
            let read = timeout(PATIENCE, read_key(&member.handle, consistency, "x")).await;
            let read = read.expect("the read answers").expect("a lone voter serves reads");
            assert_eq!(read.as_deref(), Some(value.as_bytes()), "{consistency:?}");
        }
    }
    member.handle.shutdown().await;
}

/// Lease reads are served by the leader (and through it, by a follower) when `lease_reads` is
/// on, and refused with `LeaseNotEnabled` when it is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_reads_work_when_enabled_and_are_refused_otherwise() {
    let cluster = mem_cluster(|b| b.lease_reads(true).clock_drift_max_ticks(2)).await;
    let members = cluster.members();
    let leader = leader_position(members).await;
    let (all_handles, ids) = handles(members);
    for i in 0..20_usize {
        let value = i.to_string();
        propose(&all_handles, &ids, leader, set("x", &value)).await;
        let reader = if i % 2 == 0 { leader } else { (leader + 1) % members.len() };
        let read = timeout(PATIENCE, read_key(&members[reader].handle, ReadConsistency::Lease, "x")).await;
        let read = read.expect("a lease read answers").expect("a lease read succeeds in a healthy cluster");
        assert_eq!(read.as_deref(), Some(value.as_bytes()));
    }
    shutdown_all(members).await;

    let cluster = mem_cluster(|b| b).await;
    let members = cluster.members();
    let leader = leader_position(members).await;
    for member in [&members[leader], &members[(leader + 1) % members.len()]] {
        let read = read_key(&member.handle, ReadConsistency::Lease, "x").await;
        assert!(matches!(read, Err(ReadError::Refused(Refusal::LeaseNotEnabled))), "{read:?}");
    }
    shutdown_all(members).await;
}

/// A node whose peers are down answers stale reads from what it applied; its linearizable reads
/// fail with a typed error (or, while it still waits for its old leader, do not answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_need_no_leader_and_linearizable_ones_fail_without_one() {
    let cluster = mem_cluster(|b| b).await;
    let members = cluster.members();
    let leader = leader_position(members).await;
    let (all_handles, ids) = handles(members);
    propose(&all_handles, &ids, leader, set("x", "1")).await;
    let survivor = &members[(leader + 1) % members.len()];
    eventually("the survivor applies the write", || async { survivor.view.map().contains_key("x".as_bytes()) }).await;
    for member in members.iter().filter(|m| m.id != survivor.id) {
        member.handle.shutdown().await;
    }

    // At once: the survivor may still follow the stopped leader; its read must not hang forever.
    match timeout(NO_ANSWER_WAIT, read_key(&survivor.handle, ReadConsistency::Linearizable, "x")).await {
        Err(_) | Ok(Err(ReadError::Refused(Refusal::NoLeader | Refusal::LeaderChanged | Refusal::TimedOut))) => {}
        Ok(other) => panic!("a linearizable read without a quorum returned {other:?}"),
    }
    eventually("the survivor knows no leader", || async {
        survivor.handle.status().await.is_ok_and(|status| status.leader.is_none())
    })
    .await;
    // A node with no leader refuses at once; it may have learned of none and lost it again, so
    // allow the retryable error too, but never a value.
    let read = timeout(PATIENCE, read_key(&survivor.handle, ReadConsistency::Linearizable, "x")).await;
    let read = read.expect("a leaderless node answers");
    assert!(
        matches!(read, Err(ReadError::Refused(Refusal::NoLeader | Refusal::LeaderChanged | Refusal::TimedOut))),
        "{read:?}"
    );

    let stale = read_key(&survivor.handle, ReadConsistency::Stale, "x").await.expect("stale reads always answer");
    assert_eq!(stale.as_deref(), Some(b"1".as_slice()));
    survivor.handle.shutdown().await;
}

/// A leader cut off from the majority never serves a linearizable read: the read asked while it
/// still leads fails when check-quorum deposes it, and a read asked after the majority's new
/// leader committed a write either fails or does not answer, never returning the old value. Its
/// stale reads still show the old value. Once healed, it serves the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_serves_no_linearizable_read() {
    let cluster = mem_cluster(|b| b).await;
    let members = cluster.members();
    let network = cluster.network();
    let position = leader_position(members).await;
    let (all_handles, ids) = handles(members);
    propose(&all_handles, &ids, position, set("x", "old")).await;
    let old = &members[position];
    eventually("every node applies the old value", || async {
        members.iter().all(|m| m.view.map().get("x".as_bytes()).map(|v| v.as_ref()) == Some(b"old".as_slice()))
    })
    .await;

    network.isolate(old.id);
    let early = tokio::spawn({
        let handle = old.handle.clone();
        async move { read_key(&handle, ReadConsistency::Linearizable, "x").await }
    });
    let others: Vec<Member<Kv>> = members.iter().filter(|m| m.id != old.id).cloned().collect();
    let new_leader = leader_position(&others).await;
    let (other_handles, other_ids) = handles(&others);
    propose(&other_handles, &other_ids, new_leader, set("x", "new")).await;

    let late = timeout(NO_ANSWER_WAIT, read_key(&old.handle, ReadConsistency::Linearizable, "x")).await;
    match late {
        Err(_) | Ok(Err(ReadError::Refused(Refusal::NoLeader | Refusal::LeaderChanged | Refusal::TimedOut))) => {}
        Ok(Ok(value)) => {
            assert_eq!(value.as_deref(), Some(b"new".as_slice()), "a linearizable read missed a committed write")
        }
        Ok(Err(error)) => panic!("unexpected error {error}"),
    }
    let early = timeout(PATIENCE, early).await.expect("deposing the leader fails its read").expect("the task ran");
    assert!(matches!(early, Err(ReadError::Refused(Refusal::LeaderChanged | Refusal::NoLeader))), "{early:?}");
    let stale = read_key(&old.handle, ReadConsistency::Stale, "x").await.expect("stale reads always answer");
    assert_eq!(stale.as_deref(), Some(b"old".as_slice()), "the cut-off node has not applied the new write");

    network.heal(old.id);
    assert_eq!(read_key_retrying(&old.handle, "x").await.as_deref(), Some(b"new".as_slice()));
    shutdown_all(members).await;
}

/// A leader cut off from everyone, without check-quorum, keeps leading and keeps its reads
/// pending: the core's own limit refuses one more with `TooBusy`, and shutdown resolves the
/// pending one with `ShuttingDown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_resolves_pending_reads_with_shutting_down() {
    let cluster = mem_cluster(|b| b.check_quorum(false).reads_pending_max(1)).await;
    let members = cluster.members();
    let network = cluster.network();
    let old = &members[leader_position(members).await];
    network.isolate(old.id);
    let pending = tokio::spawn({
        let handle = old.handle.clone();
        async move { read_key(&handle, ReadConsistency::Linearizable, "x").await }
    });
    eventually("the read waits in the core", || async {
        old.handle.status().await.is_ok_and(|status| status.reads_pending == 1)
    })
    .await;
    let refused = read_key(&old.handle, ReadConsistency::Linearizable, "x").await;
    assert!(matches!(refused, Err(ReadError::Refused(Refusal::TooManyPending))), "{refused:?}");

    old.handle.shutdown().await;
    let outcome = timeout(PATIENCE, pending).await.expect("shutdown answers the read").expect("the task ran");
    assert!(matches!(outcome, Err(ReadError::ShuttingDown)), "{outcome:?}");
    for consistency in [ReadConsistency::Linearizable, ReadConsistency::Lease, ReadConsistency::Stale] {
        let late = read_key(&old.handle, consistency, "x").await;
        assert!(matches!(late, Err(ReadError::ShuttingDown)), "{consistency:?}: {late:?}");
    }
    shutdown_all(members).await;
}

/// A read pending on a leader whose disk then fails resolves with the storage failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_resolves_pending_reads_with_storage_failed() {
    let disks: Vec<SimFs> = VOTERS.iter().map(|id| SimFs::new(*id)).collect();
    let cluster = disk_cluster(&disks, |b| b.check_quorum(false)).await;
    let members = cluster.members();
    let network = cluster.network();
    let position = leader_position(members).await;
    let old = &members[position];
    network.isolate(old.id);
    let pending = tokio::spawn({
        let handle = old.handle.clone();
        async move { read_key(&handle, ReadConsistency::Linearizable, "x").await }
    });
    eventually("the read waits in the core", || async {
        old.handle.status().await.is_ok_and(|status| status.reads_pending == 1)
    })
    .await;

    // The leader's next write (the append of this proposal) fails: the node stops.
    disks[position].fail_after(0, ErrorKind::Other);
    let proposal = old.handle.propose(set("doomed", "value")).await;
    assert!(proposal.is_err(), "{proposal:?}");
    let outcome = timeout(PATIENCE, pending).await.expect("the stop answers the read").expect("the task ran");
    assert!(matches!(outcome, Err(ReadError::StorageFailed(_))), "{outcome:?}");
    let late = read_key(&old.handle, ReadConsistency::Stale, "x").await;
    assert!(matches!(late, Err(ReadError::StorageFailed(_))), "{late:?}");
    shutdown_all(members).await;
}

/// docs/pitfalls.md #29: a leader whose core thread stalls (here a slow fsync; a paused process is the
/// same to it) for longer than an election timeout must not answer a lease read that waited in
/// its queue from a lease that ran out meanwhile. The others elect a new leader and commit a new
/// value during the stall; when the stall ends, the old leader's driver gives the core's clock
/// every tick that passed before it judges the read, so the read fails (or, at worst, reads the
/// new value), and is never answered with the old one. The old driver handed the read over
/// first and caught up at most four ticks per iteration: it answered the old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stalled_past_its_lease_answers_no_stale_lease_read() {
    let disks: Vec<SimFs> = VOTERS.iter().map(|id| SimFs::new(*id)).collect();
    let cluster = disk_cluster(&disks, |b| b.lease_reads(true).clock_drift_max_ticks(2)).await;
    let members = cluster.members();
    let (handles, ids) = handles(members);
    let position = leader_position(members).await;
    propose(&handles, &ids, position, set("x", "old")).await;
    let old = &members[position];
    let value = timeout(PATIENCE, read_key(&old.handle, ReadConsistency::Lease, "x")).await;
    assert_eq!(value.expect("answers").expect("the lease holds"), Some(Bytes::from_static(b"old")));

    // The old leader's next write stalls in its fsync, holding up its core thread.
    disks[position].hold_syncs();
    let stalled = tokio::spawn({
        let handle = old.handle.clone();
        async move { handle.propose(set("y", "stalled")).await }
    });
    let others: Vec<usize> = (0..members.len()).filter(|&i| i != position).collect();
    let other_handles: Vec<NodeHandle<Kv>> = others.iter().map(|&i| handles[i].clone()).collect();
    let other_ids: Vec<NodeId> = others.iter().map(|&i| ids[i]).collect();
    eventually("the others elect a new leader", || async {
        for handle in &other_handles {
            if let Ok(status) = handle.status().await
                && status.leader.is_some_and(|leader| leader != old.id)
                && status.role == raft_core::Role::Leader
            {
                return true;
            }
        }
        false
    })
    .await;
    propose(&other_handles, &other_ids, 0, set("x", "new")).await;
    // Queued during the stall, as a client's read to the old leader would be.
    let read = tokio::spawn({
        let handle = old.handle.clone();
        async move { read_key(&handle, ReadConsistency::Lease, "x").await }
    });
    sleep(Duration::from_millis(200)).await;
    disks[position].release_syncs();

    let outcome = timeout(PATIENCE, read).await.expect("the read is answered").expect("the task ran");
    match outcome {
        Ok(value) => assert_eq!(value, Some(Bytes::from_static(b"new")), "a stale lease read"),
        Err(error) => {
            assert!(matches!(error, ReadError::Refused(Refusal::LeaderChanged | Refusal::NoLeader)), "{error:?}")
        }
    }
    let _ = timeout(PATIENCE, stalled).await;
    shutdown_all(members).await;
}
