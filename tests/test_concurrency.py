"""Per-task ``concurrency=N``: at most N running in this process, no head-of-line blocking,
set-aside jobs counted, cancellable, and kept or dropped at shutdown like other queued
jobs."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trio
import trio.testing

import trioqueue
from tests.test_server_app import call
from trioqueue import Job, JobStatus, Priority, QueueConfig, TaskRegistry
from trioqueue.server import App


class Tasks:
    def __init__(self, limit: int) -> None:
        self.registry = reg = TaskRegistry()
        self.order: list[str] = []
        self.running = 0
        self.most = 0
        self.gates: dict[str, trio.Event] = {}
        self.entered: dict[str, trio.Event] = {}

        @reg.task(concurrency=limit)
        async def limited(job: Job) -> None:
            self.order.append(job.id)
            self.running += 1
            self.most = max(self.most, self.running)
            try:
                self.event(self.entered, job.id).set()
                if isinstance(job.payload, (int, float)):
                    await trio.sleep(job.payload)
                else:
                    await self.event(self.gates, job.id).wait()
            finally:
                self.running -= 1

        @reg.task
        async def other(job: Job) -> None:
            self.order.append(job.id)

    @staticmethod
    def event(table: dict[str, trio.Event], name: str) -> trio.Event:
        if name not in table:
            table[name] = trio.Event()
        return table[name]


def test_registry_checks_concurrency() -> None:
    reg = TaskRegistry()
    for bad in (0, -1, True, 1.5, "2"):
        with pytest.raises(ValueError, match=r"^task 'f': concurrency: expected a positive "
                                             r"integer or None, got"):
            @reg.task(name="f", concurrency=bad)  # type: ignore[arg-type]
            async def f(job: Job) -> None: ...

    @reg.task(concurrency=3)
    async def g(job: Job) -> None: ...

    @reg.task
    async def h(job: Job) -> None: ...

    assert reg.get("g").to_dict()["concurrency"] == 3
    assert reg.get("h").to_dict()["concurrency"] is None


async def run_others(tasks: Tasks, flood: int, config: QueueConfig) -> list[str]:
    """Hold one limited job, flood the queue with more of them (high priority), then
    enqueue other tasks' jobs at medium and low: the order those run in."""
    async with trioqueue.open_queue(tasks.registry, config) as q:
        if flood:
            await q.enqueue("limited", job_id="held", priority="high")
            await Tasks.event(tasks.entered, "held").wait()
            for i in range(flood):
                await q.enqueue("limited", job_id=f"l{i}", priority="high")
        await trio.testing.wait_all_tasks_blocked()
        ids = []
        for i in range(12):  # all queued before a worker looks (no checkpoint here)
            prio = Priority.MEDIUM if i % 2 else Priority.LOW
            ids.append(q.enqueue_nowait("other", job_id=f"o{i}-{prio.label}",
                                        priority=prio).id)
        with trio.fail_after(3600):  # head-of-line blocking would wait here forever
            for job_id in ids:
                assert (await q.wait(job_id)).status is JobStatus.COMPLETED
        if flood:
            m = q.metrics()
            assert m.processing == 1
            assert m.queued["high"] == flood  # set aside, and counted
            assert "l0" not in tasks.order
            Tasks.event(tasks.gates, "held").set()
            for i in range(flood):
                Tasks.event(tasks.gates, f"l{i}").set()
                assert (await q.wait(f"l{i}")).status is JobStatus.COMPLETED
    return [x for x in tasks.order if x.startswith("o")]


async def test_a_flooding_limited_task_holds_back_no_other_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Two workers, one busy with the limited task's held job: the other worker must run
    # the other tasks' jobs (a worker waiting for the limited task's slot would not), in
    # the same fair order as with no flood at all.
    config = QueueConfig(workers=2, capacity=100)
    baseline = await run_others(Tasks(1), 0, QueueConfig(workers=1, capacity=100))
    flooded_tasks = Tasks(1)
    flooded = await run_others(flooded_tasks, 40, config)
    assert flooded == baseline
    # ... and the limited jobs ran one at a time, in the order they were enqueued.
    assert [x for x in flooded_tasks.order if x.startswith("l")] == [
        f"l{i}" for i in range(40)]
    assert flooded_tasks.most == 1


async def test_the_limit_is_never_exceeded(autojump_clock: trio.testing.MockClock) -> None:
    tasks = Tasks(3)
    async with trioqueue.open_queue(tasks.registry, QueueConfig(workers=8)) as q:
        jobs = []
        for i in range(60):
            jobs.append(await q.enqueue("limited", (i * 7) % 5 + 0.5,
                                        priority=("high", "medium", "low")[i % 3]))
            if i % 4 == 0:
                await q.enqueue("other", i)
        for job in jobs:
            assert (await q.wait(job.id)).status is JobStatus.COMPLETED
    assert tasks.most == 3
    assert tasks.running == 0


