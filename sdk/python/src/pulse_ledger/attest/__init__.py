"""Verifying what pulse-ledger signs, strictly, as spec/attestation.md
says. So far: DIDs (`parse_did`) and strict Ed25519 (`verify_strict`);
envelopes, statements and chains are to follow (issue 21, item 3)."""

from ._ed25519 import verify_strict
from .did import parse_did
from .error import AttestError

__all__ = ["AttestError", "parse_did", "verify_strict"]
