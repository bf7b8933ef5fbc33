//! Property tests of the pure core: any valid statement signs, verifies and
//! round-trips byte for byte; any reordering of a valid chain fails; the
//! incremental chain API agrees with `verify_chain`.

#![allow(clippy::unwrap_used)] // test code: a panic is a failure report

use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use pulse_ledger::{
    Action, Attestation, ChainState, Did, ErrorCode, Family, HandlerSchema, PluginSchema, Schema,
    Statement, sign_statement, verify_attestation, verify_chain,
};

fn key(seed: u8) -> (SigningKey, Did) {
    let sk = SigningKey::from_bytes(&[seed; 32]);
    let did = Did::from_verifying_key(&sk.verifying_key()).unwrap();
    (sk, did)
}

prop_compose! {
    fn handler_schema()(
        name in "[a-z0-9][a-z0-9._-]{0,63}",
        (major, minor, patch) in (0u64..1000, 0u64..1000, 0u64..1000),
        pre in proptest::option::of("[a-z][a-z0-9]{0,8}"),
        timeout_ms in proptest::option::of(1u64..=86_400_000),
        max_attempts in proptest::option::of(1u32..=100),
        max_cost in proptest::option::of(1u64..=(1u64 << 53) - 1),
        max_concurrency in proptest::option::of(1u32..=100_000),
        description in proptest::option::of("[ -~\n\t]{1,200}"),
        code in proptest::option::of(proptest::collection::vec(any::<u8>(), 1..2000)),
        input_obj in any::<bool>(),
    ) -> HandlerSchema {
        let mut s = HandlerSchema::new(name, match pre {
            Some(p) => format!("{major}.{minor}.{patch}-{p}"),
            None => format!("{major}.{minor}.{patch}"),
        }, key(200).1);
        s.timeout_ms = timeout_ms;
        s.max_attempts = max_attempts;
        s.max_cost = max_cost;
        s.max_concurrency = max_concurrency;
        s.description = description;
        s.code = code;
        s.input_schema = input_obj.then(|| r#"{"type":"object"}"#.to_owned());
        s
    }
}

fn chain_of(schemas: &[HandlerSchema], rotate_at: Option<usize>) -> Vec<Attestation> {
    let (sk, did) = key(1);
    let (sk2, did2) = key(2);
    let mut out: Vec<Attestation> = Vec::new();
    let mut signer = (&sk, did.clone());
    for (i, schema) in schemas.iter().enumerate() {
        let action = if i == 0 {
            Action::Register(Schema::Handler(schema.clone()))
        } else if Some(i) == rotate_at {
            Action::Rotate {
                new_key: did2.clone(),
            }
        } else {
            Action::Update(Schema::Handler(schema.clone()))
        };
        let st = Statement {
            family: Family::Handler,
            subject: did.clone(),
            signer: signer.1.clone(),
            seq: i as u64,
            prev: out.last().map(|a| a.id()),
            issued_at: 1_000 + i as u64,
            action,
        };
        let rotating = matches!(st.action, Action::Rotate { .. });
        out.push(sign_statement(&st, signer.0, rotating.then_some(&sk2)).unwrap());
        if rotating {
            signer = (&sk2, did2.clone());
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_valid_handler_statement_round_trips(schema in handler_schema(), issued_at in 0u64..(1u64 << 53)) {
        let (sk, did) = key(1);
        let st = Statement {
            family: Family::Handler,
            subject: did.clone(),
            signer: did,
            seq: 0,
            prev: None,
            issued_at,
            action: Action::Register(Schema::Handler(schema)),
        };
        let att = sign_statement(&st, &sk, None).unwrap();
        let again = verify_attestation(att.envelope()).unwrap();
        prop_assert_eq!(again.statement(), &st);
        prop_assert_eq!(st.to_body(), again.body().to_vec());
    }

    #[test]
    fn any_valid_plugin_statement_round_trips(
        name in "[a-z0-9][a-z0-9._-]{0,63}",
        protocol in 1u64..=1000,
        host in proptest::option::of("[a-z]{1,20}(:[0-9]{1,5})?"),
    ) {
        let (sk, did) = key(3);
        let mut schema = PluginSchema::new(name, "1.0.0");
        schema.protocol = protocol;
        schema.endpoint = host.map(|h| format!("https://{h}"));
        let st = Statement {
            family: Family::Plugin,
            subject: did.clone(),
            signer: did,
            seq: 0,
            prev: None,
            issued_at: 5,
            action: Action::Register(Schema::Plugin(schema)),
        };
        let att = sign_statement(&st, &sk, None).unwrap();
        let again = verify_attestation(att.envelope()).unwrap();
        prop_assert_eq!(again.statement(), &st);
    }

    #[test]
    fn valid_chains_verify_and_any_reordering_fails(
        schemas in proptest::collection::vec(handler_schema(), 2..6),
        rotate in any::<proptest::sample::Index>(),
        swap in (any::<proptest::sample::Index>(), any::<proptest::sample::Index>()),
    ) {
        let rotate_at = 1 + rotate.index(schemas.len() - 1);
        let chain = chain_of(&schemas, Some(rotate_at));
        let envs: Vec<&[u8]> = chain.iter().map(|a| a.envelope()).collect();
        let state = verify_chain(&envs).unwrap();
        prop_assert_eq!(state.seq as usize, chain.len() - 1);
        prop_assert_eq!(state.head, chain.last().unwrap().id());
        prop_assert_eq!(state.key, key(2).1);

        let (a, b) = (swap.0.index(envs.len()), swap.1.index(envs.len()));
        prop_assume!(a != b);
        let mut swapped = envs.clone();
        swapped.swap(a, b);
        let err = verify_chain(&swapped).unwrap_err();
        prop_assert_eq!(err.index, a.min(b), "{}", err);

        // Dropping any statement but the last breaks the chain where it was.
        let drop = a.min(b);
        let mut dropped = envs.clone();
        dropped.remove(drop);
        if drop < envs.len() - 1 {
            let err = verify_chain(&dropped).unwrap_err();
            prop_assert_eq!(err.index, drop);
        }
    }
}

#[test]
fn incremental_apply_matches_verify_chain_and_leaves_state_unchanged_on_error() {
    let schemas: Vec<HandlerSchema> = (0..4)
        .map(|i| HandlerSchema::new("h", format!("1.0.{i}"), key(200).1))
        .collect();
    let chain = chain_of(&schemas, Some(2));
    let mut state = ChainState::genesis(&chain[0]).unwrap();
    for att in &chain[1..] {
        state.apply(att).unwrap();
    }
    let envs: Vec<&[u8]> = chain.iter().map(|a| a.envelope()).collect();
    assert_eq!(state, verify_chain(&envs).unwrap());

    let before = state.clone();
    assert_eq!(
        state.apply(&chain[3]).unwrap_err().code(),
        ErrorCode::DuplicateStatement
    );
    assert_eq!(
        state.apply(&chain[1]).unwrap_err().code(),
        ErrorCode::SeqGap
    );
    assert_eq!(state, before, "a rejected statement changes nothing");

    // A different statement at the head's seq is an equivocation.
    let (sk2, did2) = key(2);
    let fork = Statement {
        family: Family::Handler,
        subject: key(1).1,
        signer: did2,
        seq: 3,
        prev: Some(chain[2].id()),
        issued_at: 9_999,
        action: Action::Revoke { reason: None },
    };
    let fork = sign_statement(&fork, &sk2, None).unwrap();
    // apply alone cannot tell a fork from a replay without history …
    assert_eq!(state.apply(&fork).unwrap_err().code(), ErrorCode::SeqGap);
    // … the statement already at that seq can.
    assert_eq!(
        pulse_ledger::repeated_seq(&chain[3], &fork).code(),
        ErrorCode::Equivocation
    );
    let (sk1, did1) = key(1);
    let outsider = Statement {
        signer: did1,
        ..fork.statement().clone()
    };
    let outsider = sign_statement(&outsider, &sk1, None).unwrap();
    assert_eq!(
        pulse_ledger::repeated_seq(&chain[3], &outsider).code(),
        ErrorCode::WrongSigner,
        "a key that did not sign seq 3 cannot equivocate it"
    );
    assert_eq!(
        ChainState::genesis(&chain[1]).unwrap_err().code(),
        ErrorCode::NotGenesis
    );
}
