//! The HTTP API of one node.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::middleware::{Next, from_fn_with_state, map_response};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post, put};
use raft_core::{ConfChange, Membership, MembershipError, NodeId, Role, TransferError};
use raft_net::{
    MembershipChangeError, NodeHandle, NodeStatus, ProposeError, ReadConsistency, ReadError, TransferLeadershipError,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Access, Credentials, Verdict};
use crate::kv::{Command, KEY_BYTES_MAX, Kv, PeerAddresses, PeerBook, Response, VALUE_BYTES_MAX, encode};
use crate::removal::Removal;

/// How long a request waits for the cluster before answering 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a membership change or a transfer may take before answering 503.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// What a body may carry beyond its values: a JSON envelope, escapes.
pub const BODY_MARGIN_BYTES: usize = 64 * 1024;
/// The largest `PUT /kv/{key}` body. A value a little over [`VALUE_BYTES_MAX`] is still read, so
/// its 413 names the value limit; a larger body is refused without reading it all.
pub const PUT_BODY_BYTES_MAX: usize = VALUE_BYTES_MAX + BODY_MARGIN_BYTES;
/// The largest `POST /kv/{key}/cas` body: two values (expected and new) in a JSON envelope.
pub const CAS_BODY_BYTES_MAX: usize = 2 * VALUE_BYTES_MAX + BODY_MARGIN_BYTES;
/// The largest body of every other endpoint (small JSON objects).
pub const ADMIN_BODY_BYTES_MAX: usize = BODY_MARGIN_BYTES;
/// The most of a plain-text error body (from axum's own rejections) copied into a JSON error.
pub const ERROR_TEXT_BYTES_MAX: usize = 4096;
/// The most a learner may lag behind the leader's log, in entries, to be promoted to voter: a
/// voter that is far behind cannot help commit, so promoting it early weakens the quorum.
pub const PROMOTE_LAG_ENTRIES_MAX: u64 = 64;

/// What every handler shares.
#[derive(Clone)]
pub struct App {
    /// The node.
    pub handle: NodeHandle<Kv>,
    /// Where every member listens.
    pub book: PeerBook,
    /// Whether this node has been removed from the cluster.
    pub removal: Removal,
    /// The scheme of this node's and its peers' HTTP addresses, in redirects: `http` or `https`.
    pub scheme: &'static str,
}

/// Whether a request that failed may have changed the state, sent as `"outcome"` in every error
/// answer so that a client knows whether a retry could apply a write twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Definitely not applied (refused before it reached the log, or replaced there): safe to
    /// retry. Every failed read says this: a read changes nothing.
    NotApplied,
    /// It may or may not have been applied (it reached the log, then the answer was lost to a
    /// timeout, a stop or a snapshot): read before retrying a write that must not apply twice.
    Unknown,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::NotApplied => "not_applied",
            Outcome::Unknown => "unknown",
        }
    }
}

/// Why a request failed, sent as `"reason"`: one word per condition, the same for reads and
/// writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Malformed input (bad JSON, an unknown consistency, a change that does nothing).
    BadRequest,
    /// No such key or endpoint.
    NotFound,
    /// The method does not fit the endpoint.
    MethodNotAllowed,
    /// A refused membership change (a voter already, a lagging learner).
    Conflict,
    /// A key, value or body over its limit.
    TooLarge,
    /// No leader is known (an election is under way, or this node is cut off).
    NoLeader,
    /// The node (or its leader) holds as much pending work as it may.
    TooBusy,
    /// Leadership changed before the request completed.
    LeadershipChanged,
    /// The request did not complete within the server's timeout.
    TimedOut,
    /// The node is stopping, or stopped (a storage failure, say).
    NodeStopped,
    /// This node has been removed from the cluster: send requests to a member.
    Removed,
    /// The endpoint needs a bearer token and the request has none.
    Unauthorized,
    /// The request's token is not accepted on this endpoint.
    Forbidden,
    /// A bug of ours.
    Internal,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::BadRequest => "bad_request",
            Reason::NotFound => "not_found",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::Conflict => "conflict",
            Reason::TooLarge => "too_large",
            Reason::NoLeader => "no_leader",
            Reason::TooBusy => "too_busy",
            Reason::LeadershipChanged => "leadership_changed",
            Reason::TimedOut => "timed_out",
            Reason::NodeStopped => "node_stopped",
            Reason::Removed => "removed",
            Reason::Unauthorized => "unauthorized",
            Reason::Forbidden => "forbidden",
            Reason::Internal => "internal",
        }
    }

    /// The reason of an error answer with `status` that says nothing more (axum's rejections).
    fn of_status(status: StatusCode) -> Reason {
        match status {
            StatusCode::NOT_FOUND => Reason::NotFound,
            StatusCode::UNAUTHORIZED => Reason::Unauthorized,
            StatusCode::FORBIDDEN => Reason::Forbidden,
            StatusCode::METHOD_NOT_ALLOWED => Reason::MethodNotAllowed,
            StatusCode::CONFLICT => Reason::Conflict,
            StatusCode::PAYLOAD_TOO_LARGE => Reason::TooLarge,
            StatusCode::SERVICE_UNAVAILABLE => Reason::NoLeader,
            status if status.is_server_error() => Reason::Internal,
            _ => Reason::BadRequest,
        }
    }
}

