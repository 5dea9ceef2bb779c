//! The metrics of the node driver, the TCP transport and the write-ahead logs, recorded through
//! the [`metrics`] facade. The library never chooses an exporter: the application installs a
//! recorder (raft-kv installs `metrics-exporter-prometheus`'s and serves it at `/metrics`), and
//! without one every handle is a no-op, so an application that does not want metrics pays a
//! branch per recording (and the clock readings that time commits, applies and fsyncs, a few per
//! round), and a leading group reads the core's status once per tick for the lag gauges (a small
//! allocation), recorder or not. raft-core records nothing: it does no I/O, so what is measured
//! here is derived from its outputs and its status.
//!
//! Install the recorder **before** starting stores, nodes and transports: handles registered
//! earlier record nothing. Each group registers about twenty series (outcome and event counters,
//! three gauges, two histograms, a lag gauge per peer on its leader): with thousands of groups per
//! node, mind the exporter's memory and scrape size; a stopped group's series stay until the
//! process ends (the facade cannot unregister them; its lag gauges are zeroed).
//!
//! Handles are registered once, per group when it starts and per peer when its link starts (a
//! message kind's the first time a link carries one), never looked up by name on the way of a
//! message or a proposal; what happens per proposal is
//! counted per batch (a round of the core, a batch of the apply side).
//!
//! Call [`describe`] once after installing a recorder to give each metric its help text.
//!
//! | name | type | labels | what |
//! | --- | --- | --- | --- |
//! | `raft_proposals_total` | counter | `node`, `group`, `outcome` | proposals by outcome: `applied` (committed and applied, answered with the response), `refused` (the core refused it: not the leader, a transfer in progress, ...), `too_busy` (`try_propose` found the queues full), `leadership_lost` (a later leader replaced its entry), `unknown` (a snapshot covered it before it was matched), `stopped` (the node stopped with the proposal in its queues; a proposal made on the handle of a node already stopped, or lost with a panicking state machine, is not counted) |
//! | `raft_elections_total` | counter | `node`, `group` | campaigns this node started (each term it became a candidate or, a lone voter, the leader in) |
//! | `raft_leader_changes_total` | counter | `node`, `group` | times this node learned of a new leader (a new term's leader, itself included) |
//! | `raft_snapshot_transfers_total` | counter | `node`, `group`, `event` | `sent`: first chunks this leader sent (a transfer restarted after a stall counts again); `received`: first chunks this follower received; `installed`: snapshots from a leader installed in the store, counted when the state machine's restore from it begins (off the worker it may still be under way; `NodeEvent::SnapshotRestored` says when it ended) |
//! | `raft_commit_latency_seconds` | histogram | `node`, `group` | on the leader, from a round's proposals being appended to their commit; one sample per round's batch of proposals |
//! | `raft_apply_latency_seconds` | histogram | `node`, `group` | from a batch of committed entries being handed to the apply side to its last entry applied; one sample per batch |
//! | `raft_term` | gauge | `node`, `group` | the node's current term |
//! | `raft_commit_index` | gauge | `node`, `group` | the node's commit index |
//! | `raft_applied_index` | gauge | `node`, `group` | the last index applied to (or restored into) the state machine |
//! | `raft_replication_lag_entries` | gauge | `node`, `group`, `peer` | on the leader: entries the peer's log lacks (the leader's last index minus the peer's match index), sampled at most once per tick; set to 0 when this node stops leading, when the group stops and when the peer leaves the membership |
//! | `raft_messages_total` | counter | `node`, `peer`, `kind`, `direction` | messages (of every group) sent to or received from the peer over TCP, by message kind; `direction` is `sent` (written in a batch that was flushed) or `received` |
//! | `raft_message_bytes_total` | counter | `node`, `peer`, `kind`, `direction` | the bytes of those messages' frames (length prefix included) |
//! | `raft_reconnects_total` | counter | `node`, `peer` | connections the TCP dialer established to the peer after its first one (each one follows a lost connection or a failed attempt) |
//! | `raft_dial_failures_total` | counter | `node`, `peer` | attempts of the TCP dialer that failed (connect, handshake or refusal) |
//! | `raft_wal_fsync_seconds` | histogram | `node`, `wal` | duration of one fsync of the newest log segment after appending (raft-storage; `wal` is `group` for a `DiskStorage`, `shared` for a `SharedWal`) |
//! | `raft_wal_fsync_entries` | histogram | `node`, `wal` | entries one such fsync made durable |
//! | `raft_wal_fsync_bytes` | histogram | `node`, `wal` | bytes of log records one such fsync made durable |
//! | `raft_wal_segment_bytes` | gauge | `node`, `wal` | a `SharedWal`'s segment files, in bytes (set when it opens, after every write, once the segments it freed are reclaimed, and when a group is created or removed) |
//! | `raft_wal_segments` | gauge | `node`, `wal` | a `SharedWal`'s segment files |
//! | `raft_wal_cache_bytes` | gauge | `node`, `wal` | the bytes of entries in a `SharedWal`'s entry cache |
//! | `raft_wal_groups` | gauge | `node`, `wal` | the groups a `SharedWal` holds |
//! | `raft_host_groups` | gauge | `host` | the groups a [`Host`](crate::Host) runs (set once a second by its ticker, as are the three below, and to 0 when it closes; not recorded for the host of a node started with [`start`](crate::start)) |
//! | `raft_host_leaders` | gauge | `host` | the groups this host's node leads |
//! | `raft_host_quiet_groups` | gauge | `host` | the groups quiet on this host (timers stopped until woken) |
//! | `raft_host_proposals_pending` | gauge | `host` | proposals taken by the groups' handles and not answered yet, all groups together |
//!
//! `node` and `peer` are node ids, `group` a group id ([`GroupId::DEFAULT`], 0, for a node that
//! runs one group), `host` a host's `HostConfig::thread_name` (give each host of a process a name of its
//! own). `kind` is one of [`MESSAGE_KINDS`]. The label sets are bounded by the
//! cluster's size and the number of groups: no label takes an index, a term or an address.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::Instant;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use raft_core::{GroupId, Index, MessageBody, NodeId};

