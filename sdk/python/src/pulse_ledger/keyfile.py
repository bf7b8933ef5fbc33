"""The secret key file `pulse-ledger keygen` writes (one ed25519 seed):

    # pulse-ledger secret key: keep it private
    # did: did:key:z6Mk…
    PULSE-LEDGER-SECRET-KEY-1 <64 hex digits>

Lines starting with `#` and blank lines are ignored; exactly one key line
is required.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ._did import did_from_public_key

_TAG = "PULSE-LEDGER-SECRET-KEY-1"
_MAX_BYTES = 4096


@dataclass(frozen=True)
class Key:
    """An ed25519 signing key and its did:key."""

    private: Ed25519PrivateKey
    did: str

    def sign(self, message: bytes) -> bytes:
        """A 64-byte ed25519 signature (RFC 8032) over `message`."""
        return self.private.sign(message)

    @staticmethod
    def from_seed(seed: bytes) -> "Key":
        """The key of a 32-byte seed."""
        private = Ed25519PrivateKey.from_private_bytes(seed)
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return Key(private, did_from_public_key(public))


class KeyFileError(ValueError):
    """A key file that cannot be used, and why."""


def load_key(path: str | os.PathLike[str]) -> Key:
    """Reads a key file (see the module's documentation)."""
    with open(path, "rb") as f:
        data = f.read(_MAX_BYTES + 1)
    if len(data) > _MAX_BYTES:
        raise KeyFileError(f"{path}: not a key file: larger than {_MAX_BYTES} bytes")
    if data[:1] and 0xA0 <= data[0] <= 0xBF:
        raise KeyFileError(
            f"{path}: this is an attestation (CBOR), not a key file: "
            "give the file `pulse-ledger keygen` wrote"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not a key file: not UTF-8 text") from None
    keys = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        tag, _, rest = line.partition(" ")
        if tag != _TAG:
            raise KeyFileError(f"{path}: not a key file: a line is not `{_TAG} <hex>`")
        keys.append(rest.strip())
    if len(keys) != 1:
        raise KeyFileError(f"{path}: not a key file: {len(keys)} key lines, one is needed")
    try:
        seed = bytes.fromhex(keys[0])
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise KeyFileError(f"{path}: not a key file: the key is not 64 hex digits")
    return Key.from_seed(seed)
