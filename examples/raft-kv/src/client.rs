//! The blocking HTTP client of the CLI's client subcommands, the cluster launcher and `--join`:
//! `ureq` (plain `http://`, no TLS) does the HTTP; this module follows 307/308 redirects itself,
//! because `ureq` refuses to send a body again on a redirect while a write sent to a follower
//! must reach the leader with the same method and body.
//!
//! A server that answers before it has read the whole body (a 413 for a body far over its limit)
//! and closes makes the write fail, and that answer is lost: `ureq` writes the whole body before
//! it reads. The CLI's values come from a command-line argument (at most 128 KiB on Linux), far
//! below the server's limits; the tests and the nemesis use hyper, which reads such an answer.

use std::time::Duration;

use thiserror::Error;

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

/// Sends `method url` with `body`, following 307 and 308 redirects with the same method and
/// body.
pub fn request(method: &str, url: &str, body: &[u8]) -> Result<HttpResponse, ClientError> {
    let mut url = url.to_owned();
    for _ in 0..=REDIRECTS_MAX {
        let response = request_once(method, &url, body)?;
        match response.status {
            307 | 308 => url = response.location.ok_or(ClientError::NoLocation(response.status))?,
            _ => return Ok(response),
        }
    }
    Err(ClientError::TooManyRedirects)
}

/// Sends one request, without following redirects. Any status is an answer (not an error).
pub fn request_once(method: &str, url: &str, body: &[u8]) -> Result<HttpResponse, ClientError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_global(Some(REQUEST_TIMEOUT))
        .build()
        .into();
    let builder = ureq::http::Request::builder().method(method).uri(url);
    let response = if body.is_empty() {
        agent.run(builder.body(()).map_err(ureq::Error::from)?)?
    } else {
        agent.run(builder.body(body.to_vec()).map_err(ureq::Error::from)?)?
    };
    let status = response.status().as_u16();
    let location =
        response.headers().get(ureq::http::header::LOCATION).and_then(|value| value.to_str().ok()).map(str::to_owned);
    let body = response.into_body().into_with_config().limit(ANSWER_BYTES_MAX).read_to_vec()?;
    Ok(HttpResponse { status, location, body })
}
