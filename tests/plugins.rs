//! End to end: a real `pulse-ledger serve` with real plugin processes
//! declared in its config file. Jobs reach a plugin only through the
//! handler's and plugin's chains and the plugin's key proof.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Backend, Key, handler_register, job, key, key_file, next, plugin_register, plugin_table,
    plugin_table_with, tempdir,
};
use pulse_ledger::api::proto::{self, jobs_client::JobsClient, registry_client::RegistryClient};
use pulse_ledger::{Action, Attestation};
use tonic::transport::Channel;

/// A server started with a config file, on either storage backend: every
/// test that runs jobs runs on both (`serve_on_every_backend!`); the two
/// that only check refusals at start-up do not touch storage.
struct Server(common::Serve);

impl Server {
    /// Starts `serve --config` with `config` (TOML) plus the data dir, and
    /// metrics on an ephemeral port.
    fn start(dir: &Path, config: &str, backend: &Backend) -> Server {
        let path = dir.join("pulse.toml");
        std::fs::write(&path, config).unwrap();
        let data = dir.join("data");
        let mut args = vec![
            "--config",
            path.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ];
        let store = backend.args();
        args.extend(store.iter().map(String::as_str));
        Server(common::Serve::start(&args, &data))
    }

    async fn registry(&self) -> RegistryClient<Channel> {
        RegistryClient::connect(self.0.url.clone()).await.unwrap()
    }

    async fn jobs(&self) -> JobsClient<Channel> {
        JobsClient::connect(self.0.url.clone()).await.unwrap()
    }

    /// SIGTERM and wait: plugins are stopped first.
    fn stop(self) {
        self.0.stop();
    }
}

async fn submit(reg: &mut RegistryClient<Channel>, a: &Attestation) -> Result<u64, tonic::Status> {
    reg.submit(proto::SubmitRequest {
        envelope: a.envelope().to_vec(),
    })
    .await
    .map(|r| r.into_inner().index)
}

fn enqueue_req(h: &Key, payload: &str) -> proto::EnqueueRequest {
    proto::EnqueueRequest {
        handler: h.did.to_string(),
        payload: payload.as_bytes().to_vec(),
        ..Default::default()
    }
}

async fn enqueue(jobs: &mut JobsClient<Channel>, req: proto::EnqueueRequest) -> Vec<u8> {
    jobs.enqueue(req)
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id
}

use common::finished;

/// The plugin's event lines about `job`.
fn events(path: &Path, job: &[u8]) -> Vec<String> {
    let id = hex::encode(job);
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(id.as_str()))
        .map(str::to_owned)
        .collect()
}

