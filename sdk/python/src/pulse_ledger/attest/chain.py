"""A subject's chain, checked as spec/attestation.md ("Chains") says:
every attestation verified, then the chain rules in order, each failure
with its code and the 0-based index of the statement that broke it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from blake3 import blake3

from .error import AttestError
from .statement import verify_attestation


def attestation_id(envelope: bytes) -> bytes:
    """An attestation's ID: BLAKE3 of its exact envelope bytes."""
    return blake3(envelope).digest()


class ChainError(AttestError):
    """A chain rule broken: `code`, the statement's `index`, and for an
    equivocation the two conflicting IDs (`evidence`)."""

    def __init__(self, code: str, message: str, index: int, evidence: tuple[bytes, bytes] | None = None):
        super().__init__(code, message)
        self.index = index
        self.evidence = evidence


@dataclass
class ChainState:
    """Where a subject stands after its chain."""

    subject: str
    family: str
    key: str
    seq: int
    head: bytes
    issued_at: int
    revoked: bool
    schema: dict[str, Any] = field(default_factory=dict)


def verify_chain(envelopes: list[bytes]) -> ChainState:
    """The final state of a chain (genesis first); ChainError otherwise."""
    if not envelopes:
        raise ChainError("empty_chain", "a chain has at least one statement", 0)
    seen: list[tuple[bytes, dict[str, Any]]] = []
    state: ChainState | None = None
    for i, env in enumerate(envelopes):
        try:
            st = verify_attestation(env)
        except AttestError as e:
            raise ChainError(e.code, e.message, i) from None
        aid = attestation_id(env)
        family, verb = st["kind"].split(".")
        if state is None:
            if verb != "register":
                raise ChainError("not_genesis", "a chain starts with a register statement", i)
            state = ChainState(st["subject"], family, st["signer"], 0, aid, st["issued_at"], False,
                               st["schema"])
            seen.append((aid, st))
            continue
        if st["subject"] == state.subject and family == state.family and st["seq"] <= state.seq:
            e_id, e = seen[st["seq"]]
            if aid == e_id:
                raise ChainError("duplicate_statement", "the same statement twice", i)
            if st["signer"] != e["signer"]:
                raise ChainError("wrong_signer", "a taken seq, signed by another key", i)
            raise ChainError("equivocation", "the key signed two statements at one seq", i, (e_id, aid))
        if st["subject"] != state.subject:
            raise ChainError("subject_mismatch", "a statement about another subject", i)
        if family != state.family:
            raise ChainError("family_mismatch", "a statement of the other family", i)
        if st["seq"] != state.seq + 1:
            raise ChainError("seq_gap", f"seq {st['seq']} after {state.seq}", i)
        if state.revoked:
            raise ChainError("after_revoke", "nothing follows a revocation", i)
        if st["prev"] != state.head:
            raise ChainError("prev_mismatch", "prev is not the previous statement's ID", i)
        if st["signer"] != state.key:
            raise ChainError("wrong_signer", "not signed by the subject's current key", i)
        if st["issued_at"] < state.issued_at:
            raise ChainError("time_regression", "issued_at went back", i)
        if verb == "update":
            state.schema = st["schema"]
        elif verb == "rotate":
            state.key = st["new_key"]
        elif verb == "revoke":
            state.revoked = True
        state.seq, state.head, state.issued_at = st["seq"], aid, st["issued_at"]
        seen.append((aid, st))
    return state
