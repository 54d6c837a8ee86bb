"""``GET /tasks``, ``POST /jobs/retry`` and the strict query of ``GET /jobs``, in-process
against a real queue (memory, and SQLite for jobs that have left memory)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import trioqueue
from tests.redis_util import REDIS_URL
from tests.test_server_app import call
from trioqueue import JobStatus
from trioqueue.server import App, ServerState, openapi_document
from trioqueue.testing import HTTPError, route
from trioqueue.testing import app as app_module


@attrs.define
class Tasks:
    """``boom`` and ``other`` always fail; ``gate`` holds its worker until ``gate_open``."""

    registry: trioqueue.TaskRegistry
    gate_open: trio.Event
    gate_started: trio.Event


def make_registry() -> Tasks:
    registry = trioqueue.TaskRegistry()
    gate_open = trio.Event()
    started = trio.Event()

    @registry.task(max_retries=0)
    async def boom(job: trioqueue.Job) -> None:
        raise RuntimeError("boom")

    @registry.task(max_retries=0, priority="low")
    async def other(job: trioqueue.Job) -> None:
        raise RuntimeError("other")

    @registry.task(name="gate", max_retries=4, timeout=30, priority="high")
    async def gate(job: trioqueue.Job) -> None:
        started.set()
        await gate_open.wait()

    return Tasks(registry, gate_open, started)


@pytest.fixture
async def setup() -> AsyncIterator[tuple[App, trioqueue.JobQueue, Tasks]]:
    tasks = make_registry()
    config = trioqueue.QueueConfig(workers=1, capacity=100, max_retries=6, shutdown_timeout=0)
    async with trioqueue.open_queue(tasks.registry, config) as q:
        yield App(q), q, tasks
        tasks.gate_open.set()


async def fail_jobs(q: trioqueue.JobQueue, task: str, n: int, prefix: str) -> list[str]:
    ids = []
    for i in range(n):
        job = await q.enqueue(task, i, job_id=f"{prefix}-{i}")
        ids.append(job.id)
    for job_id in ids:
        assert (await q.wait(job_id)).status is JobStatus.FAILED
    return ids


async def hold_the_worker(q: trioqueue.JobQueue, tasks: Tasks) -> None:
    """Occupy the one worker, so retried jobs stay queued where the test can see them."""
    await q.enqueue("gate", job_id="gate")
    with trio.fail_after(5):
        await tasks.gate_started.wait()


# ---------------------------------------------------------------------------- routing


@pytest.mark.parametrize(
    ("method", "path", "name", "job_id"),
    [("POST", "/jobs/retry", "retry_jobs", None), ("GET", "/tasks", "tasks", None),
     # A job may be called "retry": GET still finds it, and so do its own actions.
     ("GET", "/jobs/retry", "get_job", "retry"),
     ("POST", "/jobs/retry/cancel", "cancel_job", "retry"),
     ("POST", "/jobs/retry/retry", "retry_job", "retry")],
)
def test_new_routes(method: str, path: str, name: str, job_id: str | None) -> None:
    found = route(method, path)
    assert (found.name, found.job_id) == (name, job_id)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("DELETE", "/jobs/retry", b"GET, HEAD, POST"), ("POST", "/tasks", b"GET, HEAD")],
)
def test_new_routes_405(method: str, path: str, allow: bytes) -> None:
    with pytest.raises(HTTPError) as err:
        route(method, path)
    assert err.value.status == 405
    assert dict(err.value.headers)[b"allow"] == allow


def test_the_openapi_document_has_the_new_routes() -> None:
    paths = openapi_document()["paths"]
    assert set(paths["/jobs/retry"]) == {"post"}
    assert {"202", "400", "429", "503"} <= set(paths["/jobs/retry"]["post"]["responses"])
    assert set(paths["/tasks"]) == {"get"}
    assert "200" in paths["/tasks"]["get"]["responses"]


async def test_a_job_named_retry_is_still_reachable(
    setup: tuple[App, trioqueue.JobQueue, Tasks],
) -> None:
    app, q, _ = setup
    await fail_jobs(q, "boom", 1, "x")
    await q.enqueue("boom", job_id="retry")
    await q.wait("retry")
    status, _, body = await call(app, "GET", "/jobs/retry")
    assert (status, body["id"], body["status"]) == (200, "retry", "failed")


# ---------------------------------------------------------------------------- GET /tasks


async def test_get_tasks(setup: tuple[App, trioqueue.JobQueue, Tasks]) -> None:
    app, _, _ = setup
    status, _, body = await call(app, "GET", "/tasks")
    assert status == 200
    assert body == {"tasks": [
        {"name": "boom", "priority": "medium", "max_retries": 0, "timeout": None,
         "schedule": None, "tz": None, "every": None, "concurrency": None, "next_run": None},
        {"name": "gate", "priority": "high", "max_retries": 4, "timeout": 30.0,
         "schedule": None, "tz": None, "every": None, "concurrency": None, "next_run": None},
        {"name": "other", "priority": "low", "max_retries": 0, "timeout": None,
         "schedule": None, "tz": None, "every": None, "concurrency": None, "next_run": None},
    ]}


async def test_get_tasks_shows_the_queue_defaults() -> None:
    registry = trioqueue.TaskRegistry()

    @registry.task
    async def plain(job: trioqueue.Job) -> None: ...

    config = trioqueue.QueueConfig(max_retries=9, default_timeout=2.5)
    async with trioqueue.open_queue(registry, config) as q:
        _, _, body = await call(App(q), "GET", "/tasks")
    assert body["tasks"][0]["max_retries"] == 9
    assert body["tasks"][0]["timeout"] == 2.5


# ---------------------------------------------------------------------------- GET /jobs


@pytest.mark.parametrize("query", ["status=failed&colour=red", "limit=5&colour=red",
                                   "Status=failed", "next=", "task=boom&after=x"])
async def test_list_refuses_unknown_query_parameters(
    setup: tuple[App, trioqueue.JobQueue, Tasks], query: str
) -> None:
    app, _, _ = setup
    status, _, body = await call(app, "GET", "/jobs", query=query)
    assert status == 400
    unknown = sorted(set(part.split("=")[0] for part in query.split("&"))
                     - {"status", "limit", "task", "before"})[0]
    assert body["error"] == (f"{unknown}: unknown query parameter "
                             "(expected some of before, limit, status, task)")


@pytest.mark.parametrize(("query", "error"), [
    ("before=-x", "before: '-x' has characters other than"),
    ("before=a%2Fb", "before: 'a/b' has characters other than"),
    ("before=" + "a" * 129, "before: must be 1 to 128 characters, got 129"),
    ("limit=0", "limit: expected a positive integer, got '0'"),
    ("limit=1_0", "limit: expected a positive integer, got '1_0'"),
    ("limit=0000", "limit: expected a positive integer, got '0000'"),
    ("limit=%2B1", "limit: expected a positive integer, got '+1'"),
    ("limit=%201", "limit: expected a positive integer, got ' 1'"),
    ("limit=%D9%A1", "limit: expected a positive integer, got '\u0661'"),  # int() took it
    ("status=failed&status=completed", "status: given more than once"),
    ("limit=abc&limit=1", "limit: given more than once"),
])
async def test_list_refuses_a_bad_before_or_limit(
    setup: tuple[App, trioqueue.JobQueue, Tasks], query: str, error: str
) -> None:
    app, _, _ = setup
    status, _, body = await call(app, "GET", "/jobs", query=query)
    assert status == 400
    assert body["error"].startswith(error)


async def test_list_with_known_parameters_still_works(
    setup: tuple[App, trioqueue.JobQueue, Tasks],
) -> None:
    app, q, _ = setup
    ids = await fail_jobs(q, "boom", 3, "b")
    status, _, body = await call(app, "GET", "/jobs", query="status=failed&limit=2")
    assert status == 200
    assert [j["id"] for j in body["jobs"]] == [ids[2], ids[1]]
    assert body["next"] == ids[1]
    # Any number of digits counts (as 1000 at most): 5,000 of them included.
    status, _, body = await call(app, "GET", "/jobs", query="status=failed&limit=" + "9" * 5000)
    assert (status, len(body["jobs"])) == (200, 3)


async def test_list_filters_by_task_and_pages_with_before_and_next(
    setup: tuple[App, trioqueue.JobQueue, Tasks],
) -> None:
    app, q, _ = setup
    booms = await fail_jobs(q, "boom", 5, "b")
    others = await fail_jobs(q, "other", 2, "o")
    _, _, body = await call(app, "GET", "/jobs", query="task=other")
    assert [j["id"] for j in body["jobs"]] == others[::-1]
    assert body["next"] is None
    seen: list[str] = []
    query = "task=boom&limit=2"
    pages = 0
    while True:
        status, _, body = await call(app, "GET", "/jobs", query=query)
        assert status == 200
        assert {j["task"] for j in body["jobs"]} == {"boom"}
        seen += [j["id"] for j in body["jobs"]]
        pages += 1
        if body["next"] is None:
            break
        query = f"task=boom&limit=2&before={body['next']}"
    assert seen == booms[::-1]
    assert pages == 3
    # Every job, newest first; a job made before everything gives an empty last page.
    _, _, body = await call(app, "GET", "/jobs", query=f"before={booms[0]}")
    assert (body["jobs"], body["next"]) == ([], None)
    _, _, body = await call(app, "GET", "/jobs", query=f"before={others[0]}&limit=1")
    assert ([j["id"] for j in body["jobs"]], body["next"]) == ([booms[4]], booms[4])


# ---------------------------------------------------------------------------- POST /jobs/retry


async def test_bulk_retry_of_failed_jobs_of_one_task(
    setup: tuple[App, trioqueue.JobQueue, Tasks],
) -> None:
    app, q, tasks = setup
    booms = await fail_jobs(q, "boom", 3, "b")
    others = await fail_jobs(q, "other", 2, "o")
    await hold_the_worker(q, tasks)
    status, _, body = await call(app, "POST", "/jobs/retry", {"status": "failed", "task": "boom"})
    assert (status, body) == (202, {"retried": 3})
    for job_id in booms:
        job = await q.get(job_id)
        assert (job.status, job.attempts) == (JobStatus.QUEUED, 0)  # fresh attempts
    for job_id in others:
        assert (await q.get(job_id)).status is JobStatus.FAILED
    status, _, body = await call(app, "POST", "/jobs/retry", {"status": "failed"})
    assert (status, body) == (202, {"retried": 2})
    assert {(await q.get(i)).status for i in others} == {JobStatus.QUEUED}
    # Nothing left in the status: nothing to do.
    assert (await call(app, "POST", "/jobs/retry", {"status": "failed"}))[2] == {"retried": 0}


async def test_bulk_retry_of_cancelled_jobs(
    setup: tuple[App, trioqueue.JobQueue, Tasks],
) -> None:
    app, q, tasks = setup
    failed = await fail_jobs(q, "boom", 1, "b")
    await hold_the_worker(q, tasks)
    for i in range(2):
        await q.enqueue("other", job_id=f"c-{i}", delay=3600)
        await q.cancel(f"c-{i}")
    status, _, body = await call(app, "POST", "/jobs/retry", {"status": "cancelled"})
    assert (status, body) == (202, {"retried": 2})
    assert (await q.get("c-0")).status is JobStatus.QUEUED
    assert (await q.get(failed[0])).status is JobStatus.FAILED


async def test_bulk_retry_pages_past_other_tasks_jobs(
    setup: tuple[App, trioqueue.JobQueue, Tasks], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Newest first, the jobs of another task come first in every page; with a page of 2,
    the 4 older ``boom`` jobs behind 5 ``other`` ones are all reached, each once."""
    monkeypatch.setattr(app_module, "RETRY_PAGE", 2)
    app, q, tasks = setup
    booms = await fail_jobs(q, "boom", 4, "b")
    await fail_jobs(q, "other", 5, "o")
    await hold_the_worker(q, tasks)
    status, _, body = await call(app, "POST", "/jobs/retry", {"status": "failed", "task": "boom"})
    assert (status, body) == (202, {"retried": 4})
    assert {(await q.get(i)).status for i in booms} == {JobStatus.QUEUED}
    assert q.metrics().queued["medium"] == 4


