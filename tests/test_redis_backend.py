"""The Redis backend behind ``open_queue``: nodes of one queue in one process, against the
real Redis (tests/redis_util.py; never a mock).  Real time: each test keeps its waits
short and bounded by ``fail_after``."""

from __future__ import annotations

import gc
import math
import time
import warnings
from collections import Counter
from typing import Any

import pytest
import trio
import trio.lowlevel

import trioqueue
from trioqueue import Job, JobStatus, QueueConfig, TaskRegistry
from trioqueue.testing import EventKind, redis_paths

from .channels import drain
from .redis_util import REDIS_URL, admin, blocked_clients


def config(queue_name: str, **kw: Any) -> QueueConfig:
    return QueueConfig(redis_url=REDIS_URL, queue_name=queue_name, retry_jitter=0.0, **kw)


class Tasks:
    def __init__(self) -> None:
        self.registry = TaskRegistry()
        self.runs: Counter[str] = Counter()
        self.by_node: dict[str, list[str]] = {}
        self.gate = trio.Event()
        self.entered = trio.Event()
        self.cancelled: list[str] = []
        self.was_cancelled = trio.Event()
        reg = self.registry

        @reg.task
        async def echo(job: Job) -> Any:
            self.runs[job.id] += 1
            await trio.lowlevel.checkpoint()
            return job.payload

        @reg.task
        async def gated(job: Job) -> str:
            self.runs[job.id] += 1
            self.entered.set()
            try:
                await self.gate.wait()
            except trio.Cancelled:
                self.cancelled.append(job.id)
                self.was_cancelled.set()
                raise
            return "opened"


def test_config_redis_fields_and_env() -> None:
    c = QueueConfig.from_env({"TRIOQUEUE_REDIS_URL": "redis://127.0.0.1:6379/3",
                              "TRIOQUEUE_QUEUE": "q.1", "TRIOQUEUE_LEASE": "5",
                              "TRIOQUEUE_PREFETCH": "16"})
    assert (c.redis_url, c.queue_name, c.lease, c.prefetch) == (
        "redis://127.0.0.1:6379/3", "q.1", 5.0, 16)
    with pytest.raises(ValueError, match="redis_url: excludes persist_path"):
        QueueConfig(redis_url="redis://127.0.0.1", persist_path="x.db")
    with pytest.raises(ValueError, match="redis_url: expected a redis://"):
        QueueConfig(redis_url="http://127.0.0.1")
    with pytest.raises(ValueError, match="queue_name: expected"):
        QueueConfig(redis_url="redis://127.0.0.1", queue_name="a b")
    with pytest.raises(ValueError, match="lease: must be > 0"):
        QueueConfig(redis_url="redis://127.0.0.1", lease=0)
    with pytest.raises(ValueError, match="prefetch: expected an integer >= 0"):
        QueueConfig(prefetch=-1)
    with pytest.raises(ValueError, match="TRIOQUEUE_PREFETCH: cannot parse"):
        QueueConfig.from_env({"TRIOQUEUE_PREFETCH": "many"})


async def test_two_nodes_share_one_queue_and_run_each_job_once(queue_name: str) -> None:
    t = Tasks()
    with trio.fail_after(30):
        async with trioqueue.open_queue(t.registry, config(queue_name, workers=2)) as a, \
                trioqueue.open_queue(t.registry, config(queue_name, workers=2)) as b:
            jobs = [await (a if i % 2 else b).enqueue("echo", i) for i in range(100)]
            done = [await (b if i % 2 else a).wait(j.id) for i, j in enumerate(jobs)]
            assert [d.status for d in done] == [JobStatus.COMPLETED] * 100
            assert [d.result for d in done] == list(range(100))
            assert [d.attempts for d in done] == [1] * 100
            # Cluster-wide views from either node.
            assert (await b.get(jobs[0].id)).result == 0
            assert len(await a.list_jobs(limit=1000)) == 100
    assert sorted(t.runs.values()) == [1] * 100


async def test_a_batch_larger_than_one_script_call_is_refused_before_it_is_accepted(
    queue_name: str,
) -> None:
    """A batch is written in one script call of at most 1,000 jobs: 1,500 were accepted
    by ``enqueue_many_nowait``, then the write ended the node and the jobs were lost."""
    reg = TaskRegistry()

    @reg.task
    async def echo(job: Job) -> Any:
        return job.payload

    message = r"^batch: at most 1000 jobs at once on Redis \(one script call"
    with trio.fail_after(30):
        async with trioqueue.open_queue(reg, config(queue_name, capacity=5000,
                                                    workers=0)) as q:
            with pytest.raises(trioqueue.InvalidJob, match=message):
                q.enqueue_many_nowait("echo", range(1001))
            with pytest.raises(trioqueue.InvalidJob, match=message):
                await q.enqueue_many("echo", range(1500))
            with pytest.raises(trioqueue.InvalidJob, match=message):
                await q.enqueue_batch([trioqueue.BatchItem("echo", i) for i in range(1001)])
            assert await q.list_jobs() == []  # nothing accepted
            jobs = q.enqueue_many_nowait("echo", range(1000))  # the most: one call
            await q.flush()
            assert len((await q.list_page(limit=1000)).jobs) == 1000
            assert (await q.get(jobs[-1].id)).status is JobStatus.QUEUED


async def test_wait_after_close_answers_a_finished_job_as_memory_mode_does(
    queue_name: str,
) -> None:
    """``wait`` on a node that has closed said "the queue closed before job ... finished"
    of a job that had finished (and of an id no job has): it asks Redis first."""
    reg = TaskRegistry()

    @reg.task
    async def echo(job: Job) -> Any:
        return job.payload

    with trio.fail_after(30):
        async with trioqueue.open_queue(reg, config(queue_name)) as q:
            done = await q.wait((await q.enqueue("echo", 7)).id)
        assert (await q.wait(done.id)).result == 7
        with pytest.raises(trioqueue.JobNotFound):
            await q.wait("nope")


