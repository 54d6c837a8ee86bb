"""What ``submit`` and the enqueue of a submitted function's task refuse at once, rather
than accept a job whose every attempt fails: a handler registered in any registry (it
takes the job), and a payload that is not a call's ``{"args": [...]}`` (from the library,
``POST /jobs``, ``POST /jobs/batch`` and the CLI), in memory, with a store and on Redis."""

from __future__ import annotations

import gc
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

import trioqueue
from trioqueue import BatchItem, InvalidJob, Job, JobStatus, QueueConfig, TaskRegistry
from trioqueue.server import App

from .mypy_check import mypy_on
from .redis_util import REDIS_URL, admin, delete_queue, unique
from .test_cli import run_cli
from .test_server import running_server
from .test_server_app import call

ADD = f"{__name__}.add"


async def add(a: int, b: int) -> int:
    await trio.lowlevel.checkpoint()
    return a + b


def plain_add(a: int, b: int) -> int:
    return a + b


OTHER = TaskRegistry()
"""Another registry than any queue's below (as an app's module would hold)."""


@OTHER.task
async def resize(job: Job) -> None: ...


class SlottedHandler:
    """A handler that takes no attribute, no weak reference and no hash."""

    __slots__ = ()

    def __call__(self, job: Job) -> None: ...

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SlottedHandler)


class Resizer:
    def resize(self, job: Job) -> None: ...


SLOTTED = SlottedHandler()
RESIZER = Resizer()
OTHER.register(SLOTTED, name="slotted", sync=True)
OTHER.register(RESIZER.resize, name="bound", sync=True)


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def make_config(request: pytest.FixtureRequest, tmp_path: Path
                      ) -> AsyncIterator[Callable[..., QueueConfig]]:
    """A queue's config on each backend (a Redis queue's keys deleted afterwards)."""
    if request.param == "memory":
        yield lambda **kw: QueueConfig(**kw)
    elif request.param == "sqlite":
        yield lambda **kw: QueueConfig(persist_path=tmp_path / "q.db", **kw)
    else:
        name = unique("tq-submit")
        try:
            yield lambda **kw: QueueConfig(redis_url=REDIS_URL, queue_name=name, **kw)
        finally:
            with trio.CancelScope(shield=True):
                async with admin() as client:
                    await delete_queue(client, name)


# ---------------------------------------------------------------- handlers in any registry


@pytest.mark.parametrize(("fn", "name"), [(resize, "resize"), (SLOTTED, "slotted"),
                                          (RESIZER.resize, "bound")])
async def test_a_handler_registered_in_another_registry_is_refused(
    make_config: Callable[..., QueueConfig], fn: Callable[..., Any], name: str,
) -> None:
    """It was accepted as a call (``module.qualname``) whose every attempt failed on
    ``job.payload``."""
    async with trioqueue.open_queue(TaskRegistry(), make_config(workers=1)) as q:
        with pytest.raises(TypeError, match=rf"registered as the task {name!r} in another "
                                            r"registry \(not this queue's\).*enqueue it "
                                            r"by name"):
            await q.submit(fn, 1)
        with pytest.raises(TypeError, match=rf"the task {name!r} in another registry"):
            q.submit_nowait(fn, 1)
        assert q.metrics().enqueued == 0
        assert len(q.registry) == 0


async def test_a_handler_of_the_queues_own_registry_is_refused_whatever_it_is(
    autojump_clock: Any,
) -> None:
    """A bound method is a new object at each ``obj.method``: it was not recognised."""
    registry = TaskRegistry()
    resizer = Resizer()
    registry.register(resizer.resize, name="own_bound", sync=True)
    registry.register(SLOTTED, name="own_slotted", sync=True)
    async with trioqueue.open_queue(registry) as q:
        for fn, name in [(resizer.resize, "own_bound"), (SLOTTED, "own_slotted")]:
            with pytest.raises(TypeError, match=rf"registered as the task {name!r}, a "
                                                r"handler that takes the job"):
                await q.submit(fn, 1)
        assert q.metrics().enqueued == 0


