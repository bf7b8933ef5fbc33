//! How commands speak: colour on a terminal (unless NO_COLOR is set),
//! plain text otherwise; a progress line on stderr when it is a terminal;
//! and text that came from someone else (a plugin, a job, a statement, a
//! server) escaped, so it cannot drive the operator's terminal.

use std::io::IsTerminal;
use std::time::Instant;

pub(crate) use crate::text::escape;

/// Whether stdout gets colour.
pub(crate) fn colour() -> bool {
    std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal()
}

/// `text` in green (verdict ok) when colour is on.
pub(crate) fn good(text: &str) -> String {
    paint(text, "32")
}

/// `text` in bold red (verdict failed) when colour is on.
pub(crate) fn bad(text: &str) -> String {
    paint(text, "1;31")
}

fn paint(text: &str, code: &str) -> String {
    if colour() {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// A one-line progress display on stderr: entries, rate and ETA. Silent
/// when stderr is not a terminal.
pub(crate) struct Progress {
    on: bool,
    started: Instant,
    last: Instant,
    total: u64,
}

impl Progress {
    /// Progress towards `total` entries.
    pub(crate) fn new(total: u64) -> Progress {
        let now = Instant::now();
        Progress {
            on: std::io::stderr().is_terminal(),
            started: now,
            last: now,
            total,
        }
    }

    /// Shows `done` entries, at most ten times a second.
    pub(crate) fn show(&mut self, done: u64) {
        if !self.on || self.last.elapsed().as_millis() < 100 {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        let eta = if rate > 0.0 {
            (self.total.saturating_sub(done)) as f64 / rate
        } else {
            0.0
        };
        eprint!(
            "\r\x1b[2K{done}/{} entries  {:.0}/s  ETA {:.0}s",
            self.total, rate, eta
        );
    }

    /// Clears the line.
    pub(crate) fn done(&self) {
        if self.on {
            eprint!("\r\x1b[2K");
        }
    }
}
