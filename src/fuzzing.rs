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

/// A fixed log key for the targets that need one.
fn fuzz_log_key() -> (ed25519_dalek::SigningKey, crate::Did) {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let did = crate::Did::from_verifying_key(&key.verifying_key())
        .unwrap_or_else(|e| unreachable!("a fixed valid key: {e}"));
    (key, did)
}

fn hash_at(data: &[u8], at: usize) -> crate::ledger::Hash {
    let mut h = [0u8; 32];
    for (i, b) in data.iter().skip(at).take(32).enumerate() {
        h[i] = *b;
    }
    h
}

/// Inclusion and consistency proof checks over arbitrary numbers and
/// hashes: never panic, and a proof that verifies stops verifying when
/// the leaf (or old root) changes by one bit.
///
/// Layout: index (8 bytes BE), size (8), leaf (32), root (32), then the
/// path, 32 bytes a hash.
pub fn proof(data: &[u8]) {
    use crate::ledger::{verify_consistency, verify_inclusion};
    let num = |at: usize| {
        let mut b = [0u8; 8];
        for (i, x) in data.iter().skip(at).take(8).enumerate() {
            b[i] = *x;
        }
        u64::from_be_bytes(b)
    };
    let (index, size) = (num(0), num(8));
    let (leaf, root) = (hash_at(data, 16), hash_at(data, 48));
    let path: Vec<_> = data
        .get(80..)
        .unwrap_or_default()
        .chunks(32)
        .map(|c| hash_at(c, 0))
        .collect();
    if verify_inclusion(&leaf, index, size, &path, &root).is_ok() {
        let mut other = leaf;
        other[0] ^= 1;
        assert!(verify_inclusion(&other, index, size, &path, &root).is_err());
    }
    if verify_consistency(index, size, &leaf, &root, &path).is_ok() && index > 0 && index < size {
        let mut other = leaf;
        other[31] ^= 0x80;
        assert!(verify_consistency(index, size, &other, &root, &path).is_err());
    }
}

/// Signed checkpoint notes: arbitrary text never panics the parser, and a
/// note the log key signed over fuzzed contents verifies to exactly them.
pub fn checkpoint(data: &[u8]) {
    use crate::ledger::{Checkpoint, verify_checkpoint};
    let (key, did) = fuzz_log_key();
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cp) = verify_checkpoint(text, &did) {
            assert!(
                text.starts_with(&cp.body()),
                "a verified note starts with its body"
            );
        }
    }
    let origin: String = data
        .iter()
        .take(40)
        .map(|b| char::from(b'a' + b % 26))
        .collect();
    if crate::ledger::is_valid_origin(&origin) {
        let cp = Checkpoint {
            origin,
            size: u64::from_le_bytes(hash_at(data, 40)[..8].try_into().unwrap_or([0; 8])),
            root: hash_at(data, 48),
        };
        let note = cp.sign(&key);
        assert_eq!(verify_checkpoint(&note, &did).ok(), Some(cp));
    }
}

/// The file formats the CLI reads besides envelopes: key files and audit
/// bundles. Never panic; a bundle that decodes re-encodes to the same
/// bytes (the format is canonical), and verifying it never panics.
pub fn cli_files(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(key) = crate::keyfile::parse(text) {
            let did = crate::Did::from_verifying_key(&key.verifying_key())
                .unwrap_or_else(|e| unreachable!("a signing key's public key: {e}"));
            let rendered = crate::keyfile::render(&key, &did);
            assert_eq!(
                crate::keyfile::parse(&rendered).map(|k| k.to_bytes()).ok(),
                Some(key.to_bytes())
            );
        }
    }
    if let Ok(bundle) = crate::audit::Bundle::decode(data) {
        assert_eq!(
            bundle.encode(),
            data,
            "a decoded bundle re-encodes to its bytes"
        );
        let (_, did) = fuzz_log_key();
        let _ = crate::audit::verify_bundle(data, &did);
    }
}

/// A tree of `n` leaves in memory: its nodes, and its root at every size.
struct MemTree {
    nodes: std::collections::HashMap<(u8, u64), crate::ledger::Hash>,
    roots: Vec<crate::ledger::Hash>,
    leaves: Vec<Vec<u8>>,
}

impl crate::ledger::NodeSource for MemTree {
    fn node(
        &self,
        level: u8,
        index: u64,
    ) -> Result<crate::ledger::Hash, crate::ledger::LedgerError> {
        self.nodes.get(&(level, index)).copied().ok_or_else(|| {
            crate::ledger::LedgerError::new(
                crate::ledger::LedgerErrorCode::Integrity,
                "missing node",
            )
        })
    }
}

