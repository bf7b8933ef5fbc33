//! The console API's JSON: each gRPC message as the JSON object
//! spec/console.md documents. Byte fields are hex (IDs, hashes) or
//! base64 (envelopes); a job's result is shown as what it is ([`content`]).

use base64::Engine as _;
use serde_json::{Value, json};

use crate::api::proto;

/// Bytes a job returned or was given, as what they are: `{"json": …}`
/// when they are a JSON document, `{"text": "…"}` when they are other
/// UTF-8 text, `{"base64": "…"}` otherwise; `null` for none.
pub(super) fn content(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => match serde_json::from_str::<Value>(text) {
            Ok(v) => json!({ "json": v }),
            Err(_) => json!({ "text": text }),
        },
        Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) }),
    }
}

fn hex_or_null(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        Value::Null
    } else {
        Value::String(hex::encode(bytes))
    }
}

/// A job.
pub(super) fn job(j: &proto::Job) -> Value {
    json!({
        "id": hex::encode(&j.id),
        "handler": j.handler,
        "state": j.state,
        "reason": j.reason,
        "priority": j.priority,
        "run_at_ms": j.run_at_ms,
        "attempts": j.attempts,
        "max_attempts": j.max_attempts,
        "timeout_ms": j.timeout_ms,
        "max_cost": j.max_cost,
        "total_cost": j.total_cost,
        "progress": { "percent": j.progress_percent, "message": j.progress_message },
        "payload": content(&j.payload),
        "result": content(&j.result),
        "last_error": j.last_error,
        "retry_at_ms": j.retry_at_ms,
        "updated_at_ms": j.updated_at_ms,
        "idempotency_key": j.idempotency_key,
        "parent": hex_or_null(&j.parent),
        "attempt_history": j.attempt_history.iter().map(attempt).collect::<Vec<_>>(),
    })
}

fn attempt(a: &proto::JobAttempt) -> Value {
    json!({
        "number": a.number,
        "started_at_ms": a.started_at_ms,
        "ended_at_ms": a.ended_at_ms,
        "outcome": a.outcome,
        "error": a.error,
        "cost": a.cost,
        "authorised": a.authorised,
        "handler_index": a.handler_index,
        "plugin_index": a.plugin_index,
        "lease": hex::encode(&a.lease),
        "node": a.node,
    })
}

/// A page of jobs.
pub(super) fn jobs_page(r: &proto::ListJobsResponse) -> Value {
    json!({
        "jobs": r.jobs.iter().map(job).collect::<Vec<_>>(),
        "next": hex_or_null(&r.next_page_token),
    })
}

/// A job's log lines.
pub(super) fn job_log(r: &proto::GetJobLogResponse) -> Value {
    json!({
        "lines": r.lines.iter().map(|l| json!({
            "seq": l.seq,
            "at_ms": l.at_ms,
            "attempt": l.attempt,
            "line": l.line,
        })).collect::<Vec<_>>(),
        "next_after_seq": r.next_after_seq,
        "finished": r.finished,
    })
}

/// The log's identity and head.
pub(super) fn log_info(i: &proto::GetLogInfoResponse) -> Value {
    json!({
        "log_did": i.log_did,
        "origin": i.origin,
        "size": i.size,
        "root_hash": hex::encode(&i.root_hash),
        "verifier_key": i.verifier_key,
    })
}

/// A signed checkpoint.
pub(super) fn checkpoint(c: &proto::Checkpoint) -> Value {
    json!({
        "size": c.size,
        "root_hash": hex::encode(&c.root_hash),
        "note": c.note,
    })
}

/// Log entries.
pub(super) fn entries(r: &proto::GetEntriesResponse) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    json!({
        "entries": r.entries.iter().map(|e| json!({
            "index": e.index,
            "envelope": b64.encode(&e.envelope),
        })).collect::<Vec<_>>(),
    })
}

/// Equivocation evidence: for each, the statement in the log and the
/// conflicting one the same key signed.
pub(super) fn equivocations(r: &proto::ListEquivocationsResponse) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    json!({
        "evidence": r.evidence.iter().map(|e| json!({
            "subject": e.subject,
            "seq": e.seq,
            "logged_index": e.logged_index,
            "logged_envelope": b64.encode(&e.logged_envelope),
            "rejected_envelope": b64.encode(&e.rejected_envelope),
        })).collect::<Vec<_>>(),
        "next": hex_or_null(&r.next_page_token),
    })
}

/// A consistency proof between two sizes.
pub(super) fn consistency(old: u64, new: u64, r: &proto::GetConsistencyProofResponse) -> Value {
    json!({
        "old_size": old,
        "new_size": new,
        "proof": r.proof.iter().map(hex::encode).collect::<Vec<_>>(),
    })
}