pub use raft_storage::metrics::{
    WAL_CACHE_BYTES, WAL_FSYNC_BYTES, WAL_FSYNC_ENTRIES, WAL_FSYNC_SECONDS, WAL_GROUPS, WAL_SEGMENT_BYTES, WAL_SEGMENTS,
};

/// Counter: proposals by `outcome`.
pub const PROPOSALS_TOTAL: &str = "raft_proposals_total";
/// Counter: campaigns started.
pub const ELECTIONS_TOTAL: &str = "raft_elections_total";
/// Counter: new leaders learned of.
pub const LEADER_CHANGES_TOTAL: &str = "raft_leader_changes_total";
/// Counter: snapshot transfers by `event` (`sent`, `received`, `installed`).
pub const SNAPSHOT_TRANSFERS_TOTAL: &str = "raft_snapshot_transfers_total";
/// Histogram: seconds from a round's proposals appended to their commit, on the leader.
pub const COMMIT_LATENCY_SECONDS: &str = "raft_commit_latency_seconds";
/// Histogram: seconds from committed entries handed to the apply side to their application.
pub const APPLY_LATENCY_SECONDS: &str = "raft_apply_latency_seconds";
/// Gauge: the current term.
pub const TERM: &str = "raft_term";
/// Gauge: the commit index.
pub const COMMIT_INDEX: &str = "raft_commit_index";
/// Gauge: the applied index.
pub const APPLIED_INDEX: &str = "raft_applied_index";
/// Gauge: entries a peer lacks, on the leader.
pub const REPLICATION_LAG_ENTRIES: &str = "raft_replication_lag_entries";
/// Counter: messages sent or received over TCP, by `peer`, `kind` and `direction`.
pub const MESSAGES_TOTAL: &str = "raft_messages_total";
/// Counter: bytes of those messages' frames.
pub const MESSAGE_BYTES_TOTAL: &str = "raft_message_bytes_total";
/// Counter: connections the TCP dialer established after its first one.
pub const RECONNECTS_TOTAL: &str = "raft_reconnects_total";
/// Counter: failed attempts of the TCP dialer.
pub const DIAL_FAILURES_TOTAL: &str = "raft_dial_failures_total";

