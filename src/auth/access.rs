//! Turning an `authorization` header into what its bearer may do.

use std::collections::HashMap;
use std::sync::Arc;

use super::did_token::{DID_TOKEN_PREFIX, DidToken};
use super::error::{AuthCode, AuthError};
use super::scope::Scope;
use super::token::TokenHash;
use crate::{Did, Member, Right};

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

/// What an authenticated caller may do: an operator token's scopes, or
/// the rights a DID's proof earns it in handlers' access lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    name: String,
    scopes: Vec<Scope>,
    did: Option<Did>,
}

impl Grant {
    /// A caller that proved it holds `did`'s key: no scopes, only what
    /// handlers' access lists give that DID.
    pub fn for_did(did: Did) -> Grant {
        Grant {
            name: did.to_string(),
            scopes: Vec::new(),
            did: Some(did),
        }
    }

    /// The token's configured name (`open` when no tokens are configured),
    /// or the DID a DID token proved.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the caller holds `admin`: every right over every handler.
    pub fn is_admin(&self) -> bool {
        self.scopes.contains(&Scope::Admin)
    }

    /// The DID the caller proved, for a DID token.
    pub fn did(&self) -> Option<&Did> {
        self.did.as_ref()
    }

    /// Whether the caller holds `right` over the jobs of `handler`, whose
    /// current key is `owner` and whose access list for `right` is
    /// `members` (spec/security.md, "Handler owners"): `admin` always; a
    /// DID when the list names it, or names `owner` and it is the owner's
    /// key; a token when the list names `tokens` and one of its scopes
    /// covers the right for this handler.
    pub fn may(&self, right: Right, handler: &Did, owner: &Did, members: &[Member]) -> bool {
        self.is_admin()
            || members.iter().any(|m| match m {
                Member::Owner => self.did.as_ref() == Some(owner),
                Member::Client(d) => self.did.as_ref() == Some(d),
                Member::Tokens => self.scopes.iter().any(|s| s.covers(right, Some(handler))),
            })
    }

    /// [`Grant::may`], as a refusal.
    ///
    /// # Errors
    /// `scope_missing`, naming the caller, the right and the handler.
    pub fn require_on(
        &self,
        right: Right,
        handler: &Did,
        owner: &Did,
        members: &[Member],
    ) -> Result<(), AuthError> {
        if self.may(right, handler, owner, members) {
            return Ok(());
        }
        let list: Vec<String> = members.iter().map(ToString::to_string).collect();
        Err(AuthError::new(
            AuthCode::ScopeMissing,
            format!(
                "{} may not {right} for handler {handler}: its access list for {right} is [{}]",
                self.who(),
                list.join(", ")
            ),
        ))
    }

    /// Whether the caller holds `right` over every handler's jobs: a
    /// token scope without a handler, or `admin`.
    pub fn holds_everywhere(&self, right: Right) -> bool {
        self.scopes.iter().any(|s| s.covers(right, None))
    }

    /// [`Grant::holds_everywhere`], as a refusal: for calls about no one
    /// handler (listing every handler's jobs, the default budget).
    ///
    /// # Errors
    /// `scope_missing`, naming the scope.
    pub fn require_everywhere(&self, right: Right) -> Result<(), AuthError> {
        if self.holds_everywhere(right) {
            return Ok(());
        }
        Err(AuthError::new(
            AuthCode::ScopeMissing,
            format!(
                "{} lacks the {right} scope over every handler this call needs",
                self.who()
            ),
        ))
    }

