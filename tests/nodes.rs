//! Several `pulse-ledger serve` nodes on one PostgreSQL database
//! (`serve --store URL --node NAME`): one log and one queue, any node
//! answering every RPC, each node running jobs only on its own plugin
//! sessions. Runs where PostgreSQL is configured (always in CI).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Serve, handler_register, key, key_file, plugin_register, plugin_table, tempdir};
use pulse_ledger::api::proto::{self, jobs_client::JobsClient, registry_client::RegistryClient};
use tonic::transport::Channel;

const TIMINGS: &str = "heartbeat_timeout_ms = 800\ncancel_grace_ms = 300\nplugin_health_interval_ms = 200\nplugin_wait_secs = 2\n";

/// One node: `serve --store URL --log-key KEY --node NAME` with its own
/// data dir and config file.
fn node(dir: &Path, name: &str, url: &str, config: &str) -> Serve {
    let config_path = dir.join(format!("{name}.toml"));
    std::fs::write(&config_path, config).unwrap();
    let key = dir.join("log.key");
    Serve::start(
        &[
            "--config",
            config_path.to_str().unwrap(),
            "--store",
            url,
            "--log-key",
            key.to_str().unwrap(),
            "--node",
            name,
        ],
        &dir.join(format!("data-{name}")),
    )
}

async fn clients(s: &Serve) -> (RegistryClient<Channel>, JobsClient<Channel>) {
    (
        RegistryClient::connect(s.url.clone()).await.unwrap(),
        JobsClient::connect(s.url.clone()).await.unwrap(),
    )
}

