//! A handler's access lists: who its owner lets enqueue to it, read its
//! jobs, cancel them and set its budget (spec/attestation.md, "Access";
//! spec/security.md, "Handler owners").
//!
//! The lists are part of the signed schema, so only the holder of the
//! handler's current key can change them, and anyone can audit them.

use super::cbor::{Map, Value};
use super::did::Did;
use super::error::{Error, ErrorCode};
use super::fields::Fields;

/// Most members in one access list.
pub const MAX_ACCESS_MEMBERS: usize = 64;

/// Something a caller may do with a handler's jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Right {
    /// Enqueue jobs for the handler.
    Enqueue,
    /// Read its jobs, their logs and its budget.
    Read,
    /// Cancel its jobs.
    Cancel,
    /// Set its budget.
    Budget,
}

impl Right {
    /// Every right, in the order a verifier checks the lists.
    pub const ALL: [Right; 4] = [Right::Enqueue, Right::Read, Right::Cancel, Right::Budget];

    /// The right's name: its key in `access` and its token scope.
    pub fn as_str(self) -> &'static str {
        match self {
            Right::Enqueue => "enqueue",
            Right::Read => "read",
            Right::Cancel => "cancel",
            Right::Budget => "budget",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Right {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of an access list.
// Lists are short (at most 64) and read far more than built: a boxed DID
// would cost an allocation per member for no gain.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    /// `"owner"`: whoever holds the handler's current key (a rotation
    /// moves the right with the key).
    Owner,
    /// `"tokens"`: the server's operator tokens whose scopes cover the
    /// right (the scope alone, or the scope for this handler).
    Tokens,
    /// A `did:key`: a client that proves it holds this key.
    Client(Did),
}

impl Member {
    /// Parses `owner`, `tokens` or a did:key.
    ///
    /// # Errors
    /// The did:key rules' codes, for anything else.
    pub fn parse(text: &str) -> Result<Member, Error> {
        match text {
            "owner" => Ok(Member::Owner),
            "tokens" => Ok(Member::Tokens),
            _ => Did::parse(text).map(Member::Client).map_err(|e| {
                Error::new(
                    e.code(),
                    format!(
                        "{text:?} is not \"owner\", \"tokens\" or a did:key ({})",
                        e.message()
                    ),
                )
            }),
        }
    }
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Member::Owner => f.write_str("owner"),
            Member::Tokens => f.write_str("tokens"),
            Member::Client(d) => write!(f, "{d}"),
        }
    }
}

/// The list that applies to a right the schema does not name: the owner
/// and the operator's tokens, as before access lists existed.
pub(crate) const DEFAULT_MEMBERS: &[Member] = &[Member::Owner, Member::Tokens];

const ACCESS_FIELDS: &[&str] = &["enqueue", "read", "cancel", "budget"];

/// A handler's access lists, one per [`Right`]; a list left out is
/// [`DEFAULT_MEMBERS`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HandlerAccess {
    lists: [Option<Vec<Member>>; 4],
}

impl HandlerAccess {
    /// Sets the list for `right` (an empty list: only the server's
    /// `admin` tokens).
    ///
    /// # Panics
    /// If the list is longer than [`MAX_ACCESS_MEMBERS`] or repeats a
    /// member: schemas built in code must be valid.
    pub fn set(&mut self, right: Right, members: Vec<Member>) -> &mut Self {
        assert!(
            members.len() <= MAX_ACCESS_MEMBERS,
            "at most {MAX_ACCESS_MEMBERS} members"
        );
        assert!(
            first_repeat(&members).is_none(),
            "an access list names each member once"
        );
        self.lists[right.index()] = Some(members);
        self
    }

    /// The list the schema gives for `right`, if it gives one.
    pub fn written(&self, right: Right) -> Option<&[Member]> {
        self.lists[right.index()].as_deref()
    }

    /// The members that hold `right`: the written list, or the default.
    pub fn members(&self, right: Right) -> &[Member] {
        self.written(right).unwrap_or(DEFAULT_MEMBERS)
    }

    pub(crate) fn to_value(&self) -> Value {
        let mut m = Map::new();
        for right in Right::ALL {
            m.insert_opt(
                right.as_str(),
                self.written(right).map(|list| {
                    Value::Array(list.iter().map(|x| Value::Text(x.to_string())).collect())
                }),
            );
        }
        Value::Map(m)
    }

