//! What a stranger can make the server hold (issue 17, item 4;
//! spec/security.md, "Rate limits and size caps"): bounded in bytes, not
//! only in entries.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{key, plugin_register, tempdir};
use pulse_ledger::api::proto::{self, registry_client::RegistryClient};
use pulse_ledger::ledger::{Ledger, LedgerConfig};

/// A log of `n` registrations of about 48 KiB each, written directly.
fn large_log(data: &std::path::Path, n: usize) {
    let ledger = Ledger::open(LedgerConfig::new(data, "pulse-ledger.local/log")).unwrap();
    let plugin = key("exhaust-plugin");
    ledger
        .append(plugin_register(&plugin, "big").envelope())
        .unwrap();
    let envelopes: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let k = key(&format!("exhaust-{i}"));
            common::handler_register_with(&k, &format!("h{i}"), &plugin.did, |s| {
                s.code = Some(vec![b'#'; pulse_ledger::limits::MAX_CODE_BYTES - (i % 100)]);
            })
            .envelope()
            .to_vec()
        })
        .collect();
    for chunk in envelopes.chunks(200) {
        for r in ledger.append_batch(chunk) {
            r.unwrap();
        }
    }
    // Reads are bounded in bytes at the ledger too.
    let few = ledger.entries_within(1, 1000, 256 * 1024).unwrap();
    assert!((5..=6).contains(&few.len()), "{}", few.len());
    assert_eq!(ledger.entries_within(1, 1000, 0).unwrap().len(), 1);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Streams that are opened and never read hold a bounded number of bytes
/// each: 20 of them over a 50 MB log (the attack that took the server to
/// about 1 GB) leave it far below that.
#[test]
fn unread_watch_streams_hold_bounded_memory() {
    let dir = tempdir("exhaust-watch");
    let data = dir.join("data");
    // Written outside any async runtime: the ledger's appends block.
    large_log(&data, 1000);
    let server = common::Serve::start(&[], &data);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(watch_unread(&server));
    server.stop();
}

async fn watch_unread(server: &common::Serve) {
    let before = rss_kib(server.child.id());
    let mut streams = Vec::new();
    for _ in 0..20 {
        // A connection each, so no single connection's window limits it.
        let mut reg = RegistryClient::connect(server.url.clone()).await.unwrap();
        let mut s = reg
            .watch_entries(proto::WatchEntriesRequest { start: 0 })
            .await
            .unwrap()
            .into_inner();
        // One entry read, then nothing: the server keeps what it buffered.
        assert_eq!(s.message().await.unwrap().unwrap().index, 0);
        streams.push((reg, s));
    }
    // Give the server's readers time to fill whatever they may buffer.
    let mut peak = 0;
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        peak = peak.max(rss_kib(server.child.id()));
    }
    let grown_mib = peak.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 150,
        "20 unread streams grew the server by {grown_mib} MiB"
    );
    // The streams still work: one reads on, in order.
    let (_, s) = &mut streams[3];
    assert_eq!(s.message().await.unwrap().unwrap().index, 1);
}

