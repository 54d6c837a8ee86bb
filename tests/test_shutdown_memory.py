"""Shutdown cutting jobs off (``shutdown_timeout``): in memory mode they end FAILED with
``"aborted: shutdown timeout"`` and a ``failed`` event; with a store they go back to
QUEUED with the attempt counted.  On trio's mock clock."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioqueue
from tests.test_server_app import call
from trioqueue import JobStatus
from trioqueue.server import App


async def started(events: trio.abc.ReceiveChannel[trioqueue.Event], job_id: str) -> None:
    async for event in events:
        if event.type == "started" and event.job_id == job_id:
            return


def make_registry() -> trioqueue.TaskRegistry:
    registry = trioqueue.TaskRegistry()

    @registry.task(max_retries=3)
    async def slow(job: trioqueue.Job) -> None:
        await trio.sleep(1000)

    @registry.task()
    async def quick(job: trioqueue.Job) -> str:
        await trio.sleep(1)
        return "done"

    @registry.task(sync=True)
    def blocking(job: trioqueue.Job) -> None:  # pragma: no cover - abandoned at shutdown
        import time

        time.sleep(0.2)

    return registry


async def test_memory_mode_cut_off_jobs_end_failed_with_an_event(autojump_clock: Any) -> None:
    config = trioqueue.QueueConfig(workers=3, shutdown_timeout=5.0)
    events: list[trioqueue.Event] = []
    async with trio.open_nursery() as nursery, trioqueue.open_queue(
        make_registry(), config
    ) as q:
        async def collect() -> None:
            async with q.subscribe() as channel:
                async for event in channel:
                    events.append(event)

        nursery.start_soon(collect)
        await trio.testing.wait_all_tasks_blocked()
        a = await q.enqueue("slow", job_id="a")
        b = await q.enqueue("slow", job_id="b", priority="high")
        c = await q.enqueue("quick", job_id="c")
        await trio.testing.wait_all_tasks_blocked()
        t0 = trio.current_time()
    assert trio.current_time() - t0 == 5.0
    for job_id in (a.id, b.id):
        job = q.get_nowait(job_id)
        assert job.status is JobStatus.FAILED
        assert job.error == "aborted: shutdown timeout"
        assert job.attempts == 1
        assert job.finished_at is not None
        (await q.wait(job_id))  # a waiter sees it ended, never hangs
    assert q.get_nowait(c.id).status is JobStatus.COMPLETED
    failed = [e for e in events if e.type == "failed"]
    assert sorted(e.job_id for e in failed) == ["a", "b"]
    assert all(e.error == "aborted: shutdown timeout" for e in failed)
    m = q.metrics()
    assert (m.failed, m.completed, m.dropped, m.processing) == (2, 1, 0, 0)

    # The job JSON over HTTP says the same.
    status, _, body = await call(App(q), "GET", "/jobs/a")
    assert status == 200
    assert (body["status"], body["error"], body["attempts"]) == (
        "failed", "aborted: shutdown timeout", 1)


async def test_memory_mode_queued_jobs_still_count_as_dropped(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    """Jobs that never started are not failed: they are dropped (counted) as documented,
    unless drain=True."""
    config = trioqueue.QueueConfig(workers=1, shutdown_timeout=1.0)
    with caplog.at_level(logging.INFO, logger="trioqueue"):
        async with trioqueue.open_queue(make_registry(), config) as q:
            running = await q.enqueue("slow")
            waiting = [await q.enqueue("quick") for _ in range(3)]
            await trio.testing.wait_all_tasks_blocked()
    assert q.get_nowait(running.id).status is JobStatus.FAILED
    for job in waiting:  # gone: dropped, not failed
        with pytest.raises(trioqueue.JobNotFound, match="was dropped when the queue closed"):
            q.get_nowait(job.id)
    m = q.metrics()
    assert (m.failed, m.dropped, m.queued["medium"]) == (1, 3, 0)
    said = caplog.text  # counted in words ("1 jobs", "1 workers" were)
    assert "trioqueue open: 1 worker, capacity" in said
    assert "trioqueue: 1 job still running after shutdown_timeout=1.0s" in said
    assert "dropped 3 jobs at shutdown: 3 queued, 0 scheduled" in said


async def test_a_cancelled_queue_fails_its_running_jobs_instead_of_dropping_them(
    autojump_clock: Any,
) -> None:
    """The code around ``open_queue`` cancelled (a second Ctrl+C, a deadline): the
    shutdown does not wait, and in memory mode a job that had started ends FAILED with
    its ``failed`` event, not put back and then dropped with the queued ones."""
    config = trioqueue.QueueConfig(workers=1, shutdown_timeout=100.0)
    seen: list[tuple[str, str | None]] = []
    async with trio.open_nursery() as nursery:
        with trio.move_on_after(5) as deadline:
            async with trioqueue.open_queue(make_registry(), config) as q:

                async def collect(task_status: trio.TaskStatus[None]) -> None:
                    async with q.subscribe() as channel:
                        task_status.started()
                        seen.extend([(e.type, e.job_id) async for e in channel])

                await nursery.start(collect)
                running = await q.enqueue("slow")
                waiting = await q.enqueue("quick")
                await trio.sleep_forever()
    assert deadline.cancelled_caught
    got = q.get_nowait(running.id)
    assert (got.status, got.error, got.attempts) == (
        JobStatus.FAILED, "aborted: the queue was cancelled", 1)
    assert [t for t, job_id in seen if job_id == running.id] == ["enqueued", "started", "failed"]
    with pytest.raises(trioqueue.JobNotFound, match="was dropped when the queue closed"):
        q.get_nowait(waiting.id)
    m = q.metrics()
    assert (m.failed, m.dropped) == (1, 1)


async def test_a_sync_handler_cut_off_ends_failed_too(autojump_clock: Any) -> None:
    config = trioqueue.QueueConfig(workers=1, shutdown_timeout=0.0)
    async with trioqueue.open_queue(make_registry(), config) as q:
        async with q.subscribe() as events:
            job = await q.enqueue("blocking")
            await started(events, job.id)
    got = q.get_nowait(job.id)
    assert (got.status, got.error) == (JobStatus.FAILED, "aborted: shutdown timeout")


async def test_with_a_store_cut_off_jobs_go_back_to_queued(tmp_path: Path) -> None:
    """(The real clock: the store's thread does not mix with the mock clock's jumps.)"""
    path = tmp_path / "q.db"
    config = trioqueue.QueueConfig(workers=1, shutdown_timeout=0.05, persist_path=path)
    async with trioqueue.open_queue(make_registry(), config) as q:
        async with q.subscribe() as events:
            await q.enqueue("slow", job_id="s")
            await started(events, "s")
    got = q.get_nowait("s")
    assert (got.status, got.attempts, got.error) == (JobStatus.QUEUED, 1, None)
    assert q.metrics().failed == 0
    async with trioqueue.open_queue(make_registry(), config) as q2:
        again = await q2.get("s")
        assert again.status in (JobStatus.QUEUED, JobStatus.PROCESSING)
        assert again.attempts >= 1


async def test_a_zero_shutdown_timeout_with_nothing_running_warns_of_nothing(
    autojump_clock: Any, caplog: Any
) -> None:
    # shutdown_timeout=0 ends the wait at once; with no job running there is nothing to
    # interrupt, so no "0 jobs still running" warning.
    config = trioqueue.QueueConfig(workers=2, shutdown_timeout=0)
    async with trioqueue.open_queue(make_registry(), config) as q:
        job = await q.enqueue("quick")
        assert (await q.wait(job.id)).status is JobStatus.COMPLETED
    assert "still running" not in caplog.text