async def test_bulk_retry_retries_a_job_once_per_request(
    setup: tuple[App, trioqueue.JobQueue, Tasks], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retried job that fails again at once is back in the status, and in the next
    page: it is not retried a second time (the request would never end)."""
    monkeypatch.setattr(app_module, "RETRY_PAGE", 1)
    app, q, _ = setup
    await fail_jobs(q, "boom", 3, "b")
    status, _, body = await call(app, "POST", "/jobs/retry", {"status": "failed"})
    assert (status, body) == (202, {"retried": 3})
    assert q.metrics().enqueued == 3


async def test_bulk_retry_on_redis_reaches_every_job_of_many_pages_that_fail_again(
    queue_name: str,
) -> None:
    """On Redis a terminal status lists by finish time, so jobs that fail again at once
    come back at the front of the listing: each still retried once, and the jobs behind
    the first 1,000 reached too (the listing asks at most 1,000 at a time)."""
    registry = trioqueue.TaskRegistry()
    runs: dict[str, int] = {}

    @registry.task(max_retries=0)
    async def boom(job: trioqueue.Job) -> None:
        runs[job.id] = runs.get(job.id, 0) + 1
        raise RuntimeError("boom")

    n = 1_100
    config = trioqueue.QueueConfig(redis_url=REDIS_URL, queue_name=queue_name, workers=8,
                                   capacity=2_000)
    with trio.fail_after(60):
        async with trioqueue.open_queue(registry, config) as q:
            jobs = await q.enqueue_many("boom", list(range(550)))
            jobs += await q.enqueue_many("boom", list(range(550)))
            await q.wait_many([j.id for j in jobs])
            status, _, body = await call(App(q), "POST", "/jobs/retry", {"status": "failed"})
            assert (status, body) == (202, {"retried": n})
            await q.wait_many([j.id for j in jobs])
    assert sorted(runs.values()) == [2] * n


async def test_bulk_retry_answers_429_when_a_queue_fills() -> None:
    tasks = make_registry()
    config = trioqueue.QueueConfig(workers=1, capacity=2, shutdown_timeout=0)
    async with trioqueue.open_queue(tasks.registry, config) as q:
        app = App(q)
        booms = await fail_jobs(q, "boom", 3, "b")
        await hold_the_worker(q, tasks)
        with trio.fail_after(5):  # never waits for room
            status, headers, body = await call(app, "POST", "/jobs/retry", {"status": "failed"})
        assert status == 429
        assert headers[b"retry-after"] == b"1"
        assert "2 jobs were retried before it filled" in body["error"]
        statuses = sorted([(await q.get(i)).status.value for i in booms])
        assert statuses == ["failed", "queued", "queued"]
        tasks.gate_open.set()


async def test_bulk_retry_while_closing_is_503(
    setup: tuple[App, trioqueue.JobQueue, Tasks],
) -> None:
    _, q, _ = setup
    state = ServerState(closing=True)
    status, _, body = await call(App(q, state=state), "POST", "/jobs/retry",
                                 {"status": "failed"})
    assert status == 503
    assert "shutting down" in body["error"]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({}, "task: expected a non-empty string, got nothing"),
        ({"task": None}, "task: expected a non-empty string, got null"),
        ({"task": ["echo"]}, "task: expected a non-empty string, got an array"),
        ({"task": "echo", "max_retries": True},
         "max_retries: expected an integer 0..1000000, got true"),
        ({"task": "echo", "delay": "soon"}, "delay: expected a number of seconds, got 'soon'"),
        ({"task": "echo", "id": {"a": 1}}, "id: expected a string, got an object"),
        ({"task": "echo", "priority": False},
         "priority: expected one of 'high', 'medium', 'low'; got false"),
        (b"true", "body: expected a JSON object, got true"),
    ],
)
async def test_post_job_errors_name_json_values_as_json(
    setup: tuple[App, trioqueue.JobQueue, Tasks], body: Any, error: str
) -> None:
    app, _, _ = setup
    status, _, answer = await call(app, "POST", "/jobs", body)
    assert (status, answer["error"]) == (400, error)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ([], "body: expected a JSON object, got an array"),
        ({}, "status: expected 'failed' or 'cancelled', got nothing"),
        ({"status": "completed"}, "status: expected 'failed' or 'cancelled', got 'completed'"),
        ({"status": "FAILED"}, "status: expected 'failed' or 'cancelled', got 'FAILED'"),
        ({"status": "failed", "task": ""}, "task: expected a non-empty string, got ''"),
        ({"status": "failed", "task": 3}, "task: expected a non-empty string, got 3"),
        ({"status": None}, "status: expected 'failed' or 'cancelled', got null"),
        (b"null", "body: expected a JSON object, got null"),
        ({"status": "failed", "priority": "high"},
         "priority: unknown field (expected some of status, task)"),
        (b"{nope", "body: not valid JSON"),
        (b"", "body: expected a JSON object, got an empty body"),
    ],
)
async def test_bulk_retry_bad_bodies_are_400(
    setup: tuple[App, trioqueue.JobQueue, Tasks], body: Any, error: str
) -> None:
    app, q, _ = setup
    await fail_jobs(q, "boom", 1, "b")
    status, _, answer = await call(app, "POST", "/jobs/retry", body)
    assert status == 400
    assert answer["error"].startswith(error)
    assert (await q.get("b-0")).status is JobStatus.FAILED  # nothing was retried


async def test_bulk_retry_reaches_jobs_only_the_store_holds(tmp_path: Path) -> None:
    """With a store, failed jobs that have left memory are listed from it and retried."""
    tasks = make_registry()
    config = trioqueue.QueueConfig(workers=1, capacity=100, finished_cache=0,
                                   persist_path=tmp_path / "q.db", shutdown_timeout=0)
    async with trioqueue.open_queue(tasks.registry, config) as q:
        app = App(q)
        booms = await fail_jobs(q, "boom", 3, "b")
        await hold_the_worker(q, tasks)
        with pytest.raises(trioqueue.JobNotFound):
            q.get_nowait(booms[0])  # only in the store now
        status, _, body = await call(app, "POST", "/jobs/retry", {"status": "failed"})
        assert (status, body) == (202, {"retried": 3})
        assert {(await q.get(i)).status for i in booms} == {JobStatus.QUEUED}
        tasks.gate_open.set()


async def test_retry_of_a_stored_job_whose_task_this_server_lacks_is_404(tmp_path: Path) -> None:
    """A FAILED job in the store, opened by a registry without its task: retry is 404
    naming the task (not a 500), and the job stays FAILED."""
    db = tmp_path / "jobs.db"
    first = trioqueue.TaskRegistry()

    @first.task(name="gone", max_retries=0)
    async def gone(job: trioqueue.Job) -> None:
        raise RuntimeError("no")

    config = trioqueue.QueueConfig(workers=1, persist_path=db, shutdown_timeout=0)
    async with trioqueue.open_queue(first, config) as q:
        await q.enqueue("gone", job_id="g1")
        assert (await q.wait("g1")).status is JobStatus.FAILED
    async with trioqueue.open_queue(make_registry().registry, config) as q:
        app = App(q)
        status, _, body = await call(app, "POST", "/jobs/g1/retry")
        assert status == 404
        assert "gone" in body["error"]
        assert (await q.get("g1")).status is JobStatus.FAILED
