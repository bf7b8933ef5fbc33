"""Verifying what pulse-ledger signs, strictly, as spec/attestation.md
says: DIDs (`parse_did`), strict Ed25519 (`verify_strict`), the
canonical CBOR decoder (`cbor.decode`), envelopes (`parse_envelope`), and
whole attestations (`verify_attestation`: body, schema and signatures).
Chains are to follow (issue 21, item 3)."""

from . import cbor
from ._ed25519 import verify_strict
from .did import parse_did
from .envelope import Envelope, parse_envelope
from .error import AttestError
from .statement import check_body, verify_attestation

__all__ = [
    "AttestError",
    "Envelope",
    "cbor",
    "check_body",
    "parse_did",
    "parse_envelope",
    "verify_attestation",
    "verify_strict",
]
