//! The README's shell blocks, run as written (issue 19): the quick start
//! and the walk-through, in a fresh temp dir, against a server this test
//! starts. Only what a test must change is changed, each by an exact
//! substitution that fails loudly if the README no longer has the line:
//! the binaries are the ones this test was built with, and the servers
//! listen on ports free now.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{Serve, tempdir};

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// The ```sh blocks after `heading`, up to the next heading of the same
/// or a higher level.
fn blocks_under(text: &str, heading: &str) -> Vec<String> {
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("README has no {heading:?}"));
    let level = heading.chars().take_while(|c| *c == '#').count();
    let body = &text[start + heading.len()..];
    let end = body
        .lines()
        .scan(0usize, |at, l| {
            let here = *at;
            *at += l.len() + 1;
            Some((here, l))
        })
        .find(|(_, l)| {
            let hashes = l.chars().take_while(|c| *c == '#').count();
            hashes > 0 && hashes <= level && l.chars().nth(hashes) == Some(' ')
        })
        .map_or(body.len(), |(at, _)| at);
    let section = &body[..end];
    let mut out = Vec::new();
    let mut rest = section;
    while let Some(i) = rest.find("```sh\n") {
        let after = &rest[i + 6..];
        let j = after.find("\n```").unwrap();
        out.push(after[..j].to_owned());
        rest = &after[j + 4..];
    }
    out
}

fn replace(script: &str, from: &str, to: &str) -> String {
    assert!(script.contains(from), "the README block lost {from:?}");
    script.replace(from, to)
}

fn bin_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_BIN_EXE_pulse-ledger"))
        .parent()
        .unwrap()
        .to_owned()
}

fn bash(dir: &Path, script: &str, env: &[(&str, String)]) -> String {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("PULSE_LEDGER_TOKEN")
        .env_remove("PULSE_LEDGER_AS_KEY")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "the README block failed ({}):\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    stdout
}

#[test]
fn the_quick_start_runs_as_written() {
    let dir = tempdir("readme-quick-start");
    let server = Serve::start(&[], &dir.join("data"));
    let blocks = blocks_under(&readme(), "## Quick start");
    assert!(blocks.len() >= 2, "{blocks:?}");
    let bin = env!("CARGO_BIN_EXE_pulse-ledger");
    let first = replace(
        &blocks[0],
        r#"pl() { cargo run -q --release -- "$@"; }"#,
        &format!(r#"pl() {{ "{bin}" "$@"; }}"#),
    );
    let script = format!("{first}\n{}", blocks[1]);
    let out = bash(
        &dir,
        &script,
        &[("PULSE_LEDGER_SERVER", server.url.clone())],
    );
    // The shown results: the final state is revoked, and the four later
    // statements were accepted.
    assert!(out.contains("revoked"), "{out}");
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("h") && l.contains(" index "))
            .count(),
        5,
        "{out}"
    );
    server.stop();
}

#[test]
fn the_walk_through_runs_as_written() {
    let dir = tempdir("readme-walk-through");
    let blocks = blocks_under(&readme(), "#### Walk-through");
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let script = replace(&blocks[0], "cargo build --release\n", "");
    let script = replace(
        &script,
        "B=$PWD/target/release",
        &format!("B={}", bin_dir().display()),
    );
    // The server it starts must end with the script, however it ends.
    let script = format!("trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{script}");
    let out = bash(
        &dir,
        &script,
        &[
            ("PULSE_LEDGER_LISTEN", free.to_string()),
            ("PULSE_LEDGER_SERVER", format!("http://{free}")),
        ],
    );
    assert!(out.contains(r#"{"sum": 5}"#), "{out}");
    assert!(out.contains("[attempt 1] adding 2 and 3"), "{out}");
}
