"""Attempts multiplexed over one stream, as messages naming their job and
lease: a connected-in session's Join stream, or an Attempts stream Pulse
opens to a listening plugin (spec/plugin.md, "Attempt streams")."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import grpc

from .v1 import plugin_pb2 as pb

if TYPE_CHECKING:
    from .plugin import Plugin


class StreamChannel:
    """One attempt's events on the session's stream (an attempt whose
    stream went away just sends nothing more)."""

    __slots__ = ("outbox", "job_id", "lease")

    def __init__(self, outbox: "asyncio.Queue[pb.PluginMessage | None]", job_id: bytes, lease: bytes) -> None:
        self.outbox, self.job_id, self.lease = outbox, job_id, lease

    def put_nowait(self, event: pb.JobEvent) -> None:
        self.outbox.put_nowait(
            pb.PluginMessage(event=pb.AttemptEvent(job_id=self.job_id, lease=self.lease, event=event))
        )

    async def put(self, event: pb.JobEvent) -> None:
        self.put_nowait(event)

    def end(self, last: pb.JobEvent | None = None) -> None:
        # Nothing is queued here: the events went out as they came.
        if last is not None:
            self.put_nowait(last)


async def serve_attempts(plugin: "Plugin", context: Any) -> None:
    """Serves one Attempts stream (the listening mode): runs each
    `execute` as an attempt, passes on each `cancel`, and writes the
    attempts' events back; says `drain` when the plugin drains. Returns
    when Pulse ends the stream."""
    # Pulse waits for the answer's headers before it sends an attempt.
    await context.send_initial_metadata(())
    outbox: asyncio.Queue[pb.PluginMessage | None] = asyncio.Queue()
    tasks: set[asyncio.Task[Any]] = set()
    loop = asyncio.get_running_loop()

    async def read() -> None:
        try:
            while True:
                msg = await context.read()
                if msg is grpc.aio.EOF:
                    return
                kind = msg.WhichOneof("message")
                if kind == "execute":
                    r = msg.execute
                    t = loop.create_task(
                        plugin.run_attempt(r, StreamChannel(outbox, r.job_id, r.lease))
                    )
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                elif kind == "cancel":
                    plugin.cancel(msg.cancel.job_id, msg.cancel.lease)
        finally:
            outbox.put_nowait(None)

    reader = loop.create_task(read())
    plugin._attempt_outboxes.add(outbox)
    if plugin._draining:
        outbox.put_nowait(pb.PluginMessage(drain=pb.DrainRequest()))
    try:
        while True:
            m = await outbox.get()
            if m is None:
                return
            await context.write(m)
    finally:
        plugin._attempt_outboxes.discard(outbox)
        reader.cancel()
        for t in tasks:
            t.cancel()