async def test_a_registry_that_is_gone_no_longer_counts(autojump_clock: Any) -> None:
    def job_or_not(x: Any) -> Any:
        return x

    gone = TaskRegistry()
    gone.register(job_or_not, sync=True)
    del gone
    gc.collect()
    async with trioqueue.open_queue(TaskRegistry()) as q:
        assert (await q.wait((await q.submit(job_or_not, 7)).id)).result == 7


# ---------------------------------------------------------------- a call's payload at the door


BAD_PAYLOADS = [[1, 2], None, {}, {"args": "12"}, {"args": [1], "kwargs": {"b": 2}},
                {"a": 1, "b": 2}]


async def test_an_enqueue_of_a_submitted_functions_task_checks_the_payload(
    make_config: Callable[..., QueueConfig],
) -> None:
    """Every payload here was accepted and then failed each attempt with a TypeError
    about the payload, until the retries ran out."""
    registry = TaskRegistry()
    registry.submittable(add)
    async with trioqueue.open_queue(registry, make_config(workers=1)) as q:
        for bad in BAD_PAYLOADS:
            with pytest.raises(InvalidJob, match=rf'^payload: {ADD} is a submitted '
                                                 r"function's task, run as fn\(\*args\): "
                                                 r'its payload must be \{"args": \[...\]\}'):
                await q.enqueue(ADD, bad)
            with pytest.raises(InvalidJob, match=r"^payload: "):
                q.enqueue_nowait(ADD, bad, priority="high")
            with pytest.raises(InvalidJob, match=r"^payloads\[1\]: "):
                await q.enqueue_many(ADD, [{"args": [1, 2]}, bad])
            with pytest.raises(InvalidJob, match=r"^payloads\[1\]: "):
                q.enqueue_many_nowait(ADD, [{"args": [1, 2]}, bad])
            with pytest.raises(InvalidJob, match=r"^jobs\[1\]\.payload: "):
                await q.enqueue_batch([BatchItem(ADD, {"args": [1, 2]}), BatchItem(ADD, bad)])
        with pytest.raises(InvalidJob, match=r"got \[1, 2\]$"):
            await q.enqueue(ADD, [1, 2])
        assert q.metrics().enqueued == 0
        # A call's payload is taken, from submit or by name.
        jobs = [await q.enqueue(ADD, {"args": [1, 2]}), q.enqueue_nowait(ADD, {"args": [3, 4]}),
                *await q.enqueue_many(ADD, [{"args": [5, 6]}]),
                await q.submit(add, 7, 8)]
        with trio.fail_after(10):
            done = await q.wait_many([j.id for j in jobs])
        assert [(d.status, d.result) for d in done] == [(JobStatus.COMPLETED, n)
                                                        for n in (3, 7, 11, 15)]


async def test_a_memory_queue_checks_the_payload_of_a_call_submitted_there(
    autojump_clock: Any,
) -> None:
    """``submit`` in memory mode registers the task; its payload (the call itself) passes
    the check and a payload by name is checked as above."""
    async with trioqueue.open_queue(TaskRegistry()) as q:
        first = q.submit_nowait(plain_add, 1, 2)
        task = first.task
        with pytest.raises(InvalidJob, match=rf"^payload: {task} is a submitted"):
            await q.enqueue(task, {"args": [1, 2], "kwargs": {}})
        again = await q.submit(plain_add, 3, 4)
        by_name = await q.enqueue(task, {"args": [5, 6]})
        done = await q.wait_many([first.id, again.id, by_name.id])
        assert [d.result for d in done] == [3, 7, 11]


async def test_ordinary_tasks_take_any_payload(autojump_clock: Any) -> None:
    registry = TaskRegistry()

    @registry.task
    async def echo(job: Job) -> Any:
        return job.payload

    async with trioqueue.open_queue(registry) as q:
        for payload in BAD_PAYLOADS:
            assert (await q.wait((await q.enqueue("echo", payload)).id)).result == payload


