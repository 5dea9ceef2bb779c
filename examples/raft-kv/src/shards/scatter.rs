//! Scatter-gather: one query to every shard at once, answers merged in key order.
//!
//! Each shard answers on its own (a linearizable read at its leader, for instance), so the
//! merged answer is linearizable shard by shard but is **not** one snapshot across shards: a
//! write to one shard that completed after a write to another can be seen without the earlier
//! one. A shard that fails or does not answer by the deadline fails the whole query, naming it:
//! never a silent partial answer.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use thiserror::Error;
use tokio::task::JoinSet;

use super::ShardId;

/// One shard's answer: up to `limit` entries in key order, and whether it has more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<K, V> {
    /// Entries in strictly increasing key order.
    pub entries: Vec<(K, V)>,
    /// Whether the shard holds more entries after the last one.
    pub more: bool,
}

/// Why a scatter-gather query failed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ScatterError {
    /// These shards failed (with their reason) or did not answer in time; the others' answers
    /// are thrown away.
    #[error("shards did not answer: {}", describe(.0))]
    Shards(BTreeMap<ShardId, String>),
}

fn describe(failed: &BTreeMap<ShardId, String>) -> String {
    failed.iter().map(|(shard, reason)| format!("shard {shard}: {reason}")).collect::<Vec<_>>().join("; ")
}

/// Asks every shard in `shards` at once with `fetch` and merges the pages: the first `limit`
/// entries in key order, and whether more exist. Fails if any shard fails or has not answered
/// within `deadline`.
pub async fn gather<K, V, F, Fut, E>(
    shards: impl IntoIterator<Item = ShardId>,
    limit: usize,
    deadline: Duration,
    fetch: F,
) -> Result<Page<K, V>, ScatterError>
where
    K: Ord + Send + 'static,
    V: Send + 'static,
    E: std::fmt::Display,
    F: Fn(ShardId) -> Fut,
    Fut: Future<Output = Result<Page<K, V>, E>> + Send + 'static,
{
    let mut asked = JoinSet::new();
    let mut waiting = BTreeMap::new();
    for shard in shards {
        let answer = fetch(shard);
        waiting.insert(shard, "no answer before the deadline".to_owned());
        asked.spawn(async move { (shard, answer.await.map_err(|error| error.to_string())) });
    }
    let mut pages = Vec::new();
    let collect = async {
        while let Some(joined) = asked.join_next().await {
            let Ok((shard, answer)) = joined else { continue }; // A panicked fetch stays "waiting".
            match answer {
                Ok(page) => {
                    waiting.remove(&shard);
                    pages.push(page);
                }
                Err(reason) => {
                    waiting.insert(shard, reason);
                }
            }
        }
    };
    let _ = tokio::time::timeout(deadline, collect).await;
    if !waiting.is_empty() {
        return Err(ScatterError::Shards(waiting));
    }
    Ok(merge(pages, limit))
}

/// Merges pages whose keys are disjoint and each in increasing order: the first `limit` entries
/// overall, and whether more exist (an entry left over, or a shard that had more).
pub fn merge<K: Ord, V>(pages: Vec<Page<K, V>>, limit: usize) -> Page<K, V> {
    let mut more = pages.iter().any(|page| page.more);
    let mut all: Vec<(K, V)> = pages.into_iter().flat_map(|page| page.entries).collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    if all.len() > limit {
        all.truncate(limit);
        more = true;
    }
    Page { entries: all, more }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(keys: &[&str], more: bool) -> Page<String, u32> {
        Page { entries: keys.iter().map(|key| (key.to_string(), key.len() as u32)).collect(), more }
    }

    #[test]
    fn pages_merge_in_key_order_up_to_the_limit() {
        let merged = merge(vec![page(&["b", "d"], false), page(&["a", "c", "e"], false)], 4);
        assert_eq!(merged, page(&["a", "b", "c", "d"], true));
        let all = merge(vec![page(&["b"], false), page(&["a"], false)], 10);
        assert_eq!(all, page(&["a", "b"], false));
        let shard_had_more = merge(vec![page(&["a"], true), page(&[], false)], 10);
        assert!(shard_had_more.more);
    }

    #[tokio::test]
    async fn every_shard_is_asked_and_the_answers_merge() {
        let shards = (0..4).map(ShardId);
        let answer = gather(shards, 3, Duration::from_secs(5), |shard| async move {
            Ok::<_, String>(page(&[&format!("k{}", shard.0), &format!("k{}", shard.0 + 4)], false))
        })
        .await;
        assert_eq!(answer, Ok(page(&["k0", "k1", "k2"], true)));
    }

    // Paused time: the deadline passes when every task waits, however slow the machine.
    #[tokio::test(start_paused = true)]
    async fn a_failed_or_silent_shard_fails_the_query_by_name() {
        let answer = gather((0..3).map(ShardId), 10, Duration::from_millis(200), |shard| async move {
            match shard.0 {
                0 => Ok(page(&["a"], false)),
                1 => Err("not the leader".to_owned()),
                _ => {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok(page(&["z"], false))
                }
            }
        })
        .await;
        let failed = BTreeMap::from([
            (ShardId(1), "not the leader".to_owned()),
            (ShardId(2), "no answer before the deadline".to_owned()),
        ]);
        assert_eq!(answer, Err(ScatterError::Shards(failed)));
    }
}
