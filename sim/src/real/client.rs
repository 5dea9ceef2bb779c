//! The clients of the real-stack simulation and their wire protocol. Each node serves requests
//! on [`CLIENT_PORT`] through its `NodeHandle` (the library's client API): one request per
//! connection, a length-prefixed frame each way. Clients are turmoil hosts of their own: a node
//! that crashes or stops does not answer them, and they fail over to others (the fault loop cuts
//! links between nodes only). They record what they asked and what they got for the
//! linearizability checker.
//!
//! With several Raft groups per node, each key belongs to one group ([`group_of`]): the node
//! routes a read or write to its key's group, and an administrator's request names its group.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use turmoil::net::TcpStream;

use super::observe::Observer;
use crate::kv::Command;
use crate::linearizability::{Input, Operation, Outcome, Output};

/// The port every node serves clients on.
pub(crate) const CLIENT_PORT: u16 = 7000;
/// The longest request or answer frame.
const FRAME_BYTES_MAX: usize = 64;
/// How long one attempt (connect, send, answer) may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a client keeps retrying one operation before it gives up (outcome unknown).
const OPERATION_DEADLINE: Duration = Duration::from_secs(3);

/// A client's request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// Propose this command.
    Write(Command),
    /// Read `key`; `lease` asks for a lease read rather than ReadIndex.
    Read { key: u64, lease: bool },
    /// An administrator's request, served by the leader of group `group` (an index below the
    /// number of groups).
    Admin { group: u64, admin: Admin },
}

/// The group (an index below `groups`) that `key` belongs to.
pub(crate) fn group_of(key: u64, groups: u64) -> u64 {
    key % groups
}

/// A membership change or a leadership transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admin {
    /// Make the voter a learner.
    Demote(u64),
    /// Make the learner a voter (done already if it is one).
    Promote(u64),
    /// Hand leadership to the voter.
    Transfer(u64),
}

/// A node's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Applied (a write) or read: the output.
    Done(Output),
    /// Not the leader; the leader it knows of, if any. Nothing was appended.
    NotLeader(Option<u64>),
    /// Definitely not applied (or, for a read, not served): try again, maybe elsewhere. For an
    /// administrator's request: not done, possibly not known to be undone; it retries.
    Failed,
    /// The write may or may not take effect.
    Unknown,
}

impl Request {
    fn encode(&self) -> Vec<u8> {
        match self {
            Request::Write(command) => {
                let mut out = vec![0];
                out.extend_from_slice(&command.encode());
                out
            }
            Request::Read { key, lease } => {
                let mut out = vec![if *lease { 2 } else { 1 }];
                out.extend_from_slice(&key.to_le_bytes());
                out
            }
            Request::Admin { group, admin } => {
                let (kind, node) = match admin {
                    Admin::Demote(node) => (3, node),
                    Admin::Promote(node) => (4, node),
                    Admin::Transfer(node) => (5, node),
                };
                let mut out = vec![kind];
                out.extend_from_slice(&node.to_le_bytes());
                out.extend_from_slice(&group.to_le_bytes());
                out
            }
        }
    }

    /// `None` for anything [`Request::encode`] does not write.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Request> {
        let (&kind, rest) = bytes.split_first()?;
        match kind {
            0 => Command::decode(rest).map(Request::Write),
            1 | 2 => Some(Request::Read { key: u64::from_le_bytes(rest.try_into().ok()?), lease: kind == 2 }),
            3..=5 => {
                let (node, group) = rest.split_at_checked(8)?;
                let node = u64::from_le_bytes(node.try_into().ok()?);
                let group = u64::from_le_bytes(group.try_into().ok()?);
                let admin = match kind {
                    3 => Admin::Demote(node),
                    4 => Admin::Promote(node),
                    _ => Admin::Transfer(node),
                };
                Some(Request::Admin { group, admin })
            }
            _ => None,
        }
    }
}

impl Answer {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let (tag, value) = match *self {
            Answer::Done(Output::Done) => (0, 0),
            Answer::Done(Output::Swapped(swapped)) => (1, u64::from(swapped)),
            Answer::Done(Output::Value(None)) => (2, 0),
            Answer::Done(Output::Value(Some(value))) => (3, value),
            Answer::NotLeader(None) => (4, 0),
            Answer::NotLeader(Some(leader)) => (5, leader),
            Answer::Failed => (6, 0),
            Answer::Unknown => (7, 0),
        };
        let mut out = vec![tag];
        out.extend_from_slice(&value.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Answer> {
        let (&tag, rest) = bytes.split_first()?;
        let value = u64::from_le_bytes(rest.try_into().ok()?);
        Some(match tag {
            0 => Answer::Done(Output::Done),
            1 => Answer::Done(Output::Swapped(value == 1)),
            2 => Answer::Done(Output::Value(None)),
            3 => Answer::Done(Output::Value(Some(value))),
            4 => Answer::NotLeader(None),
            5 => Answer::NotLeader(Some(value)),
            6 => Answer::Failed,
            7 => Answer::Unknown,
            _ => return None,
        })
    }
}

/// Writes one length-prefixed frame.
pub(crate) async fn write_frame(stream: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(body);
    stream.write_all(&frame).await?;
    stream.flush().await
}

/// Reads one length-prefixed frame of at most [`FRAME_BYTES_MAX`] bytes.
pub(crate) async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut length = [0; 4];
    stream.read_exact(&mut length).await?;
    let length = u32::from_le_bytes(length) as usize;
    if length > FRAME_BYTES_MAX {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "frame too long"));
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

