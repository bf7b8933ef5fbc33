//! Storage faults under a real `serve`: a full disk, failing fsync and a
//! stalled disk, injected by a small LD_PRELOAD layer
//! (tests/fixtures/faultfs.c, built here with the system C compiler) that
//! fails writes, allocations and fsyncs to the data dir, or holds fsyncs,
//! while a control file exists.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Serve, log_info, reason};

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{key, plugin_register, tempdir};
use pulse_ledger::api::proto::{self, registry_client::RegistryClient};
use tonic::Code;

/// Builds the fault layer into `dir`.
fn faultfs(dir: &Path) -> PathBuf {
    let out = dir.join("faultfs.so");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/faultfs.c");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .arg("-ldl")
        .status()
        .expect("a C compiler (cc) builds the fault layer");
    assert!(status.success());
    out
}

struct Faulty {
    /// Killed when dropped.
    _server: Serve,
    url: String,
    enospc: PathBuf,
    eio: PathBuf,
    stall: PathBuf,
    emfile: PathBuf,
}

impl Faulty {
    /// `serve` on `data` with the fault layer loaded (nothing armed).
    fn start(dir: &Path, data: &Path, extra: &[&str]) -> Faulty {
        let (enospc, eio, stall, emfile) = (
            dir.join("enospc"),
            dir.join("eio"),
            dir.join("stall"),
            dir.join("emfile"),
        );
        let layer = dir.join("faultfs.so");
        let server = Serve::start_with_env(
            extra,
            data,
            &[
                ("LD_PRELOAD", layer.as_os_str()),
                ("FAULTFS_PREFIX", data.as_os_str()),
                ("FAULTFS_ENOSPC", enospc.as_os_str()),
                ("FAULTFS_EIO", eio.as_os_str()),
                ("FAULTFS_STALL", stall.as_os_str()),
                ("FAULTFS_EMFILE", emfile.as_os_str()),
                ("RUST_LOG", std::ffi::OsStr::new("error")),
            ],
        );
        Faulty {
            url: server.url.clone(),
            _server: server,
            enospc,
            eio,
            stall,
            emfile,
        }
    }

    fn arm(path: &Path) {
        std::fs::write(path, b"").unwrap();
    }

    fn disarm(path: &Path) {
        let _ = std::fs::remove_file(path);
    }
}

async fn submit(
    reg: &mut RegistryClient<tonic::transport::Channel>,
    n: &str,
) -> Result<u64, tonic::Status> {
    let att = plugin_register(&key(n), "storage");
    reg.submit(proto::SubmitRequest {
        envelope: att.envelope().to_vec(),
    })
    .await
    .map(|r| r.into_inner().index)
}

