"""Enqueue, get, wait and results; defaults; unknown ids and tasks; bad input."""

from __future__ import annotations

import math
from typing import Any

import pytest
from trio.testing import MockClock

from trioqueue import (
    InvalidJob,
    InvalidTransition,
    Job,
    JobNotFound,
    JobStatus,
    Priority,
    UnknownTask,
)

from .conftest import EMPTY, Backend, Harness, real_time_scale


async def test_enqueue_get_wait_round_trip(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry, max_retries=2) as q:
        job = await q.enqueue("echo", {"n": 1, "s": ["a", None, 2.5]})
        assert job.status is JobStatus.QUEUED
        assert (job.task, job.payload) == ("echo", {"n": 1, "s": ["a", None, 2.5]})
        assert (job.priority, job.attempts, job.max_retries, job.timeout) == (
            Priority.MEDIUM, 0, 2, None,
        )
        assert (job.started_at, job.finished_at, job.result, job.error) == (None,) * 4
        done = await q.wait(job.id)
        assert done.id == job.id
        assert done.status is JobStatus.COMPLETED
        assert done.result == {"n": 1, "s": ["a", None, 2.5]}
        assert (done.attempts, done.error, done.traceback) == (1, None, None)
        assert done.created_at == job.created_at
        assert done.started_at is not None
        assert done.finished_at is not None
        assert done.created_at <= done.started_at <= done.finished_at
        assert await q.get(job.id) == done
        assert await q.wait(job.id) == done  # a finished job: at once
        d = done.to_dict()
        assert (d["id"], d["status"], d["priority"], d["result"]) == (
            job.id, "completed", "medium", {"n": 1, "s": ["a", None, 2.5]},
        )
    assert h.started() == [job.id]


async def test_enqueue_nowait_round_trip_and_payload_defaults_to_null(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry) as q:
        job = q.enqueue_nowait("echo")
        assert job.status is JobStatus.QUEUED
        assert job.payload is None
        done = await q.wait(job.id)
        assert (done.status, done.result) == (JobStatus.COMPLETED, None)


async def test_many_jobs_each_run_once_with_their_own_result(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry, workers=3) as q:
        jobs = [await q.enqueue("echo", i, priority=("high", "medium", "low")[i % 3])
                for i in range(60)]
        assert len({j.id for j in jobs}) == 60
        for i, job in enumerate(jobs):
            done = await q.wait(job.id)
            assert (done.status, done.result, done.attempts) == (JobStatus.COMPLETED, i, 1)
    assert sorted(h.started()) == sorted(j.id for j in jobs)


async def test_defaults_come_from_the_task_then_the_config_and_calls_override(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry, max_retries=2, default_timeout=30.0) as q:
        plain = await q.enqueue("echo")
        tuned = await q.enqueue("tuned")
        overridden = await q.enqueue("tuned", priority="HIGH", max_retries=0, timeout=1)
        by_enum = q.enqueue_nowait("echo", priority=Priority.LOW)
        for job in (plain, tuned, overridden, by_enum):
            assert (await q.wait(job.id)).status is JobStatus.COMPLETED
    assert (plain.priority, plain.max_retries, plain.timeout) == (Priority.MEDIUM, 2, 30.0)
    assert (tuned.priority, tuned.max_retries, tuned.timeout) == (Priority.LOW, 7, 9.0)
    assert (overridden.priority, overridden.max_retries, overridden.timeout) == (
        Priority.HIGH, 0, 1.0,
    )
    assert by_enum.priority is Priority.LOW


async def test_unknown_ids_raise_job_not_found(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry) as q:
        for call in (q.get, q.wait, q.cancel, q.retry):
            with pytest.raises(JobNotFound, match="nope"):
                await call("nope")
        # Ids no job can have (outside the id grammar) are not found either, on every
        # backend (Redis said InvalidJob, so HTTP answered 400 where the others gave 404).
        for job_id in ("*", "a/b", "-x", "é", "x" * 200, ""):
            for call in (q.get, q.wait, q.cancel, q.retry):
                with pytest.raises(JobNotFound):
                    await call(job_id)
            with pytest.raises(JobNotFound):
                await q.wait_many(["nope", job_id])