/// One attempt: `None` when the node could not be reached or did not answer in time.
async fn attempt(node: SocketAddr, request: Request) -> Option<Answer> {
    let exchange = async {
        let mut stream = TcpStream::connect(node).await.ok()?;
        write_frame(&mut stream, &request.encode()).await.ok()?;
        Answer::decode(&read_frame(&mut stream).await.ok()?)
    };
    timeout(ATTEMPT_TIMEOUT, exchange).await.ok().flatten()
}

/// The pause before trying again after an attempt that got no useful answer.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Sends `request` to `nodes[*target]` until a node answers it with `Done` (its output) or
/// `deadline` passes (`None`). Unless `pinned` (a read that must be served by that node), follows
/// leader hints and, after any other answer, moves to a node `rng` picks. Retrying a write with
/// the same sequence number is safe: the session makes it take effect once.
async fn ask(
    nodes: &[IpAddr],
    request: Request,
    deadline: Duration,
    target: &mut usize,
    rng: &mut ChaCha8Rng,
    pinned: bool,
) -> Option<Output> {
    while turmoil::elapsed() < deadline {
        match attempt(SocketAddr::new(nodes[*target], CLIENT_PORT), request).await {
            Some(Answer::Done(output)) => return Some(output),
            Some(Answer::NotLeader(Some(leader))) if !pinned && (1..=nodes.len() as u64).contains(&leader) => {
                *target = leader as usize - 1;
            }
            _ => {
                if !pinned {
                    *target = (rng.next_u64() % nodes.len() as u64) as usize;
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
    None
}

/// What one client does.
pub(crate) struct ClientPlan {
    /// Its id (also its session id in the state machine).
    pub(crate) id: u64,
    /// The nodes' addresses, by node id minus one.
    pub(crate) nodes: Vec<IpAddr>,
    /// Its seed.
    pub(crate) seed: u64,
    /// Keys are drawn from `0..keys`.
    pub(crate) keys: u64,
    /// Whether lease reads are on (else every read is ReadIndex).
    pub(crate) lease_reads: bool,
    /// Issue no new operation after this much simulated time.
    pub(crate) until: Duration,
}

/// Nanoseconds of simulated time, the history's clock.
fn now() -> u64 {
    turmoil::elapsed().as_nanos() as u64
}

/// Runs the client's workload until `plan.until`, recording every operation.
pub(crate) async fn run_client(plan: ClientPlan, observer: Observer) -> turmoil::Result {
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
    let mut seq = 0;
    let mut target = (rng.next_u64() % plan.nodes.len() as u64) as usize;
    while turmoil::elapsed() < plan.until {
        let key = rng.next_u64() % plan.keys;
        let input = match rng.next_u64() % 8 {
            0..=2 => Input::Get { key },
            3..=5 => Input::Put { key, value: (plan.id << 32) | (seq + 1) },
            6 => Input::Delete { key },
            _ => {
                let expected = if rng.next_u64() % 3 == 0 { None } else { Some(rng.next_u64() % 4) };
                Input::CompareAndSet { key, expected, new: Some(rng.next_u64() % 4) }
            }
        };
        let request = match input {
            Input::Get { key } => Request::Read { key, lease: plan.lease_reads && rng.next_u64() % 2 == 0 },
            _ => {
                seq += 1;
                Request::Write(Command { client: plan.id, seq, input })
            }
        };
        let call = now();
        let deadline = turmoil::elapsed() + OPERATION_DEADLINE;
        let answer = ask(&plan.nodes, request, deadline, &mut target, &mut rng, false).await;
        let outcome = answer.map_or(Outcome::Unknown, |output| Outcome::Returned { at: now(), output });
        let mut observed = observer.lock();
        match (&outcome, request) {
            (Outcome::Unknown, Request::Read { .. }) => continue, // No effect: nothing to check.
            (Outcome::Unknown, _) => observed.stats.unknown += 1,
            (_, Request::Read { .. }) => observed.stats.reads += 1,
            (_, _) => observed.stats.writes += 1,
        }
        observed.trace(&call.to_le_bytes());
        observed.history.push(Operation { client: plan.id, input, call, outcome });
    }
    Ok(())
}

/// The probe's session id in the first group, plus the group's index in the others (clients
/// count from 1).
pub(crate) const PROBE_CLIENT: u64 = 1 << 40;

/// The probe's keys: the last `groups` keys (`u64::MAX` alone with one group), which no client
/// uses; consecutive, so one falls in each group.
pub(crate) fn probe_keys(groups: u64) -> impl Iterator<Item = u64> {
    (0..groups).map(|offset| u64::MAX - offset)
}

/// The probe's round in one group: writes `key` once, then reads it linearizably on every node,
/// each before `deadline`. Every answered operation joins the history (the checker judges the
/// values). Returns whether everything was answered in time. `session` is the probe's session id
/// (one per group, so each group's first write is sequence number 1).
pub(crate) async fn probe_round(
    nodes: &[IpAddr],
    key: u64,
    session: u64,
    deadline: Duration,
    observer: &Observer,
) -> bool {
    let mut rng = ChaCha8Rng::seed_from_u64(PROBE_CLIENT);
    let input = Input::Put { key, value: 42 };
    let write = Request::Write(Command { client: session, seq: 1, input });
    let call = now();
    let written = ask(nodes, write, deadline, &mut 0, &mut rng, false).await;
    let outcome = written.map_or(Outcome::Unknown, |output| Outcome::Returned { at: now(), output });
    observer.lock().history.push(Operation { client: session, input, call, outcome });
    if written.is_none() {
        return false;
    }
    for mut node in 0..nodes.len() {
        let call = now();
        let read = Request::Read { key, lease: false };
        let Some(output) = ask(nodes, read, deadline, &mut node, &mut rng, true).await else { return false };
        let outcome = Outcome::Returned { at: now(), output };
        observer.lock().history.push(Operation { client: session, input: Input::Get { key }, call, outcome });
    }
    true
}

/// What the administrator does.
pub(crate) struct AdminPlan {
    /// The nodes' addresses, by node id minus one.
    pub(crate) nodes: Vec<IpAddr>,
    /// The number of groups on every node.
    pub(crate) groups: u64,
    pub(crate) seed: u64,
    /// Changes stop then.
    pub(crate) until: Duration,
    /// Every node is a voter of every group again by then.
    pub(crate) restored_by: Duration,
    /// Whether not restoring in time is a violation (disks without injected errors).
    pub(crate) required: bool,
}

/// The administrator: until `plan.until`, demotes a random voter to learner and promotes it
/// back, and now and then moves leadership, each time in a group it picks (with several); then
/// makes sure every node is a voter again in every group, before `plan.restored_by` (the
/// liveness probe reads on every node).
pub(crate) async fn run_admin(plan: AdminPlan, observer: Observer) -> turmoil::Result {
    let AdminPlan { nodes, groups, seed, until, restored_by, required } = plan;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let count = nodes.len() as u64;
    let mut target = 0;
    while turmoil::elapsed() < until {
        tokio::time::sleep(Duration::from_millis(200 + rng.next_u64() % 800)).await;
        let node = 1 + rng.next_u64() % count;
        let admin = if rng.next_u64() % 3 == 0 { Admin::Transfer(node) } else { Admin::Demote(node) };
        // Drawn only with several groups, so that one-group seeds keep their course.
        let group = if groups > 1 { rng.next_u64() % groups } else { 0 };
        let deadline = turmoil::elapsed() + Duration::from_secs(2);
        if ask(&nodes, Request::Admin { group, admin }, deadline, &mut target, &mut rng, false).await.is_some() {
            let mut observed = observer.lock();
            observed.stats.membership_changes += 1;
            observed.trace(&[7, node as u8, group as u8]);
        }
        if let Admin::Demote(_) = admin {
            tokio::time::sleep(Duration::from_millis(rng.next_u64() % 1000)).await;
            let deadline = turmoil::elapsed() + Duration::from_secs(2);
            let promote = Request::Admin { group, admin: Admin::Promote(node) };
            if ask(&nodes, promote, deadline, &mut target, &mut rng, false).await.is_some() {
                observer.lock().stats.membership_changes += 1;
            }
        }
    }
    for group in 0..groups {
        for node in 1..=count {
            let promote = Request::Admin { group, admin: Admin::Promote(node) };
            if ask(&nodes, promote, restored_by, &mut target, &mut rng, false).await.is_none() && required {
                observer.lock().violate(
                    "liveness",
                    format!("group {group}: node {node} was not made a voter again after the heal"),
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_round_trip() {
        let requests = [
            Request::Write(Command { client: 3, seq: 9, input: Input::Put { key: 1, value: 2 } }),
            Request::Read { key: 5, lease: true },
            Request::Read { key: 6, lease: false },
            Request::Admin { group: 0, admin: Admin::Demote(1) },
            Request::Admin { group: 3, admin: Admin::Promote(2) },
            Request::Admin { group: 1, admin: Admin::Transfer(3) },
        ];
        for request in requests {
            assert_eq!(Request::decode(&request.encode()), Some(request));
        }
        let answers = [
            Answer::Done(Output::Done),
            Answer::Done(Output::Swapped(true)),
            Answer::Done(Output::Value(None)),
            Answer::Done(Output::Value(Some(7))),
            Answer::NotLeader(None),
            Answer::NotLeader(Some(2)),
            Answer::Failed,
            Answer::Unknown,
        ];
        for answer in answers {
            assert_eq!(Answer::decode(&answer.encode()), Some(answer));
        }
        assert_eq!(Request::decode(&[9]), None);
        assert_eq!(Answer::decode(&[8, 0, 0, 0, 0, 0, 0, 0, 0]), None);
    }
}