/// Gauge: the groups a host runs.
pub const HOST_GROUPS: &str = "raft_host_groups";
/// Gauge: the groups a host's node leads.
pub const HOST_LEADERS: &str = "raft_host_leaders";
/// Gauge: the groups quiet on a host.
pub const HOST_QUIET_GROUPS: &str = "raft_host_quiet_groups";
/// Gauge: proposals pending on a host, all groups together.
pub const HOST_PROPOSALS_PENDING: &str = "raft_host_proposals_pending";

/// The values of the `kind` label, indexed as the transport counts them.
pub const MESSAGE_KINDS: [&str; 15] = [
    "vote_request",
    "vote_response",
    "append_entries",
    "append_response",
    "heartbeat",
    "heartbeat_response",
    "install_snapshot",
    "snapshot_response",
    "timeout_now",
    "read_index_request",
    "read_index_response",
    "snapshot_refused",
    "quiesce",
    "commit_notice",
    "other",
];

/// Gives every metric of the table above its help text and unit, for the installed recorder.
/// Call it once after installing one (a recorder installed later does not see the
/// descriptions).
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(PROPOSALS_TOTAL, "Proposals by outcome");
    describe_counter!(ELECTIONS_TOTAL, "Campaigns this node started");
    describe_counter!(LEADER_CHANGES_TOTAL, "New leaders this node learned of");
    describe_counter!(SNAPSHOT_TRANSFERS_TOTAL, "Snapshot transfers sent, received and installed");
    describe_histogram!(COMMIT_LATENCY_SECONDS, Unit::Seconds, "Proposals appended to committed, on the leader");
    describe_histogram!(APPLY_LATENCY_SECONDS, Unit::Seconds, "Committed entries handed out to applied");
    describe_gauge!(TERM, "Current term");
    describe_gauge!(COMMIT_INDEX, "Commit index");
    describe_gauge!(APPLIED_INDEX, "Last index applied to the state machine");
    describe_gauge!(REPLICATION_LAG_ENTRIES, Unit::Count, "Entries a peer lacks, on the leader");
    describe_counter!(MESSAGES_TOTAL, "Messages over TCP by peer, kind and direction");
    describe_counter!(MESSAGE_BYTES_TOTAL, Unit::Bytes, "Bytes of message frames over TCP");
    describe_counter!(RECONNECTS_TOTAL, "Connections dialed to a peer after the first");
    describe_counter!(DIAL_FAILURES_TOTAL, "Failed connection attempts to a peer");
    describe_histogram!(WAL_FSYNC_SECONDS, Unit::Seconds, "fsync of the log after appending");
    describe_histogram!(WAL_FSYNC_ENTRIES, Unit::Count, "Entries one log fsync made durable");
    describe_histogram!(WAL_FSYNC_BYTES, Unit::Bytes, "Bytes one log fsync made durable");
    describe_gauge!(WAL_SEGMENT_BYTES, Unit::Bytes, "Bytes of a shared log's segment files");
    describe_gauge!(WAL_SEGMENTS, Unit::Count, "Segment files of a shared log");
    describe_gauge!(WAL_CACHE_BYTES, Unit::Bytes, "Bytes of entries in a shared log's entry cache");
    describe_gauge!(WAL_GROUPS, Unit::Count, "Groups a shared log holds");
    describe_gauge!(HOST_GROUPS, Unit::Count, "Groups a host runs");
    describe_gauge!(HOST_LEADERS, Unit::Count, "Groups a host's node leads");
    describe_gauge!(HOST_QUIET_GROUPS, Unit::Count, "Groups quiet on a host");
    describe_gauge!(HOST_PROPOSALS_PENDING, Unit::Count, "Proposals pending on a host, all groups together");
}

