"""Backpressure: capacity per priority, waiting producers, and producers that give up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from trioqueue import Job, JobNotFound, JobQueue, JobStatus, QueueFull

from .conftest import EMPTY, Backend, Harness, settle


@asynccontextmanager
async def one_busy_worker(backend: Backend, h: Harness, **config: Any) -> AsyncIterator[JobQueue]:
    """A queue whose only worker is held by a ``gated`` job (gate "hold")."""
    async with backend.open(h.registry, workers=1, **config) as q:
        await q.enqueue("gated", "hold", priority="high")
        await h.entered("hold")
        yield q


async def test_enqueue_nowait_is_refused_when_a_priority_is_full_and_others_are_not(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with one_busy_worker(backend, h, capacity=2) as q:
        medium = [q.enqueue_nowait("echo", i) for i in range(2)]
        with pytest.raises(QueueFull, match="medium"):
            q.enqueue_nowait("echo", "one too many")
        with pytest.raises(QueueFull, match="medium"):
            q.enqueue_nowait("echo", "named", job_id="refused")
        # The other priorities have their own room.
        others = [q.enqueue_nowait("echo", p, priority=p) for p in ("high", "low", "high")]
        with pytest.raises(QueueFull, match="high"):
            q.enqueue_nowait("echo", priority="high")
        m = q.metrics()
        assert m.queued == {"high": 2, "medium": 2, "low": 1}
        assert (m.enqueued, m.rejected) == (1 + 2 + 3, 3)
        with pytest.raises(JobNotFound):
            await q.get("refused")  # a refused job leaves nothing behind
        h.open_gate("hold")
        for job in medium + others:
            assert (await q.wait(job.id)).status is JobStatus.COMPLETED
        assert q.metrics().queued == EMPTY


async def test_await_enqueue_waits_for_room_and_gets_in_when_a_job_leaves(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with one_busy_worker(backend, h, capacity=1) as q:
        first = q.enqueue_nowait("gated", "second", priority="high")
        got: list[Job] = []

        async def producer() -> None:
            got.append(await q.enqueue("echo", "waited", priority="high"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer)
            await settle()
            assert got == []  # waiting for room, not refused
            low = q.enqueue_nowait("echo", "low has room", priority="low")
            assert q.metrics().rejected == 0
            h.open_gate("hold")  # the worker takes `first`: room for one
            await h.entered("second")
        assert [j.payload for j in got] == ["waited"]
        assert got[0].status is JobStatus.QUEUED
        h.open_gate("second")
        for job in (first, got[0], low):
            assert (await q.wait(job.id)).status is JobStatus.COMPLETED


async def test_a_cancelled_queued_job_makes_room_for_a_waiting_producer(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with one_busy_worker(backend, h, capacity=1) as q:
        queued = q.enqueue_nowait("echo", "in the way")
        got: list[Job] = []

        async def producer() -> None:
            got.append(await q.enqueue("echo", "waited"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer)
            await settle()
            assert got == []
            await q.cancel(queued.id)
        assert [j.payload for j in got] == ["waited"]
        assert q.metrics().queued == {"high": 0, "medium": 1, "low": 0}
        h.open_gate("hold")
        assert (await q.wait(got[0].id)).status is JobStatus.COMPLETED


async def test_a_producer_that_gives_up_while_waiting_leaves_no_trace(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with one_busy_worker(backend, h, capacity=1) as q:
        queued = q.enqueue_nowait("echo", "fills the queue")
        before = q.metrics()
        accepted: list[str] = []
        gave_up = trio.CancelScope()

        async def producer(tag: str, scope: trio.CancelScope | None = None) -> None:
            with scope or trio.CancelScope():
                accepted.append((await q.enqueue("echo", tag, job_id=tag)).payload)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer, "quitter", gave_up)
            await settle()
            nursery.start_soon(producer, "patient")
            await settle()
            gave_up.cancel()
            await settle()
            assert accepted == []
            m = q.metrics()
            assert (m.enqueued, m.rejected, m.queued) == (
                before.enqueued, before.rejected, before.queued,
            )
            await q.cancel(queued.id)  # room for one: it goes to the one still waiting
        assert accepted == ["patient"]
        with pytest.raises(JobNotFound):
            await q.get("quitter")
        assert "quitter" not in {j.id for j in await q.list_jobs()}
        h.open_gate("hold")
        assert (await q.wait("patient")).status is JobStatus.COMPLETED
        # The id of the job that was never accepted is free.
        again = await q.enqueue("echo", {"other": "body"}, job_id="quitter")
        assert (await q.wait(again.id)).result == {"other": "body"}
    assert "quitter" not in [r.payload for r in h.runs if r.task == "echo"]


async def test_each_job_taken_lets_one_waiting_producer_in_until_all_are_in(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with one_busy_worker(backend, h, capacity=2) as q:
        pre = [q.enqueue_nowait("echo", f"pre{i}") for i in range(2)]
        accepted: list[Job] = []

        async def producer(tag: str) -> None:
            accepted.append(await q.enqueue("echo", tag))

        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(producer, f"p{i}")
            await settle()
            assert accepted == []
            h.open_gate("hold")
        assert sorted(j.payload for j in accepted) == [f"p{i}" for i in range(6)]
        for job in pre + accepted:
            assert (await q.wait(job.id)).status is JobStatus.COMPLETED
        m = q.metrics()
        assert (m.enqueued, m.completed, m.rejected, m.queued) == (9, 9, 0, EMPTY)


async def test_producers_of_the_same_id_do_not_swallow_room_meant_for_others(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    """A producer woken for room that finds its id taken by another producer returns
    the job there, and the room it was woken for goes on to the next in line."""
    async with one_busy_worker(backend, h, capacity=1) as q:
        filler = q.enqueue_nowait("echo", "filler")
        results: dict[str, Job] = {}
        done = {name: trio.Event() for name in "abc"}

        async def producer(name: str, job_id: str) -> None:
            results[name] = await q.enqueue("echo", job_id, job_id=job_id)
            done[name].set()

        async with trio.open_nursery() as nursery:
            for name, job_id in (("a", "same"), ("b", "same"), ("c", "other")):
                nursery.start_soon(producer, name, job_id)
                await settle()
            assert results == {}
            await q.cancel(filler.id)  # room for one: "a" takes it with job "same"
            with trio.move_on_after(60):
                await done["a"].wait()
            assert set(results) == {"a"}
            await q.cancel("same")  # room again: "b" finds "same" taken and returns
            # The queue is empty: "c" must get in, not wait for room (a guard only: the
            # clock reaches it when nothing else can happen).
            with trio.move_on_after(60):
                await done["b"].wait()
                await done["c"].wait()
            in_time = set(results)
            nursery.cancel_scope.cancel()
        assert in_time == {"a", "b", "c"}
        assert results["b"].id == results["a"].id == "same"


async def test_delayed_jobs_have_their_own_bound_per_priority(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    backend.needs_virtual_time()
    async with backend.open(h.registry, capacity=2) as q:
        delayed = [q.enqueue_nowait("echo", i, delay=10) for i in range(2)]
        with pytest.raises(QueueFull, match="medium"):
            q.enqueue_nowait("echo", delay=10)
        low = q.enqueue_nowait("echo", "low", delay=10, priority="low")
        ready = [q.enqueue_nowait("echo", i) for i in range(2)]  # the ready queue is apart
        for job in (*delayed, low, *ready):
            assert (await q.wait(job.id)).status is JobStatus.COMPLETED
        later = q.enqueue_nowait("echo", delay=10)  # room again once they came due
        assert (await q.wait(later.id)).status is JobStatus.COMPLETED
        assert q.metrics().rejected == 1


async def test_a_full_delayed_bound_is_named_as_such(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    """``QueueFull`` for a delayed job says the jobs waiting for a due time fill the
    bound, not the ready queue, which is empty (Redis said "2 jobs already waiting")."""
    async with backend.open(h.registry, capacity=2) as q:
        for i in range(2):
            await q.enqueue("echo", i, delay=600)
        why = "priority medium: 2 jobs already waiting for a due time"
        with pytest.raises(QueueFull, match=f"^{why}$"):
            q.enqueue_nowait("echo", delay=600)
        with pytest.raises(QueueFull, match=f"^{why}$"):
            await q.enqueue("echo", delay=600, wait_for_room=False)


async def test_a_delayed_job_coming_due_enters_a_full_ready_queue(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    """python-api.md, "Capacity, precisely": a job accepted already is never refused; a
    delayed job coming due enters its ready queue even when it is full, and producers see
    the queue full until it drains below the bound.  (On Redis it stayed SCHEDULED past
    its due time until there was room.)"""
    async with one_busy_worker(backend, h, capacity=2) as q, q.subscribe() as events:
        late = await q.enqueue("echo", "late", delay=0.5)
        ready = [await q.enqueue("echo", i) for i in range(2)]  # the ready queue is full
        with trio.fail_after(30):  # (on Redis, real time: the delay is on its clock)
            async for event in events:
                if (event.job_id, event.type) == (late.id, "enqueued"):
                    break
        assert (await q.get(late.id)).status is JobStatus.QUEUED
        assert {j.id for j in await q.list_jobs(status="queued")} == {late.id,
                                                                      *(j.id for j in ready)}
        with pytest.raises(QueueFull):
            q.enqueue_nowait("echo", "new")
        h.open_gate("hold")
        for job in (*ready, late):
            assert (await q.wait(job.id)).status is JobStatus.COMPLETED
        after = await q.enqueue("echo", "after")
        assert (await q.wait(after.id)).status is JobStatus.COMPLETED
