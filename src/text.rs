//! Text that came from someone else (a plugin, a job, a statement, a
//! client), made safe to show: in a terminal (the CLI) or in a log line
//! (the server), where a control character could forge a line or drive
//! the reader's terminal.

use std::borrow::Cow;

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

/// Most bytes of someone else's text a log line carries.
pub(crate) const MAX_LOGGED_BYTES: usize = 512;

/// `text` for a log line: escaped, and cut to [`MAX_LOGGED_BYTES`] with the
/// length of what was cut, so an unsigned message can neither forge lines
/// nor fill the log.
pub(crate) fn loggable(text: &str) -> String {
    let escaped = escape(text);
    if escaped.len() <= MAX_LOGGED_BYTES {
        return escaped.into_owned();
    }
    let mut end = MAX_LOGGED_BYTES;
    while !escaped.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…({} more bytes)", &escaped[..end], escaped.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_text_is_one_bounded_line() {
        let forged = "unknown_field: \"x\nINFO forged line \u{1b}[31m\"";
        let l = loggable(forged);
        assert!(!l.contains('\n') && !l.contains('\u{1b}'), "{l}");
        assert!(l.contains("\\n") && l.contains("\\u{1b}"), "{l}");
        let long = "é".repeat(1000);
        let l = loggable(&long);
        assert!(l.len() < MAX_LOGGED_BYTES + 40, "{}", l.len());
        assert!(l.ends_with("…(1488 more bytes)"), "{l}");
        assert_eq!(loggable("plain"), "plain");
    }

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