async def test_unknown_task_is_refused_and_nothing_is_enqueued(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry) as q:
        with pytest.raises(UnknownTask, match="'no_such_task'"):
            await q.enqueue("no_such_task", {"x": 1})
        with pytest.raises(UnknownTask, match="'no_such_task'"):
            q.enqueue_nowait("no_such_task", job_id="named")
        with pytest.raises(JobNotFound):
            await q.get("named")
        m = q.metrics()
        assert (m.enqueued, m.queued, m.scheduled) == (0, EMPTY, 0)
        assert await q.list_jobs() == []


def _nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


BAD_INPUT: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("priority", (), {"priority": "urgent"}),
    ("priority", (), {"priority": 7}),
    ("priority", (), {"priority": ""}),
    ("delay", (), {"delay": -1}),
    ("delay", (), {"delay": -0.001}),
    ("delay", (), {"delay": math.nan}),
    ("delay", (), {"delay": math.inf}),
    ("delay", (), {"delay": "10"}),
    ("max_retries", (), {"max_retries": -1}),
    ("max_retries", (), {"max_retries": 1.5}),
    ("max_retries", (), {"max_retries": True}),
    ("max_retries", (), {"max_retries": "3"}),
    ("timeout", (), {"timeout": 0}),
    ("timeout", (), {"timeout": -5}),
    ("timeout", (), {"timeout": math.nan}),
    ("timeout", (), {"timeout": math.inf}),
    ("timeout", (), {"timeout": "1"}),
    ("payload", ({"x": object()},), {}),
    ("payload", ({"x": math.nan},), {}),
    ("payload", ([math.inf],), {}),
    ("payload", ({1, 2},), {}),
    ("payload", ({("a", "b"): 1},), {}),
    ("id", (), {"job_id": ""}),
    ("id", (), {"job_id": "x" * 129}),
    ("id", (), {"job_id": "a/b"}),
    ("id", (), {"job_id": "spaced id"}),
    ("id", (), {"job_id": 12}),
    # Bounds a store or Redis needs: 2**63 retries crashed the SQLite writer; a delay of
    # 1e16 s ran at once on Redis (its due time in ms is no longer exact).
    ("max_retries", (), {"max_retries": 2**63}),
    ("max_retries", (), {"max_retries": 1_000_001}),
    ("delay", (), {"delay": 1e16}),
    ("delay", (), {"delay": 10 * 366 * 86400.0 + 1}),
    ("payload", (_nested(5000),), {}),  # was a bare RecursionError
]


@pytest.mark.parametrize(
    ("field", "args", "kwargs"), BAD_INPUT,
    ids=[f"{field}-{i}" for i, (field, _, _) in enumerate(BAD_INPUT)],
)
async def test_bad_input_is_invalid_job_naming_the_field_and_nothing_is_enqueued(
    backend: Backend, clock: MockClock | None, h: Harness,
    field: str, args: tuple[Any, ...], kwargs: dict[str, Any],
) -> None:
    async with backend.open(h.registry) as q:
        with pytest.raises(InvalidJob, match=rf"^{field}:"):
            await q.enqueue("echo", *args, **kwargs)
        with pytest.raises(InvalidJob, match=rf"^{field}:"):
            q.enqueue_nowait("echo", *args, **kwargs)
        m = q.metrics()
        assert (m.enqueued, m.rejected, m.queued, m.scheduled) == (0, 0, EMPTY, 0)
        assert await q.list_jobs() == []
    assert h.runs == []


