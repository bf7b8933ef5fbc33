//! Operating a server (issue 20): health endpoints on the metrics
//! listener, for load balancers, Kubernetes probes and systemd.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Serve, tempdir};

/// `/healthz` answers while the process runs; `/readyz` answers 200 once
/// the dispatcher steps and storage can be written, and 503 with the
/// reason when it cannot (here: less free space than the reserve).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_endpoints_say_why() {
    let dir = tempdir("operating-health");
    let server = Serve::start(&["--metrics-listen", "127.0.0.1:0"], &dir.join("ok"));
    let alive = server.http_get("/healthz").await;
    assert!(alive.starts_with("HTTP/1.1 200"), "{alive}");
    assert!(alive.contains(r#"{"status":"alive"}"#), "{alive}");
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = server.http_get("/readyz").await;
        if ready.starts_with("HTTP/1.1 200") {
            assert!(ready.contains(r#"{"status":"ready"}"#), "{ready}");
            assert!(ready.contains("content-type: application/json"), "{ready}");
            break;
        }
        assert!(Instant::now() < until, "never ready: {ready}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let other = server.http_get("/nothing").await;
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
    server.stop();

    // A reserve larger than any disk: alive, not ready, and why.
    let full = Serve::start(
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--min-free-mb",
            "1000000000",
        ],
        &dir.join("full"),
    );
    assert!(full.http_get("/healthz").await.starts_with("HTTP/1.1 200"));
    let ready = full.http_get("/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    let body = ready.split("\r\n\r\n").nth(1).unwrap();
    let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(v["status"], "not ready");
    assert!(
        v["reasons"][0].as_str().unwrap().contains("disk_full"),
        "{v}"
    );
    full.stop();
}

/// `budget set` with no limit was taken as "no limits" and removed them
/// silently (issue 20). Now a limit is required, a limit not given keeps
/// its value, and `budget clear` is how limits go.
#[test]
fn budget_set_needs_a_limit_keeps_the_other_and_clear_removes_them() {
    let dir = tempdir("operating-budget");
    let server = Serve::start(&[], &dir.join("data"));
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
            .args(args)
            .args(["--server", &server.url])
            .env_remove("PULSE_LEDGER_TOKEN")
            .env_remove("PULSE_LEDGER_AS_KEY")
            .output()
            .unwrap()
    };
    let show = || {
        let o = cli(&["budget", "show", "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (
            v["per_hour"].as_u64().unwrap(),
            v["per_day"].as_u64().unwrap(),
        )
    };
    let o = cli(&["budget", "set"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--per-hour"));
    assert!(
        cli(&["budget", "set", "--per-hour", "100"])
            .status
            .success()
    );
    assert!(
        cli(&["budget", "set", "--per-day", "5000"])
            .status
            .success()
    );
    assert_eq!(show(), (100, 5000), "the hour limit was kept");
    assert!(cli(&["budget", "clear"]).status.success());
    assert_eq!(show(), (0, 0));
    server.stop();
}

/// `job submit --delay` and `--run-at` (issue 20, item 2): the job is
/// stored with its run time and waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_can_be_submitted_to_run_later() {
    use pulse_ledger::api::proto;
    let dir = tempdir("operating-later");
    let server = Serve::start(&[], &dir.join("data"));
    let mut reg = proto::registry_client::RegistryClient::connect(server.url.clone())
        .await
        .unwrap();
    let (p, h) = (common::key("later-plugin"), common::key("later-handler"));
    for a in [
        common::plugin_register(&p, "later"),
        common::handler_register(&h, "echo", &p.did),
    ] {
        reg.submit(proto::SubmitRequest {
            envelope: a.envelope().to_vec(),
        })
        .await
        .unwrap();
    }
    let submit = |extra: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
            .args(["job", "submit", &h.did.to_string(), "--server", &server.url])
            .args(extra)
            .env_remove("PULSE_LEDGER_TOKEN")
            .env_remove("PULSE_LEDGER_AS_KEY")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        hex::decode(String::from_utf8(o.stdout).unwrap().trim()).unwrap()
    };
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let delayed = submit(&["--delay", "1h"]);
    let at = submit(&["--run-at", "2099-01-01T00:00:00Z"]);
    let now = submit(&[]);
    let mut jobs = proto::jobs_client::JobsClient::connect(server.url.clone())
        .await
        .unwrap();
    let j = common::job(&mut jobs, &delayed).await;
    assert!(
        j.run_at_ms >= before + 3_600_000 && j.run_at_ms < before + 3_700_000,
        "{}",
        j.run_at_ms
    );
    assert_eq!(
        common::job(&mut jobs, &at).await.run_at_ms,
        4_070_908_800_000
    );
    // No plugin is connected: the job due now is held for it; the later
    // ones wait for their time, queued.
    let until = Instant::now() + Duration::from_secs(30);
    while common::job(&mut jobs, &now).await.state != "held" {
        assert!(Instant::now() < until);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(common::job(&mut jobs, &delayed).await.state, "queued");
    assert_eq!(common::job(&mut jobs, &at).await.state, "queued");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
        .args(["job", "submit", &h.did.to_string(), "--delay", "soon"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    server.stop();
}
