//! Hostile handler code on the script plugin (issue 17, item 1;
//! spec/plugin.md, "Confining user code"): a stranger's script cannot read
//! the plugin's key or /proc, trace, signal or outlive the plugin, start
//! processes, exhaust memory, files or CPU, reach the network, or write
//! outside its scratch directory; the plugin stays up and other jobs run.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::Path;

use common::{Key, handler_register_with, key, key_file, plugin_register, tempdir};
use pulse_ledger::api::proto::{self, jobs_client::JobsClient, registry_client::RegistryClient};
use pulse_ledger::plugin::confine::Support;

/// The hostile scripts: each catches its own refusal and prints it, so a
/// success is the refusal's name and a confinement that failed shows as
/// another result.
fn scripts(
    key_path: &Path,
    outside: &Path,
    port: u16,
) -> Vec<(&'static str, String, &'static str)> {
    let catch = |body: &str| {
        format!(
            "import os, sys\ntry:\n{}\nexcept BaseException as e:\n    print(type(e).__name__, getattr(e, 'errno', ''))\nelse:\n    print('NOT REFUSED')\n",
            body.lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        )
    };
    vec![
        (
            "read-key",
            catch(&format!("print(open({:?}).read())", key_path.display().to_string())),
            "PermissionError 13",
        ),
        (
            "read-proc",
            catch("print(open('/proc/%d/cmdline' % os.getppid()).read())\nprint(open('/proc/%d/environ' % os.getppid()).read())"),
            "PermissionError 13",
        ),
        (
            "ptrace",
            "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nr = libc.ptrace(16, os.getppid(), 0, 0)\nprint(r, ctypes.get_errno())\n"
                .to_owned(),
            "-1 1",
        ),
        (
            "kill-parent",
            catch("for _ in range(3): os.kill(os.getppid(), 9)"),
            "PermissionError 1",
        ),
        ("fork-bomb", catch("while True: os.fork()"), "PermissionError 1"),
        ("allocate", catch("b = bytearray(10 * 1024 ** 3)"), "MemoryError"),
        (
            "open-files",
            catch("fs = [open('f%d' % i, 'w') for i in range(10000)]"),
            "OSError 24",
        ),
        (
            "connect",
            catch(&format!(
                "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)"
            )),
            "PermissionError 1",
        ),
        (
            "write-outside",
            catch(&format!("open({:?}, 'w').write('x')", outside.display().to_string())),
            "PermissionError 13",
        ),
        (
            "environment",
            "import os\nprint(' '.join(sorted(os.environ)))\n".to_owned(),
            "HOME LANG PATH TMPDIR",
        ),
        (
            "write-scratch",
            "open('here.txt', 'w').write('ok')\nprint(open('here.txt').read())\n".to_owned(),
            "ok",
        ),
    ]
}

/// Whether this kernel can confine user code; if not, skipped with a note
/// (never in CI, where the suite must run).
fn can_confine() -> bool {
    let missing = Support::probe().missing();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("PULSE_LEDGER_CI").is_none(),
        "CI must run the hostile-script suite, but this kernel lacks: {missing:?}"
    );
    eprintln!("SKIPPED: this kernel cannot confine user code: {missing:?}");
    false
}

