"""Listing jobs: the task filter and paging with ``before`` and ``next``."""

from __future__ import annotations

import pytest
from trio.testing import MockClock

from trioqueue import InvalidJob, JobStatus

from .conftest import Backend, Harness


async def test_list_page_by_task_and_before_walks_every_job_once(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry, workers=1) as q:
        echoes = [f"e{i}" for i in range(7)]
        for i, job_id in enumerate(echoes):
            await q.enqueue("echo", i, job_id=job_id)
            await q.enqueue("tuned", i, job_id=f"t{i}")
        for job_id in echoes:
            await q.wait(job_id)
        await q.wait("t6")

        first = await q.list_page(task="echo", limit=3)
        assert [j.id for j in first.jobs] == ["e6", "e5", "e4"]
        assert first.next == "e4"
        seen: list[str] = []
        before = None
        while True:
            page = await q.list_page(task="echo", limit=3, before=before)
            assert {j.task for j in page.jobs} == {"echo"}
            seen += [j.id for j in page.jobs]
            if page.next is None:
                break
            before = page.next
        assert seen == echoes[::-1]
        # Status and task together; list_jobs gives the same jobs as a list.
        done = await q.list_page(status=JobStatus.COMPLETED, task="tuned", limit=10)
        assert [j.id for j in done.jobs] == [f"t{i}" for i in range(6, -1, -1)]
        assert done.next is None
        assert [j.id for j in await q.list_jobs("completed", 2, task="tuned", before="t3")
                ] == ["t2", "t1"]
        # Everything, newest first, before a job of another task.
        everything = await q.list_page(before="e1", limit=100)
        assert [j.id for j in everything.jobs] == ["t0", "e0"]
        assert everything.next is None
        assert (await q.list_page(before="e0")).jobs == []
        assert (await q.list_page(task="no-such-task")).jobs == []
        # A lone surrogate (JSON's "\ud800") names no task; a store or Redis could not
        # even be asked for it (not UTF-8).
        assert (await q.list_page(task="\ud800", status="completed")).jobs == []


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"before": ""}, "before"),
    ({"before": "a b"}, "before"),
    ({"before": 7}, "before"),
    ({"task": 3}, "task"),
    ({"task": ""}, "task"),  # (Redis read it as no filter and listed every job)
    ({"limit": 0}, "limit"),
])
async def test_list_page_refuses_bad_arguments_naming_them(
    backend: Backend, clock: MockClock | None, h: Harness, kwargs: dict[str, object],
    field: str,
) -> None:
    async with backend.open(h.registry) as q:
        with pytest.raises(InvalidJob, match=rf"^{field}:"):
            await q.list_page(**kwargs)  # type: ignore[arg-type]


async def test_finished_jobs_list_by_creation_whatever_order_they_ended_in(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    """A status listing of finished jobs is newest-created first, as every listing is, and
    ``before`` a job means created before it whatever its status now (Redis listed them
    by finish time, so ``before`` skipped or repeated jobs, and a cursor that had changed
    status, such as a dead letter retried while paging, ended the listing: "no more")."""
    async with backend.open(h.registry, workers=3) as q:
        for name in "abc":
            await q.enqueue("gated", name, job_id=name)
        for name in "abc":
            await h.entered(name)
        for name in "cba":  # they end in the other order
            h.open_gate(name)
            await q.wait(name)
        assert [j.id for j in await q.list_jobs("completed")] == ["c", "b", "a"]
        assert [j.id for j in await q.list_jobs("completed", before="b")] == ["a"]
        seen, before = [], None
        while True:
            page = await q.list_page("completed", 1, before=before)
            seen += [j.id for j in page.jobs]
            if page.next is None:
                break
            before = page.next
        assert seen == ["c", "b", "a"]

        for i in range(1, 6):
            await q.enqueue("fail", i, job_id=f"f{i}", max_retries=0)
            await q.wait(f"f{i}")
        assert [j.id for j in await q.list_jobs("failed", before="f3")] == ["f2", "f1"]
        # A cursor in another status: a job created between.
        assert [j.id for j in await q.list_jobs("completed", before="f1")] == ["c", "b", "a"]
        assert [j.id for j in await q.list_jobs("failed", before="c")] == []
        first = await q.list_page("failed", 2)
        assert ([j.id for j in first.jobs], first.next) == (["f5", "f4"], "f4")
        await q.retry("f4")  # the cursor leaves the failed jobs (and may come back)
        second = await q.list_page("failed", 2, before=first.next)
        assert [j.id for j in second.jobs] == ["f3", "f2"]