impl MemTree {
    fn of(leaves: Vec<Vec<u8>>) -> MemTree {
        let mut frontier = crate::ledger::Frontier::default();
        let mut t = MemTree {
            nodes: std::collections::HashMap::new(),
            roots: vec![crate::ledger::empty_root()],
            leaves,
        };
        for leaf in &t.leaves {
            for (level, index, hash) in frontier.push(crate::ledger::leaf_hash(leaf)) {
                t.nodes.insert((level, index), hash);
            }
            t.roots.push(frontier.root());
        }
        t
    }
}

fn proof_seed(a: u64, b: u64, first: &[u8; 32], second: &[u8; 32], path: &[[u8; 32]]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(a.to_be_bytes());
    out.extend(b.to_be_bytes());
    out.extend(first);
    out.extend(second);
    for h in path {
        out.extend(h);
    }
    out
}

/// The seed corpus of the proof, checkpoint and cli_files targets:
/// (target, file name, bytes), all valid inputs built from fixed keys, so
/// the fuzzer starts from the accepting paths. Written by
/// `cargo run --example gen_vectors`; a test checks the committed files.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    use crate::ledger::{Checkpoint, NodeSource, consistency_proof, inclusion_proof, leaf_hash};
    let (log_key, log_did) = fuzz_log_key();
    let mut out = Vec::new();
    let tree = MemTree::of((0..13u8).map(|i| vec![i; 3]).collect());
    for (index, size) in [(0u64, 1u64), (3, 7), (12, 13), (5, 13)] {
        let path = inclusion_proof(&tree as &dyn NodeSource, index, size)
            .unwrap_or_else(|e| unreachable!("a built tree: {e}"));
        let leaf = leaf_hash(&tree.leaves[index as usize]);
        let seed = proof_seed(index, size, &leaf, &tree.roots[size as usize], &path);
        out.push(("proof", format!("inclusion-{index}-{size}"), seed));
    }
    for (old, new) in [(1u64, 13u64), (4, 8), (7, 13)] {
        let path = consistency_proof(&tree as &dyn NodeSource, old, new)
            .unwrap_or_else(|e| unreachable!("a built tree: {e}"));
        let seed = proof_seed(
            old,
            new,
            &tree.roots[old as usize],
            &tree.roots[new as usize],
            &path,
        );
        out.push(("proof", format!("consistency-{old}-{new}"), seed));
    }
    for size in [0u64, 7, 13] {
        let note = Checkpoint {
            origin: "fuzz.example/log".into(),
            size,
            root: tree.roots[size as usize],
        }
        .sign(&log_key);
        out.push(("checkpoint", format!("note-{size}"), note.into_bytes()));
    }
    out.push((
        "cli_files",
        "keyfile".into(),
        crate::keyfile::render(&log_key, &log_did).into_bytes(),
    ));
    // A bundle of one plugin's genesis statement, logged as entry 2 of 3.
    let plugin_key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let plugin = crate::Did::from_verifying_key(&plugin_key.verifying_key())
        .unwrap_or_else(|e| unreachable!("a fixed valid key: {e}"));
    let statement = crate::Statement {
        family: crate::Family::Plugin,
        subject: plugin.clone(),
        signer: plugin.clone(),
        seq: 0,
        prev: None,
        issued_at: 1_700_000_000_000,
        action: crate::Action::Register(crate::Schema::Plugin(crate::PluginSchema::new(
            "fuzz", "1.0.0",
        ))),
    };
    let envelope = crate::sign_statement(&statement, &plugin_key, None)
        .unwrap_or_else(|e| unreachable!("a valid statement: {e}"))
        .envelope()
        .to_vec();
    let log = MemTree::of(vec![b"a".to_vec(), b"b".to_vec(), envelope.clone()]);
    let bundle = crate::audit::Bundle {
        log: log_did,
        subject: plugin,
        checkpoint: Checkpoint {
            origin: "fuzz.example/log".into(),
            size: 3,
            root: log.roots[3],
        }
        .sign(&log_key),
        entries: vec![crate::audit::BundleEntry {
            index: 2,
            envelope,
            proof: inclusion_proof(&log as &dyn NodeSource, 2, 3)
                .unwrap_or_else(|e| unreachable!("a built tree: {e}")),
        }],
    };
    out.push(("cli_files", "bundle".into(), bundle.encode()));
    out
}
