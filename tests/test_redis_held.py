"""A killed node's claimed-but-never-started jobs come back without an attempt counted
(docs/redis-design.md, "Held marks"): its prefetch buffer and the jobs of a limited task
it set aside, while a job that was running keeps its attempt; and a job that kills its
node as it starts does not come back for ever.

The state-level tests expire leases by hand (``ZADD leases 0``): no waiting.  The node
tests run tests/redis_node_child.py in processes of their own and SIGKILL them by pid.
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from coredis.exceptions import ResponseError

import trioqueue
from trioqueue import Job, JobStatus, QueueConfig, TaskRegistry
from trioqueue.testing import (
    UNSTARTED_MAX,
    Holds,
    JobRecord,
    NewJob,
    Outcome,
    Reaped,
    RedisState,
    StreamEvent,
)

from .redis_util import REDIS_URL, admin, unique
from .test_redis_chaos import (
    Node,
    nodes_on,
    open_gate,
    queue_state,
    run_lines,
    until,
)


@pytest.fixture
async def state() -> AsyncIterator[RedisState]:
    async with queue_state(unique("held")) as s:
        yield s


async def expire(s: RedisState, *ids: str) -> None:
    """End the leases of ``ids`` now (as a dead node's would end)."""
    if ids:
        async with admin() as a:
            await a.zadd(s.key("leases"), dict.fromkeys(ids, 0))


async def reap_dead(s: RedisState, of: str | None = None) -> Reaped:
    """Reap every lease now (only the jobs of node ``of`` if given): their node is dead
    (its process waited for), so this test need not wait for its lease to run out."""
    async with admin() as a:
        ids = list(await a.zrange(s.key("leases"), 0, -1))
    if of is not None:
        ids = [j for j in ids if await _owner(s, j) == of]
    await expire(s, *ids)
    return await s.reap()


async def held_marks(s: RedisState) -> dict[str, str]:
    async with admin() as a:
        return dict(await a.hgetall(s.key("held")))


async def test_a_dead_nodes_held_jobs_come_back_uncounted_its_running_ones_do_not(
    state: RedisState,
) -> None:
    """Node n1 claims four jobs (max_retries=0) and says it holds b, c and d; then that c
    started; d goes back unstarted (a shutdown) and is claimed again, started at once.
    Their leases end (n1 died): b, never started, is QUEUED again at attempt 0 with a
    ``recovered`` event; a (no mark), c (started) and d (its old mark went with the
    ``unstarted``) end FAILED at attempt 1, as before.  The next claim of b is attempt 1
    and names b as having come back unstarted."""
    s = state
    await s.enqueue([NewJob.build(j, "record", max_retries=0) for j in "abcd"])
    fc = await s.finish_and_claim("n1", [], 4, lease=30)
    fence = {sj.job.id: sj.fence for sj in fc.claimed}
    assert sorted(fence) == ["a", "b", "c", "d"]
    assert fc.suspect == []
    await s.finish_and_claim("n1", [], 0, 30, held=[(j, fence[j]) for j in "bcd"])
    assert await held_marks(s) == {j: str(fence[j]) for j in "bcd"}
    back = await s.finish_and_claim("n1", [Outcome.unstarted("d", fence["d"])], 0, 30,
                                    started=["c"])
    assert back.results == ["ok"]
    assert await held_marks(s) == {"b": str(fence["b"])}
    (d,) = (await s.finish_and_claim("n1", [], 1, 30)).claimed
    assert (d.job.id, d.job.attempts) == ("d", 1)
    await expire(s, "a", "b", "c", "d")
    reaped = await s.reap()
    assert sorted(reaped.requeued) == ["b"]
    assert reaped.unstarted == ["b"]
    assert sorted(reaped.failed) == ["a", "c", "d"]
    for j in "acd":
        sj = await s.get(j)
        assert sj is not None
        assert (sj.job.status, sj.job.attempts, sj.job.error) == (
            JobStatus.FAILED, 1,
            "LeaseExpired: lease expired (worker lost) during attempt 1 (max_retries=0)")
    b = await s.get("b")
    assert b is not None
    assert (b.job.status, b.job.attempts, b.job.started_at) == (JobStatus.QUEUED, 0, None)
    assert await held_marks(s) == {}
    counts = await s.counts()
    assert counts.total("recovered") == 4
    assert counts.total("failed") == 3
    assert counts.total("retried") == 0
    recovered = [e for e in await _events(s) if e.type == "recovered"]
    assert [(e.job_id, e.attempt, e.status, e.node) for e in recovered] == [
        ("b", 0, "queued", "n1")]
    again = await s.finish_and_claim("n2", [], 1, lease=30)
    assert [(sj.job.id, sj.job.attempts) for sj in again.claimed] == [("b", 1)]
    assert again.suspect == ["b"]


async def test_a_job_comes_back_unstarted_at_most_unstarted_max_times(
    state: RedisState,
) -> None:
    """A job held by node after node that dies comes back uncounted UNSTARTED_MAX times;
    the next time its attempt counts (max_retries=0: FAILED, saying why).  A mark under
    an older fence (a late one) counts for nothing.  ``retry`` starts it afresh."""
    s = state
    await s.enqueue([NewJob.build("p", "record", max_retries=0)])
    for i in range(UNSTARTED_MAX + 1):
        (c,) = (await s.finish_and_claim(f"n{i}", [], 1, lease=30)).claimed
        assert c.job.attempts == 1
        await s.finish_and_claim(f"n{i}", [], 0, 30, held=[("p", c.fence)])
        await expire(s, "p")
        reaped = await s.reap()
        if i < UNSTARTED_MAX:
            assert reaped.unstarted == ["p"]
        else:
            assert (reaped.failed, reaped.unstarted) == (["p"], [])
    p = await s.get("p")
    assert p is not None
    assert (p.job.status, p.job.attempts, p.job.error) == (
        JobStatus.FAILED, 1,
        "LeaseExpired: lease expired (worker lost) during attempt 1 (max_retries=0); it "
        f"had come back unstarted from {UNSTARTED_MAX} lost nodes before")
    await s.retry("p")
    (c,) = (await s.finish_and_claim("m", [], 1, lease=30)).claimed
    assert (await s.finish_and_claim("m", [], 0, 30)).suspect == []
    await s.finish_and_claim("m", [], 0, 30, held=[("p", c.fence - 1)])  # a late mark
    await expire(s, "p")
    assert (await s.reap()).failed == ["p"]


async def test_bad_held_marks_are_refused_before_anything_is_written(
    state: RedisState,
) -> None:
    s = state
    await s.enqueue([NewJob.build("x", "record")])
    (c,) = (await s.finish_and_claim("n", [], 1, lease=30)).claimed
    for held, started in ((json.dumps(["x"]), ""), (json.dumps(["x", "f"]), ""),
                          ("", json.dumps([1]))):
        with pytest.raises(ResponseError, match=r"held|started"):
            await s.run_script("finish_and_claim", [
                "", 100, "1000", "n", 30000, 0, 10, 3, 1,
                json.dumps([["x", str(c.fence), "completed", "1", "", "", ""]]), "",
                held, started])
        sj = await s.get("x")
        assert sj is not None
        assert sj.job.status is JobStatus.PROCESSING
    assert (await s.finish_and_claim("n", [Outcome.completed("x", c.fence, 1)], 0, 30)
            ).results == ["ok"]


async def _events(s: RedisState) -> list[StreamEvent]:
    reader = await s.event_reader(from_start=True)
    return (await reader.read(count=1000, block_ms=1)).events


# ---------------------------------------------------------------------------- nodes


async def _marked(state: RedisState, ids: list[str]) -> bool | None:
    marks = await held_marks(state)
    return True if all(j in marks for j in ids) else None


async def _ran(runs: Path, job_id: str) -> bool | None:
    await trio.lowlevel.checkpoint()
    return True if any(j == job_id for _, j, _ in run_lines(runs)) else None


def test_what_the_reaper_did_is_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """A job the reaper fails (its node lost during its last attempt) gets a warning, as a
    handler's last failure does: it was in no log at all (the operator audit)."""
    caplog.set_level(logging.INFO, logger="trioqueue")
    Reaped(requeued=["q1", "q2"], failed=[f"f{i}" for i in range(12)], cancelled=["c"],
           unstarted=["q2"]).report()
    Reaped(requeued=[], failed=[], cancelled=[]).report()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "trioqueue: 12 job(s) ended failed, their node lost during their last "
                    "attempt (LeaseExpired): f0, f1, f2, f3, f4, f5, f6, f7, f8, f9 and 2 more"),
        ("INFO", "trioqueue: a lost node's jobs recovered: 2 back to queued (1 of them never "
                 "started), 1 cancelled as asked"),
    ]


