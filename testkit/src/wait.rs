//! Waiting without timing: every wait polls a condition every [`POLL`] for up to a patience
//! ([`PATIENCE`] unless the caller gives another), and nothing asserts how long anything took.

use std::time::Duration;

use raft_core::{NodeId, Role, Term};
use raft_net::{NodeHandle, NodeStatus, StateMachine};
use thiserror::Error;
use tokio::time::{Instant, sleep};

use crate::node::{Machine, Member};

/// How long a wait lasts for something that should happen (generous: slow machines, busy CI).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The pause between polls.
pub const POLL: Duration = Duration::from_millis(10);

/// Polls `condition` until it holds; panics after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !condition().await {
        assert!(Instant::now() < deadline, "gave up waiting until {what}");
        sleep(POLL).await;
    }
}

/// A leader every running node knows of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settled {
    /// The leader.
    pub id: NodeId,
    /// Its term.
    pub term: Term,
    /// Its position among the nodes asked.
    pub position: usize,
}

/// No leader settled within the patience.
#[derive(Clone, Debug, Error)]
#[error("no leader settled within {patience:?}: {statuses:?}")]
pub struct Unsettled {
    /// How long it waited.
    pub patience: Duration,
    /// What the running nodes reported last.
    pub statuses: Vec<NodeStatus>,
}

/// Waits until one of `nodes` leads and every other running one knows it (a node that stopped is
/// left out); fails after `patience`.
pub async fn settled<SM: StateMachine>(nodes: &[&NodeHandle<SM>], patience: Duration) -> Result<Settled, Unsettled> {
    let deadline = Instant::now() + patience;
    loop {
        let mut statuses = Vec::new();
        for (position, node) in nodes.iter().enumerate() {
            if let Ok(status) = node.status().await {
                statuses.push((position, status));
            }
        }
        let leader = statuses.iter().find(|(_, status)| status.role == Role::Leader);
        if let Some(&(position, ref status)) = leader
            && statuses.iter().all(|(_, other)| other.leader == Some(status.id))
        {
            return Ok(Settled { id: status.id, term: status.term, position });
        }
        if Instant::now() >= deadline {
            return Err(Unsettled { patience, statuses: statuses.into_iter().map(|(_, status)| status).collect() });
        }
        sleep(POLL).await;
    }
}

/// The leader once one of `members` leads and every other running member knows it; panics
/// after [`PATIENCE`].
pub async fn settled_leader<SM: Machine>(members: &[&Member<SM>]) -> NodeId {
    let handles: Vec<&NodeHandle<SM>> = members.iter().map(|member| &member.handle).collect();
    match settled(&handles, PATIENCE).await {
        Ok(settled) => settled.id,
        Err(unsettled) => panic!("{unsettled}"),
    }
}
