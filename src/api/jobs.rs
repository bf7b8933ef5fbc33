//! The Jobs gRPC service: thin handlers over the job store; the handler's
//! schema comes from the ledger.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

mod enqueue_stream;
mod schedules;

use super::proto::{self, jobs_server::Jobs};
use super::status::{ERROR_DOMAIN, auth_status, bad_request, parse_did, to_status};
use crate::auth::{Access, AccessCell, AuthCode, AuthError, Grant};
use crate::ledger::{Ledger, SubjectRecord};
use crate::pulse::{
    Attempt, Budget, BudgetUse, CancelReason, DeadReason, GroupOp, HoldReason, Job, JobError,
    JobFilter, JobId, JobRequest, JobState, JobStore, PulseErrorCode, PulseHandle,
};
use crate::{Did, Family, HandlerSchema, Right, Schema};

/// Most requests in one EnqueueBatch.
const MAX_BATCH: usize = 1000;
/// How often WatchJob looks for changes, ms.
const WATCH_POLL_MS: u64 = 200;

/// The jobs API over a job store and the ledger that holds the handlers.
#[derive(Clone)]
pub struct JobsService {
    ledger: Arc<Ledger>,
    store: Arc<JobStore>,
    enqueuer: mpsc::Sender<Pending>,
    /// The running dispatcher, when the server runs one: cancels go
    /// through it (so a running attempt's plugin is told at once), enqueues
    /// wake it, and budgets report its live reservations.
    pulse: Option<PulseHandle>,
    /// Handler schemas by the log index of the statement that carries
    /// them. Log entries never change, so an entry read and verified once
    /// need not be again: enqueues would otherwise verify the schema's
    /// signature for every job.
    schemas: Arc<std::sync::Mutex<HashMap<u64, HandlerSchema>>>,
    /// Who may call: every RPC checks the caller's bearer token here.
    access: Arc<AccessCell>,
    /// How much DID callers (anyone can sign a DID token) may enqueue per
    /// client address; operator tokens are not limited.
    did_enqueues: Option<Arc<crate::auth::RateLimiter>>,
    /// The plugin sessions, when the server hosts plugins.
    sessions: Option<Arc<crate::plugin::Sessions>>,
    /// Handlers' input_schema documents, compiled once each.
    input_schemas: Arc<crate::pulse::SchemaCache>,
    /// This server as `ListNodes` describes it when it runs alone (a
    /// node's own record is in the store).
    this: super::nodes::NodeRecord,
}

/// Jobs in the queues, as [`JobsService::queue_depths`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepths {
    /// Ready to run now.
    pub ready: usize,
    /// Queued before their run_at, or retrying.
    pub delayed: usize,
    /// Running (on this node, or on any node of a shared store as last
    /// read).
    pub running: usize,
    /// Held (budget, plugin).
    pub held: usize,
    /// The handlers with the most ready jobs, most first.
    pub handlers: Vec<(Did, usize)>,
    /// Handlers with ready jobs.
    pub with_ready: usize,
}

/// What a `ListJobs` page costs a DID caller's allowance.
const LIST_UNITS: u32 = 10;

/// A job's cost against a DID caller's enqueue allowance: one unit per
/// started 64 KiB of payload (1 to 16).
pub(crate) fn enqueue_units(payload_len: usize) -> u32 {
    u32::try_from(payload_len.div_ceil(64 * 1024).max(1)).unwrap_or(u32::MAX)
}

/// Most schemas remembered before the cache starts over.
const MAX_CACHED_SCHEMAS: usize = 100_000;

/// One Enqueue waiting for the next group commit.
type Pending = (
    (Did, HandlerSchema, JobRequest),
    tokio::sync::oneshot::Sender<Result<(Job, bool), JobError>>,
);

impl JobsService {
    /// A service over `store`, resolving handlers in `ledger`.
    /// Concurrent Enqueue calls are gathered by a thread of the service's
    /// own and committed together under one fsync.
    pub fn new(ledger: Arc<Ledger>, store: Arc<JobStore>) -> JobsService {
        let (enqueuer, mut queue) = mpsc::channel::<Pending>(4 * MAX_BATCH);
        let group_store = Arc::clone(&store);
        // A thread of its own, as the log's writer has: a group goes from
        // the calls to the store with one hand-off, not two (a task, then
        // the blocking pool). It ends when the last service is dropped.
        let spawned = std::thread::Builder::new()
            .name("job-enqueuer".into())
            .spawn(move || {
                while let Some(first) = queue.blocking_recv() {
                    let mut group = vec![first];
                    while group.len() < MAX_BATCH {
                        match queue.try_recv() {
                            Ok(p) => group.push(p),
                            Err(_) => break,
                        }
                    }
                    let (items, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
                    let results = group_store.enqueue_batch(&items, crate::clock::unix_ms());
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(result);
                    }
                }
            });
        if let Err(e) = spawned {
            // Calls then find the queue closed and answer `unavailable`.
            tracing::error!(error = %e, "the enqueue thread could not be started");
        }
        JobsService {
            ledger,
            store,
            enqueuer,
            pulse: None,
            schemas: Arc::default(),
            access: Arc::new(AccessCell::new(Access::Open)),
            did_enqueues: None,
            sessions: None,
            input_schemas: Arc::default(),
            this: super::nodes::NodeRecord {
                name: String::new(),
                listen: String::new(),
                started_ms: crate::clock::unix_ms(),
                seen_ms: 0,
                log_size: 0,
                sessions: 0,
                running: 0,
                version: env!("CARGO_PKG_VERSION").to_owned(),
            },
        }
    }

