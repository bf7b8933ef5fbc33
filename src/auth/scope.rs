//! What a token may do.

use crate::Did;

/// One permission. A token holds a list; `admin` holds them all.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Enqueue jobs: for every handler (`enqueue`) or one
    /// (`enqueue:did:key:…`).
    Enqueue(Option<Box<Did>>),
    /// Read jobs, their logs and budgets (`read`).
    Read,
    /// Cancel jobs (`cancel`).
    Cancel,
    /// Set budgets (`budget`).
    Budget,
    /// Everything above, and any administrative call added later (`admin`).
    Admin,
}

impl Scope {
    /// Parses `enqueue`, `enqueue:did:key:…`, `read`, `cancel`, `budget`
    /// or `admin`.
    ///
    /// # Errors
    /// A message listing the scopes there are.
    pub fn parse(text: &str) -> Result<Scope, String> {
        match text {
            "enqueue" => Ok(Scope::Enqueue(None)),
            "read" => Ok(Scope::Read),
            "cancel" => Ok(Scope::Cancel),
            "budget" => Ok(Scope::Budget),
            "admin" => Ok(Scope::Admin),
            _ => match text.strip_prefix("enqueue:") {
                Some(did) => Did::parse(did)
                    .map(|d| Scope::Enqueue(Some(Box::new(d))))
                    .map_err(|e| format!("scope {text:?}: {e}")),
                None => Err(format!(
                    "unknown scope {text:?}: the scopes are enqueue, enqueue:<handler did:key>, read, cancel, budget, admin"
                )),
            },
        }
    }

    /// Whether holding `self` permits what `needed` names.
    pub fn covers(&self, needed: &Scope) -> bool {
        match (self, needed) {
            (Scope::Enqueue(_), Scope::Enqueue(Some(h))) => self.covers_enqueue(h),
            (Scope::Admin, _) | (Scope::Enqueue(None), Scope::Enqueue(None)) => true,
            (a, b) => a == b,
        }
    }

    /// Whether holding `self` permits enqueuing jobs for `handler`.
    pub fn covers_enqueue(&self, handler: &Did) -> bool {
        match self {
            Scope::Admin | Scope::Enqueue(None) => true,
            Scope::Enqueue(Some(h)) => **h == *handler,
            _ => false,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Enqueue(None) => f.write_str("enqueue"),
            Scope::Enqueue(Some(d)) => write!(f, "enqueue:{d}"),
            Scope::Read => f.write_str("read"),
            Scope::Cancel => f.write_str("cancel"),
            Scope::Budget => f.write_str("budget"),
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
        for s in [
            Scope::Enqueue(None),
            Scope::Enqueue(Some(did(1))),
            Scope::Read,
            Scope::Cancel,
            Scope::Budget,
            Scope::Admin,
        ] {
            assert_eq!(Scope::parse(&s.to_string()).unwrap(), s);
        }
        for bad in [
            "",
            "Enqueue",
            "enqueue:",
            "enqueue:did:key:nope",
            "write",
            "admin ",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn coverage_is_exact_except_admin_and_enqueue_all() {
        let (a, b) = (Scope::Enqueue(Some(did(1))), Scope::Enqueue(Some(did(2))));
        let all = [
            Scope::Enqueue(None),
            a.clone(),
            b.clone(),
            Scope::Read,
            Scope::Cancel,
            Scope::Budget,
            Scope::Admin,
        ];
        for need in &all {
            assert!(Scope::Admin.covers(need));
        }
        assert!(Scope::Enqueue(None).covers(&a));
        assert!(a.covers(&a));
        assert!(!a.covers(&b));
        assert!(!a.covers(&Scope::Enqueue(None)));
        for held in [Scope::Read, Scope::Cancel, Scope::Budget] {
            for need in &all {
                assert_eq!(held.covers(need), &held == need, "{held} covers {need}");
            }
        }
        assert!(!Scope::Enqueue(None).covers(&Scope::Read));
    }
}
