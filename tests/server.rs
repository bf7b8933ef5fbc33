//! The real `pulse-ledger serve` binary on an ephemeral port, driven with
//! the generated client: every RPC, every error class, pagination,
//! WatchEntries under concurrent appends, restart and graceful shutdown.

#![allow(clippy::unwrap_used)] // test code: a panic is a failure report

#[macro_use]
mod common;

use common::{Backend, reason, submit_all};

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{handler_register, key, next, plugin_register, tempdir, update_handler};
use pulse_ledger::api::proto::{self, registry_client::RegistryClient};
use pulse_ledger::ledger::{leaf_hash, verify_checkpoint, verify_consistency, verify_inclusion};
use pulse_ledger::{Action, Did};
use tonic::Code;
use tonic::transport::Channel;

struct Server {
    child: Child,
    addr: String,
    metrics: String,
}

/// Unix ms an hour from now.
fn in_an_hour() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    now + 3_600_000
}

/// A job of `handler` that stays queued: no plugin serves the handlers
/// these tests make, and a start an hour away keeps it queued (not held
/// for its plugin) while the API is checked.
fn queued_req(handler: &Did, priority: u32, key: &str) -> proto::EnqueueRequest {
    proto::EnqueueRequest {
        handler: handler.to_string(),
        payload: b"{}".to_vec(),
        priority,
        idempotency_key: key.into(),
        run_at_ms: in_an_hour(),
        ..Default::default()
    }
}

impl Server {
    fn start(dir: &Path, backend: &Backend) -> Server {
        Server::start_with(dir, backend, &[])
    }