/// 280 sockets that never say anything, against a server limited to 256
/// descriptors (the attack that made every write fail until a restart):
/// the server keeps descriptors for storage, closes the silent sockets
/// after the handshake deadline, and keeps accepting writes.
#[test]
fn silent_sockets_cannot_starve_storage_of_descriptors() {
    use std::os::unix::process::CommandExt;
    let dir = tempdir("exhaust-fds");
    std::fs::write(dir.join("pulse.toml"), "handshake_timeout_ms = 1000\n").unwrap();
    let config = dir.join("pulse.toml");
    let mut cmd = common::Serve::command(
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ],
        &dir.join("data"),
    );
    // SAFETY: setrlimit between fork and exec touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 256,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let server = common::Serve::spawn(cmd, true);
    let addr = server.url.trim_start_matches("http://").to_owned();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let submit = |reg: &mut RegistryClient<tonic::transport::Channel>, i: usize| {
        let k = key(&format!("fd-{i}"));
        let req = proto::SubmitRequest {
            envelope: plugin_register(&k, "p").envelope().to_vec(),
        };
        let mut reg = reg.clone();
        async move { reg.submit(req).await }
    };
    // A client connected before the flood.
    let mut reg = rt.block_on(async {
        let mut reg = RegistryClient::connect(server.url.clone()).await.unwrap();
        submit(&mut reg, 0).await.unwrap();
        reg
    });
    let idle: Vec<std::net::TcpStream> = (0..280)
        .filter_map(|_| std::net::TcpStream::connect(&addr).ok())
        .collect();
    assert!(idle.len() >= 250, "{}", idle.len());
    rt.block_on(async {
        // Beyond the bound, sockets are closed at once.
        let full = server
            .metric_reaches(
                "pulse_ledger_connections_refused_total{reason=\"server_full\"}",
                200,
            )
            .await;
        assert!(full >= 200);
        let open = server.metric("pulse_ledger_connections_open").await;
        assert!(open <= 16, "{open} open under a 256-descriptor limit");
        // Writes during the flood: storage still has its descriptors.
        for i in 1..20 {
            submit(&mut reg, i).await.unwrap();
        }
        // Silent sockets are closed when their deadline passes.
        server
            .metric_reaches(
                "pulse_ledger_connections_refused_total{reason=\"silent\"}",
                1,
            )
            .await;
    });
    drop(idle);
    rt.block_on(async {
        // After the flood, a new client connects and writes. Sockets the
        // flood left in the listen queue are taken and closed first, so a
        // connection may still be turned away for a moment: retry a while.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut fresh = loop {
            if let Ok(mut c) = RegistryClient::connect(server.url.clone()).await {
                if submit(&mut c, 20).await.is_ok() {
                    break c;
                }
            }
            assert!(
                std::time::Instant::now() < until,
                "no write after the flood"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        for i in 21..30 {
            submit(&mut fresh, i).await.unwrap();
        }
    });
    server.stop();
}

fn free_mib(dir: &std::path::Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a valid C string and room for one statvfs.
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) }, 0);
    // SAFETY: statvfs returned 0.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)]
    let free = (st.f_bavail as u64) * (st.f_frsize as u64);
    free / (1024 * 1024)
}

