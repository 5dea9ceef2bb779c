//! The clients: PUTs of unique values, CAS on a few contended keys, DELETEs, and GETs at every
//! consistency level, each with a timeout, recorded with monotonic invoke and completion times
//! and an outcome: ok, definitely not applied, or unknown (from the answer's `"outcome"`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use sim::linearizability::{Input, Output};
use tokio::time::Instant;

use super::http::{self, CallError};

/// How many keys the clients write.
pub const KEYS: u64 = 6;
/// How many of them (the first) take the CAS operations, so that they are contended.
pub const CAS_KEYS: u64 = 2;
/// How long a client waits for one answer before it records the outcome as unknown.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client rests between two operations, at most.
pub const THINK_MS_MAX: u64 = 20;
/// The key of the lease-pause probe (outside the clients' keys).
pub const PROBE_KEY: u64 = 1000;

/// The consistency a read asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Consistency {
    /// `linearizable`.
    Linearizable,
    /// `lease`.
    Lease,
    /// `follower`.
    Follower,
    /// `stale`: not checked for linearizability.
    Stale,
}

impl Consistency {
    /// Its name in the query.
    pub fn name(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Lease => "lease",
            Consistency::Follower => "follower",
            Consistency::Stale => "stale",
        }
    }
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Answered at the given time (microseconds since the start).
    Ok {
        /// When.
        at: u64,
        /// What.
        output: Output,
    },
    /// Definitely not applied (for a read: failed).
    NotApplied,
    /// May or may not have been applied.
    Unknown,
}

/// One operation of the history.
#[derive(Clone, Copy, Debug)]
pub struct Record {
    /// The client.
    pub client: u64,
    /// The request.
    pub input: Input,
    /// For a read, its consistency.
    pub consistency: Option<Consistency>,
    /// When it was sent (microseconds since the start).
    pub call: u64,
    /// How it ended.
    pub ended: Ended,
}

/// The shared history and the clock it is measured by.
#[derive(Clone)]
pub struct History {
    start: Instant,
    records: Arc<Mutex<Vec<Record>>>,
}

impl History {
    /// An empty history whose clock starts now.
    pub fn new() -> History {
        History { start: Instant::now(), records: Arc::new(Mutex::new(Vec::new())) }
    }

    /// Microseconds since the start.
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Records an operation.
    pub fn push(&self, record: Record) {
        self.records.lock().unwrap_or_else(PoisonError::into_inner).push(record);
    }

    /// Every operation so far.
    pub fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// The HTTP name of key `key`.
pub fn key_name(key: u64) -> String {
    format!("k{key}")
}

/// Runs `input` against `node`, recording it in `history`.
pub async fn perform(
    history: &History,
    client: u64,
    node: SocketAddr,
    input: Input,
    consistency: Option<Consistency>,
    timeout: Duration,
) -> Record {
    let call = history.now();
    let ended = match input {
        Input::Get { key } => {
            let consistency = consistency.unwrap_or(Consistency::Linearizable);
            let path = format!("/kv/{}?consistency={}", key_name(key), consistency.name());
            read(http::call("GET", node, &path, b"", timeout).await, history)
        }
        Input::Put { key, value } => {
            let (path, body) = (format!("/kv/{}", key_name(key)), value.to_string());
            let answer = http::call("PUT", node, &path, body.as_bytes(), timeout).await;
            write(answer, history, |status, _| (status == 200).then_some(Output::Done))
        }
        Input::Delete { key } => {
            let path = format!("/kv/{}", key_name(key));
            let answer = http::call("DELETE", node, &path, b"", timeout).await;
            write(answer, history, |status, _| (status == 200).then_some(Output::Done))
        }
        Input::CompareAndSet { key, expected, new } => {
            let body =
                serde_json::json!({ "expected": expected.map(|v| v.to_string()), "value": new.map(|v| v.to_string()) });
            let path = format!("/kv/{}/cas", key_name(key));
            let answer = http::call("POST", node, &path, body.to_string().as_bytes(), timeout).await;
            write(answer, history, |status, json| match (status, json["swapped"].as_bool()) {
                (200 | 409, Some(swapped)) => Some(Output::Swapped(swapped)),
                _ => None,
            })
        }
    };
    let record = Record { client, input, consistency, call, ended };
    history.push(record);
    record
}

fn read(answer: Result<http::Answer, CallError>, history: &History) -> Ended {
    let at = history.now();
    match answer {
        Ok(answer) if answer.status == 200 => match String::from_utf8_lossy(&answer.body).parse::<u64>() {
            Ok(value) => Ended::Ok { at, output: Output::Value(Some(value)) },
            Err(_) => Ended::NotApplied, // Not a value the clients wrote: reported by the checks.
        },
        Ok(answer) if answer.status == 404 && answer.json()["reason"] == "not_found" => {
            Ended::Ok { at, output: Output::Value(None) }
        }
        _ => Ended::NotApplied,
    }
}

/// The outcome of a write: `ok` decides what a success is; an error says in `"outcome"` whether
/// it was applied, and anything else (no answer, no field) counts as unknown.
fn write(
    answer: Result<http::Answer, CallError>,
    history: &History,
    ok: impl Fn(u16, &serde_json::Value) -> Option<Output>,
) -> Ended {
    let at = history.now();
    match answer {
        Ok(answer) => {
            let json = answer.json();
            if let Some(output) = ok(answer.status, &json) {
                return Ended::Ok { at, output };
            }
            if json["outcome"] == "not_applied" { Ended::NotApplied } else { Ended::Unknown }
        }
        Err(CallError::NotSent) => Ended::NotApplied,
        Err(CallError::Lost) => Ended::Unknown,
    }
}

/// One client: operations until `stop`, against the nodes `targets` returns.
pub async fn client(id: u64, seed: u64, history: History, targets: Arc<Mutex<Vec<SocketAddr>>>, stop: Arc<AtomicBool>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ id);
    let mut sequence = 0u64;
    // The value this client last saw per key: what its CAS expects.
    let mut seen: Vec<Option<u64>> = vec![None; KEYS as usize];
    while !stop.load(Ordering::Relaxed) {
        let node = {
            let targets = targets.lock().unwrap_or_else(PoisonError::into_inner);
            if targets.is_empty() { None } else { Some(targets[rng.next_u32() as usize % targets.len()]) }
        };
        let Some(node) = node else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        sequence += 1;
        let unique = id * 1_000_000_000 + sequence;
        let key = u64::from(rng.next_u32()) % KEYS;
        let roll = rng.next_u32() % 100;
        let (input, consistency) = match roll {
            0..30 => (Input::Put { key, value: unique }, None),
            30..35 => (Input::Delete { key }, None),
            35..55 => {
                let key = key % CAS_KEYS;
                (Input::CompareAndSet { key, expected: seen[key as usize], new: Some(unique) }, None)
            }
            _ => {
                let level = [Consistency::Linearizable, Consistency::Lease, Consistency::Follower, Consistency::Stale]
                    [rng.next_u32() as usize % 4];
                (Input::Get { key }, Some(level))
            }
        };
        let record = perform(&history, id, node, input, consistency, OPERATION_TIMEOUT).await;
        if let (Input::Get { key }, Ended::Ok { output: Output::Value(value), .. }) = (record.input, record.ended) {
            seen[key as usize] = value;
        }
        if let (Input::CompareAndSet { key, new, .. }, Ended::Ok { output: Output::Swapped(true), .. }) =
            (record.input, record.ended)
        {
            seen[key as usize] = new;
        }
        tokio::time::sleep(Duration::from_millis(u64::from(rng.next_u32()) % THINK_MS_MAX)).await;
    }
}
