//! The canonical CBOR codec: the only module that touches serde_cbor.
//!
//! The format uses five CBOR types only: unsigned integers, byte strings,
//! text strings, arrays and maps with text keys. Decoding is strict and
//! precise (each broken rule has its own code and byte offset); encoding goes
//! through serde_cbor, and every decode re-encodes and demands the same bytes,
//! so the two halves check each other.

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use super::error::{Error, ErrorCode};

/// Deepest nesting of arrays and maps accepted (the format needs 3).
const MAX_DEPTH: usize = 8;

/// A decoded CBOR item of the five types the format uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Major type 0.
    Uint(u64),
    /// Major type 2.
    Bytes(Vec<u8>),
    /// Major type 3.
    Text(String),
    /// Major type 4.
    Array(Vec<Value>),
    /// Major type 5, text keys only.
    Map(Map),
}

/// A map with text keys. Decoded maps keep their (canonical) order; maps
/// built in code are sorted when encoded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Map(pub Vec<(String, Value)>);

impl Map {
    /// An empty map.
    pub fn new() -> Map {
        Map(Vec::new())
    }

    /// Adds an entry (order does not matter: encoding sorts).
    pub fn insert(&mut self, key: &str, value: Value) {
        self.0.push((key.to_owned(), value));
    }

    /// Adds an entry if `value` is `Some`.
    pub fn insert_opt(&mut self, key: &str, value: Option<Value>) {
        if let Some(v) = value {
            self.insert(key, v);
        }
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The keys, in stored order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }
}

/// Canonical order of text keys (RFC 8949 §4.2.1 bytewise order of the
/// encoded keys, which for text keys is: shorter first, then bytewise).
fn key_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.len()
        .cmp(&b.len())
        .then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Uint(n) => s.serialize_u64(*n),
            Value::Bytes(b) => s.serialize_bytes(b),
            Value::Text(t) => s.serialize_str(t),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Map(map) => {
                let mut entries: Vec<&(String, Value)> = map.0.iter().collect();
                entries.sort_by(|a, b| key_order(&a.0, &b.0));
                let mut m = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
    }
}

/// Encodes an internal record (not a signed format: no canonical-form
/// guarantee) with serde_cbor, packed: struct fields and enum variants by
/// number, not name, so records are smaller and faster to read. Records
/// written with names (before) still decode: serde reads either.
pub(crate) fn record_to_vec<T: Serialize>(value: &T) -> Vec<u8> {
    serde_cbor::ser::to_vec_packed(value)
        .unwrap_or_else(|e| unreachable!("CBOR encode of a record: {e}"))
}

/// A record as earlier versions wrote it (field names, not numbers): for
/// tests that old data still reads.
#[cfg(test)]
pub(crate) fn named_record_to_vec<T: Serialize>(value: &T) -> Vec<u8> {
    serde_cbor::to_vec(value).unwrap_or_else(|e| unreachable!("CBOR encode of a record: {e}"))
}

/// Decodes an internal record written by [`record_to_vec`].
pub(crate) fn record_from_slice<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_cbor::from_slice(bytes).map_err(|e| e.to_string())
}

/// Encodes a value in canonical form.
pub fn encode(value: &Value) -> Vec<u8> {
    // Writing to a Vec cannot fail, and every Value is representable.
    serde_cbor::to_vec(value).unwrap_or_else(|e| unreachable!("CBOR encode of a Value: {e}"))
}

