//! Attestations verified many at a time: every check of
//! [`verify_attestation`](crate::verify_attestation), with the signatures
//! checked in batches, on several threads, and exactly its verdicts.
//!
//! Strict verification accepts a signature (R, S) by key A on message M
//! exactly when S < ℓ, R is canonically encoded, neither R nor A has small
//! order, and D = [S]B − [k]A − R is the identity (k = SHA-512(R ‖ A ‖ M)
//! mod ℓ). A batch checks one random combination Σ zᵢDᵢ = 0 instead, which
//! can only stand in for "every Dᵢ = 0" when no Dᵢ has a component of small
//! order: random coefficients cancel such components half the time or
//! more. So each signature is **screened**, and a batch is only trusted
//! when every Dᵢ in it lies in the prime-order subgroup:
//!
//! - S < ℓ, and R is canonical and not one of the small-order encodings
//!   (the other strict rules that a batch would not apply);
//! - Q = R + [k mod 8]A is torsion-free. Writing T(P) for the small-order
//!   component of P, T(Dᵢ) = −T(R) − [k]T(A) = −T(Q), because [k]T(A) =
//!   [k mod 8]T(A); so T(Dᵢ) = 0 exactly when Q is torsion-free. This
//!   covers R and A with small-order components of any order, together or
//!   apart.
//!
//! A signature that fails the first screen is checked alone with the
//! strict check. The torsion screen is applied to all of a verifier's
//! points together: [ℓ]S is the identity for 128 sums S of independent,
//! uniformly random subsets of the Qs (each costs about 32 point
//! additions per signature, instead of one multiplication by ℓ each). If
//! some Q has a small-order component, a random subset's sum has none with
//! probability at most 1/2 (pair each subset with the one that differs in
//! that Q alone), so all 128 tests pass with probability at most 2⁻¹²⁸. If
//! any test fails, every batched envelope of that verifier is checked
//! strictly.
//!
//! Strict acceptance implies both screens pass (Dᵢ = 0) and the batch
//! holds. Conversely, screened signatures whose batch holds have some
//! Dᵢ ≠ 0 with probability at most 2⁻¹²⁸ for the batch and 2⁻¹²⁸ for the
//! torsion tests, over coefficients and subsets drawn from the operating
//! system's randomness for every verifier, so a log cannot choose entries
//! to cancel them. A batch that fails has every one of its envelopes
//! checked strictly. The verdicts are therefore those of
//! `verify_attestation`, whatever the thread count or batching.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{Identity, IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::Signature;
use sha2::{Digest, Sha512};
use std::sync::OnceLock;

use crate::attest::{SignatureCheck, check_except_signatures};
use crate::{Attestation, Error};

/// Signatures per batch: large enough to amortise the multiscalar
/// multiplication, small enough that a bad one costs little to find.
const BATCH: usize = 128;

/// Random subset sums in the torsion screen: each lets a point with a
/// small-order component through with probability at most 1/2.
const SUBSET_TESTS: usize = 128;

/// Points per table of subset sums (2^6 entries): about the fewest point
/// additions per point for 128 tests.
const SUBSET_BLOCK: usize = 6;

/// The canonical encodings of the eight points of small order.
fn small_order_encodings() -> &'static [[u8; 32]; 8] {
    static ENCODINGS: OnceLock<[[u8; 32]; 8]> = OnceLock::new();
    ENCODINGS
        .get_or_init(|| curve25519_dalek::constants::EIGHT_TORSION.map(|p| p.compress().to_bytes()))
}

/// Whether R's bytes are a canonical y (below p) and not a small-order
/// point (nor the sign-flipped spelling of one with x = 0).
fn r_encoding_is_batchable(r: &[u8; 32]) -> bool {
    let top_is_max = r[31] & 0x7f == 0x7f && r[1..31].iter().all(|&b| b == 0xff);
    if top_is_max && r[0] >= 0xed {
        return false;
    }
    let mut unsigned = *r;
    unsigned[31] &= 0x7f;
    !small_order_encodings()
        .iter()
        .any(|e| e == r || *e == unsigned)
}

/// Whether `p` lies in the prime-order subgroup: [ℓ]P is the identity.
/// Computed as [ℓ − 1]P + P (ℓ itself is not a scalar), in variable time:
/// every point here is public.
fn is_torsion_free(p: &EdwardsPoint) -> bool {
    (EdwardsPoint::vartime_multiscalar_mul([-Scalar::ONE], [*p]) + p).is_identity()
}