/// The index of a message's kind in [`MESSAGE_KINDS`].
pub(crate) fn kind_index(body: &MessageBody) -> usize {
    match body {
        MessageBody::VoteRequest { .. } => 0,
        MessageBody::VoteResponse { .. } => 1,
        MessageBody::AppendEntries { .. } => 2,
        MessageBody::AppendResponse(_) => 3,
        MessageBody::Heartbeat { .. } => 4,
        MessageBody::HeartbeatResponse { .. } => 5,
        MessageBody::InstallSnapshot { .. } => 6,
        MessageBody::SnapshotResponse { .. } => 7,
        MessageBody::TimeoutNow => 8,
        MessageBody::ReadIndexRequest { .. } => 9,
        MessageBody::ReadIndexResponse { .. } => 10,
        MessageBody::SnapshotRefused { .. } => 11,
        MessageBody::Quiesce { .. } => 12,
        MessageBody::CommitNotice { .. } => 13,
        _ => 14,
    }
}

/// How a proposal ended, as the `outcome` label says.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Outcome {
    Applied,
    Refused,
    TooBusy,
    LeadershipLost,
    Unknown,
    Stopped,
}

const OUTCOMES: [&str; 6] = ["applied", "refused", "too_busy", "leadership_lost", "unknown", "stopped"];

/// A snapshot transfer's step, as the `event` label says.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SnapshotEvent {
    Sent,
    Received,
    Installed,
}

const SNAPSHOT_EVENTS: [&str; 3] = ["sent", "received", "installed"];

/// A host's node-wide gauges, registered when it starts.
pub(crate) struct HostMetrics {
    groups: Gauge,
    leaders: Gauge,
    quiet: Gauge,
    proposals_pending: Gauge,
}

impl HostMetrics {
    pub(crate) fn new(host: &str) -> Self {
        let labels = [("host", host.to_string())];
        HostMetrics {
            groups: gauge!(HOST_GROUPS, &labels),
            leaders: gauge!(HOST_LEADERS, &labels),
            quiet: gauge!(HOST_QUIET_GROUPS, &labels),
            proposals_pending: gauge!(HOST_PROPOSALS_PENDING, &labels),
        }
    }

    /// Sets the gauges from a count of the host's groups.
    pub(crate) fn set(&self, groups: usize, leaders: usize, quiet: usize, proposals_pending: usize) {
        self.groups.set(groups as f64);
        self.leaders.set(leaders as f64);
        self.quiet.set(quiet as f64);
        self.proposals_pending.set(proposals_pending as f64);
    }
}

/// One group's handles, registered when the group starts; shared by its core, its apply side
/// and its handles.
pub(crate) struct GroupMetrics {
    node: String,
    group: String,
    proposals: [Counter; 6],
    snapshots: [Counter; 3],
    pub(crate) elections: Counter,
    pub(crate) leader_changes: Counter,
    pub(crate) commit_latency: Histogram,
    pub(crate) apply_latency: Histogram,
    pub(crate) term: Gauge,
    pub(crate) commit_index: Gauge,
    pub(crate) applied_index: Gauge,
}

