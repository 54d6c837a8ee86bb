"""Rows of a SQLite store that something other than trioqueue wrote: a queue opens, runs
the rest, names each row it cannot read (file, job, column) and leaves it as it is.

SQLite keeps whatever a column is given, so a row edited by hand or by another program
can hold text where trioqueue writes a number, or a payload that is not JSON.  Before,
one such row made ``open_queue`` fail with a bare ``JSONDecodeError`` (or a
``TypeError`` deep in recovery), naming neither the file nor the job.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio

import trioqueue
from tests.sqlite_util import sqlite_at
from trioqueue import JobStatus, QueueConfig, StoreError

registry = trioqueue.TaskRegistry()


@registry.task
async def echo(job: trioqueue.Job) -> Any:
    return job.payload


def cfg(db: Path, **kw: Any) -> QueueConfig:
    return QueueConfig(persist_path=db, flush_interval=0.01, **kw)


def rows(db: Path) -> dict[str, tuple[Any, ...]]:
    with sqlite_at(db) as conn:
        return {r[0]: r for r in conn.execute("SELECT * FROM jobs")}


async def fill(db: Path, n: int) -> list[str]:
    """``n`` echo jobs left queued in ``db`` (enqueued delayed, then made due)."""
    async with trioqueue.open_queue(registry, cfg(db)) as q:
        ids = [(await q.enqueue("echo", {"n": i}, delay=3600)).id for i in range(n)]
    with sqlite_at(db) as conn:
        conn.execute("UPDATE jobs SET status = 'queued', scheduled_for = NULL")
    return ids


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_rows_that_cannot_be_read_are_named_and_left_as_they_are(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "q.db"
    ids = await fill(db, 6)
    edits = [("payload", "{not json"), ("attempts", "two"), ("created_at", "yesterday"),
             ("status", "paused"), ("priority", 7)]
    with sqlite_at(db) as conn:
        for job_id, (column, value) in zip(ids, edits, strict=False):
            conn.execute(f"UPDATE jobs SET {column} = ? WHERE id = ?", (value, job_id))
    edited = {job_id: row for job_id, row in rows(db).items() if job_id != ids[5]}
    with trio.fail_after(10):
        async with trioqueue.open_queue(registry, cfg(db)) as q:
            assert (await q.wait(ids[5])).result == {"n": 5}
            # Recovery reads the queued rows: the first three were queued.
            assert errors(caplog) == [
                f"{db}: job {ids[0]!r}: payload: not JSON (Expecting property name enclosed "
                "in double quotes: line 1 column 2 (char 1)); left in the store untouched",
                f"{db}: job {ids[1]!r}: attempts: unexpected value 'two'; left in the "
                "store untouched",
                f"{db}: job {ids[2]!r}: created_at: unexpected value 'yesterday'; left in "
                "the store untouched",
            ]
            for job_id, (column, _) in zip(ids, edits, strict=False):
                with pytest.raises(StoreError, match=rf"{db}: job '{job_id}': {column}: "):
                    await q.get(job_id)
            caplog.clear()
            listed = await q.list_jobs()
            assert [j.id for j in listed] == [ids[5]]
            assert len(errors(caplog)) == 5
            assert all(e.endswith("; not listed") for e in errors(caplog))
            with pytest.raises(StoreError, match=f"job '{ids[0]}': payload"):
                await q.enqueue("echo", job_id=ids[0])
            assert q.metrics().completed == 1
    assert {job_id: row for job_id, row in rows(db).items() if job_id != ids[5]} == edited
    assert rows(db)[ids[5]][4] == JobStatus.COMPLETED.value


async def test_past_twenty_unreadable_rows_one_line_says_there_are_more(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "q.db"
    ids = await fill(db, 25)
    with sqlite_at(db) as conn:
        conn.execute("UPDATE jobs SET payload = '{' WHERE id != ?", (ids[-1],))
    with trio.fail_after(10):
        async with trioqueue.open_queue(registry, cfg(db)) as q:
            assert (await q.wait(ids[-1])).result == {"n": 24}
    logged = errors(caplog)
    assert len(logged) == 21
    assert all(": payload: not JSON" in line for line in logged[:20])
    assert logged[20] == (f"{db}: more rows that cannot be read are left in the store "
                          "untouched, not named each")
