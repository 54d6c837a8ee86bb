"""Per-task ``concurrency``: a limited task flooding the queue holds back no other task,
and never runs more than its limit at once."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from trioqueue import Job, JobStatus, TaskRegistry

from .conftest import Backend


async def test_a_limited_task_flooding_the_queue_holds_back_no_other_task(
    backend: Backend, clock: MockClock | None
) -> None:
    reg = TaskRegistry()
    release = trio.Event()
    entered = trio.Event()
    running = 0
    most = 0
    limited_order: list[int] = []

    @reg.task(concurrency=2)
    async def limited(job: Job) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        limited_order.append(job.payload)
        try:
            if job.payload < 2:
                if job.payload == 1:
                    entered.set()
                await release.wait()
            else:
                await trio.sleep(0.01)
        finally:
            running -= 1

    @reg.task
    async def other(job: Job) -> int:
        return int(job.payload)

    async with backend.open(reg, workers=4, capacity=200) as q:
        for i in range(30):
            await q.enqueue("limited", i)
        with trio.fail_after(60):
            await entered.wait()  # both of the limited task's slots are taken
            # Other tasks' jobs run meanwhile on the two free workers.
            others = [await q.enqueue("other", i) for i in range(20)]
            for job in others:
                assert (await q.wait(job.id)).status is JobStatus.COMPLETED
            assert sorted(limited_order) == [0, 1]
            release.set()
            jobs = await q.list_jobs(task="limited", limit=100)
            for job in jobs:
                assert (await q.wait(job.id)).status is JobStatus.COMPLETED
    assert most == 2
    assert limited_order[2:] == list(range(2, 30))  # the rest in the order enqueued


async def test_a_job_waiting_for_its_tasks_limit_is_cancelled_without_running(
    backend: Backend, clock: MockClock | None
) -> None:
    """The guide: a job set aside by its task's ``concurrency`` can be cancelled, and it
    then never runs (on Redis it waited on the node that claimed it, ran when a slot came
    free, and the cancel returned it COMPLETED)."""
    reg = TaskRegistry()
    release = trio.Event()
    entered = trio.Event()
    ran: list[str] = []

    @reg.task(concurrency=1)
    async def limited(job: Job) -> None:
        ran.append(job.id)
        entered.set()
        await release.wait()

    async with backend.open(reg, workers=3) as q:
        await q.enqueue("limited", job_id="first")
        with trio.fail_after(30):
            await entered.wait()
            waiting = [await q.enqueue("limited", job_id=f"w{i}") for i in range(2)]
            await trio.sleep(0.2 if clock is None else 0)  # (Redis: claimed, set aside)
            cancelled = await q.cancel("w0")
            assert cancelled.status is JobStatus.CANCELLED
            release.set()
            assert (await q.wait("first")).status is JobStatus.COMPLETED
            assert (await q.wait(waiting[1].id)).status is JobStatus.COMPLETED
            assert (await q.get("w0")).status is JobStatus.CANCELLED
    assert ran == ["first", "w1"]
