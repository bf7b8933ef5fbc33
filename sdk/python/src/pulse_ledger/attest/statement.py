"""A statement body's checks, in the order of spec/attestation.md
("Checking a body", "Schemas", "Value rules"), and the checks of a whole
attestation ("Verifying an attestation")."""

from __future__ import annotations

import json
import re
from typing import Any

from ._ed25519 import verify_strict
from .cbor import decode
from .did import parse_did
from .envelope import CONTEXT, parse_envelope
from .error import AttestError

MAX_SAFE = 2**53 - 1
KINDS = {
    f"{family}.{verb}"
    for family in ("handler", "plugin")
    for verb in ("register", "update", "rotate", "revoke")
}
FIELDS = ("v", "kind", "subject", "signer", "seq", "prev", "issued_at", "schema", "new_key", "reason")
#: Which body fields each verb allows; required ones first.
ALLOWED = {
    "register": {"v", "kind", "subject", "signer", "seq", "issued_at", "schema"},
    "update": {"v", "kind", "subject", "signer", "seq", "prev", "issued_at", "schema"},
    "rotate": {"v", "kind", "subject", "signer", "seq", "prev", "issued_at", "new_key"},
    "revoke": {"v", "kind", "subject", "signer", "seq", "prev", "issued_at", "reason"},
}
REQUIRED_ORDER = ("subject", "signer", "seq", "prev", "issued_at", "schema", "new_key")
HANDLER_FIELDS = {
    "name", "version", "plugin", "input_schema", "output_schema", "timeout_ms", "max_attempts",
    "max_cost", "max_concurrency", "description", "code", "access", "network",
}
PLUGIN_FIELDS = {"name", "version", "protocol", "endpoint", "description"}
RIGHTS = ("enqueue", "read", "cancel", "budget")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}\Z")
_IDENT = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_SEMVER = re.compile(
    r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    rf"(?:-{_IDENT}(?:\.{_IDENT})*)?"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?\Z"
)


def _err(code: str, message: str) -> AttestError:
    return AttestError(code, message)


