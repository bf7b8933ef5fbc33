"""Plugins in Python: handlers as functions, and everything the protocol
asks of a plugin (spec/plugin.md) done for them: the handshake line, the
key proof, heartbeats, cancels, draining on SIGTERM or Shutdown, and the
end of standard input.

    from pulse_ledger import Plugin, Retry

    plugin = Plugin(key_file="plugin.key", name="py-tools", version="1.0.0")

    @plugin.handler("echo")
    async def echo(ctx, payload):
        await ctx.progress(50, "halfway")
        return payload

    plugin.run()
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import grpc

from .context import MAX_ERROR_BYTES, JobContext, cut, from_result, to_payload
from .keyfile import Key, load_key
from .proof import Announcement, proof_message
from .v1 import plugin_pb2 as pb
from .v1 import plugin_pb2_grpc as pb_grpc

#: How long a cancelled handler may run on before it is stopped, seconds.
CANCEL_GRACE = 2.0
#: Cancels for attempts not (yet) running that are remembered.
MAX_EARLY_CANCELS = 10_000
#: Events of one attempt waiting to be sent; a sender waits beyond it.
EVENT_QUEUE = 64
#: Attempt streams a listening plugin asks Pulse for by default.
DEFAULT_ATTEMPT_STREAMS = 4
#: The most Pulse opens.
MAX_ATTEMPT_STREAMS = 16
#: The largest message Pulse decodes from a plugin; a result must fit.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: What a result may be (spec/plugin.md: 14 MiB, so the job with its
#: result fits the Jobs API's 16 MiB responses).
MAX_RESULT_BYTES = 14 * 1024 * 1024


class Retry(Exception):
    """Raise it to fail this attempt retryably: Pulse tries again after
    `after` seconds (or its own backoff when None), while attempts remain.

    Any other exception fails the job for good (not retryable)."""

    def __init__(self, message: str = "retry", after: float | None = None) -> None:
        super().__init__(message)
        if after is not None and after < 0:
            raise ValueError("Retry(after=…) is a delay in seconds, >= 0")
        self.after = after


@dataclass
class _Handler:
    fn: Callable[..., Any]
    is_async: bool
    raw: bool


@dataclass
class _Running:
    ctx: JobContext
    task: "asyncio.Task[Any] | None"
    channel: Any
    every: float
    next_beat: float


class _QueueChannel:
    """The listening mode's events: a bounded queue its stream reads."""

    __slots__ = ("q",)

    def __init__(self, q: "asyncio.Queue[pb.JobEvent | None]") -> None:
        self.q = q

    def put_nowait(self, event: pb.JobEvent) -> None:
        self.q.put_nowait(event)

    async def put(self, event: pb.JobEvent) -> None:
        await self.q.put(event)

    def end(self, last: "pb.JobEvent | None" = None) -> None:
        # The stream ends with `last` as its final event (none if the
        # attempt's stream went away), whatever is still queued.
        while True:
            try:
                self.q.get_nowait()
            except asyncio.QueueEmpty:
                break
        if last is not None:
            self.q.put_nowait(last)
        self.q.put_nowait(None)


class _UnlessCancelled:
    """An attempt's channel whose final event, once the attempt was
    cancelled, says the handler stopped instead of what it returned: a
    handler that returns early on a cancel has not done its work."""

    __slots__ = ("channel", "ctx")

    def __init__(self, channel: Any, ctx: JobContext) -> None:
        self.channel, self.ctx = channel, ctx

    def put_nowait(self, event: pb.JobEvent) -> None:
        self.channel.put_nowait(event)

    async def put(self, event: pb.JobEvent) -> None:
        if self.ctx.cancelled and event.WhichOneof("event") in ("result", "error"):
            event = _stopped("cancelled: the handler stopped")
        await self.channel.put(event)

    def end(self, last: "pb.JobEvent | None" = None) -> None:
        self.channel.end(last)


