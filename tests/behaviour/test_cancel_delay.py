"""Cancel of queued, scheduled and running jobs; delayed jobs on the mock clock."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from trioqueue import InvalidTransition, JobStatus

from .conftest import EMPTY, Backend, Harness


async def test_cancel_a_queued_job(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry, workers=1) as q:
        await q.enqueue("gated", "hold")
        await h.entered("hold")
        job = await q.enqueue("echo", "never")
        assert q.metrics().queued == {"high": 0, "medium": 1, "low": 0}
        cancelled = await q.cancel(job.id)
        assert (cancelled.status, cancelled.attempts) == (JobStatus.CANCELLED, 0)
        assert cancelled.finished_at is not None
        assert q.metrics().queued == EMPTY
        assert await q.get(job.id) == cancelled
        assert await q.wait(job.id) == cancelled
        with pytest.raises(InvalidTransition, match="cancelled"):
            await q.cancel(job.id)
        h.open_gate("hold")
        after = await q.wait((await q.enqueue("echo", "after")).id)
        assert after.status is JobStatus.COMPLETED
        assert q.metrics().cancelled == 1
    assert "never" not in [r.payload for r in h.runs]


async def test_cancel_a_scheduled_job_and_it_never_runs(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    backend.needs_virtual_time()
    async with backend.open(h.registry) as q:
        job = await q.enqueue("echo", "never", delay=60)
        marker = await q.enqueue("echo", "later", delay=120)
        assert q.metrics().scheduled == 2
        cancelled = await q.cancel(job.id)
        assert cancelled.status is JobStatus.CANCELLED
        assert q.metrics().scheduled == 1
        await q.wait(marker.id)  # past the cancelled one's due time
        m = q.metrics()
        assert (m.scheduled, m.cancelled, m.completed) == (0, 1, 1)
    assert [r.payload for r in h.runs] == ["later"]


async def test_cancel_a_running_job_interrupts_its_handler(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry, workers=1) as q:
        running = await q.enqueue("gated", "forever", max_retries=3)
        await h.entered("forever")
        waiting = await q.enqueue("echo", "next")
        assert q.metrics().processing == 1
        cancelled = await q.cancel(running.id)
        assert (cancelled.status, cancelled.attempts) == (JobStatus.CANCELLED, 1)
        assert h.interrupted == [running.id]
        # Not retried although it had retries left; the worker is free for the next job.
        done = await q.wait(waiting.id)
        assert done.status is JobStatus.COMPLETED
        assert (await q.get(running.id)).status is JobStatus.CANCELLED
        with pytest.raises(InvalidTransition, match="cancelled"):
            await q.cancel(running.id)
        m = q.metrics()
        assert (m.processing, m.busy_workers, m.cancelled, m.retried, m.failed) == (
            0, 0, 1, 0, 0,
        )
    assert [r.job_id for r in h.runs] == [running.id, waiting.id]


async def test_a_delayed_job_is_scheduled_until_due_then_runs_exactly_then(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    backend.needs_virtual_time()
    async with backend.open(h.registry) as q:
        t0 = trio.current_time()
        later = await q.enqueue("echo", "later", delay=30.0)
        sooner = await q.enqueue("echo", "sooner", delay=10.0, priority="low")
        assert later.status is JobStatus.SCHEDULED
        assert later.scheduled_for == pytest.approx(later.created_at + 30.0, abs=1e-6)
        assert sooner.scheduled_for == pytest.approx(sooner.created_at + 10.0, abs=1e-6)
        m = q.metrics()
        assert (m.scheduled, m.queued) == (2, EMPTY)
        assert (await q.get(later.id)).status is JobStatus.SCHEDULED
        assert [j.id for j in await q.list_jobs(status="scheduled")] == [sooner.id, later.id]
        done_sooner = await q.wait(sooner.id)
        assert (await q.get(later.id)).status is JobStatus.SCHEDULED
        assert q.metrics().scheduled == 1
        done_later = await q.wait(later.id)
        assert q.metrics().scheduled == 0
    starts = {r.payload: r.at - t0 for r in h.runs}
    assert starts == pytest.approx({"sooner": 10.0, "later": 30.0}, abs=1e-6)
    for done, delay in ((done_sooner, 10.0), (done_later, 30.0)):
        assert done.started_at is not None
        assert done.started_at - done.created_at == pytest.approx(delay, abs=1e-6)


async def test_a_zero_delay_is_no_delay(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry) as q:
        job = await q.enqueue("echo", delay=0)
        assert job.status is JobStatus.QUEUED
        assert job.scheduled_for is None
        assert (await q.wait(job.id)).status is JobStatus.COMPLETED


async def test_a_cancelled_caller_changes_no_job_and_sees_one_cancelled(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    """Trio's rule: ``Cancelled`` from a call means it did nothing.  ``cancel`` and
    ``retry`` in a cancelled scope leave the job as it was; ``wait_many`` cancelled from
    outside raises one ``Cancelled``, not a group of its waiters' ones."""
    async with backend.open(h.registry, workers=1) as q:
        later = await q.enqueue("echo", "later", delay=60)
        failed = await q.wait((await q.enqueue("fail", "x", max_retries=0)).id)
        assert failed.status is JobStatus.FAILED
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(trio.Cancelled):
                await q.cancel(later.id)
            with pytest.raises(trio.Cancelled):
                await q.retry(failed.id)
        assert (await q.get(later.id)).status is JobStatus.SCHEDULED
        assert (await q.get(failed.id)).status is JobStatus.FAILED
        with trio.move_on_after(0.5):  # (later is due in 60 s)
            with pytest.raises(trio.Cancelled):  # (a BaseExceptionGroup would not match)
                await q.wait_many([later.id, failed.id])
