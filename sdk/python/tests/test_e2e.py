"""End to end: the real `pulse-ledger serve` spawns a plugin written with
this package, and the client enqueues and follows its jobs."""

import json
import subprocess
import sys
import time

import pytest

from pulse_ledger import AsyncClient, Client, PulseError

from conftest import cli, wait_until


@pytest.fixture
def client(server):
    with Client(server.url) as c:
        yield c


def test_echo_runs_with_progress_and_a_log_line(server, client):
    job = client.enqueue(server.handlers["echo"], {"hello": "world"})
    assert len(job.id) == 32 and job.state in ("queued", "running", "succeeded")
    done = client.wait(job.id, timeout=30)
    assert done.state == "succeeded", done.last_error
    assert done.json() == {"hello": "world"}
    assert done.progress == 50
    log = cli("job", "log", done.id, cwd=server.dir, server=server.url)
    assert "[attempt 1] echo attempt 1" in log


def test_handlers_by_name_sync_handlers_and_raw_bytes(server, client):
    done = client.wait(client.enqueue("sync-echo", [1, 2]).id, timeout=30)
    assert done.json() == {"got": [1, 2], "attempt": 1}
    done = client.wait(client.enqueue("raw", b"\x00\x01abc").id, timeout=30)
    assert done.result == b"cba\x01\x00"


def test_a_crash_mid_job_resumes_from_the_checkpoint(server, client):
    done = client.wait(client.enqueue("resume", None).id, timeout=60)
    assert done.state == "succeeded", done.last_error
    assert done.json() == {"resumed_from": 5}
    assert [a.outcome for a in done.attempt_history] == ["crashed", "succeeded"]


def test_retry_exceptions_and_bounds(server, client):
    done = client.wait(client.enqueue("flaky", None).id, timeout=30)
    assert (done.state, done.json()) == ("succeeded", {"attempt": 2})
    assert done.attempt_history[0].outcome == "failed"
    assert done.attempt_history[0].error == "not yet"
    dead = client.wait(client.enqueue("broken", None).id, timeout=30)
    assert (dead.state, dead.reason) == ("dead", "non_retryable")
    assert dead.last_error == "KeyError: 'missing'"
    bad = client.wait(client.enqueue("bad-progress", None).id, timeout=30)
    assert bad.reason == "non_retryable"
    assert "progress percent 150 is not within 0..100" in bad.last_error


def test_cost_counts_against_budgets(server, client):
    done = client.wait(client.enqueue("costly", {"steps": 3}).id, timeout=30)
    assert (done.state, done.total_cost) == ("succeeded", 30)
    assert client.budget("costly").spent_hour >= 30
    capped = client.wait(client.enqueue("costly", {"steps": 5}, max_cost=25).id, timeout=30)
    assert (capped.state, capped.reason) == ("cancelled", "budget")


def test_an_hourly_budget_holds_jobs_once_spent(server, client):
    # The handler has spent 30+ already (the test above, or here).
    client.wait(client.enqueue("costly", {"steps": 1}).id, timeout=30)
    spent = client.budget("costly").spent_hour
    client.set_budget("costly", per_hour=spent)
    try:
        job = client.enqueue("costly", {"steps": 1})
        held = wait_until(lambda: (j := client.get(job.id)).state == "held" and j, what="a hold")
        assert held.reason == "budget"
        assert client.budget("costly").per_hour == spent
    finally:
        client.set_budget("costly", per_hour=0)
    assert client.wait(job.id, timeout=30).state == "succeeded", "released once the limit goes"


def test_cancel_reaches_the_handler(server, client):
    job = client.enqueue("slow", None)
    wait_until(lambda: client.get(job.id).state == "running", what="the slow job to start")
    cancelled = client.cancel(job.id)
    assert cancelled.state == "cancelled"
    assert client.wait(job.id, timeout=10).attempt_history[0].outcome == "cancelled"


def test_a_timeout_is_recorded(server, client):
    done = client.wait(client.enqueue("sleep", "5").id, timeout=30)
    assert (done.state, done.reason) == ("dead", "attempts_exhausted")
    assert done.attempt_history[0].outcome == "timed_out"


