"""The SQLite snapshot: the only code that writes the store.

The local backend tells it which records changed (:meth:`Persistence.changed`: one dict
store, no I/O).  Its task turns the latest state of every changed record into rows and
writes them in one transaction per batch, in a worker thread, every ``flush_interval`` --
or at once when someone waits for a commit (``durability="sync"`` enqueuers,
:meth:`JobQueue.flush`).  Enqueuers that arrive while a write runs share the next commit:
that is group commit.  A watchdog tells the waiters of a write that takes longer than
:data:`COMMIT_WAIT` that their jobs are not confirmed.

Reading the store back at open is :mod:`trioqueue._local.recovery`'s job.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from functools import partial
from itertools import islice
from typing import Any, TypeVar

import trio

from .._config import QueueConfig
from .._exceptions import ShuttingDown, StoreError
from .._gil import lowered_switch_interval, run_in_thread
from .._record import JobRecord
from .._registry import TaskRegistry
from .._state import EventKind
from .._store.sqlite import SqliteStore
from .chunks import chunk_size
from .reads import LIST_READS, StoreReads
from .rows import rows_of, write_bounded

log = logging.getLogger("trioqueue.store")
T = TypeVar("T")

WRITE_CHUNK = 16_384
"""Rows per transaction when a flush is large (a burst, or the final snapshot): about
30 ms of the writer's time.  A flush in ``batch`` mode holds what changed in
``flush_interval``; with 4,096 rows it took two transactions at 80,000 jobs/s and more
(each with its own commit, GIL hand-offs and a dict built to split the batch), and the
bulk benchmark (``noop``, ``enqueue_many(1000)``, 5 interleaved rounds) ran 3 % slower
than with 16,384 (159,636 against 164,890 jobs/s; 8,192: 159,390)."""
PRUNE_CHUNK = 10_000
"""Finished jobs deleted per transaction when pruning (short transactions)."""
RETRY_FAILED_WRITE = 1.0
"""Seconds before a failed write is tried again."""
COMMIT_WAIT = 30.0
"""Seconds a write may take before the callers waiting for it are told that their jobs
are not confirmed (:class:`NotConfirmed`), and new jobs are refused until it ends: a
store locked by another connection, or a disk that stopped answering."""


class NotConfirmed(StoreError):
    """The write holding a job did not end within :data:`COMMIT_WAIT`: it goes on, so the
    job may yet be stored (and run)."""


def _ignore(exc: StoreError | None) -> None:
    pass


class _Held:
    """``async with _Held(lock)``: hold a :class:`trio.Lock`, taken without a scheduling
    point when it is free (``async with lock`` always yields, and on a busy loop every
    yield lets the workers run a pass of jobs before the write it leads to begins)."""

    __slots__ = ("_lock",)

    def __init__(self, lock: trio.Lock) -> None:
        self._lock = lock

    async def __aenter__(self) -> None:
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()


def _trio_now() -> float:
    """Trio's time, or 0.0 outside a run (a test writing rows by hand, with no lag
    watcher to read it)."""
    try:
        return trio.current_time()
    except RuntimeError:
        return 0.0


def _ignore_lag(lagging: bool) -> None:
    pass


def _no_direct(dirty: dict[str, JobRecord] | None) -> None:
    pass


class Persistence(StoreReads):
    """Owns the store file; the local backend talks to storage only through this object."""

    def __init__(self, config: QueueConfig, registry: TaskRegistry, store: SqliteStore) -> None:
        self.durable = config.durability == "sync"
        """True with ``durability="sync"``: enqueuers wait for the commit holding their job."""
        self.store = store
        self.path = store.path
        self._config = config
        self._registry = registry
        self._dirty: dict[str, JobRecord] = {}
        self._groups: dict[str, int] = {}  # batches in _dirty, as chunk_size takes them
        self._direct: Callable[[dict[str, JobRecord] | None], None] = _no_direct
        """Told which dict a change may go straight into (:meth:`direct_to`)."""
        self._inflight: dict[str, JobRecord] | None = None
        """The flush under way: records whose rows are not made yet."""
        self._writing: dict[str, JobRecord] = {}
        """The flush under way: the records of the transaction being written."""
        self._epoch = 1  # the batch being collected
        self._committed = 0  # the last batch committed
        self._failed = 0  # the last batch whose write failed
        self._late = 0  # the last batch its waiters were told is not confirmed
        self._write_began: float | None = None
        """When the transaction under way began (trio time), or None."""
        self._write_ended: trio.Event | None = None
        """Set when a transaction ends, while the watchdog waits for that."""
        self._kick_watch: trio.Event | None = None
        """Set when a transaction begins, while the watchdog waits for one."""
        self._error: StoreError | None = None
        self.on_error: Callable[[StoreError | None], None] = _ignore
        """Called with :attr:`error` whenever it changes (the backend refuses new jobs
        while it is set)."""
        self._retry_at = -math.inf
        self._epoch_done: dict[int, trio.Event] = {}
        """Waiters by the batch they wait for, woken when it commits (or fails)."""
        self._kick = trio.Event()
        self._waiters = 0
        self._write_lock = trio.Lock()  # one transaction at a time: flushes, pruning
        self._batch_lock = trio.Lock()  # one batch at a time: the flusher, close()
        self._closing = False
        self.closed = False
        self._nursery: trio.Nursery | None = None
        self._stopped = trio.Event()  # the persistence task has returned
        self._reads = 0  # reads under way in threads
        self._reads_done = trio.Event()
        self._list_reads = trio.CapacityLimiter(LIST_READS)  # (StoreReads.list)
        self._threads = lowered_switch_interval(config.switch_interval)
        """Around every read and write: the store's threads get the GIL from a busy loop."""
        self.stored_only: set[str] = set()
        """Ids not of the generated shape (:func:`~trioqueue._ids.generated_shape`) that
        may belong to a job held in the store but not in memory: every such stored id at
        open, and each finished job's as it leaves memory, less those pruned.  A
        caller's id is looked up in the store when it is in here or has the generated
        shape, so an ``enqueue_nowait`` of a fresh id of another shape never reads the
        store (about 100 bytes per id), and generated ids, never looked up, are not
        kept."""
        self.pruned_in_memory: tuple[dict[str, JobRecord], dict[str, float]] = ({}, {})
        """Memory's jobs, and where a prune names those it pruned (``JobTable.pruned``)."""
        self.lagging = False
        """True while the oldest change not yet committed is older than
        ``config.max_write_lag`` (``batch`` mode): enqueuers wait for their commit."""
        self.on_lag: Callable[[bool], None] = _ignore_lag
        self._dirty_since = 0.0  # trio time the dirty map last became non-empty
        self._batch_since = 0.0  # the same, for the batch being written
        self._lag_kick = trio.Event()  # set when the dirty map becomes non-empty
        self._lag_commit: trio.Event | None = None  # set when a transaction ends
        self.commits = 0
        """Transactions committed so far (for benchmarks and metrics)."""
        self.rows_written = 0

    @property
    def error(self) -> StoreError | None:
        """The last write's error while writing fails (new jobs are refused), else None."""
        return self._error

    @error.setter
    def error(self, exc: StoreError | None) -> None:
        self._error = exc
        self.on_error(exc)

    @classmethod
    async def open(cls, config: QueueConfig, registry: TaskRegistry) -> Persistence:
        """Open (or create) the store file, off the event loop; raise :class:`StoreError`."""
        assert config.persist_path is not None
        with lowered_switch_interval(config.switch_interval):
            store = await trio.to_thread.run_sync(
                partial(SqliteStore.open, config.persist_path, fsync=config.fsync)
            )
        if not store.was_clean:
            log.warning("%s was not closed cleanly: recovering after a crash", store.path)
        return cls(config, registry, store)

    # ------------------------------------------------------------------ engine side

    def direct_to(self, hook: Callable[[dict[str, JobRecord] | None], None]) -> None:
        """Tell ``hook`` (:meth:`Changes.direct`), now and whenever it changes, the
        dict where a change of a record may be put directly (``dirty[rec.id] = rec``,
        what :meth:`changed` does while that dict is not empty), or ``None`` while a
        flush takes records in chunks (a change of a record not taken yet must not be
        marked again: :meth:`changed` looks)."""
        self._direct = hook
        hook(None if self._inflight else self._dirty)

    def changed(self, kind: EventKind, rec: JobRecord, worker: int | None = None,
                duration: float | None = None) -> None:
        """``rec`` changed: include its latest state in the next flush.

        The signature is the engine's change hook's (``kind``, ``worker`` and
        ``duration`` are for the event stream), so that while only the store watches,
        the engine calls this directly.  The hot moves put ``rec`` in the dict without
        this call while it is not empty (:meth:`direct_to`): what is done here then."""
        inflight = self._inflight
        if inflight and rec.id in inflight:
            return  # taken by the flush under way, which reads its state when it gets to it
        dirty = self._dirty
        if not dirty:
            self._first_change()
        dirty[rec.id] = rec

    def changed_many(self, kind: EventKind, recs: list[JobRecord]) -> None:
        """:meth:`changed` for each of ``recs`` (a batch that made one move), in one call."""
        if not recs:
            return
        dirty = self._dirty
        if not dirty:
            self._first_change()
        inflight = self._inflight
        if inflight:
            for rec in recs:
                if rec.id not in inflight:
                    dirty[rec.id] = rec
        else:
            dirty.update({rec.id: rec for rec in recs})

    def admit_batch(self, admit: Callable[[list[JobRecord]], T], recs: list[JobRecord]) -> T:
        """``admit(recs)``, whose new records (the last ones marked) then commit together
        even in a write cut in chunks: a batch is stored all or nothing."""
        dirty = self._dirty
        before = len(dirty)
        got = admit(recs)
        if len(dirty) - before > 1:
            self._groups[next(reversed(dirty))] = len(dirty) - before
        return got

    def _first_change(self) -> None:
        """The batch being collected gets its first record: wake the flusher (it sleeps
        without a deadline while nothing is dirty) and the lag watcher, which time the
        batch from now."""
        self._kick.set()
        self._dirty_since = _trio_now()
        self._lag_kick.set()

    def mark(self, rec: JobRecord) -> None:
        """``rec`` changed with no event of the store's kind (its progress): write its
        latest state in the next flush."""
        self.changed(EventKind.ENQUEUED, rec)

    def check(self) -> None:
        """Raise :class:`StoreError` while the store is failing to write."""
        if self.error is not None:
            raise StoreError(
                f"{self.error} -- taking no jobs until a write succeeds"
            )

    def forget(self, rec: JobRecord) -> None:
        """Drop a record the engine withdrew before it was ever committed.

        When that leaves the batch being collected empty with no write under way, the
        batch is done as it stands: its waiters (a ``flush()`` that began while the
        record waited for another try) return, where they waited until some other job
        changed.  What they waited for is committed, or withdrawn like this record
        (after a failed write, the next batch takes everything the failed one held)."""
        if self._dirty.get(rec.id) is rec:
            del self._dirty[rec.id]
        if self._inflight and self._inflight.get(rec.id) is rec:
            del self._inflight[rec.id]
        if not self._dirty and self._inflight is None and self._epoch in self._epoch_done:
            epoch = self._epoch
            self._epoch += 1
            self._committed = epoch
            self._wake_committed(epoch)

    async def wait_committed(self, rec: JobRecord | None = None) -> None:
        """Return once everything marked so far (or just ``rec``) is committed.

        Raises :class:`StoreError` when the write holding it failed.
        """
        if rec is None:
            if self._dirty:
                target = self._epoch
            elif self._inflight is not None:
                target = self._epoch - 1
            else:
                target = 0
        elif rec.id in self._dirty:
            target = self._epoch
        elif self._inflight is not None and (
            rec.id in self._inflight or rec.id in self._writing
        ):
            target = self._epoch - 1
        else:
            target = 0
        if self._committed >= target:
            await trio.lowlevel.checkpoint()
            return
        if self.closed:
            raise ShuttingDown(f"the queue is closed: its store {self.path} is closed")
        self._waiters += 1
        self._kick.set()
        try:
            while self._committed < target:
                if self._failed >= target:
                    raise StoreError(str(self.error))
                if self._late >= target:
                    raise NotConfirmed(
                        f"{self.path}: not confirmed: the store did not answer within "
                        f"{COMMIT_WAIT:g} s"
                    )
                event = self._epoch_done.get(target)
                if event is None:
                    event = self._epoch_done[target] = trio.Event()
                await event.wait()
        finally:
            self._waiters -= 1

    def _wake_committed(self, upto: int | None = None) -> None:
        """Wake the waiters of every batch up to ``upto`` (all when None)."""
        done = self._epoch_done
        for epoch in [e for e in done if upto is None or e <= upto]:
            done.pop(epoch).set()

    # ------------------------------------------------------------------ the task

    async def run(
        self, now_wall: Callable[[], float],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The persistence task: flush changed records in batches until closed."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._watch_writes)
                if self._config.durability == "batch" and math.isfinite(
                        self._config.max_write_lag):
                    nursery.start_soon(self._watch_lag, self._config.max_write_lag)
                task_status.started()
                await self._flush_loop(now_wall)
                nursery.cancel_scope.cancel()  # the watchdog, the backlog streamers
        finally:
            self._stopped.set()

    async def _flush_loop(self, now_wall: Callable[[], float]) -> None:
        interval = self._config.flush_interval
        retention = self._config.retention
        prune_every = max(0.5, min(60.0, retention / 4))
        next_prune = trio.current_time() + min(1.0, prune_every)
        last_flush = -math.inf
        while not self._closing:
            now = trio.current_time()
            if self._dirty:
                due = now if self._waiters else last_flush + interval
                due = max(due, self._retry_at)
            elif self.error is not None:
                due = self._retry_at  # nothing to write, but find out if writing works
            else:
                due = math.inf
            if due > now and next_prune > now:
                if self._kick.is_set():
                    self._kick = trio.Event()
                with trio.move_on_at(min(due, next_prune)):
                    await self._kick.wait()
                continue
            if due <= now:
                await self._flush()
                last_flush = trio.current_time()
            if next_prune <= now:
                await self._prune(now_wall(), retention)
                next_prune = trio.current_time() + prune_every

    async def _watch_writes(self) -> None:
        """The watchdog: a transaction still under way :data:`COMMIT_WAIT` seconds after it
        began makes its waiters (and those of the batch collected meanwhile) raise
        :class:`NotConfirmed`, and new jobs are refused (:attr:`error`) until it ends.

        It sleeps until the deadline of the write under way and looks again, so it wakes
        about once per ``COMMIT_WAIT`` while writes come and go, not once per write; the
        writer only records when each transaction begins.
        """
        while True:
            began = self._write_began
            if began is None:
                self._kick_watch = trio.Event()
                await self._kick_watch.wait()
                continue
            await trio.sleep_until(began + COMMIT_WAIT)
            if self._write_began != began:
                continue  # that write ended; look at the next one
            self._late = self._epoch
            self.error = StoreError(
                f"{self.path}: no answer from the store for {COMMIT_WAIT:g} s "
                "(locked by another connection, or the disk stopped answering)"
            )
            log.error("%s; jobs waiting for it are told they are not confirmed", self.error)
            self._wake_committed(self._late)
            ended = self._write_ended = trio.Event()
            await ended.wait()

    def _oldest_unwritten(self) -> float | None:
        """Trio time of the oldest change not yet committed, or None."""
        if self._inflight is not None:
            return self._batch_since
        if self._dirty:
            return self._dirty_since
        return None

    def _set_lagging(self, lagging: bool) -> None:
        if lagging != self.lagging:
            self.lagging = lagging
            self.on_lag(lagging)

    async def _watch_lag(self, limit: float) -> None:
        """Keep :attr:`lagging` true while the oldest uncommitted change is older than
        ``limit``: looked at when it would pass the limit, and after each transaction
        while lagging (never per job)."""
        while True:
            oldest = self._oldest_unwritten()
            if oldest is None:
                self._set_lagging(False)
                self._lag_kick = trio.Event()
                await self._lag_kick.wait()
                continue
            if trio.current_time() - oldest >= limit:
                self._set_lagging(True)
                ended = self._lag_commit = trio.Event()
                await ended.wait()
            else:
                self._set_lagging(False)
                await trio.sleep_until(oldest + limit)

    async def _write(self, fn: Any, *args: Any) -> Any:
        """Run a store method that writes in a thread, under the watchdog's eye."""
        self._write_began = trio.current_time()
        if self._kick_watch is not None:
            self._kick_watch.set()
            self._kick_watch = None
        try:
            with self._threads:
                return await run_in_thread(fn, *args)
        finally:
            self._write_began = None
            if self._lag_commit is not None:
                self._lag_commit.set()
                self._lag_commit = None
            if self._write_ended is not None:
                self._write_ended.set()
                self._write_ended = None

    async def write_batch(self) -> int:
        """Write everything dirty now as one batch; return its number.

        A large batch goes in transactions of :data:`WRITE_CHUNK` rows (more to keep a
        batch of jobs whole), oldest changes first, each chunk's rows made just before it
        is written: a job that changed again meanwhile is written once.  Raises
        :class:`StoreError`; what was not written is dirty again.
        """
        pending = self._dirty
        self._dirty = {}
        groups = self._groups
        self._groups = {}
        self._batch_since = self._dirty_since
        epoch = self._epoch
        self._epoch += 1
        self._inflight = pending
        direct = self._direct
        direct(None)  # until the records not taken yet are: changes go through changed()
        try:
            while pending:
                size = chunk_size(pending, groups, WRITE_CHUNK)  # never inside a batch
                if len(pending) <= size:  # the usual case: all of it at once
                    writing, pending = pending, {}
                    self._inflight = pending
                    direct(self._dirty)
                elif len(pending) < size + WRITE_CHUNK:
                    # A little over a chunk (a flush that came late): the oldest chunk
                    # goes now, split off by moving the newest few, not the chunk.
                    excess = len(pending) - size
                    newest = list(islice(reversed(pending), excess))
                    rest = {job_id: pending.pop(job_id) for job_id in reversed(newest)}
                    writing, pending = pending, rest
                    self._inflight = pending
                else:
                    ids = list(islice(pending, size))
                    writing = {job_id: pending.pop(job_id) for job_id in ids}
                self._writing = writing
                values = rows_of(writing.values())
                async with _Held(self._write_lock):
                    # As a tuple of str, int and float: the collector stops tracking it at
                    # its first pass, where a list would be walked by every collection that
                    # the loop's allocations set off while the thread writes.
                    await self._write(write_bounded, self.store, values)
                self.commits += 1
                self.rows_written += len(writing)
                self._writing = {}
        except BaseException:
            for job_id, rec in (*self._writing.items(), *pending.items()):
                self._dirty.setdefault(job_id, rec)  # kept for the next try
            self._groups.update(groups)
            raise
        finally:
            self._inflight = None
            self._writing = {}
            direct(self._dirty)
        return epoch

    async def _flush(self) -> None:
        if not self._dirty:  # failing, with nothing left to write (jobs were taken back)
            try:
                async with _Held(self._write_lock):
                    await self._write(self.store.probe)
            except StoreError:
                self._retry_at = trio.current_time() + RETRY_FAILED_WRITE
            else:
                log.warning("%s: writing again", self.path)
                self.error = None
            return
        epoch = self._epoch
        try:
            async with _Held(self._batch_lock):
                await self.write_batch()
        except StoreError as exc:
            self._failed = epoch
            if self.error is None:
                log.error("%s; trying again every %ss", exc, RETRY_FAILED_WRITE)
            self.error = exc
            self._retry_at = trio.current_time() + RETRY_FAILED_WRITE
            self._wake_committed(epoch)
            return
        self._committed = epoch
        self._late = min(self._late, epoch)  # the next batch's waiters wait again
        if self.error is not None:
            log.warning("%s: writing again", self.path)
            self.error = None
        self._wake_committed(epoch)

    async def _prune(self, now_wall: float, retention: float) -> None:
        horizon = now_wall - retention
        total = 0
        while True:
            async with self._write_lock:
                try:
                    gone = await self._write(self.store.prune, horizon, PRUNE_CHUNK)
                except StoreError as exc:
                    log.warning("%s", exc)
                    return
            self.stored_only.difference_update(gone)
            jobs, pruned = self.pruned_in_memory  # (their ids must not come back)
            pruned.update((i, horizon) for i in gone if i in jobs)
            n = len(gone)
            total += n
            if n < PRUNE_CHUNK or self._closing:
                break
        if total:
            log.info("%s: pruned %d jobs finished more than %ss ago", self.path, total, retention)

    # ------------------------------------------------------------------ closing

    async def close(self) -> None:
        """Write the final snapshot and close the store (the last thing open_queue does).

        Runs shielded: even a cancelled ``open_queue`` records its last state.
        """
        if self.closed:
            return
        self._closing = True
        self._kick.set()
        with trio.CancelScope(shield=True):
            if self._nursery is not None:
                await self._stopped.wait()  # no flush, prune or backlog read under way
            while self._reads:  # lookups of other tasks still reading: let them finish
                self._reads_done = trio.Event()
                await self._reads_done.wait()
            async with self._batch_lock:
                try:
                    while self._dirty:
                        self._committed = await self.write_batch()
                    with self._threads:
                        await trio.to_thread.run_sync(self.store.close)
                except BaseException:  # a StoreError, or a bug: the file is let go all the same
                    self.store.abandon()
                    raise
                finally:
                    self.closed = True
                    self._wake_committed()

    def abandon(self) -> None:
        """Close the store without the final snapshot (``open_queue`` failed to start)."""
        if not self.closed:
            self.closed = True
            self.store.abandon()