    /// Requires bearer tokens with scopes (the default is [`Access::Open`]);
    /// the cell may be replaced while the service runs.
    pub fn with_access(mut self, access: Arc<AccessCell>) -> JobsService {
        self.access = access;
        self
    }

    /// The caller's grant, from its `authorization` header.
    fn grant<T>(&self, request: &Request<T>) -> Result<Arc<Grant>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        self.access
            .authenticate(header)
            .map_err(|e| self.refuse(&e, request.remote_addr()))
    }

    /// Job `id`, if the caller holds `right` over its handler's jobs. A
    /// caller without the right over every handler gets the same refusal
    /// whether or not the job exists, so IDs cannot be probed.
    async fn job_for(
        &self,
        grant: &Grant,
        right: Right,
        id: JobId,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<Job, Status> {
        let found = self.blocking(move |s| s.get(&id)).await;
        match &found {
            Ok(job) if self.may(grant, right, &job.handler) => return found,
            Err(_) if grant.holds_everywhere(right) => return found,
            _ => {}
        }
        let e = AuthError::new(
            AuthCode::ScopeMissing,
            format!(
                "{} may not {right} job {id}, or there is no such job",
                grant.name()
            ),
        );
        Err(self.refuse(&e, peer))
    }

    /// Whether the caller holds `right` over `handler`'s jobs: its access
    /// list decides (its last schema, revoked or not), `admin` always.
    fn may(&self, grant: &Grant, right: Right, handler: &Did) -> bool {
        grant.is_admin()
            || self.subject(handler).is_ok_and(|(owner, schema)| {
                grant.may(right, handler, &owner, schema.access_members(right))
            })
    }

    /// The job an Enqueue answers with. A job that already existed under
    /// the idempotency key may be someone else's: a caller that may not
    /// read the handler's jobs learns its ID only, not its state or result.
    fn enqueued_message(&self, grant: &Grant, job: &Job, existing: bool) -> proto::Job {
        if !existing || self.may(grant, Right::Read, &job.handler) {
            return job_message(job);
        }
        proto::Job {
            id: job.id.0.to_vec(),
            handler: job.handler.to_string(),
            idempotency_key: job.idempotency_key.clone().unwrap_or_default(),
            ..Default::default()
        }
    }

    /// Ok if the caller holds `right` over `handler`'s jobs.
    fn require_on(
        &self,
        grant: &Grant,
        right: Right,
        handler: &Did,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<(), Status> {
        if grant.is_admin() {
            return Ok(());
        }
        let (owner, schema) = self.subject(handler)?;
        grant
            .require_on(right, handler, &owner, schema.access_members(right))
            .map_err(|e| self.refuse(&e, peer))
    }

    /// Jobs in the queues now, and the handlers with the most ready jobs
    /// (at most `deepest`), for the web console's overview: the caller
    /// needs `read` over every handler's jobs.
    ///
    /// # Errors
    /// The caller's token is missing, unknown or lacks the scope.
    pub fn queue_depths<T>(
        &self,
        request: &Request<T>,
        deepest: usize,
    ) -> Result<QueueDepths, Status> {
        let grant = self.grant(request)?;
        grant
            .require_everywhere(Right::Read)
            .map_err(|e| self.refuse(&e, request.remote_addr()))?;
        let (ready, delayed, running, held) = self.store.queue_sizes();
        let (handlers, with_ready) = self.store.deepest_queues(deepest);
        Ok(QueueDepths {
            ready,
            delayed,
            running,
            held,
            handlers,
            with_ready,
        })
    }

    /// A refused caller: counted, logged (rate-limited) and answered.
    fn refuse(&self, e: &AuthError, peer: Option<std::net::SocketAddr>) -> Status {
        self.access.refused(e, peer);
        auth_status(e)
    }

    /// Limits what DID callers may enqueue, per client address
    /// ([`enqueue_units`] per job).
    pub fn with_did_enqueue_limit(mut self, limiter: Arc<crate::auth::RateLimiter>) -> JobsService {
        self.did_enqueues = Some(limiter);
        self
    }

    /// Takes `units` from a DID caller's enqueue allowance.
    fn admit_enqueue(
        &self,
        grant: &Grant,
        units: u32,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<(), Status> {
        match &self.did_enqueues {
            Some(l) if grant.did().is_some() => l
                .check(peer.map(|p| p.ip()), units, std::time::Instant::now())
                .map_err(|e| self.refuse(&e, peer)),
            _ => Ok(()),
        }
    }

    /// Routes cancels, wake-ups and budget reservations through a running
    /// dispatcher.
    pub fn with_dispatcher(mut self, pulse: PulseHandle) -> JobsService {
        self.pulse = Some(pulse);
        self
    }

    /// Names this server for `ListNodes`: its node name (empty when it
    /// holds its store alone) and the address it listens on.
    pub fn with_node(mut self, name: Option<&str>, listen: std::net::SocketAddr) -> JobsService {
        self.this.name = name.unwrap_or_default().to_owned();
        self.this.listen = listen.to_string();
        self
    }

    /// Lists these plugin sessions (`ListPluginSessions`).
    pub fn with_sessions(mut self, sessions: Arc<crate::plugin::Sessions>) -> JobsService {
        self.sessions = Some(sessions);
        self
    }

    /// Cancels `ids` (through the dispatcher when one runs, so running
    /// attempts are told); how many it cancelled. Jobs that finished
    /// meanwhile are not counted.
    fn cancel_ids(&self, store: &JobStore, ids: Vec<JobId>) -> Result<u64, JobError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let results = match &self.pulse {
            Some(p) => p.cancel_many(ids)?,
            None => {
                let now = crate::clock::unix_ms();
                let ops: Vec<(JobId, GroupOp<()>)> = ids
                    .into_iter()
                    .map(|id| {
                        let op: GroupOp<()> = Box::new(move |j: &mut Job| {
                            j.cancel(CancelReason::Requested, now).map(|_| ())
                        });
                        (id, op)
                    })
                    .collect();
                store.update_many(now, ops)
            }
        };
        let mut cancelled = 0;
        for r in results {
            match r {
                Ok(()) => cancelled += 1,
                Err(JobError::Storage(e)) => return Err(JobError::Storage(e)),
                Err(_) => {}
            }
        }
        Ok(cancelled)
    }

    fn wake(&self) {
        if let Some(p) = &self.pulse {
            p.wake();
        }
    }
}

fn status(code: Code, reason: &str, message: String) -> Status {
    Status::with_error_details(
        code,
        format!("{reason}: {message}"),
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new()),
    )
}

