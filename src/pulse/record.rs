//! How the job store's records are written: a version byte, then the
//! record in packed CBOR (struct fields and enum variants by position).
//!
//! # The rule for changing a record type
//!
//! The record types are [`Job`](super::Job) and everything it holds, the
//! store's own `Stored` and [`LogLine`](super::LogLine),
//! [`Budget`](super::Budget), and [`Schedule`](super::Schedule) (its
//! golden file is `tests/golden/schedule-records-v2.txt`). Packed CBOR names fields and enum variants by
//! their position, so stored bytes depend on the order of declaration:
//!
//! - Never reorder, remove or rename-by-reorder a field or a variant.
//! - A new optional field goes at the end of its struct with
//!   `#[serde(default)]`; a new variant goes at the end of its enum. Old
//!   records then still read, and the golden test still passes.
//! - Any other change bumps [`RECORD_VERSION`] and teaches [`decode`] to
//!   read the old version; the old golden file stays and must still read.
//!
//! `tests/golden/job-records-v2.txt` holds the bytes of one record of
//! every state and variant, written by this version; the store's tests
//! check that today's code writes exactly those bytes and reads them back
//! (regenerate only on purpose, with `PULSE_LEDGER_BLESS=1`). The golden
//! files of older versions are never regenerated: they must still read.
//!
//! # Versions
//!
//! - 0: no version byte (the first byte is a CBOR map or array header);
//!   otherwise as 1.
//! - 1: byte fields (payload, result, progress checkpoint) as arrays of
//!   integers.
//! - 2: byte fields as CBOR byte strings (half the size, and copied rather
//!   than encoded byte by byte). The reader takes either form of a byte
//!   field, so versions 0 to 2 share one decoder.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::attest::cbor::{record_from_slice, record_to_vec};

/// The version byte written before every record.
pub(crate) const RECORD_VERSION: u8 = 2;

/// A record's stored bytes: [`RECORD_VERSION`], then packed CBOR.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let body = record_to_vec(value);
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(RECORD_VERSION);
    out.extend_from_slice(&body);
    out
}

/// Reads a record written by [`encode`], or by versions before records
/// carried a version byte (version 0: the same CBOR, unprefixed; its first
/// byte is a CBOR map or array header, never 0x00..=0x17).
///
/// # Errors
/// A version this build does not know, or CBOR that does not fit `T`.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.first() {
        Some(1..=RECORD_VERSION) => record_from_slice(&bytes[1..]),
        Some(0x80..=0xbf) => record_from_slice(bytes),
        Some(v) => Err(format!(
            "record version {v} is not known to this build (it reads 0 to {RECORD_VERSION}); \
             was the data dir written by a newer pulse-ledger?"
        )),
        None => Err("empty record".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_and_unversioned_records_read_alike() {
        let budget = super::super::Budget {
            per_hour: Some(7),
            per_day: None,
        };
        let v1 = encode(&budget);
        assert_eq!(v1[0], RECORD_VERSION);
        let v0 = record_to_vec(&budget);
        assert_eq!(decode::<super::super::Budget>(&v1), Ok(budget));
        assert_eq!(decode::<super::super::Budget>(&v0), Ok(budget));
    }

    #[test]
    fn unknown_versions_are_refused_by_name() {
        let mut bytes = encode(&1u8);
        bytes[0] = 9;
        let err = decode::<u8>(&bytes).unwrap_err();
        assert!(err.contains("record version 9"), "{err}");
        assert!(decode::<u8>(&[]).is_err());
    }
}
