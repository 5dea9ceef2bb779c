//! The load generator's HTTP client: one keep-alive HTTP/1.1 connection per node per client
//! (hyper's one-connection client over a TCP stream we connect), and a key's request sent to its
//! shard's leader, following 307s and teaching the [`LeaderCache`] what they say.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HOST, LOCATION};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::route::LeaderCache;

/// The largest answer read.
pub const ANSWER_BYTES_MAX: usize = 8 * 1024 * 1024;
/// How long one exchange may take (the service answers 503 after 10 s).
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(15);
/// How many sends one operation makes (redirects and retries together) before it fails.
pub const ATTEMPTS_MAX: u32 = 8;
/// The pause before retrying after an error answer or a failed connection.
pub const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// An answer.
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The `Location` header, if any.
    pub location: Option<String>,
    /// The body.
    pub body: Bytes,
}

/// One client's connections, one per node, kept alive between requests.
#[derive(Default)]
pub struct Connections {
    open: BTreeMap<SocketAddr, SendRequest<Full<Bytes>>>,
}

impl Connections {
    /// Sends `method path` with `body` to `node` over its kept-alive connection (opened if need
    /// be); a connection that fails is closed.
    pub async fn send(&mut self, method: &str, node: SocketAddr, path: &str, body: Bytes) -> Result<Answer, String> {
        let exchange = self.exchange(method, node, path, body);
        match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => {
                self.open.remove(&node);
                Err(error)
            }
            Err(_) => {
                self.open.remove(&node);
                Err(format!("no answer from {node} within {EXCHANGE_TIMEOUT:?}"))
            }
        }
    }

    async fn exchange(&mut self, method: &str, node: SocketAddr, path: &str, body: Bytes) -> Result<Answer, String> {
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, node.to_string())
            .body(Full::new(body))
            .map_err(|error| error.to_string())?;
        let sender = match self.open.get_mut(&node) {
            Some(sender) if !sender.is_closed() => sender,
            _ => {
                let sender = connect(node).await?;
                self.open.entry(node).insert_entry(sender).into_mut()
            }
        };
        sender.ready().await.map_err(|error| error.to_string())?;
        let response = sender.send_request(request).await.map_err(|error| error.to_string())?;
        let status = response.status().as_u16();
        let location = response.headers().get(LOCATION).and_then(|value| value.to_str().ok()).map(str::to_owned);
        let body = Limited::new(response.into_body(), ANSWER_BYTES_MAX).collect().await.map_err(|e| e.to_string())?;
        Ok(Answer { status, location, body: body.to_bytes() })
    }
}

/// A new HTTP/1.1 connection to `node`, its I/O driven by a task of its own.
async fn connect(node: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(node).await.map_err(|error| format!("connecting to {node}: {error}"))?;
    let _ = stream.set_nodelay(true); // Latency only; a failure changes no answer.
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|error| error.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await; // Ends when the connection closes, by either side.
    });
    Ok(sender)
}

/// How one operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Whether it succeeded (a 200; for a read, a 404 too: the key's shard answered).
    pub ok: bool,
    /// The redirects it followed.
    pub redirects: u32,
    /// The status of the last answer (`None`: the last send got no answer).
    pub last_status: Option<u16>,
}

