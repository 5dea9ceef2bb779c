//! The nemesis's HTTP client: one request per connection, following redirects, with one deadline
//! for the whole exchange, and a failure that says whether the request was sent at all. The TCP
//! connection is ours (so that a failed connect, which sent nothing, stays apart from a lost
//! answer); hyper's one-connection client speaks HTTP/1.1 over it.

use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{CONNECTION, HOST, LOCATION};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How many redirects one request follows.
pub const REDIRECTS_MAX: usize = 3;
/// The largest answer read (a larger one counts as lost).
pub const ANSWER_BYTES_MAX: usize = 4 * 1024 * 1024;

/// An answer.
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why no answer came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallError {
    /// No connection could be made: the request was not sent.
    NotSent,
    /// The request was sent (or may have been), but no whole answer came in time.
    Lost,
}

/// Sends `method path` to `node`, following redirects, all within `timeout`.
pub async fn call(
    method: &str,
    node: SocketAddr,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Answer, CallError> {
    let deadline = Instant::now() + timeout;
    let (mut node, mut path) = (node, path.to_owned());
    for _ in 0..=REDIRECTS_MAX {
        let answer = once(method, node, &path, body, deadline).await?;
        match (answer.status, answer.location.as_deref().and_then(split_location)) {
            (307 | 308, Some((next, next_path))) => (node, path) = (next, next_path),
            _ => return Ok(Answer { status: answer.status, body: answer.body }),
        }
    }
    // Only redirects: nobody took the request.
    Err(CallError::NotSent)
}

/// Sends `method path` to `node` alone, within `timeout`: a redirect is returned as it is (a
/// sharded node that holds no replica of a key answers 307, which says just that).
pub async fn call_here(
    method: &str,
    node: SocketAddr,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Answer, CallError> {
    let reply = once(method, node, path, body, Instant::now() + timeout).await?;
    Ok(Answer { status: reply.status, body: reply.body })
}

/// `http://HOST:PORT/PATH` as an address and a path.
fn split_location(location: &str) -> Option<(SocketAddr, String)> {
    let rest = location.strip_prefix("http://")?;
    let (host, path) = rest.find('/').map_or((rest, "/"), |at| (&rest[..at], &rest[at..]));
    Some((host.parse().ok()?, path.to_owned()))
}

/// One exchange's answer, before redirects are followed.
struct Reply {
    status: u16,
    location: Option<String>,
    body: Vec<u8>,
}

async fn once(method: &str, node: SocketAddr, path: &str, body: &[u8], deadline: Instant) -> Result<Reply, CallError> {
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, node.to_string())
        .header(CONNECTION, "close")
        .body(Full::new(Bytes::copy_from_slice(body)));
    // A request that cannot be written (a bad method or path) is never sent.
    let Ok(request) = request else { return Err(CallError::NotSent) };
    let connected = tokio::time::timeout_at(deadline, TcpStream::connect(node)).await;
    let Ok(Ok(stream)) = connected else { return Err(CallError::NotSent) };
    let exchange = async {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
        let send = async {
            let response = sender.send_request(request).await.ok()?;
            let status = response.status().as_u16();
            let location = response.headers().get(LOCATION).and_then(|value| value.to_str().ok()).map(str::to_owned);
            let body = Limited::new(response.into_body(), ANSWER_BYTES_MAX).collect().await.ok()?;
            Some(Reply { status, location, body: body.to_bytes().to_vec() })
        };
        // The connection does the I/O while the request is sent and the answer read; once it ends,
        // the answer is whole (or never will be).
        let (mut connection, mut send) = (pin!(connection), pin!(send));
        tokio::select! {
            reply = &mut send => reply,
            _ = &mut connection => send.await,
        }
    };
    // Dropping the exchange at the deadline closes the connection.
    match tokio::time::timeout_at(deadline, exchange).await {
        Ok(Some(reply)) => Ok(reply),
        _ => Err(CallError::Lost),
    }
}
