//! A timeline of the server's hot paths, for matching a latency stall to
//! its cause (`serve --timeline FILE`, `bench --trace FILE`): one JSON line
//! per dispatcher step, per group commit of the log and of the job store,
//! and per storage event (fjall's memtable rotations, flushes,
//! compactions and write halts), each with its start in Unix µs and its
//! duration in µs. Off unless started: then every function here costs one
//! atomic load.
//!
//! Lines go through a bounded queue to a writer thread, so a slow disk
//! never slows the paths being timed; when the queue is full a line is
//! dropped and counted (the count is written when the file is closed).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

/// Lines waiting for the writer thread.
const QUEUE: usize = 1 << 16;

static SINK: OnceLock<SyncSender<String>> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Starts writing the timeline to `path` (appended to, created if
/// missing). Once per process.
///
/// # Errors
/// The file cannot be opened, or the timeline was already started.
pub fn start(path: &Path) -> Result<(), String> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("--timeline {}: {e}", path.display()))?;
    let (tx, rx) = sync_channel(QUEUE);
    SINK.set(tx)
        .map_err(|_| "the timeline was already started".to_owned())?;
    std::thread::Builder::new()
        .name("pulse-timeline".into())
        .spawn(move || write_lines(&rx, file))
        .map_err(|e| format!("cannot start the timeline writer: {e}"))?;
    Ok(())
}

/// Whether the timeline is being written.
pub fn on() -> bool {
    SINK.get().is_some()
}

fn write_lines(rx: &Receiver<String>, file: std::fs::File) {
    let mut out = std::io::BufWriter::new(file);
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            // Each line is one write of whole lines, so another process
            // appending to the same file (the bench) never splits one.
            Ok(line) => {
                if out.buffer().len() + line.len() > out.capacity() {
                    let _ = out.flush();
                }
                let _ = out.write_all(line.as_bytes());
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = out.flush();
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let dropped = DROPPED.load(Ordering::Relaxed);
    if dropped > 0 {
        let _ = writeln!(out, r#"{{"kind":"dropped","lines":{dropped}}}"#);
    }
    let _ = out.flush();
}

fn send(line: String) {
    if let Some(tx) = SINK.get() {
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Something being timed; [`Span::end`] writes its line.
pub struct Span {
    kind: &'static str,
    at_us: u64,
    started: Instant,
    phases: Vec<(&'static str, u64)>,
    last: Instant,
}

/// Starts timing `kind`, or `None` when the timeline is off.
pub fn span(kind: &'static str) -> Option<Span> {
    if !on() {
        return None;
    }
    let now = Instant::now();
    Some(Span {
        kind,
        at_us: unix_us(),
        started: now,
        phases: Vec::new(),
        last: now,
    })
}

impl Span {
    /// Ends a phase: the time since the previous phase ended (or the span
    /// began) is written as `name` (µs).
    pub fn phase(&mut self, name: &'static str) {
        let now = Instant::now();
        self.phases.push((name, micros(now - self.last)));
        self.last = now;
    }

    /// Phases ended so far.
    pub fn phases(&self) -> usize {
        self.phases.len()
    }

    /// Writes the line: kind, start, duration, the phases, and `fields`.
    pub fn end(self, fields: &[(&'static str, u64)]) {
        let mut line = format!(
            r#"{{"kind":"{}","at":{},"dur":{}"#,
            self.kind,
            self.at_us,
            micros(self.started.elapsed())
        );
        for (k, v) in self.phases.iter().chain(fields) {
            let _ = write!(line, r#","{k}":{v}"#);
        }
        line.push_str("}\n");
        send(line);
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Ends a phase of `span` (if the timeline is on): [`Span::phase`].
pub fn phase(span: &mut Option<Span>, name: &'static str) {
    if let Some(s) = span {
        s.phase(name);
    }
}

/// Ends `span` (if the timeline is on) with `fields`.
pub fn end(span: Option<Span>, fields: &[(&'static str, u64)]) {
    if let Some(s) = span {
        s.end(fields);
    }
}

/// Records the storage engine's events: a `tracing` layer, to be
/// filtered to the `fjall` and `lsm_tree` targets (their `log` records,
/// bridged), that writes each as a `storage` line.
pub struct StorageEvents;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for StorageEvents {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if !on() {
            return;
        }
        let mut fields = EventText::default();
        event.record(&mut fields);
        let line = serde_json::json!({
            "kind": "storage",
            "at": unix_us(),
            "target": fields.target.unwrap_or_else(|| event.metadata().target().to_owned()),
            "message": fields.message,
        });
        send(format!("{line}\n"));
    }
}

/// An event's message, and the target of a bridged `log` record (whose
/// own target is `log`).
#[derive(Default)]
struct EventText {
    message: String,
    target: Option<String>,
}

impl tracing::field::Visit for EventText {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "message" => value.clone_into(&mut self.message),
            "log.target" => self.target = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "log.target" => self.target = Some(format!("{value:?}")),
            _ => {}
        }
    }
}