/// Registrations (open to anyone) stop before jobs do: with free space
/// between the jobs' reserve and the log's, a registration is refused
/// with `disk_full` and a job is still enqueued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_cannot_take_the_room_jobs_need() {
    use pulse_ledger::api::proto::jobs_client::JobsClient;
    let dir = tempdir("exhaust-disk");
    let data = dir.join("data");
    let (p, h) = (key("disk-p"), key("disk-h"));
    {
        let server = common::Serve::start(&[], &data);
        let mut reg = RegistryClient::connect(server.url.clone()).await.unwrap();
        for a in [
            plugin_register(&p, "p"),
            common::handler_register(&h, "h", &p.did),
        ] {
            reg.submit(proto::SubmitRequest {
                envelope: a.envelope().to_vec(),
            })
            .await
            .unwrap();
        }
        server.stop();
    }
    let free = free_mib(&dir);
    assert!(free > 1024, "the test needs 1 GiB free, has {free} MiB");
    // Jobs keep 200 MiB less than what is free; the log 200 MiB more.
    std::fs::write(
        dir.join("pulse.toml"),
        format!(
            "min_free_mb = {}\nlog_reserve_mb = 400\nplugin_wait_secs = 600\n",
            free - 200
        ),
    )
    .unwrap();
    let server = common::Serve::start(
        &["--config", dir.join("pulse.toml").to_str().unwrap()],
        &data,
    );
    let mut reg = RegistryClient::connect(server.url.clone()).await.unwrap();
    let e = reg
        .submit(proto::SubmitRequest {
            envelope: plugin_register(&key("disk-late"), "late")
                .envelope()
                .to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(common::reason(&e), "disk_full", "{}", e.message());
    let mut jobs = JobsClient::connect(server.url.clone()).await.unwrap();
    let job = jobs
        .enqueue(proto::EnqueueRequest {
            handler: h.did.to_string(),
            payload: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(job.state, "queued");
    server.stop();
}

/// Anyone can sign a DID token, so a DID token passes the Jobs API's
/// header check; the bodies of DID callers share one allowance of 64 MiB.
/// A stranger opening 40 Enqueue uploads of 8 MiB that never finish (320
/// MiB) is cut off with `overloaded` once the allowance is held, and the
/// server grows by about the allowance, not by the uploads.
#[test]
fn strangers_uploads_share_one_bounded_allowance() {
    let dir = tempdir("exhaust-did-bodies");
    std::fs::create_dir_all(&dir).unwrap();
    let token = pulse_ledger::auth::new_token().unwrap();
    let hash = pulse_ledger::auth::TokenHash::of(&token).unwrap();
    std::fs::write(
        dir.join("pulse.toml"),
        format!("[[token]]\nname = \"ops\"\nhash = \"{hash}\"\nscopes = [\"admin\"]\n"),
    )
    .unwrap();
    let server = common::Serve::start(
        &["--config", dir.join("pulse.toml").to_str().unwrap()],
        &dir.join("data"),
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(unfinished_uploads(&server));
    server.stop();
}

async fn unfinished_uploads(server: &common::Serve) {
    use http_body_util::StreamBody;
    use tonic::codegen::Bytes;
    use tonic::codegen::Service;
    use tonic::codegen::http;

    let mut reg = RegistryClient::connect(server.url.clone()).await.unwrap();
    let log = pulse_ledger::Did::parse(&common::log_info(&mut reg).await.log_did).unwrap();
    let stranger = key("exhaust-stranger");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let did_token =
        pulse_ledger::auth::DidToken::sign(&stranger.sk, &log, now, now + 600_000).unwrap();
    let before = rss_kib(server.child.id());
    const UPLOAD: usize = 8 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let mut answers = Vec::new();
    let mut channels = Vec::new();
    for _ in 0..40 {
        // A connection each: no one connection's window holds them back.
        let mut channel = tonic::transport::Endpoint::from_shared(server.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        // One gRPC message announced at 15 MiB, 8 MiB of it sent, the rest
        // never.
        let mut prefix = vec![0u8];
        prefix.extend_from_slice(&(15u32 * 1024 * 1024).to_be_bytes());
        let frames = std::iter::once(prefix)
            .chain(std::iter::repeat_n(vec![0x0a; CHUNK], UPLOAD / CHUNK))
            .map(|b| Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(b))));
        let body = StreamBody::new(tokio_stream::StreamExt::chain(
            tokio_stream::iter(frames),
            tokio_stream::pending(),
        ));
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("{}/pulse_ledger.v1.Jobs/Enqueue", server.url))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", format!("Bearer {did_token}"))
            .body(tonic::body::Body::new(body))
            .unwrap();
        std::future::poll_fn(|cx| channel.poll_ready(cx))
            .await
            .unwrap();
        let call = channel.call(request);
        answers.push(tokio::spawn(async move {
            let response = call.await.unwrap();
            let status =
                |h: &http::HeaderMap| h.get("grpc-status").map(|v| v.to_str().unwrap().to_owned());
            match status(response.headers()) {
                Some(s) => (s, response.headers().clone()),
                None => {
                    use http_body_util::BodyExt;
                    let trailers = response
                        .into_body()
                        .collect()
                        .await
                        .unwrap()
                        .trailers()
                        .cloned();
                    let t = trailers.unwrap_or_default();
                    (status(&t).unwrap_or_default(), t)
                }
            }
        }));
        channels.push(channel);
    }
    // Let the uploads arrive.
    let mut peak = 0;
    for _ in 0..30 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        peak = peak.max(rss_kib(server.child.id()));
    }
    let mut overloaded = 0;
    for a in answers {
        if let Ok(Ok((status, headers))) =
            tokio::time::timeout(std::time::Duration::from_millis(200), a).await
        {
            assert_eq!(status, "8", "{headers:?}");
            let message = headers.get("grpc-message").unwrap().to_str().unwrap();
            assert!(message.starts_with("overloaded"), "{message}");
            overloaded += 1;
        }
    }
    let grown_mib = peak.saturating_sub(before) / 1024;
    assert!(
        overloaded >= 20,
        "only {overloaded} of 40 uploads (320 MiB) were cut off"
    );
    assert!(
        grown_mib < 160,
        "40 unfinished uploads grew the server by {grown_mib} MiB"
    );
}

/// A connection with no call in flight for `idle_timeout_ms` is closed;
/// one holding a stream open is not, however long the stream is quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_streams_keep_theirs_open() {
    let dir = tempdir("exhaust-idle");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pulse.toml"), "idle_timeout_ms = 1000\n").unwrap();
    let server = common::Serve::start(
        &[
            "--config",
            dir.join("pulse.toml").to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &dir.join("data"),
    );
    // One call, then nothing: closed after a second.
    let mut idle = RegistryClient::connect(server.url.clone()).await.unwrap();
    common::log_info(&mut idle).await;
    // A stream that waits for entries that do not come yet.
    let mut watcher = RegistryClient::connect(server.url.clone()).await.unwrap();
    let mut stream = watcher
        .watch_entries(proto::WatchEntriesRequest { start: 0 })
        .await
        .unwrap()
        .into_inner();
    server
        .metric_reaches("pulse_ledger_connections_refused_total{reason=\"idle\"}", 1)
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        server
            .metric("pulse_ledger_connections_refused_total{reason=\"idle\"}")
            .await,
        1,
        "the watching connection was closed too"
    );
    // The quiet stream still works: an entry submitted now reaches it.
    let mut submitter = RegistryClient::connect(server.url.clone()).await.unwrap();
    submitter
        .submit(proto::SubmitRequest {
            envelope: plugin_register(&key("idle-p"), "p").envelope().to_vec(),
        })
        .await
        .unwrap();
    assert_eq!(stream.message().await.unwrap().unwrap().index, 0);
    // The closed client reconnects on its next call.
    common::log_info(&mut idle).await;
    drop((stream, watcher));
    server.stop();
}

