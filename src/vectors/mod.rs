//! Test-vector generation for `spec/vectors/` (format: `spec/vectors/README.md`).
//!
//! Every vector is built here from fixed key seeds and fixed timestamps, and
//! the generator checks that each invalid vector breaks exactly the rule it
//! is named for. Regenerate with `cargo run --example gen_vectors`.

mod session_proof;

use ed25519_dalek::SigningKey;
use serde_json::{Value as Json, json};

use crate::attest::internal::{Map, Value, decode, encode, seal};
use crate::{
    Action, Attestation, Did, ErrorCode, Family, HandlerSchema, PluginSchema, Schema, Statement,
    sign_statement, verify_attestation, verify_chain,
};

/// blake3 `derive_key` context for vector key seeds.
pub const KEY_CONTEXT: &str = "pulse-ledger test vectors v1";
/// issued_at of the first statement in every vector: 2026-01-01T00:00:00Z.
pub const T0: u64 = 1_767_225_600_000;

/// One generated vector: its file name (without directory) and content.
pub struct Vector {
    /// e.g. `attestation-bad-signature-flipped-bit.json`.
    pub file: String,
    /// The JSON document.
    pub json: Json,
    /// Raw input bytes for the fuzz corpus: an envelope, or framed envelopes
    /// for chain vectors (see [`crate::fuzzing::frame`]).
    pub corpus: Option<(&'static str, Vec<u8>)>,
}

/// A test key with its label.
struct Key {
    label: &'static str,
    sk: SigningKey,
    did: Did,
}

fn key(label: &'static str) -> Key {
    let seed = blake3::derive_key(KEY_CONTEXT, label.as_bytes());
    let sk = SigningKey::from_bytes(&seed);
    let did = Did::from_verifying_key(&sk.verifying_key()).expect("test keys are valid");
    Key { label, sk, did }
}

fn key_json(keys: &[&Key]) -> Json {
    Json::Array(
        keys.iter()
            .map(|k| json!({"label": k.label, "seed": hex::encode(k.sk.to_bytes()), "did": k.did.to_string()}))
            .collect(),
    )
}

struct Gen {
    out: Vec<Vector>,
}

impl Gen {
    fn push(
        &mut self,
        kind: &str,
        name: &str,
        description: &str,
        mut doc: Json,
        corpus: Option<(&'static str, Vec<u8>)>,
    ) {
        let file = format!("{kind}-{name}.json");
        assert!(
            !self.out.iter().any(|v| v.file == file),
            "duplicate vector {file}"
        );
        doc["name"] = json!(name);
        doc["type"] = json!(kind);
        doc["description"] = json!(description);
        self.out.push(Vector {
            file,
            json: doc,
            corpus,
        });
    }

    fn did_ok(&mut self, name: &str, description: &str, k: &Key) {
        let text = k.did.to_string();
        let parsed = Did::parse(&text).expect("valid did");
        self.push(
            "did",
            name,
            description,
            json!({"input": text, "expect": {"ok": true, "public_key": hex::encode(parsed.public_key())}}),
            None,
        );
    }

    fn did_err(&mut self, name: &str, description: &str, text: &str, code: ErrorCode) {
        let got = Did::parse(text).expect_err(name).code();
        assert_eq!(got, code, "vector {name}");
        self.push(
            "did",
            name,
            description,
            json!({"input": text, "expect": {"ok": false, "code": code.as_str()}}),
            None,
        );
    }

    fn att_ok(&mut self, name: &str, description: &str, att: &Attestation, keys: &[&Key]) {
        let again = verify_attestation(att.envelope()).expect(name);
        self.push(
            "attestation",
            name,
            description,
            json!({
                "keys": key_json(keys),
                "input": hex::encode(att.envelope()),
                "expect": {
                    "ok": true,
                    "id": again.id().to_string(),
                    "body": hex::encode(again.body()),
                    "statement": again.statement().to_json(),
                },
            }),
            Some(("envelope", att.envelope().to_vec())),
        );
    }

    fn att_err(
        &mut self,
        name: &str,
        description: &str,
        bytes: Vec<u8>,
        code: ErrorCode,
        keys: &[&Key],
    ) {
        let got = verify_attestation(&bytes).expect_err(name);
        assert_eq!(got.code(), code, "vector {name}: {got}");
        self.push(
            "attestation",
            name,
            description,
            json!({
                "keys": key_json(keys),
                "input": hex::encode(&bytes),
                "expect": {"ok": false, "code": code.as_str()},
            }),
            Some(("envelope", bytes)),
        );
    }

    fn chain_ok(&mut self, name: &str, description: &str, chain: &[&Attestation], keys: &[&Key]) {
        let envs: Vec<&[u8]> = chain.iter().map(|a| a.envelope()).collect();
        let state = verify_chain(&envs).expect(name);
        self.push(
            "chain",
            name,
            description,
            json!({
                "keys": key_json(keys),
                "input": envs.iter().map(hex::encode).collect::<Vec<_>>(),
                "expect": {"ok": true, "state": state.to_json()},
            }),
            Some(("chain", crate::fuzzing::frame(&envs))),
        );
    }

    fn chain_err(
        &mut self,
        name: &str,
        description: &str,
        envs: &[&[u8]],
        code: ErrorCode,
        index: usize,
        keys: &[&Key],
    ) {
        let err = verify_chain(envs).expect_err(name);
        assert_eq!(
            (err.error.code(), err.index),
            (code, index),
            "vector {name}: {err}"
        );
        let mut expect = json!({"ok": false, "code": code.as_str(), "index": index});
        if let Some(eq) = &err.equivocation {
            expect["equivocation"] = json!([eq.first.id().to_string(), eq.second.id().to_string()]);
        }
        self.push(
            "chain",
            name,
            description,
            json!({
                "keys": key_json(keys),
                "input": envs.iter().map(hex::encode).collect::<Vec<_>>(),
                "expect": expect,
            }),
            Some(("chain", crate::fuzzing::frame(envs))),
        );
    }
}

fn sign(st: &Statement, k: &Key) -> Attestation {
    sign_statement(st, &k.sk, None).expect("vector statement is valid")
}

fn register(k: &Key, schema: Schema, t: u64) -> Statement {
    Statement {
        family: match schema {
            Schema::Handler(_) => Family::Handler,
            Schema::Plugin(_) => Family::Plugin,
        },
        subject: k.did.clone(),
        signer: k.did.clone(),
        seq: 0,
        prev: None,
        issued_at: t,
        action: Action::Register(schema),
    }
}

fn after(prev: &Attestation, signer: &Key, action: Action, t: u64) -> Statement {
    let p = prev.statement();
    Statement {
        family: p.family,
        subject: p.subject.clone(),
        signer: signer.did.clone(),
        seq: p.seq + 1,
        prev: Some(prev.id()),
        issued_at: t,
        action,
    }
}

/// The body of `st` as an editable map.
fn body_map(st: &Statement) -> Map {
    match decode(&st.to_body()).expect("canonical body") {
        Value::Map(m) => m,
        _ => unreachable!(),
    }
}

fn set(m: &mut Map, key: &str, value: Value) {
    m.0.retain(|(k, _)| k != key);
    m.0.push((key.to_owned(), value));
}

fn map_of(entries: &[(&str, Value)]) -> Map {
    let mut m = Map::new();
    for (k, v) in entries {
        m.insert(k, v.clone());
    }
    m
}

/// A did:key made for list-filling vectors: one per index.
fn key_for_index(i: usize) -> Key {
    let seed = blake3::derive_key(KEY_CONTEXT, format!("member-{i}").as_bytes());
    let sk = SigningKey::from_bytes(&seed);
    let did = Did::from_verifying_key(&sk.verifying_key()).expect("test keys are valid");
    Key {
        label: "member",
        sk,
        did,
    }
}

/// The access lists of the all-fields vector: every right written, with
/// each kind of member.
fn access_lists(client: &Key) -> crate::HandlerAccess {
    use crate::{Member, Right};
    let mut a = crate::HandlerAccess::default();
    a.set(
        Right::Enqueue,
        vec![
            Member::Owner,
            Member::Tokens,
            Member::Client(client.did.clone()),
        ],
    )
    .set(
        Right::Read,
        vec![Member::Owner, Member::Client(client.did.clone())],
    )
    .set(Right::Cancel, vec![Member::Owner])
    .set(Right::Budget, vec![]);
    a
}

fn remove(m: &mut Map, key: &str) {
    m.0.retain(|(k, _)| k != key);
}

/// Edits the `schema` sub-map of a body map.
fn edit_schema(m: &mut Map, f: impl FnOnce(&mut Map)) {
    if let Some((_, Value::Map(s))) = m.0.iter_mut().find(|(k, _)| k == "schema") {
        f(s);
    }
}

fn seal_map(m: Map, keys: &[&Key]) -> Vec<u8> {
    let sks: Vec<&SigningKey> = keys.iter().map(|k| &k.sk).collect();
    seal(encode(&Value::Map(m)), &sks)
}

fn seal_bytes(body: Vec<u8>, keys: &[&Key]) -> Vec<u8> {
    let sks: Vec<&SigningKey> = keys.iter().map(|k| &k.sk).collect();
    seal(body, &sks)
}

/// Writes a CBOR head without canonical checks, for non-canonical vectors.
fn head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    match arg {
        0..=23 => out.push(m | arg as u8),
        24..=0xff => out.extend([m | 24, arg as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend((arg as u16).to_be_bytes());
        }
        _ => {
            out.push(m | 26);
            out.extend((arg as u32).to_be_bytes());
        }
    }
}

/// Encodes a map's entries in the order given (not sorted).
fn unsorted(m: &Map) -> Vec<u8> {
    let mut out = Vec::new();
    head(&mut out, 5, m.0.len() as u64);
    for (k, v) in &m.0 {
        head(&mut out, 3, k.len() as u64);
        out.extend(k.as_bytes());
        out.extend(encode(v));
    }
    out
}

/// Builds every vector.
pub fn generate() -> Vec<Vector> {
    let mut g = Gen { out: Vec::new() };
    let h = key("handler-a");
    let h2 = key("handler-a-rotated");
    let hb = key("handler-b");
    let p = key("plugin-a");
    let p2 = key("plugin-a-rotated");
    let other = key("outsider");

    dids(&mut g, &h, &p);

    // Building blocks shared by the attestation and chain vectors.
    let hs = HandlerSchema::new("python.script", "1.0.0", p.did.clone());
    let h0 = sign(&register(&h, Schema::Handler(hs.clone()), T0), &h);
    let mut hs1 = hs.clone();
    hs1.version = "1.1.0".into();
    hs1.timeout_ms = Some(60_000);
    let h1 = sign(
        &after(
            &h0,
            &h,
            Action::Update(Schema::Handler(hs1.clone())),
            T0 + 1000,
        ),
        &h,
    );
    let h2_st = after(
        &h1,
        &h,
        Action::Rotate {
            new_key: h2.did.clone(),
        },
        T0 + 2000,
    );
    let h2a = sign_statement(&h2_st, &h.sk, Some(&h2.sk)).expect("rotate");
    let mut hs3 = hs1.clone();
    hs3.max_cost = Some(500);
    let h3 = sign(
        &after(&h2a, &h2, Action::Update(Schema::Handler(hs3)), T0 + 3000),
        &h2,
    );
    let h4 = sign(
        &after(
            &h3,
            &h2,
            Action::Revoke {
                reason: Some("retired".into()),
            },
            T0 + 4000,
        ),
        &h2,
    );

    let ps = PluginSchema::new("py-runner", "1.0.0");
    let p0 = sign(&register(&p, Schema::Plugin(ps.clone()), T0), &p);

    valid_attestations(
        &mut g,
        [&h, &h2, &p, &p2],
        &hs,
        [&h0, &h1, &h2a, &h3, &h4],
        &p0,
    );
    encoding_errors(&mut g, &h, &h0, &hs);
    field_errors(&mut g, &h, &h2, &p, &hs, &h0, &h1);
    signature_errors(&mut g, &h, &h2, &other, &h0, &h1, &h2_st);
    chains(
        &mut g,
        [&h, &h2, &hb, &p, &other],
        [&h0, &h1, &h2a, &h3, &h4],
        &p0,
        &hs,
    );
    let hb0 = sign(&register(&hb, Schema::Handler(hs.clone()), T0), &hb);
    ledger(&mut g, &[&p0, &h0, &h1, &h2a, &h3, &h4, &hb0]);
    did_tokens(&mut g, &other, &p, &h);
    session_proof::session_proofs(&mut g, &p, &p2, &h, &other);
    g.out
}

/// DID tokens (spec/security.md, "DID tokens"): each vector names the
/// server's log DID (`audience`) and the time it is checked at (`now`).
fn did_tokens(g: &mut Gen, client: &Key, log: &Key, other_log: &Key) {
    use crate::auth::did_token::seal;
    use crate::auth::{DID_TOKEN_CLOCK_SKEW_MS, DidToken, MAX_DID_TOKEN_LIFETIME_MS};
    let exp = T0 + 600_000;
    let good = DidToken::sign(&client.sk, &log.did, T0, exp).expect("valid window");
    let claims = |edit: &dyn Fn(&mut Map)| {
        let mut m = Map::new();
        m.insert("did", Value::Text(client.did.to_string()));
        m.insert("audience", Value::Text(log.did.to_string()));
        m.insert("issued_at", Value::Uint(T0));
        m.insert("expires_at", Value::Uint(exp));
        edit(&mut m);
        m
    };
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let Value::Map(good_map) = decode(&b64.decode(&good[4..]).expect("b64")).expect("cbor") else {
        unreachable!("a token is a map")
    };
    // The good token's map with one entry replaced, its signature kept.
    let tampered = |key: &str, value: Value| {
        let mut m = good_map.clone();
        set(&mut m, key, value);
        format!("pld_{}", b64.encode(encode(&Value::Map(m))))
    };
    let Some(Value::Bytes(mut sig)) = good_map.get("signature").cloned() else {
        unreachable!("a token is signed")
    };
    sig[0] ^= 1;
    let flipped = tampered("signature", Value::Bytes(sig));
    // name, description, token, audience, now, expected code.
    type Case<'a> = (&'a str, &'a str, String, &'a Key, u64, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "valid",
            "A token checked one second after it was issued.",
            good.clone(),
            log,
            T0 + 1000,
            None,
        ),
        (
            "valid-early-by-the-clock-skew",
            "Checked 5 minutes before its issued_at: clocks may disagree by that much.",
            good.clone(),
            log,
            T0 - DID_TOKEN_CLOCK_SKEW_MS,
            None,
        ),
        (
            "valid-longest-window",
            "A window of exactly one hour.",
            DidToken::sign(&client.sk, &log.did, T0, T0 + MAX_DID_TOKEN_LIFETIME_MS)
                .expect("an hour"),
            log,
            T0 + 1,
            None,
        ),
        (
            "not-yet-valid",
            "Checked 5 minutes and 1 ms before its issued_at.",
            good.clone(),
            log,
            T0 - DID_TOKEN_CLOCK_SKEW_MS - 1,
            Some("token_expired"),
        ),
        (
            "expired",
            "Checked at its expires_at.",
            good.clone(),
            log,
            exp,
            Some("token_expired"),
        ),
        (
            "wrong-server",
            "A token for another server's log, checked by this one.",
            good.clone(),
            other_log,
            T0 + 1000,
            Some("token_wrong_server"),
        ),
        (
            "flipped-signature-bit",
            "The signature's first bit flipped.",
            flipped,
            log,
            T0 + 1000,
            Some("token_bad_signature"),
        ),
        (
            "another-did",
            "Another did:key put in place of the signer's.",
            tampered("did", Value::Text(other_log.did.to_string())),
            log,
            T0 + 1000,
            Some("token_bad_signature"),
        ),
        (
            "window-too-long",
            "Signed, but valid for one hour and 1 ms.",
            seal(
                &client.sk,
                claims(&|m| {
                    set(
                        m,
                        "expires_at",
                        Value::Uint(T0 + MAX_DID_TOKEN_LIFETIME_MS + 1),
                    )
                }),
            ),
            log,
            T0 + 1000,
            Some("token_malformed"),
        ),
        (
            "empty-window",
            "Signed, but expires_at equals issued_at.",
            seal(
                &client.sk,
                claims(&|m| set(m, "expires_at", Value::Uint(T0))),
            ),
            log,
            T0,
            Some("token_malformed"),
        ),
        (
            "extra-key",
            "Signed, but the map has a sixth key.",
            seal(
                &client.sk,
                claims(&|m| set(m, "scope", Value::Text("admin".into()))),
            ),
            log,
            T0 + 1000,
            Some("token_malformed"),
        ),
        (
            "issued-at-text",
            "Signed, but issued_at is a text string.",
            seal(
                &client.sk,
                claims(&|m| set(m, "issued_at", Value::Text(T0.to_string()))),
            ),
            log,
            T0 + 1000,
            Some("token_malformed"),
        ),
        (
            "padded-base64",
            "The good token with base64 padding added.",
            format!("{good}="),
            log,
            T0 + 1000,
            Some("token_malformed"),
        ),
        (
            "operator-prefix",
            "The good token's text with the operator tokens' plt_ prefix.",
            good.replacen("pld_", "plt_", 1),
            log,
            T0 + 1000,
            Some("token_malformed"),
        ),
    ];
    for (name, description, token, audience, now, code) in cases {
        let verdict = DidToken::verify(&token, &audience.did, now);
        assert_eq!(
            verdict.as_ref().err().map(|e| e.code().as_str()),
            code,
            "did-token vector {name} breaks another rule: {verdict:?}"
        );
        let expect = match verdict {
            Ok(c) => {
                json!({"ok": true, "did": c.did.to_string(), "issued_at": c.issued_at, "expires_at": c.expires_at})
            }
            Err(e) => json!({"ok": false, "code": e.code().as_str()}),
        };
        g.push(
            "did-token",
            name,
            description,
            json!({
                "keys": key_json(&[client, audience]),
                "input": token,
                "audience": audience.did.to_string(),
                "now": now,
                "expect": expect,
            }),
            None,
        );
    }
}

