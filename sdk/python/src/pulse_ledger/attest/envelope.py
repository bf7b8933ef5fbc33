"""An envelope's checks, in the order of spec/attestation.md
("Envelope"): a map of exactly `body` (bytes) and `sigs` (1 or 2
64-byte signatures), at most 65,536 bytes."""

from __future__ import annotations

from dataclasses import dataclass

from .cbor import decode
from .error import AttestError

MAX_ENVELOPE_BYTES = 65_536
#: What every signature covers: this prefix, then the body bytes.
CONTEXT = b"pulse-ledger/attestation/v1\x00"


@dataclass(frozen=True)
class Envelope:
    body: bytes
    sigs: list[bytes]


def parse_envelope(data: bytes) -> Envelope:
    """The envelope's body and signatures; AttestError with the first
    rule the bytes break."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise AttestError("too_large", f"an envelope is at most {MAX_ENVELOPE_BYTES} bytes")
    top = decode(data)
    if not isinstance(top, dict):
        raise AttestError("wrong_type", "an envelope is a map")
    for key in top:
        if key not in ("body", "sigs"):
            raise AttestError("unknown_field", f"an envelope has no field {key!r}")
    for key in ("body", "sigs"):
        if key not in top:
            raise AttestError("missing_field", f"the envelope has no {key}")
    body, sigs = top["body"], top["sigs"]
    if not isinstance(body, bytes):
        raise AttestError("wrong_type", "body is a byte string")
    if not isinstance(sigs, list):
        raise AttestError("wrong_type", "sigs is an array")
    if not 1 <= len(sigs) <= 2:
        raise AttestError("signature_count", f"{len(sigs)} signatures; an envelope has 1 or 2")
    for s in sigs:
        if not isinstance(s, bytes):
            raise AttestError("wrong_type", "a signature is a byte string")
        if len(s) != 64:
            raise AttestError("invalid_field", f"a signature is 64 bytes, not {len(s)}")
    return Envelope(body, sigs)
