//! `serve --store postgres://…` on a real PostgreSQL server
//! (`PULSE_TEST_POSTGRES`; .ci/run starts one): the schema migrated by the
//! binary, registrations and jobs stored in the database and still there
//! after the server is killed, one server per database, `store migrate`
//! for operators, and the database's failures (outages, restarts, a node
//! whose connection stalls).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::cluster::Cluster;
use common::{
    Serve, finished, handler_register, key, key_file, log_info, plugin_register, plugin_table,
    tempdir, verify_log_passes,
};
use pulse_ledger::api::proto::{self, jobs_client::JobsClient, registry_client::RegistryClient};

fn pulse(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
        .args(args)
        .env_remove("PULSE_LEDGER_STORE")
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8(o.stdout).unwrap(),
        String::from_utf8(o.stderr).unwrap(),
    )
}

fn start(dir: &Path, url: &str, config: &str) -> Serve {
    std::fs::write(dir.join("pulse.toml"), config).unwrap();
    let key = dir.join("keys/log.key");
    Serve::start(
        &[
            "--store",
            url,
            "--log-key",
            key.to_str().unwrap(),
            "--config",
            dir.join("pulse.toml").to_str().unwrap(),
        ],
        &dir.join("data"),
    )
}

#[test]
fn store_migrate_creates_the_schema_once_and_refuses_what_is_not_postgres() {
    let Some(url) = common::postgres_database("cli_migrate") else {
        return;
    };
    let (code, out, err) = pulse(&["store", "migrate", "--store", &url]);
    assert_eq!(code, 0, "{err}");
    let latest = pulse_ledger::storage::postgres::SCHEMA_VERSION;
    assert!(
        out.contains(&format!("schema migrated from version 0 to {latest}")),
        "{out}"
    );
    let (code, out, _) = pulse(&["store", "migrate", "--store", &url, "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["from"].as_i64(), v["to"].as_i64()),
        (Some(i64::from(latest)), Some(i64::from(latest)))
    );
    let (code, _, err) = pulse(&["store", "migrate", "--store", "/var/lib/data"]);
    assert_ne!(code, 0);
    assert!(err.contains("invalid_store"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_and_the_jobs_live_in_postgres_and_survive_a_killed_server() {
    let Some(url) = common::postgres_database("serve") else {
        return;
    };
    let dir = tempdir("pg-serve");
    let p = key("pg-plugin");
    let pkey = key_file(&dir, &p);
    let config = plugin_table(
        "tools",
        &["--key".into(), pkey.display().to_string()],
        &dir.join("events.log"),
    );
    let server = start(&dir, &url, &config);
    let mut reg = RegistryClient::connect(server.url.clone()).await.unwrap();
    let echo = key("pg-echo");
    for a in [
        plugin_register(&p, "tools"),
        handler_register(&echo, "echo", &p.did),
    ] {
        reg.submit(proto::SubmitRequest {
            envelope: a.envelope().to_vec(),
        })
        .await
        .unwrap();
    }
    let info = log_info(&mut reg).await;
    assert_eq!(info.size, 2);
    let mut jobs = JobsClient::connect(server.url.clone()).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..20 {
        let r = jobs
            .enqueue(proto::EnqueueRequest {
                handler: echo.did.to_string(),
                payload: format!("job {i}").into_bytes(),
                ..Default::default()
            })
            .await
            .unwrap();
        ids.push(r.into_inner().job.unwrap().id);
    }
    for (i, id) in ids.iter().enumerate() {
        let j = finished(&mut jobs, id, 30).await;
        assert_eq!(
            (j.state.as_str(), j.result.as_slice()),
            ("succeeded", format!("job {i}").as_bytes()),
            "{}",
            j.last_error
        );
    }
    verify_log_passes(&server.url, &info.log_did);

    // One server per database: a second one is refused, by rule.
    let second = Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            &url,
            "--log-key",
        ])
        .arg(dir.join("keys/log.key"))
        .arg("--data-dir")
        .arg(dir.join("data2"))
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("store_in_use"), "{err}");

    // Killed, not stopped: everything acknowledged is in the database.
    let mut server = server;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    drop(server);
    // The fjall data dir was never used for data.
    assert!(!dir.join("data/db").exists());
    let server = start(&dir, &url, &config);
    let mut reg = RegistryClient::connect(server.url.clone()).await.unwrap();
    let again = log_info(&mut reg).await;
    assert_eq!(
        (again.size, &again.log_did, &again.root_hash),
        (2, &info.log_did, &info.root_hash)
    );
    let mut jobs = JobsClient::connect(server.url.clone()).await.unwrap();
    for (i, id) in ids.iter().enumerate() {
        let j = common::job(&mut jobs, id).await;
        assert_eq!(j.result, format!("job {i}").into_bytes());
    }
    // And it keeps working: a new job runs.
    let r = jobs
        .enqueue(proto::EnqueueRequest {
            handler: echo.did.to_string(),
            payload: b"after".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    let j = finished(&mut jobs, &r.into_inner().job.unwrap().id, 30).await;
    assert_eq!(j.result, b"after");
    server.stop();

    // Without its key the log is refused, never given a new key.
    std::fs::remove_file(dir.join("keys/log.key")).unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            &url,
            "--log-key",
        ])
        .arg(dir.join("keys/log.key"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("log.key"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[test]
fn a_bad_store_is_refused_before_anything_starts() {
    let dir = tempdir("pg-bad-store");
    let (code, _, err) = pulse(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.to_str().unwrap(),
        "--store",
        "mysql://db/x",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("invalid_store"), "{err}");
    // Nothing listens on port 1: unavailable, said plainly, no panic.
    let (code, _, err) = pulse(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.to_str().unwrap(),
        "--store",
        "postgres://nobody@127.0.0.1:1/none",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("PostgreSQL"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // --log-key belongs to a PostgreSQL store.
    let (code, _, err) = pulse(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.to_str().unwrap(),
        "--log-key",
        "/tmp/elsewhere.key",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("log_key_without_store"), "{err}");
}

/// A data dir with a log, jobs (one with log lines), and a budget; the
/// jobs' IDs and the head.
fn filled_data_dir(dir: &Path) -> (Vec<Vec<u8>>, pulse_ledger::ledger::TreeHead, String) {
    use pulse_ledger::ledger::{Ledger, LedgerConfig};
    use pulse_ledger::pulse::{Budget, JobRequest, JobStore};
    let ledger = Ledger::open(LedgerConfig::new(dir, "copy.test/log")).unwrap();
    let p = key("copy-plugin");
    ledger
        .append(plugin_register(&p, "tools").envelope())
        .unwrap();
    let h = key("copy-handler");
    let reg = handler_register(&h, "echo", &p.did);
    ledger.append(reg.envelope()).unwrap();
    for i in 0..40 {
        ledger
            .append(handler_register(&key(&format!("copy-{i}")), "more", &p.did).envelope())
            .unwrap();
    }
    let store = JobStore::open(&ledger).unwrap();
    let schema = match reg.statement().schema().unwrap() {
        pulse_ledger::Schema::Handler(s) => s.clone(),
        pulse_ledger::Schema::Plugin(_) => unreachable!(),
    };
    let mut ids = Vec::new();
    for i in 0..30u8 {
        let req = JobRequest {
            payload: vec![i],
            ..Default::default()
        };
        ids.push(
            store
                .enqueue(&h.did, &schema, &req, 1_000 + u64::from(i))
                .unwrap()
                .0
                .id
                .0
                .to_vec(),
        );
    }
    store
        .set_budget(
            Some(&h.did),
            Budget {
                per_hour: Some(500),
                per_day: Some(5_000),
            },
        )
        .unwrap();
    let head = ledger.head();
    let did = ledger.log_did().to_string();
    ledger.close();
    (ids, head, did)
}

#[test]
fn store_copy_moves_a_log_and_its_jobs_to_postgres_and_back_verified() {
    let Some(url) = common::postgres_database("copy") else {
        return;
    };
    let dir = tempdir("pg-copy");
    let (ids, head, did) = filled_data_dir(&dir.join("data"));
    let key = dir.join("pg/log.key");
    let (code, out, err) = pulse(&[
        "store",
        "copy",
        "--from",
        dir.join("data").to_str().unwrap(),
        "--to",
        &url,
        "--log-key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("copied 42 entries"), "{out}");
    assert!(out.contains("and 30 jobs"), "{out}");
    assert!(out.contains("equal to the source's"), "{out}");
    assert_eq!(
        std::fs::read(&key).unwrap(),
        std::fs::read(dir.join("data/log.key")).unwrap()
    );
    // The copy audits from PostgreSQL, entries and indexes.
    let (code, out, err) = pulse(&[
        "verify",
        "log",
        "--store",
        &url,
        "--log-key",
        &did,
        "--key-file",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("log ok: 42 entries"), "{out}");
    // A target that is not empty is refused, and left as it was.
    let (code, _, err) = pulse(&[
        "store",
        "copy",
        "--from",
        dir.join("data").to_str().unwrap(),
        "--to",
        &url,
        "--log-key",
        key.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("target_not_empty"), "{err}");
    // And back to a new data dir: the same head, jobs and budget.
    let (code, out, err) = pulse(&[
        "store",
        "copy",
        "--from",
        &url,
        "--log-key",
        key.to_str().unwrap(),
        "--to",
        dir.join("back").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["entries"], 42);
    assert_eq!(v["copied"]["jobs"], 30);
    use pulse_ledger::ledger::{Ledger, LedgerConfig};
    use pulse_ledger::pulse::{JobId, JobStore};
    let back = Ledger::open(LedgerConfig::new(dir.join("back"), "copy.test/log")).unwrap();
    assert_eq!(back.head(), head);
    let jobs = JobStore::open(&back).unwrap();
    for (i, id) in ids.iter().enumerate() {
        let job = jobs.get(&JobId(id.as_slice().try_into().unwrap())).unwrap();
        assert_eq!(job.payload, vec![i as u8]);
    }
    assert_eq!(
        jobs.budget(&common::key("copy-handler").did)
            .unwrap()
            .per_day,
        Some(5_000)
    );
    back.close();
    // The source's key must come along: without it, nothing is copied.
    let (code, _, err) = pulse(&[
        "store",
        "copy",
        "--from",
        &url,
        "--to",
        dir.join("none").to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--log-key"), "{err}");
}

#[test]
fn store_copy_of_a_damaged_log_fails_verification_and_says_so() {
    let Some(url) = common::postgres_database("copy_damaged") else {
        return;
    };
    let dir = tempdir("pg-copy-damaged");
    filled_data_dir(&dir.join("data"));
    // A name index key lost from the source.
    {
        let storage = pulse_ledger::storage::Storage::new(
            pulse_ledger::storage::FjallBackend::open(
                &dir.join("data/db"),
                pulse_ledger::storage::FjallOptions::default(),
            )
            .unwrap(),
        );
        let by_name = storage.space("by_name").unwrap();
        let (k, _) = by_name.iter().next().unwrap().unwrap();
        let mut b = storage.batch();
        b.remove(&by_name, k);
        storage.commit(b).unwrap();
    }
    let key = dir.join("pg/log.key");
    let (code, out, _) = pulse(&[
        "store",
        "copy",
        "--from",
        dir.join("data").to_str().unwrap(),
        "--to",
        &url,
        "--log-key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not verify"), "{out}");
    assert!(out.contains("name index"), "{out}");
}

/// A TCP proxy in front of PostgreSQL that a test can cut (every
/// connection closed, new ones refused) and restore: the database
/// unreachable or restarted, as the server sees it.
struct Proxy {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Each connection: the port of its side towards PostgreSQL (what
    /// `pg_stat_activity.client_port` shows) and its task.
    links: std::sync::Arc<std::sync::Mutex<Vec<(u16, tokio::task::AbortHandle)>>>,
    /// While set, what clients send is held (not lost): a stalled network,
    /// a paused process.
    held: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Copies `from` to `to`, holding each chunk while `held` is set.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    held: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while held.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let held = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (up2, links2, held2) = (up.clone(), links.clone(), held.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let server_port = server.local_addr().unwrap().port();
                let held = held2.clone();
                let task = tokio::spawn(async move {
                    let (client_in, client_out) = client.into_split();
                    let (server_in, server_out) = server.into_split();
                    let calm = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                    tokio::select! {
                        () = forward(client_in, server_out, held) => {}
                        () = forward(server_in, client_out, calm) => {}
                    }
                });
                links2
                    .lock()
                    .unwrap()
                    .push((server_port, task.abort_handle()));
            }
        });
        Proxy {
            port,
            up,
            links,
            held,
        }
    }

    /// Holds what clients send until [`Proxy::release`].
    fn hold(&self) {
        self.held.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn release(&self) {
        self.held.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// `url` (postgres://USER@HOST:PORT/DB) through a new proxy in front
    /// of HOST:PORT.
    async fn before(url: &str) -> (Proxy, String) {
        let (head, db) = url.rsplit_once('/').unwrap();
        let (user, hostport) = head
            .trim_start_matches("postgres://")
            .split_once('@')
            .unwrap();
        let proxy = Proxy::start(hostport.to_owned()).await;
        let proxied = format!("postgres://{user}@127.0.0.1:{}/{db}", proxy.port);
        (proxy, proxied)
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for (_, l) in self.links.lock().unwrap().drain(..) {
            l.abort();
        }
    }

    /// Cuts the one connection whose side towards PostgreSQL has `port`.
    /// Its session lives on until PostgreSQL next reads or writes it.
    fn cut_one(&self, port: u16) {
        let mut links = self.links.lock().unwrap();
        let at = links
            .iter()
            .position(|(p, _)| *p == port)
            .unwrap_or_else(|| panic!("no proxied connection from port {port}"));
        links.remove(at).1.abort();
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// How a test takes the database away and brings it back.
trait Outage {
    fn begin(&self);
    fn end(&self);
}

impl Outage for Proxy {
    fn begin(&self) {
        self.cut();
    }
    fn end(&self) {
        self.restore();
    }
}

/// The database server itself stops (every connection closed by it) and
/// starts again, as in a restart or a failover.
impl Outage for Cluster {
    fn begin(&self) {
        self.stop();
    }
    fn end(&self) {
        self.start();
    }
}

/// Issue 23, item 7: the database becomes unreachable mid-run (every
/// connection to it cut, new ones refused) and comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_refuses_writes_and_the_server_resumes_when_it_returns() {
    let Some(url) = common::postgres_database("outage") else {
        return;
    };
    let (proxy, proxied) = Proxy::before(&url).await;
    writes_are_refused_during_an_outage_and_resume_after_it(&proxied, &proxy, "pg-outage").await;
}

/// Issue 23, item 7, with a real PostgreSQL server stopped (`pg_ctl stop
/// -m fast`) and started again under a running `serve`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_refuses_writes_and_the_server_resumes_when_it_is_back() {
    // Only where the PostgreSQL suites run at all.
    if common::postgres_database("restart").is_none() {
        return;
    }
    let Some(cluster) = Cluster::create("pg-restart-cluster") else {
        return;
    };
    let url = cluster.url();
    writes_are_refused_during_an_outage_and_resume_after_it(&url, &cluster, "pg-restart").await;
}

/// TLS to the database (spec/storage.md): against a server that takes
/// only encrypted connections, a plain URL is turned away by the server,
/// `sslmode=require` without the server's CA is refused by pulse-ledger
/// (the certificate is always checked), a wrong CA likewise, and the right
/// one (`sslrootcert`, or `sslmode=verify-full`) migrates and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_connection_is_encrypted_and_the_server_certificate_checked() {
    if common::postgres_database("tls").is_none() {
        return;
    }
    let Some(cluster) = Cluster::create_with("pg-tls-cluster", true) else {
        return;
    };
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let base = cluster.url();
    let (code, _, err) = pulse(&["store", "migrate", "--store", &base]);
    assert_ne!(code, 0, "a plaintext connection was let in");
    assert!(err.contains("no encryption"), "{err}");
    let (code, _, err) = pulse(&[
        "store",
        "migrate",
        "--store",
        &format!("{base}?sslmode=require"),
    ]);
    assert_ne!(code, 0, "a certificate from an unknown CA was accepted");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let other = fixtures.join("other-ca.pem");
    let (code, _, err) = pulse(&[
        "store",
        "migrate",
        "--store",
        &format!("{base}?sslmode=verify-full&sslrootcert={}", other.display()),
    ]);
    assert_ne!(
        code, 0,
        "a certificate the given CA did not sign was accepted"
    );
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let ca = fixtures.join("ca.pem");
    let url = format!("{base}?sslrootcert={}", ca.display());
    let (code, out, err) = pulse(&["store", "migrate", "--store", &url]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("schema migrated from version 0"), "{out}");
    // And a server on it takes a registration and serves it back.
    let dir = tempdir("pg-tls");
    let server = start(&dir, &url, "");
    let mut reg = RegistryClient::connect(server.url.clone()).await.unwrap();
    let p = key("tls-plugin");
    let a = plugin_register(&p, "tools");
    let index = reg
        .submit(proto::SubmitRequest {
            envelope: a.envelope().to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .index;
    assert_eq!(index, 0);
    let info = log_info(&mut reg).await;
    assert_eq!(info.size, 1);
    verify_log_passes(&server.url, &info.log_did);
    server.stop();
}

/// While the database is away, writes are refused (`unavailable`), never
/// acknowledged; once it is back, the same server takes registrations and
/// jobs again, reads answer, and every acknowledged write is there — no
/// restart of `serve`.
async fn writes_are_refused_during_an_outage_and_resume_after_it(
    proxied: &str,
    outage: &impl Outage,
    name: &str,
) {
    let dir = tempdir(name);
    let p = key("outage-plugin");
    let pkey = key_file(&dir, &p);
    let config = format!(
        "plugin_health_interval_ms = 200\n{}",
        plugin_table(
            "tools",
            &["--key".into(), pkey.display().to_string()],
            &dir.join("events.log"),
        )
    );
    let server = start(&dir, proxied, &config);
    let mut reg = RegistryClient::connect(server.url.clone()).await.unwrap();
    let echo = key("outage-echo");
    let mut acknowledged = Vec::new();
    for a in [
        plugin_register(&p, "tools"),
        handler_register(&echo, "echo", &p.did),
    ] {
        reg.submit(proto::SubmitRequest {
            envelope: a.envelope().to_vec(),
        })
        .await
        .unwrap();
        acknowledged.push(a);
    }
    let mut jobs = JobsClient::connect(server.url.clone()).await.unwrap();
    let enqueue = |payload: &str| proto::EnqueueRequest {
        handler: echo.did.to_string(),
        payload: payload.as_bytes().to_vec(),
        ..Default::default()
    };
    let first = jobs
        .enqueue(enqueue("before"))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id;
    assert_eq!(finished(&mut jobs, &first, 30).await.result, b"before");

    outage.begin();
    // Writes during the outage: refused, not acknowledged.
    let mut refused = 0;
    for i in 0..5 {
        let a = handler_register(&key(&format!("outage-during-{i}")), "echo", &p.did);
        match reg
            .submit(proto::SubmitRequest {
                envelope: a.envelope().to_vec(),
            })
            .await
        {
            Ok(_) => acknowledged.push(a),
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
                refused += 1;
            }
        }
        match jobs.enqueue(enqueue("during")).await {
            Ok(_) => panic!("an enqueue was acknowledged while the database was away"),
            Err(s) => assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}"),
        }
    }
    assert_eq!(
        refused, 5,
        "registrations were acknowledged with the database away"
    );

    outage.end();
    // The same server takes writes again once the database is back.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let late = handler_register(&key("outage-after"), "echo", &p.did);
    loop {
        match reg
            .submit(proto::SubmitRequest {
                envelope: late.envelope().to_vec(),
            })
            .await
        {
            Ok(_) => break,
            Err(s) => {
                assert!(std::time::Instant::now() < until, "never resumed: {s:?}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    acknowledged.push(late);
    let after = loop {
        match jobs.enqueue(enqueue("after")).await {
            Ok(r) => break r.into_inner().job.unwrap().id,
            Err(s) => {
                assert!(
                    std::time::Instant::now() < until,
                    "enqueue never resumed: {s:?}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(finished(&mut jobs, &after, 30).await.result, b"after");
    // Everything acknowledged is in the log, which verifies.
    let info = log_info(&mut reg).await;
    for a in &acknowledged {
        reg.get_subject(proto::GetSubjectRequest {
            did: a.statement().subject.to_string(),
        })
        .await
        .unwrap();
    }
    assert_eq!(info.size, acknowledged.len() as u64);
    verify_log_passes(&server.url, &info.log_did);
    server.stop();
}

/// Issue 24: a node whose messages to the database stall (a frozen
/// process, a stalled network) while another node appends can never
/// commit on the head it had: when its held statements reach the database
/// the stored size has moved, its group is refused whole, and it is
/// decided again on the new head, after the other node's entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_node_cannot_commit_on_the_head_it_had() {
    use pulse_ledger::ledger::{Ledger, LedgerConfig, verify_consistency};
    use pulse_ledger::storage::{PostgresBackend, Storage};
    let Some(url) = common::postgres_database("stalled_node") else {
        return;
    };
    let (proxy, proxied) = Proxy::before(&url).await;
    let dir = tempdir("stalled-node");
    let origin = "stalled.example/log";
    let node = |url: String| {
        let dir = dir.clone();
        std::thread::spawn(move || {
            let pg = PostgresBackend::open(&url).unwrap();
            pg.share().unwrap();
            Ledger::open_on(
                Storage::new(pg),
                &dir.join("log.key"),
                LedgerConfig::new(&dir, origin),
            )
            .unwrap()
        })
        .join()
        .unwrap()
    };
    let stalled = std::sync::Arc::new(node(proxied));
    let other = node(url.clone());
    let p = key("stalled-plugin");
    let first = stalled.append(plugin_register(&p, "p").envelope()).unwrap();
    assert_eq!(first.index, 0);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while other.head().size < 1 {
        assert!(
            std::time::Instant::now() < until,
            "the other node never saw entry 0"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    proxy.hold();
    let mine = handler_register(&key("stalled-handler"), "mine", &p.did);
    let appending = {
        let stalled = std::sync::Arc::clone(&stalled);
        std::thread::spawn(move || stalled.append(mine.envelope()))
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut theirs = Vec::new();
    for i in 0..5 {
        let att = handler_register(&key(&format!("other-{i}")), "theirs", &p.did);
        theirs.push(other.append(att.envelope()).unwrap());
    }
    assert_eq!(
        theirs.iter().map(|r| r.index).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5],
        "the other node appends on while this one stalls"
    );
    proxy.release();
    let r = appending.join().unwrap().unwrap();
    assert_eq!(r.index, 6, "decided again after the other node's entries");
    assert_eq!(r.head.size, 7);
    let before = &theirs[4].head;
    let proof = other.consistency_proof(before.size, r.head.size).unwrap();
    verify_consistency(before.size, r.head.size, &before.root, &r.head.root, &proof).unwrap();
    stalled.audit().unwrap();
    other.audit().unwrap();
}

/// Issue 24: a node's notice connection broken by a database restart is
/// opened again, and the node is told it may have missed notices (a gap)
/// before it hears the next one.
#[test]
fn notices_report_a_gap_after_the_database_restarts() {
    use pulse_ledger::storage::{Notice, PostgresBackend, Storage};
    let Some(cluster) = Cluster::create("notice-gap") else {
        return;
    };
    let node = || {
        let pg = PostgresBackend::open(&cluster.url()).unwrap();
        pg.share().unwrap();
        Storage::new(pg)
    };
    let (a, b) = (node(), node());
    let mut heard = b.notices().unwrap();
    cluster.stop();
    cluster.start();
    let next = |rx: &mut tokio::sync::broadcast::Receiver<Notice>| {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match rx.try_recv() {
                Ok(n) => return n,
                Err(_) if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("nothing heard: {e}"),
            }
        }
    };
    assert_eq!(next(&mut heard), Notice::Gap);
    // Committing may need a few tries while A's pool finds the database.
    let space = a.space("s").unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mut batch = a.batch();
        batch.insert(&space, b"k", b"v");
        batch.announce("log", "7");
        match a.commit(batch) {
            Ok(()) => break,
            Err(e) if e.is_unavailable() && std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        next(&mut heard),
        Notice::Message {
            topic: "log".into(),
            payload: "7".into()
        }
    );
}

/// Issue 24: two nodes stepping their dispatchers at the same moment never
/// run more attempts of a handler than its `max_concurrency`, nor reserve
/// more than its budget, together: each start is admitted against the
/// handler's load on all nodes, in the same conditional batch.
#[test]
fn nodes_together_stay_within_a_handlers_concurrency_and_budget() {
    use pulse_ledger::HandlerSchema;
    use pulse_ledger::ledger::{Ledger, LedgerConfig};
    use pulse_ledger::pulse::{
        AttemptSpec, Budget, DispatchConfig, Dispatcher, Executor, JobId, JobRequest, JobState,
        JobStore, LeaseToken, ReportSender,
    };
    use pulse_ledger::storage::{PostgresBackend, Storage};
    use std::sync::{Arc, Barrier};
    struct Silent;
    impl Executor for Silent {
        fn start(&mut self, _: AttemptSpec, _: ReportSender) {}
        fn cancel(&mut self, _: JobId, _: LeaseToken) {}
    }
    let Some(url) = common::postgres_database("node_limits") else {
        return;
    };
    let dir = tempdir("node-limits");
    let open = |name: &str| {
        let pg = PostgresBackend::open(&url).unwrap();
        pg.share().unwrap();
        let ledger = Ledger::open_on(
            Storage::new(pg),
            &dir.join("log.key"),
            LedgerConfig::new(&dir, "limits.example/log"),
        )
        .unwrap();
        let store = JobStore::open(&ledger).unwrap().as_node(name);
        (ledger, Arc::new(store))
    };
    let (_la, a) = open("a");
    // Two at once by concurrency; two at once by budget (4 + 4 of 10).
    let capped = key("capped-h").did;
    let costly = key("costly-h").did;
    let schema = HandlerSchema::new("h", "1.0.0", key("limits-p").did);
    a.set_budget(
        Some(&costly),
        Budget {
            per_hour: Some(10),
            per_day: None,
        },
    )
    .unwrap();
    // Neither node follows the other's notices here, so each queue holds
    // only the jobs enqueued through it: the two nodes choose different
    // jobs, and only the handlers' loads keep them within the limits.
    let (_lb, b) = open("b");
    for (n, node) in [&a, &b].into_iter().enumerate() {
        let items: Vec<_> = (0..10u8)
            .map(|i| {
                let h = if i % 2 == 0 { &capped } else { &costly };
                let req = JobRequest {
                    payload: vec![n as u8, i],
                    max_cost: Some(4),
                    ..Default::default()
                };
                (h.clone(), schema.clone(), req)
            })
            .collect();
        for r in node.enqueue_batch(&items, 1_000) {
            r.unwrap();
        }
    }
    let cap_of = capped.clone();
    let barrier = Arc::new(Barrier::new(2));
    let nodes: Vec<_> = [Arc::clone(&a), Arc::clone(&b)]
        .into_iter()
        .enumerate()
        .map(|(n, store)| {
            let barrier = Arc::clone(&barrier);
            let cap_of = cap_of.clone();
            std::thread::spawn(move || {
                let limits = Box::new(move |h: &pulse_ledger::Did| (*h == cap_of).then_some(2));
                let mut d =
                    Dispatcher::new(store, Silent, DispatchConfig::default(), limits, n as u64);
                let mut started = 0;
                for step in 0..5 {
                    barrier.wait();
                    started += d.step(2_000 + step).unwrap().dispatched;
                }
                started
            })
        })
        .collect();
    let started: usize = nodes.into_iter().map(|t| t.join().unwrap()).sum();
    // A store opened now reads every node's running jobs from the database.
    let (_lc, check) = open("check");
    let running = check.running().unwrap();
    let of = |h: &pulse_ledger::Did| running.iter().filter(|j| &j.handler == h).count();
    assert_eq!(of(&capped), 2, "max_concurrency 2 over both nodes");
    assert_eq!(
        of(&costly),
        2,
        "a budget of 10 covers two reservations of 4"
    );
    assert_eq!(started, 4, "the starts refused at commit were not counted");
    let load = a.handler_load(&costly).unwrap();
    assert_eq!((load.running, load.reserved), (2, 8));
    let nodes_used: std::collections::HashSet<_> = running
        .iter()
        .filter_map(|j| j.live_attempt().and_then(|at| at.node.clone()))
        .collect();
    assert!(!nodes_used.is_empty());
    // Ending an attempt gives its slot back on every node.
    let j = running.iter().find(|j| j.handler == capped).unwrap();
    let lease = j.live_attempt().unwrap().lease;
    b.update(&j.id, 3_000, |job| job.succeed(&lease, vec![], 3_000))
        .unwrap();
    assert_eq!(a.handler_load(&capped).unwrap().running, 1);
    assert_eq!(a.get(&j.id).unwrap().state, JobState::Succeeded);
}

/// Issue 24: handler loads are kept only while nodes share the store. The
/// first node to open it counts the attempts a single server left running;
/// a single server opening it drops the loads, so that the next node
/// counts again what is running then.
#[test]
fn the_first_node_counts_the_attempts_left_running_into_the_loads() {
    use pulse_ledger::HandlerSchema;
    use pulse_ledger::ledger::{Ledger, LedgerConfig};
    use pulse_ledger::pulse::{JobRequest, JobStore, LeaseToken};
    use pulse_ledger::storage::{PostgresBackend, Storage};
    let Some(url) = common::postgres_database("node_load_count") else {
        return;
    };
    let dir = tempdir("node-load-count");
    let open = |shared: bool| {
        let pg = PostgresBackend::open(&url).unwrap();
        if shared {
            pg.share().unwrap();
        }
        let ledger = Ledger::open_on(
            Storage::new(pg),
            &dir.join("log.key"),
            LedgerConfig::new(&dir, "loads.example/log"),
        )
        .unwrap();
        let store = JobStore::open(&ledger).unwrap();
        (ledger, store)
    };
    let h = key("count-h").did;
    let schema = HandlerSchema::new("h", "1.0.0", key("count-p").did);
    let start = |store: &JobStore, n: u8| {
        let req = JobRequest {
            payload: vec![n],
            ..Default::default()
        };
        store.enqueue(&h, &schema, &req, 1_000).unwrap();
        let job = store.dispatch_next(LeaseToken([n; 16]), 2_000).unwrap();
        assert!(job.is_some(), "job {n} started");
    };
    {
        let (_l, single) = open(false);
        start(&single, 1);
        start(&single, 2);
        assert_eq!(single.handler_load(&h).unwrap().running, 0, "not kept");
    }
    {
        let (_l, node) = open(true);
        assert_eq!(node.handler_load(&h).unwrap().running, 2);
        start(&node, 3);
        assert_eq!(node.handler_load(&h).unwrap().running, 3, "kept");
        let (_l2, second) = open(true);
        assert_eq!(
            second.handler_load(&h).unwrap().running,
            3,
            "a second node trusts the count"
        );
    }
    {
        let (_l, single) = open(false);
        assert_eq!(single.handler_load(&h).unwrap().running, 0, "dropped");
        start(&single, 4);
    }
    let (_l, node) = open(true);
    assert_eq!(node.handler_load(&h).unwrap().running, 4, "counted again");
}

/// Every statement reaches `pulse_kv` by its primary key, also the plans
/// a connection made while the table was young and keeps for its life:
/// a read of several keys that scanned the whole table each time made
/// registrations slow down as the log grew (spec/storage.md,
/// "PostgreSQL": plans).
#[test]
fn reads_and_commits_stay_on_the_primary_key_from_a_young_table_on() {
    use pulse_ledger::storage::{PostgresBackend, Storage};
    let Some(url) = common::postgres_database("key_access") else {
        return;
    };
    // The schema's creation, counted apart.
    drop(PostgresBackend::open(&url).unwrap());
    let (seq_before, idx_before, fetched_before) = settled_scans(&url, 0);
    {
        let storage = Storage::new(PostgresBackend::open(&url).unwrap());
        let space = storage.space("young").unwrap();
        // Each round: a commit of 50 new keys, then one read of 50 keys
        // never written (which no cache can answer) and 50 written ones.
        // The first rounds run on a table of a page or two, the last on
        // thousands of rows.
        for round in 0u32..60 {
            storage
                .commit(fifty_new_keys(&storage, &space, round))
                .unwrap();
            let keys: Vec<Vec<u8>> = (0u32..100)
                .map(|i| [(round + i % 2 * 1000).to_be_bytes(), (i / 2).to_be_bytes()].concat())
                .collect();
            let wanted: Vec<(&pulse_ledger::storage::Space, &[u8])> =
                keys.iter().map(|k| (&space, k.as_slice())).collect();
            let got = storage.get_many(&wanted).unwrap();
            for (i, v) in got.iter().enumerate() {
                assert_eq!(v.is_some(), i % 2 == 0, "key {i} of round {round}");
            }
        }
    }
    {
        // A server holding the database alone commits in groups on a
        // connection of its own (the statement prepared once, while the
        // table was small).
        let backend = PostgresBackend::open(&url).unwrap();
        backend.lock_single_server().unwrap();
        let storage = Storage::new(backend);
        let space = storage.space("young").unwrap();
        for round in 60u32..90 {
            let mut batch = fifty_new_keys(&storage, &space, round);
            for i in 0u32..10 {
                batch.remove(
                    &space,
                    [(round - 60).to_be_bytes(), i.to_be_bytes()].concat(),
                );
            }
            storage.write(batch).unwrap().durable().unwrap();
        }
    }
    let (seq, idx, fetched) = settled_scans(&url, idx_before + 60);
    assert!(
        idx >= idx_before + 60,
        "the reads were not counted: {idx} index scans"
    );
    assert_eq!(
        seq - seq_before,
        0,
        "whole-table scans of pulse_kv ({} by its key)",
        idx - idx_before
    );
    // Nor a walk of the whole index: each round fetches its 50 stored
    // keys (and the commit probes its own), not the table so far (4,500
    // rows by the last round, about 180,000 fetched over the rounds).
    assert!(
        fetched - fetched_before < 90 * 200,
        "{} rows fetched by index scans for 90 rounds of 50 keys",
        fetched - fetched_before
    );
}

/// A batch of the 50 keys of `round` (round, then 0 to 49, big-endian).
fn fifty_new_keys(
    storage: &pulse_ledger::storage::Storage,
    space: &pulse_ledger::storage::Space,
    round: u32,
) -> pulse_ledger::storage::WriteBatch {
    let mut batch = storage.batch();
    for i in 0u32..50 {
        batch.insert(
            space,
            [round.to_be_bytes(), i.to_be_bytes()].concat(),
            vec![7; 40],
        );
    }
    batch
}

/// `pulse_kv`'s whole-table scans, index scans and rows fetched by index
/// scans as PostgreSQL counts them, once every other session of the
/// database has ended (a session hands its counts over as it ends, a
/// moment after it leaves `pg_stat_activity`; before PostgreSQL 15 the
/// counts shown may be up to 500 ms old), at least `idx` index scans are
/// counted and the counts held still for a second.
fn settled_scans(url: &str, idx: i64) -> (i64, i64, i64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut last = (-1, -1, -1);
        let mut still = 0;
        loop {
            let others: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            let row = client
                .query_one(
                    "SELECT coalesce(seq_scan, 0), coalesce(idx_scan, 0), coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables WHERE relname = 'pulse_kv'",
                    &[],
                )
                .await
                .unwrap();
            let counts: (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
            still = if others == 0 && counts == last { still + 1 } else { 0 };
            if counts.1 >= idx && still >= 4 {
                return counts;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "PostgreSQL's counts of pulse_kv did not settle within 60 s: {counts:?}, {others} other sessions"
            );
            last = counts;
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    })
}

/// A backend dropped (its runtime shut down, its committing task with it)
/// while batches wait for their commit: each waiter is answered
/// `unavailable` instead of waiting for ever, the batch the task held and
/// the batches queued behind.
#[test]
fn batches_waiting_when_the_committing_task_ends_are_answered() {
    let Some(url) = common::postgres_database("group_commit_task_ends") else {
        return;
    };
    let (storage, space) = grouped_space(&url);
    let put = |key: &[u8]| put_v(&storage, &space, key).unwrap();
    put(b"a").durable().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let locker = holding_key_b(&rt, &url);
    let in_hand = put(b"b");
    waiting_group_commit(&rt, &url);
    let behind = put(b"c");
    drop((space, storage));
    for waiting in [in_hand, behind] {
        let err = waiting.durable().unwrap_err();
        assert!(err.is_unavailable(), "{err}");
    }
    rt.block_on(locker.batch_execute("ROLLBACK")).unwrap();
}

/// A store opened as a server holding the database alone (so writes go
/// through the group commit), and its space "grouped".
fn grouped_space(url: &str) -> (pulse_ledger::storage::Storage, pulse_ledger::storage::Space) {
    let backend = pulse_ledger::storage::PostgresBackend::open(url).unwrap();
    backend.lock_single_server().unwrap();
    let storage = pulse_ledger::storage::Storage::new(backend);
    let space = storage.space("grouped").unwrap();
    (storage, space)
}

/// spec/storage.md, "Group commit": when the database cannot be reached
/// to settle a broken commit, its failure is answered and no later group
/// goes out (each fails `unavailable`) until the broken commit's session
/// is known to be gone; once the database is back, the next group settles
/// it (terminating the session, which never commits) and goes out.
#[test]
fn a_broken_commit_that_cannot_be_settled_holds_back_every_later_group() {
    let Some(url) = common::postgres_database("group_commit_unsettled") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (proxy, proxied) = rt.block_on(Proxy::before(&url));
    let (storage, space) = grouped_space(&proxied);
    let put = |key: &[u8]| put_v(&storage, &space, key);
    put(b"a").unwrap().durable().unwrap();
    let locker = holding_key_b(&rt, &url);
    let broken = put(b"b").unwrap();
    let (pid, _) = waiting_group_commit(&rt, &url);
    // The database is out of reach: every proxied connection cut, new
    // ones refused.
    proxy.cut();
    let err = broken.durable().unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    let (observer, conn) = rt
        .block_on(tokio_postgres::connect(&url, tokio_postgres::NoTls))
        .unwrap();
    rt.spawn(conn);
    let alive = || -> i64 {
        rt.block_on(observer.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        ))
        .unwrap()
        .get(0)
    };
    // Answered without being settled: the database was out of reach.
    assert_eq!(alive(), 1, "the broken commit's session is still there");
    // Nothing goes out meanwhile (refused at once, or unsent).
    let refused = |key: &[u8]| match put(key) {
        Ok(w) => w.durable().is_err(),
        Err(e) => e.is_unavailable(),
    };
    assert!(refused(b"c"));
    assert!(refused(b"d"));
    assert_eq!(alive(), 1);

    // Back: the first group to go out settles the broken one first (a
    // write may be refused once before, its writer not having heard of
    // a failure).
    proxy.restore();
    let landed: &[u8] = [&b"e"[..], &b"f"[..], &b"g"[..]]
        .into_iter()
        .find(|k| matches!(put(k).map(|w| w.durable()), Ok(Ok(()))))
        .expect("no write went out once the database was back");
    assert_eq!(alive(), 0, "settled by terminating its session");
    // The other session commits its b; the broken group's b never lands.
    rt.block_on(locker.batch_execute("COMMIT")).unwrap();
    drop((space, storage));
    let storage = pulse_ledger::storage::Storage::new(
        pulse_ledger::storage::PostgresBackend::open(&url).unwrap(),
    );
    let space = storage.space("grouped").unwrap();
    let stored: Vec<(Vec<u8>, Vec<u8>)> = space.iter().map(|e| e.unwrap()).collect();
    assert_eq!(
        stored,
        vec![
            (b"a".to_vec(), b"v".to_vec()),
            (b"b".to_vec(), b"other".to_vec()),
            (landed.to_vec(), b"v".to_vec()),
        ]
    );
}

/// Writes `key` = "v" into `space` (not waiting for it to be durable).
fn put_v(
    storage: &pulse_ledger::storage::Storage,
    space: &pulse_ledger::storage::Space,
    key: &[u8],
) -> Result<pulse_ledger::storage::Written, pulse_ledger::storage::StorageError> {
    let mut batch = storage.batch();
    batch.insert(space, key, b"v");
    storage.write(batch)
}

/// A session of its own that inserts key b into the space "grouped" and
/// does not commit: a group commit that writes b waits for it.
fn holding_key_b(rt: &tokio::runtime::Runtime, url: &str) -> tokio_postgres::Client {
    let (locker, conn) = rt
        .block_on(tokio_postgres::connect(url, tokio_postgres::NoTls))
        .unwrap();
    rt.spawn(conn);
    rt.block_on(locker.batch_execute("BEGIN")).unwrap();
    rt.block_on(locker.execute(
        "INSERT INTO pulse_kv (space, key, value) VALUES ((SELECT id FROM pulse_spaces WHERE name = 'grouped'), $1, $2)",
        &[&&b"b"[..], &&b"other"[..]],
    ))
    .unwrap();
    locker
}

/// The group commit's session once it waits on a lock: its process ID
/// and client port. Read on a session of its own, outside any transaction
/// (inside one, pg_stat_activity is read once and kept).
fn waiting_group_commit(rt: &tokio::runtime::Runtime, url: &str) -> (i32, i32) {
    let (observer, conn) = rt
        .block_on(tokio_postgres::connect(url, tokio_postgres::NoTls))
        .unwrap();
    rt.spawn(conn);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let row = rt
            .block_on(observer.query_opt(
                "SELECT pid, client_port FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE 'WITH deleted AS%'",
                &[],
            ))
            .unwrap();
        if let Some(row) = row {
            return (row.get(0), row.get(1));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the group commit never waited on the other session"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A server holding the database alone commits its unconditional batches
/// in groups on a connection of their own (src/storage/postgres/
/// group_commit.rs), each group sent once the one before is answered. When
/// a group fails (here an operator cancels it), the batches queued behind
/// it fail too without being sent, the next write is refused (its writer
/// may not have heard of the failure), and the one after commits.
#[test]
fn batches_queued_behind_a_failed_group_commit_write_nothing() {
    use pulse_ledger::storage::{PostgresBackend, Storage};
    let Some(url) = common::postgres_database("group_commit_failure") else {
        return;
    };
    let (storage, space) = grouped_space(&url);
    let put = |key: &[u8]| put_v(&storage, &space, key);
    // Written, not yet durable: a scan sees it at once.
    let first = put(b"a").unwrap();
    let scanned: Vec<Vec<u8>> = space.iter().map(|e| e.unwrap().0).collect();
    assert_eq!(scanned, vec![b"a".to_vec()]);
    first.durable().unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Another session inserts key b and does not commit: the group that
    // writes b waits for it.
    let locker = holding_key_b(&rt, &url);
    let cancelled = put(b"b").unwrap();
    let (pid, _) = waiting_group_commit(&rt, &url);
    // Queued behind the group in flight; this server's reads see both.
    // An empty batch waits its turn too: its writer may answer from what
    // the batches before it wrote (a repeated idempotency key).
    let behind = put(b"c").unwrap();
    let empty = storage.write(storage.batch()).unwrap();
    assert_eq!(space.get(b"b").unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(space.get(b"c").unwrap().as_deref(), Some(&b"v"[..]));
    rt.block_on(locker.query_one("SELECT pg_cancel_backend($1)", &[&pid]))
        .unwrap();
    let err = cancelled.durable().unwrap_err();
    assert!(err.to_string().contains("57014"), "{err}");
    for waiting in [behind, empty] {
        let err = waiting.durable().unwrap_err();
        assert!(
            err.to_string().contains("a commit queued before it failed"),
            "{err}"
        );
    }
    rt.block_on(locker.batch_execute("ROLLBACK")).unwrap();
    assert_eq!(space.get(b"b").unwrap(), None);
    assert_eq!(space.get(b"c").unwrap(), None);
    // The next write is refused, and nothing of it written; the one after
    // commits (on the same connection: a cancel leaves it open).
    let err = put(b"d").err().unwrap();
    assert!(
        err.to_string().contains("a commit queued before it failed"),
        "{err}"
    );
    put(b"e").unwrap().durable().unwrap();
    drop((space, storage));
    let storage = Storage::new(PostgresBackend::open(&url).unwrap());
    let space = storage.space("grouped").unwrap();
    let stored: Vec<Vec<u8>> = space.iter().map(|e| e.unwrap().0).collect();
    assert_eq!(stored, vec![b"a".to_vec(), b"e".to_vec()]);
}

/// spec/storage.md, "Group commit on one connection": a group whose
/// connection broke while PostgreSQL ran it may still commit, since its
/// session outlives the socket. Its failure is answered only once that
/// session is gone (terminated by the server through another
/// connection), so a batch refused is never committed later, behind the
/// writer's back; the batches behind it fail unsent, and writes go on
/// on a new connection.
#[test]
fn a_group_commit_whose_connection_broke_is_settled_before_its_failure_is_answered() {
    use pulse_ledger::storage::{PostgresBackend, Storage};
    let Some(url) = common::postgres_database("group_commit_broken") else {
        return;
    };
    // Tasks of the proxy run while this thread waits on a commit.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (proxy, proxied) = rt.block_on(Proxy::before(&url));
    let (storage, space) = grouped_space(&proxied);
    let put = |key: &[u8]| put_v(&storage, &space, key);
    put(b"a").unwrap().durable().unwrap();

    // Another session holds key b: the group that writes b waits for it.
    let locker = holding_key_b(&rt, &url);
    let broken = put(b"b").unwrap();
    let (pid, port) = waiting_group_commit(&rt, &url);
    let behind = put(b"c").unwrap();
    proxy.cut_one(u16::try_from(port).unwrap());

    let err = broken.durable().unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    // Answered only once the session that ran it is gone (the locker's
    // first look at pg_stat_activity in its transaction: it is current).
    let sessions: i64 = rt
        .block_on(locker.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        ))
        .unwrap()
        .get(0);
    assert_eq!(
        sessions, 0,
        "the broken commit's session outlived its answer"
    );
    let err = behind.durable().unwrap_err();
    assert!(
        err.to_string().contains("a commit queued before it failed"),
        "{err}"
    );
    // The other session commits its b: the refused batch's b never lands
    // on top of it.
    rt.block_on(locker.batch_execute("COMMIT")).unwrap();
    let b: Vec<u8> = rt
        .block_on(locker.query_one("SELECT value FROM pulse_kv WHERE key = $1", &[&&b"b"[..]]))
        .unwrap()
        .get(0);
    assert_eq!(b, b"other");
    // The next write is refused (its writer may not have heard); the one
    // after goes out on a new connection.
    assert!(put(b"d").is_err());
    put(b"e").unwrap().durable().unwrap();
    drop((space, storage));
    let storage = Storage::new(PostgresBackend::open(&url).unwrap());
    let space = storage.space("grouped").unwrap();
    let stored: Vec<(Vec<u8>, Vec<u8>)> = space.iter().map(|e| e.unwrap()).collect();
    assert_eq!(
        stored,
        vec![
            (b"a".to_vec(), b"v".to_vec()),
            (b"b".to_vec(), b"other".to_vec()),
            (b"e".to_vec(), b"v".to_vec()),
        ]
    );
}

/// A store written when every record was in `jobs` and each job had a
/// state-index entry (spec/pulse.md, "Live and finished records apart"),
/// opened by two nodes at once: the finished records are moved once,
/// every live job is in both nodes' queues, and the index is emptied.
#[test]
fn nodes_opening_an_old_store_together_move_its_finished_records_once() {
    use pulse_ledger::HandlerSchema;
    use pulse_ledger::ledger::{Ledger, LedgerConfig};
    use pulse_ledger::pulse::{CancelReason, JobId, JobRequest, JobStore, LeaseToken};
    use pulse_ledger::storage::{PostgresBackend, Storage};
    use std::sync::{Arc, Barrier};
    let Some(url) = common::postgres_database("finished_apart_nodes") else {
        return;
    };
    let dir = tempdir("finished-apart-nodes");
    let open = |shared: bool| {
        let pg = PostgresBackend::open(&url).unwrap();
        if shared {
            pg.share().unwrap();
        }
        let storage = Storage::new(pg);
        let ledger = Ledger::open_on(
            storage.clone(),
            &dir.join("log.key"),
            LedgerConfig::new(&dir, "apart.example/log"),
        )
        .unwrap();
        let store = JobStore::open(&ledger).unwrap();
        (ledger, store, storage)
    };
    let h = key("apart-h").did;
    let schema = HandlerSchema::new("h", "1.0.0", key("apart-p").did);
    let cancelled: Vec<Vec<u8>> = {
        let (_ledger, store, storage) = open(false);
        let items: Vec<_> = (0..25u8)
            .map(|i| {
                let req = JobRequest {
                    payload: vec![i],
                    ..Default::default()
                };
                (h.clone(), schema.clone(), req)
            })
            .collect();
        let ids: Vec<JobId> = store
            .enqueue_batch(&items, 1_000)
            .into_iter()
            .map(|r| r.unwrap().0.id)
            .collect();
        for n in 0..20u8 {
            let job = store.dispatch_next(LeaseToken([n; 16]), 2_000).unwrap();
            job.expect("a job started");
        }
        for id in &ids[..5] {
            store
                .update(id, 3_000, |j| {
                    j.cancel(CancelReason::Requested, 3_000).map(|_| ())
                })
                .unwrap();
        }
        // As an earlier version left it: every record in jobs, a state
        // entry per job, no marker.
        let [jobs, done, by_state, meta] =
            ["jobs", "job_done", "job_by_state", "job_meta"].map(|n| storage.space(n).unwrap());
        assert_eq!(done.iter().count(), 5);
        assert_eq!(jobs.iter().count(), 20);
        let mut batch = storage.batch();
        for kv in done.iter() {
            let (key, record) = kv.unwrap();
            batch.remove(&done, &key);
            batch.insert(&jobs, &key[1..], record);
            batch.insert(&by_state, &key, b"");
        }
        for id in &ids[5..] {
            batch.insert(&by_state, [&[0u8][..], &id.0].concat(), b"");
        }
        batch.remove(&meta, b"finished_apart");
        storage.commit(batch).unwrap();
        ids[..5]
            .iter()
            .map(|id| [&[6u8][..], &id.0].concat())
            .collect()
    };
    let barrier = Arc::new(Barrier::new(2));
    let opened: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let barrier = Arc::clone(&barrier);
                let open = &open;
                scope.spawn(move || {
                    barrier.wait();
                    open(true)
                })
            })
            .collect();
        handles.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for (_, store, _) in &opened {
        let (ready, _, in_flight, _) = store.queue_sizes();
        assert_eq!((ready, in_flight), (5, 15), "a node's queues miss jobs");
    }
    let storage = &opened[0].2;
    let [jobs, done, by_state, meta] =
        ["jobs", "job_done", "job_by_state", "job_meta"].map(|n| storage.space(n).unwrap());
    let moved: Vec<Vec<u8>> = done.iter().map(|kv| kv.unwrap().0).collect();
    assert_eq!(
        moved, cancelled,
        "the finished records were not moved once each"
    );
    assert_eq!(jobs.iter().count(), 20);
    assert_eq!(by_state.iter().count(), 0, "the state index was kept");
    assert!(meta.get(b"finished_apart").unwrap().is_some());
}
