//! Resolution against a real ledger: every refusal reason, the session
//! checks, and a cache that never outlives a change of the chains it read.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{handler_register, key, next, plugin_register, tempdir, update_handler};
use pulse_ledger::api::proto::plugin_client::PluginClient;
use pulse_ledger::ledger::{Ledger, LedgerConfig};
use pulse_ledger::plugin::{
    AnnouncedHandler, Announcement, ChainRouter, Connection, Link, Session, Sessions,
};
use pulse_ledger::pulse::{Job, JobId, JobLimits, JobRequest, Refusal, Route, Router};
use pulse_ledger::{Action, Did};

fn job(handler: &Did) -> Job {
    let limits = JobLimits {
        max_attempts: 3,
        timeout_ms: 1_000,
        max_cost: None,
    };
    Job::new(
        JobId::new(1, 1),
        handler.clone(),
        &JobRequest::default(),
        limits,
        1,
    )
}

fn session(plugin: &Did, key: &Did, names: &[&str]) -> Arc<Session> {
    let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
    Arc::new(Session::new(
        Announcement {
            plugin: plugin.clone(),
            key: key.clone(),
            handlers: names
                .iter()
                .map(|n| AnnouncedHandler {
                    id: None,
                    name: (*n).into(),
                })
                .collect(),
            serves_any: false,
        },
        Link::Client(PluginClient::new(channel)),
        Connection::Dialled,
        "http://127.0.0.1:9".into(),
        0,
        tokio::sync::watch::channel(false).1,
    ))
}

fn held_for(r: Route) -> Refusal {
    match r {
        Route::Hold(why, _) => why,
        other => panic!("expected a hold, got {other:?}"),
    }
}

