"""Generates the gRPC stubs in src/pulse_ledger/v1 from the repository's
proto/ files, or (with --check) fails if the checked-in ones differ from
what the pinned grpcio-tools generates now.

    python tools/stubs.py           # regenerate
    python tools/stubs.py --check   # CI: the stubs match proto/
"""

from __future__ import annotations

import filecmp
import pathlib
import shutil
import sys
import tempfile

from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parents[1]
PROTO = HERE.parents[1] / "proto"
OUT = HERE / "src"
FILES = ["plugin", "jobs", "registry"]
GENERATED = [f"{f}{suffix}" for f in FILES for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")]


def generate(into: pathlib.Path) -> None:
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO}",
        f"--python_out={into}",
        f"--pyi_out={into}",
        f"--grpc_python_out={into}",
        *[str(PROTO / "pulse_ledger" / "v1" / f"{f}.proto") for f in FILES],
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")


def main() -> None:
    check = "--check" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        generate(tmp)
        fresh = tmp / "pulse_ledger" / "v1"
        stale = [
            name
            for name in GENERATED
            if not (OUT / "pulse_ledger" / "v1" / name).exists()
            or not filecmp.cmp(fresh / name, OUT / "pulse_ledger" / "v1" / name, shallow=False)
        ]
        if check:
            if stale:
                sys.exit(
                    "the stubs in sdk/python/src/pulse_ledger/v1 do not match proto/: "
                    f"{', '.join(stale)}; run `python sdk/python/tools/stubs.py`"
                )
            print(f"stubs match proto/ ({len(GENERATED)} files)")
            return
        for name in GENERATED:
            shutil.copyfile(fresh / name, OUT / "pulse_ledger" / "v1" / name)
        print(f"wrote {len(GENERATED)} files to {OUT / 'pulse_ledger' / 'v1'}")


if __name__ == "__main__":
    main()
