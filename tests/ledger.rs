//! The ledger on each storage backend (a fjall data dir, and a real
//! PostgreSQL database when configured): appends, rejections, idempotency,
//! equivocation evidence, proofs, checkpoints, reopening, listings,
//! concurrency and integrity checks on open.

#![allow(clippy::unwrap_used)] // test code: a panic is a failure report

#[macro_use]
mod common;

use std::sync::Arc;

use common::{Place, handler_register, key, next, plugin_register, update_handler};
use pulse_ledger::ledger::{
    Ledger, LedgerConfig, LedgerError, LedgerErrorCode, SubjectFilter, leaf_hash,
    verify_checkpoint, verify_consistency, verify_inclusion,
};
use pulse_ledger::{Action, Family};

fn open(place: &Place) -> Ledger {
    place.ledger("test.example/log")
}

/// Stores `value` under `key` in the ledger's space `space`, under the
/// ledger (closed), as a bug or an intruder with the disk could.
fn tamper(place: &Place, space: &str, key: &[u8], value: Option<&[u8]>) {
    let storage = place.storage();
    let space = storage.space(space).unwrap();
    let mut batch = storage.batch();
    match value {
        Some(v) => batch.insert(&space, key, v),
        None => batch.remove(&space, key),
    }
    storage.commit(batch).unwrap();
}

