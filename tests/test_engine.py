"""The engine in memory mode, on trio's mock clock (``autojump_clock``).

Times asserted here are exact ``trio.current_time()`` values: the clock only moves when
every task is blocked, so a retry that should start 4 s after the previous attempt starts
exactly 4 s after it.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import trioqueue
from trioqueue import (
    DuplicateJob,
    InvalidJob,
    InvalidTransition,
    Job,
    JobNotFound,
    JobStatus,
    Priority,
    QueueConfig,
    QueueFull,
    ShuttingDown,
    TaskRegistry,
    UnknownTask,
)
from trioqueue.testing import IdGenerator, LocalBackend

from .channels import ReceivesNowait, drain


class Harness:
    """A registry of test tasks that log what ran, when, and can be held at a gate."""

    def __init__(self) -> None:
        self.registry = TaskRegistry()
        self.runs: list[tuple[str, str, float, int]] = []  # (task, job id, start time, attempt)
        self.gate = trio.Event()
        self.gate.set()
        reg = self.registry

        @reg.task
        async def ok(job: Job) -> Any:
            self.runs.append(("ok", job.id, trio.current_time(), job.attempts))
            return job.payload

        @reg.task
        async def gated(job: Job) -> str:
            self.runs.append(("gated", job.id, trio.current_time(), job.attempts))
            await self.gate.wait()
            return "opened"

        @reg.task(max_retries=3)
        async def fail(job: Job) -> None:
            self.runs.append(("fail", job.id, trio.current_time(), job.attempts))
            raise RuntimeError(f"boom {job.attempts}")

        @reg.task
        async def sleep(job: Job) -> float:
            self.runs.append(("sleep", job.id, trio.current_time(), job.attempts))
            await trio.sleep(job.payload["seconds"])
            return float(job.payload["seconds"])

        @reg.task(sync=True)
        def blocking(job: Job) -> int:
            return sum(range(job.payload))

        @reg.task
        async def bad_result(job: Job) -> object:
            return object()

        @reg.task(priority=Priority.LOW)
        async def low_by_default(job: Job) -> None:
            return None

    def started(self, task: str | None = None) -> list[str]:
        return [job_id for name, job_id, _, _ in self.runs if task is None or name == task]


@pytest.fixture
def h() -> Harness:
    return Harness()


def cfg(**kw: Any) -> QueueConfig:
    kw.setdefault("retry_jitter", 0.0)
    return QueueConfig(**kw)


@asynccontextmanager
async def one_busy_worker(h: Harness, **kw: Any) -> AsyncIterator[trioqueue.JobQueue]:
    """A queue with one worker, held by a ``gated`` job until ``h.gate`` is set."""
    h.gate = trio.Event()
    async with trioqueue.open_queue(h.registry, cfg(workers=1, **kw)) as q:
        await q.enqueue("gated")
        await trio.testing.wait_all_tasks_blocked()
        yield q


# --------------------------------------------------------------------------- basics


async def test_enqueue_runs_the_job_and_stores_the_result(h: Harness, autojump_clock: Any) -> None:
    async with trioqueue.open_queue(h.registry, cfg()) as q:
        job = await q.enqueue("ok", {"n": 1})
        assert job.status is JobStatus.QUEUED
        assert job.priority is Priority.MEDIUM
        assert job.attempts == 0
        assert len(job.id) == 32
        done = await q.wait(job.id)
        assert done.status is JobStatus.COMPLETED
        assert done.result == {"n": 1}
        assert done.attempts == 1
        assert done.created_at <= done.started_at <= done.finished_at  # type: ignore[operator]
        assert (await q.get(job.id)) == done
        d = done.to_dict()
        assert d["status"] == "completed"
        assert d["priority"] == "medium"
        assert d["finished_at"].endswith("Z")


async def test_enqueue_nowait_and_task_default_priority(h: Harness, autojump_clock: Any) -> None:
    async with trioqueue.open_queue(h.registry, cfg()) as q:
        job = q.enqueue_nowait("low_by_default")
        assert job.priority is Priority.LOW
        job2 = q.enqueue_nowait("low_by_default", priority="HIGH")
        assert job2.priority is Priority.HIGH
        assert (await q.wait(job.id)).status is JobStatus.COMPLETED


async def test_sync_handler_runs_in_a_thread(h: Harness) -> None:
    async with trioqueue.open_queue(h.registry, cfg()) as q:
        job = await q.enqueue("blocking", 1000)
        assert (await q.wait(job.id)).result == sum(range(1000))


async def test_unknown_ids_raise_job_not_found(h: Harness, autojump_clock: Any) -> None:
    async with trioqueue.open_queue(h.registry, cfg()) as q:
        for call in (q.get, q.wait, q.cancel, q.retry):
            with pytest.raises(JobNotFound, match="nope"):
                await call("nope")


# --------------------------------------------------------------------------- priority


async def test_high_priority_runs_first_with_one_worker(h: Harness, autojump_clock: Any) -> None:
    h.gate = trio.Event()
    async with trioqueue.open_queue(h.registry, cfg(workers=1)) as q:
        blocker = await q.enqueue("gated")
        await trio.testing.wait_all_tasks_blocked()
        lows = [await q.enqueue("ok", i, priority="low") for i in range(3)]
        meds = [await q.enqueue("ok", i, priority="medium") for i in range(3)]
        highs = [await q.enqueue("ok", i, priority="high") for i in range(3)]
        h.gate.set()
        for job in lows + meds + highs:
            await q.wait(job.id)
        await q.wait(blocker.id)
    order = h.started("ok")
    ids = {j.id: j.priority for j in lows + meds + highs}
    # The first pick after the blocker is HIGH, and all HIGH jobs start before any LOW one.
    assert ids[order[0]] is Priority.HIGH
    first_low = min(order.index(j.id) for j in lows)
    assert all(order.index(j.id) < first_low for j in highs)


async def test_no_starvation_every_14_picks_are_10_3_1(h: Harness, autojump_clock: Any) -> None:
    h.gate = trio.Event()
    async with trioqueue.open_queue(h.registry, cfg(workers=1, capacity=500)) as q:
        await q.enqueue("gated")
        await trio.testing.wait_all_tasks_blocked()
        prio_of: dict[str, Priority] = {}
        for p in Priority:
            for i in range(200):
                prio_of[(await q.enqueue("ok", i, priority=p)).id] = p
        h.gate.set()
        for job_id in prio_of:
            await q.wait(job_id)
    picks = [prio_of[i] for i in h.started("ok")]
    # While all three are backlogged (HIGH runs out after 200 of its picks = 20 windows).
    backlogged = picks[: 14 * 19]
    for start in range(len(backlogged) - 13):
        assert Counter(backlogged[start : start + 14]) == {
            Priority.HIGH: 10,
            Priority.MEDIUM: 3,
            Priority.LOW: 1,
        }, start
    assert Counter(picks) == {p: 200 for p in Priority}


# --------------------------------------------------------------------------- retries


async def test_retry_gaps_follow_exponential_backoff(h: Harness, autojump_clock: Any) -> None:
    config = cfg(retry_base=1.0, retry_factor=2.0, retry_max=300.0)
    async with trioqueue.open_queue(h.registry, config) as q:
        job = await q.enqueue("fail", {})
        done = await q.wait(job.id)
    starts = [t for name, _, t, _ in h.runs if name == "fail"]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps == [1.0, 2.0, 4.0]  # base * factor ** (n - 1), jitter 0, mock clock
    assert done.status is JobStatus.FAILED
    assert done.attempts == 4  # the first run + max_retries=3 retries
    assert done.error == "RuntimeError: boom 4"
    assert done.traceback is not None
    assert "RuntimeError: boom 4" in done.traceback
    assert 'raise RuntimeError(f"boom {job.attempts}")' in done.traceback


async def test_retry_delay_is_capped(h: Harness, autojump_clock: Any) -> None:
    config = cfg(retry_base=10.0, retry_factor=10.0, retry_max=50.0)
    async with trioqueue.open_queue(h.registry, config) as q:
        await q.wait((await q.enqueue("fail", {}, max_retries=3)).id)
    starts = [t for name, _, t, _ in h.runs if name == "fail"]
    assert [b - a for a, b in itertools.pairwise(starts)] == [10.0, 50.0, 50.0]


async def test_failed_job_is_a_dead_letter_that_can_be_requeued(
    h: Harness, autojump_clock: Any
) -> None:
    async with trioqueue.open_queue(h.registry, cfg(retry_base=0.5)) as q:
        job = await q.enqueue("fail", {}, max_retries=0)
        assert (await q.wait(job.id)).status is JobStatus.FAILED
        assert [j.id for j in await q.list_jobs(status="failed")] == [job.id]
        again = await q.retry(job.id)
        assert again.status is JobStatus.QUEUED
        assert again.attempts == 0
        assert (await q.wait(job.id)).status is JobStatus.FAILED
        assert len(h.started("fail")) == 2
        ok = await q.enqueue("ok", delay=60)
        with pytest.raises(InvalidTransition, match=r"cannot retry a job that is scheduled "
                                                    r"\(only failed or cancelled jobs "):
            await q.retry(ok.id)


async def test_result_that_is_not_json_fails_the_attempt(h: Harness, autojump_clock: Any) -> None:
    async with trioqueue.open_queue(h.registry, cfg()) as q:
        done = await q.wait((await q.enqueue("bad_result", max_retries=0)).id)
    assert done.status is JobStatus.FAILED
    assert done.error is not None
    assert done.error.startswith("InvalidJob: result: not JSON-serializable")


# --------------------------------------------------------------------------- timeouts, delays


async def test_timeout_fails_the_attempt_at_the_deadline(h: Harness, autojump_clock: Any) -> None:
    async with trioqueue.open_queue(h.registry, cfg(retry_base=1.0)) as q:
        t0 = trio.current_time()
        job = await q.enqueue("sleep", {"seconds": 100}, timeout=5.0, max_retries=1)
        done = await q.wait(job.id)
        t1 = trio.current_time()
    assert done.status is JobStatus.FAILED
    assert done.error == "TimeoutError: job exceeded its timeout of 5.0 s"
    assert done.attempts == 2
    assert t1 - t0 == 5.0 + 1.0 + 5.0  # attempt, backoff, attempt


async def test_a_job_that_finishes_in_time_is_not_affected_by_its_timeout(
    h: Harness, autojump_clock: Any
) -> None:
    async with trioqueue.open_queue(h.registry, cfg(default_timeout=10.0)) as q:
        done = await q.wait((await q.enqueue("sleep", {"seconds": 9})).id)
        again = await q.wait((await q.enqueue("sleep", {"seconds": 9})).id)
    assert (done.status, again.status) == (JobStatus.COMPLETED, JobStatus.COMPLETED)


async def test_delayed_job_starts_exactly_when_due(h: Harness, autojump_clock: Any) -> None:
    async with trioqueue.open_queue(h.registry, cfg()) as q:
        t0 = trio.current_time()
        later = await q.enqueue("ok", "later", delay=30.0)
        sooner = await q.enqueue("ok", "sooner", delay=10.0)
        assert later.status is JobStatus.SCHEDULED
        assert later.scheduled_for == pytest.approx(later.created_at + 30.0)
        assert q.metrics().scheduled == 2
        await q.wait(later.id)
        await q.wait(sooner.id)
    starts = {job_id: t - t0 for _, job_id, t, _ in h.runs}
    assert starts == {sooner.id: 10.0, later.id: 30.0}


# --------------------------------------------------------------------------- cancel


async def test_cancel_queued_scheduled_and_processing(h: Harness, autojump_clock: Any) -> None:
    h.gate = trio.Event()
    async with trioqueue.open_queue(h.registry, cfg(workers=1)) as q:
        running = await q.enqueue("gated")
        await trio.testing.wait_all_tasks_blocked()
        queued = await q.enqueue("ok")
        scheduled = await q.enqueue("ok", delay=60)
        assert (await q.cancel(queued.id)).status is JobStatus.CANCELLED
        assert (await q.cancel(scheduled.id)).status is JobStatus.CANCELLED
        cancelled = await q.cancel(running.id)
        assert cancelled.status is JobStatus.CANCELLED
        assert cancelled.attempts == 1
        with pytest.raises(InvalidTransition, match="cancel a job that is cancelled"):
            await q.cancel(running.id)
        # The worker is free again, and nothing cancelled runs later.
        after = await q.wait((await q.enqueue("ok")).id)
        assert after.status is JobStatus.COMPLETED
        await trio.sleep(120)
        m = q.metrics()
    assert h.started() == [running.id, after.id]
    assert (m.cancelled, m.scheduled, m.queued) == (3, 0, {"high": 0, "medium": 0, "low": 0})


async def test_cancel_finished_job_is_refused(h: Harness, autojump_clock: Any) -> None:
    async with trioqueue.open_queue(h.registry, cfg()) as q:
        job = await q.enqueue("ok")
        await q.wait(job.id)
        with pytest.raises(InvalidTransition, match="completed"):
            await q.cancel(job.id)


# --------------------------------------------------------------------------- ids, bad input


async def test_idempotent_ids(h: Harness, autojump_clock: Any) -> None:
    async with trioqueue.open_queue(h.registry, cfg()) as q:
        first = await q.enqueue("ok", {"a": 1}, job_id="order-42")
        again = await q.enqueue("ok", {"a": 1}, job_id="order-42")
        assert again.id == first.id == "order-42"
        assert q.enqueue_nowait("ok", {"a": 1}, job_id="order-42").id == "order-42"
        with pytest.raises(DuplicateJob, match="different payload"):
            await q.enqueue("ok", {"a": 2}, job_id="order-42")
        with pytest.raises(DuplicateJob, match="different task"):
            await q.enqueue("fail", {"a": 1}, job_id="order-42")
        await q.wait("order-42")
        assert q.metrics().enqueued == 1
        assert len(h.started()) == 1


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        (("nope",), {}, UnknownTask, "no handler registered as 'nope'"),
        (("ok",), {"priority": "urgent"}, InvalidJob, "priority"),
        (("ok",), {"priority": 7}, InvalidJob, "priority"),
        (("ok",), {"delay": -1}, InvalidJob, "delay"),
        (("ok",), {"delay": float("nan")}, InvalidJob, "delay"),
        (("ok",), {"timeout": 0}, InvalidJob, "timeout"),
        (("ok",), {"timeout": -5}, InvalidJob, "timeout"),
        (("ok",), {"max_retries": -1}, InvalidJob, "max_retries"),
        (("ok", {"x": object()}), {}, InvalidJob, "payload: not JSON-serializable"),
        (("ok", {"x": float("nan")}), {}, InvalidJob, "payload: not JSON-serializable"),
        (("ok",), {"job_id": ""}, InvalidJob, "id: must be 1 to 128"),
        (("ok",), {"job_id": "x" * 129}, InvalidJob, "id: must be 1 to 128"),
        (("ok",), {"job_id": "a/b"}, InvalidJob, "id: 'a/b' has characters"),
        (("ok",), {"job_id": "spaced id"}, InvalidJob, "id:"),
        (("ok",), {"job_id": 12}, InvalidJob, "id: expected a string"),
    ],
)
async def test_bad_input_is_refused_and_nothing_is_half_enqueued(
    h: Harness, autojump_clock: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
    exc: type[Exception], match: str,
) -> None:
    async with trioqueue.open_queue(h.registry, cfg()) as q:
        with pytest.raises(exc, match=match):
            await q.enqueue(*args, **kwargs)
        with pytest.raises(exc, match=match):
            q.enqueue_nowait(*args, **kwargs)
        m = q.metrics()
        assert m.enqueued == 0
        assert m.queued == {"high": 0, "medium": 0, "low": 0}
        assert m.scheduled == 0
        assert await q.list_jobs() == []


async def test_job_defaults_come_from_the_task_then_the_config_and_calls_override(
    autojump_clock: Any,
) -> None:
    registry = TaskRegistry()

    @registry.task
    async def plain(job: Job) -> None:
        return None

    @registry.task(priority=Priority.HIGH, max_retries=7, timeout=9.0)
    async def tuned(job: Job) -> None:
        return None

    config = cfg(max_retries=2, default_timeout=30.0)
    async with trioqueue.open_queue(registry, config) as q:
        a = await q.enqueue("plain")
        b = q.enqueue_nowait("tuned")
        c = await q.enqueue("tuned", priority="low", max_retries=0, timeout=1)

        @registry.task(name="late", max_retries=1)  # registered while the queue runs
        async def late(job: Job) -> None:
            return None

        d = await q.enqueue("late")
        for job in (a, b, c, d):
            assert (await q.wait(job.id)).status is JobStatus.COMPLETED
    assert (a.priority, a.max_retries, a.timeout) == (Priority.MEDIUM, 2, 30.0)
    assert (b.priority, b.max_retries, b.timeout) == (Priority.HIGH, 7, 9.0)
    assert (c.priority, c.max_retries, c.timeout) == (Priority.LOW, 0, 1.0)
    assert (d.priority, d.max_retries, d.timeout) == (Priority.MEDIUM, 1, 30.0)


def test_bad_config_names_the_field() -> None:
    with pytest.raises(ValueError, match="workers"):
        QueueConfig(workers=0)
    with pytest.raises(ValueError, match="durability"):
        QueueConfig(durability="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="retry_factor"):
        QueueConfig(retry_factor=0.5)
    with pytest.raises(ValueError, match="fairness"):
        QueueConfig(fairness={Priority.LOW: 0})
    # A priority that is none was InvalidJob naming "priority", not the field.
    with pytest.raises(ValueError, match=r"^fairness: priority: expected one of .*'urgent'$"):
        QueueConfig(fairness={"urgent": 1})
    with pytest.raises(ValueError, match=r"^workers: expected an integer 0\.\.10000"):
        QueueConfig(workers=10**30)  # (it started tasks until memory ran out)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"fsync": True}, "fsync: needs persist_path (a SQLite store); without one, jobs live "
                      "in memory only"),
    ({"flush_interval": 1.0}, "flush_interval: needs persist_path"),
    ({"lease": 5.0}, "lease: needs redis_url (a queue in Redis)"),
    ({"prefetch": 8}, "prefetch: needs redis_url"),
    ({"queue_name": "emails"}, "queue_name: needs redis_url"),
    ({"drain": True, "persist_path": "q.db"}, "drain: memory mode only"),
    ({"drain": True, "redis_url": "redis://127.0.0.1"}, "drain: memory mode only"),
    ({"durability": "batch", "redis_url": "redis://127.0.0.1"},
     "durability: 'batch' needs persist_path (a SQLite store); on Redis, what Redis keeps "
     "is Redis' own setting"),
    ({"fsync": True, "redis_url": "redis://127.0.0.1"}, "fsync: needs persist_path"),
])
def test_a_setting_this_queue_would_ignore_is_refused(kwargs: dict[str, Any], message: str
                                                      ) -> None:
    """Each of these did nothing silently (the CLI refused them already)."""
    with pytest.raises(ValueError) as refused:
        QueueConfig(**kwargs)
    assert str(refused.value).startswith(message)


def test_config_from_env() -> None:
    env = {"TRIOQUEUE_WORKERS": "7", "JOB_QUEUE_CAPACITY": "50", "TRIOQUEUE_DRAIN": "yes"}
    c = QueueConfig.from_env(env, max_retries=9)
    assert (c.workers, c.capacity, c.drain, c.max_retries) == (7, 50, True, 9)
    assert QueueConfig.from_env({"WORKER_COUNT": "3"}).workers == 3
    with pytest.raises(ValueError, match="TRIOQUEUE_WORKERS"):
        QueueConfig.from_env({"TRIOQUEUE_WORKERS": "many"})


async def test_open_queue_errors_come_out_unwrapped(h: Harness) -> None:
    with pytest.raises(TypeError, match="config"):
        async with trioqueue.open_queue(h.registry, {"workers": 2}):  # type: ignore[arg-type]
            pass


async def test_body_exceptions_come_out_unwrapped_after_shutdown(
    h: Harness, autojump_clock: Any
) -> None:
    queues: list[trioqueue.JobQueue] = []

    async def body() -> None:
        async with trioqueue.open_queue(h.registry, cfg()) as q:
            queues.append(q)
            await q.enqueue("sleep", {"seconds": 3}, job_id="in-flight")
            await trio.testing.wait_all_tasks_blocked()
            raise KeyError("mine")

    with pytest.raises(KeyError, match="mine"):
        await body()
    q = queues[0]
    assert q.get_nowait("in-flight").status is JobStatus.COMPLETED  # in-flight work finished


# --------------------------------------------------------------------------- backpressure


async def test_backpressure_enqueue_waits_and_nowait_raises(
    h: Harness, autojump_clock: Any
) -> None:
    async with one_busy_worker(h, capacity=2) as q:
        a = q.enqueue_nowait("ok", "a")
        b = q.enqueue_nowait("ok", "b")
        with pytest.raises(QueueFull, match="priority medium: 2 jobs already waiting"):
            q.enqueue_nowait("ok", "c")
        # Another priority has its own room.
        high = q.enqueue_nowait("ok", "h", priority="high")
        got: list[Job] = []

        async def producer() -> None:
            got.append(await q.enqueue("ok", "c"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []  # waiting for room, not refused
            h.gate.set()
        assert len(got) == 1
        for job in (a, b, high, got[0]):
            assert (await q.wait(job.id)).status is JobStatus.COMPLETED
        assert q.metrics().rejected == 1


def test_queue_full_carries_retry_after_when_known() -> None:
    import pickle

    assert QueueFull("priority high: full").retry_after is None  # the queue cannot know
    told = QueueFull("priority high: full", retry_after=2.5)  # as the HTTP client makes it
    again = pickle.loads(pickle.dumps(told))
    assert (type(again), str(again), again.retry_after) == (QueueFull, str(told), 2.5)


async def test_room_goes_to_parked_producers_one_each_even_when_some_give_up(
    h: Harness, autojump_clock: Any
) -> None:
    """Each job taken (or cancelled while queued) wakes one producer waiting for room; a
    producer cancelled while it waits is not counted as waiting any more, so no room is
    handed to it and none is lost."""
    async with one_busy_worker(h, capacity=2) as q:
        first = q.enqueue_nowait("ok", "q1")
        q.enqueue_nowait("ok", "q2")
        accepted: list[str] = []
        gave_up = trio.CancelScope()

        async def producer(tag: str, scope: trio.CancelScope | None = None) -> None:
            with scope or trio.CancelScope():
                accepted.append((await q.enqueue("ok", tag)).payload)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer, "p1")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(producer, "p2", gave_up)
            await trio.testing.wait_all_tasks_blocked()
            for tag in ("p3", "p4", "p5"):
                nursery.start_soon(producer, tag)
                await trio.testing.wait_all_tasks_blocked()
            assert accepted == []
            gave_up.cancel()  # p2 leaves the line
            await trio.testing.wait_all_tasks_blocked()
            await q.cancel(first.id)  # room for one: p1, the first in line
            await trio.testing.wait_all_tasks_blocked()
            assert accepted == ["p1"]
            h.gate.set()  # the worker drains the queue: p3, p4 and p5 get in
        # (Woken in line order, but Trio may run tasks woken in one pass in any order.)
        assert accepted[0] == "p1"
        assert sorted(accepted[1:]) == ["p3", "p4", "p5"]
        m = q.metrics()
        while m.completed < 1 + 1 + 4:  # gated, q2, p1, p3, p4, p5
            await trio.sleep(0.1)
            m = q.metrics()
        assert m.queued == {"high": 0, "medium": 0, "low": 0}
        assert LocalBackend.of(q).parked_producers() == (0, 0, 0)


async def test_a_job_that_waited_for_room_is_dated_when_accepted(
    h: Harness, autojump_clock: Any
) -> None:
    async with one_busy_worker(h, capacity=1) as q:
        filler = q.enqueue_nowait("ok", "fills the queue")
        got: list[Job] = []

        async def producer() -> None:
            got.append(await q.enqueue("ok", "waited"))
            got.append(await q.enqueue("ok", "next"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer)
            await trio.sleep(5.0)  # the producer waits for room all this time
            t_open = trio.current_time()
            h.gate.set()
        waited, after = got
        assert t_open == 5.0
        # Created when accepted, 5 s after the filler (the mock clock stood still between).
        assert waited.created_at - filler.created_at == pytest.approx(5.0, abs=1e-6)
        assert waited.id < after.id  # the id made before the wait, still first
        for job in got:
            assert (await q.wait(job.id)).status is JobStatus.COMPLETED


async def test_delayed_jobs_have_their_own_bound(h: Harness, autojump_clock: Any) -> None:
    async with trioqueue.open_queue(h.registry, cfg(capacity=2)) as q:
        q.enqueue_nowait("ok", delay=10)
        q.enqueue_nowait("ok", delay=10)
        with pytest.raises(QueueFull, match="for a due time"):
            q.enqueue_nowait("ok", delay=10)
        q.enqueue_nowait("ok")  # the ready queue is separate
        await trio.sleep(11)
        assert q.metrics().completed == 3
        q.enqueue_nowait("ok", delay=10)  # room again once due


# --------------------------------------------------------------------------- shutdown


async def test_graceful_shutdown_lets_in_flight_jobs_finish(
    h: Harness, autojump_clock: Any
) -> None:
    async with trioqueue.open_queue(h.registry, cfg(shutdown_timeout=30.0)) as q:
        jobs = [await q.enqueue("sleep", {"seconds": 20}) for _ in range(4)]
        await trio.testing.wait_all_tasks_blocked()
        t0 = trio.current_time()
    assert trio.current_time() - t0 == 20.0
    assert all(q.get_nowait(j.id).status is JobStatus.COMPLETED for j in jobs)
    with pytest.raises(ShuttingDown):
        await q.enqueue("ok")
    with pytest.raises(ShuttingDown):
        q.enqueue_nowait("ok")


async def test_shutdown_timeout_interrupts_and_records_failed(
    h: Harness, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async with trioqueue.open_queue(h.registry, cfg(workers=2, shutdown_timeout=5.0)) as q:
        slow = await q.enqueue("sleep", {"seconds": 100})
        quick = await q.enqueue("sleep", {"seconds": 2})
        await trio.testing.wait_all_tasks_blocked()
        t0 = trio.current_time()
    assert trio.current_time() - t0 == 5.0
    interrupted = q.get_nowait(slow.id)
    assert interrupted.status is JobStatus.FAILED  # never left PROCESSING, never lost
    assert interrupted.error == "aborted: shutdown timeout"
    assert interrupted.attempts == 1  # the attempt is counted
    assert q.get_nowait(quick.id).status is JobStatus.COMPLETED
    m = q.metrics()
    assert (m.processing, m.busy_workers, m.dropped, m.failed) == (0, 0, 0, 1)
    assert "failed: aborted: shutdown timeout" in caplog.text


async def test_parked_producer_is_refused_when_the_queue_closes(
    h: Harness, autojump_clock: Any
) -> None:
    outcome: list[str] = []
    async with trio.open_nursery() as outer:
        async with one_busy_worker(h, capacity=1, shutdown_timeout=1) as q:
            q.enqueue_nowait("ok")

            async def producer() -> None:
                try:
                    await q.enqueue("ok")
                    outcome.append("accepted")
                except ShuttingDown:
                    outcome.append("refused")

            outer.start_soon(producer)
            await trio.testing.wait_all_tasks_blocked()
            assert outcome == []
    assert outcome == ["refused"]


async def test_drain_runs_queued_jobs_before_exit(h: Harness, autojump_clock: Any) -> None:
    async with trioqueue.open_queue(h.registry, cfg(workers=1, drain=True)) as q:
        jobs = [q.enqueue_nowait("ok", i) for i in range(50)]
    assert all(q.get_nowait(j.id).status is JobStatus.COMPLETED for j in jobs)
    assert q.metrics().dropped == 0


async def test_without_drain_queued_jobs_are_counted_dropped(
    h: Harness, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trioqueue")
    async with trioqueue.open_queue(h.registry, cfg(workers=1)) as q:
        for i in range(50):
            q.enqueue_nowait("ok", i)
        q.enqueue_nowait("ok", delay=100)
    m = q.metrics()
    assert m.completed + m.dropped == 51
    assert m.dropped >= 1
    assert "trioqueue shutting down" in caplog.text
    assert "or drain=True to run queued ones first" in caplog.text


async def test_dropped_jobs_leave_the_queue_and_its_counts(
    h: Harness, autojump_clock: Any
) -> None:
    """Memory mode: the jobs dropped at shutdown are gone, not left "queued" or
    "scheduled" in what the closed queue tells (counted once, in ``dropped``), and a
    task waiting for one is told it was dropped."""
    told: list[str] = []

    async def waiter(job_id: str) -> None:
        with pytest.raises(ShuttingDown) as caught:
            await q.wait(job_id)
        told.append(str(caught.value))

    async with trio.open_nursery() as nursery:
        async with trioqueue.open_queue(h.registry, cfg(workers=1, capacity=10)) as q:
            running = await q.enqueue("sleep", {"seconds": 100})
            queued = [q.enqueue_nowait("ok", i) for i in range(3)]
            later = q.enqueue_nowait("ok", delay=100)
            nursery.start_soon(waiter, queued[0].id)
            await trio.testing.wait_all_tasks_blocked()
            assert q.metrics().queued["medium"] == 3
    m = q.metrics()
    assert (m.dropped, m.queued["medium"], m.scheduled, m.failed) == (4, 0, 0, 1)
    assert (await q.get(running.id)).status is JobStatus.FAILED
    for job in (*queued, later):
        with pytest.raises(JobNotFound, match="was dropped when the queue closed"):
            await q.get(job.id)
        with pytest.raises(ShuttingDown, match="it was dropped \\(memory mode\\)"):
            await q.wait(job.id)
        with pytest.raises(JobNotFound, match="was dropped when the queue closed"):
            await q.cancel(job.id)
    with pytest.raises(JobNotFound, match="not found"):
        await q.get("never-there")
    assert [j.id for j in await q.list_jobs()] == [running.id]
    assert told == [f"the queue closed before job {queued[0].id!r} finished: it was "
                    "dropped (memory mode)"]


async def test_with_drain_the_dropped_warning_says_what_drain_does_not_run(
    h: Harness, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """drain=True was set: the warning does not advise it, it says what it leaves."""
    async with trioqueue.open_queue(h.registry, cfg(workers=1, drain=True)) as q:
        q.enqueue_nowait("ok", delay=100)
    assert q.metrics().dropped == 1
    assert "drain=True runs queued jobs only within shutdown_timeout, and never " \
        "scheduled ones" in caplog.text
    assert "or drain=True to run" not in caplog.text


async def test_outer_cancellation_fails_interrupted_jobs_in_memory_mode(
    h: Harness, autojump_clock: Any
) -> None:
    """No waiting for shutdown_timeout; put back, the job would be dropped with the
    queued ones (memory mode keeps nothing), so it ends FAILED, saying why."""
    with trio.move_on_after(10):
        async with trioqueue.open_queue(h.registry, cfg()) as q:
            job = await q.enqueue("sleep", {"seconds": 100})
            await trio.sleep_forever()
    assert trio.current_time() == pytest.approx(10.0)
    got = q.get_nowait(job.id)
    assert (got.status, got.error) == (JobStatus.FAILED, "aborted: the queue was cancelled")


async def test_two_queues_in_one_process_do_not_see_each_other(
    h: Harness, autojump_clock: Any
) -> None:
    async with trioqueue.open_queue(h.registry, cfg()) as a, trioqueue.open_queue(
        h.registry, cfg()
    ) as b:
        job = await a.enqueue("ok", job_id="shared-id")
        with pytest.raises(JobNotFound):
            await b.get("shared-id")
        await b.enqueue("ok", {"other": True}, job_id="shared-id")  # no DuplicateJob
        assert (await a.wait(job.id)).result is None


# --------------------------------------------------------------------------- events, metrics


async def test_events_follow_a_job_through_its_life(h: Harness, autojump_clock: Any) -> None:
    async with trioqueue.open_queue(h.registry, cfg(retry_base=1.0)) as q:
        async with q.subscribe() as events:
            job = await q.enqueue("fail", {}, max_retries=1)
            await q.wait(job.id)
            seen = drain(events)
    assert [e.type for e in seen] == [
        "enqueued", "started", "retrying", "enqueued", "started", "failed",
    ]
    assert [e.seq for e in seen] == sorted(e.seq for e in seen)
    failed = seen[-1].to_dict()
    assert failed["job_id"] == job.id
    assert failed["status"] == "failed"
    assert failed["error"] == "RuntimeError: boom 2"
    assert failed["attempt"] == 2
    assert failed["worker"] is not None
    assert failed["duration"] == 0.0


async def test_events_reach_subscribers_that_join_late_and_stop_when_they_leave(
    h: Harness, autojump_clock: Any
) -> None:
    """The engine skips event work while no one subscribes; subscribing turns it back on."""

    def kinds(events: ReceivesNowait[trioqueue.Event]) -> list[str]:
        return [e.type for e in drain(events)]

    async with trioqueue.open_queue(h.registry, cfg()) as q:
        await q.wait((await q.enqueue("ok", 1)).id)  # no one listening
        async with q.subscribe() as first:
            await q.wait((await q.enqueue("ok", 2)).id)
            assert kinds(first) == ["enqueued", "started", "completed"]
        await q.wait((await q.enqueue("ok", 3)).id)  # the last one left
        async with q.subscribe() as second:
            async with q.subscribe() as third:
                await q.wait((await q.enqueue("ok", 4)).id)
                assert kinds(third) == ["enqueued", "started", "completed"]
            await q.wait((await q.enqueue("ok", 5)).id)  # one left, one still there
            assert kinds(second) == ["enqueued", "started", "completed"] * 2


async def test_a_slow_subscriber_is_told_it_lagged_and_never_blocks(
    h: Harness, autojump_clock: Any
) -> None:
    async with trioqueue.open_queue(h.registry, cfg()) as q:
        async with q.subscribe(buffer=5) as events:
            jobs = [q.enqueue_nowait("ok", i) for i in range(20)]
            for job in jobs:
                await q.wait(job.id)  # the queue is not slowed by the full buffer
            got = [events.receive_nowait() for _ in range(5)]
            q.enqueue_nowait("ok")
            lagged = events.receive_nowait()
            after = events.receive_nowait()
    assert [e.type for e in got] == ["enqueued"] * 5
    assert lagged.type == "lagged"
    assert lagged.dropped == 20 * 3 - 5
    assert lagged.to_dict() == {"seq": lagged.seq, "type": "lagged", "at": lagged.at,
                                "dropped": 55}
    assert after.type == "enqueued"


async def test_metrics_totals_are_exact_after_a_mixed_workload(
    h: Harness, autojump_clock: Any
) -> None:
    h.gate = trio.Event()
    config = cfg(workers=3, capacity=5, retry_base=1.0)
    async with trioqueue.open_queue(h.registry, config) as q:
        blockers = [await q.enqueue("gated", priority="high") for _ in range(3)]
        await trio.sleep(10)  # all three workers busy for 10 s of the queue's 10 s
        m = q.metrics()
        assert (m.busy_workers, m.processing, m.utilization) == (3, 3, 1.0)
        oks = [q.enqueue_nowait("ok", i) for i in range(5)]
        with pytest.raises(QueueFull):
            q.enqueue_nowait("ok")
        fails = [q.enqueue_nowait("fail", {}, max_retries=2, priority="low") for _ in range(2)]
        to_cancel = q.enqueue_nowait("ok", priority="low")
        await q.cancel(to_cancel.id)
        delayed = q.enqueue_nowait("ok", delay=5)
        m = q.metrics()
        assert m.queued == {"high": 0, "medium": 5, "low": 2}
        assert m.scheduled == 1
        h.gate.set()
        for job in blockers + oks + fails + [delayed]:
            await q.wait(job.id)
        m = q.metrics()
    assert m.enqueued == 3 + 5 + 2 + 1 + 1
    assert m.completed == 3 + 5 + 1
    assert m.failed == 2
    assert m.retried == 2 * 2
    assert m.started == 3 + 5 + 2 * 3 + 1
    assert m.cancelled == 1
    assert m.rejected == 1
    assert (m.processing, m.busy_workers, m.scheduled) == (0, 0, 0)
    assert m.queued == {"high": 0, "medium": 0, "low": 0}
    assert m.run_p50 is not None
    assert m.wait_p99 is not None
    assert 0 < m.utilization <= 1
    d = m.to_dict()
    for key in ("enqueued", "started", "completed", "failed", "retried", "cancelled",
                "rejected", "queued", "scheduled", "processing", "workers", "busy_workers",
                "utilization", "wait_p50", "wait_p99", "run_p50", "run_p99"):
        assert key in d
    text = m.to_prometheus()
    assert "trioqueue_jobs_completed_total 9\n" in text
    assert 'trioqueue_jobs_queued{priority="low"} 0\n' in text


# --------------------------------------------------------------------------- stress


async def test_stress_100k_jobs_10_workers_3_priorities_each_exactly_once() -> None:
    registry = TaskRegistry()
    runs: Counter[str] = Counter()

    @registry.task
    async def count(job: Job) -> None:
        runs[job.id] += 1
        if job.payload % 7 == 0:
            await trio.lowlevel.checkpoint()

    n = 100_000
    ids: list[str] = []
    config = QueueConfig(workers=10, capacity=2000, drain=True)
    async with trioqueue.open_queue(registry, config) as q:
        async with trio.open_nursery() as nursery:
            for p in Priority:

                async def produce(p: Priority = p) -> None:
                    for i in range(n // 3 + (1 if p is Priority.HIGH else 0)):
                        ids.append((await q.enqueue("count", i, priority=p)).id)

                nursery.start_soon(produce)
    m = q.metrics()  # leaving the block with drain=True ran every queued job
    assert len(ids) == n
    assert len(set(ids)) == n
    assert set(runs) == set(ids)
    assert set(runs.values()) == {1}
    assert (m.enqueued, m.started, m.completed, m.failed) == (n, n, n, 0)


# --------------------------------------------------------------------------- fairness to others


class Ticker:
    """A task that counts its turns: how often the rest of the program got to run."""

    def __init__(self) -> None:
        self.ticks = 0

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            self.ticks += 1
            await trio.lowlevel.checkpoint()


async def test_workers_yield_to_other_tasks_while_jobs_never_checkpoint() -> None:
    """A stream of handlers that never await must not starve the rest of the program."""
    registry = TaskRegistry()
    ticker = Ticker()
    seen_at_tick: list[int] = []

    @registry.task
    async def busy(job: Job) -> None:
        seen_at_tick.append(ticker.ticks)

    async with trio.open_nursery() as nursery:
        await nursery.start(ticker.run)
        config = QueueConfig(workers=2, capacity=5000, drain=True)
        async with trioqueue.open_queue(registry, config) as q:
            for _ in range(5000):
                q.enqueue_nowait("busy")
        nursery.cancel_scope.cancel()
    per_tick = Counter(seen_at_tick)
    # Trio runs every runnable task once per batch, in random order, so between two turns
    # of the ticker each worker can run at most twice (once after it in one batch, once
    # before it in the next), and each run is at most CHECKPOINT_EVERY (64) jobs.
    assert max(per_tick.values()) <= 2 * 2 * 64
    assert len(per_tick) >= 5000 // (2 * 2 * 64)
    assert sum(per_tick.values()) == 5000


async def test_timeout_and_cancel_of_a_sync_handler_return_promptly() -> None:
    registry = TaskRegistry()
    release = __import__("threading").Event()

    started = trio.Event()

    @registry.task(sync=True)
    def stuck(job: Job) -> None:
        if job.payload == "signal":
            trio.from_thread.run_sync(started.set)
        release.wait(30)

    try:
        async with trioqueue.open_queue(registry, QueueConfig(workers=2)) as q:
            timed = await q.enqueue("stuck", timeout=0.05, max_retries=0)
            running = await q.enqueue("stuck", "signal")
            with trio.fail_after(10):
                done = await q.wait(timed.id)
                await started.wait()
                cancelled = await q.cancel(running.id)
        assert done.status is JobStatus.FAILED
        assert done.error == "TimeoutError: job exceeded its timeout of 0.05 s"
        assert cancelled.status is JobStatus.CANCELLED
    finally:
        release.set()  # let the abandoned threads end


async def test_waiters_are_released_when_the_queue_closes(h: Harness, autojump_clock: Any) -> None:
    h.gate = trio.Event()
    outcome: list[BaseException] = []
    async with trio.open_nursery() as outer:
        async with trioqueue.open_queue(h.registry, cfg(workers=1, shutdown_timeout=1)) as q:
            await q.enqueue("gated")
            queued = await q.enqueue("ok")

            async def waiter() -> None:
                try:
                    await q.wait(queued.id)
                except ShuttingDown as exc:
                    outcome.append(exc)

            outer.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
    assert len(outcome) == 1
    assert "closed before job" in str(outcome[0])
    with pytest.raises(ShuttingDown):
        await q.wait(queued.id)


async def test_periodic_metrics_events_for_subscribers_that_ask(
    h: Harness, autojump_clock: Any
) -> None:
    async with trioqueue.open_queue(h.registry, cfg(metrics_interval=2.0)) as q:
        async with q.subscribe(metrics=True) as with_metrics, q.subscribe() as plain:
            t0 = trio.current_time()
            first = await with_metrics.receive()
            assert first.type == "metrics"
            assert first.metrics is not None
            assert first.metrics["enqueued"] == 0
            await q.enqueue("ok")
            kinds = []
            while len([k for k in kinds if k == "metrics"]) < 2:
                kinds.append((await with_metrics.receive()).type)
            assert trio.current_time() - t0 == 4.0
            assert kinds == ["enqueued", "started", "completed", "metrics", "metrics"]
            plain_kinds = []
            while True:
                try:
                    plain_kinds.append(plain.receive_nowait().type)
                except trio.WouldBlock:
                    break
            assert plain_kinds == ["enqueued", "started", "completed"]


async def test_generated_ids_are_uuid7_in_the_order_they_were_made(h: Harness) -> None:
    import uuid

    async with trioqueue.open_queue(h.registry, cfg(capacity=5000)) as q:
        ids = [q.enqueue_nowait("ok").id for _ in range(5000)]  # many in one millisecond
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 7 for i in ids)
    assert all(uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)


def test_generated_ids_stay_ordered_past_4096_a_millisecond_and_a_clock_step_back() -> None:
    import uuid

    ids = IdGenerator(seed=1)
    ms = 1_765_000_000_000

    def stamp(job_id: str) -> int:
        return uuid.UUID(job_id).int >> 80

    burst = [ids.new(ms) for _ in range(5000)]  # all in one millisecond
    stepped_back = [ids.new(ms - 2000) for _ in range(10)]  # the clock steps back 2 s
    later = ids.new(ms + 50)
    made = [*burst, *stepped_back, later]
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    assert all(uuid.UUID(i).version == 7 and uuid.UUID(i).variant == uuid.RFC_4122 for i in made)
    # 4096 ids fit one millisecond; the rest borrow the next, and a step back counts on.
    assert [stamp(i) for i in burst] == [ms] * 4096 + [ms + 1] * 904
    assert {stamp(i) for i in stepped_back} == {ms + 1}
    assert stamp(later) == ms + 50


async def test_await_enqueue_is_a_schedule_point_at_least_every_64_calls(
    h: Harness, autojump_clock: Any
) -> None:
    """``await q.enqueue`` yields in batches (CHECKPOINT_EVERY calls or 1 ms), not per
    call, but a producer that never waits still lets the rest of the program run.  (The
    mock clock stands still here, the ticker being always runnable: only the count rule
    applies.)"""
    ticker = Ticker()
    ticks_at: list[int] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(ticker.run)
        async with trioqueue.open_queue(h.registry, cfg(capacity=2000)) as q:
            for _ in range(1000):
                await q.enqueue("ok")
                ticks_at.append(ticker.ticks)
            with trio.CancelScope() as scope:
                scope.cancel()
                with pytest.raises(trio.Cancelled):
                    await q.enqueue("ok")  # a cancel point every call
        nursery.cancel_scope.cancel()
    runs = Counter(ticks_at)
    # Trio runs every runnable task once per batch, in random order, so between two turns
    # of the ticker the producer runs at most twice, each time at most 64 calls ...
    assert max(runs.values()) <= 2 * 64
    assert len(runs) >= 1000 // (2 * 64)
    # ... and far less often than once per call.
    assert len(runs) < 1000 // 4
    assert q.metrics().enqueued == 1000