impl GroupMetrics {
    pub(crate) fn new(node: NodeId, group: GroupId) -> Self {
        let (node, group) = (node.to_string(), group.to_string());
        let labels = [("node", node.clone()), ("group", group.clone())];
        let with = |key: &'static str, value: &'static str| {
            [("node", node.clone()), ("group", group.clone()), (key, value.to_string())]
        };
        GroupMetrics {
            proposals: OUTCOMES.map(|outcome| counter!(PROPOSALS_TOTAL, &with("outcome", outcome))),
            snapshots: SNAPSHOT_EVENTS.map(|event| counter!(SNAPSHOT_TRANSFERS_TOTAL, &with("event", event))),
            elections: counter!(ELECTIONS_TOTAL, &labels),
            leader_changes: counter!(LEADER_CHANGES_TOTAL, &labels),
            commit_latency: histogram!(COMMIT_LATENCY_SECONDS, &labels),
            apply_latency: histogram!(APPLY_LATENCY_SECONDS, &labels),
            term: gauge!(TERM, &labels),
            commit_index: gauge!(COMMIT_INDEX, &labels),
            applied_index: gauge!(APPLIED_INDEX, &labels),
            node,
            group,
        }
    }

    /// Counts `count` proposals that ended with `outcome`.
    pub(crate) fn proposals(&self, outcome: Outcome, count: u64) {
        if count > 0 {
            self.proposals[outcome as usize].increment(count);
        }
    }

    pub(crate) fn snapshot(&self, event: SnapshotEvent) {
        self.snapshots[event as usize].increment(1);
    }

    /// The lag gauge of `peer` (registered when a leader first sees the peer).
    fn lag_gauge(&self, peer: NodeId) -> Gauge {
        let labels = [("node", self.node.clone()), ("group", self.group.clone()), ("peer", peer.to_string())];
        gauge!(REPLICATION_LAG_ENTRIES, &labels)
    }
}

/// What the core keeps to derive its metrics from its outputs and its status.
pub(crate) struct CoreMetrics {
    /// The last index a proposal was appended at in this round, if any.
    proposed_last: Option<Index>,
    /// On the leader: the last index of each round's proposals and when they were appended,
    /// oldest first, until their commit.
    appended: std::collections::VecDeque<(Index, Instant)>,
    /// The clock tick the lag gauges were last sampled at.
    lag_sampled_tick: u64,
    /// The lag gauge of each peer this node led.
    lags: BTreeMap<NodeId, Gauge>,
}

impl CoreMetrics {
    pub(crate) fn new() -> Self {
        CoreMetrics {
            proposed_last: None,
            appended: std::collections::VecDeque::new(),
            lag_sampled_tick: 0,
            lags: BTreeMap::new(),
        }
    }

    /// A proposal was appended at `index`.
    pub(crate) fn proposed(&mut self, index: Index) {
        self.proposed_last = Some(index);
    }

    /// The round's proposals are all appended: one timestamp for them all.
    pub(crate) fn end_of_proposals(&mut self) {
        if let Some(index) = self.proposed_last.take() {
            self.appended.push_back((index, Instant::now()));
        }
    }

    /// Entries up to `index` are committed: records the commit latency of the rounds of
    /// proposals it covers.
    pub(crate) fn committed(&mut self, group: &GroupMetrics, index: Index) {
        if self.appended.front().is_none_or(|(first, _)| *first > index) {
            return;
        }
        let now = Instant::now();
        while let Some(&(last, appended)) = self.appended.front() {
            if last > index {
                break;
            }
            group.commit_latency.record(now.saturating_duration_since(appended));
            self.appended.pop_front();
        }
    }

    /// The node no longer leads: proposals it appended are no longer its to time, and the peers
    /// are no longer its to lag behind.
    pub(crate) fn not_leading(&mut self) {
        self.appended.clear();
        for gauge in self.lags.values() {
            gauge.set(0.0);
        }
    }

    /// Whether the lag gauges are due for a sample at clock tick `tick` (once per tick).
    pub(crate) fn lag_due(&mut self, tick: u64) -> bool {
        if tick == self.lag_sampled_tick {
            return false;
        }
        self.lag_sampled_tick = tick;
        true
    }