/// Tree hashes kept in memory, for building ledger vectors.
struct MemNodes(std::collections::HashMap<(u8, u64), crate::ledger::Hash>);

impl crate::ledger::NodeSource for MemNodes {
    fn node(
        &self,
        level: u8,
        index: u64,
    ) -> Result<crate::ledger::Hash, crate::ledger::LedgerError> {
        Ok(*self
            .0
            .get(&(level, index))
            .expect("vector trees are complete"))
    }
}

fn ledger(g: &mut Gen, entries: &[&Attestation]) {
    use crate::ledger::{
        Checkpoint, Frontier, consistency_proof, inclusion_proof, key_id, leaf_hash, verifier_key,
    };
    let hexes = |v: &[crate::ledger::Hash]| v.iter().map(hex::encode).collect::<Vec<_>>();
    let mut nodes = MemNodes(std::collections::HashMap::new());
    let mut frontier = Frontier::default();
    let mut roots = vec![frontier.root()];
    let mut leaves = Vec::new();
    for e in entries {
        let leaf = leaf_hash(e.envelope());
        leaves.push(leaf);
        for (level, index, hash) in frontier.push(leaf) {
            nodes.0.insert((level, index), hash);
        }
        roots.push(frontier.root());
    }
    let n = entries.len() as u64;
    let mut inclusion = Vec::new();
    let mut consistency = Vec::new();
    for size in 1..=n {
        for index in 0..size {
            let path = inclusion_proof(&nodes, index, size).expect("in range");
            inclusion.push(json!({"index": index, "size": size, "path": hexes(&path)}));
        }
    }
    for new in 0..=n {
        for old in 0..=new {
            let proof = consistency_proof(&nodes, old, new).expect("in range");
            consistency.push(json!({"old_size": old, "new_size": new, "proof": hexes(&proof)}));
        }
    }
    g.push(
        "ledger",
        "merkle-7-entries",
        "A log of 7 entries (attestation envelopes): leaf hashes, the root at every size 0..7, every inclusion proof and every consistency proof.",
        json!({
            "input": {"entries": entries.iter().map(|e| hex::encode(e.envelope())).collect::<Vec<_>>()},
            "expect": {
                "ok": true,
                "leaf_hashes": hexes(&leaves),
                "roots": hexes(&roots),
                "inclusion": inclusion,
                "consistency": consistency,
            },
        }),
        None,
    );

    let log = key("log");
    let origin = "example.com/pulse-ledger";
    let cp = Checkpoint {
        origin: origin.into(),
        size: n,
        root: roots[n as usize],
    };
    let note = cp.sign(&log.sk);
    g.push(
        "ledger",
        "checkpoint-valid",
        "The signed checkpoint of the 7-entry log: C2SP tlog-checkpoint text in a C2SP signed note, Ed25519 key ID from SHA-256.",
        json!({
            "keys": key_json(&[&log]),
            "input": {"note": note, "log_key": log.did.to_string()},
            "expect": {
                "ok": true,
                "origin": origin,
                "size": n,
                "root": hex::encode(cp.root),
                "key_id": hex::encode(key_id(origin, log.did.public_key())),
                "verifier_key": verifier_key(origin, &log.did),
            },
        }),
        None,
    );
    let bad_checkpoint = |g: &mut Gen,
                          name: &str,
                          description: &str,
                          note: String,
                          log_key: &Did| {
        let err = crate::ledger::verify_checkpoint(&note, log_key).expect_err(name);
        assert_eq!(err.code(), "bad_checkpoint", "{name}");
        g.push(
            "ledger",
            name,
            description,
            json!({"input": {"note": note, "log_key": log_key.to_string()}, "expect": {"ok": false, "code": "bad_checkpoint"}}),
            None,
        );
    };
    let other = key("outsider");
    bad_checkpoint(
        g,
        "checkpoint-other-key",
        "The valid checkpoint checked against another key.",
        note.clone(),
        &other.did,
    );
    bad_checkpoint(
        g,
        "checkpoint-size-edited",
        "The valid checkpoint with its size line changed from 7 to 6 after signing.",
        note.replacen("\n7\n", "\n6\n", 1),
        &log.did,
    );
    bad_checkpoint(
        g,
        "checkpoint-no-blank-line",
        "The signature line without the blank line that separates it from the text.",
        note.replacen("\n\n", "\n", 1),
        &log.did,
    );

    let size = n;
    let index = 2u64;
    let mut path = inclusion_proof(&nodes, index, size).expect("in range");
    path[1][0] ^= 1;
    let err = crate::ledger::verify_inclusion(
        &leaves[index as usize],
        index,
        size,
        &path,
        &roots[size as usize],
    )
    .expect_err("tampered");
    assert_eq!(err.code(), "bad_proof");
    g.push(
        "ledger",
        "inclusion-tampered",
        "The inclusion proof of entry 2 in the 7-entry tree with one bit of its second hash flipped.",
        json!({
            "input": {"leaf_hash": hex::encode(leaves[index as usize]), "index": index, "size": size, "path": hexes(&path), "root": hex::encode(roots[size as usize])},
            "expect": {"ok": false, "code": "bad_proof"},
        }),
        None,
    );
    let mut proof = consistency_proof(&nodes, 3, 7).expect("in range");
    proof[0][31] ^= 0x80;
    let err = crate::ledger::verify_consistency(3, 7, &roots[3], &roots[7], &proof)
        .expect_err("tampered");
    assert_eq!(err.code(), "bad_proof");
    g.push(
        "ledger",
        "consistency-tampered",
        "The consistency proof from size 3 to 7 with one bit of its first hash flipped.",
        json!({
            "input": {"old_size": 3, "new_size": 7, "old_root": hex::encode(roots[3]), "new_root": hex::encode(roots[7]), "proof": hexes(&proof)},
            "expect": {"ok": false, "code": "bad_proof"},
        }),
        None,
    );
}