def test_client_calls_and_errors(server, client):
    a = client.enqueue("echo", {"n": 1}, idempotency_key="same")
    b = client.enqueue("echo", {"n": 2}, idempotency_key="same")
    assert a.id == b.id
    results = client.enqueue_many(
        [{"handler": server.handlers["echo"], "payload": {"n": 3}},
         {"handler": server.handlers["echo"], "payload": None, "priority": 12}]
    )
    assert results[0].state in ("queued", "running", "succeeded")
    assert isinstance(results[1], PulseError) and results[1].code == "invalid_priority"
    with pytest.raises(PulseError) as e:
        client.enqueue("echo", None, priority=12)
    assert e.value.code == "invalid_priority"
    # One call, each job answered in its place, in order, once durable.
    streamed = list(client.enqueue_stream(
        {"handler": "echo", "payload": {"n": n}, "priority": p} for n, p in [(4, 1), (5, 12), (6, 2)]
    ))
    assert [type(r).__name__ for r in streamed] == ["Job", "PulseError", "Job"]
    assert streamed[1].code == "invalid_priority"
    assert streamed[0].id != streamed[2].id
    again = list(client.enqueue_stream([{"handler": "echo", "idempotency_key": "same"}]))
    assert again[0].id == a.id
    answered = []
    with pytest.raises(PulseError) as e:
        for r in client.enqueue_stream([{"handler": "echo"}, {"handler": "no-such-handler"}]):
            answered.append(r)
    assert e.value.code == "not_found" and len(answered) == 1

    def broken():
        yield {"handler": "echo"}
        raise KeyError("the producer's own error")

    answered = []
    with pytest.raises(KeyError):
        for r in client.enqueue_stream(broken()):
            answered.append(r)
    assert len(answered) == 1
    assert client.wait(answered[0].id, timeout=30).state == "succeeded"
    with pytest.raises(PulseError) as e:
        client.get("00" * 16)
    assert e.value.code == "not_found"
    with pytest.raises(PulseError) as e:
        client.enqueue("no-such-handler", None)
    assert e.value.code == "not_found"
    updates = [j.state for j in client.watch(results[0].id)]
    assert updates[-1] == "succeeded"
    listed = list(client.list(handler="echo", limit=2))
    assert len(listed) == 2 and listed[0].id >= listed[1].id
    retried = client.retry(client.cancel(client.enqueue("echo", None, delay=3600).id).id)
    assert retried.state == "queued"
    with pytest.raises(ValueError):
        Client("http://192.0.2.1:7300", token="t")  # a token never goes out in plaintext


def test_the_async_client(server):
    import asyncio

    async def run():
        async with AsyncClient(server.url) as c:
            job = await c.enqueue("echo", {"a": 1})
            done = await c.wait(job.id, timeout=30)
            assert done.json() == {"a": 1}
            states = [j.state async for j in c.watch(job.id)]
            assert states == ["succeeded"]
            with pytest.raises(PulseError) as e:
                await c.get("ff" * 16)
            assert e.value.code == "not_found"
            many = await c.enqueue_many([{"handler": "echo", "payload": {"b": 2}},
                                         {"handler": "echo", "priority": 99}])
            assert many[0].state in ("queued", "running", "succeeded")
            assert isinstance(many[1], PulseError) and many[1].code == "invalid_priority"

            async def produce():
                for n in range(3):
                    yield {"handler": "echo", "payload": {"s": n}, "priority": 12 if n == 1 else 0}

            streamed = [r async for r in c.enqueue_stream(produce())]
            assert [type(r).__name__ for r in streamed] == ["Job", "PulseError", "Job"]
            listed = [j async for j in c.list(handler="echo", limit=3)]
            assert len(listed) == 3

    asyncio.run(run())


def test_the_session_uses_the_transport_the_plugin_asked_for(server, client):

    client.wait(client.enqueue("echo", None).id, timeout=30)
    listed = json.loads(cli("plugin", "sessions", "--json", cwd=server.dir, server=server.url))
    (session,) = listed["sessions"]
    assert session["connection"] == "spawned"
    assert session["attempt_streams"] == (4 if server.transport == "streams" else 0)


def test_a_plugin_without_attempt_streams_falls_back_to_calls(tmp_path):
    # It asks for streams but answers Attempts with UNIMPLEMENTED (the
    # generated servicer's default): Pulse sends each attempt as a call.
    from conftest import PLUGIN, register, start_server

    plugin_did = cli("keygen", "--out", "plugin.key", cwd=tmp_path)
    (tmp_path / "plugin.py").write_text(
        "from pulse_ledger import plugin as _p\n"
        "del _p._Servicer.Attempts\n" + PLUGIN
    )
    config = (
        "plugin_wait_secs = 5\n[[plugin]]\nname = \"py-tools\"\n"
        f"command = [{sys.executable!r}, \"plugin.py\"]\ndir = {str(tmp_path)!r}\n"
        f"env = {{ PLUGIN_KEY = {str(tmp_path / 'plugin.key')!r}, PULSE_PLUGIN_STREAMS = \"2\" }}\n"
    )
    url, serve = start_server(tmp_path, config)
    try:
        dids = register(tmp_path, url, plugin_did, ["echo"])
        with Client(url) as client:
            done = client.wait(client.enqueue(dids["echo"], [1]).id, timeout=30)
            assert (done.state, done.json()) == ("succeeded", [1])
        sessions = cli("plugin", "sessions", "--json", cwd=tmp_path, server=url)
        assert json.loads(sessions)["sessions"][0]["attempt_streams"] == 0, sessions
    finally:
        serve.terminate()
        serve.wait(20)
    assert "does not implement Attempts" in (tmp_path / "serve.log").read_text()


