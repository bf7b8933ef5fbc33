//! Replays every vector in spec/vectors against the library, checks that the
//! committed files are exactly what the generator produces, and that every
//! error code in the spec has a vector.

#![allow(clippy::unwrap_used)] // test code: a panic is a failure report

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use pulse_ledger::{Did, ErrorCode, verify_attestation, verify_chain};
use serde_json::Value;

fn committed() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in fs::read_dir("spec/vectors").expect("spec/vectors exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = fs::read_to_string(&path).unwrap();
            let json: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.push((
                path.file_name().unwrap().to_string_lossy().into_owned(),
                json,
            ));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

/// Runs one vector; returns the error code it expects, if any.
fn replay(name: &str, v: &Value) -> Option<ErrorCode> {
    if v["type"] == "ledger" {
        replay_ledger(name, v);
        return None;
    }
    if v["type"] == "did-token" {
        replay_did_token(name, v);
        return None;
    }
    if v["type"] == "session-proof" {
        replay_session_proof(name, v);
        return None;
    }
    let expect = &v["expect"];
    let ok = expect["ok"].as_bool().expect("expect.ok");
    let want_code = expect["code"]
        .as_str()
        .map(|c| ErrorCode::from_name(c).unwrap_or_else(|| panic!("{name}: unknown code {c}")));
    match v["type"].as_str().unwrap() {
        "did" => match Did::parse(v["input"].as_str().unwrap()) {
            Ok(did) => {
                assert!(ok, "{name}: parsed but expected {want_code:?}");
                assert_eq!(
                    hex::encode(did.public_key()),
                    expect["public_key"].as_str().unwrap(),
                    "{name}"
                );
                assert_eq!(
                    did.to_string(),
                    v["input"].as_str().unwrap(),
                    "{name}: not canonical"
                );
            }
            Err(e) => assert_eq!(Some(e.code()), want_code, "{name}: {e}"),
        },
        "attestation" => match verify_attestation(&unhex(&v["input"])) {
            Ok(att) => {
                assert!(ok, "{name}: verified but expected {want_code:?}");
                assert_eq!(
                    att.id().to_string(),
                    expect["id"].as_str().unwrap(),
                    "{name}"
                );
                assert_eq!(
                    hex::encode(att.body()),
                    expect["body"].as_str().unwrap(),
                    "{name}"
                );
                assert_eq!(att.statement().to_json(), expect["statement"], "{name}");
            }
            Err(e) => assert_eq!(Some(e.code()), want_code, "{name}: {e}"),
        },
        "chain" => {
            let envs: Vec<Vec<u8>> = v["input"].as_array().unwrap().iter().map(unhex).collect();
            match verify_chain(&envs) {
                Ok(state) => {
                    assert!(ok, "{name}: verified but expected {want_code:?}");
                    assert_eq!(state.to_json(), expect["state"], "{name}");
                }
                Err(e) => {
                    assert_eq!(Some(e.error.code()), want_code, "{name}: {e}");
                    assert_eq!(e.index as u64, expect["index"].as_u64().unwrap(), "{name}");
                    if let Some(pair) = expect.get("equivocation") {
                        let eq = e
                            .equivocation
                            .as_ref()
                            .unwrap_or_else(|| panic!("{name}: no evidence"));
                        assert_eq!(pair[0].as_str().unwrap(), eq.first.id().to_string());
                        assert_eq!(pair[1].as_str().unwrap(), eq.second.id().to_string());
                    }
                }
            }
        }
        other => panic!("{name}: unknown vector type {other}"),
    }
    want_code
}

/// DID token vectors (spec/security.md, "DID tokens").
fn replay_did_token(name: &str, v: &Value) {
    let audience = Did::parse(v["audience"].as_str().unwrap()).unwrap();
    let now = v["now"].as_u64().unwrap();
    let verdict =
        pulse_ledger::auth::DidToken::verify(v["input"].as_str().unwrap(), &audience, now);
    let expect = &v["expect"];
    match verdict {
        Ok(c) => {
            assert_eq!(expect["ok"], true, "{name}: verified");
            assert_eq!(expect["did"].as_str().unwrap(), c.did.to_string(), "{name}");
            assert_eq!(expect["issued_at"].as_u64().unwrap(), c.issued_at, "{name}");
            assert_eq!(
                expect["expires_at"].as_u64().unwrap(),
                c.expires_at,
                "{name}"
            );
        }
        Err(e) => assert_eq!(
            expect["code"].as_str(),
            Some(e.code().as_str()),
            "{name}: {e}"
        ),
    }
}

/// Session-proof vectors (spec/plugin.md, "Session proof"): the DIDs
/// parse (else `bad_announcement`), the proof message is rebuilt byte for
/// byte, and the signature verifies (else `bad_proof`).
fn replay_session_proof(name: &str, v: &Value) {
    use pulse_ledger::plugin::{AnnouncedHandler, Announcement, proof_message, verify_proof};
    let a = &v["announcement"];
    let did = |x: &Value| Did::parse(x.as_str().unwrap());
    let parsed = (|| {
        let handlers = a["handlers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                let id = h["id"].as_str().unwrap();
                Ok(AnnouncedHandler {
                    id: if id.is_empty() {
                        None
                    } else {
                        Some(did(&h["id"])?)
                    },
                    name: h["name"].as_str().unwrap().to_owned(),
                })
            })
            .collect::<Result<Vec<_>, pulse_ledger::Error>>()?;
        Ok::<_, pulse_ledger::Error>(Announcement {
            plugin: did(&a["plugin"])?,
            key: did(&a["key"])?,
            handlers,
            serves_any: a["serves_any"].as_bool().unwrap(),
        })
    })();
    let expect = &v["expect"];
    let announcement = match parsed {
        Ok(a) => a,
        Err(_) => {
            assert_eq!(expect["code"], "bad_announcement", "{name}");
            return;
        }
    };
    let nonce = unhex(&v["nonce"]);
    let verdict = verify_proof(&nonce, &announcement, &unhex(&v["signature"]));
    if expect["ok"] == true {
        assert!(verdict.is_ok(), "{name}: {verdict:?}");
        assert_eq!(
            hex::encode(proof_message(&nonce, &announcement)),
            expect["message"].as_str().unwrap(),
            "{name}: the proof message"
        );
    } else {
        assert!(verdict.is_err(), "{name}: verified");
        assert_eq!(expect["code"], "bad_proof", "{name}");
    }
}

