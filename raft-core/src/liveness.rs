//! Node-level liveness for quiet groups: one small, pure policy that a driver hosting many groups
//! runs once per node (not per group), and that the simulator runs too.
//!
//! Quiet groups ([`crate::Options::quiesce`]) send no heartbeats, so a follower of a quiet
//! leader cannot tell from its group that the leader's node died. The node can: it pings each
//! peer node once per ping interval (one message per pair of nodes, whatever the number of
//! groups they share), notes every sign of life from each peer, and reports a peer as down when
//! it was silent for the timeout, when its connection was lost, or when it came back as a new
//! incarnation (it restarted, so whatever its groups had promised or were doing is gone). The
//! driver then calls [`crate::Raft::peer_down`] on each of its groups; the groups decide
//! whether the peer matters to them.
//!
//! A report is a hint for liveness only, never a promise: a group acts on it by starting its
//! timers, and its safety never rests on it (a live peer reported down costs at most an
//! election; a dead peer not yet reported costs time).
//!
//! Time is the driver's clock in ticks (the one it hands to its cores with
//! [`crate::Raft::advance_clock`]); nothing here reads a clock or draws a random number.
//!
//! ```
//! use raft_core::NodeId;
//! use raft_core::liveness::PeerLiveness;
//!
//! // Node 1 pings nodes 2 and 3 every tick and calls a peer down after 10 silent ticks.
//! let mut liveness = PeerLiveness::new([NodeId(2), NodeId(3)], 0, 10, 1);
//! assert_eq!(liveness.pings_due(0), vec![NodeId(2), NodeId(3)]);
//! let mut down = Vec::new();
//! for now in 1..=10 {
//!     liveness.heard_from(NodeId(2), now); // node 2 answers, node 3 is silent
//!     liveness.pings_due(now);
//!     down.extend(liveness.check(now)); // at every tick of the driver's ticker
//! }
//! assert_eq!(down, vec![NodeId(3)]); // call peer_down(3) on every group
//! assert_eq!(liveness.check(11), vec![]); // reported once
//! ```

use std::collections::BTreeMap;

use crate::types::NodeId;

/// What the policy knows of one peer node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Peer {
    /// When it was last heard from (or when it was added: a grace of one timeout).
    heard_at: u64,
    /// When it was last pinged.
    pinged_at: Option<u64>,
    /// The incarnation its pings carried last.
    incarnation: Option<u64>,
    /// It was reported down and not heard from since.
    down: bool,
}

/// The node-level liveness policy: see the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerLiveness {
    timeout_ticks: u64,
    ping_interval_ticks: u64,
    peers: BTreeMap<NodeId, Peer>,
    /// When [`PeerLiveness::check`] last ran.
    checked_at: Option<u64>,
}

impl PeerLiveness {
    /// Watches `peers` from `now_ticks` on, each given one timeout of grace. A peer is down
    /// after `timeout_ticks` of silence (an election timeout is the natural choice: a follower
    /// of a dead quiet leader then campaigns within about two); each peer is pinged every
    /// `ping_interval_ticks` (the heartbeat interval). Both are at least 1.
    pub fn new(
        peers: impl IntoIterator<Item = NodeId>,
        now_ticks: u64,
        timeout_ticks: u64,
        ping_interval_ticks: u64,
    ) -> Self {
        let mut liveness = PeerLiveness {
            timeout_ticks: timeout_ticks.max(1),
            ping_interval_ticks: ping_interval_ticks.max(1),
            peers: BTreeMap::new(),
            checked_at: None,
        };
        for peer in peers {
            liveness.add_peer(peer, now_ticks);
        }
        liveness
    }

    /// Starts watching `peer` (if not yet watched), with one timeout of grace from `now_ticks`.
    pub fn add_peer(&mut self, peer: NodeId, now_ticks: u64) {
        self.peers.entry(peer).or_insert(Peer { heard_at: now_ticks, pinged_at: None, incarnation: None, down: false });
    }

    /// Stops watching `peer`.
    pub fn remove_peer(&mut self, peer: NodeId) {
        self.peers.remove(&peer);
    }

    /// The peers watched, in id order.
    pub fn peers(&self) -> Vec<NodeId> {
        self.peers.keys().copied().collect()
    }

    /// Any sign of life from `peer` at `now_ticks`: a ping, an answer, a frame of any group. A
    /// peer that was down is up again (nothing to report: its groups' own messages do the rest).
    pub fn heard_from(&mut self, peer: NodeId, now_ticks: u64) {
        if let Some(state) = self.peers.get_mut(&peer) {
            state.heard_at = state.heard_at.max(now_ticks);
            state.down = false;
        }
    }