async def test_dead_letters_stay_for_retention_not_result_ttl(queue_name: str) -> None:
    """A FAILED job is kept as a store keeps it, for ``retention``; a completed one for
    ``result_ttl``.  The TTLs are read off Redis, not waited for."""
    reg = TaskRegistry()

    @reg.task(max_retries=0)
    async def boom(job: Job) -> None:
        raise RuntimeError("dead letter")

    @reg.task
    async def fine(job: Job) -> int:
        return 1

    with trio.fail_after(30):
        async with trioqueue.open_queue(reg, config(queue_name, result_ttl=60,
                                                    retention=86400)) as q:
            dead, done = await q.enqueue("boom"), await q.enqueue("fine")
            assert (await q.wait(dead.id)).status is JobStatus.FAILED
            assert (await q.wait(done.id)).status is JobStatus.COMPLETED
        async with admin() as a:
            prefix = f"tq:{{{queue_name}}}:job:"
            assert 86_000_000 < await a.pttl(prefix + dead.id) <= 86_400_000
            assert 0 < await a.pttl(prefix + done.id) <= 60_000
        # result_ttl longer than retention: the longer of the two.
        async with trioqueue.open_queue(reg, config(queue_name, result_ttl=7200,
                                                    retention=60)) as q:
            dead = await q.enqueue("boom")
            assert (await q.wait(dead.id)).status is JobStatus.FAILED
        async with admin() as a:
            assert 7_100_000 < await a.pttl(prefix + dead.id) <= 7_200_000
        # No end (inf, as memory and a store take it): a century, Redis' expiry being
        # finite (the node failed to open).
        async with trioqueue.open_queue(reg, config(queue_name, result_ttl=math.inf)) as q:
            done = await q.enqueue("fine")
            assert (await q.wait(done.id)).status is JobStatus.COMPLETED
        async with admin() as a:
            assert await a.pttl(prefix + done.id) > 99 * 365 * 86_400_000


async def test_shutdown_releases_running_job_and_leaves_queued_jobs(queue_name: str) -> None:
    t = Tasks()
    with trio.fail_after(30):
        async with trioqueue.open_queue(
            t.registry, config(queue_name, workers=1, shutdown_timeout=0.1)
        ) as q:
            jobs = [await q.enqueue("gated") for _ in range(3)]
            await t.entered.wait()
        # The running job went back QUEUED (attempt counted), the others never started.
        t2 = Tasks()
        t2.gate.set()
        async with trioqueue.open_queue(t2.registry, config(queue_name, workers=1)) as q2:
            first = await q2.get(jobs[0].id)
            assert first.status in (JobStatus.QUEUED, JobStatus.PROCESSING,
                                    JobStatus.COMPLETED)
            done = [await q2.wait(j.id) for j in jobs]
    assert [d.status for d in done] == [JobStatus.COMPLETED] * 3
    assert [d.attempts for d in done] == [2, 1, 1]
    assert t.cancelled == [jobs[0].id]


async def test_prefetch_two_fetchers_claim_no_more_than_idle_plus_prefetch(
    queue_name: str,
) -> None:
    """With a prefetch a node runs two fetchers (one call's reply is handled while the
    other's script runs); claims in flight count against the prefetch, every job runs
    once, and a close releases every prefetched job (no lease left in Redis)."""
    t = Tasks()
    key = f"tq:{{{queue_name}}}:"
    with trio.fail_after(30):
        async with admin() as r:
            async with trioqueue.open_queue(
                t.registry, config(queue_name, workers=1, prefetch=8, shutdown_timeout=0.1)
            ) as q:
                await q.enqueue_many("gated", [None] * 40)
                await t.entered.wait()

                async def leases() -> int:
                    return int(await r.zcard(key + "leases"))

                while True:
                    if await leases() >= 9:
                        break
                    await trio.sleep(0.01)
                await trio.sleep(0.2)  # both fetchers had time to claim more, if they would
                assert await leases() == 9  # 1 running + 8 prefetched
            assert await r.zcard(key + "leases") == 0
            assert await r.llen(key + "ready:medium") == 40
        t2 = Tasks()
        t2.gate.set()
        async with trioqueue.open_queue(t2.registry, config(queue_name, workers=4,
                                                           prefetch=16)) as q2:
            more = [await q2.enqueue("echo", i) for i in range(200)]
            for job in more:
                assert (await q2.wait(job.id)).result == job.payload
    assert sorted(t2.runs.values()) == [1] * 240


async def test_a_closing_node_hands_its_unstarted_jobs_back_at_once_in_order(
    queue_name: str,
) -> None:
    """Shutdown: the jobs a node claimed but had not started go back to the front of
    their priority when the shutdown begins, not when its running jobs end, in the order
    they were claimed and with no attempt counted; another node runs them while the
    first one's running job finishes."""
    t = Tasks()
    key = f"tq:{{{queue_name}}}:"
    stop = trio.Event()
    claimed = trio.Event()  # all six enqueued, four of them held
    with trio.fail_after(30):
        async with admin() as r, trio.open_nursery() as nursery:

            async def first_node() -> None:
                async with trioqueue.open_queue(t.registry, config(
                        queue_name, workers=1, prefetch=4, shutdown_timeout=20)) as q:
                    await q.enqueue("gated", job_id="run")
                    await t.entered.wait()
                    for i in range(6):
                        await q.enqueue("echo", i, job_id=f"e{i}")
                    while int(await r.zcard(key + "leases")) < 5:  # noqa: ASYNC110
                        await trio.sleep(0.01)  # (1 running, 4 held: Redis' state)
                    claimed.set()
                    await stop.wait()

            nursery.start_soon(first_node)
            # (not the leases alone: five can be held before e5's enqueue has returned)
            await claimed.wait()
            assert await r.lrange(key + "ready:medium", 0, -1) == ["e4", "e5"]
            stop.set()  # the first node's shutdown begins; "run" holds it up
            while int(await r.zcard(key + "leases")) > 1:  # noqa: ASYNC110
                await trio.sleep(0.01)  # (put back: Redis' state, no local event)
            assert await r.lrange(key + "ready:medium", 0, -1) == [f"e{i}" for i in range(6)]
            attempts = [await r.hget(f"{key}job:e{i}", "attempts") for i in range(4)]
            assert attempts == ["0"] * 4
            t2 = Tasks()
            async with trioqueue.open_queue(t2.registry, config(queue_name, workers=1)) as q2:
                done = [await q2.wait(f"e{i}") for i in range(6)]
                assert [d.attempts for d in done] == [1] * 6
                assert (await q2.get("run")).status is JobStatus.PROCESSING  # still running
                t.gate.set()
                assert (await q2.wait("run")).attempts == 1
    assert sum(t.runs[f"e{i}"] for i in range(6)) == 0
    assert sum(t2.runs.values()) == 6


