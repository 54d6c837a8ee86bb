"""Redis loses the queue's data under running nodes (a restart without persistence, as
Redis' default config allows: only RDB snapshots, or none): the queue's event number
``seq`` starts again from 0, and a node that kept the marks of the old one would ignore
every newer answer until the new number passes the old one.  Each test runs a
redis-server of its own (no AOF, no RDB: it restarts empty), kills it with SIGKILL and
starts it again on the same port, under an open node."""

from __future__ import annotations

import gc
import logging
import random
import socket
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import coredis
import pytest
import trio

import trioqueue
from trioqueue import Event, Job, JobQueue, QueueConfig, QueueFull, StoreError, TaskRegistry
from trioqueue.testing import RedisState, connect

from .redis_util import unique
from .test_redis_chaos import OwnRedis, until

# The connections the kill cuts leave coredis' stream objects unclosed: their
# ResourceWarning is expected here (as in test_redis_state.py).
pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

WENT_BACK = "redis: the queue's event number went back from"
COUNTERS = ("enqueued", "completed", "failed", "retried", "cancelled", "rejected")
LABELS = ("high", "medium", "low")


PORTS = range(18400, 18450)
"""Loopback ports this module's own redis-servers take."""


def port_in_range(ports: range = PORTS) -> int:
    """A loopback port of ``ports`` that nothing listens on now."""
    shuffled = list(ports)
    random.shuffle(shuffled)
    for port in shuffled:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1}")


class Tasks:
    def __init__(self) -> None:
        self.registry = reg = TaskRegistry()
        self.gate = trio.Event()
        self.entered = trio.Event()

        @reg.task
        async def echo(job: Job) -> Any:
            await trio.lowlevel.checkpoint()
            return job.payload

        @reg.task(max_retries=0)
        async def boom(job: Job) -> None:
            raise RuntimeError("boom")

        @reg.task
        async def gated(job: Job) -> str:
            self.entered.set()
            await self.gate.wait()
            return "opened"


@asynccontextmanager
async def empty_redis(tmp_path: Path, ports: range = PORTS) -> AsyncIterator[OwnRedis]:
    """A redis-server of the test's own (on a port of ``ports``) that keeps nothing
    across a restart; killed (by its pid: SIGKILL ends a stopped one too) at the end
    whatever happens."""
    data = tmp_path / "redis"
    data.mkdir()
    server = OwnRedis(data, persist=False, port=port_in_range(ports))
    try:
        for _ in range(5):
            try:
                await server.start()
                break
            except RuntimeError:  # another process took the port meanwhile: another one
                server.kill()
                server = OwnRedis(data, persist=False, port=port_in_range(ports))
        else:
            raise RuntimeError("no redis-server of this test's own could start")
        yield server
    finally:
        server.kill()
        with warnings.catch_warnings():  # collected here, under this module's filter
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


async def lose_data(server: OwnRedis) -> None:
    """SIGKILL the server and start it again, empty, on the same port."""
    server.kill()
    await server.start()


def config(server: OwnRedis, queue: str, **kw: Any) -> QueueConfig:
    return QueueConfig(redis_url=server.url, queue_name=queue, retry_jitter=0.0,
                       prefetch=0, **kw)


async def enqueue(q: JobQueue, task: str, payload: Any, job_id: str, **kw: Any) -> Job:
    """``q.enqueue``, sent again (same id: an idempotent repeat) while the node's
    connection comes back after the restart."""
    with trio.fail_after(10):
        while True:
            try:
                return await q.enqueue(task, payload, job_id=job_id, **kw)
            except StoreError:
                await trio.sleep(0.05)


async def run_jobs(q: JobQueue, tag: str, plan: list[tuple[str, str, int]]) -> None:
    """Enqueue ``plan`` (task, priority, how many) and wait until each job ended."""
    jobs = [await enqueue(q, task, i, f"{tag}-{task}-{prio}-{i}", priority=prio)
            for task, prio, n in plan for i in range(n)]
    with trio.fail_after(10):
        for job in jobs:
            assert (await q.wait(job.id)).status.terminal