/// A proof check's result against the vector's expectation.
fn assert_outcome(
    name: &str,
    r: Result<(), pulse_ledger::ledger::LedgerError>,
    ok: bool,
    expect: &Value,
) {
    let want = if ok {
        Ok(())
    } else {
        Err(expect["code"].as_str().unwrap())
    };
    assert_eq!(r.map_err(|e| e.code()), want, "{name}");
}

fn h32(v: &Value) -> [u8; 32] {
    unhex(v).try_into().expect("32 bytes")
}

fn hashes(v: &Value) -> Vec<[u8; 32]> {
    v.as_array().unwrap().iter().map(h32).collect()
}

/// Ledger vectors: Merkle trees and proofs, checkpoints.
fn replay_ledger(name: &str, v: &Value) {
    use pulse_ledger::ledger::{
        Frontier, key_id, leaf_hash, verifier_key, verify_checkpoint, verify_consistency,
        verify_inclusion,
    };
    let input = &v["input"];
    let expect = &v["expect"];
    let ok = expect["ok"].as_bool().unwrap();
    if let Some(entries) = input.get("entries") {
        let leaves: Vec<[u8; 32]> = entries
            .as_array()
            .unwrap()
            .iter()
            .map(|e| leaf_hash(&unhex(e)))
            .collect();
        assert_eq!(leaves, hashes(&expect["leaf_hashes"]), "{name}");
        let roots = hashes(&expect["roots"]);
        let mut f = Frontier::default();
        assert_eq!(f.root(), roots[0]);
        for (i, leaf) in leaves.iter().enumerate() {
            f.push(*leaf);
            assert_eq!(f.root(), roots[i + 1], "{name}: root at size {}", i + 1);
        }
        for p in expect["inclusion"].as_array().unwrap() {
            let (index, size) = (p["index"].as_u64().unwrap(), p["size"].as_u64().unwrap());
            verify_inclusion(
                &leaves[index as usize],
                index,
                size,
                &hashes(&p["path"]),
                &roots[size as usize],
            )
            .unwrap();
        }
        for p in expect["consistency"].as_array().unwrap() {
            let (old, new) = (
                p["old_size"].as_u64().unwrap(),
                p["new_size"].as_u64().unwrap(),
            );
            verify_consistency(
                old,
                new,
                &roots[old as usize],
                &roots[new as usize],
                &hashes(&p["proof"]),
            )
            .unwrap();
        }
    } else if let Some(note) = input.get("note") {
        let did = Did::parse(input["log_key"].as_str().unwrap()).unwrap();
        match verify_checkpoint(note.as_str().unwrap(), &did) {
            Ok(cp) => {
                assert!(ok, "{name}");
                assert_eq!(cp.origin, expect["origin"].as_str().unwrap());
                assert_eq!(cp.size, expect["size"].as_u64().unwrap());
                assert_eq!(hex::encode(cp.root), expect["root"].as_str().unwrap());
                assert_eq!(
                    hex::encode(key_id(&cp.origin, did.public_key())),
                    expect["key_id"].as_str().unwrap()
                );
                assert_eq!(
                    verifier_key(&cp.origin, &did),
                    expect["verifier_key"].as_str().unwrap()
                );
            }
            Err(e) => assert_eq!(Some(e.code()), expect["code"].as_str(), "{name}: {e}"),
        }
    } else if let Some(path) = input.get("path") {
        let r = verify_inclusion(
            &h32(&input["leaf_hash"]),
            input["index"].as_u64().unwrap(),
            input["size"].as_u64().unwrap(),
            &hashes(path),
            &h32(&input["root"]),
        );
        assert_outcome(name, r, ok, expect);
    } else {
        let r = verify_consistency(
            input["old_size"].as_u64().unwrap(),
            input["new_size"].as_u64().unwrap(),
            &h32(&input["old_root"]),
            &h32(&input["new_root"]),
            &hashes(&input["proof"]),
        );
        assert_outcome(name, r, ok, expect);
    }
}

