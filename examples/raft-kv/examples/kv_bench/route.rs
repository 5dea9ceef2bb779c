//! Where a key's request goes: the shard's leader as last learnt (from the nodes' status at the
//! start, then from every 307's `Location`), or, while none is known, a node taken in turn.

use std::net::SocketAddr;

use raft_kv::shards::{ShardId, shard_of};

/// `http://HOST:PORT/PATH` as an address and a path (`None` for anything else).
pub fn split_location(location: &str) -> Option<(SocketAddr, String)> {
    let rest = location.strip_prefix("http://")?;
    let (host, path) = rest.find('/').map_or((rest, "/"), |at| (&rest[..at], &rest[at..]));
    Some((host.parse().ok()?, path.to_owned()))
}

/// The leader of each shard as last learnt, shared by every client of a run.
#[derive(Clone, Debug)]
pub struct LeaderCache {
    shard_count: u32,
    leaders: Vec<Option<SocketAddr>>,
    nodes: Vec<SocketAddr>,
    /// Per shard, the node to try next while no leader is known (turns on every miss).
    turn: Vec<usize>,
}

impl LeaderCache {
    /// An empty cache for `shard_count` shards over `nodes` (their HTTP addresses).
    pub fn new(shard_count: u32, nodes: Vec<SocketAddr>) -> LeaderCache {
        let shards = shard_count.max(1) as usize;
        LeaderCache { shard_count: shard_count.max(1), leaders: vec![None; shards], nodes, turn: vec![0; shards] }
    }

    /// The shard of `key`.
    pub fn shard(&self, key: &[u8]) -> ShardId {
        shard_of(key, self.shard_count)
    }

    /// Where a request for `shard` goes first: its known leader, else the node whose turn it is.
    pub fn target(&self, shard: ShardId) -> Option<SocketAddr> {
        let index = shard.0 as usize;
        if let Some(Some(leader)) = self.leaders.get(index) {
            return Some(*leader);
        }
        let turn = self.turn.get(index).copied().unwrap_or(0);
        self.nodes.get(turn % self.nodes.len().max(1)).copied()
    }

    /// `node` leads `shard` (a status said so, or it answered a request for the shard).
    pub fn learn(&mut self, shard: ShardId, node: SocketAddr) {
        if let Some(slot) = self.leaders.get_mut(shard.0 as usize) {
            *slot = Some(node);
        }
    }

    /// A 307 for `shard` pointed at `location`: the node it names is taken as the shard's leader
    /// (a node without a replica points at a replica, which redirects again if it does not
    /// lead). Returns where to send the request next.
    pub fn redirected(&mut self, shard: ShardId, location: &str) -> Option<(SocketAddr, String)> {
        let (node, path) = split_location(location)?;
        self.learn(shard, node);
        Some((node, path))
    }

    /// `node` failed a request for `shard` (no connection, or no leader there): forget it as the
    /// leader, and try the next node in turn.
    pub fn failed(&mut self, shard: ShardId, node: SocketAddr) {
        let index = shard.0 as usize;
        if self.leaders.get(index).copied().flatten() == Some(node) {
            self.leaders[index] = None;
        }
        if let Some(turn) = self.turn.get_mut(index) {
            *turn = turn.wrapping_add(1);
        }
    }

    /// Adds a node (one that joined) to the nodes tried while no leader is known.
    pub fn add_node(&mut self, node: SocketAddr) {
        if !self.nodes.contains(&node) {
            self.nodes.push(node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn locations_split_into_a_node_and_a_path() {
        assert_eq!(
            split_location("http://127.0.0.1:8080/kv/a?consistency=linearizable"),
            Some((addr(8080), "/kv/a?consistency=linearizable".to_owned()))
        );
        assert_eq!(split_location("http://127.0.0.1:81"), Some((addr(81), "/".to_owned())));
        assert_eq!(split_location("https://127.0.0.1:81/kv/a"), None);
        assert_eq!(split_location("http://node-2/kv/a"), None);
        assert_eq!(split_location("/kv/a"), None);
    }

    #[test]
    fn a_redirect_teaches_the_leader_and_a_failure_forgets_it() {
        let nodes = vec![addr(1), addr(2), addr(3)];
        let mut cache = LeaderCache::new(8, nodes);
        let shard = cache.shard(b"some-key");
        assert_eq!(shard, shard_of(b"some-key", 8));
        // Nothing known: the first node, then the next one after each failure.
        assert_eq!(cache.target(shard), Some(addr(1)));
        cache.failed(shard, addr(1));
        assert_eq!(cache.target(shard), Some(addr(2)));
        // A 307 names the leader: every later request for the shard goes there.
        let next = cache.redirected(shard, "http://127.0.0.1:3/kv/some-key");
        assert_eq!(next, Some((addr(3), "/kv/some-key".to_owned())));
        assert_eq!(cache.target(shard), Some(addr(3)));
        // Another shard learnt nothing.
        let other = ShardId((shard.0 + 1) % 8);
        assert_eq!(cache.target(other), Some(addr(1)));
        // A failure of another node leaves the leader known; its own failure forgets it.
        cache.failed(shard, addr(1));
        assert_eq!(cache.target(shard), Some(addr(3)));
        cache.failed(shard, addr(3));
        assert_ne!(cache.target(shard), Some(addr(3)));
        // A malformed Location teaches nothing.
        assert_eq!(cache.redirected(shard, "ftp://x"), None);
        assert_ne!(cache.target(shard), Some(addr(3)));
        // A joined node is tried in turn too.
        cache.add_node(addr(4));
        cache.add_node(addr(4));
        let tried: Vec<_> = (0..4)
            .map(|_| {
                let node = cache.target(other).expect("a node");
                cache.failed(other, node);
                node
            })
            .collect();
        assert_eq!(tried, vec![addr(1), addr(2), addr(3), addr(4)]);
    }
}
