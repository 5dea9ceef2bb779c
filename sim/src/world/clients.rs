//! Clients of the simulated key-value service. Each runs one operation at a time: a write
//! (put, delete, compare-and-set) proposed to the node it believes leads, or a read of one of
//! three kinds (ReadIndex on the leader, lease, or a follower read: ReadIndex asked of any
//! node). Every invocation and completion is recorded in simulated time for the
//! linearizability checker; an operation that never completes stays with an unknown outcome.

use bytes::Bytes;
use raft_core::{NodeId, ProposeError, ReadError, ReadMode, ReadState};

use super::{EventKind, Queued, Simulation};
use crate::checkers::Check;
use crate::config::TICK_UNITS;
use crate::kv::Command;
use crate::linearizability::{self, Input, Operation, Outcome, Output};

/// Client periods between attempts.
pub(super) const CLIENT_PERIOD_TICKS: u64 = 2;
/// Ticks a client waits for an answer before it retries (or gives up).
const CLIENT_TIMEOUT_TICKS: u64 = 30;
/// The chance that a client gives up on an operation that timed out (its outcome stays
/// unknown) rather than retrying it.
const GIVE_UP_CHANCE: f64 = 0.2;
/// The search budget of the linearizability checker per key (deterministic: no wall clock).
const LINEARIZABILITY_STEPS_MAX: u64 = 10_000_000;

/// An operation in progress.
#[derive(Clone, Copy, Debug)]
pub(super) struct PendingOperation {
    pub(super) seq: u64,
    pub(super) input: Input,
    /// Its position in the history.
    history: usize,
    /// For reads: how they are confirmed.
    mode: Option<ReadMode>,
}

pub(super) struct Client {
    pub(super) seq: u64,
    pub(super) pending: Option<PendingOperation>,
    pub(super) deadline: u64,
    pub(super) target: NodeId,
    /// Where the client's walk around the ring stands: the last node it chose itself. Leader
    /// hints move `target` but not this, so that a stale hint (a removed node naming another
    /// removed node) cannot bring the walk back to the same few nodes forever.
    cursor: NodeId,
    /// The last attempt was taken by a node (so reaching the deadline means it timed out).
    pub(super) awaiting: bool,
}

impl Client {
    pub(super) fn new(target: NodeId) -> Self {
        Client { seq: 0, pending: None, deadline: 0, target, cursor: target, awaiting: false }
    }
}

impl Simulation {
    pub(super) fn on_client(&mut self, client: usize) -> Check {
        self.schedule(TICK_UNITS * CLIENT_PERIOD_TICKS, EventKind::Client(client));
        let now = self.now;
        let (pending, deadline) = (self.clients[client].pending, self.clients[client].deadline);
        let operation = match pending {
            Some(_) if now < deadline => return Ok(()),
            Some(operation) if !self.healing && self.chance(GIVE_UP_CHANCE) => {
                // Its outcome stays unknown: a write may still take effect later.
                self.trace([12, client as u64, operation.seq, 0], || format!("client {client} gives up"));
                self.clients[client].pending = None;
                return Ok(());
            }
            Some(operation) => {
                if self.clients[client].awaiting {
                    // Timed out (not just refused): the node may be cut off or removed; try another.
                    self.walk_on(client);
                }
                operation
            }
            None if self.healing || now < self.workload_paused_until => return Ok(()),
            None => self.invoke(client),
        };
        match operation.mode {
            None => self.attempt_write(client, operation),
            Some(mode) => self.attempt_read(client, operation, mode),
        }
    }

