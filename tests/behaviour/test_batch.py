"""Batches (``enqueue_many`` / ``enqueue_many_nowait`` / ``wait_many``, all or nothing) and
callables as jobs (``submit`` / ``submit_nowait``)."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
import trio.testing
from trio.testing import MockClock

from trioqueue import BatchItem, InvalidJob, JobNotFound, JobStatus, QueueFull

from .conftest import EMPTY, Backend, Harness, settle


async def test_a_batch_runs_and_wait_many_keeps_the_order(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry, workers=2) as q:
        jobs = await q.enqueue_many("echo", [f"p{i}" for i in range(20)], priority="high")
        assert [j.payload for j in jobs] == [f"p{i}" for i in range(20)]
        assert {j.status for j in jobs} == {JobStatus.QUEUED}
        done = await q.wait_many([j.id for j in jobs][::-1])
        assert [d.result for d in done] == [f"p{i}" for i in range(20)][::-1]
        assert q.metrics().enqueued == 20


async def test_a_batch_that_does_not_fit_leaves_nothing(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry, workers=1, capacity=3) as q:
        await q.enqueue("gated", "hold", priority="high")
        await h.entered("hold")
        q.enqueue_nowait("echo", "a")
        with pytest.raises(QueueFull, match="medium"):
            q.enqueue_many_nowait("echo", ["b", "c", "d"])
        with pytest.raises(QueueFull):
            await q.enqueue_many("echo", ["b", "c", "d"], wait_for_room=False)
        # A batch of several priorities (POST /jobs/batch) names the one without room.
        mixed = [BatchItem("echo", "h", "high"), *[BatchItem("echo", x) for x in "bcd"]]
        with pytest.raises(QueueFull) as full:
            await q.enqueue_batch(mixed, wait_for_room=False)
        assert "priority medium: room for 2 of the batch's 3 jobs" in str(full.value)
        assert "high" not in str(full.value)
        with pytest.raises(InvalidJob, match=r"payloads\[1\]"):
            await q.enqueue_many("echo", ["b", {1, 2}])
        # An item that is no BatchItem was an AttributeError ("no attribute 'task'").
        with pytest.raises(InvalidJob, match=r"^jobs\[1\]: expected a trioqueue.BatchItem, "
                                             r"got tuple$"):
            await q.enqueue_batch([BatchItem("echo", "b"), ("echo", "c")],  # type: ignore[list-item]
                                  wait_for_room=False)
        with pytest.raises(InvalidJob, match="capacity"):
            await q.enqueue_many("echo", ["b", "c", "d", "e"], priority="low")
        assert q.metrics().queued == {"high": 0, "medium": 1, "low": 0}
        assert [j.payload for j in await q.list_jobs("queued")] == ["a"]
        ok = q.enqueue_many_nowait("echo", ["b", "c"])
        h.open_gate("hold")
        assert [d.result for d in await q.wait_many([j.id for j in ok])] == ["b", "c"]
        with pytest.raises(JobNotFound):
            await q.wait_many([ok[0].id, "nope"])
        await settle()
        assert q.metrics().queued == EMPTY


async def test_a_waiting_batch_enters_whole_once_there_is_room(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry, workers=1, capacity=2) as q:
        await q.enqueue("gated", "hold", priority="high")
        await h.entered("hold")
        q.enqueue_many_nowait("gated", ["g1", "g2"])
        got: list[list[str]] = []

        async def batch() -> None:
            got.append([j.id for j in await q.enqueue_many("echo", ["x", "y"])])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(batch)
            await settle()
            h.open_gate("hold")
            await h.entered("g1")  # one place free: not enough
            await settle()
            assert not got
            assert q.metrics().queued["medium"] == 1
            h.open_gate("g1")
            await h.entered("g2")  # two places free: the batch enters
            h.open_gate("g2")
        assert [d.result for d in await q.wait_many(got[0])] == ["x", "y"]


async def scale(x: float, factor: float) -> float:
    await trio.lowlevel.checkpoint()
    return x * factor


def concat(*parts: str) -> str:
    return "".join(parts)


async def test_submitted_functions_run_with_their_args(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry, workers=2) as q:
        a = await q.submit(scale, 1.5, 4, priority="high")
        b = q.submit_nowait(concat, "a", "b", "c")
        assert a.task == f"{__name__}.scale"
        assert b.task == f"{__name__}.concat"
        done = await q.wait_many([a.id, b.id])
        assert [d.result for d in done] == [6.0, "abc"]
        assert [d.status for d in done] == [JobStatus.COMPLETED] * 2


async def test_what_submit_takes_depends_on_whether_jobs_outlive_the_process(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry, workers=1) as q:
        things: list[object] = []
        if backend.persistent:
            with pytest.raises(InvalidJob, match=r"^fn: "):
                await q.submit(things.append, 1)
            with pytest.raises(InvalidJob, match=r"^args\[0\]: "):
                await q.submit(concat, {1, 2})
            assert q.metrics().enqueued == 0
        else:
            marker = object()
            job = await q.submit(things.append, marker)
            assert job.payload == {"args": [repr(marker)]}
            await q.wait(job.id)
            assert things == [marker]
        with pytest.raises(TypeError, match="enqueue it by name"):
            await q.submit(h.registry.get("echo").handler, 1)


async def test_a_batch_id_conflict_names_the_item_and_admits_nothing(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    """``POST /jobs/batch`` (what ``enqueue_batch`` serves): an id given twice with
    different payloads, or the id of a job that exists with another payload, is a 409
    naming the item, and nothing of the batch is admitted."""
    from tests.test_server_app import call
    from trioqueue.server import App

    async with backend.open(h.registry) as q:
        await q.enqueue("echo", 1, job_id="held", delay=60)
        app = App(q)
        for jobs, error in [
            ([{"task": "echo", "id": "y", "payload": 1}, {"task": "echo", "payload": 3},
              {"task": "echo", "id": "y", "payload": 2}],
             "jobs[2].id: 'y' is given to two jobs of the batch with a different payload"),
            ([{"task": "echo"}, {"task": "echo", "id": "held", "payload": 2}],
             "jobs[1].id: job 'held' already exists with a different payload"),
            ([{"task": "echo"}, {"task": "fail", "id": "held", "payload": 1}],
             "jobs[1].id: job 'held' already exists with a different task"),
        ]:
            status, _, body = await call(app, "POST", "/jobs/batch", {"jobs": jobs})
            assert (status, body["error"].startswith(error)) == (409, True), body
        status, _, body = await call(app, "POST", "/jobs/batch", {"jobs": [
            {"task": "echo", "id": "z", "payload": {"a": 1, "b": 2}},
            {"task": "echo", "id": "z", "payload": {"b": 2, "a": 1}}]})
        assert status == 202
        assert body["jobs"][0]["id"] == body["jobs"][1]["id"] == "z"
        assert q.metrics().enqueued == 2  # "held" and "z"
        await q.cancel("held")