async def test_jobs_a_claim_in_flight_brings_back_after_the_shutdown_began_go_back_at_once(
    queue_name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A claim whose reply arrives once the node began to close: its jobs go back at
    once (no worker takes a job now), not when the node's running job has ended."""
    from trioqueue.testing import RedisState

    t = Tasks()
    key = f"tq:{{{queue_name}}}:"
    stop, armed, in_flight, reply = trio.Event(), trio.Event(), trio.Event(), trio.Event()
    original = RedisState.finish_and_claim_parts

    async def slow_reply(self: RedisState, node: str, outcomes: Any, n: int,
                         *args: Any, **kwargs: Any) -> Any:
        if armed.is_set() and n > 0 and not in_flight.is_set():
            in_flight.set()
            await reply.wait()  # (the script runs after the shutdown began)
        return await original(self, node, outcomes, n, *args, **kwargs)

    monkeypatch.setattr(RedisState, "finish_and_claim_parts", slow_reply)
    with trio.fail_after(30):
        async with admin() as r, trio.open_nursery() as nursery:
            closing: list[trioqueue.JobQueue] = []

            async def first_node() -> None:
                async with trioqueue.open_queue(t.registry, config(
                        queue_name, workers=1, prefetch=2, shutdown_timeout=20)) as q:
                    closing.append(q)
                    await q.enqueue("gated", job_id="run")
                    await t.entered.wait()
                    armed.set()
                    for i in range(4):
                        await q.enqueue("echo", i, job_id=f"e{i}")
                    await stop.wait()

            nursery.start_soon(first_node)
            await in_flight.wait()
            stop.set()
            while not closing[0].closing:  # noqa: ASYNC110 (the shutdown's first step)
                await trio.sleep(0.01)
            reply.set()
            while int(await r.zcard(key + "leases")) > 1:  # noqa: ASYNC110
                await trio.sleep(0.01)  # (put back: Redis' state, no local event)
            assert sorted(await r.lrange(key + "ready:medium", 0, -1)) == [
                f"e{i}" for i in range(4)]
            assert [await r.hget(f"{key}job:e{i}", "attempts") for i in range(4)] == ["0"] * 4
            assert (await r.hget(key + "job:run", "status")) == "processing"  # still running
            t.gate.set()
    assert sum(t.runs[f"e{i}"] for i in range(4)) == 0


async def test_a_queue_cancelled_from_outside_still_puts_its_running_job_back(
    queue_name: str,
) -> None:
    """A second Ctrl+C cancels the whole queue from outside: the running job is put back
    QUEUED in Redis as it closes (what operations.md promises), not left PROCESSING
    until its lease runs out; the node's entry is removed."""
    t = Tasks()
    key = f"tq:{{{queue_name}}}:"
    with trio.fail_after(20):
        async with trio.open_nursery() as outer:

            async def node() -> None:
                async with trioqueue.open_queue(t.registry, config(
                        queue_name, workers=1, prefetch=2, lease=30)) as q:
                    await q.enqueue("gated", job_id="running")
                    await q.enqueue_many("echo", [1, 2], priority="low")
                    await trio.sleep_forever()

            outer.start_soon(node)
            await t.entered.wait()
            outer.cancel_scope.cancel()  # what the CLI's second signal does
        async with admin() as r:
            status, attempts = await r.hmget(key + "job:running", ["status", "attempts"])
            assert (status, attempts) == ("queued", "1")
            assert await r.zcard(key + "leases") == 0
            assert await r.lrange(key + "ready:medium", 0, -1) == ["running"]
            assert await r.zcard(key + "beats") == 0
    assert t.cancelled == ["running"]


async def test_a_node_that_loses_its_lease_stops_the_job_and_its_ack_is_refused(
    queue_name: str,
) -> None:
    t = Tasks()
    with trio.fail_after(30):
        async with trioqueue.open_queue(t.registry, config(queue_name, lease=0.6)) as q:
            job = await q.enqueue("gated")
            await t.entered.wait()
            # Another node takes the job over (what a reap does): fence + 1, new owner.
            async with admin() as client:
                key = f"tq:{{{queue_name}}}:job:{job.id}"
                await client.hincrby(key, "fence", 1)
                await client.hset(key, {"owner": "someone-else"})
            await t.was_cancelled.wait()  # the heartbeat (every lease/3) saw the loss
        # Closed: everything this node had to send was sent; none of it applied.
        async with admin() as client:
            status, attempts, owner = await client.hmget(key, ["status", "attempts", "owner"])
    assert t.cancelled == [job.id]
    assert (status, attempts, owner) == ("processing", "1", "someone-else")


async def test_cancel_from_another_node_interrupts_the_running_handler(queue_name: str) -> None:
    t = Tasks()
    with trio.fail_after(30):
        async with trioqueue.open_queue(t.registry, config(queue_name)) as a, \
                trioqueue.open_queue(TaskRegistry(), config(queue_name)) as b:
            job = await a.enqueue("gated")
            await t.entered.wait()
            cancelled = await b.cancel(job.id)
            assert cancelled.status is JobStatus.CANCELLED
            assert (await a.get(job.id)).status is JobStatus.CANCELLED
    assert t.cancelled == [job.id]


async def test_subscribers_see_other_nodes_events(queue_name: str) -> None:
    t = Tasks()
    with trio.fail_after(30):
        async with trioqueue.open_queue(t.registry, config(queue_name)) as a, \
                trioqueue.open_queue(TaskRegistry(), config(queue_name)) as b:
            async with b.subscribe() as events:
                # Nothing to wait for: once subscribe() has returned, every node writes
                # its events to the stream for b's reader.
                job = await a.enqueue("echo", 1)
                seen = []
                async for ev in events:
                    seen.append(ev.type)
                    if ev.type == "completed":
                        break
    assert seen == ["enqueued", "started", "completed"]
    # The same kind of value as a local queue's events (not a plain str).
    assert [type(kind) for kind in seen] == [EventKind] * 3
    assert t.runs[job.id] == 1


async def test_wait_returns_after_the_subscribers_here_have_the_jobs_events(
    queue_name: str,
) -> None:
    # A job seen finished by wait()'s own look, before this node read its events: wait
    # returns only once this node's subscribers have them (as on a local backend).
    # Without that, 2 rounds in 300 missed the `completed` event here.
    t = Tasks()
    missed = 0
    with trio.fail_after(60):
        async with trioqueue.open_queue(t.registry, config(queue_name, workers=1)) as q:
            async with q.subscribe() as events:
                for i in range(300):
                    job = await q.enqueue("echo", i)
                    while not (await q.get(job.id)).status.terminal:
                        pass
                    await q.wait(job.id)
                    seen = drain(events)
                    if not any(e.type == "completed" and e.job_id == job.id for e in seen):
                        missed += 1
    assert missed == 0


async def test_a_node_reads_no_events_without_subscribers_or_waiters(queue_name: str) -> None:
    """A node nobody subscribes to or waits on never reads the events stream (none of its
    connections ever ran XREAD), and no event is written to it; a subscriber arriving
    later starts the reader at the stream's end: it sees the new job's events, none of
    the earlier job's.  A second after the last subscriber left, the node withdraws
    (``readers``) and the events stop again."""
    t = Tasks()
    key = f"tq:{{{queue_name}}}:"
    with trio.fail_after(30):
        async with admin() as redis, trioqueue.open_queue(t.registry,
                                                          config(queue_name)) as a:
            (node,) = await redis.hkeys(key + "nodes")
            name = f"trioqueue:{node}"
            early = await a.enqueue("echo", "early")
            while (await a.get(early.id)).status is not JobStatus.COMPLETED:  # noqa: ASYNC110
                await trio.sleep(0.01)
            await trio.sleep(0.3)  # more than an XREAD BLOCK: a reading node would be in one
            assert await blocked_clients(redis, name, "xread") == 0
            assert await redis.xlen(key + "events") == 0
            async with a.subscribe() as events:
                assert await redis.zrange(key + "readers", 0, -1) == (node,)
                job = await a.enqueue("echo", "late")
                seen = []
                async for ev in events:
                    seen.append((ev.type, ev.job_id))
                    if ev.type == "completed":
                        break
            written = await redis.xlen(key + "events")
            assert written == 3
            while await redis.zcard(key + "readers"):  # noqa: ASYNC110 (READER_LINGER)
                await trio.sleep(0.05)
            after = await a.enqueue("echo", "after")
            while (await a.get(after.id)).status is not JobStatus.COMPLETED:  # noqa: ASYNC110
                await trio.sleep(0.01)
            assert await redis.xlen(key + "events") == written
    assert seen == [("enqueued", job.id), ("started", job.id), ("completed", job.id)]


async def test_only_the_event_types_a_node_needs_are_written(queue_name: str) -> None:
    """A subscriber of ``started`` events alone has only those written; a task in
    ``wait`` alone, only the ends of jobs; a subscriber of every type, from the moment
    ``subscribe()`` returns, every type."""
    t = Tasks()
    key = f"tq:{{{queue_name}}}:"

    async def written() -> list[str]:
        return [e.field_values["type"] for e in await redis.xrange(key + "events")]

    with trio.fail_after(30):
        async with admin() as redis, trioqueue.open_queue(t.registry,
                                                          config(queue_name)) as a:
            async with a.subscribe(types={"started"}) as started:
                first = await a.enqueue("echo", 1)
                ev = await started.receive()
                assert (ev.type, ev.job_id) == ("started", first.id)
                while not (await a.get(first.id)).status.terminal:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            assert await written() == ["started"]
            while await redis.zcard(key + "readers"):  # noqa: ASYNC110 (READER_LINGER)
                await trio.sleep(0.05)

            held = await a.enqueue("gated", 2)
            await t.entered.wait()
            async with trio.open_nursery() as nursery:
                got: list[Job] = []

                async def waiter() -> None:
                    got.append(await a.wait(held.id))

                nursery.start_soon(waiter)
                (node,) = await redis.hkeys(key + "nodes")
                while await redis.hget(key + "readers:types", node) != (  # noqa: ASYNC110
                        "cancelled,completed,failed"):  # (another process' state)
                    await trio.sleep(0.01)
                t.gate.set()
            assert got[0].status is JobStatus.COMPLETED
            assert await written() == ["started", "completed"]

            async with a.subscribe() as everything:
                last = await a.enqueue("echo", 3)
                seen = []
                async for e in everything:
                    seen.append((e.type, e.job_id))
                    if e.type == "completed":
                        break
            assert seen == [("enqueued", last.id), ("started", last.id),
                            ("completed", last.id)]
            assert (await written())[2:] == ["enqueued", "started", "completed"]


async def test_wait_many_across_nodes_in_order_with_repeats(queue_name: str) -> None:
    """``wait_many`` on a node that runs nothing, for jobs another node runs: some done
    before it is called, some held until after; it returns them in the order asked,
    repeats included, and an unknown id among them is ``JobNotFound``."""
    t = Tasks()
    with trio.fail_after(30):
        async with trioqueue.open_queue(t.registry, config(queue_name)) as runner, \
                trioqueue.open_queue(t.registry, config(queue_name, workers=0)) as a:
            early = await a.enqueue_many("echo", [1, 2, 3])
            for job in early:
                await runner.wait(job.id)
            held = await a.enqueue_many("gated", [4, 5])
            await t.entered.wait()
            ids = [held[1].id, early[0].id, held[0].id, early[2].id, early[0].id]
            async with trio.open_nursery() as nursery:
                got: list[list[Job]] = []

                async def waiter() -> None:
                    got.append(await a.wait_many(ids))

                nursery.start_soon(waiter)
                await trio.sleep(0.2)
                assert not got  # the held jobs are not done
                t.gate.set()
            assert [j.id for j in got[0]] == ids
            assert [j.result for j in got[0]] == ["opened", 1, "opened", 3, 1]
            assert {j.status for j in got[0]} == {JobStatus.COMPLETED}
            with pytest.raises(trioqueue.JobNotFound, match="nope"):
                await a.wait_many([early[1].id, "nope"])
            assert await a.wait_many([]) == []


async def test_wait_many_reads_each_job_at_its_end_before_its_result_expires(
    queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``wait_many`` read the jobs only when the first one it waited for ended (or at its
    poll): jobs that ended sooner had expired by then (``result_ttl``) and the call
    raised ``JobNotFound``, their results lost.  Each is read as its end shows now."""
    monkeypatch.setattr(redis_paths, "REMOTE_WAIT_POLL", 3600.0)  # no look by the clock
    registry = TaskRegistry()
    hold, go = trio.Event(), trio.Event()
    started: list[str] = []
    all_started = trio.Event()

    @registry.task
    async def slow(job: Job) -> str:
        started.append(job.id)
        await hold.wait()
        return "slow"

    @registry.task
    async def quick(job: Job) -> Any:
        started.append(job.id)
        if len(started) == 3:
            all_started.set()
        await go.wait()
        return job.payload

    with trio.fail_after(30):
        async with trioqueue.open_queue(registry, config(queue_name, workers=4,
                                                         result_ttl=0.5)) as q:
            first = await q.enqueue("slow")
            quicks = await q.enqueue_many("quick", [1, 2])
            await all_started.wait()
            got: list[list[Job]] = []
            async with trio.open_nursery() as nursery:

                async def waiter() -> None:
                    got.append(await q.wait_many([first.id] + [j.id for j in quicks]))

                nursery.start_soon(waiter)
                await trio.sleep(0.2)  # its first look is done
                go.set()
                await trio.sleep(1.0)  # the quick jobs ended and their results expired
                with pytest.raises(trioqueue.JobNotFound):
                    await q.get(quicks[0].id)
                hold.set()
    assert [j.result for j in got[0]] == ["slow", 1, 2]


async def test_wait_many_is_woken_by_the_jobs_ends_not_by_its_poll(
    queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the fallback look every hour instead of every second, batches whose jobs end
    while ``wait_many`` looks at them are still waited for by their ends' events (it
    once took an end seen during a look for a job put back, and waited for the poll)."""
    monkeypatch.setattr(redis_paths, "REMOTE_WAIT_POLL", 3600.0)
    t = Tasks()
    with trio.fail_after(30):
        async with trioqueue.open_queue(t.registry, config(queue_name, prefetch=128)) as q:
            for round_ in range(5):
                jobs = await q.enqueue_many("echo", [[round_, i] for i in range(200)])
                done = await q.wait_many([j.id for j in jobs])
                assert [d.result for d in done] == [[round_, i] for i in range(200)]


async def test_enqueue_nowait_jobs_wait_for_room_in_their_nodes_outbox(queue_name: str) -> None:
    """Two nodes both see room for one job and accept one each with enqueue_nowait: one is
    written, the other finds no room in Redis and waits in its node's outbox (not
    dropped) until a third node's worker makes room; both run once."""
    t = Tasks()
    with trio.fail_after(30):
        async with trioqueue.open_queue(t.registry, config(queue_name, workers=0,
                                                           capacity=1)) as a, \
                trioqueue.open_queue(t.registry, config(queue_name, workers=0,
                                                        capacity=1)) as b:
            x = a.enqueue_nowait("echo", "x")  # no await between: neither is written yet
            y = b.enqueue_nowait("echo", "y")
            with pytest.raises(trioqueue.QueueFull):
                a.enqueue_nowait("echo", "over")  # a's own view: full
            await trio.sleep(0.3)
            seen = []
            for job, mine in ((x, a), (y, b)):
                assert (await mine.get(job.id)).status is JobStatus.QUEUED
                try:
                    await (b if mine is a else a).get(job.id)
                    seen.append(job.id)
                except trioqueue.JobNotFound:
                    pass
            assert len(seen) == 1  # one in Redis, the other still in its node's outbox
            async with trioqueue.open_queue(t.registry, config(queue_name, workers=1,
                                                               capacity=1)):
                done = [await a.wait(x.id), await b.wait(y.id)]
    assert [d.result for d in done] == ["x", "y"]
    assert t.runs == {x.id: 1, y.id: 1}


async def test_progress_and_wait_across_nodes(queue_name: str) -> None:
    """report_progress on the node running the job: the record's progress and a
    progress event reach another node; that node's wait() is woken by the completed
    event, not by its once-a-second look."""
    reg = TaskRegistry()
    go = trio.Event()
    reported = trio.Event()

    @reg.task
    async def slow(job: Job) -> str:
        trioqueue.report_progress(0.5, "half way")
        reported.set()
        await go.wait()
        return "done"

    with trio.fail_after(30):
        async with trioqueue.open_queue(reg, config(queue_name, workers=1)) as a, \
                trioqueue.open_queue(TaskRegistry(), config(queue_name, workers=0)) as b:
            async with b.subscribe() as events:
                await trio.sleep(0.3)  # b's reader is at the stream's end
                job = await a.enqueue("slow")
                await reported.wait()
                async for ev in events:
                    if ev.type == "progress":
                        break
                assert (ev.job_id, ev.fraction, ev.note) == (job.id, 0.5, "half way")
                got = await b.get(job.id)
                assert got.progress == {"fraction": 0.5, "note": "half way"}
                result: list[Job] = []

                async def waiter() -> None:
                    result.append(await b.wait(job.id))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(waiter)
                    await trio.sleep(0.1)  # the waiter is parked on its watch
                    go.set()
                    started = trio.current_time()
                # Woken by the stream (XREAD blocks at most 250 ms), not the 1 s poll.
                assert trio.current_time() - started < 0.6
                assert result[0].result == "done"


async def test_metrics_count_the_workers_and_jobs_of_every_live_node(queue_name: str) -> None:
    """A node without workers (``serve --redis --workers 0``) reports the queue's figures:
    the jobs processing in Redis, and the workers of every live node, busy ones included,
    from their heartbeats (every lease/3).  Its per-priority counts of new jobs follow
    every way of enqueueing, with and without a wait for Redis."""
    t = Tasks()
    with trio.fail_after(10):
        async with trioqueue.open_queue(t.registry, config(queue_name, workers=2,
                                                           lease=0.6)) as a, \
                trioqueue.open_queue(t.registry, config(queue_name, workers=0,
                                                        lease=0.6)) as b:
            job = await b.enqueue("gated", priority="high")
            m = b.metrics()
            assert m.by_priority["high"]["enqueued"] == m.enqueued == 1
            later = b.enqueue_nowait("echo", priority="low")  # in b's outbox
            m = b.metrics()
            assert m.by_priority["low"]["enqueued"] == 1
            assert sum(p["enqueued"] for p in m.by_priority.values()) == m.enqueued == 2
            await t.entered.wait()
            while (m := b.metrics()).busy_workers != 1:
                await trio.sleep(0.05)
                await b.get(job.id)  # the counts and the nodes' figures, refreshed
            assert (m.workers, m.busy_workers, m.processing) == (2, 1, 1)
            assert m.utilization > 0
            mine = a.metrics()  # a's own figures are live, b adds no workers
            assert (mine.workers, mine.busy_workers) == (2, 1)
            await b.wait(later.id)
            t.gate.set()
            await b.wait(job.id)
            m = b.metrics()
            assert [m.by_priority[p]["enqueued"] for p in ("high", "medium", "low")] == [
                1, 0, 1]


async def test_a_job_waiting_for_its_tasks_concurrency_past_its_lease_is_released_unrun(
    queue_name: str,
) -> None:
    """``l2`` waits on the node for its task's ``concurrency`` while ``l1`` runs; ``l1``'s
    handler then blocks the node's event loop past the lease (as a stalled process does:
    no renewal).  When ``l1`` ends, the node must not start ``l2`` on its lapsed lease
    (another node may have reaped and run it): it is put back, claimed again, and runs
    once, as its first attempt (the claim that never started it is not counted)."""
    reg = TaskRegistry()
    runs: Counter[str] = Counter()
    entered, go = trio.Event(), trio.Event()

    @reg.task(concurrency=1)
    async def limited(job: Job) -> None:
        runs[job.id] += 1
        if job.payload == "stall":
            entered.set()
            await go.wait()
            time.sleep(0.8)  # noqa: ASYNC251 (meant: the node stalls, its heartbeat too)

    with trio.fail_after(10):
        async with trioqueue.open_queue(reg, config(queue_name, workers=2, lease=0.5)) as q:
            l1 = await q.enqueue("limited", "stall", job_id="l1")
            await entered.wait()
            l2 = await q.enqueue("limited", "later", job_id="l2")
            while (await q.get(l2.id)).status is not JobStatus.PROCESSING:  # noqa: ASYNC110
                await trio.sleep(0.01)  # (claimed: Redis says so, no local event)
            await q.get(l2.id)  # a round trip more: the idle worker parked it
            go.set()
            done = await q.wait(l2.id)
            await q.wait(l1.id)
    assert (done.status, done.attempts, runs[l2.id]) == (JobStatus.COMPLETED, 1, 1)


# A refused connection leaves coredis' stream objects unclosed: their ResourceWarning is
# expected here (as in test_redis_state.py).
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_an_unreachable_redis_fails_open_naming_it(queue_name: str) -> None:
    cfg = QueueConfig(redis_url="redis://127.0.0.1:1/0", queue_name=queue_name)
    with trio.fail_after(30), pytest.raises(trioqueue.TrioQueueError, match="redis"):
        async with trioqueue.open_queue(Tasks().registry, cfg):
            pass  # pragma: no cover
    with warnings.catch_warnings():  # collected here, under this test's filter
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


async def test_a_job_of_a_task_no_node_has_holds_back_nothing_behind_it(
    queue_name: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """A job whose task no running node has (a renamed task, a release rolled back) waits,
    still queued, for a node that has it, while the jobs behind it in its
    priority run on the nodes there are."""
    new = Tasks()  # the release that added "resize"

    @new.registry.task
    async def resize(job: Job) -> str:
        return "resized"

    old = Tasks()
    with trio.fail_after(30):
        async with trioqueue.open_queue(new.registry, config(queue_name, workers=0)) as app:
            async with trioqueue.open_queue(old.registry, config(queue_name, workers=2)):
                first = await app.enqueue("resize", priority="high")
                rest = [await app.enqueue("echo", i, priority="high") for i in range(20)]
                done = await app.wait_many([j.id for j in rest])
                assert [d.result for d in done] == list(range(20))
                assert (await app.get(first.id)).status is JobStatus.QUEUED
                assert [j.id for j in await app.list_jobs("queued")] == [first.id]
            async with trioqueue.open_queue(new.registry, config(queue_name, workers=1)):
                finished = await app.wait(first.id)
    assert (finished.status, finished.result, finished.attempts) == (
        JobStatus.COMPLETED, "resized", 1)
    assert new.runs == Counter()
    assert sorted(old.runs.values()) == [1] * 20
    # The node that parked it says so, once.
    assert [r.getMessage() for r in caplog.records if "wait, queued" in r.getMessage()] == [
        "trioqueue: jobs of task 'resize' wait, queued, for a node that has it: it is not "
        "registered on this node"]


class LimitedNodes:
    """Two nodes' registries ("a", "b") of a ``concurrency=1`` task, ``limited``, whose
    jobs say where they ran and wait for :attr:`gate`."""

    def __init__(self) -> None:
        self.gate = trio.Event()
        self.runs: dict[str, list[str]] = {"a": [], "b": []}
        self.started = {"a": trio.Event(), "b": trio.Event()}

    def registry(self, name: str) -> TaskRegistry:
        reg = TaskRegistry()

        @reg.task(concurrency=1)
        async def limited(job: Job) -> None:
            self.runs[name].append(job.id)
            self.started[name].set()
            await self.gate.wait()

        return reg


async def test_a_limited_task_backlog_stays_in_redis_for_every_node(queue_name: str) -> None:
    """One node held up to ``capacity`` claimed jobs of a ``concurrency=1`` task: a
    second node found none to run, and a crash cost each held job an attempt it never
    began.  A node's line holds about ``concurrency`` now (one claim call's worth at
    most): the rest stay queued in Redis, and another node runs them."""
    nodes = LimitedNodes()
    node, runs, started, gate = nodes.registry, nodes.runs, nodes.started, nodes.gate

    with trio.fail_after(30):
        async with trioqueue.open_queue(node("a"), config(queue_name, workers=4)) as a:
            ids = [j.id for j in await a.enqueue_many("limited", list(range(10)))]
            await started["a"].wait()  # a claimed (one call's worth): one runs
            async with trioqueue.open_queue(node("b"), config(queue_name, workers=4)):
                await started["b"].wait()  # jobs were left in Redis for it
                gate.set()
                done = await a.wait_many(ids)
    assert [d.status for d in done] == [JobStatus.COMPLETED] * 10
    assert [d.attempts for d in done] == [1] * 10
    assert sorted(runs["a"] + runs["b"]) == sorted(ids)
    assert runs["b"]


async def test_a_limited_batch_claimed_whole_by_one_node_is_shared_with_another(
    queue_name: str,
) -> None:
    """A node with 4 idle workers meets a batch of 4 jobs of a ``concurrency=1`` task:
    its call claims what the task may run and wait here (one each), the other two stay
    queued in Redis, and a second node runs them beside it (one call claimed all 4, and
    the node ran them one after another; a crash of it held all 4 until their leases
    ran out)."""
    nodes = LimitedNodes()
    node, runs, started, gate = nodes.registry, nodes.runs, nodes.started, nodes.gate

    with trio.fail_after(30):
        async with trioqueue.open_queue(node("a"), config(queue_name, workers=4)) as a:
            ids = [j.id for j in await a.enqueue_many("limited", list(range(4)))]
            await started["a"].wait()
            queued = await a.list_jobs("queued")
            assert [(j.id, j.attempts) for j in queued] == [(ids[3], 0), (ids[2], 0)]
            async with trioqueue.open_queue(node("b"), config(queue_name, workers=4)):
                await started["b"].wait()
                gate.set()
                done = await a.wait_many(ids)
    assert [(d.status, d.attempts) for d in done] == [(JobStatus.COMPLETED, 1)] * 4
    assert (runs["a"], runs["b"]) == (ids[:2], ids[2:])


async def test_a_limited_task_claims_no_more_than_it_runs_and_waits_and_wakes_for_more(
    queue_name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One node, 8 idle workers, 5 jobs of a ``concurrency=1`` task: a call claims only
    what may run and wait here (2; no job claimed and handed back: no ``requeued``
    events), and when a job of the task ends the node claims the next at once, though
    its fetcher waits in Redis (its last call, for its other task, had no room for this
    one, whose jobs wait parked): it is woken, not left until its wait for work times out
    (each stalled up to a second: 40 jobs of 20 ms took 4.3 s).  (With no other task
    to claim, the node waits for its own jobs to end, not in Redis.)"""
    from trioqueue.testing import RedisState

    waited = RedisState.wait_for_work
    waiting = [0]

    async def wait_long(self: RedisState, node: str, timeout: float = 1.0) -> Any:
        waiting[0] += 1
        try:
            return await waited(self, node, 5.0)  # the longest it may: a stall takes 5 s
        finally:
            waiting[0] -= 1

    monkeypatch.setattr(RedisState, "wait_for_work", wait_long)
    reg = TaskRegistry()
    gates = [trio.Event() for _ in range(5)]
    started = [trio.Event() for _ in range(5)]

    @reg.task(concurrency=1)
    async def limited(job: Job) -> None:
        started[job.payload].set()
        await gates[job.payload].wait()

    @reg.task
    async def other(job: Job) -> None:  # (so the node's calls go on for it: it waits
        pass  # in Redis, not for a job of its own to end)

    with trio.fail_after(30):
        async with trioqueue.open_queue(reg, config(queue_name, workers=8)) as q:
            async with q.subscribe() as events:
                jobs = await q.enqueue_many("limited", list(range(5)))
                await started[0].wait()
                processing = await q.list_jobs("processing")
                assert sorted(j.id for j in processing) == [jobs[0].id, jobs[1].id]
                async with admin() as redis:
                    while True:  # until the fetcher waits in Redis, no wake token left
                        if waiting[0] and not await redis.llen(f"tq:{{{queue_name}}}:wake"):
                            break
                        await trio.sleep(0.01)
                with trio.fail_after(4):  # one stall takes 5 s
                    for i in range(5):
                        await started[i].wait()
                        gates[i].set()
                    done = await q.wait_many([j.id for j in jobs])
                seen = [e.type for e in drain(events)]
    assert [(d.status, d.attempts) for d in done] == [(JobStatus.COMPLETED, 1)] * 5
    assert EventKind.REQUEUED not in seen
    assert seen.count(EventKind.STARTED) == 5


async def add_up(a: int, b: int) -> int:
    await trio.lowlevel.checkpoint()
    return a + b


async def test_a_node_with_no_room_for_its_tasks_still_takes_a_function_submitted_later(
    queue_name: str,
) -> None:
    """A node whose only task is limited and has no room makes no claim; a function
    submitted meanwhile (a task it registers then) is still claimed and run, though
    the limited job runs on: the node looks again within a second, not only when one of
    its jobs ends."""
    reg = TaskRegistry()
    gate = trio.Event()
    first = trio.Event()

    @reg.task(concurrency=1)
    async def limited(job: Job) -> None:
        first.set()
        await gate.wait()

    with trio.fail_after(30):
        async with trioqueue.open_queue(reg, config(queue_name, workers=2)) as q:
            jobs = await q.enqueue_many("limited", [0, 1, 2])
            await first.wait()
            async with admin() as redis:
                while True:  # until the node told Redis it holds job 1 (its last call)
                    if await redis.hexists(f"tq:{{{queue_name}}}:held", jobs[1].id):
                        break
                    await trio.sleep(0.01)
            with trio.fail_after(10):
                job = await q.submit(add_up, 2, 3)
                assert (await q.wait(job.id)).result == 5
            gate.set()


async def test_a_task_whose_line_on_the_node_is_full_holds_back_nothing_behind_it(
    queue_name: str,
) -> None:
    """A node holds about ``concurrency`` claimed jobs of one task waiting for a place
    (a claim call may take more than the room left); once its line is full it claims no
    more of that task, and the jobs of other tasks behind them in their priority still
    run (the limited task's jobs there are parked, still queued, and run later, each
    once)."""
    reg = TaskRegistry()
    runs: Counter[str] = Counter()
    go = trio.Event()

    @reg.task(concurrency=1)
    async def limited(job: Job) -> None:
        runs[job.id] += 1
        await go.wait()

    @reg.task
    async def quick(job: Job) -> int:
        runs[job.id] += 1
        return int(job.payload)

    with trio.fail_after(20):
        async with trioqueue.open_queue(reg, config(queue_name, workers=8, capacity=4)) as q:
            async def add(task: str, payload: int) -> str:
                while True:  # (room frees as the node claims)
                    try:
                        return (await q.enqueue(task, payload)).id
                    except trioqueue.QueueFull:
                        await trio.sleep(0.01)

            limited_ids: list[str] = []
            while len(await q.list_jobs("processing")) < 2:
                # Until one runs and one waits on the node (its line is full), however
                # many a claim call takes; Redis says what is claimed, no local event.
                if len(limited_ids) < 8:
                    limited_ids.append(await add("limited", len(limited_ids)))
                await trio.sleep(0.01)
            if not await q.list_jobs("queued"):  # at least one left (parked), at most 3
                limited_ids.append(await add("limited", 8))
            quick_ids = [await add("quick", i) for i in range(4)]
            done = await q.wait_many(quick_ids)
            assert [d.result for d in done] == [0, 1, 2, 3]
            queued = {j.id for j in await q.list_jobs("queued")}
            processing = {j.id for j in await q.list_jobs("processing")}
            assert queued
            assert queued | processing == set(limited_ids)
            go.set()
            finished = await q.wait_many(limited_ids)
    assert [f.status for f in finished] == [JobStatus.COMPLETED] * len(limited_ids)
    assert sorted(runs.values()) == [1] * (len(limited_ids) + 4)


async def test_jobs_a_closing_node_gives_back_run_before_their_tasks_later_jobs(
    queue_name: str,
) -> None:
    """``concurrency=1``: a node closing with jobs 2-4 set aside for the limit gave them
    back to the front of the ready list, while 5-8 waited in their task's parked list,
    which claims take first: the next node ran 5, 6, 7, 8, 2, 3, 4.  Given back in front
    of the parked list, they run in the order they were picked.  (Only 2 waits on the
    node now, its task's line full: 3 and 4, claimed with it, went back at once.)"""
    registry = TaskRegistry()
    ran: list[int] = []
    first_started = trio.Event()

    @registry.task(concurrency=1)
    async def limited(job: Job) -> None:
        first_started.set()
        await trio.sleep(0.05)
        ran.append(job.payload)

    with trio.fail_after(30):
        async with trioqueue.open_queue(registry, config(queue_name, workers=4,
                                                         shutdown_timeout=5)) as q:
            jobs = await q.enqueue_many("limited", list(range(1, 9)))
            await first_started.wait()
            while True:  # 1 running, 2 set aside on this node (PROCESSING), 3-8 queued
                statuses = [(await q.get(j.id)).status for j in jobs]
                if statuses == [JobStatus.PROCESSING] * 2 + [JobStatus.QUEUED] * 6:
                    break
                await trio.sleep(0.01)
        first = list(ran)
        async with trioqueue.open_queue(registry, config(queue_name, workers=4)) as q:
            await q.wait_many([j.id for j in jobs])
    assert first == [1]
    assert ran == list(range(1, 9))


async def test_a_redis_older_than_7_is_refused_at_open(
    queue_name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The scripts declare their flags with Redis 7's shebang, which Redis 6 cannot read:
    a queue on it is refused at open, saying which version it needs."""
    from trioqueue.testing import RedisClient

    async def old(self: Any) -> str:
        await trio.lowlevel.checkpoint()
        return "6.2.14"

    monkeypatch.setattr(RedisClient, "ping", old)
    with trio.fail_after(30), pytest.raises(trioqueue.StoreError, match=(
            r"^redis 6\.2\.14: trioqueue needs Redis 7\.0 or later")):
        async with trioqueue.open_queue(TaskRegistry(), config(queue_name)):
            pass  # pragma: no cover