async def test_a_sync_task_keeps_its_slot_until_a_thread_let_go_of_ends(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A ``sync=True`` handler that times out runs on in its abandoned thread: its
    task's next job waits for that thread to end, so that ``concurrency`` bounds the
    handlers really running (a rate-limited service sees one call at a time).  The
    clock moves only when the test moves it."""
    reg = TaskRegistry()
    entered = [trio.Event(), trio.Event()]
    gates = [threading.Event(), threading.Event()]

    @reg.task(sync=True, concurrency=1, timeout=1.0, max_retries=0)
    def call_api(job: Job) -> str:
        trio.from_thread.run_sync(entered[job.payload].set)
        gates[job.payload].wait(30)  # the bound only guards against a hang
        return "called"

    try:
        async with trioqueue.open_queue(reg, QueueConfig(workers=3)) as q:
            first, second = await q.enqueue_many("call_api", [0, 1])
            await entered[0].wait()
            mock_clock.jump(1.0)
            ended = await q.wait(first.id)
            assert (ended.status, ended.error) == (
                JobStatus.FAILED, "TimeoutError: job exceeded its timeout of 1.0 s")
            await trio.testing.wait_all_tasks_blocked()
            assert (await q.get(second.id)).status is JobStatus.QUEUED  # thread 0 runs
            gates[0].set()  # thread 0 ends: the slot is free
            await entered[1].wait()
            gates[1].set()
            assert (await q.wait(second.id)).result == "called"
    finally:
        for gate in gates:
            gate.set()


async def test_a_set_aside_job_is_cancellable(autojump_clock: trio.testing.MockClock) -> None:
    tasks = Tasks(1)
    async with trioqueue.open_queue(tasks.registry, QueueConfig(workers=2)) as q:
        await q.enqueue("limited", job_id="a")
        await Tasks.event(tasks.entered, "a").wait()
        await q.enqueue("limited", job_id="b")
        await q.enqueue("limited", job_id="c")
        await q.enqueue("other", job_id="x")  # the free worker ran past b and c
        await q.wait("x")
        assert q.metrics().queued["medium"] == 2
        assert (await q.cancel("c")).status is JobStatus.CANCELLED
        assert q.metrics().queued["medium"] == 1
        assert (await q.cancel("b")).status is JobStatus.CANCELLED
        await q.enqueue("limited", job_id="d")
        Tasks.event(tasks.gates, "a").set()
        Tasks.event(tasks.gates, "d").set()
        assert (await q.wait("d")).status is JobStatus.COMPLETED
    assert tasks.order == ["a", "x", "d"]


async def test_memory_mode_drops_set_aside_jobs_at_shutdown_like_queued_ones(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tasks = Tasks(1)
    config = QueueConfig(workers=2, shutdown_timeout=1.0)
    async with trioqueue.open_queue(tasks.registry, config) as q:
        await q.enqueue("limited", job_id="a")
        await Tasks.event(tasks.entered, "a").wait()
        for i in range(3):
            await q.enqueue("limited", job_id=f"b{i}")
        await q.enqueue("other", job_id="x")
        await q.wait("x")
        assert q.metrics().queued["medium"] == 3
    m = q.metrics()
    assert m.dropped == 3
    assert (await q.get("a")).status is JobStatus.FAILED  # cut off by shutdown_timeout


async def test_drain_waits_for_a_set_aside_job_whose_slot_an_abandoned_thread_holds(
    mock_clock: trio.testing.MockClock,
) -> None:
    """``drain=True``: a limited task's job waiting for the slot that a timed-out
    ``sync=True`` handler's thread still holds runs once that thread ends, within
    ``shutdown_timeout``; the idle workers do not take "nothing I may run now" for
    "nothing left" and stop (which dropped it at once)."""
    reg = TaskRegistry()
    entered = trio.Event()
    gates = [threading.Event(), threading.Event()]

    @reg.task(sync=True, concurrency=1, timeout=1.0, max_retries=0)
    def call_api(job: Job) -> str:
        if job.payload == 0:
            trio.from_thread.run_sync(entered.set)
        gates[job.payload].wait(30)  # the bound only guards against a hang
        return "called"

    async def let_go() -> None:
        await trio.testing.wait_all_tasks_blocked()  # shutdown under way, workers idle
        gates[1].set()  # the next job will not block
        gates[0].set()  # the abandoned thread ends: the slot is free

    config = QueueConfig(workers=3, drain=True, shutdown_timeout=60.0)
    try:
        async with trio.open_nursery() as nursery:
            async with trioqueue.open_queue(reg, config) as q:
                first, second = await q.enqueue_many("call_api", [0, 1])
                await entered.wait()
                mock_clock.jump(1.0)
                assert (await q.wait(first.id)).status is JobStatus.FAILED  # timed out
                nursery.start_soon(let_go)
        assert mock_clock.current_time() < 60.0  # not cut off by the timeout
        assert q.get_nowait(second.id).result == "called"
        assert q.metrics().dropped == 0
    finally:
        for gate in gates:
            gate.set()


async def test_set_aside_jobs_stay_queued_in_the_store_and_run_after_reopen(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.db"
    tasks = Tasks(1)
    config = QueueConfig(workers=2, persist_path=path, shutdown_timeout=0)
    async with trioqueue.open_queue(tasks.registry, config) as q:
        await q.enqueue("limited", job_id="a")
        await Tasks.event(tasks.entered, "a").wait()
        for i in range(3):
            await q.enqueue("limited", job_id=f"b{i}")
        await q.enqueue("other", job_id="x")
        await q.wait("x")
        assert q.metrics().queued["medium"] == 3
    again = Tasks(1)
    for name in ("a", "b0", "b1", "b2"):
        Tasks.event(again.gates, name).set()
    async with trioqueue.open_queue(again.registry, config) as q:
        for name in ("a", "b0", "b1", "b2"):
            assert (await q.wait(name)).status is JobStatus.COMPLETED
    assert again.order == ["a", "b0", "b1", "b2"]
    assert again.most == 1


async def test_get_tasks_shows_the_limit() -> None:
    tasks = Tasks(4)
    async with trioqueue.open_queue(tasks.registry, QueueConfig()) as q:
        status, _, body = await call(App(q), "GET", "/tasks")
    assert status == 200
    by_name = {t["name"]: t for t in body["tasks"]}
    assert (by_name["limited"]["concurrency"], by_name["other"]["concurrency"]) == (4, None)
