//! The storage contract (src/storage), checked the same way on every
//! backend: fjall in a temp dir, and a real PostgreSQL database when
//! `PULSE_TEST_POSTGRES` names a server (always in CI).

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use common::Place;

use std::collections::BTreeMap;
use std::ops::Bound;

use pulse_ledger::storage::{KeyRange, Order, PostgresBackend, StorageError};

fn all(entries: pulse_ledger::storage::Entries) -> Vec<(Vec<u8>, Vec<u8>)> {
    entries.collect::<Result<Vec<_>, StorageError>>().unwrap()
}

fn writes_are_atomic_in_order_and_per_space(place: Place) {
    let s = place.storage();
    let (a, b) = (s.space("alpha").unwrap(), s.space("beta").unwrap());
    let mut batch = s.batch();
    batch.insert(&a, b"k1", b"one");
    batch.insert(&b, b"k1", b"other space");
    batch.insert(&a, b"k2", b"first");
    batch.insert(&a, b"k2", b"second");
    batch.insert(&a, b"gone", b"x");
    batch.remove(&a, b"gone");
    batch.remove(&a, b"back");
    batch.insert(&a, b"back", b"again");
    s.commit(batch).unwrap();
    assert_eq!(a.get(b"k1").unwrap().as_deref(), Some(&b"one"[..]));
    assert_eq!(b.get(b"k1").unwrap().as_deref(), Some(&b"other space"[..]));
    assert_eq!(a.get(b"k2").unwrap().as_deref(), Some(&b"second"[..]));
    assert_eq!(a.get(b"gone").unwrap(), None);
    assert_eq!(a.get(b"back").unwrap().as_deref(), Some(&b"again"[..]));
    assert!(!a.contains_key(b"missing").unwrap());
    // The same space by name is the same space.
    assert_eq!(
        s.space("alpha").unwrap().get(b"k1").unwrap().as_deref(),
        Some(&b"one"[..])
    );
    // An empty batch commits nothing and fails nothing.
    s.commit(s.batch()).unwrap();
    // An empty key is refused, and the batch with it is not written.
    let mut bad = s.batch();
    bad.insert(&a, b"k9", b"never");
    bad.insert(&a, b"", b"empty");
    let err = s.commit(bad).unwrap_err();
    assert!(err.to_string().contains("a key must be 1 to"), "{err}");
    assert_eq!(a.get(b"k9").unwrap(), None);
    // Everything is there after a reopen.
    drop((a, b, s));
    let s = place.storage();
    let a = s.space("alpha").unwrap();
    assert_eq!(
        all(a.iter()),
        vec![
            (b"back".to_vec(), b"again".to_vec()),
            (b"k1".to_vec(), b"one".to_vec()),
            (b"k2".to_vec(), b"second".to_vec()),
        ]
    );
}
on_every_backend!(writes_are_atomic_in_order_and_per_space);

fn scans_match_an_ordered_map_across_pages(place: Place) {
    let s = place.storage();
    let space = s.space("scan").unwrap();
    let mut model = BTreeMap::new();
    let mut batch = s.batch();
    // 700 keys of 1–4 bytes, with 0x00 and 0xff runs: more than two pages
    // of a PostgreSQL scan.
    let mut x: u32 = 7;
    for _ in 0..700 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let len = 1 + (x >> 8) as usize % 4;
        let key: Vec<u8> = (0..len)
            .map(|i| match (x >> (10 + i * 3)) % 5 {
                0 => 0x00,
                1 => 0xff,
                n => (n * 40) as u8,
            })
            .collect();
        let value = x.to_be_bytes().to_vec();
        batch.insert(&space, &key, &value);
        model.insert(key, value);
    }
    s.commit(batch).unwrap();
    let keys: Vec<Vec<u8>> = model.keys().cloned().collect();
    let bound = |i: usize, kind: usize| match kind {
        0 => Bound::Included(keys[i % keys.len()].clone()),
        1 => Bound::Excluded(keys[i % keys.len()].clone()),
        _ => Bound::Unbounded,
    };
    for i in 0..40 {
        let range = KeyRange {
            start: bound(i * 7, i % 3),
            end: bound(i * 13 + 5, (i / 3) % 3),
        };
        let expected: Vec<(Vec<u8>, Vec<u8>)> = model
            .iter()
            .filter(|(k, _)| range.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(
            all(space.scan(range.clone(), Order::Ascending)),
            expected,
            "{range:?}"
        );
        let mut reversed = expected.clone();
        reversed.reverse();
        assert_eq!(
            all(space.scan(range.clone(), Order::Descending)),
            reversed,
            "{range:?} descending"
        );
    }
    for prefix in [&[][..], &[0x00], &[0xff], &[0xff, 0xff], &[80]] {
        let expected: Vec<_> = model
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(all(space.prefix(prefix)), expected, "prefix {prefix:?}");
    }
    assert_eq!(
        space.last_key_value().unwrap(),
        model
            .iter()
            .next_back()
            .map(|(k, v)| (k.clone(), v.clone()))
    );
    // A scan stopped early reads no further (and must not fail).
    assert_eq!(space.iter().take(3).count(), 3);
}
on_every_backend!(scans_match_an_ordered_map_across_pages);