def _recs(*ids: str) -> list[JobRecord]:
    return [JobRecord.restored(i, "t", None, "", 1, JobStatus.PROCESSING, 1, 0, None, 0.0,
                               None, 0.0, None, None, None, None) for i in ids]


def test_every_held_job_is_marked_whatever_order_it_is_held_in() -> None:
    """Which jobs are marked follows no order: a job left unmarked as one of the first
    ``idle`` of the buffer may stay there when the workers get busy, or move into a
    limited task's line behind marked ones (the operator audit: six jobs of a task
    limited to 1, five set aside, the three in front never marked; a kill -9 then failed
    them with max_retries=0 though they never ran)."""
    holds = Holds()
    recs = _recs("s0", "s1", "s2", "s3", "s4", "s5")
    held = {r.id: (r, 7) for r in recs}
    buffer = deque(recs)
    assert holds.pending(buffer, [], 4, held)
    assert sorted(holds.take_marks(buffer, [], 4, held, set())) == [("s4", 7), ("s5", 7)]
    assert not holds.pending(buffer, [], 4, held)
    # A worker takes s0 (started, its task now at its limit); s1..s5 are set aside.
    buffer.popleft()
    del held["s0"]
    line = deque(buffer)
    buffer.clear()
    assert holds.pending(buffer, [line], 3, held)
    assert sorted(holds.take_marks(buffer, [line], 3, held, set())) == [
        ("s1", 7), ("s2", 7), ("s3", 7)]
    # The buffer's own: unmarked as the first of 4 idle, the workers then got busy.
    more = _recs("b0", "b1", "b2")
    held.update((r.id, (r, 8)) for r in more)
    buffer.extend(more)
    assert holds.take_marks(buffer, [line], 4, held, set()) == []
    assert holds.pending(buffer, [line], 0, held)
    assert sorted(holds.take_marks(buffer, [line], 0, held, {"b1"})) == [("b0", 8), ("b2", 8)]
    assert not holds.pending(buffer, [line], 0, held)
    # A new claim of a job marked under an older claim is marked again.
    held["s1"] = (held["s1"][0], 9)
    assert holds.take_marks(buffer, [line], 0, held, set()) == [("s1", 9)]


