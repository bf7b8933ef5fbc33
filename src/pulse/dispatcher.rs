//! The dispatcher: one step at a time, at a time the caller gives (a real
//! clock in the server, a simulated one in tests). Each step applies the
//! executors' reports, enforces timeouts and heartbeats, wakes due jobs,
//! and dispatches ready jobs within the global and per-handler limits.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use super::backoff::Backoff;
use super::budget::BudgetUse;
use super::executor::{
    AttemptSpec, ExecEvent, Executor, REPORT_QUEUE, ReportReceiver, ReportSender, report_queue,
};
use super::job::{CancelReason, HoldReason, Job, JobId, LeaseToken};
use super::machine::RetryPolicy;
use super::route::{Authorization, OpenRouter, Route, Router};
use super::schedule_store::FireReport;
use super::store::{GroupOp, JobError, JobStore};
use crate::{Did, HandlerSchema};

/// Per-handler concurrency limits: a handler's `max_concurrency` (from its
/// schema), `None` for no limit.
pub type ConcurrencyLimits = Box<dyn Fn(&Did) -> Option<u32> + Send>;

/// Dispatcher settings.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Attempts running at once, over all handlers.
    pub max_running: usize,
    /// An attempt with no heartbeat (or progress or cost) for this long is
    /// treated like one past its deadline, ms.
    pub heartbeat_timeout_ms: u64,
    /// After pushing a cancel for a late attempt, how long to wait before
    /// recording it timed out, ms.
    pub grace_ms: u64,
    /// Retry delays.
    pub backoff: Backoff,
    /// Ready jobs examined per step (bounds the step's work).
    pub scan: usize,
    /// While two or more handlers have ready jobs, the most slots one
    /// handler may hold, in percent of `max_running` (at least one slot).
    pub fair_share_percent: usize,
    /// The most attempts of one handler running at once, whatever its
    /// schema's `max_concurrency` claims (`None`: the schema decides).
    pub max_handler_concurrency: Option<u32>,
    /// The longest attempt timeout a job may have, ms, whatever its
    /// handler's schema or request claims (`None`: no cap).
    pub max_timeout_ms: Option<u64>,
    /// How long a job waits, held, for its plugin to connect (or the ledger
    /// to be readable) before it is refused with the hold's reason
    /// (`plugin_not_connected`, `ledger_unreadable`), ms.
    pub plugin_wait_ms: u64,
    /// Running attempts are checked against their deadlines at most this
    /// often, ms (0: every step). Deadlines are enforced this much late at
    /// most; the check reads every running job.
    pub deadline_scan_ms: u64,
    /// Steps whose group commits may be left in flight on a single server
    /// between calls of [`Dispatcher::step_overlapped`] (at least 1; within
    /// a call, the next step's batch is written before the oldest is
    /// waited for). Two keep the store's commits back to back while the
    /// dispatcher gathers the reports that arrived during the last one
    /// (BENCHMARKS.md, issue 23).
    pub steps_in_flight: usize,
}

impl Default for DispatchConfig {
    fn default() -> DispatchConfig {
        DispatchConfig {
            max_running: 64,
            heartbeat_timeout_ms: 30_000,
            grace_ms: 5_000,
            backoff: Backoff::default(),
            scan: 1_000,
            fair_share_percent: 50,
            max_handler_concurrency: None,
            max_timeout_ms: None,
            plugin_wait_ms: 60_000,
            deadline_scan_ms: 0,
            steps_in_flight: 2,
        }
    }
}

/// What one step did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepReport {
    /// Attempts started.
    pub dispatched: usize,
    /// Reports applied.
    pub applied: usize,
    /// Reports refused because their attempt is no longer live.
    pub stale: usize,
    /// Attempts recorded as timed out.
    pub timed_out: usize,
    /// What the schedules due in this step did.
    pub schedules: FireReport,
}

/// A handler's schema for a schedule's occurrence, or why the handler
/// takes no jobs (spec/pulse.md, "Schedules").
pub type SchemaSource = Box<dyn FnMut(&Did) -> Result<HandlerSchema, String> + Send>;

/// Drives jobs from the store through an executor.
pub struct Dispatcher<E: Executor> {
    store: std::sync::Arc<JobStore>,
    executor: E,
    config: DispatchConfig,
    /// Per-handler concurrency limits (`max_concurrency` from the schema).
    limits: ConcurrencyLimits,
    tx: ReportSender,
    rx: ReportReceiver,
    running: HashMap<Did, u32>,
    /// Attempts running per plugin (by public key), against the
    /// capacity its router reports.
    running_per_plugin: HashMap<[u8; 32], u32>,
    /// Late attempts whose cancel was pushed, and when: the time of the
    /// first step begun after the push (`None` until then). A step's time
    /// is read when it begins, and a push is made at its end, after its
    /// commit, or after a failed step gave up: stamping the push with its
    /// own step's time would shorten the grace by that step's length
    /// (spec/pulse.md, "Deadlines"). Keyed by job, with the lease of the
    /// attempt told: a later attempt of the same job (this node's or
    /// another's) is not the one told.
    cancel_pushed: HashMap<JobId, (LeaseToken, Option<u64>)>,
    random: u64,
    leases: u64,
    /// Every attempt this dispatcher started that has not ended: reports
    /// are checked against it without reading the job.
    live: HashMap<JobId, Live>,
    /// Cost of finished attempts per handler: (sum, count), for the
    /// reservation of jobs without a max_cost.
    history: HashMap<Did, (u64, u64)>,
    router: Box<dyn Router>,
    next_deadline_scan: u64,
    /// Each handler's owner (its current key) as last routed, by public
    /// key; a handler not routed yet counts as its own owner (its genesis
    /// key, which owns it until a rotation).
    owners: HashMap<[u8; 32], [u8; 32]>,
    /// Where schedules get their handler's schema; no schedule fires
    /// without one.
    schemas: Option<SchemaSource>,
    /// Set by [`Dispatcher::drain`]: no new attempt is started and no
    /// schedule fired; running attempts go on to their end.
    draining: bool,
    /// When a step last succeeded, and whether the live attempts were
    /// told to stop since ([`Dispatcher::step_failed`]).
    last_good_step: Option<u64>,
    fenced: bool,
    /// The latest collection took a full [`REPORT_QUEUE`] of reports:
    /// more may wait unread.
    backlogged: bool,
    /// The steps whose commits are in flight, oldest first
    /// ([`Dispatcher::step_overlapped`]).
    in_flight: std::collections::VecDeque<StepInFlight>,
}

