//! A fault-injecting TCP proxy between the nodes' Raft ports. Each node gets one listening port
//! here, which every other node is given as that node's Raft address (`--peers`,
//! `--raft-advertise`). The dialer of a raft-net connection introduces itself with a `Hello`
//! frame, so the proxy reads that frame to learn which directed link (from, to) a connection is,
//! then applies the link's rule: pass, cut (a partition in that direction), delay every chunk
//! (a slow link), or cut the connection at random (a flaky link). After the handshake only the
//! dialer writes, so a rule for (from, to) governs what `from` sends `to`; the handshake's
//! answer always passes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use raft_net::Frame;
use raft_net::frame::{HELLO_FRAME_BYTES_MAX, encode_frame, read_frame};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// The most bytes one read of a forwarded stream takes.
pub const CHUNK_BYTES_MAX: usize = 64 * 1024;
/// The most chunks a delayed link holds in flight (then reading the dialer waits: back-pressure).
pub const DELAYED_CHUNKS_MAX: usize = 4096;
/// How long the proxy waits for a dialer's handshake or for the node it forwards to.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What happens to the bytes one node sends another.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkRule {
    /// Cut: connections are closed and new ones refused.
    pub blocked: bool,
    /// Every chunk is held this long before it is passed on.
    pub delay: Duration,
    /// Each chunk cuts the connection with this probability, in thousandths.
    pub cut_per_mille: u32,
}

/// The proxy: the rules of every directed link and where each node really listens.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

struct Shared {
    rules: Mutex<BTreeMap<(u64, u64), LinkRule>>,
    /// Bumped whenever a rule changes, so open connections look at theirs again.
    generation: watch::Sender<u64>,
    rng: Mutex<ChaCha8Rng>,
    /// The accepting tasks, stopped by [`Proxy::stop`].
    listeners: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner) // Sections leave the data whole.
}

impl Proxy {
    /// A proxy with every link passing; `seed` drives the flaky links' coin.
    pub fn new(seed: u64) -> Proxy {
        let (generation, _) = watch::channel(0);
        let shared = Shared {
            rules: Mutex::new(BTreeMap::new()),
            generation,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed ^ 0x5052_4f58_5921)),
            listeners: Mutex::new(Vec::new()),
        };
        Proxy { shared: Arc::new(shared) }
    }

    /// Starts forwarding to node `to` listening at `target`; returns the proxy's address for it.
    pub async fn listen(&self, to: u64, target: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let shared = Arc::clone(&self.shared);
        let accepting = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(forward(Arc::clone(&shared), stream, to, target));
            }
        });
        lock(&self.shared.listeners).push(accepting);
        Ok(address)
    }

    /// Stops accepting (connections in progress end when their nodes stop).
    pub fn stop(&self) {
        for accepting in lock(&self.shared.listeners).drain(..) {
            accepting.abort();
        }
    }

    /// Sets the rule of the link from `from` to `to`.
    pub fn set(&self, from: u64, to: u64, rule: LinkRule) {
        let mut rules = lock(&self.shared.rules);
        if rule == LinkRule::default() {
            rules.remove(&(from, to));
        } else {
            rules.insert((from, to), rule);
        }
        drop(rules);
        self.shared.generation.send_modify(|generation| *generation += 1);
    }

    /// Every link passes again.
    pub fn heal(&self) {
        lock(&self.shared.rules).clear();
        self.shared.generation.send_modify(|generation| *generation += 1);
    }
}

impl Shared {
    fn rule(&self, from: u64, to: u64) -> LinkRule {
        lock(&self.rules).get(&(from, to)).copied().unwrap_or_default()
    }

    fn coin(&self, per_mille: u32) -> bool {
        per_mille > 0 && (lock(&self.rng).next_u32() % 1000) < per_mille
    }
}

