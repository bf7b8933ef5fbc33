//! Where the cores went, interval by interval, while a latency run sends
//! (`bench --trace`): the machine's busy share, the server's threads by
//! name, its child processes (the spawned plugin) and the bench itself.
//! Put next to the jobs' stages and the server's timeline, it tells a tail
//! held back by CPU (the cores full while the slow jobs wait) from one
//! held back by waiting (idle cores), which the phase's average cannot.
//!
//! Read from Linux's `/proc` on a thread of its own; elsewhere it records
//! nothing. The kernel counts CPU in clock ticks (10 ms on Linux), so an
//! interval of 100 ms resolves a tenth of a core.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::cpu::{MachineCpu, ProcStat, clock_ticks_per_sec};

/// How often the counters are read.
pub const CPU_INTERVAL: Duration = Duration::from_millis(100);

/// Child processes of the server are looked for again every this many
/// reads (a plugin restarted after a crash gets a new process ID).
const CHILDREN_EVERY: u32 = 10;

/// The counters at one moment.
#[derive(Debug, Clone, Default)]
struct Sample {
    /// Unix µs, to line up with the jobs and the server's timeline.
    at_us: u64,
    /// Since sampling began (monotonic: the interval's length).
    since_start: Duration,
    machine: Option<MachineCpu>,
    /// The server's threads by thread ID: name and clock ticks so far.
    /// Kept per thread, so a thread that exits (tokio's blocking pool
    /// lets idle ones go) takes nothing from its namesakes' sums.
    threads: BTreeMap<u32, (String, u64)>,
    /// Clock ticks of the server's child processes, by process ID.
    children: BTreeMap<u32, u64>,
    bench: u64,
}

/// A sampling thread, stopped by [`CpuTimeline::finish`].
pub struct CpuTimeline {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sample>>>,
}

impl CpuTimeline {
    /// Starts reading the counters every [`CPU_INTERVAL`]; the server's
    /// when `server` is its process ID.
    pub fn start(server: Option<u32>) -> CpuTimeline {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bench-cpu-timeline".into())
            .spawn(move || sample_until(&flag, server))
            .ok();
        CpuTimeline { stop, thread }
    }

    /// Stops sampling; one JSON line per interval (`"kind":"cpu"`, its
    /// start `at` in Unix µs and `dur` in µs, like the server's timeline),
    /// each share in cores: `busy` (all cores: 2.0 is two full cores),
    /// `server` by thread name, `children` (the plugin) and `bench`.
    pub fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        let tck = clock_ticks_per_sec();
        samples
            .windows(2)
            .map(|w| interval_line(&w[0], &w[1], tck))
            .collect()
    }
}

impl Drop for CpuTimeline {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn sample_until(stop: &AtomicBool, server: Option<u32>) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut children = Vec::new();
    let start = Instant::now();
    let mut reads: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        if let Some(pid) = server
            && reads % CHILDREN_EVERY == 0
        {
            children = children_of(pid);
        }
        samples.push(read_sample(server, &children, start));
        reads = reads.wrapping_add(1);
        // On a schedule from the start, so a slow read does not drift it;
        // slots missed while this thread could not run are skipped rather
        // than sampled back to back (intervals too short to count ticks).
        let n = (start.elapsed().as_nanos() / CPU_INTERVAL.as_nanos()) as u32 + 1;
        let next = start + CPU_INTERVAL * n;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    samples
}

fn read_sample(server: Option<u32>, children: &[u32], start: Instant) -> Sample {
    let mut s = Sample {
        at_us: super::now_us(),
        since_start: start.elapsed(),
        machine: MachineCpu::now(),
        bench: stat(&format!("/proc/{}/stat", std::process::id())).map_or(0, |p| p.ticks),
        ..Sample::default()
    };
    if let Some(pid) = server
        && let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task"))
    {
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            if let Some(p) = stat(&task.path().join("stat").to_string_lossy()) {
                s.threads.insert(tid, (p.comm, p.ticks));
            }
        }
    }
    for &child in children {
        if let Some(p) = stat(&format!("/proc/{child}/stat")) {
            s.children.insert(child, p.ticks);
        }
    }
    s
}

fn stat(path: &str) -> Option<ProcStat> {
    ProcStat::parse(&std::fs::read_to_string(path).ok()?)
}

/// Process IDs whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| stat(&format!("/proc/{p}/stat")).is_some_and(|s| s.ppid == pid))
        .collect()
}

