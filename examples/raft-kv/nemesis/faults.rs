//! Carrying out one step of the schedule: resolve its target, inject the fault, hold it, heal
//! everything, wait for a leader, rest.

use std::time::Duration;

use sim::linearizability::{Input, Output};
use tokio::time::Instant;

use super::check::STALE_LEASE_READ;
use super::cluster::{ELECTION_TIMEOUT_MAX, STATUS_TIMEOUT};
use super::http;
use super::membership::{self, RemovalOutcome};
use super::proxy::LinkRule;
use super::schedule::{Fault, Step, Target};
use super::workload::{self, Consistency, Ended, PROBE_KEY};
use super::{FaultRecord, RECOVERY_TIMEOUT, Run};

/// How long a membership change or a transfer may take.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node that joined may take to become a voter.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a removed node, restarted on its data, may take to say it was removed.
pub const REMOVED_NOTICE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the lease-pause probe's read may take (a node that does not trust its lease cannot
/// confirm the read while its inbound links are cut: it times out, which is correct).
pub const PROBE_READ_TIMEOUT: Duration = Duration::from_secs(3);
/// How long after a node starts joining it is killed (see [`grow`]).
pub const JOINING_KILL_AFTER: Duration = Duration::from_millis(1500);
/// How long the joining node stays down before its restart.
pub const JOINING_KILL_HOLD: Duration = Duration::from_millis(1000);
/// How long a fault aimed at a move's source or target looks for a move under way before it
/// falls back to a follower (five controller rounds at the suite's tick).
pub const MOVE_WAIT_MAX: Duration = Duration::from_millis(1000);
/// The client id of the nemesis's own operations in the history.
pub const NEMESIS_CLIENT: u64 = 0;
/// The fewest voters with which a fault that stops a node beyond an election timeout (a pause,
/// the lease-pause probe) runs: with fewer, stopping one voter (the leader, for the probe)
/// takes the quorum down by design, and what follows measures that, not the cluster.
pub const VOTERS_MIN_TO_STOP_ONE: usize = 3;

/// Carries out `step`.
pub async fn apply(run: &mut Run, step: &Step) {
    let leader_status = run.cluster.leader_status().await;
    let leader = leader_status.as_ref().map(|(id, ..)| *id);
    let voters = leader_status
        .as_ref()
        .and_then(|(.., status)| status["voters"].as_array().map(Vec::len))
        .unwrap_or(run.cluster.members.len());
    if matches!(step.fault, Fault::Pause(_) | Fault::LeasePause) && voters < VOTERS_MIN_TO_STOP_ONE {
        let kind = step.fault.kind();
        note(
            run,
            &format!("{kind}: skipped, the cluster has {voters} voters (stopping one would take the quorum down)"),
        );
        heal(run).await;
        tokio::time::sleep(step.rest).await;
        return;
    }
    // The node the fault hits, and how it was chosen when that is worth saying (a move's).
    let (id, aim) = match step.fault.target() {
        Some(target) => aim(run, leader, target).await,
        None => (0, String::new()),
    };
    let resolve = |target: Target| resolve(run, leader, target);
    match step.fault {
        Fault::Kill(_) => {
            record(run, step, format!("kill -9 node {id}{aim}"));
            run.cluster.kill(id);
            tokio::time::sleep(step.hold).await;
        }
        Fault::Pause(_) => {
            record(run, step, format!("SIGSTOP node {id}{aim}"));
            run.cluster.pause(id);
            tokio::time::sleep(step.hold.max(2 * ELECTION_TIMEOUT_MAX)).await;
        }
        Fault::Isolate(_) => links(run, step, id, &aim, "isolate", true, true, blocked()).await,
        Fault::CutOutbound(_) => links(run, step, id, &aim, "cut outbound", true, false, blocked()).await,
        Fault::CutInbound(_) => links(run, step, id, &aim, "cut inbound", false, true, blocked()).await,
        Fault::Flaky(_, per_mille) => {
            let rule = LinkRule { cut_per_mille: per_mille, ..LinkRule::default() };
            links(run, step, id, &aim, "flaky", true, true, rule).await;
        }
        Fault::Slow(_, ms) => {
            let rule = LinkRule { delay: Duration::from_millis(u64::from(ms)), ..LinkRule::default() };
            links(run, step, id, &aim, "slow", true, true, rule).await;
        }
        Fault::Transfer(k) => {
            let id = resolve(Target::Follower(k));
            transfer(run, step, leader, id).await;
        }
        Fault::Replace(k) => {
            let id = resolve(Target::Follower(k));
            replace(run, step, leader, id).await;
        }
        Fault::LeasePause => lease_pause(run, step).await,
    }
    heal(run).await;
    tokio::time::sleep(step.rest).await;
}

