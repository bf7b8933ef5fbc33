//! End-to-end tests of the `pulse-ledger` binary: the handler lifecycle,
//! byte-flip tamper detection, exit codes and help text.

#![allow(clippy::unwrap_used)] // test code: a panic is a failure report

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pulse_ledger::{ErrorCode, verify_chain};
use serde_json::Value;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
}

fn run(dir: &Path, args: &[&str]) -> Output {
    bin()
        .current_dir(dir)
        .args(args)
        .output()
        .expect("binary runs")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pulse-ledger-cli-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// keygen → plugin new → handler new → update → rotate → update (new key)
/// → revoke, in `dir`. Returns the handler chain's file names.
fn lifecycle(dir: &Path) -> Vec<&'static str> {
    let handler = ok(dir, &["keygen", "--out", "h.key"]).trim().to_owned();
    let plugin = ok(dir, &["keygen", "--out", "p.key"]).trim().to_owned();
    ok(dir, &["keygen", "--out", "h2.key"]);
    ok(
        dir,
        &[
            "plugin",
            "new",
            "--key",
            "p.key",
            "--name",
            "py-runner",
            "--version",
            "1.0.0",
            "--out",
            "p0.att",
        ],
    );
    fs::write(dir.join("job.py"), "print('hi')\n").unwrap();
    let out = ok(
        dir,
        &[
            "handler",
            "new",
            "--key",
            "h.key",
            "--name",
            "python.script",
            "--version",
            "1.0.0",
            "--plugin",
            &plugin,
            "--code",
            "job.py",
            "--timeout-ms",
            "60000",
            "--out",
            "h0.att",
            "--json",
        ],
    );
    let created: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        created["statement"]["subject"],
        handler.as_str(),
        "the handler's ID is its key's did:key"
    );
    ok(
        dir,
        &[
            "handler",
            "update",
            "--key",
            "h.key",
            "--prev",
            "h0.att",
            "--version",
            "1.1.0",
            "--out",
            "h1.att",
        ],
    );
    ok(
        dir,
        &[
            "handler",
            "rotate",
            "--key",
            "h.key",
            "--new-key",
            "h2.key",
            "--prev",
            "h1.att",
            "--out",
            "h2.att",
        ],
    );
    ok(
        dir,
        &[
            "handler",
            "update",
            "--key",
            "h2.key",
            "--prev",
            "h2.att",
            "--schema-from",
            "h1.att",
            "--max-cost",
            "500",
            "--out",
            "h3.att",
        ],
    );
    ok(
        dir,
        &[
            "handler", "revoke", "--key", "h2.key", "--prev", "h3.att", "--reason", "retired",
            "--out", "h4.att",
        ],
    );
    vec!["h0.att", "h1.att", "h2.att", "h3.att", "h4.att"]
}

