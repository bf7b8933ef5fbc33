//! Routing: before each dispatch the dispatcher asks a [`Router`] whether
//! a job may run and under which authorisation. The plugin host's router
//! checks the handler's and plugin's chains in the ledger and the plugin's
//! session (spec/plugin.md, "Resolution"); in-process executors use
//! [`OpenRouter`].

use std::sync::Arc;

use super::job::{Job, Refusal};
use crate::{AttestationId, Did};

/// What a job was authorised under: the statements in force when it was
/// resolved, and the plugin that may run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// The handler's schema name.
    pub handler_name: String,
    /// Log index of the handler statement carrying the schema in force.
    pub handler_index: u64,
    /// That statement's ID and envelope (a plugin may re-verify it).
    pub handler_attestation_id: AttestationId,
    /// The envelope bytes of that statement.
    pub handler_attestation: Arc<Vec<u8>>,
    /// The plugin the schema names.
    pub plugin: Did,
    /// Log index of the plugin's head statement.
    pub plugin_index: u64,
    /// The plugin's current key (the one its session must have proved).
    pub plugin_key: Did,
    /// The schema's `max_concurrency`.
    pub max_concurrency: Option<u32>,
    /// The handler's owner: its current key. Handlers with one owner share
    /// that owner's fair share of the slots.
    pub owner: Did,
    /// The schema's `output_schema` document, which a result must match.
    pub output_schema: Option<Arc<str>>,
}

/// A router's answer for one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Dispatch, under this authorisation (`None` for executors that need
    /// none).
    Go(Option<Arc<Authorization>>),
    /// Hold the job: it may be routable soon (its plugin is not connected
    /// yet, or the ledger could not be read). If the hold outlasts the
    /// configured wait, the job is refused with this refusal and detail.
    Hold(Refusal, String),
    /// Refuse the job for good, with a detail for people.
    Refuse(Refusal, String),
}

/// Decides whether and how each job may be dispatched.
pub trait Router: Send {
    /// The route for `job`, resolved now.
    fn route(&mut self, job: &Job) -> Route;

    /// How many attempts the executors of `plugin` can run at once now
    /// (the free and busy slots of its instances together), or `None`
    /// for no limit. The dispatcher starts no more attempts authorised
    /// for `plugin` than this; the handler's next job waits, queued,
    /// using no attempt.
    fn capacity(&self, _plugin: &Did) -> Option<u32> {
        None
    }
}

/// Routes every job, with no authorisation: for in-process executors.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenRouter;

impl Router for OpenRouter {
    fn route(&mut self, _job: &Job) -> Route {
        Route::Go(None)
    }
}