fn lifecycle_appends_in_order_with_proofs_and_checkpoints(place: Place) {
    let ledger = open(&place);
    let empty = ledger.head();
    assert_eq!(empty.size, 0);
    verify_checkpoint(&empty.checkpoint, ledger.log_did()).unwrap();

    let (p, h, h2) = (key("plugin"), key("handler"), key("handler-2"));
    let a0 = plugin_register(&p, "runner");
    let a1 = handler_register(&h, "python.script", &p.did);
    let a2 = update_handler(&a1, &h, "python.script", &p.did, "1.1.0");
    let a3 = next(
        &a2,
        &h,
        Action::Rotate {
            new_key: h2.did.clone(),
        },
        Some(&h2),
    );
    let a4 = update_handler(&a3, &h2, "python.script", &p.did, "1.2.0");
    let a5 = next(&a4, &h2, Action::Revoke { reason: None }, None);
    let all = [&a0, &a1, &a2, &a3, &a4, &a5];
    let mut heads = vec![empty];
    for (i, att) in all.iter().enumerate() {
        let r = ledger.append(att.envelope()).unwrap();
        assert_eq!(r.index, i as u64);
        assert!(!r.duplicate);
        assert_eq!(
            r.head.size,
            i as u64 + 1,
            "the returned head includes the entry"
        );
        let cp = verify_checkpoint(&r.head.checkpoint, ledger.log_did()).unwrap();
        assert_eq!((cp.size, cp.root), (r.head.size, r.head.root));
        let path = ledger.inclusion_proof(r.index, r.head.size).unwrap();
        verify_inclusion(
            &leaf_hash(att.envelope()),
            r.index,
            r.head.size,
            &path,
            &r.head.root,
        )
        .unwrap();
        heads.push(r.head);
    }
    for old in &heads {
        for new in &heads[..] {
            if old.size <= new.size {
                let proof = ledger.consistency_proof(old.size, new.size).unwrap();
                verify_consistency(old.size, new.size, &old.root, &new.root, &proof).unwrap();
            }
        }
    }
    let state = ledger.subject_state(&h.did).unwrap();
    assert!(state.revoked);
    assert_eq!(state.seq, 4);
    assert_eq!(state.key, h2.did);
    let (chain, more) = ledger.chain(&h.did, 0, 100).unwrap();
    assert!(more.is_none());
    let (tail, _) = ledger.chain(&h.did, 3, 1).unwrap();
    assert_eq!(tail[0].0, 4);
    assert_eq!(ledger.chain(&h.did, 0, 2).unwrap().1, Some(2));
    assert_eq!(
        chain.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(chain[2].1, a3.envelope());
    assert_eq!(ledger.entry(3).unwrap(), a3.envelope());
    assert_eq!(ledger.entries(1, 100).unwrap().len(), 5);
    assert_eq!(ledger.index_of(&a4.id()).unwrap(), 4);
    let head = ledger.head();
    let (index, path) = ledger.inclusion_proof_by_id(&a4.id(), head.size).unwrap();
    assert_eq!(index, 4);
    verify_inclusion(&leaf_hash(a4.envelope()), 4, head.size, &path, &head.root).unwrap();
    assert_eq!(
        ledger
            .inclusion_proof_by_id(&a4.id(), 4)
            .unwrap_err()
            .code(),
        "index_out_of_range"
    );
    let report = ledger.audit().unwrap();
    assert_eq!((report.entries, report.subjects), (6, 2));
}
on_every_backend!(lifecycle_appends_in_order_with_proofs_and_checkpoints);

fn rejections_change_nothing_and_resubmission_is_idempotent(place: Place) {
    let ledger = open(&place);
    let (p, h, stranger) = (key("p"), key("h"), key("stranger"));
    let g = handler_register(&h, "h", &p.did);
    let u1 = update_handler(&g, &h, "h", &p.did, "2.0.0");
    let code = |e: LedgerError| e.code();

    // An update before its register.
    assert_eq!(
        code(ledger.append(u1.envelope()).unwrap_err()),
        "not_genesis"
    );
    assert_eq!(ledger.head().size, 0);
    ledger.append(g.envelope()).unwrap();
    let before = ledger.head();

    let mut bad = u1.envelope().to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(code(ledger.append(&bad).unwrap_err()), "bad_signature");
    assert_eq!(
        code(ledger.append(b"not cbor").unwrap_err()),
        "malformed_cbor"
    );
    let u2 = update_handler(&u1, &h, "h", &p.did, "3.0.0");
    assert_eq!(code(ledger.append(u2.envelope()).unwrap_err()), "seq_gap");
    let by_stranger = update_handler(&g, &stranger, "h", &p.did, "2.0.0");
    assert_eq!(
        code(ledger.append(by_stranger.envelope()).unwrap_err()),
        "wrong_signer"
    );
    assert_eq!(ledger.head(), before, "rejections change nothing");

    // The same attestation twice: one entry.
    let r1 = ledger.append(u1.envelope()).unwrap();
    let r2 = ledger.append(u1.envelope()).unwrap();
    assert_eq!((r1.index, r2.index), (1, 1));
    assert!(r2.duplicate);
    assert_eq!(ledger.head().size, 2);

    // A stranger at a taken seq proves nothing: rejected, no evidence.
    let stranger_fork = update_handler(&g, &stranger, "h", &p.did, "9.9.9");
    assert_eq!(
        code(ledger.append(stranger_fork.envelope()).unwrap_err()),
        "wrong_signer"
    );
    assert!(ledger.equivocations(None, 10).unwrap().0.is_empty());

    // The handler's own key signing a second seq 1: equivocation, kept as evidence.
    let fork = next(
        &g,
        &h,
        Action::Revoke {
            reason: Some("fork".into()),
        },
        None,
    );
    match ledger.append(fork.envelope()).unwrap_err() {
        LedgerError::Equivocation {
            evidence,
            logged_index,
            ..
        } => {
            assert_eq!(logged_index, 1);
            assert_eq!(evidence.first.id(), u1.id());
            assert_eq!(evidence.second.id(), fork.id());
        }
        other => panic!("expected equivocation, got {other}"),
    }
    let (ev, more) = ledger.equivocations(None, 10).unwrap();
    assert!(more.is_none());
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].subject.clone(), ev[0].seq, ev[0].logged_index),
        (h.did.clone(), 1, 1)
    );
    assert_eq!(ev[0].rejected, fork.envelope());
    assert_eq!(ledger.head().size, 2, "the fork was not appended");
    ledger.audit().unwrap();
}
on_every_backend!(rejections_change_nothing_and_resubmission_is_idempotent);

