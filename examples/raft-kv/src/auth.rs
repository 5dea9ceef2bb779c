//! Bearer tokens for the HTTP API: which endpoints need which token, and the check of an
//! `Authorization` header against them, in constant time (`subtle`), so that the time an answer
//! takes tells nothing about how much of a guess was right.
//!
//! The policy (also in the README):
//!
//! - **Admin endpoints** (`POST /cluster/members`, `POST /cluster/leader`) need the admin token
//!   when the node has one (`--admin-token-file`, or `admin.token` of `--tls DIR`); a node without
//!   one (plain mode, local experiments) leaves them open.
//! - **Data endpoints** (`/kv/...`, `/cluster/status`, `/metrics`) are open unless the node has a
//!   data token (`--data-token-file`); then they need the data token or the admin token.
//! - No `Authorization: Bearer` header: 401 with `WWW-Authenticate: Bearer`. A token that is not
//!   accepted there (a wrong one, or the data token on an admin endpoint): 403.
//!
//! Lost-quorum recovery (`raft-kv recover`) is an offline command, not an endpoint.

use std::fmt;
use std::path::Path;

use anyhow::{Context, bail};
use axum::http::{HeaderMap, header};
use raft_kv::certs;
use subtle::ConstantTimeEq;

/// A bearer token (its `Debug` does not show it).
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// Reads a token file; warns when others than its owner may read it.
    pub fn read(path: &Path) -> anyhow::Result<Token> {
        let token =
            certs::read_token(path).map(Token).with_context(|| format!("reading the token {}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).map(|metadata| metadata.permissions().mode()).unwrap_or(0);
            if mode & 0o077 != 0 {
                tracing::warn!(
                    "the token file {} is readable by others than its owner (mode {:o}): chmod 600 it",
                    path.display(),
                    mode & 0o777
                );
            }
        }
        Ok(token)
    }

    fn matches(&self, offered: &str) -> bool {
        self.0.as_bytes().ct_eq(offered.as_bytes()).into()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

/// The tokens a node accepts.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// Needed on admin endpoints, accepted everywhere; `None`: admin endpoints are open.
    pub admin: Option<Token>,
    /// Accepted on data endpoints; `None`: data endpoints are open.
    pub data: Option<Token>,
}

/// Which tokens an endpoint accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Membership changes, leadership transfer.
    Admin,
    /// Keys, status, metrics.
    Data,
}

/// What a request's credentials come to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through.
    Allowed,
    /// A token is needed and none was offered (or not as `Bearer`): 401.
    Missing,
    /// The token offered is not accepted here: 403.
    Refused,
}

impl Credentials {
    /// The node's tokens; a data token without an admin token is refused (it would guard the
    /// keys while leaving the membership open).
    pub fn new(admin: Option<Token>, data: Option<Token>) -> anyhow::Result<Credentials> {
        if data.is_some() && admin.is_none() {
            bail!("--data-token-file needs an admin token too (--admin-token-file, or --tls)");
        }
        Ok(Credentials { admin, data })
    }

    /// Whether a request with `headers` may use an endpoint of kind `access`.
    pub fn check(&self, access: Access, headers: &HeaderMap) -> Verdict {
        let accepted: Vec<&Token> = match access {
            Access::Admin => self.admin.iter().collect(),
            Access::Data if self.data.is_none() => Vec::new(),
            Access::Data => self.data.iter().chain(&self.admin).collect(),
        };
        if accepted.is_empty() {
            return Verdict::Allowed; // Open.
        }
        let Some(offered) = bearer(headers) else { return Verdict::Missing };
        // Every accepted token is compared, so the time taken does not say which one matched.
        let matched = accepted.iter().fold(false, |matched, token| token.matches(offered) | matched);
        if matched { Verdict::Allowed } else { Verdict::Refused }
    }
}

/// The token of an `Authorization: Bearer TOKEN` header (the scheme's case does not matter).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).expect("a header value"));
        }
        headers
    }

    fn token(text: &str) -> Option<Token> {
        Some(Token(text.to_owned()))
    }

    #[test]
    fn the_admin_token_guards_admin_endpoints_and_opens_data_ones() {
        let credentials = Credentials::new(token("admin"), token("data")).expect("both tokens");
        let check = |access, authorization| credentials.check(access, &headers(authorization));
        assert_eq!(check(Access::Admin, None), Verdict::Missing);
        assert_eq!(check(Access::Admin, Some("Basic admin")), Verdict::Missing);
        assert_eq!(check(Access::Admin, Some("Bearer data")), Verdict::Refused);
        assert_eq!(check(Access::Admin, Some("Bearer admin2")), Verdict::Refused);
        assert_eq!(check(Access::Admin, Some("bearer admin")), Verdict::Allowed);
        assert_eq!(check(Access::Data, None), Verdict::Missing);
        assert_eq!(check(Access::Data, Some("Bearer wrong")), Verdict::Refused);
        assert_eq!(check(Access::Data, Some("Bearer data")), Verdict::Allowed);
        assert_eq!(check(Access::Data, Some("Bearer admin")), Verdict::Allowed);
    }

    #[test]
    fn endpoints_without_a_token_configured_are_open() {
        let open = Credentials::default();
        assert_eq!(open.check(Access::Admin, &headers(None)), Verdict::Allowed);
        let admin_only = Credentials::new(token("admin"), None).expect("an admin token alone");
        assert_eq!(admin_only.check(Access::Data, &headers(None)), Verdict::Allowed);
        assert_eq!(admin_only.check(Access::Admin, &headers(None)), Verdict::Missing);
        assert!(Credentials::new(None, token("data")).is_err());
    }
}
