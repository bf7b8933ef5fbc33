"""Verifying what pulse-ledger signs, strictly, as spec/attestation.md
says: DIDs (`parse_did`), strict Ed25519 (`verify_strict`), the
canonical CBOR decoder (`cbor.decode`), envelopes (`parse_envelope`), and
whole attestations (`verify_attestation`: body, schema and signatures),
attestation IDs and chains (`verify_chain`)."""

from . import cbor
from .chain import ChainError, ChainState, attestation_id, verify_chain
from ._ed25519 import verify_strict
from .did import parse_did
from .envelope import Envelope, parse_envelope
from .error import AttestError
from .statement import check_body, verify_attestation

__all__ = [
    "AttestError",
    "ChainError",
    "ChainState",
    "attestation_id",
    "verify_chain",
    "Envelope",
    "cbor",
    "check_body",
    "parse_did",
    "parse_envelope",
    "verify_attestation",
    "verify_strict",
]