/// Decodes exactly one canonical CBOR item spanning all of `bytes`.
///
/// # Errors
/// `malformed_cbor`, `non_canonical_cbor`, `duplicate_key` or
/// `forbidden_cbor_type`, for the first problem in byte order.
pub fn decode(bytes: &[u8]) -> Result<Value, Error> {
    let mut reader = Reader { bytes, pos: 0 };
    let value = reader.item(0)?;
    if reader.pos != bytes.len() {
        return Err(Error::new(
            ErrorCode::MalformedCbor,
            format!("{} trailing bytes after the item", bytes.len() - reader.pos),
        ));
    }
    // The decoder enforces every rule itself; re-encoding proves that the
    // writer agrees byte for byte, so nothing is accepted that we would not
    // produce.
    if encode(&value) != bytes {
        return Err(Error::new(
            ErrorCode::NonCanonicalCbor,
            "re-encoding does not reproduce the input bytes",
        ));
    }
    Ok(value)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn err(&self, code: ErrorCode, at: usize, what: impl std::fmt::Display) -> Error {
        Error::new(code, format!("{what} (at byte {at})"))
    }

    fn take(&mut self, n: usize, start: usize) -> Result<&[u8], Error> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(self.err(ErrorCode::MalformedCbor, start, "truncated item"));
        };
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// Reads an item head: (major type, argument), enforcing the shortest
    /// argument form and definite lengths.
    fn head(&mut self) -> Result<(u8, u64, usize), Error> {
        let start = self.pos;
        let initial = self.take(1, start)?[0];
        let major = initial >> 5;
        let info = initial & 0x1f;
        if major == 7 {
            let what = match info {
                20 | 21 => "booleans are not used",
                22 | 23 => "null and undefined are not used",
                25..=27 => "floating-point numbers are not allowed",
                28..=30 => {
                    return Err(self.err(
                        ErrorCode::MalformedCbor,
                        start,
                        "reserved additional information",
                    ));
                }
                31 => {
                    return Err(self.err(ErrorCode::MalformedCbor, start, "unexpected break"));
                }
                _ => "simple values are not used",
            };
            return Err(self.err(ErrorCode::ForbiddenCborType, start, what));
        }
        let arg = match info {
            0..=23 => u64::from(info),
            24..=27 => {
                let width = 1usize << (info - 24);
                let raw = self.take(width, start)?;
                let arg = raw.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
                let min = match width {
                    1 => 24,
                    2 => 0x100,
                    4 => 0x1_0000,
                    _ => 0x1_0000_0000,
                };
                if arg < min {
                    return Err(self.err(
                        ErrorCode::NonCanonicalCbor,
                        start,
                        "integer or length not in its shortest form",
                    ));
                }
                arg
            }
            31 if (2..=5).contains(&major) => {
                return Err(self.err(
                    ErrorCode::NonCanonicalCbor,
                    start,
                    "indefinite-length items are not allowed",
                ));
            }
            _ => {
                return Err(self.err(
                    ErrorCode::MalformedCbor,
                    start,
                    "reserved additional information",
                ));
            }
        };
        Ok((major, arg, start))
    }

    fn length(&self, arg: u64, start: usize) -> Result<usize, Error> {
        // Every element takes at least one byte, so a length beyond the
        // remaining input is truncated input (and never allocated).
        let remaining = (self.bytes.len() - self.pos) as u64;
        if arg > remaining {
            return Err(self.err(ErrorCode::MalformedCbor, start, "truncated item"));
        }
        Ok(arg as usize)
    }

    fn item(&mut self, depth: usize) -> Result<Value, Error> {
        let (major, arg, start) = self.head()?;
        match major {
            0 => Ok(Value::Uint(arg)),
            1 => Err(self.err(
                ErrorCode::ForbiddenCborType,
                start,
                "negative integers are not used",
            )),
            2 => {
                let n = self.length(arg, start)?;
                Ok(Value::Bytes(self.take(n, start)?.to_vec()))
            }
            3 => {
                let n = self.length(arg, start)?;
                let raw = self.take(n, start)?.to_vec();
                let text = String::from_utf8(raw).map_err(|_| {
                    self.err(ErrorCode::MalformedCbor, start, "text string is not UTF-8")
                })?;
                Ok(Value::Text(text))
            }
            4 => {
                let n = self.nested(arg, start, depth)?;
                // Grow as items arrive: a declared length is not proof of
                // content, so it must not size an allocation.
                let mut items = Vec::with_capacity(n.min(16));
                for _ in 0..n {
                    items.push(self.item(depth + 1)?);
                }
                Ok(Value::Array(items))
            }
            5 => {
                let n = self.nested(arg, start, depth)?;
                let mut entries: Vec<(String, Value)> = Vec::with_capacity(n.min(16));
                for _ in 0..n {
                    let key_at = self.pos;
                    let key = match self.item(depth + 1)? {
                        Value::Text(t) => t,
                        _ => {
                            return Err(self.err(
                                ErrorCode::ForbiddenCborType,
                                key_at,
                                "map keys must be text strings",
                            ));
                        }
                    };
                    if let Some((last, _)) = entries.last() {
                        match key_order(last, &key) {
                            std::cmp::Ordering::Less => {}
                            std::cmp::Ordering::Equal => {
                                return Err(self.err(
                                    ErrorCode::DuplicateKey,
                                    key_at,
                                    format!("map key {key:?} appears twice"),
                                ));
                            }
                            std::cmp::Ordering::Greater => {
                                return Err(self.err(
                                    ErrorCode::NonCanonicalCbor,
                                    key_at,
                                    format!("map key {key:?} is out of canonical order"),
                                ));
                            }
                        }
                    }
                    let value = self.item(depth + 1)?;
                    entries.push((key, value));
                }
                Ok(Value::Map(Map(entries)))
            }
            _ => Err(self.err(ErrorCode::ForbiddenCborType, start, "tags are not allowed")),
        }
    }

    fn nested(&self, arg: u64, start: usize, depth: usize) -> Result<usize, Error> {
        if depth + 1 > MAX_DEPTH {
            return Err(self.err(
                ErrorCode::MalformedCbor,
                start,
                format!("nesting deeper than {MAX_DEPTH} levels"),
            ));
        }
        self.length(arg, start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(bytes: &[u8]) -> ErrorCode {
        decode(bytes).unwrap_err().code()
    }

    #[test]
    fn round_trips_every_type() {
        let mut m = Map::new();
        m.insert("zz", Value::Uint(1_000_000));
        m.insert(
            "a",
            Value::Array(vec![Value::Bytes(vec![1, 2]), Value::Text("é".into())]),
        );
        let v = Value::Map(m);
        let bytes = encode(&v);
        // "a" sorts before "zz": shorter keys first.
        assert_eq!(bytes[1], 0x61);
        let back = decode(&bytes).unwrap();
        let Value::Map(back) = back else { panic!() };
        assert_eq!(back.keys().collect::<Vec<_>>(), vec!["a", "zz"]);
    }

    #[test]
    fn each_rule_has_its_code() {
        assert_eq!(code(&[0x18, 0x05]), ErrorCode::NonCanonicalCbor);
        assert_eq!(code(&[0x5f, 0x41, 0x00, 0xff]), ErrorCode::NonCanonicalCbor);
        assert_eq!(
            code(&[0xa2, 0x61, 0x62, 0x00, 0x61, 0x61, 0x00]),
            ErrorCode::NonCanonicalCbor
        );
        assert_eq!(
            code(&[0xa2, 0x61, 0x61, 0x00, 0x61, 0x61, 0x00]),
            ErrorCode::DuplicateKey
        );
        assert_eq!(code(&[0xf9, 0x3c, 0x00]), ErrorCode::ForbiddenCborType);
        assert_eq!(code(&[0xc0, 0x00]), ErrorCode::ForbiddenCborType);
        assert_eq!(code(&[0x20]), ErrorCode::ForbiddenCborType);
        assert_eq!(code(&[0xf6]), ErrorCode::ForbiddenCborType);
        assert_eq!(code(&[0xa1, 0x01, 0x00]), ErrorCode::ForbiddenCborType);
        assert_eq!(code(&[0x00, 0x00]), ErrorCode::MalformedCbor);
        assert_eq!(code(&[0x42, 0x00]), ErrorCode::MalformedCbor);
        assert_eq!(code(&[0x61, 0xff]), ErrorCode::MalformedCbor);
        assert_eq!(code(&[0x1c]), ErrorCode::MalformedCbor);
        assert_eq!(code(&[0xfc]), ErrorCode::MalformedCbor);
        assert_eq!(code(&[0xff]), ErrorCode::MalformedCbor);
        assert_eq!(
            code(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            ErrorCode::MalformedCbor
        );
        assert_eq!(code(&[0x81; 20]), ErrorCode::MalformedCbor);
        assert_eq!(code(&[]), ErrorCode::MalformedCbor);
    }
}
