//! The verification CLI against real logs: `verify log` from a server and
//! from a stopped server's store, tampering with the store, forked
//! histories. Every test with a stored log runs on each storage backend
//! (a fjall data dir, and PostgreSQL when `PULSE_TEST_POSTGRES` is set):
//! the store is read directly with `verify log --data-dir DIR` on fjall and
//! `verify log --store URL --key-file FILE` on PostgreSQL.

#![allow(clippy::unwrap_used)] // test code: a panic is a failure report

#[macro_use]
mod common;

use std::process::{Command, Output};

use common::{Key, Place, handler_register, key, next, plugin_register, tempdir, update_handler};
use pulse_ledger::Action;
use pulse_ledger::audit::{AuditCode, LogAuditor};
use pulse_ledger::ledger::verify_checkpoint;

const ORIGIN: &str = "audit.test/log";

/// Fills a new log at `place` with `n` handlers of one plugin, some
/// updated, rotated and revoked; returns the log's DID.
fn fill(place: &Place, label: &str, n: usize) -> String {
    let ledger = place.ledger(ORIGIN);
    let p = key(&format!("{label}-plugin"));
    ledger
        .append(plugin_register(&p, "tools").envelope())
        .unwrap();
    for i in 0..n {
        let h = key(&format!("{label}-h{i}"));
        let h0 = handler_register(&h, "echo", &p.did);
        ledger.append(h0.envelope()).unwrap();
        if i % 3 == 0 {
            let h1 = update_handler(&h0, &h, "echo", &p.did, "1.1.0");
            ledger.append(h1.envelope()).unwrap();
        }
        if i % 5 == 0 {
            let k2 = key(&format!("{label}-h{i}-2"));
            let rot = next(
                &h0,
                &h,
                Action::Rotate {
                    new_key: k2.did.clone(),
                },
                Some(&k2),
            );
            if i % 3 != 0 {
                ledger.append(rot.envelope()).unwrap();
                let rev = next(&rot, &k2, Action::Revoke { reason: None }, None);
                ledger.append(rev.envelope()).unwrap();
            }
        }
    }
    let did = ledger.log_did().to_string();
    ledger.close();
    did
}

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_str(stdout(o).trim())
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(o), String::from_utf8_lossy(&o.stderr)))
}

/// The `serve` arguments that put its log at `place` (its data dir is
/// `place.dir()`): none on fjall; on PostgreSQL the store and the log key
/// file [`Place::open_ledger`] uses.
fn serve_args(place: &Place) -> Vec<String> {
    match place {
        Place::Fjall(_) => Vec::new(),
        Place::Postgres { dir, url } => vec![
            "--store".into(),
            url.clone(),
            "--log-key".into(),
            dir.join("log.key").display().to_string(),
        ],
    }
}

/// The `verify log` arguments that read the stopped server's store at
/// `place` directly: `--data-dir DIR` (its log.key lets the indexes be
/// checked too), or `--store URL --key-file DIR/log.key` on PostgreSQL.
fn store_args(place: &Place) -> Vec<String> {
    match place {
        Place::Fjall(dir) => vec!["--data-dir".into(), dir.display().to_string()],
        Place::Postgres { dir, url } => vec![
            "--store".into(),
            url.clone(),
            "--key-file".into(),
            dir.join("log.key").display().to_string(),
        ],
    }
}

