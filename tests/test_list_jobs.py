"""Listing with a task filter and paging: where the cursor job is gone, and a store's
query plan."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
import trio

import trioqueue
from tests.test_server_app import call
from trioqueue import JobStatus, QueueConfig, TaskRegistry
from trioqueue.server import App
from trioqueue.testing import SqliteStore


def registry() -> TaskRegistry:
    reg = TaskRegistry()

    @reg.task
    async def echo(job: trioqueue.Job) -> object:
        return job.payload

    return reg


async def walk(q: trioqueue.JobQueue, **kwargs: object) -> list[str]:
    seen: list[str] = []
    before = None
    while True:
        page = await q.list_page(limit=4, before=before, **kwargs)  # type: ignore[arg-type]
        seen += [j.id for j in page.jobs]
        if page.next is None:
            return seen
        before = page.next


async def test_memory_paging_goes_on_when_the_cursor_job_aged_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trioqueue.open_queue(registry(), QueueConfig(finished_cache=5, workers=1)) as q:
        ids = []
        for i in range(12):
            job = await q.enqueue("echo", i)
            ids.append(job.id)
            await q.wait(job.id)
        held = await q.list_jobs(limit=100)
        assert len(held) < 12  # the oldest aged out
        gone = ids[0]
        assert gone not in {j.id for j in held}
        # A cursor the queue no longer holds: generated ids sort by creation time.
        cursor = ids[len(ids) - len(held) - 1]
        assert cursor not in {j.id for j in held}
        assert (await q.list_page(before=cursor)).jobs == []
        assert [j.id for j in (await q.list_page(before=ids[-1])).jobs] == \
            [j.id for j in held[1:]]
        assert await walk(q) == [j.id for j in held]


async def test_store_pages_across_a_reopen_and_past_a_pruned_cursor(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    config = QueueConfig(persist_path=path, workers=1)
    ids: list[str] = []
    async with trioqueue.open_queue(registry(), config) as q:
        for i in range(9):
            job = await q.enqueue("echo", i, job_id=None)
            ids.append(job.id)
        for job_id in ids:
            await q.wait(job_id)
    async with trioqueue.open_queue(registry(), config) as q:
        assert await walk(q, task="echo") == ids[::-1]
        assert await walk(q, status=JobStatus.COMPLETED) == ids[::-1]
        page = await q.list_page(limit=3, before=ids[5])
        assert ([j.id for j in page.jobs], page.next) == (ids[4:1:-1], ids[2])
    # The cursor job is pruned from the store: ids made before it still follow.
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("DELETE FROM jobs WHERE id = ?", (ids[5],))
    store = SqliteStore.open(path)
    try:
        assert [row[0] for row in store.newest(None, 3, "echo", ids[5])] == ids[4:1:-1]
        assert [row[0] for row in store.newest("completed", 100, None, ids[1])] == [ids[0]]
        # The rowid bound and the order come from the table's own b-tree (no sort).
        with contextlib.closing(sqlite3.connect(path)) as conn:
            plan = conn.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE rowid < ? AND task = ? "
                "ORDER BY rowid DESC LIMIT ?", (5, "echo", 3)).fetchall()
        assert not any("TEMP B-TREE" in str(row) for row in plan), plan
    finally:
        store.close()


async def test_a_page_of_large_jobs_stops_at_its_byte_budgets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A page of 1,000 jobs with 1 MiB payloads would be a gigabyte read from the file and
    encoded while the event loop waits: a listing stops at a budget of bytes (the store's
    reading, and the server's answer), its ``next`` where it stopped, and the pages
    still walk every job once.  The budgets are lowered here to a few jobs' worth."""
    from trioqueue.testing import json_out, reads

    # A job here: 2,004 bytes of payload and result in the file, ~2,300 of JSON.
    monkeypatch.setattr(reads, "LIST_READ_BYTES", 7_000)
    monkeypatch.setattr(json_out, "LIST_MAX_BYTES", 5_000)
    config = QueueConfig(persist_path=tmp_path / "big.db", workers=1, result_ttl=0.0)
    async with trioqueue.open_queue(registry(), config) as q:
        jobs = [await q.enqueue("echo", "x" * 1000) for _ in range(9)]
        for job in jobs:
            await q.wait(job.id)
        newest_first = [j.id for j in reversed(jobs)]
        page = await q.list_page(limit=100)  # from the store: 4 rows pass 7,000 bytes
        assert [j.id for j in page.jobs] == newest_first[:4]
        assert page.next == newest_first[3]
        assert await walk(q) == newest_first
        app = App(q)
        seen: list[str] = []
        query = "limit=100"
        while True:
            status, _, body = await call(app, "GET", "/jobs", query=query)
            assert status == 200
            assert len(body["jobs"]) <= 2  # the answer's budget
            seen += [j["id"] for j in body["jobs"]]
            if body["next"] is None:
                break
            query = f"limit=100&before={body['next']}"
        assert seen == newest_first


async def test_listings_read_the_file_two_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each listing holds up to 16 MiB of rows while it reads: ten at once read two at a
    time (300 clients asking for pages of big jobs held a read each: 899 MB)."""
    import threading
    import time

    from trioqueue.testing import reads

    lock = threading.Lock()
    now = peak = 0
    newest = SqliteStore.newest

    def counted(self: SqliteStore, *args: object) -> object:
        nonlocal now, peak
        with lock:
            now += 1
            peak = max(peak, now)
        try:
            time.sleep(0.02)  # (in the reading thread: the others may start meanwhile)
            return newest(self, *args)  # type: ignore[arg-type]
        finally:
            with lock:
                now -= 1

    monkeypatch.setattr(SqliteStore, "newest", counted)
    config = QueueConfig(persist_path=tmp_path / "lists.db", workers=1)
    async with trioqueue.open_queue(registry(), config) as q:
        for _ in range(3):
            await q.enqueue("echo", "x", delay=3600)
        pages: list[int] = []

        async def list_one() -> None:
            pages.append(len((await q.list_page(limit=10)).jobs))

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(list_one)
    assert pages == [3] * 10
    assert 1 <= peak <= reads.LIST_READS == 2  # (without the bound: up to 10)