async fn size(reg: &mut RegistryClient<tonic::transport::Channel>) -> u64 {
    log_info(reg).await.size
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_cleanly_and_they_resume_when_space_returns() {
    let dir = tempdir("storage-full");
    faultfs(&dir);
    let data = dir.join("data");
    let server = Faulty::start(&dir, &data, &["--min-free-mb", "1"]);
    let mut reg = RegistryClient::connect(server.url.clone()).await.unwrap();
    let mut jobs = pulse_ledger::api::proto::jobs_client::JobsClient::connect(server.url.clone())
        .await
        .unwrap();
    let log_did = log_info(&mut reg).await.log_did;
    for i in 0..3 {
        assert_eq!(submit(&mut reg, &format!("full-{i}")).await.unwrap(), i);
    }
    let handler = key("full-handler");
    let plugin = key("full-0");
    reg.submit(proto::SubmitRequest {
        envelope: common::handler_register(&handler, "echo", &plugin.did)
            .envelope()
            .to_vec(),
    })
    .await
    .unwrap();

    // The disk fills: every write is refused before anything is written.
    Faulty::arm(&server.enospc);
    for i in 0..3 {
        let e = submit(&mut reg, &format!("refused-{i}")).await.unwrap_err();
        assert_eq!(
            (e.code(), reason(&e).as_str()),
            (Code::ResourceExhausted, "disk_full"),
            "{e:?}"
        );
        assert!(e.message().contains("reserve"), "{}", e.message());
    }
    let e = jobs
        .enqueue(proto::EnqueueRequest {
            handler: handler.did.to_string(),
            payload: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::ResourceExhausted, "disk_full")
    );
    // Reads go on, and nothing changed.
    assert_eq!(size(&mut reg).await, 4);
    common::verify_log_passes(&server.url, &log_did);

    // Space returns: writes resume where they stopped.
    Faulty::disarm(&server.enospc);
    assert_eq!(submit(&mut reg, "after").await.unwrap(), 4);
    jobs.enqueue(proto::EnqueueRequest {
        handler: handler.did.to_string(),
        payload: b"x".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    common::verify_log_passes(&server.url, &log_did);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_or_fsync_stops_writes_acknowledges_nothing_and_a_restart_recovers() {
    let dir = tempdir("storage-eio");
    faultfs(&dir);
    let data = dir.join("data");
    for fault in ["eio", "enospc"] {
        // The guard is off, so a full disk reaches the storage engine as a
        // failed write (as when space runs out between check and write).
        let server = Faulty::start(&dir, &data, &["--min-free-mb", "0"]);
        let mut reg = RegistryClient::connect(server.url.clone()).await.unwrap();
        let log_did = log_info(&mut reg).await.log_did;
        let handler = key("eio-handler");
        if fault == "eio" {
            submit(&mut reg, "eio-plugin").await.unwrap();
            let genesis = common::handler_register(&handler, "echo", &key("eio-plugin").did);
            reg.submit(proto::SubmitRequest {
                envelope: genesis.envelope().to_vec(),
            })
            .await
            .unwrap();
        }
        let mut jobs =
            pulse_ledger::api::proto::jobs_client::JobsClient::connect(server.url.clone())
                .await
                .unwrap();
        let before = size(&mut reg).await;
        let acked = submit(&mut reg, &format!("{fault}-ok")).await.unwrap();
        assert_eq!(acked, before);
        let armed = if fault == "eio" {
            &server.eio
        } else {
            &server.enospc
        };
        Faulty::arm(armed);
        let e = submit(&mut reg, &format!("{fault}-lost"))
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), reason(&e).as_str()),
            (Code::Unavailable, "storage"),
            "{e:?}"
        );
        let cause = if fault == "eio" {
            "Input/output error"
        } else {
            "No space left on device"
        };
        assert!(e.message().contains(cause), "{}", e.message());
        // Two requests for one job (same idempotency key) in one failed
        // batch: neither is acknowledged.
        let twice = proto::EnqueueRequest {
            handler: handler.did.to_string(),
            payload: b"x".to_vec(),
            idempotency_key: format!("{fault}-once"),
            ..Default::default()
        };
        let results = jobs
            .enqueue_batch(proto::EnqueueBatchRequest {
                jobs: vec![twice.clone(), twice],
            })
            .await
            .unwrap()
            .into_inner()
            .results;
        assert_eq!(results.len(), 2);
        for r in results {
            assert!(
                matches!(r.result, Some(proto::enqueue_result::Result::Rejected(_))),
                "a job was acknowledged from a failed batch: {r:?}"
            );
        }
        // Fail-stop: writes stay refused, naming the cause, even once the
        // fault is gone; reads go on and show nothing unacknowledged.
        Faulty::disarm(armed);
        let e = submit(&mut reg, &format!("{fault}-after"))
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), reason(&e).as_str()),
            (Code::Unavailable, "unavailable")
        );
        assert!(e.message().contains(cause), "{}", e.message());
        assert_eq!(size(&mut reg).await, before + 1);
        drop(reg);
        drop(server);

        // A restart recovers: every acknowledged entry is there, the audit
        // passes, and writes are accepted again.
        let server = Faulty::start(&dir, &data, &["--min-free-mb", "0"]);
        let mut reg = RegistryClient::connect(server.url.clone()).await.unwrap();
        let after_restart = size(&mut reg).await;
        assert!(after_restart == before + 1 || after_restart == before + 2);
        let entry = reg
            .get_entries(proto::GetEntriesRequest {
                start: acked,
                end: acked + 1,
            })
            .await
            .unwrap()
            .into_inner()
            .entries;
        assert_eq!(
            entry[0].envelope,
            plugin_register(&key(&format!("{fault}-ok")), "storage").envelope()
        );
        common::verify_log_passes(&server.url, &log_did);
        assert_eq!(
            submit(&mut reg, &format!("{fault}-resumed")).await.unwrap(),
            after_restart
        );
    }
}

