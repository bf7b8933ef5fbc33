"""A cancelled attempt ends with a final event once its handler has
stopped (spec/plugin.md, "Plugin service"): Pulse keeps the attempt's slot
until then, so a handler still winding down never runs beside the attempt
given its slot."""

import asyncio

from pulse_ledger import Plugin
from pulse_ledger.keyfile import Key
from pulse_ledger.v1 import plugin_pb2 as pb


def plugin(grace: float) -> Plugin:
    p = Plugin(key=Key.from_seed(bytes(32)), name="cancel-test", version="1.0.0", cancel_grace=grace)

    @p.handler("stubborn")
    async def stubborn(ctx, payload):
        await asyncio.sleep(60)  # ignores the cancel
        return "late"

    @p.handler("polite")
    async def polite(ctx, payload):
        while not ctx.cancelled:
            await asyncio.sleep(0.01)
        return "stopped"

    return p


def request(name: str, job: int) -> pb.ExecuteJobRequest:
    return pb.ExecuteJobRequest(
        job_id=bytes([job]) * 16, lease=bytes([job]) * 16, attempt=1, handler_name=name,
        heartbeat_interval_ms=60_000,
    )


async def run_and_cancel(p: Plugin, r: pb.ExecuteJobRequest) -> tuple[list[pb.JobEvent], float, bool]:
    """Runs `r`, cancels it once it runs; its events, how long after the
    cancel the stream ended, and whether the handler was still running
    when the last event came."""
    loop = asyncio.get_running_loop()
    events: list[pb.JobEvent] = []
    cancelled_at = 0.0

    async def cancel_soon() -> None:
        nonlocal cancelled_at
        # (A cancel before the attempt runs is remembered as an early one.)
        while (bytes(r.job_id), bytes(r.lease)) not in p._running:
            await asyncio.sleep(0.01)
        assert p.cancel(r.job_id, r.lease)
        cancelled_at = loop.time()

    canceller = loop.create_task(cancel_soon())
    async for e in p.execute(r):
        events.append(e)
    await canceller
    return events, loop.time() - cancelled_at, (bytes(r.job_id), bytes(r.lease)) in p._running


def test_a_handler_that_ignores_the_cancel_ends_with_an_error_after_the_grace():
    events, after, running = asyncio.run(run_and_cancel(plugin(0.3), request("stubborn", 1)))
    last = events[-1]
    assert last.WhichOneof("event") == "error", events
    assert last.error.message == "cancelled: the handler did not stop within the cancel grace (300 ms)"
    assert last.error.retryable
    assert after >= 0.3, "the final event came before the handler was stopped"
    assert not running


def test_a_handler_that_stops_on_the_cancel_ends_with_an_error_not_its_result():
    # What it returned after the cancel is not its work done: the job must
    # not end succeeded with it.
    events, _, running = asyncio.run(run_and_cancel(plugin(5.0), request("polite", 2)))
    assert [e.WhichOneof("event") for e in events] == ["error"], events
    assert events[-1].error.message == "cancelled: the handler stopped"
    assert events[-1].error.retryable
    assert not running


def test_an_attempt_cancelled_before_it_arrives_says_so():
    p = plugin(1.0)
    r = request("polite", 3)
    assert not p.cancel(r.job_id, r.lease)

    async def run() -> list[pb.JobEvent]:
        return [e async for e in p.execute(r)]

    events = asyncio.run(run())
    assert [e.error.message for e in events] == ["cancelled before it started"]