    /// A ping from `peer`, which carries the sender's incarnation (a number the node draws
    /// afresh at every start). Counts as [`PeerLiveness::heard_from`]; returns true when the
    /// incarnation differs from the one its earlier pings carried: the peer restarted, and its
    /// groups must be told it was down ([`crate::Raft::peer_down`]) even if no timeout passed.
    pub fn ping_received(&mut self, peer: NodeId, incarnation: u64, now_ticks: u64) -> bool {
        let Some(state) = self.peers.get_mut(&peer) else { return false };
        let restarted = state.incarnation.is_some_and(|known| known != incarnation);
        state.incarnation = Some(incarnation);
        self.heard_from(peer, now_ticks);
        restarted
    }

    /// The connection to `peer` was lost (for a driver that learns it from its transport).
    /// Returns true when the peer was up: report it down now. It is up again once heard from.
    pub fn connection_lost(&mut self, peer: NodeId) -> bool {
        let Some(state) = self.peers.get_mut(&peer) else { return false };
        let newly = !state.down;
        state.down = true;
        newly
    }

    /// The peers to ping now: those not pinged within the last ping interval. Each is counted
    /// as pinged at `now_ticks`.
    #[must_use]
    pub fn pings_due(&mut self, now_ticks: u64) -> Vec<NodeId> {
        let interval = self.ping_interval_ticks;
        let mut due = Vec::new();
        for (&peer, state) in &mut self.peers {
            if state.pinged_at.is_none_or(|at| now_ticks.saturating_sub(at) >= interval) {
                state.pinged_at = Some(now_ticks);
                due.push(peer);
            }
        }
        due
    }

    /// The peers newly considered down at `now_ticks`: silent for the timeout, and not reported
    /// since they were last heard from. Each silence is reported once.
    pub fn expired(&mut self, now_ticks: u64) -> Vec<NodeId> {
        let timeout = self.timeout_ticks;
        let mut expired = Vec::new();
        for (&peer, state) in &mut self.peers {
            if !state.down && now_ticks.saturating_sub(state.heard_at) >= timeout {
                state.down = true;
                expired.push(peer);
            }
        }
        expired
    }

    /// What a driver calls at every tick of its ticker: [`PeerLiveness::expired`], unless the
    /// previous check is more than half a timeout old. Then the driver itself was stalled (its
    /// process stopped, or its ticker starved), and the peers' frames that arrived meanwhile
    /// may not have been read yet: their silence is the driver's, not theirs. Every peer not
    /// down gets a fresh timeout instead, and nothing is reported (a peer that really died is
    /// reported one timeout later).
    #[must_use]
    pub fn check(&mut self, now_ticks: u64) -> Vec<NodeId> {
        let late = self.checked_at.is_some_and(|at| now_ticks.saturating_sub(at) > self.timeout_ticks / 2);
        self.checked_at = Some(self.checked_at.map_or(now_ticks, |at| at.max(now_ticks)));
        if late {
            for state in self.peers.values_mut().filter(|state| !state.down) {
                state.heard_at = state.heard_at.max(now_ticks);
            }
            return Vec::new();
        }
        self.expired(now_ticks)
    }

    /// Whether `peer` is considered down (reported and not heard from since).
    pub fn is_down(&self, peer: NodeId) -> bool {
        self.peers.get(&peer).is_some_and(|state| state.down)
    }

    /// The peers considered down, in id order. A driver tells a core that is quiet at the end
    /// of an iteration of each of them again ([`crate::Raft::peer_down`]): a report that reached
    /// a group before the message that quieted it (a leader's last `Quiesce`, stepped late) is
    /// not lost, and a group never sleeps on a peer the node knows is gone.
    #[must_use]
    pub fn down_peers(&self) -> Vec<NodeId> {
        self.peers.iter().filter(|(_, state)| state.down).map(|(&peer, _)| peer).collect()
    }

