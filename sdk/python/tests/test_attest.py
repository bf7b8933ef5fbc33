"""Strict verification in Python against spec/vectors: DIDs, and strict
Ed25519 against RFC 8032's vectors and the cases verify_strict refuses."""

import hashlib
import json
import os
import pathlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pulse_ledger.attest import AttestError, parse_did, verify_strict
from pulse_ledger.attest._ed25519 import L, encode_point, small_order, decode_point

VECTORS = pathlib.Path(__file__).resolve().parents[3] / "spec" / "vectors"
DIDS = [p for p in sorted(VECTORS.glob("did-*.json")) if json.loads(p.read_text())["type"] == "did"]


def test_there_are_did_vectors():
    assert len(DIDS) >= 10


@pytest.mark.parametrize("path", DIDS, ids=lambda p: p.stem)
def test_did_vectors(path):
    v = json.loads(path.read_text())
    if v["expect"]["ok"]:
        assert parse_did(v["input"]).hex() == v["expect"]["public_key"]
    else:
        with pytest.raises(AttestError) as e:
            parse_did(v["input"])
        assert e.value.code == v["expect"]["code"], v["description"]


# RFC 8032 §7.1, tests 1 to 3: (public key, message, signature).
RFC8032 = [
    ("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
    ("fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"),
]


@pytest.mark.parametrize("public,message,signature", RFC8032)
def test_rfc8032_signatures_verify(public, message, signature):
    pk, msg, sig = bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature)
    assert verify_strict(pk, msg, sig)
    assert not verify_strict(pk, msg + b"x", sig)
    # S + L is the same signature unreduced: refused.
    s = int.from_bytes(sig[32:], "little") + L
    assert not verify_strict(pk, msg, sig[:32] + s.to_bytes(32, "little"))


def test_signatures_by_cryptography_verify_and_tampering_is_caught():
    for i in range(5):
        sk = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(bytes([i])).digest())
        pk = sk.public_key().public_bytes_raw()
        msg = os.urandom(40)
        sig = sk.sign(msg)
        assert verify_strict(pk, msg, sig)
        flipped = bytes([sig[0] ^ 1]) + sig[1:]
        assert not verify_strict(pk, msg, flipped)


def test_small_order_keys_and_r_are_refused():
    # The identity as R and A with S = 0 satisfies [S]B = R + [k]A for any
    # message under the cofactorless equation: strict verification refuses.
    identity = bytes.fromhex("01" + "00" * 31)
    assert small_order(decode_point(identity))
    assert not verify_strict(identity, b"anything", identity + bytes(32))
    # A non-canonical y (y >= p) does not decode.
    assert decode_point(bytes.fromhex("ed" + "ff" * 30 + "7f")) is None
    # Encoding round-trips a decoded point.
    pk = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    assert encode_point(decode_point(pk)) == pk


from pulse_ledger.attest import cbor, parse_envelope  # noqa: E402

ATTESTATIONS = sorted(VECTORS.glob("attestation-*.json"))
CBOR_CODES = {"malformed_cbor", "non_canonical_cbor", "forbidden_cbor_type", "duplicate_key"}


def _vector(path):
    return json.loads(path.read_text())


@pytest.mark.parametrize(
    "path",
    [p for p in ATTESTATIONS if p.stem.startswith(("attestation-envelope", "attestation-too"))],
    ids=lambda p: p.stem,
)
def test_envelope_vectors_fail_with_their_code(path):
    v = _vector(path)
    with pytest.raises(AttestError) as e:
        parse_envelope(bytes.fromhex(v["input"]))
    assert e.value.code == v["expect"]["code"], v["description"]


@pytest.mark.parametrize(
    "path",
    [p for p in ATTESTATIONS
     if p.stem.startswith("attestation-body") and _vector(p)["expect"].get("code") in CBOR_CODES],
    ids=lambda p: p.stem,
)
def test_bodies_that_are_not_canonical_cbor_fail_with_their_code(path):
    v = _vector(path)
    envelope = parse_envelope(bytes.fromhex(v["input"]))
    with pytest.raises(AttestError) as e:
        cbor.decode(envelope.body)
    assert e.value.code == v["expect"]["code"], v["description"]


