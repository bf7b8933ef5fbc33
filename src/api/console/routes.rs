//! The console API's routes (spec/console.md, "API"). Each one is a
//! gateway to an RPC of the services this server runs, called in
//! process: the caller's `Authorization` header and address go with it,
//! so tokens, scopes, limits and answers are exactly the gRPC API's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::server::TcpConnectInfo;

use super::json;
use crate::api::proto::{self, jobs_server::Jobs as _, registry_server::Registry as _};
use crate::api::{JobsService, RegistryService};

/// The services the console's API calls.
#[derive(Clone)]
pub struct ConsoleServices {
    /// The jobs API.
    pub jobs: JobsService,
    /// The registry API.
    pub registry: RegistryService,
    /// The job store's counters, sampled for the overview's last minutes.
    pub counters: Arc<crate::pulse::JobCounters>,
}

/// The services, and what the console keeps of the last minutes.
pub(super) struct ConsoleState {
    pub(super) services: ConsoleServices,
    pub(super) activity: Arc<super::activity::Activity>,
}

impl std::ops::Deref for ConsoleState {
    type Target = ConsoleServices;

    fn deref(&self) -> &ConsoleServices {
        &self.services
    }
}

pub(super) type Shared = State<Arc<ConsoleState>>;

/// Handlers named on the overview, with the most ready jobs.
const DEEPEST: usize = 10;
/// How often a live view checks for a change to send.
const LIVE_EVERY: Duration = Duration::from_millis(500);

/// An API error: the RPC's status as an HTTP status and a JSON body
/// `{"code": rule, "message": text}` (the same rule names as gRPC's
/// error details).
pub(super) struct ApiError(tonic::Status);

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> ApiError {
        ApiError(s)
    }
}

impl ApiError {
    fn bad(rule: &str, message: impl Into<String>) -> ApiError {
        ApiError(crate::api::status::bad_request(
            "query",
            rule,
            message.into(),
        ))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        use tonic::Code;
        use tonic_types::StatusExt as _;
        let s = self.0;
        let http = match s.code() {
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let code = s
            .get_details_error_info()
            .map(|i| i.reason)
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| format!("{:?}", s.code()).to_lowercase());
        let body = Json(json!({ "code": code, "message": s.message() }));
        let mut r = (http, body).into_response();
        if http == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
        }
        r
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// Who calls: the request's bearer token (its `Authorization` header)
/// and address, which every API call hands on to its RPC.
#[derive(Clone)]
pub(super) struct Caller {
    authorization: Option<axum::http::HeaderValue>,
    content_type: Option<axum::http::HeaderValue>,
    peer: Option<SocketAddr>,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Caller, Self::Rejection> {
        Ok(Caller {
            authorization: parts.headers.get(header::AUTHORIZATION).cloned(),
            content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
            peer: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        })
    }
}

impl Caller {
    /// `msg` as an RPC request from this caller: its bearer token and its
    /// address, as a gRPC call would carry them.
    fn rpc<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(v) = &self.authorization {
            if let Ok(m) = tonic::metadata::MetadataValue::try_from(v.as_bytes()) {
                r.metadata_mut().insert("authorization", m);
            }
        }
        r.extensions_mut().insert(TcpConnectInfo {
            local_addr: None,
            remote_addr: self.peer,
        });
        r
    }
}

/// A page cursor: the hex `next` of the previous page (none: the first).
fn page_token(after: Option<&str>) -> Result<Vec<u8>, ApiError> {
    match after {
        None | Some("") => Ok(Vec::new()),
        Some(t) => hex::decode(t)
            .map_err(|_| ApiError::bad("invalid_page_token", "after is the hex `next` of a page")),
    }
}

fn job_id(id: &str) -> Result<Vec<u8>, ApiError> {
    match hex::decode(id) {
        Ok(b) if b.len() == 16 => Ok(b),
        _ => Err(ApiError(crate::api::status::bad_request(
            "id",
            "invalid_job_id",
            format!("a job ID is 32 hex digits, not {id:?}"),
        ))),
    }
}

/// `GET /api/v1/overview`.
pub(super) async fn overview(State(s): Shared, caller: Caller) -> ApiResult {
    Ok(Json(overview_value(&s, &caller).await?))
}

