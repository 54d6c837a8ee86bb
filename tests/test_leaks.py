"""What a long-running queue keeps: nothing per call once the call is over.

Counts of internal objects after many cycles of a call (no wall-clock figures; the
soak that measures RSS, fds and tasks over minutes is ``benchmarks/soak_leaks.py``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import trio
import trio.testing

import trioqueue
from trioqueue import Job, JobStatus, QueueConfig, TaskRegistry
from trioqueue.testing import LocalBackend, SqliteStore

CYCLES = 1000

registry = TaskRegistry()


@registry.task
async def echo(job: Job) -> Any:
    return job.payload


@registry.task
async def hold(job: Job) -> None:
    await trio.sleep_forever()


def waiters_of(q: trioqueue.JobQueue, job_id: str) -> int:
    rec = LocalBackend.of(q).get_nowait(job_id)
    assert rec is not None
    return len(rec.waiters or ())


async def test_waits_cut_short_leave_nothing_on_a_job_that_stays_live(
    autojump_clock: Any,
) -> None:
    """A poll (``wait`` under a timeout, in a loop) of a scheduled or running job kept
    one waiter per call on the job until it ended: memory without bound for a job that
    runs (or waits) long."""
    async with trioqueue.open_queue(registry, QueueConfig(workers=1)) as q:
        scheduled = await q.enqueue("echo", 1, delay=3600.0)
        running = await q.enqueue("hold")
        await trio.testing.wait_all_tasks_blocked()
        assert (await q.get(running.id)).status is JobStatus.PROCESSING
        for _ in range(CYCLES):
            for job_id in (scheduled.id, running.id):
                with trio.move_on_after(0.01):
                    await q.wait(job_id)
            with trio.move_on_after(0.01):
                await q.wait_many([scheduled.id, running.id])
        assert waiters_of(q, scheduled.id) == 0
        assert waiters_of(q, running.id) == 0

        # A wait still in progress is woken when the job ends, as before.
        async with trio.open_nursery() as nursery:
            done: list[Job] = []

            async def waiter() -> None:
                done.append(await q.wait(scheduled.id))

            nursery.start_soon(waiter)
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert waiters_of(q, scheduled.id) == 2
            with trio.move_on_after(0.01):
                await q.wait(scheduled.id)  # one more, cut short: the two others stay
            assert waiters_of(q, scheduled.id) == 2
            await q.cancel(scheduled.id)
        assert [job.status for job in done] == [JobStatus.CANCELLED] * 2
        await q.cancel(running.id)


def test_the_store_keeps_a_reader_connection_per_read_in_progress_not_per_thread(
    tmp_path: Path,
) -> None:
    """Trio ends a worker thread idle for 10 s and starts a new one when needed: the
    store opened a reader connection (two fds, its caches) for every thread that ever
    read, and kept them all until it closed."""
    store = SqliteStore.open(tmp_path / "jobs.db")
    try:
        for _ in range(50):  # one read in each of 50 threads, one thread after another
            thread = threading.Thread(target=store.get, args=("no-such-job",))
            thread.start()
            thread.join()
        assert store.reader_connections() == 1

        for _ in range(20):
            thread = threading.Thread(target=store.newest, args=(None, 10),  # a cursor
                                      kwargs={"max_bytes": 1 << 20})
            thread.start()
            thread.join()
        assert store.reader_connections() == 1
    finally:
        store.close()