/// A job's rejection as an item of a batch or stream answers it: the
/// status `Enqueue` would have returned, with its spec code.
fn job_error(s: &Status) -> proto::JobError {
    proto::JobError {
        status_code: s.code() as i32,
        code: s
            .get_details_error_info()
            .map(|i| i.reason)
            .unwrap_or_default(),
        message: s.message().to_owned(),
    }
}

fn job_status(e: &JobError) -> Status {
    match e {
        JobError::Rejected(p) => {
            let code = match p.code() {
                PulseErrorCode::WrongState
                | PulseErrorCode::StaleLease
                | PulseErrorCode::NotDue
                | PulseErrorCode::InvalidJsonSchema => Code::FailedPrecondition,
                _ => Code::InvalidArgument,
            };
            status(code, p.code().as_str(), p.message().to_owned())
        }
        JobError::NotFound(id) => status(Code::NotFound, "not_found", format!("no job {id}")),
        JobError::ScheduleNotFound(id) => {
            status(Code::NotFound, "not_found", format!("no schedule {id}"))
        }
        JobError::Storage(l) => to_status(l),
        JobError::HandlerFull(h) => status(
            Code::ResourceExhausted,
            "handler_full",
            format!("handler {h} is at its max_concurrency or budget on all nodes"),
        ),
    }
}

fn parse_id(bytes: &[u8]) -> Result<JobId, Status> {
    bytes
        .try_into()
        .map(JobId)
        .map_err(|_| bad_request("id", "invalid_job_id", "a job ID is 16 bytes"))
}

fn state_name(s: &JobState) -> (&'static str, &'static str) {
    (s.as_str(), s.reason())
}

/// A state filter: empty for every state.
fn parse_state(name: &str) -> Result<Option<JobState>, Status> {
    Ok(Some(match name {
        "" => return Ok(None),
        "queued" => JobState::Queued,
        "held" => JobState::Held(HoldReason::Budget),
        "running" => JobState::Running,
        "retrying" => JobState::Retrying,
        "succeeded" => JobState::Succeeded,
        "dead" => JobState::Dead(DeadReason::AttemptsExhausted),
        "cancelled" => JobState::Cancelled(CancelReason::Requested),
        other => {
            return Err(bad_request(
                "state",
                "invalid_state",
                format!(
                    "{other:?} is not one of queued, held, running, retrying, succeeded, dead, cancelled"
                ),
            ));
        }
    }))
}

/// Most jobs one CancelJobs call cancels.
const BULK_CANCEL_MAX: u64 = 10_000;

/// The wire form of a job.
pub(crate) fn job_message(j: &Job) -> proto::Job {
    let (state, reason) = state_name(&j.state);
    proto::Job {
        id: j.id.0.to_vec(),
        handler: j.handler.to_string(),
        state: state.to_owned(),
        reason: reason.to_owned(),
        priority: u32::from(j.priority),
        run_at_ms: j.run_at,
        attempts: j.attempts.len() as u32,
        max_attempts: j.limits.max_attempts,
        timeout_ms: j.limits.timeout_ms,
        max_cost: j.limits.max_cost.unwrap_or(0),
        total_cost: j.total_cost,
        progress_percent: u32::from(j.progress.percent),
        progress_message: j.progress.message.clone(),
        result: j.result.clone().unwrap_or_default(),
        last_error: j.last_error.clone().unwrap_or_default(),
        retry_at_ms: j.retry_at.unwrap_or(0),
        updated_at_ms: j.updated_at,
        idempotency_key: j.idempotency_key.clone().unwrap_or_default(),
        parent: j.parent.map(|p| p.0.to_vec()).unwrap_or_default(),
        attempt_history: j.attempts.iter().map(attempt_message).collect(),
        series_start: j.series_start,
        payload: j.payload.clone(),
    }
}

