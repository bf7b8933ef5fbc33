//! Owner-controlled access on a real `serve` (spec/security.md, "Handler
//! owners"): a handler's signed access lists decide who may enqueue to it,
//! read, cancel and budget its jobs; clients prove a did:key with DID
//! tokens made by `pulse-ledger token did`, with no operator edit.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{Key, Serve, handler_register, handler_register_with, key, key_file, next};
use common::{operator_token, plugin_register, reason, submit_all, tempdir};
use pulse_ledger::api::proto::{self, jobs_client::JobsClient, registry_client::RegistryClient};
use pulse_ledger::{Action, Attestation, HandlerAccess, Member, Right, Schema};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
        .args(args)
        .env_remove("PULSE_LEDGER_TOKEN")
        .env_remove("PULSE_LEDGER_AS_KEY")
        .output()
        .unwrap()
}

fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// A DID token for `k`, signed by the CLI for the server at `url`.
fn did_token(dir: &Path, k: &Key, url: &str) -> String {
    let file = key_file(dir, k);
    let t = stdout_of(&run(&[
        "token",
        "did",
        "--key",
        file.to_str().unwrap(),
        "--server",
        url,
    ]));
    t.trim().to_owned()
}

fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// Who calls: a bearer token (operator or DID) over one connection.
struct Caller {
    jobs: JobsClient<Channel>,
    token: String,
}

impl Caller {
    async fn enqueue(&mut self, handler: &Key) -> Result<Vec<u8>, Status> {
        let r = proto::EnqueueRequest {
            handler: handler.did.to_string(),
            payload: b"{}".to_vec(),
            ..Default::default()
        };
        let job = self.jobs.enqueue(authed(r, &self.token)).await?;
        Ok(job.into_inner().job.unwrap().id)
    }

    async fn get(&mut self, id: &[u8]) -> Result<proto::Job, Status> {
        let r = proto::GetJobRequest { id: id.to_vec() };
        let j = self.jobs.get_job(authed(r, &self.token)).await?;
        Ok(j.into_inner().job.unwrap())
    }

    async fn log(&mut self, id: &[u8]) -> Result<(), Status> {
        let r = proto::GetJobLogRequest {
            id: id.to_vec(),
            ..Default::default()
        };
        self.jobs.get_job_log(authed(r, &self.token)).await?;
        Ok(())
    }

    /// Held jobs (no plugin runs in this test, so every job waits held).
    async fn list(&mut self, handler: Option<&Key>) -> Result<usize, Status> {
        let r = proto::ListJobsRequest {
            state: "held".into(),
            handler: handler.map(|h| h.did.to_string()).unwrap_or_default(),
            ..Default::default()
        };
        Ok(self
            .jobs
            .list_jobs(authed(r, &self.token))
            .await?
            .into_inner()
            .jobs
            .len())
    }

    async fn cancel(&mut self, id: &[u8]) -> Result<String, Status> {
        let r = proto::CancelJobRequest { id: id.to_vec() };
        let j = self.jobs.cancel_job(authed(r, &self.token)).await?;
        Ok(j.into_inner().job.unwrap().state)
    }

    async fn set_budget(&mut self, handler: &Key, per_hour: u64) -> Result<(), Status> {
        let r = proto::SetBudgetRequest {
            handler: handler.did.to_string(),
            per_hour,
            ..Default::default()
        };
        self.jobs.set_budget(authed(r, &self.token)).await?;
        Ok(())
    }

    async fn get_budget(&mut self, handler: &Key) -> Result<u64, Status> {
        let r = proto::GetBudgetRequest {
            handler: handler.did.to_string(),
        };
        let b = self.jobs.get_budget(authed(r, &self.token)).await?;
        Ok(b.into_inner().per_hour)
    }
}

trait Revealed {
    fn revealed(&self) -> usize;
}

impl Revealed for proto::Job {
    /// What the answer reveals of the job's outcome.
    fn revealed(&self) -> usize {
        self.result.len() + self.last_error.len() + self.attempt_history.len()
    }
}

/// The refusal's spec code; the call must have been refused.
fn code<T: std::fmt::Debug>(r: Result<T, Status>) -> String {
    let s = r.unwrap_err();
    let code = reason(&s);
    if code == "scope_missing" {
        assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    }
    code
}

