//! The checks after the faults: heal, read every key linearizably (no acknowledged write lost),
//! wait for every member to converge to the same values, check the history's linearizability
//! per key with `sim::linearizability`, look for panics in the nodes' logs, and sum up.

use std::collections::BTreeMap;
use std::time::Duration;

use sim::linearizability::{self, Input, Operation, Outcome, Output, Verdict};
use tokio::time::Instant;

use super::faults::{self, NEMESIS_CLIENT};
use super::http;
use super::membership;
use super::workload::{self, Consistency, Ended, KEYS, PROBE_KEY, Record};
use super::{RECOVERY_TIMEOUT, Report, Run};

/// How the anomaly of a stale read in the lease-pause probe begins.
pub const STALE_LEASE_READ: &str = "stale lease read";
/// The search budget of the linearizability checker, per key.
pub const CHECK_STEPS_MAX: u64 = 20_000_000;
/// The most characters of a counterexample quoted in the report.
pub const COUNTEREXAMPLE_CHARS_MAX: usize = 4000;

/// Heals, runs the final checks and fills `report`.
pub async fn finish(run: &mut Run, report: &mut Report) {
    faults::heal(run).await;
    // Converge on the members the cluster has, whatever the suite's requests were told.
    membership::sync(run, "before the final checks").await;
    let finals = final_reads(run).await;
    converge(run, &finals).await;
    let records = run.history.records();
    report.checked = linearizable(&records, &mut run.anomalies);
    panics(run);
    summarize(run, &records, report);
}

