//! Crash safety: a child process appends concurrently and is killed with
//! SIGKILL at arbitrary moments; after every restart each acknowledged
//! append is at its index, the tree matches the signed checkpoint, and the
//! full audit passes.

#![allow(clippy::unwrap_used)] // test code: a panic is a failure report

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{handler_register, key, plugin_register, tempdir};
use pulse_ledger::AttestationId;
use pulse_ledger::ledger::{Ledger, LedgerConfig, verify_checkpoint};

const CHILD_ENV: &str = "PULSE_LEDGER_CRASH_CHILD";
const ORIGIN: &str = "crash.test/log";
/// Kill cycles; CI runs this many, each lasting well under a second.
const CYCLES: u64 = 6;

#[test]
fn sigkill_loses_nothing_acknowledged() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
        return;
    }
    let dir = tempdir("crash");
    let mut acked: Vec<(u64, String)> = Vec::new();
    for cycle in 0..CYCLES {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sigkill_loses_nothing_acknowledged",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{}|{cycle}", dir.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let lines = Arc::clone(&lines);
            let out = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            })
        };
        // Let it get going (the first ack), then kill it at a moment that
        // varies from cycle to cycle.
        let start = Instant::now();
        while !lines.lock().unwrap().iter().any(|l| l.starts_with("ack "))
            && start.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(37 * (cycle % 5) + 11 * cycle));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let new: Vec<(u64, String)> = lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| {
                let mut parts = l.strip_prefix("ack ")?.split(' ');
                Some((parts.next()?.parse().ok()?, parts.next()?.to_owned()))
            })
            .collect();
        assert!(
            !new.is_empty(),
            "cycle {cycle}: the child acknowledged nothing"
        );
        acked.extend(new);

        let ledger = Ledger::open(LedgerConfig::new(&dir, ORIGIN)).unwrap();
        let head = ledger.head();
        let cp = verify_checkpoint(&head.checkpoint, ledger.log_did()).unwrap();
        assert_eq!((cp.size, cp.root), (head.size, head.root));
        assert_eq!(ledger.root_at(head.size).unwrap(), head.root);
        for (index, id) in &acked {
            let entry = ledger
                .entry(*index)
                .unwrap_or_else(|e| panic!("cycle {cycle}: acked index {index} lost: {e}"));
            assert_eq!(
                &AttestationId::of(&entry).to_string(),
                id,
                "cycle {cycle}: index {index} holds another entry"
            );
        }
        let report = ledger.audit().unwrap();
        assert_eq!(report.entries, head.size);
    }
}

/// The child: four threads append fresh registrations until killed.
fn child(spec: &str) {
    let (dir, cycle) = spec.split_once('|').unwrap();
    let ledger = Arc::new(Ledger::open(LedgerConfig::new(dir, ORIGIN)).unwrap());
    let plugin = key("crash-plugin");
    let _ = ledger.append(plugin_register(&plugin, "p").envelope());
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (ledger, out, plugin) = (Arc::clone(&ledger), Arc::clone(&out), plugin.did.clone());
            let cycle = cycle.to_owned();
            std::thread::spawn(move || {
                for i in 0..100_000 {
                    let h = key(&format!("crash-{cycle}-{t}-{i}"));
                    let r = ledger
                        .append(handler_register(&h, "h", &plugin).envelope())
                        .unwrap();
                    let mut o = out.lock().unwrap();
                    writeln!(o, "ack {} {}", r.index, r.id).unwrap();
                    o.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
