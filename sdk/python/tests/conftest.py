"""A real `pulse-ledger serve` for the end-to-end tests, with a Python
plugin written with this package: spawned by the server from its config,
or connected in."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]


def binary() -> pathlib.Path:
    """The pulse-ledger binary: PULSE_LEDGER_BIN, else the debug build."""
    path = pathlib.Path(os.environ.get("PULSE_LEDGER_BIN", REPO / "target" / "debug" / "pulse-ledger"))
    if not path.exists():
        if os.environ.get("PULSE_LEDGER_CI"):
            pytest.fail(f"{path} is missing: build it first (cargo build)")
        pytest.skip(f"{path} is missing: run `cargo build` first")
    return path


def cli(*args: str, cwd: pathlib.Path, server: str | None = None, check: bool = True) -> str:
    cmd = [str(binary()), *args]
    if server:
        cmd += ["--server", server]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_LEDGER_")}
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"pulse-ledger {' '.join(args)}: {r.stdout}{r.stderr}")
    return r.stdout.strip()


#: The plugin every test runs: each handler exercises one behaviour.
PLUGIN = textwrap.dedent(
    '''
    import os, sys, time
    from pulse_ledger import Plugin, Retry

    plugin = Plugin(key_file=os.environ["PLUGIN_KEY"], name="py-tools", version="1.0.0",
                    slots=int(os.environ.get("PLUGIN_SLOTS", "0")))

    @plugin.handler("echo")
    async def echo(ctx, payload):
        await ctx.progress(50, "halfway")
        ctx.log(f"echo attempt {ctx.attempt}")
        return payload

    @plugin.handler("sync-echo")
    def sync_echo(ctx, payload):
        ctx.progress(10, "in a thread")
        return {"got": payload, "attempt": ctx.attempt}

    @plugin.handler("resume")
    async def resume(ctx, payload):
        # Counts to 10, checkpointing each step; the first attempt dies at 5.
        start = int(ctx.checkpoint or b"0")
        for i in range(start, 10):
            await ctx.progress(i * 10, f"step {i}", str(i + 1).encode())
            if ctx.attempt == 1 and i == 4:
                # Let the checkpoint reach the server, then die.
                import asyncio
                await asyncio.sleep(0.3)
                os._exit(3)
        return {"resumed_from": start}

    @plugin.handler("costly")
    async def costly(ctx, payload):
        for _ in range(int(payload["steps"])):
            await ctx.cost(10)
        return "spent"

    @plugin.handler("flaky")
    async def flaky(ctx, payload):
        if ctx.attempt < 2:
            raise Retry("not yet", after=0.05)
        return {"attempt": ctx.attempt}

    @plugin.handler("broken")
    async def broken(ctx, payload):
        raise KeyError("missing")

    @plugin.handler("bad-progress")
    async def bad_progress(ctx, payload):
        await ctx.progress(150)

    @plugin.handler("slow")
    async def slow(ctx, payload):
        import asyncio
        while not ctx.cancelled:
            await asyncio.sleep(0.02)
        return "stopped"

    @plugin.handler("sleep")
    def sleep(ctx, payload):
        time.sleep(float(payload))
        return "woke"

    @plugin.handler("raw", raw=True)
    def raw(ctx, payload):
        return payload[::-1]

    plugin.run()
    '''
)


class Server:
    def __init__(self, url: str, proc: subprocess.Popen, dir: pathlib.Path, handlers: dict[str, str]):
        self.url = url
        self.proc = proc
        self.dir = dir
        self.handlers = handlers
        self.transport = ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def register(dir: pathlib.Path, url: str, plugin_did: str, names: list[str], **limits: str) -> dict[str, str]:
    """Registers the plugin and one handler per name on it: name → did."""
    cli("plugin", "new", "--key", "plugin.key", "--name", "py-tools", "--version", "1.0.0",
        "--out", "p0.att", cwd=dir)
    atts = ["p0.att"]
    dids = {}
    for name in names:
        dids[name] = cli("keygen", "--out", f"{name}.key", cwd=dir)
        extra = []
        for flag, value in limits.get(name, {}).items():  # type: ignore[union-attr]
            extra += [f"--{flag}", value]
        cli("handler", "new", "--key", f"{name}.key", "--name", name, "--version", "1.0.0",
            "--plugin", plugin_did, *extra, "--out", f"{name}.att", cwd=dir)
        atts.append(f"{name}.att")
    cli("submit", *atts, cwd=dir, server=url)
    return dids


def start_server(dir: pathlib.Path, config: str) -> tuple[str, subprocess.Popen]:
    (dir / "pulse.toml").write_text(config)
    log = open(dir / "serve.log", "w")
    env = dict(os.environ, RUST_LOG="info")
    proc = subprocess.Popen(
        [str(binary()), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(dir / "data"),
         "--config", str(dir / "pulse.toml")],
        stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=dir,
    )
    first = proc.stdout.readline()  # "pulse-ledger listening on ADDR (…)"
    assert first.startswith("pulse-ledger listening on "), first
    return "http://" + first.split()[3], proc


HANDLERS = ["echo", "sync-echo", "resume", "costly", "flaky", "broken", "bad-progress", "slow",
            "sleep", "raw"]
LIMITS = {"sleep": {"timeout-ms": "300", "max-attempts": "1"}, "resume": {"max-attempts": "3"}}


#: How the spawned plugin takes its attempts: as messages on attempt
#: streams (the SDK's default), or as one ExecuteJob call each.
TRANSPORTS = {"streams": "4", "calls": "0"}


@pytest.fixture(scope="session", params=list(TRANSPORTS))
def server(tmp_path_factory, request) -> Server:
    """A server that spawns the Python plugin from its config; every test
    using it runs once per transport."""
    dir = tmp_path_factory.mktemp(f"spawned-{request.param}")
    plugin_did = cli("keygen", "--out", "plugin.key", cwd=dir)
    (dir / "plugin.py").write_text(PLUGIN)
    config = textwrap.dedent(
        f'''
        plugin_wait_secs = 5
        heartbeat_timeout_ms = 3000
        cancel_grace_ms = 500
        [[plugin]]
        name = "py-tools"
        command = [{str(sys.executable)!r}, "plugin.py"]
        dir = {str(dir)!r}
        env = {{ PLUGIN_KEY = {str(dir / "plugin.key")!r}, PULSE_PLUGIN_STREAMS = {TRANSPORTS[request.param]!r} }}
        '''
    )
    url, proc = start_server(dir, config)
    try:
        handlers = register(dir, url, plugin_did, HANDLERS, **LIMITS)
        s = Server(url, proc, dir, handlers)
        s.transport = request.param
        yield s
    finally:
        proc.terminate()
        proc.wait(20)


def wait_until(check, timeout: float = 30.0, what: str = "condition"):
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