def node_counters(q: JobQueue) -> dict[str, Any]:
    m = q.metrics()
    return {name: (getattr(m, name), [m.by_priority[p][name] for p in LABELS])
            for name in COUNTERS}


async def redis_counters(state: RedisState) -> dict[str, Any]:
    totals = (await state.counts()).totals
    out: dict[str, Any] = {}
    for name in COUNTERS:
        per = [totals.get(f"{name}:{p}", 0) for p in LABELS]
        out[name] = (sum(per), per)
    return out


async def node_follows_redis(q: JobQueue, state: RedisState, timeout: float = 5.0) -> None:
    """Within ``timeout`` (a few of the node's 1 s timer ticks), the node's counters and
    their ``by_priority`` are Redis' (the test's own reads of Redis change nothing)."""
    async def same() -> bool | None:
        return True if node_counters(q) == await redis_counters(state) else None

    try:
        await until(same, timeout=timeout)
    except trio.TooSlowError:
        raise AssertionError(f"the node shows {node_counters(q)}, "
                             f"redis {await redis_counters(state)}") from None


async def test_metrics_follow_redis_after_it_lost_its_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A node runs jobs of every priority (some fail), Redis loses everything, the node
    runs fewer jobs on the empty Redis: within a few timer ticks its counters, totals and
    ``by_priority``, are Redis' new ones (not frozen at the old ones until the new event
    number passes the old), as those of a node opened after the loss are; the loss is
    logged once, as a WARNING naming both event numbers."""
    caplog.set_level(logging.WARNING, logger="trioqueue")
    t = Tasks()
    queue = unique("loss")
    async with empty_redis(tmp_path) as server:
        async with trioqueue.open_queue(t.registry, config(server, queue)) as a:
            await run_jobs(a, "old", [("echo", "high", 6), ("echo", "low", 4),
                                      ("boom", "medium", 2), ("echo", "medium", 2)])
            before = node_counters(a)
            assert before["enqueued"] == (14, [6, 4, 4])
            await lose_data(server)
            await run_jobs(a, "new", [("echo", "high", 2), ("echo", "low", 1),
                                      ("boom", "medium", 1)])
            async with connect(server.url, client_name=unique("test")) as client:
                state = RedisState(client, queue)
                await node_follows_redis(a, state)
                after = node_counters(a)
                assert after["enqueued"] == (4, [2, 1, 1])
                assert after["completed"] == (3, [2, 0, 1])
                assert after["failed"] == (1, [0, 1, 0])
                # A node opened after the loss sees the same.
                async with trioqueue.open_queue(t.registry, config(server, queue)) as b:
                    await node_follows_redis(b, state)
                    assert node_counters(b) == node_counters(a)
    went_back = [r for r in caplog.records if WENT_BACK in r.getMessage()]
    assert len(went_back) == 1, [r.getMessage() for r in went_back]
    assert went_back[0].levelno == logging.WARNING
    assert "Redis lost its data" in went_back[0].getMessage()


async def test_a_full_priority_admits_again_after_redis_lost_its_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Capacity 3, one worker held by a ``gated`` job, three low jobs queued: this node's
    room view says low is full and ``enqueue_nowait`` refuses.  Redis loses everything
    (the queued jobs with it): within a few timer ticks ``enqueue_nowait`` admits low
    jobs again (the view of the old queue, newer by its event number, is not kept), and
    they run.  The gated job's late outcome is refused (its record is gone): the log says
    Redis lost its data, not that another node took the job."""
    caplog.set_level(logging.WARNING, logger="trioqueue")
    t = Tasks()
    queue = unique("room")
    async with empty_redis(tmp_path) as server:
        async with trioqueue.open_queue(t.registry,
                                        config(server, queue, capacity=3, workers=1)) as q:
            await run_jobs(q, "old", [("echo", "low", 3), ("echo", "high", 3)])
            held = await enqueue(q, "gated", None, "held", priority="high")
            with trio.fail_after(10):
                await t.entered.wait()
            for i in range(3):
                await enqueue(q, "echo", i, f"queued-{i}", priority="low")
            with pytest.raises(QueueFull):
                q.enqueue_nowait("echo", "refused", priority="low")
            await lose_data(server)
            t.gate.set()  # its outcome goes to a Redis that no longer has the job

            async def admitted() -> Job | None:
                await trio.lowlevel.checkpoint()
                try:
                    return q.enqueue_nowait("echo", "after", priority="low")
                except QueueFull:
                    return None

            try:
                after = await until(admitted, timeout=5, interval=0.05)
            except trio.TooSlowError:
                raise AssertionError("enqueue_nowait still refuses low jobs: the node "
                                     "keeps the room view of the lost queue") from None
            more = [q.enqueue_nowait("echo", i, priority="low") for i in range(2)]
            with trio.fail_after(10):
                for job in (after, *more):
                    assert (await q.wait(job.id)).result == job.payload

            async def outcome_logged() -> bool | None:
                await trio.lowlevel.checkpoint()
                return True if any(held.id in r.getMessage() and "refused" in r.getMessage()
                                   for r in caplog.records) else None

            await until(outcome_logged, timeout=10, interval=0.05)
    messages = [r.getMessage() for r in caplog.records]
    refused = [m for m in messages if held.id in m and "refused" in m]
    assert refused
    assert all("taken by another node" not in m for m in refused), refused
    assert all("lost its data" in m for m in refused), refused
    assert sum(WENT_BACK in m for m in messages) == 1, messages