fn dids(g: &mut Gen, h: &Key, p: &Key) {
    g.did_ok(
        "valid-handler-key",
        "The did:key of the vector key `handler-a`.",
        h,
    );
    g.did_ok(
        "valid-plugin-key",
        "The did:key of the vector key `plugin-a`.",
        p,
    );
    g.did_err(
        "not-did-key",
        "A DID method other than did:key.",
        "did:web:example.com",
        ErrorCode::DidSyntax,
    );
    let b58 = h.did.to_string()["did:key:z".len()..].to_owned();
    g.did_err(
        "not-base58btc-multibase",
        "Multibase prefix `f` (base16) instead of `z` (base58btc).",
        &format!("did:key:f{b58}"),
        ErrorCode::DidSyntax,
    );
    g.did_err(
        "bad-base58-character",
        "`0` is not in the base58btc alphabet.",
        &format!("did:key:z{}0", &b58[..b58.len() - 1]),
        ErrorCode::DidBase58,
    );
    let enc = |raw: &[u8]| format!("did:key:z{}", bs58::encode(raw).into_string());
    let mut secp = vec![0xe7, 0x01];
    secp.extend([2u8; 33]);
    g.did_err(
        "secp256k1-multicodec",
        "Multicodec 0xe7 (secp256k1-pub), not 0xed (ed25519-pub).",
        &enc(&secp),
        ErrorCode::DidMulticodec,
    );
    let mut short = vec![0xed, 0x01];
    short.extend(&h.did.public_key()[..31]);
    g.did_err(
        "key-31-bytes",
        "An ed25519-pub multicodec followed by 31 key bytes.",
        &enc(&short),
        ErrorCode::DidLength,
    );
    let mut long = vec![0xed, 0x01];
    long.extend(h.did.public_key());
    long.push(0);
    g.did_err(
        "key-33-bytes",
        "An ed25519-pub multicodec followed by 33 key bytes.",
        &enc(&long),
        ErrorCode::DidLength,
    );
    let mut ident = vec![0xed, 0x01, 1];
    ident.extend([0u8; 31]);
    g.did_err(
        "identity-point",
        "The identity point (order 1): a small-order key.",
        &enc(&ident),
        ErrorCode::WeakKey,
    );
    let mut order4 = vec![0xed, 0x01];
    order4.extend([0u8; 32]);
    g.did_err(
        "order-4-point",
        "y = 0, a point of order 4: a small-order key.",
        &enc(&order4),
        ErrorCode::WeakKey,
    );
    let noncanon = noncanonical_point();
    let mut raw = vec![0xed, 0x01];
    raw.extend(noncanon);
    g.did_err(
        "non-canonical-point",
        "A large-order point whose y coordinate is encoded as y + p (not reduced mod p).",
        &enc(&raw),
        ErrorCode::WeakKey,
    );
}