    /// Ok if the caller may call the Jobs method `method` at all (before
    /// its request is read): a DID caller always (each handler's lists
    /// decide later); a token with some scope for the method's right, on
    /// any handler: enqueue for `Enqueue` and `EnqueueBatch`, read for the
    /// reads, cancel for `CancelJob`, budget for `SetBudget`.
    ///
    /// # Errors
    /// `scope_missing`, naming the scope.
    pub fn may_call(&self, method: &str) -> Result<(), AuthError> {
        if method == "Join" {
            // A DID caller may join as its own plugin; a token needs a
            // plugin scope (checked against the plugin once it proved it).
            if self.did.is_some()
                || self
                    .scopes
                    .iter()
                    .any(|s| matches!(s, Scope::Admin | Scope::Plugin(_)))
            {
                return Ok(());
            }
            return Err(AuthError::new(
                AuthCode::ScopeMissing,
                format!("{} lacks the plugin scope connecting in needs", self.who()),
            ));
        }
        let right = match method {
            "Enqueue" | "EnqueueBatch" | "EnqueueStream" | "RetryJob" | "CreateSchedule"
            | "PauseSchedule" | "DeleteSchedule" => Right::Enqueue,
            "GetJob" | "ListJobs" | "WatchJob" | "GetJobLog" | "GetBudget"
            | "ListPluginSessions" | "ListNodes" | "GetSchedule" | "ListSchedules" => Right::Read,
            "CancelJob" | "CancelJobs" => Right::Cancel,
            "SetBudget" => Right::Budget,
            _ => return Ok(()),
        };
        if self.did.is_some() || self.scopes.iter().any(|s| s.grants(right)) {
            return Ok(());
        }
        Err(AuthError::new(
            AuthCode::ScopeMissing,
            format!(
                "{} lacks the {right} scope this call needs (on any handler)",
                self.who()
            ),
        ))
    }

    /// Ok if the caller may connect in as `plugin`: `admin`, a `plugin`
    /// scope for any plugin or for this one, or a DID token of the
    /// plugin's own ID.
    ///
    /// # Errors
    /// `scope_missing`, naming the caller and the plugin.
    pub fn may_join(&self, plugin: &Did) -> Result<(), AuthError> {
        if self.did.as_ref() == Some(plugin) || self.scopes.iter().any(|s| s.joins(plugin)) {
            return Ok(());
        }
        Err(AuthError::new(
            AuthCode::ScopeMissing,
            format!("{} may not connect in as plugin {plugin}", self.who()),
        ))
    }

    /// The caller, for refusals: `token "ci"`, or a DID.
    fn who(&self) -> String {
        match &self.did {
            Some(d) => d.to_string(),
            None => format!("token {:?}", self.name),
        }
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
    /// The server's log DID, which DID tokens must name; `None`: DID
    /// tokens are refused.
    audience: Option<Did>,
    /// DID tokens already verified, by blake3 of their text, with their
    /// expiry: a client sends the same token on every call, and checking
    /// its signature each time would cost more than the call.
    verified: std::sync::Mutex<VerifiedTokens>,
    /// Tokens revoked for good, and where they are kept.
    revoked: std::sync::Mutex<RevokedTokens>,
}

/// Tokens revoked with `token revoke`: their hashes, kept one per line in
/// a file of the data dir so a reload or restart cannot bring them back.
#[derive(Debug, Default)]
pub struct RevokedTokens {
    hashes: std::collections::HashSet<TokenHash>,
    file: Option<std::path::PathBuf>,
}

impl RevokedTokens {
    /// The revocations kept in `file` (none if it does not exist yet).
    ///
    /// # Errors
    /// The file cannot be read, or a line is not `blake3:` and 64 hex digits.
    pub fn open(file: std::path::PathBuf) -> Result<RevokedTokens, String> {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("{}: {e}", file.display())),
        };
        // A last line without its newline is a revocation a crash cut
        // short: it was never answered, so it is left out, not an error.
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        if complete.len() + 1 < text.len() {
            tracing::warn!(file = %file.display(), "the last line is incomplete (a revocation cut short by a crash); ignored");
        }
        let hashes = complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| TokenHash::parse(l.trim()).map_err(|e| format!("{}: {e}", file.display())))
            .collect::<Result<_, _>>()?;
        Ok(RevokedTokens {
            hashes,
            file: Some(file),
        })
    }

    /// Adds `hash`, appended to the file and synced first.
    fn add(&mut self, hash: TokenHash) -> Result<(), String> {
        if let Some(file) = &self.file {
            let append = || -> std::io::Result<()> {
                use std::io::Write;
                let existed = file.exists();
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(file)?;
                writeln!(f, "{hash}")?;
                f.sync_all()?;
                if !existed {
                    // A new file's name is only durable once its directory is.
                    if let Some(dir) = file.parent() {
                        std::fs::File::open(dir)?.sync_all()?;
                    }
                }
                Ok(())
            };
            append().map_err(|e| format!("{}: {e}", file.display()))?;
        }
        self.hashes.insert(hash);
        Ok(())
    }
}

