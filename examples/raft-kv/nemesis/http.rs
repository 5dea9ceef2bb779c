//! The nemesis's HTTP client: one request per connection, following redirects, with one deadline
//! for the whole exchange, and a failure that says whether the request was sent at all.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::client;

/// How many redirects one request follows.
pub const REDIRECTS_MAX: usize = 3;
/// The largest answer read.
pub const ANSWER_BYTES_MAX: u64 = 4 * 1024 * 1024;

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

/// `http://HOST:PORT/PATH` as an address and a path.
fn split_location(location: &str) -> Option<(SocketAddr, String)> {
    let rest = location.strip_prefix("http://")?;
    let (host, path) = rest.find('/').map_or((rest, "/"), |at| (&rest[..at], &rest[at..]));
    Some((host.parse().ok()?, path.to_owned()))
}

async fn once(
    method: &str,
    node: SocketAddr,
    path: &str,
    body: &[u8],
    deadline: Instant,
) -> Result<client::HttpResponse, CallError> {
    let connected = tokio::time::timeout_at(deadline, TcpStream::connect(node)).await;
    let Ok(Ok(mut stream)) = connected else { return Err(CallError::NotSent) };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {node}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let exchange = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut raw = Vec::new();
        (&mut stream).take(ANSWER_BYTES_MAX).read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    match tokio::time::timeout_at(deadline, exchange).await {
        Ok(Ok(raw)) => client::parse(&raw).map_err(|_| CallError::Lost),
        _ => Err(CallError::Lost),
    }
}
