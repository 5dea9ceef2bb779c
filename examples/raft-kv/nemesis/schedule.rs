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
}

impl fmt::Display for Target {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Leader => write!(formatter, "the leader"),
            Target::Follower(k) => write!(formatter, "follower #{k}"),
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
            Fault::Kill(_) => "kill follower",
            Fault::Pause(Target::Leader) => "pause leader",
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
}