fn blocked() -> LinkRule {
    LinkRule { blocked: true, ..LinkRule::default() }
}

/// The member `target` names: the leader, or the k-th other member in id order (a move's
/// source or target: see [`aim`]; here the follower it falls back to).
fn resolve(run: &Run, leader: Option<u64>, target: Target) -> u64 {
    let members = &run.cluster.members;
    let first = members.first().copied().unwrap_or(1);
    match target {
        Target::Leader => leader.unwrap_or(first),
        Target::Follower(k) => {
            let followers: Vec<u64> = members.iter().copied().filter(|id| Some(*id) != leader).collect();
            followers.get(k as usize % followers.len().max(1)).copied().unwrap_or(first)
        }
        Target::MoveSource => resolve(run, leader, Target::Follower(0)),
        Target::MoveDestination => resolve(run, leader, Target::Follower(1)),
    }
}

/// The member `target` names, with how a move's source or target was found, for the fault's
/// log line: the move under way in the newest routing table the running members show (a shard
/// whose table replicas differ from its group's recorded members), looked for during up to
/// [`MOVE_WAIT_MAX`] (a drain or a join is followed by its first move a controller round
/// later), or the follower it falls back to when there is none.
async fn aim(run: &Run, leader: Option<u64>, target: Target) -> (u64, String) {
    let wanted_source = match target {
        Target::MoveSource => true,
        Target::MoveDestination => false,
        Target::Leader | Target::Follower(_) => return (resolve(run, leader, target), String::new()),
    };
    let role = if wanted_source { "source" } else { "destination" };
    let start = Instant::now();
    loop {
        if let Some((shard, id)) = find_move(run, wanted_source).await {
            return (id, format!(" (the {role} of shard {shard}'s move)"));
        }
        if start.elapsed() >= MOVE_WAIT_MAX {
            let id = resolve(run, leader, target);
            return (id, format!(" (no move under way: a follower instead of a move's {role})"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A move under way and its source (`wanted_source`) or destination, a member: `(shard, node)`.
async fn find_move(run: &Run, wanted_source: bool) -> Option<(u64, u64)> {
    let mut newest: Option<serde_json::Value> = None;
    for &id in &run.cluster.members {
        let (Some(http), true) = (run.cluster.http(id), run.cluster.is_up(id)) else { continue };
        let Ok(answer) = http::call_here("GET", http, "/cluster/shards", b"", STATUS_TIMEOUT).await else { continue };
        let table = answer.json();
        if answer.status == 200
            && newest.as_ref().is_none_or(|best| table["version"].as_u64() > best["version"].as_u64())
        {
            newest = Some(table);
        }
    }
    moves(newest.as_ref()?).into_iter().find_map(|(shard, source, target)| {
        let id = if wanted_source { source } else { target }?;
        run.cluster.members.contains(&id).then_some((shard, id))
    })
}

/// The moves under way in `table` (a `/cluster/shards` answer): `(shard, source, target)` for
/// each shard whose replicas differ from its recorded members; the source is a member the
/// replicas leave out, the target a replica the members do not count yet.
pub fn moves(table: &serde_json::Value) -> Vec<(u64, Option<u64>, Option<u64>)> {
    let ids = |value: &serde_json::Value| -> std::collections::BTreeSet<u64> {
        value.as_array().map(|ids| ids.iter().filter_map(serde_json::Value::as_u64).collect()).unwrap_or_default()
    };
    let shards = table["shards"].as_array().map_or(&[][..], Vec::as_slice);
    shards
        .iter()
        .filter_map(|entry| {
            let (replicas, members) = (ids(&entry["replicas"]), ids(&entry["members"]));
            let shard = entry["shard"].as_u64()?;
            (replicas != members).then(|| {
                let source = members.difference(&replicas).next().copied();
                (shard, source, replicas.difference(&members).next().copied())
            })
        })
        .collect()
}

/// Prints a note in the step log (verbose runs).
pub fn note(run: &Run, text: &str) {
    if run.options.verbose {
        println!("          {text}");
    }
}

fn record(run: &mut Run, step: &Step, detail: String) {
    if run.options.verbose {
        println!("          {detail}");
    }
    run.faults.push(FaultRecord { kind: step.fault.kind(), detail, at: run.history.now() });
}

/// Applies `rule` to the links of node `id` (chosen as `aim` says) with every other member:
/// what it sends (`outbound`), what it receives (`inbound`), or both; holds it; the heal that
/// follows undoes it.
#[allow(clippy::too_many_arguments)] // A fault's parts, each used once.
async fn links(
    run: &mut Run,
    step: &Step,
    id: u64,
    aim: &str,
    what: &str,
    outbound: bool,
    inbound: bool,
    rule: LinkRule,
) {
    record(run, step, format!("{what} node {id}{aim}"));
    for &other in run.cluster.members.iter().filter(|other| **other != id) {
        if outbound {
            run.cluster.proxy.set(id, other, rule);
        }
        if inbound {
            run.cluster.proxy.set(other, id, rule);
        }
    }
    tokio::time::sleep(step.hold).await;
}

/// Heals every link and process, then waits for a leader (an anomaly if none comes).
pub async fn heal(run: &mut Run) {
    run.cluster.proxy.heal();
    if let Err(error) = run.cluster.heal_processes() {
        run.anomalies.push(format!("restarting a node failed: {error}"));
    }
    run.refresh_targets();
    let start = Instant::now();
    while run.cluster.leader().await.is_none() {
        if start.elapsed() > RECOVERY_TIMEOUT {
            let last = run.faults.last().map_or(String::new(), |fault| fault.detail.clone());
            run.anomalies.push(format!("no leader {} s after healing ({last})", RECOVERY_TIMEOUT.as_secs()));
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// POSTs `body` to `path` on a member (redirected to the leader); whether it answered 200.
async fn admin(run: &Run, via: u64, path: &str, body: serde_json::Value) -> Result<(), String> {
    let http = run.cluster.http(via).ok_or("no such node")?;
    match http::call("POST", http, path, body.to_string().as_bytes(), ADMIN_TIMEOUT).await {
        Ok(answer) if answer.status == 200 => Ok(()),
        Ok(answer) => Err(format!("HTTP {} {}", answer.status, String::from_utf8_lossy(&answer.body))),
        Err(error) => Err(format!("{error:?}")),
    }
}

async fn transfer(run: &mut Run, step: &Step, leader: Option<u64>, id: u64) {
    let Some(leader) = leader.filter(|leader| *leader != id) else {
        record(run, step, format!("transfer to node {id}: skipped (no other leader known)"));
        return;
    };
    record(run, step, format!("transfer leadership from node {leader} to node {id}"));
    if let Err(error) = admin(run, leader, "/cluster/leader", serde_json::json!({ "id": id })).await
        && run.options.verbose
    {
        println!("          the transfer failed: {error}");
    }
}

/// Removes follower `id`, checks that it says so when restarted on its data, and joins a new
/// node in its place. When the removal's answer does not say it was applied (its outcome is
/// unknown, or it failed), the committed membership decides: the replacement goes on if node
/// `id` is gone, and is rolled back (node `id` stays, no new node joins) if it is not.
async fn replace(run: &mut Run, step: &Step, leader: Option<u64>, id: u64) {
    let (Some(leader), true) = (leader, run.cluster.members.len() > 1) else { return };
    if leader == id {
        return;
    }
    let new = run.next_id;
    run.next_id += 1;
    record(run, step, format!("replace node {id} with node {new}"));
    let removal = serde_json::json!({ "action": "remove", "id": id });
    if let Err(error) = admin(run, leader, "/cluster/members", removal).await {
        note(run, &format!("removing node {id} did not answer that it was applied: {error}"));
        let membership = membership::sync(run, &format!("after removing node {id}")).await;
        match membership::removal_outcome(id, membership.as_ref()) {
            RemovalOutcome::Applied => note(run, &format!("node {id} is no longer a member: node {new} joins")),
            RemovalOutcome::NotApplied => {
                note(run, &format!("node {id} is still a member: the replacement is rolled back"));
                return;
            }
            RemovalOutcome::Unknown => {
                note(run, &format!("whether node {id} was removed is unknown: it stays a member, no node joins"));
                return;
            }
        }
    }
    run.cluster.members.retain(|member| *member != id);
    run.refresh_targets();
    // The removed node, restarted on its data, must say it was removed.
    run.cluster.kill(id);
    if let Err(error) = run.cluster.spawn(id) {
        run.anomalies.push(format!("restarting removed node {id}: {error}"));
    }
    let start = Instant::now();
    loop {
        if run.cluster.status(id).await.is_some_and(|status| status["removed"] == true) {
            break;
        }
        if start.elapsed() > REMOVED_NOTICE_TIMEOUT {
            run.anomalies.push(format!("node {id}, removed and restarted on its data, does not say it was removed"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    run.cluster.kill(id);
    // The leadership may have moved during the removal: join through the current leader.
    let via = run.cluster.leader().await.map_or(leader, |(id, _)| id);
    join(run, via, new).await;
}

/// A new node joins the running cluster through its leader (or any running member); shortly
/// after, while it catches up (in a sharded cluster: while the controller adds it to the table
/// and moves replicas to it, so that it is a move's target), it is killed with `kill -9` and
/// restarted; then the schedule's faults go on. Nothing waits for the join to finish here; the
/// final checks do (every shard at its replication factor on the table's nodes, the new one
/// among them).
pub async fn grow(run: &mut Run) {
    let new = run.next_id;
    run.next_id += 1;
    let leader = run.cluster.leader().await.map(|(id, _)| id);
    let via = leader.or_else(|| run.cluster.members.iter().copied().find(|id| run.cluster.is_up(*id)));
    let Some((via, via_http)) = via.and_then(|via| Some((via, run.cluster.http(via)?))) else {
        note(run, &format!("node {new} does not join: no member runs"));
        return;
    };
    let detail = format!("node {new} joins through node {via}");
    note(run, &detail);
    run.faults.push(FaultRecord { kind: "node joins", detail, at: run.history.now() });
    if let Err(error) = run.cluster.join(new, via_http).await {
        run.anomalies.push(format!("starting node {new}: {error}"));
        return;
    }
    run.refresh_targets();
    tokio::time::sleep(JOINING_KILL_AFTER).await;
    let detail = format!("kill -9 node {new} while it joins");
    note(run, &detail);
    run.faults.push(FaultRecord { kind: "kill joining node", detail, at: run.history.now() });
    run.cluster.kill(new);
    tokio::time::sleep(JOINING_KILL_HOLD).await;
    heal(run).await;
}

/// Drains one of the cluster's first nodes (`POST /cluster/drain`, through the meta leader or
/// any running member), retried until the cluster accepts it (a drain is idempotent), while the
/// faults go on; the controller then moves every replica off it. The node is chosen from the
/// seed. An anomaly if the cluster never accepts it; the final checks want the node emptied.
pub async fn drain(run: &mut Run) {
    let id = 1 + run.options.seed % run.options.nodes;
    let detail = format!("drain node {id}");
    note(run, &detail);
    run.faults.push(FaultRecord { kind: "drain node", detail, at: run.history.now() });
    let start = Instant::now();
    loop {
        let leader = run.cluster.leader().await.map(|(leader, _)| leader);
        let via = leader.or_else(|| run.cluster.members.iter().copied().find(|member| run.cluster.is_up(*member)));
        let answer = match via {
            Some(via) => admin(run, via, "/cluster/drain", serde_json::json!({ "id": id })).await,
            None => Err("no member runs".to_owned()),
        };
        match answer {
            Ok(()) => break,
            Err(error) if start.elapsed() > ADMIN_TIMEOUT => {
                run.anomalies.push(format!("draining node {id} was not accepted: {error}"));
                return;
            }
            Err(error) => note(run, &format!("draining node {id}: {error}; retrying")),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    run.drained = Some(id);
    run.refresh_targets();
}

/// Starts node `new` with `--join` through `via` and waits until the members count it a voter.
async fn join(run: &mut Run, via: u64, new: u64) {
    let Some(via_http) = run.cluster.http(via) else { return };
    if let Err(error) = run.cluster.join(new, via_http).await {
        run.anomalies.push(format!("starting node {new}: {error}"));
        return;
    }
    let start = Instant::now();
    loop {
        let leader = run.cluster.leader().await.map(|(id, _)| id);
        let status = match leader {
            Some(leader) => run.cluster.status(leader).await,
            None => None,
        };
        let voters = status.as_ref().and_then(|status| status["voters"].as_array().cloned()).unwrap_or_default();
        if voters.iter().any(|voter| voter.as_u64() == Some(new)) {
            break;
        }
        if start.elapsed() > JOIN_TIMEOUT {
            run.anomalies.push(format!("node {new} did not become a voter within {} s", JOIN_TIMEOUT.as_secs()));
            // It may be a learner, or not a member at all: the cluster says which.
            let membership = membership::sync(run, &format!("after node {new} joined")).await;
            if membership.is_some_and(|membership| !membership.has(new)) {
                run.cluster.kill(new);
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    run.refresh_targets();
}

/// Writes `value` to the probe key through `node` until it is acknowledged (or `patience` ends).
async fn probe_write(run: &Run, node: u64, value: u64, patience: Duration) -> bool {
    let Some(http) = run.cluster.http(node) else { return false };
    let start = Instant::now();
    while start.elapsed() < patience {
        let input = Input::Put { key: PROBE_KEY, value };
        let record =
            workload::perform(&run.history, NEMESIS_CLIENT, http, input, None, workload::OPERATION_TIMEOUT).await;
        if matches!(record.ended, Ended::Ok { .. }) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The stale-lease probe (see [`Fault::LeasePause`]).
async fn lease_pause(run: &mut Run, step: &Step) {
    let Some((old, old_term)) = run.cluster.leader().await else { return };
    let base = 900_000_000_000 + run.faults.len() as u64 * 2;
    let (old_value, new_value) = (base, base + 1);
    if !probe_write(run, old, old_value, Duration::from_secs(5)).await {
        return;
    }
    // Recorded here, so that the unavailability it causes counts from the pause.
    record(run, step, format!("lease-pause probe at node {old} (term {old_term})"));
    run.cluster.pause(old);
    // Hold back what the others send it, so that when it runs again nothing but the time that
    // passed can tell it that its lease is over (a new leader's heartbeat would depose it).
    for &other in run.cluster.members.iter().filter(|other| **other != old) {
        run.cluster.proxy.set(other, old, blocked());
    }
    // The others elect a leader of a later term and commit a new value.
    let start = Instant::now();
    let new = loop {
        match run.cluster.leader().await {
            Some((id, term)) if id != old && term > old_term => break Some(id),
            _ if start.elapsed() > RECOVERY_TIMEOUT => break None,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let Some(new) = new else { return };
    if !probe_write(run, new, new_value, Duration::from_secs(10)).await {
        return;
    }
    // Queue a lease read at the paused node, then let it run again.
    let Some(old_http) = run.cluster.http(old) else { return };
    let history = run.history.clone();
    let read = tokio::spawn(async move {
        let input = Input::Get { key: PROBE_KEY };
        workload::perform(&history, NEMESIS_CLIENT, old_http, input, Some(Consistency::Lease), PROBE_READ_TIMEOUT).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    run.cluster.resume(old);
    let Ok(read) = read.await else { return };
    run.lease_probes.0 += 1;
    if let Ended::Ok { output: Output::Value(value), .. } = read.ended
        && value != Some(new_value)
    {
        run.lease_probes.1 += 1;
        run.anomalies.push(format!(
            "{STALE_LEASE_READ}: node {old}, paused as leader of term {old_term}, answered {value:?} after node {new} \
             committed {new_value}"
        ));
    }
    tokio::time::sleep(step.hold).await;
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A move is a shard whose table replicas differ from its group's recorded members: the
    /// source is the member left out of the replicas, the target the replica not yet a member.
    #[test]
    fn a_move_under_way_names_its_source_and_target() {
        let table = json!({ "version": 9, "shards": [
            { "shard": 0, "replicas": [1, 2, 3], "members": [1, 2, 3] },
            { "shard": 1, "replicas": [2, 3, 4], "members": [1, 2, 3] },
            { "shard": 2, "replicas": [1, 2], "members": [1, 2, 3] },
        ] });
        assert_eq!(moves(&table), vec![(1, Some(1), Some(4)), (2, Some(3), None)]);
        let settled = json!({ "version": 9, "shards": [{ "shard": 0, "replicas": [1, 2], "members": [1, 2] }] });
        assert!(moves(&settled).is_empty());
        assert!(moves(&json!(null)).is_empty());
    }
}
