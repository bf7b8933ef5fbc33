//! Attestations verified many at a time: every check of
//! [`verify_attestation`](crate::verify_attestation), with the signatures
//! checked in ed25519 batches, on several threads.
//!
//! Batch verification checks one random linear combination of the
//! signature equations, so it does not apply the per-signature strict
//! checks itself. Each signature is therefore first screened: its key is a
//! canonical point that is not of small order (every [`Did`](crate::Did)
//! is) and its R is a canonical encoding of a point that is not of small
//! order. A signature that fails the screen, and every signature of a batch
//! that fails, is checked alone with the strict check, so every rejection
//! and its error are the ones `verify_attestation` gives.
//!
//! One difference remains (spec/audit.md, "Security considerations"): a
//! signature whose equation is off by a point of small order only can
//! pass a batch that the strict check would refuse. Only the holder of the
//! key can make one, and the log only admits strictly valid signatures.

use std::sync::OnceLock;

use ed25519_dalek::Signature;

use crate::attest::{SignatureCheck, check_except_signatures};
use crate::{Attestation, Error};

/// Signatures per batch: large enough to amortise the multiscalar
/// multiplication, small enough that a bad one costs little to find.
const BATCH: usize = 64;

/// The canonical encodings of the eight points of small order.
fn small_order_encodings() -> &'static [[u8; 32]; 8] {
    static ENCODINGS: OnceLock<[[u8; 32]; 8]> = OnceLock::new();
    ENCODINGS
        .get_or_init(|| curve25519_dalek::constants::EIGHT_TORSION.map(|p| p.compress().to_bytes()))
}

/// Whether R may go into a batch: canonical y, not a small-order point
/// (and not the sign-flipped spelling of one with x = 0).
fn r_is_batchable(sig: &[u8; 64]) -> bool {
    let mut r = [0u8; 32];
    r.copy_from_slice(&sig[..32]);
    let top_is_max = r[31] & 0x7f == 0x7f && r[1..31].iter().all(|&b| b == 0xff);
    if top_is_max && r[0] >= 0xed {
        return false;
    }
    let mut unsigned = r;
    unsigned[31] &= 0x7f;
    !small_order_encodings()
        .iter()
        .any(|e| *e == r || *e == unsigned)
}

/// Checks `checks` strictly one by one; the first failure's error.
fn strict(checks: &[SignatureCheck]) -> Result<(), Error> {
    for (i, c) in checks.iter().enumerate() {
        c.did
            .verifying_key()
            .verify_strict(&c.message, &Signature::from_bytes(&c.signature))
            .map_err(|_| c.failure(i))?;
    }
    Ok(())
}

/// Verifies `envelopes` on this thread; one verdict per envelope, in order.
pub fn verify_all(envelopes: &[Vec<u8>]) -> Vec<Result<Attestation, Error>> {
    let mut out: Vec<Result<Attestation, Error>> = Vec::with_capacity(envelopes.len());
    // Envelopes whose signatures wait in the current batch.
    let mut pending: Vec<(usize, Vec<SignatureCheck>)> = Vec::new();
    let mut queued = 0;
    for (i, bytes) in envelopes.iter().enumerate() {
        match check_except_signatures(bytes) {
            Err(e) => out.push(Err(e)),
            Ok((att, checks)) => {
                if checks.iter().all(|c| r_is_batchable(&c.signature)) {
                    queued += checks.len();
                    pending.push((i, checks));
                    out.push(Ok(att));
                } else {
                    out.push(strict(&checks).map(|()| att));
                }
            }
        }
        if queued >= BATCH {
            settle(&mut out, &mut pending);
            queued = 0;
        }
    }
    settle(&mut out, &mut pending);
    out
}

/// Checks the pending signatures as one batch; if it fails, each envelope
/// strictly, marking the ones that fail.
fn settle(out: &mut [Result<Attestation, Error>], pending: &mut Vec<(usize, Vec<SignatureCheck>)>) {
    if pending.is_empty() {
        return;
    }
    let all: Vec<&SignatureCheck> = pending.iter().flat_map(|(_, c)| c).collect();
    let messages: Vec<&[u8]> = all.iter().map(|c| c.message.as_slice()).collect();
    let signatures: Vec<Signature> = all
        .iter()
        .map(|c| Signature::from_bytes(&c.signature))
        .collect();
    let keys: Vec<ed25519_dalek::VerifyingKey> =
        all.iter().map(|c| *c.did.verifying_key()).collect();
    if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_err() {
        for (i, checks) in pending.iter() {
            if let Err(e) = strict(checks) {
                out[*i] = Err(e);
            }
        }
    }
    pending.clear();
}

/// [`verify_all`] split over `threads` threads (at least 1).
pub fn verify_parallel(envelopes: &[Vec<u8>], threads: usize) -> Vec<Result<Attestation, Error>> {
    let threads = threads.max(1);
    if threads == 1 || envelopes.len() < 2 * BATCH {
        return verify_all(envelopes);
    }
    let chunk = envelopes.len().div_ceil(threads);
    std::thread::scope(|s| {
        let parts: Vec<_> = envelopes
            .chunks(chunk)
            .map(|part| s.spawn(move || verify_all(part)))
            .collect();
        parts
            .into_iter()
            .flat_map(|h| {
                // A verifier thread cannot panic on input: every error is a
                // value. If one did, re-raise it here.
                h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
            .collect()
    })
}

/// How many threads to verify on: every core the process may use.
pub fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}