fn attempt_message(a: &Attempt) -> proto::JobAttempt {
    let (handler_index, plugin_index) = a.authorised_under.unwrap_or((0, 0));
    proto::JobAttempt {
        number: a.number,
        started_at_ms: a.started_at,
        ended_at_ms: a.ended_at.unwrap_or(0),
        outcome: a.outcome.map(|o| o.as_str()).unwrap_or("").to_owned(),
        error: a.error.clone().unwrap_or_default(),
        cost: a.cost,
        authorised: a.authorised_under.is_some(),
        handler_index,
        plugin_index,
        lease: a.lease.0.to_vec(),
        node: a.node.clone().unwrap_or_default(),
    }
}

impl JobsService {
    /// The handler's DID, current key and current schema: registered, a
    /// handler, not revoked.
    fn handler(&self, did: &str) -> Result<(Did, Did, HandlerSchema), Status> {
        let did = parse_did("handler", did)?;
        let (rec, schema) = self.record(&did)?;
        if rec.head.revoked {
            return Err(status(
                Code::FailedPrecondition,
                "handler_revoked",
                format!("{did} is revoked; it takes no jobs"),
            ));
        }
        Ok((did, rec.head.key, schema))
    }

    /// A handler's current key and its schema in force, revoked or not.
    fn subject(&self, did: &Did) -> Result<(Did, HandlerSchema), Status> {
        self.record(did).map(|(rec, schema)| (rec.head.key, schema))
    }

