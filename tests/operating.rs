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

/// A plugin key (by `label`) and a config in `dir` that spawns the test
/// plugin with it (events in `dir/events.log`); the `serve` command with
/// that config and `args`, on `dir/data`, for the caller to adjust and
/// [`Serve::spawn`].
fn with_test_plugin(
    dir: &std::path::Path,
    label: &str,
    args: &[&str],
) -> (std::process::Command, common::Key, std::path::PathBuf) {
    let events = dir.join("events.log");
    let p = common::key(label);
    let pkey = common::key_file(dir, &p);
    let config = dir.join("pulse.toml");
    let table = common::plugin_table(
        "tools",
        &["--key".into(), pkey.display().to_string()],
        &events,
    );
    std::fs::write(&config, format!("plugin_wait_secs = 2\n{table}")).unwrap();
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    (Serve::command(&all, &dir.join("data")), p, events)
}

/// Registers a plugin and handlers named `names` on it; the handlers'
/// keys, in order.
async fn register(url: &str, p: &common::Key, names: &[&str]) -> Vec<common::Key> {
    use pulse_ledger::api::proto;
    let mut reg = proto::registry_client::RegistryClient::connect(url.to_owned())
        .await
        .unwrap();
    let mut statements = vec![common::plugin_register(p, "tools")];
    let keys: Vec<common::Key> = names
        .iter()
        .map(|n| common::key(&format!("admin-{n}")))
        .collect();
    for (k, n) in keys.iter().zip(names) {
        statements.push(common::handler_register(k, n, &p.did));
    }
    for a in statements {
        reg.submit(proto::SubmitRequest {
            envelope: a.envelope().to_vec(),
        })
        .await
        .unwrap();
    }
    keys
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Job admin (issue 20, item 1) through the real binary: `job list`
/// shows every state newest first, filters by handler name or DID, state
/// and time, and pages; `job retry` runs a dead or cancelled job again as
/// the same job with a new series of attempts; a bulk cancel needs --yes
/// and prints its count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_listed_retried_and_cancelled_in_bulk() {
    use pulse_ledger::api::proto;
    let dir = tempdir("operating-admin");
    let (cmd, p, _) = with_test_plugin(&dir, "admin-plugin", &[]);
    let server = Serve::spawn(cmd, false);
    let url = server.url.clone();
    let keys = register(&url, &p, &["echo", "fail"]).await;
    let (echo, fail) = (keys[0].did.to_string(), keys[1].did.to_string());
    let cli = |args: &[&str]| common::cli_at(&url, args);
    let submit = |args: &[&str]| {
        let (code, out, err) = cli(&[&["job", "submit"], args].concat());
        assert_eq!(code, 0, "{err}");
        out.trim().to_owned()
    };
    let mut jobs = proto::jobs_client::JobsClient::connect(url.clone())
        .await
        .unwrap();

    // One job succeeds, one dies after its two attempts, three wait.
    let ok = submit(&[&echo, "--payload", "-"]);
    let ok_id = hex::decode(&ok).unwrap();
    common::finished(&mut jobs, &ok_id, 30).await;
    let payload = dir.join("retryable");
    std::fs::write(&payload, "retryable").unwrap();
    let dead = submit(&[
        &fail,
        "--payload",
        payload.to_str().unwrap(),
        "--max-attempts",
        "2",
    ]);
    let dead_id = hex::decode(&dead).unwrap();
    let j = common::finished(&mut jobs, &dead_id, 60).await;
    assert_eq!(
        (j.state.as_str(), j.attempts),
        ("dead", 2),
        "{}",
        j.last_error
    );
    let waiting: Vec<String> = (0..3).map(|_| submit(&[&echo, "--delay", "1h"])).collect();

    // Every state by default, newest first.
    let (code, out, err) = cli(&["job", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let listed = json_lines(&out);
    let ids: Vec<&str> = listed.iter().map(|j| j["id"].as_str().unwrap()).collect();
    let mut want: Vec<&str> = vec![&ok, &dead];
    want.extend(waiting.iter().map(String::as_str));
    want.reverse();
    assert_eq!(ids, want);
    let states: Vec<&str> = listed
        .iter()
        .map(|j| j["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["queued", "queued", "queued", "dead", "succeeded"]);
    // By handler name or DID, by state, since a time, oldest first.
    let (_, by_name, _) = cli(&["job", "list", "--handler", "fail", "--json"]);
    let (_, by_did, _) = cli(&["job", "list", "--handler", &fail, "--json"]);
    assert_eq!(by_name, by_did);
    assert_eq!(json_lines(&by_name).len(), 1);
    let (_, succeeded, _) = cli(&["job", "list", "--state", "succeeded"]);
    assert!(
        succeeded.starts_with(&ok) && succeeded.contains(" succeeded "),
        "{succeeded}"
    );
    let (_, later, _) = cli(&["job", "list", "--since", "2099-01-01T00:00:00Z"]);
    assert_eq!(later, "");
    let (_, recent, _) = cli(&["job", "list", "--since", "1h", "--oldest-first", "--json"]);
    assert_eq!(json_lines(&recent)[0]["id"], ok.as_str());
    let (code, _, err) = cli(&["job", "list", "--handler", "nobody"]);
    assert_eq!(code, 2);
    assert!(err.contains("no handler is named \"nobody\""), "{err}");
    // Paging: one page and the token of the next on stderr.
    let (_, page, err) = cli(&["job", "list", "--page-size", "2"]);
    assert_eq!(page.lines().count(), 2);
    let token = err.trim().strip_prefix("next page: --page-token ").unwrap();
    let (_, rest, err) = cli(&["job", "list", "--page-size", "2", "--page-token", token]);
    assert!(rest.starts_with(&waiting[0]), "{rest}");
    assert!(err.contains("--page-token"), "a third page follows: {err}");
    let (_, all, _) = cli(&["job", "list", "--page-size", "2", "--all"]);
    assert_eq!(all.lines().count(), 5);

    // A dead job runs again as the same job, with a new series.
    let (code, out, err) = cli(&["job", "retry", &dead, "--json"]);
    assert_eq!(code, 0, "{err}");
    let retried: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (retried["id"].as_str(), retried["state"].as_str()),
        (Some(dead.as_str()), Some("queued"))
    );
    assert_eq!(retried["series_start"], 2);
    let j = common::finished(&mut jobs, &dead_id, 60).await;
    assert_eq!(
        (j.state.as_str(), j.attempts, j.series_start),
        ("dead", 4, 2)
    );
    let (_, line, _) = cli(&["job", "get", &dead]);
    assert!(line.contains(" attempts 2/2 (retried after 2) "), "{line}");
    // A succeeded job is not retried: it has its result.
    let (code, _, err) = cli(&["job", "retry", &ok]);
    assert_eq!(code, 1);
    assert!(err.contains("wrong_state"), "{err}");

    // Bulk cancel: refused without --yes, then counted.
    let (code, _, err) = cli(&["job", "cancel", "--handler", "echo"]);
    assert_eq!(code, 2);
    assert!(err.contains("--yes"), "{err}");
    let (code, _, err) = cli(&["job", "cancel", "--state", "succeeded", "--yes"]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid_state"), "{err}");
    let (code, out, err) = cli(&[
        "job",
        "cancel",
        "--handler",
        "echo",
        "--state",
        "queued",
        "--yes",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "cancelled 3 jobs");
    let (_, out, _) = cli(&["job", "cancel", "--handler", "echo", "--yes"]);
    assert_eq!(out.trim(), "cancelled 0 jobs");
    let (_, cancelled, _) = cli(&["job", "list", "--state", "cancelled", "--json"]);
    assert_eq!(json_lines(&cancelled).len(), 3);
    // A cancelled job retried runs now (its delay is over) and succeeds.
    let (code, _, err) = cli(&["job", "retry", &waiting[1], "--wait"]);
    assert_eq!(code, 0, "{err}");
    let j = common::job(&mut jobs, &hex::decode(&waiting[1]).unwrap()).await;
    assert_eq!(j.state, "succeeded");
    server.stop();
}

/// Schedules through the real binary (issue 20, item 2): created with
/// --every or --cron, they enqueue ordinary jobs that run; listed, shown
/// with their next occurrences, paused, resumed and deleted; they survive
/// a restart without firing an occurrence twice; bad patterns and zones
/// are refused with the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_enqueue_jobs_and_survive_restarts() {
    let dir = tempdir("operating-schedules");
    let p = common::key("sched-plugin");
    let start = || Serve::spawn(with_test_plugin(&dir, "sched-plugin", &[]).0, false);
    let server = start();
    let keys = register(&server.url, &p, &["echo"]).await;
    let echo = keys[0].did.to_string();
    let url = server.url.clone();
    let cli = |args: &[&str]| common::cli_at(&url, args);

    // Refused with the rule, and nothing created.
    for (args, rule) in [
        (vec!["--cron", "61 * * * *"], "invalid_schedule"),
        (
            vec!["--cron", "* * * * *", "--timezone", "Mars/Olympus"],
            "invalid_schedule",
        ),
        (vec!["--every", "10ms"], "invalid_schedule"),
        (
            vec!["--every", "1s", "--priority", "12"],
            "invalid_priority",
        ),
    ] {
        let (code, _, err) =
            cli(&[&["schedule", "create", "--handler", "echo"], &args[..]].concat());
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(rule), "{args:?}: {err}");
    }
    let (code, _, err) = cli(&["schedule", "create", "--handler", "echo"]);
    assert_eq!(code, 2, "--cron or --every is required: {err}");
    let (_, none, _) = cli(&["schedule", "list"]);
    assert_eq!(none, "");

    // Every second, by name; and a cron pattern with seconds, by DID.
    let (code, out, err) = cli(&["schedule", "create", "--handler", "echo", "--every", "1s"]);
    assert_eq!(code, 0, "{err}");
    let every = out.trim().to_owned();
    let (code, out, err) = cli(&[
        "schedule",
        "create",
        "--handler",
        &echo,
        "--cron",
        "*/2 * * * * *",
        "--timezone",
        "Europe/Paris",
        "--overlap",
        "allow",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let cron: serde_json::Value = serde_json::from_str(&out).unwrap();
    let cron_id = cron["id"].as_str().unwrap().to_owned();
    assert_eq!(cron["upcoming_ms"].as_array().unwrap().len(), 5);
    assert_eq!(cron["overlap"], "allow");
    // Jobs come, and run.
    let fired = |id: &str| {
        let (_, out, _) = cli(&["schedule", "show", id, "--json"]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["fired"]
            .as_u64()
            .unwrap()
    };
    let until = Instant::now() + Duration::from_secs(30);
    while fired(&every) < 2 || fired(&cron_id) < 2 {
        assert!(Instant::now() < until, "schedules did not fire");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, out, _) = cli(&["job", "list", "--state", "succeeded", "--json"]);
    let keys: Vec<String> = json_lines(&out)
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(keys.len() >= 2, "scheduled jobs ran: {out}");
    let (_, shown, _) = cli(&["schedule", "show", &every]);
    assert!(
        shown.starts_with(&format!("{every} active every 1s ")),
        "{shown}"
    );
    assert_eq!(
        shown.lines().filter(|l| l.starts_with("  next: ")).count(),
        5
    );

    // Paused: fires nothing; resumed: fires again.
    let (code, out, _) = cli(&["schedule", "pause", &every]);
    assert_eq!(code, 0);
    assert!(out.contains(" paused "), "{out}");
    let paused_at = fired(&every);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(fired(&every), paused_at, "a paused schedule fired");

    // A restart: both schedules are back; the paused one stays paused.
    server.stop();
    let server = start();
    let url = server.url.clone();
    let cli = |args: &[&str]| common::cli_at(&url, args);
    let (_, listed, _) = cli(&["schedule", "list", "--handler", "echo", "--json"]);
    assert_eq!(json_lines(&listed).len(), 2);
    let (_, out, _) = cli(&["schedule", "resume", &every]);
    assert!(out.contains(" active "), "{out}");
    let fired = |id: &str| {
        let (_, out, _) = cli(&["schedule", "show", id, "--json"]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["fired"]
            .as_u64()
            .unwrap()
    };
    let until = Instant::now() + Duration::from_secs(30);
    while fired(&every) < paused_at + 2 {
        assert!(Instant::now() < until, "a resumed schedule did not fire");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Deleted: gone; its jobs stay. Every occurrence made one job: the
    // idempotency keys of all jobs are distinct.
    let (code, _, _) = cli(&["schedule", "delete", &cron_id]);
    assert_eq!(code, 0);
    let (code, _, err) = cli(&["schedule", "show", &cron_id]);
    assert_eq!(code, 1);
    assert!(err.contains("not_found"), "{err}");
    let mut jobs = pulse_ledger::api::proto::jobs_client::JobsClient::connect(url.clone())
        .await
        .unwrap();
    let all = jobs
        .list_jobs(pulse_ledger::api::proto::ListJobsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let mut idem: Vec<&str> = all.iter().map(|j| j.idempotency_key.as_str()).collect();
    assert!(idem.iter().all(|k| k.starts_with("schedule:")), "{idem:?}");
    let n = idem.len();
    idem.sort_unstable();
    idem.dedup();
    assert_eq!(idem.len(), n, "an occurrence fired twice");
    server.stop();
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

async fn scrape(server: &Serve) -> prometheus_parse::Scrape {
    let response = server.http_get("/metrics").await;
    let body = response.split("\r\n\r\n").nth(1).unwrap().to_owned();
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// Job events in the log and job metrics on /metrics (issue 20, items 3
/// and 4): one info line per transition and per plugin session opened and
/// closed; the job families parsed by a Prometheus parser, with the
/// counts of what the test did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_events_are_logged_and_job_metrics_scraped() {
    use pulse_ledger::api::proto;
    let dir = tempdir("operating-metrics");
    let (mut cmd, p, _) =
        with_test_plugin(&dir, "metrics-plugin", &["--metrics-listen", "127.0.0.1:0"]);
    let log = dir.join("serve.log");
    cmd.env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap());
    let server = Serve::spawn(cmd, true);
    let keys = register(&server.url, &p, &["echo", "fail"]).await;
    // A handler that runs one job at a time, for a queue that stays deep.
    let slow = common::key("metrics-sleep");
    let mut reg = proto::registry_client::RegistryClient::connect(server.url.clone())
        .await
        .unwrap();
    let a = common::handler_register_with(&slow, "sleep", &p.did, |s| s.max_concurrency = Some(1));
    reg.submit(proto::SubmitRequest {
        envelope: a.envelope().to_vec(),
    })
    .await
    .unwrap();
    let mut jobs = proto::jobs_client::JobsClient::connect(server.url.clone())
        .await
        .unwrap();
    let enqueue = |h: &common::Key, payload: &str| proto::EnqueueRequest {
        handler: h.did.to_string(),
        payload: payload.as_bytes().to_vec(),
        ..Default::default()
    };
    let mut ids = Vec::new();
    for (h, payload) in [
        (&keys[0], "a"),
        (&keys[0], "b"),
        (&keys[0], "c"),
        (&keys[1], "fatal"),
    ] {
        let j = jobs
            .enqueue(enqueue(h, payload))
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        ids.push(j.id);
    }
    for id in &ids {
        common::finished(&mut jobs, id, 30).await;
    }
    for _ in 0..3 {
        jobs.enqueue(enqueue(&slow, "3000")).await.unwrap();
    }
    // The slow handler's queue: one runs, two wait, ready. The running
    // one holds its plugin slot once its start is durable and sent, a
    // moment after the queues show it.
    let until = Instant::now() + Duration::from_secs(30);
    let slow_did = slow.did.to_string();
    let m = loop {
        let m = scrape(&server).await;
        if sample(&m, "pulse_ledger_queue_depth", &[("handler", &slow_did)]) == Some(2.0)
            && sample(&m, "pulse_ledger_plugin_slots", &[("kind", "running")]) == Some(1.0)
        {
            break m;
        }
        assert!(
            Instant::now() < until,
            "the slow queue never showed 2 ready jobs and 1 running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let get = |name: &str, labels: &[(&str, &str)]| {
        sample(&m, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?}"))
    };
    assert_eq!(get("pulse_ledger_jobs_enqueued_total", &[]), 7.0);
    assert_eq!(get("pulse_ledger_attempts_started_total", &[]), 5.0);
    assert_eq!(
        get(
            "pulse_ledger_attempts_ended_total",
            &[("outcome", "succeeded")]
        ),
        3.0
    );
    assert_eq!(
        get(
            "pulse_ledger_attempts_ended_total",
            &[("outcome", "failed")]
        ),
        1.0
    );
    assert_eq!(
        get(
            "pulse_ledger_attempts_ended_total",
            &[("outcome", "crashed")]
        ),
        0.0
    );
    assert_eq!(
        get(
            "pulse_ledger_jobs_finished_total",
            &[("state", "dead"), ("reason", "non_retryable")]
        ),
        1.0
    );
    assert_eq!(
        get(
            "pulse_ledger_jobs_finished_total",
            &[("state", "succeeded")]
        ),
        3.0
    );
    assert_eq!(get("pulse_ledger_jobs", &[("state", "running")]), 1.0);
    assert_eq!(get("pulse_ledger_jobs", &[("state", "ready")]), 2.0);
    assert_eq!(
        get("pulse_ledger_job_wait_seconds", &[]),
        5.0,
        "one start each"
    );
    assert_eq!(get("pulse_ledger_attempt_seconds", &[]), 4.0);
    assert!(get("pulse_ledger_dispatcher_step_seconds", &[]) > 0.0);
    assert!(get("pulse_ledger_job_commit_seconds", &[]) >= 7.0);
    assert_eq!(
        get("pulse_ledger_plugin_sessions", &[("connection", "spawned")]),
        1.0
    );
    assert_eq!(
        get("pulse_ledger_plugin_slots", &[("kind", "running")]),
        1.0
    );
    assert_eq!(
        get(
            "pulse_ledger_schedule_occurrences_total",
            &[("outcome", "fired")]
        ),
        0.0
    );
    assert_eq!(
        get("pulse_ledger_budget_refusals_total", &[("action", "held")]),
        0.0
    );
    assert!(m.docs.contains_key("pulse_ledger_job_wait_seconds"));
    server.stop();

    let text = std::fs::read_to_string(&log).unwrap();
    for id in &ids[..3] {
        let id = hex::encode(id);
        for step in [
            "job new -> queued",
            "job queued -> running",
            "job running -> succeeded",
        ] {
            assert!(
                text.lines().any(|l| l.contains(step) && l.contains(&id)),
                "no {step:?} line for {id}:\n{text}"
            );
        }
    }
    let dead = hex::encode(&ids[3]);
    let line = text
        .lines()
        .find(|l| l.contains("job running -> dead") && l.contains(&dead))
        .unwrap_or_else(|| panic!("no dead line:\n{text}"));
    assert!(
        line.contains("non_retryable") && line.contains(" INFO "),
        "{line}"
    );
    assert!(line.contains("failed on purpose (fatal)"), "{line}");
    assert!(text.contains("plugin session open"), "{text}");
    assert!(text.contains("plugin session closed"), "{text}");
}

mod traces {
    //! Traces (issue 20, item 6): a small OTLP receiver, started here,
    //! gets the server's spans; the links from the caller's trace context
    //! to the Enqueue call, to the attempt, and on to the plugin hold.

    use std::sync::{Arc, Mutex};

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::trace::v1::Span;
    use pulse_ledger::api::proto;

    use super::*;

    #[derive(Clone, Default)]
    struct Receiver(Arc<Mutex<Vec<Span>>>);

    #[tonic::async_trait]
    impl TraceService for Receiver {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let spans = request
                .into_inner()
                .resource_spans
                .into_iter()
                .flat_map(|r| r.scope_spans)
                .flat_map(|s| s.spans);
            self.0.lock().unwrap().extend(spans);
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    fn attribute(span: &Span, key: &str) -> Option<String> {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(i) => i.to_string(),
                other => format!("{other:?}"),
            })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_link_the_caller_the_enqueue_the_attempt_and_the_plugin() {
        let receiver = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let otlp = format!("http://{}", listener.local_addr().unwrap());
        let service = TraceServiceServer::new(receiver.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );

        let dir = tempdir("operating-traces");
        let (cmd, p, events) = with_test_plugin(&dir, "traces-plugin", &["--otlp-endpoint", &otlp]);
        let server = Serve::spawn(cmd, false);
        let keys = register(&server.url, &p, &["echo"]).await;
        let mut jobs = proto::jobs_client::JobsClient::connect(server.url.clone())
            .await
            .unwrap();
        // The caller is in a trace of its own.
        let (caller_trace, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
        let mut request = tonic::Request::new(proto::EnqueueRequest {
            handler: keys[0].did.to_string(),
            payload: b"traced".to_vec(),
            ..Default::default()
        });
        request.metadata_mut().insert(
            "traceparent",
            format!("00-{caller_trace}-{caller_span}-01")
                .parse()
                .unwrap(),
        );
        let id = jobs
            .enqueue(request)
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap()
            .id;
        let j = common::finished(&mut jobs, &id, 30).await;
        assert_eq!(j.state, "succeeded");
        // A call that fails: its span says so.
        let e = jobs
            .get_job(proto::GetJobRequest { id: vec![1, 2, 3] })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        // A stop sends the spans still batched.
        server.stop();

        let spans = receiver.0.lock().unwrap().clone();
        let named = |name: &str| {
            spans
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| {
                    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
                    panic!("no span {name}: {names:?}")
                })
                .clone()
        };
        let enqueue = named("pulse_ledger.v1.Jobs/Enqueue");
        assert_eq!(hex::encode(&enqueue.trace_id), caller_trace);
        assert_eq!(hex::encode(&enqueue.parent_span_id), caller_span);
        assert_eq!(
            attribute(&enqueue, "rpc.method").as_deref(),
            Some("Enqueue")
        );
        let attempt = named("attempt");
        assert_eq!(
            attempt.trace_id, enqueue.trace_id,
            "the attempt is in the caller's trace"
        );
        assert_eq!(
            attempt.parent_span_id, enqueue.span_id,
            "a child of the Enqueue span"
        );
        assert_eq!(
            attribute(&attempt, "pulse.job").as_deref(),
            Some(hex::encode(&id).as_str())
        );
        assert_eq!(attribute(&attempt, "pulse.attempt").as_deref(), Some("1"));
        // The plugin got the attempt's context: its spans join the trace.
        let text = std::fs::read_to_string(&events).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("trace {} 1 ", hex::encode(&id))))
            .unwrap_or_else(|| panic!("the plugin got no trace context:\n{text}"));
        let traceparent = line.split_whitespace().nth(3).unwrap();
        assert_eq!(
            traceparent,
            format!(
                "00-{}-{}-01",
                hex::encode(&attempt.trace_id),
                hex::encode(&attempt.span_id)
            )
        );
        // Of the GetJob calls (the polls above succeeded), one failed.
        let statuses: Vec<_> = spans
            .iter()
            .filter(|s| s.name == "pulse_ledger.v1.Jobs/GetJob")
            .map(|s| s.status.clone().unwrap_or_default())
            .collect();
        let failed: Vec<_> = statuses.iter().filter(|s| s.code == 2).collect();
        assert_eq!(failed.len(), 1, "{statuses:?}");
        assert!(failed[0].message.contains("grpc-status 3"), "{failed:?}");
        assert!(statuses.iter().filter(|s| s.code != 2).count() >= 1);
    }
}

/// The admin and schedule RPCs need their scopes (issue 20): a read-only
/// token may list jobs and schedules but not retry, cancel in bulk or
/// create a schedule; enqueue covers retry and schedules, cancel covers a
/// bulk cancel. Refusals name the rule and change nothing.
#[test]
fn admin_and_schedule_calls_need_their_scopes() {
    let dir = tempdir("operating-scopes");
    let (read, read_table) = common::operator_token("reader", &["read"]);
    let (enq, enq_table) = common::operator_token("enqueuer", &["enqueue", "read"]);
    let (can, can_table) = common::operator_token("canceller", &["cancel", "read"]);
    let config = dir.join("pulse.toml");
    std::fs::write(&config, format!("{read_table}\n{enq_table}\n{can_table}\n")).unwrap();
    let server = Serve::start(&["--config", config.to_str().unwrap()], &dir.join("data"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p = common::key("scopes-plugin");
    let h = rt.block_on(register(&server.url, &p, &["echo"])).remove(0);
    let did = h.did.to_string();
    let as_token = |token: &str, args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
            .args(args)
            .args(["--server", &server.url])
            .env("PULSE_LEDGER_TOKEN", token)
            .env_remove("PULSE_LEDGER_AS_KEY")
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    // A job to retry: submitted, then cancelled.
    let (code, out, err) = as_token(&enq, &["job", "submit", &did, "--delay", "1h"]);
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_owned();
    let (code, _, err) = as_token(&can, &["job", "cancel", &id]);
    assert_eq!(code, 0, "{err}");
    let schedule = [
        "schedule",
        "create",
        "--handler",
        did.as_str(),
        "--every",
        "1h",
    ];
    for args in [
        &["job", "retry", id.as_str()][..],
        &["job", "cancel", "--handler", did.as_str(), "--yes"][..],
        &schedule[..],
    ] {
        let (code, _, err) = as_token(&read, args);
        // A refusal of the caller's rights exits 2, like the CLI's other
        // authorization failures.
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("scope_missing"), "{args:?}: {err}");
    }
    let (_, none, _) = as_token(&read, &["schedule", "list"]);
    assert_eq!(none, "", "a refused create made nothing");
    let (code, _, err) = as_token(&can, &["job", "retry", &id]);
    assert!(code == 2 && err.contains("scope_missing"), "{err}");
    let (code, out, err) = as_token(&enq, &["job", "retry", &id, "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(r#""state":"queued""#) || out.contains(r#""state":"held""#),
        "{out}"
    );
    let (code, out, err) = as_token(&can, &["job", "cancel", "--handler", &did, "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "cancelled 1 job");
    let (code, out, err) = as_token(&enq, &schedule);
    assert_eq!(code, 0, "{err}");
    let sid = out.trim().to_owned();
    let (code, shown, err) = as_token(&read, &["schedule", "show", &sid]);
    assert_eq!(code, 0, "{err}");
    assert!(shown.starts_with(&sid), "{shown}");
    let (code, _, err) = as_token(&read, &["schedule", "delete", &sid]);
    assert!(code == 2 && err.contains("scope_missing"), "{err}");
    server.stop();
}

/// `serve --timeline FILE`: one JSON line per dispatcher step (with its
/// phases), per group commit of the job store and the log, per journal
/// fsync and per storage event, each with its start and duration, while
/// the server runs.
#[tokio::test(flavor = "multi_thread")]
async fn the_timeline_records_steps_commits_and_storage_events() {
    let dir = tempdir("operating-timeline");
    let timeline = dir.join("timeline.jsonl");
    let (cmd, p, _) = with_test_plugin(
        &dir,
        "timeline-plugin",
        &["--timeline", timeline.to_str().unwrap()],
    );
    let server = Serve::spawn(cmd, false);
    let url = server.url.clone();
    let keys = register(&url, &p, &["echo"]).await;
    let mut jobs = pulse_ledger::api::proto::jobs_client::JobsClient::connect(url.clone())
        .await
        .unwrap();
    for _ in 0..3 {
        let (code, out, err) = common::cli_at(&url, &["job", "submit", &keys[0].did.to_string()]);
        assert_eq!(code, 0, "{err}");
        common::finished(&mut jobs, &hex::decode(out.trim()).unwrap(), 30).await;
    }
    // The writer flushes once it has been idle for 100 ms.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let text = std::fs::read_to_string(&timeline).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let dispatched: u64 = lines
            .iter()
            .filter(|l| l["kind"] == "step")
            .map(|l| l["dispatched"].as_u64().unwrap())
            .sum();
        let has = |k: &str| lines.iter().any(|l| l["kind"] == k);
        if dispatched >= 3
            && lines.iter().filter(|l| l["kind"] == "attempt").count() >= 3
            && has("jobs_commit")
            && has("log_commit")
            && has("journal_fsync")
            && has("storage")
        {
            break lines;
        }
        assert!(Instant::now() < deadline, "timeline incomplete:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for l in &lines {
        match l["kind"].as_str().unwrap() {
            "step" => {
                let n = |k: &str| l[k].as_u64().unwrap_or_else(|| panic!("no {k} in {l}"));
                assert!(n("at") > 1_700_000_000_000_000, "{l}");
                // The phases are consecutive parts of the step.
                let phases = n("due") + n("choose") + n("commit") + n("start");
                assert!(phases <= n("dur") + 1, "{l}");
                let _ = (n("reports"), n("dispatched"));
            }
            "attempt" => {
                // Sent, then its first and final events, within its span.
                let n = |k: &str| l[k].as_u64().unwrap_or_else(|| panic!("no {k} in {l}"));
                assert!(
                    n("sent") + n("first_event") + n("final_event") <= n("dur") + 1,
                    "{l}"
                );
                assert_eq!(n("ok"), 1, "{l}");
            }
            "jobs_commit" | "log_commit" => {
                assert!(l["dur"].is_u64() && l["ops"].as_u64().unwrap() > 0, "{l}");
            }
            "journal_fsync" => {
                // One fsync makes at least the batch of the writer that
                // asked for it durable.
                assert!(
                    l["dur"].is_u64() && l["batches"].as_u64().unwrap() >= 1,
                    "{l}"
                );
            }
            "storage" => {
                let target = l["target"].as_str().unwrap();
                assert!(
                    target.starts_with("fjall") || target.starts_with("lsm_tree"),
                    "{l}"
                );
            }
            other => panic!("unexpected kind {other}: {l}"),
        }
    }
    server.stop();

    // A timeline that cannot be written is refused before anything starts.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("other"))
        .args(["--timeline", "/nonexistent-dir/timeline.jsonl"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--timeline /nonexistent-dir/timeline.jsonl"),
        "{err}"
    );
    assert!(!dir.join("other").exists(), "nothing was created");
}

/// A bulk cancel stops at its bound: 10,000 jobs a call, `more` set while
/// some are left; the next call takes the rest, and one more finds none.
/// A listing page reads at most 10,000 entries too, and `job list` passes
/// over a page that found none of the jobs asked for.
#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_jobs_bound_a_bulk_cancel_and_a_listing_page() {
    use pulse_ledger::api::proto;
    let dir = tempdir("operating-bulk-bound");
    let (cmd, p, _) = with_test_plugin(&dir, "bulk-bound-plugin", &[]);
    let server = Serve::spawn(cmd, false);
    let url = server.url.clone();
    let keys = register(&url, &p, &["echo", "fail"]).await;
    let mut jobs = proto::jobs_client::JobsClient::connect(url.clone())
        .await
        .unwrap();
    // Due in an hour: queued, and never dispatched during the test.
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 3_600_000;
    let total = 10_050;
    let mut sent = 0;
    while sent < total {
        let n = (total - sent).min(1_000);
        let batch = proto::EnqueueBatchRequest {
            jobs: (0..n)
                .map(|_| proto::EnqueueRequest {
                    handler: keys[0].did.to_string(),
                    run_at_ms: later,
                    ..Default::default()
                })
                .collect(),
        };
        let results = jobs
            .enqueue_batch(batch)
            .await
            .unwrap()
            .into_inner()
            .results;
        assert!(
            results
                .iter()
                .all(|r| matches!(r.result, Some(proto::enqueue_result::Result::Accepted(_))))
        );
        sent += n;
    }
    // One job of another handler after them, listed oldest first: the
    // first page read only other jobs (a page reads at most 10,000
    // entries), and `job list` passes over it to the page that holds it.
    let other = keys[1].did.to_string();
    let (code, theirs, err) = common::cli_at(&url, &["job", "submit", &other, "--delay", "1h"]);
    assert_eq!(code, 0, "{err}");
    let page = jobs
        .list_jobs(proto::ListJobsRequest {
            handler: other.clone(),
            oldest_first: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(page.jobs.is_empty() && !page.next_page_token.is_empty());
    let (code, out, err) = common::cli_at(
        &url,
        &["job", "list", "--handler", &other, "--oldest-first"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with(theirs.trim()), "{out}");
    assert!(!err.contains("--page-token"), "{err}");
    let cancel = |jobs: &mut proto::jobs_client::JobsClient<tonic::transport::Channel>| {
        let mut jobs = jobs.clone();
        let handler = keys[0].did.to_string();
        async move {
            jobs.cancel_jobs(proto::CancelJobsRequest {
                handler,
                state: "queued".into(),
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    let first = cancel(&mut jobs).await;
    assert_eq!((first.cancelled, first.more), (10_000, true));
    let second = cancel(&mut jobs).await;
    assert_eq!((second.cancelled, second.more), (50, false));
    let third = cancel(&mut jobs).await;
    assert_eq!((third.cancelled, third.more), (0, false));
    let left = jobs
        .list_jobs(proto::ListJobsRequest {
            handler: keys[0].did.to_string(),
            state: "queued".into(),
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        left.jobs.is_empty(),
        "queued jobs left after the bulk cancel"
    );
    server.stop();
}