/// Waits until the plugin logged `what` for `job`; returns that line.
async fn event(path: &Path, job: &[u8], what: &str) -> String {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(l) = events(path, job).into_iter().find(|l| l.starts_with(what)) {
            return l;
        }
        assert!(Instant::now() < until, "no {what:?} event for the job");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

const TIMINGS: &str = "heartbeat_timeout_ms = 800\ncancel_grace_ms = 300\nplugin_health_interval_ms = 200\nplugin_wait_secs = 2\n";

async fn jobs_run_on_the_verified_plugin_through_every_failure_mode(backend: Backend) {
    let dir = tempdir(&backend.dir_name("plugins-e2e"));
    let events_path = dir.join("events.log");
    let p = key("e2e-plugin");
    let pkey = key_file(&dir, &p);
    let config = format!(
        "{TIMINGS}{}",
        plugin_table(
            "tools",
            &["--key".into(), pkey.display().to_string()],
            &events_path
        )
    );
    let server = Server::start(&dir, &config, &backend);
    let mut reg = server.registry().await;
    let mut jobs = server.jobs().await;

    // The plugin was declared before it was registered: the host retries
    // until its chain is in the log.
    let p_index = submit(&mut reg, &plugin_register(&p, "tools"))
        .await
        .unwrap();
    let echo = key("e2e-echo");
    let echo0 = handler_register(&echo, "echo", &p.did);
    let echo_index = submit(&mut reg, &echo0).await.unwrap();

    // 1. Enqueue → result, authorised under the statements in the log.
    let id = enqueue(&mut jobs, enqueue_req(&echo, "hello")).await;
    let j = finished(&mut jobs, &id, 30).await;
    assert_eq!(
        (j.state.as_str(), j.result.as_slice()),
        ("succeeded", &b"hello"[..])
    );
    let a = &j.attempt_history[0];
    assert!(a.authorised);
    assert_eq!((a.handler_index, a.plugin_index), (echo_index, p_index));

    // 2. A handler registered while the plugin runs is routable at once.
    let late = key("e2e-late");
    submit(&mut reg, &handler_register(&late, "echo", &p.did))
        .await
        .unwrap();
    let id = enqueue(&mut jobs, enqueue_req(&late, "late")).await;
    assert_eq!(finished(&mut jobs, &id, 10).await.result, b"late");

    // 3. A fatal error ends the job at once; a hang is timed out and retried.
    let fail = key("e2e-fail");
    submit(&mut reg, &handler_register(&fail, "fail", &p.did))
        .await
        .unwrap();
    let id = enqueue(&mut jobs, enqueue_req(&fail, "fatal")).await;
    let j = finished(&mut jobs, &id, 10).await;
    assert_eq!(
        (j.state.as_str(), j.reason.as_str(), j.attempts),
        ("dead", "non_retryable", 1)
    );
    let hang = key("e2e-hang");
    submit(&mut reg, &handler_register(&hang, "hang", &p.did))
        .await
        .unwrap();
    let id = enqueue(&mut jobs, enqueue_req(&hang, "once")).await;
    let j = finished(&mut jobs, &id, 30).await;
    assert_eq!(j.state, "succeeded");
    assert_eq!(j.attempt_history[0].outcome, "timed_out");
    assert_eq!(j.result, b"did not hang");

    // 4. A cancel reaches the plugin while the job runs.
    let sleep = key("e2e-sleep");
    submit(&mut reg, &handler_register(&sleep, "sleep", &p.did))
        .await
        .unwrap();
    let id = enqueue(&mut jobs, enqueue_req(&sleep, "20000")).await;
    event(&events_path, &id, "start").await;
    jobs.cancel_job(proto::CancelJobRequest { id: id.clone() })
        .await
        .unwrap();
    assert_eq!(job(&mut jobs, &id).await.state, "cancelled");
    event(&events_path, &id, "cancelled").await;

    // 5. Cost over the job's max_cost cancels the attempt.
    let cost = key("e2e-cost");
    submit(&mut reg, &handler_register(&cost, "cost", &p.did))
        .await
        .unwrap();
    let id = enqueue(
        &mut jobs,
        proto::EnqueueRequest {
            max_cost: 3,
            ..enqueue_req(&cost, "50")
        },
    )
    .await;
    let j = finished(&mut jobs, &id, 20).await;
    assert_eq!(
        (j.state.as_str(), j.reason.as_str()),
        ("cancelled", "budget")
    );
    assert!((4..=5).contains(&j.total_cost), "spent {}", j.total_cost);
    event(&events_path, &id, "cancelled").await;

    // 5b. An event that breaks plugin.proto (a checkpoint over 64 KiB)
    // fails the attempt for good, naming the rule, and the plugin is told
    // to stop it.
    let progress = key("e2e-progress");
    submit(&mut reg, &handler_register(&progress, "progress", &p.did))
        .await
        .unwrap();
    let id = enqueue(&mut jobs, enqueue_req(&progress, "oversized")).await;
    let j = finished(&mut jobs, &id, 20).await;
    assert_eq!(
        (j.state.as_str(), j.reason.as_str(), j.attempts),
        ("dead", "non_retryable", 1)
    );
    assert!(
        j.last_error
            .starts_with("protocol_violation: progress_checkpoint: a checkpoint of 70000 bytes"),
        "{}",
        j.last_error
    );
    assert_eq!(j.progress_percent, 0, "the bad event changed nothing");
    event(&events_path, &id, "cancelled").await;

    // 6. The plugin is SIGKILLed mid-job: the attempt is recorded crashed,
    // the plugin restarted, and the retry succeeds on the new process.
    let id = enqueue(&mut jobs, enqueue_req(&sleep, "1500")).await;
    let start = event(&events_path, &id, "start").await;
    let pid = start.split_whitespace().nth(3).unwrap().to_owned();
    Command::new("kill").args(["-KILL", &pid]).status().unwrap();
    let j = finished(&mut jobs, &id, 30).await;
    assert_eq!(j.state, "succeeded", "{}", j.last_error);
    assert_eq!(j.attempt_history[0].outcome, "crashed");
    let second = events(&events_path, &id)
        .into_iter()
        .filter(|l| l.starts_with("start"))
        .nth(1)
        .unwrap();
    assert_ne!(
        second.split_whitespace().nth(3).unwrap(),
        pid,
        "ran on a new process"
    );

    // 7. Rotating the handler key: jobs still run; the old key can no
    // longer sign.
    let echo2 = key("e2e-echo-2");
    let rot = next(
        &echo0,
        &echo,
        Action::Rotate {
            new_key: echo2.did.clone(),
        },
        Some(&echo2),
    );
    submit(&mut reg, &rot).await.unwrap();
    let stale = common::update_handler(&rot, &echo, "echo", &p.did, "2.0.0");
    let e = submit(&mut reg, &stale).await.unwrap_err();
    assert!(e.message().starts_with("wrong_signer"), "{}", e.message());
    let id = enqueue(&mut jobs, enqueue_req(&echo, "after rotation")).await;
    assert_eq!(finished(&mut jobs, &id, 10).await.result, b"after rotation");

    // 8. A revoke racing a stream of jobs: nothing starts after the revoke
    // is acknowledged; the jobs left are refused with handler_revoked.
    let race = key("e2e-race");
    let race0 =
        common::handler_register_with(&race, "sleep", &p.did, |s| s.max_concurrency = Some(2));
    submit(&mut reg, &race0).await.unwrap();
    let batch: Vec<_> = (0..60).map(|_| enqueue_req(&race, "30")).collect();
    let ids: Vec<Vec<u8>> = jobs
        .enqueue_batch(proto::EnqueueBatchRequest { jobs: batch })
        .await
        .unwrap()
        .into_inner()
        .results
        .into_iter()
        .map(|r| match r.result.unwrap() {
            proto::enqueue_result::Result::Accepted(a) => a.job.unwrap().id,
            proto::enqueue_result::Result::Rejected(e) => panic!("{}", e.message),
        })
        .collect();
    while job(&mut jobs, &ids[3]).await.state != "succeeded" {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    submit(
        &mut reg,
        &next(&race0, &race, Action::Revoke { reason: None }, None),
    )
    .await
    .unwrap();
    let acked = now_ms();
    let (mut ran, mut refused) = (0, 0);
    for id in &ids {
        let j = finished(&mut jobs, id, 30).await;
        match (j.state.as_str(), j.reason.as_str()) {
            ("succeeded", _) => {
                ran += 1;
                assert!(
                    j.attempt_history[0].started_at_ms <= acked,
                    "started after the revoke"
                );
            }
            ("dead", "handler_revoked") => {
                refused += 1;
                assert!(j.attempt_history.is_empty());
                assert!(
                    j.last_error.starts_with("handler_revoked"),
                    "{}",
                    j.last_error
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(ran >= 4 && refused > 0, "ran {ran}, refused {refused}");
    let e = jobs.enqueue(enqueue_req(&race, "30")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);

    // Shutdown stops the plugin process too.
    let live = events(&events_path, &id_of_last_start(&events_path))
        .into_iter()
        .find_map(|l| {
            l.strip_prefix("start ")
                .map(|r| r.split_whitespace().nth(2).unwrap().to_owned())
        })
        .unwrap();
    server.stop();
    assert!(
        !Path::new(&format!("/proc/{live}")).exists(),
        "the plugin process {live} outlived the server"
    );
}

serve_on_every_backend!(jobs_run_on_the_verified_plugin_through_every_failure_mode);

/// spec/plugin.md, "Plugin service": a cancelled attempt keeps its slot
/// until the plugin says its handler has stopped. The test plugin takes
/// its attempts on attempt streams (the SDK's default) and lets a
/// cancelled handler run on for 2 s; the first attempt of a `late` job
/// goes silent and ignores the cancel. The store records the attempt timed
/// out only once the plugin dropped it (before, the attempt was recorded
/// timed out as soon as the cancel went out, 2 s before, and another
/// attempt could take the slot of a handler still running). The recorded
/// time is the time its step began, which may be a little before the
/// report came: 500 ms are allowed for that.
async fn a_timed_out_attempt_keeps_its_slot_until_its_handler_stops(backend: Backend) {
    let dir = tempdir(&backend.dir_name("plugins-slot-kept"));
    let events_path = dir.join("events.log");
    let spans = dir.join("spans.log");
    let p = key("kept-plugin");
    let pkey = key_file(&dir, &p);
    let config = format!(
        "heartbeat_timeout_ms = 800\ncancel_grace_ms = 10000\nplugin_health_interval_ms = 200\nplugin_wait_secs = 2\n{}",
        plugin_table_with(
            "tools",
            &["--key".into(), pkey.display().to_string()],
            &events_path,
            &[
                ("PULSE_TEST_PLUGIN_SPANS", &spans.display().to_string()),
                ("PULSE_TEST_PLUGIN_CANCEL_GRACE_MS", "2000"),
            ],
        )
    );
    let server = Server::start(&dir, &config, &backend);
    let mut reg = server.registry().await;
    let mut jobs = server.jobs().await;
    submit(&mut reg, &plugin_register(&p, "tools"))
        .await
        .unwrap();
    let late = key("kept-late");
    submit(&mut reg, &handler_register(&late, "late", &p.did))
        .await
        .unwrap();
    let id = enqueue(&mut jobs, enqueue_req(&late, "600000")).await;
    let j = finished(&mut jobs, &id, 60).await;
    assert_eq!(
        (j.state.as_str(), j.result.as_slice()),
        ("succeeded", &b"on time"[..])
    );
    let first = &j.attempt_history[0];
    assert_eq!(first.outcome, "timed_out");
    let job_hex = hex::encode(&id);
    let text = std::fs::read_to_string(&spans).unwrap_or_default();
    let ended_in_plugin_ms = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() == 6 && f[1] == job_hex && f[2] == "1")
        .map(|f| f[5].parse::<u64>().unwrap() / 1_000)
        .unwrap_or_else(|| {
            panic!(
                "the job finished while its first attempt's handler still ran (no span of it yet): {text:?}"
            )
        });
    assert!(
        first.ended_at_ms + 500 >= ended_in_plugin_ms,
        "the attempt was recorded timed out at {} ms, {} ms before its handler stopped in the plugin",
        first.ended_at_ms,
        ended_in_plugin_ms.saturating_sub(first.ended_at_ms)
    );
    // Ended by the plugin's final event, not by the 10 s grace.
    assert!(
        first.ended_at_ms < first.started_at_ms + 10_000,
        "{first:?}"
    );
    server.stop();
}

serve_on_every_backend!(a_timed_out_attempt_keeps_its_slot_until_its_handler_stops);

/// The job ID of the last `start` line.
fn id_of_last_start(path: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap();
    let line = text.lines().rev().find(|l| l.starts_with("start")).unwrap();
    hex::decode(line.split_whitespace().nth(1).unwrap()).unwrap()
}

async fn plugins_that_cannot_prove_their_key_or_claim_others_handlers_get_nothing(
    backend: Backend,
) {
    let dir = tempdir(&backend.dir_name("plugins-refused"));
    let events_path = dir.join("events.log");
    // "liar" claims to be plugin P but holds another key; "claimer" is
    // plugin C and announces handler Hq, whose chain names plugin Q.
    let (p, wrong, c, q) = (key("rf-p"), key("rf-wrong"), key("rf-c"), key("rf-q"));
    let hq = key("rf-hq");
    let hp = key("rf-hp");
    let liar = plugin_table(
        "liar",
        &[
            "--key".into(),
            key_file(&dir, &wrong).display().to_string(),
            "--plugin".into(),
            p.did.to_string(),
        ],
        &events_path,
    );
    let claimer = plugin_table(
        "claimer",
        &[
            "--key".into(),
            key_file(&dir, &c).display().to_string(),
            "--announce-id".into(),
            hq.did.to_string(),
        ],
        &events_path,
    );
    let server = Server::start(&dir, &format!("{TIMINGS}{liar}{claimer}"), &backend);
    let mut reg = server.registry().await;
    let mut jobs = server.jobs().await;
    for a in [
        plugin_register(&p, "p"),
        plugin_register(&c, "c"),
        plugin_register(&q, "q"),
        handler_register(&hp, "echo", &p.did),
        handler_register(&hq, "echo", &q.did),
    ] {
        submit(&mut reg, &a).await.unwrap();
    }
    // The claimer's own handler proves its session is open and serving.
    let hc = key("rf-hc");
    submit(&mut reg, &handler_register(&hc, "echo", &c.did))
        .await
        .unwrap();
    let id = enqueue(&mut jobs, enqueue_req(&hc, "mine")).await;
    assert_eq!(finished(&mut jobs, &id, 30).await.result, b"mine");

    for h in [&hp, &hq] {
        let id = enqueue(&mut jobs, enqueue_req(h, "steal")).await;
        let held = job(&mut jobs, &id).await;
        assert!(["queued", "held"].contains(&held.state.as_str()));
        let j = finished(&mut jobs, &id, 30).await;
        assert_eq!(
            (j.state.as_str(), j.reason.as_str(), j.attempts),
            ("dead", "plugin_not_connected", 0)
        );
        assert!(events(&events_path, &id).is_empty(), "a plugin saw the job");
    }
    server.stop();
}

serve_on_every_backend!(plugins_that_cannot_prove_their_key_or_claim_others_handlers_get_nothing);

async fn remote_plugins_are_dialled_and_left_running_and_a_rotated_plugin_proves_its_new_key(
    backend: Backend,
) {
    let dir = tempdir(&backend.dir_name("plugins-remote"));
    let events_path = dir.join("events.log");
    // A plugin someone else runs: Pulse only dials it.
    let (r, s1, s2) = (key("rm-r"), key("rm-s1"), key("rm-s2"));
    let mut remote = Command::new(env!("CARGO_BIN_EXE_pulse-test-plugin"))
        .arg("--key")
        .arg(key_file(&dir, &r))
        .env("PULSE_TEST_PLUGIN_EVENTS", &events_path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = BufReader::new(remote.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let addr = pulse_ledger::plugin::parse_handshake(&line).unwrap();
    // A spawned plugin whose key file is replaced when it rotates.
    let s_key = dir.join("spawned.key");
    std::fs::copy(key_file(&dir, &s1), &s_key).unwrap();
    let spawned = plugin_table(
        "spawned",
        &[
            "--key".into(),
            s_key.display().to_string(),
            "--plugin".into(),
            s1.did.to_string(),
        ],
        &events_path,
    );
    let config =
        format!("{TIMINGS}[[plugin]]\nname = \"remote\"\naddress = \"http://{addr}\"\n{spawned}");
    let server = Server::start(&dir, &config, &backend);
    let mut reg = server.registry().await;
    let mut jobs = server.jobs().await;
    let (hr, hs) = (key("rm-hr"), key("rm-hs"));
    let s0 = plugin_register(&s1, "spawned");
    for a in [
        plugin_register(&r, "remote"),
        s0.clone(),
        handler_register(&hr, "echo", &r.did),
        handler_register(&hs, "echo", &s1.did),
    ] {
        submit(&mut reg, &a).await.unwrap();
    }
    let id = enqueue(&mut jobs, enqueue_req(&hr, "over the wire")).await;
    assert_eq!(finished(&mut jobs, &id, 30).await.result, b"over the wire");
    let id = enqueue(&mut jobs, enqueue_req(&hs, "before")).await;
    assert_eq!(finished(&mut jobs, &id, 30).await.result, b"before");

    // The spawned plugin rotates: its operator installs the new key, then
    // the rotation is logged. The host ends the old session (it proved a
    // key that is no longer current), restarts the plugin, and it proves
    // the new key; jobs run under the rotation statement.
    std::fs::copy(key_file(&dir, &s2), &s_key).unwrap();
    let rotation = next(
        &s0,
        &s1,
        Action::Rotate {
            new_key: s2.did.clone(),
        },
        Some(&s2),
    );
    let rotation_index = submit(&mut reg, &rotation).await.unwrap();
    let id = enqueue(&mut jobs, enqueue_req(&hs, "after")).await;
    let j = finished(&mut jobs, &id, 30).await;
    assert_eq!(
        (j.state.as_str(), j.result.as_slice()),
        ("succeeded", &b"after"[..]),
        "{}",
        j.last_error
    );
    assert_eq!(j.attempt_history[0].plugin_index, rotation_index);

    // Stopping the server stops what it spawned, never the remote plugin.
    server.stop();
    assert!(
        remote.try_wait().unwrap().is_none(),
        "the remote plugin was stopped by the server"
    );
    remote.kill().unwrap();
    remote.wait().unwrap();
}

serve_on_every_backend!(
    remote_plugins_are_dialled_and_left_running_and_a_rotated_plugin_proves_its_new_key
);

/// Runs the CLI in `dir`; returns stdout, failing the test on a non-zero
/// exit.
fn cli(dir: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pulse-ledger"));
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "pulse-ledger {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn did_of(key_file: &Path) -> String {
    std::fs::read_to_string(key_file)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# did: "))
        .unwrap()
        .to_owned()
}

/// The README walk-through, typed as written: keygen, plugin register,
/// a handler whose signed schema carries Python code, submit, and a job
/// that runs the code on the script plugin.
async fn a_handler_created_from_the_cli_runs_its_signed_python(backend: Backend) {
    let dir = tempdir(&backend.dir_name("plugins-script"));
    cli(&dir, &["keygen", "--out", "plugin.key"], None);
    cli(&dir, &["keygen", "--out", "handler.key"], None);
    let (plugin, handler) = (
        did_of(&dir.join("plugin.key")),
        did_of(&dir.join("handler.key")),
    );
    std::fs::write(
        dir.join("add.py"),
        "import json, sys\n\
         job = json.load(sys.stdin)\n\
         print('adding', job['a'], 'and', job['b'], file=sys.stderr)\n\
         if job['a'] < 0:\n\
         \x20   print('\\x1b[2J\\x1b]0;owned\\x07gone\\u202e', file=sys.stderr)\n\
         \x20   sys.exit(3)\n\
         print(json.dumps({'sum': job['a'] + job['b']}))\n",
    )
    .unwrap();
    cli(
        &dir,
        &[
            "plugin",
            "new",
            "--key",
            "plugin.key",
            "--name",
            "scripts",
            "--version",
            "1.0.0",
            "--out",
            "p0.att",
        ],
        None,
    );
    cli(
        &dir,
        &[
            "handler",
            "new",
            "--key",
            "handler.key",
            "--name",
            "python.add",
            "--version",
            "1.0.0",
            "--plugin",
            &plugin,
            "--code",
            "add.py",
            "--description",
            "adds two numbers\nFAILED forged line \u{202e}txt.exe",
            "--out",
            "h0.att",
        ],
        None,
    );
    // Text from a statement is shown escaped: the description's newline
    // and right-to-left override cannot forge a line or reorder one.
    let shown = cli(&dir, &["inspect", "h0.att"], None);
    assert!(
        shown.contains("describe   adds two numbers\\nFAILED forged line \\u{202e}txt.exe\n"),
        "{shown}"
    );
    assert!(
        !shown.contains('\u{202e}') && !shown.contains("\nFAILED"),
        "{shown}"
    );
    let config = format!(
        "[[plugin]]\nname = \"scripts\"\ncommand = [{:?}, \"--key\", \"plugin.key\"]\ndir = {:?}\n",
        env!("CARGO_BIN_EXE_pulse-script-plugin"),
        dir.display().to_string()
    );
    let server = Server::start(&dir, &config, &backend);
    let url = server.0.url.clone();
    cli(
        &dir,
        &["submit", "--server", &url, "p0.att", "h0.att"],
        None,
    );
    let out = cli(
        &dir,
        &[
            "job",
            "submit",
            "--server",
            &url,
            &handler,
            "--payload",
            "-",
            "--wait",
        ],
        Some(r#"{"a": 2, "b": 3}"#),
    );
    assert!(out.contains("succeeded"), "{out}");
    assert!(out.contains(r#"result: {"sum": 5}"#), "{out}");

    // A script that exits non-zero (not 75) fails for good, with its
    // stderr in the error.
    let mut jobs = server.jobs().await;
    let id = enqueue(
        &mut jobs,
        proto::EnqueueRequest {
            handler: handler.clone(),
            payload: br#"{"a": -1, "b": 0}"#.to_vec(),
            ..Default::default()
        },
    )
    .await;
    let j = finished(&mut jobs, &id, 30).await;
    assert_eq!(
        (j.state.as_str(), j.reason.as_str()),
        ("dead", "non_retryable")
    );
    assert!(
        j.last_error.contains("exit 3") && j.last_error.contains("adding -1"),
        "{}",
        j.last_error
    );
    // Its stderr is the job's log, kept with the attempt that wrote it.
    let log = cli(
        &dir,
        &["job", "log", "--server", &url, &hex::encode(&id)],
        None,
    );
    assert!(log.contains("[attempt 1] adding -1 and 0"), "{log}");
    // A plugin's text cannot drive the operator's terminal: the escape
    // sequences it wrote (clear the screen, set the title) and its
    // right-to-left override are printed escaped, by `job log` and in the
    // error `job get` shows, where the newline is escaped too.
    assert!(
        log.contains("[attempt 1] \\u{1b}[2J\\u{1b}]0;owned\\u{7}gone\\u{202e}\n"),
        "{log}"
    );
    let got = cli(
        &dir,
        &["job", "get", "--server", &url, &hex::encode(&id)],
        None,
    );
    assert!(
        got.contains("adding -1 and 0\\n\\u{1b}[2J\\u{1b}]0;owned\\u{7}gone\\u{202e}"),
        "{got}"
    );
    assert_eq!(got.lines().count(), 1, "{got}");
    for out in [&log, &got] {
        assert!(
            !out.contains(['\x1b', '\x07', '\u{202e}']),
            "raw control characters printed: {out:?}"
        );
    }
    let followed = cli(
        &dir,
        &[
            "job",
            "log",
            "--server",
            &url,
            &hex::encode(&id),
            "--follow",
            "--json",
        ],
        None,
    );
    let first: serde_json::Value =
        serde_json::from_str(followed.lines().find(|l| l.contains("adding")).unwrap()).unwrap();
    assert_eq!(
        (first["attempt"].as_u64(), first["line"].as_str()),
        (Some(1), Some("adding -1 and 0"))
    );
    // JSON carries the text exactly, as JSON escapes.
    let raw: serde_json::Value =
        serde_json::from_str(followed.lines().find(|l| l.contains("owned")).unwrap()).unwrap();
    assert_eq!(
        raw["line"].as_str(),
        Some("\x1b[2J\x1b]0;owned\x07gone\u{202e}")
    );
    assert!(!followed.contains(['\x1b', '\x07']), "{followed:?}");
    server.stop();
}

serve_on_every_backend!(a_handler_created_from_the_cli_runs_its_signed_python);

/// A bad `[[plugin]]` table stops `serve` before it starts, naming the rule.
#[test]
fn bad_plugin_tables_are_refused_with_the_rule() {
    let dir = tempdir("plugins-config");
    for (table, rule) in [
        (
            "name = \"x\"\naddress = \"ftp://10.0.0.1:7400\"",
            "must start with https:// or http://",
        ),
        (
            "name = \"x\"\naddress = \"http://10.0.0.1:7400\"",
            "plaintext_not_loopback",
        ),
        (
            "name = \"x\"\naddress = \"http://127.0.0.1:7400\"\ntls_ca = \"ca.pem\"",
            "use https://",
        ),
        (
            "name = \"x\"\naddress = \"https://10.0.0.1:7400\"\ntls_cert = \"c.pem\"",
            "both tls_cert and tls_key",
        ),
        (
            "name = \"x\"\ncommand = [\"p\"]\nallow_plaintext = true",
            "not a spawned command",
        ),
        ("name = \"x\"", "exactly one of command"),
        ("name = \"x\"\ncommand = []", "exactly one of command"),
        (
            "name = \"x\"\ncommand = [\"p\"]\nid = \"did:key:nope\"",
            "id:",
        ),
        ("name = \"x\"\ncommand = [\"p\"]\nport = 1", "unknown field"),
        (
            "name = \"x\"\ncommand = [\"p\"]\ninstances = 0",
            "instances = 0: give 1 to 256",
        ),
        (
            "name = \"x\"\naddress = \"https://10.0.0.1:7400\"\ninstances = 2",
            "instances applies to a spawned command",
        ),
    ] {
        let path = dir.join("bad.toml");
        std::fs::write(&path, format!("[[plugin]]\n{table}\n")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&path)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{table}: {err}");
        assert!(err.contains(rule), "{table}: {err}");
        assert!(
            !dir.join("data").exists(),
            "nothing is created on a bad config"
        );
    }
}

async fn misbehaving_plugins_are_contained_and_other_handlers_keep_running(backend: Backend) {
    let dir = tempdir(&backend.dir_name("plugins-faults"));
    let events_path = dir.join("events.log");
    let (tools, crashy, slow) = (key("pf-tools"), key("pf-crashy"), key("pf-slow"));
    let tardy = key("pf-tardy");
    let slow_table = plugin_table_with(
        "slow",
        &["--key".into(), key_file(&dir, &slow).display().to_string()],
        &events_path,
        &[("PULSE_TEST_PLUGIN_START_DELAY_MS", "1500")],
    );
    // Generous waits: a slow machine must not turn a slow start or a
    // crash-loop restart into plugin_not_connected.
    let timings = TIMINGS.replace("plugin_wait_secs = 2", "plugin_wait_secs = 30");
    let config = format!(
        "{timings}{}{}{}{slow_table}",
        // The late attempt runs on after its cancel until the test lets it
        // answer, however long the test takes to get there. Its plugin
        // takes a call per attempt: the late answer then reaches Pulse as
        // the call's end (on attempt streams, the SDK's default, Pulse
        // reads a cancelled attempt's events for `cancel_grace_ms` only).
        // The other plugins run theirs on streams, where a flood shares a
        // stream with others.
        plugin_table_with(
            "tardy",
            &["--key".into(), key_file(&dir, &tardy).display().to_string()],
            &events_path,
            &[
                ("PULSE_TEST_PLUGIN_CANCEL_GRACE_MS", "300000"),
                ("PULSE_TEST_PLUGIN_ATTEMPT_STREAMS", "0"),
            ],
        ),
        plugin_table(
            "tools",
            &["--key".into(), key_file(&dir, &tools).display().to_string()],
            &events_path
        ),
        plugin_table(
            "crashy",
            &[
                "--key".into(),
                key_file(&dir, &crashy).display().to_string()
            ],
            &events_path
        ),
    );
    let server = Server::start(&dir, &config, &backend);
    let mut reg = server.registry().await;
    let mut jobs = server.jobs().await;
    let (late, flood, echo, crash, crashy_echo, slow_echo) = (
        key("pf-late"),
        key("pf-flood"),
        key("pf-echo"),
        key("pf-crash"),
        key("pf-crashy-echo"),
        key("pf-slow-echo"),
    );
    for a in [
        plugin_register(&tools, "tools"),
        plugin_register(&tardy, "tardy"),
        plugin_register(&crashy, "crashy"),
        plugin_register(&slow, "slow"),
        handler_register(&late, "late", &tardy.did),
        handler_register(&flood, "flood", &tools.did),
        handler_register(&echo, "echo", &tools.did),
        handler_register(&crash, "crash", &crashy.did),
        handler_register(&crashy_echo, "echo", &crashy.did),
        handler_register(&slow_echo, "echo", &slow.did),
    ] {
        submit(&mut reg, &a).await.unwrap();
    }

    // Slow to start: its job waits, held, without using an attempt, and
    // runs once the plugin is up.
    let slow_job = enqueue(&mut jobs, enqueue_req(&slow_echo, "patience")).await;

    // Late: the first attempt stops heartbeating and ignores the cancel;
    // it is timed out and retried, and its result, sent (when the test
    // creates `release`) after its lease was lost, is not accepted.
    let release = dir.join("release-late");
    let late_job = enqueue(&mut jobs, enqueue_req(&late, release.to_str().unwrap())).await;

    // A crash loop on one handler: quarantined as poison; the same
    // plugin's other handler, and other plugins, keep running.
    let crash_job = enqueue(&mut jobs, enqueue_req(&crash, "always")).await;
    let mut survivors = Vec::new();
    for i in 0..10 {
        survivors.push((
            enqueue(&mut jobs, enqueue_req(&crashy_echo, &format!("c{i}"))).await,
            format!("c{i}"),
        ));
        survivors.push((
            enqueue(&mut jobs, enqueue_req(&echo, &format!("t{i}"))).await,
            format!("t{i}"),
        ));
    }

    // A flood of progress events: the job finishes, and so do others
    // enqueued while it floods.
    let flood_job = enqueue(&mut jobs, enqueue_req(&flood, "50000")).await;
    // And of cost reports and log lines: each reaches the job (all the
    // cost, the last 1,000 lines), in bounded memory.
    let cost_flood = enqueue(&mut jobs, enqueue_req(&flood, "50000 cost")).await;
    let log_flood = enqueue(&mut jobs, enqueue_req(&flood, "50000 log")).await;
    for i in 0..5 {
        survivors.push((
            enqueue(&mut jobs, enqueue_req(&echo, &format!("f{i}"))).await,
            format!("f{i}"),
        ));
    }

    let j = finished(&mut jobs, &crash_job, 60).await;
    assert_eq!((j.state.as_str(), j.reason.as_str()), ("dead", "poison"));
    assert!(j.attempt_history.iter().all(|a| a.outcome == "crashed"));
    // The crash loop kills the crashy plugin's process, so a job of its
    // other handler in flight at three of those crashes in a row is itself
    // poisoned, as the spec says (a retry can meet the crashing job's
    // retry again). Most of them finish; every job of the other plugins
    // does.
    let mut caught = 0;
    for (id, payload) in &survivors {
        let j = finished(&mut jobs, id, 60).await;
        let in_the_loop = payload.starts_with('c')
            && (j.state.as_str(), j.reason.as_str()) == ("dead", "poison")
            && j.attempt_history.iter().all(|a| a.outcome == "crashed");
        if in_the_loop {
            caught += 1;
            continue;
        }
        assert_eq!(
            (j.state.as_str(), j.result.as_slice()),
            ("succeeded", payload.as_bytes()),
            "{}",
            j.last_error
        );
    }
    assert!(
        caught <= 3,
        "{caught} of the crashy plugin's 10 other jobs were poisoned: the handler stopped running"
    );
    let j = finished(&mut jobs, &cost_flood, 60).await;
    assert_eq!(
        (j.state.as_str(), j.total_cost),
        ("succeeded", 50_000),
        "{}",
        j.last_error
    );
    let j = finished(&mut jobs, &log_flood, 60).await;
    assert_eq!(j.state, "succeeded", "{}", j.last_error);
    let lines = jobs
        .get_job_log(proto::GetJobLogRequest {
            id: log_flood.clone(),
            after_seq: 0,
            page_size: 1000,
        })
        .await
        .unwrap()
        .into_inner()
        .lines;
    assert_eq!(lines.len(), 1000, "the last 1,000 lines are kept");
    assert_eq!(
        (lines[0].seq, lines[999].seq, lines[999].line.as_str()),
        (49_001, 50_000, "line 50000")
    );
    let j = finished(&mut jobs, &flood_job, 60).await;
    assert_eq!(
        (j.state.as_str(), j.result.as_slice()),
        ("succeeded", &b"flooded 50000"[..]),
        "{}",
        j.last_error
    );

    let j = finished(&mut jobs, &late_job, 30).await;
    assert_eq!(
        (j.state.as_str(), j.result.as_slice()),
        ("succeeded", &b"on time"[..]),
        "{}",
        j.last_error
    );
    assert_eq!(j.attempt_history[0].outcome, "timed_out");

    let slow = finished(&mut jobs, &slow_job, 30).await;
    assert_eq!(
        (slow.state.as_str(), slow.result.as_slice(), slow.attempts),
        ("succeeded", &b"patience"[..], 1),
        "{}",
        slow.last_error
    );

    // Every job has finished; only the late first attempt, which has not
    // answered yet, can still report. Let it answer (the SDK then ends the
    // cancelled attempt with an error saying it stopped, which reaches
    // Pulse as the attempt's last report), wait until the dispatcher has counted
    // that report as stale, then check that it changed nothing. (Were the
    // report applied, it would not be counted and the wait fails, or the
    // job would differ.)
    const STALE: &str = "pulse_ledger_stale_reports_total";
    let first_done = || {
        let done = format!("done {} 1", hex::encode(&late_job));
        events(&events_path, &late_job).contains(&done)
    };
    assert!(
        !first_done(),
        "the late attempt answered before it was released"
    );
    let stale = server.0.metric(STALE).await;
    std::fs::write(&release, b"").unwrap();
    server.0.metric_reaches(STALE, stale + 1).await;
    assert!(first_done(), "the late attempt never answered");
    assert_eq!(job(&mut jobs, &late_job).await, j);
    assert_eq!(server.0.metric(STALE).await, stale + 1);
    server.stop();
}

serve_on_every_backend!(misbehaving_plugins_are_contained_and_other_handlers_keep_running);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_plugin_that_listens_beyond_loopback_is_refused() {
    let dir = tempdir("plugins-wide");
    let events_path = dir.join("events.log");
    let p = key("wide-plugin");
    // It binds every interface (forced past the SDK's own refusal), so
    // reaching it in plaintext would cross the network: the host refuses
    // its handshake and its jobs never reach it.
    let table = plugin_table_with(
        "wide",
        &["--key".into(), key_file(&dir, &p).display().to_string()],
        &events_path,
        &[
            ("PULSE_PLUGIN_LISTEN", "0.0.0.0:0"),
            ("PULSE_PLUGIN_ALLOW_PLAINTEXT", "1"),
        ],
    );
    let server = Server::start(&dir, &format!("{TIMINGS}{table}"), &Backend::Fjall);
    let mut reg = server.registry().await;
    let mut jobs = server.jobs().await;
    let h = key("wide-echo");
    for a in [
        plugin_register(&p, "wide"),
        handler_register(&h, "echo", &p.did),
    ] {
        submit(&mut reg, &a).await.unwrap();
    }
    let id = enqueue(&mut jobs, enqueue_req(&h, "never")).await;
    let j = finished(&mut jobs, &id, 30).await;
    assert_eq!(
        (j.state.as_str(), j.reason.as_str(), j.attempts),
        ("dead", "plugin_not_connected", 0)
    );
    assert!(
        events(&events_path, &id).is_empty(),
        "the plugin saw the job"
    );
    server.stop();
}

/// Issue 17, item 3, end to end: another user's flood does not hold every
/// slot. With `max_running = 2`, a handler with 20 queued 300 ms jobs holds
/// both slots while it is alone; once another handler has a job ready, the
/// flood keeps at most one slot (its fair share) and the newcomer's job
/// starts at the next free slot, long before the flood is done.
async fn a_flood_on_one_handler_does_not_hold_every_slot(backend: Backend) {
    let dir = tempdir(&backend.dir_name("plugins-fair"));
    let events_path = dir.join("events.log");
    let tools = key("fair-tools");
    let config = format!(
        "{TIMINGS}max_running = 2\n{}",
        plugin_table(
            "tools",
            &["--key".into(), key_file(&dir, &tools).display().to_string()],
            &events_path
        )
    )
    .replace("plugin_wait_secs = 2", "plugin_wait_secs = 30");
    let server = Server::start(&dir, &config, &backend);
    let mut reg = server.registry().await;
    let mut jobs = server.jobs().await;
    let (flood, victim) = (key("fair-flood"), key("fair-victim"));
    for a in [
        plugin_register(&tools, "tools"),
        handler_register(&flood, "sleep", &tools.did),
        handler_register(&victim, "sleep", &tools.did),
    ] {
        submit(&mut reg, &a).await.unwrap();
    }
    let mut flooded = Vec::new();
    for _ in 0..20 {
        let mut r = enqueue_req(&flood, "300");
        r.priority = 9;
        flooded.push(enqueue(&mut jobs, r).await);
    }
    // The flood fills both slots.
    event(&events_path, &flooded[1], "start").await;
    let mine = enqueue(&mut jobs, enqueue_req(&victim, "10")).await;
    let j = finished(&mut jobs, &mine, 60).await;
    assert_eq!(j.state, "succeeded", "{}", j.last_error);
    let started = |j: &proto::Job| {
        j.attempt_history
            .first()
            .map_or(u64::MAX, |a| a.started_at_ms)
    };
    let mine_started = started(&j);
    let mut after = 0;
    for id in &flooded {
        let f = finished(&mut jobs, id, 120).await;
        assert_eq!(f.state, "succeeded", "{}", f.last_error);
        if started(&f) > mine_started {
            after += 1;
        }
    }
    // Going strictly by priority (the dispatcher before fair sharing), the
    // newcomer would wait for all 20 (priority 9 beats its 0): at most the
    // two running and one more start before it.
    assert!(
        after >= 17,
        "only {after} of the flood's 20 jobs started after the other handler's job"
    );
    server.stop();
}

serve_on_every_backend!(a_flood_on_one_handler_does_not_hold_every_slot);

/// Issue 18, items 1 and 2: a session is bound to the connection that
/// proved the key, and a plugin that is down holds jobs without using
/// attempts. A dialled plugin is killed: a job enqueued while nothing
/// listens is held, with no attempt used. A process with another,
/// unregistered key then starts at the same address: it is never sent a
/// job (the channel does not reconnect by itself; a new session must prove
/// the key, and it cannot). The genuine plugin comes back, proves its key,
/// and the jobs held meanwhile run on it.
async fn a_dialled_plugin_replaced_by_an_impostor_gets_no_job(backend: Backend) {
    let dir = tempdir(&backend.dir_name("plugins-impostor"));
    let (genuine_events, impostor_events) = (dir.join("genuine.log"), dir.join("impostor.log"));
    let (r, impostor) = (key("imp-r"), key("imp-impostor"));
    let listen = free_address();
    let start = |k: &Key, events: &Path| listening_plugin(&dir, k, events, &listen, 0);
    let genuine = start(&r, &genuine_events);
    let config = format!("{TIMINGS}[[plugin]]\nname = \"remote\"\naddress = \"http://{listen}\"\n")
        .replace("plugin_wait_secs = 2", "plugin_wait_secs = 120");
    let server = Server::start(&dir, &config, &backend);
    let mut reg = server.registry().await;
    let mut jobs = server.jobs().await;
    let h = key("imp-h");
    for a in [
        plugin_register(&r, "remote"),
        handler_register(&h, "echo", &r.did),
    ] {
        submit(&mut reg, &a).await.unwrap();
    }
    let id = enqueue(&mut jobs, enqueue_req(&h, "genuine")).await;
    assert_eq!(finished(&mut jobs, &id, 30).await.result, b"genuine");

    // Nothing listens: a job waits for the plugin, using no attempt.
    drop(genuine);
    let down = enqueue(&mut jobs, enqueue_req(&h, "down")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let j = job(&mut jobs, &down).await;
    assert_eq!(
        (j.state.as_str(), j.attempts),
        ("held", 0),
        "a job for a plugin that is down: {}",
        j.last_error
    );

    // The impostor takes the address.
    let fake = start(&impostor, &impostor_events);
    // Long enough for the dead session to be noticed and the impostor's
    // proof to be refused a few times.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = enqueue(&mut jobs, enqueue_req(&h, "held")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        events(&impostor_events, &held).is_empty(),
        "the impostor was sent the job"
    );
    let j = job(&mut jobs, &held).await;
    assert_ne!(
        j.state, "succeeded",
        "the job ran without the genuine plugin"
    );
    assert_eq!(
        j.attempts, 0,
        "a job waiting for its plugin used an attempt"
    );
    // The impostor was told why it was refused (SessionRefused).
    let told = std::fs::read_to_string(impostor_events.with_extension("stderr")).unwrap();
    assert!(told.contains("plugin_not_registered"), "{told}");

    // The genuine plugin comes back and runs the held jobs.
    drop(fake);
    let _genuine = start(&r, &genuine_events);
    for (id, payload) in [(&down, "down"), (&held, "held")] {
        let j = finished(&mut jobs, id, 60).await;
        assert_eq!(
            (j.state.as_str(), j.result.as_slice(), j.attempts),
            ("succeeded", payload.as_bytes(), 1),
            "{}",
            j.last_error
        );
    }
    assert!(
        std::fs::read_to_string(&impostor_events)
            .unwrap_or_default()
            .lines()
            .all(|l| !l.starts_with("start"))
    );
    server.stop();
}

serve_on_every_backend!(a_dialled_plugin_replaced_by_an_impostor_gets_no_job);

/// Starts the test plugin listening at `listen` (as a plugin reached by
/// address is), its events in `events` and its stderr next to them, and
/// waits for its handshake line.
/// A listening test plugin; `streams` > 0 asks for that many attempt
/// streams instead of an `ExecuteJob` call per attempt.
fn listening_plugin(dir: &Path, k: &Key, events: &Path, listen: &str, streams: u32) -> KillOnDrop {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pulse-test-plugin"))
        .arg("--key")
        .arg(key_file(dir, k))
        .env("PULSE_TEST_PLUGIN_EVENTS", events)
        .env("PULSE_TEST_PLUGIN_ATTEMPT_STREAMS", streams.to_string())
        .env("PULSE_PLUGIN_LISTEN", listen)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(events.with_extension("stderr")).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let child = KillOnDrop(child);
    BufReader::new(stdout).lines().next().unwrap().unwrap();
    child
}

/// A free loopback port, for a plugin that must come back at the same
/// address.
fn free_address() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// Issue 18, item 5: a dialled plugin told to stop (SIGTERM) drains: the
/// attempt it runs finishes (not a crash), a job enqueued meanwhile is not
/// sent to it and waits, held, using no attempt; it then exits, and the
/// plugin's next process runs the waiting job. The same with the Rust
/// SDK's attempt streams (spec/plugin.md, "Attempt streams"), where jobs
/// run, are cancelled and drain as messages on three long streams.
async fn a_dialled_plugin_drains_on_sigterm(backend: Backend) {
    dialled_plugin_drains_on_sigterm(backend, 0).await;
}

serve_on_every_backend!(a_dialled_plugin_drains_on_sigterm);

async fn a_plugin_on_attempt_streams_runs_cancels_and_drains(backend: Backend) {
    dialled_plugin_drains_on_sigterm(backend, 3).await;
}

serve_on_every_backend!(a_plugin_on_attempt_streams_runs_cancels_and_drains);

async fn dialled_plugin_drains_on_sigterm(backend: Backend, streams: u32) {
    let dir = tempdir(&backend.dir_name(&format!("plugins-drain-{streams}")));
    let events_path = dir.join("events.log");
    let (p, h, e) = (key("drain-p"), key("drain-sleep"), key("drain-echo"));
    let listen = free_address();
    let plugin = listening_plugin(&dir, &p, &events_path, &listen, streams);
    let config = format!("{TIMINGS}[[plugin]]\nname = \"remote\"\naddress = \"http://{listen}\"\n")
        .replace("plugin_wait_secs = 2", "plugin_wait_secs = 120")
        .replace("heartbeat_timeout_ms = 800", "heartbeat_timeout_ms = 3000");
    let server = Server::start(&dir, &config, &backend);
    let mut reg = server.registry().await;
    let mut jobs = server.jobs().await;
    for a in [
        plugin_register(&p, "remote"),
        handler_register(&h, "sleep", &p.did),
        handler_register(&e, "echo", &p.did),
    ] {
        submit(&mut reg, &a).await.unwrap();
    }
    // Jobs run (several at once), and a cancel reaches the running attempt.
    let ids: Vec<Vec<u8>> = enqueue_echoes(&mut jobs, &e, 8).await;
    for (i, id) in ids.iter().enumerate() {
        let j = finished(&mut jobs, id, 30).await;
        assert_eq!(
            (j.state.as_str(), j.result.as_slice()),
            ("succeeded", format!("job {i}").as_bytes()),
            "{}",
            j.last_error
        );
    }
    let sessions = cli(
        &dir,
        &["plugin", "sessions", "--server", &server.0.url, "--json"],
        None,
    );
    let sessions: serde_json::Value = serde_json::from_str(&sessions).unwrap();
    assert_eq!(
        sessions["sessions"][0]["attempt_streams"], streams,
        "{sessions}"
    );
    let cancelled = enqueue(&mut jobs, enqueue_req(&h, "20000")).await;
    event(&events_path, &cancelled, "start").await;
    jobs.cancel_job(proto::CancelJobRequest {
        id: cancelled.clone(),
    })
    .await
    .unwrap();
    assert_eq!(job(&mut jobs, &cancelled).await.state, "cancelled");
    event(&events_path, &cancelled, "cancelled").await;

    let long = enqueue(&mut jobs, enqueue_req(&h, "1500")).await;
    event(&events_path, &long, "start").await;
    // SAFETY: kill(2) on our own child; it touches no memory.
    unsafe {
        libc::kill(plugin.0.id() as i32, libc::SIGTERM);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waiting = enqueue(&mut jobs, enqueue_req(&e, "after")).await;
    let j = finished(&mut jobs, &long, 30).await;
    assert_eq!(
        (j.state.as_str(), j.attempts, j.result.as_slice()),
        ("succeeded", 1, &b"slept 1500"[..]),
        "the drained attempt: {}",
        j.last_error
    );
    assert!(
        events(&events_path, &waiting).is_empty(),
        "a draining plugin was sent a new attempt"
    );
    let j = job(&mut jobs, &waiting).await;
    assert_eq!(j.attempts, 0, "{} {}", j.state, j.last_error);
    drop(plugin);
    let _again = listening_plugin(&dir, &p, &events_path, &listen, streams);
    let j = finished(&mut jobs, &waiting, 60).await;
    assert_eq!(
        (j.state.as_str(), j.attempts, j.result.as_slice()),
        ("succeeded", 1, &b"after"[..]),
        "{}",
        j.last_error
    );
    server.stop();
}

/// Enqueues `n` echo jobs ("job 0" …) to `h` at once.
async fn enqueue_echoes(jobs: &mut JobsClient<Channel>, h: &Key, n: usize) -> Vec<Vec<u8>> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(enqueue(jobs, enqueue_req(h, &format!("job {i}"))).await);
    }
    ids
}

/// A plugin process started by a test, killed when the test ends however
/// it ends (a leftover process would keep the test's output open).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Issue 18, item 5: `instances = N` spawns a pool: N processes, each
/// proving the key on its own connection, sharing the handler's jobs by
/// their slots.
async fn a_spawned_pool_shares_jobs_between_its_instances(backend: Backend) {
    let dir = tempdir(&backend.dir_name("plugins-spawned-pool"));
    let events_path = dir.join("events.log");
    let p = key("spool-plugin");
    let pkey = key_file(&dir, &p);
    let config = format!(
        "{TIMINGS}{}instances = 2\n",
        plugin_table(
            "pool",
            &[
                "--key".into(),
                pkey.display().to_string(),
                "--slots".into(),
                "2".into(),
            ],
            &events_path,
        )
    );
    let server = Server::start(&dir, &config, &backend);
    let mut reg = server.registry().await;
    let mut jobs = server.jobs().await;
    let h = key("spool-sleep");
    for a in [
        plugin_register(&p, "pool"),
        handler_register(&h, "sleep", &p.did),
    ] {
        submit(&mut reg, &a).await.unwrap();
    }
    let until = Instant::now() + Duration::from_secs(30);
    let pool = loop {
        let s = jobs
            .list_plugin_sessions(proto::ListPluginSessionsRequest {})
            .await
            .unwrap()
            .into_inner();
        if s.sessions.len() == 2 {
            break s;
        }
        assert!(Instant::now() < until, "{s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for s in &pool.sessions {
        assert_eq!((s.connection.as_str(), s.slots), ("spawned", 2), "{s:?}");
    }
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(enqueue(&mut jobs, enqueue_req(&h, "300")).await);
    }
    for id in &ids {
        let j = finished(&mut jobs, id, 60).await;
        assert_eq!(j.state, "succeeded", "{}", j.last_error);
    }
    // Both processes ran some: the attempts went by free slots.
    let pids: std::collections::HashSet<String> = std::fs::read_to_string(&events_path)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("start"))
        .map(|l| l.split_whitespace().nth(3).unwrap().to_owned())
        .collect();
    assert_eq!(pids.len(), 2, "{pids:?}");
    server.stop();
}

serve_on_every_backend!(a_spawned_pool_shares_jobs_between_its_instances);

/// Issue 19, finding 5: payloads are checked against the handler's signed
/// `input_schema` at enqueue (`invalid_payload`, naming the path and
/// rule), and results against its `output_schema` (`invalid_output`,
/// the attempt fails for good).
async fn payloads_and_results_are_checked_against_the_handlers_schemas(backend: Backend) {
    let dir = tempdir(&backend.dir_name("plugins-schemas"));
    let events_path = dir.join("events.log");
    let p = key("schemas-plugin");
    let config = format!(
        "{TIMINGS}{}",
        plugin_table(
            "tools",
            &["--key".into(), key_file(&dir, &p).display().to_string()],
            &events_path
        )
    );
    let server = Server::start(&dir, &config, &backend);
    let mut reg = server.registry().await;
    let mut jobs = server.jobs().await;
    let (sum, shaped) = (key("schemas-sum"), key("schemas-shaped"));
    let sum_schema = r#"{"type":"object","required":["a","b"],"properties":{"a":{"type":"integer"},"b":{"type":"integer"}}}"#;
    for a in [
        plugin_register(&p, "tools"),
        common::handler_register_with(&sum, "echo", &p.did, |s| {
            s.input_schema = Some(sum_schema.into());
        }),
        common::handler_register_with(&shaped, "echo", &p.did, |s| {
            s.output_schema = Some(r#"{"type":"object"}"#.into());
        }),
    ] {
        submit(&mut reg, &a).await.unwrap();
    }
    for (payload, says) in [
        ("hello", "is not JSON"),
        (r#"{"a":1}"#, "\"b\" is a required property"),
        (r#"{"a":1,"b":"two"}"#, "at /b"),
    ] {
        let e = jobs.enqueue(enqueue_req(&sum, payload)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{payload}: {e:?}");
        assert_eq!(common::reason(&e), "invalid_payload", "{payload}");
        assert!(e.message().contains(says), "{payload}: {}", e.message());
    }
    let ok = enqueue(&mut jobs, enqueue_req(&sum, r#"{"a":1,"b":2}"#)).await;
    let j = finished(&mut jobs, &ok, 30).await;
    assert_eq!(j.state, "succeeded", "{}", j.last_error);

    // The echo handler returns its payload: an array is not the object
    // the output_schema asks for.
    let bad = enqueue(&mut jobs, enqueue_req(&shaped, "[1]")).await;
    let j = finished(&mut jobs, &bad, 30).await;
    assert_eq!(
        (j.state.as_str(), j.attempts),
        ("dead", 1),
        "{}",
        j.last_error
    );
    assert!(
        j.last_error.starts_with("invalid_output"),
        "{}",
        j.last_error
    );
    let good = enqueue(&mut jobs, enqueue_req(&shaped, r#"{"x":1}"#)).await;
    assert_eq!(finished(&mut jobs, &good, 30).await.state, "succeeded");
    server.stop();
}

serve_on_every_backend!(payloads_and_results_are_checked_against_the_handlers_schemas);