/// `pulse-ledger verify log STORE ARGS` on the store at `place`.
fn verify_store(place: &Place, args: &[&str]) -> Output {
    let mut all = vec!["verify".to_owned(), "log".to_owned()];
    all.extend(store_args(place));
    all.extend(args.iter().map(|a| (*a).to_owned()));
    cli(&all.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A new, empty place on `place`'s backend, for another log.
fn another(place: &Place, name: &str) -> Place {
    let backend = match place {
        Place::Fjall(_) => "fjall",
        Place::Postgres { .. } => "postgres",
    };
    Place::new(backend, name).expect("PostgreSQL is configured: `place` is on it")
}

/// A new place holding `place`'s log key and no log yet: the operator's
/// other history under the same key.
fn same_key(place: &Place, name: &str) -> Place {
    let other = another(place, name);
    std::fs::copy(place.dir().join("log.key"), other.dir().join("log.key")).unwrap();
    other
}

/// A copy of the whole store at `place` (its server stopped), as an
/// operator could take: `cp -r` of the data dir; on PostgreSQL a new
/// database made from this one as its template, and a copy of the dir with
/// the log key.
fn copy_of(place: &Place, name: &str) -> Place {
    let copy = another(place, name);
    assert!(
        Command::new("cp")
            .args([
                "-r",
                &format!("{}/.", place.dir().display()),
                copy.dir().to_str().unwrap()
            ])
            .status()
            .unwrap()
            .success()
    );
    if let (Place::Postgres { url: from, .. }, Place::Postgres { url: to, .. }) = (place, &copy) {
        let db = |url: &str| url.rsplit_once('/').unwrap().1.to_owned();
        let admin = std::env::var("PULSE_TEST_POSTGRES").unwrap();
        // No session may be connected to a template (the server has
        // exited; PostgreSQL waits a few seconds for its sessions to end).
        sql(
            &admin,
            &format!("DROP DATABASE {} WITH (FORCE)", db(to)),
            &[],
        );
        sql(
            &admin,
            &format!("CREATE DATABASE {} TEMPLATE {}", db(to), db(from)),
            &[],
        );
    }
    copy
}

/// Runs one SQL statement on the database at `url`; the rows it touched.
fn sql(url: &str, statement: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let n = client
            .execute(statement, params)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
        drop(client);
        conn.await.unwrap().unwrap();
        n
    })
}

/// A server on the test log's name, on the log at `place`.
struct Server(common::Serve);

impl Server {
    fn start(place: &Place) -> Server {
        let mut args = vec!["--log-name".to_owned(), ORIGIN.to_owned()];
        args.extend(serve_args(place));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server(common::Serve::start(&args, place.dir()))
    }

    fn url(&self) -> &str {
        &self.0.url
    }

    fn stop(self) {
        self.0.stop();
    }
}

