//! Session-proof vectors (spec/plugin.md, "Session proof"): the nonce, the
//! announcement, the proof message Pulse rebuilds from them, and the
//! signature, so a plugin written in another language can check its
//! layout byte for byte.

use serde_json::json;

use super::{Gen, Key, key_json};
use crate::plugin::{AnnouncedHandler, Announcement, NONCE_BYTES, proof_message, verify_proof};

/// The nonce of every session-proof vector: derived like the test keys.
fn nonce(label: &str) -> [u8; NONCE_BYTES] {
    blake3::derive_key(super::KEY_CONTEXT, label.as_bytes())
}

fn announcement_json(a: &Announcement) -> serde_json::Value {
    json!({
        "plugin": a.plugin.to_string(),
        "key": a.key.to_string(),
        "serves_any": a.serves_any,
        "handlers": a.handlers.iter().map(|h| json!({
            "id": h.id.as_ref().map(ToString::to_string).unwrap_or_default(),
            "name": h.name,
        })).collect::<Vec<_>>(),
    })
}

/// Adds the vectors: `p` is a plugin, `p2` the key it rotated to, `h` a
/// handler, `other` a key that is neither.
pub(super) fn session_proofs(g: &mut Gen, p: &Key, p2: &Key, h: &Key, other: &Key) {
    let n = nonce("session-nonce");
    let by_name_and_id = Announcement {
        plugin: p.did.clone(),
        key: p.did.clone(),
        handlers: vec![
            AnnouncedHandler {
                id: None,
                name: "echo".into(),
            },
            AnnouncedHandler {
                id: Some(h.did.clone()),
                name: String::new(),
            },
        ],
        serves_any: false,
    };
    let any_rotated = Announcement {
        plugin: p.did.clone(),
        key: p2.did.clone(),
        handlers: vec![],
        serves_any: true,
    };
    let ok = |g: &mut Gen, name: &str, description: &str, a: &Announcement, signer: &Key| {
        let sig = crate::plugin::sign_proof(&n, a, &signer.sk);
        assert!(verify_proof(&n, a, &sig).is_ok(), "vector {name}");
        g.push(
            "session-proof",
            name,
            description,
            json!({
                "keys": key_json(&[signer]),
                "nonce": hex::encode(n),
                "announcement": announcement_json(a),
                "signature": hex::encode(sig),
                "expect": {"ok": true, "message": hex::encode(proof_message(&n, a))},
            }),
            None,
        );
    };
    ok(
        g,
        "by-name-and-id",
        "The worked layout of spec/plugin.md: a never-rotated plugin announcing one handler by name and one by ID.",
        &by_name_and_id,
        p,
    );
    ok(
        g,
        "serves-any-rotated-key",
        "A plugin that rotated its key: plugin is the genesis DID, key the current one that signs; serves_any set, no handler listed.",
        &any_rotated,
        p2,
    );
    let err = |g: &mut Gen,
               name: &str,
               description: &str,
               announcement: serde_json::Value,
               signature: Vec<u8>,
               keys: &[&Key],
               code: &str| {
        g.push(
            "session-proof",
            name,
            description,
            json!({
                "keys": key_json(keys),
                "nonce": hex::encode(n),
                "announcement": announcement,
                "signature": hex::encode(signature),
                "expect": {"ok": false, "code": code},
            }),
            None,
        );
    };
    let good = crate::plugin::sign_proof(&n, &by_name_and_id, &p.sk);
    let other_nonce = crate::plugin::sign_proof(&nonce("another-nonce"), &by_name_and_id, &p.sk);
    err(
        g,
        "other-nonce",
        "Signed over another nonce (a replayed proof): bad_proof.",
        announcement_json(&by_name_and_id),
        other_nonce.to_vec(),
        &[p],
        "bad_proof",
    );
    let mut renamed = by_name_and_id.clone();
    renamed.handlers[0].name = "echo2".into();
    err(
        g,
        "announcement-changed",
        "The signature of by-name-and-id under an announcement whose first handler name was changed after signing: bad_proof.",
        announcement_json(&renamed),
        good.to_vec(),
        &[p],
        "bad_proof",
    );
    let mut claims = by_name_and_id.clone();
    claims.key = other.did.clone();
    let by_p = crate::plugin::sign_proof(&n, &claims, &p.sk);
    err(
        g,
        "signed-by-another-key",
        "The announcement names one key, another key signed: bad_proof.",
        announcement_json(&claims),
        by_p.to_vec(),
        &[p, other],
        "bad_proof",
    );
    err(
        g,
        "signature-63-bytes",
        "A signature one byte short: bad_proof.",
        announcement_json(&by_name_and_id),
        good[..63].to_vec(),
        &[p],
        "bad_proof",
    );
    let mut bad_did = announcement_json(&by_name_and_id);
    bad_did["handlers"][1]["id"] = json!("did:key:zNotADid");
    err(
        g,
        "handler-id-not-a-did",
        "An announced handler ID that is not a DID: bad_announcement (checked before the signature).",
        bad_did,
        good.to_vec(),
        &[p],
        "bad_announcement",
    );
}
