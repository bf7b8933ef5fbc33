//! Prometheus metrics: a few counters and one histogram, exposed in the
//! text format on `--metrics-listen`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Upper bounds (seconds) of the append latency histogram.
const BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Longest HTTP request head read from a metrics client.
const MAX_REQUEST_HEAD: usize = 8192;

/// Server counters.
#[derive(Debug, Default)]
pub struct Metrics {
    appended: AtomicU64,
    duplicates: AtomicU64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_micros: AtomicU64,
    log_size: AtomicU64,
    /// SIGHUP token reloads: [applied, refused].
    token_reloads: [AtomicU64; 2],
    pulse: OnceLock<Arc<crate::pulse::PulseCounters>>,
    access: OnceLock<Arc<crate::auth::AccessCell>>,
    connections: OnceLock<Arc<super::incoming::ConnectionCounters>>,
    streams: OnceLock<Arc<super::streams::Streams>>,
    ledger: OnceLock<LedgerRef>,
    node: OnceLock<String>,
    jobs: OnceLock<JobsRef>,
}

/// The job store and plugin sessions, for the job metrics.
#[derive(Clone)]
struct JobsRef(Arc<crate::pulse::JobStore>, Arc<crate::plugin::Sessions>);

impl std::fmt::Debug for JobsRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Jobs")
    }
}

/// Handlers given their own `handler` label in the queue depth metric
/// (the deepest queues); the others are summed under `handler="other"`,
/// so the number of series stays bounded however many handlers exist.
const QUEUE_DEPTH_HANDLERS: usize = 10;

/// The ledger, for readiness (it has no Debug of its own).
#[derive(Clone)]
struct LedgerRef(Arc<crate::ledger::Ledger>);

impl std::fmt::Debug for LedgerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ledger")
    }
}

/// How long the dispatcher may go without a good step before the server
/// is not ready: it steps at least every 10 ms when idle.
const MAX_STEP_AGE_MS: u64 = 5_000;

