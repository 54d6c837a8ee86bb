"""``POST /jobs/batch``: in-process against a real queue (memory and SQLite), all or
nothing across tasks and priorities."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

import trioqueue
from tests.test_server_app import call
from tests.test_server_routes import Tasks, hold_the_worker, make_registry
from trioqueue import JobStatus
from trioqueue.server import App, ServerState, openapi_document
from trioqueue.testing import route


@pytest.fixture
async def setup() -> AsyncIterator[tuple[App, trioqueue.JobQueue, Tasks]]:
    tasks = make_registry()

    @tasks.registry.task
    async def echo(job: trioqueue.Job) -> Any:
        return job.payload

    config = trioqueue.QueueConfig(workers=1, capacity=3, max_retries=0, shutdown_timeout=0)
    async with trioqueue.open_queue(tasks.registry, config) as q:
        yield App(q), q, tasks
        tasks.gate_open.set()


def test_route_and_document() -> None:
    assert route("POST", "/jobs/batch").name == "create_jobs"
    assert route("GET", "/jobs/batch").job_id == "batch"  # the job whose id is "batch"
    assert "/jobs/batch" in openapi_document()["paths"]


async def test_a_batch_of_several_tasks_and_priorities_in_order(
    setup: tuple[App, trioqueue.JobQueue, Tasks],
) -> None:
    app, q, _ = setup
    jobs = [{"task": "echo", "payload": i, "priority": p}
            for i, p in enumerate(["low", "high", "medium", "low"])]
    jobs.append({"task": "boom", "id": "the-boom", "delay": 0.5})
    status, _, body = await call(app, "POST", "/jobs/batch", {"jobs": jobs})
    assert status == 202
    got = body["jobs"]
    assert [j["task"] for j in got] == ["echo"] * 4 + ["boom"]
    assert [j["payload"] for j in got[:4]] == [0, 1, 2, 3]
    assert [j["priority"] for j in got[:4]] == ["low", "high", "medium", "low"]
    assert got[4]["id"] == "the-boom"
    assert got[4]["status"] == "scheduled"
    done = await q.wait_many([j["id"] for j in got])
    assert [d.result for d in done[:4]] == [0, 1, 2, 3]
    assert done[4].status is JobStatus.FAILED
    # The same body again: the job with the id is that job, the others are new.
    status, _, again = await call(app, "POST", "/jobs/batch",
                                  {"jobs": [{"task": "boom", "id": "the-boom", "delay": 0.5}]})
    assert status == 202
    assert again["jobs"][0]["status"] == "failed"


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ([], 400, "body: expected a JSON object, got an array"),
        ({}, 400, "jobs: expected a list of job objects, got nothing"),
        ({"jobs": {}}, 400, "jobs: expected a list of job objects, got an object"),
        ({"jobs": [], "x": 1}, 400, "x: unknown field (expected jobs)"),
        ({"jobs": [{"task": "echo"}, 3]}, 400, "jobs[1]: expected a JSON object, got 3"),
        ({"jobs": [{"task": "echo"}] * 3 + [{"task": "echo", "priority": "urgent"}]}, 400,
         "jobs[3].priority: expected one of 'high', 'medium', 'low'; got 'urgent'"),
        ({"jobs": [{"task": "echo", "delay": -1}]}, 400, "jobs[0].delay: "),
        ({"jobs": [{"task": "echo", "id": "bad id"}]}, 400, "jobs[0].id: "),
        ({"jobs": [{"task": "echo"}] * 1001}, 400, "jobs: at most 1000 per batch, got 1001"),
        ({"jobs": [{"task": "echo"}] * 4}, 400,
         "jobs: 4 jobs of priority medium in one batch, more than the capacity (3)"),
        ({"jobs": [{"task": "echo"}, {"task": "nope"}]}, 404,
         "jobs[1].task: no handler registered as 'nope'"),
        ({"jobs": [{"task": "echo", "id": "x"}, {"task": "boom", "id": "x"}]}, 409,
         "jobs[1].id: 'x' is given to two jobs of the batch with a different task"),
        ({"jobs": [{"task": "echo", "id": "y", "payload": 1},
                   {"task": "echo", "id": "y", "payload": 2}]}, 409,
         "jobs[1].id: 'y' is given to two jobs of the batch with a different payload"),
        ({"jobs": [{"task": "echo"}, {"task": "echo", "id": "held", "payload": 2}]}, 409,
         "jobs[1].id: job 'held' already exists with a different payload"),
    ],
)
async def test_bad_batches_admit_nothing(
    setup: tuple[App, trioqueue.JobQueue, Tasks], body: Any, status: int, error: str
) -> None:
    app, q, _ = setup
    await q.enqueue("echo", 1, job_id="held", delay=60)
    got, _, answer = await call(app, "POST", "/jobs/batch", body)
    assert (got, error in answer["error"]) == (status, True), answer
    assert q.metrics().enqueued == 1  # "held" alone


async def test_429_when_the_whole_batch_does_not_fit(
    setup: tuple[App, trioqueue.JobQueue, Tasks],
) -> None:
    app, q, tasks = setup
    await hold_the_worker(q, tasks)  # the one worker held by a "high" job
    await q.enqueue("echo", "a", priority="low")
    await q.enqueue("echo", "b", priority="low")
    # Room for 3 high, 3 medium, 1 low: the two low ones do not fit.
    jobs = [{"task": "echo", "priority": p} for p in ["high", "medium", "low", "low"]]
    with trio.fail_after(5):  # never waits for room
        status, headers, body = await call(app, "POST", "/jobs/batch", {"jobs": jobs})
    assert status == 429
    assert headers[b"retry-after"] == b"1"
    assert "priority low: room for 1 of the batch's 2 jobs" in body["error"]
    assert q.metrics().queued == {"high": 0, "medium": 0, "low": 2}
    status, _, body = await call(app, "POST", "/jobs/batch", {"jobs": jobs[:3]})
    assert status == 202
    assert q.metrics().queued == {"high": 1, "medium": 1, "low": 3}


async def test_503_while_closing(setup: tuple[App, trioqueue.JobQueue, Tasks]) -> None:
    _, q, _ = setup
    status, _, body = await call(App(q, state=ServerState(closing=True)), "POST",
                                 "/jobs/batch", {"jobs": [{"task": "echo"}]})
    assert status == 503
    assert "shutting down" in body["error"]


async def test_413_for_a_body_over_the_limit(
    setup: tuple[App, trioqueue.JobQueue, Tasks],
) -> None:
    _, q, _ = setup
    app = App(q, trioqueue.server.ServerSettings(max_body=1000))
    status, _, body = await call(app, "POST", "/jobs/batch",
                                 {"jobs": [{"task": "echo", "payload": "x" * 2000}]})
    assert status == 413
    assert "over the limit" in body["error"]


async def test_with_a_store_one_commit_and_ids_of_stored_jobs(tmp_path: Path) -> None:
    from trioqueue.testing import LocalBackend

    registry = trioqueue.TaskRegistry()
    counted = trio.Event()
    entered: list[str] = []
    busy = trio.Event()

    @registry.task
    async def echo(job: trioqueue.Job) -> Any:
        return job.payload

    @registry.task
    async def block(job: trioqueue.Job) -> None:
        entered.append(job.id)
        if len(entered) == 2:
            busy.set()
        await counted.wait()

    # Nothing else changes while the batch is written: both workers are busy before it
    # (the writer writes what changed during a commit at once after it, while its
    # waiters have not run yet: a job started meanwhile made a second commit, once, under
    # load), and completions come a flush_interval later.
    config = trioqueue.QueueConfig(persist_path=tmp_path / "q.db", workers=2,
                                   flush_interval=60.0)
    async with trioqueue.open_queue(registry, config) as q:
        app = App(q)
        store = LocalBackend.of(q).store
        assert store is not None
        for _ in range(2):
            await q.enqueue("block")
        await busy.wait()
        await q.flush()
        before = store.commits
        jobs = [{"task": "echo", "payload": i, "id": f"j{i}"} for i in range(50)]
        status, _, body = await call(app, "POST", "/jobs/batch", {"jobs": jobs})
        assert status == 202
        assert store.commits - before == 1
        counted.set()
        await q.wait_many([j["id"] for j in body["jobs"]])
    async with trioqueue.open_queue(registry, config) as q:
        app = App(q)
        # j0 finished and left memory: found in the store, not made again.
        status, _, body = await call(app, "POST", "/jobs/batch", {"jobs": [
            {"task": "echo", "payload": 0, "id": "j0"}, {"task": "echo", "payload": "new"}]})
        assert status == 202
        assert body["jobs"][0]["status"] == "completed"
        assert body["jobs"][0]["result"] == 0
        status, _, body = await call(app, "POST", "/jobs/batch", {"jobs": [
            {"task": "echo", "payload": 1, "id": "j1"}, {"task": "echo", "payload": 9,
                                                         "id": "j2"}]})
        assert status == 409
        assert q.metrics().enqueued == 1


def test_the_client_over_a_running_server() -> None:
    """End to end: ``trioqueue serve`` and :meth:`Client.enqueue_many`."""
    from tests.test_server import running_server
    from trioqueue.client import Client

    async def main(url: str) -> None:
        async with Client(url) as client:
            jobs = await client.enqueue_many("echo", [{"i": i} for i in range(20)],
                                             priority="low", max_retries=1)
            assert [j.payload for j in jobs] == [{"i": i} for i in range(20)]
            assert {(j.priority.label, j.max_retries) for j in jobs} == {("low", 1)}
            with trio.fail_after(10):
                done = [await client.wait(j.id) for j in jobs]
            assert [d.result for d in done] == [{"i": i} for i in range(20)]
            with pytest.raises(trioqueue.InvalidJob, match=r"jobs\[0\]\.max_retries"):
                await client.enqueue_many("echo", [1, 2], max_retries=-1)
            with pytest.raises(trioqueue.UnknownTask, match=r"jobs\[0\]\.task"):
                await client.enqueue_many("nope", [1])

    with running_server("--workers", "2") as srv:
        trio.run(main, srv.url)


def test_cli_enqueue_count_posts_batches() -> None:
    """``trioqueue enqueue --count`` sends ``POST /jobs/batch`` requests of 100 jobs
    (the access log shows them), with ``--id`` giving each job ``ID-i``; against a queue
    smaller than a batch it goes on one job at a time."""
    import json

    from tests.test_cli import run_cli
    from tests.test_server import running_server

    with running_server("--workers", "2", "--access-log") as srv:
        result = run_cli("enqueue", "echo", "[1]", "--count", "250", "--id", "cli-b",
                         "--url", srv.url)
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["enqueued"] == 250
        # The first and last of the sequence asked for, not of the requests as they ended.
        assert (summary["first"], summary["last"]) == ("cli-b-0", "cli-b-249")
        assert "enqueued 250/250" in result.stderr
        many = run_cli("enqueue", "echo", "[2]", "--count", "1000", "--id", "cli-o",
                       "--url", srv.url)
        assert many.returncode == 0, many.stderr
        assert (json.loads(many.stdout)["first"], json.loads(many.stdout)["last"]) == (
            "cli-o-0", "cli-o-999")
        status = run_cli("status", "cli-b-249", "--url", srv.url)
        assert status.returncode == 0, status.stderr
        again = run_cli("enqueue", "echo", "[1]", "--count", "250", "--id", "cli-b",
                        "--url", srv.url)  # the same ids: the same jobs
        assert again.returncode == 0, again.stderr
        metrics = run_cli("metrics", "--url", srv.url)
        assert json.loads(metrics.stdout)["enqueued"] == 1250
        log = srv.stderr()
        assert log.count("POST /jobs/batch 202") == 16
        assert "POST /jobs 20" not in log
    with running_server("--workers", "1", "--capacity", "30") as small:
        result = run_cli("enqueue", "echo", "[1]", "--count", "120", "--url", small.url)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["enqueued"] == 120