/// Whether every point is torsion-free, except with probability at most
/// 2⁻¹²⁸ when one is not (module docs): [ℓ]S = O for random subset sums S.
/// Few points are tested one by one, which is cheaper.
fn all_torsion_free(points: &[EdwardsPoint], random: &mut Randomness) -> bool {
    if points.len() <= SUBSET_TESTS {
        return points.iter().all(is_torsion_free);
    }
    let mut sums = [EdwardsPoint::identity(); SUBSET_TESTS];
    let mut table = [EdwardsPoint::identity(); 1 << SUBSET_BLOCK];
    let mut masks = [0u8; SUBSET_TESTS];
    for block in points.chunks(SUBSET_BLOCK) {
        let size = 1usize << block.len();
        for mask in 1..size {
            let lowest = mask.trailing_zeros() as usize;
            table[mask] = table[mask & (mask - 1)] + block[lowest];
        }
        random.fill(&mut masks);
        for (sum, mask) in sums.iter_mut().zip(masks) {
            let mask = usize::from(mask) & (size - 1);
            if mask != 0 {
                *sum += table[mask];
            }
        }
    }
    sums.iter().all(is_torsion_free)
}

/// [m]P for m < 8, by doubling and adding.
fn small_multiple(p: &EdwardsPoint, m: u8) -> EdwardsPoint {
    let mut acc = EdwardsPoint::identity();
    let mut power = *p;
    for bit in 0..3 {
        if (m >> bit) & 1 == 1 {
            acc += power;
        }
        power = power + power;
    }
    acc
}

/// A signature that passed the first screen: its equation
/// D = [s]B − [k]A − R, and Q = R + [k mod 8]A, whose small-order
/// component is D's (negated).
struct Equation {
    r: EdwardsPoint,
    a: EdwardsPoint,
    s: Scalar,
    k: Scalar,
    q: EdwardsPoint,
}

impl Equation {
    /// The first screen (module docs); `None` sends the signature to the
    /// strict check.
    fn screen(c: &SignatureCheck) -> Option<Equation> {
        let mut r_bytes = [0u8; 32];
        r_bytes.copy_from_slice(&c.signature[..32]);
        let mut s_bytes = [0u8; 32];
        s_bytes.copy_from_slice(&c.signature[32..]);
        if !r_encoding_is_batchable(&r_bytes) {
            return None;
        }
        let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes))?;
        let r = CompressedEdwardsY(r_bytes).decompress()?;
        let key = c.did.verifying_key();
        let a = key.to_edwards();
        let hash: [u8; 64] = Sha512::new()
            .chain_update(r_bytes)
            .chain_update(key.as_bytes())
            .chain_update(c.message.as_slice())
            .finalize()
            .into();
        let k = Scalar::from_bytes_mod_order_wide(&hash);
        let q = r + small_multiple(&a, k.as_bytes()[0] & 7);
        Some(Equation { r, a, s, k, q })
    }
}

/// Batch coefficients and subsets, from a key the operating system draws
/// afresh for each verifier, so no log can predict them.
struct Randomness(blake3::OutputReader);

impl Randomness {
    /// `None` when the system has no randomness: then nothing is batched.
    fn new() -> Option<Randomness> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).ok()?;
        Some(Randomness(blake3::Hasher::new_keyed(&seed).finalize_xof()))
    }

    fn fill(&mut self, bytes: &mut [u8]) {
        self.0.fill(bytes);
    }

    /// A batch coefficient: 128 random bits.
    fn coefficient(&mut self) -> Scalar {
        let mut z = [0u8; 16];
        self.fill(&mut z);
        Scalar::from(u128::from_le_bytes(z))
    }
}

