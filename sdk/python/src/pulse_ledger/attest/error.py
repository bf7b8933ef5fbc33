"""Errors of attestation and chain verification, with the spec's codes."""


class AttestError(ValueError):
    """A rule of spec/attestation.md an input broke: `code` is its error
    code (`did_syntax`, `weak_key`, `bad_signature`, …)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
