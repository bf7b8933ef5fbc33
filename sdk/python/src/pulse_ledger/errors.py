"""Errors from a pulse-ledger server, with the spec's error code."""

from __future__ import annotations

import grpc


class PulseError(Exception):
    """A call the server refused or could not answer.

    - `code`: the spec's error code (`invalid_priority`, `not_found`,
      `scope_missing`, …; spec/pulse.md, spec/security.md), or the gRPC
      status name in lower case when the server gave none (`unavailable`).
    - `status`: the gRPC status code.
    """

    def __init__(self, code: str, message: str, status: grpc.StatusCode | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def from_rpc_error(e: grpc.RpcError) -> PulseError:
    """The PulseError of a failed call: the server's status message starts
    with the spec code (`code: message`)."""
    status = e.code() if hasattr(e, "code") else None
    details = (e.details() if hasattr(e, "details") else None) or str(e)
    code, sep, message = details.partition(": ")
    if not sep or not code or not all(c.islower() or c == "_" or c.isdigit() for c in code):
        code = status.name.lower() if status is not None else "unknown"
        message = details
    return PulseError(code, message, status)
