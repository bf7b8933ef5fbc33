//! The job store's own tests: record formats, opening old stores, live
//! records.

use super::super::job::{Attempt, CancelReason, DeadReason, HoldReason, Progress, Refusal};
use super::*;

fn handler() -> Did {
    crate::Did::from_public_key([
        0x3b, 0x6a, 0x27, 0xbc, 0xce, 0xb6, 0xa4, 0x2d, 0x62, 0xa3, 0xa8, 0xd0, 0x2a, 0x6f, 0x0d,
        0x73, 0x65, 0x32, 0x15, 0x77, 0x1d, 0xe2, 0x43, 0xa6, 0x3a, 0xc0, 0x48, 0xa1, 0x8b, 0x59,
        0xda, 0x29,
    ])
    .unwrap()
}

/// A job with every optional field set and one attempt of every
/// outcome, in `state`.
fn full_job(state: JobState) -> Job {
    let outcomes = super::super::OUTCOMES;
    Job {
        id: JobId::new(1_700_000_000_000, (7 << 32) | 0xdead_beef),
        handler: handler(),
        payload: b"payload".to_vec(),
        priority: 3,
        run_at: 1_700_000_000_500,
        idempotency_key: Some("order-42".into()),
        limits: JobLimits {
            max_attempts: 5,
            timeout_ms: 30_000,
            max_cost: Some(1_000),
        },
        parent: Some(JobId::new(1_600_000_000_000, 1)),
        state,
        attempts: outcomes
            .iter()
            .enumerate()
            .map(|(i, o)| Attempt {
                number: i as u32 + 1,
                lease: LeaseToken([i as u8; 16]),
                started_at: 1_700_000_001_000 + i as u64,
                last_heartbeat: 1_700_000_001_100 + i as u64,
                ended_at: Some(1_700_000_001_200 + i as u64),
                outcome: Some(*o),
                error: Some(format!("error {i}")),
                cost: 10 + i as u64,
                authorised_under: Some((i as u64, 100 + i as u64)),
                node: None,
                reserved: 0,
            })
            .collect(),
        progress: Progress {
            percent: 40,
            message: "halfway".into(),
            checkpoint: vec![1, 2, 3],
        },
        total_cost: 91,
        result: Some(b"result".to_vec()),
        last_error: Some("last".into()),
        consecutive_crashes: 2,
        retry_at: Some(1_700_000_002_000),
        updated_at: 1_700_000_003_000,
        series_start: 0,
        trace_parent: None,
    }
}

/// One record of every state, reason and record type, by name.
fn golden_cases() -> Vec<(String, Vec<u8>)> {
    let refusals = [
        Refusal::HandlerNotFound,
        Refusal::HandlerRevoked,
        Refusal::PluginNotRegistered,
        Refusal::PluginRevoked,
        Refusal::PluginNotAuthorised,
        Refusal::PluginNotConnected,
        Refusal::LedgerUnreadable,
    ];
    let mut states = vec![
        JobState::Queued,
        JobState::Held(HoldReason::Budget),
        JobState::Held(HoldReason::Plugin),
        JobState::Running,
        JobState::Retrying,
        JobState::Succeeded,
        JobState::Dead(DeadReason::AttemptsExhausted),
        JobState::Dead(DeadReason::NonRetryable),
        JobState::Dead(DeadReason::Poison),
        JobState::Cancelled(CancelReason::Requested),
        JobState::Cancelled(CancelReason::Budget),
    ];
    states.extend(refusals.map(|r| JobState::Dead(DeadReason::Refused(r))));
    let mut out: Vec<(String, Vec<u8>)> = states
        .into_iter()
        .map(|state| {
            let job = full_job(state);
            let stored = Stored {
                placement: placement(&job, 1_700_000_000_000),
                job,
            };
            (format!("job/{state:?}"), record_to_vec(&stored))
        })
        .collect();
    let mut bare = Job::new(
        JobId::new(5, 6),
        handler(),
        &JobRequest::default(),
        JobLimits::resolve(
            &crate::HandlerSchema::new("h", "1.0.0", handler()),
            &JobRequest::default(),
        )
        .unwrap(),
        5,
    );
    bare.state = JobState::Queued;
    out.push((
        "job/bare".into(),
        record_to_vec(&Stored {
            placement: None,
            job: bare,
        }),
    ));
    out.push((
        "log_line".into(),
        record_to_vec(&LogLine {
            seq: 0,
            attempt: 2,
            at_ms: 1_700_000_000_000,
            line: "hello".into(),
        }),
    ));
    out.push((
        "budget".into(),
        record_to_vec(&Budget {
            per_hour: Some(100),
            per_day: None,
        }),
    ));
    out
}

