"""A Redis that hangs, stays full, or goes away, as a node and ``GET /readyz`` see it (the
fourteenth operator audit): on a redis-server of each test's own (ports 18800-18849),
stopped with SIGSTOP, filled past ``maxmemory``, or killed, and killed by its pid in a
``finally`` whatever happens.

- Stopped (a stalled Redis, a network partition): the node's script calls wait with no
  answer, and ``/readyz`` turned 503 only ~37 s later when one finally failed.  Now it
  turns 503 once calls have waited ``stall_bound(lease)`` (0.5 s here) unanswered, while
  an idle node whose fetcher sits in its 1 s BLPOP stays ready.
- Full (``maxmemory`` below the memory used): writes are refused, reads answer; the node
  flapped between unavailable and "answers again" every second.  Now it is one outage
  until a write goes through.
- Gone: ``enqueue`` said a job "may have been stored" when no connection took the call,
  and nothing about a safe retry when the server looked for a given id first.
"""

from __future__ import annotations

import logging
import os
import re
import signal
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import coredis
import pytest
import trio

import trioqueue
from trioqueue import QueueConfig, StoreError, TaskRegistry
from trioqueue.server import App, ServerSettings
from trioqueue.testing import connect

from .redis_util import unique
from .test_redis_chaos import OwnRedis, until
from .test_redis_dataloss import empty_redis
from .test_server_app import call

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def own_redis(tmp_path: Path) -> AbstractAsyncContextManager[OwnRedis]:
    """A redis-server of the test's own (nothing saved) on a port of 18800-18849."""
    return empty_redis(tmp_path, range(18800, 18850))


def _pid(server: OwnRedis) -> int:
    assert server.proc is not None
    return server.proc.pid


def _registry() -> TaskRegistry:
    reg = TaskRegistry()

    @reg.task
    async def echo(job: trioqueue.Job) -> Any:
        return job.payload

    return reg


async def test_a_redis_that_hangs_makes_the_node_unready_within_the_bound(
    tmp_path: Path,
) -> None:
    async with own_redis(tmp_path) as redis:
        # lease 1.5 s: calls unanswered for 0.5 s make Redis unavailable.
        config = QueueConfig(redis_url=redis.url, queue_name=unique("hang"), prefetch=0,
                             lease=1.5)
        async with trioqueue.open_queue(_registry(), config) as q:
            app = App(q, ServerSettings(token="t"))
            auth = {"authorization": "Bearer t"}
            # Idle for 1.2 s (the fetcher's 1 s BLPOP, the cancel listener's, heartbeats
            # and timer calls): never unready.
            idle_until = trio.current_time() + 1.2
            while trio.current_time() < idle_until:
                assert q.unavailable is None
                await trio.sleep(0.02)
            assert (await call(app, "GET", "/readyz"))[0] == 200

            os.kill(_pid(redis), signal.SIGSTOP)
            try:
                stopped = trio.current_time()

                async def hung() -> str | None:
                    return q.unavailable

                # Before: ready until a call failed, 15-37 s later.
                reason = await until(hung, timeout=4)
                assert trio.current_time() - stopped < 4
                assert re.fullmatch(r"redis unavailable for \d+\.\d s \(no answer to \d+ "
                                    r"calls in flight\)", reason), reason
                status, _, body = await call(app, "GET", "/readyz", headers=auth)
                assert (status, body["status"]) == (503, "unavailable")
                assert body["reason"].startswith("redis unavailable for ")
                # A POST is refused at once, not sent on to wait for the client's
                # timeouts (15 s and more; before, it then said "may have been stored").
                with trio.fail_after(10):
                    status, _, body = await call(app, "POST", "/jobs", {"task": "echo"},
                                                 headers=auth)
                    assert status == 500
                    assert re.fullmatch(r"store error: redis unavailable for \d+\.\d s "
                                        r"\(no answer to \d+ calls in flight\); the job is "
                                        r"not stored", body["error"]), body
                    status, _, body = await call(app, "POST", "/jobs",
                                                 {"task": "echo", "id": "h1"}, headers=auth)
                    assert status == 500
                    assert body["error"].endswith(
                        "; the job is not stored: send it again with the same id, 'h1'")
                    status, _, body = await call(app, "POST", "/jobs/batch",
                                                 {"jobs": [{"task": "echo"}] * 2},
                                                 headers=auth)
                    assert status == 500
                    assert body["error"].endswith("; none of the jobs is stored"), body
            finally:
                os.kill(_pid(redis), signal.SIGCONT)

            async def answering() -> bool | None:
                return True if q.unavailable is None else None

            await until(answering, timeout=10)
            assert (await call(app, "GET", "/readyz"))[2] == {"status": "ok"}


def _failed_calls(reason: str) -> int:
    found = re.search(r"\((\d+) failed calls", reason)
    assert found is not None, reason
    return int(found.group(1))