class Plugin:
    """A plugin: its key, its handlers, and how it runs.

    - `key_file`: the plugin's key file (`pulse-ledger keygen`); or `key`.
    - `plugin_id`: the plugin's genesis did:key, after a rotation (else the
      key's own did:key).
    - `slots`: attempts this process runs at once (0: no limit announced);
      sync handlers run in a thread pool of that size (default 64).
    - `cancel_grace`: seconds a cancelled handler may run on.
    - `attempt_streams`: when spawned or dialled, how many streams Pulse
      opens to carry this plugin's attempts (PULSE_PLUGIN_STREAMS; default
      4, at most 16; 0: one gRPC call per attempt, which Python's gRPC
      server makes several times slower).
    """

    def __init__(
        self,
        key_file: str | os.PathLike[str] | None = None,
        *,
        key: Key | None = None,
        name: str = "python-plugin",
        version: str = "0.0.0",
        description: str = "",
        plugin_id: str | None = None,
        slots: int = 0,
        cancel_grace: float = CANCEL_GRACE,
        attempt_streams: int | None = None,
    ) -> None:
        if key is None:
            if key_file is None:
                raise ValueError("give the plugin's key_file (or key)")
            key = load_key(key_file)
        if slots < 0:
            raise ValueError("slots is >= 0")
        if attempt_streams is None:
            attempt_streams = int(
                os.environ.get("PULSE_PLUGIN_STREAMS", str(DEFAULT_ATTEMPT_STREAMS))
            )
        if not 0 <= attempt_streams <= MAX_ATTEMPT_STREAMS:
            raise ValueError(f"attempt_streams is 0 to {MAX_ATTEMPT_STREAMS}")
        self.key = key
        self.plugin_id = plugin_id or key.did
        self.name = name
        self.version = version
        self.description = description
        self.slots = slots
        self.cancel_grace = cancel_grace
        self.attempt_streams = attempt_streams
        self._attempt_outboxes: set[asyncio.Queue[Any]] = set()
        self._by_id: dict[str, _Handler] = {}
        self._by_name: dict[str, _Handler] = {}
        self._order: list[tuple[str, str]] = []
        self._any: _Handler | None = None
        self._running: dict[tuple[bytes, bytes], _Running] = {}
        self._early: collections.OrderedDict[tuple[bytes, bytes], None] = collections.OrderedDict()
        self._draining = False
        self._stop: asyncio.Event | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._pool = ThreadPoolExecutor(max_workers=slots or 64, thread_name_prefix="pulse-handler")

    # -- handlers ---------------------------------------------------------

    def handler(
        self, name: str | None = None, *, id: str | None = None, raw: bool = False
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Registers a handler for jobs of the handler named `name` (its
        schema name) or with the did:key `id`. The function takes
        `(ctx, payload)`: the payload as JSON (None when empty) and its
        return value sent back as JSON; with `raw=True`, bytes in and
        bytes (or str) out. Sync functions run in a thread pool; async ones
        on the event loop."""
        if not name and not id:
            raise ValueError("a handler needs a name or an id")

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            h = _Handler(fn, inspect.iscoroutinefunction(fn), raw)
            if id:
                self._by_id[id] = h
            if name:
                self._by_name[name] = h
            self._order.append((id or "", name or ""))
            return fn

        return register

    def serve_any(self, fn: Callable[..., Any] | None = None, *, raw: bool = False) -> Any:
        """Registers the handler for every job routed to this plugin that
        no other handler takes (a runner of user-created handlers)."""

        def register(f: Callable[..., Any]) -> Callable[..., Any]:
            self._any = _Handler(f, inspect.iscoroutinefunction(f), raw)
            return f

        return register(fn) if fn is not None else register

    def announcement(self) -> Announcement:
        """What the plugin announces (and signs) in Initialize."""
        return Announcement(
            plugin=self.plugin_id,
            key=self.key.did,
            handlers=list(self._order),
            serves_any=self._any is not None,
        )

    def _choose(self, r: pb.ExecuteJobRequest) -> _Handler | None:
        # By ID, then by (non-empty) name, then serves-any (spec/plugin.md,
        # "SDK").
        return self._by_id.get(r.handler) or (
            self._by_name.get(r.handler_name) if r.handler_name else None
        ) or self._any

    # -- running ----------------------------------------------------------

    def run(self, connect: str | None = None, **options: Any) -> None:
        """Runs until stopped: listens for Pulse (the handshake line on
        standard output, for `serve` to spawn it) or, given a server URL
        (or PULSE_PLUGIN_CONNECT), connects in."""
        url = connect or os.environ.get("PULSE_PLUGIN_CONNECT")
        if url:
            from .connect import connect_in

            asyncio.run(connect_in(self, url, **options))
        else:
            asyncio.run(self.serve())

    def connect(self, url: str, **options: Any) -> None:
        """Runs until stopped, connected in to the server at `url`
        (options: token, ca, sessions); `run(connect=url)` does the same."""
        self.run(connect=url, **options)

    async def serve(self, listen: str | None = None) -> None:
        """Serves the Plugin service on `listen` (PULSE_PLUGIN_LISTEN,
        default 127.0.0.1:0), prints the handshake line, and returns once
        stopped (Shutdown, SIGTERM, SIGINT) and drained. When
        PULSE_PLUGIN_WATCH_STDIN is set and standard input ends (the Pulse
        that spawned it died), the process exits at once instead: no
        result can reach that Pulse, and the retries of its running
        attempts may start elsewhere, so they must not run on."""
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_concurrent_streams", 1024),
            ]
        )
        pb_grpc.add_PluginServicer_to_server(_Servicer(self), server)
        address = listen or os.environ.get("PULSE_PLUGIN_LISTEN", "127.0.0.1:0")
        port = server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        host = address.rsplit(":", 1)[0]
        sys.stdout.write(f"PULSE_PLUGIN|1|tcp|{host}:{port}|grpc\n")
        sys.stdout.flush()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        if os.environ.get("PULSE_PLUGIN_WATCH_STDIN"):
            threading.Thread(target=self._watch_stdin, args=(loop,), daemon=True).start()
        await self._stop.wait()
        # Drain: no new attempt; the running ones finish.
        self._draining = True
        for outbox in self._attempt_outboxes:
            outbox.put_nowait(pb.PluginMessage(drain=pb.DrainRequest()))
        while self._running:
            await asyncio.sleep(0.02)
        await server.stop(grace=0.5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _watch_stdin(self, loop: asyncio.AbstractEventLoop) -> None:
        # The raw descriptor, not sys.stdin: a daemon thread blocked in a
        # buffered read would hold its lock while the interpreter exits.
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        sys.stdout.flush()
        os._exit(0)

    def stop(self) -> None:
        """Asks a running plugin to drain and stop."""
        if self._stop is not None:
            self._stop.set()

    # -- one attempt ------------------------------------------------------

    async def execute(self, r: pb.ExecuteJobRequest) -> AsyncIterator[pb.JobEvent]:
        """Runs one attempt; its events, ending with its result or error
        (an error once a cancelled handler has stopped): the listening
        mode's stream."""
        events: asyncio.Queue[pb.JobEvent | None] = asyncio.Queue(maxsize=EVENT_QUEUE)
        task = asyncio.get_running_loop().create_task(self.run_attempt(r, _QueueChannel(events)))
        try:
            while True:
                event = await events.get()
                if event is None:
                    return
                yield event
                if event.WhichOneof("event") in ("result", "error"):
                    return
        finally:
            # The stream ended (or Pulse dropped it): the handler stops.
            task.cancel()

    async def run_attempt(self, r: pb.ExecuteJobRequest, channel: Any) -> None:
        """Runs one attempt in the calling task, sending its events to
        `channel` (put_nowait / put / end): its result or error last. A
        cancelled attempt ends with an error once its handler has returned
        or been stopped (what it returned is not sent): the final event
        tells Pulse the handler has stopped, and until then the attempt
        keeps its slot (spec/plugin.md, "Plugin service"). Both modes run
        attempts here."""
        key = (bytes(r.job_id), bytes(r.lease))
        if key in self._early:
            # Cancelled before it arrived: it runs nothing, and says so.
            del self._early[key]
            channel.end(_stopped("cancelled before it started"))
            return
        h = self._choose(r)
        if h is None:
            await channel.put(
                _fatal(f"this plugin serves no handler {r.handler_name or r.handler}")
            )
            return
        loop = asyncio.get_running_loop()
        ctx = JobContext(r, channel, loop)
        every = max((r.heartbeat_interval_ms or 10_000) / 1000, 0.02)
        running = _Running(ctx, asyncio.current_task(), channel, every, loop.time() + every)
        self._running[key] = running
        self._start_heartbeats(loop)
        try:
            await self._attempt(h, ctx, r.payload, _UnlessCancelled(channel, ctx))
        except asyncio.CancelledError:
            if ctx.cancelled:
                # Stopped after a cancel's grace.
                channel.end(
                    _stopped(
                        "cancelled: the handler did not stop within the cancel grace "
                        f"({round(self.cancel_grace * 1000)} ms)"
                    )
                )
            else:
                # Its stream went away: nothing to tell.
                channel.end()
        finally:
            self._running.pop(key, None)

    def _start_heartbeats(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = loop.create_task(self._heartbeats())

    async def _heartbeats(self) -> None:
        """One timer for every running attempt: each gets a heartbeat
        every heartbeat_interval_ms (the first one interval after it
        starts)."""
        loop = asyncio.get_running_loop()
        while self._running:
            now = loop.time()
            due = min(r.next_beat for r in self._running.values())
            if due > now:
                await asyncio.sleep(due - now)
                continue
            for r in list(self._running.values()):
                if r.next_beat <= now:
                    r.next_beat = now + r.every
                    try:
                        r.channel.put_nowait(pb.JobEvent(heartbeat=pb.Heartbeat()))
                    except asyncio.QueueFull:
                        pass  # events are waiting to go: they count as alive

    async def _attempt(self, h: _Handler, ctx: JobContext, payload: bytes, channel: Any) -> None:
        try:
            value = to_payload(payload, h.raw)
        except ValueError as e:
            await channel.put(_fatal(f"the payload is not JSON ({e}); use raw=True for bytes"))
            return
        try:
            if h.is_async:
                out = await h.fn(ctx, value)
            else:
                out = await asyncio.get_running_loop().run_in_executor(
                    self._pool, h.fn, ctx, value
                )
            result = from_result(out, h.raw)
        except asyncio.CancelledError:
            raise
        except Retry as e:
            await ctx._flush()
            after = 0 if e.after is None else max(1, round(e.after * 1000))
            await channel.put(
                pb.JobEvent(
                    error=pb.ErrorEvent(
                        message=cut(str(e), MAX_ERROR_BYTES), retryable=True, retry_after_ms=after
                    )
                )
            )
            return
        except Exception as e:  # noqa: BLE001 - every failure is reported
            await ctx._flush()
            await channel.put(_fatal(f"{type(e).__name__}: {e}"))
            return
        await ctx._flush()
        if len(result) > MAX_RESULT_BYTES:
            await channel.put(
                _fatal(f"result_too_large: the result is {len(result)} bytes; at most {MAX_RESULT_BYTES} are allowed")
            )
            return
        await channel.put(pb.JobEvent(result=pb.ResultEvent(output=result)))

    def cancel(self, job_id: bytes, lease: bytes) -> bool:
        """Cancels a running attempt (after the grace its handler is
        stopped, and its stream ends with an error saying so); one not
        running is remembered so it runs nothing if it arrives. Whether it
        ran."""
        key = (bytes(job_id), bytes(lease))
        running = self._running.get(key)
        if running is None:
            self._early[key] = None
            while len(self._early) > MAX_EARLY_CANCELS:
                self._early.popitem(last=False)
            return False
        running.ctx._cancel()

        async def stop_after_grace() -> None:
            task = running.task
            if task is None:
                return
            done, _ = await asyncio.wait({task}, timeout=self.cancel_grace)
            if not done:
                task.cancel()

        asyncio.get_running_loop().create_task(stop_after_grace())
        return True

    def health(self) -> pb.HealthResponse:
        return pb.HealthResponse(serving=not self._draining, running=len(self._running))


def _fatal(message: str) -> pb.JobEvent:
    return pb.JobEvent(error=pb.ErrorEvent(message=cut(message, MAX_ERROR_BYTES), retryable=False))


def _stopped(message: str) -> pb.JobEvent:
    """The final event of a cancelled attempt whose handler was stopped."""
    return pb.JobEvent(error=pb.ErrorEvent(message=message, retryable=True))


class _Servicer(pb_grpc.PluginServicer):
    def __init__(self, plugin: Plugin) -> None:
        self.p = plugin

    async def Metadata(self, request, context):  # noqa: N802 - gRPC names
        return pb.MetadataResponse(
            name=self.p.name, version=self.p.version, description=self.p.description, protocol=1
        )

    async def Initialize(self, request, context):  # noqa: N802
        if len(request.nonce) != 32:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"bad_nonce: a nonce is 32 bytes, not {len(request.nonce)}",
            )
        return initialize_response(self.p, request.nonce)

    async def ExecuteJob(self, request, context):  # noqa: N802
        if self.p._draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "draining: this instance takes no new attempt")
        if len(request.job_id) != 16:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "invalid_job_id: a job ID is 16 bytes")
        async for event in self.p.execute(request):
            yield event

    async def Cancel(self, request, context):  # noqa: N802
        return pb.CancelResponse(found=self.p.cancel(request.job_id, request.lease))

    async def Health(self, request, context):  # noqa: N802
        return self.p.health()

    async def Shutdown(self, request, context):  # noqa: N802
        self.p.stop()
        return pb.ShutdownResponse()

    async def Attempts(self, request_iterator, context):  # noqa: N802
        from ._streams import serve_attempts

        await serve_attempts(self.p, context)

    async def SessionRefused(self, request, context):  # noqa: N802
        print(
            f"pulse-ledger refused this plugin's session: {request.code}: {request.message}",
            file=sys.stderr,
            flush=True,
        )
        return pb.SessionRefusedResponse()


def initialize_response(
    p: Plugin, nonce: bytes, slots: int | None = None, streams: int | None = None
) -> pb.InitializeResponse:
    """The announcement and its proof for `nonce`; `slots` and attempt
    `streams` for this session (default: the plugin's)."""
    a = p.announcement()
    return pb.InitializeResponse(
        plugin=a.plugin,
        key=a.key,
        handlers=[pb.AnnouncedHandler(id=i, name=n) for i, n in a.handlers],
        serves_any=a.serves_any,
        signature=p.key.sign(proof_message(nonce, a)),
        slots=p.slots if slots is None else slots,
        attempt_streams=p.attempt_streams if streams is None else streams,
    )
