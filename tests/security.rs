//! Authentication, authorisation, rate limits and TLS on a real `serve`
//! (spec/security.md). Tokens are made with `pulse-ledger token create`
//! exactly as an operator would; certificates are the test PKI in
//! tests/fixtures/tls (regenerate with its gen.sh).

#![allow(clippy::unwrap_used)]

mod common;

use common::{fixture, job, log_info, operator_token, reason};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Serve, handler_register, key, key_file, plugin_register, tempdir};
use pulse_ledger::api::proto::{self, jobs_client::JobsClient, registry_client::RegistryClient};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pulse-ledger")
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin());
    c.args(args).env_remove("PULSE_LEDGER_TOKEN");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// The spec code of a refusal (google.rpc.ErrorInfo reason).
fn refused<T: std::fmt::Debug>(r: Result<tonic::Response<T>, Status>) -> (Code, String) {
    let s = r.unwrap_err();
    (s.code(), reason(&s))
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("pulse.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

async fn submit(reg: &mut RegistryClient<Channel>, a: &pulse_ledger::Attestation) {
    reg.submit(proto::SubmitRequest {
        envelope: a.envelope().to_vec(),
    })
    .await
    .unwrap();
}

fn enqueue_req(handler: &pulse_ledger::Did, payload: &str) -> proto::EnqueueRequest {
    proto::EnqueueRequest {
        handler: handler.to_string(),
        payload: payload.as_bytes().to_vec(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_api_needs_a_token_whose_scopes_cover_the_call() {
    let dir = tempdir("security-tokens");
    let (p, a, b) = (key("sec-p"), key("sec-a"), key("sec-b"));
    let (reader, reader_table) = operator_token("reader", &["read"]);
    let (only_a, only_a_table) = operator_token("only-a", &[&format!("enqueue:{}", a.did)]);
    let (ops, ops_table) = operator_token("ops", &["admin"]);
    let (stranger, _) = operator_token("stranger", &["admin"]);
    let config = write_config(
        &dir,
        &format!("plugin_wait_secs = 600\n{reader_table}{only_a_table}{ops_table}"),
    );
    let server = Serve::start(&["--config", &config], &dir.join("data"));
    // Registration needs no account: anyone may create handlers.
    let mut reg = RegistryClient::connect(server.url.clone()).await.unwrap();
    for att in [
        plugin_register(&p, "tools"),
        handler_register(&a, "echo", &p.did),
        handler_register(&b, "echo", &p.did),
    ] {
        submit(&mut reg, &att).await;
    }
    let mut jobs = JobsClient::connect(server.url.clone()).await.unwrap();
    let list = || proto::ListJobsRequest::default();

    // No token, a token this server never issued, a malformed one.
    assert_eq!(
        refused(jobs.list_jobs(list()).await),
        (Code::Unauthenticated, "token_missing".into())
    );
    assert_eq!(
        refused(jobs.list_jobs(with_token(list(), &stranger)).await),
        (Code::Unauthenticated, "token_unknown".into())
    );
    assert_eq!(
        refused(jobs.list_jobs(with_token(list(), "plt_short")).await),
        (Code::Unauthenticated, "token_malformed".into())
    );
    assert_eq!(
        refused(jobs.enqueue(Request::new(enqueue_req(&a.did, "x"))).await),
        (Code::Unauthenticated, "token_missing".into())
    );

    // A reader reads and does nothing else.
    jobs.list_jobs(with_token(list(), &reader)).await.unwrap();
    let denied = (Code::PermissionDenied, "scope_missing".to_owned());
    assert_eq!(
        refused(
            jobs.enqueue(with_token(enqueue_req(&a.did, "x"), &reader))
                .await
        ),
        denied
    );
    let budget = proto::SetBudgetRequest {
        handler: b.did.to_string(),
        per_hour: 1,
        per_day: 1,
    };
    assert_eq!(
        refused(jobs.set_budget(with_token(budget.clone(), &reader)).await),
        denied
    );

    // A token for handler a enqueues for a only, and cannot read.
    let job_a = jobs
        .enqueue(with_token(enqueue_req(&a.did, "mine"), &only_a))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(
        refused(
            jobs.enqueue(with_token(enqueue_req(&b.did, "theirs"), &only_a))
                .await
        ),
        denied
    );
    let batch = proto::EnqueueBatchRequest {
        jobs: vec![
            enqueue_req(&a.did, "mine too"),
            enqueue_req(&b.did, "theirs"),
        ],
    };
    let results = jobs
        .enqueue_batch(with_token(batch, &only_a))
        .await
        .unwrap()
        .into_inner()
        .results;
    use proto::enqueue_result::Result as R;
    let batch_a = match &results[0].result {
        Some(R::Accepted(r)) => r.job.clone().unwrap(),
        other => panic!("the job for a was refused: {other:?}"),
    };
    match &results[1].result {
        Some(R::Rejected(e)) => {
            assert_eq!(
                (e.status_code, e.code.as_str()),
                (Code::PermissionDenied as i32, "scope_missing")
            );
            assert!(e.message.contains("only-a"), "{}", e.message);
        }
        other => panic!("the job for b was accepted: {other:?}"),
    }
    // The same on a stream, judged per job; a token without the enqueue
    // right anywhere is refused the call itself.
    let streamed = vec![
        enqueue_req(&b.did, "theirs"),
        enqueue_req(&a.did, "streamed"),
    ];
    let mut answers = jobs
        .enqueue_stream(with_token(tokio_stream::iter(streamed), &only_a))
        .await
        .unwrap()
        .into_inner();
    use proto::enqueue_stream_response::Result as S;
    match answers.message().await.unwrap().unwrap().result {
        Some(S::Rejected(e)) => assert_eq!(
            (e.status_code, e.code.as_str()),
            (Code::PermissionDenied as i32, "scope_missing")
        ),
        other => panic!("the streamed job for b was accepted: {other:?}"),
    }
    let streamed_a = match answers.message().await.unwrap().unwrap().result {
        Some(S::Accepted(r)) => r.job.unwrap(),
        other => panic!("the streamed job for a was refused: {other:?}"),
    };
    assert_eq!(streamed_a.handler, a.did.to_string());
    assert!(answers.message().await.unwrap().is_none());
    let reader_stream = tokio_stream::iter(vec![enqueue_req(&a.did, "x")]);
    assert_eq!(
        refused(
            jobs.enqueue_stream(with_token(reader_stream, &reader))
                .await
        ),
        denied
    );
    let get = proto::GetJobRequest {
        id: job_a.id.clone(),
    };
    assert_eq!(
        refused(jobs.get_job(with_token(get.clone(), &only_a)).await),
        denied
    );
    let cancel = proto::CancelJobRequest {
        id: job_a.id.clone(),
    };
    assert_eq!(
        refused(jobs.cancel_job(with_token(cancel.clone(), &reader)).await),
        denied
    );

    // Refusals changed nothing: only the two accepted jobs exist, both a's,
    // and b has no budget.
    let mut seen = Vec::new();
    for state in ["queued", "held", "running", "cancelled"] {
        let page = jobs
            .list_jobs(with_token(
                proto::ListJobsRequest {
                    state: state.into(),
                    ..Default::default()
                },
                &ops,
            ))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.jobs);
    }
    let mut ids: Vec<_> = seen.iter().map(|j| j.id.clone()).collect();
    ids.sort();
    let mut expected = vec![job_a.id.clone(), batch_a.id.clone(), streamed_a.id.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    assert!(seen.iter().all(|j| j.handler == a.did.to_string()));
    let b_budget = jobs
        .get_budget(with_token(
            proto::GetBudgetRequest {
                handler: b.did.to_string(),
            },
            &ops,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((b_budget.per_hour, b_budget.per_day), (0, 0));

    // Admin may do everything.
    let cancelled = jobs
        .cancel_job(with_token(cancel, &ops))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(cancelled.state, "cancelled");
    jobs.set_budget(with_token(budget, &ops)).await.unwrap();

    // The CLI sends the token from PULSE_LEDGER_TOKEN or --token.
    let out = run(&["job", "list", "--server", &server.url], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("token_missing"));
    let out = run(
        &[
            "job",
            "get",
            &hex::encode(&job_a.id),
            "--server",
            &server.url,
        ],
        &[("PULSE_LEDGER_TOKEN", &reader)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("cancelled"));
    let out = run(
        &[
            "budget",
            "set",
            "--per-day",
            "5",
            "--server",
            &server.url,
            "--token",
            &reader,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("scope_missing"));
    // A token is never sent in clear to another host unless forced.
    let out = run(
        &["job", "list", "--server", "http://192.0.2.1:7300"],
        &[("PULSE_LEDGER_TOKEN", &reader)],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("plaintext_not_loopback"));
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_are_rate_limited_per_client_and_refusals_store_nothing() {
    let dir = tempdir("security-rate");
    let config = write_config(
        &dir,
        "submit_rate = 1\nsubmit_burst = 3\nrate_limit_loopback = true\nallow_unauthenticated = true\n",
    );
    let server = Serve::start(&["--config", &config], &dir.join("data"));
    let mut reg = RegistryClient::connect(server.url.clone()).await.unwrap();
    let started = Instant::now();
    for i in 0..3 {
        submit(&mut reg, &plugin_register(&key(&format!("rate-{i}")), "p")).await;
    }
    let over = plugin_register(&key("rate-over"), "p");
    let fourth = reg
        .submit(proto::SubmitRequest {
            envelope: over.envelope().to_vec(),
        })
        .await;
    // One submission a second: the fourth within a second is refused (a
    // slow machine may take longer, and earn a refill).
    let mut stored = 3;
    if started.elapsed() >= Duration::from_millis(900) && fourth.is_ok() {
        stored = 4;
    } else {
        let refusal = fourth.unwrap_err();
        assert_eq!(refusal.code(), Code::ResourceExhausted);
        assert_eq!(reason(&refusal), "rate_limited");
        let retry = refusal
            .get_details_retry_info()
            .and_then(|r| r.retry_delay)
            .unwrap();
        assert!(retry > Duration::ZERO && retry <= Duration::from_secs(1));
    }
    let size = |reg: &mut RegistryClient<Channel>| {
        let mut reg = reg.clone();
        async move { log_info(&mut reg).await.size }
    };
    assert_eq!(
        size(&mut reg).await,
        stored,
        "a refused submission was stored"
    );

    // Each envelope of a stream takes from the same allowance; refused
    // ones are answered in place and not stored.
    let envelopes: Vec<_> = (0..4)
        .map(|i| proto::SubmitRequest {
            envelope: plugin_register(&key(&format!("rate-s{i}")), "p")
                .envelope()
                .to_vec(),
        })
        .collect();
    let mut answers = reg
        .submit_stream(tokio_stream::iter(envelopes))
        .await
        .unwrap()
        .into_inner();
    let (mut accepted, mut limited) = (0u64, 0);
    while let Some(a) = answers.message().await.unwrap() {
        match a.result.unwrap() {
            proto::submit_stream_response::Result::Accepted(_) => accepted += 1,
            proto::submit_stream_response::Result::Rejected(e) => {
                assert_eq!(e.code, "rate_limited");
                limited += 1;
            }
        }
    }
    assert_eq!(accepted + limited, 4);
    // At one a second, the bucket (empty after the fourth call) refills at
    // most one submission per second since.
    let refilled = started.elapsed().as_secs() + 1;
    assert!(
        accepted <= refilled,
        "{accepted} of 4 accepted within {refilled} s"
    );
    assert!(limited >= 1 || refilled > 4, "none of 4 was limited");
    assert_eq!(size(&mut reg).await, stored + accepted);
    server.stop();
}

#[test]
fn unsafe_settings_are_refused_before_anything_is_opened() {
    let dir = tempdir("security-refusals");
    let data = dir.join("data");
    let data_arg = data.display().to_string();
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--data-dir", &data_arg];
        args.extend_from_slice(extra);
        run(&args, &[])
    };
    let refused_with = |out: Output, rule: &str| {
        assert_eq!(out.status.code(), Some(2), "{rule}");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(err.contains(rule), "expected {rule}: {err}");
        assert!(!data.exists(), "{rule}: the data dir was created");
    };
    // Plaintext, or an open jobs API, on a non-loopback address.
    refused_with(serve(&["--listen", "0.0.0.0:0"]), "plaintext_not_loopback");
    refused_with(
        serve(&["--listen", "0.0.0.0:0", "--allow-plaintext"]),
        "jobs_api_unauthenticated",
    );
    let (cert, key) = (fixture("server.pem"), fixture("server.key"));
    refused_with(
        serve(&[
            "--listen",
            "0.0.0.0:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ]),
        "jobs_api_unauthenticated",
    );
    // TLS files that are missing, not PEM, or a key that is not the cert's.
    let missing = dir.join("missing.pem").display().to_string();
    let local = ["--listen", "127.0.0.1:0"];
    refused_with(
        serve(&[&local[..], &["--tls-cert", &missing, "--tls-key", &key]].concat()),
        "bad_tls_file",
    );
    refused_with(
        serve(&[&local[..], &["--tls-cert", &cert, "--tls-key", &cert]].concat()),
        "bad_tls_file",
    );
    let other_key = fixture("client.key");
    refused_with(
        serve(&[&local[..], &["--tls-cert", &cert, "--tls-key", &other_key]].concat()),
        "bad_tls_file",
    );
    // A proxy on this host (rate_limit_loopback) makes loopback reachable
    // from outside: an open jobs API is refused there too.
    let proxied = write_config(&dir, "rate_limit_loopback = true\n");
    refused_with(
        serve(&[&local[..], &["--config", &proxied]].concat()),
        "jobs_api_unauthenticated",
    );
    // Config files: a bad token table, a plaintext plugin elsewhere.
    let bad_token = write_config(
        &dir,
        "[[token]]\nname = \"x\"\nhash = \"blake3:00\"\nscopes = [\"read\"]\n",
    );
    let out = serve(&["--config", &bad_token]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("token hash"));
    let (_, table) = operator_token("t", &["read"]);
    let bad_scope = write_config(&dir, &table.replace("\"read\"", "\"write\""));
    let out = serve(&["--config", &bad_scope]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scope \"write\""));
    let far_plugin = write_config(
        &dir,
        "[[plugin]]\nname = \"far\"\naddress = \"http://10.0.0.7:7400\"\n",
    );
    refused_with(serve(&["--config", &far_plugin]), "plaintext_not_loopback");
    assert!(!data.exists());
}

/// A server's https:// URL, by name so the certificate's DNS name is
/// checked.
fn https(server: &Serve) -> String {
    server.url.replace("http://127.0.0.1", "https://localhost")
}

#[test]
fn tls_and_mutual_tls_admit_only_clients_that_trust_and_are_trusted() {
    let dir = tempdir("security-tls");
    let (cert, key, ca) = (
        fixture("server.pem"),
        fixture("server.key"),
        fixture("ca.pem"),
    );
    let (client_cert, client_key) = (fixture("client.pem"), fixture("client.key"));
    let other_ca = fixture("other-ca.pem");
    let server = Serve::start(&["--tls-cert", &cert, "--tls-key", &key], &dir.join("one"));
    let url = https(&server);
    let info = |extra: &[&str]| {
        let mut args = vec!["log", "info", "--server", &url];
        args.extend_from_slice(extra);
        run(&args, &[])
    };
    let out = info(&["--ca", &ca]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("size"));
    // A client that does not trust the server's CA, and a plaintext one.
    assert_eq!(info(&["--ca", &other_ca]).status.code(), Some(3));
    assert_eq!(info(&[]).status.code(), Some(3));
    let plain = run(&["log", "info", "--server", &server.url], &[]);
    assert_eq!(plain.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&plain.stderr).contains("https://"));
    drop(server);

    // Mutual TLS: the server admits only certificates its client CA signed.
    let server = Serve::start(
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ],
        &dir.join("two"),
    );
    let url = https(&server);
    let info = |extra: &[&str]| {
        let mut args = vec!["log", "info", "--server", &url, "--ca", &ca];
        args.extend_from_slice(extra);
        run(&args, &[])
    };
    let out = info(&["--client-cert", &client_cert, "--client-key", &client_key]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = info(&[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--client-cert"));
    // The server's certificate is signed by the same CA but is not for
    // client authentication (no clientAuth usage): refused.
    let out = info(&["--client-cert", &cert, "--client-key", &key]);
    assert_eq!(out.status.code(), Some(3));
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_plugin_is_reached_over_mutual_tls_only() {
    let dir = tempdir("security-plugin-tls");
    let p = key("sec-tls-plugin");
    let h = key("sec-tls-handler");
    let (cert, key_pem, ca) = (
        fixture("server.pem"),
        fixture("server.key"),
        fixture("ca.pem"),
    );
    let (client_cert, client_key) = (fixture("client.pem"), fixture("client.key"));
    // The plugin requires a client certificate signed by the test CA.
    let mut plugin = Command::new(env!("CARGO_BIN_EXE_pulse-test-plugin"))
        .arg("--key")
        .arg(key_file(&dir, &p))
        .env("PULSE_PLUGIN_TLS_CERT", &cert)
        .env("PULSE_PLUGIN_TLS_KEY", &key_pem)
        .env("PULSE_PLUGIN_TLS_CLIENT_CA", &ca)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = BufReader::new(plugin.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let addr = pulse_ledger::plugin::parse_handshake(&line).unwrap();
    let table = |with_identity: bool| {
        let identity = if with_identity {
            format!("tls_cert = {client_cert:?}\ntls_key = {client_key:?}\n")
        } else {
            String::new()
        };
        format!(
            "plugin_wait_secs = 3\nplugin_health_interval_ms = 200\n[[plugin]]\nname = \"far\"\naddress = \"https://localhost:{}\"\ntls_ca = {ca:?}\n{identity}",
            addr.port()
        )
    };
    let run_one = |with_identity: bool, data: PathBuf| {
        let config = write_config(&dir, &table(with_identity));
        let server = Serve::start(&["--config", &config], &data);
        let url = server.url.clone();
        let (p, h) = (&p, &h);
        async move {
            let mut reg = RegistryClient::connect(url.clone()).await.unwrap();
            submit(&mut reg, &plugin_register(p, "far")).await;
            submit(&mut reg, &handler_register(h, "echo", &p.did)).await;
            let mut jobs = JobsClient::connect(url).await.unwrap();
            let id = jobs
                .enqueue(enqueue_req(&h.did, "sealed"))
                .await
                .unwrap()
                .into_inner()
                .job
                .unwrap()
                .id;
            let until = Instant::now() + Duration::from_secs(30);
            loop {
                let j = job(&mut jobs, &id).await;
                if ["succeeded", "dead", "failed", "cancelled"].contains(&j.state.as_str()) {
                    server.stop();
                    return j;
                }
                assert!(
                    Instant::now() < until,
                    "job still {} ({})",
                    j.state,
                    j.reason
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let j = run_one(true, dir.join("with-cert")).await;
    assert_eq!(
        (j.state.as_str(), j.result.as_slice()),
        ("succeeded", &b"sealed"[..]),
        "{}",
        j.last_error
    );
    // Without a client certificate the plugin refuses the connection: the
    // job never reaches it and dies waiting.
    let j = run_one(false, dir.join("without-cert")).await;
    assert_eq!(
        (j.state.as_str(), j.reason.as_str()),
        ("dead", "plugin_not_connected")
    );
    plugin.kill().unwrap();
    plugin.wait().unwrap();
}

/// SIGHUP to `server`.
fn hup(server: &Serve) {
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
}

const RELOADS_APPLIED: &str = "pulse_ledger_token_reloads_total{outcome=\"applied\"}";
const RELOADS_REFUSED: &str = "pulse_ledger_token_reloads_total{outcome=\"refused\"}";

/// A reload is asynchronous: each one is awaited through its counter on
/// the metrics endpoint (counted once its outcome is in force), then the
/// tokens are checked. A reload that never ran never counts and fails the
/// wait; one counted with the wrong outcome, or applied wrongly, fails the
/// checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_reloaded_on_sighup_and_a_bad_reload_changes_nothing() {
    let dir = tempdir("security-reload");
    let (old, old_table) = operator_token("old", &["read"]);
    let (new, new_table) = operator_token("new", &["read"]);
    let config = write_config(&dir, &old_table);
    let server = Serve::start(
        &["--config", &config, "--metrics-listen", "127.0.0.1:0"],
        &dir.join("data"),
    );
    let mut jobs = JobsClient::connect(server.url.clone()).await.unwrap();
    let list = |t: &str| with_token(proto::ListJobsRequest::default(), t);
    let refusal =
        |r: Result<tonic::Response<proto::ListJobsResponse>, Status>| reason(&r.unwrap_err());
    jobs.list_jobs(list(&old)).await.unwrap();
    assert_eq!(server.metric(RELOADS_APPLIED).await, 0);
    assert_eq!(server.metric(RELOADS_REFUSED).await, 0);

    // The old token is revoked and a new one issued, without a restart.
    std::fs::write(&config, &new_table).unwrap();
    hup(&server);
    server.metric_reaches(RELOADS_APPLIED, 1).await;
    assert_eq!(refusal(jobs.list_jobs(list(&old)).await), "token_unknown");
    jobs.list_jobs(list(&new)).await.unwrap();

    // A config that does not parse, or that has no token left, is refused
    // and changes nothing: a reload never opens the jobs API.
    for (n, text) in [(1, "[[token]]\nname = 1\n"), (2, "max_running = 4\n")] {
        std::fs::write(&config, text).unwrap();
        hup(&server);
        server.metric_reaches(RELOADS_REFUSED, n).await;
        assert_eq!(server.metric(RELOADS_APPLIED).await, 1, "{text}");
        jobs.list_jobs(list(&new)).await.unwrap();
        assert_eq!(refusal(jobs.list_jobs(list(&old)).await), "token_unknown");
        let open = jobs.list_jobs(proto::ListJobsRequest::default()).await;
        assert_eq!(refusal(open), "token_missing", "{text}");
    }
    server.stop();

    // A server started open (loopback, no token) stays open on a reload
    // that still has none, and requires tokens once the file has one.
    let config = write_config(&dir, "max_running = 4\n");
    let server = Serve::start(
        &["--config", &config, "--metrics-listen", "127.0.0.1:0"],
        &dir.join("data-open"),
    );
    let mut jobs = JobsClient::connect(server.url.clone()).await.unwrap();
    hup(&server);
    server.metric_reaches(RELOADS_APPLIED, 1).await;
    assert_eq!(server.metric(RELOADS_REFUSED).await, 0);
    jobs.list_jobs(proto::ListJobsRequest::default())
        .await
        .unwrap();
    std::fs::write(&config, &new_table).unwrap();
    hup(&server);
    server.metric_reaches(RELOADS_APPLIED, 2).await;
    let open = jobs.list_jobs(proto::ListJobsRequest::default()).await;
    assert_eq!(refusal(open), "token_missing");
    jobs.list_jobs(list(&new)).await.unwrap();
    assert_eq!(server.metric(RELOADS_REFUSED).await, 0);
    server.stop();
}

#[test]
fn token_files_and_hashes_agree_and_bad_plugin_tls_settings_are_refused() {
    let dir = tempdir("security-token-file");
    // `token create --out` writes the secret (mode 0600) and prints its
    // table; `token hash` gives the same stored form from the file.
    let file = dir.join("ci.token");
    let file_arg = file.display().to_string();
    let out = run(
        &[
            "token", "create", "--name", "ci", "--scope", "read", "--out", &file_arg, "--json",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["token"].is_null(),
        "the secret is printed only without --out"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let hashed = Command::new(bin())
        .args(["token", "hash"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    assert!(hashed.status.success());
    assert_eq!(
        String::from_utf8_lossy(&hashed.stdout).trim(),
        v["hash"].as_str().unwrap()
    );
    // The file is never overwritten, and a non-token does not hash.
    let again = run(
        &[
            "token", "create", "--name", "ci", "--scope", "read", "--out", &file_arg,
        ],
        &[],
    );
    assert_eq!(again.status.code(), Some(2));
    let bad = Command::new(bin())
        .args(["token", "hash"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("token_malformed"));

    // A plugin told to require client certificates, but given no
    // certificate of its own, refuses to start rather than run without TLS.
    let k = key("sec-ca-only");
    let out = Command::new(env!("CARGO_BIN_EXE_pulse-test-plugin"))
        .arg("--key")
        .arg(key_file(&dir, &k))
        .env("PULSE_PLUGIN_TLS_CLIENT_CA", fixture("ca.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PULSE_PLUGIN_TLS_CLIENT_CA needs"));
    assert!(out.stdout.is_empty(), "it announced an address");
}

/// Issue 17, item 5: a token revoked by a reload ends the stream it
/// opened; refused callers are counted; a caller without `read` learns
/// nothing about other jobs through `parent`; the CLI sends nothing over a
/// scheme it would dial in plaintext; rejected input cannot forge log
/// lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_lose_their_streams_and_strangers_learn_nothing() {
    let dir = tempdir("security-small-fixes");
    let (p, h) = (key("small-p"), key("small-h"));
    let (watcher, watcher_table) = operator_token("watcher", &["read", "enqueue"]);
    let (enqueuer, enqueuer_table) = operator_token("enqueuer", &["enqueue"]);
    let config = write_config(
        &dir,
        &format!("plugin_wait_secs = 600\n{watcher_table}{enqueuer_table}"),
    );
    let log = std::fs::File::create(dir.join("serve.log")).unwrap();
    let mut cmd = Serve::command(
        &["--config", &config, "--metrics-listen", "127.0.0.1:0"],
        &dir.join("data"),
    );
    cmd.env("RUST_LOG", "info").stderr(log);
    let server = Serve::spawn(cmd, true);
    let mut reg = RegistryClient::connect(server.url.clone()).await.unwrap();
    submit(&mut reg, &plugin_register(&p, "tools")).await;
    submit(&mut reg, &handler_register(&h, "echo", &p.did)).await;
    let mut jobs = JobsClient::connect(server.url.clone()).await.unwrap();

    // parent: told "not found" only to a caller that may read jobs.
    let unknown = "00000000000000000000000000000001";
    let with_parent = || proto::EnqueueRequest {
        parent: hex::decode(unknown).unwrap(),
        ..enqueue_req(&h.did, "x")
    };
    assert_eq!(
        refused(jobs.enqueue(with_token(with_parent(), &watcher)).await).1,
        "parent_not_found"
    );
    jobs.enqueue(with_token(with_parent(), &enqueuer))
        .await
        .unwrap();

    // A stream opened with a token outlives it no longer than one poll.
    let id = jobs
        .enqueue(with_token(enqueue_req(&h.did, "held"), &watcher))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id;
    let mut stream = jobs
        .watch_job(with_token(proto::WatchJobRequest { id }, &watcher))
        .await
        .unwrap()
        .into_inner();
    assert!(!stream.message().await.unwrap().unwrap().state.is_empty());
    // So does an EnqueueStream: the token is checked again as jobs arrive.
    let (requests, rx) = tokio::sync::mpsc::channel(4);
    let mut enqueues = jobs
        .enqueue_stream(with_token(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            &watcher,
        ))
        .await
        .unwrap()
        .into_inner();
    requests
        .send(enqueue_req(&h.did, "before the reload"))
        .await
        .unwrap();
    let first = enqueues.message().await.unwrap().unwrap();
    assert!(matches!(
        first.result,
        Some(proto::enqueue_stream_response::Result::Accepted(_))
    ));
    std::fs::write(&config, &enqueuer_table).unwrap();
    hup(&server);
    server.metric_reaches(RELOADS_APPLIED, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    requests
        .send(enqueue_req(&h.did, "after the reload"))
        .await
        .unwrap();
    let e = enqueues.message().await.unwrap_err();
    assert_eq!(reason(&e), "token_unknown");
    // Updates the job made while the token was still good may come first
    // (the stream is woken by each change); then it ends with the refusal.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                other => return other,
            }
        }
    })
    .await
    .expect("the stream of a revoked token is still open");
    assert_eq!(reason(&ended.unwrap_err()), "token_unknown");

    // Refused callers are counted by code.
    let _ = jobs.list_jobs(proto::ListJobsRequest::default()).await;
    let _ = jobs
        .list_jobs(with_token(proto::ListJobsRequest::default(), &enqueuer))
        .await;
    assert!(
        server
            .metric("pulse_ledger_auth_refusals_total{code=\"token_unknown\"}")
            .await
            >= 1
    );
    assert!(
        server
            .metric("pulse_ledger_auth_refusals_total{code=\"token_missing\"}")
            .await
            >= 1
    );
    assert!(
        server
            .metric("pulse_ledger_auth_refusals_total{code=\"scope_missing\"}")
            .await
            >= 1
    );

    // An unsigned envelope whose unknown key tries to forge a log line.
    let forged = {
        use pulse_ledger::internal::{Map, Value, encode};
        let mut m = Map::new();
        m.insert("body", Value::Bytes(vec![0xa0]));
        m.insert("sigs", Value::Array(vec![]));
        m.insert(
            "x\n2026-12-04T00:00:00Z INFO forged \u{1b}[31mline",
            Value::Uint(1),
        );
        encode(&Value::Map(m))
    };
    let _ = reg
        .submit(proto::SubmitRequest { envelope: forged })
        .await
        .unwrap_err();

    // The CLI: a grpc:// URL is refused before anything is dialled.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let grpc = format!("grpc://{}", listener.local_addr().unwrap());
    let out = run(
        &["job", "list", "--server", &grpc, "--token", &enqueuer],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported_scheme"));
    assert!(listener.accept().is_err(), "the CLI dialled a grpc:// URL");
    let out = run(&["log", "info", "--server", "http://192.0.2.1:7300"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("plaintext_not_loopback"));

    server.stop();
    let text = std::fs::read_to_string(dir.join("serve.log")).unwrap();
    assert!(text.contains("rejected submission"), "{text}");
    assert!(!text.contains('\u{1b}'), "a raw escape reached the log");
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("2026-12-04T00:00:00Z INFO forged")),
        "a forged line reached the log"
    );
    assert!(text.contains("refused a caller"), "{text}");
}

/// Issue 17, item 4: a Jobs request is judged on its headers. A caller
/// without a token, or whose token cannot make the call, is refused while
/// its body is still coming (here: a body that never ends), so a stranger
/// cannot make the server hold 16 MiB uploads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_requests_are_refused_on_their_headers() {
    let dir = tempdir("security-gate");
    let (reader, reader_table) = operator_token("reader", &["read"]);
    let config = write_config(&dir, &reader_table);
    let server = Serve::start(&["--config", &config], &dir.join("data"));
    let channel = Channel::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    for (token, code) in [(None, "token_missing"), (Some(&reader), "scope_missing")] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        // A request whose body never ends: one message that never comes.
        let body = tokio_stream::pending::<proto::EnqueueRequest>();
        let mut request = Request::new(body);
        if let Some(t) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let path =
            tonic::codegen::http::uri::PathAndQuery::from_static("/pulse_ledger.v1.Jobs/Enqueue");
        let codec =
            tonic_prost::ProstCodec::<proto::EnqueueRequest, proto::EnqueueResponse>::default();
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            grpc.client_streaming(request, path, codec),
        )
        .await
        .expect("the server waited for the body before judging the caller");
        assert_eq!(reason(&answer.unwrap_err()), code);
    }
    server.stop();
}

/// Issue 17, item 4: reads are open to anyone, but not at any rate: a
/// client over its read allowance is refused `rate_limited` before its
/// request is read; submissions keep their own allowance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_rate_limited_per_client() {
    let dir = tempdir("security-reads");
    let config = write_config(
        &dir,
        "read_rate = 1\nread_burst = 5\nrate_limit_loopback = true\nallow_unauthenticated = true\n",
    );
    let server = Serve::start(&["--config", &config], &dir.join("data"));
    let mut reg = RegistryClient::connect(server.url.clone()).await.unwrap();
    let mut refused = None;
    for _ in 0..20 {
        match reg.get_log_info(proto::GetLogInfoRequest {}).await {
            Ok(_) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("20 reads at once passed a burst of 5");
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::ResourceExhausted, "rate_limited")
    );
    // Submissions draw on their own allowance.
    submit(&mut reg, &plugin_register(&key("reads-p"), "p")).await;
    server.stop();
}

/// Issue 17, item 5: `token revoke` takes a token out of force at once,
/// with no reload, and for good: neither a reload of a config that still
/// has its table nor a restart brings it back. Only admin may revoke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_revoked_at_once_and_for_good() {
    let dir = tempdir("security-revoke");
    let (ops, ops_table) = operator_token("ops", &["admin"]);
    let (ci, ci_table) = operator_token("ci", &["read"]);
    let config = write_config(&dir, &format!("{ops_table}{ci_table}"));
    let data = dir.join("data");
    let args = [
        "--config",
        config.as_str(),
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    let server = Serve::start(&args, &data);
    let mut jobs = JobsClient::connect(server.url.clone()).await.unwrap();
    let list = |t: &str| with_token(proto::ListJobsRequest::default(), t);
    jobs.list_jobs(list(&ci)).await.unwrap();
    let revoke = |name: &str, with: &str| {
        run(
            &["token", "revoke", "--name", name, "--server", &server.url],
            &[("PULSE_LEDGER_TOKEN", with)],
        )
    };
    // Not by a token without admin, and not a token that is not there.
    let out = revoke("ops", &ci);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("scope_missing"));
    let out = revoke("nobody", &ops);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("token_not_found"));
    jobs.list_jobs(list(&ci)).await.unwrap();

    let out = revoke("ci", &ops);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(printed.starts_with("revoked blake3:"), "{printed}");
    let refusal =
        |r: Result<tonic::Response<proto::ListJobsResponse>, Status>| reason(&r.unwrap_err());
    assert_eq!(refusal(jobs.list_jobs(list(&ci)).await), "token_unknown");
    jobs.list_jobs(list(&ops)).await.unwrap();
    // The config still holds its table: a reload does not bring it back.
    hup(&server);
    server.metric_reaches(RELOADS_APPLIED, 1).await;
    assert_eq!(refusal(jobs.list_jobs(list(&ci)).await), "token_unknown");
    server.stop();
    // Nor does a restart.
    let server = Serve::start(&args, &data);
    let mut jobs = JobsClient::connect(server.url.clone()).await.unwrap();
    assert_eq!(refusal(jobs.list_jobs(list(&ci)).await), "token_unknown");
    jobs.list_jobs(list(&ops)).await.unwrap();
    server.stop();
}

/// Issue 17, item 4: registrations are bounded per client a day as well
/// as per second: a client within its per-second rate is refused
/// `rate_limited` once its day's allowance is spent, and told when to
/// come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_bounded_per_day() {
    let dir = tempdir("security-daily");
    let config = write_config(
        &dir,
        "submit_daily = 3\nrate_limit_loopback = true\nallow_unauthenticated = true\n",
    );
    let server = Serve::start(&["--config", &config], &dir.join("data"));
    let mut reg = RegistryClient::connect(server.url.clone()).await.unwrap();
    for i in 0..3 {
        submit(&mut reg, &plugin_register(&key(&format!("daily-{i}")), "p")).await;
    }
    let e = reg
        .submit(proto::SubmitRequest {
            envelope: plugin_register(&key("daily-3"), "p").envelope().to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::ResourceExhausted, "rate_limited")
    );
    assert!(e.message().contains("3 calls a day"), "{}", e.message());
    let retry = e.get_details_retry_info().unwrap().retry_delay.unwrap();
    assert!(retry.as_secs() > 3600, "{retry:?}");
    server.stop();
}
