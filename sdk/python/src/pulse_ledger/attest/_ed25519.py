"""Strict Ed25519 in pure Python (spec/attestation.md, "Strict
verification"): the semantics of ed25519-dalek's `verify_strict`, which
common Python libraries do not give (they accept small-order keys and R).
Slow (a few ms a signature) and meant for audits, not for hot paths.
"""

from __future__ import annotations

import hashlib

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)

# Extended coordinates (X, Y, Z, T) with x = X/Z, y = Y/Z, xy = T/Z.
IDENTITY = (0, 1, 1, 0)
_BY = 4 * pow(5, P - 2, P) % P


def _recover_x(y: int, sign: int) -> int | None:
    """x for y on the curve with the given sign bit, per RFC 8032 §5.1.3;
    None when there is none (or x = 0 with the sign bit set)."""
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P != 0:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P != 0:
        return None
    if x & 1 != sign:
        x = P - x
    return x


B = (_recover_x(_BY, 0), _BY, 1, _recover_x(_BY, 0) * _BY % P)  # type: ignore[operator]


def decode_point(b: bytes) -> tuple[int, int, int, int] | None:
    """The point a 32-byte encoding names, or None if it is not a
    canonical encoding of a curve point (y >= p, no x, or x = 0 with the
    sign bit set)."""
    if len(b) != 32:
        return None
    n = int.from_bytes(b, "little")
    y = n & ((1 << 255) - 1)
    sign = n >> 255
    if y >= P:
        return None
    x = _recover_x(y, sign)
    if x is None:
        return None
    return (x, y, 1, x * y % P)


def encode_point(pt: tuple[int, int, int, int]) -> bytes:
    x, y, z, _ = pt
    zi = pow(z, P - 2, P)
    x, y = x * zi % P, y * zi % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def add(p1: tuple[int, int, int, int], p2: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = 2 * t1 * t2 * D % P
    d = 2 * z1 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(k: int, pt: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    q = IDENTITY
    while k:
        if k & 1:
            q = add(q, pt)
        pt = add(pt, pt)
        k >>= 1
    return q


def _is_identity(pt: tuple[int, int, int, int]) -> bool:
    x, y, z, _ = pt
    return x % P == 0 and (y - z) % P == 0


def small_order(pt: tuple[int, int, int, int]) -> bool:
    """Whether [8]P is the identity."""
    return _is_identity(_mul(8, pt))


def verify_strict(public: bytes, message: bytes, signature: bytes) -> bool:
    """Whether `signature` is a strictly valid Ed25519 signature by the
    32-byte key `public` over `message`: S < L; R and A canonical and not
    of small order; [S]B = R + [k]A, cofactorless."""
    if len(signature) != 64 or len(public) != 32:
        return False
    r_bytes, s_bytes = signature[:32], signature[32:]
    s = int.from_bytes(s_bytes, "little")
    if s >= L:
        return False
    a = decode_point(public)
    r = decode_point(r_bytes)
    if a is None or r is None or small_order(a) or small_order(r):
        return False
    k = int.from_bytes(hashlib.sha512(r_bytes + public + message).digest(), "little") % L
    neg_a = ((P - a[0]) % P, a[1], a[2], (P - a[3]) % P)
    check = add(_mul(s, B), _mul(k, neg_a))
    return encode_point(check) == r_bytes
