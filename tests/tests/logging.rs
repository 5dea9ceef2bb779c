//! What the crates log, asserted through a capturing `tracing` layer (`raft_testkit::logs`):
//! raft-core's elections with their cause, votes refused with the reason, term changes with who
//! caused them, leader changes and log truncation on a conflict (a bare `Raft` stepped by hand,
//! captured on this thread); a torn tail cut at WAL recovery, with file and offset; and, on real
//! clusters (captured process-wide), events inside the spans that name the node, the group and
//! the peer: an election and a leader, peer connections up and down, and a fail-stop with its
//! reason.
//!
//! Only the cluster tests use the process-wide capture, with node ids of their own (1..=3 over
//! TCP, 7 for the fail-stop), so that they tell their events apart.

use std::io::{ErrorKind, Write};

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, HardState, Index, Message, MessageBody, NodeId, Options, Raft, Term};
use raft_net::{MemNetwork, NodeEvent, StopReason};
use raft_storage::testing::SimFs;
use raft_storage::{DiskOptions, DiskStorage, Identity, LogStore, MemStorage, StdFs};
use raft_testkit::{
    CLUSTER, CapturedEvent, ClusterBuilder, Kv, Member, NetworkKind, PATIENCE, capture_global, capture_local, config,
    membership, set, settled_leader,
};
use tokio::time::timeout;
use tracing_subscriber::filter::LevelFilter;

fn options(pre_vote: bool, check_quorum: bool) -> Options {
    Options::builder()
        .election_ticks(10)
        .heartbeat_ticks(1)
        .pre_vote(pre_vote)
        .check_quorum(check_quorum)
        .rng_seed(1)
        .build()
        .expect("valid options")
}

fn noop(index: u64, term: u64) -> Entry {
    Entry { index: Index(index), term: Term(term), payload: EntryPayload::Noop }
}

/// Node `id` of voters 1..=3 whose log holds no-ops of `terms` at indexes 1.., in `term`.
fn node(id: u64, terms: &[u64], term: u64, options: Options) -> Raft<MemStorage> {
    let mut storage = MemStorage::new(membership(&[1, 2, 3]));
    let entries: Vec<Entry> = terms.iter().enumerate().map(|(i, &t)| noop(i as u64 + 1, t)).collect();
    storage.append(&entries).expect("consecutive entries");
    storage.set_hard_state(HardState { term: Term(term), vote: None, commit: Index(0) });
    Raft::new(NodeId(id), options, storage).expect("memory storage")
}

fn message(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message { from: NodeId(from), to: NodeId(to), term: Term(term), body }
}

/// The one event with `message`, or a panic listing what was logged.
fn one<'a>(events: &'a [CapturedEvent], message: &str) -> &'a CapturedEvent {
    let found: Vec<_> = events.iter().filter(|event| event.message == message).collect();
    match found[..] {
        [event] => event,
        _ => panic!("expected one {message:?} event, got {}: {events:#?}", found.len()),
    }
}

fn fields<'a>(event: &'a CapturedEvent, names: &[&str]) -> Vec<Option<&'a str>> {
    names.iter().map(|name| event.field(name)).collect()
}

#[test]
fn an_election_timeout_starts_an_election_that_says_so_and_a_second_candidate_is_refused_with_the_reason() {
    let (_, events) = capture_local(LevelFilter::DEBUG, || {
        let mut raft = node(1, &[], 0, options(false, false));
        for _ in 0..20 {
            raft.tick();
        }
        let request = MessageBody::VoteRequest {
            pre_vote: false,
            last_log_index: Index(0),
            last_log_term: Term(0),
            transfer: false,
        };
        let _ = raft.step(message(3, 1, 1, request));
    });
    let started = one(&events, "election started");
    assert_eq!(fields(started, &["cause", "term"]), [Some("election timeout"), Some("1")]);
    assert_eq!(started.level, tracing::Level::INFO);
    let refused = one(&events, "vote refused");
    assert_eq!(
        fields(refused, &["candidate", "term", "reason"]),
        [Some("3"), Some("1"), Some("already voted in this term")]
    );
}

#[test]
fn a_vote_request_from_a_later_term_changes_the_term_and_is_refused_for_a_log_behind() {
    let (_, events) = capture_local(LevelFilter::DEBUG, || {
        let mut raft = node(2, &[1, 1], 1, options(false, false));
        let request = MessageBody::VoteRequest {
            pre_vote: false,
            last_log_index: Index(1),
            last_log_term: Term(1),
            transfer: false,
        };
        let _ = raft.step(message(3, 2, 2, request));
    });
    let changed = one(&events, "term changed by a message");
    assert_eq!(
        fields(changed, &["previous_term", "term", "from", "kind"]),
        [Some("1"), Some("2"), Some("3"), Some("VoteRequest")]
    );
    let refused = one(&events, "vote refused");
    assert_eq!(
        fields(refused, &["candidate", "reason", "last_log_index"]),
        [Some("3"), Some("candidate's log is behind"), Some("1")]
    );
}

