"""``POST /jobs`` answers 202 only for the request whose enqueue made the job, 200 for
the others (API.md): the enqueue itself says whether it made the job
(:func:`trioqueue._created.enqueue_created`), on every backend, so two servers on one
Redis queue no longer both answer 202 for one job.  The Redis tests run against the real
Redis (tests/redis_util.py), on queues named ``tq-created-*``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

import trioqueue
from trioqueue import Job, QueueConfig
from trioqueue.demo import registry
from trioqueue.server import App
from trioqueue.testing import enqueue_created

from .redis_util import REDIS_URL
from .test_server_app import call


def on_redis(queue_name: str) -> QueueConfig:
    return QueueConfig(redis_url=REDIS_URL, queue_name=queue_name, workers=1)


async def test_two_redis_nodes_enqueue_one_new_id_and_one_is_told_created(
    queue_name: str,
) -> None:
    """Two nodes each enqueue every one of 20 new ids twice, all at once: each job is
    made once, and exactly one of its four enqueues is told it made it."""
    told: dict[str, list[tuple[str, bool, Job]]] = {}
    with trio.fail_after(30):
        async with trioqueue.open_queue(registry, on_redis(queue_name)) as a, \
                trioqueue.open_queue(registry, on_redis(queue_name)) as b:

            async def enqueue(node: str, q: trioqueue.JobQueue, job_id: str) -> None:
                job, created = await enqueue_created(q.enqueue, "echo", {"id": job_id},
                                                     job_id=job_id)
                told.setdefault(job_id, []).append((node, created, job))

            async with trio.open_nursery() as nursery:
                for i in range(20):
                    for node, q in (("a", a), ("b", b), ("a", a), ("b", b)):
                        nursery.start_soon(enqueue, node, q, f"same-{i}")
            # Repeats afterwards, from either node, and a job without an id.
            for q in (a, b):
                assert (await enqueue_created(q.enqueue, "echo", {"id": "same-0"},
                                              job_id="same-0"))[1] is False
            job, created = await enqueue_created(b.enqueue, "echo", "no id")
            assert created is True
            assert (await a.wait(job.id)).result == "no id"
            assert len(await a.list_jobs(limit=1000)) == 21
    for job_id, answers in told.items():
        assert len(answers) == 4
        assert [created for _, created, _ in answers].count(True) == 1, (job_id, answers)
        assert {job.created_at for _, _, job in answers} == {answers[0][2].created_at}
        assert {job.id for _, _, job in answers} == {job_id}


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_one_process_enqueues_one_new_id_and_one_is_told_created(
    backend: str, tmp_path: Path,
) -> None:
    """Twenty enqueues of one new id at once: one is told it made the job.  With a store,
    the repeat of a job that left memory (found in the store) is not told so either; in
    memory mode the job is kept (a job that left memory frees its id there)."""
    where: dict[str, Any] = {
        "memory": {}, "sqlite": {"persist_path": tmp_path / "q.db", "finished_cache": 0},
    }[backend]
    config = QueueConfig(workers=1, **where)
    async with trioqueue.open_queue(registry, config) as q:
        answers: list[bool] = []

        async def enqueue() -> None:
            answers.append((await enqueue_created(q.enqueue, "echo", 1, job_id="one"))[1])

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(enqueue)
        assert sorted(answers) == [False] * 19 + [True]
        assert q.metrics().enqueued == 1
        await q.wait("one")
        await q.wait((await q.enqueue("echo", 2)).id)  # with a store "one" leaves memory
        if backend == "sqlite":
            with pytest.raises(trioqueue.JobNotFound):
                q.get_nowait("one")  # only the store has it
        job, created = await enqueue_created(q.enqueue, "echo", 1, job_id="one")
        assert (job.id, job.result, created) == ("one", 1, False)
        with pytest.raises(trioqueue.DuplicateJob):
            await enqueue_created(q.enqueue, "echo", 2, job_id="one")


async def test_a_job_made_by_another_server_is_answered_200(queue_name: str) -> None:
    """Server A makes the job (202); server B, which never saw the id, is posted the same
    request: B's enqueue finds A's job in Redis and B answers 200 with it, from the
    enqueue's own answer (B has no look-up of its own before it)."""
    body = {"task": "echo", "payload": {"n": 1}, "id": "race-1"}
    with trio.fail_after(30):
        async with trioqueue.open_queue(registry, on_redis(queue_name)) as a, \
                trioqueue.open_queue(registry, on_redis(queue_name)) as b:
            app_a, app_b = App(a), App(b)
            status, _, made = await call(app_a, "POST", "/jobs", body)
            assert status == 202, made
            status, _, answer = await call(app_b, "POST", "/jobs", body)
            assert status == 200, answer
            assert (answer["id"], answer["created_at"]) == ("race-1", made["created_at"])
            # Both servers answer 200 for it again, and 409 for another payload.
            for app in (app_a, app_b):
                assert (await call(app, "POST", "/jobs", body))[0] == 200
                assert (await call(app, "POST", "/jobs",
                                   {**body, "payload": {"n": 2}}))[0] == 409
            assert len(await b.list_jobs(limit=10)) == 1


async def test_two_servers_posting_one_new_id_at_once_answer_202_once(
    queue_name: str,
) -> None:
    """Two servers on one Redis queue, ten requests each with one new id, all at once:
    one 202 (from either server), nineteen 200s, and the same job in every answer."""
    body = {"task": "echo", "payload": {"n": 1}, "id": "conc-1"}
    with trio.fail_after(30):
        async with trioqueue.open_queue(registry, on_redis(queue_name)) as a, \
                trioqueue.open_queue(registry, on_redis(queue_name)) as b:
            apps = (App(a), App(b))
            answers: list[tuple[int, Any]] = []

            async def post(app: App) -> None:
                status, _, answer = await call(app, "POST", "/jobs", body)
                answers.append((status, answer))

            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(post, apps[i % 2])
            assert Counter(status for status, _ in answers) == {202: 1, 200: 19}
            assert {(answer["id"], answer["created_at"]) for _, answer in answers} == {
                ("conc-1", answers[0][1]["created_at"])}