/// Verified DID tokens by blake3 of their text: the grant and its expiry.
type VerifiedTokens = HashMap<[u8; 32], (Arc<Grant>, u64)>;

/// Most verified DID tokens remembered before the memory starts over.
const MAX_VERIFIED_DID_TOKENS: usize = 4096;

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
            audience: None,
            verified: std::sync::Mutex::default(),
            revoked: std::sync::Mutex::default(),
        }
    }

    /// Accepts DID tokens made for the server whose log DID is `audience`
    /// (spec/security.md, "DID tokens").
    pub fn with_did_tokens(mut self, audience: Did) -> AccessCell {
        self.audience = Some(audience);
        self
    }

    /// The grant for a request with this `authorization` header value:
    /// everything on an open server; else an operator token's, or a DID
    /// token's.
    ///
    /// # Errors
    /// As [`Access::authenticate`]; for a DID token, its rules' codes, or
    /// `token_unknown` when this server does not take DID tokens.
    pub fn authenticate(&self, header: Option<&[u8]>) -> Result<Arc<Grant>, AuthError> {
        let rule = self.current();
        let Some(token) = header
            .and_then(|h| bearer(h).ok())
            .filter(|t| t.starts_with(DID_TOKEN_PREFIX) && !rule.is_open())
        else {
            return rule.authenticate(header);
        };
        let Some(audience) = &self.audience else {
            return Err(AuthError::new(
                AuthCode::TokenUnknown,
                "this server does not accept DID tokens (did_tokens = false); use an operator token",
            ));
        };
        let now = crate::clock::unix_ms();
        let key = *blake3::hash(token.as_bytes()).as_bytes();
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((grant, expires_at)) = verified.get(&key) {
            if now < *expires_at {
                return Ok(Arc::clone(grant));
            }
        }
        drop(verified);
        let claims = DidToken::verify(token, audience, now)?;
        let grant = Arc::new(Grant::for_did(claims.did));
        verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= MAX_VERIFIED_DID_TOKENS {
            verified.clear();
        }
        verified.insert(key, (Arc::clone(&grant), claims.expires_at));
        Ok(grant)
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

    /// Puts `access` in force for every call from now on, less the tokens
    /// revoked for good.
    pub fn replace(&self, access: Access) {
        let revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        let access = access.without(&revoked.hashes);
        *self.rule.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(access);
    }

    /// Keeps revocations in `revoked` (a data dir's file) and takes out,
    /// from now on, the tokens it already names.
    pub fn with_revocations(self, revoked: RevokedTokens) -> AccessCell {
        *self.revoked.lock().unwrap_or_else(|p| p.into_inner()) = revoked;
        let current = (*self.current()).clone();
        self.replace(current);
        self
    }

    /// Revokes the token named `name` at once and for good: written to the
    /// revocation file (synced) before it is taken out of force.
    ///
    /// # Errors
    /// No token of that name is in force, or the file cannot be written.
    pub fn revoke(&self, name: &str) -> Result<TokenHash, String> {
        let hash = match &*self.current() {
            Access::Open => None,
            Access::Tokens(t) => t.iter().find(|(_, g)| g.name == name).map(|(h, _)| *h),
        }
        .ok_or_else(|| format!("no token named {name:?} is in force"))?;
        let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        revoked.add(hash)?;
        let access = self.current().without(&revoked.hashes);
        *self.rule.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(access);
        drop(revoked);
        tracing::warn!(token = name, %hash, "token revoked; remove its [[token]] table when convenient");
        Ok(hash)
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
                did: None,
            });
            if by_hash.insert(r.hash, grant).is_some() {
                return Err(format!("two tokens have the hash {}", r.hash));
            }
        }
        Ok(Access::Tokens(by_hash))
    }

    /// The same access without the tokens whose hashes are in `revoked`
    /// (logged, so an operator sees a table that no longer counts).
    fn without(&self, revoked: &std::collections::HashSet<TokenHash>) -> Access {
        match self {
            Access::Open => Access::Open,
            Access::Tokens(t) => Access::Tokens(
                t.iter()
                    .filter(|(h, g)| {
                        let keep = !revoked.contains(h);
                        if !keep {
                            tracing::warn!(
                                token = g.name(),
                                "this [[token]] table names a revoked token; it is not in force"
                            );
                        }
                        keep
                    })
                    .map(|(h, g)| (*h, Arc::clone(g)))
                    .collect(),
            ),
        }
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
                    did: None,
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
        let token = bearer(header)?;
        let hash = TokenHash::of(token)?;
        tokens.get(&hash).cloned().ok_or_else(|| {
            AuthError::new(
                AuthCode::TokenUnknown,
                "no token configured on this server matches (revoked, or for another server)",
            )
        })
    }
}