fn golden(version: u8) -> Vec<(String, Vec<u8>)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/golden/job-records-v{version}.txt"));
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| {
            let (name, hex) = l.split_once(' ').unwrap();
            (name.to_owned(), hex::decode(hex).unwrap())
        })
        .collect()
}

/// Reads `bytes` as the record `name` and checks it is `expected`.
fn assert_reads_as(name: &str, bytes: &[u8], expected: &[u8]) {
    if name.starts_with("job/") {
        let read: Stored = record_from_slice(bytes).unwrap();
        let want: Stored = record_from_slice(expected).unwrap();
        assert_eq!(read.job, want.job, "{name}");
        assert_eq!(read.placement, want.placement, "{name}");
    } else if name == "log_line" {
        let read: LogLine = record_from_slice(bytes).unwrap();
        assert_eq!(read.line, "hello");
        assert_eq!((read.attempt, read.at_ms), (2, 1_700_000_000_000));
    } else {
        let read: Budget = record_from_slice(bytes).unwrap();
        assert_eq!((read.per_hour, read.per_day), (Some(100), None));
    }
}

/// Today's code writes exactly the golden bytes of this version and
/// reads them back: reordering a field or variant of a record type
/// fails here (see the rule in `pulse/record.rs`).
#[test]
fn records_match_the_golden_bytes() {
    let cases = golden_cases();
    if std::env::var_os("PULSE_LEDGER_BLESS").is_some() {
        let text: String = cases
            .iter()
            .map(|(name, bytes)| format!("{name} {}\n", hex::encode(bytes)))
            .collect();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
            "tests/golden/job-records-v{}.txt",
            super::super::record::RECORD_VERSION
        ));
        std::fs::write(path, text).unwrap();
    }
    let golden = golden(super::super::record::RECORD_VERSION);
    assert_eq!(golden.len(), cases.len(), "one golden line per case");
    for ((name, bytes), (gname, gbytes)) in cases.iter().zip(&golden) {
        assert_eq!(name, gname);
        assert_eq!(
            hex::encode(bytes),
            hex::encode(gbytes),
            "{name}: bytes changed"
        );
        assert_reads_as(name, gbytes, bytes);
    }
}

/// Records written by earlier versions still read, as the same values.
#[test]
fn records_of_earlier_versions_still_read() {
    let cases = golden_cases();
    let old = golden(1);
    assert_eq!(old.len(), cases.len());
    for ((name, bytes), (gname, gbytes)) in cases.iter().zip(&old) {
        assert_eq!(name, gname);
        assert_eq!(gbytes[0], 1, "{name}");
        assert_reads_as(name, gbytes, bytes);
        // Version 0: the same record without its version byte.
        assert_reads_as(name, &gbytes[1..], bytes);
    }
}

/// A ledger in a new temp dir, for a store test to open jobs in.
fn scratch_ledger(name: &str) -> (std::path::PathBuf, crate::ledger::Ledger) {
    let dir = std::env::temp_dir().join(format!(
        "pulse-ledger-{name}-{}-{}",
        std::process::id(),
        crate::clock::unix_ms()
    ));
    let config = crate::ledger::LedgerConfig::new(&dir, format!("{name}/log"));
    (dir, crate::ledger::Ledger::open(config).unwrap())
}