@pytest.mark.parametrize("path", [p for p in ATTESTATIONS if _vector(p)["expect"]["ok"]],
                         ids=lambda p: p.stem)
def test_valid_attestations_decode_and_their_first_signature_verifies(path):
    v = _vector(path)
    envelope = parse_envelope(bytes.fromhex(v["input"]))
    assert envelope.body.hex() == v["expect"]["body"]
    body = cbor.decode(envelope.body)
    signer = parse_did(body["signer"])
    from pulse_ledger.attest.envelope import CONTEXT

    assert verify_strict(signer, CONTEXT + envelope.body, envelope.sigs[0])
    assert not verify_strict(signer, CONTEXT + envelope.body + b"x", envelope.sigs[0])


def test_the_decoder_refuses_what_the_rules_refuse():
    cases = {
        b"": "malformed_cbor",
        b"\x18\x05": "non_canonical_cbor",
        b"\xf5": "forbidden_cbor_type",
        b"\xff": "malformed_cbor",
        b"\x20": "forbidden_cbor_type",
        b"\xc0\x00": "forbidden_cbor_type",
        b"\x5f": "non_canonical_cbor",
        b"\x1c": "malformed_cbor",
        b"\x62\xc3\x28": "malformed_cbor",
        b"\x00\x00": "malformed_cbor",
        b"\x81" * 9 + b"\x00": "malformed_cbor",
        b"\xa2\x61a\x00\x61a\x00": "duplicate_key",
        b"\xa2\x61b\x00\x61a\x00": "non_canonical_cbor",
        b"\xa1\x00\x00": "forbidden_cbor_type",
    }
    for data, code in cases.items():
        with pytest.raises(AttestError) as e:
            cbor.decode(data)
        assert e.value.code == code, data.hex()
    assert cbor.decode(b"\x81" * 8 + b"\x00") == [[[[[[[[0]]]]]]]]
    assert cbor.decode(b"\xa2\x61b\x00\x62aa\x01") == {"b": 0, "aa": 1}


from pulse_ledger.attest import verify_attestation  # noqa: E402


@pytest.mark.parametrize("path", ATTESTATIONS, ids=lambda p: p.stem)
def test_every_attestation_vector(path):
    v = _vector(path)
    data = bytes.fromhex(v["input"])
    if v["expect"]["ok"]:
        statement = verify_attestation(data)
        assert statement["subject"] == v["expect"]["statement"]["subject"]
        assert statement["kind"] == v["expect"]["statement"]["kind"]
    else:
        with pytest.raises(AttestError) as e:
            verify_attestation(data)
        assert e.value.code == v["expect"]["code"], v["description"]


from pulse_ledger.attest import ChainError, attestation_id, verify_chain  # noqa: E402

CHAINS = sorted(VECTORS.glob("chain-*.json"))


@pytest.mark.parametrize("path", [p for p in ATTESTATIONS if _vector(p)["expect"]["ok"]],
                         ids=lambda p: p.stem)
def test_attestation_ids_are_blake3_of_the_envelope(path):
    v = _vector(path)
    assert attestation_id(bytes.fromhex(v["input"])).hex() == v["expect"]["id"]


@pytest.mark.parametrize("path", CHAINS, ids=lambda p: p.stem)
def test_every_chain_vector(path):
    v = _vector(path)
    envelopes = [bytes.fromhex(h) for h in v["input"]]
    want = v["expect"]
    if want["ok"]:
        state = verify_chain(envelopes)
        s = want["state"]
        assert (state.subject, state.family, state.key, state.seq, state.head.hex(),
                state.issued_at, state.revoked) == (
            s["subject"], s["family"], s["key"], s["seq"], s["head"], s["issued_at"], s["revoked"])
        assert state.schema["name"] == s["schema"]["name"]
    else:
        with pytest.raises(ChainError) as e:
            verify_chain(envelopes)
        assert (e.value.code, e.value.index) == (want["code"], want["index"]), v["description"]
        if "equivocation" in want:
            assert [x.hex() for x in e.value.evidence] == want["equivocation"]
