"""``enqueue_many`` / ``enqueue_many_nowait`` / ``wait_many``: a batch is admitted whole
or not at all, waits for room for all of it, and with a store costs one commit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioqueue
from trioqueue import (
    InvalidJob,
    Job,
    JobStatus,
    QueueConfig,
    QueueFull,
    ShuttingDown,
    TaskRegistry,
    UnknownTask,
)
from trioqueue.testing import LocalBackend


def make_registry(gate: trio.Event | None = None,
                  entered: trio.Event | None = None) -> TaskRegistry:
    registry = TaskRegistry()

    @registry.task
    async def double(job: Job) -> Any:
        if entered is not None:
            entered.set()
        if gate is not None:
            await gate.wait()
        return job.payload["n"] * 2

    return registry


async def test_enqueue_many_and_wait_many_in_order(autojump_clock: Any) -> None:
    async with trioqueue.open_queue(make_registry(), QueueConfig(workers=3)) as q:
        jobs = await q.enqueue_many("double", [{"n": i} for i in range(10)], priority="low")
        assert [j.payload for j in jobs] == [{"n": i} for i in range(10)]
        assert all(j.priority is trioqueue.Priority.LOW for j in jobs)
        assert len({j.id for j in jobs}) == 10
        done = await q.wait_many([j.id for j in reversed(jobs)])
        assert [d.id for d in done] == [j.id for j in reversed(jobs)]
        assert [d.result for d in done] == [2 * i for i in reversed(range(10))]
        assert all(d.status is JobStatus.COMPLETED for d in done)
        assert await q.enqueue_many("double", []) == []
        assert await q.wait_many([]) == []


async def test_invalid_payload_names_its_index_and_admits_nothing(autojump_clock: Any) -> None:
    async with trioqueue.open_queue(make_registry(), QueueConfig(workers=1)) as q:
        with pytest.raises(InvalidJob, match=r"^payloads\[2\]: not JSON"):
            await q.enqueue_many("double", [{"n": 1}, {"n": 2}, {"n": object()}, {"n": 4}])
        with pytest.raises(InvalidJob, match=r"payloads\[1\]"):
            q.enqueue_many_nowait("double", [{"n": 1}, {"n": float("nan")}])
        with pytest.raises(InvalidJob, match=r"^priority"):
            await q.enqueue_many("double", [{"n": 1}], priority="urgent")
        with pytest.raises(InvalidJob, match=r"^payloads: expected a list"):
            await q.enqueue_many("double", "abc")
        with pytest.raises(UnknownTask):
            await q.enqueue_many("nope", [1])
        assert q.metrics().enqueued == 0
        assert LocalBackend.of(q).jobs_in_memory() == 0


async def test_batch_larger_than_capacity_is_invalid(autojump_clock: Any) -> None:
    async with trioqueue.open_queue(make_registry(), QueueConfig(workers=1, capacity=5)) as q:
        with pytest.raises(InvalidJob, match=r"^jobs: 6 jobs of priority medium in one batch, "
                                              r"more than the capacity \(5\)"):
            await q.enqueue_many("double", [{"n": i} for i in range(6)])
        with pytest.raises(InvalidJob, match="capacity"):
            q.enqueue_many_nowait("double", [{"n": i} for i in range(6)], delay=5.0)
        # 5 ready and 5 delayed: each within its own bound.
        assert len(await q.enqueue_many("double", [{"n": i} for i in range(5)])) == 5
        assert len(await q.enqueue_many("double", [{"n": i} for i in range(5)], delay=5)) == 5


async def test_an_id_repeated_in_a_batch_counts_once_against_the_capacity(
    autojump_clock: Any
) -> None:
    """Six items, five ids: five new jobs, within a capacity of five (the check before the
    batch was admitted counted items, and refused it as larger than the capacity)."""
    from trioqueue import BatchItem

    async with trioqueue.open_queue(make_registry(), QueueConfig(workers=1, capacity=5)) as q:
        items = [BatchItem("double", {"n": i}, job_id=f"n{i}") for i in range(5)]
        jobs = await q.enqueue_batch([*items, items[0]])
    assert [j.id for j in jobs] == ["n0", "n1", "n2", "n3", "n4", "n0"]


async def test_nowait_is_all_or_nothing(autojump_clock: Any) -> None:
    gate, entered = trio.Event(), trio.Event()
    async with trioqueue.open_queue(make_registry(gate, entered),
                                    QueueConfig(workers=1, capacity=4)) as q:
        await q.enqueue("double", {"n": 0})
        await entered.wait()
        q.enqueue_many_nowait("double", [{"n": 1}, {"n": 2}])
        with pytest.raises(QueueFull, match="room for 2 of the batch's 3 jobs"):
            q.enqueue_many_nowait("double", [{"n": i} for i in range(3)])
        with pytest.raises(QueueFull):
            await q.enqueue_many("double", [{"n": i} for i in range(3)], wait_for_room=False)
        assert LocalBackend.of(q).ready_lengths() == (0, 2, 0)
        assert q.metrics().rejected == 6
        # Other priorities have their own room.
        q.enqueue_many_nowait("double", [{"n": i} for i in range(4)], priority="high")
        gate.set()


async def test_await_waits_for_room_for_all_of_it(autojump_clock: Any) -> None:
    """No partial admission while waiting: the batch enters only once all 3 fit, and a
    single job that fits meanwhile is not held back for it."""
    gate = trio.Event()
    registry = TaskRegistry()
    started = trio.Event()
    step = trio.Semaphore(0)

    @registry.task
    async def work(job: Job) -> None:
        started.set()
        if job.payload != "free":
            await step.acquire()

    async with trioqueue.open_queue(registry, QueueConfig(workers=1, capacity=3)) as q:
        backend = LocalBackend.of(q)
        await q.enqueue("work", 0)
        await started.wait()
        q.enqueue_many_nowait("work", [1, 2, 3])  # full
        admitted: list[list[Job]] = []

        async def batch() -> None:
            admitted.append(await q.enqueue_many("work", [10, 11, 12]))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(batch)
            await trio.testing.wait_all_tasks_blocked()
            assert backend.parked_producers() == (0, 1, 0)
            step.release()  # job 0 ends, job 1 starts: room for one
            await trio.testing.wait_all_tasks_blocked()
            assert not admitted
            assert backend.ready_lengths() == (0, 2, 0)
            step.release()  # room for two
            await trio.testing.wait_all_tasks_blocked()
            assert not admitted
            assert backend.ready_lengths() == (0, 1, 0)
            step.release()  # room for three: the batch enters whole
            await trio.testing.wait_all_tasks_blocked()
            assert len(admitted) == 1
            assert backend.ready_lengths() == (0, 3, 0)
            assert backend.parked_producers() == (0, 0, 0)
            for _ in range(3):
                step.release()
        gate.set()
        for _ in range(10):
            step.release()
        assert [j.status for j in await q.wait_many(j.id for j in admitted[0])] == [
            JobStatus.COMPLETED] * 3


async def test_waiting_batches_and_single_producers_are_all_woken(autojump_clock: Any) -> None:
    """Two batches and three single producers wait on a full queue: as the workers
    drain it every one of them gets in, nobody is left parked with room free."""
    registry = TaskRegistry()

    @registry.task
    async def nap(job: Job) -> None:
        await trio.sleep(1)

    async with trioqueue.open_queue(registry, QueueConfig(workers=2, capacity=4)) as q:
        backend = LocalBackend.of(q)
        q.enqueue_many_nowait("nap", [0, 1, 2, 3])
        ids: list[str] = []

        async def batch(n: int) -> None:
            ids.extend(j.id for j in await q.enqueue_many("nap", list(range(n))))

        async def single() -> None:
            ids.append((await q.enqueue("nap", -1)).id)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(batch, 4)
            nursery.start_soon(batch, 3)
            for _ in range(3):
                nursery.start_soon(single)
        assert len(ids) == 10
        assert all(j.status is JobStatus.COMPLETED for j in await q.wait_many(ids))
        assert backend.parked_producers() == (0, 0, 0)


async def test_shutdown_wakes_a_waiting_batch(autojump_clock: Any) -> None:
    gate = trio.Event()
    errors: list[BaseException] = []
    async with trio.open_nursery() as outside:
        async with trioqueue.open_queue(make_registry(gate), QueueConfig(
                workers=1, capacity=2, shutdown_timeout=1.0)) as q:
            q.enqueue_many_nowait("double", [{"n": 1}, {"n": 2}])
            await trio.sleep(0.1)
            q.enqueue_nowait("double", {"n": 3})

            async def batch() -> None:
                try:
                    await q.enqueue_many("double", [{"n": 4}, {"n": 5}])
                except ShuttingDown as exc:
                    errors.append(exc)

            outside.start_soon(batch)
            await trio.testing.wait_all_tasks_blocked()
            assert LocalBackend.of(q).parked_producers() == (0, 1, 0)
    assert len(errors) == 1


@pytest.mark.parametrize("durability", ["sync", "batch"])
async def test_store_one_commit_per_batch_and_reopen_keeps_them(
    tmp_path: Path, durability: str
) -> None:
    db = tmp_path / "q.db"
    registry = TaskRegistry()

    hold, entered = trio.Event(), trio.Event()

    @registry.task
    async def double(job: Job) -> Any:
        return job.payload * 2

    @registry.task
    async def gate(job: Job) -> None:
        entered.set()
        await hold.wait()

    # The one worker is busy while the batch is written: a worker starting the batch's
    # first job meanwhile would make a commit of its own (in batch mode a store's first
    # write begins at once), which is not the batch's.
    config = QueueConfig(persist_path=db, durability=durability, workers=1,  # type: ignore[arg-type]
                         shutdown_timeout=0.5)
    async with trioqueue.open_queue(registry, config) as q:
        store = LocalBackend.of(q).store
        assert store is not None
        await q.enqueue("gate")
        await entered.wait()
        await q.flush()
        before = store.commits
        jobs = await q.enqueue_many("double", list(range(200)), priority="high")
        if durability == "batch":
            await q.flush()
        assert store.commits - before == 1
        ids = [j.id for j in jobs]
        hold.set()
    async with trioqueue.open_queue(registry, config) as q:
        done = await q.wait_many(ids)
        assert [d.result for d in done] == [2 * i for i in range(200)]
        assert all(d.priority is trioqueue.Priority.HIGH for d in done)


@pytest.mark.parametrize("durability", ["batch", "sync"])
async def test_store_and_a_subscriber_both_hear_each_job_of_a_batch(
    tmp_path: Path, durability: str
) -> None:
    # A batch is marked for the store in one call; the event stream still gets an
    # "enqueued" event per job, in order, and the store writes every job.
    gate = trio.Event()
    config = QueueConfig(persist_path=tmp_path / "q.db", durability=durability,  # type: ignore[arg-type]
                         workers=1)
    async with trioqueue.open_queue(make_registry(gate), config) as q:
        async with q.subscribe() as events:
            jobs = await q.enqueue_many("double", [{"n": i} for i in range(5)])
            await q.flush()
            got = [await events.receive() for _ in jobs]
        gate.set()
        assert [(e.type, e.job_id) for e in got] == [
            ("enqueued", j.id) for j in jobs]
        store = LocalBackend.of(q).store
        assert store is not None
        assert [store.store.get(j.id) is not None for j in jobs] == [True] * 5


async def test_wait_many_keeps_jobs_that_end_and_leave_memory_while_it_waits(
    autojump_clock: Any
) -> None:
    """``wait_many`` waited for one id after another: jobs that ended while it waited for
    a slower one, and then left memory (``finished_cache``), raised ``JobNotFound``."""
    registry = trioqueue.TaskRegistry()

    @registry.task()
    async def slow(job: trioqueue.Job) -> str:
        await trio.sleep(10)
        return "slow"

    go = trio.Event()

    @registry.task()
    async def fast(job: trioqueue.Job) -> Any:
        await go.wait()
        return job.payload

    config = trioqueue.QueueConfig(workers=11, finished_cache=5)
    async with trioqueue.open_queue(registry, config) as q:
        first = await q.enqueue("slow")
        rest = await q.enqueue_many("fast", list(range(10)))
        got: list[list[trioqueue.Job]] = []
        async with trio.open_nursery() as nursery:

            async def waiter() -> None:
                got.append(await q.wait_many([first.id] + [j.id for j in rest]))

            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            go.set()  # the fast jobs end (and leave memory) while it waits for the slow one
        done = got[0]
        gone = 0
        for job in rest:
            try:
                await q.get(job.id)
            except trioqueue.JobNotFound:
                gone += 1
        assert gone >= 5  # they did leave memory (5 finished jobs are kept)
        with pytest.raises(trioqueue.JobNotFound, match="nope"):
            await q.wait_many([first.id, "nope"])
    assert [j.result for j in done] == ["slow", *range(10)]
