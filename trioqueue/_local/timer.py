"""The timer heap: when each SCHEDULED job (a delay, a retry's backoff) comes due."""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator

import trio

from .._job import JobStatus
from .._record import JobRecord
from .._stats import Stats

SCHEDULED = JobStatus.SCHEDULED


class Timer:
    """One heap of due times.  A job rescheduled or cancelled leaves its old entry in the
    heap, made stale by :attr:`JobRecord.timer_gen`, and :meth:`due` skips it: no search.
    Counts every SCHEDULED job in ``stats.scheduled``."""

    def __init__(self, stats: Stats, *, wall_offset: float) -> None:
        self._heap: list[tuple[float, int, int, JobRecord]] = []
        self._seq = 0
        self._stats = stats
        self._wall = wall_offset
        self._wake = trio.Event()

    def schedule(self, rec: JobRecord, due_wall: float) -> None:
        """Make ``rec`` due at ``due_wall`` (seconds since the epoch)."""
        self._stats.scheduled += 1
        rec.timer_gen += 1
        self._seq += 1
        entry = (due_wall - self._wall, self._seq, rec.timer_gen, rec)
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:
            self._wake.set()

    def hold(self, rec: JobRecord) -> None:
        """Count a SCHEDULED job that waits with no timer entry (a retry at shutdown,
        when the timer has stopped: it waits in the store)."""
        self._stats.scheduled += 1

    def unschedule(self, rec: JobRecord) -> None:
        """``rec`` leaves SCHEDULED otherwise than by coming due (cancelled, withdrawn)."""
        rec.timer_gen += 1  # its heap entry is stale now
        self._stats.scheduled -= 1

    def due(self, now: float) -> Iterator[JobRecord]:
        """The jobs due at ``now`` (trio time), each taken off the timer as it is
        yielded."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, gen, rec = heapq.heappop(heap)
            if rec.status is not SCHEDULED or rec.timer_gen != gen:
                continue  # cancelled or rescheduled since
            self._stats.scheduled -= 1
            yield rec

    def next_due(self) -> float:
        """When the next entry comes due (trio time; ``inf`` for none)."""
        return self._heap[0][0] if self._heap else math.inf

    async def wait(self, deadline: float) -> None:
        """Sleep until ``deadline`` (trio time), or until :meth:`wake` or an earlier
        entry."""
        self._wake = trio.Event()
        with trio.move_on_at(deadline):
            await self._wake.wait()

    def wake(self) -> None:
        self._wake.set()