async def test_a_killed_nodes_buffered_and_set_aside_jobs_run_again_at_attempt_1(
    tmp_path: Path,
) -> None:
    """Node A (2 workers, prefetch 2) runs ``l0`` (task ``limited``, concurrency 1) and
    ``r1``, which never return there; it holds ``l1`` set aside (its task is at its
    limit) and ``p0``, ``p1`` in its prefetch buffer.  A is SIGKILLed.  Once its leases
    end, the reaper gives those back, and this process opens the queue as node B: the
    three held jobs (max_retries=0) run once, in B, and complete at attempt 1; ``l0``
    (max_retries=0) ends FAILED, its attempt counted (``LeaseExpired``), and ``r1``
    (max_retries=1) runs again in B at attempt 2."""
    queue = unique("heldkill")
    runs = tmp_path / "runs.txt"
    me = os.getpid()
    registry = TaskRegistry()

    @registry.task
    async def record(job: Job) -> int:
        with runs.open("a") as f:
            f.write(f"{me} {job.id} {job.attempts}\n")
        return me

    @registry.task(concurrency=1)
    async def limited(job: Job) -> int:
        return await record(job)

    async with queue_state(queue) as state, nodes_on() as nodes:
        a = Node(REDIS_URL, queue, runs, tmp_path / "a.err", workers=2, lease=2.0,
                 prefetch=2)
        nodes.append(a)
        await a.ready()
        await state.enqueue([NewJob.build("l0", "limited", {"hang_in": a.pid},
                                          max_retries=0)])
        await until(lambda: _ran(runs, "l0"))
        await state.enqueue([NewJob.build("l1", "limited", None, max_retries=0)])
        await until(lambda: _marked(state, ["l1"]))  # set aside, and said so
        await state.enqueue([NewJob.build("r1", "record", {"hang_in": a.pid},
                                          max_retries=1)])
        await until(lambda: _ran(runs, "r1"))
        await state.enqueue([NewJob.build(j, "record", None, max_retries=0)
                             for j in ("p0", "p1")])
        await until(lambda: _marked(state, ["l1", "p0", "p1"]))
        a.kill()
        assert sorted((await reap_dead(state)).unstarted) == ["l1", "p0", "p1"]
        config = QueueConfig(redis_url=REDIS_URL, queue_name=queue, workers=2, lease=2.0)
        with trio.fail_after(30):
            async with trioqueue.open_queue(registry, config) as q:
                done = {j: await q.wait(j) for j in ("l0", "l1", "r1", "p0", "p1")}
    assert {j: (d.status, d.attempts, d.result, d.error) for j, d in done.items()} == {
        "l0": (JobStatus.FAILED, 1, None,
               "LeaseExpired: lease expired (worker lost) during attempt 1 (max_retries=0)"),
        "r1": (JobStatus.COMPLETED, 2, me, None),
        "l1": (JobStatus.COMPLETED, 1, me, None),
        "p0": (JobStatus.COMPLETED, 1, me, None),
        "p1": (JobStatus.COMPLETED, 1, me, None),
    }
    assert sorted(run_lines(runs)) == sorted([
        (a.pid, "l0", 1), (a.pid, "r1", 1), (me, "r1", 2), (me, "l1", 1), (me, "p0", 1),
        (me, "p1", 1)])


