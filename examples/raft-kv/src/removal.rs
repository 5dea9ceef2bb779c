//! Whether this node has been removed from the cluster. A node learns it when the membership in
//! its log no longer holds it: a voter that is removed receives the joint membership that starts
//! its removal (where it votes only in the outgoing half) and, after a restart, finds that same
//! membership in its log. A node that never was a member (one that is joining) is not removed:
//! a marker file in the data directory, written the first time the node sees itself in the
//! membership, tells the two apart across restarts.
//!
//! A removed node cannot learn more: the leader no longer replicates to it. So it says so (a 410
//! with reason `removed`, `"removed": true` in its status) instead of answering "no leader;
//! retry" forever. A learner removed while it was down never hears of it (its removal needs no
//! joint phase): it keeps saying "no leader".

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use raft_core::{Membership, NodeId, Role};
use raft_net::NodeHandle;

use crate::kv::Kv;

/// How often the watcher looks at the membership.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// Whether this node has been removed; shared by the watcher and the HTTP handlers.
#[derive(Clone, Debug, Default)]
pub struct Removal {
    removed: Arc<AtomicBool>,
}

impl Removal {
    /// The name of the marker file in the data directory: present once the node has been a
    /// member.
    pub const MEMBER_FILE_NAME: &str = "raft-kv-member";

    /// Whether the node has been removed (as of the watcher's last look).
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    /// Starts watching node `id`'s membership (until the node stops); `data` holds the marker.
    pub fn watch(handle: NodeHandle<Kv>, id: NodeId, data: &Path) -> Removal {
        let removal = Removal::default();
        let marker = data.join(Self::MEMBER_FILE_NAME);
        tokio::spawn(watch(handle, id, marker, removal.clone()));
        removal
    }
}

/// Whether `membership` leaves out node `id` (as a voter and a learner); a leader still in the
/// outgoing half of a joint membership is finishing the change that removes it and still leads.
pub fn leaves_out(membership: &Membership, id: NodeId, role: Role) -> bool {
    // A voter being demoted waits in `learners_next`: it stays, as a learner.
    let in_target = membership.leave_joint().is_member(id);
    let finishing = role == Role::Leader && membership.voters_outgoing.contains(&id);
    !membership.voters_incoming.is_empty() && !in_target && !finishing
}

async fn watch(handle: NodeHandle<Kv>, id: NodeId, marker: PathBuf, removal: Removal) {
    let mut was_member = marker.exists();
    loop {
        let Ok(status) = handle.status().await else { return }; // The node stopped.
        let membership = &status.membership;
        if !was_member && (membership.members().contains(&id)) {
            if let Err(error) = std::fs::write(&marker, b"") {
                tracing::warn!(node = id.0, "writing {}: {error}", marker.display());
            }
            was_member = true;
        }
        let removed = was_member && leaves_out(membership, id, status.role);
        if removed != removal.removed.swap(removed, Ordering::Relaxed) {
            let state = if removed { "removed from the cluster" } else { "a member again" };
            tracing::warn!(node = id.0, "{state}");
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn membership(voters: &[u64], outgoing: &[u64], learners: &[u64]) -> Membership {
        let set = |ids: &[u64]| ids.iter().map(|id| NodeId(*id)).collect();
        Membership {
            voters_incoming: set(voters),
            voters_outgoing: set(outgoing),
            learners: set(learners),
            ..Default::default()
        }
    }

    #[test]
    fn a_node_is_left_out_when_the_target_membership_lacks_it() {
        let me = NodeId(3);
        assert!(!leaves_out(&membership(&[1, 2, 3], &[], &[]), me, Role::Follower));
        assert!(!leaves_out(&membership(&[1, 2], &[], &[3]), me, Role::Follower), "a learner");
        let demoting = Membership { learners_next: [me].into(), ..membership(&[1, 2], &[1, 2, 3], &[]) };
        assert!(!leaves_out(&demoting, me, Role::Follower), "joint, becoming a learner");
        assert!(leaves_out(&membership(&[1, 2], &[1, 2, 3], &[]), me, Role::Follower), "joint, leaving");
        assert!(!leaves_out(&membership(&[1, 2], &[1, 2, 3], &[]), me, Role::Leader), "finishing");
        assert!(leaves_out(&membership(&[1, 2], &[], &[]), me, Role::Follower));
        assert!(!leaves_out(&Membership::default(), me, Role::Follower), "joining: no membership yet");
    }
}