async def test_a_full_redis_is_one_outage_until_a_write_goes_through(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="trioqueue")
    async with own_redis(tmp_path) as redis, \
            coredis.Redis.from_url(redis.url, decode_responses=True) as admin:
        # lease 0.6 s: a heartbeat (a write) every 0.2 s; the timer and the fetcher's
        # claims (which write nothing here) answer several times a second meanwhile.
        config = QueueConfig(redis_url=redis.url, queue_name=unique("full"), prefetch=0,
                             lease=0.6)
        async with trioqueue.open_queue(_registry(), config) as q:
            await admin.config_set({"maxmemory": "1"})  # below what it uses: full

            async def unavailable() -> str | None:
                return q.unavailable

            reason = await until(unavailable, timeout=5)
            assert "OOM" in reason
            # Five more heartbeats refused (a second): unavailable at every look.
            first = _failed_calls(reason)
            with trio.fail_after(5):
                while True:
                    now = q.unavailable
                    assert now is not None  # before: "answers again" after each refusal
                    if _failed_calls(now) >= first + 5:
                        break
                    await trio.sleep(0.01)
            lines = [r.getMessage() for r in caplog.records if r.name == "trioqueue"]
            assert len([m for m in lines if "redis unavailable (" in m]) == 1, lines
            assert not [m for m in lines if "answers again" in m], lines
            status, _, body = await call(App(q, ServerSettings()), "GET", "/readyz")
            assert (status, body["status"]) == (503, "unavailable")

            await admin.config_set({"maxmemory": "0"})  # room again

            async def answering() -> bool | None:
                return True if q.unavailable is None else None

            await until(answering, timeout=5)  # the next heartbeat (0.2 s)
            lines = [r.getMessage() for r in caplog.records if r.name == "trioqueue"]
            assert len([m for m in lines if "answers again" in m]) == 1, lines


async def test_enqueue_says_whether_a_job_may_be_stored_and_how_to_retry_it(
    tmp_path: Path,
) -> None:
    async with own_redis(tmp_path) as redis:
        config = QueueConfig(redis_url=redis.url, queue_name=unique("gone"), prefetch=0,
                             lease=1.5)
        async with trioqueue.open_queue(_registry(), config) as q:
            # Sent, then no answer: the server stops, then dies with the calls on it.
            errors: dict[str, str] = {}

            async def enqueue(name: str, job_id: str | None) -> None:
                with pytest.raises(StoreError) as caught:
                    await q.enqueue("echo", name, job_id=job_id)
                errors[name] = str(caught.value)

            os.kill(_pid(redis), signal.SIGSTOP)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(enqueue, "given", "mine-1")
                nursery.start_soon(enqueue, "made", None)

                async def hung() -> str | None:
                    return q.unavailable  # the calls are in flight, sent

                await until(hung, timeout=4)
                redis.kill()
            assert errors["given"].endswith(
                "; the job was not confirmed and may have been stored: enqueue it again "
                "with the same id, 'mine-1', which stores it once"), errors
            made = re.search(r"may have been stored, as '([^']+)' \(an id made for it\): "
                             r"enqueue it again with that id", errors["made"])
            assert made is not None, errors

            # Redis is gone: no connection takes the call, nothing is stored.
            with pytest.raises(StoreError) as caught:
                await q.enqueue("echo", 3)
            assert str(caught.value).endswith("; the job is not stored")
            assert "ECONNREFUSED" in str(caught.value)
            with pytest.raises(StoreError) as caught:
                await q.enqueue("echo", 4, job_id="mine-2")
            assert str(caught.value).endswith("; the job is not stored")

            app = App(q, ServerSettings())
            status, _, body = await call(app, "POST", "/jobs", {"task": "echo"})
            assert status == 500  # a store error (API.md has no other status for it)
            assert body["error"].endswith("; the job is not stored")
            # With an id the server looks for a stored job first: that look failed.
            status, _, body = await call(app, "POST", "/jobs", {"task": "echo", "id": "x1"})
            assert status == 500
            assert body["error"].endswith(
                "; the job is not stored: send it again with the same id, 'x1'"), body
            assert "may have been" not in body["error"]


async def test_coredis_failed_connection_attempts_are_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="coredis")
    async with own_redis(tmp_path) as redis:
        os.kill(_pid(redis), signal.SIGSTOP)
        try:
            async with connect(redis.url, client_name=unique("t"),
                               connect_timeout=0.2) as client:
                # coredis' main client: its handshake times out (0.2 s), and it tries
                # again (given up on here once it logged).
                with trio.move_on_after(1.0):
                    await client.ping()
        finally:
            os.kill(_pid(redis), signal.SIGCONT)
    attempts = [r for r in caplog.records if r.name == "coredis"
                and r.getMessage().startswith("Connection attempt failed")]
    assert attempts, [r.getMessage() for r in caplog.records]
    for record in attempts:
        # Before: ERROR with a ~100-line exception group each.
        assert (record.levelname, record.exc_info) == ("WARNING", None)
        assert record.getMessage() == ("Connection attempt failed unexpectedly! (cut short: "
                                       "no answer within connect_timeout, or the client "
                                       "closed)")
        assert "\n" not in logging.Formatter().format(record)


async def test_a_redis_that_hangs_through_a_close_is_said_to_have_left_jobs_behind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis stopped answering as a node closed: the close gave up after its budget,
    then logged "trioqueue closed" and the worker exited 0, with its running jobs still
    PROCESSING in Redis (until their lease) and not a word about it."""
    from trioqueue.testing import redis_backend

    monkeypatch.setattr(redis_backend, "CLOSE_BUDGET", 0.3)
    async with own_redis(tmp_path) as redis:
        config = QueueConfig(redis_url=redis.url, queue_name=unique("hang"), lease=1.5)
        try:
            async with trioqueue.open_queue(_registry(), config):
                os.kill(_pid(redis), signal.SIGSTOP)
        finally:
            os.kill(_pid(redis), signal.SIGCONT)
    assert re.search(r"redis did not answer node \S+'s last calls at its close \(waited "
                     r"up to 1\.8 s for each\): the jobs it was running or handing back may "
                     r"still show as processing", caplog.text), caplog.text
