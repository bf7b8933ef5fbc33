//! Jobs end to end through Pulse: enqueued (durably), resolved, dispatched
//! to the test plugin's no-op handler and run to a stored result; and the
//! scheduled-send → plugin-start latency at half that throughput, open loop
//! (each job sent at its scheduled time whatever happened to the ones
//! before, and its latency counted from that scheduled time, so a stall,
//! in the server or in the sender, shows in the latency instead of
//! slowing the arrivals or hiding before the clock starts).

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use tonic::transport::Channel;

use super::{CpuReading, PhaseCpu, bench_key, genesis_envelope, now_us, percentile_ms};
use crate::api::proto::{self, jobs_client::JobsClient, registry_client::RegistryClient};
use crate::api::{AuthedChannel, Bearer};
use crate::{Action, Did, Family, HandlerSchema, PluginSchema, Schema};

/// The name the bench registers its test plugin under.
pub const BENCH_PLUGIN_NAME: &str = "bench";

/// Jobs per EnqueueBatch in the throughput run.
const BATCH: usize = 500;

/// What the jobs run measured.
#[derive(Debug, Clone)]
pub struct JobFigures {
    /// Jobs/s, enqueue to stored result.
    pub rate: f64,
    /// The open-loop arrival rate of the latency run (half of `rate`).
    pub arrival_rate: f64,
    /// Latency samples.
    pub samples: usize,
    /// Scheduled send → plugin start, ms.
    pub p50: f64,
    /// Scheduled send → plugin start, ms.
    pub p99: f64,
    /// Scheduled send → plugin start, ms.
    pub p999: f64,
    /// The former clock, for comparison: from when the job's send task
    /// started running (at or after its scheduled time) to plugin start,
    /// p99, ms.
    pub p99_from_call: f64,
    /// Scheduled send → Enqueue acknowledged (durable), ms.
    pub ack_p50: f64,
    /// Scheduled send → Enqueue acknowledged (durable), ms.
    pub ack_p99: f64,
    /// Where the slowest 1 % of jobs spent their time.
    pub tail: StageBreakdown,
    /// Every job of the latency run, in send order.
    pub jobs: Vec<JobSample>,
}

/// The mean time per stage, ms, over the jobs at or above the p99 of
/// scheduled send → plugin start: where the tail is spent.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageBreakdown {
    /// Scheduled send → the Enqueue call made (the sender's own lag).
    pub sender: f64,
    /// Enqueue call → its acknowledgement (the durable enqueue).
    pub enqueue: f64,
    /// Acknowledged → the start of the dispatcher step that dispatched it
    /// (waiting in the ready queue, and for the step; ms resolution).
    pub queued: f64,
    /// That step's start → the plugin started it (the step's commit and
    /// the call to the plugin).
    pub dispatch: f64,
}

/// One job of the latency run, its times in Unix µs.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct JobSample {
    /// When it was due to be sent.
    pub scheduled: u64,
    /// When its Enqueue call was made.
    pub called: u64,
    /// When the call was acknowledged.
    pub acked: u64,
    /// When the dispatcher step that dispatched it began (the server
    /// records it in ms).
    pub dispatched: u64,
    /// When the plugin started it.
    pub started: u64,
}

impl JobSample {
    fn total(&self) -> u64 {
        self.started.saturating_sub(self.scheduled)
    }
}

fn tail_breakdown(samples: &[JobSample], p99: u64) -> StageBreakdown {
    let tail: Vec<&JobSample> = samples.iter().filter(|s| s.total() >= p99).collect();
    if tail.is_empty() {
        return StageBreakdown::default();
    }
    let mean = |f: &dyn Fn(&JobSample) -> u64| {
        tail.iter().map(|s| f(s) as f64).sum::<f64>() / tail.len() as f64 / 1000.0
    };
    StageBreakdown {
        sender: mean(&|s| s.called.saturating_sub(s.scheduled)),
        enqueue: mean(&|s| s.acked.saturating_sub(s.called)),
        queued: mean(&|s| s.dispatched.saturating_sub(s.acked)),
        dispatch: mean(&|s| s.started.saturating_sub(s.dispatched.max(s.acked))),
    }
}

