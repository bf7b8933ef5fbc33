"""Verifying what pulse-ledger signs, strictly, as spec/attestation.md
says. So far: DIDs (`parse_did`), strict Ed25519 (`verify_strict`), the
canonical CBOR decoder (`cbor.decode`) and envelopes (`parse_envelope`);
statement bodies, schemas and chains are to follow (issue 21, item 3)."""

from . import cbor
from ._ed25519 import verify_strict
from .did import parse_did
from .envelope import Envelope, parse_envelope
from .error import AttestError

__all__ = ["AttestError", "Envelope", "cbor", "parse_did", "parse_envelope", "verify_strict"]