#[test]
fn every_committed_vector_replays() {
    let all = committed();
    assert!(all.len() >= 60, "only {} vectors", all.len());
    for (name, v) in &all {
        replay(name, v);
    }
}

#[test]
fn committed_vectors_are_exactly_the_generated_ones() {
    let generated: Vec<(String, Value)> = pulse_ledger::vectors::generate()
        .into_iter()
        .map(|v| (v.file, v.json))
        .collect();
    let mut generated = generated;
    generated.sort_by(|a, b| a.0.cmp(&b.0));
    let names = |v: &[(String, Value)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&committed()),
        names(&generated),
        "run `cargo run --example gen_vectors`"
    );
    for ((name, a), (_, b)) in committed().iter().zip(&generated) {
        assert_eq!(
            a, b,
            "{name} differs from the generator: run `cargo run --example gen_vectors`"
        );
    }
}

#[test]
fn fuzz_corpus_is_generated_from_the_vectors() {
    for v in pulse_ledger::vectors::generate() {
        if let Some((target, bytes)) = v.corpus {
            let path = Path::new("fuzz/corpus")
                .join(target)
                .join(v.file.replace(".json", ".bin"));
            let on_disk = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(
                on_disk,
                bytes,
                "{}: run `cargo run --example gen_vectors`",
                path.display()
            );
        }
    }
    for (target, name, bytes) in pulse_ledger::fuzzing::seeds() {
        let path = Path::new("fuzz/corpus")
            .join(target)
            .join(format!("{name}.bin"));
        let on_disk = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            on_disk,
            bytes,
            "{}: run `cargo run --example gen_vectors`",
            path.display()
        );
    }
}

/// Codes listed in the error table of spec/attestation.md: rows of the form
/// "| `code` | …".
fn spec_codes() -> BTreeSet<String> {
    table_codes("spec/attestation.md")
}

#[test]
fn ledger_spec_lists_exactly_the_ledger_codes() {
    let lib: BTreeSet<String> = pulse_ledger::ledger::LedgerErrorCode::ALL
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    // The "Error codes" table only: "Status codes" after it lists the
    // attestation codes too.
    let spec = fs::read_to_string("spec/ledger.md").unwrap();
    let start = spec.find("\n## Error codes").unwrap();
    let end = spec[start..].find("\n### Status codes").unwrap() + start;
    assert_eq!(codes_in(&spec[start..end]), lib);
}

#[test]
fn pulse_spec_lists_exactly_the_pulse_codes() {
    let lib: BTreeSet<String> = pulse_ledger::pulse::PulseErrorCode::ALL
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    assert_eq!(table_codes("spec/pulse.md"), lib);
}

#[test]
fn security_spec_lists_exactly_the_access_codes_and_refusal_rules() {
    let mut lib: BTreeSet<String> = pulse_ledger::auth::AuthCode::ALL
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    lib.extend(
        pulse_ledger::api::REFUSAL_RULES
            .iter()
            .map(|r| (*r).to_owned()),
    );
    assert_eq!(table_codes("spec/security.md"), lib);
}

fn table_codes(path: &str) -> BTreeSet<String> {
    codes_in(&fs::read_to_string(path).expect(path))
}

fn codes_in(spec: &str) -> BTreeSet<String> {
    spec.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(c, _)| c.to_owned()))
        .filter(|c| {
            c.chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_')
        })
        .collect()
}

#[test]
fn spec_lists_exactly_the_library_codes() {
    let lib: BTreeSet<String> = ErrorCode::ALL
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    assert_eq!(
        spec_codes(),
        lib,
        "spec/attestation.md error table and ErrorCode differ"
    );
}

#[test]
fn every_error_code_has_a_vector_and_every_type_a_valid_one() {
    let mut seen = BTreeSet::new();
    let mut valid = BTreeSet::new();
    for (name, v) in committed() {
        match replay(&name, &v) {
            Some(code) => {
                seen.insert(code.as_str().to_owned());
            }
            None => {
                valid.insert(v["type"].as_str().unwrap().to_owned());
            }
        }
    }
    let missing: Vec<_> = spec_codes().difference(&seen).cloned().collect();
    assert!(missing.is_empty(), "codes without a vector: {missing:?}");
    for t in [
        "did",
        "attestation",
        "chain",
        "ledger",
        "did-token",
        "session-proof",
    ] {
        assert!(valid.contains(t), "no valid {t} vector");
    }
}
