//! Resolution before every dispatch (spec/plugin.md, "Resolution"):
//! job.handler → its chain in the ledger (not revoked) → the plugin its
//! schema names → that plugin's chain (not revoked) → a live session in
//! which the plugin proved its current key and announced the handler.
//!
//! The ledger part is cached per handler and evicted by new ledger entries
//! about the handler or its plugin ([`Ledger::changed_since`]), so a revoke
//! or an update acknowledged before a dispatch is seen by that dispatch.
//! The session part is read live every time.

use std::collections::HashMap;
use std::sync::Arc;

use super::session::Sessions;
use crate::ledger::{Ledger, LedgerError, LedgerErrorCode};
use crate::pulse::{Authorization, Job, Refusal, Route, Router};
use crate::{AttestationId, Did, Family};

/// The ledger's verdict on a handler: an authorisation, or why not.
pub type Verdict = Result<Arc<Authorization>, (Refusal, String)>;

/// Most handlers cached before the cache starts over.
const MAX_CACHED: usize = 1_000_000;

/// Resolves `handler` against the ledger alone (no sessions).
///
/// # Errors
/// The ledger could not be read (which decides nothing).
pub fn resolve_chains(ledger: &Ledger, handler: &Did) -> Result<Verdict, LedgerError> {
    let refuse = |r: Refusal, d: String| Ok(Err((r, d)));
    let not_found = |e: &LedgerError| {
        matches!(
            e,
            LedgerError::Ledger {
                code: LedgerErrorCode::NotFound,
                ..
            }
        )
    };
    let rec = match ledger.subject(handler) {
        Ok(r) => r,
        Err(e) if not_found(&e) => {
            return refuse(
                Refusal::HandlerNotFound,
                format!("no chain for {handler} in the log"),
            );
        }
        Err(e) => return Err(e),
    };
    if rec.head.family != Family::Handler {
        return refuse(
            Refusal::HandlerNotFound,
            format!("{handler} is a plugin, not a handler"),
        );
    }
    if rec.head.revoked {
        return refuse(
            Refusal::HandlerRevoked,
            format!(
                "handler {handler} was revoked at log index {}",
                rec.head_index
            ),
        );
    }
    let Some(plugin) = rec.plugin.clone() else {
        return Err(LedgerError::new(
            LedgerErrorCode::Integrity,
            format!("handler {handler} has no plugin in its record"),
        ));
    };
    let prec = match ledger.subject(&plugin) {
        Ok(r) if r.head.family == Family::Plugin => r,
        Ok(_) => {
            return refuse(
                Refusal::PluginNotRegistered,
                format!("handler {handler} names {plugin}, which is a handler, not a plugin"),
            );
        }
        Err(e) if not_found(&e) => {
            return refuse(
                Refusal::PluginNotRegistered,
                format!("handler {handler} names plugin {plugin}, which has no chain in the log"),
            );
        }
        Err(e) => return Err(e),
    };
    if prec.head.revoked {
        return refuse(
            Refusal::PluginRevoked,
            format!(
                "plugin {plugin} was revoked at log index {}",
                prec.head_index
            ),
        );
    }
    let envelope = ledger.entry(rec.schema_index)?;
    let schema = match crate::verify_attestation(&envelope).map(|a| a.statement().schema().cloned())
    {
        Ok(Some(crate::Schema::Handler(h))) => h,
        _ => {
            return Err(LedgerError::new(
                LedgerErrorCode::Integrity,
                format!(
                    "log entry {} no longer holds {handler}'s schema",
                    rec.schema_index
                ),
            ));
        }
    };
    Ok(Ok(Arc::new(Authorization {
        max_concurrency: schema.max_concurrency,
        output_schema: schema.output_schema.as_deref().map(Arc::from),
        owner: rec.head.key.clone(),
        handler_name: rec.name,
        handler_index: rec.schema_index,
        handler_attestation_id: AttestationId(*blake3::hash(&envelope).as_bytes()),
        handler_attestation: Arc::new(envelope),
        plugin,
        plugin_index: prec.head_index,
        plugin_key: prec.head.key,
    })))
}

