"""What a row of the SQLite store cannot hold, and what other programs can leave in one.

- A row over SQLite's length limit (1,000,000,000 bytes by default; the whole row
  counts) failed the write of every job with it, and, since it stayed to be written, of
  every write after it: the queue refused every job until the process ended, ``close``
  failed, and no error named the job.  Now the row is written without its largest
  columns (the error column says which), and a payload that could not fit is refused
  at enqueue.  The tests lower the limit on the store's writer (``LENGTH_LIMIT``) so
  that a megabyte reaches it.
- Text that is not UTF-8 (``CAST(X'FF' AS TEXT)`` from another program) made
  ``open_queue`` or every ``list_jobs`` fail; such a row is now named and left alone,
  as the other unreadable rows are (test_store_unreadable.py).
- ``cancel`` and ``retry`` whose write failed raised the store's error alone, though the
  change had been made in memory: the error now says what became of the job.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio

import trioqueue
from tests.sqlite_util import sqlite_at
from trioqueue import InvalidJob, InvalidTransition, JobStatus, QueueConfig, StoreError
from trioqueue.testing import SqliteStore, check_json, sqlite_store
from trioqueue.testing import reads as reads_module
from trioqueue.testing import snapshot as persistence_module

LIMIT = 1_000_000
"""The writer's length limit in these tests (bytes a row may take)."""
ROOM = LIMIT - 4096
"""The most bytes a payload may take as JSON under it."""

registry = trioqueue.TaskRegistry()
started: dict[str, trio.Event] = {}


@registry.task
async def echo(job: trioqueue.Job) -> Any:
    return job.payload


@registry.task(max_retries=0)
async def produce(job: trioqueue.Job) -> str:
    return "x" * int(job.payload)


@registry.task(max_retries=0)
async def shout(job: trioqueue.Job) -> None:
    raise ValueError("e" * job.payload)


@registry.task(max_retries=0)
async def chained(job: trioqueue.Job) -> None:
    raise RuntimeError("boom") from ValueError("e" * job.payload)


@registry.task
async def park(job: trioqueue.Job) -> None:
    started[job.id].set()
    await trio.sleep_forever()


@registry.task(max_retries=0)
async def boom(job: trioqueue.Job) -> None:
    raise RuntimeError("boom")


def cfg(db: Path, **kw: Any) -> QueueConfig:
    kw.setdefault("flush_interval", 0.01)
    kw.setdefault("shutdown_timeout", 0.05)
    return QueueConfig(persist_path=db, **kw)


def stored(db: Path, job_id: str) -> tuple[Any, ...]:
    with sqlite_at(db) as conn:
        row = conn.execute(
            "SELECT status, length(payload), result, error, traceback FROM jobs WHERE id = ?",
            (job_id,)).fetchone()
    assert row is not None, job_id
    return tuple(row)


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.fixture
def limited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "LENGTH_LIMIT", LIMIT)


# ---------------------------------------------------------------------- rows past the limit

