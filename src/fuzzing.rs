//! Fuzz target bodies, shared by `fuzz/` (cargo-fuzz) and the ordinary
//! tests that replay the seed corpus on stable Rust.
//!
//! Each function panics only when a property is broken.

use crate::{verify_attestation, verify_chain};

/// Envelope decode + verify. On success: the ID is blake3 of the input,
/// and re-encoding the decoded statement gives back the exact body bytes.
pub fn envelope(data: &[u8]) {
    if let Ok(att) = verify_attestation(data) {
        assert_eq!(att.envelope(), data);
        assert_eq!(att.id(), crate::AttestationId::of(data));
        assert_eq!(
            att.statement().to_body(),
            att.body(),
            "body does not round-trip"
        );
    }
}

/// Chain verify over framed envelopes (see [`frame`]). On success the
/// state's seq and head match the last statement.
pub fn chain(data: &[u8]) {
    let envelopes = unframe(data);
    if let Ok(state) = verify_chain(&envelopes) {
        let last = verify_attestation(envelopes[envelopes.len() - 1]).expect("verified in chain");
        assert_eq!(state.head, last.id());
        assert_eq!(state.seq as usize, envelopes.len() - 1);
    }
}

/// Canonical CBOR decode: whatever decodes re-encodes to the same bytes.
pub fn cbor(data: &[u8]) {
    if let Ok(v) = crate::attest::internal::decode(data) {
        assert_eq!(crate::attest::internal::encode(&v), data);
    }
}

/// Frames envelopes for the chain target: each is a 4-byte big-endian
/// length followed by its bytes.
pub fn frame<B: AsRef<[u8]>>(envelopes: &[B]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in envelopes {
        let e = e.as_ref();
        let n = u32::try_from(e.len()).unwrap_or(u32::MAX);
        out.extend(n.to_be_bytes());
        out.extend(&e[..n as usize]);
    }
    out
}

/// The inverse of [`frame`]; a short final frame takes what is left.
pub fn unframe(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let n = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let n = n.min(data.len() - 4);
        out.push(&data[4..4 + n]);
        data = &data[4 + n..];
    }
    out
}
