"""Parsing a did:key exactly as spec/attestation.md, "Parsing a DID"
says, with its error codes."""

from __future__ import annotations

from .._did import _ALPHABET, _b58decode
from ._ed25519 import decode_point, small_order
from .error import AttestError

_PREFIX = "did:key:z"


def parse_did(text: str) -> bytes:
    """The 32-byte Ed25519 key a DID names. Raises AttestError with
    `did_syntax`, `did_base58`, `did_multicodec`, `did_length` or
    `weak_key`, the first check that fails, in the spec's order."""
    if len(text.encode("utf-8")) > 64:
        raise AttestError("did_syntax", "a DID is at most 64 bytes")
    if not text.startswith(_PREFIX):
        raise AttestError("did_syntax", f"{text!r} does not start with {_PREFIX}")
    rest = text[len(_PREFIX):]
    if any(c not in _ALPHABET for c in rest):
        raise AttestError("did_base58", f"{text!r} has a character outside base58btc")
    raw = _b58decode(rest)
    if len(raw) < 2 or raw[:2] != b"\xed\x01":
        raise AttestError("did_multicodec", f"{text!r} is not an ed25519-pub multicodec key")
    if len(raw) != 34:
        raise AttestError("did_length", f"{text!r} holds a key of {len(raw) - 2} bytes, not 32")
    key = raw[2:]
    point = decode_point(key)
    if point is None or small_order(point):
        raise AttestError("weak_key", f"{text!r} is not a canonical point of large order")
    return key