impl Metrics {
    pub(crate) fn appended(&self, duplicate: bool, took: Duration, size: u64) {
        if duplicate {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        } else {
            self.appended.fetch_add(1, Ordering::Relaxed);
        }
        let secs = took.as_secs_f64();
        for (b, bound) in self.buckets.iter().zip(BUCKETS) {
            if secs <= bound {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.log_size.fetch_max(size, Ordering::Relaxed);
    }

    pub(crate) fn rejected(&self, code: &'static str) {
        *self
            .rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(code)
            .or_default() += 1;
    }

    pub(crate) fn set_log_size(&self, size: u64) {
        self.log_size.fetch_max(size, Ordering::Relaxed);
    }

    /// Counts a token reload, once its outcome is in force.
    pub(crate) fn token_reload(&self, applied: bool) {
        self.token_reloads[usize::from(!applied)].fetch_add(1, Ordering::Release);
    }

    /// Shows the connection counters too.
    pub(crate) fn watch_connections(&self, c: Arc<super::incoming::ConnectionCounters>) {
        let _ = self.connections.set(c);
    }

    /// Shows the calls refused for their client's stream cap too.
    pub(crate) fn watch_streams(&self, s: Arc<super::streams::Streams>) {
        let _ = self.streams.set(s);
    }

    /// Shows the refused callers of the jobs API too.
    pub(crate) fn watch_access(&self, access: Arc<crate::auth::AccessCell>) {
        let _ = self.access.set(access);
    }

    /// Shows the running dispatcher's counters too.
    pub(crate) fn watch_pulse(&self, counters: Arc<crate::pulse::PulseCounters>) {
        let _ = self.pulse.set(counters);
    }

    /// Shows the job metrics of this store and these sessions too.
    pub(crate) fn watch_jobs(
        &self,
        store: Arc<crate::pulse::JobStore>,
        sessions: Arc<crate::plugin::Sessions>,
    ) {
        let _ = self.jobs.set(JobsRef(store, sessions));
    }

    /// Names this server as a node of several (`serve --node`).
    pub(crate) fn watch_node(&self, name: String) {
        let _ = self.node.set(name);
    }

    /// A node's figures: its name, how far its log trails the store's,
    /// and the commits it lost to other nodes.
    fn render_node(&self, out: &mut String) {
        let Some(name) = self.node.get() else {
            return;
        };
        let _ = writeln!(
            out,
            "# HELP pulse_ledger_node_info This server is the node of this name, of several sharing one store."
        );
        let _ = writeln!(out, "# TYPE pulse_ledger_node_info gauge");
        let _ = writeln!(out, "pulse_ledger_node_info{{node=\"{name}\"}} 1");
        if let Some(LedgerRef(ledger)) = self.ledger.get() {
            if let Ok(stored) = ledger.stored_size() {
                let _ = writeln!(
                    out,
                    "# HELP pulse_ledger_log_lag_entries Entries the store holds that this node's readers do not serve yet."
                );
                let _ = writeln!(out, "# TYPE pulse_ledger_log_lag_entries gauge");
                let _ = writeln!(
                    out,
                    "pulse_ledger_log_lag_entries {}",
                    stored.saturating_sub(ledger.size())
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP pulse_ledger_node_lost_races_total Commits refused because another node wrote what they expected first (each was decided again): log group commits, and job writes."
        );
        let _ = writeln!(out, "# TYPE pulse_ledger_node_lost_races_total counter");
        if let Some(LedgerRef(ledger)) = self.ledger.get() {
            let _ = writeln!(
                out,
                "pulse_ledger_node_lost_races_total{{store=\"log\"}} {}",
                ledger.lost_races()
            );
        }
        if let Some(JobsRef(store, _)) = self.jobs.get() {
            let _ = writeln!(
                out,
                "pulse_ledger_node_lost_races_total{{store=\"jobs\"}} {}",
                store.lost_races()
            );
        }
    }

    /// Judges readiness on this ledger too (`/readyz`).
    pub(crate) fn watch_ledger(&self, ledger: Arc<crate::ledger::Ledger>) {
        let _ = self.ledger.set(LedgerRef(ledger));
    }

    /// Why the server cannot do its work now, one reason per failed check
    /// (empty: ready): the ledger still writes (no failed commit), the
    /// data dir has its free-space reserve, and the dispatcher has stepped
    /// within the last 5 s.
    pub fn not_ready(&self) -> Vec<String> {
        let mut why = Vec::new();
        if let Some(LedgerRef(ledger)) = self.ledger.get() {
            if let Some(e) = ledger.write_failure() {
                why.push(format!("storage_failed: {e}"));
            }
            if let Err(e) = ledger.space_check() {
                why.push(e.to_string());
            }
        }
        if let Some(p) = self.pulse.get() {
            let last = p.last_good_step_ms();
            let age = crate::clock::unix_ms().saturating_sub(last);
            if last == 0 {
                why.push("dispatcher_stalled: the dispatcher has not stepped yet".into());
            } else if age > MAX_STEP_AGE_MS {
                why.push(format!(
                    "dispatcher_stalled: the dispatcher's last good step was {age} ms ago"
                ));
            }
        }
        why
    }

    /// The metrics in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP pulse_ledger_appends_total Accepted submissions."
        );
        let _ = writeln!(out, "# TYPE pulse_ledger_appends_total counter");
        let _ = writeln!(
            out,
            "pulse_ledger_appends_total{{result=\"appended\"}} {}",
            r(&self.appended)
        );
        let _ = writeln!(
            out,
            "pulse_ledger_appends_total{{result=\"duplicate\"}} {}",
            r(&self.duplicates)
        );
        let _ = writeln!(
            out,
            "# HELP pulse_ledger_rejects_total Rejected submissions by spec error code."
        );
        let _ = writeln!(out, "# TYPE pulse_ledger_rejects_total counter");
        for (code, n) in self
            .rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(out, "pulse_ledger_rejects_total{{code=\"{code}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP pulse_ledger_append_seconds Time from request to durable append."
        );
        let _ = writeln!(out, "# TYPE pulse_ledger_append_seconds histogram");
        for (b, bound) in self.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(
                out,
                "pulse_ledger_append_seconds_bucket{{le=\"{bound}\"}} {}",
                r(b)
            );
        }
        let count = r(&self.latency_count);
        let _ = writeln!(
            out,
            "pulse_ledger_append_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "pulse_ledger_append_seconds_sum {}",
            r(&self.latency_micros) as f64 / 1e6
        );
        let _ = writeln!(out, "pulse_ledger_append_seconds_count {count}");
        let _ = writeln!(out, "# HELP pulse_ledger_log_size Entries in the log.");
        let _ = writeln!(out, "# TYPE pulse_ledger_log_size gauge");
        let _ = writeln!(out, "pulse_ledger_log_size {}", r(&self.log_size));
        self.render_node(&mut out);
        let _ = writeln!(
            out,
            "# HELP pulse_ledger_token_reloads_total Reloads of the [[token]] tables on SIGHUP: applied (in force) or refused (the previous tokens stay)."
        );
        let _ = writeln!(out, "# TYPE pulse_ledger_token_reloads_total counter");
        for (outcome, n) in ["applied", "refused"].iter().zip(&self.token_reloads) {
            let _ = writeln!(
                out,
                "pulse_ledger_token_reloads_total{{outcome=\"{outcome}\"}} {}",
                n.load(Ordering::Acquire)
            );
        }
        if let Some(c) = self.connections.get() {
            let _ = writeln!(
                out,
                "# HELP pulse_ledger_connections_open gRPC connections open now."
            );
            let _ = writeln!(out, "# TYPE pulse_ledger_connections_open gauge");
            let _ = writeln!(out, "pulse_ledger_connections_open {}", c.open());
            let _ = writeln!(
                out,
                "# HELP pulse_ledger_connections_refused_total Connections closed at once (server_full, client_full), for not speaking in time (silent), or for having no call in flight for the idle timeout (idle)."
            );
            let _ = writeln!(out, "# TYPE pulse_ledger_connections_refused_total counter");
            for (reason, n) in [
                ("server_full", c.refused_total()),
                ("client_full", c.refused_client()),
                ("silent", c.silent()),
                ("idle", c.idle()),
            ] {
                let _ = writeln!(
                    out,
                    "pulse_ledger_connections_refused_total{{reason=\"{reason}\"}} {n}"
                );
            }
        }
        if let Some(s) = self.streams.get() {
            let _ = writeln!(
                out,
                "# HELP pulse_ledger_streams_refused_total Calls refused because their client held max_streams_per_client open (too_many_streams)."
            );
            let _ = writeln!(out, "# TYPE pulse_ledger_streams_refused_total counter");
            let _ = writeln!(out, "pulse_ledger_streams_refused_total {}", s.refused());
        }
        if let Some(a) = self.access.get() {
            let _ = writeln!(
                out,
                "# HELP pulse_ledger_auth_refusals_total Jobs API calls refused by the access rule, by code (spec/security.md)."
            );
            let _ = writeln!(out, "# TYPE pulse_ledger_auth_refusals_total counter");
            for (code, n) in a.refusals() {
                if code != crate::auth::AuthCode::RateLimited {
                    let _ = writeln!(
                        out,
                        "pulse_ledger_auth_refusals_total{{code=\"{}\"}} {n}",
                        code.as_str()
                    );
                }
            }
        }
        if let Some(p) = self.pulse.get() {
            let _ = writeln!(
                out,
                "# HELP pulse_ledger_stale_reports_total Plugin reports refused because their attempt was no longer live (sent after a timeout, cancel or lost lease)."
            );
            let _ = writeln!(out, "# TYPE pulse_ledger_stale_reports_total counter");
            let _ = writeln!(
                out,
                "pulse_ledger_stale_reports_total {}",
                p.stale_reports()
            );
        }
        if let Some(JobsRef(store, sessions)) = self.jobs.get() {
            render_jobs(&mut out, store, sessions);
        }
        out
    }
}

/// `# HELP` and `# TYPE` lines.
fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn render_jobs(
    out: &mut String,
    store: &crate::pulse::JobStore,
    sessions: &crate::plugin::Sessions,
) {
    let (ready, delayed, running, held) = store.queue_sizes();
    head(
        out,
        "pulse_ledger_jobs",
        "gauge",
        "Unfinished jobs now: ready (queued and due), delayed (queued before run_at, or retrying), running, held.",
    );
    for (state, n) in [
        ("ready", ready),
        ("delayed", delayed),
        ("running", running),
        ("held", held),
    ] {
        let _ = writeln!(out, "pulse_ledger_jobs{{state=\"{state}\"}} {n}");
    }
    let (top, handlers) = store.deepest_queues(QUEUE_DEPTH_HANDLERS);
    head(
        out,
        "pulse_ledger_queue_depth",
        "gauge",
        "Ready jobs per handler: the 10 deepest queues by did:key, the rest summed as \"other\".",
    );
    let shown: usize = top.iter().map(|(_, n)| n).sum();
    for (did, n) in &top {
        let _ = writeln!(out, "pulse_ledger_queue_depth{{handler=\"{did}\"}} {n}");
    }
    if handlers > top.len() {
        let _ = writeln!(
            out,
            "pulse_ledger_queue_depth{{handler=\"other\"}} {}",
            ready.saturating_sub(shown)
        );
    }
    let c = store.counters();
    head(
        out,
        "pulse_ledger_jobs_enqueued_total",
        "counter",
        "Jobs enqueued (not counting idempotent repeats).",
    );
    let _ = writeln!(out, "pulse_ledger_jobs_enqueued_total {}", c.enqueued());
    head(
        out,
        "pulse_ledger_attempts_started_total",
        "counter",
        "Attempts started.",
    );
    let _ = writeln!(
        out,
        "pulse_ledger_attempts_started_total {}",
        c.attempts_started()
    );
    head(
        out,
        "pulse_ledger_attempts_ended_total",
        "counter",
        "Attempts ended, by outcome.",
    );
    for (outcome, n) in c.attempts_ended() {
        let _ = writeln!(
            out,
            "pulse_ledger_attempts_ended_total{{outcome=\"{}\"}} {n}",
            outcome.as_str()
        );
    }
    head(
        out,
        "pulse_ledger_jobs_finished_total",
        "counter",
        "Jobs finished, by state and reason.",
    );
    for ((state, reason), n) in c.finished() {
        let _ = writeln!(
            out,
            "pulse_ledger_jobs_finished_total{{state=\"{state}\",reason=\"{reason}\"}} {n}"
        );
    }
    head(
        out,
        "pulse_ledger_job_retries_total",
        "counter",
        "Jobs that went to retrying after an attempt.",
    );
    let _ = writeln!(out, "pulse_ledger_job_retries_total {}", c.retries());
    let (held_for_budget, cancelled_for_budget) = c.budget_refusals();
    head(
        out,
        "pulse_ledger_budget_refusals_total",
        "counter",
        "Jobs held (before dispatch) or cancelled (mid-attempt) by a cost budget.",
    );
    let _ = writeln!(
        out,
        "pulse_ledger_budget_refusals_total{{action=\"held\"}} {held_for_budget}"
    );
    let _ = writeln!(
        out,
        "pulse_ledger_budget_refusals_total{{action=\"cancelled\"}} {cancelled_for_budget}"
    );
    let (fired, skipped, missed, failed) = c.schedule_occurrences();
    head(
        out,
        "pulse_ledger_schedule_occurrences_total",
        "counter",
        "Schedule occurrences: fired (a job enqueued), skipped (overlap), missed (passed while stopped), failed (the handler took no job).",
    );
    for (outcome, n) in [
        ("fired", fired),
        ("skipped", skipped),
        ("missed", missed),
        ("failed", failed),
    ] {
        let _ = writeln!(
            out,
            "pulse_ledger_schedule_occurrences_total{{outcome=\"{outcome}\"}} {n}"
        );
    }
    c.wait.render(
        out,
        "pulse_ledger_job_wait_seconds",
        "From when a job could start (its run_at, or its retry time) to the start of its attempt.",
    );
    c.run.render(
        out,
        "pulse_ledger_attempt_seconds",
        "How long attempts ran.",
    );
    c.step.render(
        out,
        "pulse_ledger_dispatcher_step_seconds",
        "Dispatcher steps (each one group commit of reports and dispatches).",
    );
    c.commit.render(
        out,
        "pulse_ledger_job_commit_seconds",
        "Job store commits (each fsynced).",
    );
    let all = sessions.all();
    head(
        out,
        "pulse_ledger_plugin_sessions",
        "gauge",
        "Live plugin sessions, by how the plugin is reached.",
    );
    for kind in ["spawned", "dialled", "connected"] {
        let n = all.iter().filter(|s| s.connection.as_str() == kind).count();
        let _ = writeln!(
            out,
            "pulse_ledger_plugin_sessions{{connection=\"{kind}\"}} {n}"
        );
    }
    head(
        out,
        "pulse_ledger_plugin_slots",
        "gauge",
        "Attempt slots the live sessions announced (0: no limit), and attempts they run now.",
    );
    let slots: u64 = all.iter().map(|s| u64::from(s.slots)).sum();
    let busy: u64 = all.iter().map(|s| u64::from(s.running())).sum();
    let _ = writeln!(
        out,
        "pulse_ledger_plugin_slots{{kind=\"announced\"}} {slots}"
    );
    let _ = writeln!(out, "pulse_ledger_plugin_slots{{kind=\"running\"}} {busy}");
}

/// Time a metrics client has to send its request and read the answer.
pub(crate) const METRICS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Metrics connections served at once; more are closed at once.
const MAX_METRICS_CONNECTIONS: usize = 64;

/// Serves `GET /metrics` over plain HTTP/1.1 until the task is dropped. A
/// connection has [`METRICS_TIMEOUT`] to ask and be answered, at most
/// [`MAX_METRICS_CONNECTIONS`] are served at once, and a failed accept
/// (no descriptor left) waits instead of spinning.
pub(crate) async fn serve_metrics(listener: TcpListener, metrics: std::sync::Arc<Metrics>) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_METRICS_CONNECTIONS));
    loop {
        let mut socket = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = std::sync::Arc::clone(&slots).try_acquire_owned() else {
            continue; // dropped: closed at once
        };
        let metrics = std::sync::Arc::clone(&metrics);
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tokio::time::timeout(METRICS_TIMEOUT, answer(&mut socket, &metrics)).await;
        });
    }
}

