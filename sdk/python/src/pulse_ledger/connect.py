"""Connecting in (spec/plugin.md, "Connecting in"): the plugin dials the
server's PluginGateway.Join, proves its key on the stream, and runs the
attempts sent over it; it reconnects with backoff when the stream ends.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import grpc

from ._streams import StreamChannel
from .client import _channel_args
from .v1 import plugin_pb2 as pb
from .v1 import plugin_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from .plugin import Plugin

#: Backoff between connections: 200 ms doubling to 30 s, back to the start
#: after a session that lasted a minute.
FIRST_BACKOFF = 0.2
#: Sessions one process keeps open by default.
DEFAULT_SESSIONS = 8
MAX_BACKOFF = 30.0


async def connect_in(
    plugin: "Plugin",
    url: str,
    *,
    token: str | None = None,
    ca: str | None = None,
    sessions: int | None = None,
) -> None:
    """Serves `plugin` over connected-in sessions to `url` until SIGTERM or
    SIGINT (then it drains: no new attempt, the running ones finish).

    `sessions` (or PULSE_PLUGIN_SESSIONS; default 8): how many sessions
    this process keeps open, each a stream of its own with its own key
    proof. gRPC in Python sends one message at a time on a stream, so
    several let one process take more jobs per second; Pulse sees a pool
    of instances, and the plugin's `slots` are shared out among them."""
    token = token or os.environ.get("PULSE_PLUGIN_TOKEN")
    ca = ca or os.environ.get("PULSE_PLUGIN_SERVER_CA")
    n = sessions or int(os.environ.get("PULSE_PLUGIN_SESSIONS", str(DEFAULT_SESSIONS)))
    if n < 1:
        raise ValueError("sessions is at least 1")
    if plugin.slots:
        n = min(n, plugin.slots)
    # The slots shared out: the first sessions take the remainder.
    shares = [plugin.slots // n + (1 if i < plugin.slots % n else 0) for i in range(n)]
    target, creds, metadata = _channel_args(url, token, ca, aio=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    await asyncio.gather(
        *(_keep_connected(plugin, target, creds, metadata, stop, share) for share in shares)
    )


async def _keep_connected(
    plugin: "Plugin", target: str, creds: Any, metadata: list, stop: asyncio.Event, slots: int
) -> None:
    """One session, opened again with backoff whenever it ends."""
    backoff = FIRST_BACKOFF
    while not stop.is_set():
        started = time.monotonic()
        channel = (
            grpc.aio.secure_channel(target, creds) if creds else grpc.aio.insecure_channel(target)
        )
        try:
            await _session(plugin, channel, metadata, stop, slots)
        except grpc.RpcError as e:
            details = e.details() if hasattr(e, "details") else str(e)
            print(
                f"pulse-ledger: session ended: {details}",
                file=sys.stderr,
                flush=True,
            )
        finally:
            await channel.close()
        if stop.is_set():
            break
        if time.monotonic() - started > 60:
            backoff = FIRST_BACKOFF
        try:
            await asyncio.wait_for(stop.wait(), backoff)
        except asyncio.TimeoutError:
            pass
        backoff = min(backoff * 2, MAX_BACKOFF)


async def _session(
    plugin: "Plugin", channel: Any, metadata: list, stop: asyncio.Event, slots: int
) -> None:
    outbox: asyncio.Queue[pb.PluginMessage | None] = asyncio.Queue()

    async def outgoing():
        while True:
            m = await outbox.get()
            if m is None:
                return
            yield m

    call = pb_grpc.PluginGatewayStub(channel).Join(outgoing(), metadata=metadata)
    tasks: set[asyncio.Task[Any]] = set()
    draining = False

    async def run_attempt(r: pb.ExecuteJobRequest) -> None:
        await plugin.run_attempt(r, StreamChannel(outbox, r.job_id, r.lease))

    async def drain_on_stop() -> None:
        nonlocal draining
        await stop.wait()
        draining = True
        plugin._draining = True
        await outbox.put(pb.PluginMessage(drain=pb.DrainRequest()))

    drainer = asyncio.create_task(drain_on_stop())
    try:
        async for msg in call:
            kind = msg.WhichOneof("message")
            if kind == "initialize":
                from .plugin import initialize_response

                await outbox.put(
                    pb.PluginMessage(
                        initialize=initialize_response(plugin, msg.initialize.nonce, slots, streams=0)
                    )
                )
            elif kind == "execute":
                t = asyncio.create_task(run_attempt(msg.execute))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            elif kind == "cancel":
                plugin.cancel(msg.cancel.job_id, msg.cancel.lease)
            elif kind == "health":
                await outbox.put(pb.PluginMessage(health=plugin.health()))
            elif kind == "shutdown":
                stop.set()
    finally:
        drainer.cancel()
        for t in tasks:
            t.cancel()
        await outbox.put(None)