fn a_snapshot_sees_neither_later_commits_nor_part_of_one(place: Place) {
    let s = place.storage();
    let space = s.space("snap").unwrap();
    let mut batch = s.batch();
    for i in 0u16..300 {
        batch.insert(&space, i.to_be_bytes(), b"before");
    }
    s.commit(batch).unwrap();
    let snap = s.snapshot().unwrap();
    let mut batch = s.batch();
    for i in 0u16..300 {
        batch.insert(&space, i.to_be_bytes(), b"after");
    }
    batch.insert(&space, 999u16.to_be_bytes(), b"new");
    batch.remove(&space, 0u16.to_be_bytes());
    s.commit(batch).unwrap();
    assert_eq!(
        snap.get(&space, 0u16.to_be_bytes()).unwrap().as_deref(),
        Some(&b"before"[..])
    );
    assert_eq!(snap.get(&space, 999u16.to_be_bytes()).unwrap(), None);
    let seen = all(snap.iter(&space));
    assert_eq!(seen.len(), 300);
    assert!(seen.iter().all(|(_, v)| v == b"before"));
    // A clone reads the same point in time, from another thread too.
    let other = snap.clone();
    let space2 = space.clone();
    let n = std::thread::spawn(move || all(other.iter(&space2)).len())
        .join()
        .unwrap();
    assert_eq!(n, 300);
    // The current state has the later commit.
    assert_eq!(space.get(0u16.to_be_bytes()).unwrap(), None);
    assert_eq!(
        space.get(1u16.to_be_bytes()).unwrap().as_deref(),
        Some(&b"after"[..])
    );
    // Snapshots and stores dropped inside an async runtime do not panic.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        drop(snap);
        drop(space);
        drop(s);
    });
}
on_every_backend!(a_snapshot_sees_neither_later_commits_nor_part_of_one);