fn reopening_restores_the_head_without_replay_and_refuses_mismatches(place: Place) {
    let (p, hs) = (
        key("p"),
        (0..37).map(|i| key(&format!("h{i}"))).collect::<Vec<_>>(),
    );
    let head = {
        let ledger = open(&place);
        ledger.append(plugin_register(&p, "p").envelope()).unwrap();
        for h in &hs {
            ledger
                .append(handler_register(h, "h", &p.did).envelope())
                .unwrap();
        }
        ledger.head()
    };
    let first_did = open(&place).log_did().clone();
    let log_did = {
        let ledger = open(&place);
        assert_eq!(ledger.head(), head);
        assert_eq!(
            ledger.log_did(),
            &first_did,
            "the log keeps its key across restarts"
        );
        let extra = key("late");
        let r = ledger
            .append(handler_register(&extra, "late", &p.did).envelope())
            .unwrap();
        assert_eq!(r.index, 38);
        let proof = ledger.consistency_proof(head.size, r.head.size).unwrap();
        verify_consistency(head.size, r.head.size, &head.root, &r.head.root, &proof).unwrap();
        ledger.audit().unwrap();
        ledger.log_did().clone()
    };

    // Another log name for the same data dir is refused.
    let err = place
        .open_ledger(LedgerConfig::new(place.dir(), "other.example/log"))
        .err()
        .unwrap();
    assert_eq!(err.code(), "config");

    // A stored tree size that disagrees with the signed checkpoint is refused.
    tamper(&place, "meta", b"size", Some(&5u64.to_be_bytes()));
    let err = place
        .open_ledger(LedgerConfig::new(place.dir(), "test.example/log"))
        .err()
        .unwrap();
    assert_eq!(err.code(), "integrity", "{err}");
    assert!(err.to_string().contains("refusing to serve"), "{err}");
    let _ = log_did;
}
on_every_backend!(reopening_restores_the_head_without_replay_and_refuses_mismatches);

fn listings_follow_schema_changes_and_paginate(place: Place) {
    let ledger = open(&place);
    let (p1, p2) = (key("p1"), key("p2"));
    ledger
        .append(plugin_register(&p1, "runner-one").envelope())
        .unwrap();
    ledger
        .append(plugin_register(&p2, "runner-two").envelope())
        .unwrap();
    let mut regs = Vec::new();
    for i in 0..25 {
        let h = key(&format!("list-{i}"));
        let name = if i % 2 == 0 {
            format!("py.{i:02}")
        } else {
            format!("sh.{i:02}")
        };
        let g = handler_register(&h, &name, &p1.did);
        ledger.append(g.envelope()).unwrap();
        regs.push((h, g, name));
    }
    // Move one handler to the other plugin and rename it; revoke another.
    let (h0, g0, _) = &regs[0];
    let moved = update_handler(g0, h0, "zz.moved", &p2.did, "2.0.0");
    ledger.append(moved.envelope()).unwrap();
    let (h1, g1, _) = &regs[1];
    ledger
        .append(next(g1, h1, Action::Revoke { reason: None }, None).envelope())
        .unwrap();

    let py = SubjectFilter {
        name_prefix: "py.".into(),
        ..Default::default()
    };
    let (page, _) = ledger.list_subjects(&py, None, 100).unwrap();
    assert_eq!(page.len(), 12, "13 py handlers, one renamed away");
    assert!(page.windows(2).all(|w| w[0].name <= w[1].name));

    // Pagination visits every live handler once.
    let all = SubjectFilter::default();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let (page, next_cursor) = ledger.list_subjects(&all, cursor.as_deref(), 7).unwrap();
        seen.extend(page.iter().map(|r| r.head.subject.clone()));
        match next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen.len(), 24, "25 handlers less one revoked");
    let mut dedup = seen.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), seen.len());
    let with_revoked = SubjectFilter {
        include_revoked: true,
        ..Default::default()
    };
    assert_eq!(
        ledger
            .list_subjects(&with_revoked, None, 100)
            .unwrap()
            .0
            .len(),
        25
    );
    let plugins = SubjectFilter {
        family: Some(Family::Plugin),
        ..Default::default()
    };
    assert_eq!(
        ledger.list_subjects(&plugins, None, 100).unwrap().0.len(),
        2
    );
    let on_p2 = SubjectFilter {
        plugin: Some(p2.did.clone()),
        ..Default::default()
    };
    let (page, _) = ledger.list_subjects(&on_p2, None, 100).unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].name, "zz.moved");

    assert_eq!(
        ledger.handlers_of_plugin(&p2.did, None, 100).unwrap().len(),
        1
    );
    assert_eq!(
        ledger.handlers_of_plugin(&p1.did, None, 100).unwrap().len(),
        24
    );
    let first = ledger.handlers_of_plugin(&p1.did, None, 10).unwrap();
    let rest = ledger
        .handlers_of_plugin(&p1.did, Some(&first[9].head.subject), 100)
        .unwrap();
    assert_eq!(first.len() + rest.len(), 24);
    ledger.audit().unwrap();
}
on_every_backend!(listings_follow_schema_changes_and_paginate);

