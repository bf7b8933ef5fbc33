//! Plugins that connect in, in pools (spec/plugin.md, "Connecting in",
//! "Pools"): real `serve` and real `pulse-test-plugin --connect`
//! processes. No `[[plugin]]` table: the plugin's key and the ledger
//! decide.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Key, Serve, finished, fixture, handler_register, key, key_file, operator_token,
    plugin_register, tempdir,
};
use pulse_ledger::api::proto::{self, jobs_client::JobsClient, registry_client::RegistryClient};
use tonic::Request;
use tonic::transport::Channel;

const TIMINGS: &str = "heartbeat_timeout_ms = 800\ncancel_grace_ms = 300\nplugin_health_interval_ms = 200\nplugin_wait_secs = 120\n";

/// A `pulse-test-plugin --connect` process, killed when dropped.
struct Instance {
    child: Child,
    events: PathBuf,
    stderr: PathBuf,
}

impl Instance {
    /// Starts an instance with `key` (a key file written before: several
    /// instances must not write the same file at once).
    fn start(dir: &Path, key: &Path, url: &str, tag: &str, token: Option<&str>) -> Instance {
        Instance::start_with(dir, key, url, tag, token, &[])
    }

    /// [`Instance::start`] with extra environment variables.
    fn start_with(
        dir: &Path,
        key: &Path,
        url: &str,
        tag: &str,
        token: Option<&str>,
        env: &[(&str, String)],
    ) -> Instance {
        let events = dir.join(format!("{tag}.events"));
        let stderr = dir.join(format!("{tag}.stderr"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pulse-test-plugin"));
        cmd.arg("--key")
            .arg(key)
            .args(["--connect", url, "--slots", "4"])
            .env("PULSE_TEST_PLUGIN_EVENTS", &events)
            .env_remove("PULSE_PLUGIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        if let Some(t) = token {
            cmd.env("PULSE_PLUGIN_TOKEN", t);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        Instance {
            child: cmd.spawn().unwrap(),
            events,
            stderr,
        }
    }

    /// `(job hex, attempt, unix µs)` of every attempt it started.
    fn starts(&self) -> Vec<(String, u32, u128)> {
        lines(&self.events, "start")
            .into_iter()
            .map(|f| (f[1].clone(), f[2].parse().unwrap(), f[4].parse().unwrap()))
            .collect()
    }

    /// `(job hex, attempt)` of every attempt it finished.
    fn dones(&self) -> Vec<(String, u32)> {
        lines(&self.events, "done")
            .into_iter()
            .map(|f| (f[1].clone(), f[2].parse().unwrap()))
            .collect()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(path: &Path, kind: &str) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .filter(|f| f.first().map(String::as_str) == Some(kind))
        .collect()
}

fn now_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

fn authed<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(message);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

async fn sessions(
    jobs: &mut JobsClient<Channel>,
    token: Option<&str>,
) -> proto::ListPluginSessionsResponse {
    jobs.list_plugin_sessions(authed(proto::ListPluginSessionsRequest {}, token))
        .await
        .unwrap()
        .into_inner()
}

/// Waits (bounded, against a hang) until `ok` holds for the sessions.
async fn sessions_until(
    jobs: &mut JobsClient<Channel>,
    token: Option<&str>,
    what: &str,
    ok: impl Fn(&proto::ListPluginSessionsResponse) -> bool,
) -> proto::ListPluginSessionsResponse {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let s = sessions(jobs, token).await;
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < until, "{what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn enqueue(
    jobs: &mut JobsClient<Channel>,
    h: &Key,
    payload: &str,
    token: Option<&str>,
) -> Vec<u8> {
    let r = proto::EnqueueRequest {
        handler: h.did.to_string(),
        payload: payload.as_bytes().to_vec(),
        ..Default::default()
    };
    jobs.enqueue(authed(r, token))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id
}

async fn register(url: &str, attestations: &[pulse_ledger::Attestation]) {
    let mut reg = RegistryClient::connect(url.to_owned()).await.unwrap();
    for a in attestations {
        reg.submit(proto::SubmitRequest {
            envelope: a.envelope().to_vec(),
        })
        .await
        .unwrap();
    }
}

/// Issue 18, "done when": three instances of one plugin connect in, each
/// with 4 slots, and share a handler's jobs. One is SIGKILLed mid-run:
/// every job still ends exactly once, no attempt of a job overlaps
/// another, and the other two keep their sessions. Then one drains
/// (SIGTERM): it finishes its attempts, receives no new one, and exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_connected_in_instances_shares_jobs_survives_a_kill_and_drains() {
    let dir = tempdir("pools");
    std::fs::write(dir.join("pulse.toml"), TIMINGS).unwrap();
    let mut cmd = Serve::command(
        &["--config", dir.join("pulse.toml").to_str().unwrap()],
        &dir.join("data"),
    );
    let server_log = dir.join("server.log");
    cmd.stderr(std::fs::File::create(&server_log).unwrap());
    let server = Serve::spawn(cmd, false);
    let (p, h) = (key("pool-plugin"), key("pool-sleep"));
    register(
        &server.url,
        &[
            plugin_register(&p, "pool"),
            handler_register(&h, "sleep", &p.did),
        ],
    )
    .await;
    let mut jobs = JobsClient::connect(server.url.clone()).await.unwrap();
    let pkey = key_file(&dir, &p);
    let mut instances: Vec<Option<Instance>> = (0..3)
        .map(|i| {
            Some(Instance::start(
                &dir,
                &pkey,
                &server.url,
                &format!("i{i}"),
                None,
            ))
        })
        .collect();
    let pool = sessions_until(&mut jobs, None, "three sessions", |s| s.sessions.len() == 3).await;
    for s in &pool.sessions {
        assert_eq!(
            (
                s.plugin.as_str(),
                s.name.as_str(),
                s.key.as_str(),
                s.connection.as_str(),
                s.slots
            ),
            (
                p.did.to_string().as_str(),
                "pool",
                p.did.to_string().as_str(),
                "connected",
                4
            )
        );
        assert!(s.handlers.contains(&"sleep".to_owned()), "{s:?}");
    }

    // 36 jobs of 100 ms over 12 slots; one instance dies mid-run.
    let mut ids = Vec::new();
    for _ in 0..36 {
        ids.push(enqueue(&mut jobs, &h, "100", None).await);
    }
    let until = Instant::now() + Duration::from_secs(30);
    while instances[0].as_ref().unwrap().starts().len() < 2 {
        assert!(Instant::now() < until, "instance 0 was given no attempt");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut killed = instances[0].take().unwrap();
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let killed_at = now_micros();
    for id in &ids {
        let j = finished(&mut jobs, id, 60).await;
        assert_eq!(
            (j.state.as_str(), j.result.as_slice()),
            ("succeeded", &b"slept 100"[..]),
            "{}",
            j.last_error
        );
    }
    // Every attempt started somewhere once; a job whose attempt died with
    // the instance ran again only after it died, and elsewhere.
    let mut starts: HashMap<String, Vec<(usize, u32, u128)>> = HashMap::new();
    let survivors = [
        instances[1].as_ref().unwrap(),
        instances[2].as_ref().unwrap(),
    ];
    for (i, inst) in [&killed, survivors[0], survivors[1]].iter().enumerate() {
        for (job, attempt, at) in inst.starts() {
            starts.entry(job).or_default().push((i, attempt, at));
        }
    }
    let done_on_survivors: Vec<(String, u32)> = survivors.iter().flat_map(|s| s.dones()).collect();
    assert!(!killed.starts().is_empty());
    for id in &ids {
        let hex = hex::encode(id);
        let j = common::job(&mut jobs, id).await;
        let mine = starts.get(&hex).cloned().unwrap_or_default();
        let mut numbers: Vec<u32> = mine.iter().map(|s| s.1).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), mine.len(), "job {hex}: an attempt twice");
        // Each attempt reached one instance once, except one sent to the
        // killed instance as it died, before it could log its start: that
        // one ended crashed with the session.
        for a in &j.attempt_history {
            assert!(
                numbers.contains(&a.number) || a.outcome == "crashed",
                "job {hex}: attempt {} ({}) reached no instance: {mine:?}",
                a.number,
                a.outcome
            );
        }
        assert!(
            numbers.iter().all(|n| *n >= 1 && *n <= j.attempts),
            "job {hex}: a start of an attempt the job never had: {mine:?}"
        );
        let on_killed: Vec<_> = mine.iter().filter(|s| s.0 == 0).collect();
        if !on_killed.is_empty() {
            for s in mine.iter().filter(|s| s.0 != 0) {
                assert!(
                    s.2 > killed_at,
                    "job {hex}: an attempt elsewhere overlapped the one on the killed instance"
                );
            }
        }
        let done_here = done_on_survivors.iter().filter(|d| d.0 == hex).count();
        assert!(done_here <= 1, "job {hex} finished {done_here} times");
    }
    // The other two never stopped: the same two sessions.
    let after = sessions_until(&mut jobs, None, "two sessions", |s| s.sessions.len() == 2).await;
    let before: Vec<u64> = pool.sessions.iter().map(|s| s.session).collect();
    for s in &after.sessions {
        assert!(before.contains(&s.session), "a new session: {s:?}");
    }

    // A drain: instance 1 is told to stop while its attempts run.
    let mut batch = Vec::new();
    for _ in 0..16 {
        batch.push(enqueue(&mut jobs, &h, "400", None).await);
    }
    let already = instances[1].as_ref().unwrap().starts().len();
    let until = Instant::now() + Duration::from_secs(30);
    while instances[1].as_ref().unwrap().starts().len() == already {
        assert!(Instant::now() < until, "instance 1 was given no attempt");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pid = instances[1].as_ref().unwrap().child.id();
    // SAFETY: kill(2) on our own child; it touches no memory.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    // Its attempts take 400 ms: it is seen draining before it leaves.
    sessions_until(&mut jobs, None, "a draining session", |s| {
        s.sessions.iter().any(|x| x.draining)
    })
    .await;
    let drained_at = now_micros();
    for id in &batch {
        let j = finished(&mut jobs, id, 60).await;
        assert_eq!(j.state, "succeeded", "{}", j.last_error);
    }
    let mut draining = instances[1].take().unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = draining.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < until, "the drained instance did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}: {}", draining.stderr());
    let (starts, dones) = (draining.starts(), draining.dones());
    for (job, attempt, at) in &starts {
        assert!(
            dones.contains(&(job.clone(), *attempt)),
            "the drained instance left attempt {attempt} of {job} unfinished"
        );
        // The drain was seen once the server had marked it: nothing later.
        assert!(
            *at < drained_at + 50_000,
            "the drained instance was sent a new attempt"
        );
    }
    // Stopping the server drains the instance still connected: its stream
    // ends by itself, not when the drain grace runs out.
    server.stop();
    let log = std::fs::read_to_string(&server_log).unwrap();
    assert!(!log.contains("after the drain grace"), "{log}");
}

/// Issue 18, item 3 and the plugin scope: refused proofs are told to the
/// plugin (its stderr names the code) and kept for `plugin sessions`;
/// with tokens configured, connecting in needs a `plugin` scope for that
/// plugin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_proofs_reach_the_plugin_and_plugin_sessions_and_joining_needs_the_plugin_scope() {
    let dir = tempdir("pools-refused");
    let (p, h, stranger) = (key("ref-plugin"), key("ref-echo"), key("ref-stranger"));
    let (ops, ops_table) = operator_token("ops", &["admin"]);
    let (reader, reader_table) = operator_token("reader", &["read"]);
    let (any_plugin, any_table) = operator_token("any-plugin", &["plugin"]);
    let other = key("ref-other");
    let (wrong, wrong_table) = operator_token("wrong", &[&format!("plugin:{}", other.did)]);
    let (right, right_table) = operator_token("right", &[&format!("plugin:{}", p.did)]);
    std::fs::write(
        dir.join("pulse.toml"),
        format!("{TIMINGS}{ops_table}{reader_table}{any_table}{wrong_table}{right_table}"),
    )
    .unwrap();
    let server = Serve::start(
        &["--config", dir.join("pulse.toml").to_str().unwrap()],
        &dir.join("data"),
    );
    register(
        &server.url,
        &[
            plugin_register(&p, "tools"),
            handler_register(&h, "echo", &p.did),
        ],
    )
    .await;
    let mut jobs = JobsClient::connect(server.url.clone()).await.unwrap();

    // An unregistered key, with a token that may join as any plugin.
    let (skey, pkey) = (key_file(&dir, &stranger), key_file(&dir, &p));
    let unregistered = Instance::start(&dir, &skey, &server.url, "stranger", Some(&any_plugin));
    // A registered plugin, with a token for another plugin.
    let wrong_scope = Instance::start(&dir, &pkey, &server.url, "wrong", Some(&wrong));
    // No token at all.
    let anonymous = Instance::start(&dir, &pkey, &server.url, "anonymous", None);
    let s = sessions_until(&mut jobs, Some(&reader), "two refusals", |s| {
        s.refusals.len() >= 2
    })
    .await;
    assert!(s.sessions.is_empty(), "{s:?}");
    let code_of = |plugin: &Key| {
        s.refusals
            .iter()
            .find(|r| r.plugin == plugin.did.to_string())
            .map(|r| r.code.clone())
    };
    assert_eq!(code_of(&stranger).as_deref(), Some("plugin_not_registered"));
    assert_eq!(code_of(&p).as_deref(), Some("scope_missing"));
    // Each plugin was told why, on its own side.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (a, b, c) = (
            unregistered.stderr(),
            wrong_scope.stderr(),
            anonymous.stderr(),
        );
        if a.contains("plugin_not_registered")
            && b.contains("scope_missing")
            && c.contains("refused")
        {
            break;
        }
        assert!(
            Instant::now() < until,
            "the plugins were not told: {a:?} {b:?} {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop((unregistered, wrong_scope, anonymous));

    // The right scope: a session, and jobs run on it.
    let _good = Instance::start(&dir, &pkey, &server.url, "good", Some(&right));
    sessions_until(&mut jobs, Some(&reader), "a session", |s| {
        s.sessions.len() == 1
    })
    .await;
    let id = enqueue(&mut jobs, &h, "hello", Some(&ops)).await;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let j = jobs
            .get_job(authed(
                proto::GetJobRequest { id: id.clone() },
                Some(&reader),
            ))
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        if j.state == "succeeded" {
            assert_eq!(j.result, b"hello");
            break;
        }
        assert!(Instant::now() < until, "{} {}", j.state, j.last_error);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The CLI shows the session and the refusals; it needs read.
    let cli = |token: &str| {
        Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
            .args(["plugin", "sessions", "--json", "--server", &server.url])
            .env("PULSE_LEDGER_TOKEN", token)
            .env_remove("PULSE_LEDGER_AS_KEY")
            .output()
            .unwrap()
    };
    let out = cli(&reader);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sessions"][0]["plugin"], p.did.to_string());
    assert_eq!(v["sessions"][0]["connection"], "connected");
    assert_eq!(v["sessions"][0]["slots"], 4);
    assert!(
        v["refusals"].as_array().unwrap().iter().any(
            |r| r["code"] == "plugin_not_registered" && r["plugin"] == stranger.did.to_string()
        )
    );
    let out = cli(&any_plugin);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("scope_missing"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop();
}

/// Connecting in uses the server's TLS and mutual TLS like every client:
/// a plugin that presents a certificate the server's client CA signed gets
/// a session; one without a client certificate never reaches the proof.
#[test]
fn a_plugin_connects_in_over_mutual_tls() {
    let dir = tempdir("pools-mtls");
    let (cert, cert_key, ca) = (
        fixture("server.pem"),
        fixture("server.key"),
        fixture("ca.pem"),
    );
    let (client_cert, client_key) = (fixture("client.pem"), fixture("client.key"));
    let server = Serve::start(
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &cert_key,
            "--tls-client-ca",
            &ca,
        ],
        &dir.join("data"),
    );
    let url = server.url.replace("http://127.0.0.1", "https://localhost");
    let p = key("mtls-plugin");
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
            .args(args)
            .args(["--server", &url, "--ca", &ca])
            .args(["--client-cert", &client_cert, "--client-key", &client_key])
            .env_remove("PULSE_LEDGER_TOKEN")
            .env_remove("PULSE_LEDGER_AS_KEY")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let att = dir.join("p0.att");
    let pkey = key_file(&dir, &p);
    Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
        .args(["plugin", "new", "--key"])
        .arg(&pkey)
        .args(["--name", "secure", "--version", "1.0.0", "--out"])
        .arg(&att)
        .output()
        .unwrap();
    cli(&["submit", att.to_str().unwrap()]);
    let tls_env = |with_client: bool| {
        let mut env = vec![("PULSE_PLUGIN_SERVER_CA", ca.clone())];
        if with_client {
            env.push(("PULSE_PLUGIN_CLIENT_CERT", client_cert.clone()));
            env.push(("PULSE_PLUGIN_CLIENT_KEY", client_key.clone()));
        }
        env
    };
    let anonymous = Instance::start_with(&dir, &pkey, &url, "no-cert", None, &tls_env(false));
    let trusted = Instance::start_with(&dir, &pkey, &url, "cert", None, &tls_env(true));
    let until = Instant::now() + Duration::from_secs(30);
    let sessions = loop {
        let v: serde_json::Value =
            serde_json::from_slice(&cli(&["plugin", "sessions", "--json"])).unwrap();
        if !v["sessions"].as_array().unwrap().is_empty() {
            break v;
        }
        assert!(
            Instant::now() < until,
            "no session: {} / {}",
            trusted.stderr(),
            anonymous.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // Only the one with a client certificate: the other never got a nonce.
    std::thread::sleep(Duration::from_millis(500));
    let v: serde_json::Value =
        serde_json::from_slice(&cli(&["plugin", "sessions", "--json"])).unwrap();
    assert_eq!(v["sessions"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(sessions["sessions"][0]["plugin"], p.did.to_string());
    assert!(v["refusals"].as_array().unwrap().is_empty(), "{v}");
    assert!(
        anonymous.stderr().contains("session with"),
        "{}",
        anonymous.stderr()
    );
    server.stop();
}

/// A cancelled attempt on a connected-in instance gives its slot back
/// once the plugin's final event says its handler stopped: with one slot,
/// the next job runs on the same instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_attempt_gives_its_slot_back() {
    let dir = tempdir("pools-cancel");
    std::fs::write(dir.join("pulse.toml"), TIMINGS).unwrap();
    let server = Serve::start(
        &["--config", dir.join("pulse.toml").to_str().unwrap()],
        &dir.join("data"),
    );
    let (p, hang, echo) = (key("slot-plugin"), key("slot-hang"), key("slot-echo"));
    register(
        &server.url,
        &[
            plugin_register(&p, "slots"),
            handler_register(&hang, "sleep", &p.did),
            handler_register(&echo, "echo", &p.did),
        ],
    )
    .await;
    let pkey = key_file(&dir, &p);
    let cmd_env = vec![("PULSE_TEST_PLUGIN_CANCEL_GRACE_MS", "50".to_owned())];
    let one = Instance::start_with(&dir, &pkey, &server.url, "one", None, &cmd_env);
    let mut jobs = JobsClient::connect(server.url.clone()).await.unwrap();
    sessions_until(&mut jobs, None, "a session", |s| s.sessions.len() == 1).await;
    // One slot of four is enough to show it: fill all four, cancel them.
    let mut long = Vec::new();
    for _ in 0..4 {
        long.push(enqueue(&mut jobs, &hang, "600000", None).await);
    }
    sessions_until(&mut jobs, None, "four running", |s| {
        s.sessions.first().is_some_and(|x| x.running == 4)
    })
    .await;
    for id in &long {
        jobs.cancel_job(proto::CancelJobRequest { id: id.clone() })
            .await
            .unwrap();
    }
    sessions_until(&mut jobs, None, "the slots given back", |s| {
        s.sessions.first().is_some_and(|x| x.running == 0)
    })
    .await;
    let id = enqueue(&mut jobs, &echo, "after", None).await;
    let j = finished(&mut jobs, &id, 30).await;
    assert_eq!(
        (j.state.as_str(), j.result.as_slice()),
        ("succeeded", &b"after"[..])
    );
    drop(one);
    server.stop();
}

/// Before a proof, a `Join` stream is a stranger's: at most 16 may be
/// proving a key at once, the next is refused `overloaded`
/// (RESOURCE_EXHAUSTED) instead of held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_have_not_proved_a_key_are_bounded() {
    use pulse_ledger::api::proto::plugin_gateway_client::PluginGatewayClient;
    let dir = tempdir("pools-unproven");
    let server = Serve::start(&[], &dir.join("data"));
    let mut held = Vec::new();
    for _ in 0..16 {
        let (tx, rx) = tokio::sync::mpsc::channel::<proto::PluginMessage>(1);
        let mut c = PluginGatewayClient::connect(server.url.clone())
            .await
            .unwrap();
        let mut s = c
            .join(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        // The nonce comes; no proof is sent.
        let first = s.message().await.unwrap().unwrap();
        assert!(matches!(
            first.message,
            Some(proto::server_message::Message::Initialize(_))
        ));
        held.push((tx, s, c));
    }
    let (_tx, rx) = tokio::sync::mpsc::channel::<proto::PluginMessage>(1);
    let mut c = PluginGatewayClient::connect(server.url.clone())
        .await
        .unwrap();
    let mut s = c
        .join(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let e = s.message().await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().starts_with("overloaded"), "{e:?}");
    drop(held);
    server.stop();
}