fn subject(subject: &proto::Subject) -> Value {
    json!({
        "did": subject.did,
        "family": proto::Family::try_from(subject.family)
            .map_or("unknown", |f| f.as_str_name()),
        "current_key": subject.current_key,
        "seq": subject.seq,
        "head_id": hex::encode(&subject.head_id),
        "issued_at_ms": subject.issued_at_ms,
        "revoked": subject.revoked,
        "name": subject.name,
    })
}

/// A page of handlers (or plugins).
pub(super) fn subjects_page(r: &proto::ListHandlersResponse) -> Value {
    json!({
        "subjects": r.handlers.iter().map(subject).collect::<Vec<_>>(),
        "next": hex_or_null(&r.next_page_token),
    })
}

/// A subject (handler or plugin) and a page of its chain, each statement
/// with its inclusion proof in the tree of `checkpoint`.
pub(super) fn chain(subject: &proto::Subject, r: &proto::GetChainResponse) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    json!({
        "subject": self::subject(subject),
        "checkpoint": r.checkpoint.as_ref().map(checkpoint),
        "entries": r.entries.iter().map(|e| json!({
            "index": e.index,
            "envelope": b64.encode(&e.envelope),
            "inclusion_proof": e.inclusion_proof.iter().map(hex::encode).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "more": r.more,
    })
}

/// Plugin sessions and the last refusals.
pub(super) fn sessions(r: &proto::ListPluginSessionsResponse) -> Value {
    json!({
        "sessions": r.sessions.iter().map(|s| json!({
            "plugin": s.plugin,
            "name": s.name,
            "key": s.key,
            "connection": s.connection,
            "address": s.address,
            "handlers": s.handlers,
            "serves_any": s.serves_any,
            "slots": s.slots,
            "running": s.running,
            "draining": s.draining,
            "opened_ms": s.opened_ms,
            "last_health_ms": s.last_health_ms,
        })).collect::<Vec<_>>(),
        "refusals": r.refusals.iter().map(|f| json!({
            "plugin": f.plugin,
            "address": f.address,
            "code": f.code,
            "message": f.message,
            "at_ms": f.at_ms,
        })).collect::<Vec<_>>(),
    })
}

/// The nodes sharing the store (one, for a single server).
pub(super) fn nodes(r: &proto::ListNodesResponse) -> Value {
    json!({
        "nodes": r.nodes.iter().map(|n| json!({
            "name": n.name,
            "listen": n.listen,
            "started_ms": n.started_ms,
            "last_seen_ms": n.last_seen_ms,
            "live": n.live,
            "log_size": n.log_size,
            "sessions": n.sessions,
            "running": n.running,
            "version": n.version,
        })).collect::<Vec<_>>(),
        "store_log_size": r.store_log_size,
        "answered_by": r.answered_by,
    })
}

/// A schedule.
pub(super) fn schedule(x: &proto::Schedule) -> Value {
    json!({
        "id": hex::encode(&x.id),
        "handler": x.handler,
        "cron": x.cron,
        "timezone": x.timezone,
        "every_ms": x.every_ms,
        "payload": content(&x.payload),
        "priority": x.priority,
        "max_attempts": x.max_attempts,
        "timeout_ms": x.timeout_ms,
        "max_cost": x.max_cost,
        "overlap": x.overlap,
        "missed": x.missed,
        "paused": x.paused,
        "created_at_ms": x.created_at_ms,
        "next_at_ms": x.next_at_ms,
        "last_fired_at_ms": x.last_fired_at_ms,
        "last_job": hex_or_null(&x.last_job),
    })
}

/// A page of schedules.
pub(super) fn schedules_page(r: &proto::ListSchedulesResponse) -> Value {
    json!({
        "schedules": r.schedules.iter().map(schedule).collect::<Vec<_>>(),
        "next": hex_or_null(&r.next_page_token),
    })
}

/// A handler's budget and where it stands.
pub(super) fn budget(b: &proto::GetBudgetResponse) -> Value {
    json!({
        "per_hour": b.per_hour,
        "per_day": b.per_day,
        "spent_hour": b.spent_hour,
        "spent_day": b.spent_day,
        "reserved": b.reserved,
    })
}

/// What the overview shows of the queues.
pub(super) fn queues(q: &crate::api::QueueDepths) -> Value {
    json!({
        "ready": q.ready,
        "delayed": q.delayed,
        "running": q.running,
        "held": q.held,
        "handlers_with_ready": q.with_ready,
        "deepest": q.handlers.iter().map(|(h, n)| json!({
            "handler": h.to_string(),
            "ready": n,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_shown_as_what_it_is() {
        assert_eq!(content(b""), Value::Null);
        assert_eq!(content(br#"{"a":[1,2]}"#), json!({"json": {"a": [1, 2]}}));
        assert_eq!(content(b"slept 30"), json!({"text": "slept 30"}));
        assert_eq!(content(&[0xff, 0x00]), json!({"base64": "/wA="}));
    }
}