/// Sends a request for `key` (`method path`) to its shard's leader as `cache` knows it, following
/// redirects (and learning from them), retrying elsewhere after a failure, at most
/// [`ATTEMPTS_MAX`] sends in all.
pub async fn keyed(
    connections: &mut Connections,
    cache: &Mutex<LeaderCache>,
    method: &str,
    key: &str,
    path: &str,
    body: &Bytes,
) -> Outcome {
    let lock = || cache.lock().unwrap_or_else(PoisonError::into_inner);
    let shard = lock().shard(key.as_bytes());
    let mut redirects = 0;
    let mut last_status = None;
    let mut next: Option<(SocketAddr, String)> = None;
    for _ in 0..ATTEMPTS_MAX {
        let (node, path) = match next.take() {
            Some(redirect) => redirect,
            None => match lock().target(shard) {
                Some(node) => (node, path.to_owned()),
                None => break,
            },
        };
        let answer = connections.send(method, node, &path, body.clone()).await;
        last_status = answer.as_ref().ok().map(|answer| answer.status);
        match answer {
            Ok(answer) if answer.status == 200 || (method == "GET" && answer.status == 404) => {
                lock().learn(shard, node);
                return Outcome { ok: true, redirects, last_status };
            }
            Ok(answer) if answer.status == 307 => {
                redirects += 1;
                next = answer.location.as_deref().and_then(|location| lock().redirected(shard, location));
                if next.is_none() {
                    lock().failed(shard, node);
                }
            }
            // A 503 (no leader yet, busy) or no answer: another node, after a pause.
            Ok(_) | Err(_) => {
                lock().failed(shard, node);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
    Outcome { ok: false, redirects, last_status }
}

/// A leader cache shared by a run's clients.
pub type SharedCache = Arc<Mutex<LeaderCache>>;

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::http::{StatusCode, Uri, header};
    use axum::response::IntoResponse;
    use axum::routing::any;

    /// A node on 127.0.0.1 that answers every request with `answer` (given the request's URI).
    async fn node(answer: fn(Uri, SocketAddr) -> axum::response::Response, to: SocketAddr) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let addr = listener.local_addr().expect("bound");
        let router = Router::new().fallback(any(move |uri: Uri| async move { answer(uri, to) }));
        tokio::spawn(async move { axum::serve(listener, router).await });
        addr
    }

    fn redirect(uri: Uri, to: SocketAddr) -> axum::response::Response {
        (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, format!("http://{to}{uri}"))]).into_response()
    }

    fn ok(_: Uri, _: SocketAddr) -> axum::response::Response {
        "ok".into_response()
    }

    fn unavailable(_: Uri, _: SocketAddr) -> axum::response::Response {
        StatusCode::SERVICE_UNAVAILABLE.into_response()
    }

    #[tokio::test]
    async fn a_redirect_is_followed_once_then_the_leader_is_asked_directly() {
        let leader = node(ok, SocketAddr::from(([127, 0, 0, 1], 9))).await;
        let follower = node(redirect, leader).await;
        let cache = Mutex::new(LeaderCache::new(4, vec![follower]));
        let mut connections = Connections::default();
        let body = Bytes::from_static(b"v");
        let first = keyed(&mut connections, &cache, "PUT", "k", "/kv/k", &body).await;
        assert_eq!(first, Outcome { ok: true, redirects: 1, last_status: Some(200) });
        let shard = cache.lock().expect("not poisoned").shard(b"k");
        assert_eq!(cache.lock().expect("not poisoned").target(shard), Some(leader));
        let second = keyed(&mut connections, &cache, "PUT", "k", "/kv/k", &body).await;
        assert_eq!(second, Outcome { ok: true, redirects: 0, last_status: Some(200) });
        // Both connections were kept open for the next request.
        assert_eq!(connections.open.len(), 2);
    }

    #[tokio::test]
    async fn a_node_without_a_leader_is_left_for_the_next_and_endless_failure_is_an_error() {
        let leader = node(ok, SocketAddr::from(([127, 0, 0, 1], 9))).await;
        let down = node(unavailable, leader).await;
        let cache = Mutex::new(LeaderCache::new(1, vec![down, leader]));
        let mut connections = Connections::default();
        let body = Bytes::new();
        let outcome = keyed(&mut connections, &cache, "GET", "k", "/kv/k", &body).await;
        assert_eq!(outcome, Outcome { ok: true, redirects: 0, last_status: Some(200) });
        let only_down = Mutex::new(LeaderCache::new(1, vec![down]));
        let outcome = keyed(&mut connections, &only_down, "GET", "k", "/kv/k", &body).await;
        assert_eq!(outcome, Outcome { ok: false, redirects: 0, last_status: Some(503) });
    }
}