async def test_a_job_that_kills_its_node_as_it_starts_ends_failed(tmp_path: Path) -> None:
    """``x`` (max_retries=0) ends its process as it starts.  Node A (1 worker, prefetch 1)
    holds it in its buffer while its worker waits at a gate (job ``g``), then starts it:
    A dies before it can tell Redis, so ``x`` comes back unstarted (uncounted).  Node B
    holds it the same way (behind ``h``), but makes its start known to Redis before
    running it, since it came back that way once: B dies too, and this time the attempt
    counts.  ``x`` ends FAILED after two nodes, not after node after node."""
    queue = unique("poison")
    runs = tmp_path / "runs.txt"
    gate = str(tmp_path / "gate-{pid}")
    at_gate = {"gate": gate, "in": None}
    async with queue_state(queue) as state, nodes_on() as nodes:
        a = Node(REDIS_URL, queue, runs, tmp_path / "a.err", workers=1, lease=5.0,
                 prefetch=1)
        nodes.append(a)
        b = Node(REDIS_URL, queue, runs, tmp_path / "b.err", workers=1, lease=5.0,
                 prefetch=2, start=tmp_path / "b.start")  # (it opens the queue later)
        nodes.append(b)
        await a.ready()
        await state.enqueue([NewJob.build("g", "record", at_gate)])
        await until(lambda: _ran(runs, "g"))
        await state.enqueue([NewJob.build("x", "record", {"exit": True}, max_retries=0)])
        await until(lambda: _marked(state, ["x"]))
        a_node = await _owner(state, "x")
        await trio.Path(tmp_path / "b.start").touch()
        await b.ready()
        await state.enqueue([NewJob.build("h", "record", at_gate)])  # (A is full)
        await until(lambda: _ran(runs, "h"))
        open_gate(gate, a.pid)
        assert await trio.to_thread.run_sync(a.proc.wait, 30) == 3
        # A is dead: its leases end now.
        assert "x" in (await reap_dead(state, of=a_node)).unstarted
        await until(lambda: _marked(state, ["x"]))  # claimed by B, held behind h
        open_gate(gate, b.pid)
        assert await trio.to_thread.run_sync(b.proc.wait, 30) == 3
        reaped = await reap_dead(state)
        assert "x" in reaped.failed
        assert "x" not in reaped.unstarted
        got = await state.get("x")
    assert got is not None
    assert (got.job.status, got.job.attempts, got.job.error) == (
        JobStatus.FAILED, 1,
        "LeaseExpired: lease expired (worker lost) during attempt 1 (max_retries=0); it "
        "had come back unstarted from 1 lost node before")
    assert [(pid, j, n) for pid, j, n in run_lines(runs) if j == "x"] == [
        (a.pid, "x", 1), (b.pid, "x", 1)]


async def _owner(state: RedisState, job_id: str) -> str | None:
    sj = await state.get(job_id)
    assert sj is not None
    return sj.owner
