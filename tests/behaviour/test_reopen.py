"""Close and open again, for backends that keep jobs (``Backend.persistent``): what was
there is there again, as it was.  Crash recovery and store files are per-backend tests
(tests/test_persistence.py, tests/test_crash.py)."""

from __future__ import annotations

import pytest
from trio.testing import MockClock

from trioqueue import DuplicateJob, InvalidTransition, JobStatus

from .conftest import EMPTY, Backend, Harness, real_time_scale, settle


@pytest.fixture(autouse=True)
def _persistent_only(backend_config: dict[str, object], request: pytest.FixtureRequest) -> None:
    from .conftest import BACKENDS

    if not BACKENDS[request.node.callspec.params["backend_config"]].persistent:
        pytest.skip("jobs of this backend do not outlive the queue")


async def test_every_job_is_there_again_as_it_was(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry, workers=1,
                            shutdown_timeout=real_time_scale(clock)) as q:
        done = await q.wait((await q.enqueue("echo", {"x": 1}, job_id="done")).id)
        dead = await q.wait((await q.enqueue("fail", "f", job_id="dead", max_retries=0)).id)
        await q.enqueue("echo", job_id="gone", delay=30)
        await q.cancel("gone")
        later = await q.enqueue("echo", "later", job_id="later", delay=3600, priority="low")
        await q.enqueue("gated", "cut off", job_id="running", max_retries=3)
        await h.entered("cut off")
        waiting = await q.enqueue("echo", "waiting", job_id="waiting", priority="high")
    # Closed with "running" still running: cut off after shutdown_timeout.
    h.open_gate("cut off")
    async with backend.open(h.registry, workers=1) as q:
        assert await q.get("done") == done
        got = await q.get("dead")
        assert (got.status, got.error, got.attempts) == (JobStatus.FAILED,
                                                         "RuntimeError: boom 1", 1)
        assert got.traceback == dead.traceback
        assert (await q.get("gone")).status is JobStatus.CANCELLED
        got = await q.get("later")
        assert got.status is JobStatus.SCHEDULED
        assert got.scheduled_for == later.scheduled_for
        assert got.created_at == later.created_at
        # Queued jobs run; the one cut off runs again with its first attempt counted.
        assert (await q.wait("waiting")).result == "waiting"
        again = await q.wait("running")
        assert (again.status, again.attempts, again.result) == (
            JobStatus.COMPLETED, 2, "opened",
        )
        assert {j.id for j in await q.list_jobs(status="failed")} == {"dead"}
        assert {j.id for j in await q.list_jobs()} == {
            "done", "dead", "gone", "later", "running", "waiting",
        }
        await q.cancel("later")
    assert h.started("echo") == ["done", "waiting"]
    assert h.started("gated") == ["running", "running"]
    assert waiting.status is JobStatus.QUEUED


async def test_ids_stay_taken_and_finished_jobs_can_be_retried_after_reopen(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry) as q:
        await q.wait((await q.enqueue("echo", [1], job_id="kept")).id)
        await q.wait((await q.enqueue("fail", job_id="dead", max_retries=0)).id)
    async with backend.open(h.registry, retry_base=0.5 * real_time_scale(clock)) as q:
        again = await q.enqueue("echo", [1], job_id="kept")
        assert (again.status, again.result) == (JobStatus.COMPLETED, [1])
        with pytest.raises(DuplicateJob):
            await q.enqueue("echo", [2], job_id="kept")
        with pytest.raises(InvalidTransition):
            await q.cancel("kept")
        requeued = await q.retry("dead")
        assert (requeued.status, requeued.attempts) == (JobStatus.QUEUED, 0)
        done = await q.wait("dead")
        assert (done.status, done.attempts) == (JobStatus.FAILED, 1)
        assert q.metrics().enqueued == 0  # nothing new was created
    assert h.started() == ["kept", "dead", "dead"]