#[test]
fn a_conflicting_append_logs_the_truncation_with_its_index_and_count_the_term_change_and_the_new_leader() {
    let (_, events) = capture_local(LevelFilter::DEBUG, || {
        let mut raft = node(2, &[1, 1, 2, 2], 2, options(false, false));
        let append = MessageBody::AppendEntries {
            prev_log_index: Index(2),
            prev_log_term: Term(1),
            entries: vec![noop(3, 3)],
            commit: Index(0),
        };
        raft.step(message(1, 2, 3, append)).expect("a valid append");
        assert_eq!(raft.last_index(), Index(3));
    });
    let truncated = one(&events, "log truncated: entries conflict with the leader's");
    assert_eq!(
        fields(truncated, &["from_index", "entries_removed", "last_index", "leader", "term"]),
        [Some("3"), Some("2"), Some("4"), Some("1"), Some("3")]
    );
    let changed = one(&events, "term changed by a message");
    assert_eq!(
        fields(changed, &["previous_term", "term", "from", "kind"]),
        [Some("2"), Some("3"), Some("1"), Some("AppendEntries")]
    );
    let leader = one(&events, "leader changed");
    assert_eq!(fields(leader, &["leader", "term"]), [Some("1"), Some("3")]);
}

#[test]
fn a_leadership_transfer_and_a_check_quorum_step_down_name_their_cause() {
    let (_, events) = capture_local(LevelFilter::DEBUG, || {
        let mut raft = node(1, &[], 1, options(false, true));
        let _ = raft.step(message(2, 1, 1, MessageBody::TimeoutNow));
        let granted = MessageBody::VoteResponse { pre_vote: false, granted: true };
        raft.step(message(2, 1, 2, granted)).expect("a vote of this term");
        assert!(raft.is_leader());
        // No follower answers for an election timeout.
        for _ in 0..10 {
            raft.tick();
        }
        assert!(!raft.is_leader());
    });
    let started = one(&events, "election started");
    assert_eq!(fields(started, &["cause", "term"]), [Some("leadership transfer"), Some("2")]);
    assert_eq!(one(&events, "became leader").field("term"), Some("2"));
    let stepped_down = one(&events, "stepping down: no quorum heard in an election timeout");
    assert_eq!(fields(stepped_down, &["cause", "term"]), [Some("check quorum"), Some("2")]);
}

#[test]
fn wal_recovery_logs_the_torn_tail_it_cuts_with_file_and_offset() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let identity = Identity { cluster_id: CLUSTER, node_id: NodeId(1) };
    // No zeros filled ahead of the records: the torn write is appended at the file's end.
    let options = DiskOptions { preallocate_bytes: 0, ..DiskOptions::default() };
    let mut store = DiskStorage::create(StdFs, dir.path(), identity, membership(&[1]), options).expect("create");
    let entries: Vec<Entry> = (1..=5)
        .map(|i| Entry { index: Index(i), term: Term(1), payload: EntryPayload::Normal(Bytes::from_static(b"x")) })
        .collect();
    store.persist(None, &entries).expect("persist");
    drop(store);
    let segment = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|entry| entry.expect("an entry").path())
        .find(|path| path.extension().is_some_and(|extension| extension == "wal"))
        .expect("a segment");
    let length = std::fs::metadata(&segment).expect("metadata").len();
    let mut file = std::fs::OpenOptions::new().append(true).open(&segment).expect("open the segment");
    file.write_all(&[17, 0, 0, 0, 1, 2]).expect("append a record's prefix"); // A torn write.
    drop(file);

    let (store, events) = capture_local(LevelFilter::INFO, || DiskStorage::open(StdFs, dir.path(), identity, options));
    assert_eq!(raft_core::Storage::last_index(&store.expect("recovers")), Ok(Index(5)));
    let repaired = one(&events, "storage recovery repaired a file");
    assert_eq!(repaired.level, tracing::Level::WARN);
    let file = segment.display().to_string();
    let length = length.to_string();
    assert_eq!(
        fields(repaired, &["repair", "file", "offset", "bytes_dropped"]),
        [Some("torn tail truncated"), Some(file.as_str()), Some(length.as_str()), Some("6")]
    );
}

