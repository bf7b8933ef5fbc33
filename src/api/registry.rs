//! The Registry gRPC service: thin handlers over the ledger; conversions
//! from protobuf happen here, once.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tonic_types::StatusExt;

use super::metrics::Metrics;
use super::proto::{self, registry_server::Registry};
use super::status::{auth_status, bad_request, parse_did, to_status};
use crate::auth::RateLimiter;
use crate::ledger::{self, Ledger, LedgerError, PendingAppend, SubjectFilter, SubjectRecord};
use crate::{AttestationId, Family};

/// Default page size of listings.
const DEFAULT_PAGE: u32 = 100;
/// Submissions of one SubmitStream in flight at once.
const STREAM_IN_FLIGHT: usize = 64;
/// Envelope bytes per GetEntries response.
const ENTRIES_BYTES: usize = 4 * 1024 * 1024;
/// Entries buffered per WatchEntries subscriber, besides the batch being
/// sent: with envelopes of at most 64 KiB, at most 512 KiB.
const WATCH_BUFFER: usize = 8;
/// Bytes of envelopes read from the ledger at a time for one WatchEntries
/// subscriber (at least one entry): what a stream that is never read holds
/// is bounded in bytes (spec/security.md).
const WATCH_BATCH_BYTES: usize = 256 * 1024;

/// The registry API over one ledger.
#[derive(Clone)]
pub struct RegistryService {
    ledger: Arc<Ledger>,
    metrics: Arc<Metrics>,
    /// Submissions per client address, when limited.
    limiter: Option<Arc<RateLimiter>>,
    daily: Option<Arc<RateLimiter>>,
}

impl RegistryService {
    /// A service over `ledger`, counting into `metrics`.
    pub fn new(ledger: Arc<Ledger>, metrics: Arc<Metrics>) -> RegistryService {
        RegistryService {
            ledger,
            metrics,
            limiter: None,
            daily: None,
        }
    }

    /// Limits each client's submissions (`Submit`, and each envelope of
    /// `SubmitStream`): anyone may register, but not at any rate.
    pub fn with_rate_limit(mut self, limiter: Arc<RateLimiter>) -> RegistryService {
        self.limiter = Some(limiter);
        self
    }

    /// Limits submissions per client a day too (`submit_daily`), so a
    /// client under its per-second rate still cannot fill the disk over
    /// days.
    pub fn with_daily_limit(mut self, limiter: Arc<RateLimiter>) -> RegistryService {
        self.daily = Some(limiter);
        self
    }

    /// Takes one submission from `peer`'s allowances: per second, then
    /// per day.
    fn admit(&self, peer: Option<std::net::SocketAddr>) -> Result<(), Status> {
        let ip = peer.map(|a| a.ip());
        let now = Instant::now();
        for l in [&self.limiter, &self.daily].into_iter().flatten() {
            l.check(ip, 1, now).map_err(|e| auth_status(&e))?;
        }
        Ok(())
    }

