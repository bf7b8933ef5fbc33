//! The bad-input corpus over a real server: raw gRPC message bodies
//! (tests/bad_input/, written by its gen.py), every invalid attestation
//! vector of spec/vectors, oversized messages, forged, replayed and
//! misdirected statements, and a stream flood. Each gets a clear error
//! that names its rule, the server stays up, and neither the log nor the
//! job store changes.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::path::Path;

use common::{Serve, handler_register, key, log_info, next, plugin_register, tempdir};
use prost::bytes::{Buf, BufMut};
use pulse_ledger::Action;
use pulse_ledger::api::proto::{self, jobs_client::JobsClient, registry_client::RegistryClient};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// Sends and receives message bodies as raw bytes, so a test can send
/// what no generated client would.
#[derive(Default, Clone)]
struct Raw;

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

async fn raw_call(
    channel: &Channel,
    method: &str,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone()).max_decoding_message_size(64 << 20);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(method).unwrap();
    grpc.unary(tonic::Request::new(body), path, Raw)
        .await
        .map(tonic::Response::into_inner)
}

/// The rule a refusal names: its ErrorInfo reason, or the message's
/// `code:` prefix.
fn rule(s: &tonic::Status) -> String {
    match s.get_details_error_info() {
        Some(i) => i.reason,
        None => s.message().split(':').next().unwrap_or_default().to_owned(),
    }
}

fn is_code(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

struct State {
    size: u64,
    jobs: usize,
}

async fn state(reg: &mut RegistryClient<Channel>, jobs: &mut JobsClient<Channel>) -> State {
    let size = log_info(reg).await.size;
    let mut n = 0;
    for s in [
        "queued",
        "held",
        "running",
        "succeeded",
        "dead",
        "cancelled",
    ] {
        n += jobs
            .list_jobs(proto::ListJobsRequest {
                state: s.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .jobs
            .len();
    }
    State { size, jobs: n }
}

async fn every_bad_input_gets_a_named_rule_and_changes_nothing(backend: common::Backend) {
    let dir = tempdir(&format!(
        "bad-input-{}",
        matches!(backend, common::Backend::Fjall)
    ));
    let args = backend.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Serve::start(&args, &dir.join("data"));
    let channel = Channel::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reg = RegistryClient::new(channel.clone());
    let mut jobs = JobsClient::new(channel.clone());
    let (p, h, stranger) = (key("bad-p"), key("bad-h"), key("bad-stranger"));
    let genesis = handler_register(&h, "echo", &p.did);
    for a in [plugin_register(&p, "p"), genesis.clone()] {
        reg.submit(proto::SubmitRequest {
            envelope: a.envelope().to_vec(),
        })
        .await
        .unwrap();
    }
    let before = state(&mut reg, &mut jobs).await;
    let mut checked = 0;

    // 1. The checked-in corpus of raw message bodies.
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad_input");
    let cases = std::fs::read_to_string(corpus.join("cases.txt")).unwrap();
    for line in cases.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [name, method, code, reason] = f[..] else {
            panic!("bad line {line:?}")
        };
        let body = std::fs::read(corpus.join(format!("{name}.bin"))).unwrap();
        let got = raw_call(&channel, method, body).await;
        match (code, got) {
            ("Ok", Ok(_)) => {}
            ("Ok", Err(s)) => panic!("{name}: expected success, got {s:?}"),
            (_, Ok(_)) => panic!("{name}: expected {code}, got success"),
            (_, Err(s)) => {
                assert_eq!(format!("{:?}", s.code()), code, "{name}: {s:?}");
                let r = rule(&s);
                assert!(is_code(&r), "{name}: no rule named in {s:?}");
                if reason != "*" {
                    assert_eq!(r, reason, "{name}: {s:?}");
                }
            }
        }
        checked += 1;
    }

    // 2. Every invalid attestation vector, as a submission.
    for entry in std::fs::read_dir("spec/vectors").unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("attestation-") {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        if v["expect"]["ok"] != false {
            continue;
        }
        let envelope = hex::decode(v["input"].as_str().unwrap()).unwrap();
        let s = reg
            .submit(proto::SubmitRequest { envelope })
            .await
            .unwrap_err();
        assert_eq!(
            rule(&s),
            v["expect"]["code"].as_str().unwrap(),
            "{name}: {s:?}"
        );
        checked += 1;
    }

    // 3. Oversized messages, for both services.
    let s = raw_call(
        &channel,
        "/pulse_ledger.v1.Registry/Submit",
        vec![0; 1_100_000],
    )
    .await
    .unwrap_err();
    assert_eq!(
        (s.code(), rule(&s).as_str()),
        (Code::ResourceExhausted, "too_large")
    );
    let s = raw_call(
        &channel,
        "/pulse_ledger.v1.Jobs/EnqueueBatch",
        vec![0; 17 << 20],
    )
    .await
    .unwrap_err();
    assert_eq!(
        (s.code(), rule(&s).as_str()),
        (Code::ResourceExhausted, "too_large")
    );
    let s = reg
        .submit(proto::SubmitRequest {
            envelope: vec![0xa0; 70_000],
        })
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), rule(&s).as_str()),
        (Code::ResourceExhausted, "too_large")
    );

    // 4. Forged, replayed and misdirected statements.
    let mut forged = genesis.envelope().to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let s = reg
        .submit(proto::SubmitRequest { envelope: forged })
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), rule(&s).as_str()),
        (Code::InvalidArgument, "bad_signature")
    );
    let replay = reg
        .submit(proto::SubmitRequest {
            envelope: genesis.envelope().to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(replay.duplicate, "a replayed statement is stored once");
    let hijack = next(&genesis, &stranger, Action::Revoke { reason: None }, None);
    let s = reg
        .submit(proto::SubmitRequest {
            envelope: hijack.envelope().to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), rule(&s).as_str()),
        (Code::FailedPrecondition, "wrong_signer")
    );
    let s = jobs
        .enqueue(proto::EnqueueRequest {
            handler: h.did.to_string(),
            payload: vec![0; (1 << 20) + 1],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(is_code(&rule(&s)), "{s:?}");

    // 5. A stream flood: every envelope is answered, in order, with its rule.
    const FLOOD: u64 = 3_000;
    let garbage = (0..FLOOD).map(|i| proto::SubmitRequest {
        envelope: i.to_be_bytes().to_vec(),
    });
    let mut answers = reg
        .submit_stream(tokio_stream::iter(garbage))
        .await
        .unwrap()
        .into_inner();
    let mut position = 0;
    while let Some(a) = answers.message().await.unwrap() {
        assert_eq!(a.position, position);
        match a.result.unwrap() {
            proto::submit_stream_response::Result::Rejected(e) => assert!(is_code(&e.code)),
            proto::submit_stream_response::Result::Accepted(_) => panic!("garbage accepted"),
        }
        position += 1;
    }
    assert_eq!(position, FLOOD);

    // The server is up, and nothing changed.
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server exited"
    );
    let after = state(&mut reg, &mut jobs).await;
    assert_eq!((after.size, after.jobs), (before.size, before.jobs));
    assert!(checked >= 90, "only {checked} inputs checked");
    server.stop();
}
serve_on_every_backend!(every_bad_input_gets_a_named_rule_and_changes_nothing);