/// The first y in p+2 ..= p+18 that decodes to a point of large order:
/// a non-canonical encoding of a valid key.
fn noncanonical_point() -> [u8; 32] {
    for k in 2u8..=18 {
        // p + k = 2^255 - 19 + k, little-endian.
        let mut key = [0xffu8; 32];
        key[0] = 0xed + k;
        key[31] = 0x7f;
        if let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&key) {
            if !vk.is_weak() {
                return key;
            }
        }
    }
    unreachable!("some small y is on the curve with large order")
}

fn valid_attestations(
    g: &mut Gen,
    [h, h2, p, p2]: [&Key; 4],
    hs: &HandlerSchema,
    [h0, h1, h2a, h3, h4]: [&Attestation; 5],
    p0: &Attestation,
) {
    g.att_ok(
        "handler-register-minimal",
        "Genesis of a handler with only the required schema fields.",
        h0,
        &[h],
    );
    let mut full = hs.clone();
    full.input_schema =
        Some(r#"{"type":"object","properties":{"script":{"type":"string"}}}"#.into());
    full.output_schema = Some("true".into());
    full.timeout_ms = Some(120_000);
    full.max_attempts = Some(5);
    full.max_cost = Some(10_000);
    full.max_concurrency = Some(4);
    full.description = Some("Runs a Python script.\nOne line per log entry.".into());
    full.code = Some(b"print('hello from pulse-ledger')\n".to_vec());
    full.access = Some(access_lists(h2));
    full.network = Some(crate::NetworkAccess::Outbound);
    let full_att = sign(&register(h, Schema::Handler(full), T0), h);
    g.att_ok(
        "handler-register-all-fields",
        "Genesis with every optional handler schema field set, including inline code.",
        &full_att,
        &[h],
    );
    let mut only_owner = hs.clone();
    let mut lists = crate::HandlerAccess::default();
    lists.set(crate::Right::Enqueue, vec![crate::Member::Owner]);
    lists.set(crate::Right::Cancel, vec![]);
    only_owner.access = Some(lists);
    let att = sign(&register(h, Schema::Handler(only_owner), T0), h);
    g.att_ok(
        "handler-register-access-owner-only",
        "access: only the owner may enqueue; nobody but admin tokens may cancel (an empty list); read and budget left out (owner and tokens).",
        &att,
        &[h],
    );
    // The number range rule of "JSON Schema documents" at its edges.
    for (name, description, doc) in [
        (
            "handler-register-schema-number-largest",
            "input_schema holds 9.999e300: adjusted exponent 300, the largest allowed.",
            r#"{"type":"number","maximum":9.999e300}"#,
        ),
        (
            "handler-register-schema-number-smallest",
            "input_schema holds 1e-300: adjusted exponent -300, the smallest allowed.",
            r#"{"type":"number","multipleOf":1e-300}"#,
        ),
        (
            "handler-register-schema-number-zero-exponent-9999",
            "input_schema holds 0e9999: zero is accepted whatever its exponent (of at most 4 digits).",
            r#"{"const":0e9999}"#,
        ),
    ] {
        let mut s = hs.clone();
        s.input_schema = Some(doc.into());
        let att = sign(&register(h, Schema::Handler(s), T0), h);
        g.att_ok(name, description, &att, &[h]);
    }
    let mut max = HandlerSchema::new(
        format!("a{}", "z".repeat(63)),
        "1.0.0-rc.1+build.7",
        p.did.clone(),
    );
    max.timeout_ms = Some(crate::limits::MAX_TIMEOUT_MS);
    max.max_attempts = Some(crate::limits::MAX_MAX_ATTEMPTS);
    max.max_cost = Some(crate::limits::MAX_MAX_COST);
    max.max_concurrency = Some(crate::limits::MAX_MAX_CONCURRENCY);
    max.code = Some(vec![b'#'; crate::limits::MAX_CODE_BYTES]);
    let max_att = sign(
        &register(h, Schema::Handler(max), crate::limits::MAX_SAFE_INTEGER),
        h,
    );
    g.att_ok("handler-register-upper-limits", "Every bounded field at its largest allowed value (64-byte name, 48 KiB code, issued_at 2^53-1).", &max_att, &[h]);
    g.att_ok(
        "handler-update",
        "seq 1: a new schema, signed by the genesis key.",
        h1,
        &[h],
    );
    g.att_ok(
        "handler-rotate",
        "seq 2: rotation to a new key; two signatures, current key first, new key second.",
        h2a,
        &[h, h2],
    );
    g.att_ok(
        "handler-update-after-rotate",
        "seq 3: signed by the rotated key.",
        h3,
        &[h2],
    );
    g.att_ok(
        "handler-revoke-with-reason",
        "seq 4: revocation with a reason.",
        h4,
        &[h2],
    );
    let bare = sign(&after(h0, h, Action::Revoke { reason: None }, T0), h);
    g.att_ok(
        "handler-revoke-without-reason",
        "Revocation with no reason field.",
        &bare,
        &[h],
    );
    g.att_ok(
        "plugin-register-minimal",
        "Genesis of a plugin: name, version, protocol.",
        p0,
        &[p],
    );
    let mut ps = PluginSchema::new("py-runner", "2.0.0");
    ps.endpoint = Some("https://runner.example:7400".into());
    ps.description = Some("Python job runner".into());
    let pe = sign(&register(p, Schema::Plugin(ps.clone()), T0), p);
    g.att_ok(
        "plugin-register-with-endpoint",
        "Genesis of a plugin that listens on its own endpoint.",
        &pe,
        &[p],
    );
    let pu = sign(&after(p0, p, Action::Update(Schema::Plugin(ps)), T0 + 1), p);
    g.att_ok("plugin-update", "A plugin's new schema.", &pu, &[p]);
    let pr_st = after(
        p0,
        p,
        Action::Rotate {
            new_key: p2.did.clone(),
        },
        T0 + 1,
    );
    let pr = sign_statement(&pr_st, &p.sk, Some(&p2.sk)).expect("rotate");
    g.att_ok(
        "plugin-rotate",
        "A plugin's key rotation, co-signed by the new key.",
        &pr,
        &[p, p2],
    );
    let pv = sign(&after(&pr, p2, Action::Revoke { reason: None }, T0 + 2), p2);
    g.att_ok(
        "plugin-revoke",
        "A plugin's revocation, signed by its rotated key.",
        &pv,
        &[p2],
    );
    let _ = h2;
}

fn encoding_errors(g: &mut Gen, h: &Key, h0: &Attestation, hs: &HandlerSchema) {
    let env = h0.envelope().to_vec();
    let st = h0.statement();

    let mut big = HandlerSchema::new(hs.name.clone(), "1.0.0", hs.plugin.clone());
    big.code = Some(vec![b'#'; crate::limits::MAX_CODE_BYTES]);
    big.input_schema = Some(format!("{{\"description\":\"{}\"}}", "x".repeat(16_000)));
    let body = register(h, Schema::Handler(big), T0).to_body();
    let bytes = seal_bytes(body, &[h]);
    assert!(bytes.len() > crate::limits::MAX_ENVELOPE_BYTES);
    g.att_err(
        "too-large",
        "A correctly signed envelope of more than 65,536 bytes.",
        bytes,
        ErrorCode::TooLarge,
        &[h],
    );

    g.att_err(
        "truncated",
        "The minimal handler registration without its last byte.",
        env[..env.len() - 1].to_vec(),
        ErrorCode::MalformedCbor,
        &[h],
    );
    let mut trailing = env.clone();
    trailing.push(0);
    g.att_err(
        "trailing-byte",
        "A valid envelope followed by one extra byte.",
        trailing,
        ErrorCode::MalformedCbor,
        &[h],
    );
    g.att_err(
        "body-not-cbor",
        "A signed body that is not well-formed CBOR (a map header with nothing after it).",
        seal_bytes(vec![0xa1], &[h]),
        ErrorCode::MalformedCbor,
        &[h],
    );

    let mut indefinite = vec![0xbf];
    indefinite.extend(&env[1..]);
    indefinite.push(0xff);
    g.att_err(
        "envelope-indefinite-map",
        "The envelope map written with an indefinite length.",
        indefinite,
        ErrorCode::NonCanonicalCbor,
        &[h],
    );
    let mut m = body_map(st);
    m.0.reverse();
    g.att_err(
        "body-keys-unsorted",
        "A signed body whose map keys are in reverse order.",
        seal_bytes(unsorted(&m), &[h]),
        ErrorCode::NonCanonicalCbor,
        &[h],
    );
    let body = st.to_body();
    // The body starts a7 61 76 01: map(7), "v", 1.
    assert_eq!(body[1..4], [0x61, 0x76, 0x01]);
    let mut wide = body.clone();
    wide.splice(3..4, [0x18, 0x01]);
    g.att_err(
        "body-integer-not-shortest",
        "`v` written as 0x18 0x01 instead of 0x01.",
        seal_bytes(wide, &[h]),
        ErrorCode::NonCanonicalCbor,
        &[h],
    );
    let mut wide_text = body.clone();
    wide_text.splice(1..2, [0x78, 0x01]);
    g.att_err(
        "body-text-length-not-shortest",
        "The key \"v\" with its length written as 0x78 0x01.",
        seal_bytes(wide_text, &[h]),
        ErrorCode::NonCanonicalCbor,
        &[h],
    );

    let mut dup = body_map(st);
    dup.0.insert(1, ("v".into(), Value::Uint(1)));
    g.att_err(
        "body-duplicate-key",
        "The key \"v\" twice in the body.",
        seal_bytes(unsorted(&dup), &[h]),
        ErrorCode::DuplicateKey,
        &[h],
    );

    let mut float = body.clone();
    float.splice(3..4, [0xf9, 0x3c, 0x00]);
    g.att_err(
        "body-float",
        "`v` written as the half-precision float 1.0.",
        seal_bytes(float, &[h]),
        ErrorCode::ForbiddenCborType,
        &[h],
    );
    let mut tagged = body.clone();
    tagged.splice(3..3, [0xc1]);
    g.att_err(
        "body-tag",
        "`v` wrapped in tag 1.",
        seal_bytes(tagged, &[h]),
        ErrorCode::ForbiddenCborType,
        &[h],
    );
    let mut boolean = body.clone();
    boolean.splice(3..4, [0xf5]);
    g.att_err(
        "body-boolean",
        "`v` written as `true`.",
        seal_bytes(boolean, &[h]),
        ErrorCode::ForbiddenCborType,
        &[h],
    );
    let mut negative = body;
    negative.splice(3..4, [0x20]);
    g.att_err(
        "body-negative-integer",
        "`v` written as -1.",
        seal_bytes(negative, &[h]),
        ErrorCode::ForbiddenCborType,
        &[h],
    );
    // Envelope {1: …} instead of {"body": …}.
    let mut intkey = vec![0xa2, 0x01];
    intkey.extend(&env[6..]);
    g.att_err(
        "envelope-integer-key",
        "An envelope map key that is an integer, not text.",
        intkey,
        ErrorCode::ForbiddenCborType,
        &[h],
    );
}

fn field_errors(
    g: &mut Gen,
    h: &Key,
    h2: &Key,
    p: &Key,
    hs: &HandlerSchema,
    h0: &Attestation,
    h1: &Attestation,
) {
    let st0 = h0.statement();
    let st1 = h1.statement();
    let env_parts = |m: &mut Map| {
        // The minimal envelope as an editable map.
        let Value::Map(e) = decode(h0.envelope()).expect("envelope") else {
            unreachable!()
        };
        *m = e;
    };

    let mut e = Map::new();
    env_parts(&mut e);
    set(&mut e, "note", Value::Text("hi".into()));
    g.att_err(
        "envelope-unknown-field",
        "An envelope with a third key \"note\".",
        encode(&Value::Map(e)),
        ErrorCode::UnknownField,
        &[h],
    );
    let mut e = Map::new();
    env_parts(&mut e);
    remove(&mut e, "sigs");
    g.att_err(
        "envelope-missing-sigs",
        "An envelope without \"sigs\".",
        encode(&Value::Map(e)),
        ErrorCode::MissingField,
        &[h],
    );
    let mut e = Map::new();
    env_parts(&mut e);
    set(&mut e, "body", Value::Text("body".into()));
    g.att_err(
        "envelope-body-is-text",
        "\"body\" is a text string, not a byte string.",
        encode(&Value::Map(e)),
        ErrorCode::WrongType,
        &[h],
    );
    let mut e = Map::new();
    env_parts(&mut e);
    set(
        &mut e,
        "sigs",
        Value::Array(vec![Value::Bytes(vec![0; 63])]),
    );
    g.att_err(
        "envelope-signature-63-bytes",
        "A signature of 63 bytes.",
        encode(&Value::Map(e)),
        ErrorCode::InvalidField,
        &[h],
    );

    let mut m = body_map(st0);
    set(&mut m, "extra", Value::Uint(1));
    g.att_err(
        "body-unknown-field",
        "A body with the undefined key \"extra\".",
        seal_map(m, &[h]),
        ErrorCode::UnknownField,
        &[h],
    );
    let mut m = body_map(st0);
    edit_schema(&mut m, |s| {
        set(s, "endpoint", Value::Text("http://x:1".into()))
    });
    g.att_err(
        "handler-schema-plugin-field",
        "A handler schema with \"endpoint\", a plugin schema field.",
        seal_map(m, &[h]),
        ErrorCode::UnknownField,
        &[h],
    );
    let mut m = body_map(st0);
    remove(&mut m, "issued_at");
    g.att_err(
        "body-missing-issued-at",
        "A body without issued_at.",
        seal_map(m, &[h]),
        ErrorCode::MissingField,
        &[h],
    );
    let mut m = body_map(st0);
    remove(&mut m, "v");
    g.att_err(
        "body-missing-version",
        "A body without v.",
        seal_map(m, &[h]),
        ErrorCode::MissingField,
        &[h],
    );
    let mut m = body_map(st0);
    edit_schema(&mut m, |s| remove(s, "plugin"));
    g.att_err(
        "schema-missing-plugin",
        "A handler schema without its plugin.",
        seal_map(m, &[h]),
        ErrorCode::MissingField,
        &[h],
    );
    let mut m = body_map(st1);
    remove(&mut m, "prev");
    g.att_err(
        "update-missing-prev",
        "An update without prev.",
        seal_map(m, &[h]),
        ErrorCode::MissingField,
        &[h],
    );

    let mut m = body_map(st0);
    set(&mut m, "seq", Value::Text("0".into()));
    g.att_err(
        "seq-is-text",
        "seq written as the text \"0\".",
        seal_map(m, &[h]),
        ErrorCode::WrongType,
        &[h],
    );
    let mut m = body_map(st0);
    edit_schema(&mut m, |s| {
        set(s, "name", Value::Bytes(b"python.script".to_vec()))
    });
    g.att_err(
        "schema-name-is-bytes",
        "schema.name as a byte string.",
        seal_map(m, &[h]),
        ErrorCode::WrongType,
        &[h],
    );

    let bad = |f: &dyn Fn(&mut Map)| {
        let mut m = body_map(st0);
        edit_schema(&mut m, f);
        seal_map(m, &[h])
    };
    g.att_err(
        "schema-name-uppercase",
        "schema.name \"Python.Script\" breaks [a-z0-9][a-z0-9._-]{0,63}.",
        bad(&|s| set(s, "name", Value::Text("Python.Script".into()))),
        ErrorCode::InvalidField,
        &[h],
    );
    g.att_err(
        "schema-name-65-chars",
        "schema.name one character too long.",
        bad(&|s| set(s, "name", Value::Text("a".repeat(65)))),
        ErrorCode::InvalidField,
        &[h],
    );
    g.att_err(
        "schema-version-not-semver",
        "schema.version \"1.0\" is not SemVer 2.0.0.",
        bad(&|s| set(s, "version", Value::Text("1.0".into()))),
        ErrorCode::InvalidField,
        &[h],
    );
    g.att_err(
        "schema-timeout-zero",
        "schema.timeout_ms 0 (minimum 1).",
        bad(&|s| set(s, "timeout_ms", Value::Uint(0))),
        ErrorCode::InvalidField,
        &[h],
    );
    g.att_err(
        "schema-max-attempts-101",
        "schema.max_attempts 101 (maximum 100).",
        bad(&|s| set(s, "max_attempts", Value::Uint(101))),
        ErrorCode::InvalidField,
        &[h],
    );
    g.att_err(
        "schema-max-cost-2-pow-53",
        "schema.max_cost 2^53 (maximum 2^53-1).",
        bad(&|s| set(s, "max_cost", Value::Uint(1 << 53))),
        ErrorCode::InvalidField,
        &[h],
    );
    g.att_err(
        "schema-code-empty",
        "schema.code of zero bytes.",
        bad(&|s| set(s, "code", Value::Bytes(vec![]))),
        ErrorCode::InvalidField,
        &[h],
    );
    g.att_err(
        "schema-code-too-long",
        "schema.code of 49,153 bytes (maximum 49,152).",
        bad(&|s| {
            set(
                s,
                "code",
                Value::Bytes(vec![b'#'; crate::limits::MAX_CODE_BYTES + 1]),
            )
        }),
        ErrorCode::InvalidField,
        &[h],
    );
    g.att_err(
        "schema-input-schema-not-json",
        "schema.input_schema that is not JSON.",
        bad(&|s| set(s, "input_schema", Value::Text("{type: object}".into()))),
        ErrorCode::InvalidField,
        &[h],
    );
    g.att_err(
        "schema-output-schema-array",
        "schema.output_schema that is JSON but not an object or boolean.",
        bad(&|s| set(s, "output_schema", Value::Text("[1]".into()))),
        ErrorCode::InvalidField,
        &[h],
    );
    for (name, description, field, doc) in [
        (
            "schema-input-schema-number-1e301",
            "schema.input_schema holds 1e301: adjusted exponent 301 (at most 300).",
            "input_schema",
            r#"{"type":"number","maximum":1e301}"#,
        ),
        (
            "schema-input-schema-number-1e-301",
            "schema.input_schema holds 1e-301: adjusted exponent -301 (at least -300).",
            "input_schema",
            r#"{"type":"number","multipleOf":1e-301}"#,
        ),
        (
            "schema-input-schema-number-binary64-edge",
            "schema.input_schema holds 1.79769313486231581e308, just past the largest binary64 (some parsers round it down): adjusted exponent 308.",
            "input_schema",
            r#"{"type":"number","maximum":1.79769313486231581e308}"#,
        ),
        (
            "schema-output-schema-exponent-5-digits",
            "schema.output_schema holds 0e10000: zero, but its exponent has 5 digits (at most 4).",
            "output_schema",
            r#"{"const":0e10000}"#,
        ),
    ] {
        let bytes = bad(&|s| set(s, field, Value::Text(doc.into())));
        let e = verify_attestation(&bytes).expect_err(name);
        assert!(
            e.message().contains("outside the range"),
            "vector {name} breaks another rule: {e}"
        );
        g.att_err(name, description, bytes, ErrorCode::InvalidField, &[h]);
    }
    let text_list =
        |items: &[&str]| Value::Array(items.iter().map(|t| Value::Text((*t).to_owned())).collect());
    let client = h2.did.to_string();
    let mut too_many = vec!["owner"; 1];
    let many: Vec<String> = (0..crate::limits::MAX_ACCESS_MEMBERS)
        .map(|i| key_for_index(i).did.to_string())
        .collect();
    too_many.extend(many.iter().map(String::as_str));
    for (name, description, access, code) in [
        (
            "schema-access-not-map",
            "schema.access is an array, not a map.",
            text_list(&["owner"]),
            ErrorCode::WrongType,
        ),
        (
            "schema-access-unknown-right",
            "schema.access has the key \"write\", not a right.",
            Value::Map(map_of(&[("write", text_list(&["owner"]))])),
            ErrorCode::UnknownField,
        ),
        (
            "schema-access-list-not-array",
            "schema.access.read is the text \"owner\", not an array.",
            Value::Map(map_of(&[("read", Value::Text("owner".into()))])),
            ErrorCode::WrongType,
        ),
        (
            "schema-access-member-not-text",
            "schema.access.cancel[0] is an unsigned integer.",
            Value::Map(map_of(&[("cancel", Value::Array(vec![Value::Uint(1)]))])),
            ErrorCode::WrongType,
        ),
        (
            "schema-access-member-unknown-word",
            "schema.access.enqueue[1] is \"everyone\": neither owner, tokens nor a did:key.",
            Value::Map(map_of(&[("enqueue", text_list(&["owner", "everyone"]))])),
            ErrorCode::DidSyntax,
        ),
        (
            "schema-access-member-repeated",
            "schema.access.read names the same did:key twice.",
            Value::Map(map_of(&[("read", text_list(&[&client, "owner", &client]))])),
            ErrorCode::InvalidField,
        ),
        (
            "schema-access-too-many-members",
            "schema.access.budget has 65 members (at most 64).",
            Value::Map(map_of(&[("budget", text_list(&too_many))])),
            ErrorCode::InvalidField,
        ),
    ] {
        let bytes = bad(&|s| set(s, "access", access.clone()));
        g.att_err(name, description, bytes, code, &[h]);
    }
    g.att_err(
        "schema-network-unknown-value",
        "schema.network is \"inbound\"; the one value defined is \"outbound\".",
        bad(&|s| set(s, "network", Value::Text("inbound".into()))),
        ErrorCode::InvalidField,
        &[h],
    );
    g.att_err(
        "schema-network-not-text",
        "schema.network is the unsigned integer 1.",
        bad(&|s| set(s, "network", Value::Uint(1))),
        ErrorCode::WrongType,
        &[h],
    );
    g.att_err(
        "schema-access-after-description",
        "schema.description with a NUL character and schema.access with an unknown right: the description is checked first.",
        bad(&|s| {
            set(s, "description", Value::Text("a\u{0}b".into()));
            set(s, "access", Value::Map(map_of(&[("write", text_list(&[]))])));
        }),
        ErrorCode::InvalidField,
        &[h],
    );
    g.att_err(
        "schema-description-control-char",
        "schema.description with a NUL character.",
        bad(&|s| set(s, "description", Value::Text("a\u{0}b".into()))),
        ErrorCode::InvalidField,
        &[h],
    );
    g.att_err(
        "schema-plugin-bad-did",
        "schema.plugin with a secp256k1 multicodec.",
        bad(&|s| {
            set(
                s,
                "plugin",
                Value::Text("did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme".into()),
            )
        }),
        ErrorCode::DidMulticodec,
        &[h],
    );

    let mut m = body_map(st0);
    set(&mut m, "seq", Value::Uint(1));
    g.att_err(
        "register-seq-1",
        "A register statement with seq 1.",
        seal_map(m, &[h]),
        ErrorCode::InvalidField,
        &[h],
    );
    let mut m = body_map(st1);
    set(&mut m, "seq", Value::Uint(0));
    g.att_err(
        "update-seq-0",
        "An update statement with seq 0.",
        seal_map(m, &[h]),
        ErrorCode::InvalidField,
        &[h],
    );
    let mut m = body_map(st1);
    set(&mut m, "prev", Value::Bytes(vec![0; 31]));
    g.att_err(
        "prev-31-bytes",
        "prev of 31 bytes.",
        seal_map(m, &[h]),
        ErrorCode::InvalidField,
        &[h],
    );

    let mut ps = body_map(&register(
        p,
        Schema::Plugin(PluginSchema::new("py-runner", "1.0.0")),
        T0,
    ));
    edit_schema(&mut ps, |s| {
        set(s, "endpoint", Value::Text("ftp://runner:21".into()))
    });
    g.att_err(
        "plugin-endpoint-not-http",
        "A plugin endpoint with the ftp scheme.",
        seal_map(ps, &[p]),
        ErrorCode::InvalidField,
        &[p],
    );
    let mut ps = body_map(&register(
        p,
        Schema::Plugin(PluginSchema::new("py-runner", "1.0.0")),
        T0,
    ));
    edit_schema(&mut ps, |s| set(s, "protocol", Value::Uint(0)));
    g.att_err(
        "plugin-protocol-zero",
        "A plugin protocol version of 0.",
        seal_map(ps, &[p]),
        ErrorCode::InvalidField,
        &[p],
    );

    let mut m = body_map(st0);
    set(&mut m, "v", Value::Uint(2));
    set(&mut m, "expires_at", Value::Uint(T0));
    g.att_err(
        "version-2-with-new-field",
        "A v = 2 body with a field v1 does not define: the version is reported, not the field.",
        seal_map(m, &[h]),
        ErrorCode::UnsupportedVersion,
        &[h],
    );
    let mut m = body_map(st0);
    set(&mut m, "kind", Value::Text("handler.suspend".into()));
    set(&mut m, "until", Value::Uint(T0));
    g.att_err(
        "unknown-kind-with-new-field",
        "An undefined kind with a field v1 does not define: the kind is reported, not the field.",
        seal_map(m, &[h]),
        ErrorCode::UnknownKind,
        &[h],
    );
    let mut m = body_map(st0);
    set(&mut m, "v", Value::Uint(2));
    g.att_err(
        "version-2",
        "A body with v = 2.",
        seal_map(m, &[h]),
        ErrorCode::UnsupportedVersion,
        &[h],
    );
    let mut m = body_map(st0);
    set(&mut m, "kind", Value::Text("handler.delete".into()));
    g.att_err(
        "kind-handler-delete",
        "The undefined kind \"handler.delete\".",
        seal_map(m, &[h]),
        ErrorCode::UnknownKind,
        &[h],
    );
    let mut m = body_map(st0);
    set(&mut m, "prev", Value::Bytes(vec![0; 32]));
    g.att_err(
        "register-with-prev",
        "A register statement carrying prev.",
        seal_map(m, &[h]),
        ErrorCode::UnexpectedField,
        &[h],
    );
    let revoke = after(h0, h, Action::Revoke { reason: None }, T0);
    let mut m = body_map(&revoke);
    set(&mut m, "schema", HandlerSchema::to_value(hs));
    g.att_err(
        "revoke-with-schema",
        "A revoke statement carrying a schema.",
        seal_map(m, &[h]),
        ErrorCode::UnexpectedField,
        &[h],
    );

    let mut m = body_map(st0);
    let mut short = vec![0xed, 0x01];
    short.extend(&h.did.public_key()[..20]);
    set(
        &mut m,
        "subject",
        Value::Text(format!("did:key:z{}", bs58::encode(short).into_string())),
    );
    g.att_err(
        "subject-truncated-did",
        "A subject DID whose key is cut short.",
        seal_map(m, &[h]),
        ErrorCode::DidLength,
        &[h],
    );
    let mut m = body_map(st0);
    set(&mut m, "signer", Value::Text("did:example:123".into()));
    g.att_err(
        "signer-not-did-key",
        "A signer that is not a did:key.",
        seal_map(m, &[h]),
        ErrorCode::DidSyntax,
        &[h],
    );
    let mut m = body_map(st0);
    set(&mut m, "signer", Value::Text(h2.did.to_string()));
    g.att_err(
        "register-signer-not-subject",
        "A register statement signed (validly) by a key other than its subject.",
        seal_map(m, &[h2]),
        ErrorCode::SignerMismatch,
        &[h, h2],
    );
    let same = after(
        h0,
        h,
        Action::Rotate {
            new_key: h.did.clone(),
        },
        T0,
    );
    g.att_err(
        "rotate-to-same-key",
        "A rotation that names the current key.",
        seal_bytes(same.to_body(), &[h, h]),
        ErrorCode::RotateSameKey,
        &[h],
    );
}

fn signature_errors(
    g: &mut Gen,
    h: &Key,
    h2: &Key,
    other: &Key,
    h0: &Attestation,
    h1: &Attestation,
    rot: &Statement,
) {
    g.att_err(
        "rotate-one-signature",
        "A rotation signed only by the current key.",
        seal_bytes(rot.to_body(), &[h]),
        ErrorCode::SignatureCount,
        &[h, h2],
    );
    g.att_err(
        "update-two-signatures",
        "An update carrying a second signature.",
        seal_bytes(h1.body().to_vec(), &[h, h]),
        ErrorCode::SignatureCount,
        &[h],
    );
    let mut e = match decode(h0.envelope()).expect("envelope") {
        Value::Map(m) => m,
        _ => unreachable!(),
    };
    set(&mut e, "sigs", Value::Array(vec![]));
    g.att_err(
        "no-signatures",
        "An envelope with an empty sigs array.",
        encode(&Value::Map(e.clone())),
        ErrorCode::SignatureCount,
        &[h],
    );
    let sig = match e.get("body") {
        Some(_) => h0.envelope()[h0.envelope().len() - 64..].to_vec(),
        None => unreachable!(),
    };
    set(
        &mut e,
        "sigs",
        Value::Array(vec![Value::Bytes(sig.clone()); 3]),
    );
    g.att_err(
        "three-signatures",
        "An envelope with three signatures.",
        encode(&Value::Map(e)),
        ErrorCode::SignatureCount,
        &[h],
    );

    let mut flipped = h0.envelope().to_vec();
    let last = flipped.len() - 1;
    flipped[last - 40] ^= 0x01;
    g.att_err(
        "signature-bit-flipped",
        "The genesis signature with one bit flipped (in S).",
        flipped,
        ErrorCode::BadSignature,
        &[h],
    );
    let mut rflip = h0.envelope().to_vec();
    rflip[last - 63] ^= 0x80;
    g.att_err(
        "signature-r-bit-flipped",
        "The genesis signature with one bit flipped (in R).",
        rflip,
        ErrorCode::BadSignature,
        &[h],
    );
    g.att_err(
        "signed-by-wrong-key",
        "A genesis signed by a key other than the one it names.",
        seal_bytes(h0.body().to_vec(), &[other]),
        ErrorCode::BadSignature,
        &[h, other],
    );
    g.att_err(
        "rotate-new-key-signature-wrong",
        "A rotation whose second signature is not by the new key.",
        seal_bytes(rot.to_body(), &[h, other]),
        ErrorCode::BadSignature,
        &[h, h2, other],
    );
    // Signature over the bare body, without the domain-separation context.
    use ed25519_dalek::Signer;
    let raw_sig = h.sk.sign(h0.body()).to_bytes();
    let mut env = Map::new();
    env.insert("body", Value::Bytes(h0.body().to_vec()));
    env.insert("sigs", Value::Array(vec![Value::Bytes(raw_sig.to_vec())]));
    g.att_err(
        "signature-without-context",
        "A signature over the body bytes alone, without the context prefix.",
        encode(&Value::Map(env)),
        ErrorCode::BadSignature,
        &[h],
    );
    // S + ℓ: the same signature with a non-canonical scalar.
    let mut s_plus_l = h0.envelope().to_vec();
    let s_at = s_plus_l.len() - 32;
    add_group_order(&mut s_plus_l[s_at..]);
    g.att_err(
        "signature-s-not-reduced",
        "The genesis signature with S replaced by S + ℓ (a malleated, non-canonical scalar).",
        s_plus_l,
        ErrorCode::BadSignature,
        &[h],
    );
}

/// Adds the group order ℓ to a 32-byte little-endian scalar in place.
fn add_group_order(s: &mut [u8]) {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for (b, l) in s.iter_mut().zip(L) {
        let sum = u16::from(*b) + u16::from(l) + carry;
        *b = sum as u8;
        carry = sum >> 8;
    }
}

fn chains(
    g: &mut Gen,
    [h, h2, hb, p, other]: [&Key; 5],
    [h0, h1, h2a, h3, h4]: [&Attestation; 5],
    p0: &Attestation,
    hs: &HandlerSchema,
) {
    let keys = [h, h2];
    g.chain_ok(
        "handler-lifecycle",
        "register → update → rotate → update (new key) → revoke.",
        &[h0, h1, h2a, h3, h4],
        &keys,
    );
    g.chain_ok(
        "genesis-only",
        "A chain of one register statement.",
        &[h0],
        &[h],
    );
    g.chain_ok(
        "rotated-not-revoked",
        "register → update → rotate: the current key is the rotated one.",
        &[h0, h1, h2a],
        &keys,
    );
    let same_time = sign(
        &after(h0, h, Action::Update(Schema::Handler(hs.clone())), T0),
        h,
    );
    g.chain_ok(
        "equal-timestamps",
        "Two statements with the same issued_at (allowed: not decreasing).",
        &[h0, &same_time],
        &[h],
    );
    g.chain_ok(
        "plugin-genesis",
        "A plugin chain of one statement.",
        &[p0],
        &[p],
    );

    let e = |atts: &[&Attestation]| {
        atts.iter()
            .map(|a| a.envelope().to_vec())
            .collect::<Vec<_>>()
    };
    let run = |g: &mut Gen, name: &str, d: &str, v: Vec<Vec<u8>>, code, index, keys: &[&Key]| {
        let r: Vec<&[u8]> = v.iter().map(|b| b.as_slice()).collect();
        g.chain_err(name, d, &r, code, index, keys);
    };
    run(
        g,
        "empty",
        "A chain with no statements.",
        vec![],
        ErrorCode::EmptyChain,
        0,
        &[],
    );
    run(
        g,
        "starts-with-update",
        "A chain whose first statement is an update.",
        e(&[h1]),
        ErrorCode::NotGenesis,
        0,
        &[h],
    );
    let hb0 = sign(&register(hb, Schema::Handler(hs.clone()), T0), hb);
    let hb1 = sign(
        &after(
            &hb0,
            hb,
            Action::Update(Schema::Handler(hs.clone())),
            T0 + 1,
        ),
        hb,
    );
    run(
        g,
        "other-subject",
        "The second statement is about another handler.",
        e(&[h0, &hb1]),
        ErrorCode::SubjectMismatch,
        1,
        &[h, hb],
    );
    let cross = sign(
        &Statement {
            family: Family::Plugin,
            ..after(
                h0,
                h,
                Action::Update(Schema::Plugin(PluginSchema::new("x", "1.0.0"))),
                T0 + 1,
            )
        },
        h,
    );
    run(
        g,
        "plugin-statement-in-handler-chain",
        "A plugin.update about the handler's own ID in its handler chain.",
        e(&[h0, &cross]),
        ErrorCode::FamilyMismatch,
        1,
        &[h],
    );
    run(
        g,
        "skips-seq-1",
        "register followed directly by seq 2.",
        e(&[h0, h2a]),
        ErrorCode::SeqGap,
        1,
        &[h, h2],
    );
    let mut wrong_prev = after(h0, h, Action::Update(Schema::Handler(hs.clone())), T0 + 1);
    wrong_prev.prev = Some(crate::AttestationId([0x11; 32]));
    let wp = sign(&wrong_prev, h);
    run(
        g,
        "prev-not-head",
        "seq 1 whose prev is not the genesis ID.",
        e(&[h0, &wp]),
        ErrorCode::PrevMismatch,
        1,
        &[h],
    );
    let old_key = sign(
        &after(
            h2a,
            h,
            Action::Update(Schema::Handler(hs.clone())),
            T0 + 3000,
        ),
        h,
    );
    run(
        g,
        "old-key-after-rotate",
        "An update signed by the key that was rotated away.",
        e(&[h0, h1, h2a, &old_key]),
        ErrorCode::WrongSigner,
        3,
        &keys,
    );
    let outsider = sign(
        &after(
            h0,
            other,
            Action::Update(Schema::Handler(hs.clone())),
            T0 + 1,
        ),
        other,
    );
    run(
        g,
        "outsider-update",
        "An update signed by a key that never held the handler.",
        e(&[h0, &outsider]),
        ErrorCode::WrongSigner,
        1,
        &[h, other],
    );
    run(
        g,
        "outsider-at-taken-seq",
        "A statement for seq 1 signed by a key that never held the handler: not evidence against the handler's key.",
        e(&[h0, h1, &outsider]),
        ErrorCode::WrongSigner,
        2,
        &[h, other],
    );
    let back = sign(
        &after(h1, h, Action::Update(Schema::Handler(hs.clone())), T0 + 999),
        h,
    );
    run(
        g,
        "time-goes-back",
        "seq 2 issued 1 ms before seq 1.",
        e(&[h0, h1, &back]),
        ErrorCode::TimeRegression,
        2,
        &[h],
    );
    let zombie = sign(
        &after(
            h4,
            h2,
            Action::Update(Schema::Handler(hs.clone())),
            T0 + 5000,
        ),
        h2,
    );
    run(
        g,
        "update-after-revoke",
        "An update after the revocation.",
        e(&[h0, h1, h2a, h3, h4, &zombie]),
        ErrorCode::AfterRevoke,
        5,
        &keys,
    );
    let fork = sign(
        &after(
            h0,
            h,
            Action::Revoke {
                reason: Some("fork".into()),
            },
            T0 + 1,
        ),
        h,
    );
    run(
        g,
        "equivocation-seq-1",
        "Two different statements for seq 1, both signed by the genesis key.",
        e(&[h0, h1, &fork]),
        ErrorCode::Equivocation,
        2,
        &[h],
    );
    let mut other_gen_schema = hs.clone();
    other_gen_schema.version = "9.9.9".into();
    let gen2 = sign(&register(h, Schema::Handler(other_gen_schema), T0), h);
    run(
        g,
        "equivocation-genesis",
        "Two different register statements for the same handler.",
        e(&[h0, h1, &gen2]),
        ErrorCode::Equivocation,
        2,
        &[h],
    );
    run(
        g,
        "repeated-statement",
        "The same update twice.",
        e(&[h0, h1, h1]),
        ErrorCode::DuplicateStatement,
        2,
        &[h],
    );
    let mut broken = e(&[h0, h1, h2a]);
    let n = broken[2].len();
    broken[2][n - 1] ^= 0x01;
    run(
        g,
        "bad-signature-inside",
        "A chain whose third statement's signature is broken: the attestation rule and its index.",
        broken,
        ErrorCode::BadSignature,
        2,
        &keys,
    );
}
