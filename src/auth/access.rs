//! Turning an `authorization` header into what its bearer may do.

use std::collections::HashMap;
use std::sync::Arc;

use super::error::{AuthCode, AuthError};
use super::scope::Scope;
use super::token::TokenHash;

/// One configured token: a name for logs and errors, the hash of its
/// secret, and its scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRule {
    /// Shown in refusals and logs, never the secret.
    pub name: String,
    /// `blake3` of the token text.
    pub hash: TokenHash,
    /// What the token may do; at least one.
    pub scopes: Vec<Scope>,
}

/// What an authenticated caller may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    name: String,
    scopes: Vec<Scope>,
}

impl Grant {
    /// The token's configured name (`open` when no tokens are configured).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Ok if one of the grant's scopes allows enqueuing for `handler`.
    ///
    /// # Errors
    /// `scope_missing`, naming the token and the handler.
    pub fn require_enqueue(&self, handler: &crate::Did) -> Result<(), AuthError> {
        let allowed = self.scopes.iter().any(|s| s.covers_enqueue(handler));
        self.refuse_unless(allowed, &format_args!("enqueue:{handler}"))
    }

    /// Ok if the grant may call the Jobs method `method` at all (before
    /// its request is read): some enqueue scope for `Enqueue` and
    /// `EnqueueBatch` (which handlers is judged per job later), `read` for
    /// the reads, `cancel` for `CancelJob`, `budget` for `SetBudget`.
    ///
    /// # Errors
    /// `scope_missing`, naming the scope.
    pub fn may_call(&self, method: &str) -> Result<(), AuthError> {
        let needed = match method {
            "Enqueue" | "EnqueueBatch" => {
                let any = self
                    .scopes
                    .iter()
                    .any(|s| matches!(s, Scope::Enqueue(_) | Scope::Admin));
                return self.refuse_unless(any, &"enqueue");
            }
            "GetJob" | "ListJobs" | "WatchJob" | "GetJobLog" | "GetBudget" => Scope::Read,
            "CancelJob" => Scope::Cancel,
            "SetBudget" => Scope::Budget,
            _ => return Ok(()),
        };
        self.require(&needed)
    }

    /// Ok if one of the grant's scopes covers `needed`.
    ///
    /// # Errors
    /// `scope_missing`, naming the token and the scope the call needs.
    pub fn require(&self, needed: &Scope) -> Result<(), AuthError> {
        self.refuse_unless(self.scopes.iter().any(|s| s.covers(needed)), needed)
    }

    fn refuse_unless(
        &self,
        allowed: bool,
        needed: &dyn std::fmt::Display,
    ) -> Result<(), AuthError> {
        if allowed {
            return Ok(());
        }
        Err(AuthError::new(
            AuthCode::ScopeMissing,
            format!(
                "token {:?} lacks the {needed} scope this call needs",
                self.name
            ),
        ))
    }
}

/// The access rule in force, replaceable while the server runs (tokens
/// reloaded on SIGHUP), and the count of refused callers.
#[derive(Debug)]
pub struct AccessCell {
    rule: std::sync::RwLock<Arc<Access>>,
    /// Refusals by [`AuthCode::ALL`] position.
    refusals: [std::sync::atomic::AtomicU64; AuthCode::ALL.len()],
    /// When a refusal was last logged, and how many were not since.
    logged: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

/// At most one refusal log line per this interval: a stranger trying
/// tokens must not fill the log.
const REFUSAL_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

impl AccessCell {
    /// A cell holding `access`.
    pub fn new(access: Access) -> AccessCell {
        AccessCell {
            rule: std::sync::RwLock::new(Arc::new(access)),
            refusals: Default::default(),
            logged: std::sync::Mutex::new((None, 0)),
        }
    }