fn access(lists: &[(Right, Vec<Member>)]) -> HandlerAccess {
    let mut a = HandlerAccess::default();
    for (r, l) in lists {
        a.set(*r, l.clone());
    }
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handlers_owner_decides_who_may_enqueue_read_cancel_and_budget() {
    let dir = tempdir("owner-access");
    std::fs::create_dir_all(&dir).unwrap();
    let (plugin, alice, alice2, bob, mallory, other) = (
        key("own-p"),
        key("own-alice"),
        key("own-alice2"),
        key("own-bob"),
        key("own-mallory"),
        key("own-other-handler"),
    );
    let (ops, ops_table) = operator_token("ops", &["admin"]);
    let (app, app_table) = operator_token("app", &["enqueue", "read", "cancel", "budget"]);
    let config = dir.join("pulse.toml");
    std::fs::write(
        &config,
        format!("plugin_wait_secs = 600\n{ops_table}{app_table}"),
    )
    .unwrap();
    let server = Serve::start(&["--config", config.to_str().unwrap()], &dir.join("data"));

    // Alice's handler: only she and Bob may enqueue and read, only she may
    // cancel and budget; the operator's tokens are left out. The other
    // handler keeps the default lists (owner, tokens).
    let bob_m = Member::Client(bob.did.clone());
    let lists = access(&[
        (Right::Enqueue, vec![Member::Owner, bob_m.clone()]),
        (Right::Read, vec![Member::Owner, bob_m.clone()]),
        (Right::Cancel, vec![Member::Owner]),
        (Right::Budget, vec![Member::Owner]),
    ]);
    let genesis = handler_register_with(&alice, "alices", &plugin.did, |s| {
        s.access = Some(lists.clone());
    });
    let mut reg = RegistryClient::connect(server.url.clone()).await.unwrap();
    for att in [
        plugin_register(&plugin, "tools"),
        genesis.clone(),
        handler_register(&other, "others", &plugin.did),
    ] {
        reg.submit(proto::SubmitRequest {
            envelope: att.envelope().to_vec(),
        })
        .await
        .unwrap();
    }

    let channel = JobsClient::connect(server.url.clone()).await.unwrap();
    let caller = |token: String| Caller {
        jobs: channel.clone(),
        token,
    };
    let mut a = caller(did_token(&dir, &alice, &server.url));
    let mut b = caller(did_token(&dir, &bob, &server.url));
    let mut m = caller(did_token(&dir, &mallory, &server.url));
    let mut app = caller(app);
    let mut ops = caller(ops);

    // The owner and the named client can enqueue and read.
    let job_a = a.enqueue(&alice).await.unwrap();
    let job_b = b.enqueue(&alice).await.unwrap();
    assert_eq!(a.get(&job_b).await.unwrap().handler, alice.did.to_string());
    b.get(&job_a).await.unwrap();
    b.log(&job_a).await.unwrap();
    assert_eq!(a.list(Some(&alice)).await.unwrap(), 2);
    assert_eq!(b.list(Some(&alice)).await.unwrap(), 2);
    a.set_budget(&alice, 50).await.unwrap();
    assert_eq!(b.get_budget(&alice).await.unwrap(), 50);

    // A stranger with a valid DID token can do none of it, and cannot
    // tell an existing job from a missing one.
    assert_eq!(code(m.enqueue(&alice).await), "scope_missing");
    assert_eq!(code(m.get(&job_a).await), "scope_missing");
    assert_eq!(code(m.get(&[7u8; 16]).await), "scope_missing");
    assert_eq!(code(m.log(&job_a).await), "scope_missing");
    assert_eq!(code(m.list(Some(&alice)).await), "scope_missing");
    assert_eq!(code(m.list(None).await), "scope_missing");
    assert_eq!(code(m.cancel(&job_a).await), "scope_missing");
    assert_eq!(code(m.set_budget(&alice, 1).await), "scope_missing");
    assert_eq!(code(m.get_budget(&alice).await), "scope_missing");
    // Nor can it act on the default handler: it is not its owner.
    assert_eq!(code(m.enqueue(&other).await), "scope_missing");

    // The named client has only the rights it is named for.
    assert_eq!(code(b.cancel(&job_a).await), "scope_missing");
    assert_eq!(code(b.set_budget(&alice, 1).await), "scope_missing");
    // The operator's enqueue/read/cancel/budget token is left out of
    // Alice's lists, but works on the default handler; admin works on all.
    assert_eq!(code(app.enqueue(&alice).await), "scope_missing");
    assert_eq!(code(app.get(&job_a).await), "scope_missing");
    assert_eq!(code(app.cancel(&job_a).await), "scope_missing");
    assert_eq!(code(app.set_budget(&alice, 1).await), "scope_missing");
    let job_o = app.enqueue(&other).await.unwrap();
    app.get(&job_o).await.unwrap();
    // Nor can it tell that Alice's job exists by naming it as a parent.
    for parent in [job_a.clone(), vec![7u8; 16]] {
        let r = proto::EnqueueRequest {
            handler: other.did.to_string(),
            parent,
            ..Default::default()
        };
        let e = app.jobs.enqueue(authed(r, &app.token)).await.unwrap_err();
        assert_eq!(reason(&e), "parent_not_found");
    }
    assert_eq!(code(a.get(&job_o).await), "scope_missing");
    ops.get(&job_a).await.unwrap();
    assert_eq!(ops.list(None).await.unwrap(), 3);
    // A listing of every handler leaves out the ones whose read list
    // leaves the caller out.
    assert_eq!(app.list(None).await.unwrap(), 1);
    assert_eq!(ops.get_budget(&alice).await.unwrap(), 50);

    // Nothing the refused calls asked for happened.
    assert_eq!(ops.list(Some(&alice)).await.unwrap(), 2);
    assert_eq!(ops.get(&job_a).await.unwrap().state, "held");

    // The owner cancels its own job.
    assert_eq!(a.cancel(&job_a).await.unwrap(), "cancelled");

    // The CLI signs its own DID token with --as-key.
    let alice_file = key_file(&dir, &alice);
    let listed = stdout_of(&run(&[
        "job",
        "list",
        "--server",
        &server.url,
        "--as-key",
        alice_file.to_str().unwrap(),
        "--handler",
        &alice.did.to_string(),
        "--state",
        "cancelled",
    ]));
    assert!(listed.contains(&hex::encode(&job_a)), "{listed}");
    let mallory_file = key_file(&dir, &mallory);
    let out = run(&[
        "job",
        "list",
        "--server",
        &server.url,
        "--as-key",
        mallory_file.to_str().unwrap(),
        "--handler",
        &alice.did.to_string(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("scope_missing"));

    // Ownership follows the key: after a rotation Alice's old key is a
    // stranger and the new key is the owner.
    let rotated: Attestation = next(
        &genesis,
        &alice,
        Action::Rotate {
            new_key: alice2.did.clone(),
        },
        Some(&alice2),
    );
    // Bob loses read: an update by the new key takes effect at once.
    let mut schema = pulse_ledger::HandlerSchema::new("alices", "1.0.1", plugin.did.clone());
    schema.access = Some(access(&[
        (Right::Enqueue, vec![Member::Owner, bob_m.clone()]),
        (Right::Read, vec![Member::Owner]),
        (Right::Cancel, vec![Member::Owner]),
        (Right::Budget, vec![Member::Owner]),
    ]));
    let updated = next(
        &rotated,
        &alice2,
        Action::Update(Schema::Handler(schema)),
        None,
    );
    for att in [&rotated, &updated] {
        reg.submit(proto::SubmitRequest {
            envelope: att.envelope().to_vec(),
        })
        .await
        .unwrap();
    }
    let mut a2 = caller(did_token(&dir, &alice2, &server.url));
    assert_eq!(code(a.cancel(&job_b).await), "scope_missing");
    assert_eq!(code(b.get(&job_b).await), "scope_missing");
    b.enqueue(&alice).await.unwrap();
    assert_eq!(a2.cancel(&job_b).await.unwrap(), "cancelled");

    // An idempotency key names someone else's job: a caller that may
    // enqueue but not read learns its ID, not its state or result.
    let keyed = proto::EnqueueRequest {
        handler: alice.did.to_string(),
        payload: b"{}".to_vec(),
        idempotency_key: "order-42".into(),
        ..Default::default()
    };
    let first = a2
        .jobs
        .enqueue(authed(keyed.clone(), &a2.token))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.existing);
    let again = b
        .jobs
        .enqueue(authed(keyed.clone(), &b.token))
        .await
        .unwrap()
        .into_inner();
    let seen = again.job.unwrap();
    assert!(again.existing);
    assert_eq!(seen.id, first.job.as_ref().unwrap().id);
    assert_eq!((seen.state.as_str(), seen.revealed()), ("", 0));
    let owner_again = a2
        .jobs
        .enqueue(authed(keyed, &a2.token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(owner_again.job.unwrap().state, "held");

    // An owner may set its handler's budget only within the operator's
    // default: a stranger's handler cannot lift its own limit.
    let default = proto::SetBudgetRequest {
        per_hour: 100,
        ..Default::default()
    };
    ops.jobs
        .set_budget(authed(default, &ops.token))
        .await
        .unwrap();
    a2.set_budget(&alice, 50).await.unwrap();
    for too_much in [500, 0] {
        let e = a2.set_budget(&alice, too_much).await.unwrap_err();
        assert_eq!(
            (e.code(), reason(&e).as_str()),
            (Code::PermissionDenied, "budget_above_default"),
            "{too_much}"
        );
    }
    assert_eq!(a2.get_budget(&alice).await.unwrap(), 50);
    ops.set_budget(&alice, 500).await.unwrap();

    // A DID token signed for another server's log is refused here.
    let elsewhere = stdout_of(&run(&[
        "token",
        "did",
        "--key",
        alice_file.to_str().unwrap(),
        "--log-did",
        &other.did.to_string(),
    ]));
    let mut e = caller(elsewhere.trim().to_owned());
    let s = e.get(&job_a).await.unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::Unauthenticated, "token_wrong_server")
    );
    server.stop();
}

/// What DID callers may enqueue is bounded per client address (anyone can
/// sign a DID token): an owner past its allowance is refused
/// `rate_limited`, a batch counts all its jobs and large payloads count
/// more, and operator tokens are not limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn did_callers_enqueue_within_an_allowance() {
    let dir = tempdir("owner-rate");
    std::fs::create_dir_all(&dir).unwrap();
    let (plugin, alice) = (key("own-rate-p"), key("own-rate-alice"));
    let (ops, ops_table) = operator_token("ops", &["admin"]);
    let config = dir.join("pulse.toml");
    std::fs::write(
        &config,
        format!(
            "plugin_wait_secs = 600\nrate_limit_loopback = true\ndid_enqueue_rate = 1\ndid_enqueue_burst = 4\n{ops_table}"
        ),
    )
    .unwrap();
    let server = Serve::start(&["--config", config.to_str().unwrap()], &dir.join("data"));
    let mut reg = RegistryClient::connect(server.url.clone()).await.unwrap();
    submit_all(
        &mut reg,
        &[
            plugin_register(&plugin, "tools"),
            handler_register(&alice, "alices", &plugin.did),
        ],
    )
    .await;
    let channel = JobsClient::connect(server.url.clone()).await.unwrap();
    let mut a = Caller {
        jobs: channel.clone(),
        token: did_token(&dir, &alice, &server.url),
    };
    let mut ops = Caller {
        jobs: channel.clone(),
        token: ops,
    };
    // A 100 KiB payload is two units: with the first job, three of four.
    let big = proto::EnqueueRequest {
        handler: alice.did.to_string(),
        payload: vec![b' '; 100 * 1024],
        ..Default::default()
    };
    a.jobs.enqueue(authed(big.clone(), &a.token)).await.unwrap();
    a.enqueue(&alice).await.unwrap();
    // A batch of two such jobs needs four units; one is left.
    let batch = proto::EnqueueBatchRequest {
        jobs: vec![big.clone(), big],
    };
    let e = a
        .jobs
        .enqueue_batch(authed(batch, &a.token))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::ResourceExhausted, "rate_limited")
    );
    a.enqueue(&alice).await.unwrap();
    assert_eq!(code(a.enqueue(&alice).await), "rate_limited");
    // On a stream each job draws on the allowance as it arrives, and one
    // past it is answered `rate_limited` in its place.
    let one = proto::EnqueueRequest {
        handler: alice.did.to_string(),
        ..Default::default()
    };
    let mut answers = a
        .jobs
        .enqueue_stream(authed(tokio_stream::iter(vec![one]), &a.token))
        .await
        .unwrap()
        .into_inner();
    match answers.message().await.unwrap().unwrap().result.unwrap() {
        proto::enqueue_stream_response::Result::Rejected(e) => assert_eq!(
            (e.status_code, e.code.as_str()),
            (Code::ResourceExhausted as i32, "rate_limited")
        ),
        accepted => panic!("past the allowance: {accepted:?}"),
    }
    // The operator's token is not counted.
    for _ in 0..10 {
        ops.enqueue(&alice).await.unwrap();
    }
    server.stop();
}