@pytest.mark.usefixtures("limited")
@pytest.mark.parametrize(("task", "payload", "status", "why"), [
    # A result of 1.2 MB: the value alone passes the limit.
    ("produce", 1_200_000, "completed", "result: 1,200,002 bytes"),
    # A payload and a result of 600 KB each: neither does, the row does.
    ("echo", "x" * 600_000, "completed", "result: 600,002 bytes"),
    # A message of 1.2 MB: the traceback holds it too, and both go (the larger first).
    ("shout", 1_200_000, "failed", "traceback: 1,200,"),
])
async def test_a_row_past_the_length_limit_is_written_without_its_largest_columns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, task: str, payload: Any, status: str,
    why: str,
) -> None:
    db = tmp_path / "q.db"
    with trio.fail_after(30):
        async with trioqueue.open_queue(registry, cfg(db)) as q:
            await q.enqueue(task, payload, job_id="big")  # committed ("sync")
            assert (await q.wait("big")).status.value == status
            for i in range(3):  # each commits: the writer goes on past the row
                await q.enqueue("echo", i, job_id=f"after{i}")
            assert q.unavailable is None
            assert (await q.wait("after2")).result == 2
    # Stored as it ended, less what could not be written; the error column says why.
    row = stored(db, "big")
    assert row[:3] == (status, len(check_json("payload", payload)), None)
    error = row[3]
    assert isinstance(error, str)
    suffix = f"(the row would pass the store's length limit of {LIMIT:,} bytes)"
    assert row[4] is None  # (no traceback, or left out)
    if status == "completed":
        assert error == f"StoreError: not stored: {why} {suffix}"
    else:  # the traceback first, then the error itself: the error column holds only why
        assert error.startswith(f"StoreError: not stored: {why}")
        assert "; error: 1,200,012 bytes " in error
        assert error.endswith(suffix)
    logged = [e for e in errors(caplog) if "job big " in e]
    assert logged == [f"trioqueue: job big (task {task}): {error.removeprefix('StoreError: ')}; "
                      "written without it"]
    async with trioqueue.open_queue(registry, cfg(db)) as q:
        job = await q.get("big")
        assert (job.status.value, job.result, job.error) == (status, None, error)
        assert [(await q.get(f"after{i}")).result for i in range(3)] == [0, 1, 2]


@pytest.mark.usefixtures("limited")
async def test_a_failed_job_keeps_its_error_when_only_its_traceback_is_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The error of a failed job fits; its traceback (the message of its cause, here)
    does not: the error column holds the job's error, then why its traceback is not."""
    db = tmp_path / "q.db"
    with trio.fail_after(30):
        async with trioqueue.open_queue(registry, cfg(db)) as q:
            job = await q.wait((await q.enqueue("chained", LIMIT, job_id="c")).id)
            assert job.error == "RuntimeError: boom"
            assert len(job.traceback or "") > LIMIT
    row = stored(db, "c")
    why = (f"not stored: traceback: {len(job.traceback or ''):,} bytes (the row would pass "
           f"the store's length limit of {LIMIT:,} bytes)")
    assert row[3:] == (f"RuntimeError: boom; StoreError: {why}", None)
    assert errors(caplog) == [f"trioqueue: job c (task chained): {why}; written without it"]


@pytest.mark.usefixtures("limited")
async def test_a_payload_too_long_for_a_row_is_refused_before_it_is_accepted(
    tmp_path: Path
) -> None:
    db = tmp_path / "q.db"
    told = (f"payload: {ROOM + 1:,} bytes as JSON, more than the store {db} takes "
            f"({ROOM:,}: SQLite's length limit of {LIMIT:,} bytes a row, less 4,096 for the "
            "rest of the job)")
    too_long = "x" * (ROOM - 1)  # its JSON: two quotes more
    async with trioqueue.open_queue(registry, cfg(db)) as q:
        with pytest.raises(InvalidJob) as info:
            await q.enqueue("echo", too_long, job_id="no1")
        assert str(info.value) == told
        with pytest.raises(InvalidJob) as info:
            q.enqueue_nowait("echo", too_long, job_id="no2", delay=60)
        assert str(info.value) == told
        with pytest.raises(InvalidJob) as info:
            await q.enqueue_many("echo", ["small", too_long])
        assert str(info.value) == f"payloads[1]: {told.removeprefix('payload: ')}"
        with pytest.raises(InvalidJob) as info:
            q.enqueue_many_nowait("echo", [too_long])
        assert str(info.value) == f"payloads[0]: {told.removeprefix('payload: ')}"
        with pytest.raises(InvalidJob) as info:
            await q.enqueue_batch([trioqueue.BatchItem("echo", "small"),
                                   trioqueue.BatchItem("echo", too_long)])
        assert str(info.value) == f"jobs[1].{told}"
        assert q.metrics().enqueued == 0
        for job_id in ("no1", "no2"):
            with pytest.raises(trioqueue.JobNotFound):
                await q.get(job_id)
        # One byte less fits: stored, run, its result (as large) left out of its row.
        await q.enqueue("echo", too_long[1:], job_id="yes")
        assert (await q.wait("yes")).result == too_long[1:]
    assert stored(db, "yes")[:3] == ("completed", ROOM, None)
    # Memory mode has no such limit.
    async with trioqueue.open_queue(registry, QueueConfig()) as q:
        assert (await q.enqueue("echo", too_long * 2)).payload == too_long * 2