/// Running out of file descriptors while fjall flushes a memtable in the
/// background is not fatal (issue 17: "a failed open for lack of
/// descriptors is retried, not fatal"). fjall's worker fails, and fjall
/// then refuses every write; the server answers `unavailable`, keeps
/// reading, and closes and reopens the database once a file can be opened
/// again. Every acknowledged entry and job is kept, nothing refused is in
/// the log, and writes go on without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_running_out_in_a_background_flush_are_retried_not_fatal() {
    use std::time::{Duration, Instant};
    let dir = tempdir("storage-emfile");
    faultfs(&dir);
    let data = dir.join("data");
    let server = Faulty::start(&dir, &data, &["--min-free-mb", "0", "--submit-rate", "0"]);
    let mut reg = RegistryClient::connect(server.url.clone()).await.unwrap();
    let mut jobs = pulse_ledger::api::proto::jobs_client::JobsClient::connect(server.url.clone())
        .await
        .unwrap();
    let log_did = log_info(&mut reg).await.log_did;
    let plugin = key("emfile-plugin");
    submit(&mut reg, "emfile-plugin").await.unwrap();
    let handler = key("emfile-handler");
    reg.submit(proto::SubmitRequest {
        envelope: common::handler_register(&handler, "echo", &plugin.did)
            .envelope()
            .to_vec(),
    })
    .await
    .unwrap();
    let enqueue = |n: &str| proto::EnqueueRequest {
        handler: handler.did.to_string(),
        payload: n.as_bytes().to_vec(),
        ..Default::default()
    };
    let queued = jobs
        .enqueue(enqueue("before"))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id;
    let start = size(&mut reg).await;

    // Out of descriptors: large registrations fill the log's memtable, so
    // fjall must open a new table file to flush it, and cannot.
    Faulty::arm(&server.emfile);
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..1000 {
        let att = common::handler_register_with(
            &key(&format!("emfile-{i}")),
            &format!("big{i}"),
            &plugin.did,
            |s| s.code = Some(vec![b'#'; pulse_ledger::limits::MAX_CODE_BYTES - 16]),
        );
        match reg
            .submit(proto::SubmitRequest {
                envelope: att.envelope().to_vec(),
            })
            .await
        {
            Ok(r) => acked.push((r.into_inner().index, att.envelope().to_vec())),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("the failed flush stops writes while descriptors are short");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    // Still short a while later (several reopen attempts have failed):
    // writes are refused, reads go on.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let e = submit(&mut reg, "emfile-short").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(size(&mut reg).await, start + acked.len() as u64);
    let (first, envelope) = &acked[0];
    let got = reg
        .get_entries(proto::GetEntriesRequest {
            start: *first,
            end: first + 1,
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(&got[0].envelope, envelope);

    // Descriptors are back: the database is reopened (the retry waits at
    // most 30 s between attempts) and writes go on, with no restart.
    Faulty::disarm(&server.emfile);
    let deadline = Instant::now() + Duration::from_secs(90);
    let resumed = loop {
        match submit(&mut reg, "emfile-after").await {
            Ok(index) => break index,
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                assert!(Instant::now() < deadline, "writes never resumed: {e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    // Every acknowledged entry is there as acknowledged, nothing else.
    assert_eq!(resumed, start + acked.len() as u64);
    for (index, envelope) in [acked.first(), acked.last()].into_iter().flatten() {
        let got = reg
            .get_entries(proto::GetEntriesRequest {
                start: *index,
                end: index + 1,
            })
            .await
            .unwrap()
            .into_inner()
            .entries;
        assert_eq!(&got[0].envelope, envelope);
    }
    // The job store came back too: the queued job is kept, and new jobs
    // are taken.
    let job = jobs
        .get_job(proto::GetJobRequest { id: queued.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.job.unwrap().id, queued);
    jobs.enqueue(enqueue("after")).await.unwrap();
    common::verify_log_passes(&server.url, &log_did);
}

/// A disk that stops answering (every fsync held) stalls the ledger's
/// writer, and nothing else: health checks and reads are answered at once
/// (reads use the last published head, they never wait for a commit),
/// submissions beyond the writer's queue are refused at once with
/// `overloaded` instead of holding a server thread, and once the disk
/// answers again every queued submission is acknowledged and nothing
/// refused is in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_disk_blocks_no_server_thread_and_overload_is_refused_at_once() {
    use std::time::Duration;
    use tonic_health::pb::health_client::HealthClient;
    let dir = tempdir("storage-stall");
    faultfs(&dir);
    let data = dir.join("data");
    let config = dir.join("serve.toml");
    std::fs::write(&config, "write_queue_depth = 2\n").unwrap();
    let server = Faulty::start(
        &dir,
        &data,
        &[
            "--config",
            config.to_str().unwrap(),
            "--submit-rate",
            "0",
            "--min-free-mb",
            "0",
        ],
    );
    let mut reg = RegistryClient::connect(server.url.clone()).await.unwrap();
    assert_eq!(submit(&mut reg, "stall-first").await.unwrap(), 0);
    let before = size(&mut reg).await;

    Faulty::arm(&server.stall);
    let total = 24;
    let handles: Vec<_> = (0..total)
        .map(|i| {
            let mut reg = reg.clone();
            tokio::spawn(async move { submit(&mut reg, &format!("stall-{i}")).await })
        })
        .collect();
    // While the writer is held in an fsync, submissions beyond its queue
    // come back on their own: wait for the first.
    let deadline = Duration::from_secs(20);
    let started = std::time::Instant::now();
    while !handles.iter().any(|h| h.is_finished()) {
        assert!(
            started.elapsed() < deadline,
            "no submission was answered while the disk stalled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let status = tokio::time::timeout(
        deadline,
        health.check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .expect("health is answered while the disk stalls")
    .unwrap()
    .into_inner()
    .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let info = tokio::time::timeout(deadline, size(&mut reg))
        .await
        .expect("GetLogInfo is answered while the writer is in an fsync");
    assert_eq!(
        info, before,
        "nothing is acknowledged while the disk stalls"
    );
    let answered_while_stalled = handles.iter().filter(|h| h.is_finished()).count();

    Faulty::disarm(&server.stall);
    let (mut acknowledged, mut overloaded) = (0, 0);
    for (i, h) in handles.into_iter().enumerate() {
        match tokio::time::timeout(deadline, h).await.unwrap().unwrap() {
            Ok(_) => acknowledged += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{i}: {e:?}");
                assert_eq!(reason(&e), "overloaded", "{i}: {e:?}");
                overloaded += 1;
            }
        }
    }
    assert_eq!(acknowledged + overloaded, total);
    assert!(
        overloaded >= answered_while_stalled && overloaded > 0,
        "{overloaded} refused, {answered_while_stalled} answered while stalled"
    );
    assert_eq!(
        size(&mut reg).await,
        before + acknowledged as u64,
        "exactly the acknowledged submissions are in the log"
    );
    // A refused submission changed nothing: submitting it again appends it.
    assert_eq!(
        submit(&mut reg, "stall-again").await.unwrap(),
        before + acknowledged as u64
    );
}