/// A DID caller's `EnqueueStream` holds only the message being received
/// against the allowance of request bytes for strangers (16 MiB a client),
/// so a stream may carry more than that in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_did_callers_stream_may_carry_more_than_its_share_of_body_bytes() {
    let dir = tempdir("owner-stream");
    std::fs::create_dir_all(&dir).unwrap();
    let (plugin, alice) = (key("own-stream-p"), key("own-stream-alice"));
    let (_ops, ops_table) = operator_token("ops", &["admin"]);
    let config = dir.join("pulse.toml");
    std::fs::write(&config, format!("plugin_wait_secs = 600\n{ops_table}")).unwrap();
    let server = Serve::start(&["--config", config.to_str().unwrap()], &dir.join("data"));
    let mut reg = RegistryClient::connect(server.url.clone()).await.unwrap();
    submit_all(
        &mut reg,
        &[
            plugin_register(&plugin, "tools"),
            handler_register(&alice, "alices", &plugin.did),
        ],
    )
    .await;
    let mut jobs = JobsClient::connect(server.url.clone()).await.unwrap();
    let token = did_token(&dir, &alice, &server.url);
    // 24 jobs of 1,000,000 bytes: 24 MB on one call.
    let big = proto::EnqueueRequest {
        handler: alice.did.to_string(),
        payload: vec![b' '; 1_000_000],
        run_at_ms: 4_000_000_000_000,
        ..Default::default()
    };
    let mut answers = jobs
        .enqueue_stream(authed(tokio_stream::iter(vec![big; 24]), &token))
        .await
        .unwrap()
        .into_inner();
    let mut accepted = 0;
    while let Some(a) = answers.message().await.unwrap() {
        match a.result.unwrap() {
            proto::enqueue_stream_response::Result::Accepted(_) => accepted += 1,
            proto::enqueue_stream_response::Result::Rejected(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(accepted, 24);
    server.stop();
}

/// Hostile DID tokens on a real server: every `did-token-*` vector that is
/// not valid for this server, garbage after the prefix, an oversized one
/// and one for another server are each refused with a token rule's code
/// (UNAUTHENTICATED), and nothing is enqueued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_did_tokens_are_refused_by_a_rule_and_change_nothing() {
    let dir = tempdir("owner-hostile");
    std::fs::create_dir_all(&dir).unwrap();
    let (plugin, alice) = (key("own-hostile-p"), key("own-hostile-alice"));
    let (ops, ops_table) = operator_token("ops", &["admin"]);
    let config = dir.join("pulse.toml");
    std::fs::write(&config, format!("plugin_wait_secs = 600\n{ops_table}")).unwrap();
    let server = Serve::start(&["--config", config.to_str().unwrap()], &dir.join("data"));
    let mut reg = RegistryClient::connect(server.url.clone()).await.unwrap();
    submit_all(
        &mut reg,
        &[
            plugin_register(&plugin, "tools"),
            handler_register(&alice, "alices", &plugin.did),
        ],
    )
    .await;
    let mut tokens: Vec<String> = Vec::new();
    for entry in std::fs::read_dir("spec/vectors").unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("did-token-")
        {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            tokens.push(v["input"].as_str().unwrap().to_owned());
        }
    }
    assert!(tokens.len() >= 10);
    tokens.extend([
        "pld_".to_owned(),
        "pld_!!!!".to_owned(),
        format!("pld_{}", "A".repeat(8000)),
        // Alice's own key, signed for another server.
        {
            let file = key_file(&dir, &alice);
            let t = run(&[
                "token",
                "did",
                "--key",
                file.to_str().unwrap(),
                "--log-did",
                &plugin.did.to_string(),
            ]);
            stdout_of(&t).trim().to_owned()
        },
    ]);
    let mut jobs = JobsClient::connect(server.url.clone()).await.unwrap();
    for t in &tokens {
        let r = proto::EnqueueRequest {
            handler: alice.did.to_string(),
            payload: b"{}".to_vec(),
            ..Default::default()
        };
        let e = jobs.enqueue(authed(r, t)).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{t}: {e:?}");
        assert!(reason(&e).starts_with("token_"), "{t}: {e:?}");
    }
    // Not even a header that is not text reaches further.
    let mut r = Request::new(proto::ListJobsRequest::default());
    r.metadata_mut().insert(
        "authorization",
        tonic::metadata::MetadataValue::try_from("Bearer pld_\u{7f}x".as_bytes())
            .unwrap_or_else(|_| tonic::metadata::MetadataValue::from_static("Bearer pld_%%")),
    );
    assert_eq!(
        jobs.list_jobs(r).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    // Nothing was enqueued, and the server still serves.
    let listed = jobs
        .list_jobs(authed(
            proto::ListJobsRequest {
                state: "held".into(),
                ..Default::default()
            },
            &ops,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.jobs.is_empty());
    server.stop();
}
