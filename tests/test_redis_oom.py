"""A Redis that is out of memory (``maxmemory`` reached, ``noeviction``): on a
redis-server of each test's own, started on a free port of 127.0.0.1 and killed by its
pid in a ``finally``.

Redis refuses a command that adds data once it is over ``maxmemory``, and a script at
such a command while the script has written nothing yet (it never stops one midway).
Nodes treat the refusal like a lost connection (they wait and send again), ``enqueue``
raises ``StoreError`` saying the job is not stored, and reads still answer.  Before, the
first refusal a node met ended it.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import coredis
import pytest
import trio

import trioqueue
import trioqueue.testing
from trioqueue import Job, JobStatus, QueueConfig, StoreError, TaskRegistry
from trioqueue.testing import NewJob, Outcome, RedisState, connect

from .redis_util import free_port, unique


@asynccontextmanager
async def own_redis(tmp_path: Path) -> AsyncIterator[str]:
    """A redis-server of the test's own (nothing saved); its URL."""
    port = free_port()
    log = (tmp_path / "redis.log").open("wb")
    proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path), "--maxmemory-policy", "noeviction"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        with trio.fail_after(10):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    await trio.sleep(0.02)
                    continue
                async with stream:
                    await stream.send_all(b"PING\r\n")
                    if await stream.receive_some(64) == b"+PONG\r\n":
                        break
                await trio.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()
        log.close()


async def set_maxmemory(url: str, value: str) -> None:
    async with coredis.Redis.from_url(url, decode_responses=True) as admin:
        await admin.config_set({"maxmemory": value})


async def test_a_script_refused_for_memory_did_nothing_and_goes_through_later(
    tmp_path: Path,
) -> None:
    """A completion sent while Redis is full is refused as ``RedisRefused`` with nothing
    done (the job keeps its lease and stays PROCESSING), reads still answer, and the same
    completion goes through once there is room."""
    async with own_redis(tmp_path) as url, connect(url, client_name=unique("t")) as client:
        state = RedisState(client, "oom")
        await state.enqueue([NewJob.build("j1", "t", {"n": 1})])
        (claimed,) = (await state.finish_and_claim("node-a", [], 1, 30.0)).claimed
        done = Outcome.completed("j1", claimed.fence, {"ok": True})
        await set_maxmemory(url, "1")
        with pytest.raises(trioqueue.testing.RedisRefused, match="OOM command not allowed"):
            await state.finish_and_claim("node-a", [done], 0, 30.0)
        got = await state.get("j1")  # a read still answers
        assert got is not None
        assert got.job.status is JobStatus.PROCESSING
        assert (await state.counts()).processing == 1  # still leased: the lease is there
        with pytest.raises(trioqueue.testing.RedisRefused):
            await state.enqueue([NewJob.build("j2", "t", None)])
        await set_maxmemory(url, "0")
        assert (await state.finish_and_claim("node-a", [done], 0, 30.0)).results == ["ok"]
        got = await state.get("j1")
        assert got is not None
        assert (got.job.status, got.job.result) == (JobStatus.COMPLETED, {"ok": True})
        assert await state.get("j2") is None


async def test_nodes_wait_out_a_full_redis_and_enqueue_says_the_job_is_not_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A node with jobs queued while Redis fills up keeps running (it used to end at the
    first refusal); ``enqueue`` raises ``StoreError`` naming the refusal and saying the job
    is not stored; once there is room every job stored runs."""
    registry = TaskRegistry()

    @registry.task
    async def echo(job: Job) -> Any:
        return job.payload

    async with own_redis(tmp_path) as url:
        config = QueueConfig(redis_url=url, queue_name="oom", workers=2)
        with trio.fail_after(30):
            async with trioqueue.open_queue(registry, config) as q:
                first = await q.enqueue("echo", 1)
                assert (await q.wait(first.id)).result == 1
                await set_maxmemory(url, "1")
                with pytest.raises(StoreError, match=r"redis: OOM command not allowed .*; "
                                                     r"the job is not stored$"):
                    await q.enqueue("echo", 2)
                while not any("OOM command not allowed" in r.getMessage()  # noqa: ASYNC110
                              for r in caplog.records if r.name == "trioqueue"):
                    await trio.sleep(0.05)  # until the node's timer met a refusal too
                await set_maxmemory(url, "0")
                later = await q.enqueue("echo", 3)
                assert (await q.wait(later.id)).result == 3
                assert q.metrics().completed == 2


async def test_a_job_running_through_a_full_redis_keeps_its_lease_and_ends_once(
    tmp_path: Path,
) -> None:
    """Redis refused a script only at its first command that adds data, and only if it
    had written nothing before: a reap (its first write a ZREM) or a claim (an LPOP) went
    on while the node's renewals were refused, so a job running through the outage lost
    its lease, was taken back, ran again (attempt after attempt) and ended FAILED
    ``LeaseExpired``.  Scripts are refused whole now but for ``renew``, which keeps the
    lease of a job that runs on: it ends once, COMPLETED, when there is room again."""
    registry = TaskRegistry()
    runs: list[int] = []
    started = trio.Event()
    release = trio.Event()

    @registry.task
    async def slow(job: Job) -> Any:
        runs.append(job.attempts)
        started.set()
        await release.wait()
        return "done"

    async with own_redis(tmp_path) as url:
        config = QueueConfig(redis_url=url, queue_name="oom", workers=2, lease=1.0)
        with trio.fail_after(60):
            async with trioqueue.open_queue(registry, config) as q:
                job = await q.enqueue("slow")
                await started.wait()
                await set_maxmemory(url, "1")
                await trio.sleep(4.0)  # (real time: four leases long, renewed all along)
                release.set()  # its outcome is refused while Redis stays full
                await trio.sleep(1.5)
                await set_maxmemory(url, "0")
                done = await q.wait(job.id)
    assert (done.status, done.result, done.attempts) == (JobStatus.COMPLETED, "done", 1)
    assert runs == [1]
