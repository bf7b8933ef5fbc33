//! Runs the fuzz targets' bodies over the committed seed corpus, and over
//! every single-byte mutation of a few seeds, on stable Rust.

#![allow(clippy::unwrap_used)] // test code: a panic is a failure report

use std::fs;
use std::path::Path;

use pulse_ledger::fuzzing;

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new("fuzz/corpus").join(target);
    let mut out: Vec<Vec<u8>> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| fs::read(e.unwrap().path()).unwrap())
        .collect();
    out.sort();
    assert!(!out.is_empty(), "empty corpus {}", dir.display());
    out
}

#[test]
fn envelope_target_over_corpus() {
    for seed in seeds("envelope") {
        fuzzing::envelope(&seed);
        fuzzing::cbor(&seed);
    }
}

#[test]
fn chain_target_over_corpus() {
    for seed in seeds("chain") {
        fuzzing::chain(&seed);
    }
}

#[test]
fn envelope_target_over_byte_mutations() {
    let seeds = seeds("envelope");
    for seed in seeds.iter().filter(|s| s.len() < 2048).take(8) {
        for i in 0..seed.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut m = seed.clone();
                m[i] ^= flip;
                fuzzing::envelope(&m);
                fuzzing::cbor(&m);
            }
            fuzzing::envelope(&seed[..i]);
        }
    }
}

/// The fixed log key the fuzz seeds are signed with.
fn seed_log_key() -> pulse_ledger::Did {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    pulse_ledger::Did::from_verifying_key(&key.verifying_key()).unwrap()
}

fn hash(b: &[u8]) -> [u8; 32] {
    b.try_into().unwrap()
}

#[test]
fn proof_checkpoint_and_file_targets_over_corpus_and_mutations() {
    use pulse_ledger::ledger::{verify_checkpoint, verify_consistency, verify_inclusion};
    let key = seed_log_key();
    // The seeds are accepted inputs, so the fuzzer starts on the paths
    // that verify.
    for seed in seeds("proof") {
        let n = |at: usize| u64::from_be_bytes(seed[at..at + 8].try_into().unwrap());
        let path: Vec<[u8; 32]> = seed[80..].chunks(32).map(hash).collect();
        let (a, b) = (hash(&seed[16..48]), hash(&seed[48..80]));
        assert!(
            verify_inclusion(&a, n(0), n(8), &path, &b).is_ok()
                || verify_consistency(n(0), n(8), &a, &b, &path).is_ok()
        );
    }
    for seed in seeds("checkpoint") {
        verify_checkpoint(std::str::from_utf8(&seed).unwrap(), &key).unwrap();
    }
    let files = seeds("cli_files");
    let bundle = files.iter().find(|f| f[0] != b'#').unwrap();
    pulse_ledger::audit::verify_bundle(bundle, &key).unwrap();
    // Then every seed and its single-byte mutations and prefixes.
    for (target, run) in [
        ("proof", fuzzing::proof as fn(&[u8])),
        ("checkpoint", fuzzing::checkpoint),
        ("cli_files", fuzzing::cli_files),
    ] {
        for seed in seeds(target) {
            run(&seed);
            for i in (0..seed.len()).step_by(if seed.len() > 600 { 7 } else { 1 }) {
                for flip in [0x01u8, 0x80] {
                    let mut m = seed.clone();
                    m[i] ^= flip;
                    run(&m);
                }
                run(&seed[..i]);
            }
        }
    }
}
