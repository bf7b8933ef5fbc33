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
