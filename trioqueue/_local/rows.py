"""A job record as a row of the SQLite store, in the flat form the writer takes."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from .._job import JobStatus
from .._record import JobRecord

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
        extend((
            rec.id, rec.task, rec.payload_json, rec.priority, _STATUS[rec.status],
            rec.attempts, rec.max_retries,
            nan if timeout is None else timeout,
            rec.created_at,
            nan if scheduled_for is None else scheduled_for,
            nan if started_at is None else started_at,
            nan if finished_at is None else finished_at,
            "" if result is None else rec.result_json or dumps(result),
            rec.error or "",
            rec.traceback or "",
            "" if progress is None else dumps(progress),
        ))
    return tuple(values)