/// The message of a condition that reads and writes share, so that both say it the same way.
pub(crate) const NO_LEADER: &str = "no leader is known; retry";
pub(crate) const TIMED_OUT: &str = "the request timed out";
pub(crate) const NODE_STOPPED: &str = "the node stopped";
const TOO_BUSY: &str = "too many requests pending; retry";
const LEADERSHIP_CHANGED: &str = "leadership changed before the request completed";
const REMOVED: &str = "this node was removed from the cluster; send requests to a member";

/// An error answer, sent as `{"error": message, "reason": ..., "outcome": ...}`.
pub struct ApiError {
    status: StatusCode,
    reason: Reason,
    outcome: Outcome,
    message: String,
}

impl ApiError {
    /// An answer for a request that did not change anything.
    pub(crate) fn not_applied(status: StatusCode, reason: Reason, message: impl Into<String>) -> Self {
        ApiError { status, reason, outcome: Outcome::NotApplied, message: message.into() }
    }

    /// A 503 for a write that may or may not have been applied.
    pub(crate) fn unknown(reason: Reason, message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::SERVICE_UNAVAILABLE, reason, outcome: Outcome::Unknown, message: message.into() }
    }

    /// A 503 that changed nothing.
    pub(crate) fn unavailable(reason: Reason, message: impl Into<String>) -> Self {
        Self::not_applied(StatusCode::SERVICE_UNAVAILABLE, reason, message)
    }

    /// The 410 of a removed node.
    fn removed() -> Self {
        Self::not_applied(StatusCode::GONE, Reason::Removed, REMOVED)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> HttpResponse {
        let body = json!({ "error": self.message, "reason": self.reason.as_str(), "outcome": self.outcome.as_str() });
        (self.status, axum::Json(body)).into_response()
    }
}

/// An error answer that changed nothing, its reason told by its status.
pub(crate) fn bad(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError::not_applied(status, Reason::of_status(status), message)
}

/// Answers 410 on a node that was removed from the cluster.
fn check_member(app: &App) -> Result<(), ApiError> {
    if app.removal.is_removed() { Err(ApiError::removed()) } else { Ok(()) }
}

/// The router of the whole API. Every error answer, axum's own rejections included, is JSON.
/// Admin endpoints need the admin token and data endpoints the data token, when `credentials`
/// has them (see `auth.rs`); the token is checked before anything else, the body included.
pub fn router(app: App, credentials: Credentials) -> Router {
    let put_limit = DefaultBodyLimit::max(PUT_BODY_BYTES_MAX);
    let credentials = Arc::new(credentials);
    let admin = Router::new()
        .route("/cluster/members", post(members))
        .route("/cluster/leader", post(transfer))
        .route_layer(from_fn_with_state((Arc::clone(&credentials), Access::Admin), authorize));
    let data = Router::new()
        .route("/kv/{key}", put(put_key::<App>).layer(put_limit).get(get_key::<App>).delete(delete_key::<App>))
        .route("/kv/{key}/cas", post(cas_key::<App>).layer(DefaultBodyLimit::max(CAS_BODY_BYTES_MAX)))
        .route("/cluster/status", get(status))
        .route("/metrics", get(metrics))
        .route_layer(from_fn_with_state((credentials, Access::Data), authorize));
    admin
        .merge(data)
        .fallback(|| async { bad(StatusCode::NOT_FOUND, "no such endpoint") })
        // The routes' own limits override this one.
        .layer(DefaultBodyLimit::max(ADMIN_BODY_BYTES_MAX))
        .layer(map_response(json_errors))
        .with_state(Arc::new(app))
}

