"""Values too large for one call to Redis: on a redis-server of the tests' own, started on
a free port of 127.0.0.1 with its limits lowered to 1 MB (the least Redis takes), and
killed by its pid in a ``finally``.

Redis refuses an argument longer than ``proto-max-bulk-len`` (an error answer, then it
closes the connection) and closes, with no answer, a connection that sends one longer
than ``client-query-buffer-limit``.  A job's values travel in one argument, so one
payload, result or error past them made its call fail each time it was sent: ``enqueue``
raised coredis' ``ResponseError``, a node whose ``enqueue_nowait`` or ack met it ended
(and the job, reaped after its lease, ended the next node that ran it), the outcomes
batched with it were lost; past the query buffer limit the node sent its ack again for
ever and claimed nothing more.  Now the node reads both limits when it opens and never
sends a call past them: a payload is refused before it is accepted, a result, error or
traceback is left out with the error saying why, and values that fit one by one go in as
many calls as they take.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import trioqueue
from trioqueue import InvalidJob, Job, JobStatus, QueueConfig, TaskRegistry
from trioqueue.server import App, ServerSettings
from trioqueue.testing import REDIS_DEFAULT_LIMITS, Connection, Lost, connect, read_limits

from .redis_util import free_port, unique

BIG = 2_000_000
"""Characters of a value past the lowered limits (1 MB)."""
MB_SAID = "its proto-max-bulk-len of 1,048,576 bytes"


def _start(tmp: Path, *options: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = (tmp / f"redis-{port}.log").open("wb")
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", str(tmp), *options],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        for _ in range(500):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64) == b"+PONG\r\n":
                        return proc, f"redis://127.0.0.1:{port}/0"
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")
    except BaseException:
        proc.kill()
        proc.wait()
        raise


@pytest.fixture(scope="module")
def small_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server whose ``proto-max-bulk-len`` and ``client-query-buffer-limit`` are
    1 MB; its URL.  Each test uses queues of its own."""
    proc, url = _start(tmp_path_factory.mktemp("redis"), "--proto-max-bulk-len", "1mb",
                       "--client-query-buffer-limit", "1mb")
    try:
        yield url
    finally:
        proc.kill()
        proc.wait()


@asynccontextmanager
async def own_redis(tmp_path: Path, *options: str) -> AsyncIterator[str]:
    proc, url = _start(tmp_path, *options)
    try:
        yield url
    finally:
        proc.kill()
        proc.wait()


def _registry(name: str = "A") -> TaskRegistry:
    """The tasks of a node named ``name``: ``who`` answers with it."""
    registry = TaskRegistry()

    @registry.task
    async def echo(job: Job) -> Any:
        return len(job.payload) if isinstance(job.payload, str) else job.payload

    @registry.task
    async def who(job: Job) -> str:
        await trio.sleep(0.02)
        return name

    @registry.task
    async def huge_result(job: Job) -> str:
        await trio.sleep(0.1)
        return "r" * BIG

    @registry.task
    async def sized_result(job: Job) -> str:
        await trio.sleep(0.1)
        return "m" * int(job.payload)

    @registry.task
    async def huge_error(job: Job) -> None:
        raise RuntimeError("e" * int(job.payload))

    return registry


def _config(url: str, queue: str, **options: Any) -> QueueConfig:
    return QueueConfig(redis_url=url, queue_name=queue, **options)


async def _post(app: App, body: bytes) -> tuple[int, bytes]:
    """``POST /jobs`` to the ASGI app in-process."""
    sent: list[MutableMapping[str, Any]] = []
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/jobs", "query_string": b"",
             "headers": [(b"content-type", b"application/json"), (b"host", b"127.0.0.1")]}
    await app(scope, receive, send)
    return sent[0]["status"], sent[1]["body"]


async def _both_nodes_run(q: trioqueue.JobQueue, n: int = 30) -> set[str]:
    """Which nodes ran ``n`` ``who`` jobs enqueued now (every one completed)."""
    jobs = [await q.enqueue("who") for _ in range(n)]
    done = await q.wait_many([j.id for j in jobs])
    assert {d.status for d in done} == {JobStatus.COMPLETED}
    return {d.result for d in done}