    /// Starts a new operation for `client`, recording its invocation.
    fn invoke(&mut self, client: usize) -> PendingOperation {
        let key = self.random_below(self.config.keys);
        let seq = self.clients[client].seq + 1;
        let value = (client as u64) << 32 | seq;
        let kind = self.random_below(10);
        let (input, mode) = match kind {
            0..=2 => (Input::Put { key, value }, None),
            3 => (Input::Delete { key }, None),
            4 => {
                let expected = if self.chance(0.5) { None } else { Some(self.random_below(4)) };
                (Input::CompareAndSet { key, expected, new: Some(value) }, None)
            }
            5..=6 => (Input::Get { key }, Some(ReadMode::ReadIndex)),
            _ if self.config.lease_reads => (Input::Get { key }, Some(ReadMode::Lease)),
            _ => (Input::Get { key }, Some(ReadMode::ReadIndex)),
        };
        // Reads go to any node half the time (follower reads), writes a quarter of the time (a
        // client with stale leader information, redirected by the node it reaches).
        if self.chance(if mode.is_some() { 0.5 } else { 0.25 }) {
            self.clients[client].target = NodeId(1 + self.random_below(self.pool_size()));
        }
        self.clients[client].cursor = self.clients[client].target;
        let history = self.history.len();
        self.history.push(Operation { client: client as u64, input, call: self.now, outcome: Outcome::Unknown });
        let operation = PendingOperation { seq, input, history, mode };
        let state = &mut self.clients[client];
        state.seq = seq;
        state.pending = Some(operation);
        operation
    }

    fn attempt_write(&mut self, client: usize, operation: PendingOperation) -> Check {
        let target = self.clients[client].target;
        if self.node(target).raft.is_some() && self.node(target).paused_until.is_some() {
            // A paused node's queue still takes the request (its socket accepts): it is
            // handled when the node resumes, and the client waits for it until its timeout.
            self.wait_on_paused(client, target, Queued::Write(client, operation));
            return Ok(());
        }
        let span = self.node_span(target);
        let _entered = span.enter();
        self.begin_iteration(target)?;
        self.take_write(target, client, operation)?;
        self.end_iteration(target)
    }

    /// Node `target` takes `client`'s write (within an iteration). A request that waited in a
    /// paused node's queue while its client moved on still reaches the node, but its answer no
    /// longer steers the client.
    pub(super) fn take_write(&mut self, target: NodeId, client: usize, operation: PendingOperation) -> Check {
        let command = Command { client: client as u64, seq: operation.seq, input: operation.input };
        let result = match self.node_mut(target).raft.as_mut() {
            Some(raft) => raft.propose(Bytes::from(command.encode())),
            None => Err(ProposeError::NotLeader { leader: None }),
        };
        let seq = operation.seq;
        self.trace([7, client as u64, seq, target.0], || format!("client {client} proposes #{seq} to node {target}"));
        let current = self.clients[client].pending.is_some_and(|pending| pending.seq == seq);
        match result {
            Ok(_) if !current => self.flush(target),
            Ok(_) => {
                self.clients[client].deadline = self.now + CLIENT_TIMEOUT_TICKS * TICK_UNITS;
                self.clients[client].awaiting = true;
                self.flush(target)
            }
            Err(_) if !current => Ok(()),
            Err(ProposeError::NotLeader { leader: Some(leader) }) => self.retry_at(client, leader),
            Err(_) => self.retry_elsewhere(client),
        }
    }

    fn attempt_read(&mut self, client: usize, operation: PendingOperation, mode: ReadMode) -> Check {
        let target = self.clients[client].target;
        if self.node(target).raft.is_some() && self.node(target).paused_until.is_some() {
            self.wait_on_paused(client, target, Queued::Read(client, operation, mode));
            return Ok(());
        }
        let span = self.node_span(target);
        let _entered = span.enter();
        self.begin_iteration(target)?;
        self.take_read(target, client, operation, mode)?;
        self.end_iteration(target)
    }

    /// `client`'s request waits in paused node `target`'s queue; the client waits for an answer
    /// until its timeout.
    fn wait_on_paused(&mut self, client: usize, target: NodeId, request: Queued) {
        self.node_mut(target).queued.push(request);
        let seq = self.clients[client].pending.map_or(0, |operation| operation.seq);
        self.trace([14, client as u64, seq, target.0], || {
            format!("client {client} queues #{seq} at paused node {target}")
        });
        self.clients[client].deadline = self.now + CLIENT_TIMEOUT_TICKS * TICK_UNITS;
        self.clients[client].awaiting = true;
    }