fn a_whole_log_verifies_from_a_server_and_from_its_data_dir(place: Place) {
    let dir = place.dir().to_path_buf();
    let did = fill(&place, "ok", 40);
    let cp = dir.join("seen.cp");
    let server = Server::start(&place);
    let o = cli(&[
        "verify",
        "log",
        "--server",
        server.url(),
        "--log-key",
        &did,
        "--save-checkpoint",
        cp.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stdout(&o));
    let v = json(&o);
    // 1 plugin + 40 handlers + 14 updates + 5 × (rotation + revoke).
    let entries = 1 + 40 + 14 + 2 * 5;
    assert_eq!(
        (
            v["entries"].as_u64(),
            v["subjects"].as_u64(),
            v["revoked"].as_u64()
        ),
        (Some(entries), Some(41), Some(5))
    );
    let saved = std::fs::read_to_string(&cp).unwrap();
    let checkpoint = verify_checkpoint(&saved, &pulse_ledger::Did::parse(&did).unwrap()).unwrap();
    assert_eq!(checkpoint.size, entries);
    assert_eq!(hex::encode(checkpoint.root), v["root"].as_str().unwrap());

    // The log grows; the next audit starts from the saved checkpoint.
    let more = cli(&["submit", "--server", server.url(), &{
        let f = dir.join("late.att");
        std::fs::write(&f, plugin_register(&key("ok-late"), "late").envelope()).unwrap();
        f.display().to_string()
    }]);
    assert!(more.status.success());
    let o = cli(&[
        "verify",
        "log",
        "--server",
        server.url(),
        "--log-key",
        &did,
        "--since-checkpoint",
        cp.to_str().unwrap(),
    ]);
    let text = stdout(&o);
    assert!(o.status.success(), "{text}");
    assert!(text.contains(&format!("{} entries", entries + 1)), "{text}");
    assert!(
        text.contains(&format!("earlier checkpoint of size {entries}")),
        "{text}"
    );

    // The wrong log key: the checkpoint does not verify.
    let o = cli(&[
        "verify",
        "log",
        "--server",
        server.url(),
        "--log-key",
        &key("not-the-log").did.to_string(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(json(&o)["code"], "bad_checkpoint");
    server.stop();

    // The stopped server's store, read directly (indexes included).
    let o = verify_store(&place, &["--log-key", &did, "--json"]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert_eq!(json(&o)["entries"].as_u64(), Some(entries + 1));
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("not checked"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // The store without the log's secret key (a copy of the data dir's
    // database alone; a PostgreSQL store with no --key-file): the entries
    // are audited all the same (the store's indexes cannot be opened).
    let keyless = match &place {
        Place::Fjall(_) => {
            let copy = tempdir("audit-ok-copy");
            assert!(
                Command::new("cp")
                    .args([
                        "-r",
                        &format!("{}/db", dir.display()),
                        copy.to_str().unwrap()
                    ])
                    .status()
                    .unwrap()
                    .success()
            );
            vec!["--data-dir".to_owned(), copy.display().to_string()]
        }
        Place::Postgres { url, .. } => vec!["--store".to_owned(), url.clone()],
    };
    let mut args: Vec<&str> = vec!["verify", "log"];
    args.extend(keyless.iter().map(String::as_str));
    args.extend(["--log-key", &did, "--json"]);
    let o = cli(&args);
    assert!(o.status.success(), "{}", stdout(&o));
    assert_eq!(json(&o)["entries"].as_u64(), Some(entries + 1));
    let note = String::from_utf8_lossy(&o.stderr);
    assert!(
        note.contains("the store's indexes were not checked (the entries were)"),
        "{note}"
    );

    // A saved checkpoint that is not the log's: a verdict, not a usage error.
    let forged = dir.join("forged.cp");
    std::fs::write(&forged, saved.replace("audit.test/log", "audit.test/other")).unwrap();
    let o = verify_store(
        &place,
        &[
            "--log-key",
            &did,
            "--since-checkpoint",
            forged.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(json(&o)["code"], "bad_checkpoint");

    // No server there: exit 3.
    let o = cli(&[
        "verify",
        "log",
        "--server",
        "http://127.0.0.1:9",
        "--log-key",
        &did,
    ]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
on_every_backend!(a_whole_log_verifies_from_a_server_and_from_its_data_dir);

/// Replaces the stored entry at `index` (the server is stopped) under the
/// pulse-ledger code, as an intruder with the store could: with fjall
/// itself in the data dir's database, or an SQL UPDATE of its `pulse_kv`
/// row (spec/storage.md).
fn edit_entry(place: &Place, index: u64, bytes: &[u8]) {
    match place {
        Place::Fjall(dir) => {
            let db = fjall::Database::builder(dir.join("db")).open().unwrap();
            let entries = db
                .keyspace("entries", fjall::KeyspaceCreateOptions::default)
                .unwrap();
            entries.insert(index.to_be_bytes(), bytes).unwrap();
            db.persist(fjall::PersistMode::SyncAll).unwrap();
        }
        Place::Postgres { url, .. } => {
            let key = index.to_be_bytes().to_vec();
            let value = bytes.to_vec();
            let rows = sql(
                url,
                "UPDATE pulse_kv SET value = $1 \
                 WHERE space = (SELECT id FROM pulse_spaces WHERE name = 'entries') AND key = $2",
                &[&value, &key],
            );
            assert_eq!(rows, 1, "entry {index} is one row of pulse_kv");
        }
    }
}

fn an_entry_edited_on_disk_is_named_by_index(place: Place) {
    let did = fill(&place, "edit", 12);
    let ledger = place.ledger(ORIGIN);
    let original = ledger.entry(7).unwrap();
    ledger.close();
    drop(ledger);
    // One flipped bit in the signature: the attestation no longer verifies.
    let mut flipped = original.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    edit_entry(&place, 7, &flipped);
    let o = verify_store(&place, &["--log-key", &did, "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v = json(&o);
    assert_eq!(
        (v["index"].as_u64(), v["code"].as_str()),
        (Some(7), Some("bad_signature"))
    );
    let text = stdout(&verify_store(&place, &["--log-key", &did]));
    assert!(text.starts_with("FAILED entry 7: bad_signature"), "{text}");

    // A valid attestation put in another's place: the root no longer
    // matches the signed checkpoint (chain rules may fail first).
    let stranger = plugin_register(&key("edit-stranger"), "x");
    edit_entry(&place, 7, stranger.envelope());
    let v = json(&verify_store(&place, &["--log-key", &did, "--json"]));
    assert_eq!(v["ok"], false);
    assert!(
        ["root_mismatch", "seq_gap", "prev_mismatch"].contains(&v["code"].as_str().unwrap()),
        "{v}"
    );
    // Put back: clean again, indexes included.
    edit_entry(&place, 7, &original);
    let o = verify_store(&place, &["--log-key", &did]);
    assert!(o.status.success(), "{}", stdout(&o));
}
on_every_backend!(an_entry_edited_on_disk_is_named_by_index);

fn a_forked_or_shrunk_history_is_reported_against_a_saved_checkpoint(a: Place) {
    // Other logs under the same log key with other histories: the operator
    // rewrote the log.
    let did = fill(&a, "audit-fork-a", 10);
    let b = same_key(&a, "audit-fork-b");
    let cp = a.dir().join("seen.cp");
    let o = verify_store(
        &a,
        &["--log-key", &did, "--save-checkpoint", cp.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stdout(&o));
    let size_a = verify_checkpoint(
        &std::fs::read_to_string(&cp).unwrap(),
        &pulse_ledger::Did::parse(&did).unwrap(),
    )
    .unwrap()
    .size;

    // Same key, other entries, same size: a fork.
    assert_eq!(fill(&b, "audit-fork-b", 10), did);
    let server = Server::start(&b);
    let v = json(&cli(&[
        "verify",
        "log",
        "--server",
        server.url(),
        "--log-key",
        &did,
        "--since-checkpoint",
        cp.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(v["code"], "fork", "{v}");
    server.stop();

    // A smaller tree after a larger one.
    let c = same_key(&a, "audit-fork-c");
    assert_eq!(fill(&c, "audit-fork-a", 3), did);
    let server = Server::start(&c);
    let o = cli(&[
        "verify",
        "log",
        "--server",
        server.url(),
        "--log-key",
        &did,
        "--since-checkpoint",
        cp.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(json(&o)["code"], "log_shrank");
    server.stop();

    // A longer history whose prefix differs from the saved one.
    let d = same_key(&a, "audit-fork-d");
    assert_eq!(fill(&d, "audit-fork-d", 20), did);
    let v = json(&verify_store(
        &d,
        &[
            "--log-key",
            &did,
            "--since-checkpoint",
            cp.to_str().unwrap(),
            "--json",
        ],
    ));
    assert_eq!(v["code"], "fork", "{v}");
    assert!(size_a > 0);
}
on_every_backend!(a_forked_or_shrunk_history_is_reported_against_a_saved_checkpoint);

// No store: the auditor over envelopes in memory, so one backend-free test.
#[test]
fn the_auditor_applies_chain_rules_across_the_whole_log() {
    let p: Key = key("rules-p");
    let h = key("rules-h");
    let p0 = plugin_register(&p, "tools");
    let h0 = handler_register(&h, "echo", &p.did);
    let h1 = update_handler(&h0, &h, "echo", &p.did, "2.0.0");
    // h1 before h0 breaks the chain where h1 is met.
    let mut a = LogAuditor::new(2);
    let e = a
        .push(&[p0.envelope().to_vec(), h1.envelope().to_vec()])
        .unwrap_err();
    assert_eq!((e.index, e.code.as_str()), (Some(1), "not_genesis"));
    // Duplicate genesis.
    let mut a = LogAuditor::new(1);
    let e = a
        .push(&[h0.envelope().to_vec(), h0.envelope().to_vec()])
        .unwrap_err();
    assert_eq!(e.index, Some(1));
    assert!(matches!(e.code, AuditCode::Attestation(_)));
    // In order: fine, and many more in parallel batches with one bad
    // signature deep inside is found at its index.
    let mut envs = vec![
        p0.envelope().to_vec(),
        h0.envelope().to_vec(),
        h1.envelope().to_vec(),
    ];
    for i in 0..500 {
        envs.push(
            plugin_register(&key(&format!("rules-many-{i}")), "m")
                .envelope()
                .to_vec(),
        );
    }
    let last = envs[321].len() - 1;
    envs[321][last] ^= 0x40;
    let mut a = LogAuditor::new(2);
    let e = a.push(&envs).unwrap_err();
    assert_eq!((e.index, e.code.as_str()), (Some(321), "bad_signature"));
}

/// The bundle is exported from a server on each backend; the byte flips are
/// then of that bundle's bytes, offline.
fn bundles_verify_offline_and_every_byte_flip_is_rejected(place: Place) {
    let dir = place.dir().to_path_buf();
    let did = fill(&place, "bundle", 12);
    let log = pulse_ledger::Did::parse(&did).unwrap();
    let server = Server::start(&place);
    // Handler 5 was registered, rotated and revoked.
    let subject = key("bundle-h5").did.to_string();
    let out = dir.join("h5.bundle");
    let o = cli(&[
        "bundle",
        "export",
        &subject,
        "--server",
        server.url(),
        "--out",
        out.to_str().unwrap(),
        "--log-key",
        &did,
    ]);
    assert!(
        o.status.success(),
        "{}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    server.stop();

    // Offline: no server running.
    let o = cli(&["verify", "bundle", out.to_str().unwrap(), "--log-key", &did]);
    let text = stdout(&o);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("bundle ok: 3 statements"), "{text}");
    assert!(text.contains("revoked  yes"), "{text}");
    let v = json(&cli(&[
        "verify",
        "bundle",
        out.to_str().unwrap(),
        "--log-key",
        &did,
        "--json",
    ]));
    assert_eq!(
        (v["ok"].as_bool(), v["statements"].as_u64()),
        (Some(true), Some(3))
    );

    let bytes = std::fs::read(&out).unwrap();
    let report = pulse_ledger::audit::verify_bundle(&bytes, &log).unwrap();
    assert!(report.state.revoked);
    // Another log's key: refused before anything else.
    let other = key("bundle-other-log").did;
    assert_eq!(
        pulse_ledger::audit::verify_bundle(&bytes, &other)
            .unwrap_err()
            .code
            .as_str(),
        "wrong_log_key"
    );
    // Every byte, two different flips each: always refused, always with a
    // named rule.
    let mut codes = std::collections::BTreeMap::new();
    for i in 0..bytes.len() {
        for mask in [0x01u8, 0x80] {
            let mut t = bytes.clone();
            t[i] ^= mask;
            let e = pulse_ledger::audit::verify_bundle(&t, &log)
                .expect_err(&format!("byte {i} ^ {mask:#x} was accepted"));
            *codes.entry(e.code.as_str()).or_insert(0) += 1;
        }
    }
    for expected in ["bundle_encoding", "bad_checkpoint", "bad_inclusion_proof"] {
        assert!(codes.contains_key(expected), "{codes:?}");
    }
    // Truncated and extended bundles too.
    for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
        assert!(pulse_ledger::audit::verify_bundle(&bytes[..cut], &log).is_err());
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(
        pulse_ledger::audit::verify_bundle(&longer, &log)
            .unwrap_err()
            .code
            .as_str(),
        "bundle_encoding"
    );
}
on_every_backend!(bundles_verify_offline_and_every_byte_flip_is_rejected);

fn single_proofs_verify_from_a_server_and_from_files(place: Place) {
    let dir = place.dir().to_path_buf();
    let did = fill(&place, "proofs", 6);
    let server = Server::start(&place);
    let p = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let old_cp = p("old.cp");
    let o = cli(&["log", "checkpoint", "--server", server.url()]);
    std::fs::write(&old_cp, &o.stdout).unwrap();
    // An attestation logged after the old checkpoint.
    let att = p("late.att");
    std::fs::write(
        &att,
        plugin_register(&key("proofs-late"), "late").envelope(),
    )
    .unwrap();
    assert!(
        cli(&["submit", "--server", server.url(), &att])
            .status
            .success()
    );

    let o = cli(&[
        "verify",
        "inclusion",
        "--attestation",
        &att,
        "--server",
        server.url(),
        "--log-key",
        &did,
        "--save-proof",
        &p("late.proof"),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stdout(&o));
    let v = json(&o);
    assert_eq!(v["index"].as_u64(), v["tree_size"].as_u64().map(|s| s - 1));
    let o = cli(&[
        "verify",
        "consistency",
        "--old",
        &old_cp,
        "--server",
        server.url(),
        "--log-key",
        &did,
        "--save-proof",
        &p("c.proof"),
    ]);
    assert!(o.status.success(), "{}", stdout(&o));
    let new_cp = p("new.cp");
    std::fs::write(
        &new_cp,
        cli(&["log", "checkpoint", "--server", server.url()]).stdout,
    )
    .unwrap();
    server.stop();

    // Offline, from the files.
    let o = cli(&[
        "verify",
        "inclusion",
        "--attestation",
        &att,
        "--proof",
        &p("late.proof"),
        "--log-key",
        &did,
    ]);
    assert!(o.status.success(), "{}", stdout(&o));
    let o = cli(&[
        "verify",
        "consistency",
        "--old",
        &old_cp,
        "--new",
        &new_cp,
        "--proof",
        &p("c.proof"),
        "--log-key",
        &did,
    ]);
    assert!(o.status.success(), "{}", stdout(&o));

    // Another attestation with this proof; a tampered consistency proof.
    let other = p("other.att");
    std::fs::write(
        &other,
        plugin_register(&key("proofs-other"), "o").envelope(),
    )
    .unwrap();
    let v = json(&cli(&[
        "verify",
        "inclusion",
        "--attestation",
        &other,
        "--proof",
        &p("late.proof"),
        "--log-key",
        &did,
        "--json",
    ]));
    assert_eq!(v["code"], "bad_inclusion_proof");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("c.proof")).unwrap()).unwrap();
    let first = c["proof"][0].as_str().unwrap().to_owned();
    let flipped = format!(
        "{}{}",
        if first.starts_with('0') { "1" } else { "0" },
        &first[1..]
    );
    c["proof"][0] = serde_json::Value::String(flipped);
    std::fs::write(p("bad.proof"), c.to_string()).unwrap();
    let o = cli(&[
        "verify",
        "consistency",
        "--old",
        &old_cp,
        "--new",
        &new_cp,
        "--proof",
        &p("bad.proof"),
        "--log-key",
        &did,
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(json(&o)["code"], "bad_consistency_proof");
    // --save-proof writes only a proof that verifies (spec/audit.md,
    // "Proof files"): neither a failing inclusion nor a failing
    // consistency proof is saved.
    for args in [
        vec![
            "verify",
            "inclusion",
            "--attestation",
            &other,
            "--proof",
            &p("late.proof"),
        ],
        vec![
            "verify",
            "consistency",
            "--old",
            &old_cp,
            "--new",
            &new_cp,
            "--proof",
            &p("bad.proof"),
        ],
    ] {
        let saved = p("not-saved.proof");
        let mut args = args.clone();
        args.extend(["--log-key", &did, "--save-proof", &saved]);
        let o = cli(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(
            !std::path::Path::new(&saved).exists(),
            "{args:?} saved a failing proof"
        );
    }
    // A checkpoint file that does not verify with the log key is the
    // verdict bad_checkpoint, exit status 1 (not a usage error), before
    // the store is opened: a data dir or a database that does not exist.
    let forged = p("forged.cp");
    let text = std::fs::read_to_string(&old_cp).unwrap();
    std::fs::write(&forged, text.replacen("\n", "\n9", 1)).unwrap();
    let missing_store = match &place {
        Place::Fjall(_) => ["--data-dir".to_owned(), p("no-such-dir")],
        Place::Postgres { url, .. } => [
            "--store".to_owned(),
            format!("{}/no_such_database", url.rsplit_once('/').unwrap().0),
        ],
    };
    for args in [
        vec![
            "verify",
            "consistency",
            "--old",
            &forged,
            "--new",
            &new_cp,
            "--proof",
            &p("c.proof"),
        ],
        vec![
            "verify",
            "log",
            &missing_store[0],
            &missing_store[1],
            "--since-checkpoint",
            &forged,
        ],
    ] {
        let mut args = args.clone();
        args.extend(["--log-key", &did, "--json"]);
        let o = cli(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?} {}", stdout(&o));
        assert_eq!(json(&o)["code"], "bad_checkpoint", "{args:?}");
    }
    // Old and new swapped: the log would have shrunk.
    let v = json(&cli(&[
        "verify",
        "consistency",
        "--old",
        &new_cp,
        "--new",
        &old_cp,
        "--proof",
        &p("c.proof"),
        "--log-key",
        &did,
        "--json",
    ]));
    assert_eq!(v["code"], "log_shrank", "{v}");
}
on_every_backend!(single_proofs_verify_from_a_server_and_from_files);

fn lines(o: &Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn the_monitor_reports_watched_statements_equivocations_and_forks_and_resumes(place: Place) {
    let dir = place.dir().to_path_buf();
    let did = fill(&place, "mon", 8);
    let state = dir.join("monitor.json");
    let (h3, h5) = (key("mon-h3"), key("mon-h5"));
    let server = Server::start(&place);
    let monitor = |url: &str, extra: &[&str]| {
        let mut args = vec![
            "monitor",
            "--server",
            url,
            "--log-key",
            &did,
            "--state",
            state.to_str().unwrap(),
            "--once",
            "--json",
        ];
        args.extend_from_slice(extra);
        cli(&args)
    };
    let watch3 = h3.did.to_string();
    let watch5 = h5.did.to_string();
    // First run: reads the log from the start; h5's three statements.
    let o = monitor(server.url(), &["--watch", &watch5]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = lines(&o);
    let seqs: Vec<u64> = out
        .iter()
        .filter(|l| l["type"] == "statement")
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![0, 1, 2], "{out:?}");
    assert_eq!(out.last().unwrap()["type"], "checkpoint");

    // A new statement about a newly watched identity; the restart does not
    // re-read or re-report the old ones.
    let p = key("mon-plugin");
    let h3_0 = handler_register(&h3, "echo", &p.did);
    let h3_1 = update_handler(&h3_0, &h3, "echo", &p.did, "1.1.0");
    let h3_2 = update_handler(&h3_1, &h3, "echo", &p.did, "3.0.0");
    let f = dir.join("h3-2.att");
    std::fs::write(&f, h3_2.envelope()).unwrap();
    assert!(
        cli(&["submit", "--server", server.url(), f.to_str().unwrap()])
            .status
            .success()
    );
    let o = monitor(
        server.url(),
        &["--watch", &watch5, "--watch", &watch3, "--exit-on-alert"],
    );
    assert_eq!(o.status.code(), Some(1), "a report with --exit-on-alert");
    let out = lines(&o);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(
        (
            out[0]["subject"].as_str(),
            out[0]["seq"].as_u64(),
            out[0]["kind"].as_str()
        ),
        (Some(watch3.as_str()), Some(2), Some("handler.update"))
    );
    let o = monitor(server.url(), &["--watch", &watch5, "--watch", &watch3]);
    assert_eq!(lines(&o).len(), 1, "nothing new: only the checkpoint line");

    // The same key signs a second seq 2: the log refuses it and keeps the
    // evidence; the monitor reports it once.
    let twin = update_handler(&h3_1, &h3, "echo", &p.did, "3.0.1");
    let f = dir.join("twin.att");
    std::fs::write(&f, twin.envelope()).unwrap();
    assert_eq!(
        cli(&["submit", "--server", server.url(), f.to_str().unwrap()])
            .status
            .code(),
        Some(1)
    );
    let out = lines(&monitor(server.url(), &["--watch", &watch3]));
    let alerts: Vec<_> = out.iter().filter(|l| l["type"] == "alert").collect();
    assert_eq!(alerts.len(), 1, "{out:?}");
    assert_eq!(alerts[0]["code"], "equivocation");
    assert!(
        lines(&monitor(server.url(), &["--watch", &watch3]))
            .iter()
            .all(|l| l["type"] != "alert")
    );
    server.stop();

    // The operator forks the log: two copies of the store, each given
    // one more entry. The monitor follows one; the other has a checkpoint
    // of the same size with another root.
    let fork = copy_of(&place, "audit-monitor-fork2");
    for (at, label) in [(&place, "mon-x"), (&fork, "mon-y")] {
        let ledger = at.ledger(ORIGIN);
        ledger
            .append(plugin_register(&key(label), "x").envelope())
            .unwrap();
        ledger.close();
    }
    let server = Server::start(&place);
    assert!(
        monitor(server.url(), &["--watch", &watch3, "--exit-on-alert"])
            .status
            .success()
    );
    server.stop();
    let server = Server::start(&fork);
    let o = monitor(server.url(), &["--watch", &watch3, "--exit-on-alert"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(lines(&o)[0]["code"], "fork", "{}", stdout(&o));
    server.stop();

    // A server with the same key and a shorter history: the monitor's saved
    // checkpoint catches it too.
    let other = same_key(&place, "audit-monitor-fork");
    assert_eq!(fill(&other, "mon-other", 3), did);
    let server = Server::start(&other);
    let o = monitor(server.url(), &["--watch", &watch3, "--exit-on-alert"]);
    assert_eq!(o.status.code(), Some(1));
    let out = lines(&o);
    assert_eq!(out[0]["type"], "alert");
    assert_eq!(out[0]["code"], "log_shrank", "{out:?}");
    server.stop();
    // Nothing was learned from the bad server: the state still holds the
    // real log's checkpoint.
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let cp = verify_checkpoint(
        saved["checkpoint"].as_str().unwrap(),
        &pulse_ledger::Did::parse(&did).unwrap(),
    )
    .unwrap();
    assert!(cp.size > 3);
}
on_every_backend!(the_monitor_reports_watched_statements_equivocations_and_forks_and_resumes);

/// Batch verification gives exactly the verdicts of one-at-a-time strict
/// verification, whatever is wrong with the signatures. No store: one
/// backend-free test.
#[test]
fn batched_verification_agrees_with_verify_attestation_entry_by_entry() {
    use pulse_ledger::audit::{verify_all, verify_parallel};
    use pulse_ledger::verify_attestation;
    let p = key("batch-p");
    let mut envs: Vec<Vec<u8>> = (0..300)
        .map(|i| {
            handler_register(&key(&format!("batch-{i}")), "echo", &p.did)
                .envelope()
                .to_vec()
        })
        .collect();
    // The signature is the envelope's last 64 bytes: R then S.
    let sig_at = |e: &Vec<u8>| e.len() - 64;
    // R replaced by the identity point (small order), by a non-canonical
    // y, S made non-canonical, a bit flipped in R and in S, and an entry
    // whose body is broken.
    let identity = {
        let mut r = [0u8; 32];
        r[0] = 1;
        r
    };
    let mut non_canonical_y = [0xffu8; 32];
    non_canonical_y[31] = 0x7f;
    non_canonical_y[0] = 0xee;
    for (n, edit) in [
        (7usize, 0u8),
        (64, 1),
        (65, 2),
        (130, 3),
        (200, 4),
        (299, 5),
    ] {
        let at = sig_at(&envs[n]);
        let e = &mut envs[n];
        match edit {
            0 => e[at..at + 32].copy_from_slice(&identity),
            1 => e[at..at + 32].copy_from_slice(&non_canonical_y),
            2 => e[at + 63] |= 0xf0, // S ≥ ℓ
            3 => e[at + 5] ^= 0x10,
            4 => e[at + 40] ^= 0x01,
            _ => e[10] ^= 0x01,
        }
    }
    let expected: Vec<Result<String, String>> = envs
        .iter()
        .map(|e| {
            verify_attestation(e)
                .map(|a| a.id().to_string())
                .map_err(|e| e.to_string())
        })
        .collect();
    for got in [
        verify_all(&envs),
        verify_parallel(&envs, 2),
        verify_parallel(&envs, 3),
    ] {
        let got: Vec<Result<String, String>> = got
            .into_iter()
            .map(|r| r.map(|a| a.id().to_string()).map_err(|e| e.to_string()))
            .collect();
        assert_eq!(got, expected);
    }
    assert_eq!(expected.iter().filter(|r| r.is_err()).count(), 6);
}

/// A log whose entries are near the largest code a handler may carry
/// (48 KiB each, so GetEntries pages stop at 4 MiB, short of 1,000 entries)
/// is audited from a server: a short page is followed by the rest.
fn a_log_of_large_entries_is_audited_from_a_server(place: Place) {
    let plugin = key("large-plugin");
    {
        let ledger = place.ledger("pulse-ledger.local/log");
        ledger
            .append(plugin_register(&plugin, "big").envelope())
            .unwrap();
        let envelopes: Vec<Vec<u8>> = (0..120)
            .map(|i| {
                let k = key(&format!("large-{i}"));
                common::handler_register_with(&k, &format!("h{i}"), &plugin.did, |s| {
                    s.code = Some(vec![b'#'; pulse_ledger::limits::MAX_CODE_BYTES - i]);
                })
                .envelope()
                .to_vec()
            })
            .collect();
        for r in ledger.append_batch(&envelopes) {
            r.unwrap();
        }
    }
    let args = serve_args(&place);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = common::Serve::start(&args, place.dir());
    let log_did = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut reg = pulse_ledger::api::proto::registry_client::RegistryClient::connect(
                server.url.clone(),
            )
            .await
            .unwrap();
            let info = common::log_info(&mut reg).await;
            assert_eq!(info.size, 121);
            info.log_did
        })
    };
    common::verify_log_passes(&server.url, &log_did);
    // And from the stopped server's store, indexes included.
    server.stop();
    let o = verify_store(&place, &["--log-key", &log_did, "--json"]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert_eq!(json(&o)["entries"].as_u64(), Some(121));
}
on_every_backend!(a_log_of_large_entries_is_audited_from_a_server);
