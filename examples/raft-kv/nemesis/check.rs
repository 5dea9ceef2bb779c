//! The checks after the faults: heal, read every key linearizably (no acknowledged write lost),
//! wait for every member to converge to the same values, check the history's linearizability
//! per key with `sim::linearizability`, look for panics in the nodes' logs, and sum up. A
//! sharded cluster must also be back to its replication factor: every shard at `R` replicas,
//! each replica's voters those of the table.

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
    // Converge on the members the cluster has, whatever the suite's requests were told. A
    // sharded run asks for no membership change of uncertain outcome (it has no member
    // replacement), and its members are every node it started: `shards_recovered` checks that
    // the table holds exactly those, a node that joined among them.
    if run.options.shards.is_none() {
        membership::sync(run, "before the final checks").await;
    }
    let finals = final_reads(run).await;
    converge(run, &finals).await;
    if let Some((shard_count, replicas)) = run.options.shards {
        shards_recovered(run, shard_count, replicas).await;
    }
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
        // A drained node holds no key: `shards_recovered` checks that it holds no replica. Once
        // the table forgot it, it reads no table again (docs/sharding.md), so after a restart
        // it answers every read 503: asking it would fail runs whose drained node the faults
        // restarted after that, and pass the others.
        if Some(id) == run.drained {
            continue;
        }
        let http = run.cluster.http(id)?;
        for (&key, &value) in finals {
            let path = format!("/kv/{}?consistency=stale", workload::key_name(key));
            let answer = if run.options.shards.is_some() {
                // Only the replicas of the key's shard hold it; another node's 307 says it is
                // not one (that every shard has its replicas is `shards_recovered`'s check).
                match http::call_here("GET", http, &path, b"", Duration::from_secs(2)).await {
                    Ok(answer) if answer.status == 307 => continue,
                    answer => answer,
                }
            } else {
                http::call("GET", http, &path, b"", Duration::from_secs(2)).await
            };
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

/// Waits until a sharded cluster is back to its replication factor after healing: every member
/// has applied the same routing table, whose nodes are exactly the members (a node that joined
/// among them), all active, and which has `shard_count` shards of `replicas` replicas each
/// (fewer when there are fewer nodes); every replica's voters are the table's, with no change
/// half done and no learner left; some replica leads each shard; no node holds a replica the
/// table does not name; and replica counts differ by at most one between nodes (rebalancing is
/// over). An anomaly when that does not happen within the recovery timeout.
async fn shards_recovered(run: &mut Run, shard_count: u32, replicas: u8) {
    let start = Instant::now();
    let mut last_difference = String::new();
    while start.elapsed() < RECOVERY_TIMEOUT {
        let mut views = BTreeMap::new();
        for &id in &run.cluster.members {
            let Some(http) = run.cluster.http(id) else { continue };
            if let Ok(answer) = http::call_here("GET", http, "/cluster/shards", b"", Duration::from_secs(2)).await
                && answer.status == 200
            {
                views.insert(id, answer.json());
            }
        }
        let holding: Vec<u64> = run.cluster.members.iter().copied().filter(|id| Some(*id) != run.drained).collect();
        let expected = usize::from(replicas).min(holding.len());
        let drained = run.drained.and_then(|id| Some((id, views.remove(&id)?)));
        let difference = match &drained {
            Some((id, view)) => drained_difference(*id, view),
            None if run.drained.is_some() => Some(format!("drained node {:?} did not answer", run.drained)),
            None => None,
        };
        match difference.or_else(|| shard_differences(&holding, &views, shard_count, expected)) {
            None => {
                let waited = start.elapsed().as_millis();
                faults::note(run, &format!("every shard at {expected} replicas, balanced, {waited} ms into the check"));
                return;
            }
            Some(difference) => last_difference = difference,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    run.anomalies.push(format!(
        "the shards did not recover their replicas within {} s: {last_difference}",
        RECOVERY_TIMEOUT.as_secs()
    ));
}

/// How a drained node's `/cluster/shards` (`view`) differs from an emptied one, if it does: it
/// must hold no replica. (That the cluster's table forgot it, and that no shard's group counts
/// it, [`shard_differences`] checks on the other nodes' views.)
pub fn drained_difference(id: u64, view: &serde_json::Value) -> Option<String> {
    match id_list(&view["held"]) {
        Some(held) if held.is_empty() => None,
        Some(held) => Some(format!("drained node {id} still holds shards {held:?}")),
        None => Some(format!("drained node {id} does not say which shards it holds: {view}")),
    }
}

/// The ids in `value`, if it is a list of ids.
fn id_list(value: &serde_json::Value) -> Option<Vec<u64>> {
    value.as_array()?.iter().map(serde_json::Value::as_u64).collect()
}

/// The first way `views` (each member's `/cluster/shards`) differ from a sharded cluster back at
/// its replication factor (see [`shards_recovered`]), if any.
pub fn shard_differences(
    members: &[u64],
    views: &BTreeMap<u64, serde_json::Value>,
    shard_count: u32,
    replicas: usize,
) -> Option<String> {
    let missing: Vec<u64> = members.iter().copied().filter(|id| !views.contains_key(id)).collect();
    if !missing.is_empty() {
        return Some(format!("nodes {missing:?} did not answer /cluster/shards"));
    }
    let (&first, table) = views.iter().next()?;
    for (&id, view) in views {
        if view["version"] != table["version"] {
            return Some(format!("node {id} has table version {}, node {first} {}", view["version"], table["version"]));
        }
    }
    let version = &table["version"];
    let in_table: Vec<u64> = table["nodes"]
        .as_object()
        .map_or_else(Vec::new, |nodes| nodes.keys().filter_map(|id| id.parse().ok()).collect());
    let mut started = members.to_vec();
    started.sort_unstable();
    if in_table.iter().copied().collect::<std::collections::BTreeSet<u64>>() != started.iter().copied().collect() {
        return Some(format!("the table (version {version}) has nodes {in_table:?}, not {started:?}"));
    }
    for &id in members {
        let state = &table["nodes"][id.to_string()]["state"];
        if state != "active" {
            return Some(format!("node {id} is {state} in the table (version {version}), not active"));
        }
    }
    let shards = table["shards"].as_array().map_or(&[][..], Vec::as_slice);
    if shards.len() != shard_count as usize {
        return Some(format!("the table (version {version}) has {} shards, not {shard_count}", shards.len()));
    }
    for entry in shards {
        let Some(shard) = entry["shard"].as_u64() else {
            return Some(format!("the table (version {version}) has a shard without a number: {entry}"));
        };
        let Some(named) = id_list(&entry["replicas"]) else {
            return Some(format!("shard {shard} has no replica list"));
        };
        if named.len() != replicas {
            return Some(format!("shard {shard} has replicas {named:?} (table version {version}), not {replicas}"));
        }
        let mut leaders = 0;
        for (&id, view) in views {
            let held = id_list(&view["held"]).unwrap_or_default().contains(&shard);
            let local = view["shards"].as_array().and_then(|list| list.iter().find(|other| other["shard"] == shard));
            let local = local.map(|other| &other["local"]).filter(|local| !local.is_null());
            if !named.contains(&id) {
                if held {
                    return Some(format!("node {id} still holds shard {shard}, whose replicas are {named:?}"));
                }
                continue;
            }
            let Some(local) = local else {
                return Some(format!("node {id}, a replica of shard {shard} in the table, holds none"));
            };
            let voters = id_list(&local["voters"]);
            let outgoing = id_list(&local["voters_outgoing"]).unwrap_or_default();
            let learners = id_list(&local["learners"]).unwrap_or_default();
            if voters.as_deref() != Some(&named[..]) || !outgoing.is_empty() || !learners.is_empty() {
                return Some(format!(
                    "node {id}'s replica of shard {shard} has voters {voters:?} (outgoing {outgoing:?}, learners \
                     {learners:?}), the table {named:?}"
                ));
            }
            if local["role"] == "leader" {
                leaders += 1;
            }
        }
        if leaders == 0 {
            return Some(format!("no replica of shard {shard} leads it"));
        }
    }
    // Rebalancing is over: replica counts differ by at most one between the nodes.
    let count =
        |id: u64| shards.iter().filter(|entry| id_list(&entry["replicas"]).unwrap_or_default().contains(&id)).count();
    let counts: BTreeMap<u64, usize> = members.iter().map(|&id| (id, count(id))).collect();
    let (fewest, most) = (counts.values().min()?, counts.values().max()?);
    if most - fewest > 1 {
        return Some(format!("the replicas are not balanced over the nodes (replicas per node {counts:?})"));
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

    /// Two nodes' `/cluster/shards`: shard 0 on nodes 1 and 2, node 1 leading it.
    fn views(version: u64, node_2_voters: &[u64], node_2_holds: &[u64]) -> BTreeMap<u64, serde_json::Value> {
        let group = |role: &str, voters: &[u64]| serde_json::json!({ "role": role, "voters": voters, "voters_outgoing": [], "learners": [] });
        let nodes = serde_json::json!({ "1": { "state": "active" }, "2": { "state": "active" } });
        let view = |id: u64, local: serde_json::Value, held: &[u64]| {
            serde_json::json!({ "id": id, "version": version, "nodes": nodes, "held": held,
                                "shards": [{ "shard": 0, "replicas": [1, 2], "local": local }] })
        };
        BTreeMap::from([
            (1, view(1, group("leader", &[1, 2]), &[0])),
            (
                2,
                view(
                    2,
                    if node_2_holds.is_empty() { serde_json::Value::Null } else { group("follower", node_2_voters) },
                    node_2_holds,
                ),
            ),
        ])
    }

    /// A sharded cluster counts as recovered only when every shard's replicas are the table's,
    /// as many as the replication factor, each with the table's voters.
    #[test]
    fn a_shard_short_of_its_replicas_is_a_difference() {
        assert_eq!(shard_differences(&[1, 2], &views(7, &[1, 2], &[0]), 1, 2), None);
        // One replica fewer than the factor in the table.
        assert!(shard_differences(&[1, 2], &views(7, &[1, 2], &[0]), 1, 3).is_some());
        // A replica whose group still has other voters, or none at all.
        assert!(shard_differences(&[1, 2], &views(7, &[1, 2, 3], &[0]), 1, 2).is_some());
        assert!(shard_differences(&[1, 2], &views(7, &[], &[]), 1, 2).is_some());
        // A member that does not answer, or another shard count.
        assert!(shard_differences(&[1, 2, 3], &views(7, &[1, 2], &[0]), 1, 2).is_some());
        assert!(shard_differences(&[1, 2], &views(7, &[1, 2], &[0]), 2, 2).is_some());
        // A node that joined but that the table does not hold yet.
        let mut joined = views(7, &[1, 2], &[0]);
        joined.insert(3, joined[&2].clone());
        assert!(shard_differences(&[1, 2, 3], &joined, 1, 2).is_some());
    }

    /// A drained node counts as emptied only when it holds no replica and the other nodes'
    /// table has forgotten it; the other nodes are then checked as a cluster without it.
    #[test]
    fn a_drained_node_that_holds_a_replica_or_stays_in_the_table_is_a_difference() {
        let empty = serde_json::json!({ "id": 3, "version": 5, "held": [], "shards": [] });
        assert_eq!(drained_difference(3, &empty), None);
        let holding = serde_json::json!({ "id": 3, "version": 5, "held": [0], "shards": [] });
        assert!(drained_difference(3, &holding).is_some_and(|difference| difference.contains("still holds")));
        assert!(drained_difference(3, &serde_json::json!({ "id": 3 })).is_some());
        // The others' table still names the drained node (draining, not yet forgotten).
        let mut remembered = views(7, &[1, 2], &[0]);
        for view in remembered.values_mut() {
            view["nodes"]["3"] = serde_json::json!({ "state": "draining" });
        }
        assert!(shard_differences(&[1, 2], &remembered, 1, 2).is_some());
        assert_eq!(shard_differences(&[1, 2], &views(7, &[1, 2], &[0]), 1, 2), None);
        // A group that still counts the drained node as a voter.
        assert!(shard_differences(&[1, 2], &views(7, &[1, 2, 3], &[0]), 1, 2).is_some());
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