    /// Counts a refused call and logs it, at most once a second (with the
    /// number of refusals not logged since the last line).
    pub fn refused(&self, e: &AuthError, peer: Option<std::net::SocketAddr>) {
        if let Some(i) = AuthCode::ALL.iter().position(|c| *c == e.code()) {
            self.refusals[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let now = std::time::Instant::now();
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        match logged.0 {
            Some(at) if now.duration_since(at) < REFUSAL_LOG_INTERVAL => logged.1 += 1,
            _ => {
                let skipped = std::mem::take(&mut logged.1);
                logged.0 = Some(now);
                drop(logged);
                let peer = peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
                tracing::warn!(code = e.code().as_str(), %peer, not_logged_since = skipped, "refused a caller: {e}");
            }
        }
    }

    /// Refused calls so far, by code, in [`AuthCode::ALL`] order.
    pub fn refusals(&self) -> Vec<(AuthCode, u64)> {
        AuthCode::ALL
            .iter()
            .zip(&self.refusals)
            .map(|(c, n)| (*c, n.load(std::sync::atomic::Ordering::Relaxed)))
            .collect()
    }

    /// The rule in force now.
    pub fn current(&self) -> Arc<Access> {
        Arc::clone(&self.rule.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts `access` in force for every call from now on.
    pub fn replace(&self, access: Access) {
        *self.rule.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(access);
    }
}

/// The server's access rule for authenticated APIs.
#[derive(Debug, Clone)]
pub enum Access {
    /// No tokens configured: every caller may do everything. `serve`
    /// allows this only on a loopback address (or when forced).
    Open,
    /// Only callers with a configured token, within its scopes.
    Tokens(HashMap<TokenHash, Arc<Grant>>),
}

impl Access {
    /// Access by these tokens.
    ///
    /// # Errors
    /// Two tokens with the same name or hash, or a token without scopes.
    pub fn with_tokens(rules: Vec<TokenRule>) -> Result<Access, String> {
        let mut by_hash = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for r in rules {
            if r.scopes.is_empty() {
                return Err(format!("token {:?} has no scopes", r.name));
            }
            if !names.insert(r.name.clone()) {
                return Err(format!("two tokens are named {:?}", r.name));
            }
            let grant = Arc::new(Grant {
                name: r.name,
                scopes: r.scopes,
            });
            if by_hash.insert(r.hash, grant).is_some() {
                return Err(format!("two tokens have the hash {}", r.hash));
            }
        }
        Ok(Access::Tokens(by_hash))
    }

    /// Whether every caller may do everything.
    pub fn is_open(&self) -> bool {
        matches!(self, Access::Open)
    }

    /// The grant for a request with this `authorization` header value.
    ///
    /// # Errors
    /// `token_missing` (no header), `token_malformed` (not `Bearer
    /// plt_…`), `token_unknown` (no configured token has its hash).
    pub fn authenticate(&self, header: Option<&[u8]>) -> Result<Arc<Grant>, AuthError> {
        let tokens = match self {
            Access::Open => {
                return Ok(Arc::new(Grant {
                    name: "open".into(),
                    scopes: vec![Scope::Admin],
                }));
            }
            Access::Tokens(t) => t,
        };
        let header = header.ok_or_else(|| {
            AuthError::new(
                AuthCode::TokenMissing,
                "this call needs an \"authorization: Bearer plt_…\" header (pulse-ledger --token or PULSE_LEDGER_TOKEN)",
            )
        })?;
        let text = std::str::from_utf8(header).ok();
        let token = text
            .and_then(|t| t.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
            .ok_or_else(|| {
                AuthError::new(
                    AuthCode::TokenMalformed,
                    "the authorization header must be \"Bearer \" and a token",
                )
            })?;
        let hash = TokenHash::of(token)?;
        tokens.get(&hash).cloned().ok_or_else(|| {
            AuthError::new(
                AuthCode::TokenUnknown,
                "no token configured on this server matches (revoked, or for another server)",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::new_token;

    fn rule(name: &str, token: &str, scopes: Vec<Scope>) -> TokenRule {
        TokenRule {
            name: name.into(),
            hash: TokenHash::of(token).unwrap(),
            scopes,
        }
    }

    fn bearer(t: &str) -> Vec<u8> {
        format!("Bearer {t}").into_bytes()
    }

    #[test]
    fn tokens_authenticate_to_their_own_scopes() {
        let (reader, admin, stranger) = (
            new_token().unwrap(),
            new_token().unwrap(),
            new_token().unwrap(),
        );
        let access = Access::with_tokens(vec![
            rule("reader", &reader, vec![Scope::Read]),
            rule("ops", &admin, vec![Scope::Admin]),
        ])
        .unwrap();
        let g = access.authenticate(Some(&bearer(&reader))).unwrap();
        assert_eq!(g.name(), "reader");
        g.require(&Scope::Read).unwrap();
        let e = g.require(&Scope::Cancel).unwrap_err();
        assert_eq!(e.code(), AuthCode::ScopeMissing);
        assert!(e.message().contains("\"reader\"") && e.message().contains("cancel"));
        let g = access
            .authenticate(Some(format!("bearer {admin}").as_bytes()))
            .unwrap();
        g.require(&Scope::Budget).unwrap();
        let code = |h: Option<&[u8]>| access.authenticate(h).unwrap_err().code();
        assert_eq!(code(None), AuthCode::TokenMissing);
        assert_eq!(code(Some(&bearer(&stranger))), AuthCode::TokenUnknown);
        assert_eq!(code(Some(reader.as_bytes())), AuthCode::TokenMalformed);
        assert_eq!(
            code(Some(format!("Basic {reader}").as_bytes())),
            AuthCode::TokenMalformed
        );
        assert_eq!(code(Some(b"Bearer \xff\xfe")), AuthCode::TokenMalformed);
        assert_eq!(code(Some(&bearer("plt_short"))), AuthCode::TokenMalformed);
    }

    #[test]
    fn open_access_grants_everything_and_bad_configs_are_refused() {
        let g = Access::Open.authenticate(None).unwrap();
        g.require(&Scope::Admin).unwrap();
        let t = new_token().unwrap();
        assert!(Access::with_tokens(vec![rule("a", &t, vec![])]).is_err());
        assert!(
            Access::with_tokens(vec![
                rule("a", &t, vec![Scope::Read]),
                rule("b", &t, vec![Scope::Read])
            ])
            .is_err()
        );
        let u = new_token().unwrap();
        assert!(
            Access::with_tokens(vec![
                rule("a", &t, vec![Scope::Read]),
                rule("a", &u, vec![Scope::Read])
            ])
            .is_err()
        );
        // Required with no tokens: nobody gets in.
        let none = Access::with_tokens(Vec::new()).unwrap();
        assert!(!none.is_open());
        assert_eq!(
            none.authenticate(Some(&bearer(&t))).unwrap_err().code(),
            AuthCode::TokenUnknown
        );
    }
}