/// The JSON line for the interval from `a` to `b`.
fn interval_line(a: &Sample, b: &Sample, tck: u64) -> String {
    let dur = b.since_start.saturating_sub(a.since_start);
    // A zero-length interval counts nothing rather than dividing by zero.
    let secs = dur.as_secs_f64().max(1e-3);
    let in_cores = |ticks: u64| ticks as f64 / tck.max(1) as f64 / secs;
    let busy = match (a.machine, b.machine) {
        (Some(x), Some(y)) => x.busy_ticks_until(&y).map(|t| round(in_cores(t))),
        _ => None,
    };
    // Per thread first (one born in the interval counts from zero), then
    // summed by name.
    let mut server: BTreeMap<&str, u64> = BTreeMap::new();
    for (tid, (name, ticks)) in &b.threads {
        let before = a.threads.get(tid).map_or(0, |(_, t)| *t);
        *server.entry(name.as_str()).or_default() += ticks.saturating_sub(before);
    }
    let server: BTreeMap<&str, f64> = server
        .into_iter()
        .map(|(name, t)| (name, round(in_cores(t))))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    // A child that appeared in the interval counts from zero.
    let children: u64 = b
        .children
        .iter()
        .map(|(pid, &t)| t.saturating_sub(a.children.get(pid).copied().unwrap_or(0)))
        .sum();
    serde_json::json!({
        "kind": "cpu",
        "at": a.at_us,
        "dur": dur.as_micros() as u64,
        "busy": busy,
        "server": server,
        "children": round(in_cores(children)),
        "bench": round(in_cores(b.bench.saturating_sub(a.bench))),
    })
    .to_string()
}

fn round(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, threads: &[(u32, &str, u64)], child: u64, bench: u64) -> Sample {
        Sample {
            at_us: 1_000_000_000 + at_ms * 1000,
            since_start: Duration::from_millis(at_ms),
            machine: None,
            threads: threads
                .iter()
                .map(|(tid, n, t)| (*tid, ((*n).to_owned(), *t)))
                .collect(),
            children: BTreeMap::from([(7, child)]),
            bench,
        }
    }

    #[test]
    fn an_interval_gives_each_thread_name_and_process_its_cores() {
        let a = sample(
            0,
            &[
                (10, "tokio-runtime-w", 100),
                (11, "tokio-runtime-w", 50),
                (12, "fjall:worker", 5),
            ],
            40,
            9,
        );
        // 100 ms later: runtime thread 10 used 8 ticks (0.8 of a core at
        // 100 ticks/s) and thread 11 exited, which takes nothing away;
        // fjall used none; a new thread used 2; the plugin 5.
        let b = sample(
            100,
            &[
                (10, "tokio-runtime-w", 108),
                (12, "fjall:worker", 5),
                (13, "pulse-dispatche", 2),
            ],
            45,
            10,
        );
        let v: serde_json::Value = serde_json::from_str(&interval_line(&a, &b, 100)).unwrap();
        assert_eq!(v["kind"], "cpu");
        assert_eq!(
            (v["at"].as_u64(), v["dur"].as_u64()),
            (Some(1_000_000_000), Some(100_000))
        );
        assert_eq!(v["server"]["tokio-runtime-w"], 0.8);
        assert_eq!(v["server"]["pulse-dispatche"], 0.2);
        assert!(
            v["server"].get("fjall:worker").is_none(),
            "idle threads are left out"
        );
        assert_eq!(
            (v["children"].as_f64(), v["bench"].as_f64()),
            (Some(0.5), Some(0.1))
        );
        assert!(v["busy"].is_null(), "no machine counters: no busy share");
    }

    #[test]
    fn the_machine_busy_ticks_are_given_in_cores() {
        let mut a = sample(0, &[], 0, 0);
        let mut b = sample(200, &[], 0, 0);
        // 30 busy ticks in 200 ms at 100 ticks/s: 1.5 cores.
        a.machine = MachineCpu::parse_line("cpu  100 0 50 800 0 0 0 0");
        b.machine = MachineCpu::parse_line("cpu  120 0 60 900 0 0 0 0");
        let v: serde_json::Value = serde_json::from_str(&interval_line(&a, &b, 100)).unwrap();
        assert_eq!(v["busy"], 1.5);
    }

    #[test]
    fn the_timeline_of_this_process_counts_a_spinning_thread() {
        if MachineCpu::now().is_none() {
            eprintln!("no /proc here: skipped");
            return;
        }
        let timeline = CpuTimeline::start(Some(std::process::id()));
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < CPU_INTERVAL * 6 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let lines = timeline.finish();
        assert!(x > 0);
        assert!(lines.len() >= 2, "{lines:?}");
        // Core-seconds this process's threads used, interval by interval.
        let used: f64 = lines
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| {
                let secs = v["dur"].as_f64().unwrap() / 1e6;
                let s = v["server"].as_object().cloned().unwrap_or_default();
                secs * s
                    .values()
                    .filter_map(serde_json::Value::as_f64)
                    .sum::<f64>()
            })
            .sum();
        // One thread spun for 0.6 s: a sixth of that survives even a
        // machine shared with two other busy threads per core.
        assert!(used >= 0.1, "{used} core-seconds: {lines:?}");
    }
}