    pub(crate) fn from_value(value: Value) -> Result<HandlerAccess, Error> {
        let f = Fields::new(value, "schema.access", ACCESS_FIELDS)?;
        let mut access = HandlerAccess::default();
        for right in Right::ALL {
            let key = right.as_str();
            let Some(v) = f.value(key) else { continue };
            let Value::Array(items) = v else {
                return Err(f.wrong_type(key, "an array of text strings"));
            };
            if items.len() > MAX_ACCESS_MEMBERS {
                return Err(f.invalid(
                    key,
                    format_args!(
                        "has {} members; an access list has at most {MAX_ACCESS_MEMBERS}",
                        items.len()
                    ),
                ));
            }
            let mut members = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let Value::Text(t) = item else {
                    return Err(f.wrong_type(&format!("{key}[{i}]"), "a text string"));
                };
                let m =
                    Member::parse(t).map_err(|e| e.within(&format!("schema.access.{key}[{i}]")))?;
                members.push(m);
            }
            if let Some((i, m)) = first_repeat(&members) {
                return Err(Error::new(
                    ErrorCode::InvalidField,
                    format!("schema.access.{key}[{i}] names {m} again; each member appears once"),
                ));
            }
            access.lists[right.index()] = Some(members);
        }
        Ok(access)
    }
}

/// The first member that an earlier one repeats, with its position.
fn first_repeat(members: &[Member]) -> Option<(usize, &Member)> {
    members
        .iter()
        .enumerate()
        .find(|(i, m)| members[..*i].contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn did(n: u8) -> Did {
        let key = ed25519_dalek::SigningKey::from_bytes(&[n; 32]);
        Did::from_verifying_key(&key.verifying_key()).unwrap()
    }

    fn text_list(items: &[&str]) -> Value {
        Value::Array(items.iter().map(|t| Value::Text((*t).to_owned())).collect())
    }

    fn parse(entries: Vec<(&str, Value)>) -> Result<HandlerAccess, Error> {
        let mut m = Map::new();
        for (k, v) in entries {
            m.insert(k, v);
        }
        HandlerAccess::from_value(Value::Map(m))
    }

    #[test]
    fn lists_round_trip_and_absent_lists_are_the_default() {
        let mut a = HandlerAccess::default();
        a.set(Right::Enqueue, vec![Member::Owner, Member::Client(did(1))])
            .set(Right::Cancel, vec![]);
        let back = HandlerAccess::from_value(a.to_value()).unwrap();
        assert_eq!(back, a);
        assert_eq!(back.members(Right::Read), DEFAULT_MEMBERS);
        assert_eq!(back.members(Right::Cancel), &[] as &[Member]);
        assert_eq!(back.written(Right::Budget), None);
        assert_eq!(
            back.members(Right::Enqueue),
            &[Member::Owner, Member::Client(did(1))]
        );
    }

    #[test]
    fn each_rule_is_refused_with_its_code() {
        let d = did(2).to_string();
        type Case<'a> = (Vec<(&'a str, Value)>, ErrorCode, &'a str);
        let cases: Vec<Case> = vec![
            (
                vec![("write", text_list(&[]))],
                ErrorCode::UnknownField,
                "schema.access.write",
            ),
            (
                vec![("read", Value::Text("owner".into()))],
                ErrorCode::WrongType,
                "schema.access.read",
            ),
            (
                vec![("read", Value::Array(vec![Value::Uint(1)]))],
                ErrorCode::WrongType,
                "schema.access.read[0]",
            ),
            (
                vec![("cancel", text_list(&["owner", "everyone"]))],
                ErrorCode::DidSyntax,
                "schema.access.cancel[1]",
            ),
            (
                vec![("budget", text_list(&["tokens", &d, &d]))],
                ErrorCode::InvalidField,
                "schema.access.budget[2]",
            ),
            (
                vec![("enqueue", text_list(&vec!["owner"; 65]))],
                ErrorCode::InvalidField,
                "at most 64",
            ),
        ];
        for (entries, code, needle) in cases {
            let e = parse(entries).unwrap_err();
            assert_eq!(e.code(), code, "{e}");
            assert!(e.message().contains(needle), "{e} lacks {needle}");
        }
        let e = HandlerAccess::from_value(Value::Uint(1)).unwrap_err();
        assert_eq!(e.code(), ErrorCode::WrongType);
    }
}
