"""Shutdown: in-flight jobs finish, intake is refused, waiters are released."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from trioqueue import InvalidTransition, JobNotFound, JobQueue, JobStatus, ShuttingDown

from .conftest import Backend, Harness, real_time_scale, settle


async def test_jobs_in_flight_finish_and_intake_is_refused_while_closing(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    backend.needs_virtual_time()
    refused: list[str] = []
    async with trio.open_nursery() as outer:
        async with backend.open(h.registry, workers=4, shutdown_timeout=60.0) as q:
            jobs = [await q.enqueue("sleep", 20) for _ in range(4)]
            await settle()
            assert q.metrics().processing == 4
            t0 = trio.current_time()

            async def late_producer() -> None:
                await trio.sleep(5)  # the queue is closing by now, its jobs still running
                assert q.closing
                try:
                    await q.enqueue("echo", "late")
                except ShuttingDown:
                    refused.append("enqueue")
                try:
                    q.enqueue_nowait("echo", "late")
                except ShuttingDown:
                    refused.append("enqueue_nowait")
                # Reads still work while the queue closes.
                assert (await q.get(jobs[0].id)).status is JobStatus.PROCESSING

            outer.start_soon(late_producer)
        closed_at = trio.current_time()
    assert closed_at - t0 == pytest.approx(20.0, abs=1e-6)  # the jobs ran to their end
    assert refused == ["enqueue", "enqueue_nowait"]
    for job in jobs:
        assert (await q.get(job.id)).status is JobStatus.COMPLETED
    m = q.metrics()
    assert (m.completed, m.rejected, m.processing) == (4, 2, 0)


async def test_after_close_new_jobs_are_refused(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry) as q:
        done = await q.wait((await q.enqueue("echo", "before")).id)
    with pytest.raises(ShuttingDown):
        await q.enqueue("echo")
    with pytest.raises(ShuttingDown):
        q.enqueue_nowait("echo")
    with pytest.raises(ShuttingDown):
        await q.retry(done.id)
    assert q.closing
    assert q.metrics().rejected == 3


async def test_after_close_an_enqueue_with_an_id_is_refused_with_shutting_down(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    """With a store, the id is not looked up in the closed store first (StoreError)."""
    async with backend.open(h.registry) as q:
        await q.wait((await q.enqueue("echo", "before", job_id="before")).id)
    with pytest.raises(ShuttingDown):
        await q.enqueue("echo", "new", job_id="new")
    with pytest.raises(ShuttingDown):
        await q.enqueue("echo", "before", job_id="before")


async def test_waiting_for_an_unfinished_job_raises_shutting_down_at_and_after_close(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    outcome: list[BaseException] = []
    async with trio.open_nursery() as outer:
        async with backend.open(h.registry, workers=1,
                                shutdown_timeout=real_time_scale(clock)) as q:
            running = await q.enqueue("gated", "never")
            await h.entered("never")
            queued = await q.enqueue("echo", "never runs")
            scheduled = await q.enqueue("echo", "much later", delay=3600)

            async def waiter(job_id: str) -> None:
                try:
                    await q.wait(job_id)
                except ShuttingDown as exc:
                    outcome.append(exc)

            for job in (running, queued, scheduled):
                outer.start_soon(waiter, job.id)
            await settle()
            assert outcome == []
    # The running job was cut off by shutdown_timeout: it never stays PROCESSING, and
    # its attempt counts.  In memory mode it ended FAILED (its waiter got it); with a
    # store it went back to QUEUED, unfinished like the others.
    unfinished = [queued, scheduled] if backend.id == "memory" else [running, queued, scheduled]
    assert len(outcome) == len(unfinished)
    assert all(isinstance(exc, ShuttingDown) for exc in outcome)
    for job in unfinished:
        with pytest.raises(ShuttingDown):
            await q.wait(job.id)
    cut = await q.get(running.id)
    assert cut.status is not JobStatus.PROCESSING
    assert cut.attempts == 1
    if backend.id == "memory":
        assert (cut.status, cut.error) == (JobStatus.FAILED, "aborted: shutdown timeout")
    assert h.interrupted == [running.id]
    assert q.metrics().processing == 0


async def test_a_producer_waiting_for_room_is_refused_when_the_queue_closes(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    outcome: list[str] = []
    async with trio.open_nursery() as outer:
        async with backend.open(h.registry, workers=1, capacity=1,
                                shutdown_timeout=real_time_scale(clock)) as q:
            await q.enqueue("gated", "never")
            await h.entered("never")
            q.enqueue_nowait("echo", "fills the queue")

            async def producer() -> None:
                try:
                    await q.enqueue("echo", "waits")
                    outcome.append("accepted")
                except ShuttingDown:
                    outcome.append("refused")

            outer.start_soon(producer)
            await settle()
            assert outcome == []
    assert outcome == ["refused"]
    m = q.metrics()
    assert (m.enqueued, m.rejected) == (2, 1)  # the gated job and the one in the queue


async def test_an_exception_in_the_body_comes_out_as_itself_after_shutdown(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    scale = real_time_scale(clock)

    async def body() -> None:
        async with backend.open(h.registry, shutdown_timeout=30 * scale) as q:
            queues.append(q)
            async with q.subscribe() as events:
                await q.enqueue("sleep", 3 * scale, job_id="in-flight")
                async for event in events:  # in flight: its handler started
                    if event.type == "started":
                        break
            raise KeyError("mine")

    queues: list[JobQueue] = []
    with pytest.raises(KeyError, match="mine"):
        await body()
    q = queues[0]
    job = await q.get("in-flight")
    assert job.status is JobStatus.COMPLETED  # the job in flight finished first


async def test_a_closed_queue_answers_or_says_it_is_closed(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    """After the queue closed, a look-up answers from what the queue still holds, or
    raises ``ShuttingDown`` (the queue is closed) or what it would raise open: never a
    ``StoreError`` (a store queue said "the store is closed", though python-api.md gives
    ``wait`` ``ShuttingDown`` for a queue that closed)."""
    async with backend.open(h.registry, finished_cache=1) as q:
        jobs = [await q.enqueue("echo", i) for i in range(3)]
        await q.wait_many([job.id for job in jobs])  # (the first ones leave memory)
    calls = {"get": lambda: q.get(jobs[0].id), "get unknown": lambda: q.get("nope"),
             "wait": lambda: q.wait(jobs[0].id), "wait unknown": lambda: q.wait("nope"),
             "list": lambda: q.list_jobs(), "cancel": lambda: q.cancel(jobs[0].id)}
    for name, call in calls.items():
        try:
            await call()
        except (ShuttingDown, JobNotFound, InvalidTransition):
            pass
        except Exception as exc:  # pragma: no cover - the failure this test is about
            pytest.fail(f"{name}: {type(exc).__name__}: {exc}")