/// Reads one request head from `socket` and answers it.
async fn answer(socket: &mut tokio::net::TcpStream, metrics: &Metrics) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    const TEXT: &str = "text/plain; version=0.0.4";
    const JSON: &str = "application/json";
    let (status, kind, body) = if head.starts_with(b"GET /metrics ") {
        ("200 OK", TEXT, metrics.render())
    } else if head.starts_with(b"GET /healthz ") {
        // The process answers: liveness only.
        ("200 OK", JSON, "{\"status\":\"alive\"}\n".to_owned())
    } else if head.starts_with(b"GET /readyz ") {
        let why = metrics.not_ready();
        if why.is_empty() {
            ("200 OK", JSON, "{\"status\":\"ready\"}\n".to_owned())
        } else {
            let body = serde_json::json!({"status": "not ready", "reasons": why});
            ("503 Service Unavailable", JSON, format!("{body}\n"))
        }
    } else {
        (
            "404 Not Found",
            TEXT,
            "served here: GET /metrics, /healthz, /readyz\n".to_owned(),
        )
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(response.as_bytes()).await;
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    fn sample(text: &str, name: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap_or(u64::MAX))
    }

    #[test]
    fn token_reloads_are_counted_by_outcome() {
        let m = Metrics::default();
        let applied = "pulse_ledger_token_reloads_total{outcome=\"applied\"}";
        let refused = "pulse_ledger_token_reloads_total{outcome=\"refused\"}";
        let text = m.render();
        assert_eq!(
            (sample(&text, applied), sample(&text, refused)),
            (Some(0), Some(0))
        );
        m.token_reload(true);
        m.token_reload(false);
        m.token_reload(false);
        let text = m.render();
        assert_eq!(
            (sample(&text, applied), sample(&text, refused)),
            (Some(1), Some(2))
        );
        // The dispatcher's counters appear once it runs.
        assert_eq!(sample(&text, "pulse_ledger_stale_reports_total"), None);
        m.watch_pulse(std::sync::Arc::default());
        assert_eq!(
            sample(&m.render(), "pulse_ledger_stale_reports_total"),
            Some(0)
        );
    }
}
