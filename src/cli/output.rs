//! How commands speak: colour on a terminal (unless NO_COLOR is set),
//! plain text otherwise; a progress line on stderr when it is a terminal;
//! and text that came from someone else (a plugin, a job, a statement, a
//! server) escaped, so it cannot drive the operator's terminal.

use std::borrow::Cow;
use std::io::IsTerminal;
use std::time::Instant;

/// `text` as it may be printed in human-readable output: every character
/// that could move the cursor, recolour, retitle or clear a terminal, end
/// the line early, or reorder what is shown (C0 controls including ESC,
/// tab and newline; DEL; C1 controls; the bidirectional controls U+061C,
/// U+200E, U+200F, U+202A..U+202E and U+2066..U+2069; the line and
/// paragraph separators U+2028 and U+2029) is replaced by a visible
/// escape: `\n`, `\r`, `\t`, or `\u{1b}` style. Everything else,
/// backslashes included, is shown as is. `--json` output needs none of
/// this: serde_json escapes what JSON requires and the reader decodes it.
pub(crate) fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if needs_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Whether [`escape`] replaces `c`.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

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

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        for t in [
            "",
            "adding -1 and 0",
            "naïve ✓ 日本語 C:\\dir",
            "{\"sum\": 5}",
        ] {
            assert!(matches!(escape(t), std::borrow::Cow::Borrowed(s) if s == t));
        }
    }

    #[test]
    fn terminal_controls_are_shown_not_obeyed() {
        let cases = [
            // CSI sequences: clear the screen, recolour.
            (
                "\x1b[2J\x1b[31mred\x1b[0m",
                "\\u{1b}[2J\\u{1b}[31mred\\u{1b}[0m",
            ),
            // OSC: set the window title, terminated by BEL.
            ("\x1b]0;owned\x07", "\\u{1b}]0;owned\\u{7}"),
            // A second line forged inside one field, a carriage return
            // that overwrites, a tab.
            ("ok\nFAILED entry 1", "ok\\nFAILED entry 1"),
            ("bad\rgood", "bad\\rgood"),
            ("a\tb", "a\\tb"),
            ("nul\0", "nul\\u{0}"),
            // DEL and C1 controls (U+009B is a one-byte CSI).
            ("\u{7f}\u{9b}2J\u{85}", "\\u{7f}\\u{9b}2J\\u{85}"),
            // Bidirectional overrides and isolates, and the Unicode line
            // and paragraph separators.
            ("abc\u{202e}fdp.exe", "abc\\u{202e}fdp.exe"),
            (
                "\u{2066}\u{2067}\u{2068}\u{2069}\u{200e}\u{200f}\u{61c}",
                "\\u{2066}\\u{2067}\\u{2068}\\u{2069}\\u{200e}\\u{200f}\\u{61c}",
            ),
            ("\u{2028}\u{2029}\u{202a}", "\\u{2028}\\u{2029}\\u{202a}"),
        ];
        for (raw, shown) in cases {
            assert_eq!(escape(raw), shown, "{raw:?}");
        }
    }

    #[test]
    fn nothing_escaped_is_left_and_every_other_character_is_kept() {
        // Every character of the first planes: the escaped text holds no
        // character escape() would replace, and escape() keeps the rest.
        for c in (0u32..0x3_0000).filter_map(char::from_u32) {
            let s = c.to_string();
            let e = escape(&s);
            assert!(!e.chars().any(super::needs_escape), "{c:?}");
            if !super::needs_escape(c) {
                assert_eq!(e, s, "{c:?}");
            }
        }
    }
}