/// (job ID in hex, attempt, plugin process) of every attempt started, as
/// the plugins of `files` logged them.
fn starts(files: &[PathBuf]) -> Vec<(String, String, PathBuf)> {
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("start "))
                .map(|l| {
                    let mut w = l.split_whitespace().skip(1);
                    (
                        w.next().unwrap().to_owned(),
                        w.next().unwrap().to_owned(),
                        f.clone(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_one_log_and_one_queue() {
    let Some(url) = common::postgres_database("nodes_share") else {
        return;
    };
    let dir = tempdir("nodes-share");
    let p = key("nodes-plugin");
    let pkey = key_file(&dir, &p);
    let events: Vec<PathBuf> = (0..2)
        .map(|i| dir.join(format!("events-{i}.log")))
        .collect();
    let with_plugin = |i: usize| {
        format!(
            "{TIMINGS}{}",
            plugin_table(
                "tools",
                &["--key".into(), pkey.display().to_string()],
                &events[i]
            )
        )
    };
    // The first node creates the log and its key; the others share both.
    let a = node(&dir, "node-a", &url, &with_plugin(0));
    let b = node(&dir, "node-b", &url, &with_plugin(1));
    let c = node(&dir, "node-c", &url, TIMINGS);
    let nodes = [&a, &b, &c];

    // A log watcher on a node that takes no submission.
    let (mut reg_a, _) = clients(&a).await;
    let mut watch = reg_a
        .watch_entries(proto::WatchEntriesRequest { start: 0 })
        .await
        .unwrap()
        .into_inner();
    // The plugin's and the handler's statements through different nodes:
    // the nodes with the plugin find them in the one log.
    let h = key("nodes-sleep");
    let (mut reg_c, mut jobs_c) = clients(&c).await;
    let (mut reg_b, _) = clients(&b).await;
    reg_c
        .submit(proto::SubmitRequest {
            envelope: plugin_register(&p, "tools").envelope().to_vec(),
        })
        .await
        .unwrap();
    let handler_index = reg_b
        .submit(proto::SubmitRequest {
            envelope: handler_register(&h, "sleep", &p.did).envelope().to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .index;
    assert_eq!(handler_index, 1, "one sequence across nodes");
    // The watcher on node A saw both, once each, in order.
    for want in 0..2 {
        let e = tokio::time::timeout(Duration::from_secs(30), watch.message())
            .await
            .expect("the watcher heard of the other nodes' entries")
            .unwrap()
            .unwrap();
        assert_eq!(e.index, want);
    }
    drop(watch);

    // Each node with the plugin has its session (the plugin was refused
    // until its statement was in the log, and is retried).
    for n in [&a, &b] {
        let (_, mut jobs) = clients(n).await;
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let s = jobs
                .list_plugin_sessions(proto::ListPluginSessionsRequest {})
                .await
                .unwrap()
                .into_inner();
            if s.sessions.len() == 1 {
                break;
            }
            assert!(Instant::now() < until, "{s:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Jobs enqueued through every node, the node without the plugin too.
    let mut ids = Vec::new();
    for i in 0..24 {
        let (_, mut jobs) = clients(nodes[i % 3]).await;
        let job = jobs
            .enqueue(proto::EnqueueRequest {
                handler: h.did.to_string(),
                payload: b"200".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        ids.push(job.id);
    }
    // A job enqueued through node A, watched on node C: its changes
    // arrive there, ending with its success.
    let mut job_watch = jobs_c
        .watch_job(proto::WatchJobRequest { id: ids[0].clone() })
        .await
        .unwrap()
        .into_inner();
    let watched = tokio::spawn(async move {
        let mut states = Vec::new();
        while let Ok(Some(j)) = job_watch.message().await {
            let done = ["succeeded", "dead", "cancelled"].contains(&j.state.as_str());
            states.push(j.state);
            if done {
                break;
            }
        }
        states
    });
    // Read through the node that runs none of them.
    for id in &ids {
        let j = common::finished(&mut jobs_c, id, 60).await;
        assert_eq!(j.state, "succeeded", "{}", j.last_error);
        assert_eq!(j.attempts, 1, "one attempt each: {j:?}");
    }
    let states = tokio::time::timeout(Duration::from_secs(30), watched)
        .await
        .expect("the watch on node C ended")
        .unwrap();
    assert_eq!(
        states.last().map(String::as_str),
        Some("succeeded"),
        "{states:?}"
    );
    // A schedule made on one node fires once per occurrence across all
    // three (each node's dispatcher sees it due).
    let (_, mut jobs_b) = clients(&b).await;
    let tick = key("nodes-tick");
    reg_b
        .submit(proto::SubmitRequest {
            envelope: handler_register(&tick, "echo", &p.did).envelope().to_vec(),
        })
        .await
        .unwrap();
    let schedule = jobs_b
        .create_schedule(proto::CreateScheduleRequest {
            handler: tick.did.to_string(),
            every_ms: 1_000,
            payload: b"tick".to_vec(),
            overlap: "allow".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let gone = jobs_c
        .delete_schedule(proto::GetScheduleRequest {
            id: schedule.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    let fired = jobs_c
        .list_jobs(proto::ListJobsRequest {
            handler: tick.did.to_string(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(gone.fired >= 3, "{gone:?}");
    assert_eq!(
        fired.len() as u64,
        gone.fired,
        "one job per occurrence: {fired:?}"
    );
    let mut keys: Vec<&str> = fired.iter().map(|j| j.idempotency_key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), fired.len(), "{fired:?}");
    // Every job started once, on one plugin; both nodes with the plugin
    // took some.
    let started = starts(&events);
    let mut per_job: std::collections::HashMap<&str, usize> = Default::default();
    for (job, _, _) in &started {
        *per_job.entry(job.as_str()).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(
            per_job.get(hex::encode(id).as_str()),
            Some(&1),
            "job {} started {:?} times",
            hex::encode(id),
            per_job.get(hex::encode(id).as_str())
        );
    }
    for f in &events {
        assert!(
            started.iter().any(|(_, _, from)| from == f),
            "the plugin of {} ran no job: {started:?}",
            f.display()
        );
    }
    // The same log everywhere, and it audits.
    let until = Instant::now() + Duration::from_secs(30);
    let info = loop {
        let mut infos = Vec::new();
        for n in nodes {
            let (mut reg, _) = clients(n).await;
            infos.push(common::log_info(&mut reg).await);
        }
        if infos
            .iter()
            .all(|i| i.size == 3 && i.root_hash == infos[0].root_hash)
        {
            break infos.remove(0);
        }
        assert!(Instant::now() < until, "{infos:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    common::verify_log_passes(&a.url, &info.log_did);
    // Any node lists all three, live, with their sessions (each writes its
    // record every second).
    let want: Vec<(String, bool, u64)> = vec![
        ("node-a".into(), true, 1),
        ("node-b".into(), true, 1),
        ("node-c".into(), true, 0),
    ];
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, out, err) = common::cli_at(&c.url, &["nodes", "--json"]);
        assert_eq!(code, 0, "{err}");
        let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(listed["answered_by"], "node-c");
        let summary: Vec<(String, bool, u64)> = listed["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["name"].as_str().unwrap().to_owned(),
                    n["live"].as_bool().unwrap(),
                    n["sessions"].as_u64().unwrap(),
                )
            })
            .collect();
        if summary == want && listed["nodes"][0]["lag"] == 0 {
            break;
        }
        assert!(Instant::now() < until, "{out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A server that wants the store for itself is refused while nodes
    // share it, and --node wants a store.
    let alone = std::process::Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            &url,
            "--log-key",
        ])
        .arg(dir.join("log.key"))
        .arg("--data-dir")
        .arg(dir.join("data-alone"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&alone.stderr);
    assert!(!alone.status.success());
    assert!(said.contains("store_in_use"), "{said}");
    let no_store = std::process::Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--node",
            "x",
            "--data-dir",
        ])
        .arg(dir.join("data-x"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&no_store.stderr);
    assert!(said.contains("node_without_store"), "{said}");

    for n in [a, b, c] {
        n.stop();
    }
}

/// The node running an attempt is killed: another node finds the attempt
/// silent, records it timed out and runs the retry on its own plugin; the
/// killed node, started again, recovers none of the other's attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_attempt_is_retried_on_another_node() {
    let Some(url) = common::postgres_database("nodes_killed") else {
        return;
    };
    let dir = tempdir("nodes-killed");
    let p = key("killed-plugin");
    let pkey = key_file(&dir, &p);
    let events: Vec<PathBuf> = (0..2)
        .map(|i| dir.join(format!("events-{i}.log")))
        .collect();
    let config = |i: usize| {
        format!(
            "{TIMINGS}{}",
            plugin_table(
                "tools",
                &["--key".into(), pkey.display().to_string()],
                &events[i]
            )
        )
    };
    let names = ["node-a", "node-b"];
    let mut nodes = vec![
        node(&dir, names[0], &url, &config(0)),
        node(&dir, names[1], &url, &config(1)),
    ];
    let h = key("killed-sleep");
    let (mut reg, _) = clients(&nodes[0]).await;
    for a in [
        plugin_register(&p, "tools"),
        handler_register(&h, "sleep", &p.did),
    ] {
        reg.submit(proto::SubmitRequest {
            envelope: a.envelope().to_vec(),
        })
        .await
        .unwrap();
    }
    let (_, mut jobs) = clients(&nodes[0]).await;
    let id = jobs
        .enqueue(proto::EnqueueRequest {
            handler: h.did.to_string(),
            payload: b"3000".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id;
    let hex_id = hex::encode(&id);
    // Whichever node's plugin started it is killed.
    let until = Instant::now() + Duration::from_secs(60);
    let first = loop {
        if let Some((_, _, f)) = starts(&events).into_iter().find(|(j, _, _)| *j == hex_id) {
            break events.iter().position(|e| *e == f).unwrap();
        }
        assert!(Instant::now() < until, "the job never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let other = 1 - first;
    nodes[first].child.kill().unwrap(); // SIGKILL
    nodes[first].child.wait().unwrap();
    // The other node finds the attempt silent and retries it itself.
    let until = Instant::now() + Duration::from_secs(60);
    while !starts(&events)
        .iter()
        .any(|(j, n, f)| *j == hex_id && n == "2" && *f == events[other])
    {
        assert!(Instant::now() < until, "the attempt was not retried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Started again while the retry runs elsewhere: it recovers none of
    // the other node's attempts.
    nodes[first] = node(&dir, names[first], &url, &config(first));
    let (_, mut survivor) = clients(&nodes[other]).await;
    let j = common::finished(&mut survivor, &id, 120).await;
    assert_eq!(j.state, "succeeded", "{}", j.last_error);
    assert_eq!(j.attempts, 2, "{j:?}");
    let runs: Vec<_> = starts(&events)
        .into_iter()
        .filter(|(job, _, _)| *job == hex_id)
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(
        runs.iter().filter(|(_, _, f)| *f == events[first]).count(),
        1
    );
    for n in nodes {
        n.stop();
    }
}

/// SIGTERM to a node running an attempt: it starts nothing new, gives the
/// attempt the drain grace, then hands it to the other nodes (retried at
/// once, not after the node-liveness timeout) and leaves the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_drains_and_hands_its_attempts_over() {
    let Some(url) = common::postgres_database("nodes_drain") else {
        return;
    };
    let dir = tempdir("nodes-drain");
    let p = key("drain-plugin");
    let pkey = key_file(&dir, &p);
    let events: Vec<PathBuf> = (0..2)
        .map(|i| dir.join(format!("events-{i}.log")))
        .collect();
    // Long liveness timeouts: a retry within them can only be a handover.
    let config = |i: usize| {
        format!(
            "heartbeat_timeout_ms = 60000\ncancel_grace_ms = 300\nplugin_health_interval_ms = 200\ndrain_grace_ms = 500\n{}",
            plugin_table(
                "tools",
                &["--key".into(), pkey.display().to_string()],
                &events[i]
            )
        )
    };
    let names = ["node-a", "node-b"];
    let mut nodes = [
        Some(node(&dir, names[0], &url, &config(0))),
        Some(node(&dir, names[1], &url, &config(1))),
    ];
    let h = key("drain-sleep");
    let (mut reg, mut jobs) = clients(nodes[0].as_ref().unwrap()).await;
    for a in [
        plugin_register(&p, "tools"),
        handler_register(&h, "sleep", &p.did),
    ] {
        reg.submit(proto::SubmitRequest {
            envelope: a.envelope().to_vec(),
        })
        .await
        .unwrap();
    }
    let id = jobs
        .enqueue(proto::EnqueueRequest {
            handler: h.did.to_string(),
            payload: b"4000".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id;
    let hex_id = hex::encode(&id);
    let until = Instant::now() + Duration::from_secs(60);
    let first = loop {
        if let Some((_, _, f)) = starts(&events).into_iter().find(|(j, _, _)| *j == hex_id) {
            break events.iter().position(|e| *e == f).unwrap();
        }
        assert!(Instant::now() < until, "the job never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let other = 1 - first;
    let stopped_at = Instant::now();
    nodes[first].take().unwrap().stop(); // SIGTERM, and wait for the exit
    let (_, mut survivor) = clients(nodes[other].as_ref().unwrap()).await;
    let j = common::finished(&mut survivor, &id, 60).await;
    assert_eq!(j.state, "succeeded", "{}", j.last_error);
    assert_eq!(j.attempts, 2, "{j:?}");
    assert!(
        stopped_at.elapsed() < Duration::from_secs(30),
        "retried only after {:?}: not handed over",
        stopped_at.elapsed()
    );
    let runs: Vec<_> = starts(&events)
        .into_iter()
        .filter(|(job, _, _)| *job == hex_id)
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(
        runs.iter().any(|(_, n, f)| n == "2" && *f == events[other]),
        "{runs:?}"
    );
    // The stopped node left the list.
    let (code, out, err) =
        common::cli_at(&nodes[other].as_ref().unwrap().url, &["nodes", "--json"]);
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names_listed: Vec<&str> = listed["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names_listed, vec![names[other]]);
    nodes[other].take().unwrap().stop();
}
