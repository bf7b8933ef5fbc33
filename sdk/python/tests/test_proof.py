"""The session proof against every session-proof vector of spec/vectors:
the message layout byte for byte, the signature, and the did:key text."""

import json
import pathlib

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pulse_ledger import Key
from pulse_ledger._did import did_from_public_key, public_key_from_did
from pulse_ledger.proof import Announcement, proof_message

VECTORS = pathlib.Path(__file__).resolve().parents[3] / "spec" / "vectors"
CASES = sorted(VECTORS.glob("session-proof-*.json"))


def load(path):
    v = json.loads(path.read_text())
    a = v["announcement"]
    announcement = Announcement(
        plugin=a["plugin"],
        key=a["key"],
        handlers=[(h["id"], h["name"]) for h in a["handlers"]],
        serves_any=a["serves_any"],
    )
    return v, announcement


def test_there_are_vectors():
    assert len(CASES) >= 7


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_keys_and_dids_match(path):
    v, _ = load(path)
    for k in v["keys"]:
        key = Key.from_seed(bytes.fromhex(k["seed"]))
        assert key.did == k["did"]
        assert did_from_public_key(public_key_from_did(k["did"])) == k["did"]


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_the_proof_holds_exactly_when_the_vector_says(path):
    v, a = load(path)
    nonce = bytes.fromhex(v["nonce"])
    signature = bytes.fromhex(v["signature"])
    try:
        message = proof_message(nonce, a)
        for h_id, _ in a.handlers:
            if h_id:
                public_key_from_did(h_id)
        public_key_from_did(a.plugin)
        public = Ed25519PublicKey.from_public_bytes(public_key_from_did(a.key))
        public.verify(signature, message)
        ok, code = True, None
    except ValueError:
        ok, code = False, "bad_announcement"
    except InvalidSignature:
        ok, code = False, "bad_proof"
    assert ok == v["expect"]["ok"], v["description"]
    if ok:
        assert message.hex() == v["expect"]["message"]
        # The SDK signs the same bytes: ed25519 is deterministic.
        seed = next(k["seed"] for k in v["keys"] if k["did"] == a.key)
        assert Key.from_seed(bytes.fromhex(seed)).sign(message) == signature
    else:
        assert code == v["expect"]["code"], v["description"]


def test_dids_are_strict():
    for bad in ["did:key:z", "did:key:x6Mk", "did:web:example.com", "did:key:z0OIl"]:
        with pytest.raises(ValueError):
            public_key_from_did(bad)