async def test_list_jobs_newest_first_and_by_status(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry, workers=1) as q:
        done = await q.enqueue("echo", 1, job_id="done")
        await q.wait(done.id)
        await q.enqueue("gated", "hold", job_id="running")
        await h.entered("hold")
        await q.enqueue("echo", 2, job_id="queued")
        await q.enqueue("echo", 3, job_id="later", delay=60)
        assert [j.id for j in await q.list_jobs()] == ["later", "queued", "running", "done"]
        assert [j.id for j in await q.list_jobs(limit=2)] == ["later", "queued"]
        assert [j.id for j in await q.list_jobs(status="queued")] == ["queued"]
        assert [j.id for j in await q.list_jobs(status=JobStatus.SCHEDULED)] == ["later"]
        assert [j.id for j in await q.list_jobs(status="processing")] == ["running"]
        assert [j.id for j in await q.list_jobs(status="completed")] == ["done"]
        assert await q.list_jobs(status="failed") == []
        with pytest.raises(InvalidJob, match=r"^status:"):
            await q.list_jobs(status="nonsense")
        with pytest.raises(InvalidJob, match=r"^limit:"):
            await q.list_jobs(limit=0)
        await q.cancel("later")
        h.open_gate("hold")
        await q.wait("queued")


async def test_retry_and_cancel_refuse_jobs_in_the_wrong_state(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry, workers=1) as q:
        done = await q.enqueue("echo")
        await q.wait(done.id)
        with pytest.raises(InvalidTransition, match="completed"):
            await q.cancel(done.id)
        with pytest.raises(InvalidTransition, match="completed"):
            await q.retry(done.id)
        running = await q.enqueue("gated", "g")
        await h.entered("g")
        queued = await q.enqueue("echo")
        scheduled = await q.enqueue("echo", delay=60)
        for job, status in ((running, "processing"), (queued, "queued"),
                            (scheduled, "scheduled")):
            with pytest.raises(InvalidTransition, match=status):
                await q.retry(job.id)
            assert (await q.get(job.id)).status is JobStatus(status)
        await q.cancel(scheduled.id)
        h.open_gate("g")
        await q.wait(queued.id)


async def test_a_job_keeps_its_own_payload(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    """The payload is the job's, as in a store or Redis: the caller changing the object it
    enqueued, a handler changing ``job.payload`` before it fails, or code changing a
    snapshot, all changed the job in memory mode and (until a restart) with SQLite: the
    retry ran with a popped list, and ``get()`` showed what the caller did after."""
    seen: list[Any] = []

    @h.registry.task(max_retries=1)
    async def pops(job: Job) -> None:
        seen.append(list(job.payload["items"]))
        job.payload["items"].pop()
        if len(seen) == 1:
            raise RuntimeError("first attempt")

    async with backend.open(h.registry, retry_base=0.01 * real_time_scale(clock)) as q:
        payload = {"items": [1, 2, 3]}
        job = await q.enqueue("pops", payload)
        payload["items"].append(4)  # the caller's object, changed after the enqueue
        job.payload["items"].clear()  # the returned snapshot's, too
        done = await q.wait(job.id)
        done.payload["items"].clear()
        again = await q.get(job.id)
    assert done.status is JobStatus.COMPLETED
    assert seen == [[1, 2, 3], [1, 2, 3]]
    assert again.payload == {"items": [1, 2, 3]}


async def test_a_job_keeps_its_own_result(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    """The result is the job's as it was returned, as in a store or Redis: a handler
    changing the object it returned (kept somewhere) or code changing a snapshot's
    ``result`` changed the job in memory mode and (until a restart) with SQLite."""
    kept: list[dict[str, list[int]]] = []

    @h.registry.task
    async def keeps(job: Job) -> dict[str, list[int]]:
        kept.append({"items": [1, 2]})
        return kept[-1]

    async with backend.open(h.registry) as q:
        done = await q.wait((await q.enqueue("keeps")).id)
        kept[0]["items"].append(3)  # the handler's object, changed after it returned
        done.result["items"].clear()  # a snapshot's, too
        again = await q.get(done.id)
        second = await q.wait((await q.enqueue("keeps")).id)
        second.result["items"].clear()
        second_again = await q.get(second.id)
    assert again.result == {"items": [1, 2]}
    assert second_again.result == {"items": [1, 2]}
