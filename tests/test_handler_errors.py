"""Whatever a handler raises is that attempt's failure, ``BaseException`` included.

``SystemExit``, ``KeyboardInterrupt`` and ``GeneratorExit`` raised by a handler, and any
custom ``BaseException``, fail the attempt like an error: counted, retried with backoff,
then FAILED, with the exception's type name leading the error text.  The queue goes on.
Only our own scope's ``trio.Cancelled`` (cancel(), a timeout, shutdown) and a Ctrl+C
(SIGINT) pass through, and a Ctrl+C that lands in a handler is the graceful shutdown.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import pytest
import trio
import trio.testing

import trioqueue
from tests.sqlite_util import sqlite_at
from tests.test_server import running_server, wait_for
from trioqueue import Job, JobStatus, QueueConfig, TaskRegistry


class Custom(BaseException):
    """A BaseException of the user's own."""


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


def cfg(**kw: Any) -> QueueConfig:
    kw.setdefault("retry_jitter", 0.0)
    return QueueConfig(**kw)


@asynccontextmanager
async def opened(registry: TaskRegistry, config: QueueConfig
                 ) -> AsyncIterator[trioqueue.JobQueue]:
    """``open_queue``, where a ``Cancelled`` coming out fails the test.  Nothing cancels
    these tests, so one would be open_queue losing the real exception (as it did with a
    handler's SystemExit), and pytest-trio passes a test that raises a stray Cancelled.
    """
    try:
        async with trioqueue.open_queue(registry, config) as q:
            yield q
    except trio.Cancelled as exc:
        raise AssertionError(f"open_queue raised {exc!r}") from exc


def raising(exc: BaseException) -> TaskRegistry:
    registry = TaskRegistry()

    @registry.task
    async def bad(job: Job) -> None:
        await trio.lowlevel.checkpoint()
        raise exc

    @registry.task(sync=True)
    def bad_in_thread(job: Job) -> None:
        raise exc

    @registry.task
    async def ok(job: Job) -> str:
        return "fine"

    return registry


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: SystemExit(1), "SystemExit: 1"),
        (SystemExit, "SystemExit"),
        (lambda: SystemExit("bye"), "SystemExit: bye"),
        (KeyboardInterrupt, "KeyboardInterrupt"),
        (GeneratorExit, "GeneratorExit"),
        (lambda: Custom("mine"), "Custom: mine"),
        (lambda: BaseExceptionGroup("two", [Custom("a"), KeyboardInterrupt()]),
         "BaseExceptionGroup: two (2 sub-exceptions)"),
        (RuntimeError, "RuntimeError"),
        (Unprintable, "Unprintable: <str() failed>"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
@pytest.mark.parametrize("task", ["bad", "bad_in_thread"])
async def test_whatever_a_handler_raises_fails_the_attempt_and_the_queue_goes_on(
    make: Callable[[], BaseException], error: str, task: str
) -> None:
    exc = make()
    registry = raising(exc)
    async with opened(registry, cfg(workers=1)) as q:
        job = await q.enqueue(task, max_retries=0)
        with trio.fail_after(10):
            done = await q.wait(job.id)
            after = await q.wait((await q.enqueue("ok")).id)
        assert done.status is JobStatus.FAILED
        assert done.error == error
        assert done.traceback is not None
        assert type(exc).__name__ in done.traceback
        assert after.status is JobStatus.COMPLETED  # the worker is still there
        assert q.metrics().failed == 1


async def test_system_exit_is_retried_with_backoff_then_failed(autojump_clock: Any) -> None:
    registry = TaskRegistry()
    starts: list[float] = []

    @registry.task(max_retries=2)
    async def poison(job: Job) -> None:
        starts.append(trio.current_time())
        raise SystemExit(1)

    async with opened(registry, cfg(retry_base=1.0, retry_factor=2.0)) as q:
        t0 = trio.current_time()
        done = await q.wait((await q.enqueue("poison")).id)
        assert [t - t0 for t in starts] == [0.0, 1.0, 3.0]  # backoff as for any error
        assert done.status is JobStatus.FAILED
        assert done.attempts == 3
        assert done.error == "SystemExit: 1"
        assert done.traceback is not None
        assert "raise SystemExit(1)" in done.traceback
        m = q.metrics()
        assert (m.failed, m.retried) == (1, 2)


async def test_timeouts_and_cancels_still_pass_through_a_handler_nursery(
    autojump_clock: Any,
) -> None:
    """A handler's nursery cancelled by our scope raises a group of Cancelled, and a
    child that raises on its way out (in a ``finally``) adds its own error to it: the
    attempt is timed out or cancelled, not failed with the group, and the worker
    survives."""
    registry = TaskRegistry()

    async def sleeper() -> None:
        await trio.sleep(100)

    async def raises_on_the_way_out() -> None:
        try:
            await trio.sleep(100)
        finally:
            raise ValueError("cleanup went wrong")

    @registry.task
    async def fan_out(job: Job) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sleeper)
            if job.payload == "messy":
                nursery.start_soon(raises_on_the_way_out)

    @registry.task
    async def ok(job: Job) -> str:
        return "fine"

    async with opened(registry, cfg(workers=1)) as q:
        for payload in ("tidy", "messy"):
            timed = await q.wait((await q.enqueue("fan_out", payload, timeout=5,
                                                  max_retries=0)).id)
            assert timed.status is JobStatus.FAILED
            assert timed.error == "TimeoutError: job exceeded its timeout of 5.0 s"
            running = await q.enqueue("fan_out", payload)
            await trio.testing.wait_all_tasks_blocked()
            assert (await q.cancel(running.id)).status is JobStatus.CANCELLED
        assert (await q.wait((await q.enqueue("ok")).id)).status is JobStatus.COMPLETED