/// One client holds at most `max_streams_per_client` calls open over all
/// its connections; the next is refused `too_many_streams` until one ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_holds_a_bounded_number_of_calls() {
    let dir = tempdir("exhaust-streams");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("pulse.toml"),
        "max_streams_per_client = 4\nrate_limit_loopback = true\nallow_unauthenticated = true\n",
    )
    .unwrap();
    let server = common::Serve::start(
        &[
            "--config",
            dir.join("pulse.toml").to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &dir.join("data"),
    );
    let mut held = Vec::new();
    for _ in 0..4 {
        // A connection each: the cap is per client, not per connection.
        let mut reg = RegistryClient::connect(server.url.clone()).await.unwrap();
        let s = reg
            .watch_entries(proto::WatchEntriesRequest { start: 0 })
            .await
            .unwrap()
            .into_inner();
        held.push((reg, s));
    }
    let mut other = RegistryClient::connect(server.url.clone()).await.unwrap();
    let e = other
        .get_log_info(proto::GetLogInfoRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert_eq!(common::reason(&e), "too_many_streams");
    assert_eq!(server.metric("pulse_ledger_streams_refused_total").await, 1);
    // One stream ends: its place is free again.
    drop(held.pop());
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match other.get_log_info(proto::GetLogInfoRequest {}).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(common::reason(&e), "too_many_streams");
                assert!(
                    std::time::Instant::now() < until,
                    "the place never came back"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
    drop(held);
    server.stop();
}

/// The metrics endpoint closes a connection that does not ask within 5 s,
/// serves at most 64 at once, and keeps answering: 100 silent sockets do
/// not stop it (before, each was held for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_metrics_connections_are_closed() {
    use tokio::io::AsyncReadExt;
    let dir = tempdir("exhaust-metrics");
    let server = common::Serve::start(&["--metrics-listen", "127.0.0.1:0"], &dir.join("data"));
    let addr = server.metrics.clone().unwrap();
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // Every one of them is closed: at once past the cap, the rest after
    // the timeout (a bound of 30 s against hanging).
    for s in &mut silent {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(std::time::Duration::from_secs(30), s.read(&mut b))
            .await
            .expect("a silent metrics connection was held open")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    // And the endpoint still answers.
    assert!(server.metric("pulse_ledger_log_size").await == 0);
    let body = {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        body
    };
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    server.stop();
}

/// One client holds at most `max_connections_per_client` connections:
/// more are closed at once, before anything is read, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_holds_a_bounded_number_of_connections() {
    use tokio::io::AsyncReadExt;
    let dir = tempdir("exhaust-conns");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("pulse.toml"),
        "max_connections_per_client = 3\nrate_limit_loopback = true\nallow_unauthenticated = true\n",
    )
    .unwrap();
    let server = common::Serve::start(
        &[
            "--config",
            dir.join("pulse.toml").to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &dir.join("data"),
    );
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    server
        .metric_reaches("pulse_ledger_connections_open", 3)
        .await;
    for _ in 0..2 {
        let mut extra = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(std::time::Duration::from_secs(30), extra.read(&mut b))
            .await
            .expect("a connection past the client's cap was held")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    assert_eq!(
        server
            .metric("pulse_ledger_connections_refused_total{reason=\"client_full\"}")
            .await,
        2
    );
    // Its connections closed, the client connects again.
    drop(held);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Ok(mut reg) = RegistryClient::connect(server.url.clone()).await {
            if reg.get_log_info(proto::GetLogInfoRequest {}).await.is_ok() {
                break;
            }
        }
        assert!(std::time::Instant::now() < until, "never served again");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.stop();
}
