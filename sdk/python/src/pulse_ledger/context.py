"""What a running job sees and says: the attempt, its checkpoint, and the
progress, cost and log events it sends (spec/plugin.md, "Plugin service").
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Awaitable

from .v1 import plugin_pb2 as pb

#: Bounds of spec/plugin.md: an event over one is refused here, with a
#: Python exception, instead of failing the job at the server.
MAX_PROGRESS_MESSAGE_BYTES = 1024
MAX_CHECKPOINT_BYTES = 65_536
MAX_LOG_LINE_BYTES = 4096
MAX_ERROR_BYTES = 4096


def cut(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, at a character boundary."""
    b = text.encode("utf-8")
    if len(b) <= limit:
        return text
    return b[:limit].decode("utf-8", errors="ignore")


class _Sent:
    """The handle an event send returns: awaiting it waits until the event
    is queued for the stream (at most 64 wait there); not awaiting it is
    fine too, the event goes out in order."""

    def __init__(self, done: Awaitable[None] | None) -> None:
        self._done = done

    def __await__(self):
        if self._done is not None:
            yield from self._done.__await__()


class JobContext:
    """One attempt of one job, as its handler sees it."""

    def __init__(
        self,
        request: pb.ExecuteJobRequest,
        events: "asyncio.Queue[pb.JobEvent]",
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._request = request
        self._events = events
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._cancelled = threading.Event()
        # The last send still waiting for room: later sends queue behind
        # it, so events keep their order.
        self._pending: "asyncio.Task[None] | None" = None

    @property
    def job_id(self) -> str:
        """The job's ID as the CLI prints it (32 hex digits)."""
        return self._request.job_id.hex()

    @property
    def attempt(self) -> int:
        """1 for the first attempt."""
        return self._request.attempt

    @property
    def handler(self) -> str:
        """The handler's did:key."""
        return self._request.handler

    @property
    def handler_name(self) -> str:
        """The handler's schema name."""
        return self._request.handler_name

    @property
    def handler_attestation(self) -> tuple[bytes, bytes]:
        """The envelope of the handler statement this attempt was
        authorised under, and its ID: verify it before trusting its schema."""
        return self._request.handler_attestation, self._request.handler_attestation_id

    @property
    def deadline_ms(self) -> int:
        """Unix ms by which the attempt must finish."""
        return self._request.deadline_ms

    @property
    def checkpoint(self) -> bytes:
        """What the previous attempt left in its progress (b"" at first):
        resume from it."""
        return self._request.checkpoint

    @property
    def trace_parent(self) -> str | None:
        """The W3C `traceparent` of this attempt's span when the server
        exports traces: make your spans its children."""
        return self._request.traceparent or None

    @property
    def cancelled(self) -> bool:
        """Whether Pulse cancelled the attempt: stop soon (the handler is
        stopped after the cancel grace, and what it returns is not sent:
        the attempt ends with an error saying it stopped)."""
        return self._cancelled.is_set()

    def _send(self, event: pb.JobEvent) -> _Sent:
        if threading.get_ident() == self._loop_thread:
            if self._pending is None or self._pending.done():
                try:
                    self._events.put_nowait(event)
                    return _Sent(None)
                except asyncio.QueueFull:
                    pass
            before = self._pending

            async def put() -> None:
                if before is not None:
                    await before
                await self._events.put(event)

            self._pending = self._loop.create_task(put())
            return _Sent(self._pending)
        # A sync handler, in a worker thread: wait here for room.
        asyncio.run_coroutine_threadsafe(self._events.put(event), self._loop).result()
        return _Sent(None)

    def progress(self, percent: int, message: str = "", checkpoint: bytes = b"") -> _Sent:
        """Reports progress, 0..100, a short message, and a checkpoint the
        next attempt gets as `ctx.checkpoint` if this one fails.

        Raises ValueError for a percent outside 0..100, a message over
        1,024 bytes or a checkpoint over 65,536 bytes (the protocol's
        bounds)."""
        if not 0 <= int(percent) <= 100:
            raise ValueError(f"progress percent {percent} is not within 0..100")
        if len(message.encode("utf-8")) > MAX_PROGRESS_MESSAGE_BYTES:
            raise ValueError(f"a progress message is at most {MAX_PROGRESS_MESSAGE_BYTES} bytes")
        if isinstance(checkpoint, str):
            checkpoint = checkpoint.encode("utf-8")
        if len(checkpoint) > MAX_CHECKPOINT_BYTES:
            raise ValueError(f"a checkpoint is at most {MAX_CHECKPOINT_BYTES} bytes")
        return self._send(
            pb.JobEvent(
                progress=pb.ProgressEvent(
                    percent=int(percent), message=message, checkpoint=bytes(checkpoint)
                )
            )
        )

    def cost(self, units: int) -> _Sent:
        """Reports cost units spent since the last report (whole units:
        budgets and max_cost count in them). Raises ValueError for a
        negative or fractional amount."""
        if isinstance(units, bool) or not isinstance(units, int) or units < 0:
            raise ValueError(f"cost is a whole number of units >= 0, not {units!r}")
        return self._send(pb.JobEvent(cost=pb.CostEvent(units=units)))

    def log(self, line: str) -> _Sent:
        """Adds a line to the job's log (cut to 4,096 bytes)."""
        return self._send(pb.JobEvent(log=pb.LogEvent(line=cut(str(line), MAX_LOG_LINE_BYTES))))

    def _cancel(self) -> None:
        self._cancelled.set()

    async def _flush(self) -> None:
        """Waits until every event sent so far is queued."""
        if self._pending is not None:
            await self._pending


def to_payload(data: bytes, raw: bool) -> Any:
    """A handler's input: the bytes, or (the default) their JSON value
    (None for an empty payload)."""
    if raw:
        return data
    if not data:
        return None
    import json

    return json.loads(data)


def from_result(value: Any, raw: bool) -> bytes:
    """A handler's return value as result bytes: bytes and str as they
    are, anything else as JSON (unless the handler is raw)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str) and raw:
        return value.encode("utf-8")
    if raw:
        raise TypeError(
            f"a raw handler returns bytes or str, not {type(value).__name__}"
        )
    import json

    return json.dumps(value, separators=(",", ":")).encode("utf-8")
