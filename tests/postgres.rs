//! `serve --store postgres://…` on a real PostgreSQL server
//! (`PULSE_TEST_POSTGRES`; .ci/run starts one): the schema migrated by the
//! binary, registrations and jobs stored in the database and still there
//! after the server is killed, one server per database, and `store
//! migrate` for operators.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

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
    assert!(out.contains("schema migrated from version 0 to 1"), "{out}");
    let (code, out, _) = pulse(&["store", "migrate", "--store", &url, "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((v["from"].as_i64(), v["to"].as_i64()), (Some(1), Some(1)));
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
