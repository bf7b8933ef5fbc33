//! One verdict: the batched audit verifier accepts exactly the envelopes
//! `verify_attestation` accepts, on any number of threads, for signatures
//! crafted with small-order components in R, in the key, or in both
//! (spec/audit.md, "Signature batching"; issue 16).

#![allow(clippy::unwrap_used, missing_docs)]

use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use pulse_ledger::audit::{verify_all, verify_parallel};
use pulse_ledger::internal::{Map, Value, encode};
use pulse_ledger::{
    Action, Did, Family, HandlerSchema, Schema, Statement, signing_message, verify_attestation,
};
use sha2::{Digest, Sha512};

/// Deterministic randomness for the crafted signatures.
struct Rng(blake3::OutputReader);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(
            blake3::Hasher::new_derive_key("pulse-ledger batch verdict tests")
                .update(&seed.to_le_bytes())
                .finalize_xof(),
        )
    }

    fn scalar(&mut self) -> Scalar {
        let mut wide = [0u8; 64];
        self.0.fill(&mut wide);
        Scalar::from_bytes_mod_order_wide(&wide)
    }

    fn below(&mut self, n: u8) -> u8 {
        let mut b = [0u8; 1];
        self.0.fill(&mut b);
        b[0] % n
    }
}

/// A signing key whose public point is [a]B + T, T = `EIGHT_TORSION[torsion]`
/// (torsion 0: an ordinary key; 4: order 2; 2 and 6: order 4; odd: order 8).
struct Key {
    a: Scalar,
    point: EdwardsPoint,
    did: Did,
}

impl Key {
    fn new(rng: &mut Rng, torsion: usize) -> Key {
        let a = rng.scalar();
        let point = ED25519_BASEPOINT_POINT * a + EIGHT_TORSION[torsion];
        let did = Did::from_public_key(point.compress().to_bytes()).unwrap();
        Key { a, point, did }
    }
}

/// What the crafted signature is.
#[derive(Clone, Copy, Debug)]
enum Craft {
    /// R = [r]B, S = r + k·a: valid for an ordinary key; for a key with a
    /// small-order component, valid only when [k]T(A) is the identity.
    Honest,
    /// R = [r]B + T for the given small-order point T: never valid for an
    /// ordinary key.
    TaintedR(usize),
    /// R's small-order component cancels the key's: T(R) = −[k]T(A), so
    /// the cofactorless equation holds and strict verification accepts.
    Cancelling,
    /// S + ℓ instead of S.
    SPlusL,
    /// One bit of S flipped.
    FlippedS,
}

fn small_multiple_of(t: &EdwardsPoint, k: &Scalar) -> EdwardsPoint {
    // [k]T for T of order dividing 8 depends on k mod 8 only.
    *t * Scalar::from(u64::from(k.as_bytes()[0] & 7))
}

fn envelope(rng: &mut Rng, key: &Key, plugin: &Did, n: usize, craft: Craft) -> Vec<u8> {
    let st = Statement {
        family: Family::Handler,
        subject: key.did.clone(),
        signer: key.did.clone(),
        seq: 0,
        prev: None,
        issued_at: 1_000 + n as u64,
        action: Action::Register(Schema::Handler(HandlerSchema::new(
            format!("h{n}"),
            "1.0.0",
            plugin.clone(),
        ))),
    };
    let body = st.to_body();
    let msg = signing_message(&body);
    let key_torsion = key.point - ED25519_BASEPOINT_POINT * key.a;
    let (r_point, r, k) = loop {
        let r = rng.scalar();
        let t = match craft {
            Craft::TaintedR(j) => EIGHT_TORSION[j],
            Craft::Cancelling => EIGHT_TORSION[usize::from(rng.below(8))],
            _ => EIGHT_TORSION[0],
        };
        let r_point = ED25519_BASEPOINT_POINT * r + t;
        let k = challenge(&r_point, key, &msg);
        // Grind the nonce until R's component cancels the key's.
        if matches!(craft, Craft::Cancelling)
            && t + small_multiple_of(&key_torsion, &k) != EIGHT_TORSION[0]
        {
            continue;
        }
        break (r_point, r, k);
    };
    let s = r + k * key.a;
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(r_point.compress().as_bytes());
    sig[32..].copy_from_slice(s.as_bytes());
    match craft {
        Craft::SPlusL => add_group_order(&mut sig[32..]),
        Craft::FlippedS => sig[40] ^= 0x02,
        _ => {}
    }
    let mut m = Map::new();
    m.insert("body", Value::Bytes(body));
    m.insert("sigs", Value::Array(vec![Value::Bytes(sig.to_vec())]));
    encode(&Value::Map(m))
}

fn challenge(r: &EdwardsPoint, key: &Key, msg: &[u8]) -> Scalar {
    let hash: [u8; 64] = Sha512::new()
        .chain_update(r.compress().as_bytes())
        .chain_update(key.point.compress().as_bytes())
        .chain_update(msg)
        .finalize()
        .into();
    Scalar::from_bytes_mod_order_wide(&hash)
}