/// A server in `dir` running the script plugin `p` with `flags`, the
/// plugin registered; its gRPC port and clients.
async fn script_server(
    dir: &Path,
    p: &Key,
    flags: &[&str],
) -> (
    common::Serve,
    u16,
    RegistryClient<tonic::transport::Channel>,
    JobsClient<tonic::transport::Channel>,
) {
    let key_path = key_file(dir, p);
    let mut command = vec![
        env!("CARGO_BIN_EXE_pulse-script-plugin").to_owned(),
        "--key".to_owned(),
        key_path.display().to_string(),
    ];
    command.extend(flags.iter().map(|f| (*f).to_owned()));
    let config = format!(
        "[[plugin]]\nname = \"scripts\"\ncommand = {command:?}\ndir = {:?}\n",
        dir.display().to_string(),
    );
    std::fs::write(dir.join("pulse.toml"), &config).unwrap();
    let server = common::Serve::start(
        &["--config", dir.join("pulse.toml").to_str().unwrap()],
        &dir.join("data"),
    );
    let port: u16 = server.url.rsplit(':').next().unwrap().parse().unwrap();
    let mut reg = RegistryClient::connect(server.url.clone()).await.unwrap();
    let jobs = JobsClient::connect(server.url.clone()).await.unwrap();
    reg.submit(proto::SubmitRequest {
        envelope: plugin_register(p, "scripts").envelope().to_vec(),
    })
    .await
    .unwrap();
    (server, port, reg, jobs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_scripts_are_refused_and_the_plugin_keeps_serving() {
    if !can_confine() {
        return;
    }
    let dir = tempdir("confinement");
    let p = key("confine-plugin");
    let key_path = key_file(&dir, &p);
    let scratch = dir.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let outside = dir.join("escaped.txt");
    let scratch_dir = scratch.display().to_string();
    let (server, port, mut reg, mut jobs) = script_server(
        &dir,
        &p,
        &[
            "--scratch-dir",
            &scratch_dir,
            "--memory-mb",
            "256",
            "--cpu-seconds",
            "3",
        ],
    )
    .await;
    let submit = |a: pulse_ledger::Attestation| proto::SubmitRequest {
        envelope: a.envelope().to_vec(),
    };
    let handler = |name: &str, code: &str| -> (Key, pulse_ledger::Attestation) {
        let k = key(&format!("confine-{name}"));
        let a = handler_register_with(&k, name, &p.did, |s| {
            s.code = Some(code.as_bytes().to_vec());
        });
        (k, a)
    };
    let (honest, a) = handler("honest", "import sys\nprint(sys.stdin.read().upper())\n");
    reg.submit(submit(a)).await.unwrap();
    let (burner, a) = handler("burn-cpu", "while True: pass\n");
    reg.submit(submit(a)).await.unwrap();
    // A handler that asks for network, on a plugin whose operator did not
    // allow it.
    let wants_net = key("confine-wants-network");
    let a = handler_register_with(&wants_net, "wants-network", &p.did, |s| {
        s.code = Some(b"print('ran')\n".to_vec());
        s.network = Some(pulse_ledger::NetworkAccess::Outbound);
    });
    reg.submit(submit(a)).await.unwrap();
    let enqueue = |k: &Key, payload: &str| proto::EnqueueRequest {
        handler: k.did.to_string(),
        payload: payload.as_bytes().to_vec(),
        max_attempts: 1,
        ..Default::default()
    };

    // Every hostile script and an honest job, all at once.
    let mut hostile = Vec::new();
    for (name, code, _) in scripts(&key_path, &outside, port) {
        let (k, a) = handler(name, &code);
        reg.submit(submit(a)).await.unwrap();
        let id = jobs
            .enqueue(enqueue(&k, ""))
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap()
            .id;
        hostile.push(id);
    }
    let burn = jobs
        .enqueue(enqueue(&burner, ""))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id;
    let first = jobs
        .enqueue(enqueue(&honest, "alive"))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id;

    let secret = hex::encode(p.sk.to_bytes());
    for ((name, _, want), id) in scripts(&key_path, &outside, port).iter().zip(&hostile) {
        let j = common::finished(&mut jobs, id, 60).await;
        let result = String::from_utf8_lossy(&j.result).trim().to_owned();
        assert_eq!(
            (j.state.as_str(), result.as_str()),
            ("succeeded", *want),
            "{name}: {}",
            j.last_error
        );
        assert!(
            !result.contains(&secret) && !j.last_error.contains(&secret),
            "{name} leaked the key"
        );
    }
    assert!(
        !outside.exists(),
        "a script wrote outside its scratch directory"
    );
    let net = jobs
        .enqueue(enqueue(&wants_net, ""))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id;
    let j = common::finished(&mut jobs, &net, 60).await;
    assert_eq!(
        (j.state.as_str(), j.reason.as_str()),
        ("dead", "non_retryable")
    );
    assert!(
        j.last_error.contains("network_not_allowed"),
        "{}",
        j.last_error
    );
    // CPU time is bounded: the busy loop is killed by its limit.
    let j = common::finished(&mut jobs, &burn, 60).await;
    assert_eq!(
        (j.state.as_str(), j.reason.as_str()),
        ("dead", "non_retryable")
    );
    assert!(
        j.last_error.contains("killed by a signal"),
        "{}",
        j.last_error
    );

    // The plugin is the one that started, still serving: the honest jobs,
    // the one run alongside and one after, succeed.
    let j = common::finished(&mut jobs, &first, 60).await;
    assert_eq!(
        (j.state.as_str(), j.result.as_slice()),
        ("succeeded", &b"ALIVE\n"[..])
    );
    let after = jobs
        .enqueue(enqueue(&honest, "after"))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id;
    let j = common::finished(&mut jobs, &after, 60).await;
    assert_eq!(
        (j.state.as_str(), j.result.as_slice()),
        ("succeeded", &b"AFTER\n"[..])
    );
    // Every attempt's scratch directory is gone.
    let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().collect();
    assert!(left.is_empty(), "scratch directories left: {left:?}");
    server.stop();
}

/// A handler whose signed schema asks for outbound network, on a plugin
/// whose operator allows it, can connect out but not listen; a handler
/// that does not ask still has no network on the same plugin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_network_is_granted_only_when_asked_and_allowed() {
    if !can_confine() {
        return;
    }
    let dir = tempdir("confinement-network");
    let p = key("confine-net-plugin");
    let (server, port, mut reg, mut jobs) = script_server(&dir, &p, &["--allow-network"]).await;
    let submit = |a: pulse_ledger::Attestation| proto::SubmitRequest {
        envelope: a.envelope().to_vec(),
    };
    let connect = format!(
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n    print('connected')\nexcept OSError as e:\n    print(type(e).__name__, e.errno)\n"
    );
    let listen = "import socket\ns = socket.socket()\ntry:\n    s.bind(('127.0.0.1', 0))\n    s.listen()\n    print('listening')\nexcept OSError as e:\n    print(type(e).__name__, e.errno)\n";
    let unbound = "import socket\ns = socket.socket()\ntry:\n    s.listen()\n    print('listening')\nexcept OSError as e:\n    print(type(e).__name__, e.errno)\n";
    let mptcp = "import socket\ntry:\n    socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)\n    print('opened')\nexcept OSError as e:\n    print(type(e).__name__, e.errno)\n";
    let cases = [
        ("net-connect", connect.as_str(), true, "connected"),
        ("net-listen", listen, true, "PermissionError 13"),
        ("net-listen-unbound", unbound, true, "PermissionError 1"),
        ("net-mptcp", mptcp, true, "PermissionError 1"),
        (
            "no-net-connect",
            connect.as_str(),
            false,
            "PermissionError 1",
        ),
    ];
    let mut ids = Vec::new();
    for (name, code, network, _) in &cases {
        let k = key(&format!("confine-{name}"));
        let a = handler_register_with(&k, name, &p.did, |s| {
            s.code = Some(code.as_bytes().to_vec());
            s.network = network.then_some(pulse_ledger::NetworkAccess::Outbound);
        });
        reg.submit(submit(a)).await.unwrap();
        let r = proto::EnqueueRequest {
            handler: k.did.to_string(),
            max_attempts: 1,
            ..Default::default()
        };
        ids.push(jobs.enqueue(r).await.unwrap().into_inner().job.unwrap().id);
    }
    for ((name, _, _, want), id) in cases.iter().zip(&ids) {
        let j = common::finished(&mut jobs, id, 60).await;
        let result = String::from_utf8_lossy(&j.result).trim().to_owned();
        assert_eq!(
            (j.state.as_str(), result.as_str()),
            ("succeeded", *want),
            "{name}: {}",
            j.last_error
        );
    }
    server.stop();
}