    /// Runs a ledger call off the async threads.
    async fn blocking<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Ledger) -> Result<T, LedgerError> + Send + 'static,
    {
        let ledger = Arc::clone(&self.ledger);
        tokio::task::spawn_blocking(move || f(&ledger))
            .await
            .map_err(|e| Status::internal(format!("internal: a worker failed: {e}")))?
            .map_err(|e| to_status(&e))
    }

    /// Appends one envelope; the same result for Submit and SubmitStream.
    async fn submit_one(&self, envelope: Vec<u8>) -> Result<proto::SubmitResponse, Status> {
        let started = Instant::now();
        let queued = self.queue_one(envelope).await?;
        self.finish(started, queued).await
    }

    /// Verifies an envelope and queues it for the ledger's writer, in call
    /// order (so a stream of a chain is appended in order).
    async fn queue_one(
        &self,
        envelope: Vec<u8>,
    ) -> Result<Result<PendingAppend, LedgerError>, Status> {
        // Verified here, on the caller's task: a strict check takes tens
        // of microseconds, less than handing it to a blocking thread and
        // back costs in context switches under load.
        Ok(self.ledger.enqueue(&envelope))
    }

    /// Waits for a queued append and builds the answer.
    async fn finish(
        &self,
        started: Instant,
        queued: Result<PendingAppend, LedgerError>,
    ) -> Result<proto::SubmitResponse, Status> {
        let result = match queued {
            // Awaited without a thread; the proof is a few stored nodes.
            Ok(pending) => match pending.committed().await {
                Ok(receipt) => self
                    .ledger
                    .inclusion_proof(receipt.index, receipt.head.size)
                    .map(|path| (receipt, path)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match result {
            Ok((receipt, path)) => {
                self.metrics
                    .appended(receipt.duplicate, started.elapsed(), receipt.head.size);
                Ok(proto::SubmitResponse {
                    index: receipt.index,
                    attestation_id: receipt.id.as_bytes().to_vec(),
                    duplicate: receipt.duplicate,
                    checkpoint: Some(checkpoint(&receipt.head)),
                    inclusion_proof: path.iter().map(|h| h.to_vec()).collect(),
                })
            }
            Err(e) => {
                self.metrics.rejected(e.code());
                // The message quotes the client's bytes: escaped and bounded.
                tracing::info!(code = e.code(), error = %crate::text::loggable(&e.to_string()), "rejected submission");
                Err(to_status(&e))
            }
        }
    }
}

fn checkpoint(head: &ledger::TreeHead) -> proto::Checkpoint {
    proto::Checkpoint {
        size: head.size,
        root_hash: head.root.to_vec(),
        note: head.checkpoint.clone(),
    }
}

fn page_size(n: u32) -> usize {
    (if n == 0 { DEFAULT_PAGE } else { n }).min(ledger::MAX_PAGE as u32) as usize
}

fn subject_message(rec: &SubjectRecord, schema_json: String, indexes: Vec<u64>) -> proto::Subject {
    let h = &rec.head;
    proto::Subject {
        did: h.subject.to_string(),
        family: match h.family {
            Family::Handler => proto::Family::Handler as i32,
            Family::Plugin => proto::Family::Plugin as i32,
        },
        current_key: h.key.to_string(),
        seq: h.seq,
        head_id: h.head.as_bytes().to_vec(),
        issued_at_ms: h.issued_at,
        revoked: h.revoked,
        name: rec.name.clone(),
        plugin: rec
            .plugin
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        schema_json,
        statement_indexes: indexes,
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn submit(
        &self,
        request: Request<proto::SubmitRequest>,
    ) -> Result<Response<proto::SubmitResponse>, Status> {
        self.admit(request.remote_addr())?;
        let envelope = request.into_inner().envelope;
        self.submit_one(envelope).await.map(Response::new)
    }

    type SubmitStreamStream = BoxStream<proto::SubmitStreamResponse>;

    async fn submit_stream(
        &self,
        request: Request<Streaming<proto::SubmitRequest>>,
    ) -> Result<Response<Self::SubmitStreamStream>, Status> {
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        // Each item's answer in request order; an error ends the stream
        // after the answers to the items before it.
        let (pending_tx, mut pending_rx) = mpsc::channel::<
            Result<tokio::task::JoinHandle<Result<proto::SubmitResponse, Status>>, Status>,
        >(STREAM_IN_FLIGHT);
        let (out_tx, out_rx) = mpsc::channel(STREAM_IN_FLIGHT);
        let service = self.clone();
        // Reader: start each submission as it arrives (so a stream shares
        // group commits), at most STREAM_IN_FLIGHT at once.
        tokio::spawn(async move {
            while let Some(item) = inbound.next().await {
                match item {
                    Ok(req) => {
                        // Queue in stream order (a chain streams in order),
                        // then wait for commits concurrently.
                        let started = Instant::now();
                        if let Err(refused) = service.admit(peer) {
                            // Answered in its place, like any rejection.
                            let handle = tokio::spawn(async move { Err(refused) });
                            if pending_tx.send(Ok(handle)).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        let queued = match service.queue_one(req.envelope).await {
                            Ok(q) => q,
                            Err(status) => {
                                let _ = pending_tx.send(Err(status)).await;
                                return;
                            }
                        };
                        let s = service.clone();
                        let handle = tokio::spawn(async move { s.finish(started, queued).await });
                        if pending_tx.send(Ok(handle)).await.is_err() {
                            return;
                        }
                    }
                    Err(status) => {
                        // A message that cannot be read: no item to answer.
                        let status = super::normalize::normalize_status(status);
                        let _ = pending_tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        // Writer: answer in request order.
        tokio::spawn(async move {
            let mut position = 0u64;
            while let Some(next) = pending_rx.recv().await {
                let handle = match next {
                    Ok(handle) => handle,
                    Err(status) => {
                        let _ = out_tx.send(Err(status)).await;
                        return;
                    }
                };
                let result = match handle.await {
                    Ok(Ok(accepted)) => proto::submit_stream_response::Result::Accepted(accepted),
                    Ok(Err(status)) => {
                        proto::submit_stream_response::Result::Rejected(proto::SubmitError {
                            status_code: status.code() as i32,
                            code: status
                                .get_details_error_info()
                                .map(|i| i.reason)
                                .unwrap_or_default(),
                            message: status.message().to_owned(),
                        })
                    }
                    Err(e) => proto::submit_stream_response::Result::Rejected(proto::SubmitError {
                        status_code: tonic::Code::Internal as i32,
                        code: "internal".into(),
                        message: e.to_string(),
                    }),
                };
                let reply = proto::SubmitStreamResponse {
                    position,
                    result: Some(result),
                };
                if out_tx.send(Ok(reply)).await.is_err() {
                    return;
                }
                position += 1;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    async fn get_subject(
        &self,
        request: Request<proto::GetSubjectRequest>,
    ) -> Result<Response<proto::GetSubjectResponse>, Status> {
        let did = parse_did("did", &request.into_inner().did)?;
        let subject = self
            .blocking(move |l| {
                let rec = l.subject(&did)?;
                let state = l.subject_state(&did)?;
                let indexes = l.statement_indexes(&did)?;
                Ok(subject_message(
                    &rec,
                    state.schema.to_json().to_string(),
                    indexes,
                ))
            })
            .await?;
        Ok(Response::new(proto::GetSubjectResponse {
            subject: Some(subject),
        }))
    }

    async fn get_chain(
        &self,
        request: Request<proto::GetChainRequest>,
    ) -> Result<Response<proto::GetChainResponse>, Status> {
        let req = request.into_inner();
        let did = parse_did("did", &req.did)?;
        let limit = if req.page_size == 0 {
            ledger::MAX_ENTRY_RANGE as usize
        } else {
            req.page_size as usize
        };
        self.blocking(move |l| {
            // The head is read after the page, so it covers every entry in it.
            let (page, next) = l.chain(&did, req.from_seq, limit)?;
            let head = l.head();
            let entries_len = page.len() as u64;
            let mut entries = Vec::new();
            for (index, envelope) in page {
                let path = l.inclusion_proof(index, head.size)?;
                entries.push(proto::ChainEntry {
                    index,
                    envelope,
                    inclusion_proof: path.iter().map(|h| h.to_vec()).collect(),
                });
            }
            Ok(proto::GetChainResponse {
                checkpoint: Some(checkpoint(&head)),
                entries,
                more: next.is_some(),
                next_seq: req.from_seq.saturating_add(entries_len),
            })
        })
        .await
        .map(Response::new)
    }

    async fn list_handlers(
        &self,
        request: Request<proto::ListHandlersRequest>,
    ) -> Result<Response<proto::ListHandlersResponse>, Status> {
        let req = request.into_inner();
        let plugin = if req.plugin.is_empty() {
            None
        } else {
            Some(parse_did("plugin", &req.plugin)?)
        };
        let filter = SubjectFilter {
            family: Some(if req.family == proto::Family::Plugin as i32 {
                Family::Plugin
            } else {
                Family::Handler
            }),
            name_prefix: req.name_prefix,
            plugin,
            include_revoked: req.include_revoked,
        };
        let limit = page_size(req.page_size);
        let token = (!req.page_token.is_empty()).then_some(req.page_token);
        self.blocking(move |l| {
            let (page, next) = l.list_subjects(&filter, token.as_deref(), limit)?;
            let handlers = page
                .iter()
                .map(|rec| subject_message(rec, String::new(), Vec::new()))
                .collect();
            Ok(proto::ListHandlersResponse {
                handlers,
                next_page_token: next.unwrap_or_default(),
            })
        })
        .await
        .map(Response::new)
    }

    async fn get_entries(
        &self,
        request: Request<proto::GetEntriesRequest>,
    ) -> Result<Response<proto::GetEntriesResponse>, Status> {
        let req = request.into_inner();
        self.blocking(move |l| {
            // At most ENTRIES_BYTES of envelopes per response (at least one
            // entry), so a page of large envelopes stays a bounded message.
            let entries = l
                .entries_within(req.start, req.end, ENTRIES_BYTES)?
                .into_iter()
                .map(|(index, envelope)| proto::Entry { index, envelope })
                .collect();
            Ok(proto::GetEntriesResponse { entries })
        })
        .await
        .map(Response::new)
    }

    async fn get_checkpoint(
        &self,
        _: Request<proto::GetCheckpointRequest>,
    ) -> Result<Response<proto::GetCheckpointResponse>, Status> {
        Ok(Response::new(proto::GetCheckpointResponse {
            checkpoint: Some(checkpoint(&self.ledger.head())),
        }))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<proto::GetInclusionProofRequest>,
    ) -> Result<Response<proto::GetInclusionProofResponse>, Status> {
        use proto::get_inclusion_proof_request::Leaf;
        let req = request.into_inner();
        let leaf = match req.leaf {
            Some(Leaf::Index(i)) => Ok(i),
            Some(Leaf::AttestationId(id)) => {
                let id: [u8; 32] = id.try_into().map_err(|_| {
                    bad_request(
                        "attestation_id",
                        "invalid_field",
                        "an attestation ID is 32 bytes",
                    )
                })?;
                Err(AttestationId(id))
            }
            None => {
                return Err(bad_request(
                    "leaf",
                    "missing_field",
                    "give index or attestation_id",
                ));
            }
        };
        self.blocking(move |l| {
            let head = l.head();
            let size = if req.tree_size == 0 {
                head.size
            } else {
                req.tree_size
            };
            let index = match leaf {
                Ok(i) => i,
                Err(id) => l.index_of(&id)?,
            };
            let path = l.inclusion_proof(index, size)?;
            let entry = l.entry(index)?;
            let tree_root = l.root_at(size)?;
            Ok(proto::GetInclusionProofResponse {
                index,
                tree_size: size,
                leaf_hash: ledger::leaf_hash(&entry).to_vec(),
                path: path.iter().map(|h| h.to_vec()).collect(),
                checkpoint: Some(checkpoint(&head)),
                tree_root: tree_root.to_vec(),
            })
        })
        .await
        .map(Response::new)
    }

    async fn get_consistency_proof(
        &self,
        request: Request<proto::GetConsistencyProofRequest>,
    ) -> Result<Response<proto::GetConsistencyProofResponse>, Status> {
        let req = request.into_inner();
        self.blocking(move |l| {
            let new = if req.new_size == 0 {
                l.head().size
            } else {
                req.new_size
            };
            let proof = l.consistency_proof(req.old_size, new)?;
            Ok(proto::GetConsistencyProofResponse {
                old_size: req.old_size,
                new_size: new,
                proof: proof.iter().map(|h| h.to_vec()).collect(),
                old_root: l.root_at(req.old_size)?.to_vec(),
                new_root: l.root_at(new)?.to_vec(),
            })
        })
        .await
        .map(Response::new)
    }

    async fn get_log_info(
        &self,
        _: Request<proto::GetLogInfoRequest>,
    ) -> Result<Response<proto::GetLogInfoResponse>, Status> {
        let head = self.ledger.head();
        Ok(Response::new(proto::GetLogInfoResponse {
            log_did: self.ledger.log_did().to_string(),
            origin: self.ledger.origin().to_owned(),
            size: head.size,
            verifier_key: ledger::verifier_key(self.ledger.origin(), self.ledger.log_did()),
            root_hash: head.root.to_vec(),
        }))
    }

    type WatchEntriesStream = BoxStream<proto::Entry>;

    async fn watch_entries(
        &self,
        request: Request<proto::WatchEntriesRequest>,
    ) -> Result<Response<Self::WatchEntriesStream>, Status> {
        let mut next = request.into_inner().start;
        let ledger = Arc::clone(&self.ledger);
        let mut sizes = ledger.watch_size();
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(async move {
            loop {
                let size = *sizes.borrow_and_update();
                while next < size {
                    let l = Arc::clone(&ledger);
                    let start = next;
                    let batch = tokio::task::spawn_blocking(move || {
                        l.entries_within(start, size, WATCH_BATCH_BYTES)
                    })
                    .await;
                    let entries = match batch {
                        Ok(Ok(e)) => e,
                        Ok(Err(e)) => {
                            let _ = tx.send(Err(to_status(&e))).await;
                            return;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                            return;
                        }
                    };
                    for (index, envelope) in entries {
                        // Entries arrive in index order; never skip one.
                        debug_assert_eq!(index, next);
                        if tx.send(Ok(proto::Entry { index, envelope })).await.is_err() {
                            return;
                        }
                        next = index + 1;
                    }
                }
                tokio::select! {
                    changed = sizes.changed() => if changed.is_err() { return; },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_equivocations(
        &self,
        request: Request<proto::ListEquivocationsRequest>,
    ) -> Result<Response<proto::ListEquivocationsResponse>, Status> {
        let req = request.into_inner();
        let limit = page_size(req.page_size);
        let token = (!req.page_token.is_empty()).then_some(req.page_token);
        self.blocking(move |l| {
            let (page, next) = l.equivocations(token.as_deref(), limit)?;
            let mut evidence = Vec::new();
            for r in page {
                evidence.push(proto::EquivocationEvidence {
                    subject: r.subject.to_string(),
                    seq: r.seq,
                    logged_index: r.logged_index,
                    logged_envelope: l.entry(r.logged_index)?,
                    rejected_envelope: r.rejected,
                });
            }
            Ok(proto::ListEquivocationsResponse {
                evidence,
                next_page_token: next.unwrap_or_default(),
            })
        })
        .await
        .map(Response::new)
    }
}
