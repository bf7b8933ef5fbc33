"""The canonical CBOR decoder of spec/attestation.md ("Decoding"): it
accepts exactly the bytes the encoding rules produce, reads the input once,
and stops at the first problem with its code (`malformed_cbor`,
`non_canonical_cbor`, `forbidden_cbor_type`, `duplicate_key`).

Values: int (uint), bytes, str, list, and dict (text keys, in order)."""

from __future__ import annotations

from typing import Any

from .error import AttestError

MAX_DEPTH = 8


def _fail(code: str, message: str) -> AttestError:
    return AttestError(code, message)


def _key_order(a: str, b: str) -> int:
    """<0, 0, >0 as text key `a` sorts before, equal to, after `b`: by UTF-8
    length, then bytes."""
    ab, bb = a.encode("utf-8"), b.encode("utf-8")
    if len(ab) != len(bb):
        return len(ab) - len(bb)
    return (ab > bb) - (ab < bb)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.data) - self.at:
            raise _fail("malformed_cbor", f"{what}: {n} bytes needed, {len(self.data) - self.at} left")
        b = self.data[self.at:self.at + n]
        self.at += n
        return b

    def item(self, depth: int) -> Any:
        if self.at >= len(self.data):
            raise _fail("malformed_cbor", "an item is missing: no byte left")
        initial = self.data[self.at]
        self.at += 1
        major, info = initial >> 5, initial & 0x1F
        if major == 7:
            if info == 31 or 28 <= info <= 30:
                raise _fail("malformed_cbor", f"byte 0x{initial:02x} is not an item")
            raise _fail("forbidden_cbor_type", "simple values, booleans, null and floats are not allowed")
        if info < 24:
            arg = info
        elif info <= 27:
            size = 1 << (info - 24)
            arg = int.from_bytes(self.take(size, "an item's argument"), "big")
            if arg < (24, 256, 65536, 2**32)[info - 24]:
                raise _fail("non_canonical_cbor", "an argument not in its shortest form")
        elif info == 31 and major in (2, 3, 4, 5):
            raise _fail("non_canonical_cbor", "indefinite lengths are not allowed")
        else:
            raise _fail("malformed_cbor", f"byte 0x{initial:02x} has a reserved argument")
        if major == 0:
            return arg
        if major == 1:
            raise _fail("forbidden_cbor_type", "negative integers are not allowed")
        if major in (2, 3):
            raw = self.take(arg, "a string")
            if major == 2:
                return raw
            try:
                return raw.decode("utf-8", errors="strict")
            except UnicodeDecodeError:
                raise _fail("malformed_cbor", "a text string is not valid UTF-8") from None
        if major in (4, 5):
            if depth >= MAX_DEPTH:
                raise _fail("malformed_cbor", "more than 8 levels of nesting")
            if arg > len(self.data) - self.at:
                raise _fail("malformed_cbor", "a container longer than the bytes left")
            if major == 4:
                return [self.item(depth + 1) for _ in range(arg)]
            out: dict[str, Any] = {}
            previous: str | None = None
            for _ in range(arg):
                key = self.item(depth + 1)
                if not isinstance(key, str):
                    raise _fail("forbidden_cbor_type", "a map key that is not a text string")
                if previous is not None:
                    order = _key_order(key, previous)
                    if order == 0:
                        raise _fail("duplicate_key", f"the key {key!r} occurs twice")
                    if order < 0:
                        raise _fail("non_canonical_cbor", f"the key {key!r} is out of order")
                previous = key
                out[key] = self.item(depth + 1)
            return out
        raise _fail("forbidden_cbor_type", "tags are not allowed")


def decode(data: bytes) -> Any:
    """The one item `data` encodes canonically."""
    r = _Reader(data)
    value = r.item(0)
    if r.at != len(data):
        raise _fail("malformed_cbor", f"{len(data) - r.at} bytes after the item")
    return value
