//! A tiny blocking HTTP/1.1 client (plain `http://` only) for the CLI's client subcommands and
//! the cluster launcher: one request per connection, following 307 redirects.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use thiserror::Error;

/// How many redirects one request follows at most.
pub const REDIRECTS_MAX: usize = 5;
/// How long connecting, reading or writing may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(40);

/// Why a request failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The URL is not `http://HOST:PORT/PATH`.
    #[error("unsupported URL (want http://HOST:PORT/PATH)")]
    BadUrl,
    /// The connection failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The answer is not HTTP/1.1.
    #[error("malformed response")]
    Malformed,
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

/// Sends `method url` with `body`, following redirects.
pub fn request(method: &str, url: &str, body: &[u8]) -> Result<HttpResponse, ClientError> {
    let mut url = url.to_owned();
    for _ in 0..=REDIRECTS_MAX {
        let response = request_once(method, &url, body)?;
        match (response.status, &response.location) {
            (307 | 308, Some(location)) => url = location.clone(),
            _ => return Ok(response),
        }
    }
    Err(ClientError::TooManyRedirects)
}

/// Sends one request, without following redirects.
pub fn request_once(method: &str, url: &str, body: &[u8]) -> Result<HttpResponse, ClientError> {
    let rest = url.strip_prefix("http://").ok_or(ClientError::BadUrl)?;
    let (host, path) = rest.find('/').map_or((rest, "/"), |at| (&rest[..at], &rest[at..]));
    let address = std::net::ToSocketAddrs::to_socket_addrs(host)?.next().ok_or(ClientError::BadUrl)?;
    let mut stream = TcpStream::connect_timeout(&address, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let written = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body));
    let mut raw = Vec::new();
    let read = stream.read_to_end(&mut raw);
    // A server may answer (a 413, say) and close before it has read a whole body: a whole answer
    // counts even when writing failed; otherwise the first I/O error says what went wrong.
    parse(&raw).map_err(|malformed| written.err().or(read.err()).map_or(malformed, ClientError::Io))
}

/// Parses a whole HTTP/1.1 answer (the connection's bytes up to its end).
pub fn parse(raw: &[u8]) -> Result<HttpResponse, ClientError> {
    let end = raw.windows(4).position(|window| window == b"\r\n\r\n").ok_or(ClientError::Malformed)?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| ClientError::Malformed)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or(ClientError::Malformed)?;
    let status = status_line.split(' ').nth(1).and_then(|code| code.parse().ok()).ok_or(ClientError::Malformed)?;
    let mut location = None;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        match name.trim().to_ascii_lowercase().as_str() {
            "location" => location = Some(value.trim().to_owned()),
            "content-length" => length = value.trim().parse::<usize>().ok(),
            _ => {}
        }
    }
    let body = &raw[end + 4..];
    let body = match length {
        Some(length) => body.get(..length).ok_or(ClientError::Malformed)?, // Cut short.
        None => body,
    };
    Ok(HttpResponse { status, location, body: body.to_vec() })
}
