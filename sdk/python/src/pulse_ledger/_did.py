"""did:key text for ed25519 keys (spec/attestation.md, "Identities")."""

from __future__ import annotations

_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX = {c: i for i, c in enumerate(_ALPHABET)}
# The multicodec prefix of an ed25519 public key.
_ED25519 = b"\xed\x01"
_PREFIX = "did:key:z"


def _b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_ALPHABET[r])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(out))


def _b58decode(text: str) -> bytes:
    n = 0
    for c in text:
        if c not in _INDEX:
            raise ValueError(f"{c!r} is not a base58btc digit")
        n = n * 58 + _INDEX[c]
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    zeros = len(text) - len(text.lstrip("1"))
    return b"\0" * zeros + body


def did_from_public_key(key: bytes) -> str:
    """The did:key of a 32-byte ed25519 public key."""
    if len(key) != 32:
        raise ValueError("an ed25519 public key is 32 bytes")
    return _PREFIX + _b58encode(_ED25519 + key)


def public_key_from_did(did: str) -> bytes:
    """The 32-byte ed25519 public key a did:key names.

    Raises ValueError for anything but the one canonical did:key text of
    an ed25519 key.
    """
    if not did.startswith(_PREFIX):
        raise ValueError(f"{did!r} is not a did:key in base58btc (did:key:z…)")
    raw = _b58decode(did[len(_PREFIX):])
    if len(raw) != 34 or raw[:2] != _ED25519:
        raise ValueError(f"{did!r} is not an ed25519 did:key")
    if did_from_public_key(raw[2:]) != did:
        raise ValueError(f"{did!r} is not in canonical form")
    return raw[2:]