async def test_a_scheduled_job_runs_at_its_due_time_after_reopen(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    backend.needs_virtual_time()
    async with backend.open(h.registry) as q:
        job = await q.enqueue("echo", "due", delay=60)
    async with backend.open(h.registry) as q:
        done = await q.wait(job.id)
    assert done.status is JobStatus.COMPLETED
    assert job.scheduled_for is not None
    assert done.started_at == pytest.approx(job.scheduled_for, abs=1e-3)


async def close_with_jobs_in_every_state(backend: Backend, h: Harness) -> None:
    """One gated job running (cut off at close), four gated jobs queued, two scheduled."""
    cut_off = 1.0 if backend.virtual_time else 0.1
    async with backend.open(h.registry, workers=1, shutdown_timeout=cut_off) as q:
        await q.enqueue("gated", "g0", job_id="g0")
        await h.entered("g0")
        for i, p in enumerate(("high", "medium", "medium", "low"), start=1):
            await q.enqueue("gated", f"g{i}", priority=p, job_id=f"g{i}")
        for i in range(2):
            await q.enqueue("echo", "later", delay=3600, job_id=f"later{i}")


async def test_gauges_count_the_recovered_queued_and_running_jobs(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    await close_with_jobs_in_every_state(backend, h)
    async with backend.open(h.registry, workers=1) as q:
        await settle()  # the worker took one of the five and waits at its gate
        m = q.metrics()
        assert (m.processing, m.busy_workers, sum(m.queued.values())) == (1, 1, 4)
        statuses = {j.id: j.status for j in await q.list_jobs()}
        assert sorted(statuses.values()) == sorted(
            [JobStatus.PROCESSING] + [JobStatus.QUEUED] * 4 + [JobStatus.SCHEDULED] * 2
        )
        for i in range(5):
            h.open_gate(f"g{i}")
        for i in range(5):
            await q.wait(f"g{i}")
        m = q.metrics()
        assert (m.queued, m.processing, m.completed, m.started) == (EMPTY, 0, 5, 5)
        assert (await q.get("g0")).attempts == 2  # cut off once, then run to the end
        for i in range(2):
            await q.cancel(f"later{i}")


async def test_the_scheduled_gauge_counts_each_recovered_job_once(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    await close_with_jobs_in_every_state(backend, h)
    for i in range(5):
        h.open_gate(f"g{i}")
    async with backend.open(h.registry) as q:
        assert q.metrics().scheduled == 2
        await q.cancel("later0")
        assert q.metrics().scheduled == 1
        await q.cancel("later1")
        assert q.metrics().scheduled == 0


async def test_enqueue_nowait_with_the_id_of_a_finished_job_is_idempotent_after_reopen(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry) as q:
        done = await q.wait((await q.enqueue("echo", "body", job_id="kept")).id)
    async with backend.open(h.registry) as q:
        assert q.enqueue_nowait("echo", "body", job_id="kept") == done
        with pytest.raises(DuplicateJob):
            q.enqueue_nowait("echo", "another body", job_id="kept")
        assert await q.get("kept") == done
    assert h.started() == ["kept"]


async def test_a_job_cut_off_in_its_last_attempt_fails_instead_of_running_again(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    """A shutdown that cuts a job off puts it back with the attempt counted; when that
    was its last one (``max_retries`` used up), it ends FAILED, "Interrupted: ...", and
    does not run again: a handler that stops its process in an orderly way (sending it
    SIGTERM) is not run again on every restart, on any backend."""
    async with backend.open(h.registry, workers=1,
                            shutdown_timeout=real_time_scale(clock)) as q:
        await q.enqueue("gated", "last", job_id="last", max_retries=0)
        await h.entered("last")
    h.open_gate("last")
    async with backend.open(h.registry, workers=1) as q:
        done = await q.wait("last")
        assert (done.status, done.attempts) == (JobStatus.FAILED, 1)
        assert done.error is not None
        assert done.error.startswith("Interrupted: the queue stopped while attempt 1 ran")
    assert h.started("gated") == ["last"]