async def test_a_system_exit_job_is_failed_in_the_store_too(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    registry = raising(SystemExit(1))
    config = cfg(persist_path=db, flush_interval=0.01)
    async with opened(registry, config) as q:
        job = await q.enqueue("bad", job_id="poison", max_retries=0)
        with trio.fail_after(10):
            assert (await q.wait(job.id)).error == "SystemExit: 1"
    with sqlite_at(db) as conn:
        row = conn.execute("SELECT status, attempts, error FROM jobs").fetchone()
    assert row == ("failed", 1, "SystemExit: 1")
    async with opened(registry, config) as q:  # not queued again
        assert (await q.get("poison")).status is JobStatus.FAILED
        assert q.metrics().started == 0


# ---------------------------------------------------------------------------- Ctrl+C


@contextmanager
def sigint_handler(handler: Callable[[int, FrameType | None], Any] | int
                   ) -> Iterator[None]:
    """SIGINT handled by ``handler`` for the block (pytest started in the background
    inherits SIGINT ignored; trio installs its own handler only over the default one)."""
    old = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def ctrl_c_registry(log: list[str]) -> TaskRegistry:
    registry = TaskRegistry()

    @registry.task
    async def presses_ctrl_c(job: Job) -> None:
        log.append("pressed")
        signal.raise_signal(signal.SIGINT)  # a real SIGINT, while this handler runs
        log.append("went on")  # pragma: no cover - the Ctrl+C stops it

    @registry.task
    async def long(job: Job) -> str:
        await trio.sleep(5)
        log.append("long finished")
        return "done"

    return registry


def test_ctrl_c_in_a_handler_is_the_graceful_shutdown_not_a_failure() -> None:
    """Trio raises a Ctrl+C in the task that runs when the signal comes, here a handler.
    It is handed to trio's main task, so the queue shuts down as it does for a Ctrl+C
    in its body: in-flight jobs finish within shutdown_timeout, the interrupted job is
    put back in its queue (not failed; memory mode then drops it with the other queued
    jobs), and KeyboardInterrupt comes out."""
    log: list[str] = []
    queues: list[trioqueue.JobQueue] = []

    async def main() -> None:
        config = cfg(workers=2, shutdown_timeout=30)
        async with trioqueue.open_queue(ctrl_c_registry(log), config) as q:
            queues.append(q)
            await q.enqueue("long", job_id="long")
            await trio.testing.wait_all_tasks_blocked()
            await q.enqueue("presses_ctrl_c", job_id="ctrl-c")
            await trio.sleep_forever()

    with sigint_handler(signal.default_int_handler), pytest.raises(KeyboardInterrupt):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    q = queues[0]
    assert log == ["pressed", "long finished"]
    assert q.get_nowait("long").status is JobStatus.COMPLETED  # graceful: it finished
    with pytest.raises(trioqueue.JobNotFound, match="'ctrl-c' was dropped when the queue"):
        q.get_nowait("ctrl-c")
    assert (q.metrics().failed, q.metrics().dropped) == (0, 1)


@pytest.mark.parametrize("body_nursery", [False, True])
def test_ctrl_c_from_another_sigint_handler_comes_out_of_open_queue_as_itself(
    body_nursery: bool,
) -> None:
    """With a SIGINT handler of the program's own that raises KeyboardInterrupt (trio
    then leaves SIGINT alone), the Ctrl+C cannot be handed to trio: the worker ends with
    it, the queue closes at once, and what leaves open_queue is the KeyboardInterrupt,
    not a Cancelled or a group.  Also when the body runs a nursery of its own, whose
    cancelled tasks end it with a group of Cancelled: that was taken for the body's own
    error, and a group of it and the KeyboardInterrupt came out."""
    log: list[str] = []
    queues: list[trioqueue.JobQueue] = []

    def own_handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    async def main() -> None:
        async with trioqueue.open_queue(ctrl_c_registry(log), cfg(workers=2)) as q:
            queues.append(q)
            await q.enqueue("long", job_id="long")
            await trio.testing.wait_all_tasks_blocked()
            await q.enqueue("presses_ctrl_c", job_id="ctrl-c")
            if body_nursery:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(trio.sleep_forever)
                    nursery.start_soon(trio.sleep_forever)
            await trio.sleep_forever()

    with sigint_handler(own_handler), pytest.raises(KeyboardInterrupt) as info:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert type(info.value) is KeyboardInterrupt
    q = queues[0]
    for job_id in ("long", "ctrl-c"):  # both interrupted at once: memory mode keeps no
        job = q.get_nowait(job_id)  # queued job, so they end failed, saying why
        assert (job.status, job.attempts, job.error) == (
            JobStatus.FAILED, 1, "aborted: the queue was cancelled")
    assert log == ["pressed"]


# ---------------------------------------------------------------------------- the server

POISON_APP = """
import trioqueue

registry = trioqueue.TaskRegistry()


@registry.task
async def poison(job):
    raise SystemExit(1)


@registry.task
async def echo(job):
    return job.payload
"""


def test_a_system_exit_job_does_not_stop_the_server(tmp_path: Path) -> None:
    (tmp_path / "poison_app.py").write_text(POISON_APP)
    db = tmp_path / "jobs.db"
    with running_server("--app", "poison_app:registry", "--db", str(db), cwd=tmp_path
                        ) as srv, httpx.Client(base_url=srv.url) as client:
        posted = client.post("/jobs", json={"task": "poison", "id": "p1", "max_retries": 0})
        assert posted.status_code == 202, posted.text
        job = wait_for(client, "p1", {"failed", "completed"})
        assert job["status"] == "failed"
        assert job["error"] == "SystemExit: 1"
        assert "SystemExit" in job["traceback"]
        assert client.get("/healthz").status_code == 200
        posted = client.post("/jobs", json={"task": "echo", "payload": 7, "id": "e1"})
        assert wait_for(client, "e1", {"completed"})["result"] == 7
        assert srv.proc.poll() is None
        assert srv.stop(signal.SIGTERM) == 0
    with sqlite_at(db) as conn:
        assert conn.execute("SELECT status FROM jobs WHERE id = 'p1'").fetchone() == ("failed",)


async def test_a_job_that_ends_failed_is_a_warning_its_retries_are_not(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A dead letter logged nothing at the default level (the operator audit)."""
    import logging

    registry = trioqueue.TaskRegistry()

    @registry.task(max_retries=2)
    async def breaks(job: trioqueue.Job) -> None:
        raise ValueError("bad row\nsecond line")

    caplog.set_level(logging.INFO, logger="trioqueue")
    async with trioqueue.open_queue(registry, trioqueue.QueueConfig(retry_base=0.1)) as q:
        job = await q.enqueue("breaks")
        await q.wait(job.id)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"trioqueue: job {job.id} (task breaks) failed after 3 attempts: "
                        "'ValueError: bad row\\nsecond line'"]
