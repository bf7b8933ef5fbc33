//! What an operator token may do.

use crate::{Did, Right};

/// One permission. A token holds a list; `admin` holds them all.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// A right over every handler's jobs (`read`), or over one handler's
    /// (`read:did:key:…`). Either counts as `tokens` in a handler's access
    /// lists; a handler whose list leaves out `tokens` is closed to both.
    Right(Right, Option<Box<Did>>),
    /// Connecting in as a plugin (`PluginGateway.Join`): as any plugin
    /// (`plugin`), or as one (`plugin:did:key:…`). The process must still
    /// prove the plugin's current key.
    Plugin(Option<Box<Did>>),
    /// Every right over every handler, whatever its access lists say, and
    /// any administrative call added later (`admin`).
    Admin,
}

impl Scope {
    /// Parses the configuration form: `enqueue`, `read`, `cancel`,
    /// `budget`, each alone or followed by `:` and a handler's did:key,
    /// or `admin`.
    ///
    /// # Errors
    /// A message naming the bad scope and the accepted forms.
    pub fn parse(text: &str) -> Result<Scope, String> {
        if text == "admin" {
            return Ok(Scope::Admin);
        }
        let (name, handler) = match text.split_once(':') {
            Some((name, did)) => (name, Some(did)),
            None => (text, None),
        };
        if name == "plugin" {
            let plugin = handler
                .map(|d| Did::parse(d).map(Box::new))
                .transpose()
                .map_err(|e| format!("scope {text:?}: {e}"))?;
            return Ok(Scope::Plugin(plugin));
        }
        let Some(right) = Right::ALL.into_iter().find(|r| r.as_str() == name) else {
            return Err(format!(
                "unknown scope {text:?}: the scopes are enqueue, read, cancel, budget (each alone, or \
                 followed by :<handler did:key> for one handler), plugin (alone, or followed by \
                 :<plugin did:key>) and admin"
            ));
        };
        let handler = handler
            .map(|d| Did::parse(d).map(Box::new))
            .transpose()
            .map_err(|e| format!("scope {text:?}: {e}"))?;
        Ok(Scope::Right(right, handler))
    }

    /// Whether holding `self` gives `right` over `handler`'s jobs, or, for
    /// `None`, over every handler's (a listing, the default budget).
    pub fn covers(&self, right: Right, handler: Option<&Did>) -> bool {
        match self {
            Scope::Admin => true,
            Scope::Right(r, None) => *r == right,
            Scope::Right(r, Some(h)) => *r == right && handler == Some(&**h),
            Scope::Plugin(_) => false,
        }
    }

    /// Whether holding `self` lets a process connect in as `plugin`.
    pub fn joins(&self, plugin: &Did) -> bool {
        match self {
            Scope::Admin | Scope::Plugin(None) => true,
            Scope::Plugin(Some(p)) => **p == *plugin,
            Scope::Right(..) => false,
        }
    }

    /// Whether `self` gives `right` over at least one handler.
    pub fn grants(&self, right: Right) -> bool {
        match self {
            Scope::Admin => true,
            Scope::Right(r, _) => *r == right,
            Scope::Plugin(_) => false,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Right(r, None) => write!(f, "{r}"),
            Scope::Right(r, Some(d)) => write!(f, "{r}:{d}"),
            Scope::Plugin(None) => f.write_str("plugin"),
            Scope::Plugin(Some(d)) => write!(f, "plugin:{d}"),
            Scope::Admin => f.write_str("admin"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn did(n: u8) -> Box<Did> {
        let key = ed25519_dalek::SigningKey::from_bytes(&[n; 32]);
        Box::new(Did::from_verifying_key(&key.verifying_key()).unwrap())
    }

    #[test]
    fn scopes_round_trip_through_text() {
        let mut all = vec![Scope::Admin];
        for r in Right::ALL {
            all.push(Scope::Right(r, None));
            all.push(Scope::Right(r, Some(did(1))));
        }
        for s in all {
            assert_eq!(Scope::parse(&s.to_string()).unwrap(), s);
        }
        for bad in [
            "",
            "Enqueue",
            "enqueue:",
            "read:did:key:nope",
            "write",
            "admin ",
            "admin:did:key:z6Mk",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_scope_covers_its_right_on_its_handlers_and_admin_everything() {
        let (a, b) = (did(1), did(2));
        for right in Right::ALL {
            let all = Scope::Right(right, None);
            let one = Scope::Right(right, Some(a.clone()));
            assert!(all.covers(right, Some(&a)) && all.covers(right, None));
            assert!(one.covers(right, Some(&a)));
            assert!(!one.covers(right, Some(&b)) && !one.covers(right, None));
            assert!(one.grants(right) && all.grants(right));
            assert!(Scope::Admin.covers(right, None) && Scope::Admin.grants(right));
            for other in Right::ALL.into_iter().filter(|o| *o != right) {
                assert!(!all.covers(other, Some(&a)) && !one.covers(other, Some(&a)));
                assert!(!all.grants(other));
            }
        }
    }
}
