"""The session proof a plugin gives in Initialize (spec/plugin.md,
"Session proof"): an ed25519 signature over

    "pulse-ledger/plugin-session/v1" 0x00 ‖ nonce ‖ announcement
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

CONTEXT = b"pulse-ledger/plugin-session/v1\x00"
#: Most handlers one announcement lists.
MAX_ANNOUNCED = 10_000


@dataclass(frozen=True)
class Announcement:
    """Who the plugin is and which handlers it serves."""

    plugin: str
    key: str
    #: (id, name) pairs, in order; "" for an absent id or name.
    handlers: list[tuple[str, str]] = field(default_factory=list)
    serves_any: bool = False


def _text(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack(">I", len(b)) + b


def proof_message(nonce: bytes, a: Announcement) -> bytes:
    """The bytes the plugin's key signs for `nonce`."""
    if len(a.handlers) > MAX_ANNOUNCED:
        raise ValueError(f"an announcement lists at most {MAX_ANNOUNCED} handlers")
    out = bytearray(CONTEXT)
    out += nonce
    out += _text(a.plugin) + _text(a.key)
    out += b"\x01" if a.serves_any else b"\x00"
    out += struct.pack(">I", len(a.handlers))
    for hid, name in a.handlers:
        out += _text(hid) + _text(name)
    return bytes(out)