/// Owners remembered before the map starts over (it refills as jobs are
/// routed).
const MAX_OWNERS: usize = 100_000;

impl<E: Executor> Dispatcher<E> {
    /// A dispatcher over `store`. `seed` drives lease tokens and retry
    /// jitter, so a run is reproducible.
    pub fn new(
        store: std::sync::Arc<JobStore>,
        executor: E,
        config: DispatchConfig,
        limits: ConcurrencyLimits,
        seed: u64,
    ) -> Dispatcher<E> {
        let (tx, rx) = report_queue(REPORT_QUEUE);
        Dispatcher {
            store,
            executor,
            config,
            limits,
            tx,
            rx,
            running: HashMap::new(),
            running_per_plugin: HashMap::new(),
            cancel_pushed: HashMap::new(),
            random: seed | 1,
            leases: 0,
            live: HashMap::new(),
            history: HashMap::new(),
            router: Box::new(OpenRouter),
            next_deadline_scan: 0,
            owners: HashMap::new(),
            schemas: None,
            draining: false,
            backlogged: false,
            last_good_step: None,
            fenced: false,
            in_flight: std::collections::VecDeque::new(),
        }
    }

    /// Fires the store's schedules at each step, their handlers' schemas
    /// from `schemas`.
    pub fn with_schedules(mut self, schemas: SchemaSource) -> Dispatcher<E> {
        self.schemas = Some(schemas);
        self
    }

    /// Resolves every job through `router` before dispatching it (the
    /// default routes everything with no authorisation).
    pub fn with_router(mut self, router: Box<dyn Router>) -> Dispatcher<E> {
        self.router = router;
        self
    }

    /// The job store's counters (the runner times steps into them).
    pub fn job_counters(&self) -> std::sync::Arc<super::JobCounters> {
        self.store.counters()
    }

    /// The executor (tests drive fakes through it).
    pub fn executor_mut(&mut self) -> &mut E {
        &mut self.executor
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: reproducible jitter and lease tokens from the seed.
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        self.random
    }

    fn policy(&mut self) -> RetryPolicy {
        RetryPolicy {
            backoff: self.config.backoff,
            random: self.next_random(),
        }
    }

    /// Start-up: every attempt that was running when the process stopped
    /// is recorded as interrupted (no attempt used, not a crash) and its
    /// job queued again. Reads only the running index, never the whole
    /// store.
    ///
    /// # Errors
    /// Storage failures.
    pub fn recover(&mut self, now: u64) -> Result<usize, JobError> {
        let recovered = self.store.interrupt_own_attempts(now)?;
        self.running.clear();
        self.live.clear();
        Ok(recovered)
    }

    /// Stops starting attempts and firing schedules (a node leaving):
    /// reports of the running ones are still applied.
    pub fn drain(&mut self) {
        self.draining = true;
    }

    /// Called after a step failed (the store unreachable). Once steps have
    /// failed for half the heartbeat timeout, every live attempt is told
    /// to stop: its heartbeats are not being recorded, so after the
    /// heartbeat timeout (and the cancel grace) any node may record it
    /// timed out and start its retry, which must not run beside it
    /// (spec/pulse.md, "Several nodes"). Its reports are applied once the
    /// store is back, as for any cancelled attempt.
    pub fn step_failed(&mut self, now: u64) {
        let since = *self.last_good_step.get_or_insert(now);
        if self.fenced || now.saturating_sub(since) < self.config.heartbeat_timeout_ms / 2 {
            return;
        }
        self.fenced = true;
        if self.live.is_empty() {
            return;
        }
        tracing::warn!(
            attempts = self.live.len(),
            "the store has been unreachable for half the heartbeat timeout: telling the running attempts to stop"
        );
        let live: Vec<(JobId, LeaseToken)> =
            self.live.iter().map(|(id, l)| (*id, l.lease)).collect();
        for (id, lease) in live {
            self.executor.cancel(id, lease);
            self.cancel_pushed.entry(id).or_insert((lease, None));
        }
    }

    /// Called after a step succeeded.
    pub fn step_succeeded(&mut self, now: u64) {
        self.last_good_step = Some(now);
        self.fenced = false;
    }

    /// Attempts this dispatcher started that have not ended.
    pub fn live_attempts(&self) -> usize {
        self.live.len()
    }

    /// Cancels a job: queued, held or retrying jobs end at once; a running
    /// job's attempt ends at once and the executor is told.
    ///
    /// # Errors
    /// `not_found`, `wrong_state` for a finished job, storage.
    pub fn cancel(&mut self, id: &JobId, now: u64) -> Result<(), JobError> {
        self.cancel_many(&[*id], now)
            .pop()
            .unwrap_or(Err(JobError::NotFound(*id)))
    }

    /// Cancels several jobs in one group commit (a bulk cancel); one
    /// result per ID, in order, each as [`Dispatcher::cancel`].
    pub fn cancel_many(&mut self, ids: &[JobId], now: u64) -> Vec<Result<(), JobError>> {
        let ops: Vec<(JobId, GroupOp<Option<LeaseToken>>)> = ids
            .iter()
            .map(|id| {
                let op: GroupOp<Option<LeaseToken>> =
                    Box::new(move |j: &mut Job| j.cancel(CancelReason::Requested, now));
                (*id, op)
            })
            .collect();
        let results = self.store.update_many(now, ops);
        ids.iter()
            .zip(results)
            .map(|(id, r)| {
                let lease = r?;
                self.cancel_pushed.remove(id);
                if let Some(lease) = lease {
                    self.executor.cancel(*id, lease);
                    self.end_live(id);
                }
                Ok(())
            })
            .collect()
    }