    fn record(&self, did: &Did) -> Result<(SubjectRecord, HandlerSchema), Status> {
        // The record is read every time (a revoke, update or rotation
        // takes effect at once); only the schema statement it points at
        // is cached.
        let rec = self.ledger.subject(did).map_err(|e| to_status(&e))?;
        if rec.head.family != Family::Handler {
            return Err(status(
                Code::InvalidArgument,
                "not_a_handler",
                format!("{did} is a plugin"),
            ));
        }
        let cached = self
            .schemas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&rec.schema_index)
            .cloned();
        if let Some(schema) = cached {
            return Ok((rec, schema));
        }
        let state = self.ledger.subject_state(did).map_err(|e| to_status(&e))?;
        let Schema::Handler(schema) = state.schema else {
            return Err(status(
                Code::InvalidArgument,
                "not_a_handler",
                format!("{did} is a plugin"),
            ));
        };
        // Cached only if no update landed between the two reads, so the
        // schema is surely the one at that index.
        let again = self.ledger.subject(did).map_err(|e| to_status(&e))?;
        if again.schema_index == rec.schema_index {
            let mut cache = self.schemas.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= MAX_CACHED_SCHEMAS {
                cache.clear();
            }
            cache.insert(rec.schema_index, schema.clone());
        }
        Ok((rec, schema))
    }

    fn request(
        &self,
        r: &proto::EnqueueRequest,
        grant: &Grant,
        peer: Option<std::net::SocketAddr>,
        trace_parent: Option<String>,
    ) -> Result<(Did, HandlerSchema, JobRequest), Status> {
        let (did, owner, schema) = self.handler(&r.handler)?;
        grant
            .require_on(
                Right::Enqueue,
                &did,
                &owner,
                schema.access_members(Right::Enqueue),
            )
            .map_err(|e| self.refuse(&e, peer))?;
        // The payload must match the handler's signed input_schema
        // (spec/pulse.md, "Payload schemas"); size rules come first.
        if let Some(text) = &schema.input_schema {
            if r.payload.len() <= crate::pulse::MAX_PAYLOAD_BYTES {
                self.input_schemas
                    .check(text, &r.payload, crate::pulse::Checked::Payload)
                    .map_err(|e| job_status(&JobError::Rejected(e)))?;
            }
        }
        let parent = if r.parent.is_empty() {
            None
        } else {
            let id = parse_id(&r.parent)?;
            // Whether a job exists is only told to callers who may read
            // every handler's jobs, and a parent of a handler whose read
            // list leaves them out is "not found" like a missing one; for
            // other callers the parent is recorded as given.
            if grant.holds_everywhere(Right::Read) {
                let visible = self
                    .store
                    .get(&id)
                    .is_ok_and(|p| self.may(grant, Right::Read, &p.handler));
                if !visible {
                    return Err(status(
                        Code::NotFound,
                        "parent_not_found",
                        format!("no parent job {id} that this caller may read"),
                    ));
                }
            }
            Some(id)
        };
        let priority = u8::try_from(r.priority).unwrap_or(u8::MAX);
        let req = JobRequest {
            payload: r.payload.clone(),
            priority,
            run_at_ms: r.run_at_ms,
            idempotency_key: (!r.idempotency_key.is_empty()).then(|| r.idempotency_key.clone()),
            max_attempts: (r.max_attempts != 0).then_some(r.max_attempts),
            timeout_ms: (r.timeout_ms != 0).then_some(r.timeout_ms),
            max_cost: (r.max_cost != 0).then_some(r.max_cost),
            parent,
            trace_parent,
        };
        Ok((did, schema, req))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&JobStore) -> Result<T, JobError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Status::internal(format!("internal: a worker failed: {e}")))?
            .map_err(|e| job_status(&e))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Jobs for JobsService {
    async fn enqueue(
        &self,
        request: Request<proto::EnqueueRequest>,
    ) -> Result<Response<proto::EnqueueResponse>, Status> {
        let grant = self.grant(&request)?;
        let peer = request.remote_addr();
        let trace = crate::telemetry::rpc_trace(&request);
        let req = request.into_inner();
        self.admit_enqueue(&grant, enqueue_units(req.payload.len()), peer)?;
        let item = self.request(&req, &grant, peer, trace)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let unavailable = || Status::unavailable("unavailable: the server is shutting down");
        self.enqueuer
            .send((item, reply))
            .await
            .map_err(|_| unavailable())?;
        let (job, existing) = answer
            .await
            .map_err(|_| unavailable())?
            .map_err(|e| job_status(&e))?;
        self.wake();
        Ok(Response::new(proto::EnqueueResponse {
            job: Some(self.enqueued_message(&grant, &job, existing)),
            existing,
        }))
    }

    async fn enqueue_batch(
        &self,
        request: Request<proto::EnqueueBatchRequest>,
    ) -> Result<Response<proto::EnqueueBatchResponse>, Status> {
        let grant = self.grant(&request)?;
        let peer = request.remote_addr();
        let trace = crate::telemetry::rpc_trace(&request);
        let reqs = request.into_inner().jobs;
        if reqs.is_empty() || reqs.len() > MAX_BATCH {
            return Err(status(
                Code::InvalidArgument,
                "invalid_batch",
                format!("a batch holds 1 to {MAX_BATCH} jobs, not {}", reqs.len()),
            ));
        }
        let units = reqs
            .iter()
            .map(|r| enqueue_units(r.payload.len()))
            .fold(0u32, u32::saturating_add);
        self.admit_enqueue(&grant, units, peer)?;
        // Requests whose handler does not resolve, or is outside the
        // token's scopes, fail alone; the rest go to the store together.
        let resolved: Vec<Result<_, Status>> = reqs
            .iter()
            .map(|r| self.request(r, &grant, peer, trace.clone()))
            .collect();
        let items: Vec<_> = resolved
            .iter()
            .filter_map(|r| r.as_ref().ok().cloned())
            .collect();
        let mut stored = self
            .blocking(move |s| Ok(s.enqueue_batch(&items, crate::clock::unix_ms())))
            .await?
            .into_iter();
        let rejected = |s: Status| proto::enqueue_result::Result::Rejected(job_error(&s));
        self.wake();
        let results = resolved
            .into_iter()
            .map(|r| {
                let result = match r {
                    Err(s) => rejected(s),
                    Ok(_) => match stored.next() {
                        Some(Ok((job, existing))) => {
                            proto::enqueue_result::Result::Accepted(proto::EnqueueResponse {
                                job: Some(self.enqueued_message(&grant, &job, existing)),
                                existing,
                            })
                        }
                        Some(Err(e)) => rejected(job_status(&e)),
                        None => rejected(Status::internal("internal: missing result")),
                    },
                };
                proto::EnqueueResult {
                    result: Some(result),
                }
            })
            .collect();
        Ok(Response::new(proto::EnqueueBatchResponse { results }))
    }

    type EnqueueStreamStream = BoxStream<proto::EnqueueStreamResponse>;

    async fn enqueue_stream(
        &self,
        request: Request<tonic::Streaming<proto::EnqueueRequest>>,
    ) -> Result<Response<Self::EnqueueStreamStream>, Status> {
        let grant = self.grant(&request)?;
        let peer = request.remote_addr();
        let trace = crate::telemetry::rpc_trace(&request);
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes().to_vec());
        Ok(Response::new(self.stream_enqueues(
            enqueue_stream::Caller {
                grant,
                header,
                peer,
                trace,
            },
            request.into_inner(),
        )))
    }

    async fn get_job(
        &self,
        request: Request<proto::GetJobRequest>,
    ) -> Result<Response<proto::GetJobResponse>, Status> {
        let grant = self.grant(&request)?;
        let peer = request.remote_addr();
        let id = parse_id(&request.into_inner().id)?;
        let job = self.job_for(&grant, Right::Read, id, peer).await?;
        Ok(Response::new(proto::GetJobResponse {
            job: Some(job_message(&job)),
        }))
    }

    async fn list_jobs(
        &self,
        request: Request<proto::ListJobsRequest>,
    ) -> Result<Response<proto::ListJobsResponse>, Status> {
        let grant = self.grant(&request)?;
        let peer = request.remote_addr();
        // A page may read up to LIST_SCAN index entries: DID callers pay
        // for it from their allowance.
        self.admit_enqueue(&grant, LIST_UNITS, peer)?;
        let req = request.into_inner();
        let handler = if req.handler.is_empty() {
            grant
                .require_everywhere(Right::Read)
                .map_err(|e| self.refuse(&e, peer))?;
            None
        } else {
            let did = parse_did("handler", &req.handler)?;
            self.require_on(&grant, Right::Read, &did, peer)?;
            Some(did)
        };
        let filter = JobFilter {
            state: parse_state(&req.state)?,
            handler,
            since_ms: (req.since_ms > 0).then_some(req.since_ms),
            oldest_first: req.oldest_first,
            live: false,
        };
        let cursor = if req.page_token.is_empty() {
            None
        } else {
            Some(parse_id(&req.page_token)?)
        };
        let limit = if req.page_size == 0 {
            100
        } else {
            req.page_size.min(1000) as usize
        };
        let (jobs, next) = self
            .blocking(move |s| s.list_jobs(&filter, cursor.as_ref(), limit))
            .await?;
        let next = next.map(|id| id.0.to_vec()).unwrap_or_default();
        // A listing of every handler leaves out the jobs of handlers whose
        // read list leaves the caller out (`tokens` not named).
        let mut judged: HashMap<Did, bool> = HashMap::new();
        let jobs: Vec<Job> = jobs
            .into_iter()
            .filter(|j| {
                *judged
                    .entry(j.handler.clone())
                    .or_insert_with(|| self.may(&grant, Right::Read, &j.handler))
            })
            .collect();
        Ok(Response::new(proto::ListJobsResponse {
            jobs: jobs.iter().map(job_message).collect(),
            next_page_token: next,
        }))
    }

    type WatchJobStream = BoxStream<proto::Job>;

    async fn watch_job(
        &self,
        request: Request<proto::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let grant = self.grant(&request)?;
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes().to_vec());
        let peer = request.remote_addr();
        let id = parse_id(&request.into_inner().id)?;
        // Registered before the first read: a change committed after it
        // wakes the watch at once.
        let watch = self.store.watch(id);
        let first = self.job_for(&grant, Right::Read, id, peer).await?;
        let (tx, rx) = mpsc::channel(16);
        let service = self.clone();
        tokio::spawn(async move {
            let mut last = first;
            if tx.send(Ok(job_message(&last))).await.is_err() {
                return;
            }
            while !last.state.is_terminal() {
                // Woken by each change to the job; the poll only checks the
                // token again (and covers a change written another way).
                tokio::select! {
                    () = watch.changed() => {}
                    () = tokio::time::sleep(std::time::Duration::from_millis(WATCH_POLL_MS)) => {}
                    () = tx.closed() => return,
                }
                // The token is checked again on every poll: one revoked by
                // a reload, a DID token past its expiry, or a right the
                // handler's owner took back ends the stream it opened.
                let still = match service.access.authenticate(header.as_deref()) {
                    Ok(g) => service.job_for(&g, Right::Read, id, peer).await,
                    Err(e) => Err(service.refuse(&e, peer)),
                };
                match still {
                    Ok(job) if job != last => {
                        last = job;
                        if tx.send(Ok(job_message(&last))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_job_log(
        &self,
        request: Request<proto::GetJobLogRequest>,
    ) -> Result<Response<proto::GetJobLogResponse>, Status> {
        let grant = self.grant(&request)?;
        let peer = request.remote_addr();
        let req = request.into_inner();
        let id = parse_id(&req.id)?;
        self.job_for(&grant, Right::Read, id, peer).await?;
        let limit = if req.page_size == 0 {
            100
        } else {
            req.page_size.min(1000) as usize
        };
        let after = req.after_seq;
        let (job, lines) = self
            .blocking(move |s| Ok((s.get(&id)?, s.log(&id, after, limit)?)))
            .await?;
        Ok(Response::new(proto::GetJobLogResponse {
            next_after_seq: lines.last().map_or(after, |l| l.seq),
            finished: job.state.is_terminal(),
            lines: lines
                .into_iter()
                .map(|l| proto::JobLogLine {
                    seq: l.seq,
                    attempt: l.attempt,
                    at_ms: l.at_ms,
                    line: l.line,
                })
                .collect(),
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<proto::CancelJobRequest>,
    ) -> Result<Response<proto::CancelJobResponse>, Status> {
        let grant = self.grant(&request)?;
        let peer = request.remote_addr();
        let id = parse_id(&request.into_inner().id)?;
        self.job_for(&grant, Right::Cancel, id, peer).await?;
        let pulse = self.pulse.clone();
        let job = self
            .blocking(move |s| {
                match pulse {
                    Some(p) => p.cancel(id)?,
                    None => {
                        let now = crate::clock::unix_ms();
                        s.update(&id, now, |j| {
                            j.cancel(CancelReason::Requested, now).map(|_| ())
                        })?;
                    }
                }
                s.get(&id)
            })
            .await?;
        Ok(Response::new(proto::CancelJobResponse {
            job: Some(job_message(&job)),
        }))
    }

    async fn cancel_jobs(
        &self,
        request: Request<proto::CancelJobsRequest>,
    ) -> Result<Response<proto::CancelJobsResponse>, Status> {
        let grant = self.grant(&request)?;
        let peer = request.remote_addr();
        self.admit_enqueue(&grant, LIST_UNITS, peer)?;
        let req = request.into_inner();
        let handler = if req.handler.is_empty() {
            grant
                .require_everywhere(Right::Cancel)
                .map_err(|e| self.refuse(&e, peer))?;
            None
        } else {
            let did = parse_did("handler", &req.handler)?;
            self.require_on(&grant, Right::Cancel, &did, peer)?;
            Some(did)
        };
        // No state: every live job, in one pass of the live index.
        let state = match parse_state(&req.state)? {
            None => None,
            Some(s) if !s.is_terminal() => Some(s),
            Some(s) => {
                return Err(bad_request(
                    "state",
                    "invalid_state",
                    format!(
                        "{} jobs are finished and cannot be cancelled: name queued, held, running or retrying",
                        s.as_str()
                    ),
                ));
            }
        };
        let service = self.clone();
        let (cancelled, more) = self
            .blocking(move |s| {
                let mut cancelled = 0u64;
                let mut judged: HashMap<Did, bool> = HashMap::new();
                let filter = JobFilter {
                    state,
                    live: true,
                    handler,
                    oldest_first: true,
                    ..JobFilter::default()
                };
                let mut cursor = None;
                loop {
                    if cancelled >= BULK_CANCEL_MAX {
                        return Ok((cancelled, true));
                    }
                    let room = (BULK_CANCEL_MAX - cancelled).min(1000) as usize;
                    let (jobs, next) = s.list_jobs(&filter, cursor.as_ref(), room)?;
                    // Every handler's jobs: only those the caller may
                    // cancel by the handler's access list.
                    let ids: Vec<JobId> = jobs
                        .iter()
                        .filter(|j| {
                            *judged
                                .entry(j.handler.clone())
                                .or_insert_with(|| service.may(&grant, Right::Cancel, &j.handler))
                        })
                        .map(|j| j.id)
                        .collect();
                    cancelled += service.cancel_ids(s, ids)?;
                    match next {
                        Some(n) => cursor = Some(n),
                        None => return Ok((cancelled, false)),
                    }
                }
            })
            .await?;
        if cancelled > 0 {
            tracing::info!(
                cancelled,
                handler = %req.handler,
                state = %req.state,
                "bulk cancel"
            );
        }
        Ok(Response::new(proto::CancelJobsResponse { cancelled, more }))
    }

    async fn retry_job(
        &self,
        request: Request<proto::RetryJobRequest>,
    ) -> Result<Response<proto::RetryJobResponse>, Status> {
        let grant = self.grant(&request)?;
        let peer = request.remote_addr();
        let id = parse_id(&request.into_inner().id)?;
        let job = self.job_for(&grant, Right::Enqueue, id, peer).await?;
        // A revoked handler's jobs would only be refused again.
        self.handler(&job.handler.to_string())?;
        let job = self
            .blocking(move |s| {
                let now = crate::clock::unix_ms();
                s.update(&id, now, |j| j.retry(now))?;
                s.get(&id)
            })
            .await?;
        self.wake();
        Ok(Response::new(proto::RetryJobResponse {
            job: Some(job_message(&job)),
        }))
    }

    async fn get_budget(
        &self,
        request: Request<proto::GetBudgetRequest>,
    ) -> Result<Response<proto::GetBudgetResponse>, Status> {
        let grant = self.grant(&request)?;
        let peer = request.remote_addr();
        let handler = request.into_inner().handler;
        let did = if handler.is_empty() {
            grant
                .require_everywhere(Right::Read)
                .map_err(|e| self.refuse(&e, peer))?;
            None
        } else {
            let did = parse_did("handler", &handler)?;
            self.require_on(&grant, Right::Read, &did, peer)?;
            Some(did)
        };
        let pulse = self.pulse.clone();
        let (budget, used) = self
            .blocking(move |s| match did {
                Some(d) => {
                    let used = match pulse {
                        Some(p) => p.budget_use(d.clone())?,
                        None => {
                            let (spent_hour, spent_day) = s.spent(&d, crate::clock::unix_ms())?;
                            BudgetUse {
                                spent_hour,
                                spent_day,
                                reserved: 0,
                            }
                        }
                    };
                    Ok((s.budget(&d)?, used))
                }
                None => Ok((s.default_budget()?, BudgetUse::default())),
            })
            .await?;
        Ok(Response::new(proto::GetBudgetResponse {
            per_hour: budget.per_hour.unwrap_or(0),
            per_day: budget.per_day.unwrap_or(0),
            spent_hour: used.spent_hour,
            spent_day: used.spent_day,
            reserved: used.reserved,
        }))
    }

    async fn set_budget(
        &self,
        request: Request<proto::SetBudgetRequest>,
    ) -> Result<Response<proto::SetBudgetResponse>, Status> {
        let grant = self.grant(&request)?;
        let peer = request.remote_addr();
        let req = request.into_inner();
        let did = if req.handler.is_empty() {
            grant
                .require_everywhere(Right::Budget)
                .map_err(|e| self.refuse(&e, peer))?;
            None
        } else {
            let (did, _, _) = self.handler(&req.handler)?;
            self.require_on(&grant, Right::Budget, &did, peer)?;
            Some(did)
        };
        let budget = Budget {
            per_hour: (req.per_hour != 0).then_some(req.per_hour),
            per_day: (req.per_day != 0).then_some(req.per_day),
        };
        // A handler's own budget replaces the operator's default, so a DID
        // caller (an owner, or a client it named) may only set one within
        // the default: a stranger's handler cannot lift its own limit.
        if grant.did().is_some() {
            let default = self.blocking(|s| s.default_budget()).await?;
            let within = |asked: Option<u64>, cap: Option<u64>| match cap {
                None => true,
                Some(c) => asked.is_some_and(|a| a <= c),
            };
            if !within(budget.per_hour, default.per_hour)
                || !within(budget.per_day, default.per_day)
            {
                let show =
                    |b: Option<u64>| b.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
                return Err(status(
                    Code::PermissionDenied,
                    "budget_above_default",
                    format!(
                        "a DID caller may set a handler's budget only within the operator's default \
                         (per_hour {}, per_day {}); asked per_hour {}, per_day {}",
                        show(default.per_hour),
                        show(default.per_day),
                        show(budget.per_hour),
                        show(budget.per_day)
                    ),
                ));
            }
        }
        self.blocking(move |s| s.set_budget(did.as_ref(), budget))
            .await?;
        Ok(Response::new(proto::SetBudgetResponse {}))
    }

    async fn revoke_token(
        &self,
        request: Request<proto::RevokeTokenRequest>,
    ) -> Result<Response<proto::RevokeTokenResponse>, Status> {
        let grant = self.grant(&request)?;
        let peer = request.remote_addr();
        if !grant.is_admin() {
            let e = AuthError::new(
                AuthCode::ScopeMissing,
                format!("{} lacks the admin scope this call needs", grant.name()),
            );
            return Err(self.refuse(&e, peer));
        }
        let name = request.into_inner().name;
        let access = Arc::clone(&self.access);
        let hash = tokio::task::spawn_blocking(move || access.revoke(&name))
            .await
            .map_err(|e| Status::internal(format!("internal: a worker failed: {e}")))?
            .map_err(|e| status(Code::NotFound, "token_not_found", e))?;
        Ok(Response::new(proto::RevokeTokenResponse {
            hash: hash.to_string(),
        }))
    }

    async fn create_schedule(
        &self,
        request: Request<proto::CreateScheduleRequest>,
    ) -> Result<Response<proto::ScheduleResponse>, Status> {
        self.create_schedule_rpc(request).await
    }

    async fn get_schedule(
        &self,
        request: Request<proto::GetScheduleRequest>,
    ) -> Result<Response<proto::ScheduleResponse>, Status> {
        self.get_schedule_rpc(request).await
    }

    async fn list_schedules(
        &self,
        request: Request<proto::ListSchedulesRequest>,
    ) -> Result<Response<proto::ListSchedulesResponse>, Status> {
        self.list_schedules_rpc(request).await
    }

    async fn pause_schedule(
        &self,
        request: Request<proto::PauseScheduleRequest>,
    ) -> Result<Response<proto::ScheduleResponse>, Status> {
        self.pause_schedule_rpc(request).await
    }

    async fn delete_schedule(
        &self,
        request: Request<proto::GetScheduleRequest>,
    ) -> Result<Response<proto::ScheduleResponse>, Status> {
        self.delete_schedule_rpc(request).await
    }

    async fn list_nodes(
        &self,
        request: Request<proto::ListNodesRequest>,
    ) -> Result<Response<proto::ListNodesResponse>, Status> {
        let grant = self.grant(&request)?;
        grant
            .require_everywhere(Right::Read)
            .map_err(|e| self.refuse(&e, request.remote_addr()))?;
        let (ledger, sessions) = (Arc::clone(&self.ledger), self.sessions.clone());
        let mut this = self.this.clone();
        let listed = tokio::task::spawn_blocking(move || {
            if this.name.is_empty() {
                this.seen_ms = crate::clock::unix_ms();
                this.log_size = ledger.size();
                if let Some(s) = &sessions {
                    (this.sessions, this.running) = super::nodes::load(s);
                }
            }
            super::nodes::list(&ledger, this)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| super::status::to_status(&e))?;
        Ok(Response::new(listed))
    }

    async fn list_plugin_sessions(
        &self,
        request: Request<proto::ListPluginSessionsRequest>,
    ) -> Result<Response<proto::ListPluginSessionsResponse>, Status> {
        let grant = self.grant(&request)?;
        grant
            .require_everywhere(Right::Read)
            .map_err(|e| self.refuse(&e, request.remote_addr()))?;
        let Some(sessions) = &self.sessions else {
            return Ok(Response::new(proto::ListPluginSessionsResponse::default()));
        };
        let list = sessions
            .all()
            .into_iter()
            .map(|s| {
                let a = &s.announcement;
                proto::PluginSession {
                    plugin: a.plugin.to_string(),
                    name: self
                        .ledger
                        .subject(&a.plugin)
                        .map(|r| r.name)
                        .unwrap_or_default(),
                    key: a.key.to_string(),
                    connection: s.connection.as_str().to_owned(),
                    address: s.address.clone(),
                    handlers: a
                        .handlers
                        .iter()
                        .map(|h| match &h.id {
                            Some(id) if h.name.is_empty() => id.to_string(),
                            Some(id) => format!("{} ({id})", h.name),
                            None => h.name.clone(),
                        })
                        .collect(),
                    serves_any: a.serves_any,
                    slots: s.slots,
                    running: s.running(),
                    draining: s.draining(),
                    opened_ms: s.opened_ms,
                    last_health_ms: s.last_health_ms(),
                    session: s.generation,
                    attempt_streams: s.attempt_streams,
                }
            })
            .collect();
        let refusals = sessions
            .refusals()
            .into_iter()
            .map(|r| proto::SessionRefusalRecord {
                plugin: r.plugin,
                address: r.address,
                code: r.code,
                message: r.message,
                at_ms: r.at_ms,
            })
            .collect();
        Ok(Response::new(proto::ListPluginSessionsResponse {
            sessions: list,
            refusals,
        }))
    }
}
