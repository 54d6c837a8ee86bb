"""Reading the store back at open: the local backend's recovery.

Processing jobs (the process died under them) go back to queued with the attempt
counted, scheduled jobs into the timer, and queued jobs are streamed into their ready
queues no faster than the queues drain, so memory follows the capacity bound, not the
size of the backlog.

After an unclean shutdown (a crash), each recovered job records its next start in the
store *before* its handler runs.  A job whose handler kills the process therefore has
every attempt counted and ends FAILED after ``max_retries``, instead of crashing every
restart forever.  Jobs after a clean shutdown, and new jobs, never pay for this.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .._record import JobRecord
from .._state import JobEvent, move
from .._store.sqlite import Row
from .rows import UnreadableRow
from .snapshot import Persistence

if TYPE_CHECKING:
    from .backend import LocalBackend

log = logging.getLogger("trioqueue.store")

STREAM_CHUNK = 1000
"""Recovery streams a backlog into a ready queue at most this many jobs per read."""
LOGGED_UNREADABLE = 20
"""Rows that cannot be read named in the log one by one at most (then one line)."""


async def recover(backend: LocalBackend, store: Persistence) -> None:
    """Put ``store``'s live jobs back into ``backend`` (called once, at open)."""
    await Recovery(backend, store).run()


class Recovery:
    def __init__(self, backend: LocalBackend, store: Persistence) -> None:
        self._backend = backend
        self._ready = backend.ready
        self._store = store
        self._suspect = not store.store.was_clean
        """After a crash: every recovered job commits its next start before running."""
        self._unknown: dict[str, int] = {}
        """Jobs met whose task this registry lacks, by task name."""
        self._unreadable = 0
        """Rows met that are not jobs as trioqueue writes them."""
        self._loaded = 0  # queued jobs streamed into memory
        self._exhausted = 0  # queued jobs recovered with no attempts left (FAILED)
        self._cursor: dict[int, int] = {}
        """Per priority: the last rowid streamed from the backlog."""
        self._restored: set[str] = set()
        """Jobs put back here that were not queued at open (found processing, or
        scheduled): their rows may turn queued before the streamer passes them, and they
        are not part of the backlog's count."""

    async def run(self) -> None:
        store, backend, ready = self._store, self._backend, self._ready
        db = store.store
        store.stored_only.update(await store.read(db.given_ids))
        processing = await store.read(db.live, "processing")
        scheduled = await store.read(db.live, "scheduled")
        spans = [await store.read(db.queued_span, p) for p in range(3)]
        died = delayed = 0
        for row in processing:
            rec = self._runnable(row)
            if rec is None:
                self._interrupted_elsewhere(row)
                continue
            died += 1
            self._restored.add(rec.id)
            backend.restore_interrupted(rec)
        for row in scheduled:
            rec = self._runnable(row)
            if rec is not None:
                rec.durable_start = self._suspect  # it may have come due and run unstored
                self._restored.add(rec.id)
                backend.restore(rec)
                delayed += 1
        for priority, (count, top) in enumerate(spans):
            if count:
                ready.set_backlog(priority, count)
                await self._stream(priority, top, until_full=True)
                if ready.backlog(priority):
                    store.spawn(self._stream, priority, top)
        # Read so far, and (an estimate) still in the store: a large backlog is read as
        # the queues drain, so jobs of unknown tasks among the rest are found later.
        queued = self._loaded + sum(ready.backlog(p) for p in range(3))
        if queued or delayed or died or self._exhausted:
            log.info(
                "%s: recovered %d queued, %d scheduled, %d interrupted by a crash%s%s",
                store.path, queued, delayed, died,
                f", {self._exhausted} failed (no attempts left)" if self._exhausted else "",
                "" if db.was_clean else " (each records its next start before running)",
            )
        if self._unknown:
            log.warning(
                "%s: left %d jobs in the store for a registry that has their tasks (%s)",
                store.path, sum(self._unknown.values()),
                ", ".join(f"{task!r}: {n}" for task, n in sorted(self._unknown.items())),
            )

    def _interrupted_elsewhere(self, row: Row) -> None:
        """A job found PROCESSING whose task this registry lacks: the process that ran it
        died.  It is recorded QUEUED, its attempt counted, for a queue that has the task
        (left as it was, it showed PROCESSING though nothing runs it); a row that cannot
        be read is left alone."""
        try:
            rec = self._store.record(row)
        except UnreadableRow:
            return
        if rec.spec is not None:
            return
        rec.started_at = None
        move(rec, JobEvent.INTERRUPT)
        self._restored.add(rec.id)  # its row may turn queued before the streamer passes
        self._store.mark(rec)

    def _runnable(self, row: Row) -> JobRecord | None:
        """The row's record, or ``None`` for a task this registry lacks (counted, and
        logged once per task) and for a row that cannot be read (logged, the first
        :data:`LOGGED_UNREADABLE` of them, and counted); both are left in the store as
        they are."""
        try:
            rec = self._store.record(row)
        except UnreadableRow as exc:
            self._unreadable += 1
            if self._unreadable <= LOGGED_UNREADABLE:
                log.error("%s; left in the store untouched", exc)
            elif self._unreadable == LOGGED_UNREADABLE + 1:
                log.error("%s: more rows that cannot be read are left in the store "
                          "untouched, not named each", self._store.path)
            return None
        if rec.spec is not None:
            return rec
        seen = self._unknown.get(rec.task, 0)
        if not seen:
            log.warning(
                "%s: jobs of task %r are left in the store untouched: no handler is "
                "registered under that name", self._store.path, rec.task,
            )
        self._unknown[rec.task] = seen + 1
        return None

    async def _stream(self, priority: int, top: int, *, until_full: bool = False) -> None:
        """Move queued jobs of ``priority`` from the store into its ready queue, as
        fast as it drains.  ``until_full``: one pass only (the first load at open)."""
        store, backend, ready = self._store, self._backend, self._ready
        capacity = ready.capacity
        low_water = capacity // 2
        after = self._cursor.get(priority, 0)
        try:
            # The count from open is only an estimate for metrics: rows that turned queued
            # since (jobs found processing, say) are passed over too.  The backlog ends
            # when a read finds nothing more.
            while not ready.closed:
                room = ready.room(priority)
                if room <= 0 or (not until_full and ready.queued(priority) > low_water):
                    if until_full:
                        return
                    await ready.wait_for_refill(priority, low_water)
                    continue
                limit = min(room, STREAM_CHUNK)
                rows = await store.read(store.store.queued, priority, after, top, limit)
                if not rows:
                    ready.set_backlog(priority, 0)
                    break
                after = rows[-1][-1]
                self._cursor[priority] = after
                now = backend.now()
                for row in rows:
                    job_id = row[0]
                    if job_id in self._restored:
                        continue  # not counted in the backlog: restored above
                    if job_id in backend.table or store.holds(job_id):
                        ready.skip(priority)  # memory knows better (cancelled, or loaded)
                        continue
                    rec = self._runnable(row)
                    if rec is None:
                        ready.skip(priority)
                        continue
                    if backend.restore_exhausted(rec):
                        ready.skip(priority)
                        self._exhausted += 1
                        continue
                    rec.durable_start = self._suspect
                    ready.load(rec, now)
                    self._loaded += 1
                if len(rows) < limit:  # read to the end
                    ready.set_backlog(priority, 0)
                    break
                if until_full:
                    return
        finally:
            if ready.backlog(priority) <= 0 or ready.closed:  # done, or shutting down
                ready.end_backlog(priority)
