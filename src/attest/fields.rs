//! Reading a decoded CBOR map as a record of named fields, with the error
//! codes of the spec's field rules.

use super::cbor::{Map, Value};
use super::did::Did;
use super::error::{Error, ErrorCode};

/// A decoded map whose keys have been checked against a known set.
pub(crate) struct Fields {
    map: Map,
    place: &'static str,
}

impl Fields {
    /// Accepts `value` if it is a map whose keys are all in `known`.
    pub(crate) fn new(value: Value, place: &'static str, known: &[&str]) -> Result<Fields, Error> {
        let fields = Fields::open(value, place)?;
        fields.known(known)?;
        Ok(fields)
    }

    /// Accepts any map, leaving the key check to [`Fields::known`].
    pub(crate) fn open(value: Value, place: &'static str) -> Result<Fields, Error> {
        let Value::Map(map) = value else {
            return Err(Error::new(
                ErrorCode::WrongType,
                format!("{place} must be a map"),
            ));
        };
        Ok(Fields { map, place })
    }

    /// Fails with `unknown_field` on the first key (in map order) not in
    /// `known`.
    pub(crate) fn known(&self, known: &[&str]) -> Result<(), Error> {
        match self.map.keys().find(|k| !known.contains(k)) {
            Some(k) => Err(Error::new(
                ErrorCode::UnknownField,
                format!("{}.{k} is not a field the format defines", self.place),
            )),
            None => Ok(()),
        }
    }

    /// Fails with `unexpected_field` on the first present key not in `allowed`.
    pub(crate) fn only(&self, allowed: &[&str], why: &str) -> Result<(), Error> {
        match self.map.keys().find(|k| !allowed.contains(k)) {
            Some(k) => Err(Error::new(
                ErrorCode::UnexpectedField,
                format!("{}.{k} is not allowed in {why}", self.place),
            )),
            None => Ok(()),
        }
    }

    /// Fails with `missing_field` on the first of `required` that is absent.
    pub(crate) fn require(&self, required: &[&str]) -> Result<(), Error> {
        match required.iter().find(|k| self.map.get(k).is_none()) {
            Some(k) => Err(Error::new(
                ErrorCode::MissingField,
                format!("{}.{k} is required", self.place),
            )),
            None => Ok(()),
        }
    }

    pub(crate) fn value(&self, key: &str) -> Option<&Value> {
        self.map.get(key)
    }

    pub(crate) fn wrong_type(&self, key: &str, expected: &str) -> Error {
        Error::new(
            ErrorCode::WrongType,
            format!("{}.{key} must be {expected}", self.place),
        )
    }

    pub(crate) fn invalid(&self, key: &str, rule: impl std::fmt::Display) -> Error {
        Error::new(
            ErrorCode::InvalidField,
            format!("{}.{key} {rule}", self.place),
        )
    }

    pub(crate) fn uint(&self, key: &str) -> Result<Option<u64>, Error> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::Uint(n)) => Ok(Some(*n)),
            Some(_) => Err(self.wrong_type(key, "an unsigned integer")),
        }
    }

    /// An unsigned integer that must lie in `min..=max`.
    pub(crate) fn uint_in(&self, key: &str, min: u64, max: u64) -> Result<Option<u64>, Error> {
        match self.uint(key)? {
            Some(n) if n < min || n > max => Err(self.invalid(
                key,
                format_args!("is {n}; it must be between {min} and {max}"),
            )),
            other => Ok(other),
        }
    }

    pub(crate) fn text(&self, key: &str) -> Result<Option<String>, Error> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::Text(t)) => Ok(Some(t.clone())),
            Some(_) => Err(self.wrong_type(key, "a text string")),
        }
    }

    /// Text of at most `max` bytes, non-empty, without control characters
    /// other than tab and newline.
    pub(crate) fn prose(&self, key: &str, max: usize) -> Result<Option<String>, Error> {
        let Some(t) = self.text(key)? else {
            return Ok(None);
        };
        if t.is_empty() || t.len() > max {
            return Err(self.invalid(key, format_args!("must be 1 to {max} bytes")));
        }
        if t.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            return Err(self.invalid(
                key,
                "must not contain control characters other than tab and newline",
            ));
        }
        Ok(Some(t))
    }

    pub(crate) fn bytes(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::Bytes(b)) => Ok(Some(b.clone())),
            Some(_) => Err(self.wrong_type(key, "a byte string")),
        }
    }

    pub(crate) fn did(&self, key: &str) -> Result<Option<Did>, Error> {
        match self.text(key)? {
            None => Ok(None),
            Some(t) => Did::parse(&t)
                .map(Some)
                .map_err(|e| e.within(&format!("{}.{key}", self.place))),
        }
    }

    pub(crate) fn map(&self, key: &str) -> Option<&Value> {
        self.map.get(key)
    }
}