fn concurrent_appenders_share_commits_and_get_distinct_indexes(place: Place) {
    let ledger = Arc::new(open(&place));
    let p = key("p");
    ledger.append(plugin_register(&p, "p").envelope()).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let ledger = Arc::clone(&ledger);
            let plugin = p.did.clone();
            std::thread::spawn(move || {
                (0..40)
                    .map(|i| {
                        let h = key(&format!("c-{t}-{i}"));
                        let g = handler_register(&h, "c", &plugin);
                        let r = ledger.append(g.envelope()).unwrap();
                        let path = ledger.inclusion_proof(r.index, r.head.size).unwrap();
                        verify_inclusion(
                            &leaf_hash(g.envelope()),
                            r.index,
                            r.head.size,
                            &path,
                            &r.head.root,
                        )
                        .unwrap();
                        r.index
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut indexes: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    indexes.sort_unstable();
    assert_eq!(indexes, (1..=320).collect::<Vec<u64>>());
    assert_eq!(ledger.head().size, 321);
    ledger.audit().unwrap();
}
on_every_backend!(concurrent_appenders_share_commits_and_get_distinct_indexes);

fn reads_beyond_the_log_are_clear_errors(place: Place) {
    let ledger = open(&place);
    let code = |e: LedgerError| e.code();
    assert_eq!(code(ledger.entry(0).unwrap_err()), "index_out_of_range");
    assert_eq!(
        code(ledger.inclusion_proof(0, 1).unwrap_err()),
        "size_out_of_range"
    );
    assert_eq!(
        code(ledger.consistency_proof(0, 3).unwrap_err()),
        "size_out_of_range"
    );
    assert_eq!(
        code(ledger.subject(&key("nobody").did).unwrap_err()),
        "not_found"
    );
    assert!(matches!(
        ledger.index_of(&pulse_ledger::AttestationId([0; 32])),
        Err(LedgerError::Ledger {
            code: LedgerErrorCode::NotFound,
            ..
        })
    ));
}
on_every_backend!(reads_beyond_the_log_are_clear_errors);

fn audit_catches_tampered_nodes_and_indexes_and_open_refuses_a_missing_key(place: Place) {
    let p = key("p");
    {
        let ledger = open(&place);
        ledger.append(plugin_register(&p, "p").envelope()).unwrap();
        for i in 0..9 {
            ledger
                .append(handler_register(&key(&format!("t{i}")), "t", &p.did).envelope())
                .unwrap();
        }
        // A plugin statement about a handler's ID at a seq it already has:
        // family_mismatch, not evidence.
        let h = key("t0");
        let g = handler_register(&h, "t", &p.did);
        let revoke = next(&g, &h, Action::Revoke { reason: None }, None);
        ledger.append(revoke.envelope()).unwrap();
        let cross = plugin_register(&h, "t0");
        assert_eq!(
            ledger.append(cross.envelope()).unwrap_err().code(),
            "family_mismatch"
        );
        assert!(ledger.equivocations(None, 10).unwrap().0.is_empty());
        ledger.audit().unwrap();
    }
    // Leaf 0's stored hash is not on the right edge of an 11-entry tree, so
    // open (which reads only the right edge) succeeds and the audit must
    // catch it.
    let mut leaf0 = vec![0u8];
    leaf0.extend(0u64.to_be_bytes());
    tamper(&place, "nodes", &leaf0, Some(&[0u8; 32]));
    {
        let ledger = open(&place);
        let err = ledger.audit().unwrap_err();
        assert_eq!(err.code(), "integrity");
        assert!(
            err.to_string().contains("tree node at level 0 index 0"),
            "{err}"
        );
    }
    // Restore leaf 0, then drop a name index key.
    {
        let storage = place.storage();
        let first = storage
            .space("entries")
            .unwrap()
            .get(0u64.to_be_bytes())
            .unwrap()
            .unwrap();
        let by_name = storage.space("by_name").unwrap();
        let (k, _) = by_name.iter().next().unwrap().unwrap();
        // Spaces hold the storage open (fjall allows one opener).
        drop((by_name, storage));
        tamper(&place, "nodes", &leaf0, Some(&leaf_hash(&first)));
        tamper(&place, "by_name", &k, None);
    }
    {
        let ledger = open(&place);
        let err = ledger.audit().unwrap_err();
        assert!(err.to_string().contains("name index"), "{err}");
    }
    std::fs::remove_file(place.dir().join("log.key")).unwrap();
    let err = place
        .open_ledger(LedgerConfig::new(place.dir(), "test.example/log"))
        .err()
        .unwrap();
    assert_eq!(err.code(), "config");
    assert!(
        err.to_string().contains("restore the log's key file"),
        "{err}"
    );
    assert!(
        !place.dir().join("log.key").exists(),
        "no new key was made for an existing log"
    );
}
on_every_backend!(audit_catches_tampered_nodes_and_indexes_and_open_refuses_a_missing_key);

fn one_group_commit_with_several_statements_about_one_subject(place: Place) {
    let ledger = open(&place);
    let (p1, p2, h) = (key("sb-p1"), key("sb-p2"), key("sb-h"));
    let g = handler_register(&h, "alpha", &p1.did);
    let u1 = update_handler(&g, &h, "beta", &p2.did, "1.1.0");
    let u2 = update_handler(&u1, &h, "alpha", &p1.did, "1.2.0");
    let fork = next(&g, &h, Action::Revoke { reason: None }, None);
    let gap = update_handler(&u2, &h, "gamma", &p1.did, "9.0.0");
    let gap = update_handler(&gap, &h, "gamma", &p1.did, "9.0.1");
    let results = ledger.append_batch(&[
        g.envelope(),
        u1.envelope(),
        u2.envelope(),
        u1.envelope(),
        fork.envelope(),
        gap.envelope(),
        b"junk".as_slice(),
    ]);
    let codes: Vec<String> = results
        .iter()
        .map(|r| match r {
            Ok(rc) => format!("{}{}", rc.index, if rc.duplicate { "d" } else { "" }),
            Err(e) => e.code().to_owned(),
        })
        .collect();
    assert_eq!(
        codes,
        [
            "0",
            "1",
            "2",
            "1d",
            "equivocation",
            "seq_gap",
            "malformed_cbor"
        ]
    );
    let receipts: Vec<_> = results
        .iter()
        .take(3)
        .map(|r| r.as_ref().unwrap())
        .collect();
    assert_eq!(
        receipts[0].head, receipts[2].head,
        "one commit, one checkpoint"
    );
    assert_eq!(ledger.head().size, 3);

    // The name went alpha → beta → alpha and the plugin p1 → p2 → p1 within
    // one batch: the indexes hold the final state only.
    let alpha = SubjectFilter {
        name_prefix: "alpha".into(),
        ..Default::default()
    };
    assert_eq!(ledger.list_subjects(&alpha, None, 10).unwrap().0.len(), 1);
    let beta = SubjectFilter {
        name_prefix: "beta".into(),
        ..Default::default()
    };
    assert!(ledger.list_subjects(&beta, None, 10).unwrap().0.is_empty());
    assert_eq!(
        ledger.handlers_of_plugin(&p1.did, None, 10).unwrap().len(),
        1
    );
    assert!(
        ledger
            .handlers_of_plugin(&p2.did, None, 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(ledger.equivocations(None, 10).unwrap().0.len(), 1);
    ledger.audit().unwrap();
}
on_every_backend!(one_group_commit_with_several_statements_about_one_subject);

fn a_selective_listing_stops_after_max_scan_keys_and_returns_a_cursor(place: Place) {
    use pulse_ledger::ledger::MAX_SCAN;
    let ledger = open(&place);
    let (p, other) = (key("scan-p"), key("scan-other"));
    let regs: Vec<Vec<u8>> = std::iter::once(plugin_register(&p, "p").envelope().to_vec())
        .chain((0..MAX_SCAN + 50).map(|i| {
            handler_register(&key(&format!("scan-{i}")), "s", &p.did)
                .envelope()
                .to_vec()
        }))
        .collect();
    for chunk in regs.chunks(1000) {
        for r in ledger.append_batch(chunk) {
            r.unwrap();
        }
    }
    // No handler is bound to `other`: the first call examines MAX_SCAN keys,
    // finds nothing, and says where to go on; the second reaches the end.
    let filter = SubjectFilter {
        plugin: Some(other.did.clone()),
        ..Default::default()
    };
    let (page, cursor) = ledger.list_subjects(&filter, None, 10).unwrap();
    assert!(page.is_empty());
    let cursor = cursor.expect("a cursor after a capped scan");
    let (page, cursor) = ledger.list_subjects(&filter, Some(&cursor), 10).unwrap();
    assert!(page.is_empty() && cursor.is_none());
}
on_every_backend!(a_selective_listing_stops_after_max_scan_keys_and_returns_a_cursor);

/// Several nodes (each its own backend, as separate `serve` processes
/// are) append to one log on one PostgreSQL database at once: one
/// sequence of indexes, one chain per subject whichever node took each
/// statement, duplicates and equivocations seen across nodes, every node
/// catching up with the others' appends, and every checkpoint any node
/// signed consistent with every other.
#[test]
fn several_nodes_on_one_postgres_append_one_log() {
    const NODES: usize = 3;
    const EACH: usize = 40;
    let Some(place) = Place::new("postgres", "ledger_nodes") else {
        return;
    };
    let origin = "nodes.example/log";
    // The key exists before the nodes start (an operator gives every node
    // the same key file); they start together on an empty database.
    let keys = common::tempdir("ledger-nodes-key");
    drop(Ledger::open(LedgerConfig::new(&keys, origin)).unwrap());
    std::fs::copy(keys.join("log.key"), place.dir().join("log.key")).unwrap();
    let openers: Vec<_> = place
        .writers(NODES)
        .into_iter()
        .map(|storage| {
            let dir = place.dir().to_path_buf();
            std::thread::spawn(move || {
                Ledger::open_on(
                    storage,
                    &dir.join("log.key"),
                    LedgerConfig::new(&dir, origin),
                )
                .unwrap()
            })
        })
        .collect();
    let nodes: Vec<Arc<Ledger>> = openers
        .into_iter()
        .map(|t| Arc::new(t.join().unwrap()))
        .collect();
    let p = key("nodes-plugin");
    let first = nodes[0]
        .append(plugin_register(&p, "runner").envelope())
        .unwrap();
    assert_eq!(first.index, 0);
    // One subject's chain, a statement through each node in turn: each
    // node judges the next statement on the head another node wrote.
    let h = key("nodes-handler");
    let mut chain = vec![handler_register(&h, "chained", &p.did)];
    for v in ["1.1.0", "1.2.0"] {
        let prev = chain.last().unwrap();
        chain.push(update_handler(prev, &h, "chained", &p.did, v));
    }
    let mut receipts = vec![first];
    for (i, att) in chain.iter().enumerate() {
        receipts.push(nodes[i % NODES].append(att.envelope()).unwrap());
    }
    // Read-your-writes: another node answers for what this one just
    // acknowledged, at once, without waiting to hear of it.
    for _ in 0..20 {
        let late = key(&format!("ryw-{}", receipts.len()));
        let att = handler_register(&late, "ryw", &p.did);
        let r = nodes[0].append(att.envelope()).unwrap();
        assert_eq!(nodes[1].entry(r.index).unwrap(), att.envelope());
        let path = nodes[2].inclusion_proof(r.index, r.head.size).unwrap();
        verify_inclusion(
            &leaf_hash(att.envelope()),
            r.index,
            r.head.size,
            &path,
            &r.head.root,
        )
        .unwrap();
        receipts.push(r);
    }
    // The same statement through another node is a duplicate, at its index.
    let again = nodes[2].append(chain[0].envelope()).unwrap();
    assert!(again.duplicate);
    assert_eq!(again.index, receipts[1].index);
    // A second history for the last seq, through another node.
    let fork = update_handler(&chain[1], &h, "chained", &p.did, "9.9.9");
    match nodes[0].append(fork.envelope()) {
        Err(LedgerError::Equivocation { logged_index, .. }) => {
            assert_eq!(logged_index, receipts[3].index);
        }
        other => panic!("expected equivocation evidence, got {other:?}"),
    }
    // All nodes at once.
    let threads: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(n, ledger)| {
            let ledger = Arc::clone(ledger);
            let plugin = p.did.clone();
            std::thread::spawn(move || {
                (0..EACH)
                    .map(|i| {
                        let h = key(&format!("node-{n}-{i}"));
                        ledger
                            .append(handler_register(&h, "many", &plugin).envelope())
                            .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for t in threads {
        receipts.extend(t.join().unwrap());
    }
    let total = (1 + chain.len() + 20 + NODES * EACH) as u64;
    let mut indexes: Vec<u64> = receipts.iter().map(|r| r.index).collect();
    indexes.sort_unstable();
    assert_eq!(indexes, (0..total).collect::<Vec<u64>>(), "one sequence");
    // Every node comes to the same head without appending again, and its
    // watchers hear of the size (a moment after the head is published).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let sizes = || {
        nodes
            .iter()
            .map(|n| (n.head().size, *n.watch_size().borrow()))
            .collect::<Vec<_>>()
    };
    while sizes().iter().any(|&s| s != (total, total)) {
        assert!(
            std::time::Instant::now() < deadline,
            "nodes did not catch up (head, watched): {:?}",
            sizes()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let root = nodes[0].head().root;
    for n in &nodes {
        assert_eq!(n.head().root, root);
    }
    // Every head any node signed is in one history with every other.
    let log_did = nodes[0].log_did().clone();
    let mut heads: Vec<_> = receipts.iter().map(|r| r.head.clone()).collect();
    heads.sort_by_key(|h| h.size);
    heads.dedup_by_key(|h| h.size);
    for pair in heads.windows(2) {
        let (old, new) = (&pair[0], &pair[1]);
        verify_checkpoint(&old.checkpoint, &log_did).unwrap();
        verify_checkpoint(&new.checkpoint, &log_did).unwrap();
        let proof = nodes[2].consistency_proof(old.size, new.size).unwrap();
        verify_consistency(old.size, new.size, &old.root, &new.root, &proof).unwrap();
    }
    // A node's change log names subjects other nodes appended.
    let (changed, end) = nodes[1].changed_since(total - 1).unwrap();
    assert_eq!(end, total);
    let last = nodes[0].entry(total - 1).unwrap();
    let last = pulse_ledger::verify_attestation(&last).unwrap();
    assert_eq!(changed, vec![*last.statement().subject.public_key()]);
    assert_eq!(
        nodes[1].subject_state(&h.did).unwrap().head,
        chain.last().unwrap().id(),
        "the chain's head is its last statement, whichever node took it"
    );
    for n in &nodes {
        n.audit().unwrap();
    }
}