/// The first event with `message` that `accept` accepts, polled for up to the harness's patience.
async fn logged(message: &str, accept: impl Fn(&CapturedEvent) -> bool) -> CapturedEvent {
    let captured = capture_global().expect("no other global subscriber in this binary");
    let found = timeout(PATIENCE, async {
        loop {
            if let Some(event) = captured.with_message(message).into_iter().find(&accept) {
                return event;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no {message:?} event as expected; logged: {:#?}", captured.events()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_cluster_logs_its_election_and_peer_connections_in_spans_naming_node_group_and_peer() {
    capture_global().expect("no other global subscriber in this binary");
    let mut cluster =
        ClusterBuilder::new(3).network(NetworkKind::Tcp).start(|_| Kv::default()).await.expect("the cluster starts");
    let leader = settled_leader(&cluster.running()).await.to_string();
    fn in_group_of(node: &str) -> impl Fn(&CapturedEvent) -> bool + '_ {
        move |event| event.in_span("group", "node", node)
    }

    let won = logged("became leader", in_group_of(&leader)).await;
    assert_eq!(won.span_field("group"), Some("0"));
    let term = won.field("term").expect("a term").to_owned();
    let started =
        logged("election started", |event| in_group_of(&leader)(event) && event.field("term") == Some(&term)).await;
    // The span carries the term the round began in, before the election raised it.
    let span_term: u64 = started.span_field("term").and_then(|term| term.parse().ok()).expect("a term in the span");
    assert!(span_term < term.parse::<u64>().expect("a numeric term"), "{started}");
    assert_eq!(started.field("cause"), Some("election timeout"));
    let follower = ["1", "2", "3"].into_iter().find(|&id| id != leader).expect("a follower");
    let followed =
        logged("leader changed", |event| in_group_of(follower)(event) && event.field("leader") == Some(&leader)).await;
    assert_eq!(followed.field("term"), Some(term.as_str()));

    // The leader's writer to the follower, and the follower's reader from the leader.
    let outbound = |event: &CapturedEvent| {
        event.in_span("tcp_outbound", "local", &leader) && event.in_span("tcp_outbound", "peer", follower)
    };
    let up = logged("peer connection up", outbound).await;
    assert_eq!((up.span_field("local"), up.span_field("peer")), (Some(leader.as_str()), Some(follower)));
    assert!(up.span_field("address").is_some_and(|address| address.starts_with("127.0.0.1:")));
    let inbound = |event: &CapturedEvent| {
        event.in_span("tcp_inbound", "local", follower) && event.in_span("tcp_inbound", "peer", &leader)
    };
    logged("peer connection up", inbound).await;

    // The follower's node stops: the leader's connection to it goes down, with a reason.
    let stopped = NodeId(follower.parse().expect("a node id"));
    // Only what comes after the stop counts (connections may have churned while starting).
    capture_global().expect("no other global subscriber in this binary").clear();
    cluster.stop(stopped).await.expect("the follower runs");
    let down = logged("peer connection down", outbound).await;
    assert!(down.field("reason").is_some_and(|reason| !reason.is_empty()), "{down}");
    assert_eq!(down.span_field("peer"), Some(follower));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_stop_is_logged_with_its_reason_in_the_groups_span() {
    capture_global().expect("no other global subscriber in this binary");
    let fs = SimFs::new(1);
    let id = NodeId(7);
    let identity = Identity { cluster_id: CLUSTER, node_id: id };
    let storage = DiskStorage::create(fs.clone(), "/data", identity, membership(&[7]), DiskOptions::default())
        .expect("create store");
    let network = MemNetwork::default();
    let member = Member::start(config(id), storage, &network, Kv::default()).expect("node 7 starts");
    let mut events = member.handle.events();
    settled_leader(&[&member]).await;
    fs.fail_after(0, ErrorKind::Other);
    let _ = member.handle.propose(set("doomed", "value")).await.expect_err("the write fails");
    let stopped = timeout(PATIENCE, async {
        loop {
            if let Ok(NodeEvent::Stopped(reason)) = events.recv().await {
                return reason;
            }
        }
    })
    .await
    .expect("a Stopped event");
    assert!(matches!(stopped, StopReason::StorageFailed(_)), "{stopped:?}");
    let logged = logged("group stopping: fail-stop", |event| event.in_span("group", "node", "7")).await;
    assert_eq!(logged.level, tracing::Level::WARN);
    assert_eq!(logged.field("reason"), Some(stopped.to_string().as_str()));
    member.handle.shutdown().await;
}
