"""Idempotent job ids: the same id and body returns the job there, another body is
DuplicateJob, before and after the job finished."""

from __future__ import annotations

import pytest
from trio.testing import MockClock

from trioqueue import DuplicateJob, JobStatus

from .conftest import Backend, Harness


async def test_same_id_and_body_returns_the_existing_job(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry, workers=1) as q:
        await q.enqueue("gated", "hold")
        await h.entered("hold")
        first = await q.enqueue("echo", {"a": 1}, job_id="order-42")
        again = await q.enqueue("echo", {"a": 1}, job_id="order-42")
        assert again == first
        # Options other than task and payload do not make it another job.
        assert q.enqueue_nowait("echo", {"a": 1}, job_id="order-42", priority="high",
                                delay=5, max_retries=9) == first
        payload = r"'order-42' already exists with a different payload$"
        task = r"'order-42' already exists with a different task$"
        with pytest.raises(DuplicateJob, match=payload):
            await q.enqueue("echo", {"a": 2}, job_id="order-42")
        with pytest.raises(DuplicateJob, match=payload):
            q.enqueue_nowait("echo", {"a": 2}, job_id="order-42")
        with pytest.raises(DuplicateJob, match=task):
            await q.enqueue("flaky", {"a": 1}, job_id="order-42")
        with pytest.raises(DuplicateJob, match=task):
            q.enqueue_nowait("flaky", {"a": 1}, job_id="order-42")
        m = q.metrics()
        assert (m.enqueued, m.rejected, m.queued["medium"]) == (2, 0, 1)
        h.open_gate("hold")
        done = await q.wait("order-42")
        assert (done.status, done.result) == (JobStatus.COMPLETED, {"a": 1})
    assert h.started("echo") == ["order-42"]


async def test_a_payload_is_the_same_whatever_the_order_of_its_keys(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    """A client whose JSON library orders an object's keys otherwise, retrying, gets the
    job it made; a number spelled as another type is another payload."""
    async with backend.open(h.registry) as q:
        first = await q.enqueue("echo", {"a": 1, "b": [{"x": 1, "y": 2}]}, job_id="keys-1")
        same = {"b": [{"y": 2, "x": 1}], "a": 1}
        again = await q.enqueue("echo", same, job_id="keys-1")
        assert (again.id, again.created_at, again.payload) == (
            first.id, first.created_at, first.payload)
        assert q.enqueue_nowait("echo", same, job_id="keys-1").created_at == first.created_at
        for other in ({"a": 1.0, "b": [{"x": 1, "y": 2}]}, {"a": True, "b": [{"x": 1, "y": 2}]},
                      {"a": 1, "b": [{"y": 2}, {"x": 1}]}):
            with pytest.raises(DuplicateJob, match="keys-1"):
                await q.enqueue("echo", other, job_id="keys-1")
        done = await q.wait("keys-1")
        assert await q.enqueue("echo", same, job_id="keys-1") == done
        assert q.metrics().enqueued == 1
    assert h.started() == ["keys-1"]


async def test_the_id_stays_taken_after_the_job_finished(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry) as q:
        await q.wait((await q.enqueue("echo", [1, 2], job_id="done-1")).id)
        again = await q.enqueue("echo", [1, 2], job_id="done-1")
        assert (again.status, again.result, again.attempts) == (JobStatus.COMPLETED, [1, 2], 1)
        assert q.enqueue_nowait("echo", [1, 2], job_id="done-1") == again
        with pytest.raises(DuplicateJob, match=r"'done-1' .* different payload$"):
            await q.enqueue("echo", [3], job_id="done-1")
        with pytest.raises(DuplicateJob, match=r"'done-1' .* different task$"):
            await q.enqueue("fail", [1, 2], job_id="done-1")
        failed = await q.wait((await q.enqueue("fail", job_id="dead-1", max_retries=0)).id)
        assert await q.enqueue("fail", job_id="dead-1") == failed  # not run again
        assert q.metrics().enqueued == 2
    assert h.started() == ["done-1", "dead-1"]


async def test_a_scheduled_job_is_found_by_its_id(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry) as q:
        first = await q.enqueue("echo", "x", job_id="later-1", delay=60)
        assert await q.enqueue("echo", "x", job_id="later-1") == first
        assert (await q.get("later-1")).status is JobStatus.SCHEDULED
        assert q.metrics().scheduled == 1
        await q.cancel("later-1")


async def test_ids_given_and_generated_are_distinct_and_kept(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry) as q:
        named = [await q.enqueue("echo", i, job_id=f"job-{i}") for i in range(5)]
        generated = [await q.enqueue("echo", i) for i in range(20)]
        assert [j.id for j in named] == [f"job-{i}" for i in range(5)]
        ids = [j.id for j in named + generated]
        assert len(set(ids)) == len(ids)
        for job in named + generated:
            assert (await q.wait(job.id)).result == job.payload
