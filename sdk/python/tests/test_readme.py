"""The five-minute walk-through of sdk/python/README.md, run as written
against a server this test starts: the shell blocks by bash, the Python
files as the README gives them. Only the server's address is changed (the
CLI reads PULSE_LEDGER_SERVER; the files get the address by an exact
substitution that fails if the README lost it)."""

import os
import pathlib
import re
import subprocess
import sys

from conftest import binary, start_server

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
DEFAULT = "http://127.0.0.1:7300"


def walkthrough():
    text = README.read_text()
    start = text.index("## Five minutes")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```(sh|python)\n(.*?)\n```", text[start:end], re.S)


def test_the_walkthrough_runs_as_written(tmp_path):
    blocks = walkthrough()
    kinds = [k for k, _ in blocks]
    assert kinds == ["sh", "sh", "python", "python", "sh"], kinds
    install, register, plugin, app, run = (b for _, b in blocks)
    # This environment already has the package installed, as the first
    # block does.
    assert "pip install -e sdk/python" in install
    url, serve = start_server(tmp_path, "")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pulse-ledger").symlink_to(binary())
    # This environment's Python (a symlink would leave its venv behind).
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PULSE_LEDGER_SERVER=url)
    try:
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", register], cwd=tmp_path,
                           env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        for source in (plugin, app):
            name = source.splitlines()[0].lstrip("# ").strip()
            assert DEFAULT in source, f"{name} lost {DEFAULT}"
            (tmp_path / name).write_text(source.replace(DEFAULT, url))
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", run + "\nwait"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.strip() == "succeeded {'words': 6}", r.stdout + r.stderr
        promised = re.search(r"# (succeeded .*)", run).group(1)
        assert r.stdout.strip() == promised
    finally:
        serve.terminate()
        serve.wait(20)