fn a_conditional_batch_is_written_only_while_its_expectations_hold(place: Place) {
    let s = place.storage();
    let (a, b) = (s.space("alpha").unwrap(), s.space("beta").unwrap());
    // Expecting a key absent, then holding what was written.
    let mut first = s.batch();
    first.expect(&a, b"head", None);
    first.insert(&a, b"head", b"1");
    first.insert(&b, b"entry1", b"x");
    s.commit(first).unwrap();
    let mut second = s.batch();
    second.expect(&a, b"head", Some(b"1"));
    second.expect(&b, b"entry2", None);
    second.insert(&a, b"head", b"2");
    second.insert(&b, b"entry2", b"y");
    s.commit(second).unwrap();
    // A writer that read head 1 and expects it still: refused whole.
    let mut stale = s.batch();
    stale.insert(&b, b"entry-stale", b"z");
    stale.remove(&b, b"entry1");
    stale.expect(&b, b"entry1", Some(b"x"));
    stale.expect(&a, b"head", Some(b"1"));
    stale.insert(&a, b"head", b"stale");
    let err = s.commit(stale).unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert!(!err.is_unavailable(), "{err}");
    assert!(
        err.to_string().contains("expectation 2 of the batch"),
        "the message names the expectation that broke: {err}"
    );
    assert_eq!(a.get(b"head").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(b.get(b"entry1").unwrap().as_deref(), Some(&b"x"[..]));
    assert_eq!(b.get(b"entry-stale").unwrap(), None);
    // Expecting absent what is there is a conflict too; expecting only
    // (no writes) commits nothing and fails nothing when it holds.
    let mut present = s.batch();
    present.expect(&b, b"entry2", None);
    assert!(s.commit(present).unwrap_err().is_conflict());
    let mut check = s.batch();
    check.expect(&b, b"entry2", Some(b"y"));
    s.commit(check).unwrap();
    // An expected key obeys the key rules.
    let mut bad = s.batch();
    bad.expect(&a, b"", None);
    bad.insert(&a, b"k", b"v");
    let err = s.commit(bad).unwrap_err();
    assert!(
        err.to_string().contains("an expected key must be 1 to"),
        "{err}"
    );
    assert_eq!(a.get(b"k").unwrap(), None);
}
on_every_backend!(a_conditional_batch_is_written_only_while_its_expectations_hold);

/// Writers that read a counter and write it back expecting it unchanged
/// lose no increment, however their commits interleave: on PostgreSQL
/// each writer is a backend of its own, as separate nodes are.
fn conditional_writers_lose_no_update(place: Place) {
    const WRITERS: usize = 4;
    const EACH: u64 = 40;
    let stores = place.writers(WRITERS);
    let threads: Vec<_> = stores
        .into_iter()
        .enumerate()
        .map(|(w, s)| {
            std::thread::spawn(move || {
                let space = s.space("counter").unwrap();
                let mut conflicts = 0u64;
                for i in 0..EACH {
                    loop {
                        let old = space.get(b"n").unwrap();
                        let n = old
                            .as_deref()
                            .map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()));
                        let mut batch = s.batch();
                        batch.expect(&space, b"n", old.as_deref());
                        batch.insert(&space, b"n", (n + 1).to_be_bytes());
                        batch.insert(&space, format!("by-{w}-{i}"), (n + 1).to_be_bytes());
                        match s.commit(batch) {
                            Ok(()) => break,
                            Err(e) if e.is_conflict() => conflicts += 1,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = place.storage();
    let space = s.space("counter").unwrap();
    let total = WRITERS as u64 * EACH;
    assert_eq!(
        space.get(b"n").unwrap().as_deref(),
        Some(&total.to_be_bytes()[..])
    );
    // Every increment took its own number: no two writers wrote the same.
    let mut taken: Vec<u64> = all(space.prefix(b"by-"))
        .into_iter()
        .map(|(_, v)| u64::from_be_bytes(v.try_into().unwrap()))
        .collect();
    taken.sort_unstable();
    assert_eq!(taken, (1..=total).collect::<Vec<_>>());
}
on_every_backend!(conditional_writers_lose_no_update);

#[test]
fn postgres_notices_reach_the_other_nodes_once_committed() {
    use pulse_ledger::storage::Notice;
    let Some(place) = Place::new("postgres", "kv_notices") else {
        return;
    };
    let nodes = place.writers(2);
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut heard_by_a = a.notices().expect("a shared backend hears notices");
    let mut heard_by_b = b.notices().unwrap();
    let space = a.space("s").unwrap();
    let mut refused = a.batch();
    refused.expect(&space, b"k", Some(b"never"));
    refused.announce("log", "refused");
    assert!(a.commit(refused).unwrap_err().is_conflict());
    let mut batch = a.batch();
    batch.insert(&space, b"k", b"v");
    batch.announce("log", "12:abc");
    batch.announce("jobs", "");
    a.commit(batch).unwrap();
    let next = |rx: &mut tokio::sync::broadcast::Receiver<Notice>| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            match rx.try_recv() {
                Ok(n) => return Some(n),
                Err(tokio::sync::broadcast::error::TryRecvError::Empty)
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(_) => return None,
            }
        }
    };
    // The refused batch told nobody; the committed one told B, in order.
    assert_eq!(
        next(&mut heard_by_b),
        Some(Notice::Message {
            topic: "log".into(),
            payload: "12:abc".into()
        })
    );
    assert_eq!(
        next(&mut heard_by_b),
        Some(Notice::Message {
            topic: "jobs".into(),
            payload: String::new()
        })
    );
    // A hears B, not itself.
    let mut from_b = b.batch();
    from_b.announce("log", "13");
    b.commit(from_b).unwrap();
    assert_eq!(
        next(&mut heard_by_a),
        Some(Notice::Message {
            topic: "log".into(),
            payload: "13".into()
        })
    );
    // A topic outside the rules is refused before anything is written.
    let mut bad = a.batch();
    bad.insert(&space, b"k2", b"v");
    bad.announce("Log!", "x");
    let err = a.commit(bad).unwrap_err();
    assert!(err.to_string().contains("a notice's topic"), "{err}");
    assert_eq!(space.get(b"k2").unwrap(), None);
}

#[test]
fn postgres_schema_is_migrated_once_and_a_newer_one_is_refused() {
    let Some(url) = common::postgres_database("kv_schema") else {
        return;
    };
    let pg = PostgresBackend::connect(&url).unwrap();
    assert_eq!(pg.stored_version().unwrap(), 0);
    let (before, after) = pg.migrate().unwrap();
    assert_eq!(
        (before, after),
        (0, pulse_ledger::storage::postgres::SCHEMA_VERSION)
    );
    assert_eq!(
        pg.migrate().unwrap(),
        (after, after),
        "a second run changes nothing"
    );
    assert!(pg.is_empty().unwrap());
    drop(pg);
    // A schema from a newer pulse-ledger: refused, by name.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute("UPDATE pulse_schema SET version = 99")
            .await
            .unwrap();
    });
    let err = PostgresBackend::open(&url).err().expect("refused");
    assert!(err.to_string().contains("schema_too_new"), "{err}");
    assert!(err.to_string().contains("version 99"), "{err}");
}

#[test]
fn an_unreachable_postgres_is_unavailable_not_a_panic() {
    // Nothing listens on port 1 of loopback.
    let pg = PostgresBackend::connect("postgres://nobody@127.0.0.1:1/none").unwrap();
    let err = pg.migrate().unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    let err = PostgresBackend::connect("mysql://x")
        .err()
        .expect("refused");
    assert!(err.to_string().contains("not a PostgreSQL URL"), "{err}");
}

/// Blocking reads from inside an async task (as the server's start-up
/// does) keep working past tokio's cooperative budget (128 polls a
/// task): the PostgreSQL backend once spun for ever on the 129th.
fn blocking_reads_inside_an_async_task_finish(place: Place) {
    let s = place.storage();
    let space = s.space("coop").unwrap();
    let mut batch = s.batch();
    for i in 0u16..600 {
        batch.insert(&space, i.to_be_bytes(), b"v");
    }
    s.commit(batch).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let n = rt.block_on(async move {
            let mut n = 0;
            for i in 0u16..600 {
                n += usize::from(space.get(i.to_be_bytes()).unwrap().is_some());
            }
            n += all(space.iter()).len();
            n
        });
        let _ = tx.send(n);
    });
    let n = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("blocking reads in an async task never finished");
    assert_eq!(n, 1200);
}
on_every_backend!(blocking_reads_inside_an_async_task_finish);