async def test_a_payload_too_large_for_redis_is_refused_before_it_is_accepted(
    small_redis: str,
) -> None:
    """``enqueue``, ``enqueue_nowait``, ``enqueue_many``, ``enqueue_many_nowait`` and
    ``POST /jobs`` refuse a payload that one call cannot carry with ``InvalidJob`` (400)
    naming its size and the limit, nothing stored; the node goes on.  Before,
    ``enqueue`` raised coredis' ``ResponseError`` and ``enqueue_nowait`` ended the
    node."""
    said = (r"payload: 2,000,006 bytes as sent to redis \(its JSON as a string\), more "
            r"than a call to redis takes \(1,031,950: its proto-max-bulk-len of 1,048,576 "
            r"bytes, less 16,626 for the rest of the call\)")
    big = "p" * BIG
    with trio.fail_after(30):
        async with trioqueue.open_queue(_registry(), _config(small_redis, unique("q"))) as q:
            with pytest.raises(InvalidJob, match=f"^{said}$"):
                await q.enqueue("echo", big)
            with pytest.raises(InvalidJob, match=f"^{said}$"):
                q.enqueue_nowait("echo", big)
            # Named as enqueue_many names its payloads' other errors.
            with pytest.raises(InvalidJob, match=rf"^payloads\[1\]: {said[9:]}$"):
                await q.enqueue_many("echo", [1, big])
            with pytest.raises(InvalidJob, match=rf"^payloads\[0\]: {said[9:]}$"):
                q.enqueue_many_nowait("echo", [big, 1])
            with pytest.raises(InvalidJob, match=rf"^payloads\[0\]: {said[9:]}$"):
                await q.enqueue_many("echo", [big])
            with pytest.raises(InvalidJob, match=rf"^jobs\[1\]\.{said}$"):
                await q.enqueue_batch([trioqueue.BatchItem("echo", 1),
                                       trioqueue.BatchItem("echo", big)])
            # Together past the limit, each within it: the batch is named.
            with pytest.raises(InvalidJob, match=r"^batch: its 3 jobs take 1,200,[0-9]{3} "
                                                 r"bytes as sent to redis, more than a call"):
                await q.enqueue_many("echo", ["p" * 400_000] * 3)
            with pytest.raises(InvalidJob, match=r"^batch: its 3 jobs take 1,20"):
                q.enqueue_many_nowait("echo", ["p" * 400_000] * 3)
            app = App(q, ServerSettings(max_body=8 * 1024 * 1024))
            status, body = await _post(app, b'{"task": "echo", "payload": "' +
                                       big.encode() + b'"}')
            assert status == 400, body
            assert b"payload: 2,000,006 bytes as sent to redis" in body
            assert (await q.list_jobs(limit=10)) == []
            # The node goes on: a payload that fits runs, sent at once or later.
            fits = await q.enqueue("echo", "p" * 900_000)
            later = q.enqueue_nowait("echo", "p" * 900_000)
            done = await q.wait_many([fits.id, later.id])
            assert [d.result for d in done] == [900_000, 900_000]


