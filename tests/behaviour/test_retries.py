"""Retries with exponential backoff (exact times on the mock clock), FAILED as the dead
letter, timeouts as failed attempts, and retry() of FAILED and CANCELLED jobs."""

from __future__ import annotations

import itertools

import pytest
from trio.testing import MockClock

from trioqueue import InvalidTransition, Job, JobStatus, TaskRegistry, report_progress

from .conftest import Backend, Harness, real_time_scale


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 6) for a, b in itertools.pairwise(times)]


async def test_backoff_is_base_times_factor_to_the_attempt_then_failed_with_the_error(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    backend.needs_virtual_time()
    async with backend.open(h.registry, retry_base=1.0, retry_factor=2.0) as q:
        job = await q.enqueue("fail", {"n": 1})
        assert job.max_retries == 3  # the task's own
        done = await q.wait(job.id)
    assert gaps(h.starts_of(job.id)) == [1.0, 2.0, 4.0]
    assert [r.attempt for r in h.runs] == [1, 2, 3, 4]
    assert done.status is JobStatus.FAILED
    assert done.attempts == 4  # the first run and max_retries=3 retries
    assert done.error == "RuntimeError: boom 4"
    assert done.traceback is not None
    assert "RuntimeError: boom 4" in done.traceback
    assert done.result is None
    assert done.finished_at is not None


async def test_backoff_is_capped_by_retry_max(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    backend.needs_virtual_time()
    config = {"retry_base": 10.0, "retry_factor": 10.0, "retry_max": 50.0}
    async with backend.open(h.registry, **config) as q:
        job = await q.enqueue("fail", max_retries=3)
        await q.wait(job.id)
    assert gaps(h.starts_of(job.id)) == [10.0, 50.0, 50.0]


async def test_max_retries_zero_fails_on_the_first_error(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry, max_retries=5) as q:
        done = await q.wait((await q.enqueue("fail", max_retries=0)).id)
        m = q.metrics()
    assert (done.status, done.attempts, done.error) == (
        JobStatus.FAILED, 1, "RuntimeError: boom 1",
    )
    assert (m.failed, m.retried, m.started) == (1, 0, 1)


async def test_a_job_that_fails_then_succeeds_completes_on_a_later_attempt(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry, retry_base=0.5 * real_time_scale(clock),
                            max_retries=2) as q:
        done = await q.wait((await q.enqueue("flaky", {"fail_times": 2})).id)
        m = q.metrics()
    assert (done.status, done.result, done.attempts) == (JobStatus.COMPLETED, "ok", 3)
    assert (m.completed, m.failed, m.retried, m.started) == (1, 0, 2, 3)


async def test_the_config_default_max_retries_applies_to_tasks_without_their_own(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry, retry_base=0.5 * real_time_scale(clock),
                            max_retries=1) as q:
        done = await q.wait((await q.enqueue("flaky", {"fail_times": 5})).id)
    assert (done.status, done.attempts, done.error) == (
        JobStatus.FAILED, 2, "RuntimeError: flaky 2",
    )


async def test_a_result_that_is_not_json_fails_the_attempt(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry) as q:
        done = await q.wait((await q.enqueue("bad_result", max_retries=0)).id)
    assert done.status is JobStatus.FAILED
    assert done.error is not None
    assert done.error.startswith("InvalidJob: result:")
    assert done.result is None


async def test_a_timeout_is_a_failed_attempt_at_the_deadline(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    backend.needs_virtual_time()
    async with backend.open(h.registry, retry_base=1.0) as q:
        job = await q.enqueue("sleep", 100, timeout=5.0, max_retries=1)
        done = await q.wait(job.id)
    assert done.status is JobStatus.FAILED
    assert done.attempts == 2
    assert done.error is not None
    assert done.error.startswith("TimeoutError")
    assert "5.0 s" in done.error
    assert done.started_at is not None
    assert done.finished_at is not None
    assert done.finished_at - done.started_at == pytest.approx(5.0, abs=1e-6)
    assert gaps(h.starts_of(job.id)) == [5.0 + 1.0]  # attempt, then backoff


async def test_a_job_that_finishes_within_its_timeout_is_not_affected(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    # 9 s of a 10 s timeout on the mock clock; a tenth of that where time is real (Redis).
    scale = real_time_scale(clock)
    async with backend.open(h.registry, default_timeout=10.0 * scale) as q:
        first = await q.wait((await q.enqueue("sleep", 9 * scale)).id)
        second = await q.wait((await q.enqueue("sleep", 9 * scale)).id)
    assert (first.status, second.status) == (JobStatus.COMPLETED, JobStatus.COMPLETED)
    assert (first.attempts, second.attempts) == (1, 1)


async def test_retry_of_a_failed_job_requeues_it_with_attempts_from_zero(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry, retry_base=0.5 * real_time_scale(clock)) as q:
        job = await q.enqueue("fail", max_retries=1)
        failed = await q.wait(job.id)
        assert (failed.status, failed.attempts, failed.error) == (
            JobStatus.FAILED, 2, "RuntimeError: boom 2",
        )
        assert [j.id for j in await q.list_jobs(status="failed")] == [job.id]
        again = await q.retry(job.id)
        assert (again.status, again.attempts, again.result) == (JobStatus.QUEUED, 0, None)
        assert (again.started_at, again.finished_at) == (None, None)  # the same everywhere
        done = await q.wait(job.id)
        m = q.metrics()
    # A fresh set of attempts: max_retries applies again from the start.
    assert (done.status, done.attempts, done.error) == (
        JobStatus.FAILED, 2, "RuntimeError: boom 2",
    )
    assert [r.attempt for r in h.runs] == [1, 2, 1, 2]
    assert (m.enqueued, m.started, m.failed, m.retried) == (1, 4, 2, 2)


async def test_retry_starts_with_no_progress(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    """A retried job is queued afresh: it showed the last run's progress (100 % on a
    dashboard, for a job not started) until its next run reported."""

    @h.registry.task(max_retries=0)
    async def halfway(job: Job) -> None:
        report_progress(0.5, "half")
        raise RuntimeError("stop")

    async with backend.open(h.registry) as q:
        job = await q.enqueue("halfway")
        failed = await q.wait(job.id)
        assert failed.progress == {"fraction": 0.5, "note": "half"}
        again = await q.retry(job.id)
        assert (again.status, again.progress) == (JobStatus.QUEUED, None)


async def test_retry_of_a_cancelled_job_runs_it(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry, workers=1) as q:
        await q.enqueue("gated", "hold")
        await h.entered("hold")
        job = await q.enqueue("echo", "was cancelled")
        assert (await q.cancel(job.id)).status is JobStatus.CANCELLED
        again = await q.retry(job.id)
        assert (again.status, again.attempts) == (JobStatus.QUEUED, 0)
        with pytest.raises(InvalidTransition):
            await q.retry(job.id)  # queued now
        h.open_gate("hold")
        done = await q.wait(job.id)
    assert (done.status, done.result, done.attempts) == (
        JobStatus.COMPLETED, "was cancelled", 1,
    )


async def test_an_error_message_that_is_not_valid_unicode_is_kept_escaped(
    backend: Backend, clock: MockClock | None
) -> None:
    """An exception whose message holds a lone surrogate (a file name decoded with
    ``surrogateescape``, as ``os.listdir`` does for bytes that are not UTF-8) fails its
    job like any other, the surrogate escaped in the error and the traceback; and the
    queue goes on.  Before, the SQLite store could not encode it: its write failed and
    took the whole queue down."""
    registry = TaskRegistry()
    name = b"caf\xe9.txt".decode("utf-8", "surrogateescape")

    @registry.task(max_retries=0)
    async def undecodable(job: Job) -> None:
        raise FileNotFoundError(f"no such file: {name}")

    @registry.task
    async def echo(job: Job) -> object:
        return job.payload

    async with backend.open(registry) as q:
        done = await q.wait((await q.enqueue("undecodable")).id)
        after = await q.wait((await q.enqueue("echo", 1)).id)
    assert done.status is JobStatus.FAILED
    assert done.error == "FileNotFoundError: no such file: caf\\udce9.txt"
    assert done.traceback is not None
    assert done.traceback.endswith("FileNotFoundError: no such file: caf\\udce9.txt\n")
    assert after.result == 1
    if backend.persistent:
        async with backend.open(registry) as q:
            assert await q.get(done.id) == done
