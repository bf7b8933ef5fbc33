"""A client for applications: enqueue jobs, follow them, cancel, retry,
list, and read budgets (the Jobs API of proto/pulse_ledger/v1/jobs.proto).

    from pulse_ledger import Client

    client = Client("http://127.0.0.1:7300", token=None)
    job = client.enqueue("git.ingest", {"repo": "…"}, idempotency_key="repo-1")
    done = client.wait(job.id)
    print(done.state, done.json())

`AsyncClient` has the same methods as coroutines (and `watch` as an
async iterator). Job IDs are the 32 hex digits the CLI prints; handlers
are a did:key or a name (resolved through the registry: a name that
several handlers share is refused with their did:keys).
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import json
from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterable, Iterator
from urllib.parse import urlparse

import grpc

from .errors import PulseError, from_rpc_error
from .v1 import jobs_pb2 as jobs
from .v1 import jobs_pb2_grpc as jobs_grpc
from .v1 import registry_pb2 as registry
from .v1 import registry_pb2_grpc as registry_grpc

_FINISHED = ("succeeded", "dead", "cancelled")
_MAX_MESSAGE = 16 * 1024 * 1024


@dataclass(frozen=True)
class Attempt:
    """One attempt of a job."""

    number: int
    started_at_ms: int
    ended_at_ms: int
    outcome: str
    error: str
    cost: int


@dataclass(frozen=True)
class Job:
    """A job as the server last reported it."""

    id: str
    handler: str
    state: str
    reason: str
    priority: int
    run_at_ms: int
    attempts: int
    max_attempts: int
    total_cost: int
    progress: int
    progress_message: str
    result: bytes
    last_error: str
    idempotency_key: str
    updated_at_ms: int
    attempt_history: list[Attempt] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        """Succeeded, dead or cancelled: nothing more will happen."""
        return self.state in _FINISHED

    def json(self) -> Any:
        """The result decoded as JSON (None when empty)."""
        return json.loads(self.result) if self.result else None

    @staticmethod
    def _of(j: jobs.Job) -> "Job":
        return Job(
            id=j.id.hex(),
            handler=j.handler,
            state=j.state,
            reason=j.reason,
            priority=j.priority,
            run_at_ms=j.run_at_ms,
            attempts=j.attempts,
            max_attempts=j.max_attempts,
            total_cost=j.total_cost,
            progress=j.progress_percent,
            progress_message=j.progress_message,
            result=bytes(j.result),
            last_error=j.last_error,
            idempotency_key=j.idempotency_key,
            updated_at_ms=j.updated_at_ms,
            attempt_history=[
                Attempt(a.number, a.started_at_ms, a.ended_at_ms, a.outcome, a.error, a.cost)
                for a in j.attempt_history
            ],
        )


@dataclass(frozen=True)
class Budget:
    """A handler's budget (0: no limit) and its spend."""

    per_hour: int
    per_day: int
    spent_hour: int
    spent_day: int
    reserved: int