/// The [`Router`] of a server with plugins.
pub struct ChainRouter {
    ledger: Arc<Ledger>,
    sessions: Arc<Sessions>,
    cache: HashMap<[u8; 32], Verdict>,
    /// Handlers cached per plugin.
    by_plugin: HashMap<[u8; 32], std::collections::HashSet<[u8; 32]>>,
    /// The ledger size the cache reflects.
    seen: u64,
}

impl ChainRouter {
    /// A router over `ledger` and `sessions`, with an empty cache.
    pub fn new(ledger: Arc<Ledger>, sessions: Arc<Sessions>) -> ChainRouter {
        let seen = ledger.size();
        ChainRouter {
            ledger,
            sessions,
            cache: HashMap::new(),
            by_plugin: HashMap::new(),
            seen,
        }
    }

    fn clear(&mut self) {
        self.cache.clear();
        self.by_plugin.clear();
    }

    /// Evicts what new ledger entries changed.
    fn refresh(&mut self) {
        let size = self.ledger.size();
        if size == self.seen {
            return;
        }
        match self.ledger.changed_since(self.seen) {
            Some((subjects, end)) => {
                for s in subjects {
                    self.cache.remove(&s);
                    if let Some(handlers) = self.by_plugin.remove(&s) {
                        for h in handlers {
                            self.cache.remove(&h);
                        }
                    }
                }
                self.seen = end;
            }
            None => {
                self.clear();
                self.seen = size;
            }
        }
    }

    /// The ledger's verdict on `handler`, from the cache when nothing it
    /// depends on changed.
    ///
    /// # Errors
    /// The ledger could not be read (nothing is cached then).
    pub fn verdict(&mut self, handler: &Did) -> Result<Verdict, LedgerError> {
        self.refresh();
        let key = *handler.public_key();
        if let Some(c) = self.cache.get(&key) {
            return Ok(c.clone());
        }
        let verdict = resolve_chains(&self.ledger, handler)?;
        if self.cache.len() >= MAX_CACHED {
            self.clear();
        }
        let plugin = match &verdict {
            Ok(a) => Some(*a.plugin.public_key()),
            Err(_) => self
                .ledger
                .subject(handler)
                .ok()
                .and_then(|r| r.plugin)
                .map(|p| *p.public_key()),
        };
        if let Some(p) = plugin {
            self.by_plugin.entry(p).or_default().insert(key);
        }
        self.cache.insert(key, verdict.clone());
        Ok(verdict)
    }

    /// How many handlers are cached.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

impl Router for ChainRouter {
    fn route(&mut self, job: &Job) -> Route {
        let auth = match self.verdict(&job.handler) {
            // The ledger could not be read: decide nothing, hold.
            Err(e) => {
                tracing::warn!(error = %e, handler = %job.handler, "resolution could not read the ledger");
                return Route::Hold(
                    Refusal::LedgerUnreadable,
                    format!("the ledger could not be read to resolve the job: {e}"),
                );
            }
            Ok(Err((why, detail))) => return Route::Refuse(why, detail),
            Ok(Ok(a)) => a,
        };
        let pool: Vec<_> = self
            .sessions
            .pool(&auth.plugin)
            .into_iter()
            .filter(|s| s.takes_attempts())
            .collect();
        if pool.is_empty() {
            return Route::Hold(
                Refusal::PluginNotConnected,
                format!("plugin {} has no live session", auth.plugin),
            );
        }
        // A session opened under a key the plugin has since rotated away
        // from proves nothing now; its owner re-opens it.
        let current: Vec<_> = pool
            .iter()
            .filter(|s| s.announcement.key == auth.plugin_key)
            .collect();
        if current.is_empty() {
            return Route::Hold(
                Refusal::PluginNotConnected,
                format!(
                    "plugin {}'s sessions proved a key it has since rotated away from",
                    auth.plugin
                ),
            );
        }
        if !current
            .iter()
            .any(|s| s.announcement.serves(&job.handler, &auth.handler_name))
        {
            return Route::Refuse(
                Refusal::PluginNotAuthorised,
                format!(
                    "plugin {} is connected but did not announce handler {} ({})",
                    auth.plugin, job.handler, auth.handler_name
                ),
            );
        }
        Route::Go(Some(auth))
    }

    fn capacity(&self, plugin: &Did) -> Option<u32> {
        self.sessions.capacity(plugin)
    }
}