async fn overview_value(s: &ConsoleState, caller: &Caller) -> Result<Value, ApiError> {
    let queues = s
        .jobs
        .queue_depths(&caller.rpc(()), DEEPEST)
        .map_err(ApiError)?;
    let log = s
        .registry
        .get_log_info(caller.rpc(proto::GetLogInfoRequest {}))
        .await?
        .into_inner();
    let checkpoint = s
        .registry
        .get_checkpoint(caller.rpc(proto::GetCheckpointRequest {}))
        .await?
        .into_inner();
    let sessions = s
        .jobs
        .list_plugin_sessions(caller.rpc(proto::ListPluginSessionsRequest {}))
        .await?
        .into_inner();
    let nodes = s
        .jobs
        .list_nodes(caller.rpc(proto::ListNodesRequest {}))
        .await?
        .into_inner();
    Ok(json!({
        "at_ms": crate::clock::unix_ms(),
        "log": json::log_info(&log),
        "checkpoint": checkpoint.checkpoint.as_ref().map(json::checkpoint),
        "queues": json::queues(&queues),
        "plugins": {
            "sessions": sessions.sessions.len(),
            "running": sessions.sessions.iter().map(|x| u64::from(x.running)).sum::<u64>(),
        },
        "nodes": json::nodes(&nodes),
        "activity": s.activity.intervals(s.counters.wait.buckets().1),
        "finished_since_start": s
            .counters
            .finished()
            .into_iter()
            .fold(serde_json::Map::new(), |mut m, ((state, _), n)| {
                let total = m.get(state).and_then(Value::as_u64).unwrap_or(0) + n;
                m.insert(state.to_owned(), json!(total));
                m
            }),
    }))
}