async fn enqueue_batch(
    jobs: &mut JobsClient<AuthedChannel>,
    handler: &Did,
    payload: &[u8],
    n: usize,
) -> Result<Vec<Vec<u8>>, String> {
    let reqs = (0..n)
        .map(|_| proto::EnqueueRequest {
            handler: handler.to_string(),
            payload: payload.to_vec(),
            ..Default::default()
        })
        .collect();
    jobs.enqueue_batch(proto::EnqueueBatchRequest { jobs: reqs })
        .await
        .map_err(|s| format!("EnqueueBatch: {}", s.message()))?
        .into_inner()
        .results
        .into_iter()
        .map(|r| match r.result {
            Some(proto::enqueue_result::Result::Accepted(a)) => Ok(a.job.unwrap_or_default().id),
            Some(proto::enqueue_result::Result::Rejected(e)) => Err(e.message),
            None => Err("an empty enqueue result".into()),
        })
        .collect()
}

/// Enqueues one job of `handler`, due at `run_at_ms` (0: now); its ID.
async fn enqueue_one(
    jobs: &mut JobsClient<AuthedChannel>,
    handler: &Did,
    run_at_ms: u64,
) -> Result<Vec<u8>, String> {
    Ok(jobs
        .enqueue(proto::EnqueueRequest {
            handler: handler.to_string(),
            run_at_ms,
            ..Default::default()
        })
        .await
        .map_err(|s| format!("Enqueue: {}", s.message()))?
        .into_inner()
        .job
        .unwrap_or_default()
        .id)
}