def _uint(value: Any, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _err("wrong_type", f"{field} is a uint")
    return value


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise _err("wrong_type", f"{field} is a text string")
    return value


def _did(value: Any, field: str) -> str:
    parse_did(_text(value, field))
    return value


def _prose(text: str, limit: int, field: str) -> None:
    n = len(text.encode("utf-8"))
    if not 1 <= n <= limit:
        raise _err("invalid_field", f"{field} is 1..{limit} bytes")
    for c in text:
        o = ord(c)
        if (o < 0x20 or 0x7F <= o <= 0x9F) and c not in "\t\n":
            raise _err("invalid_field", f"{field} holds a control character")


def _name(value: Any, field: str = "name") -> None:
    if not _NAME.match(_text(value, field)) or len(value.encode("utf-8")) > 64:
        raise _err("invalid_field", f"{field} does not match [a-z0-9][a-z0-9._-]{{0,63}}")


def _version(value: Any) -> None:
    text = _text(value, "version")
    m = _SEMVER.match(text) if len(text.encode("utf-8")) <= 64 else None
    if m is None or any(int(g) > 2**64 - 1 for g in m.groups()[:3]):
        raise _err("invalid_field", "version is not a SemVer 2.0.0 version")


_NUMBER = re.compile(r"-?([0-9]+)(?:\.([0-9]+))?(?:[eE]([+-]?)([0-9]+))?")


def _numbers_in_range(text: str) -> bool:
    """The number range rule, on every number token outside strings."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            continue
        if c == "-" or c.isdigit():
            m = _NUMBER.match(text, i)
            if m is None:
                return False
            ipart, fpart, sign, exp = m.group(1), m.group(2) or "", m.group(3), m.group(4)
            i = m.end()
            if exp is not None and len(exp.lstrip("0")) > 4:
                return False
            digits = ipart + fpart
            first = next((k for k, d in enumerate(digits) if d != "0"), None)
            if first is None:
                continue
            e = int(exp) if exp is not None else 0
            adjusted = len(ipart) - 1 - first + (-e if sign == "-" else e)
            if not -300 <= adjusted <= 300:
                return False
            continue
        i += 1
    return True


def _json_schema_document(value: Any, field: str) -> None:
    text = _text(value, field)
    if len(text.encode("utf-8")) > 16_384:
        raise _err("invalid_field", f"{field} is at most 16,384 bytes")
    if text.startswith("\ufeff") or not _numbers_in_range(text):
        raise _err("invalid_field", f"{field} is not a JSON Schema document")

    def depth_ok(v: Any, d: int = 0) -> bool:
        if isinstance(v, (list, dict)):
            if d >= 127:
                return False
            items = v.values() if isinstance(v, dict) else v
            return all(depth_ok(x, d + 1) for x in items)
        return True

    try:
        doc = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
        json.dumps(doc, ensure_ascii=False).encode("utf-8")  # lone surrogates fail here
    except (ValueError, RecursionError, UnicodeEncodeError):
        raise _err("invalid_field", f"{field} is not JSON") from None
    if not (isinstance(doc, dict) or doc is True or doc is False) or not depth_ok(doc):
        raise _err("invalid_field", f"{field} is not a JSON Schema document")


def _endpoint(value: Any) -> None:
    text = _text(value, "endpoint")
    b = text.encode("utf-8")
    rest = text[8:] if text.startswith("https://") else text[7:] if text.startswith("http://") else None
    if (
        len(b) > 256
        or any(not 0x21 <= x <= 0x7E for x in b)
        or rest is None
        or not rest
        or rest.startswith("/")
    ):
        raise _err("invalid_field", "endpoint is not an http:// or https:// address")


def _access(value: Any) -> None:
    if not isinstance(value, dict):
        raise _err("wrong_type", "access is a map")
    for key in value:
        if key not in RIGHTS:
            raise _err("unknown_field", f"access has no right {key!r}")
    for right in RIGHTS:
        if right not in value:
            continue
        members = value[right]
        if not isinstance(members, list):
            raise _err("wrong_type", f"access.{right} is an array")
        if len(members) > 64:
            raise _err("invalid_field", f"access.{right} has more than 64 members")
        seen: list[str] = []
        for m in members:
            _text(m, f"a member of access.{right}")
            if m not in ("owner", "tokens"):
                parse_did(m)
            if m in seen:
                raise _err("invalid_field", f"access.{right} names {m!r} twice")
            seen.append(m)


def check_handler_schema(s: Any) -> None:
    if not isinstance(s, dict):
        raise _err("wrong_type", "schema is a map")
    for key in s:
        if key not in HANDLER_FIELDS:
            raise _err("unknown_field", f"a handler schema has no field {key!r}")
    for key in ("name", "version", "plugin"):
        if key not in s:
            raise _err("missing_field", f"the schema has no {key}")
    if "code" in s:
        if not isinstance(s["code"], bytes):
            raise _err("wrong_type", "code is a byte string")
        if not 1 <= len(s["code"]) <= 49_152:
            raise _err("invalid_field", "code is 1..49,152 bytes")
    _name(s["name"])
    _version(s["version"])
    _did(s["plugin"], "plugin")
    for key in ("input_schema", "output_schema"):
        if key in s:
            _json_schema_document(s[key], key)
    for key, low, high in (
        ("timeout_ms", 1, 86_400_000),
        ("max_attempts", 1, 100),
        ("max_cost", 1, MAX_SAFE),
        ("max_concurrency", 1, 100_000),
    ):
        if key in s and not low <= _uint(s[key], key) <= high:
            raise _err("invalid_field", f"{key} is {low}..{high}")
    if "description" in s:
        _prose(_text(s["description"], "description"), 1024, "description")
    if "access" in s:
        _access(s["access"])
    if "network" in s and _text(s["network"], "network") != "outbound":
        raise _err("invalid_field", 'network is "outbound"')


def check_plugin_schema(s: Any) -> None:
    if not isinstance(s, dict):
        raise _err("wrong_type", "schema is a map")
    for key in s:
        if key not in PLUGIN_FIELDS:
            raise _err("unknown_field", f"a plugin schema has no field {key!r}")
    for key in ("name", "version", "protocol"):
        if key not in s:
            raise _err("missing_field", f"the schema has no {key}")
    _name(s["name"])
    _version(s["version"])
    if not 1 <= _uint(s["protocol"], "protocol") <= 1000:
        raise _err("invalid_field", "protocol is 1..1000")
    if "endpoint" in s:
        _endpoint(s["endpoint"])
    if "description" in s:
        _prose(_text(s["description"], "description"), 1024, "description")


def check_body(body: bytes) -> dict[str, Any]:
    """The statement a body holds, checked in the spec's order."""
    b = decode(body)
    if not isinstance(b, dict):
        raise _err("wrong_type", "a body is a map")
    if "v" not in b:
        raise _err("missing_field", "the body has no v")
    if _uint(b["v"], "v") != 1:
        raise _err("unsupported_version", f"version {b['v']} is not 1")
    if "kind" not in b:
        raise _err("missing_field", "the body has no kind")
    kind = _text(b["kind"], "kind")
    if kind not in KINDS:
        raise _err("unknown_kind", f"{kind!r} is not a kind")
    for key in b:
        if key not in FIELDS:
            raise _err("unknown_field", f"a body has no field {key!r}")
    family, verb = kind.split(".")
    allowed = ALLOWED[verb]
    for key in b:
        if key not in allowed:
            raise _err("unexpected_field", f"a {verb} statement has no {key}")
    for key in REQUIRED_ORDER:
        if key in allowed and key not in b:
            raise _err("missing_field", f"the body has no {key}")
    _did(b["subject"], "subject")
    _did(b["signer"], "signer")
    seq = _uint(b["seq"], "seq")
    if seq > MAX_SAFE:
        raise _err("invalid_field", "seq is at most 2^53-1")
    if (verb == "register") != (seq == 0):
        raise _err("invalid_field", "seq is 0 exactly for a register statement")
    if "prev" in b:
        if not isinstance(b["prev"], bytes):
            raise _err("wrong_type", "prev is a byte string")
        if len(b["prev"]) != 32:
            raise _err("invalid_field", "prev is 32 bytes")
    if _uint(b["issued_at"], "issued_at") > MAX_SAFE:
        raise _err("invalid_field", "issued_at is at most 2^53-1")
    if "schema" in b:
        (check_handler_schema if family == "handler" else check_plugin_schema)(b["schema"])
    if "new_key" in b:
        _did(b["new_key"], "new_key")
    if "reason" in b:
        _prose(_text(b["reason"], "reason"), 256, "reason")
    if verb == "register" and b["signer"] != b["subject"]:
        raise _err("signer_mismatch", "a register statement is signed by its subject")
    if verb == "rotate" and b["new_key"] == b["signer"]:
        raise _err("rotate_same_key", "a rotation hands the subject to another key")
    return b


def verify_attestation(envelope: bytes) -> dict[str, Any]:
    """Checks an attestation's bytes as spec/attestation.md ("Verifying
    an attestation") says and returns its statement (the body's fields);
    AttestError with the first rule broken."""
    env = parse_envelope(envelope)
    statement = check_body(env.body)
    rotate = statement["kind"].endswith(".rotate")
    if len(env.sigs) != (2 if rotate else 1):
        raise _err("signature_count", f"{len(env.sigs)} signatures for a {statement['kind']}")
    message = CONTEXT + env.body
    if not verify_strict(parse_did(statement["signer"]), message, env.sigs[0]):
        raise _err("bad_signature", "sigs[0] is not the signer's signature")
    if rotate and not verify_strict(parse_did(statement["new_key"]), message, env.sigs[1]):
        raise _err("bad_signature", "sigs[1] is not new_key's signature")
    return statement