@pytest.mark.usefixtures("limited")
async def test_a_row_past_the_limit_even_without_them_is_left_out_and_the_rest_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A task name of kilobytes beside a payload near the limit: no column the row can
    do without makes it fit.  That job is not stored (logged); the others are."""
    long_named = trioqueue.TaskRegistry()
    name = "t" * 8000

    @long_named.task(name=name)
    async def slow(job: trioqueue.Job) -> None:
        await trio.sleep_forever()

    @long_named.task(name="echo")
    async def echo2(job: trioqueue.Job) -> Any:
        return job.payload

    db = tmp_path / "q.db"
    with trio.fail_after(30):
        async with trioqueue.open_queue(long_named, cfg(db, durability="batch")) as q:
            q.enqueue_nowait(name, "x" * (ROOM - 2), job_id="lost", delay=3600)
            q.enqueue_nowait("echo", 1, job_id="kept")
            await q.flush()
            await q.enqueue("echo", 2, job_id="later")
            await q.flush()
            assert q.unavailable is None
    with sqlite_at(db) as conn:
        assert [r[0] for r in conn.execute("SELECT id FROM jobs ORDER BY id")] == [
            "kept", "later"]
    assert errors(caplog) == [
        f"trioqueue: job lost (task {name[:200]}): its row takes 1,004,173 bytes without its "
        f"result, error, traceback and progress, past {db}'s length limit of {LIMIT:,} bytes: "
        "not stored"]


async def test_the_writer_takes_sqlites_own_limit_by_default(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "q.db")
    try:
        assert store.max_length == 1_000_000_000
    finally:
        store.close()


# ---------------------------------------------------------------------- text that is not UTF-8

async def fill(db: Path, n: int) -> list[str]:
    """``n`` echo jobs left queued in ``db``, and a failed job ``dead``."""
    async with trioqueue.open_queue(registry, cfg(db)) as q:
        ids = [(await q.enqueue("echo", {"n": i}, delay=3600)).id for i in range(n)]
        await q.enqueue("boom", job_id="dead")
        await q.wait("dead")
    with sqlite_at(db) as conn:
        conn.execute("UPDATE jobs SET status = 'queued', scheduled_for = NULL "
                     "WHERE status = 'scheduled'")
    return ids


def raw(db: Path) -> list[tuple[Any, ...]]:
    """Every row, its text as stored (hex)."""
    with sqlite_at(db) as conn:
        return conn.execute("SELECT rowid, hex(id), hex(task), hex(payload), status, "
                            "hex(error) FROM jobs ORDER BY rowid").fetchall()


async def test_rows_whose_text_is_not_utf8_are_named_and_left_as_they_are(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "q.db"
    ids = await fill(db, 5)
    with sqlite_at(db) as conn:
        for job_id, column, text in ((ids[0], "payload", "22FF22"), (ids[1], "task", "FF"),
                                     (ids[2], "id", "62FF")):
            conn.execute(f"UPDATE jobs SET {column} = CAST(X'{text}' AS TEXT) WHERE id = ?",
                         (job_id,))
        # One found running (read at open apart from the backlog).
        conn.execute("UPDATE jobs SET status = 'processing', attempts = 1, "
                     "payload = CAST(X'FF' AS TEXT) WHERE id = ?", (ids[3],))
        conn.execute("UPDATE jobs SET error = CAST(X'E0' AS TEXT) WHERE id = 'dead'")
    before = raw(db)
    with trio.fail_after(10):
        async with trioqueue.open_queue(registry, cfg(db)) as q:
            assert (await q.wait(ids[4])).result == {"n": 4}
            opened = errors(caplog)
            assert opened == [
                f"{db}: job {ids[3]!r}: payload: not UTF-8 text ('utf-8' codec can't decode "
                "byte 0xff in position 0: invalid start byte); left in the store untouched",
                f"{db}: job {ids[0]!r}: payload: not UTF-8 text ('utf-8' codec can't decode "
                "byte 0xff in position 1: invalid start byte); left in the store untouched",
                f"{db}: job {ids[1]!r}: task: not UTF-8 text (b'\\xff'); left in the store "
                "untouched",
                f"{db}: job b'b\\xff': id: not UTF-8 text (b'b\\xff'); left in the store "
                "untouched",
            ]
            with pytest.raises(StoreError, match=rf"{db}: job '{ids[0]}': payload: not UTF-8"):
                await q.get(ids[0])
            with pytest.raises(StoreError, match=rf"{db}: job 'dead': error: not UTF-8 text "
                                                 r"\(b'\\xe0'\)"):
                await q.get("dead")
            caplog.clear()
            listed = await q.list_jobs()
            assert {j.id for j in listed} == {ids[4]}
            assert len(errors(caplog)) == 5
            assert all(e.endswith("; not listed") for e in errors(caplog))
    assert [r for r in raw(db) if r[1] != ids[4].encode().hex().upper()] == [
        r for r in before if r[1] != ids[4].encode().hex().upper()]


async def every_page(q: trioqueue.JobQueue, limit: int) -> list[str]:
    """The ids of every page of ``q.list_page(limit=limit)``, in order (20 pages at most)."""
    seen: list[str] = []
    before: str | None = None
    for _ in range(20):
        page = await q.list_page(limit=limit, before=before)
        seen += [j.id for j in page.jobs]
        before = page.next
        if before is None:
            return seen
    raise AssertionError(f"no last page after 20: {seen}")


async def test_pages_go_on_past_a_row_whose_id_is_not_utf8(tmp_path: Path) -> None:
    """A page's ``next`` names the last job read; when that row's id is not text, the
    last row before it that has one: the rows after are read again, not skipped."""
    db = tmp_path / "q.db"
    ids = await fill(db, 6)
    with sqlite_at(db) as conn:
        for job_id in (ids[1], ids[2], ids[4]):
            conn.execute("UPDATE jobs SET id = CAST(id || X'FF' AS TEXT) WHERE id = ?",
                         (job_id,))
    with trio.fail_after(10):
        async with trioqueue.open_queue(registry, cfg(db)) as q:
            await q.wait(ids[5])
            # ids[4], [2] and [1] left out
            assert await every_page(q, 2) == ["dead", ids[5], ids[3], ids[0]]


async def test_a_page_whose_rows_past_the_byte_budget_have_no_text_id_reads_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A page cut by the byte budget with no text id to end on read again, twice as many
    rows, but within the same bytes: the same rows, until the count no longer fitted
    SQLite's integer (``OverflowError``, a 500).  The bytes grow with the rows."""
    monkeypatch.setattr(reads_module, "LIST_READ_BYTES", 1000)
    db = tmp_path / "q.db"
    ids = await fill(db, 3)
    with sqlite_at(db) as conn:
        conn.execute("UPDATE jobs SET id = CAST(id || X'FF' AS TEXT), payload = ? "
                     "WHERE id = ?", ('"' + "x" * 5000 + '"', ids[2]))
    with trio.fail_after(10):
        async with trioqueue.open_queue(registry, cfg(db)) as q:
            assert await every_page(q, 1) == ["dead", ids[1], ids[0]]