async def test_a_result_too_large_for_redis_fails_its_job_and_every_other_goes_on(
    small_redis: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler's result that one call cannot carry: its job ends FAILED (once, not
    retried), its error saying why; the jobs whose outcomes shared its call complete,
    attempt 1; both nodes go on claiming.  Before, the node that ran it ended (coredis'
    ``ResponseError``), the outcomes with it were lost, and after its lease the job
    ended the next node too."""
    queue = unique("q")
    with trio.fail_after(30):
        async with (
            trioqueue.open_queue(_registry("A"), _config(small_redis, queue, workers=8))
            as a,
            trioqueue.open_queue(_registry("B"), _config(small_redis, queue, workers=8))
            as b,
        ):
            big = await a.enqueue("huge_result")
            beside = [await a.enqueue("sized_result", 1000) for _ in range(12)]
            done = await a.wait_many([big.id, *(j.id for j in beside)])
            assert done[0].status is JobStatus.FAILED
            assert done[0].result is None
            assert done[0].attempts == 1
            assert done[0].error == (f"StoreError: not stored: result: 2,000,006 bytes "
                                     f"(the call to redis would pass {MB_SAID})")
            assert [(d.status, d.attempts) for d in done[1:]] == [
                (JobStatus.COMPLETED, 1)] * 12
            assert await _both_nodes_run(b) == {"A", "B"}
    assert any("not stored: result: 2,000,006 bytes" in r.getMessage()
               and "it ends failed" in r.getMessage() for r in caplog.records)


async def test_an_error_or_traceback_too_large_for_redis_is_left_out_and_said(
    small_redis: str,
) -> None:
    """An exception whose text one call cannot carry: the largest of the error and the
    traceback are left out, as many as it takes, and the error says which (after the
    job's own error when that is kept), on a retry as on the last attempt.  Before, the
    node ended."""
    with trio.fail_after(30):
        async with trioqueue.open_queue(_registry(), _config(small_redis, unique("q"))) as q:
            both = await q.enqueue("huge_error", BIG, max_retries=0)
            # 600 KB each: the traceback (which holds the message too) goes, the error stays.
            one = await q.enqueue("huge_error", 600_000, max_retries=1)
            first, second = await q.wait_many([both.id, one.id])
            assert first.status is JobStatus.FAILED
            assert first.traceback is None
            assert re.fullmatch(  # (the traceback's size: its frames' paths vary)
                r"StoreError: not stored: traceback: 2,000,\d{3} bytes; error: 2,000,016 "
                r"bytes \(the call to redis would pass its proto-max-bulk-len of 1,048,576 "
                r"bytes\)", first.error or "")
            assert (second.status, second.attempts) == (JobStatus.FAILED, 2)
            own, _, why = (second.error or "").partition("; ")
            assert own == "RuntimeError: " + "e" * 600_000
            assert why.startswith("StoreError: not stored: traceback: 600,")
            assert why.endswith(f" bytes (the call to redis would pass {MB_SAID})")
            assert second.traceback is None
            assert (await q.wait((await q.enqueue("echo", 7)).id)).result == 7


async def test_values_that_fit_alone_but_not_together_go_in_several_calls(
    small_redis: str,
) -> None:
    """Results of 400 KB finishing together on one node, and payloads of 400 KB accepted
    by ``enqueue_nowait`` one after another, each fit a call but not together: they go in
    as many calls as they take, and every job completes once.  Before, their shared call
    ended the node."""
    with trio.fail_after(30):
        config = _config(small_redis, unique("q"), workers=8, prefetch=4)
        async with trioqueue.open_queue(_registry(), config) as q:
            jobs = [await q.enqueue("sized_result", 400_000) for _ in range(12)]
            done = await q.wait_many([j.id for j in jobs])
            assert [(d.status, d.attempts, len(d.result)) for d in done] == [
                (JobStatus.COMPLETED, 1, 400_000)] * 12
            accepted = [q.enqueue_nowait("echo", "p" * 400_000) for _ in range(6)]
            done = await q.wait_many([j.id for j in accepted])
            assert [d.result for d in done] == [400_000] * 6


async def test_past_the_query_buffer_limit_the_node_is_not_jammed(tmp_path: Path) -> None:
    """``client-query-buffer-limit`` below ``proto-max-bulk-len``: Redis closes the
    connection with no answer, so the node sent its ack again and again, claiming
    nothing, and the job never ended (until another node reaped it, and jammed the
    same way).  Now the smaller limit binds: the job ends FAILED naming it, and the node
    runs the jobs after it."""
    async with own_redis(tmp_path, "--client-query-buffer-limit", "1mb") as url:
        with trio.fail_after(20):
            async with trioqueue.open_queue(_registry(), _config(url, unique("q"))) as q:
                big = await q.enqueue("huge_result")
                job = await q.wait(big.id)
                assert job.status is JobStatus.FAILED
                assert job.error == (
                    "StoreError: not stored: result: 2,000,006 bytes (the call to redis "
                    "would pass its client-query-buffer-limit of 1,048,576 bytes)")
                with pytest.raises(InvalidJob, match="its client-query-buffer-limit of "):
                    await q.enqueue("echo", "p" * BIG)
                assert await _both_nodes_run(q, 5) == {"A"}


async def test_redis_defaults_are_taken_when_config_get_is_refused(tmp_path: Path) -> None:
    """A Redis that refuses ``CONFIG`` (managed services rename or forbid it): the node
    takes Redis' default limits (512 MB a call) and opens."""
    async with own_redis(tmp_path, "--rename-command", "CONFIG", "") as url:
        with trio.fail_after(20):
            async with connect(url, client_name=unique("t")) as client:
                assert await read_limits(client) == REDIS_DEFAULT_LIMITS
            async with trioqueue.open_queue(_registry(), _config(url, unique("q"))) as q:
                assert (await q.wait((await q.enqueue("echo", 1)).id)).result == 1
    assert REDIS_DEFAULT_LIMITS.said == (
        "its proto-max-bulk-len, 536,870,912 bytes by default: CONFIG GET was refused")


async def test_a_connection_lost_before_its_drain_starts_fails_its_calls_only() -> None:
    """A call larger than the socket buffer leaves the rest to a drain task; when the
    connection failed before that task first ran (Redis answers a call past its limits
    with an error and a close at once), the task waited on the closed socket, whose
    ``ValueError`` ended the node.  Now the call fails as lost (and is sent again)."""
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        async with trio.open_nursery() as nursery:

            class ReaderFirst:
                """The reader task fails the connection before the drain task runs."""

                def start_soon(self, fn: Any, *args: Any) -> None:
                    async def after_the_failure() -> None:
                        conn.fail(ConnectionResetError("connection reset by peer"))
                        await fn(*args)

                    nursery.start_soon(after_the_failure)

            conn = Connection(a, ReaderFirst())  # type: ignore[arg-type]
            with trio.fail_after(5), pytest.raises(Lost, match="reset by peer"):
                await conn.call(b"x" * 50_000_000)
    finally:
        b.close()