/// One connection to node `to`: the handshake, then both directions until either side closes or
/// the rule cuts it.
async fn forward(shared: Arc<Shared>, mut dialer: TcpStream, to: u64, target: SocketAddr) {
    let mut payload = Vec::new();
    let hello =
        tokio::time::timeout(CONNECT_TIMEOUT, read_frame::<Frame, _>(&mut dialer, HELLO_FRAME_BYTES_MAX, &mut payload));
    let Ok(Ok(Frame::Hello(hello))) = hello.await else { return }; // Not a raft-net dialer.
    let from = hello.from.0;
    if shared.rule(from, to).blocked {
        return;
    }
    let Ok(Ok(mut upstream)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await else { return };
    let _ = upstream.set_nodelay(true);
    let _ = dialer.set_nodelay(true);
    let Ok(hello_bytes) = encode_frame(&Frame::Hello(hello), HELLO_FRAME_BYTES_MAX) else { return };
    if upstream.write_all(&hello_bytes).await.is_err() {
        return;
    }
    let (dialer_read, mut dialer_write) = dialer.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    // The answers (the handshake's) pass as they are.
    let back = tokio::spawn(async move {
        let mut upstream_read = upstream_read;
        let _ = tokio::io::copy(&mut upstream_read, &mut dialer_write).await;
    });
    forward_ruled(&shared, dialer_read, upstream_write, from, to).await;
    back.abort();
}

/// Copies what `from` sends to `to` under the link's rule, until a side closes or the rule cuts.
async fn forward_ruled(
    shared: &Shared,
    mut reader: tokio::net::tcp::OwnedReadHalf,
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    from: u64,
    to: u64,
) {
    let (chunks, mut delayed) = mpsc::channel::<(Instant, Vec<u8>)>(DELAYED_CHUNKS_MAX);
    let writing = tokio::spawn(async move {
        while let Some((due, chunk)) = delayed.recv().await {
            tokio::time::sleep_until(due).await;
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut changes = shared.generation.subscribe();
    let mut buffer = vec![0; CHUNK_BYTES_MAX];
    loop {
        tokio::select! {
            read = reader.read(&mut buffer) => {
                let Ok(count @ 1..) = read else { break };
                let rule = shared.rule(from, to);
                if rule.blocked || shared.coin(rule.cut_per_mille) {
                    break;
                }
                if chunks.send((Instant::now() + rule.delay, buffer[..count].to_vec())).await.is_err() {
                    break;
                }
            }
            changed = changes.changed() => {
                if changed.is_err() || shared.rule(from, to).blocked {
                    break;
                }
            }
        }
    }
    writing.abort();
}

#[cfg(test)]
mod tests {
    use raft_core::NodeId;
    use raft_net::Hello;

    use super::*;

    /// Dials node `to` through `proxy_address` as node `from`, sends the handshake and `bytes`.
    async fn dial(proxy_address: SocketAddr, from: u64, to: u64, bytes: &[u8]) -> TcpStream {
        let mut stream = TcpStream::connect(proxy_address).await.expect("connect");
        let hello = Frame::Hello(Hello::new(1, NodeId(from), NodeId(to)));
        stream.write_all(&encode_frame(&hello, HELLO_FRAME_BYTES_MAX).expect("encode")).await.expect("write");
        stream.write_all(bytes).await.expect("write");
        stream
    }

    /// What the next connection to `listener` receives after the handshake, within a second.
    async fn received(listener: &TcpListener) -> Option<Vec<u8>> {
        let accepted = tokio::time::timeout(Duration::from_secs(1), listener.accept()).await;
        let Ok(Ok((mut stream, _))) = accepted else { return None };
        let mut payload = Vec::new();
        read_frame::<Frame, _>(&mut stream, HELLO_FRAME_BYTES_MAX, &mut payload).await.ok()?;
        let mut bytes = vec![0; 5];
        tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut bytes)).await.ok()?.ok()?;
        Some(bytes)
    }

    /// A link passes, is cut in one direction only, and passes again once healed.
    #[tokio::test]
    async fn a_one_way_cut_stops_one_direction_only() {
        let proxy = Proxy::new(1);
        let node_2 = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let node_1 = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let to_2 = proxy.listen(2, node_2.local_addr().expect("address")).await.expect("listen");
        let to_1 = proxy.listen(1, node_1.local_addr().expect("address")).await.expect("listen");

        let _open = dial(to_2, 1, 2, b"hello").await;
        assert_eq!(received(&node_2).await.as_deref(), Some(&b"hello"[..]));

        proxy.set(1, 2, LinkRule { blocked: true, ..LinkRule::default() });
        let _cut = dial(to_2, 1, 2, b"cut!!").await;
        assert_eq!(received(&node_2).await, None, "1 -> 2 is cut");
        let _other_way = dial(to_1, 2, 1, b"other").await;
        assert_eq!(received(&node_1).await.as_deref(), Some(&b"other"[..]), "2 -> 1 passes");

        proxy.heal();
        let _healed = dial(to_2, 1, 2, b"again").await;
        assert_eq!(received(&node_2).await.as_deref(), Some(&b"again"[..]));
    }
}
