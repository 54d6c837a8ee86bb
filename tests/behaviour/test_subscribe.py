"""subscribe(): a subscriber that fell behind is always told how many events it lost, and
a closed queue takes no new subscriber."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from trioqueue import Event, JobQueue, ShuttingDown

from .conftest import Backend, Harness, drain

GUARD = 10.0
"""Seconds (the mock clock's, which jumps there at once when every task waits; real on
Redis) after which a receive that should have returned has failed the test."""


def kinds(events: list[Event]) -> list[str | tuple[str, int | None]]:
    return [("lagged", e.dropped) if e.type == "lagged" else e.type for e in events]


async def test_a_subscriber_that_fell_behind_is_told_how_many_once_it_read_its_buffer(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    """Its ``lagged`` comes once it has read what its buffer held, though no event came
    since; then it is told nothing more until it loses events again, counted anew."""
    async with backend.open(h.registry) as q, q.subscribe(buffer=2) as events:
        jobs = [q.enqueue_nowait("echo", i) for i in range(20)]
        for job in jobs:
            await q.wait(job.id)  # 60 events: 2 kept, 58 lost
        with trio.fail_after(GUARD):
            got = [await events.receive() for _ in range(3)]
        assert kinds(got) == ["enqueued", "enqueued", ("lagged", 58)]
        assert [e.job_id for e in got[:2]] == [j.id for j in jobs[:2]]
        with pytest.raises(trio.WouldBlock):
            events.receive_nowait()  # told once
        last = q.enqueue_nowait("echo", "last")
        await q.wait(last.id)  # 3 events: 2 kept, 1 lost
        with trio.fail_after(GUARD):
            again = [await events.receive() for _ in range(3)]
        assert kinds(again) == ["enqueued", "started", ("lagged", 1)]
        assert {e.job_id for e in again[:2]} == {last.id}
        assert drain(events) == []


async def test_a_subscriber_that_fell_behind_is_told_before_its_channel_ends(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    """One that reads only after the queue closed gets its buffer, then its ``lagged``,
    then the end of the channel."""
    seen: list[Event] = []
    closed = trio.Event()

    async def consumer(q: JobQueue, task_status: trio.TaskStatus[None]) -> None:
        async with q.subscribe(buffer=2) as events:
            task_status.started()
            await closed.wait()
            async for event in events:
                seen.append(event)

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            async with backend.open(h.registry) as q:
                await nursery.start(consumer, q)
                jobs = [q.enqueue_nowait("echo", i) for i in range(20)]
                for job in jobs:
                    await q.wait(job.id)
            closed.set()  # the queue closed: the consumer reads, and its loop ends
    assert kinds(seen) == ["enqueued", "enqueued", ("lagged", 58)]


@pytest.mark.parametrize("metrics", [False, True])
async def test_subscribing_to_a_closed_queue_raises_shutting_down(
    backend: Backend, clock: MockClock | None, h: Harness, metrics: bool
) -> None:
    """The channel ends when the queue closes: once it has, there is none to give (a
    subscriber would wait forever), so ``subscribe()`` refuses, as ``enqueue`` does."""
    async with backend.open(h.registry) as q:
        await q.wait((await q.enqueue("echo", 1)).id)
    with trio.fail_after(GUARD), pytest.raises(ShuttingDown, match="closed"):
        async with q.subscribe(metrics=metrics) as events:
            pytest.fail(f"subscribed to a closed queue: {[e.type for e in drain(events)]}")