    /// Ticks from `now_ticks` until [`PeerLiveness::pings_due`] or [`PeerLiveness::expired`]
    /// may return something (0: now; `u64::MAX`: never, with no peers).
    pub fn ticks_until_due(&self, now_ticks: u64) -> u64 {
        let mut due = u64::MAX;
        for state in self.peers.values() {
            let ping = state.pinged_at.map_or(0, |at| (at + self.ping_interval_ticks).saturating_sub(now_ticks));
            due = due.min(ping);
            if !state.down {
                due = due.min((state.heard_at + self.timeout_ticks).saturating_sub(now_ticks));
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[u64]) -> Vec<NodeId> {
        list.iter().copied().map(NodeId).collect()
    }

    #[test]
    fn one_ping_per_peer_per_interval() {
        let mut liveness = PeerLiveness::new(ids(&[2, 3]), 0, 10, 3);
        assert_eq!(liveness.pings_due(0), ids(&[2, 3]));
        assert_eq!(liveness.pings_due(1), ids(&[]));
        assert_eq!(liveness.pings_due(2), ids(&[]));
        assert_eq!(liveness.ticks_until_due(2), 1);
        assert_eq!(liveness.pings_due(3), ids(&[2, 3]));
        liveness.add_peer(NodeId(4), 4);
        assert_eq!(liveness.pings_due(4), ids(&[4]), "a new peer is pinged at once");
    }

    #[test]
    fn silence_for_the_timeout_is_reported_once_and_hearing_again_rearms_it() {
        let mut liveness = PeerLiveness::new(ids(&[2]), 0, 10, 1);
        assert_eq!(liveness.expired(9), ids(&[]), "one timeout of grace");
        assert_eq!(liveness.ticks_until_due(9), 0, "a ping is due");
        liveness.heard_from(NodeId(2), 5);
        assert_eq!(liveness.expired(14), ids(&[]));
        assert_eq!(liveness.expired(15), ids(&[2]));
        assert!(liveness.is_down(NodeId(2)));
        assert_eq!(liveness.expired(40), ids(&[]), "reported once");
        liveness.heard_from(NodeId(2), 41);
        assert!(!liveness.is_down(NodeId(2)));
        assert_eq!(liveness.expired(50), ids(&[]));
        assert_eq!(liveness.expired(51), ids(&[2]), "a new silence is reported again");
    }

    #[test]
    fn a_new_incarnation_is_a_restart_and_a_lost_connection_a_down_peer() {
        let mut liveness = PeerLiveness::new(ids(&[2]), 0, 10, 1);
        assert!(!liveness.ping_received(NodeId(2), 7, 1), "the first incarnation seen");
        assert!(!liveness.ping_received(NodeId(2), 7, 2));
        assert!(liveness.ping_received(NodeId(2), 8, 3), "another incarnation: it restarted");
        assert!(!liveness.ping_received(NodeId(9), 1, 3), "a stranger is not watched");
        assert!(liveness.connection_lost(NodeId(2)));
        assert!(!liveness.connection_lost(NodeId(2)), "reported once");
        assert_eq!(liveness.expired(100), ids(&[]), "already down");
        liveness.heard_from(NodeId(2), 101);
        assert!(!liveness.is_down(NodeId(2)));
        liveness.remove_peer(NodeId(2));
        assert_eq!(liveness.peers(), ids(&[]));
        assert_eq!(liveness.ticks_until_due(200), u64::MAX);
    }

    /// A check more than half a timeout after the last one (the driver was stalled) reports no
    /// one and gives the peers not down a fresh timeout; checks on time report as `expired`.
    #[test]
    fn a_late_check_rearms_instead_of_reporting() {
        let mut liveness = PeerLiveness::new(ids(&[2, 3]), 0, 10, 1);
        for now in 0..=10 {
            liveness.heard_from(NodeId(2), now);
            assert_eq!(liveness.check(now), ids(&if now == 10 { vec![3] } else { vec![] }));
        }
        // Stalled from 10 to 30: node 2's frames of the stall are not read yet.
        assert_eq!(liveness.check(30), ids(&[]), "nobody is reported after a stall");
        assert!(liveness.is_down(NodeId(3)), "a peer already down stays down (not reported again)");
        for now in 31..40 {
            assert_eq!(liveness.check(now), ids(&[]));
        }
        assert_eq!(liveness.check(40), ids(&[2]), "a fresh timeout from the stall's end");
    }

    /// Against a naive model: a peer is reported exactly at the first check at least a timeout
    /// after it was last heard from, once per silence.
    #[test]
    fn reports_match_a_naive_model() {
        let mut state = 0x1234_5678_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..200 {
            let timeout = 1 + next() % 8;
            let mut liveness = PeerLiveness::new(ids(&[2]), 0, timeout, 1);
            let (mut heard, mut reported) = (0u64, false);
            for now in 0..100 {
                if next() % 4 == 0 {
                    liveness.heard_from(NodeId(2), now);
                    (heard, reported) = (now, false);
                }
                let expect = !reported && now - heard >= timeout;
                reported |= expect;
                assert_eq!(liveness.expired(now) == ids(&[2]), expect, "at {now}, heard {heard}, timeout {timeout}");
            }
        }
    }
}