    /// What to reserve before dispatching `job`: its max_cost, else the
    /// handler's average attempt cost so far.
    fn expected_cost(&self, job: &Job) -> u64 {
        job.limits.max_cost.unwrap_or_else(|| {
            self.history
                .get(&job.handler)
                .map_or(0, |(sum, n)| sum / (*n).max(1))
        })
    }

    /// A handler's spend and reservations at `now`.
    ///
    /// # Errors
    /// Storage failures.
    pub fn budget_use(&self, handler: &Did, now: u64) -> Result<BudgetUse, JobError> {
        let (spent_hour, spent_day) = self.store.spent(handler, now)?;
        // Nodes sharing the store count every node's reservations.
        let reserved = if self.store.is_shared() {
            self.store.handler_load(handler)?.reserved
        } else {
            self.live
                .values()
                .filter(|l| &l.handler == handler)
                .map(|l| l.reserved)
                .sum()
        };
        Ok(BudgetUse {
            spent_hour,
            spent_day,
            reserved,
        })
    }

    /// Forgets an attempt that ended: gives back its slot and
    /// reservation, and learns its cost.
    fn end_live(&mut self, id: &JobId) {
        if let Some(l) = self.live.remove(id) {
            self.release_slots(&l);
            let h = self.history.entry(l.handler).or_default();
            h.0 = h.0.saturating_add(l.cost);
            h.1 += 1;
        }
    }

