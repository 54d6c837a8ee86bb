"""The local backend: the queue's state in this process, optionally snapshotted to SQLite.

It implements :class:`trioqueue._backend.Backend` with four parts, each with one job:

- :class:`~._local.ready.ReadyQueues`: the bounded ready queues, the fair picker, and the
  waiting lines (producers for room, idle workers for jobs);
- :class:`~._local.timer.Timer`: the heap of due times (delays, retry backoff);
- :class:`~._local.table.JobTable`: every job in memory by id, and how long finished
  ones stay;
- :class:`~._local.snapshot.Persistence` (with ``persist_path``): the SQLite snapshot,
  written in batches by its own task, and read back at open
  (:mod:`~._local.recovery`).

The engine's hot path calls three of its methods per job, each a part's own method
(:meth:`admit`, :meth:`claim`, :meth:`finish`): no call goes through this class.
"""

from __future__ import annotations

import logging
import weakref
from functools import partial
from typing import TYPE_CHECKING

import trio

from .._backend import ChangeHook
from .._config import QueueConfig
from .._exceptions import JobNotFound, ShuttingDown, StoreError
from .._job import Job, JobStatus
from .._record import JobRecord, same_or_duplicate
from .._registry import TaskRegistry
from .._state import JobEvent, move, transition
from .._stats import Stats
from .changes import Changes
from .ready import ReadyQueues
from .rows import ROW_ROOM, payload_too_big
from .table import JobTable
from .timer import Timer

if TYPE_CHECKING:
    from .snapshot import Persistence

log = logging.getLogger("trioqueue")

PERIODIC_MARK = "periodic:"
"""``meta`` key prefix of a periodic task's latest enqueued due time (then its name)."""
QUEUED = JobStatus.QUEUED
SCHEDULED = JobStatus.SCHEDULED
PROCESSING = JobStatus.PROCESSING

_BY_QUEUE: weakref.WeakKeyDictionary[object, weakref.ref[LocalBackend]] = (
    weakref.WeakKeyDictionary()
)
""":meth:`LocalBackend.of`'s index: the backend behind each open (or closed) queue.  The
value is a weak reference too: a strong one would keep the backend, and every record it
holds, alive from this module until a second collection after the queue's (the queue
holds its backend anyway)."""


