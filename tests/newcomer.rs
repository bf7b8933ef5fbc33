//! What a new user trips on (issue 19), through the real binary: output
//! cut short by a closed pipe ends quietly, and connection, start-up and
//! file mix-ups name their cause and what to do.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{Serve, handler_register, key, key_file, plugin_register, tempdir};
use pulse_ledger::api::proto::{self, jobs_client::JobsClient, registry_client::RegistryClient};

fn cli() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pulse-ledger"));
    c.env_remove("PULSE_LEDGER_TOKEN")
        .env_remove("PULSE_LEDGER_AS_KEY")
        .env_remove("PULSE_LEDGER_SERVER");
    c
}

fn run(args: &[&str]) -> Output {
    cli().args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a streaming command, reads its first line, closes the pipe, makes
/// the server send more (`more`), and returns how the command ended.
async fn cut_short(args: &[&str], more: impl std::future::Future<Output = ()>) -> Output {
    let mut child: Child = cli()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(!first.is_empty(), "{args:?} printed nothing");
    drop(out);
    more.await;
    // Bounded: a command that ignored the closed pipe would hang here.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < until,
            "{args:?} still runs after its pipe closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.wait_with_output().unwrap()
}

fn quiet(args: &[&str], o: &Output) {
    let err = stderr(o);
    assert_ne!(o.status.code(), Some(101), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert!(err.is_empty(), "{args:?} printed to stderr: {err}");
}

/// Finding 3: `log watch | head -1`, `job watch | head -1` and friends
/// ended with a panic ("failed printing to stdout: Broken pipe", exit
/// 101). They now end quietly, as `git log | head` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_cut_short_by_a_closed_pipe_ends_quietly() {
    let dir = tempdir("newcomer-pipe");
    let server = Serve::start(&[], &dir.join("data"));
    let url = server.url.clone();
    let mut reg = RegistryClient::connect(url.clone()).await.unwrap();
    let (p, h) = (key("pipe-plugin"), key("pipe-handler"));
    for a in [
        plugin_register(&p, "pipe"),
        handler_register(&h, "echo", &p.did),
    ] {
        reg.submit(proto::SubmitRequest {
            envelope: a.envelope().to_vec(),
        })
        .await
        .unwrap();
    }
    // A new entry after the pipe closed: the watcher has something to print.
    let more_entries = async {
        let q = key("pipe-later");
        RegistryClient::connect(url.clone())
            .await
            .unwrap()
            .submit(proto::SubmitRequest {
                envelope: plugin_register(&q, "later").envelope().to_vec(),
            })
            .await
            .unwrap();
    };
    let args = ["log", "watch", "--server", &url];
    quiet(&args, &cut_short(&args, more_entries).await);

    // A job that waits for a plugin that never comes; cancelling it after
    // the pipe closed makes the watcher print again.
    let mut jobs = JobsClient::connect(url.clone()).await.unwrap();
    let id = jobs
        .enqueue(proto::EnqueueRequest {
            handler: h.did.to_string(),
            payload: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id;
    let hex_id = hex::encode(&id);
    let cancel = async {
        JobsClient::connect(url.clone())
            .await
            .unwrap()
            .cancel_job(proto::CancelJobRequest { id: id.clone() })
            .await
            .unwrap();
    };
    let args = ["job", "watch", &hex_id, "--server", &url];
    quiet(&args, &cut_short(&args, cancel).await);
    server.stop();
}

/// Finding 4: errors name their cause and the fix.
#[test]
fn connection_start_up_and_file_mix_ups_say_what_to_do() {
    let dir = tempdir("newcomer-errors");
    // No scheme.
    let o = run(&["log", "info", "--server", "127.0.0.1:7300"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("has no scheme: write http://127.0.0.1:7300"),
        "{}",
        stderr(&o)
    );
    // Nothing listens there.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let o = run(&["log", "info", "--server", &format!("http://{free}")]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains(&format!("nothing listens at {free}"))
            && stderr(&o).contains("pulse-ledger serve"),
        "{}",
        stderr(&o)
    );
    // A TLS server whose CA this client does not trust.
    let tls = Serve::start(
        &[
            "--tls-cert",
            &common::fixture("server.pem"),
            "--tls-key",
            &common::fixture("server.key"),
        ],
        &dir.join("tls"),
    );
    let https = tls.url.replace("http://127.0.0.1", "https://localhost");
    let o = run(&["log", "info", "--server", &https]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("give --ca"), "{}", stderr(&o));
    tls.stop();

    // A key file where an attestation goes, and the reverse.
    let k = key("mixup");
    let key_path = key_file(&dir, &k);
    let att = dir.join("h0.att");
    std::fs::write(
        &att,
        handler_register(&k, "echo", &key("mixup-plugin").did).envelope(),
    )
    .unwrap();
    let o = run(&["submit", key_path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("is a key file (it holds a secret key), not an attestation"),
        "{}",
        stderr(&o)
    );
    assert!(
        !stderr(&o).contains(&hex::encode(k.sk.to_bytes())),
        "the secret key was printed"
    );
    let o = run(&["inspect", key_path.to_str().unwrap()]);
    assert!(stderr(&o).contains("is a key file"), "{}", stderr(&o));
    let out = dir.join("h1.att");
    let o = run(&[
        "handler",
        "update",
        "--key",
        att.to_str().unwrap(),
        "--prev",
        att.to_str().unwrap(),
        "--version",
        "1.0.1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("it is an attestation (CBOR): give the key file"),
        "{}",
        stderr(&o)
    );

    // A second server on a data dir in use names the first one's PID.
    let data = dir.join("shared");
    let first = Serve::start(&[], &data);
    let pid = std::fs::read_to_string(data.join("serve.pid")).unwrap();
    assert_eq!(pid.trim(), first.child.id().to_string());
    let o = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("data_dir_in_use") && err.contains(&format!("pid {}", pid.trim())),
        "{err}"
    );
    first.stop();
    assert!(
        !data.join("serve.pid").exists(),
        "a clean stop removes the PID file"
    );
}

fn log_size(url: &str) -> u64 {
    let out = run(&["log", "info", "--json", "--server", url]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["size"].as_u64().unwrap()
}

/// Finding 1: `bench --server` wrote 225 entries and a second genesis for
/// the user's own plugin key into the user's log. Now it says what it
/// writes, needs --yes for a log that holds entries, refuses a plugin key
/// registered as something else before writing anything, and runs its
/// jobs through a test plugin of its own that connects in; run twice, it
/// leaves no equivocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_against_a_server_cannot_hurt_its_log() {
    let dir = tempdir("newcomer-bench");
    let server = Serve::start(&[], &dir.join("data"));
    let url = server.url.clone();
    let mine = key("bench-users-plugin");
    let mut reg = RegistryClient::connect(url.clone()).await.unwrap();
    reg.submit(proto::SubmitRequest {
        envelope: plugin_register(&mine, "tools").envelope().to_vec(),
    })
    .await
    .unwrap();
    let before = log_size(&url);
    let small = [
        "bench",
        "--server",
        &url,
        "--runs",
        "1",
        "--jobs",
        "500",
        "--registrations",
        "100",
        "--latency-secs",
        "1",
    ];
    // A log with entries: refused without --yes, nothing written.
    let o = run(&small);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--yes"), "{}", stderr(&o));
    assert!(stderr(&o).contains("appends about"), "{}", stderr(&o));
    // The user's registered plugin key: refused, nothing written.
    let user_key = key_file(&dir, &mine);
    let mut with_key = small.to_vec();
    with_key.extend(["--yes", "--plugin-key", user_key.to_str().unwrap()]);
    let o = run(&with_key);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("registered in this log as \"tools\""),
        "{}",
        stderr(&o)
    );
    assert_eq!(log_size(&url), before, "a refused bench wrote entries");

    // With --yes, twice: jobs run through the bench's own plugin, and
    // nothing equivocates.
    let mut yes = small.to_vec();
    yes.extend(["--yes", "--json"]);
    for _ in 0..2 {
        let o = run(&yes);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let rows = v["rows"].as_array().unwrap();
        assert!(
            rows.iter()
                .any(|r| r["key"] == "jobs" && r["value"].as_f64().unwrap() > 0.0),
            "{v}"
        );
    }
    let eq = reg
        .list_equivocations(proto::ListEquivocationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(eq.evidence.is_empty(), "{eq:?}");
    server.stop();
}

/// Finding 2: a stale `--prev` became permanent equivocation evidence
/// against the user's own key. Now `update`, `rotate` and `revoke` sign on
/// the log's head: fetched when --prev is left out, checked when it is
/// given (`stale_prev`), with --offline to skip the check and
/// --force-equivocate for the one who means it.
#[test]
fn statements_are_signed_on_the_logs_head() {
    let dir = tempdir("newcomer-head");
    let server = Serve::start(&[], &dir.join("data"));
    let url = server.url.clone();
    let f = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let ok = |args: &[&str]| {
        let o = run(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        o
    };
    ok(&["keygen", "--out", &f("p.key")]);
    ok(&["keygen", "--out", &f("h.key")]);
    ok(&["keygen", "--out", &f("h2.key")]);
    let plugin_did = std::fs::read_to_string(f("p.key"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# did: ").map(str::to_owned))
        .unwrap();
    let handler_did = std::fs::read_to_string(f("h.key"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# did: ").map(str::to_owned))
        .unwrap();
    ok(&[
        "handler",
        "new",
        "--key",
        &f("h.key"),
        "--name",
        "echo",
        "--version",
        "1.0.0",
        "--plugin",
        &plugin_did,
        "--out",
        &f("h0.att"),
    ]);
    ok(&["submit", "--server", &url, &f("h0.att")]);
    // --prev that is the head: signed.
    ok(&[
        "handler",
        "update",
        "--key",
        &f("h.key"),
        "--prev",
        &f("h0.att"),
        "--version",
        "1.1.0",
        "--out",
        &f("h1.att"),
        "--server",
        &url,
    ]);
    ok(&["submit", "--server", &url, &f("h1.att")]);
    // The same stale --prev again: refused, nothing written.
    let o = run(&[
        "handler",
        "update",
        "--key",
        &f("h.key"),
        "--prev",
        &f("h0.att"),
        "--version",
        "1.2.0",
        "--out",
        &f("stale.att"),
        "--server",
        &url,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("stale_prev") && stderr(&o).contains("Leave out --prev"),
        "{}",
        stderr(&o)
    );
    assert!(!dir.join("stale.att").exists());
    // No --prev: signed on the head (seq 2), and accepted.
    let o = ok(&[
        "handler",
        "update",
        "--key",
        &f("h.key"),
        "--version",
        "1.2.0",
        "--out",
        &f("h2.att"),
        "--server",
        &url,
        "--json",
    ]);
    assert!(stderr(&o).contains("seq 1"), "{}", stderr(&o));
    ok(&["submit", "--server", &url, &f("h2.att")]);
    // --offline signs on --prev without asking; --force-equivocate signs on
    // a stale one knowingly, and the server refuses the result.
    ok(&[
        "handler",
        "update",
        "--key",
        &f("h.key"),
        "--prev",
        &f("h2.att"),
        "--version",
        "1.3.0",
        "--out",
        &f("off.att"),
        "--offline",
    ]);
    let o = ok(&[
        "handler",
        "update",
        "--key",
        &f("h.key"),
        "--prev",
        &f("h0.att"),
        "--version",
        "9.0.0",
        "--out",
        &f("forced.att"),
        "--server",
        &url,
        "--force-equivocate",
    ]);
    assert!(stderr(&o).contains("--force-equivocate"), "{}", stderr(&o));
    let o = run(&["submit", "--server", &url, &f("forced.att")]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("equivocation"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // After a rotation the key is not the subject: --subject finds it.
    ok(&[
        "handler",
        "rotate",
        "--key",
        &f("h.key"),
        "--new-key",
        &f("h2.key"),
        "--out",
        &f("rot.att"),
        "--server",
        &url,
    ]);
    ok(&["submit", "--server", &url, &f("rot.att")]);
    let o = run(&[
        "handler",
        "revoke",
        "--key",
        &f("h2.key"),
        "--out",
        &f("rev.att"),
        "--server",
        &url,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--subject"), "{}", stderr(&o));
    ok(&[
        "handler",
        "revoke",
        "--key",
        &f("h2.key"),
        "--subject",
        &handler_did,
        "--out",
        &f("rev.att"),
        "--server",
        &url,
    ]);
    ok(&["submit", "--server", &url, &f("rev.att")]);
    server.stop();
}

/// Finding 6, the help texts that said something else than the binary
/// does: submit's exit status when the server is down, plugin show/list
/// examples that were handler commands, --json's hex, --parent.
#[test]
fn help_texts_match_what_the_commands_do() {
    let help = |args: &[&str]| String::from_utf8(run(args).stdout).unwrap();
    let submit = help(&["submit", "--help"]);
    assert!(
        submit.contains("3 if the server cannot be reached"),
        "{submit}"
    );
    let o = run(&["submit", "--server", "http://127.0.0.1:1", "/dev/null"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    for verb in ["show", "list"] {
        let h = help(&["plugin", verb, "--help"]);
        assert!(h.contains(&format!("pulse-ledger plugin {verb}")), "{h}");
        assert!(!h.contains("pulse-ledger handler"), "{h}");
    }
    assert!(help(&["job", "get", "--help"]).contains("hex"));
    assert!(help(&["job", "submit", "--help"]).contains("--parent"));
}