async fn wait_done(jobs: &mut JobsClient<AuthedChannel>, id: &[u8]) -> Result<proto::Job, String> {
    loop {
        let j = jobs
            .get_job(proto::GetJobRequest { id: id.to_vec() })
            .await
            .map_err(|s| format!("GetJob: {}", s.message()))?
            .into_inner()
            .job
            .unwrap_or_default();
        match j.state.as_str() {
            "succeeded" => return Ok(j),
            "dead" | "cancelled" => {
                return Err(format!(
                    "job {} ended {}: {}",
                    hex::encode(id),
                    j.state,
                    j.last_error
                ));
            }
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

/// Whether no job is queued, running, retrying or held.
async fn idle(jobs: &mut JobsClient<AuthedChannel>) -> Result<bool, String> {
    for state in ["queued", "running", "retrying", "held"] {
        let page = jobs
            .list_jobs(proto::ListJobsRequest {
                state: state.into(),
                page_size: 1,
                ..Default::default()
            })
            .await
            .map_err(|s| format!("ListJobs: {}", s.message()))?
            .into_inner();
        if !page.jobs.is_empty() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The jobs part of the bench: the test plugin and its `noop` and `stamp`
/// handlers registered, and a Jobs client.
#[derive(Clone)]
pub struct JobBench {
    jobs: JobsClient<AuthedChannel>,
    noop: Did,
    stamp: Did,
}

impl JobBench {
    /// Registers the test plugin (`plugin`, whose process the server
    /// runs) and its handlers. Jobs calls carry `bearer`.
    ///
    /// # Errors
    /// A refused call.
    pub async fn setup(
        channel: Channel,
        bearer: Bearer,
        plugin: (&SigningKey, &Did),
    ) -> Result<JobBench, String> {
        let handlers = register_test_plugin(channel.clone(), plugin, &["noop", "stamp"]).await?;
        Ok(JobBench {
            jobs: JobsClient::with_interceptor(channel, bearer),
            noop: handlers[0].clone(),
            stamp: handlers[1].clone(),
        })
    }

    /// The same handlers, with calls sent over `channel` (one that
    /// spreads them over several nodes of the service, say).
    pub fn through(&self, channel: Channel, bearer: Bearer) -> JobBench {
        JobBench {
            jobs: JobsClient::with_interceptor(channel, bearer),
            noop: self.noop.clone(),
            stamp: self.stamp.clone(),
        }
    }

    /// The handlers the bench enqueues to.
    pub fn handlers(&self) -> [&Did; 2] {
        [&self.noop, &self.stamp]
    }

    /// Jobs/s for `n` no-op jobs ([`job_rate`]).
    ///
    /// # Errors
    /// A refused call, or a job that did not succeed.
    pub async fn rate(&self, n: usize, server: Option<u32>) -> Result<(f64, PhaseCpu), String> {
        let mut cpu = None;
        let rate = timed_job_rate(&mut self.jobs.clone(), &self.noop, b"", n, || {
            cpu = Some(CpuReading::now(server));
        })
        .await?;
        let cpu = cpu.map_or_else(PhaseCpu::default, |c| c.since(n as f64));
        Ok((rate, cpu))
    }

    /// Jobs/s of no-op jobs sent as the latency run sends them: single
    /// `Enqueue` calls, from `senders` callers each waiting for its answer
    /// (closed loop), `n` in all, counted until every one's result is
    /// stored. The capacity for that kind of arrival, which costs the
    /// server about twice the CPU per job of a batched enqueue.
    ///
    /// # Errors
    /// A refused call, or a job that did not succeed.
    pub async fn single_enqueue_rate(&self, n: usize, senders: usize) -> Result<f64, String> {
        let mut jobs = self.jobs.clone();
        while !idle(&mut jobs).await? {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let t = Instant::now();
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..senders.max(1))
            .map(|_| {
                let (mut c, noop, next) = (self.jobs.clone(), self.noop.clone(), next.clone());
                tokio::spawn(async move {
                    let mut last = None;
                    while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                        last = Some(enqueue_one(&mut c, &noop, 0).await?);
                    }
                    Ok::<_, String>(last)
                })
            })
            .collect();
        for task in tasks {
            if let Some(id) = task.await.map_err(|e| e.to_string())?? {
                wait_done(&mut jobs, &id).await?;
            }
        }
        while !idle(&mut jobs).await? {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(n as f64 / t.elapsed().as_secs_f64())
    }

    /// Jobs of the `stamp` handler at `arrival_rate`, open loop, for
    /// `secs`, each sent alone as `arrival` says: each job's times, in
    /// send order. Each job's latency runs from its scheduled send time
    /// (on the clock the stamp handler reports in), not from when its task
    /// got to run: a sender or runtime that falls behind the schedule is
    /// queueing delay the job sees, so it counts. Also where the CPU went
    /// while the jobs were sent (the server's when `server` is its process
    /// ID).
    ///
    /// # Errors
    /// A refused call, or a job that did not succeed.
    pub async fn start_latency(
        &self,
        arrival_rate: f64,
        secs: f64,
        server: Option<u32>,
        arrival: Arrival,
    ) -> Result<(Vec<JobSample>, PhaseCpu), String> {
        let count = (arrival_rate * secs).max(1.0) as usize;
        let cpu = CpuReading::now(server);
        let sent = match arrival {
            Arrival::Calls => self.send_calls(arrival_rate, count).await,
            Arrival::Streams(n) => self.send_on_streams(arrival_rate, count, n).await,
        };
        // The load while the jobs arrive, not while they are read back.
        let cpu = cpu.since(count as f64);
        let mut jobs = self.jobs.clone();
        let mut samples = Vec::with_capacity(count);
        for (scheduled, called, acked, id) in sent? {
            let j = wait_done(&mut jobs, &id).await?;
            let started: u64 = String::from_utf8_lossy(&j.result)
                .parse()
                .map_err(|_| "the stamp handler returned no time".to_owned())?;
            let dispatched = j
                .attempt_history
                .first()
                .map_or(0, |a| a.started_at_ms.saturating_mul(1000));
            samples.push(JobSample {
                scheduled,
                called,
                acked,
                dispatched,
                started,
            });
        }
        Ok((samples, cpu))
    }

    /// `count` single `Enqueue` calls at `arrival_rate`, from the
    /// schedule's start: each job's (scheduled, called, acknowledged, ID),
    /// in send order.
    async fn send_calls(&self, arrival_rate: f64, count: usize) -> Result<Vec<Sent>, String> {
        let start = Instant::now();
        let start_us = now_us();
        let mut sent = Vec::with_capacity(count);
        for i in 0..count {
            let offset = Duration::from_secs_f64(i as f64 / arrival_rate);
            let scheduled_us = start_us + offset.as_micros() as u64;
            tokio::time::sleep_until((start + offset).into()).await;
            let (mut c, stamp) = (self.jobs.clone(), self.stamp.clone());
            sent.push(tokio::spawn(async move {
                let called_us = now_us();
                let id = enqueue_one(&mut c, &stamp, 0).await?;
                Ok::<_, String>((scheduled_us, called_us, now_us(), id))
            }));
        }
        let mut out = Vec::with_capacity(count);
        for s in sent {
            out.push(s.await.map_err(|e| e.to_string())??);
        }
        Ok(out)
    }

    /// As [`JobBench::send_calls`], each job a message on one of `streams`
    /// `EnqueueStream` calls, taken in turn.
    async fn send_on_streams(
        &self,
        arrival_rate: f64,
        count: usize,
        streams: usize,
    ) -> Result<Vec<Sent>, String> {
        let mut lanes = Vec::with_capacity(streams.max(1));
        for _ in 0..streams.max(1) {
            lanes.push(EnqueueLane::open(self.jobs.clone()).await?);
        }
        let start = Instant::now();
        let start_us = now_us();
        for i in 0..count {
            let offset = Duration::from_secs_f64(i as f64 / arrival_rate);
            let scheduled_us = start_us + offset.as_micros() as u64;
            tokio::time::sleep_until((start + offset).into()).await;
            let request = proto::EnqueueRequest {
                handler: self.stamp.to_string(),
                ..Default::default()
            };
            let n = lanes.len();
            if let Err(e) = lanes[i % n].send(scheduled_us, request).await {
                // The lane's answers say why its call ended.
                let lane = lanes.swap_remove(i % n);
                return Err(lane.finish().await.err().unwrap_or(e));
            }
        }
        let mut out = Vec::with_capacity(count);
        for lane in lanes {
            out.extend(lane.finish().await?);
        }
        out.sort_unstable_by_key(|s| s.0);
        Ok(out)
    }

    /// What `job wait` waits for: `n` jobs of the `stamp` handler, one
    /// every 10 ms, each run 20 ms after it is enqueued, followed with
    /// `WatchJob` from before it runs; µs from the plugin starting it (the
    /// no-op returns at once) to the watch delivering it succeeded.
    ///
    /// # Errors
    /// A refused call, or a job that did not succeed.
    pub async fn wait_latency(&self, n: usize) -> Result<Vec<u64>, String> {
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let (mut c, stamp) = (self.jobs.clone(), self.stamp.clone());
            tasks.push(tokio::spawn(async move {
                let id = enqueue_one(&mut c, &stamp, crate::clock::unix_ms() + 20).await?;
                let mut watch = c
                    .watch_job(proto::WatchJobRequest { id: id.clone() })
                    .await
                    .map_err(|s| format!("WatchJob: {}", s.message()))?
                    .into_inner();
                while let Some(j) = watch
                    .message()
                    .await
                    .map_err(|s| format!("WatchJob: {}", s.message()))?
                {
                    let seen = now_us();
                    match j.state.as_str() {
                        "succeeded" => {
                            let started: u64 = String::from_utf8_lossy(&j.result)
                                .parse()
                                .map_err(|_| "the stamp handler returned no time".to_owned())?;
                            return Ok::<_, String>(seen.saturating_sub(started));
                        }
                        "dead" | "cancelled" => {
                            return Err(format!("job {} ended {}", hex::encode(&id), j.state));
                        }
                        _ => {}
                    }
                }
                Err("the watch ended before the job did".to_owned())
            }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut out = Vec::with_capacity(n);
        for t in tasks {
            out.push(t.await.map_err(|e| e.to_string())??);
        }
        Ok(out)
    }
}

/// How the latency runs send their jobs, each alone at its scheduled
/// time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// One `Enqueue` call per job.
    Calls,
    /// One message per job on this many `EnqueueStream` calls, in turn.
    Streams(usize),
}

/// A job the latency run sent: (scheduled, called, acknowledged) in Unix
/// µs, and its ID.
type Sent = (u64, u64, u64, Vec<u8>);

/// One `EnqueueStream` call of a latency run: its requests go in as they
/// are due, and a task reads the answers, which come in request order.
struct EnqueueLane {
    requests: tokio::sync::mpsc::Sender<proto::EnqueueRequest>,
    /// (scheduled, sent) of each request, in order, for the reader.
    times: tokio::sync::mpsc::UnboundedSender<(u64, u64)>,
    answers: tokio::task::JoinHandle<Result<Vec<Sent>, String>>,
}

impl EnqueueLane {
    async fn open(mut jobs: JobsClient<AuthedChannel>) -> Result<EnqueueLane, String> {
        let (requests, rx) = tokio::sync::mpsc::channel(1024);
        let (times, mut times_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, u64)>();
        let mut answers = jobs
            .enqueue_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| format!("EnqueueStream: {}", s.message()))?
            .into_inner();
        let answers = tokio::spawn(async move {
            let mut out = Vec::new();
            while let Some(answer) = answers
                .message()
                .await
                .map_err(|s| format!("EnqueueStream: {}", s.message()))?
            {
                let acked = now_us();
                let (scheduled, called) = times_rx
                    .recv()
                    .await
                    .ok_or("EnqueueStream: an answer to no request")?;
                let id = match answer.result {
                    Some(proto::enqueue_stream_response::Result::Accepted(a)) => {
                        a.job.unwrap_or_default().id
                    }
                    Some(proto::enqueue_stream_response::Result::Rejected(e)) => {
                        return Err(format!("EnqueueStream: {}", e.message));
                    }
                    None => return Err("EnqueueStream: an empty answer".into()),
                };
                out.push((scheduled, called, acked, id));
            }
            Ok(out)
        });
        Ok(EnqueueLane {
            requests,
            times,
            answers,
        })
    }

    async fn send(&self, scheduled: u64, request: proto::EnqueueRequest) -> Result<(), String> {
        let called = now_us();
        // The time goes first: the answer may come before `send` returns.
        let _ = self.times.send((scheduled, called));
        self.requests
            .send(request)
            .await
            .map_err(|_| "EnqueueStream: the call ended early".to_owned())
    }

    /// Ends the call's requests; every answer.
    async fn finish(self) -> Result<Vec<Sent>, String> {
        drop(self.requests);
        drop(self.times);
        self.answers.await.map_err(|e| e.to_string())?
    }
}

impl JobFigures {
    /// The figures of a throughput `rate` and the latency run's `samples`
    /// (sent at `arrival_rate`).
    pub fn new(rate: f64, arrival_rate: f64, samples: Vec<JobSample>) -> JobFigures {
        let mut lat: Vec<u64> = samples.iter().map(JobSample::total).collect();
        let mut from_call: Vec<u64> = samples
            .iter()
            .map(|s| s.started.saturating_sub(s.called))
            .collect();
        let mut ack: Vec<u64> = samples
            .iter()
            .map(|s| s.acked.saturating_sub(s.scheduled))
            .collect();
        lat.sort_unstable();
        from_call.sort_unstable();
        ack.sort_unstable();
        let p99_us = (percentile_ms(&lat, 0.99) * 1000.0) as u64;
        JobFigures {
            rate,
            arrival_rate,
            samples: lat.len(),
            p50: percentile_ms(&lat, 0.5),
            p99: percentile_ms(&lat, 0.99),
            p999: percentile_ms(&lat, 0.999),
            p99_from_call: percentile_ms(&from_call, 0.99),
            ack_p50: percentile_ms(&ack, 0.5),
            ack_p99: percentile_ms(&ack, 0.99),
            tail: tail_breakdown(&samples, p99_us),
            jobs: samples,
        }
    }
}

/// Registers the test plugin (`plugin`) and one handler of each schema
/// name in `names` naming it (fresh keys, derived from the names);
/// returns the handlers' IDs in order.
///
/// # Errors
/// A refused submission.
pub async fn register_test_plugin(
    channel: Channel,
    plugin: (&SigningKey, &Did),
    names: &[&str],
) -> Result<Vec<Did>, String> {
    let mut reg = RegistryClient::new(channel);
    let mut envelopes = Vec::new();
    // A plugin already in the log is used as it is if the bench made it
    // (named `bench`); a second genesis for someone else's plugin key
    // would be an equivocation against that key, reported for ever.
    match reg
        .get_subject(proto::GetSubjectRequest {
            did: plugin.1.to_string(),
        })
        .await
    {
        Ok(r) => {
            let name = r.into_inner().subject.unwrap_or_default().name;
            if name != BENCH_PLUGIN_NAME {
                return Err(format!(
                    "plugin {} is already in this log as {name:?}: the bench registers its plugin key as a plugin named {BENCH_PLUGIN_NAME:?}, which would sign a second genesis for that key (an equivocation, reported for ever); give a key made for the bench",
                    plugin.1
                ));
            }
        }
        Err(s) if s.code() == tonic::Code::NotFound => envelopes.push(genesis_envelope(
            plugin.0,
            plugin.1,
            Family::Plugin,
            Action::Register(Schema::Plugin(PluginSchema::new(
                BENCH_PLUGIN_NAME,
                "1.0.0",
            ))),
        )?),
        Err(s) => return Err(format!("GetSubject: {}", s.message())),
    }
    let mut ids = Vec::new();
    for name in names {
        // Per plugin: the same handler key naming another plugin would be
        // a second genesis for it.
        let (sk, did) = bench_key(&format!("jobs-{name}-{}", plugin.1), 0);
        let schema = HandlerSchema::new(*name, "1.0.0", plugin.1.clone());
        envelopes.push(genesis_envelope(
            &sk,
            &did,
            Family::Handler,
            Action::Register(Schema::Handler(schema)),
        )?);
        ids.push(did);
    }
    for envelope in envelopes {
        reg.submit(proto::SubmitRequest { envelope })
            .await
            .map_err(|s| format!("Submit: {}", s.message()))?;
    }
    Ok(ids)
}

/// Jobs/s for `n` jobs of `handler` with `payload`, enqueued in batches
/// to a stored result, after a warm-up batch (the plugin session opens,
/// caches fill).
///
/// # Errors
/// A refused call, or a job that did not succeed.
pub async fn job_rate(
    jobs: &mut JobsClient<AuthedChannel>,
    handler: &Did,
    payload: &[u8],
    n: usize,
) -> Result<f64, String> {
    timed_job_rate(jobs, handler, payload, n, || {}).await
}

/// [`job_rate`], calling `on_start` when the timed part begins.
async fn timed_job_rate(
    jobs: &mut JobsClient<AuthedChannel>,
    handler: &Did,
    payload: &[u8],
    n: usize,
    on_start: impl FnOnce(),
) -> Result<f64, String> {
    let warm = enqueue_batch(jobs, handler, payload, BATCH.min(n.max(1))).await?;
    if let Some(last) = warm.last() {
        wait_done(jobs, last).await?;
    }
    while !idle(jobs).await? {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    on_start();
    let t = Instant::now();
    let senders: Vec<_> = (0..n.div_ceil(BATCH))
        .map(|chunk| {
            let (mut c, handler, payload) = (jobs.clone(), handler.clone(), payload.to_vec());
            let count = BATCH.min(n - chunk * BATCH);
            tokio::spawn(async move { enqueue_batch(&mut c, &handler, &payload, count).await })
        })
        .collect();
    let mut last = Vec::new();
    for s in senders {
        last = s.await.map_err(|e| e.to_string())??;
    }
    if let Some(id) = last.last() {
        wait_done(jobs, id).await?;
    }
    while !idle(jobs).await? {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}
