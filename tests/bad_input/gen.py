#!/usr/bin/env python3
"""Writes the bad-input corpus replayed by tests/bad_input.rs over a real
server: raw gRPC message bodies (protobuf bytes, not necessarily valid)
and the answer each must get. Deterministic; run from this directory.
Each line of cases.txt: NAME SERVICE/METHOD GRPC_CODE REASON, where
REASON `*` means any spec code (it must have one) and code `Ok` means the
call succeeds (huge page sizes are clamped, not errors)."""
import random

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)

def field_bytes(num, data):
    return varint((num << 3) | 2) + varint(len(data)) + data

def field_varint(num, value):
    return varint(num << 3) + varint(value)

R = "/pulse_ledger.v1.Registry/"
J = "/pulse_ledger.v1.Jobs/"
cases = []

def case(name, method, code, reason, body):
    cases.append((name, method, code, reason))
    with open(f"{name}.bin", "wb") as f:
        f.write(body)

rng = random.Random(20261127)
for i in range(4):
    n = rng.randrange(1, 400)
    case(f"submit-random-{i}", R + "Submit", "InvalidArgument", "*", bytes(rng.randrange(256) for _ in range(n)))
    case(f"enqueue-random-{i}", J + "Enqueue", "InvalidArgument", "*", bytes(rng.randrange(256) for _ in range(n)))
case("submit-truncated-length", R + "Submit", "InvalidArgument", "malformed_request", b"\x0a\xff\xff")
case("submit-wrong-wire-type", R + "Submit", "InvalidArgument", "malformed_request", b"\x0d\x01\x02\x03\x04")
case("submit-empty-envelope", R + "Submit", "InvalidArgument", "*", b"")
case("submit-deep-arrays", R + "Submit", "InvalidArgument", "*", field_bytes(1, b"\x81" * 20_000 + b"\x00"))
case("submit-deep-maps", R + "Submit", "InvalidArgument", "*", field_bytes(1, b"\xa1\x00" * 10_000 + b"\x00"))
case("submit-huge-string-length", R + "Submit", "InvalidArgument", "*", field_bytes(1, b"\xa1\x61v\x5b" + b"\xff" * 8))
case("submit-huge-array-length", R + "Submit", "InvalidArgument", "*", field_bytes(1, b"\x9b" + b"\xff" * 8))
case("submit-indefinite-length", R + "Submit", "InvalidArgument", "*", field_bytes(1, b"\xbf\x61v\x01\xff"))
case("submit-tagged-value", R + "Submit", "InvalidArgument", "*", field_bytes(1, b"\xc2\x41\x01"))
case("submit-map-of-wrong-types", R + "Submit", "InvalidArgument", "*", field_bytes(1, b"\xa2\x64body\x01\x63sig\x60"))
case("getentries-huge-range", R + "GetEntries", "Ok", "-", field_varint(1, 0) + field_varint(2, 2**64 - 1))
case("getentries-start-beyond", R + "GetEntries", "OutOfRange", "*", field_varint(1, 2**63))
case("listhandlers-huge-page", R + "ListHandlers", "Ok", "-", field_varint(4, 2**32 - 1))
case("getchain-huge-page", R + "GetChain", "InvalidArgument", "did_syntax", field_bytes(1, b"did:key:nope") + field_varint(3, 2**32 - 1))
case("getsubject-not-utf8", R + "GetSubject", "InvalidArgument", "malformed_request", field_bytes(1, b"\xff\xfe"))
case("getjob-short-id", J + "GetJob", "InvalidArgument", "invalid_job_id", field_bytes(1, b"\x01\x02\x03"))
case("getjob-unknown", J + "GetJob", "NotFound", "not_found", field_bytes(1, bytes(16)))
case("getjoblog-huge-page", J + "GetJobLog", "NotFound", "not_found", field_bytes(1, bytes(16)) + field_varint(3, 2**32 - 1))
case("listjobs-bad-state", J + "ListJobs", "InvalidArgument", "*", field_bytes(1, b"nope"))
case("listjobs-huge-page", J + "ListJobs", "Ok", "-", field_varint(2, 2**32 - 1))
case("enqueue-bad-handler", J + "Enqueue", "InvalidArgument", "*", field_bytes(1, b"did:key:z6Mk") + field_bytes(2, b"x"))
case("enqueue-priority-too-high", J + "Enqueue", "InvalidArgument", "*", field_bytes(1, b"did:key:nope") + field_varint(3, 99))
case("enqueuebatch-empty", J + "EnqueueBatch", "InvalidArgument", "invalid_batch", b"")
case("cancel-short-id", J + "CancelJob", "InvalidArgument", "invalid_job_id", field_bytes(1, b"\x00"))
case("setbudget-bad-handler", J + "SetBudget", "InvalidArgument", "*", field_bytes(1, b"not a did") + field_varint(2, 5))

with open("cases.txt", "w") as f:
    for c in cases:
        f.write(" ".join(c) + "\n")
