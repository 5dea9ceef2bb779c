//! The fault schedule, derived from the seed alone: which fault, against which node (named by
//! its role when the fault starts: the leader, or the k-th follower in id order), for how long,
//! and how long the cluster rests after healing. The same seed gives the same schedule; the
//! timing of real processes varies from run to run.

use std::fmt;
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// Which node a fault hits, resolved when it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The leader.
    Leader,
    /// The follower at this position (modulo their number) in id order.
    Follower(u32),
    /// In a sharded cluster, the source of a move under way (a node that a shard's group still
    /// counts but the routing table no longer names), read from `/cluster/shards` when the fault
    /// starts; follower #0 when no move is under way (the fault's log line says which).
    MoveSource,
    /// The destination of a move under way (its target in docs/sharding.md: a node the table
    /// names for a shard whose group does not count it yet), resolved like
    /// [`Target::MoveSource`]; follower #1 when there is none.
    MoveDestination,
}

impl fmt::Display for Target {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Leader => write!(formatter, "the leader"),
            Target::Follower(k) => write!(formatter, "follower #{k}"),
            Target::MoveSource => write!(formatter, "a move's source"),
            Target::MoveDestination => write!(formatter, "a move's destination"),
        }
    }
}

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9`, then a restart on the node's data once the fault ends.
    Kill(Target),
    /// SIGSTOP, then SIGCONT once the fault ends (longer than an election timeout).
    Pause(Target),
    /// The node is cut from every other node, both ways.
    Isolate(Target),
    /// What the node sends the others is cut; what they send it passes.
    CutOutbound(Target),
    /// What the others send the node is cut; what it sends passes.
    CutInbound(Target),
    /// The node's links both ways cut connections at random, per thousand chunks.
    Flaky(Target, u32),
    /// The node's links both ways hold every chunk this many milliseconds.
    Slow(Target, u32),
    /// The leader hands leadership to a follower.
    Transfer(u32),
    /// A follower is removed, restarted on its old data (it must say it was removed), and a new
    /// node joins in its place.
    Replace(u32),
    /// The stale-lease probe: SIGSTOP the leader beyond the election timeout (and cut what the
    /// others send it), let the others elect a leader and commit a new value, queue a lease read
    /// at the paused node, SIGCONT.
    LeasePause,
}

impl Fault {
    /// The kind's name, for the summary.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Kill(Target::Leader) => "kill leader",
            Fault::Kill(Target::MoveSource) => "kill move source",
            Fault::Kill(Target::MoveDestination) => "kill move destination",
            Fault::Kill(_) => "kill follower",
            Fault::Pause(Target::Leader) => "pause leader",
            Fault::Pause(Target::MoveSource) => "pause move source",
            Fault::Pause(Target::MoveDestination) => "pause move destination",
            Fault::Pause(_) => "pause follower",
            Fault::Isolate(_) => "partition (symmetric)",
            Fault::CutOutbound(_) | Fault::CutInbound(_) => "partition (one-way)",
            Fault::Flaky(..) => "flaky link",
            Fault::Slow(..) => "slow link",
            Fault::Transfer(_) => "leadership transfer",
            Fault::Replace(_) => "replace member",
            Fault::LeasePause => "lease-pause probe",
        }
    }
}

impl Fault {
    /// The node the fault hits, if it hits one.
    pub fn target(&self) -> Option<Target> {
        match *self {
            Fault::Kill(target)
            | Fault::Pause(target)
            | Fault::Isolate(target)
            | Fault::CutOutbound(target)
            | Fault::CutInbound(target)
            | Fault::Flaky(target, _)
            | Fault::Slow(target, _) => Some(target),
            Fault::Transfer(_) | Fault::Replace(_) | Fault::LeasePause => None,
        }
    }

    /// The same fault aimed at `target`.
    fn aimed_at(self, target: Target) -> Fault {
        match self {
            Fault::Kill(_) => Fault::Kill(target),
            Fault::Pause(_) => Fault::Pause(target),
            Fault::Isolate(_) => Fault::Isolate(target),
            Fault::CutOutbound(_) => Fault::CutOutbound(target),
            Fault::CutInbound(_) => Fault::CutInbound(target),
            Fault::Flaky(_, per_mille) => Fault::Flaky(target, per_mille),
            Fault::Slow(_, ms) => Fault::Slow(target, ms),
            other => other,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(target) => write!(formatter, "kill -9 {target}"),
            Fault::Pause(target) => write!(formatter, "SIGSTOP {target}"),
            Fault::Isolate(target) => write!(formatter, "isolate {target}"),
            Fault::CutOutbound(target) => write!(formatter, "cut what {target} sends"),
            Fault::CutInbound(target) => write!(formatter, "cut what {target} receives"),
            Fault::Flaky(target, per_mille) => write!(formatter, "flaky links of {target} ({per_mille}‰ cuts)"),
            Fault::Slow(target, ms) => write!(formatter, "slow links of {target} (+{ms} ms)"),
            Fault::Transfer(k) => write!(formatter, "transfer leadership to follower #{k}"),
            Fault::Replace(k) => write!(formatter, "replace follower #{k} with a new node"),
            Fault::LeasePause => write!(formatter, "lease-pause probe"),
        }
    }
}

/// One step: a fault, how long it lasts, how long the cluster rests afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// The fault.
    pub fault: Fault,
    /// How long it lasts before healing.
    pub hold: Duration,
    /// How long the cluster runs undisturbed after healing.
    pub rest: Duration,
}

impl fmt::Display for Step {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} for {} ms, rest {} ms", self.fault, self.hold.as_millis(), self.rest.as_millis())
    }
}

/// Which faults a schedule holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Every kind, the lease-pause probe among them.
    Mixed,
    /// Only the lease-pause probe, again and again.
    LeasePause,
}

/// The first `count` steps of the schedule of `seed`. With [`Scenario::Mixed`], the first step
/// is the lease-pause probe (so that every run, however short, makes it), and `replace` allows
/// member replacements.
pub fn schedule(seed: u64, scenario: Scenario, count: usize, replace: bool) -> Vec<Step> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut below = |n: u32| rng.next_u32() % n;
    let mut steps = Vec::with_capacity(count);
    for index in 0..count {
        let target = if below(3) == 0 { Target::Leader } else { Target::Follower(below(4)) };
        let fault = match (scenario, index, below(if replace { 11 } else { 10 })) {
            (Scenario::LeasePause, ..) | (Scenario::Mixed, 0, _) => Fault::LeasePause,
            (_, _, 0) => Fault::Kill(target),
            (_, _, 1) => Fault::Pause(target),
            (_, _, 2) => Fault::Isolate(target),
            (_, _, 3) => Fault::CutOutbound(target),
            (_, _, 4) => Fault::CutInbound(target),
            (_, _, 5) => Fault::Flaky(target, 20 + below(200)),
            (_, _, 6) => Fault::Slow(target, 50 + below(300)),
            (_, _, 7) => Fault::Transfer(below(4)),
            (_, _, 8) => Fault::LeasePause,
            (_, _, 9) => Fault::Kill(Target::Leader),
            _ => Fault::Replace(below(4)),
        };
        let hold = Duration::from_millis(600 + u64::from(below(1800)));
        let rest = Duration::from_millis(800 + u64::from(below(1500)));
        steps.push(Step { fault, hold, rest });
    }
    steps
}

/// Whether `fault` exists in a sharded cluster: kills, pauses, partitions, flaky and slow links
/// do; leadership transfers, member replacement and the lease-pause probe do not (see
/// `Run::inject_faults`).
pub fn exists_sharded(fault: Fault) -> bool {
    !matches!(fault, Fault::Transfer(_) | Fault::Replace(_) | Fault::LeasePause)
}

/// The first steps of the schedule of `seed` for a sharded cluster (drawn from the first `count`
/// steps of [`schedule`]): the faults a sharded cluster has ([`exists_sharded`]), and the
/// faults at follower #0 and #1 aimed instead at a move under way, its source and its target
/// ("the leader" stays the meta group's, whose controller drives the moves). Derived from the
/// seed alone, as [`schedule`].
pub fn sharded(seed: u64, count: usize) -> Vec<Step> {
    let mut steps = schedule(seed, Scenario::Mixed, count, false);
    steps.retain(|step| exists_sharded(step.fault));
    for step in &mut steps {
        let aimed = match step.fault.target() {
            Some(Target::Follower(0)) => Target::MoveSource,
            Some(Target::Follower(1)) => Target::MoveDestination,
            _ => continue,
        };
        step.fault = step.fault.aimed_at(aimed);
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        assert_eq!(schedule(7, Scenario::Mixed, 50, true), schedule(7, Scenario::Mixed, 50, true));
        assert_ne!(schedule(7, Scenario::Mixed, 50, true), schedule(8, Scenario::Mixed, 50, true));
        assert_eq!(schedule(7, Scenario::Mixed, 5, true)[0].fault, Fault::LeasePause);
    }

    /// A sharded run keeps the process and link faults and leaves out what it has no endpoint for.
    #[test]
    fn a_sharded_schedule_keeps_process_and_link_faults_only() {
        let steps = schedule(3, Scenario::Mixed, 200, false);
        let kept: Vec<Fault> = steps.iter().map(|step| step.fault).filter(|fault| exists_sharded(*fault)).collect();
        assert!(kept.iter().any(|fault| matches!(fault, Fault::Kill(_))));
        assert!(kept.iter().any(|fault| matches!(fault, Fault::Pause(_))));
        assert!(kept.iter().any(|fault| matches!(fault, Fault::Isolate(_))));
        assert!(!kept.iter().any(|fault| matches!(fault, Fault::Transfer(_) | Fault::Replace(_) | Fault::LeasePause)));
        assert!(!exists_sharded(Fault::LeasePause));
    }

    /// A sharded schedule aims kills, pauses and link faults at moves' sources and targets, as
    /// well as at the meta leader and at other nodes, the same way for the same seed.
    #[test]
    fn a_sharded_schedule_aims_faults_at_moves() {
        let steps = sharded(1, 200);
        assert_eq!(steps, sharded(1, 200));
        let targets: Vec<Target> = steps.iter().filter_map(|step| step.fault.target()).collect();
        assert_eq!(targets.len(), steps.len(), "every sharded fault hits a node");
        for wanted in [Target::MoveSource, Target::MoveDestination, Target::Leader] {
            assert!(targets.contains(&wanted), "{wanted} in {targets:?}");
        }
        assert!(targets.iter().any(|target| matches!(target, Target::Follower(_))));
        for kind in ["kill move source", "kill move destination", "pause move source", "pause move destination"] {
            assert!(steps.iter().any(|step| step.fault.kind() == kind), "{kind}");
        }
        assert!(!targets.contains(&Target::Follower(0)) && !targets.contains(&Target::Follower(1)));
    }
}
