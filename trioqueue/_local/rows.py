"""A job record as a row of the SQLite store, in the flat form the writer takes, and a
stored row back as a record, checked."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .._exceptions import InvalidJob, StoreError
from .._job import JobStatus
from .._record import JobRecord
from .._registry import TaskSpec
from .._store.sqlite import COLUMNS, RowTooBig, SqliteStore

log = logging.getLogger("trioqueue")

_STATUS = {s: s.value for s in JobStatus}

_NAN = math.nan


def rows_of(recs: Iterable[JobRecord]) -> tuple[Any, ...]:
    """The rows of ``recs``, flat, as :meth:`SqliteStore.write_values` takes them.

    A function of its own so that the list it builds is gone when it returns: a local of
    :meth:`Persistence.write_batch` lived until the write ended, and every collection
    of the cyclic GC set off meanwhile by the loop's allocations walked its ~16 items a
    row (callgrind: ~500 instructions a job in ``list_traverse``)."""
    values: list[Any] = []
    extend = values.extend
    nan = _NAN
    dumps = json.dumps
    # Each record's row, NULLs as NaN (the REAL columns) and "" (result, error,
    # traceback and progress, never empty when set): sqlite3 binds an exact float or
    # str in C, but each None takes its adapter detour.  Inline: no call per row.
    for rec in recs:
        result = rec.result
        timeout = rec.timeout
        scheduled_for = rec.scheduled_for
        started_at = rec.started_at
        finished_at = rec.finished_at
        progress = rec.progress
        error = rec.error or ""
        try:  # (free in CPython 3.11+ until something raises)
            result_text = "" if result is None else rec.result_json or dumps(result)
            progress_text = "" if progress is None else dumps(progress)
        except (TypeError, ValueError, RecursionError):
            result_text, progress_text, error = _without_unwritable(rec)
        extend((
            rec.id, rec.task, rec.payload_json, rec.priority, _STATUS[rec.status],
            rec.attempts, rec.max_retries,
            nan if timeout is None else timeout,
            rec.created_at,
            nan if scheduled_for is None else scheduled_for,
            nan if started_at is None else started_at,
            nan if finished_at is None else finished_at,
            result_text,
            error,
            rec.traceback or "",
            progress_text,
        ))
    return tuple(values)


def _without_unwritable(rec: JobRecord) -> tuple[str, str, str]:
    """The result, progress and error columns of a record whose result or progress this
    store cannot write as JSON (the workers check a result, so none should get here: a
    defence, not a path).  That column is written empty and the error column says why,
    the rest of the row as it is: one job's value must not fail the write of every job
    with it (the writer would stop, and the queue with it, or the record would stay
    dirty and fail every batch after)."""
    lost: list[str] = []

    def encoded(column: str, value: Any) -> str:
        if value is None:
            return ""
        try:
            return json.dumps(value)
        except (TypeError, ValueError, RecursionError) as exc:
            lost.append(f"{column}: not JSON-serializable ({str(exc)[:200]})")
            return ""

    result = encoded("result", rec.result) if rec.result_json is None else rec.result_json
    progress = encoded("progress", rec.progress)
    why = "; ".join(lost) or "unwritable value"
    log.error("trioqueue: job %s (task %s): %s; written without it", rec.id, rec.task, why)
    return result, progress, rec.error or f"StoreError: not stored: {why}"


ROW_ROOM = 4096
"""Bytes of a row kept for all but its payload (the id, task and status, the numbers,
SQLite's record header, an error saying why a column was not written): a new job's
payload may take the store's length limit less this (:func:`payload_too_big`)."""
_WIDTH = len(COLUMNS)
_TEXT = tuple(COLUMNS.index(c) for c in ("id", "task", "payload", "status", "result",
                                          "error", "traceback", "progress"))
_ERROR = COLUMNS.index("error")
_SPARED = tuple(COLUMNS.index(c) for c in ("result", "error", "traceback", "progress"))
"""The columns a row over the length limit is written without, the largest first."""
_FIXED = 256
"""Bytes of a row besides its text, at most: SQLite's record header (a varint per
column) and the numbers (8 bytes each)."""


def write_bounded(store: SqliteStore, values: tuple[Any, ...]) -> None:
    """``store.write_values(values)``; when SQLite refuses the write because a row in it
    passes the length limit (a result of a gigabyte, say), the rows again, each bounded
    by :func:`rows_within`.  Such a row failed the write of every job with it, and kept
    failing each write after it, since it stays to be written: the queue took no more
    jobs until the process ended.  The bounding is the way out of that refusal, not a
    cost every write pays (it measures every text of every row)."""
    try:
        store.write_values(values)
    except RowTooBig:
        store.write_values(rows_within(values, store.max_length, store.path))


def rows_within(values: tuple[Any, ...], limit: int, where: object) -> tuple[Any, ...]:
    """``values`` (:func:`rows_of`'s) with every row at most ``limit`` bytes.  A row over
    it is written without its result, error, traceback or progress, the largest first,
    as many as it takes, and its error column says which and why; one still over (its
    payload, id and task alone) is left out, its job not stored.  Each is logged."""
    out: list[Any] = []
    for first in range(0, len(values), _WIDTH):
        row = list(values[first : first + _WIDTH])
        if _row_size(row) > limit and not _shrink(row, limit, where):
            continue
        out.extend(row)
    return tuple(out)


def _text_size(text: str | bytes) -> int:
    if isinstance(text, str) and not text.isascii():
        return len(text.encode("utf-8", "surrogatepass"))
    return len(text)


def _row_size(row: list[Any]) -> int:
    """What a row takes in SQLite at most (its texts in UTF-8, and :data:`_FIXED`)."""
    return _FIXED + sum(_text_size(row[c]) for c in _TEXT)


def _shrink(row: list[Any], limit: int, where: object) -> bool:
    """Empty the largest of ``row``'s :data:`_SPARED` columns until it takes at most
    ``limit`` bytes, the error column saying which were left out; False when emptying
    them all is not enough (the row is not to be written)."""
    kept = {c: row[c] for c in _SPARED}
    lost: list[str] = []
    why = ""
    while _row_size(row) > limit:
        column = max(_SPARED, key=lambda c: _text_size(kept[c]))
        if not kept[column]:
            log.error("trioqueue: job %s (task %.200s): its row takes %s bytes without its "
                      "result, error, traceback and progress, past %s's length limit of "
                      "%s bytes: not stored", row[0], row[1], f"{_row_size(row):,}", where,
                      f"{limit:,}")
            return False
        lost.append(f"{COLUMNS[column]}: {_text_size(kept[column]):,} bytes")
        kept[column] = row[column] = ""
        why = (f"not stored: {'; '.join(lost)} (the row would pass the store's length "
               f"limit of {limit:,} bytes)")
        row[_ERROR] = f"{kept[_ERROR]}; StoreError: {why}" if kept[_ERROR] else (
            f"StoreError: {why}")
    log.error("trioqueue: job %s (task %.200s): %s; written without it", row[0], row[1], why)
    return True


def payload_too_big(rec: JobRecord, limit: int, where: object) -> InvalidJob:
    """The :class:`InvalidJob` of a new job whose payload's JSON is too long for a row of
    the store at ``where``, whose length limit is ``limit`` bytes."""
    return InvalidJob(
        f"payload: {len(rec.payload_json):,} bytes as JSON, more than the store {where} "
        f"takes ({max(0, limit - ROW_ROOM):,}: SQLite's length limit of {limit:,} bytes a "
        f"row, less {ROW_ROOM:,} for the rest of the job)"
    )


_STATUS_OF = {s.value: s for s in JobStatus}
_NUMBER = (int, float)


class UnreadableRow(StoreError):
    """A stored row that is not a job as trioqueue writes it (the file was edited by
    something else): the message names the file, the job and the column."""


def record_of(row: Sequence[Any], spec_of: Callable[[str], TaskSpec | None],
              where: object) -> JobRecord:
    """The record of a stored row, each column checked: :class:`UnreadableRow` naming
    ``where`` (the file), the job and the column when one is not what trioqueue writes
    (SQLite keeps whatever a column is given).  ``spec_of``: the task's spec, or
    ``None`` for a task the registry lacks."""
    (job_id, task, payload, priority, status, attempts, max_retries, timeout, created_at,
     scheduled_for, started_at, finished_at, result, error, traceback, progress) = row[:16]
    column = "payload"
    try:
        payload_value = json.loads(payload)
        column = "result"
        result_value = None if result is None else json.loads(result)
        column = "progress"
        progress_value = None if progress is None else json.loads(progress)
    except (ValueError, TypeError) as exc:  # (JSONDecodeError is a ValueError)
        # (Text that is not UTF-8 is read as bytes, which json.loads fails to decode.)
        what = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else "not JSON"
        raise UnreadableRow(f"{where}: job {job_id!r}: {column}: {what} ({exc})") from None
    state = _STATUS_OF.get(status) if type(status) is str else None
    bad = _bad_column(job_id, task, priority, status, state, attempts, max_retries, timeout,
                      created_at, scheduled_for, started_at, finished_at, error, traceback)
    if bad is not None:
        column, value = bad
        if isinstance(value, bytes):  # text that is not UTF-8 (or a BLOB)
            raise UnreadableRow(f"{where}: job {job_id!r}: {column}: not UTF-8 text "
                                f"({value[:60]!r}{'...' if len(value) > 60 else ''})")
        raise UnreadableRow(f"{where}: job {job_id!r}: {column}: unexpected value {value!r}")
    assert state is not None
    rec = JobRecord.restored(
        job_id, task, payload_value, payload, priority, state, attempts, max_retries,
        timeout, created_at, scheduled_for, started_at, finished_at, result_value, error,
        traceback, spec_of(task),
    )
    if progress_value is not None:
        rec.progress = progress_value
    return rec


def _bad_column(job_id: Any, task: Any, priority: Any, status: Any, state: JobStatus | None,
                attempts: Any, max_retries: Any, timeout: Any, created_at: Any,
                scheduled_for: Any, started_at: Any, finished_at: Any, error: Any,
                traceback: Any) -> tuple[str, Any] | None:
    """The first column of a row that is not of the type trioqueue writes, and its value."""
    if type(job_id) is not str:
        return "id", job_id
    if type(task) is not str:
        return "task", task
    if type(priority) is not int or not 0 <= priority <= 2:
        return "priority", priority
    if state is None:
        return "status", status
    if type(attempts) is not int or attempts < 0:
        return "attempts", attempts
    if type(max_retries) is not int or max_retries < 0:
        return "max_retries", max_retries
    if type(created_at) not in _NUMBER:
        return "created_at", created_at
    for name, value in (("timeout", timeout), ("scheduled_for", scheduled_for),
                        ("started_at", started_at), ("finished_at", finished_at)):
        if value is not None and type(value) not in _NUMBER:
            return name, value
    for name, value in (("error", error), ("traceback", traceback)):
        if value is not None and type(value) is not str:
            return name, value
    return None