def test_pulse_opens_at_most_sixteen_attempt_streams(tmp_path):
    # The SDK refuses to ask for more than 16; a plugin that asks anyway
    # gets 16 (spec/plugin.md, "Attempt streams").
    from conftest import PLUGIN, register, start_server

    plugin_did = cli("keygen", "--out", "plugin.key", cwd=tmp_path)
    (tmp_path / "plugin.py").write_text(
        PLUGIN.replace("plugin.run()", "plugin.attempt_streams = 40\nplugin.run()")
    )
    config = (
        "plugin_wait_secs = 5\n[[plugin]]\nname = \"py-tools\"\n"
        f"command = [{sys.executable!r}, \"plugin.py\"]\ndir = {str(tmp_path)!r}\n"
        f"env = {{ PLUGIN_KEY = {str(tmp_path / 'plugin.key')!r} }}\n"
    )
    url, serve = start_server(tmp_path, config)
    try:
        dids = register(tmp_path, url, plugin_did, ["echo"])
        with Client(url) as client:
            done = client.wait(client.enqueue(dids["echo"], [2]).id, timeout=30)
            assert (done.state, done.json()) == ("succeeded", [2])
        sessions = cli("plugin", "sessions", "--json", cwd=tmp_path, server=url)
        assert json.loads(sessions)["sessions"][0]["attempt_streams"] == 16, sessions
    finally:
        serve.terminate()
        serve.wait(20)


def test_a_wrong_key_is_refused_with_its_code(server, tmp_path):
    # A process that proves an unregistered key, connecting in: refused,
    # and the refusal (with its code) reaches it.
    cli("keygen", "--out", "stranger.key", cwd=tmp_path)
    script = tmp_path / "stranger.py"
    script.write_text(
        "import os\n"
        "from pulse_ledger import Plugin\n"
        "p = Plugin(key_file='stranger.key')\n"
        "@p.handler('echo')\n"
        "def echo(ctx, payload): return payload\n"
        f"p.run(connect={server.url!r})\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path,
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
    finally:
        proc.terminate()
        err = proc.communicate(timeout=10)[1]
    assert "plugin_not_registered" in err, err
    sessions = cli("plugin", "sessions", "--json", cwd=server.dir, server=server.url)
    assert "plugin_not_registered" in sessions


def test_a_connected_in_plugin_runs_jobs_and_drains(tmp_path):
    # A server with no plugin in its config; the plugin dials it.
    from conftest import PLUGIN, register, start_server

    plugin_did = cli("keygen", "--out", "plugin.key", cwd=tmp_path)
    url, serve = start_server(tmp_path, "plugin_wait_secs = 10\n")
    proc = None
    try:
        dids = register(tmp_path, url, plugin_did, ["echo", "slow"])
        (tmp_path / "plugin.py").write_text(PLUGIN)
        env = dict(__import__("os").environ, PLUGIN_KEY=str(tmp_path / "plugin.key"),
                   PULSE_PLUGIN_CONNECT=url, PLUGIN_SLOTS="4", PULSE_PLUGIN_SESSIONS="2")
        proc = subprocess.Popen([sys.executable, "plugin.py"], cwd=tmp_path, env=env,
                                stderr=subprocess.PIPE, text=True)
        with Client(url) as client:
            done = client.wait(client.enqueue(dids["echo"], {"via": "join"}).id, timeout=30)
            assert done.json() == {"via": "join"}
            # Two sessions from one process, the 4 slots shared out.
            def both_open():
                s = cli("plugin", "sessions", "--json", cwd=tmp_path, server=url).replace(" ", "")
                return s if s.count('"connection":"connected"') == 2 else None

            sessions = wait_until(both_open, what="two sessions")
            assert sessions.count('"slots":2') == 2, sessions
            # A cancel reaches a handler over the stream too.
            job = client.enqueue("slow", None)
            wait_until(lambda: client.get(job.id).state == "running", what="slow to start")
            client.cancel(job.id)
            assert client.wait(job.id, timeout=10).attempt_history[0].outcome == "cancelled"
        # SIGTERM: it drains and exits.
        proc.terminate()
        assert proc.wait(15) == 0, proc.stderr.read()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        serve.terminate()
        serve.wait(20)