def _payload(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def _ms(when: _dt.datetime | int | float | None) -> int:
    if when is None:
        return 0
    if isinstance(when, _dt.datetime):
        if when.tzinfo is None:
            raise ValueError("run_at needs a time zone (datetime with tzinfo)")
        return int(when.timestamp() * 1000)
    return int(when)


def _job_id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise PulseError("invalid_job_id", f"{text!r} is not a job ID (32 hex digits)")
    return raw


def _channel_args(url: str, token: str | None, ca: str | None, aio: bool):
    """(target, credentials or None, metadata) for `url`; a token is only
    sent over TLS or to a loopback address."""
    u = urlparse(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"{url!r}: give http://HOST:PORT or https://HOST:PORT")
    port = u.port or (443 if u.scheme == "https" else 80)
    target = f"{u.hostname}:{port}" if ":" not in u.hostname else f"[{u.hostname}]:{port}"
    metadata = []
    if token:
        if u.scheme == "http":
            try:
                loopback = ipaddress.ip_address(u.hostname).is_loopback
            except ValueError:
                loopback = u.hostname == "localhost"
            if not loopback:
                raise ValueError(
                    f"{url}: a token is sent only over https (or http to a loopback address)"
                )
        metadata.append(("authorization", f"Bearer {token}"))
    creds = None
    if u.scheme == "https":
        root = open(ca, "rb").read() if ca else None
        creds = grpc.ssl_channel_credentials(root_certificates=root)
    return target, creds, metadata


def _one_named(handler: str, found: list[str]) -> str:
    """The one did:key of the handlers named `handler`."""
    if len(found) == 1:
        return found[0]
    if not found:
        raise PulseError("not_found", f"no handler is named {handler!r}")
    raise PulseError(
        "ambiguous_name",
        f"{len(found)} handlers are named {handler!r}: give one did:key of {', '.join(found)}",
    )


def _names_page(handler: str, token: bytes = b"") -> registry.ListHandlersRequest:
    return registry.ListHandlersRequest(
        name_prefix=handler, include_revoked=True, page_size=1000, page_token=token
    )


def _list_page(
    state: str | None, did: str, since_ms: int | None, oldest_first: bool,
    limit: int | None, n: int, token: bytes,
) -> jobs.ListJobsRequest:
    return jobs.ListJobsRequest(
        state=state or "",
        handler=did,
        since_ms=since_ms or 0,
        oldest_first=oldest_first,
        page_size=1000 if limit is None else max(1, min(limit - n, 1000)),
        page_token=token,
    )


def _stream_result(answer: jobs.EnqueueStreamResponse) -> Job | PulseError:
    if answer.WhichOneof("result") == "accepted":
        return Job._of(answer.accepted.job)
    return PulseError(answer.rejected.code, answer.rejected.message)


async def _aiter(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


def _enqueue_request(did: str, payload: Any = None, **kw: Any) -> jobs.EnqueueRequest:
    run_at = _ms(kw.pop("run_at", None))
    delay = kw.pop("delay", None)
    if delay is not None:
        run_at = int(_dt.datetime.now(_dt.timezone.utc).timestamp() * 1000 + delay * 1000)
    parent = kw.pop("parent", None)
    r = jobs.EnqueueRequest(
        handler=did,
        payload=_payload(payload),
        priority=kw.pop("priority", 0),
        run_at_ms=run_at,
        idempotency_key=kw.pop("idempotency_key", None) or "",
        max_attempts=kw.pop("max_attempts", None) or 0,
        timeout_ms=kw.pop("timeout_ms", None) or 0,
        max_cost=kw.pop("max_cost", None) or 0,
        parent=_job_id(parent) if parent else b"",
    )
    if kw:
        raise TypeError(f"unknown enqueue option(s): {', '.join(kw)}")
    return r


_OPTIONS = [
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.max_send_message_length", _MAX_MESSAGE),
]


class Client:
    """A blocking client (see the module's documentation)."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:7300",
        *,
        token: str | None = None,
        ca: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        target, creds, self._metadata = _channel_args(url, token, ca, aio=False)
        self._channel = (
            grpc.secure_channel(target, creds, options=_OPTIONS)
            if creds
            else grpc.insecure_channel(target, options=_OPTIONS)
        )
        self._jobs = jobs_grpc.JobsStub(self._channel)
        self._registry = registry_grpc.RegistryStub(self._channel)
        self.timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, method, request):
        try:
            return method(request, metadata=self._metadata, timeout=self.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def handler_did(self, handler: str) -> str:
        """A handler's did:key, from a did:key or its (unique) name."""
        if handler.startswith("did:"):
            return handler
        found: list[str] = []
        token = b""
        for _ in range(10):
            page = self._call(self._registry.ListHandlers, _names_page(handler, token))
            found += [h.did for h in page.handlers if h.name == handler]
            token = page.next_page_token
            if not token:
                break
        return _one_named(handler, found)

    def _request(self, handler: str, payload: Any = None, **kw: Any) -> jobs.EnqueueRequest:
        return _enqueue_request(self.handler_did(handler), payload, **kw)

    def enqueue(self, handler: str, payload: Any = None, **options: Any) -> Job:
        """Enqueues a job; returns it (an existing one for a repeated
        idempotency key). `payload`: bytes as they are, anything else as
        JSON. Options: idempotency_key, priority (0..9), run_at (aware
        datetime or Unix ms), delay (seconds), max_attempts, timeout_ms,
        max_cost, parent (a job ID)."""
        r = self._call(self._jobs.Enqueue, self._request(handler, payload, **options))
        return Job._of(r.job)

    def enqueue_many(self, items: Iterable[dict[str, Any]]) -> list[Job | PulseError]:
        """Enqueues up to 1,000 jobs under one fsync: each item a dict of
        enqueue's arguments (`handler`, `payload`, options). One result
        per item, in order: the job, or the PulseError that refused it."""
        reqs = [self._request(**dict(i)) for i in items]
        r = self._call(self._jobs.EnqueueBatch, jobs.EnqueueBatchRequest(jobs=reqs))
        out: list[Job | PulseError] = []
        for res in r.results:
            if res.WhichOneof("result") == "accepted":
                out.append(Job._of(res.accepted.job))
            else:
                out.append(PulseError(res.rejected.code, res.rejected.message))
        return out

    def enqueue_stream(self, items: Iterable[dict[str, Any]]) -> Iterator[Job | PulseError]:
        """Enqueues each item (a dict of enqueue's arguments) as it is taken
        from `items` (a generator, a queue), all on one call, and yields one
        result per item, in order, each once its job is durable: the job,
        or the PulseError that refused it. For a producer of many jobs one
        at a time: no call per job, and no batch that waits to fill. The
        server reads a few dozen jobs ahead of the answers (and keeps 64
        answers not yet read). Each handler name is looked up once per
        stream. An item whose handler does not resolve, or an error raised
        by `items` itself, ends the stream after the answers to the items
        before it, and that error is raised then."""
        failed: list[BaseException] = []
        dids: dict[str, str] = {}

        def requests() -> Iterator[jobs.EnqueueRequest]:
            # Errors (a name that does not resolve, or the producer's own)
            # are raised to the caller once the answers before them are in.
            it = iter(items)
            while True:
                try:
                    item = dict(next(it))
                except StopIteration:
                    return
                except Exception as e:
                    failed.append(e)
                    return
                try:
                    name = item.pop("handler")
                    if name not in dids:
                        dids[name] = self.handler_did(name)
                    request = _enqueue_request(dids[name], **item)
                except Exception as e:
                    failed.append(e)
                    return
                yield request

        try:
            for answer in self._jobs.EnqueueStream(requests(), metadata=self._metadata):
                yield _stream_result(answer)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        if failed:
            raise failed[0]

    def get(self, job_id: str) -> Job:
        """One job."""
        return Job._of(self._call(self._jobs.GetJob, jobs.GetJobRequest(id=_job_id(job_id))).job)

    def watch(self, job_id: str) -> Iterator[Job]:
        """The job now, then again at every change, until it finishes."""
        try:
            for j in self._jobs.WatchJob(
                jobs.WatchJobRequest(id=_job_id(job_id)), metadata=self._metadata
            ):
                yield Job._of(j)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Waits until the job finishes (at most `timeout` seconds:
        PulseError `deadline_exceeded` then); the finished job."""
        try:
            stream = self._jobs.WatchJob(
                jobs.WatchJobRequest(id=_job_id(job_id)), metadata=self._metadata, timeout=timeout
            )
            last = None
            for j in stream:
                last = Job._of(j)
                if last.finished:
                    stream.cancel()
                    return last
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        if last is None:
            raise PulseError("not_found", f"no job {job_id}")
        return last

    def cancel(self, job_id: str) -> Job:
        """Cancels a job that has not finished."""
        return Job._of(
            self._call(self._jobs.CancelJob, jobs.CancelJobRequest(id=_job_id(job_id))).job
        )

    def retry(self, job_id: str) -> Job:
        """Runs a dead or cancelled job again (same ID, a new series of
        attempts)."""
        return Job._of(
            self._call(self._jobs.RetryJob, jobs.RetryJobRequest(id=_job_id(job_id))).job
        )

    def list(
        self,
        state: str | None = None,
        handler: str | None = None,
        since_ms: int | None = None,
        oldest_first: bool = False,
        limit: int | None = 100,
    ) -> Iterator[Job]:
        """Jobs, newest first (every state unless `state`), at most `limit`
        (None: all), fetched a page at a time."""
        did = self.handler_did(handler) if handler else ""
        token = b""
        n = 0
        while True:
            page = self._call(
                self._jobs.ListJobs,
                _list_page(state, did, since_ms, oldest_first, limit, n, token),
            )
            for j in page.jobs:
                if limit is not None and n >= limit:
                    return
                n += 1
                yield Job._of(j)
            token = page.next_page_token
            if not token or (limit is not None and n >= limit):
                return

    def budget(self, handler: str | None = None) -> Budget:
        """A handler's budget and spend (None: the default budget)."""
        r = self._call(
            self._jobs.GetBudget,
            jobs.GetBudgetRequest(handler=self.handler_did(handler) if handler else ""),
        )
        return Budget(r.per_hour, r.per_day, r.spent_hour, r.spent_day, r.reserved)

    def set_budget(self, handler: str | None, per_hour: int = 0, per_day: int = 0) -> None:
        """Sets a handler's budget (None: the default); 0 means no limit."""
        self._call(
            self._jobs.SetBudget,
            jobs.SetBudgetRequest(
                handler=self.handler_did(handler) if handler else "",
                per_hour=per_hour,
                per_day=per_day,
            ),
        )


class AsyncClient:
    """The asyncio client: `Client`'s methods as coroutines."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:7300",
        *,
        token: str | None = None,
        ca: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        target, creds, self._metadata = _channel_args(url, token, ca, aio=True)
        self._channel = (
            grpc.aio.secure_channel(target, creds, options=_OPTIONS)
            if creds
            else grpc.aio.insecure_channel(target, options=_OPTIONS)
        )
        self._jobs = jobs_grpc.JobsStub(self._channel)
        self._registry = registry_grpc.RegistryStub(self._channel)
        self.timeout = timeout

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _call(self, method, request):
        try:
            return await method(request, metadata=self._metadata, timeout=self.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    async def handler_did(self, handler: str) -> str:
        if handler.startswith("did:"):
            return handler
        found: list[str] = []
        token = b""
        for _ in range(10):
            page = await self._call(self._registry.ListHandlers, _names_page(handler, token))
            found += [h.did for h in page.handlers if h.name == handler]
            token = page.next_page_token
            if not token:
                break
        return _one_named(handler, found)

    async def enqueue(self, handler: str, payload: Any = None, **options: Any) -> Job:
        did = await self.handler_did(handler)
        r = await self._call(self._jobs.Enqueue, _enqueue_request(did, payload, **options))
        return Job._of(r.job)

    async def enqueue_many(self, items: Iterable[dict[str, Any]]) -> list[Job | PulseError]:
        reqs = []
        for item in items:
            item = dict(item)
            did = await self.handler_did(item.pop("handler"))
            reqs.append(_enqueue_request(did, **item))
        r = await self._call(self._jobs.EnqueueBatch, jobs.EnqueueBatchRequest(jobs=reqs))
        return [
            Job._of(res.accepted.job)
            if res.WhichOneof("result") == "accepted"
            else PulseError(res.rejected.code, res.rejected.message)
            for res in r.results
        ]

    async def enqueue_stream(
        self, items: Iterable[dict[str, Any]] | AsyncIterable[dict[str, Any]]
    ) -> AsyncIterator[Job | PulseError]:
        """As Client.enqueue_stream; `items` may be an async iterable."""
        failed: list[BaseException] = []
        dids: dict[str, str] = {}

        async def requests() -> AsyncIterator[jobs.EnqueueRequest]:
            it = _aiter(items).__aiter__()
            while True:
                try:
                    item = dict(await it.__anext__())
                except StopAsyncIteration:
                    return
                except Exception as e:
                    failed.append(e)
                    return
                try:
                    name = item.pop("handler")
                    if name not in dids:
                        dids[name] = await self.handler_did(name)
                    request = _enqueue_request(dids[name], **item)
                except Exception as e:
                    failed.append(e)
                    return
                yield request

        try:
            async for answer in self._jobs.EnqueueStream(requests(), metadata=self._metadata):
                yield _stream_result(answer)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        if failed:
            raise failed[0]

    async def get(self, job_id: str) -> Job:
        r = await self._call(self._jobs.GetJob, jobs.GetJobRequest(id=_job_id(job_id)))
        return Job._of(r.job)

    async def list(
        self,
        state: str | None = None,
        handler: str | None = None,
        since_ms: int | None = None,
        oldest_first: bool = False,
        limit: int | None = 100,
    ) -> AsyncIterator[Job]:
        did = await self.handler_did(handler) if handler else ""
        token = b""
        n = 0
        while True:
            page = await self._call(
                self._jobs.ListJobs,
                _list_page(state, did, since_ms, oldest_first, limit, n, token),
            )
            for j in page.jobs:
                if limit is not None and n >= limit:
                    return
                n += 1
                yield Job._of(j)
            token = page.next_page_token
            if not token or (limit is not None and n >= limit):
                return

    async def watch(self, job_id: str) -> AsyncIterator[Job]:
        try:
            async for j in self._jobs.WatchJob(
                jobs.WatchJobRequest(id=_job_id(job_id)), metadata=self._metadata
            ):
                yield Job._of(j)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:
        last = None
        try:
            async for j in self._jobs.WatchJob(
                jobs.WatchJobRequest(id=_job_id(job_id)), metadata=self._metadata, timeout=timeout
            ):
                last = Job._of(j)
                if last.finished:
                    return last
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        if last is None:
            raise PulseError("not_found", f"no job {job_id}")
        return last

    async def cancel(self, job_id: str) -> Job:
        r = await self._call(self._jobs.CancelJob, jobs.CancelJobRequest(id=_job_id(job_id)))
        return Job._of(r.job)

    async def retry(self, job_id: str) -> Job:
        r = await self._call(self._jobs.RetryJob, jobs.RetryJobRequest(id=_job_id(job_id)))
        return Job._of(r.job)

    async def budget(self, handler: str | None = None) -> Budget:
        did = await self.handler_did(handler) if handler else ""
        r = await self._call(self._jobs.GetBudget, jobs.GetBudgetRequest(handler=did))
        return Budget(r.per_hour, r.per_day, r.spent_hour, r.spent_day, r.reserved)

    async def set_budget(self, handler: str | None, per_hour: int = 0, per_day: int = 0) -> None:
        did = await self.handler_did(handler) if handler else ""
        await self._call(
            self._jobs.SetBudget,
            jobs.SetBudgetRequest(handler=did, per_hour=per_hour, per_day=per_day),
        )