class LocalBackend:
    """The queue's state in memory (and, with a store, snapshotted to SQLite)."""

    def __init__(self, config: QueueConfig, registry: TaskRegistry, stats: Stats, *,
                 clock: trio.abc.Clock, wall_offset: float,
                 store: Persistence | None = None) -> None:
        self._config = config
        self._registry = registry
        self._clock = clock
        self._wall = wall_offset
        self._stats = stats
        self.store = store
        """The SQLite snapshot, or ``None`` in memory mode."""
        self.persistent = store is not None
        """Jobs outlive this queue (and memory): look ids up in the store too."""
        self.durable = store is not None and store.durable
        """``durability="sync"``: an enqueue returns once its job is committed."""
        self.refusal: StoreError | None = None
        """Why new jobs are refused now (the store fails to write), or ``None``: a plain
        attribute, which the engine reads per enqueue."""
        self.lagging = False
        """``batch`` mode: the store's writer is behind (``config.max_write_lag``):
        enqueuers wait for their commit, ``enqueue_nowait`` is refused."""
        if store is not None:
            store.on_error = self._store_error
            store.on_lag = self._store_lag
        self.changes = (Changes() if store is None
                        else Changes(store.changed, store.changed_many))
        if store is not None:
            store.direct_to(self.changes.direct)
        self.timer = Timer(stats, wall_offset=wall_offset)
        self.table = JobTable(stats, self.changes, wall_offset=wall_offset,
                              finished_cache=config.finished_cache,
                              result_ttl=config.result_ttl)
        self.ready = ReadyQueues(self.table.by_id, self.timer, stats, self.changes,
                                 capacity=config.capacity, fairness=config.fairness,
                                 wall_offset=wall_offset)
        for name in registry:
            limit = registry.get(name).concurrency
            if limit is not None:
                self.ready.limit(name, limit)
        self.attempt_ended = self.ready.attempt_ended
        # The hot path: the parts' own methods.
        if store is not None:
            # A caller's id that only the store may hold: admit looks it up there (a
            # fresh one of another shape than the generated costs a set lookup);
            # finished jobs' ids of such shapes go there as they leave memory.
            limit, path = store.store.max_length, store.path
            self.ready.beside_store(store.stored_only, store.lookup_now, limit - ROW_ROOM,
                                    partial(payload_too_big, limit=limit, where=path))
            self.table.left = store.stored_only
            store.pruned_in_memory = (self.table.by_id, self.table.pruned)
        self.admit = self.ready.admit
        self.claim = self.ready.take
        self.finish = self.table.finish
        self.wait_for_work = self.ready.wait_for_work
        self.wake_workers = self.ready.wake_workers

    def unavailable(self) -> str | None:
        refusal = self.refusal
        return None if refusal is None else f"the store fails to write: {refusal}"

    def _store_error(self, exc: StoreError | None) -> None:
        self.refusal = exc

    def _store_lag(self, lagging: bool) -> None:
        self.lagging = lagging

    def progress_changed(self, rec: JobRecord) -> None:
        """A handler reported progress (``rec.progress``): the store writes it with the
        next flush, so a restart finds it."""
        if self.store is not None:
            self.store.mark(rec)

    def observe(self, hook: ChangeHook | None) -> None:
        self.changes.fan_out(hook)

    async def events_flowing(self) -> None:
        await trio.lowlevel.checkpoint()  # every move is told as it is made

    def now(self) -> float:
        """The queue's clock (trio time)."""
        return self._clock.current_time()

    # ------------------------------------------------------------------ lifecycle

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The store's task (flushes, pruning, the backlog streamers); nothing in memory
        mode."""
        if self.store is None:
            task_status.started()
            return
        await self.store.run(self._now_wall, task_status=task_status)

    async def recover(self) -> None:
        """Put what the store holds back in memory (called once, at open)."""
        if self.store is not None:
            from .recovery import recover

            await recover(self, self.store)

    def close_intake(self) -> None:
        """Shutdown begins: wake every parked producer (they are refused) and stop
        loading the store's backlog."""
        self.ready.close()

    def wake_all_waiters(self) -> None:
        self.table.wake_all_waiters()

    def drop_leftovers(self) -> tuple[list[str], list[str]]:
        """Memory mode at shutdown: the jobs still queued and scheduled end with the queue
        (counted in ``dropped``, gone from the table).  With a store they stay there."""
        if self.store is None:
            queued = self.ready.drop_all()
            scheduled = [rec for rec in self.table.records() if rec.status is SCHEDULED]
            for rec in scheduled:
                self._unschedule(rec)
            for rec in (*queued, *scheduled):
                self.table.remove(rec)
            self._stats.dropped += len(queued) + len(scheduled)
            return [rec.id for rec in queued], [rec.id for rec in scheduled]
        return [], []

    async def close(self) -> None:
        """Write the final snapshot and close the store (shielded)."""
        if self.store is not None:
            await self.store.close()

    def abandon(self) -> None:
        if self.store is not None:
            self.store.abandon()

    # ------------------------------------------------------------------ intake

    async def wait_for_room(self, rec: JobRecord) -> trio.lowlevel.ParkingLot | None:
        return await self.ready.wait_for_room(rec)

    def pass_room_on(self, lot: trio.lowlevel.ParkingLot, p: int) -> None:
        self.ready.pass_room_on(lot, p)

    def admit_many(self, recs: list[JobRecord]) -> list[JobRecord] | None:
        if self.store is None:
            return self.ready.admit_many(recs)
        return self.store.admit_batch(self.ready.admit_many, recs)  # committed whole

    async def wait_for_room_many(self, recs: list[JobRecord]) -> None:
        await self.ready.wait_for_room_many(recs)

    def full_reason_many(self, recs: list[JobRecord]) -> str:
        return self.ready.full_reason_many(recs)

    def full_reason(self, rec: JobRecord) -> str:
        return self.ready.full_reason(rec)

    async def periodic_marks(self) -> dict[str, float]:
        """From the store's ``meta`` table (memory mode keeps nothing past the process)."""
        if self.store is None:
            await trio.lowlevel.checkpoint()
            return {}
        raw = await self.store.read(self.store.store.meta_with, PERIODIC_MARK)
        marks: dict[str, float] = {}
        for name, value in raw.items():
            try:
                marks[name] = float(value)
            except ValueError:
                log.warning("%s: meta %r: not a time, ignored", self.store.path,
                            PERIODIC_MARK + name)
        return marks

    async def mark_periodic(self, name: str, due: float) -> None:
        if self.store is None:
            await trio.lowlevel.checkpoint()
            return
        await self.store.wait_committed()  # the run's job first: a mark never outruns it
        await self.store.read(self.store.store.set_meta, PERIODIC_MARK + name, repr(due))

    async def wait_committed(self, rec: JobRecord | None = None) -> None:
        """Return once ``rec`` (everything, for ``None``) is committed; a checkpoint in
        memory mode.  Raises :class:`StoreError` when the write failed."""
        if self.store is None:
            await trio.lowlevel.checkpoint()
        else:
            await self.store.wait_committed(rec)

    def not_confirmed(self, exc: StoreError) -> bool:
        """Whether the write that failed ``exc`` may still commit (it timed out)."""
        from .snapshot import NotConfirmed

        return isinstance(exc, NotConfirmed)

    def _unschedule(self, rec: JobRecord) -> None:
        """A SCHEDULED job leaves the timer otherwise than by coming due: its entry goes
        stale and, a new delayed job, its slot is free."""
        self.timer.unschedule(rec)
        self.ready.release_delay_slot(rec)

    def withdraw(self, rec: JobRecord) -> bool:
        """Take back a job whose commit failed, if no worker has touched it yet.  True
        when it was taken back (it will not run)."""
        if self.table.get(rec.id) is not rec or rec.attempts:
            return False
        if rec.status is QUEUED:
            if not self.ready.remove(rec):
                return False
        elif rec.status is SCHEDULED:
            self._unschedule(rec)
        else:
            return False
        self.table.remove(rec)
        self._stats.enqueued -= 1
        self._stats.enqueued_p[rec.priority] -= 1
        if self.store is not None:
            self.store.forget(rec)
        return True

    # ------------------------------------------------------------------ workers

    def retry_later(self, rec: JobRecord, due_wall: float, worker: int | None,
                    duration: float | None, *, timer_running: bool = True) -> None:
        """A failed attempt with retries left: SCHEDULED until ``due_wall``.  With the
        timer stopped (shutdown) it waits in the store, or is dropped in memory mode."""
        kind = move(rec, JobEvent.RETRY_LATER)
        rec.scheduled_for = due_wall
        self._stats.retried += 1
        self._stats.retried_p[rec.priority] += 1
        if timer_running:
            self.timer.schedule(rec, due_wall)
        else:
            self.timer.hold(rec)
        self.changes.changed(kind, rec, worker, duration)

    def release(self, rec: JobRecord, worker: int | None) -> None:
        """An interrupted job (shutdown, Ctrl+C): back to the front of its queue as
        QUEUED, the attempt counted."""
        kind = move(rec, JobEvent.INTERRUPT)
        rec.started_at = None
        self.ready.put_front(rec)
        self.changes.changed(kind, rec, worker, None)

    async def commit_start(self, rec: JobRecord) -> None:
        """A job recovered after a crash: make this attempt's start durable first, so a
        handler that kills the process has its attempts counted (see recovery)."""
        rec.durable_start = False
        assert self.store is not None
        try:
            await self.store.wait_committed(rec)
        except StoreError as exc:
            log.warning("job %s: could not record its start (%s); running it anyway", rec.id, exc)

    # ------------------------------------------------------------------ the timer

    async def promote(self, now: float) -> float:
        """Move the jobs due at ``now`` (trio time) into their ready queues; return
        when the next one comes due (``inf``: none)."""
        ready = self.ready
        changes = self.changes
        for rec in self.timer.due(now):
            ready.release_delay_slot(rec)
            kind = move(rec, JobEvent.DUE)
            rec.scheduled_for = None
            ready.make_ready(rec, now)
            changes.changed(kind, rec, None, None)
        return self.timer.next_due()

    async def wait_timer(self, deadline: float) -> None:
        await self.timer.wait(deadline)

    def wake_timer(self) -> None:
        self.timer.wake()

    # ------------------------------------------------------------------ queries

    def get_nowait(self, job_id: str) -> JobRecord | None:
        return self.table.get(job_id)

    async def find(self, job_id: str) -> JobRecord | None:
        """The job in memory, else in the store; ``None`` when neither has it."""
        rec = self.table.get(job_id)
        if rec is None and self.store is not None:
            return await self.store.lookup(job_id)
        await trio.lowlevel.checkpoint()
        return rec

    async def list(self, status: JobStatus | None, limit: int, task: str | None = None,
                   before: str | None = None) -> tuple[list[Job], str | None]:
        if self.store is not None:
            return await self.store.list(self.table.get, status, limit, task, before)
        await trio.lowlevel.checkpoint()
        return self.table.newest(status, limit, task, before)

    def depths(self) -> tuple[int, int, int]:
        return self.ready.depths()

    def repeat_of(self, stored: JobRecord, rec: JobRecord) -> JobRecord:
        """``stored`` (a job that left memory) if ``rec`` repeats it; else raise
        :class:`DuplicateJob`."""
        return same_or_duplicate(stored, rec)

    # ------------------------------------------------------------------ control

    async def cancel(self, job_id: str) -> JobRecord:
        """Cancel a QUEUED or SCHEDULED job; return its record.  A PROCESSING job is
        returned as it is (its worker's scope is the engine's to cancel).  Raises
        :class:`JobNotFound`, or :class:`InvalidTransition` for a finished job."""
        rec = self.table.get(job_id)
        if rec is None:
            stored = None if self.store is None else await self.store.lookup(job_id)
            if stored is None:
                raise JobNotFound(f"job {job_id!r} not found")
            if job_id in self.table:  # loaded from the backlog meanwhile
                return await self.cancel(job_id)
            # A queued job still waiting in the store's recovery backlog (or one of a
            # task this registry lacks): cancelled where it is; the backlog skips it.
            transition(stored.status, JobEvent.CANCEL)  # raises for a finished job
            self.table.add(stored)
            self.table.finish(stored, JobEvent.CANCEL, self.now())
            return stored
        status = rec.status
        if status is PROCESSING:
            return rec
        transition(status, JobEvent.CANCEL)  # raises for a finished job
        if status is QUEUED:
            self.ready.remove(rec)
        else:
            self._unschedule(rec)
        self.table.finish(rec, JobEvent.CANCEL, self.now())
        await trio.lowlevel.cancel_shielded_checkpoint()  # (done: no Cancelled now)
        return rec

    async def retry(self, job_id: str) -> JobRecord:
        """Put a FAILED or CANCELLED job back in its queue with a fresh set of attempts,
        waiting for room.  Raises :class:`JobNotFound`, :class:`InvalidTransition`,
        :class:`ShuttingDown` (intake closed meanwhile)."""
        rec = self.table.get(job_id)
        if rec is None and self.store is not None:
            rec = await self.store.lookup(job_id)
            if rec is not None and rec.spec is None:
                rec.spec = self._registry.get(rec.task)  # raises UnknownTask
        if rec is None:
            raise JobNotFound(f"job {job_id!r} not found")
        transition(rec.status, JobEvent.REQUEUE)
        ready = self.ready
        p = rec.priority
        while not ready.has_room(p):
            await ready.park_for_room(p)
            try:
                self.check_intake()
                transition(rec.status, JobEvent.REQUEUE)  # someone else may have retried it
            except BaseException:
                ready.pass_room_on(ready.room_lot(p), p)  # the room it was woken for
                raise
        kind = move(rec, JobEvent.REQUEUE)
        rec.attempts = 0
        rec.started_at = None  # as on Redis: the fresh attempts have not started
        rec.finished_at = None
        rec.scheduled_for = None
        rec.result = None
        rec.result_json = None
        rec.progress = None  # the runs before reported it
        self.table.add(rec)
        ready.make_ready(rec, self.now())
        self.changes.changed(kind, rec, None, None)
        return rec

    def check_intake(self) -> None:
        """Raise :class:`ShuttingDown` once intake closed (counted as rejected), or
        :class:`StoreError` while the store fails to write."""
        if self.ready.closed:
            self._stats.rejected += 1
            raise ShuttingDown("the queue is shutting down and takes no new jobs")
        if self.store is not None:
            self.store.check()

    # ------------------------------------------------------------------ recovery

    def restore(self, rec: JobRecord) -> None:
        """Put a record recovered from the store back: QUEUED into its ready queue
        (even past the bound: it was accepted already), SCHEDULED into the timer."""
        self.table.add(rec)
        if rec.status is SCHEDULED:
            if rec.scheduled_for is None:  # pragma: no cover - the engine always sets it
                rec.scheduled_for = self._now_wall()
            self.timer.schedule(rec, rec.scheduled_for)
        else:
            self.ready.make_ready(rec, self.now())

    def restore_interrupted(self, rec: JobRecord) -> None:
        """A job stored as PROCESSING: the process died while it ran.  The attempt
        counts; with none left the job is FAILED, otherwise it is queued again."""
        rec.started_at = None
        if rec.attempts > rec.max_retries:
            self._fail_recovered(
                rec, f"ProcessDied: the process stopped while attempt {rec.attempts} ran "
                f"(max_retries={rec.max_retries})"
            )
            return
        kind = move(rec, JobEvent.INTERRUPT)
        rec.durable_start = True
        self.restore(rec)
        self.changes.changed(kind, rec, None, None)

    def restore_exhausted(self, rec: JobRecord) -> bool:
        """A QUEUED job recovered from the store with no attempts left: its last one
        was interrupted (a shutdown put it back, attempt counted).  It ends FAILED instead
        of running again, as a job found PROCESSING does, so that a handler that stops
        its process in an orderly way (sending it SIGTERM, say) is not re-run on every
        restart.  True when it did."""
        if rec.attempts <= rec.max_retries:
            return False
        self._fail_recovered(
            rec, f"Interrupted: the queue stopped while attempt {rec.attempts} ran "
            f"(max_retries={rec.max_retries})"
        )
        return True

    def _fail_recovered(self, rec: JobRecord, error: str) -> None:
        """A recovered job with no attempts left: it ends FAILED without running."""
        self.table.add(rec)  # in its stored state: finish() ends it
        rec.error = error
        self.table.finish(rec, JobEvent.GIVE_UP, self.now())

    def _now_wall(self) -> float:
        return self._clock.current_time() + self._wall

    # ------------------------------------------------------------------ test hooks

    def attach(self, queue: object) -> None:
        """Let :meth:`of` find this backend from ``queue`` (the engine does it at open)."""
        _BY_QUEUE[queue] = weakref.ref(self)

    @staticmethod
    def of(queue: object) -> LocalBackend:
        """Test hook: the local backend behind ``queue`` (a :class:`JobQueue`)."""
        backend = _BY_QUEUE[queue]()
        if backend is None:  # pragma: no cover - the queue holds its backend
            raise KeyError(queue)
        return backend

    def jobs_in_memory(self) -> int:
        """Test hook: every job held in memory, live or finished."""
        return len(self.table.by_id)

    def parked_producers(self) -> tuple[int, int, int]:
        """Test hook: producers waiting for room in each ready queue, not yet woken."""
        return self.ready.parked_producers()

    def ready_lengths(self) -> tuple[int, int, int]:
        """Test hook: jobs in each ready queue (the store's backlog not counted)."""
        return self.ready.lengths()

    def delayed_waiting(self) -> tuple[int, int, int]:
        """Test hook: new delayed jobs waiting for their due time, by priority (their
        own bound)."""
        return self.ready.delayed_waiting()
