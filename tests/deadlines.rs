//! Deadlines (spec/audit.md, "Deadlines"; issue 16): against a server that
//! accepts connections and never answers, every client command gives up
//! after `--timeout`, names the call, and exits with status 3; `monitor`
//! reports the silence as the alert `unresponsive`.

#![allow(clippy::unwrap_used, missing_docs)]

use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::CommandFactory;
use ed25519_dalek::SigningKey;
use pulse_ledger::Did;

/// A TCP listener that accepts every connection and then says nothing
/// (the connections are kept open, unread, until the test ends).
fn silent_server() -> (String, Arc<Mutex<Vec<TcpStream>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&held);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            keep.lock().unwrap().push(conn);
        }
    });
    (format!("127.0.0.1:{}", addr.port()), held)
}

fn log_key() -> String {
    Did::from_verifying_key(&SigningKey::from_bytes(&[5; 32]).verifying_key())
        .unwrap()
        .to_string()
}

fn run(args: &[&str]) -> Output {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
        .args(args)
        .env_remove("PULSE_LEDGER_TIMEOUT")
        .env_remove("PULSE_LEDGER_SERVER")
        .output()
        .unwrap();
    // Far below the 30 s default: the flag, not the default, ended it.
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{args:?} took {:?}",
        start.elapsed()
    );
    out
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Exit status 3 and an error naming the call and the deadline.
fn assert_timed_out(args: &[&str], call: &str) {
    let out = run(args);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{args:?}\n{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("no answer to {call} within 300ms (--timeout)")),
        "{args:?}: {stderr}"
    );
}

#[test]
fn every_client_command_gives_up_on_a_silent_server() {
    let (addr, _held) = silent_server();
    let url = format!("http://{addr}");
    let key = log_key();
    let dir = std::env::temp_dir().join(format!("pulse-deadlines-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cp = dir.join("seen.cp");
    std::fs::write(&cp, "not used before the call\n").unwrap();
    let t = "300ms";
    for (args, call) in [
        (
            vec!["log", "info", "--server", &url, "--timeout", t],
            "GetLogInfo",
        ),
        (
            vec!["log", "checkpoint", "--server", &url, "--timeout", t],
            "GetCheckpoint",
        ),
        (
            vec!["log", "entries", "--server", &url, "--timeout", t],
            "GetEntries",
        ),
        (
            vec!["log", "watch", "--server", &url, "--timeout", t],
            "WatchEntries",
        ),
        (
            vec![
                "verify",
                "log",
                "--server",
                &url,
                "--log-key",
                &key,
                "--timeout",
                t,
            ],
            "GetCheckpoint",
        ),
        (
            vec![
                "verify",
                "inclusion",
                "--index",
                "0",
                "--server",
                &url,
                "--log-key",
                &key,
                "--timeout",
                t,
            ],
            "GetInclusionProof",
        ),
        (
            vec![
                "bundle",
                "export",
                &key,
                "--server",
                &url,
                "--log-key",
                &key,
                "--out",
                "-",
                "--timeout",
                t,
            ],
            "GetLogInfo",
        ),
        (
            vec!["handler", "show", &key, "--server", &url, "--timeout", t],
            "GetSubject",
        ),
        (
            vec!["handler", "list", "--server", &url, "--timeout", t],
            "ListHandlers",
        ),
        (
            vec![
                "job",
                "get",
                "00000000000000000000000000000000",
                "--server",
                &url,
                "--timeout",
                t,
            ],
            "GetJob",
        ),
        (
            vec!["job", "list", "--server", &url, "--timeout", t],
            "ListJobs",
        ),
    ] {
        assert_timed_out(&args, call);
    }
    // The environment variable sets it too.
    let out = Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
        .args(["log", "info", "--server", &url])
        .env("PULSE_LEDGER_TIMEOUT", "300ms")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out)
            .1
            .contains("no answer to GetLogInfo within 300ms")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An https:// server that never answers the TLS handshake: the connection
/// itself has the deadline.
#[test]
fn a_silent_tls_handshake_times_out_as_connect() {
    let (addr, _held) = silent_server();
    assert_timed_out(
        &[
            "log",
            "info",
            "--server",
            &format!("https://{addr}"),
            "--timeout",
            "300ms",
        ],
        "connect",
    );
}

#[test]
fn the_monitor_reports_a_silent_server_as_an_alert() {
    let (addr, _held) = silent_server();
    let url = format!("http://{addr}");
    let key = log_key();
    // --exit-on-alert: the alert is the verdict, exit status 1.
    for json in [false, true] {
        let mut args = vec![
            "monitor",
            "--server",
            &url,
            "--log-key",
            &key,
            "--once",
            "--exit-on-alert",
            "--timeout",
            "300ms",
        ];
        if json {
            args.push("--json");
        }
        let out = run(&args);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
        if json {
            let line: serde_json::Value =
                serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
            assert_eq!(line["type"], "alert");
            assert_eq!(line["code"], "unresponsive");
            assert!(
                line["message"].as_str().unwrap().contains("within 300ms"),
                "{line}"
            );
        } else {
            assert!(
                stdout.contains(
                    "ALERT unresponsive: the server did not answer WatchEntries within 300ms"
                ),
                "{stdout}"
            );
        }
    }
    // --once alone: the alert is printed, and the catch-up that could not
    // finish ends with status 3.
    let out = run(&[
        "monitor",
        "--server",
        &url,
        "--log-key",
        &key,
        "--once",
        "--timeout",
        "300ms",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(stdout.contains("unresponsive"), "{stdout}");
    assert!(!stdout.contains("up to date"), "{stdout}");
}

/// A running monitor keeps going after a silent round, and reports the
/// silence once however long it lasts.
#[test]
fn a_running_monitor_reports_silence_once_and_keeps_trying() {
    let (addr, held) = silent_server();
    let url = format!("http://{addr}");
    let key = log_key();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
        .args([
            "monitor",
            "--server",
            &url,
            "--log-key",
            &key,
            "--timeout",
            "200ms",
            "--poll-ms",
            "50",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Several rounds, each on a new connection.
    let start = Instant::now();
    while held.lock().unwrap().len() < 3 && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(child.try_wait().unwrap().is_none(), "the monitor stopped");
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, _) = text(&out);
    assert!(held.lock().unwrap().len() >= 3, "{stdout}");
    let alerts: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("unresponsive"))
        .collect();
    assert_eq!(alerts.len(), 1, "{stdout}");
}

/// No two arguments of any command share a name (`--timeout` is on every
/// client command; `job submit`'s attempt timeout is `--timeout-ms`).
#[test]
fn the_command_line_is_well_formed() {
    pulse_ledger::cli::Cli::command().debug_assert();
}