    fn start_with(dir: &Path, backend: &Backend, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--log-name",
                "test.example/log",
            ])
            .args(extra)
            .args(backend.args())
            .arg("--data-dir")
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let addr = first.split_whitespace().nth(3).unwrap().to_owned();
        let second = lines.next().unwrap().unwrap();
        let metrics = second.split_whitespace().nth(2).unwrap().to_owned();
        Server {
            child,
            addr,
            metrics,
        }
    }

    async fn client(&self) -> RegistryClient<Channel> {
        RegistryClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> i32 {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap().code().unwrap_or(-1)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn h32(b: &[u8]) -> [u8; 32] {
    b.try_into().unwrap()
}

fn hashes(v: &[Vec<u8>]) -> Vec<[u8; 32]> {
    v.iter().map(|h| h32(h)).collect()
}

async fn every_rpc_works_and_proofs_verify(backend: Backend) {
    let dir = tempdir(&backend.dir_name("server-rpcs"));
    let server = Server::start(&dir, &backend);
    let mut c = server.client().await;
    let info = c
        .get_log_info(proto::GetLogInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let log_did = Did::parse(&info.log_did).unwrap();
    assert_eq!(info.origin, "test.example/log");

    let (p, h) = (key("srv-p"), key("srv-h"));
    let a0 = plugin_register(&p, "runner");
    let a1 = handler_register(&h, "python.script", &p.did);
    let a2 = update_handler(&a1, &h, "python.script", &p.did, "1.1.0");
    for (i, a) in [&a0, &a1, &a2].into_iter().enumerate() {
        let r = c
            .submit(proto::SubmitRequest {
                envelope: a.envelope().to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.index, i as u64);
        assert_eq!(r.attestation_id, a.id().as_bytes());
        let cp = r.checkpoint.unwrap();
        let parsed = verify_checkpoint(&cp.note, &log_did).unwrap();
        assert_eq!(parsed.size, cp.size);
        verify_inclusion(
            &leaf_hash(a.envelope()),
            r.index,
            cp.size,
            &hashes(&r.inclusion_proof),
            &h32(&cp.root_hash),
        )
        .unwrap();
    }
    let again = c
        .submit(proto::SubmitRequest {
            envelope: a1.envelope().to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.duplicate);
    assert_eq!(again.index, 1);

    let s = c
        .get_subject(proto::GetSubjectRequest {
            did: h.did.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .subject
        .unwrap();
    assert_eq!(
        (s.seq, s.name.as_str(), s.plugin.as_str()),
        (1, "python.script", p.did.to_string().as_str())
    );
    assert_eq!(s.statement_indexes, vec![1, 2]);
    assert!(s.schema_json.contains("1.1.0"));

    let chain = c
        .get_chain(proto::GetChainRequest {
            did: h.did.to_string(),
            from_seq: 0,
            page_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let cp = chain.checkpoint.unwrap();
    assert_eq!(chain.entries.len(), 2);
    assert!(!chain.more);
    assert_eq!(chain.next_seq, 2);
    let page = c
        .get_chain(proto::GetChainRequest {
            did: h.did.to_string(),
            from_seq: 0,
            page_size: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((page.entries.len(), page.more, page.next_seq), (1, true, 1));
    for e in &chain.entries {
        verify_inclusion(
            &leaf_hash(&e.envelope),
            e.index,
            cp.size,
            &hashes(&e.inclusion_proof),
            &h32(&cp.root_hash),
        )
        .unwrap();
    }

    let list = c
        .list_handlers(proto::ListHandlersRequest {
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.handlers.len(), 1);
    let plugins = c
        .list_handlers(proto::ListHandlersRequest {
            family: proto::Family::Plugin as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plugins.handlers[0].did, p.did.to_string());

    let entries = c
        .get_entries(proto::GetEntriesRequest { start: 1, end: 10 })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(
        entries.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(entries[1].envelope, a2.envelope());

    let head = c
        .get_checkpoint(proto::GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner()
        .checkpoint
        .unwrap();
    assert_eq!(verify_checkpoint(&head.note, &log_did).unwrap().size, 3);

    use proto::get_inclusion_proof_request::Leaf;
    let by_id = c
        .get_inclusion_proof(proto::GetInclusionProofRequest {
            leaf: Some(Leaf::AttestationId(a2.id().as_bytes().to_vec())),
            tree_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((by_id.index, by_id.tree_size), (2, 3));
    verify_inclusion(
        &h32(&by_id.leaf_hash),
        2,
        3,
        &hashes(&by_id.path),
        &h32(&head.root_hash),
    )
    .unwrap();
    let old = c
        .get_inclusion_proof(proto::GetInclusionProofRequest {
            leaf: Some(Leaf::Index(0)),
            tree_size: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(old.path.is_empty());

    let cons = c
        .get_consistency_proof(proto::GetConsistencyProofRequest {
            old_size: 1,
            new_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cons.new_size, 3);
    assert_eq!(cons.old_root, old.leaf_hash);
    assert_eq!(cons.new_root, head.root_hash);
    assert_eq!(by_id.tree_root, head.root_hash);
    verify_consistency(
        1,
        3,
        &h32(&old.leaf_hash),
        &h32(&head.root_hash),
        &hashes(&cons.proof),
    )
    .unwrap();

    // An equivocation: ALREADY_EXISTS, listed as evidence.
    let fork = next(&a1, &h, Action::Revoke { reason: None }, None);
    let err = c
        .submit(proto::SubmitRequest {
            envelope: fork.envelope().to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(reason(&err), "equivocation");
    let ev = c
        .list_equivocations(proto::ListEquivocationsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .evidence;
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (
            ev[0].logged_envelope.as_slice(),
            ev[0].rejected_envelope.as_slice()
        ),
        (a2.envelope(), fork.envelope())
    );

    // Standard health and reflection.
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "pulse_ledger.v1.Registry".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("no service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"pulse_ledger.v1.Registry".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );

    // Metrics count what happened.
    let body = http_get(&server.metrics).await;
    assert!(
        body.contains("pulse_ledger_appends_total{result=\"appended\"} 3"),
        "{body}"
    );
    assert!(
        body.contains("pulse_ledger_rejects_total{code=\"equivocation\"} 1"),
        "{body}"
    );
    assert!(body.contains("pulse_ledger_log_size 3"), "{body}");
    assert_eq!(server.stop(), 0);
}
serve_on_every_backend!(every_rpc_works_and_proofs_verify);

async fn http_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hostport = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let mut s = tokio::net::TcpStream::connect(hostport).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// A message whose field 1 has the wrong wire type for SubmitRequest.
#[derive(Clone, PartialEq, prost::Message)]
struct NotASubmitRequest {
    #[prost(fixed64, tag = "1")]
    envelope: u64,
}

async fn every_error_class_is_precise_and_changes_nothing(backend: Backend) {
    let dir = tempdir(&backend.dir_name("server-errors"));
    let server = Server::start(&dir, &backend);
    let mut c = server.client().await;
    let (p, h, other) = (key("err-p"), key("err-h"), key("err-other"));
    c.submit(proto::SubmitRequest {
        envelope: plugin_register(&p, "p").envelope().to_vec(),
    })
    .await
    .unwrap();
    let g = handler_register(&h, "h", &p.did);
    c.submit(proto::SubmitRequest {
        envelope: g.envelope().to_vec(),
    })
    .await
    .unwrap();
    let size = || async {
        server
            .client()
            .await
            .get_log_info(proto::GetLogInfoRequest {})
            .await
            .unwrap()
            .into_inner()
            .size
    };
    assert_eq!(size().await, 2);

    let mut bad = g.envelope().to_vec();
    let n = bad.len();
    bad[n - 1] ^= 1;
    let e = c
        .submit(proto::SubmitRequest { envelope: bad })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::InvalidArgument, "bad_signature")
    );
    assert!(
        e.message().starts_with("bad_signature: "),
        "{}",
        e.message()
    );

    let by_other = update_handler(&g, &other, "h", &p.did, "2.0.0");
    let e = c
        .submit(proto::SubmitRequest {
            envelope: by_other.envelope().to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "wrong_signer")
    );

    let e = c
        .submit(proto::SubmitRequest {
            envelope: vec![0u8; 70 * 1024],
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::ResourceExhausted, "too_large")
    );
    assert!(e.message().contains("65536"), "{}", e.message());

    let e = c
        .submit(proto::SubmitRequest {
            envelope: vec![0u8; 2 * 1024 * 1024],
        })
        .await
        .unwrap_err();
    // The request cap, before the service sees the message: the same
    // code, with an ErrorInfo like every refusal.
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::ResourceExhausted, "too_large"),
        "{}",
        e.message()
    );
    assert!(
        e.message().starts_with("too_large: ") && e.message().contains("1048576"),
        "{}",
        e.message()
    );

    // On a stream, a message over the cap cannot be read, so it has no item
    // to answer: the items before it are answered, then the stream ends
    // with the same status (registry.proto, SubmitStream).
    let fine = vec![0xa0u8; 10]; // a CBOR empty map: a rejected item
    let requests = tokio_stream::iter(vec![
        proto::SubmitRequest { envelope: fine },
        proto::SubmitRequest {
            envelope: vec![0u8; 2 * 1024 * 1024],
        },
    ]);
    let mut responses = c.submit_stream(requests).await.unwrap().into_inner();
    let first = responses.message().await.unwrap().unwrap();
    assert_eq!(first.position, 0);
    assert!(matches!(
        first.result,
        Some(proto::submit_stream_response::Result::Rejected(_))
    ));
    let e = responses.message().await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::ResourceExhausted, "too_large"),
        "{}",
        e.message()
    );

    // A protobuf frame that does not decode as a SubmitRequest.
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/pulse_ledger.v1.Registry/Submit");
    let codec = tonic_prost::ProstCodec::<NotASubmitRequest, proto::SubmitResponse>::default();
    let e = grpc
        .unary(
            tonic::Request::new(NotASubmitRequest { envelope: 7 }),
            path,
            codec,
        )
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::InvalidArgument, "malformed_request"),
        "{}",
        e.message()
    );
    assert!(
        e.message().starts_with("malformed_request: "),
        "{}",
        e.message()
    );

    let e = c
        .get_subject(proto::GetSubjectRequest {
            did: "did:key:nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::InvalidArgument, "did_syntax")
    );
    let e = c
        .get_subject(proto::GetSubjectRequest {
            did: other.did.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::NotFound, "not_found")
    );
    let e = c
        .get_consistency_proof(proto::GetConsistencyProofRequest {
            old_size: 1,
            new_size: 99,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::OutOfRange, "size_out_of_range")
    );
    let e = c
        .get_inclusion_proof(proto::GetInclusionProofRequest {
            leaf: None,
            tree_size: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    assert_eq!(size().await, 2, "no rejection changed the log");
    assert_eq!(server.stop(), 0);
}
serve_on_every_backend!(every_error_class_is_precise_and_changes_nothing);

async fn streams_pagination_watch_restart_and_graceful_shutdown(backend: Backend) {
    let dir = tempdir(&backend.dir_name("server-streams"));
    let server = Server::start(&dir, &backend);
    let mut c = server.client().await;
    let p = key("stream-p");
    let mut envelopes = vec![plugin_register(&p, "p").envelope().to_vec()];
    for i in 0..2000 {
        envelopes.push(
            handler_register(&key(&format!("stream-{i}")), &format!("h.{i:05}"), &p.did)
                .envelope()
                .to_vec(),
        );
    }
    envelopes.push(b"garbage".to_vec());
    envelopes.push(envelopes[5].clone());

    // A watcher from index 0 runs while the stream appends.
    let mut watcher = server.client().await;
    let watch = tokio::spawn(async move {
        let mut stream = watcher
            .watch_entries(proto::WatchEntriesRequest { start: 0 })
            .await
            .unwrap()
            .into_inner();
        let mut seen = Vec::new();
        while seen.len() < 2001 {
            seen.push(stream.message().await.unwrap().unwrap().index);
        }
        seen
    });

    let requests = tokio_stream::iter(
        envelopes
            .clone()
            .into_iter()
            .map(|envelope| proto::SubmitRequest { envelope }),
    );
    let mut responses = c.submit_stream(requests).await.unwrap().into_inner();
    let mut acked = Vec::new();
    while let Some(r) = responses.message().await.unwrap() {
        assert_eq!(
            r.position as usize,
            acked.len(),
            "answers come in request order"
        );
        match r.result.unwrap() {
            proto::submit_stream_response::Result::Accepted(a) => {
                acked.push(Some((a.index, a.attestation_id, a.duplicate)))
            }
            proto::submit_stream_response::Result::Rejected(e) => {
                assert_eq!(
                    (e.status_code, e.code.as_str()),
                    (Code::InvalidArgument as i32, "malformed_cbor")
                );
                acked.push(None);
            }
        }
    }
    assert_eq!(acked.len(), envelopes.len());
    let appended: Vec<u64> = acked
        .iter()
        .flatten()
        .filter(|a| !a.2)
        .map(|a| a.0)
        .collect();
    assert_eq!(
        appended,
        (0..2001).collect::<Vec<u64>>(),
        "a stream is appended in request order"
    );
    assert!(
        acked.last().unwrap().as_ref().unwrap().2,
        "the resubmission is a duplicate"
    );

    let seen = tokio::time::timeout(std::time::Duration::from_secs(60), watch)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seen,
        (0..2001).collect::<Vec<u64>>(),
        "every index exactly once, in order"
    );

    // A whole chain in one stream is appended in order.
    let ch = key("stream-chain");
    let mut chain = vec![handler_register(&ch, "chain", &p.did)];
    for v in 1..6 {
        let next_one = update_handler(
            chain.last().unwrap(),
            &ch,
            "chain",
            &p.did,
            &format!("1.{v}.0"),
        );
        chain.push(next_one);
    }
    let requests = tokio_stream::iter(
        chain
            .iter()
            .map(|a| proto::SubmitRequest {
                envelope: a.envelope().to_vec(),
            })
            .collect::<Vec<_>>(),
    );
    let mut responses = c.submit_stream(requests).await.unwrap().into_inner();
    let mut indexes = Vec::new();
    while let Some(r) = responses.message().await.unwrap() {
        match r.result.unwrap() {
            proto::submit_stream_response::Result::Accepted(a) => indexes.push(a.index),
            proto::submit_stream_response::Result::Rejected(e) => {
                panic!("chain statement rejected: {}", e.message)
            }
        }
    }
    assert_eq!(indexes, (2001..2007).collect::<Vec<u64>>());

    // Pagination over 2000 handlers.
    let mut names = Vec::new();
    let mut token = Vec::new();
    loop {
        let page = c
            .list_handlers(proto::ListHandlersRequest {
                page_size: 300,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        names.extend(page.handlers.into_iter().map(|h| h.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(names.len(), 2001, "2000 handlers and the chain's");
    assert!(names.windows(2).all(|w| w[0] < w[1]));

    // Graceful shutdown, then a restart on the same data dir keeps everything.
    assert_eq!(server.stop(), 0);
    let server = Server::start(&dir, &backend);
    let mut c = server.client().await;
    assert_eq!(
        c.get_log_info(proto::GetLogInfoRequest {})
            .await
            .unwrap()
            .into_inner()
            .size,
        2007
    );
    for a in acked.iter().flatten().take(50) {
        let e = c
            .get_entries(proto::GetEntriesRequest {
                start: a.0,
                end: a.0 + 1,
            })
            .await
            .unwrap()
            .into_inner()
            .entries;
        assert_eq!(
            pulse_ledger::AttestationId::of(&e[0].envelope)
                .as_bytes()
                .as_slice(),
            a.1.as_slice()
        );
    }
    assert_eq!(server.stop(), 0);
}
serve_on_every_backend!(streams_pagination_watch_restart_and_graceful_shutdown);

async fn jobs_api_enqueues_reads_cancels_and_budgets(backend: Backend) {
    use pulse_ledger::api::proto::jobs_client::JobsClient;
    let dir = tempdir(&backend.dir_name("server-jobs"));
    let server = Server::start(&dir, &backend);
    let mut reg = server.client().await;
    let (p, h, gone) = (key("jobs-api-p"), key("jobs-api-h"), key("jobs-api-gone"));
    submit_all(
        &mut reg,
        &[
            plugin_register(&p, "runner"),
            handler_register(&h, "python.script", &p.did),
        ],
    )
    .await;
    let g = handler_register(&gone, "old", &p.did);
    reg.submit(proto::SubmitRequest {
        envelope: g.envelope().to_vec(),
    })
    .await
    .unwrap();
    let revoke = next(&g, &gone, Action::Revoke { reason: None }, None);
    reg.submit(proto::SubmitRequest {
        envelope: revoke.envelope().to_vec(),
    })
    .await
    .unwrap();

    let mut jobs = JobsClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let req = queued_req;
    let first = jobs
        .enqueue(req(&h.did, 5, "order-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.existing);
    let job = first.job.unwrap();
    assert_eq!(
        (job.state.as_str(), job.max_attempts, job.timeout_ms),
        ("queued", 3, 300_000)
    );
    let child = jobs
        .enqueue(proto::EnqueueRequest {
            parent: job.id.clone(),
            ..req(&h.did, 1, "")
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(child.parent, job.id);
    let e = jobs
        .enqueue(proto::EnqueueRequest {
            parent: vec![7; 16],
            ..req(&h.did, 1, "")
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::NotFound, "parent_not_found")
    );
    let again = jobs
        .enqueue(req(&h.did, 9, "order-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(again.existing);
    assert_eq!(again.job.unwrap().id, job.id);

    let e = jobs.enqueue(req(&gone.did, 1, "")).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "handler_revoked")
    );
    let e = jobs.enqueue(req(&p.did, 1, "")).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::InvalidArgument, "not_a_handler")
    );
    let e = jobs
        .enqueue(proto::EnqueueRequest {
            max_attempts: 9,
            ..req(&h.did, 1, "")
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::InvalidArgument, "limit_above_handler")
    );

    let batch = jobs
        .enqueue_batch(proto::EnqueueBatchRequest {
            jobs: vec![
                req(&h.did, 1, ""),
                req(&h.did, 12, ""),
                req(&key("nobody").did, 1, ""),
                req(&h.did, 2, ""),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let outcome: Vec<String> = batch
        .iter()
        .map(|r| match r.result.as_ref().unwrap() {
            proto::enqueue_result::Result::Accepted(a) => a.job.as_ref().unwrap().state.clone(),
            proto::enqueue_result::Result::Rejected(e) => e.code.clone(),
        })
        .collect();
    assert_eq!(
        outcome,
        ["queued", "invalid_priority", "not_found", "queued"]
    );

    let e = jobs
        .enqueue_batch(proto::EnqueueBatchRequest { jobs: vec![] })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::InvalidArgument, "invalid_batch")
    );
    let listed = jobs
        .list_jobs(proto::ListJobsRequest {
            state: "queued".into(),
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.jobs.len(), 2);
    let rest = jobs
        .list_jobs(proto::ListJobsRequest {
            state: "queued".into(),
            page_size: 2,
            page_token: listed.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rest.jobs.len(),
        2,
        "4 queued jobs (one a child) in pages of 2"
    );
    let e = jobs
        .list_jobs(proto::ListJobsRequest {
            state: "sleeping".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "invalid_state");

    let cancelled = jobs
        .cancel_job(proto::CancelJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(
        (cancelled.state.as_str(), cancelled.reason.as_str()),
        ("cancelled", "requested")
    );
    let e = jobs
        .cancel_job(proto::CancelJobRequest { id: job.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "wrong_state")
    );
    let mut watch = jobs
        .watch_job(proto::WatchJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().state, "cancelled");
    assert!(
        watch.message().await.unwrap().is_none(),
        "a finished job's watch ends"
    );
    let e = jobs
        .get_job(proto::GetJobRequest { id: vec![1; 3] })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "invalid_job_id");
    let e = jobs
        .get_job(proto::GetJobRequest { id: vec![0; 16] })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    jobs.set_budget(proto::SetBudgetRequest {
        handler: String::new(),
        per_hour: 0,
        per_day: 900,
    })
    .await
    .unwrap();
    jobs.set_budget(proto::SetBudgetRequest {
        handler: h.did.to_string(),
        per_hour: 100,
        per_day: 0,
    })
    .await
    .unwrap();
    let b = jobs
        .get_budget(proto::GetBudgetRequest {
            handler: h.did.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((b.per_hour, b.per_day, b.spent_hour), (100, 0, 0));
    let d = jobs
        .get_budget(proto::GetBudgetRequest {
            handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((d.per_hour, d.per_day), (0, 900));

    // Concurrent Enqueue calls share group commits; repeated keys still
    // make one job each.
    let handles: Vec<_> = (0..100)
        .map(|i| {
            let mut c = jobs.clone();
            let r = req(&h.did, 1, &format!("burst-{}", i % 50));
            tokio::spawn(async move { c.enqueue(r).await.unwrap().into_inner() })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    let mut existing = 0;
    for h in handles {
        let r = h.await.unwrap();
        ids.insert(r.job.unwrap().id);
        existing += usize::from(r.existing);
    }
    assert_eq!((ids.len(), existing), (50, 50));

    // The CLI against the same server.
    let url = format!("http://{}", server.addr);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
        .args([
            "job",
            "submit",
            "--server",
            &url,
            "--priority",
            "3",
            "--json",
            &h.did.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["state"].as_str(), v["priority"].as_u64()),
        (Some("queued"), Some(3))
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
        .args(["budget", "show", "--server", &url, &h.did.to_string()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("per hour  100"));
    assert_eq!(server.stop(), 0);
}
serve_on_every_backend!(jobs_api_enqueues_reads_cancels_and_budgets);

async fn an_enqueue_stream_answers_each_job_in_order_and_keeps_what_it_acknowledged(
    backend: Backend,
) {
    use proto::enqueue_stream_response::Result as Answer;
    use pulse_ledger::api::proto::jobs_client::JobsClient;
    let dir = tempdir(&backend.dir_name("server-enqueue-stream"));
    let server = Server::start(&dir, &backend);
    let mut reg = server.client().await;
    let (p, h) = (key("stream-p"), key("stream-h"));
    submit_all(
        &mut reg,
        &[
            plugin_register(&p, "runner"),
            handler_register(&h, "h", &p.did),
        ],
    )
    .await;
    let mut jobs = JobsClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let req = queued_req;
    // Rejections are answered in their place and the stream goes on; a
    // key used earlier in the same stream finds that job.
    let mut sent = vec![
        req(&h.did, 1, "order-1"),
        req(&h.did, 12, ""),
        req(&key("nobody").did, 1, ""),
        req(&h.did, 1, "order-1"),
    ];
    sent.extend((0..200).map(|_| req(&h.did, 3, "")));
    let mut answers = jobs
        .enqueue_stream(tokio_stream::iter(sent))
        .await
        .unwrap()
        .into_inner();
    let mut outcome = Vec::new();
    while let Some(a) = answers.message().await.unwrap() {
        assert_eq!(a.position, outcome.len() as u64, "answers come in order");
        outcome.push(a.result.unwrap());
    }
    assert_eq!(outcome.len(), 204);
    let accepted = |a: &Answer| match a {
        Answer::Accepted(r) => (r.job.clone().unwrap(), r.existing),
        Answer::Rejected(e) => panic!("rejected: {e:?}"),
    };
    let rejected = |a: &Answer| match a {
        Answer::Rejected(e) => (e.status_code, e.code.clone()),
        Answer::Accepted(r) => panic!("accepted: {r:?}"),
    };
    let (first, existing) = accepted(&outcome[0]);
    assert_eq!((first.state.as_str(), existing), ("queued", false));
    assert_eq!(
        rejected(&outcome[1]),
        (Code::InvalidArgument as i32, "invalid_priority".into())
    );
    assert_eq!(
        rejected(&outcome[2]),
        (Code::NotFound as i32, "not_found".into())
    );
    let (again, existing) = accepted(&outcome[3]);
    assert!(existing);
    assert_eq!(again.id, first.id);
    let mut ids: Vec<Vec<u8>> = outcome[4..].iter().map(|a| accepted(a).0.id).collect();
    ids.push(first.id);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 201, "each new job has an ID of its own");

    // A message the server cannot read ends the stream after the answers
    // to the jobs before it, with the rule it broke.
    let oversized = proto::EnqueueRequest {
        payload: vec![0; 17 << 20],
        ..req(&h.did, 1, "")
    };
    let mut answers = jobs
        .enqueue_stream(tokio_stream::iter(vec![
            req(&h.did, 1, "before-the-bad-one"),
            oversized,
            req(&h.did, 1, "never-read"),
        ]))
        .await
        .unwrap()
        .into_inner();
    let before = answers.message().await.unwrap().unwrap();
    ids.push(accepted(before.result.as_ref().unwrap()).0.id);
    let e = answers.message().await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::ResourceExhausted, "too_large"),
        "{}",
        e.message()
    );

    // Everything acknowledged survives a SIGKILL of the server; the job
    // after the unreadable message was never enqueued.
    drop(jobs);
    drop(server);
    let server = Server::start(&dir, &backend);
    let mut jobs = JobsClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    for id in &ids {
        let job = jobs
            .get_job(proto::GetJobRequest { id: id.clone() })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        assert_eq!(job.state, "queued");
    }
    let listed = jobs
        .list_jobs(proto::ListJobsRequest {
            state: "queued".into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.jobs.len(), ids.len());
    assert_eq!(server.stop(), 0);
}
serve_on_every_backend!(an_enqueue_stream_answers_each_job_in_order_and_keeps_what_it_acknowledged);

async fn finished_jobs_are_pruned_after_the_retention(backend: Backend) {
    use pulse_ledger::api::proto::jobs_client::JobsClient;
    let dir = tempdir(&backend.dir_name("server-retention"));
    // Retention 0 hours: finished jobs go at the next prune (every second).
    let server = Server::start_with(&dir, &backend, &["--job-retention-hours", "0"]);
    let mut reg = server.client().await;
    let (p, h) = (key("ret-p"), key("ret-h"));
    submit_all(
        &mut reg,
        &[
            plugin_register(&p, "runner"),
            handler_register(&h, "h", &p.did),
        ],
    )
    .await;
    let mut jobs = JobsClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let enqueue = |k: &str| proto::EnqueueRequest {
        handler: h.did.to_string(),
        idempotency_key: k.into(),
        run_at_ms: in_an_hour(),
        ..Default::default()
    };
    let done = jobs
        .enqueue(enqueue("done"))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let waiting = jobs
        .enqueue(enqueue("waiting"))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    jobs.cancel_job(proto::CancelJobRequest {
        id: done.id.clone(),
    })
    .await
    .unwrap();
    let mut gone = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if let Err(e) = jobs
            .get_job(proto::GetJobRequest {
                id: done.id.clone(),
            })
            .await
        {
            assert_eq!(e.code(), Code::NotFound);
            gone = true;
            break;
        }
    }
    assert!(gone, "the cancelled job was pruned");
    let still = jobs
        .get_job(proto::GetJobRequest {
            id: waiting.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(still.state, "queued", "unfinished jobs are kept");
    assert_eq!(
        reg.get_log_info(proto::GetLogInfoRequest {})
            .await
            .unwrap()
            .into_inner()
            .size,
        2,
        "the ledger is never pruned"
    );
    assert_eq!(server.stop(), 0);
}
serve_on_every_backend!(finished_jobs_are_pruned_after_the_retention);

/// A stream that never ends by itself (a log watcher) does not keep a
/// stopping server alive: after `drain_grace_ms` its connection is
/// closed, the watcher sees the stream fail, and the server exits 0 with
/// every acknowledged entry kept.
async fn stopping_closes_streams_after_the_drain_grace(backend: Backend) {
    let dir = tempdir(&backend.dir_name("server-drain"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("pulse.toml");
    std::fs::write(&config, "drain_grace_ms = 300\n").unwrap();
    let data = dir.join("data");
    let server = Server::start_with(&data, &backend, &["--config", config.to_str().unwrap()]);
    let mut c = server.client().await;
    c.submit(proto::SubmitRequest {
        envelope: plugin_register(&key("drain-p"), "p").envelope().to_vec(),
    })
    .await
    .unwrap();
    let mut watcher = server.client().await;
    let mut stream = watcher
        .watch_entries(proto::WatchEntriesRequest { start: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().index, 0);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(server.stop()).unwrap());
    // A bound against hanging, not a timing the test relies on.
    let status = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the server never stopped with a watcher connected");
    assert_eq!(status, 0);
    assert!(stream.message().await.is_err(), "the stream ended cleanly");
    let server = Server::start(&data, &backend);
    let info = server
        .client()
        .await
        .get_log_info(proto::GetLogInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.size, 1);
    assert_eq!(server.stop(), 0);
}
serve_on_every_backend!(stopping_closes_streams_after_the_drain_grace);