/// Lets a request through when its bearer token is accepted for `access`; otherwise a JSON 401
/// (no token; with `WWW-Authenticate: Bearer`) or 403 (a token not accepted here).
pub(crate) async fn authorize(
    State((credentials, access)): State<(Arc<Credentials>, Access)>,
    request: Request,
    next: Next,
) -> HttpResponse {
    match credentials.check(access, request.headers()) {
        Verdict::Allowed => next.run(request).await,
        Verdict::Missing => {
            let error = ApiError::not_applied(
                StatusCode::UNAUTHORIZED,
                Reason::Unauthorized,
                "this endpoint needs a bearer token (Authorization: Bearer TOKEN)",
            );
            let challenge = HeaderValue::from_static("Bearer realm=\"raft-kv\"");
            (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, challenge)], error).into_response()
        }
        Verdict::Refused => {
            let message = match access {
                Access::Admin => "the token is not the admin token, which this endpoint needs",
                Access::Data => "the token is not accepted",
            };
            ApiError::not_applied(StatusCode::FORBIDDEN, Reason::Forbidden, message).into_response()
        }
    }
}

/// Turns an error answer that is not JSON (axum's rejections of a path, a query or a method,
/// which are plain text or empty) into a JSON error with the same status and headers. A
/// rejection comes before any handler runs: nothing was applied.
pub(crate) async fn json_errors(response: HttpResponse) -> HttpResponse {
    let status = response.status();
    let is_json = response.headers().get(header::CONTENT_TYPE).is_some_and(|value| value == "application/json");
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, ERROR_TEXT_BYTES_MAX).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_lowercase() } else { text };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let reason = Reason::of_status(status).as_str();
    let body = json!({ "error": message, "reason": reason, "outcome": Outcome::NotApplied.as_str() });
    HttpResponse::from_parts(parts, Body::from(body.to_string()))
}

/// The body, or a JSON error: 413 naming `limit` when it is larger.
pub(crate) fn body_within(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => bad(StatusCode::PAYLOAD_TOO_LARGE, format!("the body exceeds {limit} bytes")),
        status => bad(status, rejection.body_text()),
    })
}

/// The body as JSON of type `T`, within `limit` bytes: 413 over it, 400 for bad JSON.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let body = body_within(body, limit)?;
    serde_json::from_slice(&body).map_err(|error| bad(StatusCode::BAD_REQUEST, format!("bad JSON: {error}")))
}

pub(crate) fn check_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(bad(StatusCode::BAD_REQUEST, "the key is empty"));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(bad(StatusCode::PAYLOAD_TOO_LARGE, format!("the key exceeds {KEY_BYTES_MAX} bytes")));
    }
    Ok(())
}

pub(crate) fn check_value(value: &[u8]) -> Result<(), ApiError> {
    check_len(value.len())
}

/// Where the key handlers send a key's requests: this node's one group ([`App`]), or this node's
/// replica of the key's shard (the sharded service's `ShardApp`). The handlers are the same.
pub(crate) trait KeyGroups: Send + Sync + 'static {
    /// The group that serves `key` here, or the answer to send instead (a 307 to a node that
    /// serves it, a 410 from a removed node, a 503 while no routing table is known).
    fn group(&self, key: &str, uri: &Uri) -> Result<NodeHandle<Kv>, Box<HttpResponse>>;

    /// A 307 to `leader`'s HTTP address for the same path (a group's leader, named by a refusal
    /// of this node's replica), or 503 when no leader is known.
    fn to_leader(&self, leader: Option<NodeId>, uri: &Uri) -> HttpResponse;
}

/// A 307 to `scheme://http` with the same path and query.
pub(crate) fn redirect_to(scheme: &str, http: std::net::SocketAddr, uri: &Uri) -> HttpResponse {
    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    match HeaderValue::from_str(&format!("{scheme}://{http}{path}")) {
        Ok(location) => (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)]).into_response(),
        Err(_) => bad(StatusCode::INTERNAL_SERVER_ERROR, "bad node address").into_response(),
    }
}

impl KeyGroups for App {
    fn group(&self, _key: &str, _uri: &Uri) -> Result<NodeHandle<Kv>, Box<HttpResponse>> {
        check_member(self).map_err(|error| Box::new(error.into_response()))?;
        Ok(self.handle.clone())
    }

