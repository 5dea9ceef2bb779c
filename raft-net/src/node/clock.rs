//! The driver's time policy: how the real time a node's monotonic clock measured reaches the
//! core. It is pure (the caller reads the clock), so the fast simulator drives its nodes with
//! this very policy, the one we ship.
//!
//! raft-core keeps a *clock*, which judges every promise about time (a leader's lease, a
//! follower's stickiness to its leader), apart from its *timers* (elections, heartbeats,
//! check-quorum), which only decide when to act. The policy:
//!
//! 1. The clock never lags: before the core is handed anything that may have arrived after the
//!    last reading (at the start of every iteration, and again right before a lease read is
//!    judged), every whole tick of elapsed real time goes to [`raft_core::Raft::advance_clock`].
//!    A stall or a pause (SIGSTOP, a frozen VM, a slow fsync) therefore counts in full, and a
//!    lease that ran out meanwhile is seen to have run out before any read queued during the
//!    pause is judged.
//! 2. The timer ticks owed that fire nothing (fewer than [`raft_core::Raft::ticks_until_due`]
//!    answered) run before the iteration's inputs, where they belong in time; from the one that
//!    is due on, they run after the inputs, at most [`TICKS_PER_ITERATION_MAX`] of them; the
//!    rest are dropped ([`DriverClock::take_timer_ticks_due`]). After a stall the node thus
//!    reads the leader's messages waiting in its queue before it campaigns, and no burst of
//!    elections or heartbeats follows a pause. Slow timers only delay failure detection.
//!
//! The one assumption left is the drift bound: that nodes' clocks run at rates close enough
//! that `clock_drift_max_ticks` covers their difference over an election timeout (see
//! [`raft_core::Options::clock_drift_max_ticks`]). A machine whose monotonic clock stops while
//! the machine is suspended (Linux's `CLOCK_MONOTONIC` during system suspend) breaks it: lease
//! reads are for machines that are not suspended while they serve.

use std::time::Duration;

use raft_core::{Raft, Storage};

use super::config::TICKS_PER_ITERATION_MAX;

/// The most timer ticks that fire nothing that [`DriverClock::take_timer_ticks_due`] runs
/// before an iteration's inputs. Only a group whose timers are stopped (a learner, a group at
/// the largest term) can owe more, and for it the count makes no difference to when it acts.
pub const DUE_TICKS_BEFORE_MAX: u64 = 1_000;

/// The state of the time policy for one node incarnation; see the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DriverClock {
    /// Whole ticks of real time given to the core's clock so far.
    clock_ticks: u64,
    /// Ticks given to the clock and not yet run through the timers.
    timer_ticks_owed: u64,
    /// Timer ticks dropped after stalls, over the incarnation (for status and tests).
    timer_ticks_dropped: u64,
}

impl DriverClock {
    /// A policy for a node whose clock starts now, at zero ticks.
    pub fn new() -> Self {
        DriverClock::default()
    }

    /// The whole ticks in `elapsed` real time at `tick_interval` per tick (rounded down: a
    /// tick is only counted once it has fully passed).
    pub fn ticks_in(elapsed: Duration, tick_interval: Duration) -> u64 {
        let interval = tick_interval.as_nanos().max(1);
        u64::try_from(elapsed.as_nanos() / interval).unwrap_or(u64::MAX)
    }

    /// Brings the core's clock up to `elapsed_ticks`, the whole ticks of real time since the
    /// node started (a reading of the monotonic clock). Call it before handing the core
    /// anything that arrived after the previous reading; a reading that went backwards (it never
    /// should) changes nothing.
    pub fn catch_up<S: Storage>(&mut self, raft: &mut Raft<S>, elapsed_ticks: u64) {
        let Some(new) = elapsed_ticks.checked_sub(self.clock_ticks).filter(|&new| new > 0) else { return };
        raft.advance_clock(new);
        self.clock_ticks = elapsed_ticks;
        self.timer_ticks_owed = self.timer_ticks_owed.saturating_add(new);
    }