/// s + ℓ, little-endian (s < ℓ, so it fits in 256 bits).
fn add_group_order(s: &mut [u8]) {
    let l = (-Scalar::ONE).to_bytes(); // ℓ − 1
    let mut carry = 1u16; // + 1 makes it ℓ
    for (b, lb) in s.iter_mut().zip(l) {
        let v = u16::from(*b) + u16::from(lb) + carry;
        *b = v as u8;
        carry = v >> 8;
    }
}

fn plugin() -> Did {
    Did::from_verifying_key(&SigningKey::from_bytes(&[9; 32]).verifying_key()).unwrap()
}

fn verdicts(
    got: Vec<Result<pulse_ledger::Attestation, pulse_ledger::Error>>,
) -> Vec<Result<String, String>> {
    got.into_iter()
        .map(|r| r.map(|a| a.id().to_string()).map_err(|e| e.to_string()))
        .collect()
}

/// Checks every way of batching `envs` against the one-at-a-time verdicts;
/// returns how many envelopes are valid.
fn assert_one_verdict(envs: &[Vec<u8>]) -> usize {
    let expected: Vec<Result<String, String>> = envs
        .iter()
        .map(|e| {
            verify_attestation(e)
                .map(|a| a.id().to_string())
                .map_err(|e| e.to_string())
        })
        .collect();
    assert_eq!(verdicts(verify_all(envs)), expected, "one thread");
    for threads in [1, 2, 3, 8] {
        assert_eq!(
            verdicts(verify_parallel(envs, threads)),
            expected,
            "{threads} threads"
        );
    }
    expected.iter().filter(|r| r.is_ok()).count()
}

/// Every order of small-order component (2, 4 and 8), in R, in the key and
/// in both, spread among honest entries, over many seeds: always the
/// per-entry verdict, on 1, 2, 3 and 8 threads.
#[test]
fn small_order_components_get_the_strict_verdict_on_any_thread_count() {
    let plugin = plugin();
    let mut tainted_valid = 0;
    let mut tainted_invalid = 0;
    for seed in 0..6u64 {
        let mut rng = Rng::new(seed);
        let mut envs = Vec::new();
        let mut crafted = Vec::new();
        for n in 0..300usize {
            let (torsion, craft) = match n % 25 {
                3 => (0, Craft::TaintedR(1 + (n / 25 + seed as usize) % 7)),
                7 => (1 + (n / 25) % 7, Craft::Honest),
                11 => (1 + (n / 25 + 3) % 7, Craft::Cancelling),
                15 => (1 + (n / 25 + 1) % 7, Craft::TaintedR(1 + (n / 25) % 7)),
                19 => (4, Craft::Cancelling),
                _ => (0, Craft::Honest),
            };
            let key = Key::new(&mut rng, torsion);
            envs.push(envelope(&mut rng, &key, &plugin, n, craft));
            crafted.push(torsion != 0 || !matches!(craft, Craft::Honest));
        }
        assert_one_verdict(&envs);
        for (env, crafted) in envs.iter().zip(crafted) {
            if crafted {
                match verify_attestation(env) {
                    Ok(_) => tainted_valid += 1,
                    Err(_) => tainted_invalid += 1,
                }
            }
        }
    }
    // Both kinds are present: strictly valid signatures with small-order
    // components (cancelling ones) and invalid ones.
    assert!(tainted_valid >= 6 * 24, "{tainted_valid}");
    assert!(tainted_invalid >= 6 * 12, "{tainted_invalid}");
}

fn craft_strategy() -> impl Strategy<Value = (usize, Craft)> {
    prop_oneof![
        100 => Just((0, Craft::Honest)),
        1 => (1usize..8).prop_map(|j| (0, Craft::TaintedR(j))),
        1 => (1usize..8).prop_map(|t| (t, Craft::Honest)),
        1 => (1usize..8).prop_map(|t| (t, Craft::Cancelling)),
        1 => ((1usize..8), (1usize..8)).prop_map(|(t, j)| (t, Craft::TaintedR(j))),
        1 => (0usize..8).prop_map(|t| (t, Craft::SPlusL)),
        1 => (0usize..8).prop_map(|t| (t, Craft::FlippedS)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Random mixes of valid and crafted signatures: the batched verdicts
    /// are the one-at-a-time verdicts.
    #[test]
    fn batched_and_single_verdicts_agree(
        seed in any::<u64>(),
        crafts in proptest::collection::vec(craft_strategy(), 140..300),
    ) {
        let plugin = plugin();
        let mut rng = Rng::new(seed);
        let envs: Vec<Vec<u8>> = crafts
            .iter()
            .enumerate()
            .map(|(n, (torsion, craft))| {
                let key = Key::new(&mut rng, *torsion);
                envelope(&mut rng, &key, &plugin, n, *craft)
            })
            .collect();
        assert_one_verdict(&envs);
    }
}
