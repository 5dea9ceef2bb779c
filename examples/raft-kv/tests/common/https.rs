//! An HTTPS client for the tests: hyper's one-connection client over a TLS stream (tokio-rustls,
//! trusting the CA given), with an optional bearer token; one request per connection.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONNECTION, HOST, LOCATION, WWW_AUTHENTICATE};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The largest answer read.
pub const ANSWER_BYTES_MAX: usize = 4 * 1024 * 1024;
/// How long one exchange may take.
pub const TIMEOUT: Duration = Duration::from_secs(40);

/// A client: the CA it trusts and the token it sends.
#[derive(Clone)]
pub struct Https {
    connector: TlsConnector,
    token: Option<String>,
}

/// One answer, redirects not followed.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The `Location` header.
    pub location: Option<String>,
    /// The `WWW-Authenticate` header.
    pub challenge: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Https {
    /// A client that trusts the CA certificate in `ca` and sends no token.
    pub fn new(ca: &Path) -> Https {
        let config = raft_kv::tls::client_config(ca).expect("a client TLS configuration");
        Https { connector: TlsConnector::from(Arc::clone(&config)), token: None }
    }

    /// The same client, sending the token in file `path`.
    pub fn with_token_file(&self, path: &Path) -> Https {
        let token = std::fs::read_to_string(path).expect("a token file").trim().to_owned();
        self.with_token(&token)
    }

    /// The same client, sending `token`.
    pub fn with_token(&self, token: &str) -> Https {
        Https { connector: self.connector.clone(), token: Some(token.to_owned()) }
    }

    /// Sends `method path` to `node` over HTTPS (its certificate checked for 127.0.0.1), without
    /// following redirects. An error says why no answer came (the handshake, the connection).
    pub fn call(&self, method: &str, node: SocketAddr, path: &str, body: &[u8]) -> Result<Reply, String> {
        self.call_within(TIMEOUT, method, node, path, body)
    }

    /// [`Https::call`] with a deadline of `timeout` for the whole exchange.
    pub fn call_within(
        &self,
        timeout: Duration,
        method: &str,
        node: SocketAddr,
        path: &str,
        body: &[u8],
    ) -> Result<Reply, String> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        runtime.block_on(async {
            tokio::time::timeout(timeout, self.exchange(method, node, path, body))
                .await
                .unwrap_or_else(|_| Err("timed out".to_owned()))
        })
    }

    async fn exchange(&self, method: &str, node: SocketAddr, path: &str, body: &[u8]) -> Result<Reply, String> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, node.to_string())
            .header(CONNECTION, "close");
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Full::new(Bytes::copy_from_slice(body))).map_err(|e| e.to_string())?;
        let stream = TcpStream::connect(node).await.map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::from(node.ip());
        let stream = self.connector.connect(name, stream).await.map_err(|e| format!("TLS handshake: {e}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let header = |name| response.headers().get(name).and_then(|v: &hyper::header::HeaderValue| v.to_str().ok());
        let status = response.status().as_u16();
        let location = header(LOCATION).map(str::to_owned);
        let challenge = header(WWW_AUTHENTICATE).map(str::to_owned);
        let body = Limited::new(response.into_body(), ANSWER_BYTES_MAX).collect().await.map_err(|e| e.to_string())?;
        Ok(Reply { status, location, challenge, body: body.to_bytes().to_vec() })
    }
}
