//! The schedule RPCs of the jobs API (spec/pulse.md, "Schedules"): their
//! checks and wire forms. Who may call them is the jobs API's rule: a
//! schedule enqueues jobs, so creating, pausing and deleting one needs
//! the enqueue right over its handler, and reading it the read right.

use std::collections::HashMap;

use tonic::{Code, Request, Response, Status};

use super::{JobsService, job_status, status};
use crate::Right;
use crate::api::proto;
use crate::api::status::{bad_request, parse_did};
use crate::pulse::{
    JobError, Missed, Overlap, PulseError, Recurrence, Schedule, ScheduleId, ScheduleRequest,
};

/// How many next occurrences GetSchedule shows.
const UPCOMING: usize = 5;

fn parse_schedule_id(bytes: &[u8]) -> Result<ScheduleId, Status> {
    bytes
        .try_into()
        .map(ScheduleId)
        .map_err(|_| bad_request("id", "invalid_schedule_id", "a schedule ID is 16 bytes"))
}

fn invalid(e: PulseError) -> Status {
    job_status(&JobError::Rejected(e))
}

fn overlap_name(o: Overlap) -> &'static str {
    match o {
        Overlap::Skip => "skip",
        Overlap::Allow => "allow",
    }
}

fn missed_name(m: Missed) -> &'static str {
    match m {
        Missed::RunOnce => "run_once",
        Missed::Skip => "skip",
    }
}

fn schedule_status(rule: &str) -> Status {
    status(Code::InvalidArgument, "invalid_schedule", rule.to_owned())
}

/// The wire form of a schedule; `upcoming` next occurrences listed.
pub(crate) fn schedule_message(s: &Schedule, upcoming: usize) -> proto::Schedule {
    let (cron, timezone, every_ms) = match &s.recurrence {
        Recurrence::Cron { pattern, timezone } => {
            (pattern.clone(), timezone.clone().unwrap_or_default(), 0)
        }
        Recurrence::Every { every_ms } => (String::new(), String::new(), *every_ms),
    };
    proto::Schedule {
        id: s.id.0.to_vec(),
        handler: s.handler.to_string(),
        cron,
        timezone,
        every_ms,
        payload: s.payload.clone(),
        priority: u32::from(s.priority),
        max_attempts: s.max_attempts.unwrap_or(0),
        timeout_ms: s.timeout_ms.unwrap_or(0),
        max_cost: s.max_cost.unwrap_or(0),
        overlap: overlap_name(s.overlap).to_owned(),
        missed: missed_name(s.missed).to_owned(),
        paused: s.paused,
        created_at_ms: s.created_at,
        next_at_ms: s.next_at.filter(|_| !s.paused).unwrap_or(0),
        last_fired_at_ms: s.last_fired.map_or(0, |(at, _)| at),
        last_job: s.last_fired.map(|(_, j)| j.0.to_vec()).unwrap_or_default(),
        fired: s.fired,
        skipped: s.skipped,
        missed_count: s.missed_count,
        last_error: s.last_error.clone().unwrap_or_default(),
        updated_at_ms: s.updated_at,
        upcoming_ms: s.upcoming(upcoming),
    }
}

