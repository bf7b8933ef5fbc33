//! Where the bench's CPU goes: a process's CPU time and the machine's busy
//! share over a phase, read from Linux's `/proc`. They tell whether a
//! figure is held back by CPU (the cores busy) or by waiting (idle cores),
//! which a throughput or latency figure alone does not.

use std::time::Duration;

use super::Table;

/// The CPU time (user + system) a process has used so far, or `None`
/// where `/proc` is not there (not Linux) or the process is gone.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = ProcStat::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    Some(ticks_to_duration(stat.ticks))
}

/// What the bench reads of a process's or thread's `/proc/…/stat` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ProcStat {
    /// The command (a thread's name), at most 15 bytes.
    pub(super) comm: String,
    pub(super) ppid: u32,
    /// User + system time, in clock ticks.
    pub(super) ticks: u64,
}

impl ProcStat {
    /// `pid (comm) state ppid … utime stime …`; `None` if malformed.
    pub(super) fn parse(stat: &str) -> Option<ProcStat> {
        // The command may hold spaces and parentheses: it ends at the last ')'.
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let comm = stat.get(open + 1..close)?.to_owned();
        let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
        // After ')': state is field 3, ppid 4, utime 14 and stime 15.
        let ppid = fields.get(1)?.parse().ok()?;
        let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(ProcStat { comm, ppid, ticks })
    }
}

/// All cores' busy and total time so far (`/proc/stat`), for
/// [`busy_share`].
#[derive(Debug, Clone, Copy)]
pub struct MachineCpu {
    busy: u64,
    total: u64,
}

impl MachineCpu {
    /// The counters now, or `None` where `/proc/stat` is not there.
    pub fn now() -> Option<MachineCpu> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        parse_machine(stat.lines().next()?)
    }

    /// Busy clock ticks of all cores together between `self` and `later`.
    pub(super) fn busy_ticks_until(&self, later: &MachineCpu) -> Option<u64> {
        later.busy.checked_sub(self.busy)
    }

    /// Reads a `/proc/stat` `cpu` line (for tests of what is built on it).
    #[cfg(test)]
    pub(super) fn parse_line(line: &str) -> Option<MachineCpu> {
        parse_machine(line)
    }

    /// The share of all cores' time that was busy (not idle, not waiting
    /// for I/O) between `self` and `later`, 0 to 1.
    pub fn busy_share(&self, later: &MachineCpu) -> Option<f64> {
        let total = later.total.checked_sub(self.total)?;
        let busy = later.busy.checked_sub(self.busy)?;
        (total > 0).then(|| busy as f64 / total as f64)
    }
}

/// `cpu  user nice system idle iowait irq softirq steal …`
fn parse_machine(line: &str) -> Option<MachineCpu> {
    let mut parts = line.split_whitespace();
    if parts.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = parts
        .take(8)
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 5 {
        return None;
    }
    let total: u64 = v.iter().sum();
    let idle = v[3] + v[4];
    Some(MachineCpu {
        busy: total - idle,
        total,
    })
}

/// CPU counters at the start of a phase: the machine's, the server's
/// (when the bench spawned it) and the bench's own.
pub struct CpuReading {
    machine: Option<MachineCpu>,
    server: Option<(u32, std::time::Duration)>,
    bench: Option<std::time::Duration>,
}

/// Where a phase's CPU went: all cores' busy share, and the server's and
/// the bench's CPU per job (each `None` where it could not be read).
#[derive(Debug, Default)]
pub struct PhaseCpu {
    busy: Option<f64>,
    server_us: Option<f64>,
    bench_us: Option<f64>,
}

impl CpuReading {
    /// The counters now; the server's when `server` is its process ID.
    pub fn now(server: Option<u32>) -> CpuReading {
        CpuReading {
            machine: MachineCpu::now(),
            server: server.and_then(|pid| Some((pid, process_cpu(pid)?))),
            bench: process_cpu(std::process::id()),
        }
    }

    /// The phase since `self`, over `jobs` jobs.
    pub fn since(&self, jobs: f64) -> PhaseCpu {
        let per_job = |before: std::time::Duration, after: std::time::Duration| {
            after.saturating_sub(before).as_secs_f64() * 1e6 / jobs.max(1.0)
        };
        PhaseCpu {
            busy: self.machine.and_then(|m| m.busy_share(&MachineCpu::now()?)),
            server_us: self
                .server
                .and_then(|(pid, before)| Some(per_job(before, process_cpu(pid)?))),
            bench_us: self
                .bench
                .and_then(|before| Some(per_job(before, process_cpu(std::process::id())?))),
        }
    }
}

impl PhaseCpu {
    /// Adds the rows under the keys `[busy, server, bench]`.
    pub fn add_to(&self, t: &mut Table, keys: [&'static str; 3], phase: &str) {
        if let Some(busy) = self.busy {
            t.add(
                keys[0],
                format!("  {phase}: all cores busy"),
                busy * 100.0,
                "%",
            );
        }
        if let Some(us) = self.server_us {
            t.add(keys[1], format!("  {phase}: server CPU per job"), us, "µs");
        }
        if let Some(us) = self.bench_us {
            t.add(
                keys[2],
                format!("  {phase}: bench (load generator) CPU per job"),
                us,
                "µs",
            );
        }
    }
}

/// Clock ticks per second of `/proc`'s CPU counters.
pub(super) fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if per_sec > 0 { per_sec as u64 } else { 100 }
}

fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_micros(ticks * 1_000_000 / clock_ticks_per_sec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_line_splits_busy_from_idle_and_iowait() {
        let m = parse_machine("cpu  100 5 50 800 40 3 2 0 0 0").unwrap();
        assert_eq!(m.total, 1000);
        assert_eq!(m.busy, 160);
        let later = parse_machine("cpu  200 5 100 1200 40 3 2 0 0 0").unwrap();
        assert_eq!(m.busy_share(&later), Some(150.0 / 550.0));
        assert!(parse_machine("cpu0 1 2 3 4 5").is_none());
        assert!(parse_machine("cpu  x").is_none());
    }

    #[test]
    fn a_stat_line_gives_name_parent_and_ticks_even_with_parentheses_in_the_name() {
        let line = "4242 (tokio (w) 1) S 17 4242 4242 0 -1 4194560 10 0 0 0 30 12 0 0 20 0 9";
        assert_eq!(
            ProcStat::parse(line),
            Some(ProcStat {
                comm: "tokio (w) 1".into(),
                ppid: 17,
                ticks: 42
            })
        );
        assert_eq!(ProcStat::parse("4242 (x) S"), None);
        assert_eq!(ProcStat::parse("no parentheses"), None);
    }

    #[test]
    fn this_process_has_used_some_cpu_and_the_count_grows() {
        let Some(before) = process_cpu(std::process::id()) else {
            eprintln!("no /proc here: skipped");
            return;
        };
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(100) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let after = process_cpu(std::process::id()).unwrap();
        assert!(x > 0);
        assert!(after > before, "{before:?} → {after:?}");
    }
}