async def test_a_stored_call_with_a_bad_payload_fails_saying_why(tmp_path: Path) -> None:
    """What a store kept from before the check: it fails at once, its retries not spent
    (no attempt could run it), naming the payload's shape.  An extra key (``kwargs``)
    was dropped silently: ``add(1, 2)``."""
    config = QueueConfig(persist_path=tmp_path / "q.db", workers=1, max_retries=3)
    before = TaskRegistry()
    before.register(lambda job: None, name=ADD, sync=True)  # stands in for the old code
    async with trioqueue.open_queue(before, config) as q:
        jobs = [await q.enqueue(ADD, payload, delay=0.2)
                for payload in ([1, 2], {"args": [1, 2], "kwargs": {"x": 1}})]
    registry = TaskRegistry()
    registry.submittable(add)
    async with trioqueue.open_queue(registry, config) as q:
        with trio.fail_after(10):
            done = await q.wait_many([j.id for j in jobs])
    for job in done:
        assert (job.status, job.attempts) == (JobStatus.FAILED, 1)
        assert job.error is not None
        assert job.error.startswith(f"TypeError: job {job.id}: {ADD} is a submitted")
        assert 'its payload must be {"args": [...]} (the positional arguments, and no other' \
               in job.error


# ---------------------------------------------------------------- HTTP and the CLI


async def test_post_jobs_refuses_a_bad_call_payload_with_400(autojump_clock: Any) -> None:
    registry = TaskRegistry()
    registry.submittable(add)
    async with trioqueue.open_queue(registry, QueueConfig(workers=1)) as q:
        app = App(q)
        status, _, body = await call(app, "POST", "/jobs", {"task": ADD, "payload": [1, 2]})
        assert status == 400, body
        assert body["error"].startswith(f"payload: {ADD} is a submitted function's task")
        status, _, body = await call(app, "POST", "/jobs/batch", {"jobs": [
            {"task": ADD, "payload": {"args": [1, 2]}},
            {"task": ADD, "payload": {"args": [1], "kwargs": {"b": 2}}},
        ]})
        assert status == 400, body
        assert body["error"].startswith(f"jobs[1].payload: {ADD} is a submitted")
        assert q.metrics().enqueued == 0
        status, _, job = await call(app, "POST", "/jobs",
                                    {"task": ADD, "payload": {"args": [1, 2]}})
        assert status == 202, job
        status, _, batch = await call(app, "POST", "/jobs/batch", {"jobs": [
            {"task": ADD, "payload": {"args": [3, 4]}}]})
        assert status == 202, batch
        done = await q.wait_many([job["id"], batch["jobs"][0]["id"]])
        assert [d.result for d in done] == [3, 7]


def test_the_cli_enqueue_of_a_bad_call_payload_exits_1(tmp_path: Path) -> None:
    (tmp_path / "calls_app.py").write_text(
        "import trioqueue\nregistry = trioqueue.TaskRegistry()\n"
        "@registry.submittable\ndef add(a, b):\n    return a + b\n"
    )
    with running_server("--app", "calls_app:registry", cwd=tmp_path) as srv:
        bad = run_cli("enqueue", "calls_app.add", "[1,2]", "--url", srv.url)
        assert bad.returncode == 1, bad.stderr
        assert "payload: calls_app.add is a submitted function's task" in bad.stderr
        assert "Traceback" not in bad.stderr
        good = run_cli("enqueue", "calls_app.add", '{"args": [1, 2]}', "--wait",
                       "--url", srv.url)
        assert good.returncode == 0, good.stderr
        assert json.loads(good.stdout)["result"] == 3


def test_mypy_checks_the_arguments_of_a_submitted_call(tmp_path: Path,
                                                      mypy_cache: Path) -> None:
    """``submit(fn, *args)`` is typed as Trio's ``start_soon``: the args against ``fn``'s
    parameters, an async or a plain ``fn``."""
    checked = mypy_on("""
        import trioqueue

        def add(a: int, b: int) -> int:
            return a + b

        async def fetch(url: str) -> str:
            return url

        async def main(q: trioqueue.JobQueue) -> None:
            await q.submit(add, 1, 2)
            await q.submit(fetch, "https://example.com", priority="high")
            q.submit_nowait(add, 1, 2, delay=1.0)
            await q.submit(add, 1, "two")  # BAD
            q.submit_nowait(fetch)  # BAD
    """, tmp_path, mypy_cache)
    assert checked.flagged == checked.marked, checked.output