    fn release_slots(&mut self, l: &Live) {
        if let Some(n) = self.running.get_mut(&l.handler) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.running.remove(&l.handler);
            }
        }
        if let Some(p) = &l.plugin {
            if let Some(n) = self.running_per_plugin.get_mut(p) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.running_per_plugin.remove(p);
                }
            }
        }
    }

    /// One step at time `now`, whole: its group commit is durable and its
    /// attempts started when it returns. Steps left in flight by
    /// [`Dispatcher::step_overlapped`] are finished too, before it.
    ///
    /// # Errors
    /// Storage failures (rule violations by reports are counted, not
    /// returned).
    pub fn step(&mut self, now: u64) -> Result<StepReport, JobError> {
        let overlapped = self.step_overlapped(now);
        merge_reports(overlapped, self.finish_in_flight())
    }

    /// One step at time `now`, overlapped with the steps before it: this
    /// step's group commit is written (visible, its jobs out of the ready
    /// queue) and left in flight, and the oldest step in flight is then
    /// finished (its commit waited for, its attempts started) while
    /// [`DispatchConfig::steps_in_flight`] or more are. A step that writes
    /// nothing finishes every step in flight, then itself. So the
    /// dispatcher stages a step while the ones before commit, and each
    /// commit carries a step's worth of writes; no attempt starts and no
    /// answer goes out before its commit is durable. The report is of the
    /// steps finished in this call. Call [`Dispatcher::finish_in_flight`]
    /// before waiting for work (see [`Dispatcher::in_flight`]) and before
    /// any other call.
    ///
    /// # Errors
    /// As [`Dispatcher::step`], for any step finished.
    pub fn step_overlapped(&mut self, now: u64) -> Result<StepReport, JobError> {
        let begun = self.begin_step(now);
        let mut earlier = Ok(StepReport::default());
        let writes = matches!(&begun, Ok(s) if s.group.writes());
        // A step that writes joins the ones in flight, once the oldest of
        // a full pipeline is finished. One that writes nothing is finished
        // in this call, so every step before it is finished first: steps
        // finish in the order they began (its deadline check must see the
        // attempts of the steps before it started, and its clock is the
        // latest), and the runner does not spin while commits run.
        let keep = if writes {
            self.config.steps_in_flight.max(1) - 1
        } else {
            0
        };
        while self.in_flight.len() > keep {
            let Some(oldest) = self.in_flight.pop_front() else {
                break;
            };
            earlier = merge_reports(earlier, self.finish_step(oldest));
        }
        match begun {
            // On a shared store (nodes) a batch is committed when it is
            // written: nothing to overlap.
            Ok(step) if step.group.writes() && !self.store.is_shared() => {
                self.in_flight.push_back(step);
                earlier
            }
            Ok(step) => {
                let this = self.finish_step(step);
                merge_reports(earlier, this)
            }
            Err(e) => merge_reports(earlier, Err(e)),
        }
    }

    /// Finishes the steps left in flight by [`Dispatcher::step_overlapped`],
    /// oldest first, and returns their report.
    ///
    /// # Errors
    /// As [`Dispatcher::step`].
    pub fn finish_in_flight(&mut self) -> Result<StepReport, JobError> {
        let mut report = Ok(StepReport::default());
        while let Some(step) = self.in_flight.pop_front() {
            report = merge_reports(report, self.finish_step(step));
        }
        report
    }

    /// Whether a step's commit is in flight (see
    /// [`Dispatcher::step_overlapped`]).
    pub fn in_flight(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// The first half of a step: due jobs promoted, reports collected, jobs
    /// chosen, and the step's group commit written, not yet durable.
    fn begin_step(&mut self, now: u64) -> Result<StepInFlight, JobError> {
        let mut span = crate::timeline::span("step");
        let mut report = StepReport::default();
        for (_, at) in self.cancel_pushed.values_mut() {
            at.get_or_insert(now);
        }
        if let Some(schemas) = self.schemas.as_mut().filter(|_| !self.draining) {
            report.schedules = self.store.fire_schedules(now, schemas.as_mut())?;
        }
        self.store.promote_due(now, self.config.scan)?;
        self.release_held(now)?;
        crate::timeline::phase(&mut span, "due");
        // The step's reports and its dispatches go to the store in one
        // group commit: one fsync per step on the dispatcher's path, not
        // two. On a single server, slots freed by this step's results go
        // to its own dispatches (see `collect_reports`).
        let pending = self.collect_reports(now, &mut report)?;
        // From here on every error is kept, not returned at once: what the
        // group commit wrote must still reach the bookkeeping (slots,
        // reservations) and the executor (dispatched attempts).
        let (chosen, mut failure) = self.choose(now);
        crate::timeline::phase(&mut span, "choose");
        if let Err(e) = self.store.append_logs(pending.logs) {
            // Lines are for people: the transitions still go ahead.
            failure.get_or_insert(e);
        }
        let mut ops = pending.ops;
        let reports = ops.len();
        ops.extend(Self::dispatch_ops(&chosen, self.store.node(), now));
        let admission: super::store::Admission = chosen
            .iter()
            .map(|c| (*c.job.handler.public_key(), (c.limit, c.budget)))
            .collect();
        let group = self
            .store
            .begin_group(now, ops, |a: &Applied| a.cost, &admission);
        crate::timeline::phase(&mut span, "written");
        Ok(StepInFlight {
            now,
            span,
            report,
            reports,
            ending: pending.ending,
            chosen,
            group,
            failure,
        })
    }

    /// The second half of a step: its commit waited for, its reports'
    /// outcomes applied, its attempts started.
    fn finish_step(&mut self, step: StepInFlight) -> Result<StepReport, JobError> {
        let StepInFlight {
            now,
            mut span,
            mut report,
            reports,
            ending,
            chosen,
            group,
            mut failure,
        } = step;
        let mut results = self.store.finish_group(group);
        crate::timeline::phase(&mut span, "commit");
        let dispatched = results.split_off(reports);
        if let Err(e) = self.finish_reports(ending, results, &mut report) {
            failure.get_or_insert(e);
        }
        match self.start(now, chosen, dispatched) {
            Ok(n) => report.dispatched = n,
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
        crate::timeline::phase(&mut span, "start");
        if let Some(e) = failure {
            return Err(e);
        }
        // After the reports: a result that came in time wins over the
        // deadline.
        if now >= self.next_deadline_scan {
            report.timed_out = self.enforce_deadlines(now)?;
            self.next_deadline_scan = now.saturating_add(self.config.deadline_scan_ms);
        }
        crate::timeline::end(
            span,
            &[
                ("reports", reports as u64),
                ("dispatched", report.dispatched as u64),
            ],
        );
        Ok(report)
    }

    /// Turns the reports received since the last step (at most
    /// [`REPORT_QUEUE`]) into transitions for the step's group commit.
    /// Reports are checked against the live attempts in memory, never by
    /// reading the job. A cost report is a transition like the others: its
    /// spend is written in the same batch, and an attempt whose cost
    /// crosses the job's max_cost or the handler's budget is cancelled
    /// (reason `budget`) in that same transition. Log lines from live
    /// attempts are returned to be stored before the commit, so a reader
    /// who sees the job finished sees all its lines; each is also a
    /// heartbeat.
    fn collect_reports(
        &mut self,
        now: u64,
        report: &mut StepReport,
    ) -> Result<PendingReports, JobError> {
        let mut reports = Vec::new();
        while reports.len() < REPORT_QUEUE {
            match self.rx.try_recv() {
                Ok(r) => reports.push(r),
                Err(_) => break,
            }
        }
        self.backlogged = reports.len() == REPORT_QUEUE;
        let mut ops: Vec<(JobId, super::store::GroupOp<Applied>)> = Vec::new();
        let mut ending = Ending::default();
        let mut logs = Vec::new();
        // Budget state per handler with cost in this step, read once.
        let mut spending: HashMap<Did, Spending> = HashMap::new();
        for r in reports {
            let lease = r.lease;
            let Some((handler, number)) = self
                .live
                .get(&r.job)
                .filter(|l| l.lease == lease)
                .map(|l| (l.handler.clone(), l.number))
            else {
                report.stale += 1;
                continue;
            };
            let policy = self.policy();
            let ends = matches!(
                r.event,
                ExecEvent::Succeeded(_)
                    | ExecEvent::Failed { .. }
                    | ExecEvent::Crashed
                    | ExecEvent::Unreachable(_)
            );
            let ended_handler = ends.then(|| handler.clone());
            // An attempt told to stop for its deadline that then fails or
            // dies (as a cancelled plugin does) timed out.
            let late = self
                .cancel_pushed
                .get(&r.job)
                .is_some_and(|(told, _)| *told == lease);
            let mut op: super::store::GroupOp<Applied> = match r.event {
                ExecEvent::Failed { .. } | ExecEvent::Crashed if late => {
                    Box::new(move |j: &mut Job| j.time_out(&lease, policy, now).map(Applied::of))
                }
                ExecEvent::Cost(n) => {
                    let s = match spending.get(&handler) {
                        Some(s) => s.clone(),
                        None => {
                            let (hour, day) = self.store.spent(&handler, now)?;
                            let s = Spending {
                                budget: self.store.budget(&handler)?,
                                hour,
                                day,
                                added: Rc::new(Cell::new(0)),
                            };
                            spending.insert(handler, s.clone());
                            s
                        }
                    };
                    // What this op added to the step's spend, taken back
                    // if the group runs again (another node changed one of
                    // its jobs), so the cost is counted once.
                    let mut added = 0;
                    Box::new(move |j: &mut Job| {
                        s.added.set(s.added.get().saturating_sub(added));
                        added = 0;
                        let over_job = j.report_cost(&lease, n, now)?;
                        s.added.set(s.added.get().saturating_add(n));
                        added = n;
                        let over_budget = s.budget.exceeded(&BudgetUse {
                            spent_hour: s.hour.saturating_add(s.added.get()),
                            spent_day: s.day.saturating_add(s.added.get()),
                            reserved: 0,
                        });
                        let mut applied = Applied {
                            live: true,
                            cost: n,
                            cancel: false,
                        };
                        if over_job || over_budget {
                            j.cancel(CancelReason::Budget, now)?;
                            applied.live = false;
                            applied.cancel = true;
                        }
                        Ok(applied)
                    })
                }
                ExecEvent::Log(line) => {
                    tracing::debug!(job = %r.job, attempt = number, "{line}");
                    logs.push((
                        r.job,
                        super::store::LogLine {
                            seq: 0,
                            attempt: number,
                            at_ms: now,
                            line,
                        },
                    ));
                    Box::new(move |j: &mut Job| j.heartbeat(&lease, now).map(Applied::of))
                }
                ExecEvent::Heartbeat => {
                    Box::new(move |j: &mut Job| j.heartbeat(&lease, now).map(Applied::of))
                }
                ExecEvent::Progress(p) => Box::new(move |j: &mut Job| {
                    j.report_progress(&lease, p.clone(), now).map(Applied::of)
                }),
                ExecEvent::Succeeded(result) => Box::new(move |j: &mut Job| {
                    j.succeed(&lease, result.clone(), now)
                        .map(|()| Applied::ended())
                }),
                ExecEvent::Failed {
                    error,
                    retryable,
                    retry_after_ms,
                } => Box::new(move |j: &mut Job| {
                    j.fail(
                        &lease,
                        error.clone(),
                        retryable,
                        retry_after_ms,
                        policy,
                        now,
                    )
                    .map(|()| Applied::ended())
                }),
                ExecEvent::Crashed => Box::new(move |j: &mut Job| {
                    j.crash(&lease, policy, now).map(|()| Applied::ended())
                }),
                ExecEvent::Unreachable(detail) => Box::new(move |j: &mut Job| {
                    j.unreachable(&lease, detail.clone(), policy, now)
                        .map(|()| Applied::ended())
                }),
            };
            if ends && !self.store.is_shared() {
                // This server is the job's only writer, and the lease is
                // the live one: the report ends the attempt in this step's
                // batch. Its slot goes to this step's dispatches, which
                // commit in that batch too, so neither is durable without
                // the other (spec/pulse.md, "Slots lent within a step").
                self.cancel_pushed.remove(&r.job);
                self.end_live(&r.job);
                if let Some(h) = ended_handler {
                    ending.ended_early.insert(r.job, (lease, h));
                }
            }
            ending.reports.push((r.job, lease));
            ops.push((
                r.job,
                Box::new(move |j: &mut Job| {
                    let mut applied = op(j)?;
                    applied.live = j.live_attempt().is_some();
                    Ok(applied)
                }),
            ));
        }
        Ok(PendingReports { ops, ending, logs })
    }

    /// Applies the outcome of the reports' transitions: cost is counted
    /// against the attempt's reservation, and an attempt that ended gives
    /// back its slot and reservation (and is told to stop if it was
    /// cancelled for its budget).
    fn finish_reports(
        &mut self,
        ending: Ending,
        results: Vec<Result<Applied, JobError>>,
        report: &mut StepReport,
    ) -> Result<(), JobError> {
        let mut failure = None;
        for ((job, lease), result) in ending.reports.into_iter().zip(results) {
            match result {
                Ok(applied) => {
                    report.applied += 1;
                    let Some(live) = self.live.get_mut(&job).filter(|l| l.lease == lease) else {
                        // An attempt ended as its result was collected
                        // still spent what this step's reports cost.
                        if let Some((_, handler)) =
                            ending.ended_early.get(&job).filter(|(l, _)| *l == lease)
                        {
                            let h = self.history.entry(handler.clone()).or_default();
                            h.0 = h.0.saturating_add(applied.cost);
                        }
                        continue;
                    };
                    live.cost = live.cost.saturating_add(applied.cost);
                    live.reserved = live.reserved.saturating_sub(applied.cost);
                    if applied.cancel {
                        self.executor.cancel(job, lease);
                    }
                    // A result, failure, crash or budget cancel ends the
                    // attempt.
                    if !applied.live {
                        self.cancel_pushed.remove(&job);
                        self.end_live(&job);
                    }
                }
                Err(JobError::Rejected(_)) => report.stale += 1,
                // Others of the group may have committed: go on, and
                // report the first failure after.
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Pushes a cancel to every attempt past its deadline or heartbeat
    /// timeout; records it timed out once the grace period has passed.
    fn enforce_deadlines(&mut self, now: u64) -> Result<usize, JobError> {
        let mut timed_out = 0;
        for job in self.store.running()? {
            let Some(a) = job.live_attempt() else {
                continue;
            };
            let deadline = a.started_at.saturating_add(job.limits.timeout_ms);
            // On a shared store the node running an attempt stops it after
            // half the heartbeat timeout without a heartbeat recorded
            // (its own commits slow or failing), before any other node may
            // record it timed out and start its retry after the whole
            // timeout and the grace: so the two never run at once.
            let ours = self.live.get(&job.id).is_some_and(|l| l.lease == a.lease);
            let silence = if self.store.is_shared() && ours {
                self.config.heartbeat_timeout_ms / 2
            } else {
                self.config.heartbeat_timeout_ms
            };
            let silent = a.last_heartbeat.saturating_add(silence);
            // Some(None): pushed, and no step has begun since.
            let pushed = self
                .cancel_pushed
                .get(&job.id)
                .filter(|(told, _)| *told == a.lease)
                .map(|(_, at)| *at);
            // Once a cancel was pushed the grace runs out whatever the
            // attempt reports meanwhile: heartbeats that resume after the
            // push do not undo it (spec/pulse.md, "Deadlines").
            //
            // With reports waiting unread, the attempt's heartbeat or
            // result may be among them: silence proves nothing yet, for
            // one more heartbeat timeout at most (a queue kept full for
            // ever must not shield a hung attempt). Nodes keep the rule,
            // which fences an attempt from its retry on another node
            // (spec/pulse.md, "Deadlines").
            let unheard =
                self.backlogged && !self.store.is_shared() && now < silent.saturating_add(silence);
            if pushed.is_none() && now < deadline && (now < silent || unheard) {
                continue;
            }
            let lease = a.lease;
            match pushed.as_ref() {
                None => {
                    self.executor.cancel(job.id, lease);
                    self.cancel_pushed.insert(job.id, (lease, None));
                }
                Some(Some(pushed)) if now >= pushed.saturating_add(self.config.grace_ms) => {
                    let policy = self.policy();
                    match self
                        .store
                        .update(&job.id, now, |j| j.time_out(&lease, policy, now))
                    {
                        Ok(()) => timed_out += 1,
                        // The attempt ended meanwhile (on a shared store,
                        // another node may have recorded its end first).
                        Err(JobError::Rejected(_)) => {}
                        Err(e) => return Err(e),
                    }
                    self.cancel_pushed.remove(&job.id);
                    self.end_live(&job.id);
                }
                Some(_) => {}
            }
        }
        Ok(timed_out)
    }

    /// Applies a transition the dispatcher decided from its queues (hold,
    /// release, refuse). A job no longer in the state the queue showed was
    /// moved on meanwhile — by another node sharing the store — and is
    /// left as it is: its new state is in the queues once the notice or
    /// the commit arrives.
    fn settle(
        &self,
        id: &JobId,
        now: u64,
        f: impl FnMut(&mut Job) -> Result<(), super::PulseError>,
    ) -> Result<(), JobError> {
        match self.store.update(id, now, f) {
            Err(JobError::Rejected(_)) => Ok(()),
            other => other,
        }
    }

    /// Releases jobs held for budget whose reservation now fits, and jobs
    /// held for their plugin once it may take them; refuses those whose
    /// plugin did not come within the wait.
    fn release_held(&mut self, now: u64) -> Result<(), JobError> {
        for id in self
            .store
            .held(HoldReason::Plugin as u8, self.config.scan)?
        {
            let job = self.store.get(&id)?;
            match self.router.route(&job) {
                Route::Go(_) => self.settle(&id, now, |j| j.release(now))?,
                Route::Refuse(why, detail) => {
                    self.settle(&id, now, |j| j.refuse(why, detail.clone(), now))?;
                }
                Route::Hold(why, detail)
                    if now >= job.updated_at.saturating_add(self.config.plugin_wait_ms) =>
                {
                    let detail = format!(
                        "held for {} ms without resolving: {detail}",
                        self.config.plugin_wait_ms
                    );
                    self.settle(&id, now, |j| j.refuse(why, detail.clone(), now))?;
                }
                Route::Hold(..) => {}
            }
        }
        for id in self
            .store
            .held(HoldReason::Budget as u8, self.config.scan)?
        {
            let job = self.store.get(&id)?;
            let budget = self.store.budget(&job.handler)?;
            let expected = self.expected_cost(&job);
            if !budget.is_limited() || budget.admits(&self.budget_use(&job.handler, now)?, expected)
            {
                self.settle(&id, now, |j| j.release(now))?;
            }
        }
        Ok(())
    }

    /// Chooses ready jobs while slots are free, taking their slots and
    /// reservations. A handler at its `max_concurrency` is skipped, not
    /// waited for, so it never blocks other handlers' jobs.
    fn choose(&mut self, now: u64) -> (Vec<Chosen>, Option<JobError>) {
        let mut chosen = Vec::new();
        if self.draining {
            return (chosen, None);
        }
        let failure = self.choose_into(now, &mut chosen).err();
        (chosen, failure)
    }

    /// [`Dispatcher::choose`]'s work: every job pushed onto `chosen` holds
    /// its slot and reservation, also when a later one fails.
    ///
    /// Fair between handlers (spec/pulse.md, "Fair sharing"): handlers
    /// with ready jobs take turns, best first job first; while two or more
    /// have ready jobs, none may hold more than its share of the slots
    /// (`fair_share_percent` of `max_running`), nor may one owner's
    /// handlers together while two or more owners have ready jobs. Slots
    /// no other handler can
    /// use then go to any handler. Within a handler, jobs go in priority,
    /// then age order.
    fn choose_into(&mut self, now: u64, chosen: &mut Vec<Chosen>) -> Result<(), JobError> {
        let total: u32 = self.running.values().sum();
        let mut free = self.config.max_running.saturating_sub(total as usize);
        if free == 0 {
            return Ok(());
        }
        let handlers = self.store.ready_handlers();
        if handlers.is_empty() {
            return Ok(());
        }
        // Owners with ready work: while two or more have some, each owner's
        // handlers together hold at most one share too.
        let owners_waiting = handlers
            .iter()
            .map(|(h, _)| self.owner_of(h))
            .collect::<std::collections::HashSet<_>>()
            .len();
        let share = if handlers.len() > 1 {
            let p = self.config.fair_share_percent.clamp(1, 100);
            (self.config.max_running * p).div_ceil(100).max(1) as u32
        } else {
            u32::MAX
        };
        // Budgets (and, on a shared store, loads) read once per handler
        // per step.
        let mut budgets = StepReads::default();
        // Per handler: where its next ready job is, and whether it can take
        // no more this step (no ready job left, or at its concurrency).
        let mut turns: Vec<([u8; 32], Option<super::store::ReadyCursor>, bool)> = handlers
            .into_iter()
            .map(|(h, _)| (h, None, false))
            .collect();
        let mut scanned = 0;
        for capped in [true, false] {
            loop {
                let mut took = false;
                for turn in &mut turns {
                    if free == 0 || scanned >= self.config.scan {
                        return Ok(());
                    }
                    if turn.2 {
                        continue;
                    }
                    if capped
                        && (self.running_of(&turn.0) >= share
                            || (owners_waiting > 1
                                && self.running_of_owner(&self.owner_of(&turn.0)) >= share))
                    {
                        continue;
                    }
                    // This handler's next job that can go now, if any.
                    loop {
                        let Some((id, cursor)) =
                            self.store.next_ready_of(&turn.0, turn.1.as_ref())?
                        else {
                            turn.2 = true;
                            break;
                        };
                        turn.1 = Some(cursor);
                        scanned += 1;
                        match self.take(&id, now, &mut budgets)? {
                            Take::Chosen(c) => {
                                chosen.push(*c);
                                free -= 1;
                                took = true;
                                break;
                            }
                            Take::Full => {
                                turn.2 = true;
                                break;
                            }
                            Take::Skipped if scanned >= self.config.scan => return Ok(()),
                            Take::Skipped => {}
                        }
                    }
                }
                if !took {
                    break;
                }
            }
        }
        Ok(())
    }

    /// The owner of the handler with this key, as last routed.
    fn owner_of(&self, handler: &[u8; 32]) -> [u8; 32] {
        self.owners.get(handler).copied().unwrap_or(*handler)
    }

    /// Attempts running for the handlers of this owner.
    fn running_of_owner(&self, owner: &[u8; 32]) -> u32 {
        self.running
            .iter()
            .filter(|(d, _)| self.owner_of(d.public_key()) == *owner)
            .map(|(_, n)| *n)
            .sum()
    }

    /// Attempts running for the handler with this key.
    fn running_of(&self, handler: &[u8; 32]) -> u32 {
        self.running
            .iter()
            .filter(|(d, _)| d.public_key() == handler)
            .map(|(_, n)| *n)
            .sum()
    }

    /// Tries to dispatch the ready job `id`: its route, its handler's
    /// concurrency and budget decide; a chosen job holds its slot and
    /// reservation.
    fn take(&mut self, id: &JobId, now: u64, reads: &mut StepReads) -> Result<Take, JobError> {
        // Chosen by a step still in flight, whose dispatch of it may yet
        // be refused: a job is never chosen twice at once.
        if self
            .in_flight
            .iter()
            .any(|s| s.chosen.iter().any(|c| c.job.id == *id))
        {
            return Ok(Take::Skipped);
        }
        let mut job: Job = self.store.get(id)?;
        // Enqueued after this step read the clock: its dispatch would be
        // refused as not due. The enqueue woke the dispatcher, so the
        // next step takes it.
        if job.run_at > now {
            return Ok(Take::Skipped);
        }
        // The operator's cap on the timeout a handler may claim.
        if let Some(cap) = self.config.max_timeout_ms {
            job.limits.timeout_ms = job.limits.timeout_ms.min(cap);
        }
        // Resolution: checked before every dispatch, never cached past a
        // change of the chains it read.
        let authorization = match self.router.route(&job) {
            Route::Go(a) => a,
            // Its plugin is not connected to this node: another node may
            // take it, so it stays ready (and the handler's other jobs,
            // served by the same plugin, wait this step out).
            Route::Hold(..) if self.store.is_shared() => return Ok(Take::Full),
            Route::Hold(..) => {
                self.settle(id, now, |j| j.hold(HoldReason::Plugin, now))?;
                return Ok(Take::Skipped);
            }
            Route::Refuse(why, detail) => {
                self.settle(id, now, |j| j.refuse(why, detail.clone(), now))?;
                return Ok(Take::Skipped);
            }
        };
        if let Some(a) = &authorization {
            if self.owners.len() >= MAX_OWNERS {
                self.owners.clear();
            }
            self.owners
                .insert(*job.handler.public_key(), *a.owner.public_key());
        }
        let claimed = match &authorization {
            Some(a) => a.max_concurrency,
            None => (self.limits)(&job.handler),
        };
        // The operator's cap on the concurrency a handler may claim.
        let limit = match (claimed, self.config.max_handler_concurrency) {
            (Some(l), Some(cap)) => Some(l.min(cap)),
            (l, cap) => l.or(cap),
        };
        let shared = self.store.is_shared();
        // On a shared store, every node's attempts count (as stored when
        // first read this step, plus this step's choices); the group
        // commit checks again against what is stored then.
        let load = if shared {
            let h = *job.handler.public_key();
            match reads.loads.get(&h) {
                Some(l) => Some(*l),
                None => {
                    let l = self.store.handler_load(&job.handler)?;
                    reads.loads.insert(h, l);
                    Some(l)
                }
            }
        } else {
            None
        };
        let busy = match load {
            Some(l) => l.running,
            None => self.running.get(&job.handler).copied().unwrap_or(0),
        };
        if limit.is_some_and(|l| busy >= l) {
            return Ok(Take::Full);
        }
        // The plugin's instances together have no free slot.
        let plugin = authorization.as_ref().map(|a| *a.plugin.public_key());
        if let (Some(a), Some(p)) = (&authorization, &plugin) {
            let used = self.running_per_plugin.get(p).copied().unwrap_or(0);
            if self.router.capacity(&a.plugin).is_some_and(|c| used >= c) {
                return Ok(Take::Full);
            }
        }
        // Reserve the job's expected cost; if the handler's budget cannot
        // cover it, hold the job (no attempt is used).
        let budget = match reads.budgets.get(job.handler.public_key()) {
            Some(b) => *b,
            None => {
                let b = self.store.budget(&job.handler)?;
                reads.budgets.insert(*job.handler.public_key(), b);
                b
            }
        };
        let expected = self.expected_cost(&job);
        if budget.is_limited() {
            let mut used = self.budget_use(&job.handler, now)?;
            if let Some(l) = load {
                used.reserved = l.reserved;
            }
            if !budget.admits(&used, expected) {
                self.settle(id, now, |j| j.hold(HoldReason::Budget, now))?;
                return Ok(Take::Skipped);
            }
        }
        if let Some(l) = load {
            reads.loads.insert(
                *job.handler.public_key(),
                super::HandlerLoad {
                    running: l.running.saturating_add(1),
                    reserved: l.reserved.saturating_add(expected),
                },
            );
        }
        self.leases += 1;
        let mut token = [0u8; 16];
        token[..8].copy_from_slice(&self.leases.to_be_bytes());
        token[8..].copy_from_slice(&self.next_random().to_be_bytes());
        let lease = LeaseToken(token);
        *self.running.entry(job.handler.clone()).or_default() += 1;
        if let Some(p) = plugin {
            *self.running_per_plugin.entry(p).or_default() += 1;
        }
        self.live.insert(
            job.id,
            Live {
                plugin,
                handler: job.handler.clone(),
                lease,
                number: job.attempts.len() as u32 + 1,
                reserved: expected,
                cost: 0,
            },
        );
        Ok(Take::Chosen(Box::new(Chosen {
            job,
            lease,
            authorization,
            limit,
            budget,
            reserved: if shared { expected } else { 0 },
        })))
    }

    /// The dispatch transitions of the chosen jobs.
    fn dispatch_ops(
        chosen: &[Chosen],
        node: Option<&str>,
        now: u64,
    ) -> Vec<(JobId, super::store::GroupOp<Applied>)> {
        chosen
            .iter()
            .map(|c| {
                let lease = c.lease;
                let timeout_ms = c.job.limits.timeout_ms;
                let under = c
                    .authorization
                    .as_ref()
                    .map(|a| (a.handler_index, a.plugin_index));
                let node = node.map(str::to_owned);
                let reserved = c.reserved;
                let op: super::store::GroupOp<Applied> = Box::new(move |j: &mut Job| {
                    // As capped by the operator when it was chosen.
                    j.limits.timeout_ms = timeout_ms;
                    j.dispatch(lease, now)?;
                    if let Some(a) = j.attempts.last_mut() {
                        a.authorised_under = under;
                        a.node = node.clone();
                        a.reserved = reserved;
                    }
                    Ok(Applied::of(()))
                });
                (c.job.id, op)
            })
            .collect()
    }

    /// Starts the attempts whose dispatch was committed; gives back the
    /// slots of the others.
    fn start(
        &mut self,
        now: u64,
        chosen: Vec<Chosen>,
        results: Vec<Result<Applied, JobError>>,
    ) -> Result<usize, JobError> {
        let mut started = 0;
        let mut failure = None;
        for (c, result) in chosen.into_iter().zip(results) {
            match result {
                Ok(_) => {
                    started += 1;
                    let job = c.job;
                    self.executor.start(
                        AttemptSpec {
                            job: job.id,
                            lease: c.lease,
                            // The attempt just appended.
                            number: job.attempts.len() as u32 + 1,
                            handler: job.handler,
                            payload: job.payload,
                            deadline: now.saturating_add(job.limits.timeout_ms),
                            checkpoint: job.progress.checkpoint,
                            // Never 0, which plugins read as "not said".
                            heartbeat_interval_ms: (self.config.heartbeat_timeout_ms / 3).max(1),
                            authorization: c.authorization,
                            trace_parent: job.trace_parent,
                        },
                        self.tx.clone(),
                    );
                }
                Err(e) => {
                    // Not dispatched (cancelled meanwhile, or storage):
                    // give the slot and reservation back.
                    if self.live.get(&c.job.id).is_some_and(|l| l.lease == c.lease) {
                        if let Some(l) = self.live.remove(&c.job.id) {
                            self.release_slots(&l);
                        }
                    }
                    if let JobError::Storage(_) = e {
                        failure = Some(e);
                    }
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(started),
        }
    }
}

/// Two steps' reports as one; the first failure wins.
fn merge_reports(
    a: Result<StepReport, JobError>,
    b: Result<StepReport, JobError>,
) -> Result<StepReport, JobError> {
    let (a, b) = (a?, b?);
    Ok(StepReport {
        dispatched: a.dispatched + b.dispatched,
        applied: a.applied + b.applied,
        stale: a.stale + b.stale,
        timed_out: a.timed_out + b.timed_out,
        schedules: a.schedules.merged(b.schedules),
    })
}

/// A step whose group commit is written and not yet durable
/// ([`Dispatcher::step_overlapped`]).
struct StepInFlight {
    now: u64,
    span: Option<crate::timeline::Span>,
    report: StepReport,
    /// How many of the group's results are reports' (the rest are the
    /// dispatches of `chosen`, in order).
    reports: usize,
    ending: Ending,
    chosen: Vec<Chosen>,
    group: super::store::GroupInFlight<Applied>,
    /// The first failure of the step so far.
    failure: Option<JobError>,
}

/// Report transitions waiting for the step's group commit.
struct PendingReports {
    ops: Vec<(JobId, super::store::GroupOp<Applied>)>,
    ending: Ending,
    logs: Vec<(JobId, super::store::LogLine)>,
}

/// What a step's report transitions are for, to be matched with their
/// outcomes once the group commit is done.
#[derive(Default)]
struct Ending {
    /// The job and lease of each report transition, in order.
    reports: Vec<(JobId, LeaseToken)>,
    /// Attempts ended when their result was collected (a single server
    /// gives their slots to the same step's dispatches), with their
    /// handler: the cost their reports in this step add is learnt when
    /// those transitions have applied.
    ended_early: HashMap<JobId, (LeaseToken, Did)>,
}

/// An attempt this dispatcher started and has not seen end.
struct Live {
    handler: Did,
    /// The plugin it was authorised for, by public key.
    plugin: Option<[u8; 32]>,
    lease: LeaseToken,
    /// The attempt's number (1 for the first).
    number: u32,
    /// Cost reserved and not yet spent.
    reserved: u64,
    /// Cost reported so far.
    cost: u64,
}

/// What one transition of a step did.
struct Applied {
    /// Whether the job still has a live attempt after it.
    live: bool,
    /// Cost it recorded (the handler's spend, in the same batch).
    cost: u64,
    /// Whether it cancelled the attempt for its budget (the executor must
    /// be told).
    cancel: bool,
}

impl Applied {
    fn of(_: ()) -> Applied {
        Applied {
            live: true,
            cost: 0,
            cancel: false,
        }
    }

    fn ended() -> Applied {
        Applied {
            live: false,
            cost: 0,
            cancel: false,
        }
    }
}

/// A handler's spend before this step, its budget, and the cost its
/// transitions in this step have added so far (in order).
#[derive(Clone)]
struct Spending {
    budget: super::Budget,
    hour: u64,
    day: u64,
    added: Rc<Cell<u64>>,
}

/// What [`Dispatcher::take`] made of a ready job.
enum Take {
    /// Dispatched: it holds a slot.
    Chosen(Box<Chosen>),
    /// Not now (held or refused); the handler's next job may go.
    Skipped,
    /// Its handler is at its concurrency: none of its jobs may go now.
    Full,
}

/// A job chosen for dispatch in this step.
struct Chosen {
    job: Job,
    lease: LeaseToken,
    authorization: Option<Arc<Authorization>>,
    /// Its handler's concurrency limit and budget, which the start must
    /// stay within on all nodes sharing the store.
    limit: Option<u32>,
    budget: super::Budget,
    /// Cost reserved for it, recorded on the attempt on a shared store.
    reserved: u64,
}

/// What [`Dispatcher::choose`] read once per handler in a step.
#[derive(Default)]
struct StepReads {
    budgets: HashMap<[u8; 32], super::Budget>,
    /// On a shared store: each handler's load on all nodes, as first
    /// read, plus the attempts chosen since.
    loads: HashMap<[u8; 32], super::HandlerLoad>,
}
