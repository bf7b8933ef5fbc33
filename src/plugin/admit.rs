//! Admitting a session: the checks on a plugin's answer to the nonce,
//! however the plugin is connected (spec/plugin.md, "Verifying a proof").
//! The proof must verify, and the ledger must say the plugin is
//! registered, not revoked, and that the key is its current one.

use super::proof::{AnnouncedHandler, Announcement, verify_proof};
use crate::api::proto;
use crate::ledger::Ledger;
use crate::{Did, Family};

/// Why a proof was refused: a stable code of spec/plugin.md and a detail
/// for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// `bad_announcement`, `bad_proof`, `plugin_not_registered`,
    /// `plugin_revoked` or `plugin_not_authorised`.
    pub code: &'static str,
    /// What was wrong.
    pub message: String,
}

impl Refused {
    fn new(code: &'static str, message: String) -> Refused {
        Refused { code, message }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Checks the plugin's answer to `nonce`. `expect` is the plugin ID the
/// server's config demands of this process, if any. Announced handler IDs
/// whose chain names another plugin are dropped (logged): the plugin's
/// claim is not the handler's.
///
/// # Errors
/// The refusal, with its code.
pub fn admit(
    ledger: &Ledger,
    expect: Option<&Did>,
    nonce: &[u8],
    answer: &proto::InitializeResponse,
) -> Result<Announcement, Refused> {
    let announcement = announcement(answer)?;
    verify_proof(nonce, &announcement, &answer.signature)
        .map_err(|e| Refused::new("bad_proof", e.to_string()))?;
    let plugin = &announcement.plugin;
    if let Some(expect) = expect {
        if expect != plugin {
            return Err(Refused::new(
                "plugin_not_authorised",
                format!("configured for {expect}, but it proved {plugin}"),
            ));
        }
    }
    let rec = ledger
        .subject(plugin)
        .map_err(|e| Refused::new("plugin_not_registered", format!("{plugin}: {e}")))?;
    if rec.head.family != Family::Plugin {
        return Err(Refused::new(
            "plugin_not_registered",
            format!("{plugin} is a handler"),
        ));
    }
    if rec.head.revoked {
        return Err(Refused::new(
            "plugin_revoked",
            format!("{plugin} was revoked at log index {}", rec.head_index),
        ));
    }
    if rec.head.key != announcement.key {
        return Err(Refused::new(
            "bad_proof",
            format!(
                "{plugin} signed with {}, but its current key is {}",
                announcement.key, rec.head.key
            ),
        ));
    }
    Ok(authorised(ledger, announcement))
}

/// Whether the plugin's chain still backs a session that proved `a`.
///
/// # Errors
/// Why not: revoked, or rotated to another key.
pub(super) fn still_current(ledger: &Ledger, a: &Announcement) -> Result<(), String> {
    match ledger.subject(&a.plugin) {
        Ok(r) if r.head.revoked => Err(format!("plugin_revoked: {}", a.plugin)),
        Ok(r) if r.head.key != a.key => Err(format!(
            "the plugin rotated its key to {}; re-opening the session",
            r.head.key
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Drops announced handler IDs whose chain in the log names another
/// plugin.
fn authorised(ledger: &Ledger, mut a: Announcement) -> Announcement {
    let plugin = a.plugin.clone();
    a.handlers.retain(|h| {
        let Some(id) = &h.id else { return true };
        // A handler not in the log yet may be registered later naming
        // this plugin; routing follows its chain either way.
        let ok = match ledger.subject(id) {
            Ok(r) => r.plugin.as_ref() == Some(&plugin),
            Err(_) => true,
        };
        if !ok {
            tracing::warn!(
                plugin = %plugin,
                handler = %id,
                "plugin_not_authorised: the handler's chain does not name this plugin; announcement ignored"
            );
        }
        ok
    });
    a
}

/// Parses an InitializeResponse into an announcement.
fn announcement(r: &proto::InitializeResponse) -> Result<Announcement, Refused> {
    let did = |field: &str, text: &str| {
        Did::parse(text).map_err(|e| Refused::new("bad_announcement", format!("{field}: {e}")))
    };
    let handlers = r
        .handlers
        .iter()
        .map(|h| {
            Ok(AnnouncedHandler {
                id: if h.id.is_empty() {
                    None
                } else {
                    Some(did("handlers.id", &h.id)?)
                },
                name: h.name.clone(),
            })
        })
        .collect::<Result<Vec<_>, Refused>>()?;
    Ok(Announcement {
        plugin: did("plugin", &r.plugin)?,
        key: did("key", &r.key)?,
        handlers,
        serves_any: r.serves_any,
    })
}