async def test_a_subscriber_sees_the_jobs_run_after_redis_lost_its_data(
    tmp_path: Path,
) -> None:
    """A node has run jobs (the event number is well above 0) when a subscriber arrives
    (events numbered up to what this node saw are older than it, and not shown to it);
    Redis loses everything and numbers events from 1 again: once the node told the new
    Redis that it reads events, the subscriber sees every event of the jobs run after
    the loss (not only those numbered above the old mark)."""
    t = Tasks()
    queue = unique("events")
    async with empty_redis(tmp_path) as server:
        async with trioqueue.open_queue(t.registry, config(server, queue)) as q:
            await run_jobs(q, "old", [("echo", "high", 10), ("echo", "low", 10)])
            seen: list[Event] = []
            async with q.subscribe() as events, trio.open_nursery() as nursery:

                async def collect() -> None:
                    async for ev in events:
                        seen.append(ev)

                nursery.start_soon(collect)

                def missing(jobs: list[Job]) -> set[tuple[str, str]]:
                    want = {(job.id, kind) for job in jobs
                            for kind in ("enqueued", "started", "completed")}
                    return want - {(ev.job_id or "", str(ev.type)) for ev in seen}

                async def all_seen(jobs: list[Job]) -> bool | None:
                    await trio.lowlevel.checkpoint()
                    return None if missing(jobs) else True

                before = await enqueue(q, "echo", "before", "before")
                await until(lambda: all_seen([before]), timeout=10)
                await lose_data(server)
                # Events are written only while Redis knows a node reads them, and it
                # forgot that: the node says it again (within a second).
                async with coredis.Redis.from_url(server.url, decode_responses=True) as r:

                    async def reads_again() -> bool | None:
                        return True if await r.zcard(f"tq:{{{queue}}}:readers") else None

                    await until(reads_again, timeout=10)
                new = [await enqueue(q, "echo", i, f"new-{i}") for i in range(3)]
                with trio.fail_after(10):
                    for job in new:
                        await q.wait(job.id)
                try:
                    await until(lambda: all_seen(new), timeout=5)
                except trio.TooSlowError:
                    raise AssertionError(
                        f"the subscriber never saw {sorted(missing(new))}") from None
                nursery.cancel_scope.cancel()
