//! The blocking HTTP client of the CLI's client subcommands, the cluster launcher and `--join`:
//! `ureq` does the HTTP (and HTTPS through rustls, trusting only the cluster's CA); this module
//! follows 307/308 redirects itself, because `ureq` refuses to send a body again on a redirect
//! while a write sent to a follower must reach the leader with the same method, body and bearer
//! token.
//!
//! A server that answers before it has read the whole body (a 413 for a body far over its limit)
//! and closes makes the write fail, and that answer is lost: `ureq` writes the whole body before
//! it reads. The CLI's values come from a command-line argument (at most 128 KiB on Linux), far
//! below the server's limits; the tests and the nemesis use hyper, which reads such an answer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use raft_kv::{certs, tls};
use thiserror::Error;
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

/// How many redirects one request follows at most.
pub const REDIRECTS_MAX: usize = 5;
/// How long one request (connecting, sending, reading the answer) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);
/// The largest answer body read (a value is at most 1 MiB; the JSON around it adds little).
pub const ANSWER_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Why a request failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The request could not be made, or no whole answer came (the URL, the connection, the
    /// timeout, a malformed answer: `ureq` says which).
    #[error(transparent)]
    Http(#[from] ureq::Error),
    /// A redirect without a usable `Location`.
    #[error("a {0} redirect without a Location header")]
    NoLocation(u16),
    /// More than [`REDIRECTS_MAX`] redirects.
    #[error("too many redirects")]
    TooManyRedirects,
}

/// An answer.
#[derive(Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The `Location` header, if any.
    pub location: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How a client reaches the nodes: over HTTPS trusting `ca` (plain HTTP without one), sending
/// `token` as a bearer token (none without one).
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// The CA certificate (PEM) that the nodes' certificates are signed by.
    pub ca: Option<PathBuf>,
    /// The file holding the bearer token.
    pub token_file: Option<PathBuf>,
}

impl ClientOptions {
    /// The options of a directory written by `raft-kv certs`: its CA and its admin token.
    pub fn of_dir(dir: &Path) -> ClientOptions {
        ClientOptions { ca: Some(dir.join(certs::CA_CERT)), token_file: Some(dir.join(certs::ADMIN_TOKEN)) }
    }

    /// The URL scheme these options speak: `https` with a CA, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.ca.is_some() { "https" } else { "http" }
    }
}

/// A client: one `ureq` agent (its TLS configuration loaded once) and the bearer token.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    authorization: Option<String>,
    scheme: &'static str,
}

impl Client {
    /// The URL scheme this client speaks (`https` with a CA, else `http`).
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    /// A client with `options`: reads the CA and the token now, so that a missing file is told
    /// before any request.
    pub fn new(options: &ClientOptions) -> anyhow::Result<Client> {
        Client::with_timeout(options, REQUEST_TIMEOUT)
    }

    /// [`Client::new`] whose requests each take at most `timeout` (the calls between the nodes
    /// of a sharded cluster, which must not hold a controller round or a scan for long).
    pub fn with_timeout(options: &ClientOptions, timeout: Duration) -> anyhow::Result<Client> {
        let mut config =
            ureq::Agent::config_builder().max_redirects(0).http_status_as_error(false).timeout_global(Some(timeout));
        if let Some(ca) = &options.ca {
            let roots: Vec<Certificate<'static>> =
                tls::load_certs(ca)?.into_iter().map(|cert| Certificate::from_der(cert.as_ref()).to_owned()).collect();
            let tls = TlsConfig::builder()
                .provider(TlsProvider::Rustls)
                .root_certs(RootCerts::Specific(Arc::new(roots)))
                .unversioned_rustls_crypto_provider(tls::provider())
                .build();
            config = config.tls_config(tls);
        }
        let authorization = match &options.token_file {
            Some(path) => {
                let token = certs::read_token(path).with_context(|| format!("reading the token {}", path.display()))?;
                Some(format!("Bearer {token}"))
            }
            None => None,
        };
        Ok(Client { agent: config.build().into(), authorization, scheme: options.scheme() })
    }

    /// `SCHEME://address/path` in this client's scheme (`path` starts with `/`).
    pub fn url(&self, address: impl std::fmt::Display, path: &str) -> String {
        format!("{}://{address}{path}", self.scheme)
    }

    /// Sends `method url` with `body`, following 307 and 308 redirects with the same method,
    /// body and token.
    pub fn request(&self, method: &str, url: &str, body: &[u8]) -> Result<HttpResponse, ClientError> {
        let mut url = url.to_owned();
        for _ in 0..=REDIRECTS_MAX {
            let response = self.request_once(method, &url, body)?;
            match response.status {
                307 | 308 => url = response.location.ok_or(ClientError::NoLocation(response.status))?,
                _ => return Ok(response),
            }
        }
        Err(ClientError::TooManyRedirects)
    }

    /// Sends one request, without following redirects. Any status is an answer (not an error).
    pub fn request_once(&self, method: &str, url: &str, body: &[u8]) -> Result<HttpResponse, ClientError> {
        let mut builder = ureq::http::Request::builder().method(method).uri(url);
        if let Some(authorization) = &self.authorization {
            builder = builder.header(ureq::http::header::AUTHORIZATION, authorization);
        }
        let response = if body.is_empty() {
            self.agent.run(builder.body(()).map_err(ureq::Error::from)?)?
        } else {
            self.agent.run(builder.body(body.to_vec()).map_err(ureq::Error::from)?)?
        };
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get(ureq::http::header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let body = response.into_body().into_with_config().limit(ANSWER_BYTES_MAX).read_to_vec()?;
        Ok(HttpResponse { status, location, body })
    }
}