    fn to_leader(&self, leader: Option<NodeId>, uri: &Uri) -> HttpResponse {
        match leader.and_then(|leader| self.book.get(leader)) {
            Some(peer) => redirect_to(self.scheme, peer.http, uri),
            None => ApiError::unavailable(Reason::NoLeader, NO_LEADER).into_response(),
        }
    }
}

/// Proposes `command` to `key`'s group here; redirects when this node does not lead it (or does
/// not serve the key). Every failure says whether the command may have been applied.
async fn propose<G: KeyGroups>(app: &G, key: &str, command: Command, uri: &Uri) -> Result<Response, HttpResponse> {
    let handle = app.group(key, uri).map_err(|elsewhere| *elsewhere)?;
    let outcome = tokio::time::timeout(REQUEST_TIMEOUT, handle.propose(encode(&command))).await;
    match outcome {
        Ok(Ok(Response::Invalid)) => Err(bad(StatusCode::INTERNAL_SERVER_ERROR, "command invalid").into_response()),
        Ok(Ok(response)) => Ok(response),
        Ok(Err(ProposeError::Refused { reason: raft_core::ProposeError::NotLeader { leader }, .. })) => {
            Err(app.to_leader(leader, uri))
        }
        Ok(Err(error)) => Err(propose_error(error).into_response()),
        // The proposal may have reached the log before the wait ended.
        Err(_) => Err(ApiError::unknown(Reason::TimedOut, TIMED_OUT).into_response()),
    }
}

/// What a failed proposal tells the client (see [`ProposeError`]'s variants: refusals before the
/// log and a replaced entry are not applied; a stop or a snapshot over the entry is unknown).
pub(crate) fn propose_error(error: ProposeError) -> ApiError {
    use raft_core::ProposeError as Refusal;
    match error {
        ProposeError::Refused { reason: Refusal::NotLeader { .. }, .. } => {
            ApiError::unavailable(Reason::NoLeader, NO_LEADER)
        }
        ProposeError::Refused { reason: Refusal::TooLarge { bytes, limit }, .. } => {
            bad(StatusCode::PAYLOAD_TOO_LARGE, format!("{bytes} bytes exceed {limit}"))
        }
        // The driver's queue is full, or the leader holds too much uncommitted, has not made its
        // term durable yet, or hands leadership over: all pass soon.
        ProposeError::TooBusy
        | ProposeError::Refused {
            reason: Refusal::TooManyUncommittedBytes { .. } | Refusal::TermNotDurable | Refusal::TransferInProgress,
            ..
        } => ApiError::unavailable(Reason::TooBusy, TOO_BUSY),
        ProposeError::LeadershipLost { .. } => ApiError::unavailable(Reason::LeadershipChanged, LEADERSHIP_CHANGED),
        ProposeError::OutcomeUnknown { .. } => ApiError::unknown(Reason::LeadershipChanged, LEADERSHIP_CHANGED),
        ProposeError::ShuttingDown | ProposeError::StorageFailed(_) | ProposeError::Stopped(_) => {
            ApiError::unknown(Reason::NodeStopped, NODE_STOPPED)
        }
        // A variant added later: claim nothing.
        other => ApiError::unknown(Reason::Internal, other.to_string()),
    }
}

/// What a failed read tells the client, in the words a write uses for the same condition.
pub(crate) fn read_error(error: ReadError) -> ApiError {
    use raft_core::ReadError as Refusal;
    match error {
        ReadError::Refused(Refusal::NoLeader) => ApiError::unavailable(Reason::NoLeader, NO_LEADER),
        ReadError::Refused(Refusal::LeaseNotEnabled) => bad(StatusCode::BAD_REQUEST, error.to_string()),
        ReadError::Refused(Refusal::TooManyPending) => ApiError::unavailable(Reason::TooBusy, TOO_BUSY),
        ReadError::Refused(Refusal::LeaderChanged) => {
            ApiError::unavailable(Reason::LeadershipChanged, LEADERSHIP_CHANGED)
        }
        ReadError::Refused(Refusal::TimedOut) => ApiError::unavailable(Reason::TimedOut, TIMED_OUT),
        ReadError::ShuttingDown | ReadError::StorageFailed(_) | ReadError::Stopped(_) => {
            ApiError::unavailable(Reason::NodeStopped, NODE_STOPPED)
        }
        other => ApiError::unavailable(Reason::Internal, other.to_string()),
    }
}