    /// Sets the lag of each peer: `last_index` minus its match index.
    pub(crate) fn sample_lags(
        &mut self,
        group: &GroupMetrics,
        last_index: Index,
        matches: impl Iterator<Item = (NodeId, Index)>,
    ) {
        let mut sampled = BTreeSet::new();
        for (peer, matched) in matches {
            let gauge = self.lags.entry(peer).or_insert_with(|| group.lag_gauge(peer));
            gauge.set(last_index.0.saturating_sub(matched.0) as f64);
            sampled.insert(peer);
        }
        // A peer that left the membership is no longer behind this leader.
        self.lags.retain(|peer, gauge| {
            let kept = sampled.contains(peer);
            if !kept {
                gauge.set(0.0);
            }
            kept
        });
    }
}

/// The handles of one TCP peer, in one direction: per message kind, messages and bytes. A kind's
/// pair is registered the first time a message of that kind passes (kinds a link never carries
/// make no series), then kept.
pub(crate) struct PeerMetrics {
    labels: [(&'static str, String); 3],
    kinds: [OnceLock<(Counter, Counter)>; MESSAGE_KINDS.len()],
}

impl PeerMetrics {
    /// `direction` is `sent` or `received`.
    pub(crate) fn new(node: NodeId, peer: NodeId, direction: &'static str) -> Self {
        PeerMetrics {
            labels: [("node", node.to_string()), ("peer", peer.to_string()), ("direction", direction.to_string())],
            kinds: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// The (messages, bytes) counters of kind `kind` ([`kind_index`]).
    fn kind(&self, kind: usize) -> &(Counter, Counter) {
        self.kinds[kind].get_or_init(|| {
            let [node, peer, direction] = self.labels.clone();
            let labels = [node, peer, ("kind", MESSAGE_KINDS[kind].to_string()), direction];
            (counter!(MESSAGES_TOTAL, &labels), counter!(MESSAGE_BYTES_TOTAL, &labels))
        })
    }

    /// Counts one message of kind `kind` ([`kind_index`]) of `bytes` bytes.
    pub(crate) fn message(&self, kind: usize, bytes: u64) {
        let (messages, total) = self.kind(kind);
        messages.increment(1);
        total.increment(bytes);
    }

    /// Adds a batch's tally, and clears it.
    pub(crate) fn add(&self, tally: &mut Tally) {
        for kind in 0..MESSAGE_KINDS.len() {
            let (messages, bytes) = std::mem::take(&mut tally.0[kind]);
            if messages > 0 {
                let (message_counter, byte_counter) = self.kind(kind);
                message_counter.increment(messages);
                byte_counter.increment(bytes);
            }
        }
    }
}

/// Messages and bytes per kind of one batch, added to a [`PeerMetrics`] at once.
#[derive(Default)]
pub(crate) struct Tally([(u64, u64); MESSAGE_KINDS.len()]);

impl Tally {
    pub(crate) fn count(&mut self, kind: usize, bytes: u64) {
        let slot = &mut self.0[kind];
        slot.0 += 1;
        slot.1 += bytes;
    }

    pub(crate) fn clear(&mut self) {
        *self = Tally::default();
    }
}

/// The dialer's handles for one peer.
pub(crate) struct DialerMetrics {
    pub(crate) sent: PeerMetrics,
    pub(crate) reconnects: Counter,
    pub(crate) dial_failures: Counter,
}

impl DialerMetrics {
    pub(crate) fn new(node: NodeId, peer: NodeId) -> Self {
        let labels = [("node", node.to_string()), ("peer", peer.to_string())];
        DialerMetrics {
            sent: PeerMetrics::new(node, peer, "sent"),
            reconnects: counter!(RECONNECTS_TOTAL, &labels),
            dial_failures: counter!(DIAL_FAILURES_TOTAL, &labels),
        }
    }
}