impl JobsService {
    /// A schedule the caller holds `right` over; like jobs, one it may
    /// not see is "not found" only to callers who may see every handler.
    async fn schedule_for(
        &self,
        grant: &crate::auth::Grant,
        right: Right,
        id: ScheduleId,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<Schedule, Status> {
        let found = self.blocking(move |s| s.schedule(&id)).await;
        match &found {
            Ok(s) if self.may(grant, right, &s.handler) => return found,
            Err(_) if grant.holds_everywhere(right) => return found,
            _ => {}
        }
        let e = crate::auth::AuthError::new(
            crate::auth::AuthCode::ScopeMissing,
            format!(
                "{} may not {right} schedule {id}, or there is no such schedule",
                grant.name()
            ),
        );
        Err(self.refuse(&e, peer))
    }

    pub(super) async fn create_schedule_rpc(
        &self,
        request: Request<proto::CreateScheduleRequest>,
    ) -> Result<Response<proto::ScheduleResponse>, Status> {
        let grant = self.grant(&request)?;
        let peer = request.remote_addr();
        let r = request.into_inner();
        let recurrence = match (r.cron.is_empty(), r.every_ms) {
            (false, 0) => {
                let tz = (!r.timezone.is_empty()).then_some(r.timezone.as_str());
                Recurrence::cron(&r.cron, tz).map_err(invalid)?
            }
            (true, every) if every > 0 => {
                if !r.timezone.is_empty() {
                    return Err(schedule_status(
                        "a timezone is only for a cron pattern: every_ms counts real time",
                    ));
                }
                Recurrence::every(every).map_err(invalid)?
            }
            _ => {
                return Err(schedule_status("give exactly one of cron and every_ms"));
            }
        };
        let overlap = match r.overlap.as_str() {
            "" | "skip" => Overlap::Skip,
            "allow" => Overlap::Allow,
            other => {
                return Err(schedule_status(&format!(
                    "overlap {other:?} is not skip or allow"
                )));
            }
        };
        let missed = match r.missed.as_str() {
            "" | "run_once" => Missed::RunOnce,
            "skip" => Missed::Skip,
            other => {
                return Err(schedule_status(&format!(
                    "missed {other:?} is not run_once or skip"
                )));
            }
        };
        // The occurrences' job is checked as an Enqueue of it would be:
        // the handler takes jobs, the caller may enqueue them, the payload
        // fits the handler's input_schema.
        let enqueue = proto::EnqueueRequest {
            handler: r.handler,
            payload: r.payload,
            priority: r.priority,
            max_attempts: r.max_attempts,
            timeout_ms: r.timeout_ms,
            max_cost: r.max_cost,
            ..Default::default()
        };
        // Occurrences start traces of their own.
        let (handler, schema, job) = self.request(&enqueue, &grant, peer, None)?;
        let req = ScheduleRequest {
            handler,
            recurrence,
            job,
            overlap,
            missed,
        };
        let schedule = self
            .blocking(move |s| s.create_schedule(req, &schema, crate::clock::unix_ms()))
            .await?;
        tracing::info!(
            schedule = %schedule.id,
            handler = %schedule.handler,
            recurrence = %schedule.recurrence,
            "schedule created"
        );
        self.wake();
        Ok(Response::new(proto::ScheduleResponse {
            schedule: Some(schedule_message(&schedule, UPCOMING)),
        }))
    }

    pub(super) async fn get_schedule_rpc(
        &self,
        request: Request<proto::GetScheduleRequest>,
    ) -> Result<Response<proto::ScheduleResponse>, Status> {
        let grant = self.grant(&request)?;
        let peer = request.remote_addr();
        let id = parse_schedule_id(&request.into_inner().id)?;
        let s = self.schedule_for(&grant, Right::Read, id, peer).await?;
        Ok(Response::new(proto::ScheduleResponse {
            schedule: Some(schedule_message(&s, UPCOMING)),
        }))
    }

    pub(super) async fn list_schedules_rpc(
        &self,
        request: Request<proto::ListSchedulesRequest>,
    ) -> Result<Response<proto::ListSchedulesResponse>, Status> {
        let grant = self.grant(&request)?;
        let peer = request.remote_addr();
        let r = request.into_inner();
        let handler = if r.handler.is_empty() {
            grant
                .require_everywhere(Right::Read)
                .map_err(|e| self.refuse(&e, peer))?;
            None
        } else {
            let did = parse_did("handler", &r.handler)?;
            self.require_on(&grant, Right::Read, &did, peer)?;
            Some(did)
        };
        let cursor = if r.page_token.is_empty() {
            None
        } else {
            Some(parse_schedule_id(&r.page_token)?)
        };
        let limit = if r.page_size == 0 {
            100
        } else {
            r.page_size.min(1000) as usize
        };
        let (schedules, next) = self
            .blocking(move |s| s.schedules(handler.as_ref(), cursor.as_ref(), limit))
            .await?;
        let mut judged: HashMap<crate::Did, bool> = HashMap::new();
        let schedules = schedules
            .iter()
            .filter(|s| {
                *judged
                    .entry(s.handler.clone())
                    .or_insert_with(|| self.may(&grant, Right::Read, &s.handler))
            })
            .map(|s| schedule_message(s, 0))
            .collect();
        Ok(Response::new(proto::ListSchedulesResponse {
            schedules,
            next_page_token: next.map(|id| id.0.to_vec()).unwrap_or_default(),
        }))
    }

    pub(super) async fn pause_schedule_rpc(
        &self,
        request: Request<proto::PauseScheduleRequest>,
    ) -> Result<Response<proto::ScheduleResponse>, Status> {
        let grant = self.grant(&request)?;
        let peer = request.remote_addr();
        let r = request.into_inner();
        let id = parse_schedule_id(&r.id)?;
        self.schedule_for(&grant, Right::Enqueue, id, peer).await?;
        let paused = r.paused;
        let s = self
            .blocking(move |s| s.set_schedule_paused(&id, paused, crate::clock::unix_ms()))
            .await?;
        tracing::info!(schedule = %id, paused, "schedule {}", if paused { "paused" } else { "resumed" });
        self.wake();
        Ok(Response::new(proto::ScheduleResponse {
            schedule: Some(schedule_message(&s, UPCOMING)),
        }))
    }

    pub(super) async fn delete_schedule_rpc(
        &self,
        request: Request<proto::GetScheduleRequest>,
    ) -> Result<Response<proto::ScheduleResponse>, Status> {
        let grant = self.grant(&request)?;
        let peer = request.remote_addr();
        let id = parse_schedule_id(&request.into_inner().id)?;
        self.schedule_for(&grant, Right::Enqueue, id, peer).await?;
        let s = self.blocking(move |s| s.delete_schedule(&id)).await?;
        tracing::info!(schedule = %id, "schedule deleted");
        Ok(Response::new(proto::ScheduleResponse {
            schedule: Some(schedule_message(&s, 0)),
        }))
    }
}