/// Whether Σ zᵢ([sᵢ]B − [kᵢ]Aᵢ − Rᵢ) is the identity for fresh zᵢ.
fn batch_holds(equations: &[Equation], random: &mut Randomness) -> bool {
    let mut scalars = Vec::with_capacity(2 * equations.len() + 1);
    let mut points = Vec::with_capacity(2 * equations.len() + 1);
    scalars.push(Scalar::ZERO);
    points.push(ED25519_BASEPOINT_POINT);
    let mut base = Scalar::ZERO;
    for e in equations {
        let z = random.coefficient();
        base += z * e.s;
        scalars.push(z);
        points.push(e.r);
        scalars.push(z * e.k);
        points.push(e.a);
    }
    scalars[0] = -base;
    EdwardsPoint::vartime_multiscalar_mul(scalars, points).is_identity()
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

/// Strictly re-checks the envelopes `at` that are still valid in `out`.
fn recheck(out: &mut [Result<Attestation, Error>], at: &[(usize, Vec<SignatureCheck>)]) {
    for (i, checks) in at {
        if out[*i].is_ok() {
            if let Err(e) = strict(checks) {
                out[*i] = Err(e);
            }
        }
    }
}

/// One verifier's batched envelopes: provisionally valid until their batch
/// holds and the torsion screen of all of them passes.
struct Batcher {
    random: Randomness,
    /// Every batched envelope so far, for the strict fallback.
    envelopes: Vec<(usize, Vec<SignatureCheck>)>,
    /// Where the current batch starts in `envelopes`.
    batch_start: usize,
    equations: Vec<Equation>,
    torsion: Vec<EdwardsPoint>,
}

impl Batcher {
    fn add(
        &mut self,
        out: &mut [Result<Attestation, Error>],
        i: usize,
        checks: Vec<SignatureCheck>,
        equations: Vec<Equation>,
    ) {
        for e in equations {
            self.torsion.push(e.q);
            self.equations.push(e);
        }
        self.envelopes.push((i, checks));
        if self.equations.len() >= BATCH {
            self.settle(out);
        }
    }

    /// Checks the current batch; if it fails, each of its envelopes
    /// strictly.
    fn settle(&mut self, out: &mut [Result<Attestation, Error>]) {
        if !self.equations.is_empty() && !batch_holds(&self.equations, &mut self.random) {
            recheck(out, &self.envelopes[self.batch_start..]);
        }
        self.equations.clear();
        self.batch_start = self.envelopes.len();
    }

    /// Settles the last batch and applies the torsion screen to all.
    fn finish(mut self, out: &mut [Result<Attestation, Error>]) {
        self.settle(out);
        if !all_torsion_free(&self.torsion, &mut self.random) {
            recheck(out, &self.envelopes);
        }
    }
}

/// Verifies `envelopes` on this thread; one verdict per envelope, in order.
pub fn verify_all(envelopes: &[Vec<u8>]) -> Vec<Result<Attestation, Error>> {
    let mut out: Vec<Result<Attestation, Error>> = Vec::with_capacity(envelopes.len());
    let mut batcher = Randomness::new().map(|random| Batcher {
        random,
        envelopes: Vec::new(),
        batch_start: 0,
        equations: Vec::with_capacity(BATCH + 2),
        torsion: Vec::new(),
    });
    for (i, bytes) in envelopes.iter().enumerate() {
        let (att, checks) = match check_except_signatures(bytes) {
            Err(e) => {
                out.push(Err(e));
                continue;
            }
            Ok(parts) => parts,
        };
        let screened: Option<Vec<Equation>> = match batcher {
            Some(_) => checks.iter().map(Equation::screen).collect(),
            None => None,
        };
        match (screened, batcher.as_mut()) {
            (Some(equations), Some(b)) => {
                out.push(Ok(att));
                b.add(&mut out, i, checks, equations);
            }
            _ => out.push(strict(&checks).map(|()| att)),
        }
    }
    if let Some(b) = batcher {
        b.finish(&mut out);
    }
    out
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use curve25519_dalek::constants::EIGHT_TORSION;

    fn point(i: u64) -> EdwardsPoint {
        ED25519_BASEPOINT_POINT * Scalar::from(1_000_003 * i + 7)
    }

    #[test]
    fn torsion_free_is_multiplication_by_the_group_order() {
        for i in 0..8u64 {
            for t in EIGHT_TORSION {
                let p = point(i) + t;
                assert_eq!(is_torsion_free(&p), p.is_torsion_free());
            }
        }
    }

    #[test]
    fn small_multiples() {
        let p = point(3) + EIGHT_TORSION[1];
        for m in 0..8u8 {
            assert_eq!(small_multiple(&p, m), p * Scalar::from(m));
        }
    }

    /// One tainted point among many, of every order and at every place in
    /// a block, fails the subset-sum screen; clean points pass it.
    #[test]
    fn the_subset_sum_screen_finds_one_small_order_component() {
        let mut random = Randomness::new().unwrap();
        for n in [1usize, 128, 129, 300] {
            let clean: Vec<EdwardsPoint> = (0..n as u64).map(point).collect();
            assert!(all_torsion_free(&clean, &mut random), "{n}");
            for (j, t) in EIGHT_TORSION.iter().enumerate().skip(1) {
                for at in [0, n / 2, n - 1] {
                    let mut tainted = clean.clone();
                    tainted[at] += t;
                    assert!(!all_torsion_free(&tainted, &mut random), "{n} {j} {at}");
                }
            }
            // Components that cancel in the sum of all points (one subset
            // of many) are still found.
            if n > 1 {
                let mut pair = clean.clone();
                pair[0] += EIGHT_TORSION[4];
                pair[n - 1] += EIGHT_TORSION[4];
                assert!(!all_torsion_free(&pair, &mut random), "{n} pair");
            }
        }
    }
}