    /// Node `target` takes `client`'s read (within an iteration); see [`Simulation::take_write`]
    /// for a request that outlived its client's wait.
    pub(super) fn take_read(
        &mut self,
        target: NodeId,
        client: usize,
        operation: PendingOperation,
        mode: ReadMode,
    ) -> Check {
        self.next_read_id += 1;
        let id = self.next_read_id;
        let result = match self.node_mut(target).raft.as_mut() {
            Some(raft) => raft.read(id, mode),
            None => Err(ReadError::NoLeader),
        };
        let seq = operation.seq;
        self.trace([13, client as u64, seq, target.0], || format!("client {client} reads #{seq} at node {target}"));
        let current = self.clients[client].pending.is_some_and(|pending| pending.seq == seq);
        match result {
            Ok(()) if !current => {
                // Its answer may still complete the operation if the client retries it.
                self.reads_in_flight.insert(id, (client, seq));
                self.flush(target)
            }
            Err(_) if !current => Ok(()),
            Ok(()) => {
                self.reads_in_flight.insert(id, (client, seq));
                self.clients[client].deadline = self.now + CLIENT_TIMEOUT_TICKS * TICK_UNITS;
                self.clients[client].awaiting = true;
                self.flush(target)
            }
            Err(_) => match self.node(target).raft.as_ref().and_then(|r| r.leader()) {
                Some(leader) => self.retry_at(client, leader),
                None => self.retry_elsewhere(client),
            },
        }
    }

    /// Moves a client without a leader hint on around the ring from its cursor, by a random step
    /// of 1..pool. Drawing uniformly over the pool instead let a client ask the same node again
    /// and again; once a fuzz schedule's bytes run out every draw is 0, so it asked node 1
    /// forever, and when node 1 was removed or cut off from the leader its commands stayed
    /// pending through the whole liveness phase. Stepping from the cursor visits every node in
    /// turn once the bytes run out, whatever stale hints say, and draws exactly as before (one
    /// draw over the pool), so the stream of choices stays aligned.
    fn walk_on(&mut self, client: usize) {
        let pool = self.pool_size();
        let draw = self.random_below(pool);
        let cursor = self.clients[client].cursor;
        let next = if pool <= 1 { cursor } else { NodeId((cursor.0 + draw % (pool - 1)) % pool + 1) };
        self.clients[client].cursor = next;
        self.clients[client].target = next;
    }

    /// Retries at the next client period, at the next node of the client's walk.
    fn retry_elsewhere(&mut self, client: usize) -> Check {
        self.walk_on(client);
        let target = self.clients[client].target;
        self.retry_at(client, target)
    }

    /// Retries at the next client period, at `target` (a leader hint: the walk's cursor stays).
    fn retry_at(&mut self, client: usize, target: NodeId) -> Check {
        self.clients[client].target = target;
        self.clients[client].deadline = self.now;
        self.clients[client].awaiting = false;
        Ok(())
    }

    /// A node applied `command` with answer `output`: the client's write completes if it still
    /// waits for it.
    pub(super) fn complete_write(&mut self, command: &Command, output: Option<Output>) {
        let Some(output) = output else { return };
        let Some(state) = self.clients.get_mut(command.client as usize) else { return };
        let Some(operation) = state.pending.filter(|p| p.seq == command.seq && p.mode.is_none()) else { return };
        state.pending = None;
        self.history[operation.history].outcome = Outcome::Returned { at: self.now, output };
        self.stats.commands_committed += 1;
    }

    /// Node `id` handed out read outcomes, after applying this output's entries.
    pub(super) fn complete_reads(&mut self, id: NodeId, reads: &[ReadState]) {
        for read in reads {
            let Some((client, seq)) = self.reads_in_flight.remove(&read.id) else { continue };
            let Some(operation) = self.clients[client].pending.filter(|p| p.seq == seq) else { continue };
            let Input::Get { key } = operation.input else { continue };
            match read.result {
                Ok(_) => {
                    let value = self.node(id).kv.get(key);
                    self.clients[client].pending = None;
                    self.history[operation.history].outcome =
                        Outcome::Returned { at: self.now, output: Output::Value(value) };
                    self.stats.reads_completed += 1;
                }
                // Leadership changed: retry at once, somewhere else.
                Err(_) => {
                    self.clients[client].deadline = self.now;
                    self.clients[client].awaiting = true;
                }
            }
        }
    }

    /// Checks the clients' history: every completed operation must fit one sequential order
    /// consistent with real time.
    pub(super) fn check_linearizability(&mut self) -> Check {
        if !linearizability::judge(&self.history, LINEARIZABILITY_STEPS_MAX)? {
            self.stats.linearizability_unknown += 1;
        }
        Ok(())
    }
}