async def test_a_task_started_during_the_enqueue_does_not_answer_for_it() -> None:
    """A task started while :func:`enqueue_created` waits inherits its context (Trio
    copies it): a repeat that task enqueues is its own, not the waiting call's."""
    from trioqueue.testing import repeated

    async with trioqueue.open_queue(registry, QueueConfig(workers=1)) as q, \
            trio.open_nursery() as nursery:

        async def enqueue_and_start_a_task(*args: Any, **kwargs: Any) -> Job:
            job = await q.enqueue(*args, **kwargs)
            seen = trio.Event()

            async def other() -> None:
                repeated()  # as an enqueue of a repeat in that task would
                seen.set()

            nursery.start_soon(other)
            await seen.wait()
            return job

        job, created = await enqueue_created(enqueue_and_start_a_task, "echo", 1,
                                             job_id="mine")
        assert (job.id, created) == ("mine", True)
        assert (await enqueue_created(enqueue_and_start_a_task, "echo", 1,
                                      job_id="mine"))[1] is False


async def test_a_repeat_of_a_job_only_the_store_holds_is_200_and_its_clash_409(
    tmp_path: Path,
) -> None:
    """After a reopen the finished job is in the store only: the enqueue finds it there
    (the server asks nothing itself) and the server answers 200 with it, 409 for another
    payload, and makes no second job."""
    config = QueueConfig(persist_path=tmp_path / "q.db", workers=1)
    body = {"task": "echo", "payload": {"n": 1}, "id": "kept-1"}
    async with trioqueue.open_queue(registry, config) as q:
        status, _, made = await call(App(q), "POST", "/jobs", body)
        assert status == 202, made
        await q.wait("kept-1")
    async with trioqueue.open_queue(registry, config) as q:
        app = App(q)
        status, _, again = await call(app, "POST", "/jobs", body)
        assert (status, again["status"], again["result"]) == (200, "completed", {"n": 1})
        status, _, clash = await call(app, "POST", "/jobs", {**body, "payload": {"n": 2}})
        assert status == 409, clash
        assert "already exists with a different payload" in clash["error"]
        assert q.metrics().enqueued == 0


def batch(*items: tuple[str, int]) -> dict[str, Any]:
    return {"jobs": [{"task": "echo", "payload": n, "id": job_id} for job_id, n in items]}


@pytest.mark.parametrize("backend", ["memory", "sqlite", "redis"])
async def test_a_batch_answer_says_which_items_it_made(
    backend: str, tmp_path: Path, queue_name: str,
) -> None:
    """``POST /jobs/batch`` says per item whether it made the job (``created``), as 202
    and 200 do for one job: a batch sent again (``enqueue --count --id`` run twice) is
    told it made nothing, a mixed one which; with a store, after a reopen, a job only the
    store holds counts as there."""
    where: dict[str, Any] = {
        "memory": {}, "sqlite": {"persist_path": tmp_path / "q.db"},
        "redis": {"redis_url": REDIS_URL, "queue_name": queue_name},
    }[backend]
    config = QueueConfig(workers=1, **where)
    with trio.fail_after(30):
        async with trioqueue.open_queue(registry, config) as q:
            app = App(q)
            status, _, made = await call(app, "POST", "/jobs/batch", batch(("a", 1), ("b", 2)))
            assert (status, made["created"]) == (202, [True, True]), made
            status, _, again = await call(app, "POST", "/jobs/batch",
                                          batch(("a", 1), ("c", 3), ("b", 2)))
            assert (status, again["created"]) == (202, [False, True, False]), again
            assert [job["id"] for job in again["jobs"]] == ["a", "c", "b"]
            assert again["jobs"][0]["created_at"] == made["jobs"][0]["created_at"]
            status, _, fresh = await call(app, "POST", "/jobs/batch",
                                          {"jobs": [{"task": "echo"}] * 3})
            assert (status, fresh["created"]) == (202, [True] * 3), fresh
            await q.wait_many(["a", "b", "c"])
            assert q.metrics().enqueued == 6
        if backend != "sqlite":
            return
        async with trioqueue.open_queue(registry, config) as q:
            status, _, later = await call(App(q), "POST", "/jobs/batch",
                                          batch(("b", 2), ("d", 4)))
            assert (status, later["created"]) == (202, [False, True]), later
            assert later["jobs"][0]["status"] == "completed"


async def test_two_redis_servers_posting_one_batch_at_once_are_told_each_job_once(
    queue_name: str,
) -> None:
    """Ten copies of one batch of new ids, at once, through two servers on one Redis
    queue: each job is told made to exactly one request."""
    body = batch(*[(f"b-{i}", i) for i in range(10)])
    with trio.fail_after(30):
        async with trioqueue.open_queue(registry, on_redis(queue_name)) as a, \
                trioqueue.open_queue(registry, on_redis(queue_name)) as b:
            apps = (App(a), App(b))
            answers: list[list[bool]] = []

            async def post(app: App) -> None:
                status, _, answer = await call(app, "POST", "/jobs/batch", body)
                assert status == 202, answer
                answers.append(answer["created"])

            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(post, apps[i % 2])
    assert [sum(told) for told in zip(*answers, strict=True)] == [1] * 10, answers