    /// The timer ticks to run now ([`raft_core::Raft::tick_timers`], each followed by its
    /// output), as `(before, after)` the iteration's inputs. `due` is what
    /// [`raft_core::Raft::ticks_until_due`] answered before this iteration's inputs.
    ///
    /// A group is woken only when its timers are due (or it has input), so it owes the ticks of
    /// every idle stretch, not only of stalls. The first
    /// `due - 1` of them fire nothing (that is what `due` promises), so they are run *before* the
    /// inputs, where they belong in time (a heartbeat that arrives at the end of an idle
    /// stretch then restarts an election timer that already counted the stretch, not one that
    /// counts it again after the heartbeat), at most [`DUE_TICKS_BEFORE_MAX`] of them. The rest,
    /// from the one that is due on, are run after the inputs, at most
    /// [`TICKS_PER_ITERATION_MAX`] of them. Whatever is left
    /// is dropped: timers that lag only delay an action (the clock, which judges every promise,
    /// never lags).
    pub fn take_timer_ticks_due(&mut self, due: u64) -> (u64, u64) {
        let owed = std::mem::take(&mut self.timer_ticks_owed);
        let idle = owed.min(due.saturating_sub(1));
        let before = idle.min(DUE_TICKS_BEFORE_MAX);
        let after = (owed - idle).min(TICKS_PER_ITERATION_MAX);
        self.timer_ticks_dropped = self.timer_ticks_dropped.saturating_add(owed - before - after);
        (before, after)
    }

    /// The whole ticks given to the core's clock so far.
    pub fn clock_ticks(&self) -> u64 {
        self.clock_ticks
    }

    /// The timer ticks dropped after stalls so far.
    pub fn timer_ticks_dropped(&self) -> u64 {
        self.timer_ticks_dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_core::{Membership, NodeId, Options};
    use raft_storage::MemStorage;

    fn node() -> Raft<MemStorage> {
        let options = Options::builder().election_ticks(10).rng_seed(1).build().expect("valid");
        Raft::new(NodeId(1), options, MemStorage::new(Membership::new([NodeId(1), NodeId(2)]))).expect("memory")
    }

    #[test]
    fn whole_ticks_only() {
        let interval = Duration::from_millis(100);
        assert_eq!(DriverClock::ticks_in(Duration::from_millis(99), interval), 0);
        assert_eq!(DriverClock::ticks_in(Duration::from_millis(100), interval), 1);
        assert_eq!(DriverClock::ticks_in(Duration::from_millis(1_999), interval), 19);
        assert_eq!(DriverClock::ticks_in(Duration::from_secs(1), Duration::ZERO), 1_000_000_000);
    }

    /// After a long stall the clock gets every tick at once, the timers at most
    /// TICKS_PER_ITERATION_MAX, and the rest are dropped, not owed for later.
    #[test]
    fn a_stall_reaches_the_clock_in_full_and_the_timers_in_part() {
        let mut raft = node();
        let mut clock = DriverClock::new();
        // A timer due at the next tick (a leader's heartbeat, say): every tick owed is late.
        clock.catch_up(&mut raft, 3);
        assert_eq!(clock.take_timer_ticks_due(1), (0, 3));
        clock.catch_up(&mut raft, 50);
        clock.catch_up(&mut raft, 49); // Backwards: ignored.
        assert_eq!(clock.clock_ticks(), 50);
        assert_eq!(clock.take_timer_ticks_due(1), (0, TICKS_PER_ITERATION_MAX));
        assert_eq!(clock.timer_ticks_dropped(), 47 - TICKS_PER_ITERATION_MAX);
        assert_eq!(clock.take_timer_ticks_due(1), (0, 0), "dropped, not carried over");
        clock.catch_up(&mut raft, 51);
        assert_eq!(clock.take_timer_ticks_due(1), (0, 1));
    }

    /// A group woken when due runs its idle ticks before its inputs, the due one and a few
    /// late ones after, and drops the rest.
    #[test]
    fn a_group_woken_when_due_runs_its_idle_ticks_first() {
        let mut raft = node();
        let mut clock = DriverClock::new();
        clock.catch_up(&mut raft, 7);
        assert_eq!(clock.take_timer_ticks_due(7), (6, 1), "woken on time");
        clock.catch_up(&mut raft, 10);
        assert_eq!(clock.take_timer_ticks_due(10), (3, 0), "woken early, by a message");
        clock.catch_up(&mut raft, 40);
        assert_eq!(clock.take_timer_ticks_due(5), (4, TICKS_PER_ITERATION_MAX), "woken late");
        assert_eq!(clock.timer_ticks_dropped(), 30 - 4 - TICKS_PER_ITERATION_MAX);
        clock.catch_up(&mut raft, 5_000);
        assert_eq!(clock.take_timer_ticks_due(u64::MAX), (DUE_TICKS_BEFORE_MAX, 0), "timers stopped");
        assert_eq!(clock.take_timer_ticks_due(3), (0, 0), "nothing owed");
    }
}