fn refusal(r: Route) -> Refusal {
    match r {
        Route::Refuse(why, _) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn resolution_checks_both_chains_and_the_session_and_sees_every_change() {
    let dir = tempdir("plugin-route");
    let ledger = Arc::new(Ledger::open(LedgerConfig::new(&dir, "test.example/log")).unwrap());
    let sessions = Arc::new(Sessions::default());
    let mut router = ChainRouter::new(Arc::clone(&ledger), Arc::clone(&sessions));
    let (p, h, other) = (key("rt-p"), key("rt-h"), key("rt-other"));

    // Unknown handler; then a handler whose plugin is not registered.
    assert_eq!(
        refusal(router.route(&job(&h.did))),
        Refusal::HandlerNotFound
    );
    let h0 = handler_register(&h, "echo", &p.did);
    let h0_index = ledger.append(h0.envelope()).unwrap().index;
    assert_eq!(
        refusal(router.route(&job(&h.did))),
        Refusal::PluginNotRegistered
    );

    // Registering the plugin evicts the cached refusal; no session: hold.
    let p0 = plugin_register(&p, "tools");
    let p0_index = ledger.append(p0.envelope()).unwrap().index;
    assert_eq!(
        held_for(router.route(&job(&h.did))),
        Refusal::PluginNotConnected
    );

    // A session under the plugin's key that does not announce the handler.
    sessions.open(session(&p.did, &p.did, &["other"]));
    assert_eq!(
        refusal(router.route(&job(&h.did))),
        Refusal::PluginNotAuthorised
    );
    // Another instance, in the same pool, that does: go, under the
    // statements in the log.
    sessions.open(session(&p.did, &p.did, &["echo"]));
    let Route::Go(Some(auth)) = router.route(&job(&h.did)) else {
        panic!("expected a route")
    };
    assert_eq!(
        (auth.handler_index, auth.plugin_index),
        (h0_index, p0_index)
    );
    assert_eq!(auth.handler_attestation.as_slice(), h0.envelope());
    assert_eq!(auth.handler_name, "echo");

    // Unrelated entries keep the cache; an update of the handler moves its
    // authorisation to the new statement at once.
    ledger
        .append(plugin_register(&other, "other").envelope())
        .unwrap();
    assert_eq!(router.cached(), 1);
    let h1 = update_handler(&h0, &h, "echo", &p.did, "1.1.0");
    let h1_index = ledger.append(h1.envelope()).unwrap().index;
    let Route::Go(Some(auth)) = router.route(&job(&h.did)) else {
        panic!("expected a route")
    };
    assert_eq!(auth.handler_index, h1_index);

    // The plugin rotates its key: the session proved the old key; hold
    // until it proves the new one.
    let p2 = key("rt-p2");
    let p1 = next(
        &p0,
        &p,
        Action::Rotate {
            new_key: p2.did.clone(),
        },
        Some(&p2),
    );
    let p1_index = ledger.append(p1.envelope()).unwrap().index;
    assert_eq!(
        held_for(router.route(&job(&h.did))),
        Refusal::PluginNotConnected
    );
    sessions.open(session(&p.did, &p2.did, &["echo"]));
    let Route::Go(Some(auth)) = router.route(&job(&h.did)) else {
        panic!("expected a route")
    };
    assert_eq!(auth.plugin_index, p1_index);

    // Revoking the plugin refuses its handlers on the next resolution.
    let p_rev = next(&p1, &p2, Action::Revoke { reason: None }, None);
    ledger.append(p_rev.envelope()).unwrap();
    assert_eq!(refusal(router.route(&job(&h.did))), Refusal::PluginRevoked);

    // A second handler of a live plugin, then its revocation.
    let (q, g) = (key("rt-q"), key("rt-g"));
    ledger.append(plugin_register(&q, "q").envelope()).unwrap();
    let g0 = handler_register(&g, "echo", &q.did);
    ledger.append(g0.envelope()).unwrap();
    let q_session = session(&q.did, &q.did, &["echo"]);
    sessions.open(Arc::clone(&q_session));
    assert!(matches!(router.route(&job(&g.did)), Route::Go(Some(_))));
    ledger
        .append(next(&g0, &g, Action::Revoke { reason: None }, None).envelope())
        .unwrap();
    assert_eq!(refusal(router.route(&job(&g.did))), Refusal::HandlerRevoked);

    // A handler ID that is a plugin, and a plugin named where a handler
    // should be.
    assert_eq!(
        refusal(router.route(&job(&q.did))),
        Refusal::HandlerNotFound
    );
    let (k, not_plugin) = (key("rt-k"), key("rt-np"));
    ledger
        .append(handler_register(&not_plugin, "x", &q.did).envelope())
        .unwrap();
    ledger
        .append(handler_register(&k, "x", &not_plugin.did).envelope())
        .unwrap();
    assert_eq!(
        refusal(router.route(&job(&k.did))),
        Refusal::PluginNotRegistered
    );

    // Sessions close only for their own generation: p's pool of three
    // and q's one.
    sessions.close(&q.did, q_session.generation + 1_000);
    assert_eq!(sessions.len(), 4);
    sessions.close(&q.did, q_session.generation);
    assert_eq!(sessions.len(), 3);
    assert!(sessions.pool(&q.did).is_empty());
}

/// A pool: attempts go to the least loaded instance with a free slot that
/// proved the current key and serves the handler; draining and lost
/// instances take none; the pool's capacity is the sum of its slots.
#[tokio::test]
async fn pools_spread_attempts_by_free_slots() {
    let (p, h, old) = (key("pool-p"), key("pool-h"), key("pool-old"));
    let sessions = Sessions::default();
    let with_slots = |slots: u32, key: &Did, names: &[&str]| {
        let s = session(&p.did, key, names);
        let s = Session::new(
            s.announcement.clone(),
            s.link.clone(),
            Connection::ConnectedIn,
            format!("peer-{slots}"),
            slots,
            tokio::sync::watch::channel(false).1,
        );
        Arc::new(s)
    };
    let (a, b) = (
        with_slots(2, &p.did, &["echo"]),
        with_slots(3, &p.did, &["echo"]),
    );
    let stale = with_slots(5, &old.did, &["echo"]);
    let other = with_slots(5, &p.did, &["other"]);
    for s in [&a, &b, &stale, &other] {
        sessions.open(Arc::clone(s));
    }
    assert_eq!(sessions.capacity(&p.did), Some(15));
    let mut taken = Vec::new();
    while let Some(s) = sessions.take(&p.did, &p.did, &h.did, "echo") {
        taken.push(s.generation);
    }
    // Five slots in all on the two that qualify; the most free first.
    assert_eq!(taken.len(), 5);
    assert_eq!(taken[0], b.generation);
    assert_eq!((a.running(), b.running()), (2, 3));
    assert_eq!((stale.running(), other.running()), (0, 0));
    a.release_slot();
    assert_eq!(
        sessions
            .take(&p.did, &p.did, &h.did, "echo")
            .map(|s| s.generation),
        Some(a.generation)
    );
    // Draining and lost instances take nothing, and count for nothing.
    a.release_slot();
    b.release_slot();
    a.drain();
    b.lost.set();
    assert!(sessions.take(&p.did, &p.did, &h.did, "echo").is_none());
    assert_eq!(sessions.capacity(&p.did), Some(10));
    // One instance with no limit makes the pool's capacity unlimited.
    sessions.open(with_slots(0, &p.did, &["echo"]));
    assert_eq!(sessions.capacity(&p.did), None);
    assert!(sessions.take(&p.did, &p.did, &h.did, "echo").is_some());
}

#[test]
fn plugin_events_that_break_the_protocol_name_the_rule() {
    use pulse_ledger::api::proto::{self, job_event::Event};
    use pulse_ledger::plugin::{
        MAX_ERROR_MESSAGE_BYTES, MAX_PLUGIN_CHECKPOINT_BYTES, MAX_PROGRESS_MESSAGE_BYTES,
        MAX_RESULT_BYTES, exec_event,
    };
    use pulse_ledger::pulse::ExecEvent;
    let progress = |percent, message: usize, checkpoint: usize| proto::JobEvent {
        event: Some(Event::Progress(proto::ProgressEvent {
            percent,
            message: "m".repeat(message),
            checkpoint: vec![7; checkpoint],
        })),
    };
    let rule = |e| exec_event(e).unwrap_err();
    assert!(rule(progress(101, 0, 0)).starts_with("progress_percent: "));
    assert!(
        rule(progress(50, MAX_PROGRESS_MESSAGE_BYTES + 1, 0)).starts_with("progress_message: ")
    );
    assert!(
        rule(progress(50, 0, MAX_PLUGIN_CHECKPOINT_BYTES + 1)).starts_with("progress_checkpoint: ")
    );
    // At the limits: accepted as sent.
    match exec_event(progress(
        100,
        MAX_PROGRESS_MESSAGE_BYTES,
        MAX_PLUGIN_CHECKPOINT_BYTES,
    )) {
        Ok(Some(ExecEvent::Progress(p))) => assert_eq!(
            (p.percent, p.message.len(), p.checkpoint.len()),
            (100, MAX_PROGRESS_MESSAGE_BYTES, MAX_PLUGIN_CHECKPOINT_BYTES)
        ),
        other => panic!("{other:?}"),
    }
    // A result that would not fit a job in a Jobs response is refused; one
    // at the limit is taken.
    let result = |n: usize| proto::JobEvent {
        event: Some(Event::Result(proto::ResultEvent { output: vec![1; n] })),
    };
    let refused = rule(result(MAX_RESULT_BYTES + 1));
    assert!(refused.starts_with("result_too_large: "), "{refused}");
    assert!(refused.contains(&format!("{}-byte limit", MAX_RESULT_BYTES)));
    assert!(matches!(
        exec_event(result(MAX_RESULT_BYTES)),
        Ok(Some(ExecEvent::Succeeded(r))) if r.len() == MAX_RESULT_BYTES
    ));
    // An empty event is ignored; a long error message is cut, not refused.
    assert!(matches!(
        exec_event(proto::JobEvent { event: None }),
        Ok(None)
    ));
    let long = proto::JobEvent {
        event: Some(Event::Error(proto::ErrorEvent {
            message: "e".repeat(10_000),
            retryable: true,
            retry_after_ms: 0,
        })),
    };
    match exec_event(long) {
        Ok(Some(ExecEvent::Failed { error, .. })) => {
            assert!(error.len() <= MAX_ERROR_MESSAGE_BYTES && error.ends_with("…[cut]"))
        }
        other => panic!("{other:?}"),
    }
}
