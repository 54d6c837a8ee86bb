"""The read side of the SQLite snapshot: :class:`StoreReads`, the part of
:class:`~trioqueue._local.snapshot.Persistence` that turns stored rows back into records,
runs the store's reads in threads, and answers lookups and listings (memory's state, and
changes not written yet, win over the rows)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from .._exceptions import ShuttingDown
from .._gil import LoweredSwitchInterval
from .._job import Job, JobStatus
from .._record import JobRecord
from .._registry import TaskRegistry, TaskSpec
from .._store.sqlite import Row, SqliteStore, row_bytes
from .rows import UnreadableRow, record_of

log = logging.getLogger("trioqueue.store")

LIST_READ_BYTES = 16 * 1024 * 1024
"""Bytes of payloads and results one listing reads from the file at most (one job at
least); past them its page ends early, its ``next`` where it stopped."""


LIST_READS = 2
"""Listings reading the file at once (each holds up to :data:`LIST_READ_BYTES` of rows
until its page is made); the others wait their turn, holding nothing.  Without a bound,
300 clients asking at once for pages of big jobs held one read each, in Trio's 40
threads and past them: a server at 899 MB (``benchmarks.slow_readers --db``)."""


class StoreReads:
    """What :class:`Persistence` reads (a base of it, which sets this state and
    documents it)."""

    store: SqliteStore
    path: Path
    closed: bool
    _registry: TaskRegistry
    _closing: bool
    _stopped: trio.Event
    _reads: int
    _reads_done: trio.Event
    _list_reads: trio.CapacityLimiter
    _threads: LoweredSwitchInterval
    _dirty: dict[str, JobRecord]
    _inflight: dict[str, JobRecord] | None
    _writing: dict[str, JobRecord]
    _nursery: trio.Nursery | None

    if TYPE_CHECKING:
        async def wait_committed(self, rec: JobRecord | None = None) -> None: ...

    def record(self, row: Row) -> JobRecord:
        """A record from a stored row (its ``spec`` is ``None`` for a task this registry
        lacks); :class:`UnreadableRow` (a :class:`StoreError`) naming the job and the
        column when the row is not what trioqueue writes."""
        return record_of(row, self._spec_of, self.path)

    def _spec_of(self, task: str) -> TaskSpec | None:
        registry = self._registry
        return registry.get(task) if task in registry else None

    async def read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one of the store's reading methods in a thread."""
        if self._closing and self._stopped.is_set():
            raise ShuttingDown(f"the queue is closed: its store {self.path} is closed")
        self._reads += 1
        try:
            with self._threads:
                return await trio.to_thread.run_sync(fn, *args)
        finally:
            self._reads -= 1
            if not self._reads:
                self._reads_done.set()

    def holds(self, job_id: str) -> bool:
        """Whether a change of this job waits to be written: its row is older than the
        record (recovery then leaves the row alone)."""
        return job_id in self._dirty or job_id in (self._inflight or ()) or (
            job_id in self._writing
        )

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the store's task (recovery's backlog streamers): it ends
        when the store closes."""
        assert self._nursery is not None
        self._nursery.start_soon(fn, *args)

    # ------------------------------------------------------------------ queries

    async def lookup(self, job_id: str) -> JobRecord | None:
        """The stored record of a job that is not in memory, or ``None``."""
        rec = self._dirty.get(job_id)
        if rec is None and self._inflight is not None:
            rec = self._inflight.get(job_id) or self._writing.get(job_id)
        if rec is not None:
            await trio.lowlevel.checkpoint()
            return rec
        if self.closed:
            raise ShuttingDown(f"the queue is closed: its store {self.path} is closed")
        if not isinstance(job_id, str) or not job_id.isascii():  # no job has such an id
            await trio.lowlevel.checkpoint()
            return None
        row = await self.read(self.store.get, job_id)
        return None if row is None else self.record(row)

    def lookup_now(self, job_id: str) -> JobRecord | None:
        """:meth:`lookup` without waiting: a point read on the calling thread (when a
        caller's id is admitted that memory lacks and that is in :attr:`stored_only` or
        has the generated shape; never for a generated id)."""
        rec = self._dirty.get(job_id)
        if rec is None and self._inflight is not None:
            rec = self._inflight.get(job_id) or self._writing.get(job_id)
        if rec is not None:
            return rec
        if self.closed:
            raise ShuttingDown(f"the queue is closed: its store {self.path} is closed")
        if not isinstance(job_id, str) or not job_id.isascii():  # no job has such an id
            return None
        row = self.store.get(job_id)
        return None if row is None else self.record(row)

    async def list(self, in_memory: Callable[[str], JobRecord | None],
                   status: JobStatus | None, limit: int, task: str | None = None,
                   before: str | None = None) -> tuple[list[Job], str | None]:
        """Up to ``limit`` jobs, newest first by id, and the ``before`` of the next page
        (``None`` on the last); memory's state (``in_memory(id)``) wins over the
        store's, so a page can be short when a job changed status since its write."""
        await self.wait_committed()
        rows, more = await self._page_rows(status, limit, task, before)
        out: list[Job] = []
        for row in rows:
            job_id = row[0]
            rec = in_memory(job_id) or self._dirty.get(job_id)
            if rec is None:
                try:
                    rec = self.record(row)
                except UnreadableRow as exc:
                    log.error("%s; not listed", exc)  # the others are
                    continue
            if status is None or rec.status is status:
                out.append(rec.snapshot())
        return out, (rows[-1][0] if more else None)

    async def _page_rows(self, status: JobStatus | None, limit: int, task: str | None,
                         before: str | None) -> tuple[Sequence[Row], bool]:
        """The rows of a page (up to ``limit``), and whether more follow.  The page ends
        with a row whose id is text, the next page's ``before``: rows whose id is not
        UTF-8 (another program wrote them; left out of the page, logged) after the last
        such row are read again by the next page; a page of nothing but those reads on
        to the first row after them that has one."""
        want, budget = limit, LIST_READ_BYTES
        while True:
            async with self._list_reads:  # (released before the rows become a page)
                rows = await self.read(self.store.newest,
                                       None if status is None else status.value,
                                       want + 1, task, before, budget)
            # Past the budget the reading stopped early: the next page goes on from here.
            more = len(rows) > want or sum(map(row_bytes, rows)) > budget
            del rows[want:]
            if not more or type(rows[-1][0]) is str:
                return rows, more
            named = [i for i, row in enumerate(rows) if type(row[0]) is str]
            if named:
                end = max(i for i in named if i < limit) if named[0] < limit else named[0]
                return rows[:end + 1], more
            want, budget = want * 2, budget * 2  # (the bytes too: they may have cut it)