/// On a single server the records of live jobs are read from memory
/// as last written: each transition replaces the kept record, an
/// ended job leaves, and what is answered equals what is stored.
#[test]
fn live_records_follow_every_write_and_ended_jobs_leave() {
    let (dir, ledger) = scratch_ledger("live-records");
    let store = JobStore::open(&ledger).unwrap();
    let schema = crate::HandlerSchema::new("h", "1.0.0", handler());
    let job = store
        .enqueue(&handler(), &schema, &JobRequest::default(), 1_000)
        .unwrap()
        .0;
    let other = store
        .enqueue(&handler(), &schema, &JobRequest::default(), 1_000)
        .unwrap()
        .0;
    assert_eq!(store.live.size().0, 2);
    let from_storage = |id: &JobId| -> Job {
        let raw = store.ks(Jk::Jobs).get(id.0).unwrap().unwrap();
        record_from_slice::<Stored>(&raw).unwrap().job
    };
    let lease = LeaseToken([7; 16]);
    store
        .update(&job.id, 2_000, |j| j.dispatch(lease, 2_000).map(|_| ()))
        .unwrap();
    let kept = store.live.get(&job.id).expect("kept after its dispatch");
    assert_eq!(kept.job, from_storage(&job.id));
    assert_eq!(store.get(&job.id).unwrap(), from_storage(&job.id));
    assert!(matches!(
        store.get(&job.id).unwrap().state,
        JobState::Running
    ));
    store
        .update(&job.id, 3_000, |j| {
            j.cancel(CancelReason::Requested, 3_000).map(|_| ())
        })
        .unwrap();
    assert!(store.live.get(&job.id).is_none(), "an ended job leaves");
    assert!(store.get(&job.id).unwrap().state.is_terminal());
    assert_eq!(store.live.size().0, 1);
    // A new group naming a stored ID is refused before it writes.
    let taken = store.check_unused(&[JobId([9; 16]), other.id]).unwrap_err();
    assert!(taken.to_string().contains("already taken"), "{taken}");
    assert!(store.check_unused(&[JobId([9; 16])]).is_ok());
    // A failed commit leaves nothing kept: the store is the truth.
    store.commit_failed();
    assert_eq!(store.live.size(), (0, 0));
    assert_eq!(store.get(&other.id).unwrap(), from_storage(&other.id));
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

/// An enqueue that writes a job ready to run wakes the dispatcher once it
/// is written and in the ready queue; a job due later, or one found by its
/// idempotency key, wakes nobody.
#[test]
fn an_enqueue_wakes_the_dispatcher_for_ready_jobs_only() {
    let (dir, ledger) = scratch_ledger("wake-on-ready");
    let store = std::sync::Arc::new(JobStore::open(&ledger).unwrap());
    let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
    {
        let (seen, store) = (seen.clone(), std::sync::Arc::downgrade(&store));
        store.upgrade().unwrap().wake_on_ready(move || {
            let ready = store.upgrade().map(|s| s.queue_sizes().0);
            seen.lock().unwrap().push(ready);
        });
    }
    let schema = crate::HandlerSchema::new("h", "1.0.0", handler());
    let keyed = JobRequest {
        idempotency_key: Some("once".into()),
        ..JobRequest::default()
    };
    let (job, existed) = store.enqueue(&handler(), &schema, &keyed, 1_000).unwrap();
    assert!(!existed);
    assert_eq!(*seen.lock().unwrap(), [Some(1)], "woken with the job ready");
    let later = JobRequest {
        run_at_ms: 60_000,
        ..JobRequest::default()
    };
    store.enqueue(&handler(), &schema, &later, 1_000).unwrap();
    let (again, existed) = store.enqueue(&handler(), &schema, &keyed, 1_000).unwrap();
    assert!(existed);
    assert_eq!(again.id, job.id);
    assert_eq!(seen.lock().unwrap().len(), 1, "nothing new was ready");
    assert_eq!(store.queue_sizes().0, 1);
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

/// The queues live in memory: a reopened store rebuilds them from the
/// state index and the records, exactly as they were; the queue spaces
/// an earlier version filled are emptied at the first open and never
/// written again.
#[test]
fn queues_are_rebuilt_at_open_and_stored_queue_spaces_emptied() {
    let (dir, ledger) = scratch_ledger("queues");
    let schema = crate::HandlerSchema::new("h", "1.0.0", handler());
    let at = |run_at_ms: u64, priority: u8| JobRequest {
        run_at_ms,
        priority,
        ..JobRequest::default()
    };
    let queues = |store: &JobStore| {
        let q = store.queues();
        (
            [Jk::Ready, Jk::Delayed, Jk::Running, Jk::Held].map(|k| q.set(k).clone()),
            q.ready_by_handler.clone(),
        )
    };
    let stored_queue_keys = |store: &JobStore| {
        [Jk::Ready, Jk::Delayed, Jk::Running, Jk::Held]
            .iter()
            .map(|k| store.ks(*k).iter().count())
            .sum::<usize>()
    };
    let before = {
        let store = JobStore::open(&ledger).unwrap();
        for priority in [0, 5, 9] {
            store
                .enqueue(&handler(), &schema, &at(1_000, priority), 1_000)
                .unwrap();
        }
        store
            .enqueue(&handler(), &schema, &at(90_000, 1), 1_000)
            .unwrap();
        let running = store
            .dispatch_next(LeaseToken([7; 16]), 2_000)
            .unwrap()
            .unwrap();
        assert_eq!(running.state, JobState::Running);
        let held = store
            .enqueue(&handler(), &schema, &at(1_000, 2), 1_000)
            .unwrap()
            .0;
        store
            .update(&held.id, 3_000, |j| {
                j.hold(super::super::job::HoldReason::Plugin, 3_000)
            })
            .unwrap();
        let done = store
            .enqueue(&handler(), &schema, &at(1_000, 3), 1_000)
            .unwrap()
            .0;
        store
            .update(&done.id, 3_000, |j| {
                j.cancel(CancelReason::Requested, 3_000).map(|_| ())
            })
            .unwrap();
        assert_eq!(store.queue_sizes(), (2, 1, 1, 1));
        assert_eq!(stored_queue_keys(&store), 0, "a queue space was written");
        // As an earlier version left it: entries in the queue spaces
        // (one of them stale), and no marker.
        let mut batch = store.batch();
        batch.insert(store.ks(Jk::Ready), keyed(&[9], &JobId::new(1, 1)), b"");
        batch.insert(store.ks(Jk::Running), keyed(&[0; 8], &running.id), b"");
        batch.remove(store.ks(Jk::Meta), META_QUEUES_IN_MEMORY);
        store.storage.commit(batch).unwrap();
        queues(&store)
    };
    let store = JobStore::open(&ledger).unwrap();
    assert_eq!(queues(&store), before);
    assert_eq!(
        stored_queue_keys(&store),
        0,
        "the old queue spaces were kept"
    );
    assert!(
        store
            .ks(Jk::Meta)
            .get(META_QUEUES_IN_MEMORY)
            .unwrap()
            .is_some()
    );
    // Dispatch order survives the reopen: 9 is running, 5 is next.
    let next = store
        .dispatch_next(LeaseToken([8; 16]), 4_000)
        .unwrap()
        .unwrap();
    assert_eq!(next.priority, 5);
    drop(store);
    drop(ledger);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Four jobs of [`handler`], enqueued in this order and left running,
/// held, cancelled and queued.
fn one_job_in_each_state(store: &JobStore, schema: &crate::HandlerSchema) -> [Job; 4] {
    let jobs = [0; 4].map(|_| {
        store
            .enqueue(&handler(), schema, &JobRequest::default(), 1_000)
            .unwrap()
            .0
    });
    let started = store
        .dispatch_next(LeaseToken([7; 16]), 2_000)
        .unwrap()
        .unwrap();
    assert_eq!(started.id, jobs[0].id);
    store
        .update(&jobs[1].id, 3_000, |j| j.hold(HoldReason::Plugin, 3_000))
        .unwrap();
    store
        .update(&jobs[2].id, 3_000, |j| {
            j.cancel(CancelReason::Requested, 3_000).map(|_| ())
        })
        .unwrap();
    jobs
}

/// Live records are in `jobs` and finished ones in `job_done`, and
/// nothing else indexes them. A store written before (every record in
/// `jobs`, a state-index entry per job, with running and held under bytes
/// of their own as the oldest versions left them, and a finished-index
/// entry per finished job) is moved at its first open, with its queues,
/// its listings and its pruning unchanged.
#[test]
fn finished_records_are_kept_apart_and_old_stores_moved_at_open() {
    let (dir, ledger) = scratch_ledger("finished-apart");
    let schema = crate::HandlerSchema::new("h", "1.0.0", handler());
    let keys = |store: &JobStore, k: Jk| -> Vec<Vec<u8>> {
        store.ks(k).iter().map(|kv| kv.unwrap().0).collect()
    };
    let listed = |store: &JobStore, filter: JobFilter| -> Vec<JobId> {
        let (jobs, next) = store.list_jobs(&filter, None, 100).unwrap();
        assert_eq!(next, None);
        jobs.iter().map(|j| j.id).collect()
    };
    let state = |s: JobState| JobFilter {
        state: Some(s),
        ..JobFilter::default()
    };
    let (queued, running, held, done, queues) = {
        let store = JobStore::open(&ledger).unwrap();
        let [running, held, done, queued] = one_job_in_each_state(&store, &schema);
        let mut live = vec![
            running.id.0.to_vec(),
            held.id.0.to_vec(),
            queued.id.0.to_vec(),
        ];
        live.sort();
        assert_eq!(keys(&store, Jk::Jobs), live);
        assert_eq!(keys(&store, Jk::Done), [keyed(&[6], &done.id)]);
        assert!(
            keys(&store, Jk::ByState).is_empty(),
            "an index entry was written"
        );
        // As an earlier version left it.
        let mut batch = store.batch();
        let raw = store
            .ks(Jk::Done)
            .get(keyed(&[6], &done.id))
            .unwrap()
            .unwrap();
        batch.remove(store.ks(Jk::Done), keyed(&[6], &done.id));
        batch.insert(store.ks(Jk::Jobs), done.id.0, raw);
        for (id, byte) in [(queued.id, 0), (running.id, 2), (held.id, 1), (done.id, 6)] {
            batch.insert(store.ks(Jk::ByState), keyed(&[byte], &id), b"");
        }
        batch.insert(
            store.ks(Jk::Finished),
            keyed(&3_000u64.to_be_bytes(), &done.id),
            b"",
        );
        batch.remove(store.ks(Jk::Meta), META_FINISHED_APART);
        batch.remove(store.ks(Jk::Meta), META_FINISH_IN_STATE);
        store.storage.commit(batch).unwrap();
        let q = store.queues();
        let queues = [Jk::Ready, Jk::Delayed, Jk::Running, Jk::Held].map(|k| q.set(k).clone());
        drop(q);
        (queued, running, held, done, queues)
    };
    let store = JobStore::open(&ledger).unwrap();
    for marker in [META_FINISHED_APART, META_FINISH_IN_STATE] {
        assert!(store.ks(Jk::Meta).get(marker).unwrap().is_some());
    }
    assert_eq!(keys(&store, Jk::Done), [keyed(&[6], &done.id)], "not moved");
    assert_eq!(keys(&store, Jk::Jobs).len(), 3);
    assert!(keys(&store, Jk::ByState).is_empty() && keys(&store, Jk::Finished).is_empty());
    let q = store.queues();
    assert_eq!(
        [Jk::Ready, Jk::Delayed, Jk::Running, Jk::Held].map(|k| q.set(k).clone()),
        queues
    );
    drop(q);
    assert_eq!(store.get(&done.id).unwrap(), done_job(&store, &done.id));
    assert_eq!(listed(&store, state(JobState::Queued)), [queued.id]);
    assert_eq!(listed(&store, state(JobState::Running)), [running.id]);
    assert_eq!(
        listed(&store, state(JobState::Held(HoldReason::Budget))),
        [held.id]
    );
    assert_eq!(listed(&store, state(JobState::Retrying)), []);
    assert_eq!(
        listed(&store, state(JobState::Cancelled(CancelReason::Budget))),
        [done.id]
    );
    // Every job, live and finished merged in ID order, both ways.
    let all = [running.id, held.id, done.id, queued.id];
    let oldest_first = JobFilter {
        oldest_first: true,
        ..JobFilter::default()
    };
    assert_eq!(listed(&store, oldest_first), all);
    let mut newest_first = all.to_vec();
    newest_first.reverse();
    assert_eq!(listed(&store, JobFilter::default()), newest_first);
    let live = JobFilter {
        live: true,
        oldest_first: true,
        ..JobFilter::default()
    };
    assert_eq!(listed(&store, live), [running.id, held.id, queued.id]);
    // Finishing moves the record; a retry moves it back.
    store
        .update(&running.id, 4_000, |j| {
            j.cancel(CancelReason::Requested, 4_000).map(|_| ())
        })
        .unwrap();
    let in_done = |id: &JobId| store.ks(Jk::Done).get(keyed(&[6], id)).unwrap().is_some();
    assert!(store.ks(Jk::Jobs).get(running.id.0).unwrap().is_none());
    assert!(in_done(&running.id));
    store
        .update(&running.id, 5_000, |j| j.retry(5_000).map(|_| ()))
        .unwrap();
    assert!(!in_done(&running.id));
    assert_eq!(store.get(&running.id).unwrap().state, JobState::Queued);
    // The moved job is pruned as any other.
    assert_eq!(store.prune_finished(10_000, 10).unwrap(), 1);
    assert!(store.get(&done.id).is_err());
    drop(store);
    drop(ledger);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A store with more finished records than one commit of a move holds
/// (10,000 writes) is moved in several commits, every record once.
#[test]
fn many_finished_records_are_moved_in_several_commits() {
    let (dir, ledger) = scratch_ledger("finished-many");
    let schema = crate::HandlerSchema::new("h", "1.0.0", handler());
    let items: Vec<_> = (0..1_000)
        .map(|_| (handler(), schema.clone(), JobRequest::default()))
        .collect();
    let done = {
        let store = JobStore::open(&ledger).unwrap();
        let mut ids = Vec::new();
        for _ in 0..6 {
            ids.extend(
                store
                    .enqueue_batch(&items, 1_000)
                    .into_iter()
                    .map(|r| r.unwrap().0.id),
            );
        }
        let ops: Vec<(JobId, GroupOp<()>)> = ids
            .iter()
            .map(|id| {
                let op: GroupOp<()> =
                    Box::new(|j: &mut Job| j.cancel(CancelReason::Requested, 2_000).map(|_| ()));
                (*id, op)
            })
            .collect();
        for r in store.update_many(2_000, ops) {
            r.unwrap();
        }
        // Back to the earlier layout, in one batch.
        let mut batch = store.batch();
        for kv in store.ks(Jk::Done).iter() {
            let (key, record) = kv.unwrap();
            batch.remove(store.ks(Jk::Done), &key);
            batch.insert(store.ks(Jk::Jobs), &key[1..], record);
            batch.insert(store.ks(Jk::ByState), &key, b"");
        }
        batch.remove(store.ks(Jk::Meta), META_FINISHED_APART);
        store.storage.commit(batch).unwrap();
        ids
    };
    let store = JobStore::open(&ledger).unwrap();
    let moved: Vec<Vec<u8>> = store.ks(Jk::Done).iter().map(|kv| kv.unwrap().0).collect();
    let expected: Vec<Vec<u8>> = done.iter().map(|id| keyed(&[6], id)).collect();
    assert_eq!(moved.len(), 6_000);
    assert_eq!(moved, expected);
    assert_eq!(store.ks(Jk::Jobs).iter().count(), 0);
    assert_eq!(store.ks(Jk::ByState).iter().count(), 0);
    assert_eq!(store.get(&done[5_999]).unwrap().id, done[5_999]);
    drop(store);
    drop(ledger);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The finished job `id` as stored in job_done.
fn done_job(store: &JobStore, id: &JobId) -> Job {
    let raw = store.ks(Jk::Done).get(keyed(&[6], id)).unwrap().unwrap();
    record_from_slice::<Stored>(&raw).unwrap().job
}

/// A listing by a live state reads the live entries and skips the jobs
/// in other live states: a page of [`JobStore::list_jobs`] may hold none
/// and still have a cursor, and [`JobStore::list`] goes on until it finds
/// one or reaches the end. Held (and running) jobs on a single server
/// come from the queues in memory instead, while there are at most
/// [`LIST_SCAN`] of them.
#[test]
fn a_live_state_is_listed_past_a_scan_of_other_live_jobs() {
    let (dir, ledger) = scratch_ledger("live-scan");
    let schema = crate::HandlerSchema::new("h", "1.0.0", handler());
    let store = JobStore::open(&ledger).unwrap();
    let req = JobRequest::default();
    let items: Vec<_> = (0..1_000)
        .map(|_| (handler(), schema.clone(), req.clone()))
        .collect();
    let enqueue_many = |now: u64| -> Vec<JobId> {
        let mut ids = Vec::new();
        for _ in 0..=LIST_SCAN / 1_000 {
            for r in store.enqueue_batch(&items, now) {
                ids.push(r.unwrap().0.id);
            }
        }
        ids
    };
    let apply_to = |ids: &[JobId], now: u64, f: fn(&mut Job, u64) -> Result<(), PulseError>| {
        let ops: Vec<(JobId, GroupOp<()>)> = ids
            .iter()
            .map(|id| {
                let op: GroupOp<()> = Box::new(move |j: &mut Job| f(j, now));
                (*id, op)
            })
            .collect();
        for r in store.update_many(now, ops) {
            r.unwrap();
        }
    };
    let hold = |j: &mut Job, now: u64| j.hold(HoldReason::Plugin, now);
    let ids_of = |page: &[Job]| page.iter().map(|j| j.id).collect::<Vec<_>>();
    let held = JobFilter {
        state: Some(JobState::Held(HoldReason::Budget)),
        oldest_first: true,
        ..JobFilter::default()
    };

    // More than LIST_SCAN held jobs before one queued job.
    let many_held = enqueue_many(1_000);
    apply_to(&many_held, 2_000, hold);
    let queued = store.enqueue(&handler(), &schema, &req, 2_000).unwrap().0;
    let queued_only = JobFilter {
        state: Some(JobState::Queued),
        oldest_first: true,
        ..JobFilter::default()
    };
    let (page, next) = store.list_jobs(&queued_only, None, 10).unwrap();
    assert!(page.is_empty(), "the first page scanned only held jobs");
    assert!(next.is_some(), "an empty page before the end has a cursor");
    let (page, more) = store.list(&JobState::Queued, None, 10).unwrap();
    assert_eq!(ids_of(&page), [queued.id]);
    assert!(!more);
    // So many held jobs are listed from the index, in ID order.
    let (page, next) = store.list_jobs(&held, None, 10).unwrap();
    assert_eq!(ids_of(&page), many_held[..10]);
    assert_eq!(next, Some(many_held[9]));

    // A few held jobs behind more than LIST_SCAN queued ones: from memory,
    // where a scan's first page would be empty.
    apply_to(&many_held, 3_000, |j, now| {
        j.cancel(CancelReason::Requested, now).map(|_| ())
    });
    let many_queued = enqueue_many(4_000);
    let few_held: Vec<JobId> = (0..3)
        .map(|_| {
            store
                .enqueue(&handler(), &schema, &req, 4_000)
                .unwrap()
                .0
                .id
        })
        .collect();
    apply_to(&few_held, 5_000, hold);
    assert!(many_queued.len() > LIST_SCAN);
    let (page, next) = store.list_jobs(&held, None, 2).unwrap();
    assert_eq!(ids_of(&page), few_held[..2]);
    assert_eq!(next, Some(few_held[1]));
    let (page, next) = store.list_jobs(&held, next.as_ref(), 2).unwrap();
    assert_eq!(ids_of(&page), few_held[2..]);
    assert_eq!(next, None);
    let newest = JobFilter {
        oldest_first: false,
        ..held.clone()
    };
    let (page, next) = store.list_jobs(&newest, None, 10).unwrap();
    assert_eq!(ids_of(&page), [few_held[2], few_held[1], few_held[0]]);
    assert_eq!(next, None);
    let later = JobFilter {
        since_ms: Some(4_000),
        ..held.clone()
    };
    assert_eq!(store.list_jobs(&later, None, 10).unwrap().0.len(), 3);
    let after = JobFilter {
        since_ms: Some(4_001),
        ..held
    };
    assert!(store.list_jobs(&after, None, 10).unwrap().0.is_empty());
    drop(store);
    drop(ledger);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The live filter lists every live job, whatever its live state, in one
/// pass of the live entries, oldest first, and no finished job; with a
/// handler, only that handler's.
#[test]
fn the_live_filter_lists_every_live_state_in_one_pass() {
    let (dir, ledger) = scratch_ledger("live-filter");
    let schema = crate::HandlerSchema::new("h", "1.0.0", handler());
    let other = Did::from_public_key(
        ed25519_dalek::SigningKey::from_bytes(&[9; 32])
            .verifying_key()
            .to_bytes(),
    )
    .unwrap();
    let other_schema = crate::HandlerSchema::new("o", "1.0.0", other.clone());
    let store = JobStore::open(&ledger).unwrap();
    let [running, held, done, queued] = one_job_in_each_state(&store, &schema);
    let theirs = store
        .enqueue(&other, &other_schema, &JobRequest::default(), 4_000)
        .unwrap()
        .0;
    let listed = |filter: &JobFilter, limit: usize| {
        let mut ids = Vec::new();
        let mut cursor = None;
        loop {
            let (jobs, next) = store.list_jobs(filter, cursor.as_ref(), limit).unwrap();
            ids.extend(jobs.iter().map(|j| j.id));
            match next {
                Some(n) => cursor = Some(n),
                None => return ids,
            }
        }
    };
    let live = JobFilter {
        live: true,
        oldest_first: true,
        ..JobFilter::default()
    };
    let every_live = [running.id, held.id, queued.id, theirs.id];
    assert_eq!(listed(&live, 100), every_live);
    assert_eq!(listed(&live, 1), every_live, "paged one job at a time");
    let mine = JobFilter {
        handler: Some(handler()),
        ..live.clone()
    };
    assert_eq!(listed(&mine, 100), [running.id, held.id, queued.id]);
    // A state named wins over the live filter.
    let running_only = JobFilter {
        state: Some(JobState::Running),
        ..live.clone()
    };
    assert_eq!(listed(&running_only, 100), [running.id]);
    // Without it, every job.
    let every = JobFilter {
        oldest_first: true,
        ..JobFilter::default()
    };
    assert_eq!(
        listed(&every, 100),
        [running.id, held.id, done.id, queued.id, theirs.id]
    );
    drop(store);
    drop(ledger);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A live record that does not read is named, and the store is not
/// opened on half its queues.
#[test]
fn a_live_record_that_does_not_read_stops_the_open_and_is_named() {
    let (dir, ledger) = scratch_ledger("norecord");
    let schema = crate::HandlerSchema::new("h", "1.0.0", handler());
    let id = {
        let store = JobStore::open(&ledger).unwrap();
        let job = store
            .enqueue(&handler(), &schema, &JobRequest::default(), 1_000)
            .unwrap()
            .0;
        let mut batch = store.batch();
        batch.insert(store.ks(Jk::Jobs), job.id.0, [0x63, 1, 2]);
        store.storage.commit(batch).unwrap();
        job.id
    };
    let err = JobStore::open(&ledger).err().expect("opened").to_string();
    assert!(err.contains(&format!("live job {id}")), "{err}");
    drop(ledger);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Records are written packed; records written with field names (by
/// earlier versions) read the same.
/// An attempt's node (several nodes sharing a store) is written only
/// when set, so a single server's records keep their golden bytes.
#[test]
fn an_attempts_node_is_written_only_when_set() {
    let mut job = full_job(JobState::Running);
    let without = record_to_vec(&job);
    job.attempts[0].node = Some("node-a".into());
    let with = record_to_vec(&job);
    assert_ne!(with, without);
    let back: Job = record_from_slice(&with).unwrap();
    assert_eq!(back.attempts[0].node.as_deref(), Some("node-a"));
    assert_eq!(back, job);
    let back: Job = record_from_slice(&without).unwrap();
    assert_eq!(back.attempts[0].node, None);
}

#[test]
fn named_and_packed_records_read_alike() {
    let handler = handler();
    let schema = crate::HandlerSchema::new("h", "1.0.0", handler.clone());
    let limits = JobLimits::resolve(&schema, &JobRequest::default()).unwrap();
    let mut job = Job::new(JobId::new(5, 6), handler, &JobRequest::default(), limits, 5);
    job.state = JobState::Held(super::super::job::HoldReason::Budget);
    let stored = Stored {
        placement: Some((4, vec![1, 2, 3])),
        job,
    };
    let named = crate::attest::cbor::named_record_to_vec(&stored);
    let packed = record_to_vec(&stored);
    assert!(packed.len() < named.len());
    for bytes in [named, packed] {
        let back: Stored = record_from_slice(&bytes).unwrap();
        assert_eq!(back.job, stored.job);
        assert_eq!(back.placement, stored.placement);
    }
}

/// A pass reads records before it takes the writer lock: a finished job
/// retried in between is read again under the lock and kept, and its log
/// stays; without a write in between, the records read are used as they
/// are.
#[test]
fn a_job_retried_while_a_pass_reads_is_kept() {
    let (dir, ledger) = scratch_ledger("prune-race");
    let store = JobStore::open(&ledger).unwrap();
    let schema = crate::HandlerSchema::new("h", "1.0.0", handler());
    let req = JobRequest::default();
    let (a, b) = (
        store
            .enqueue(&handler(), &schema, &req, 1_000)
            .unwrap()
            .0
            .id,
        store
            .enqueue(&handler(), &schema, &req, 1_000)
            .unwrap()
            .0
            .id,
    );
    for id in [&a, &b] {
        store
            .update(id, 2_000, |j| {
                j.cancel(CancelReason::Requested, 2_000).map(|_| ())
            })
            .unwrap();
    }
    let line = |n: u32| super::logs::LogLine {
        seq: 0,
        attempt: 1,
        at_ms: 1_500,
        line: format!("line {n}"),
    };
    store.append_logs(vec![(a, line(1)), (b, line(2))]).unwrap();
    let plan = store.plan_prune(10_000, 100).unwrap();
    // Retried after the pass read it.
    store.update(&a, 3_000, |j| j.retry(3_000)).unwrap();
    assert_eq!(store.apply_prune(plan, 10_000).unwrap(), 1, "b only");
    assert_eq!(store.get(&a).unwrap().state, JobState::Queued);
    assert_eq!(store.log(&a, 0, 10).unwrap().len(), 1);
    assert!(matches!(store.get(&b), Err(JobError::NotFound(_))));
    assert!(store.log(&b, 0, 10).unwrap().is_empty());
    // Nothing written between the halves: the records read are used.
    store
        .update(&a, 4_000, |j| {
            j.cancel(CancelReason::Requested, 4_000).map(|_| ())
        })
        .unwrap();
    let plan = store.plan_prune(10_000, 100).unwrap();
    assert_eq!(store.apply_prune(plan, 10_000).unwrap(), 1);
    assert!(matches!(store.get(&a), Err(JobError::NotFound(_))));
    assert!(store.log(&a, 0, 10).unwrap().is_empty());
    drop(store);
    drop(ledger);
    let _ = std::fs::remove_dir_all(&dir);
}