/// The token in an `authorization` header value.
fn bearer(header: &[u8]) -> Result<&str, AuthError> {
    std::str::from_utf8(header)
        .ok()
        .and_then(|t| t.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token)
        .ok_or_else(|| {
            AuthError::new(
                AuthCode::TokenMalformed,
                "the authorization header must be \"Bearer \" and a token",
            )
        })
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
            rule("reader", &reader, vec![Scope::Right(Right::Read, None)]),
            rule("ops", &admin, vec![Scope::Admin]),
        ])
        .unwrap();
        let g = access.authenticate(Some(&bearer(&reader))).unwrap();
        assert_eq!(g.name(), "reader");
        g.require_everywhere(Right::Read).unwrap();
        let e = g.require_everywhere(Right::Cancel).unwrap_err();
        assert_eq!(e.code(), AuthCode::ScopeMissing);
        assert!(e.message().contains("\"reader\"") && e.message().contains("cancel"));
        let g = access
            .authenticate(Some(format!("bearer {admin}").as_bytes()))
            .unwrap();
        g.require_everywhere(Right::Budget).unwrap();
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

    fn did(n: u8) -> (ed25519_dalek::SigningKey, Did) {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[n; 32]);
        let did = Did::from_verifying_key(&sk.verifying_key()).unwrap();
        (sk, did)
    }

    #[test]
    fn access_lists_decide_for_dids_and_tokens_admin_always() {
        let ((_, handler), (_, owner), (_, friend), (_, stranger)) =
            (did(1), did(2), did(3), did(4));
        let t = |scopes: Vec<Scope>| Grant {
            name: "t".into(),
            scopes,
            did: None,
        };
        let read_all = t(vec![Scope::Right(Right::Read, None)]);
        let read_this = t(vec![Scope::Right(
            Right::Read,
            Some(Box::new(handler.clone())),
        )]);
        let read_other = t(vec![Scope::Right(
            Right::Read,
            Some(Box::new(friend.clone())),
        )]);
        let admin = t(vec![Scope::Admin]);
        let (o, f, s) = (
            Grant::for_did(owner.clone()),
            Grant::for_did(friend.clone()),
            Grant::for_did(stranger),
        );
        let may = |g: &Grant, members: &[Member]| g.may(Right::Read, &handler, &owner, members);
        let default = crate::HandlerSchema::new("h", "1.0.0", owner.clone())
            .access_members(Right::Read)
            .to_vec();
        let default = &default[..];
        assert!(may(&o, default) && may(&read_all, default) && may(&read_this, default));
        assert!(!may(&f, default) && !may(&s, default) && !may(&read_other, default));
        let friends = [Member::Client(friend.clone())];
        assert!(may(&f, &friends) && !may(&o, &friends) && !may(&read_all, &friends));
        assert!(may(&admin, &[]) && !may(&o, &[]));
        // Another right's scope is no use.
        let cancel = t(vec![Scope::Right(Right::Cancel, None)]);
        assert!(!may(&cancel, default));
        let e = s
            .require_on(Right::Read, &handler, &owner, default)
            .unwrap_err();
        assert_eq!(e.code(), AuthCode::ScopeMissing);
        assert!(e.message().contains("[owner, tokens]"), "{e}");
        // The gate lets DIDs through and tokens with the right anywhere.
        for m in [
            "GetJob",
            "ListJobs",
            "CancelJob",
            "CancelJobs",
            "RetryJob",
            "SetBudget",
            "Enqueue",
        ] {
            s.may_call(m).unwrap();
        }
        read_this.may_call("ListJobs").unwrap();
        assert!(read_this.may_call("CancelJob").is_err());
        assert!(read_this.may_call("EnqueueStream").is_err());
        assert!(read_this.require_everywhere(Right::Read).is_err());
        read_all.require_everywhere(Right::Read).unwrap();
    }

    #[test]
    fn revocations_survive_a_reopen_and_a_torn_last_line_is_ignored() {
        let dir = std::env::temp_dir().join(format!("pulse-revoked-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("revoked-tokens");
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        let cell = AccessCell::new(
            Access::with_tokens(vec![
                rule("a", &a, vec![Scope::Admin]),
                rule("b", &b, vec![Scope::Admin]),
            ])
            .unwrap(),
        )
        .with_revocations(RevokedTokens::open(file.clone()).unwrap());
        assert_eq!(cell.revoke("a").unwrap(), TokenHash::of(&a).unwrap());
        assert!(cell.revoke("a").is_err(), "already out of force");
        let code =
            |c: &AccessCell, t: &str| c.authenticate(Some(&bearer(t))).err().map(|e| e.code());
        assert_eq!(code(&cell, &a), Some(AuthCode::TokenUnknown));
        assert_eq!(code(&cell, &b), None);
        // A crash in the middle of a later line leaves it torn.
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        f.write_all(b"blake3:00ff").unwrap();
        let again = RevokedTokens::open(file.clone()).unwrap();
        let cell = AccessCell::new(
            Access::with_tokens(vec![
                rule("a", &a, vec![Scope::Admin]),
                rule("b", &b, vec![Scope::Admin]),
            ])
            .unwrap(),
        )
        .with_revocations(again);
        assert_eq!(code(&cell, &a), Some(AuthCode::TokenUnknown));
        assert_eq!(code(&cell, &b), None);
        // A complete line that is not a hash is an error.
        std::fs::write(&file, "not a hash\n").unwrap();
        assert!(RevokedTokens::open(file).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn did_tokens_are_taken_only_for_this_server_and_only_when_enabled() {
        let ((client, client_did), (_, log), (_, other_log)) = (did(5), did(6), did(7));
        let ops = new_token().unwrap();
        let tokens = || Access::with_tokens(vec![rule("ops", &ops, vec![Scope::Admin])]).unwrap();
        let now = crate::clock::unix_ms();
        let good = DidToken::sign(&client, &log, now, now + 60_000).unwrap();
        let elsewhere = DidToken::sign(&client, &other_log, now, now + 60_000).unwrap();
        let cell = AccessCell::new(tokens()).with_did_tokens(log.clone());
        for _ in 0..2 {
            // The second time from memory.
            let g = cell.authenticate(Some(&bearer(&good))).unwrap();
            assert_eq!(g.did(), Some(&client_did));
            assert!(g.require_everywhere(Right::Read).is_err());
        }
        let code = |c: &AccessCell, t: &str| c.authenticate(Some(&bearer(t))).unwrap_err().code();
        assert_eq!(code(&cell, &elsewhere), AuthCode::TokenWrongServer);
        let expired = DidToken::sign(&client, &log, now - 120_000, now - 60_000).unwrap();
        assert_eq!(code(&cell, &expired), AuthCode::TokenExpired);
        assert_eq!(
            cell.authenticate(Some(&bearer(&ops))).unwrap().name(),
            "ops"
        );
        let off = AccessCell::new(tokens());
        assert_eq!(code(&off, &good), AuthCode::TokenUnknown);
        // An open server grants everything whatever the header holds.
        let open = AccessCell::new(Access::Open);
        open.authenticate(Some(&bearer(&elsewhere)))
            .unwrap()
            .require_everywhere(Right::Budget)
            .unwrap();
    }

    #[test]
    fn open_access_grants_everything_and_bad_configs_are_refused() {
        let g = Access::Open.authenticate(None).unwrap();
        for r in Right::ALL {
            g.require_everywhere(r).unwrap();
        }
        let t = new_token().unwrap();
        assert!(Access::with_tokens(vec![rule("a", &t, vec![])]).is_err());
        assert!(
            Access::with_tokens(vec![
                rule("a", &t, vec![Scope::Right(Right::Read, None)]),
                rule("b", &t, vec![Scope::Right(Right::Read, None)])
            ])
            .is_err()
        );
        let u = new_token().unwrap();
        assert!(
            Access::with_tokens(vec![
                rule("a", &t, vec![Scope::Right(Right::Read, None)]),
                rule("a", &u, vec![Scope::Right(Right::Read, None)])
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