/// `GET /api/v1/overview/live`: the overview as server-sent events
/// (`overview`), sent when it changes (checked every 500 ms).
pub(super) async fn overview_live(
    State(s): Shared,
    caller: Caller,
) -> Result<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>, ApiError> {
    // Refused at once, not as an event, when the caller may not read.
    let first = overview_value(&s, &caller).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(4);
    tokio::spawn(async move {
        let mut last = Value::Null;
        let mut next = Some(first);
        loop {
            let v = match next.take() {
                Some(v) => v,
                None => match overview_value(&s, &caller).await {
                    Ok(v) => v,
                    Err(ApiError(e)) => {
                        let _ = tx
                            .send(Event::default().event("error").data(e.message()))
                            .await;
                        return;
                    }
                },
            };
            let mut compared = v.clone();
            compared["at_ms"] = Value::Null;
            if compared != last {
                last = compared;
                let event = Event::default().event("overview").data(v.to_string());
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(LIVE_EVERY).await;
        }
    });
    let events = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok);
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// The query of `GET /api/v1/jobs`.
#[derive(Deserialize)]
pub(super) struct JobsQuery {
    state: Option<String>,
    handler: Option<String>,
    limit: Option<u32>,
    /// `next` of the previous page.
    after: Option<String>,
    since_ms: Option<u64>,
    oldest_first: Option<bool>,
}

/// `GET /api/v1/jobs`.
pub(super) async fn jobs(
    State(s): Shared,
    caller: Caller,
    Query(q): Query<JobsQuery>,
) -> ApiResult {
    let mut request = proto::ListJobsRequest {
        state: q.state.unwrap_or_default(),
        page_size: q.limit.unwrap_or(50),
        page_token: page_token(q.after.as_deref())?,
        handler: q.handler.unwrap_or_default(),
        since_ms: q.since_ms.unwrap_or(0),
        oldest_first: q.oldest_first.unwrap_or(false),
    };
    // A page holds none of the jobs asked for when their index scan
    // passed over others only: follow it, as `job list` does, so that the
    // console does not show an empty page with a link to the next.
    let mut calls = 1;
    loop {
        let r = s
            .jobs
            .list_jobs(caller.rpc(request.clone()))
            .await?
            .into_inner();
        if !r.jobs.is_empty() || r.next_page_token.is_empty() || calls == LIST_CALLS_PER_PAGE {
            return Ok(Json(json::jobs_page(&r)));
        }
        request.page_token = r.next_page_token;
        calls += 1;
    }
}

/// ListJobs calls one `GET /api/v1/jobs` makes at most while they answer
/// empty pages with a next one (each reads at most 10,000 index entries):
/// past that it answers the empty page and its `next`.
const LIST_CALLS_PER_PAGE: u32 = 10;

/// `GET /api/v1/jobs/{id}`.
pub(super) async fn job(State(s): Shared, caller: Caller, Path(id): Path<String>) -> ApiResult {
    let id = job_id(&id)?;
    let r = s
        .jobs
        .get_job(caller.rpc(proto::GetJobRequest { id }))
        .await?
        .into_inner();
    Ok(Json(r.job.as_ref().map_or(Value::Null, json::job)))
}

/// The query of `GET /api/v1/jobs/{id}/log`.
#[derive(Deserialize)]
pub(super) struct LogQuery {
    after: Option<u64>,
    limit: Option<u32>,
}

/// `GET /api/v1/jobs/{id}/log`.
pub(super) async fn job_log(
    State(s): Shared,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult {
    let id = job_id(&id)?;
    let r = s
        .jobs
        .get_job_log(caller.rpc(proto::GetJobLogRequest {
            id,
            after_seq: q.after.unwrap_or(0),
            page_size: q.limit.unwrap_or(200),
        }))
        .await?
        .into_inner();
    Ok(Json(json::job_log(&r)))
}

/// `GET /api/v1/jobs/{id}/live`: the job as server-sent events (`job`),
/// one per change, until it ends (WatchJob).
pub(super) async fn job_live(
    State(s): Shared,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>, ApiError> {
    let id = job_id(&id)?;
    let watch = s
        .jobs
        .watch_job(caller.rpc(proto::WatchJobRequest { id }))
        .await?
        .into_inner();
    let events = watch.map(|j| {
        Ok(match j {
            Ok(j) => Event::default()
                .event("job")
                .data(json::job(&j).to_string()),
            Err(e) => Event::default().event("error").data(e.message()),
        })
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// An action must come as `Content-Type: application/json`: a form
/// another site's page submits cannot set it, so it cannot act for a
/// browser that reaches this server (an open API on loopback, say).
fn json_request(caller: &Caller) -> Result<(), ApiError> {
    let json = caller
        .content_type
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim() == "application/json")
        });
    if json {
        Ok(())
    } else {
        Err(ApiError::bad(
            "json_required",
            "an action is a POST with Content-Type: application/json",
        ))
    }
}

/// `POST /api/v1/jobs/{id}/cancel` (the `cancel` scope).
pub(super) async fn cancel(State(s): Shared, caller: Caller, Path(id): Path<String>) -> ApiResult {
    json_request(&caller)?;
    let id = job_id(&id)?;
    let r = s
        .jobs
        .cancel_job(caller.rpc(proto::CancelJobRequest { id }))
        .await?
        .into_inner();
    Ok(Json(r.job.as_ref().map_or(Value::Null, json::job)))
}

/// `POST /api/v1/jobs/{id}/retry` (the `retry` scope).
pub(super) async fn retry(State(s): Shared, caller: Caller, Path(id): Path<String>) -> ApiResult {
    json_request(&caller)?;
    let id = job_id(&id)?;
    let r = s
        .jobs
        .retry_job(caller.rpc(proto::RetryJobRequest { id }))
        .await?
        .into_inner();
    Ok(Json(r.job.as_ref().map_or(Value::Null, json::job)))
}

/// `GET /api/v1/log`: the log's identity, head and latest checkpoint.
pub(super) async fn log(State(s): Shared, caller: Caller) -> ApiResult {
    let info = s
        .registry
        .get_log_info(caller.rpc(proto::GetLogInfoRequest {}))
        .await?
        .into_inner();
    let cp = s
        .registry
        .get_checkpoint(caller.rpc(proto::GetCheckpointRequest {}))
        .await?
        .into_inner();
    let mut v = json::log_info(&info);
    v["checkpoint"] = cp.checkpoint.as_ref().map_or(Value::Null, json::checkpoint);
    Ok(Json(v))
}

/// The query of `GET /api/v1/log/entries`.
#[derive(Deserialize)]
pub(super) struct EntriesQuery {
    start: u64,
    end: u64,
}

/// `GET /api/v1/log/entries?start=&end=`.
pub(super) async fn entries(
    State(s): Shared,
    caller: Caller,
    Query(q): Query<EntriesQuery>,
) -> ApiResult {
    let r = s
        .registry
        .get_entries(caller.rpc(proto::GetEntriesRequest {
            start: q.start,
            end: q.end,
        }))
        .await?
        .into_inner();
    Ok(Json(json::entries(&r)))
}

/// The query of `GET /api/v1/log/consistency`.
#[derive(Deserialize)]
pub(super) struct ConsistencyQuery {
    old: u64,
    new: u64,
}

/// `GET /api/v1/log/consistency?old=&new=`.
pub(super) async fn consistency(
    State(s): Shared,
    caller: Caller,
    Query(q): Query<ConsistencyQuery>,
) -> ApiResult {
    let r = s
        .registry
        .get_consistency_proof(caller.rpc(proto::GetConsistencyProofRequest {
            old_size: q.old,
            new_size: q.new,
        }))
        .await?
        .into_inner();
    Ok(Json(json::consistency(q.old, q.new, &r)))
}

/// The query of `GET /api/v1/subjects`.
#[derive(Deserialize)]
pub(super) struct SubjectsQuery {
    name_prefix: Option<String>,
    plugin: Option<String>,
    /// `handler` (the default) or `plugin`.
    family: Option<String>,
    include_revoked: Option<bool>,
    limit: Option<u32>,
    after: Option<String>,
}

/// `GET /api/v1/subjects?name_prefix=&plugin=&family=&include_revoked=`:
/// handlers (or plugins) by name prefix and plugin (ListHandlers).
pub(super) async fn subjects(
    State(s): Shared,
    caller: Caller,
    Query(q): Query<SubjectsQuery>,
) -> ApiResult {
    let family = match q.family.as_deref() {
        None | Some("handler") => proto::Family::Handler,
        Some("plugin") => proto::Family::Plugin,
        Some(other) => {
            return Err(ApiError::bad(
                "invalid_family",
                format!("family is handler or plugin, not {other:?}"),
            ));
        }
    };
    let page_token = page_token(q.after.as_deref())?;
    let r = s
        .registry
        .list_handlers(caller.rpc(proto::ListHandlersRequest {
            name_prefix: q.name_prefix.unwrap_or_default(),
            plugin: q.plugin.unwrap_or_default(),
            include_revoked: q.include_revoked.unwrap_or(false),
            page_size: q.limit.unwrap_or(50),
            page_token,
            family: family as i32,
        }))
        .await?
        .into_inner();
    Ok(Json(json::subjects_page(&r)))
}

/// The body of `POST /api/v1/jobs/cancel`.
#[derive(Deserialize)]
pub(super) struct BulkCancel {
    handler: Option<String>,
    state: Option<String>,
}

/// `POST /api/v1/jobs/cancel` with `{"handler": DID, "state": STATE}`
/// (CancelJobs, `cancel` scope): cancels that handler's jobs in that state
/// (or every unfinished one), a bounded number per call.
pub(super) async fn cancel_many(
    State(s): Shared,
    caller: Caller,
    body: axum::body::Bytes,
) -> ApiResult {
    json_request(&caller)?;
    let b: BulkCancel = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad(
            "invalid_body",
            format!("the body is {{\"handler\": DID, \"state\": STATE}}: {e}"),
        )
    })?;
    let r = s
        .jobs
        .cancel_jobs(caller.rpc(proto::CancelJobsRequest {
            handler: b.handler.unwrap_or_default(),
            state: b.state.unwrap_or_default(),
        }))
        .await?
        .into_inner();
    Ok(Json(json!({ "cancelled": r.cancelled, "more": r.more })))
}

/// The query of `GET /api/v1/log/equivocations`.
#[derive(Deserialize)]
pub(super) struct PageQuery {
    limit: Option<u32>,
    after: Option<String>,
}

/// `GET /api/v1/log/equivocations?limit=&after=`.
pub(super) async fn equivocations(
    State(s): Shared,
    caller: Caller,
    Query(q): Query<PageQuery>,
) -> ApiResult {
    let page_token = page_token(q.after.as_deref())?;
    let r = s
        .registry
        .list_equivocations(caller.rpc(proto::ListEquivocationsRequest {
            page_size: q.limit.unwrap_or(50),
            page_token,
        }))
        .await?
        .into_inner();
    Ok(Json(json::equivocations(&r)))
}

/// The query of `GET /api/v1/subjects/{did}`.
#[derive(Deserialize)]
pub(super) struct ChainQuery {
    from_seq: Option<u64>,
    limit: Option<u32>,
}

/// `GET /api/v1/subjects/{did}`: a handler's or plugin's state and a
/// page of its chain with inclusion proofs.
pub(super) async fn subject(
    State(s): Shared,
    caller: Caller,
    Path(did): Path<String>,
    Query(q): Query<ChainQuery>,
) -> ApiResult {
    let subject = s
        .registry
        .get_subject(caller.rpc(proto::GetSubjectRequest { did: did.clone() }))
        .await?
        .into_inner()
        .subject
        .unwrap_or_default();
    #[allow(unused_mut)] // changed only by the test fault below
    let mut chain = s
        .registry
        .get_chain(caller.rpc(proto::GetChainRequest {
            did,
            from_seq: q.from_seq.unwrap_or(0),
            page_size: q.limit.unwrap_or(50),
        }))
        .await?
        .into_inner();
    #[cfg(debug_assertions)]
    tamper_proof(&mut chain);
    Ok(Json(json::chain(&subject, &chain)))
}

/// A fault for the browser tests only: in a debug build (never in a
/// release build), with `PULSE_LEDGER_TEST_TAMPER_PROOF` set, the first
/// inclusion proof of a chain is sent with one bit flipped, so that a test
/// can check that the page marks that statement not verified.
#[cfg(debug_assertions)]
fn tamper_proof(chain: &mut proto::GetChainResponse) {
    if std::env::var_os("PULSE_LEDGER_TEST_TAMPER_PROOF").is_none() {
        return;
    }
    if let Some(h) = chain
        .entries
        .first_mut()
        .and_then(|e| e.inclusion_proof.first_mut())
        .and_then(|h| h.first_mut())
    {
        *h ^= 1;
    }
}

/// `GET /api/v1/plugins`: plugin sessions on this server and the last
/// refusals.
pub(super) async fn plugins(State(s): Shared, caller: Caller) -> ApiResult {
    let r = s
        .jobs
        .list_plugin_sessions(caller.rpc(proto::ListPluginSessionsRequest {}))
        .await?
        .into_inner();
    Ok(Json(json::sessions(&r)))
}

/// The query of `GET /api/v1/schedules`.
#[derive(Deserialize)]
pub(super) struct SchedulesQuery {
    handler: Option<String>,
    limit: Option<u32>,
    after: Option<String>,
}

/// `GET /api/v1/schedules?handler=&limit=&after=`.
pub(super) async fn schedules(
    State(s): Shared,
    caller: Caller,
    Query(q): Query<SchedulesQuery>,
) -> ApiResult {
    let page_token = page_token(q.after.as_deref())?;
    let r = s
        .jobs
        .list_schedules(caller.rpc(proto::ListSchedulesRequest {
            handler: q.handler.unwrap_or_default(),
            page_size: q.limit.unwrap_or(50),
            page_token,
        }))
        .await?
        .into_inner();
    Ok(Json(json::schedules_page(&r)))
}

fn schedule_id(id: &str) -> Result<Vec<u8>, ApiError> {
    match hex::decode(id) {
        Ok(b) if b.len() == 16 => Ok(b),
        _ => Err(ApiError(crate::api::status::bad_request(
            "id",
            "invalid_schedule_id",
            format!("a schedule ID is 32 hex digits, not {id:?}"),
        ))),
    }
}

/// `POST /api/v1/schedules/{id}/pause` and `/resume` (PauseSchedule).
async fn set_paused(s: &ConsoleState, caller: &Caller, id: &str, paused: bool) -> ApiResult {
    json_request(caller)?;
    let id = schedule_id(id)?;
    let r = s
        .jobs
        .pause_schedule(caller.rpc(proto::PauseScheduleRequest { id, paused }))
        .await?
        .into_inner();
    Ok(Json(
        r.schedule.as_ref().map_or(Value::Null, json::schedule),
    ))
}

/// `POST /api/v1/schedules/{id}/pause`.
pub(super) async fn pause(State(s): Shared, caller: Caller, Path(id): Path<String>) -> ApiResult {
    set_paused(&s, &caller, &id, true).await
}

/// `POST /api/v1/schedules/{id}/resume`.
pub(super) async fn resume(State(s): Shared, caller: Caller, Path(id): Path<String>) -> ApiResult {
    set_paused(&s, &caller, &id, false).await
}

/// `GET /api/v1/budgets/{handler}` (GetBudget; `default` for the
/// default budget).
pub(super) async fn budget(
    State(s): Shared,
    caller: Caller,
    Path(handler): Path<String>,
) -> ApiResult {
    let handler = if handler == "default" {
        String::new()
    } else {
        handler
    };
    let r = s
        .jobs
        .get_budget(caller.rpc(proto::GetBudgetRequest { handler }))
        .await?
        .into_inner();
    Ok(Json(json::budget(&r)))
}

/// Any other `/api/…` path.
pub(super) async fn no_route() -> ApiError {
    use tonic_types::StatusExt as _;
    ApiError(tonic::Status::with_error_details(
        tonic::Code::NotFound,
        "no such API path: spec/console.md lists them",
        tonic_types::ErrorDetails::with_error_info(
            "no_such_path",
            crate::api::ERROR_DOMAIN,
            std::collections::HashMap::new(),
        ),
    ))
}
