"""``trioqueue.report_progress``: a handler's plain call, ``job.progress``, the ``progress``
event (at most one per 0.1 s per job, the last value of an interval kept), the job JSON
over HTTP and the client.  On trio's mock clock."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioqueue
from tests.test_server_app import call
from trioqueue import JobStatus
from trioqueue.client import job_from_json
from trioqueue.server import App


def make_registry(gate: trio.Event) -> trioqueue.TaskRegistry:
    registry = trioqueue.TaskRegistry()

    @registry.task()
    async def steps(job: trioqueue.Job) -> str:
        for i, (fraction, note) in enumerate(job.payload):
            trioqueue.report_progress(fraction, note)
            if i == 1:
                await gate.wait()
            await trio.sleep(1)
        return "done"

    @registry.task()
    async def burst(job: trioqueue.Job) -> None:
        for i in range(1, 51):  # 50 changes within 0.05 s
            trioqueue.report_progress(i / 50, f"step {i}")
            await trio.sleep(0.001)
        await trio.sleep(1)

    @registry.task(sync=True)
    def in_a_thread(job: trioqueue.Job) -> None:
        trioqueue.report_progress(0.25, "from a thread")

    @registry.task(max_retries=0)
    async def bad(job: trioqueue.Job) -> None:
        trioqueue.report_progress(*job.payload)

    return registry


async def collect(q: trioqueue.JobQueue, out: list[trioqueue.Event],
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    async with q.subscribe() as events:
        task_status.started()
        async for event in events:
            out.append(event)


async def test_progress_is_on_the_job_in_events_and_in_the_json(autojump_clock: Any) -> None:
    gate = trio.Event()
    events: list[trioqueue.Event] = []
    async with trio.open_nursery() as nursery, trioqueue.open_queue(
        make_registry(gate), trioqueue.QueueConfig(workers=1)
    ) as q:
        await nursery.start(collect, q, events)
        job = await q.enqueue("steps", [[0.0, None], [0.5, "half way"], [1, "last"]])
        assert job.progress is None
        await trio.sleep(2)  # blocked on the gate after reporting 0.5
        running = q.get_nowait(job.id)
        assert running.progress == {"fraction": 0.5, "note": "half way"}
        running.progress["note"] = "changed by a caller"  # its own copy: the job keeps its
        assert (await q.get(job.id)).progress == {"fraction": 0.5, "note": "half way"}
        status, _, body = await call(App(q), "GET", f"/jobs/{job.id}")
        assert status == 200
        assert body["progress"] == {"fraction": 0.5, "note": "half way"}
        assert job_from_json(body).progress == {"fraction": 0.5, "note": "half way"}
        gate.set()
        done = await q.wait(job.id)
        assert done.status is JobStatus.COMPLETED
        assert done.progress == {"fraction": 1.0, "note": "last"}
        assert done.to_dict()["progress"] == {"fraction": 1.0, "note": "last"}
    progress = [e for e in events if e.type == "progress"]
    assert [(e.fraction, e.note) for e in progress] == [
        (0.0, None), (0.5, "half way"), (1.0, "last")]
    first = progress[0].to_dict()
    assert first["type"] == "progress"
    assert first["job_id"] == job.id
    assert {"fraction", "note", "seq", "at", "task", "priority", "status", "attempt",
            "worker"} <= set(first)
    assert (first["task"], first["status"], first["attempt"]) == ("steps", "processing", 1)
    types = [e.type for e in events if e.job_id == job.id]
    assert types.index("completed") > types.index("progress")


async def test_progress_events_are_coalesced_to_ten_a_second(autojump_clock: Any) -> None:
    events: list[trioqueue.Event] = []
    async with trio.open_nursery() as nursery, trioqueue.open_queue(
        make_registry(trio.Event()), trioqueue.QueueConfig(workers=1)
    ) as q:
        await nursery.start(collect, q, events)
        t0 = trio.current_time()
        job = await q.enqueue("burst")
        done = await q.wait(job.id)
    progress = [e for e in events if e.type == "progress"]
    # 50 changes in 0.05 s: the first at once, then the last of the interval when it ends.
    assert [(e.fraction, e.note) for e in progress] == [(0.02, "step 1"), (1.0, "step 50")]
    assert done.progress == {"fraction": 1.0, "note": "step 50"}
    assert progress[1].at - progress[0].at == pytest.approx(0.1)
    assert trio.current_time() - t0 >= 1.0


async def test_a_sync_handler_reports_from_its_thread(autojump_clock: Any) -> None:
    async with trioqueue.open_queue(make_registry(trio.Event()),
                                    trioqueue.QueueConfig(workers=1)) as q:
        job = await q.enqueue("in_a_thread")
        done = await q.wait(job.id)
    assert done.status is JobStatus.COMPLETED
    assert done.progress == {"fraction": 0.25, "note": "from a thread"}


async def test_an_abandoned_threads_progress_does_not_land_on_the_next_job() -> None:
    """A ``sync=True`` handler that timed out runs on in its thread; its progress was put
    on whatever job its worker ran by then (read from the worker, not bound to the
    thread).  It is refused now: the thread's ``report_progress`` raises, and neither job
    shows it.  (The real clock: the thread sleeps for real.)"""
    import threading

    registry = trioqueue.TaskRegistry()
    refused: list[BaseException] = []
    reported = threading.Event()
    go_on = threading.Event()

    @registry.task(sync=True, timeout=0.05, max_retries=0)
    def stuck(job: trioqueue.Job) -> None:
        go_on.wait(10)
        try:
            trioqueue.report_progress(0.99, f"from {job.id}")
        except RuntimeError as exc:
            refused.append(exc)
        finally:
            reported.set()

    next_started = trio.Event()

    @registry.task()
    async def other(job: trioqueue.Job) -> None:
        next_started.set()
        await trio.to_thread.run_sync(reported.wait, 10)

    async with trioqueue.open_queue(registry, trioqueue.QueueConfig(workers=1)) as q:
        first = await q.enqueue("stuck")
        second = await q.enqueue("other")
        assert (await q.wait(first.id)).status is JobStatus.FAILED  # timed out
        await next_started.wait()  # the worker runs the next job; the thread runs on
        go_on.set()
        done = await q.wait(second.id)
        stuck_job = await q.get(first.id)
    assert done.progress is None
    assert stuck_job.progress is None
    assert [str(e) for e in refused] == [
        "report_progress(): the job this handler ran has ended"]


@pytest.mark.parametrize(("args", "error"), [
    ([1.5], "ValueError: fraction: expected a number from 0 to 1, got 1.5"),
    ([-0.1], "ValueError: fraction: expected a number from 0 to 1, got -0.1"),
    ([10**400], "ValueError: fraction: expected a number from 0 to 1, got an integer of more "
                "than 20 digits"),
    (["half"], "TypeError: fraction: expected a number from 0 to 1, got str"),
    ([True], "TypeError: fraction: expected a number from 0 to 1, got bool"),
    ([0.5, 3], "TypeError: note: expected a string or None, got int"),
    ([0.5, "x" * 1001], "ValueError: note: at most 1000 characters, got 1001"),
])
async def test_bad_arguments_fail_the_attempt_naming_the_field(
    args: list[Any], error: str, autojump_clock: Any
) -> None:
    async with trioqueue.open_queue(make_registry(trio.Event()),
                                    trioqueue.QueueConfig(workers=1)) as q:
        done = await q.wait((await q.enqueue("bad", args)).id)
    assert (done.status, done.error, done.progress) == (JobStatus.FAILED, error, None)


async def test_outside_a_handler_it_is_a_runtime_error() -> None:
    with pytest.raises(RuntimeError, match="outside a job's handler"):
        trioqueue.report_progress(0.5)


def test_outside_trio_it_is_a_runtime_error() -> None:
    with pytest.raises(RuntimeError, match="outside a job's handler"):
        trioqueue.report_progress(0.5, "no queue")
