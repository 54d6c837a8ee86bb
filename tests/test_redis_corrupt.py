"""What a Redis node does with what it cannot read, and with a task of its own that fails:
the real Redis (tests/redis_util.py), real time, each wait bounded.

Everything in a queue's keys is written by trioqueue's scripts, but a key can be written
by something else (a person with redis-cli, another program, a version of trioqueue that
wrote other fields).  A node must neither die of it nor stop silently: an entry of the
events stream that is not an event is passed over with an error logged, a claimed job
whose record cannot be read ends FAILED naming what was wrong, and a task of the node that
raises ends ``open_queue`` with that error instead of leaving it hanging.
"""

from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio

import trioqueue
from trioqueue import Job, JobStatus, QueueConfig, StoreError, TaskRegistry
from trioqueue.testing import NewJob, Outcome, RedisState, connect

from .redis_util import REDIS_URL, admin, unique

ROOT = Path(__file__).resolve().parent.parent


def config(queue_name: str, **kw: Any) -> QueueConfig:
    return QueueConfig(redis_url=REDIS_URL, queue_name=queue_name, **kw)


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def registry() -> TaskRegistry:
    reg = TaskRegistry()

    @reg.task
    async def echo(job: Job) -> Any:
        return job.payload

    return reg


async def test_an_entry_of_the_events_stream_that_is_not_an_event_is_passed_over(
    queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A subscriber and ``wait`` go on past an entry that is not an event (it used to end
    the node's reader, and the node with it), and the error names the entry."""
    key = f"tq:{{{queue_name}}}:events"
    with trio.fail_after(20):
        async with admin() as redis, trioqueue.open_queue(registry(),
                                                          config(queue_name)) as q:
            async with q.subscribe() as events:
                first = await q.enqueue("echo", 1)
                assert (await q.wait(first.id)).status is JobStatus.COMPLETED
                bad = await redis.xadd(key, {"seq": "x", "type": "completed"})
                second = await q.enqueue("echo", 2)
                assert (await q.wait(second.id)).result == 2
                seen = []
                async for ev in events:
                    seen.append((ev.type, ev.job_id))
                    if ev.type == "completed" and ev.job_id == second.id:
                        break
    assert seen == [(t, j.id) for j in (first, second)
                    for t in ("enqueued", "started", "completed")]
    assert errors(caplog) == [f"trioqueue: passed over an entry of the events stream that is not a "
                      f"trioqueue event: event {bad}: ValueError(\"invalid literal for int() "
                      f"with base 10: 'x'\")"]


async def test_a_claimed_job_whose_record_cannot_be_read_ends_failed(
    queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A job whose stored payload is not JSON, claimed by a node, ends FAILED with an
    error naming the job and the field (before, the node's fetcher raised, and every
    node that claimed it after its lease did the same); the node goes on with the next
    job.  The record keeps what it held: nothing is rewritten but status and error."""
    with trio.fail_after(20):
        async with admin() as redis:
            async with trioqueue.open_queue(registry(),
                                            config(queue_name, workers=0)) as producer:
                bad = await producer.enqueue("echo", {"n": 1})
                good = await producer.enqueue("echo", {"n": 2})
            job_key = f"tq:{{{queue_name}}}:job:{bad.id}"
            await redis.hset(job_key, {"payload": "{not json"})
            async with trioqueue.open_queue(registry(), config(queue_name)) as q:
                assert (await q.wait(good.id)).result == {"n": 2}
                while await redis.hget(job_key, "status") != "failed":  # noqa: ASYNC110
                    await trio.sleep(0.01)
                error = await redis.hget(job_key, "error")
                assert error is not None
                assert error.startswith(f"CorruptRecord: job {bad.id!r}: payload: ")
                logged = errors(caplog)
                assert await redis.hget(job_key, "payload") == "{not json"
                again = await q.enqueue("echo", {"n": 3})
                assert (await q.wait(again.id)).result == {"n": 3}
                with pytest.raises(StoreError, match=f"redis: job '{bad.id}': payload: "):
                    await q.get(bad.id)
                with pytest.raises(StoreError, match=f"redis: job '{bad.id}': payload: "):
                    await q.enqueue("echo", {"n": 1}, job_id=bad.id)  # repeated
                caplog.clear()
                listed = await q.list_jobs()
                assert {j.id for j in listed} == {good.id, again.id}
                what = error[len("CorruptRecord: "):]
                assert errors(caplog) == [f"trioqueue: redis: {what}; not listed"]
    assert logged == [f"trioqueue: job {bad.id!r} cannot be read ({error[15:]}); "
                      "it ends failed"]


_CRASHING_NODE = """
import sys, trio, trioqueue
from trioqueue._redis import backend

async def heartbeat(self):
    await trio.sleep(0.2)
    raise RuntimeError("a bug in one of the node's tasks")

backend.RedisBackend._heartbeat = heartbeat
registry = trioqueue.TaskRegistry()

async def main():
    config = trioqueue.QueueConfig(redis_url=sys.argv[1], queue_name=sys.argv[2])
    async with trioqueue.open_queue(registry, config):
        print("open", flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


async def test_a_node_task_that_raises_ends_the_queue_instead_of_hanging(
    queue_name: str,
) -> None:
    """One of a node's own tasks raising (a bug, simulated here) ends ``open_queue`` with
    that error at once.  Before, the node's cancel listener, whose blocking call is
    shielded, went round its loop forever without seeing the cancellation, and the
    process hung with no job running and no error shown.  In a child process so that a
    hang fails the test (a shielded loop cannot be cancelled from within); trio kills
    the child if the time runs out."""
    with trio.fail_after(30):
        done = await trio.run_process(
            [sys.executable, "-c", textwrap.dedent(_CRASHING_NODE), REDIS_URL, queue_name],
            cwd=ROOT, stdin=b"", capture_stdout=True, capture_stderr=True, check=False,
        )
    assert done.stdout == b"open\n"
    assert done.returncode == 1
    assert b"RuntimeError: a bug in one of the node's tasks" in done.stderr


@pytest.mark.parametrize(("edit", "error"), [
    ({"hdel": "id"}, "id: missing"),
    ({"hdel": "task"}, "task: missing"),
    ({"prio": "9"}, 'prio: "9"'),
    ({"attempts": "-"}, 'attempts: "-"'),
    ({"max_retries": "many"}, 'max_retries: "many"'),
    ({"fence": "x"}, 'fence: "x"'),
])
async def test_a_queued_record_the_claim_cannot_compute_with_ends_failed_in_the_claim(
    queue_name: str, edit: dict[str, str], error: str
) -> None:
    """The claim script computes with a record's attempts, fence and priority: one that
    is not a number (or missing) stopped the script midway, after the LPOPs and claims
    before it, with no reply and no leases for those (jobs left PROCESSING for no one,
    for good), and ended the node.  Such a record ends FAILED in the claim, naming the
    field, and the claim goes on to the next job."""
    key = f"tq:{{{queue_name}}}:job:bad"
    async with admin() as redis, connect(REDIS_URL, client_name=unique("t")) as client:
        state = RedisState(client, queue_name)
        await state.enqueue([NewJob.build(job_id, "t", None) for job_id in ("ok1", "bad",
                                                                           "ok2")])
        if "hdel" in edit:
            await redis.hdel(key, [edit["hdel"]])
        else:
            await redis.hset(key, edit)
        got = await state.finish_and_claim("node-a", [], 3, 30.0)
        assert [sj.job.id for sj in got.claimed] == ["ok1", "ok2"]
        assert await redis.hget(key, "status") == "failed"
        assert await redis.hget(key, "error") == (
            f"CorruptRecord: job 'bad': {error}, not what trioqueue writes")
        counts = await state.counts()
        assert (counts.processing, counts.total("failed")) == (2, 1)


async def test_a_leased_record_edited_since_its_claim_ends_failed_when_its_lease_expires(
    queue_name: str,
) -> None:
    """The reaper computes with a leased record's attempts and fence: one edited since
    the claim stopped the reap script midway (its lease already removed: PROCESSING for
    good) and ended every node's timer in turn.  It ends FAILED instead, and the other
    expired lease of the same call is requeued as usual."""
    async with admin() as redis, connect(REDIS_URL, client_name=unique("t")) as client:
        state = RedisState(client, queue_name)
        await state.enqueue([NewJob.build(job_id, "t", None) for job_id in ("a", "b")])
        got = await state.finish_and_claim("node-a", [], 2, 0.05)
        assert [sj.job.id for sj in got.claimed] == ["a", "b"]
        await redis.hset(f"tq:{{{queue_name}}}:job:a", {"attempts": "lots"})
        await trio.sleep(0.1)  # both leases expire
        reaped = await state.reap()
        assert (reaped.requeued, reaped.failed) == (["b"], ["a"])
        assert await redis.hget(f"tq:{{{queue_name}}}:job:a", "error") == (
            "CorruptRecord: job 'a': its lease expired and its record cannot be requeued "
            "(prio, attempts, max_retries or fence not a number)")
        counts = await state.counts()
        assert (counts.processing, counts.queued[1], counts.total("failed")) == (0, 1, 1)


async def test_an_outcome_for_a_record_edited_since_its_claim_is_refused_then_reaped(
    queue_name: str,
) -> None:
    """An outcome computes with the record's priority and attempts: one edited since the
    claim stopped ``finish_and_claim`` midway (the outcomes before it applied, the reply
    lost).  Its outcome is refused as stale instead, the others of the call apply, and
    the reaper ends it FAILED when its lease expires."""
    async with admin() as redis, connect(REDIS_URL, client_name=unique("t")) as client:
        state = RedisState(client, queue_name)
        await state.enqueue([NewJob.build(job_id, "t", None) for job_id in ("a", "b")])
        claimed = (await state.finish_and_claim("node-a", [], 2, 0.2)).claimed
        fences = {sj.job.id: sj.fence for sj in claimed}
        await redis.hset(f"tq:{{{queue_name}}}:job:a", {"prio": "high"})
        done = await state.finish_and_claim(
            "node-a", [Outcome.completed(job_id, fences[job_id], None) for job_id in "ab"],
            0, 0.2)
        assert done.results == ["stale", "ok"]
        await trio.sleep(0.3)  # a's lease expires
        assert (await state.reap()).failed == ["a"]
        counts = await state.counts()
        assert (counts.processing, counts.total("completed"), counts.total("failed")) == (
            0, 1, 1)


async def test_a_scheduled_record_whose_priority_was_edited_ends_failed_when_due(
    queue_name: str,
) -> None:
    """``promote`` moves due jobs into their priority's ready list: one whose priority is
    not 0-2 stopped it midway, the jobs moved before it taken out of the schedule and
    marked QUEUED but pushed to no list (lost), and ended every node's timer.  It ends
    FAILED instead, and the others are promoted."""
    async with admin() as redis, connect(REDIS_URL, client_name=unique("t")) as client:
        state = RedisState(client, queue_name)
        await state.enqueue([NewJob.build(job_id, "t", None, delay=0.05)
                             for job_id in ("a", "b", "c")])
        await redis.hset(f"tq:{{{queue_name}}}:job:b", {"prio": "urgent"})
        await trio.sleep(0.1)  # all three due
        assert (await state.promote()).promoted == 2
        assert await redis.hget(f"tq:{{{queue_name}}}:job:b", "error") == (
            "CorruptRecord: job 'b': prio: \"urgent\", not what trioqueue writes")
        counts = await state.counts()
        assert (counts.scheduled, counts.queued[1], counts.total("failed")) == (0, 2, 1)
        claimed = (await state.finish_and_claim("node-a", [], 3, 30.0)).claimed
        assert [sj.job.id for sj in claimed] == ["a", "c"]


async def test_cancel_and_retry_of_a_record_whose_priority_was_edited_name_it(
    queue_name: str,
) -> None:
    """``cancel`` and ``retry`` compute with a record's priority: one that is not 0-2 made
    them fail with a Lua error naming a line of the script (a 500 with that text over
    HTTP).  They raise ``StoreError`` naming the job and the field, and change nothing."""
    job_key = f"tq:{{{queue_name}}}:job:"
    with trio.fail_after(20):
        async with admin() as redis, trioqueue.open_queue(
                registry(), config(queue_name, workers=0)) as q:
            await q.enqueue("echo", 1, job_id="queued")
            await q.enqueue("echo", 2, job_id="later", delay=60)
            await q.enqueue("echo", 3, job_id="done")
            await q.cancel("done")
            for job_id in ("queued", "later", "done"):
                await redis.hset(job_key + job_id, {"prio": "urgent"})
            before = {job_id: await redis.hgetall(job_key + job_id)
                      for job_id in ("queued", "later", "done")}
            for call, job_id in ((q.cancel, "queued"), (q.cancel, "later"),
                                 (q.retry, "done")):
                with pytest.raises(StoreError) as err:
                    await call(job_id)
                assert str(err.value) == (f"redis: CorruptRecord: job {job_id!r}: prio: "
                                          "\"urgent\", not what trioqueue writes")
                assert await redis.hgetall(job_key + job_id) == before[job_id]
            # A live record whose attempts are gone is named by that field.
            await q.enqueue("echo", 4, job_id="bare")
            await redis.hdel(job_key + "bare", ["attempts"])
            with pytest.raises(StoreError) as err:
                await q.cancel("bare")
            assert str(err.value) == ("redis: CorruptRecord: job 'bare': attempts: missing, "
                                      "not what trioqueue writes")
            assert (await redis.hget(job_key + "bare", "status")) == "queued"