/// Nodes sharing a database never read another node's change late: a
/// changed value is read as it now is, and a key of a write-once space
/// that was absent is found once written (only present values of such a
/// space may be kept in memory).
#[test]
fn postgres_nodes_read_each_others_writes_at_once() {
    let Some(place) = Place::new("postgres", "kv_shared_reads") else {
        return;
    };
    let nodes = place.writers(2);
    let (a, b) = (&nodes[0], &nodes[1]);
    let (mutable, once) = (a.space("mutable").unwrap(), a.space("once").unwrap());
    let (mutable_b, once_b) = (b.space("mutable").unwrap(), b.space("once").unwrap());
    for s in [a, b] {
        s.declare_write_once(&s.space("once").unwrap());
    }
    for round in 0u8..3 {
        let mut batch = a.batch();
        batch.insert(&mutable, b"k", [round]);
        batch.insert(&once, [round], b"v");
        // B looks before A writes: absent.
        assert_eq!(once_b.get([round]).unwrap(), None);
        a.commit(batch).unwrap();
        assert_eq!(mutable_b.get(b"k").unwrap(), Some(vec![round]));
        assert_eq!(once_b.get([round]).unwrap(), Some(b"v".to_vec()));
        // Read twice: the second may come from memory, and agrees.
        assert_eq!(once_b.get([round]).unwrap(), Some(b"v".to_vec()));
    }
}