pub(crate) async fn put_key<G: KeyGroups>(
    State(app): State<Arc<G>>,
    Path(key): Path<String>,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> HttpResponse {
    let body = match check_key(&key).and_then(|()| body_within(body, PUT_BODY_BYTES_MAX)) {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    if let Err(error) = check_value(&body) {
        return error.into_response();
    }
    match propose(app.as_ref(), &key.clone(), Command::Put { key, value: body }, &uri).await {
        Ok(_) => axum::Json(json!({ "ok": true })).into_response(),
        Err(response) => response,
    }
}

pub(crate) async fn delete_key<G: KeyGroups>(
    State(app): State<Arc<G>>,
    Path(key): Path<String>,
    uri: Uri,
) -> HttpResponse {
    if let Err(error) = check_key(&key) {
        return error.into_response();
    }
    match propose(app.as_ref(), &key.clone(), Command::Delete { key }, &uri).await {
        Ok(Response::Deleted(existed)) => axum::Json(json!({ "deleted": existed })).into_response(),
        Ok(_) => bad(StatusCode::INTERNAL_SERVER_ERROR, "unexpected answer").into_response(),
        Err(response) => response,
    }
}

/// The body of `POST /kv/{key}/cas`: `null` means absent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CasBody {
    pub(crate) expected: Option<String>,
    pub(crate) value: Option<String>,
}

pub(crate) async fn cas_key<G: KeyGroups>(
    State(app): State<Arc<G>>,
    Path(key): Path<String>,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> HttpResponse {
    let body: CasBody = match json_body(body, CAS_BODY_BYTES_MAX) {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    let value_len = body.value.as_ref().map_or(0, String::len);
    if let Err(error) = check_key(&key).and_then(|()| check_len(value_len)) {
        return error.into_response();
    }
    let command =
        Command::Cas { key: key.clone(), expected: body.expected.map(Bytes::from), value: body.value.map(Bytes::from) };
    match propose(app.as_ref(), &key, command, &uri).await {
        Ok(Response::Cas { swapped, current }) => {
            let current = current.map(|value| String::from_utf8_lossy(&value).into_owned());
            let status = if swapped { StatusCode::OK } else { StatusCode::CONFLICT };
            (status, axum::Json(json!({ "swapped": swapped, "current": current }))).into_response()
        }
        Ok(_) => bad(StatusCode::INTERNAL_SERVER_ERROR, "unexpected answer").into_response(),
        Err(response) => response,
    }
}

pub(crate) fn check_len(len: usize) -> Result<(), ApiError> {
    if len > VALUE_BYTES_MAX {
        return Err(bad(StatusCode::PAYLOAD_TOO_LARGE, format!("the value exceeds {VALUE_BYTES_MAX} bytes")));
    }
    Ok(())
}

#[derive(Deserialize)]
pub(crate) struct ReadQuery {
    pub(crate) consistency: Option<String>,
}

pub(crate) fn consistency(query: &ReadQuery) -> Result<ReadConsistency, ApiError> {
    match query.consistency.as_deref() {
        None | Some("linearizable") | Some("follower") => Ok(ReadConsistency::Linearizable),
        Some("lease") => Ok(ReadConsistency::Lease),
        Some("stale") => Ok(ReadConsistency::Stale),
        Some(other) => Err(bad(
            StatusCode::BAD_REQUEST,
            format!("unknown consistency {other:?}: linearizable, lease, follower or stale"),
        )),
    }
}

pub(crate) async fn get_key<G: KeyGroups>(
    State(app): State<Arc<G>>,
    Path(key): Path<String>,
    uri: Uri,
    Query(query): Query<ReadQuery>,
) -> HttpResponse {
    let consistency = match check_key(&key).and_then(|()| consistency(&query)) {
        Ok(consistency) => consistency,
        Err(error) => return error.into_response(),
    };
    let handle = match app.group(&key, &uri) {
        Ok(handle) => handle,
        Err(elsewhere) => return *elsewhere,
    };
    let read = handle.read(consistency, move |kv: &Kv| kv.get(&key));
    match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Ok(Ok(Some(value))) => value.into_response(),
        Ok(Ok(None)) => bad(StatusCode::NOT_FOUND, "no such key").into_response(),
        Ok(Err(error)) => read_error(error).into_response(),
        Err(_) => ApiError::unavailable(Reason::TimedOut, TIMED_OUT).into_response(),
    }
}

/// The node's status as JSON.
async fn status_json(app: &App) -> Result<Value, ApiError> {
    let status = app.handle.status().await.map_err(|_| ApiError::unavailable(Reason::NodeStopped, NODE_STOPPED))?;
    let role = match status.role {
        Role::Leader => "leader",
        Role::Candidate => "candidate",
        Role::PreCandidate => "pre-candidate",
        _ => "follower",
    };
    let peers: serde_json::Map<String, Value> = status
        .peers
        .iter()
        .map(|(id, peer)| {
            let value = json!({ "match_index": peer.match_index.0, "lag_entries": peer.lag_entries,
                                "recent_active": peer.recent_active });
            (id.0.to_string(), value)
        })
        .collect();
    // Members only: a removed node leaves the list (a node that has not joined yet lists all).
    let members = status.membership.members();
    let addresses: serde_json::Map<String, Value> = app
        .book
        .all()
        .values()
        .filter(|peer| members.is_empty() || members.contains(&peer.id))
        .map(|peer| (peer.id.0.to_string(), json!({ "raft": peer.raft.to_string(), "http": peer.http.to_string() })))
        .collect();
    let ids = |set: &std::collections::BTreeSet<NodeId>| set.iter().map(|id| id.0).collect::<Vec<_>>();
    Ok(json!({
        "id": status.id.0, "role": role, "term": status.term.0, "leader": status.leader.map(|id| id.0),
        "commit": status.commit.0, "applied": status.applied.0, "last_index": status.last_index.0,
        "voters": ids(&status.membership.voters_incoming), "voters_outgoing": ids(&status.membership.voters_outgoing),
        "learners": ids(&status.membership.learners), "learners_next": ids(&status.membership.learners_next),
        "peers": peers, "addresses": addresses,
        "removed": app.removal.is_removed(),
    }))
}

async fn status(State(app): State<Arc<App>>) -> HttpResponse {
    match status_json(&app).await {
        Ok(value) => axum::Json(value).into_response(),
        Err(error) => error.into_response(),
    }
}

/// The process's Prometheus recorder, installed by [`install_metrics`].
static PROMETHEUS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> = std::sync::OnceLock::new();

/// Installs the Prometheus recorder for this process (once; later calls do nothing), before the
/// node starts: the library registers its metric handles when its store opens and its group and
/// transport start, and handles registered before a recorder exists record nothing. A task runs
/// the recorder's upkeep (it drains the histograms' buffers) in case nobody scrapes `/metrics`.
/// Must be called from within a tokio runtime.
pub fn install_metrics() -> anyhow::Result<()> {
    if PROMETHEUS.get().is_some() {
        return Ok(());
    }
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    raft_net::metrics::describe();
    metrics::describe_gauge!("raft_last_index", "The last index in the log.");
    metrics::describe_gauge!("raft_is_leader", "1 when this node leads.");
    metrics::describe_gauge!("raft_voters", "Voters in the membership.");
    metrics::describe_gauge!("kv_keys", "Keys in the map.");
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let _ = PROMETHEUS.set(handle);
    Ok(())
}

/// The library's metrics (`raft_net::metrics`) and a few gauges of this node's status, in the
/// Prometheus text format, rendered by the exporter.
async fn metrics(State(app): State<Arc<App>>) -> HttpResponse {
    let Ok(status) = app.handle.status().await else {
        return ApiError::unavailable(Reason::NodeStopped, NODE_STOPPED).into_response();
    };
    let keys = app.handle.read(ReadConsistency::Stale, |kv: &Kv| kv.key_count()).await.unwrap_or(0);
    let node = [("node", status.id.to_string())];
    metrics::gauge!("raft_last_index", &node).set(status.last_index.0 as f64);
    metrics::gauge!("raft_is_leader", &node).set(u8::from(status.role == Role::Leader));
    metrics::gauge!("raft_voters", &node).set(status.membership.voters_incoming.len() as f64);
    metrics::gauge!("kv_keys", &node).set(keys as f64);
    render_metrics()
}

/// The process's metrics in the Prometheus text format (what `/metrics` answers).
pub(crate) fn render_metrics() -> HttpResponse {
    let text = PROMETHEUS.get().map(|handle| handle.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The body of `POST /cluster/members`.
#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
enum MemberAction {
    /// Adds a learner listening at `raft` and `http`.
    AddLearner { id: u64, raft: std::net::SocketAddr, http: std::net::SocketAddr },
    /// Promotes a learner to voter.
    Promote { id: u64 },
    /// Removes a member.
    Remove { id: u64 },
}

async fn members(State(app): State<Arc<App>>, uri: Uri, body: Result<Bytes, BytesRejection>) -> HttpResponse {
    let action: MemberAction = match json_body(body, ADMIN_BODY_BYTES_MAX) {
        Ok(action) => action,
        Err(error) => return error.into_response(),
    };
    if let Err(error) = check_member(&app) {
        return error.into_response();
    }
    // Only the leader's view of the membership is current enough to check a change against.
    let status = match app.handle.status().await {
        Ok(status) => status,
        Err(_) => return ApiError::unavailable(Reason::NodeStopped, NODE_STOPPED).into_response(),
    };
    if status.role != Role::Leader {
        return app.to_leader(status.leader, &uri);
    }
    let change = match action {
        MemberAction::AddLearner { id, raft, http } => {
            let peer = PeerAddresses { id: NodeId(id), raft, http };
            match add_learner(&app, &status, peer, &uri).await {
                Ok(change) => change,
                Err(response) => return response,
            }
        }
        MemberAction::Promote { id } => match check_promotable(&status, NodeId(id)) {
            Ok(()) => ConfChange::AddVoter(NodeId(id)),
            Err(error) => return error.into_response(),
        },
        MemberAction::Remove { id } => ConfChange::Remove(NodeId(id)),
    };
    change_membership(&app, change, &uri).await
}

/// Checks and registers a new learner. A voter is refused (the core would demote it, which a
/// node asking to join again after a restart must not do); a learner is registered again (its
/// addresses may have changed) and answered at once: adding a node twice is idempotent.
async fn add_learner(
    app: &App,
    status: &NodeStatus,
    peer: PeerAddresses,
    uri: &Uri,
) -> Result<ConfChange, HttpResponse> {
    let id = peer.id;
    if status.membership.is_voter(id) {
        let message = format!("node {id} is a voter already (remove it first to make it a learner)");
        return Err(bad(StatusCode::CONFLICT, message).into_response());
    }
    register(app, peer, uri).await?;
    if status.membership.learners.contains(&id) {
        return Err(axum::Json(membership_json(&status.membership)).into_response());
    }
    Ok(ConfChange::AddLearner(id))
}

/// Records in the log where `peer` listens, and every other member this node knows of that the
/// log lacks (those given by `--peers`): a node that joins learns where everyone listens by
/// applying the log, and learns it again from its own log when it restarts.
async fn register(app: &App, peer: PeerAddresses, uri: &Uri) -> Result<(), HttpResponse> {
    let registered = app.handle.read(ReadConsistency::Stale, |kv: &Kv| kv.registered().clone()).await;
    let registered = registered.unwrap_or_default(); // A stopped node: proposing fails below.
    let mut book = app.book.all();
    book.insert(peer.id, peer);
    for peer in book.into_values().filter(|peer| registered.get(&peer.id) != Some(peer)) {
        propose(app, "", Command::Register(peer), uri).await?;
    }
    Ok(())
}

/// A learner may become a voter once it has caught up: a voter far behind cannot help commit, so
/// promoting it early makes the cluster less available, not more.
fn check_promotable(status: &NodeStatus, id: NodeId) -> Result<(), ApiError> {
    if !status.membership.learners.contains(&id) {
        return Ok(()); // A voter already, or a stranger: the core answers.
    }
    match status.peers.get(&id) {
        Some(peer) if peer.match_index.0 > 0 && peer.recent_active && peer.lag_entries <= PROMOTE_LAG_ENTRIES_MAX => {
            Ok(())
        }
        Some(peer) => Err(bad(
            StatusCode::CONFLICT,
            format!(
                "learner {id} has not caught up ({} entries behind, active: {}); retry once it has",
                peer.lag_entries, peer.recent_active
            ),
        )),
        None => Err(bad(StatusCode::CONFLICT, format!("learner {id} has not caught up (no progress yet); retry"))),
    }
}

fn membership_json(membership: &Membership) -> Value {
    let ids = |set: &std::collections::BTreeSet<NodeId>| set.iter().map(|id| id.0).collect::<Vec<_>>();
    json!({ "voters": ids(&membership.voters_incoming), "learners": ids(&membership.learners) })
}

async fn change_membership(app: &App, change: ConfChange, uri: &Uri) -> HttpResponse {
    let deadline = tokio::time::Instant::now() + ADMIN_TIMEOUT;
    loop {
        let outcome = tokio::time::timeout_at(deadline, app.handle.change_membership(vec![change])).await;
        let error = match outcome {
            Ok(Ok(membership)) => return axum::Json(membership_json(&membership)).into_response(),
            Ok(Err(error)) => error,
            // The change may have been appended before the wait ended.
            Err(_) => return ApiError::unknown(Reason::TimedOut, TIMED_OUT).into_response(),
        };
        match error {
            MembershipChangeError::Refused {
                reason: MembershipError::TermNotCommitted | MembershipError::ChangeInProgress,
                ..
            } => {}
            MembershipChangeError::Refused { reason: MembershipError::NotLeader { leader }, .. } => {
                return app.to_leader(leader, uri);
            }
            error => return membership_error(error).into_response(),
        }
        if tokio::time::Instant::now() >= deadline {
            // The last attempt was refused before the log.
            return ApiError::unavailable(Reason::TimedOut, TIMED_OUT).into_response();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a failed membership change tells the client: refusals are not applied; a lost
/// leadership or a stop may leave the change applied or not.
fn membership_error(error: MembershipChangeError) -> ApiError {
    match error {
        MembershipChangeError::Refused { reason: MembershipError::NotLeader { .. }, .. } => {
            ApiError::unavailable(Reason::NoLeader, NO_LEADER)
        }
        MembershipChangeError::Refused { reason: MembershipError::NoEffect(id), .. } => {
            bad(StatusCode::BAD_REQUEST, format!("the change leaves node {id} as it is"))
        }
        MembershipChangeError::Refused { reason: MembershipError::NoVoters, .. } => {
            bad(StatusCode::BAD_REQUEST, "the change would leave no voter")
        }
        MembershipChangeError::Refused {
            reason:
                MembershipError::TermNotCommitted | MembershipError::ChangeInProgress | MembershipError::TransferInProgress,
            ..
        } => ApiError::unavailable(Reason::TooBusy, error.to_string()),
        MembershipChangeError::LeadershipLost => ApiError::unknown(Reason::LeadershipChanged, LEADERSHIP_CHANGED),
        MembershipChangeError::ShuttingDown | MembershipChangeError::StorageFailed(_) => {
            ApiError::unknown(Reason::NodeStopped, NODE_STOPPED)
        }
        other => ApiError::unknown(Reason::NodeStopped, other.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    id: u64,
}

async fn transfer(State(app): State<Arc<App>>, uri: Uri, body: Result<Bytes, BytesRejection>) -> HttpResponse {
    let body: TransferBody = match json_body(body, ADMIN_BODY_BYTES_MAX) {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    if let Err(error) = check_member(&app) {
        return error.into_response();
    }
    let outcome = tokio::time::timeout(ADMIN_TIMEOUT, app.handle.transfer_leadership(NodeId(body.id))).await;
    match outcome {
        Ok(Ok(())) => axum::Json(json!({ "leader": body.id })).into_response(),
        Ok(Err(TransferLeadershipError::Refused { reason: TransferError::NotLeader { leader }, .. })) => {
            app.to_leader(leader, &uri)
        }
        Ok(Err(TransferLeadershipError::Refused { reason: TransferError::AlreadyLeader(id), .. })) => {
            axum::Json(json!({ "leader": id.0 })).into_response()
        }
        Ok(Err(error @ TransferLeadershipError::Refused { reason: TransferError::NotAVoter(_), .. })) => {
            bad(StatusCode::BAD_REQUEST, error.to_string()).into_response()
        }
        Ok(Err(error @ TransferLeadershipError::Refused { reason: TransferError::InProgress(_), .. })) => {
            ApiError::unavailable(Reason::TooBusy, error.to_string()).into_response()
        }
        Ok(Err(TransferLeadershipError::TimedOut)) | Err(_) => {
            ApiError::unknown(Reason::TimedOut, TIMED_OUT).into_response()
        }
        Ok(Err(_)) => ApiError::unknown(Reason::NodeStopped, NODE_STOPPED).into_response(),
    }
}
