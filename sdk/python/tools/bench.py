"""No-op jobs per second through a Python plugin next to the Rust test
plugin, in one run, on the same server build (issue 21, "Speed").

    cargo build --release
    python sdk/python/tools/bench.py --jobs 20000

For each mode (spawned, connected in, or both: --mode) and each plugin
it starts a fresh `pulse-ledger serve` (which spawns the plugin, or which
the plugin connects in to), registers a `noop` handler on it, runs a warm-up, then enqueues
--jobs jobs in batches of 1,000 and times them from the first enqueue to
the last attempt ended (read from /metrics). It prints both rates and
their ratio, Python ÷ Rust.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "sdk" / "python" / "src"))

from pulse_ledger import Client  # noqa: E402

PY_PLUGIN = textwrap.dedent(
    """
    import os
    from pulse_ledger import Plugin

    plugin = Plugin(key_file=os.environ["PLUGIN_KEY"], name="bench", version="1.0.0")

    @plugin.handler("noop", raw=True)
    async def noop(ctx, payload):
        return b""

    plugin.run()
    """
)


def run(*cmd: str, cwd: pathlib.Path) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)}: {r.stdout}{r.stderr}")
    return r.stdout.strip()


def ended(metrics: str) -> int:
    body = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5).read().decode()
    total = 0
    for line in body.splitlines():
        if line.startswith("pulse_ledger_attempts_ended_total{"):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def measure(kind: str, mode: str, bin: pathlib.Path, test_plugin: pathlib.Path, jobs: int) -> float:
    """Jobs/s through `kind` (rust or python), spawned by the server or
    connected in (`mode`)."""
    with tempfile.TemporaryDirectory(prefix=f"pulse-bench-{kind}-") as tmp:
        d = pathlib.Path(tmp)
        plugin_did = run(str(bin), "keygen", "--out", "plugin.key", cwd=d)
        if kind == "rust":
            command = [str(test_plugin), "--key", str(d / "plugin.key")]
        else:
            (d / "plugin.py").write_text(PY_PLUGIN)
            command = [sys.executable, str(d / "plugin.py")]
        if mode == "spawned":
            argv = ", ".join(f"'{c}'" for c in command)
            # The Rust plugin on one ExecuteJob call per attempt, the
            # baseline the Python SDK's target was set against (the Rust
            # SDK's default became attempt streams later; BENCHMARKS.md).
            (d / "pulse.toml").write_text(
                f"[[plugin]]\nname = 'bench'\ncommand = [{argv}]\n"
                f"env = {{ PLUGIN_KEY = '{d / 'plugin.key'}', "
                f"PULSE_TEST_PLUGIN_ATTEMPT_STREAMS = '0' }}\n"
            )
        else:
            (d / "pulse.toml").write_text("")
        serve = subprocess.Popen(
            [str(bin), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(d / "data"),
             "--config", str(d / "pulse.toml"), "--metrics-listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, text=True, env=dict(os.environ, RUST_LOG="error"), cwd=d,
        )
        try:
            url = "http://" + serve.stdout.readline().split()[3]
            metrics = serve.stdout.readline().split()[2].removeprefix("http://").removesuffix("/metrics")
            run(str(bin), "plugin", "new", "--key", "plugin.key", "--name", "bench",
                "--version", "1.0.0", "--out", "p.att", cwd=d)
            handler = run(str(bin), "keygen", "--out", "noop.key", cwd=d)
            run(str(bin), "handler", "new", "--key", "noop.key", "--name", "noop", "--version",
                "1.0.0", "--plugin", plugin_did, "--out", "h.att", cwd=d)
            run(str(bin), "submit", "p.att", "h.att", "--server", url, cwd=d)
            worker = None
            if mode == "connected":
                extra = ["--connect", url] if kind == "rust" else []
                env = dict(os.environ, PLUGIN_KEY=str(d / "plugin.key"), PULSE_PLUGIN_CONNECT=url)
                worker = subprocess.Popen(command + extra, cwd=d, env=env, stdout=subprocess.DEVNULL)
            with Client(url, timeout=120) as client:
                def burst(n: int) -> float:
                    base = ended(metrics)
                    started = time.monotonic()
                    for i in range(0, n, 1000):
                        items = [{"handler": handler, "payload": b""}] * min(1000, n - i)
                        client.enqueue_many(items)
                    while ended(metrics) < base + n:
                        time.sleep(0.01)
                    return n / (time.monotonic() - started)

                try:
                    burst(min(2000, jobs))  # warm-up: the plugin connected, caches full
                    return burst(jobs)
                finally:
                    if worker is not None:
                        worker.terminate()
                        worker.wait(30)
        finally:
            serve.terminate()
            serve.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--bin", type=pathlib.Path, default=REPO / "target" / "release" / "pulse-ledger")
    ap.add_argument("--test-plugin", type=pathlib.Path,
                    default=REPO / "target" / "release" / "pulse-test-plugin")
    ap.add_argument("--mode", choices=["spawned", "connected", "both"], default="both",
                    help="how both plugins reach the server: spawned by it, connected in, "
                         "or each in turn (the default)")
    a = ap.parse_args()
    for mode in ["spawned", "connected"] if a.mode == "both" else [a.mode]:
        rust = measure("rust", mode, a.bin, a.test_plugin, a.jobs)
        python = measure("python", mode, a.bin, a.test_plugin, a.jobs)
        print(f"no-op jobs/s, {a.jobs} jobs each, both {mode}, one server build:")
        print(f"  rust test plugin   {rust:10.0f}")
        print(f"  python plugin      {python:10.0f}")
        print(f"  python / rust      {python / rust:10.3f}", flush=True)


if __name__ == "__main__":
    main()