async def test_a_prune_that_meets_an_id_that_is_not_utf8_goes_on(tmp_path: Path) -> None:
    """The prune's ``RETURNING id`` failed part way on such an id, and left its statement,
    and a transaction, open on the writer: retention stopped, and every later write,
    ``sync`` enqueues acknowledged included, was never committed."""
    db = tmp_path / "q.db"
    async with trioqueue.open_queue(registry, cfg(db)) as q:
        for i in range(3):
            await q.wait((await q.enqueue("echo", i, job_id=f"old{i}")).id)
    with sqlite_at(db) as conn:
        conn.execute("UPDATE jobs SET finished_at = finished_at - 10000")
        conn.execute("UPDATE jobs SET id = CAST(id || X'FF' AS TEXT) WHERE id = 'old1'")
    with trio.fail_after(20):
        async with trioqueue.open_queue(registry, cfg(db, retention=2.0,
                                                      durability="sync")) as q:
            while raw(db):  # noqa: ASYNC110 - another connection: pruned, all three
                await trio.sleep(0.05)
            await q.enqueue("echo", job_id="after", delay=3600)  # returns once committed
            assert stored(db, "after")[0] == "scheduled"


# ---------------------------------------------------------------------- failed writes

@pytest.fixture
def disk_full(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """``full[0] = True``: every write of the store fails as on a full disk, until
    ``full[0] = False``."""
    full = [False]
    write = SqliteStore.write_values

    def failing(self: SqliteStore, values: Any) -> None:
        if full[0]:
            raise StoreError(f"{self.path}: cannot write {len(values) // 16} job(s): disk "
                             "full (database or disk is full)")
        write(self, values)

    monkeypatch.setattr(SqliteStore, "write_values", failing)
    monkeypatch.setattr(persistence_module, "RETRY_FAILED_WRITE", 0.01)
    return full


async def test_a_cancel_whose_write_fails_says_what_became_of_the_job(
    tmp_path: Path, disk_full: list[bool]
) -> None:
    db = tmp_path / "q.db"
    started["long"] = trio.Event()
    with trio.fail_after(10):
        async with trioqueue.open_queue(registry, cfg(db, workers=1)) as q:
            await q.enqueue("park", job_id="long")
            await started["long"].wait()
            await q.flush()
            disk_full[0] = True
            with pytest.raises(StoreError) as info:
                await q.cancel("long")
            assert str(info.value) == (
                f"{db}: cannot write 1 job(s): disk full (database or disk is full); job "
                "'long' is cancelled in this process (its handler was stopped) but not yet in "
                "the store: if the process ends before a write succeeds, after a restart it "
                "runs again")
            assert stored(db, "long")[0] == "processing"  # as the error says
            assert (await q.get("long")).status is JobStatus.CANCELLED
            with pytest.raises(InvalidTransition):
                await q.cancel("long")
            disk_full[0] = False
            await q.flush()  # the change was kept, and is written once writes work
            assert stored(db, "long")[0] == "cancelled"


async def test_a_retry_whose_write_fails_says_what_became_of_the_job(
    tmp_path: Path, disk_full: list[bool]
) -> None:
    db = tmp_path / "q.db"
    with trio.fail_after(10):
        async with trioqueue.open_queue(registry, cfg(db, workers=1)) as q:
            await q.enqueue("boom", job_id="x", delay=3600)
            await q.cancel("x")
            await q.flush()
            disk_full[0] = True
            with pytest.raises(StoreError) as info:
                await q.retry("x")
            assert str(info.value) == (
                f"{db}: cannot write 1 job(s): disk full (database or disk is full); job 'x' "
                "is queued again in this process but not yet in the store: if the process "
                "ends before a write succeeds, after a restart the retry is undone")
            assert stored(db, "x")[0] == "cancelled"
            assert (await q.wait("x")).status is JobStatus.FAILED  # it ran here
            disk_full[0] = False
            await q.flush()
            assert stored(db, "x")[0] == "failed"