#[test]
fn lifecycle_round_trips_to_the_revoked_state() {
    let dir = tempdir("lifecycle");
    let files = lifecycle(&dir);
    let mut args = vec!["verify", "chain"];
    args.extend(&files);
    let text = ok(&dir, &args);
    assert!(text.contains("chain ok: 5 statements"), "{text}");
    assert!(text.contains("revoked  yes"), "{text}");
    args.push("--json");
    let state: Value = serde_json::from_str(&ok(&dir, &args)).unwrap();
    assert_eq!(state["state"]["revoked"], true);
    assert_eq!(state["state"]["seq"], 4);
    assert_eq!(state["state"]["schema"]["version"], "1.1.0");
    assert_eq!(state["state"]["schema"]["max_cost"], 500);
    assert_eq!(state["state"]["schema"]["timeout_ms"], 60000);
    assert_eq!(
        state["state"]["schema"]["code"],
        hex::encode("print('hi')\n")
    );
    let rotated = fs::read_to_string(dir.join("h2.key")).unwrap();
    let new_did = state["state"]["key"].as_str().unwrap();
    assert!(rotated.contains(new_did), "current key is the rotated one");

    // Nothing may follow the revocation, and the CLI says so.
    let out = run(
        &dir,
        &[
            "handler",
            "update",
            "--key",
            "h2.key",
            "--prev",
            "h4.att",
            "--version",
            "2.0.0",
            "--out",
            "h5.att",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked"));
    assert!(!dir.join("h5.att").exists());
}

#[test]
fn every_single_byte_flip_is_rejected_with_a_specific_code() {
    let dir = tempdir("flip");
    let files = lifecycle(&dir);
    let envelopes: Vec<Vec<u8>> = files
        .iter()
        .map(|f| fs::read(dir.join(f)).unwrap())
        .collect();
    let known: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();

    // Through the binary: every byte of the rotation (two signatures).
    let target = &envelopes[2];
    let flipped_dir = dir.join("flipped");
    fs::create_dir_all(&flipped_dir).unwrap();
    let mut paths = Vec::new();
    for i in 0..target.len() {
        let mut bytes = target.clone();
        bytes[i] ^= 0x01;
        let path = flipped_dir.join(format!("{i:05}.att"));
        fs::write(&path, bytes).unwrap();
        paths.push(path.to_string_lossy().into_owned());
    }
    let mut args = vec![
        "verify".to_owned(),
        "attestation".to_owned(),
        "--json".to_owned(),
    ];
    args.extend(paths);
    let out = bin().args(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), target.len());
    for r in results {
        assert_eq!(r["ok"], false, "{r}");
        assert!(known.contains(&r["code"].as_str().unwrap()), "{r}");
    }

    // Through the library: every byte of every file, as part of the chain.
    for (n, env) in envelopes.iter().enumerate() {
        for i in 0..env.len() {
            let mut chain = envelopes.clone();
            chain[n][i] ^= 0x01;
            let err = verify_chain(&chain).expect_err("tampered chain must fail");
            assert_eq!(err.index, n, "file {n} byte {i}: {err}");
        }
    }
}

#[test]
fn verify_reports_codes_and_exit_statuses() {
    let dir = tempdir("exit");
    lifecycle(&dir);
    let out = run(&dir, &["verify", "chain", "h0.att", "h2.att"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("statement 1 (h2.att): seq_gap"), "{text}");

    let out = run(
        &dir,
        &["verify", "chain", "--json", "h0.att", "h1.att", "h1.att"],
    );
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["code"], "duplicate_statement");
    assert_eq!(v["index"], 2);

    let out = run(&dir, &["verify", "attestation", "missing.att"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "unreadable file is an I/O error"
    );

    // A key file given as an attestation is named as such (issue 19): it
    // is the wrong file, not a failed verification.
    let out = run(&dir, &["verify", "attestation", "h.key"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("h.key is a key file"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let out = run(&dir, &["inspect", "h2.att"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("handler.rotate") && text.contains("new_key"),
        "{text}"
    );

    let out = run(&dir, &["verify"]);
    assert_eq!(out.status.code(), Some(2), "usage error");
}

#[test]
fn signing_refuses_wrong_keys_and_existing_files() {
    let dir = tempdir("refuse");
    lifecycle(&dir);
    let before = fs::read(dir.join("h.key")).unwrap();
    let out = run(&dir, &["keygen", "--out", "h.key"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));
    assert_eq!(fs::read(dir.join("h.key")).unwrap(), before);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.join("h.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // After the rotation the old key may no longer sign.
    let out = run(
        &dir,
        &[
            "handler", "revoke", "--key", "h.key", "--prev", "h3.att", "--out", "x.att",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("current key"));
    assert!(!dir.join("x.att").exists());

    // Invalid schema values are refused with the spec's code before anything is written.
    let out = run(
        &dir,
        &[
            "handler", "update", "--key", "h.key", "--prev", "h1.att", "--name", "Bad Name",
            "--out", "y.att",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_field"));
    assert!(!dir.join("y.att").exists());

    let out = run(
        &dir,
        &[
            "handler",
            "new",
            "--key",
            "h.key",
            "--name",
            "x",
            "--version",
            "1.0.0",
            "--plugin",
            "did:key:nope",
            "--out",
            "z.att",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did_syntax"));

    let out = run(
        &dir,
        &[
            "plugin", "update", "--key", "h.key", "--prev", "h1.att", "--out", "w.att",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "a handler file does not continue a plugin chain"
    );
}

#[test]
fn every_command_has_help_with_examples() {
    use clap::CommandFactory;
    // Every leaf command of the real command tree, so a new command
    // without an example fails here.
    fn leaves(cmd: &clap::Command, path: Vec<String>, out: &mut Vec<Vec<String>>) {
        let subs: Vec<_> = cmd
            .get_subcommands()
            .filter(|c| c.get_name() != "help")
            .collect();
        if subs.is_empty() {
            out.push(path.clone());
        }
        for c in subs {
            let mut p = path.clone();
            p.push(c.get_name().to_owned());
            leaves(c, p, out);
        }
    }
    let mut all = vec![Vec::new()];
    leaves(&pulse_ledger::cli::Cli::command(), Vec::new(), &mut all);
    assert!(all.len() >= 37, "{} commands", all.len());
    for path in all {
        let mut args = path.clone();
        args.push("--help".into());
        let out = bin().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("pulse-ledger "),
            "{args:?} help has no example:\n{text}"
        );
        assert!(
            text.contains("Example") || text.contains("Quick start"),
            "{args:?}:\n{text}"
        );
    }
}

/// `serve` settings: flags win over PULSE_LEDGER_* variables, which win
/// over the TOML file; a bad file is a clear usage error.
#[test]
fn serve_settings_precedence_and_bad_config() {
    use std::io::{BufRead, BufReader};
    let dir = tempdir("serve-config");
    let config = dir.join("pl.toml");
    fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\nlog_name = \"file.example/log\"\n",
            dir.join("data").display().to_string()
        ),
    )
    .unwrap();
    let start = |extra: &[&str], env: Option<&str>| {
        let mut cmd = bin();
        cmd.arg("serve").arg("--config").arg(&config).args(extra);
        cmd.env_remove("PULSE_LEDGER_LOG_NAME");
        if let Some(v) = env {
            cmd.env("PULSE_LEDGER_LOG_NAME", v);
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let line = BufReader::new(child.stdout.take().unwrap())
            .lines()
            .next()
            .unwrap()
            .unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        line
    };
    // The file alone: its log name creates the data dir's log.
    assert!(start(&[], None).contains("(log file.example/log "));
    // A variable beats the file, and a flag beats both; a data dir keeps the
    // name it was created with, so these use fresh data dirs.
    let d2 = dir.join("d2").display().to_string();
    let line = start(&["--data-dir", &d2], Some("env.example/log"));
    assert!(line.contains("(log env.example/log "), "{line}");
    let d3 = dir.join("d3").display().to_string();
    let line = start(
        &["--data-dir", &d3, "--log-name", "flag.example/log"],
        Some("env.example/log"),
    );
    assert!(line.contains("(log flag.example/log "), "{line}");

    fs::write(&config, "listen = \"127.0.0.1:0\"\nport = 7\n").unwrap();
    let out = bin()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `port`"));

    // Another log name for an existing data dir is refused, naming both.
    let out = bin()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-name",
            "other.example/log",
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("file.example/log") && err.contains("other.example/log"),
        "{err}"
    );
}