/// Every key (the clients' and the probe's), read linearizably through the leader after
/// healing: these reads join the history, so a lost acknowledged write is a violation.
async fn final_reads(run: &mut Run) -> BTreeMap<u64, Option<u64>> {
    let mut finals = BTreeMap::new();
    for key in (0..KEYS).chain([PROBE_KEY]) {
        let start = Instant::now();
        loop {
            let leader = run.cluster.leader().await.map(|(id, _)| id);
            if let Some(http) = leader.and_then(|id| run.cluster.http(id)) {
                let input = Input::Get { key };
                let consistency = Some(Consistency::Linearizable);
                let timeout = Duration::from_secs(5);
                let record = workload::perform(&run.history, NEMESIS_CLIENT, http, input, consistency, timeout).await;
                if let Ended::Ok { output: Output::Value(value), .. } = record.ended {
                    finals.insert(key, value);
                    break;
                }
            }
            if start.elapsed() > RECOVERY_TIMEOUT {
                run.anomalies.push(format!("no final linearizable read of key {key} succeeded"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    finals
}

/// Waits until every member has applied the leader's commit index and its stale reads give the
/// final values.
async fn converge(run: &mut Run, finals: &BTreeMap<u64, Option<u64>>) {
    let start = Instant::now();
    let mut last_difference = String::new();
    while start.elapsed() < RECOVERY_TIMEOUT {
        match differences(run, finals).await {
            None => return,
            Some(difference) => last_difference = difference,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    run.anomalies.push(format!("the members did not converge: {last_difference}"));
}

/// The first way a member differs from the final values, if any.
async fn differences(run: &Run, finals: &BTreeMap<u64, Option<u64>>) -> Option<String> {
    for &id in &run.cluster.members {
        let http = run.cluster.http(id)?;
        for (&key, &value) in finals {
            let path = format!("/kv/{}?consistency=stale", workload::key_name(key));
            let answer = http::call("GET", http, &path, b"", Duration::from_secs(2)).await;
            let got = match answer {
                Ok(answer) if answer.status == 200 => String::from_utf8_lossy(&answer.body).parse::<u64>().ok(),
                Ok(answer) if answer.status == 404 => None,
                other => return Some(format!("node {id} did not answer a stale read: {:?}", other.err())),
            };
            if got != value {
                return Some(format!("node {id} has {got:?} for key {key}, the leader {value:?}"));
            }
        }
    }
    None
}

/// The history as the checker wants it: stale reads and failed reads left out, writes that were
/// definitely not applied left out, writes of unknown outcome kept as such.
pub fn operations(records: &[Record]) -> Vec<Operation> {
    records
        .iter()
        .filter(|record| record.consistency != Some(Consistency::Stale))
        .filter_map(|record| {
            let outcome = match (record.ended, record.input) {
                (Ended::Ok { at, output }, _) => Outcome::Returned { at, output },
                (Ended::NotApplied, _) | (Ended::Unknown, Input::Get { .. }) => return None,
                (Ended::Unknown, _) => Outcome::Unknown,
            };
            Some(Operation { client: record.client, input: record.input, call: record.call, outcome })
        })
        .collect()
}

/// Checks the history; pushes a violation to `anomalies`; returns the verdict in words.
fn linearizable(records: &[Record], anomalies: &mut Vec<String>) -> String {
    let history = operations(records);
    let size = format!("{} operations checked ({} recorded)", history.len(), records.len());
    match linearizability::check(&history, CHECK_STEPS_MAX) {
        Ok(Verdict::Linearizable) => format!("linearizable; {size}"),
        Ok(Verdict::Unknown { key, steps }) => {
            format!("undecided: key {key} ran out of budget after {steps} steps; {size}")
        }
        Ok(Verdict::Violation(counterexample)) => {
            let text: String = counterexample.to_string().chars().take(COUNTEREXAMPLE_CHARS_MAX).collect();
            anomalies.push(format!("linearizability violation on key {}: {text}", counterexample.key));
            format!("VIOLATION on key {}; {size}", counterexample.key)
        }
        Err(error) => {
            anomalies.push(format!("malformed history: {error:?}"));
            format!("malformed history; {size}")
        }
    }
}

/// Every line of a node's log that reports a panic.
fn panics(run: &mut Run) {
    for log in run.cluster.logs() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|line| line.contains("panicked")) {
            run.anomalies.push(format!("{}: {line}", log.display()));
        }
    }
}

fn kind(record: &Record) -> String {
    match (record.input, record.consistency) {
        (Input::Get { .. }, Some(consistency)) => format!("get {}", consistency.name()),
        (Input::Get { .. }, None) => "get".to_owned(),
        (Input::Put { .. }, _) => "put".to_owned(),
        (Input::Delete { .. }, _) => "delete".to_owned(),
        (Input::CompareAndSet { .. }, _) => "cas".to_owned(),
    }
}

fn summarize(run: &Run, records: &[Record], report: &mut Report) {
    for record in records {
        let outcome = match record.ended {
            Ended::Ok { .. } => "ok",
            Ended::NotApplied if matches!(record.input, Input::Get { .. }) => "failed",
            Ended::NotApplied => "not_applied",
            Ended::Unknown => "unknown",
        };
        *report.operations.entry((kind(record), outcome)).or_default() += 1;
    }
    for fault in &run.faults {
        *report.faults.entry(fault.kind).or_default() += 1;
    }
    // From each fault to the first acknowledged write sent after it.
    let writes: Vec<(u64, u64)> = records
        .iter()
        .filter(|record| !matches!(record.input, Input::Get { .. }))
        .filter_map(|record| match record.ended {
            Ended::Ok { at, .. } => Some((record.call, at)),
            _ => None,
        })
        .collect();
    let end = run.history.now();
    for fault in &run.faults {
        let next = writes.iter().filter(|(call, _)| *call >= fault.at).map(|(_, at)| *at).min().unwrap_or(end);
        let gap = Duration::from_micros(next.saturating_sub(fault.at));
        if report.worst_unavailability.as_ref().is_none_or(|(worst, _)| gap > *worst) {
            report.worst_unavailability = Some((gap, fault.detail.clone()));
        }
    }
    report.lease_probes = run.lease_probes;
    report.anomalies = run.anomalies.clone();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(client: u64, input: Input, consistency: Option<Consistency>, call: u64, ended: Ended) -> Record {
        Record { client, input, consistency, call, ended }
    }

    fn ok(at: u64, output: Output) -> Ended {
        Ended::Ok { at, output }
    }

    /// Stale reads, failed reads and writes that were definitely not applied leave the history;
    /// writes of unknown outcome stay, as indeterminate.
    #[test]
    fn the_history_keeps_what_the_checker_must_see() {
        let records = [
            record(1, Input::Put { key: 0, value: 1 }, None, 0, ok(10, Output::Done)),
            record(2, Input::Get { key: 0 }, Some(Consistency::Stale), 11, ok(12, Output::Value(None))),
            record(2, Input::Get { key: 0 }, Some(Consistency::Lease), 13, Ended::NotApplied),
            record(3, Input::Put { key: 0, value: 2 }, None, 14, Ended::NotApplied),
            record(3, Input::Put { key: 0, value: 3 }, None, 15, Ended::Unknown),
            record(2, Input::Get { key: 0 }, Some(Consistency::Lease), 16, Ended::Unknown),
        ];
        let history = operations(&records);
        assert_eq!(history.len(), 2, "{history:?}");
        assert_eq!(history[1].outcome, Outcome::Unknown);
        assert_eq!(linearizability::check(&history, CHECK_STEPS_MAX), Ok(Verdict::Linearizable));
    }

    /// An acknowledged write that a later linearizable read does not see is a violation, and a
    /// value that only an unknown write could have produced is not.
    #[test]
    fn a_lost_acknowledged_write_is_an_anomaly() {
        let lost = [
            record(1, Input::Put { key: 3, value: 7 }, None, 0, ok(10, Output::Done)),
            record(0, Input::Get { key: 3 }, Some(Consistency::Linearizable), 20, ok(21, Output::Value(None))),
        ];
        let mut anomalies = Vec::new();
        assert!(linearizable(&lost, &mut anomalies).starts_with("VIOLATION"));
        assert!(anomalies[0].starts_with("linearizability violation on key 3"), "{anomalies:?}");

        let unknown = [
            record(1, Input::Put { key: 3, value: 7 }, None, 0, Ended::Unknown),
            record(0, Input::Get { key: 3 }, Some(Consistency::Linearizable), 20, ok(21, Output::Value(Some(7)))),
        ];
        let mut anomalies = Vec::new();
        assert!(linearizable(&unknown, &mut anomalies).starts_with("linearizable"));
        assert!(anomalies.is_empty());
    }
}
