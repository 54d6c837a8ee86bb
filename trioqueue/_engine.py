"""The engine: ready queues, the fair picker, workers, the timer, and ordered shutdown.

Everything here runs in tasks of the nurseries :func:`open_queue` opens::

    open_queue(registry, config)
    └── root nursery                 cancelled last
        ├── persistence task         (with persist_path) flushes changed jobs, group commit
        └── work nursery             cancelled first
            ├── timer task           one heap of due times: delays and retry backoff
            └── worker 0..N-1        take the next job the fair picker names, run it

The hot path avoids a scheduler round trip per job: a worker takes ready jobs without
waiting while there are any and checkpoints every :data:`CHECKPOINT_EVERY` jobs (or
sooner when a job took long), and counters replace per-job statistics calls.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import random
import signal
import time
import traceback as tb_module
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._config import QueueConfig
from ._events import Broadcaster, Event
from ._exceptions import (
    DuplicateJob,
    InvalidJob,
    JobNotFound,
    QueueFull,
    ShuttingDown,
    StoreError,
    TrioQueueError,
)
from ._fairness import FairPicker
from ._gil import lowered_switch_interval
from ._job import TERMINAL, Job, JobStatus, Priority, check_job_id, check_json
from ._metrics import MASK, Metrics, Sampler
from ._registry import TaskRegistry, TaskSpec
from ._state import JobEvent, transition

if TYPE_CHECKING:
    from ._persistence import Persistence

log = logging.getLogger("trioqueue")

CHECKPOINT_EVERY = 64
"""A worker that keeps finding ready jobs yields to the scheduler at least this often."""
CHECKPOINT_AFTER = 0.001
"""... and whenever this many seconds passed since its last yield."""

QUEUED = JobStatus.QUEUED
SCHEDULED = JobStatus.SCHEDULED
PROCESSING = JobStatus.PROCESSING
COMPLETED = JobStatus.COMPLETED
FAILED = JobStatus.FAILED
CANCELLED = JobStatus.CANCELLED
_LABELS = ("high", "medium", "low")
_PRIORITIES = (Priority.HIGH, Priority.MEDIUM, Priority.LOW)
_SIMPLE_RESULT = (str, int, bool, type(None))
_new_tuple = tuple.__new__


def _from_sigint(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by the process's SIGINT handler: a Ctrl+C, not a
    ``raise KeyboardInterrupt`` in the code it went through.

    A Python signal handler runs on top of whatever frame was running when the signal
    came, so what it raises has the handler's own frame as the last entry of its
    traceback.  Trio's handler (``trio.run`` installs it in the main thread) raises
    ``KeyboardInterrupt`` that way when the signal lands in code that is not
    KI-protected, such as a job's handler; a handler's own ``raise KeyboardInterrupt``
    ends in the handler's frame.  A handler written in C (``signal.default_int_handler``)
    leaves no frame, but trio replaces that one while it runs.
    """
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    handler = signal.getsignal(signal.SIGINT)
    return tb.tb_frame.f_code is getattr(handler, "__code__", None)


def _passing_through(exc: BaseException) -> tuple[BaseException | None, BaseException | None]:
    """What of a handler's ``BaseException`` that is not an ``Exception`` is not the
    attempt's failure: ``(cancelled, ctrl_c)``.

    ``cancelled`` is a ``trio.Cancelled``, or the part of an exception group that is
    (a handler's nursery cancelled by our scope: cancel(), the timeout, shutdown);
    ``ctrl_c`` a ``KeyboardInterrupt`` from the SIGINT handler (see :func:`_from_sigint`),
    or the part of a group that is.  Both ``None``: the handler's own, a failure.
    """
    if isinstance(exc, trio.Cancelled):
        return exc, None
    if isinstance(exc, KeyboardInterrupt):
        return None, exc if _from_sigint(exc) else None
    if isinstance(exc, BaseExceptionGroup):
        cancelled = exc.split(trio.Cancelled)[0]
        if cancelled is not None:
            return cancelled, None
        return None, exc.split(lambda e: isinstance(e, KeyboardInterrupt) and _from_sigint(e))[0]
    return None, None


@trio.lowlevel.enable_ki_protection
def _sigint_again() -> None:
    """Raise SIGINT again, from KI-protected code.

    Trio's SIGINT handler, finding the signal in protected code, does what it does with
    a Ctrl+C that arrives while trio's own code runs: it raises ``KeyboardInterrupt`` in
    the main task at its next checkpoint (the body of ``open_queue``, typically, whose
    exit is the graceful shutdown).  Any other SIGINT handler raises here again.
    """
    signal.raise_signal(signal.SIGINT)


_id_bits = random.Random(os.urandom(32)).getrandbits
_id_ms = -1
_id_head = ""
_id_seq = 0xFFF
_HEX3 = tuple(f"{i:03x}" for i in range(0x1000))


def _new_id() -> str:
    """A UUIDv7 (RFC 9562) in hex: milliseconds since the epoch, 62 random bits, and a
    12-bit counter (the "monotonic random" method of RFC 9562, section 6.2).

    Ids made by one process sort in the order they were made, so the store appends to
    its id index instead of inserting at random places (random uuid4 ids halved the
    write rate of the SQLite store).  The first 29 hex digits are drawn once per
    millisecond (or per 4096 ids) and the counter's three digits come from a table, so
    an id costs a clock read and a string concatenation.  Ids are unique, not secret:
    the random part comes from a fast generator seeded from ``os.urandom``.
    """
    global _id_ms, _id_head, _id_seq
    ms = time.time_ns() // 1_000_000
    if ms <= _id_ms:  # the same millisecond, or the clock stepped back: count on
        if _id_seq < 0xFFF:
            _id_seq += 1
            return _id_head + _HEX3[_id_seq]
        ms = _id_ms + 1  # 4096 ids in one millisecond: take the next one
    _id_ms, _id_seq = ms, 0
    # 48 bits of time, version 7, 12 random bits (rand_a), variant 0b10, 50 random bits;
    # the counter fills the last 12 bits of rand_b.
    head = ms << 68 | 0x7 << 64 | _id_bits(12) << 52 | 0x2 << 50 | _id_bits(50)
    _id_head = f"{head:029x}"
    return _id_head + "000"


@attrs.define(slots=True, eq=False)
class JobRecord:
    """The engine's mutable record of a job.  Only the engine changes it; everyone else
    gets :class:`Job` snapshots."""

    id: str
    task: str
    payload: Any
    payload_json: str
    priority: int
    status: JobStatus
    attempts: int
    max_retries: int
    timeout: float | None
    created_at: float
    scheduled_for: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    # Engine bookkeeping, never persisted:
    spec: TaskSpec | None = None
    ready_at: float = 0.0
    """trio time when the job entered a ready queue, for the wait metric."""
    timer_gen: int = 0
    """Bumped whenever the job is (re)scheduled; stale heap entries are skipped."""
    holds_delay_slot: bool = False
    """A new delayed job counts against its priority's delayed capacity until due."""
    durable_start: bool = False
    """Recovered after a crash: commit the next start before running the handler."""
    waiters: list[trio.Event] | None = None

    def snapshot(self) -> Job:
        return _new_tuple(Job, (  # skips NamedTuple.__new__'s argument parsing
            self.id,
            self.task,
            self.payload,
            _PRIORITIES[self.priority],
            self.status,
            self.attempts,
            self.max_retries,
            self.timeout,
            self.created_at,
            self.scheduled_for,
            self.started_at,
            self.finished_at,
            self.result,
            self.error,
            self.traceback,
        ))


@attrs.define(eq=False)
class _WorkerSlot:
    index: int
    scope: trio.CancelScope | None = None
    current: JobRecord | None = None
    cancel_requested: bool = False
    started: float = 0.0


class JobQueue:
    """A running queue.  Get one from :func:`open_queue`; there is no public constructor.

    Every method is safe to call from any task of the ``trio.run`` that opened it.
    """

    def __init__(
        self,
        registry: TaskRegistry,
        config: QueueConfig,
        persistence: Persistence | None = None,
        *,
        _token: object = None,
    ) -> None:
        if _token is not _OPEN_QUEUE_TOKEN:
            raise TypeError("JobQueue has no public constructor; use trioqueue.open_queue()")
        self._registry = registry
        self._intake: dict[str, tuple[TaskSpec, int, int, float | None]] = {}
        """Per task name: its spec and resolved job defaults (see :meth:`_intake_of`)."""
        self._config = config
        self._policy = config.retry_policy()
        self._capacity = config.capacity
        self._picker = FairPicker(config.fairness)
        self._ready: list[deque[JobRecord]] = [deque(), deque(), deque()]
        self._room = [trio.lowlevel.ParkingLot() for _ in range(3)]
        self._room_waiting = [0, 0, 0]
        """Producers parked in ``_room`` and not yet woken (see :meth:`_park_for_room`): an
        int the worker tests per job, where a ParkingLot's ``len()`` is a Python-level
        call."""
        self._delay_room = [trio.lowlevel.ParkingLot() for _ in range(3)]
        self._idle: list[trio.lowlevel.Task] = []
        """Workers parked for want of work, most recently parked last (woken first: its
        cache is warm).  A plain list and ``reschedule``: a ParkingLot's ordered dict and
        outcome objects cost a measurable share of a no-op job."""
        self._delayed_new = [0, 0, 0]
        # Recovery backlog: queued jobs still in the store, streamed in as queues drain.
        self._backlog = [0, 0, 0]
        self._backlog_lot = [trio.lowlevel.ParkingLot() for _ in range(3)]
        self._refill: list[trio.Event | None] = [None, None, None]
        self._refill_low = [0, 0, 0]
        self._jobs: dict[str, JobRecord] = {}
        self._finished: deque[tuple[float, JobRecord]] = deque()
        self._finished_cap = config.finished_cache
        self._result_ttl = config.result_ttl
        self._heap: list[tuple[float, int, int, JobRecord]] = []
        self._heap_seq = 0
        self._timer_wake = trio.Event()
        self._slots = [_WorkerSlot(i) for i in range(config.workers)]
        self._events = Broadcaster(on_change=self._observers_changed)
        self._persist = persistence
        self._random = random.Random()
        # The run's clock, looked up once: trio.current_time() costs three lookups a call.
        self._clock = trio.lowlevel.current_clock()
        self._wall_offset = time.time() - self._clock.current_time()
        self._opened_at = self._clock.current_time()
        self._enqueue_since = 0
        self._enqueue_yield = -math.inf
        self._debug = log.isEnabledFor(logging.DEBUG)
        self._observed = False
        """Whether anything watches state changes (the store, subscribers, the debug
        log): one test per change on the hot path instead of three."""
        self._changed: Callable[..., None] = self._announce
        """``_changed(kind, rec, worker=None, duration=None)``: tell whoever watches that
        ``rec`` changed.  :meth:`_announce` tells the store, the subscribers and the
        debug log; while only the store watches it is the store's own
        :meth:`Persistence.changed`, one call per change instead of two."""
        self._observers_changed()
        # Lifecycle flags, in the order shutdown sets them.
        self._closing = False
        self._closed = False
        self._stop_taking = False
        self._draining = False
        self._workers_alive = 0
        self._workers_done = trio.Event()
        self._stopping = trio.Event()
        """Set when shutdown begins (a worker that passed on a Ctrl+C waits for it)."""
        # Counters (plain ints: no per-job allocation).
        self._n_enqueued = 0
        self._n_completed = 0
        self._n_failed = 0
        self._n_retried = 0
        self._n_cancelled = 0
        self._n_rejected = 0
        self._n_dropped = 0
        self._n_scheduled = 0
        self._busy_time = 0.0
        self._wait = Sampler()
        self._run = Sampler()

    # ------------------------------------------------------------------ helpers

    @property
    def config(self) -> QueueConfig:
        return self._config

    @property
    def registry(self) -> TaskRegistry:
        return self._registry

    @property
    def closing(self) -> bool:
        """True once shutdown began: new jobs are refused with :class:`ShuttingDown`."""
        return self._closing

    def _observers_changed(self) -> None:
        watched = self._debug or bool(self._events._subs)
        persist = self._persist
        self._observed = persist is not None or watched
        self._changed = persist.changed if persist is not None and not watched else self._announce

    def _now(self) -> float:
        return self._clock.current_time() + self._wall_offset

    def _emit(self, kind: str, rec: JobRecord, worker: int | None = None,
              duration: float | None = None) -> None:
        events = self._events
        events.publish(
            Event(
                seq=events.next_seq(),
                type=kind,
                at=self._now(),
                job_id=rec.id,
                task=rec.task,
                priority=_LABELS[rec.priority],
                status=rec.status.value,
                attempt=rec.attempts,
                worker=worker,
                error=rec.error if kind in ("retrying", "failed") else None,
                duration=duration,
            )
        )

    def _announce(self, kind: str, rec: JobRecord, worker: int | None = None,
                  duration: float | None = None) -> None:
        """Tell the store, the subscribers and the debug log that ``rec`` changed."""
        if self._persist is not None:
            self._persist.changed(kind, rec)
        if self._events._subs and self._events.takes():  # (not if all are over max_rate)
            self._emit(kind, rec, worker, duration)
        if self._debug:
            log.debug(
                "job %s %s task=%s priority=%s attempt=%d%s",
                rec.id, kind, rec.task, _LABELS[rec.priority], rec.attempts,
                f" error={rec.error!r}" if kind in ("retrying", "failed") else "",
            )

    def _lookup(self, job_id: str) -> JobRecord:
        rec = self._jobs.get(job_id)
        if rec is None:
            raise JobNotFound(f"job {job_id!r} not found")
        return rec

    # ------------------------------------------------------------------ intake

    def _prepare(
        self,
        task: str,
        payload: Any,
        priority: Priority | str | None,
        job_id: str | None,
        delay: float,
        max_retries: int | None,
        timeout: float | None,
        stored: JobRecord | None = None,
    ) -> tuple[JobRecord | None, JobRecord | None]:
        """Validate everything and build the record, touching no queue state.

        Returns ``(new_record, None)`` or ``(None, existing)`` for an idempotent repeat.
        ``stored`` is the record the store holds under ``job_id`` when it is not in memory.
        """
        intake = self._intake.get(task) if task.__class__ is str else None
        if intake is None:
            intake = self._intake_of(task)  # raises UnknownTask
        spec, prio, retries, limit = intake
        if priority is not None:
            prio = int(Priority.coerce(priority))
        if delay:
            if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not (
                delay >= 0 and math.isfinite(delay)
            ):
                raise InvalidJob(f"delay: expected a number of seconds >= 0, got {delay!r}")
        if max_retries is not None:
            if isinstance(max_retries, bool) or not isinstance(max_retries, int) or (
                max_retries < 0
            ):
                raise InvalidJob(f"max_retries: expected an integer >= 0, got {max_retries!r}")
            retries = max_retries
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
                timeout > 0 and math.isfinite(timeout)
            ):
                raise InvalidJob(f"timeout: expected a number of seconds > 0, got {timeout!r}")
            limit = float(timeout)
        payload_json = "null" if payload is None else check_json("payload", payload)
        if job_id is None:
            new_id = _new_id()
        else:
            new_id = check_job_id(job_id)
            existing = self._jobs.get(new_id)
            if existing is None and stored is not None and stored.id == new_id:
                existing = stored
            if existing is not None:
                if existing.task == task and existing.payload_json == payload_json:
                    return None, existing
                raise DuplicateJob(
                    f"id: job {new_id!r} already exists with a different "
                    + ("task" if existing.task != task else "payload")
                )
        now = self._clock.current_time()
        rec = JobRecord(
            new_id, task, payload, payload_json, prio, QUEUED, 0, retries, limit,
            now + self._wall_offset, None, None, None, None, None, None, spec, now,
        )
        if delay:
            rec.status = SCHEDULED
            rec.scheduled_for = rec.created_at + delay
        return rec, None

    def _restamp(self, rec: JobRecord, delay: float) -> None:
        """Date a prepared record that had to wait for room as of now (its id stays)."""
        now = self._clock.current_time()
        rec.ready_at = now
        rec.created_at = now + self._wall_offset
        if rec.status is SCHEDULED:
            rec.scheduled_for = rec.created_at + delay

    def _intake_of(self, task: str) -> tuple[TaskSpec, int, int, float | None]:
        """A task's spec with its job defaults resolved: priority (an int), retries and
        timeout, the task's own or else the config's.  Looked up once per task name (the
        registry only grows, and specs and the config are frozen)."""
        spec = self._registry.get(task)  # raises UnknownTask
        config = self._config
        intake = (
            spec,
            int(spec.priority),
            config.max_retries if spec.max_retries is None else spec.max_retries,
            config.default_timeout if spec.timeout is None else spec.timeout,
        )
        self._intake[task] = intake
        return intake

    def _try_admit(self, rec: JobRecord) -> bool:
        """Put a validated new record into the queue if its priority has room.

        A QUEUED job needs room in its ready queue, and no recovered backlog of its
        priority still in the store (that goes first); a SCHEDULED one needs room among
        the new delayed jobs of its priority.
        """
        p = rec.priority
        if rec.status is SCHEDULED:
            if self._delayed_new[p] >= self._capacity:
                return False
            self._jobs[rec.id] = rec
            self._n_enqueued += 1
            rec.holds_delay_slot = True
            self._delayed_new[p] += 1
            self._schedule(rec, rec.scheduled_for)  # type: ignore[arg-type]
            self._changed("scheduled", rec)
            return True
        ready = self._ready[p]
        if len(ready) >= self._capacity or self._backlog[p]:
            return False
        self._jobs[rec.id] = rec
        self._n_enqueued += 1
        ready.append(rec)  # rec.ready_at is its creation time
        if self._idle:
            trio.lowlevel.reschedule(self._idle.pop())
        if self._observed:
            self._changed("enqueued", rec)
        return True

    async def _park_for_room(self, p: int) -> None:
        """Wait until a worker takes a job of priority ``p`` (or a queued one leaves).

        ``_room_waiting[p]`` counts the producers parked here.  Whoever wakes one takes
        it off the count at once (:meth:`_wake_for_room`), so that the next job taken
        before the woken producer runs does not try to wake it again; a producer that
        leaves without being woken (cancelled) takes itself off.
        """
        self._room_waiting[p] += 1
        try:
            await self._room[p].park()
        except BaseException:
            self._room_waiting[p] -= 1
            raise

    def _wake_for_room(self, p: int) -> None:
        """Room for one job of priority ``p``: wake one parked producer, if any."""
        if self._room_waiting[p] and self._room[p].unpark():
            self._room_waiting[p] -= 1

    def _pass_room_on(self, lot: trio.lowlevel.ParkingLot, p: int) -> None:
        """A producer woken from ``lot`` (priority ``p``'s room, or its delayed room)
        leaves without taking the room: wake the next one, if the room is still there
        (a wake-up when it is not would only send that one to the back of the line)."""
        if lot is self._room[p]:
            if len(self._ready[p]) < self._capacity and not self._backlog[p]:
                self._wake_for_room(p)
        elif self._delayed_new[p] < self._capacity:
            lot.unpark()

    def _make_ready(self, rec: JobRecord, now: float) -> None:
        rec.ready_at = now
        self._ready[rec.priority].append(rec)
        if self._idle:
            trio.lowlevel.reschedule(self._idle.pop())

    def _schedule(self, rec: JobRecord, due_wall: float) -> None:
        self._n_scheduled += 1
        rec.timer_gen += 1
        self._heap_seq += 1
        due = due_wall - self._wall_offset
        entry = (due, self._heap_seq, rec.timer_gen, rec)
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:
            self._timer_wake.set()

    def _refuse_if_closing(self) -> None:
        if self._closing:
            self._n_rejected += 1
            raise ShuttingDown("the queue is shutting down and takes no new jobs")
        if self._persist is not None:
            self._persist.check()

    def _withdraw(self, rec: JobRecord) -> bool:
        """Take back a job whose commit failed, if no worker has touched it yet.  True
        when it was taken back (it will not run)."""
        if self._jobs.get(rec.id) is not rec or rec.attempts:
            return False
        if rec.status is QUEUED:
            try:
                self._ready[rec.priority].remove(rec)
            except ValueError:
                return False
            self._wake_for_room(rec.priority)
        elif rec.status is SCHEDULED:
            rec.timer_gen += 1
            self._n_scheduled -= 1
            self._release_delay_slot(rec)
        else:
            return False
        del self._jobs[rec.id]
        self._n_enqueued -= 1
        if self._persist is not None:
            self._persist.forget(rec)
        return True

    def enqueue_nowait(
        self,
        task: str,
        payload: Any = None,
        *,
        priority: Priority | str | None = None,
        job_id: str | None = None,
        delay: float = 0.0,
        max_retries: int | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Add a job now or raise: :class:`QueueFull` when its priority has no room.

        Raises :class:`UnknownTask`, :class:`InvalidJob`, :class:`DuplicateJob` and
        :class:`ShuttingDown` as :meth:`enqueue` does.  With ``durability="sync"`` the job
        is accepted but not yet committed when this returns; use :meth:`enqueue` to wait.
        """
        persist = self._persist
        if self._closing or (persist is not None and persist.error is not None):
            self._refuse_if_closing()
        rec, existing = self._prepare(task, payload, priority, job_id, delay, max_retries, timeout)
        if existing is not None:
            return existing.snapshot()
        assert rec is not None
        if not self._try_admit(rec):
            self._n_rejected += 1
            backlog = self._backlog[rec.priority] if rec.status is QUEUED else 0
            raise QueueFull(
                f"priority {_LABELS[rec.priority]}: "
                + (
                    f"{backlog} jobs recovered from the store run first"
                    if backlog
                    else f"{self._capacity} jobs already waiting"
                    + (" for a due time" if rec.status is SCHEDULED else "")
                )
            )
        return rec.snapshot()

    async def enqueue(
        self,
        task: str,
        payload: Any = None,
        *,
        priority: Priority | str | None = None,
        job_id: str | None = None,
        delay: float = 0.0,
        max_retries: int | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Add a job, waiting for room in its priority's queue; return its snapshot.

        ``payload`` must be JSON-serializable.  ``priority`` defaults to the task's,
        ``max_retries`` and ``timeout`` to the task's and then the config's.  ``delay``
        seconds makes the job SCHEDULED until then.  Giving a ``job_id`` makes the call
        idempotent: the same id with the same task and payload returns the existing job;
        with another task or payload it raises :class:`DuplicateJob`.

        With persistence and ``durability="sync"`` it returns only once the job is
        committed to disk.  Nothing is enqueued when it raises.

        Every call is a cancel point.  It is a schedule point whenever it waits, and
        otherwise at least every :data:`CHECKPOINT_EVERY` calls or
        :data:`CHECKPOINT_AFTER` seconds, not on every call: a loop of enqueues hands
        the workers jobs in batches.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        parked = False
        stored = None
        if job_id is not None and self._persist is not None and job_id not in self._jobs:
            # The id may belong to a finished job that has left memory: ask the store.
            stored = await self._persist.lookup(job_id)
            parked = True  # that await was the checkpoint
        rec: JobRecord | None = None
        persist = self._persist
        # The lot that woke this call for room it has not taken yet.  Leaving without
        # taking it (an existing job returned, an error, ...), it wakes the next in line
        # (_pass_room_on): nobody else would, and they would wait with room free.
        woken: trio.lowlevel.ParkingLot | None = None
        p = 0
        try:
            while True:
                if self._closing or (persist is not None and persist.error is not None):
                    self._refuse_if_closing()
                if rec is not None and job_id is None:
                    self._restamp(rec, delay)  # waited for room: the same job, accepted now
                else:
                    rec, existing = self._prepare(
                        task, payload, priority, job_id, delay, max_retries, timeout, stored
                    )
                    if existing is not None:
                        if woken is not None:
                            self._pass_room_on(woken, p)
                            woken = None
                        snapshot = existing.snapshot()
                        if self._persist is not None:
                            await self._persist.wait_committed()
                        elif not parked:
                            await trio.lowlevel.cancel_shielded_checkpoint()
                        return snapshot
                    assert rec is not None
                if self._try_admit(rec):
                    break
                parked = True
                woken = None  # taken by someone else meanwhile: in line again
                p = rec.priority
                if rec.status is SCHEDULED:
                    await self._delay_room[p].park()
                    woken = self._delay_room[p]
                elif self._backlog[p]:
                    await self._backlog_lot[p].park()  # all are woken at once
                else:
                    await self._park_for_room(p)
                    woken = self._room[p]
        except BaseException:
            if woken is not None:
                self._pass_room_on(woken, p)
            raise
        accepted = rec.snapshot()  # the job as accepted, before any worker touches it
        if self._persist is not None and self._persist.durable:
            await self._commit_or_take_back(rec, take_back=True)
        elif not parked:
            # A schedule point as often as the workers take one (every CHECKPOINT_EVERY
            # calls, or CHECKPOINT_AFTER seconds), not per call: a yield costs more than
            # the rest of a job, and the workers then find jobs in batches.
            self._enqueue_since += 1
            if (self._enqueue_since >= CHECKPOINT_EVERY
                    or rec.ready_at - self._enqueue_yield >= CHECKPOINT_AFTER):
                self._enqueue_since = 0
                await trio.lowlevel.cancel_shielded_checkpoint()
                self._enqueue_yield = self._clock.current_time()
        return accepted

    async def _commit_or_take_back(self, rec: JobRecord | None, *, take_back: bool) -> None:
        """Wait for the commit holding ``rec`` (everything marked, for ``None``).  If it
        fails the job was not acknowledged: with ``take_back`` it leaves the queue unless
        a worker started it already (then it runs, and is stored once writes work).

        The :class:`StoreError` says which happened, since a caller retrying without a
        job id makes a second job if the first one runs: "the job is not stored and
        will not run"; "the job is not stored yet and may run" (the write failed, but a
        worker has the job); or "not confirmed: the store did not answer within 30 s;
        the job may run" (the write is still under way).
        """
        assert self._persist is not None
        try:
            await self._persist.wait_committed(rec)
        except StoreError as exc:
            if rec is None:
                raise
            from ._persistence import NotConfirmed

            if isinstance(exc, NotConfirmed):  # the write goes on: it may yet commit
                raise StoreError(f"{exc}; the job may run") from None
            if take_back and self._withdraw(rec):
                raise StoreError(f"{exc}; the job is not stored and will not run") from None
            raise StoreError(f"{exc}; the job is not stored yet and may run") from None

    async def _acknowledge(self, job: Job, *, created: bool) -> None:
        """For callers of :meth:`enqueue_nowait` that must not acknowledge a job before
        ``durability="sync"`` has committed it (the HTTP server): wait for that commit.
        If it fails, a job this call ``created`` is taken back (as :meth:`enqueue` does)
        and :class:`StoreError` raised.  With no store, or ``"batch"``, a checkpoint."""
        if self._persist is None or not self._persist.durable:
            await trio.lowlevel.checkpoint()
            return
        await self._commit_or_take_back(self._jobs.get(job.id), take_back=created)

    async def flush(self) -> None:
        """Return once every job accepted so far is committed to the store.

        Memory mode: just a checkpoint.  With ``durability="batch"`` this is how a caller
        makes a batch of ``enqueue_nowait`` calls durable at once (one commit for all).
        """
        if self._persist is not None:
            await self._persist.wait_committed()
        else:
            await trio.lowlevel.checkpoint()

    # ------------------------------------------------------------------ queries

    async def get(self, job_id: str) -> Job:
        """A snapshot of the job now.  Raises :class:`JobNotFound`."""
        rec = self._jobs.get(job_id)
        if rec is None and self._persist is not None:
            found = await self._persist.lookup(job_id)
            if found is not None:
                return found.snapshot()
        await trio.lowlevel.checkpoint()
        if rec is None:
            raise JobNotFound(f"job {job_id!r} not found")
        return rec.snapshot()

    def get_nowait(self, job_id: str) -> Job:
        """A snapshot from memory only (no store lookup).  Raises :class:`JobNotFound`."""
        return self._lookup(job_id).snapshot()

    async def wait(self, job_id: str) -> Job:
        """Wait until the job is COMPLETED, FAILED or CANCELLED; return that snapshot.

        A job that is FAILED already returns at once (it stays FAILED until someone calls
        :meth:`retry`).  Raises :class:`JobNotFound`, or :class:`ShuttingDown` when the
        queue closes while the job is still waiting or was interrupted.
        """
        rec = self._jobs.get(job_id)
        while rec is None:
            job = await self.get(job_id)  # finished long ago (store) or not found
            if job.status.terminal:
                return job
            # Queued in the store's recovery backlog: look again once it may be loaded.
            await trio.sleep(0.05)
            rec = self._jobs.get(job_id)
            if self._closing and rec is None:
                raise ShuttingDown(f"the queue closed before job {job_id!r} finished")
        while rec.status not in TERMINAL:
            if self._closed:
                raise ShuttingDown(
                    f"the queue closed before job {job_id!r} finished (it is {rec.status.value})"
                )
            event = trio.Event()
            if rec.waiters is None:
                rec.waiters = []
            rec.waiters.append(event)
            await event.wait()
        await trio.lowlevel.checkpoint()
        return rec.snapshot()

    async def list_jobs(self, status: JobStatus | str | None = None, limit: int = 100) -> list[Job]:
        """Up to ``limit`` jobs, newest first, optionally only those in ``status``."""
        if status is not None:
            try:
                status = JobStatus(status)
            except ValueError:
                raise InvalidJob(
                    f"status: expected one of {', '.join(s.value for s in JobStatus)}; "
                    f"got {status!r}"
                ) from None
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidJob(f"limit: expected a positive integer, got {limit!r}")
        if self._persist is not None:
            return await self._persist.list(self, status, limit)
        await trio.lowlevel.checkpoint()
        return self._list_memory(status, limit)

    def _list_memory(self, status: JobStatus | None, limit: int) -> list[Job]:
        out: list[Job] = []
        for rec in reversed(self._jobs.values()):
            if status is None or rec.status is status:
                out.append(rec.snapshot())
                if len(out) >= limit:
                    break
        return out

    # ------------------------------------------------------------------ control

    async def cancel(self, job_id: str) -> Job:
        """Cancel a QUEUED, SCHEDULED or PROCESSING job; return the CANCELLED snapshot.

        A running handler is interrupted at its next checkpoint (a sync handler's thread
        is abandoned: it runs on, its result discarded).  If the handler finished before
        it could be interrupted, the finished snapshot is returned.  A job that already
        finished raises :class:`InvalidTransition`.  A cancelled job is never retried by
        itself.
        """
        rec = self._jobs.get(job_id)
        if rec is None:
            stored = None if self._persist is None else await self._persist.lookup(job_id)
            if stored is None:
                raise JobNotFound(f"job {job_id!r} not found")
            if job_id in self._jobs:  # loaded from the backlog meanwhile
                return await self.cancel(job_id)
            transition(stored.status, JobEvent.CANCEL)  # raises for a finished job
            # A queued job still waiting in the store's recovery backlog (or one of a
            # task this registry lacks): cancelled where it is; the backlog skips it.
            self._jobs[job_id] = stored
            self._n_cancelled += 1
            self._finish(stored, CANCELLED, "cancelled")
            return stored.snapshot()
        status = rec.status
        if status is PROCESSING:
            for slot in self._slots:
                if slot.current is rec and slot.scope is not None:
                    slot.cancel_requested = True
                    slot.scope.cancel()
                    break
            return await self.wait(job_id)
        transition(status, JobEvent.CANCEL)  # raises for a finished job
        if status is QUEUED:
            self._ready[rec.priority].remove(rec)
            self._wake_for_room(rec.priority)
        else:
            rec.timer_gen += 1  # its heap entry is stale now
            self._n_scheduled -= 1
            self._release_delay_slot(rec)
        self._finish(rec, CANCELLED, "cancelled")
        self._n_cancelled += 1
        await trio.lowlevel.checkpoint()
        return rec.snapshot()

    async def retry(self, job_id: str) -> Job:
        """Put a FAILED or CANCELLED job back in its queue with a fresh set of attempts.

        Waits for room like :meth:`enqueue`.  Raises :class:`InvalidTransition` for a job
        in any other state, :class:`ShuttingDown` while closing.
        """
        self._refuse_if_closing()
        rec = self._jobs.get(job_id)
        if rec is None and self._persist is not None:
            rec = await self._persist.revive(self, job_id)
        if rec is None:
            raise JobNotFound(f"job {job_id!r} not found")
        transition(rec.status, JobEvent.REQUEUE)
        p = rec.priority
        while len(self._ready[p]) >= self._capacity:
            await self._park_for_room(p)
            try:
                self._refuse_if_closing()
                transition(rec.status, JobEvent.REQUEUE)  # someone else may have retried it
            except BaseException:
                self._pass_room_on(self._room[p], p)  # the room it was woken for
                raise
        rec.status = QUEUED
        rec.attempts = 0
        rec.finished_at = None
        rec.scheduled_for = None
        rec.result = None
        self._jobs[rec.id] = rec
        self._make_ready(rec, self._clock.current_time())
        self._changed("requeued", rec)
        requeued = rec.snapshot()
        if self._persist is not None and self._persist.durable:
            await self._persist.wait_committed(rec)
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
        return requeued

    # ------------------------------------------------------------------ events, metrics

    @asynccontextmanager
    async def subscribe(
        self, buffer: int | None = None, *, metrics: bool = False,
        max_rate: float | None = None,
    ) -> AsyncIterator[trio.MemoryReceiveChannel[Event]]:
        """A channel of every :class:`Event` from now on, with its own bounded buffer.

        A subscriber that falls behind loses events and then receives a ``lagged`` event
        saying how many; it never slows the queue.  With ``metrics=True`` it also receives
        a ``metrics`` event every ``config.metrics_interval`` seconds, starting with one
        at once.  With ``max_rate``, job events over that many a second (bursts of one
        second's worth pass) are dropped and counted in ``lagged`` the same way.  The
        channel ends when the queue closes.
        """
        size = self._config.event_buffer if buffer is None else buffer
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"buffer: expected a positive integer, got {size!r}")
        if max_rate is not None and (
            isinstance(max_rate, bool) or not isinstance(max_rate, (int, float))
            or not 0 < max_rate < float("inf")
        ):
            raise ValueError(f"max_rate: expected events a second > 0, got {max_rate!r}")
        receive = self._events.add(size, metrics, max_rate)
        if metrics:
            self._events.publish(self.metrics_event())
            self._timer_wake.set()  # the timer starts ticking metrics
        try:
            with receive:
                yield receive
        finally:
            self._events.remove(receive)

    def metrics_event(self) -> Event:
        """A ``metrics`` event holding :meth:`metrics` now (for event streams)."""
        return Event(
            seq=self._events.next_seq(),
            type="metrics",
            at=self._now(),
            metrics=self.metrics().to_dict(),
        )

    def metrics(self) -> Metrics:
        """Counters, gauges and latency percentiles, as of now."""
        now = self._clock.current_time()
        uptime = now - self._opened_at
        busy = self._busy_slots()
        in_flight = sum(now - s.started for s in busy)
        capacity_time = uptime * len(self._slots)
        utilization = (
            min(1.0, (self._busy_time + in_flight) / capacity_time) if capacity_time > 0 else 0.0
        )
        w50, w99 = self._wait.percentiles(0.5, 0.99)
        r50, r99 = self._run.percentiles(0.5, 0.99)
        return Metrics(
            enqueued=self._n_enqueued,
            started=self._wait.n,  # one wait sample per start
            completed=self._n_completed,
            failed=self._n_failed,
            retried=self._n_retried,
            cancelled=self._n_cancelled,
            rejected=self._n_rejected,
            queued={
                label: len(q) + backlog
                for label, q, backlog in zip(_LABELS, self._ready, self._backlog, strict=True)
            },
            scheduled=self._n_scheduled,
            processing=len(busy),
            workers=len(self._slots),
            busy_workers=len(busy),
            utilization=utilization,
            wait_p50=w50,
            wait_p99=w99,
            run_p50=r50,
            run_p99=r99,
            uptime=uptime,
            dropped=self._n_dropped,
        )

    # ------------------------------------------------------------------ state changes

    def _finish(self, rec: JobRecord, status: JobStatus, kind: str,
                worker: int | None = None, duration: float | None = None) -> None:
        """Record a terminal state, wake waiters, and age old finished jobs out.

        The worker loop does the same for a completed job inline (keep the two alike).
        """
        now_wall = self._clock.current_time() + self._wall_offset
        rec.status = status
        rec.finished_at = now_wall
        if self._observed:
            self._changed(kind, rec, worker, duration)
        if rec.waiters:
            self._wake_waiters(rec)
        finished = self._finished
        finished.append((now_wall, rec))
        if len(finished) > self._finished_cap or finished[0][0] < now_wall - self._result_ttl:
            self._age_out(now_wall)

    @staticmethod
    def _wake_waiters(rec: JobRecord) -> None:
        """Wake the tasks in :meth:`wait` for ``rec``."""
        for event in rec.waiters or ():
            event.set()
        rec.waiters = None

    def _age_out(self, now_wall: float) -> None:
        """Forget finished jobs beyond ``finished_cache`` or older than ``result_ttl``."""
        finished = self._finished
        horizon = now_wall - self._result_ttl
        cap = self._finished_cap
        if len(finished) > cap:
            cap -= cap // 64  # a little below the cap: one call per cap/64 jobs, not per job
        jobs = self._jobs
        while finished and (len(finished) > cap or finished[0][0] < horizon):
            ended, old = finished.popleft()
            # A job re-queued by retry() since it finished is live again: keep it.
            if old.finished_at == ended and old.status in TERMINAL and jobs.get(old.id) is old:
                del jobs[old.id]

    def _release_delay_slot(self, rec: JobRecord) -> None:
        if rec.holds_delay_slot:
            rec.holds_delay_slot = False
            self._delayed_new[rec.priority] -= 1
            lot = self._delay_room[rec.priority]
            if lot:
                lot.unpark()

    def _attempt_failed(self, slot: _WorkerSlot, rec: JobRecord, exc: BaseException,
                        duration: float) -> None:
        try:
            text = str(exc)
        except Exception:  # a broken __str__ must not take the worker down
            text = "<str() failed>"
        # The type's name first, so that an exception without a message is still named.
        rec.error = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        rec.traceback = "".join(tb_module.format_exception(type(exc), exc, exc.__traceback__))
        if rec.attempts <= rec.max_retries and not self._closing:
            rec.status = transition(rec.status, JobEvent.RETRY_LATER)
            delay = self._policy.delay(rec.attempts, self._random.random())
            rec.scheduled_for = self._now() + delay
            self._n_retried += 1
            self._schedule(rec, rec.scheduled_for)
            self._changed("retrying", rec, slot.index, duration)
        elif rec.attempts <= rec.max_retries:
            # Shutting down: the timer is stopped, so the retry waits as SCHEDULED in the
            # store (persistence) or is dropped with the other scheduled jobs (memory).
            rec.status = transition(rec.status, JobEvent.RETRY_LATER)
            rec.scheduled_for = self._now() + self._policy.delay(rec.attempts, 0.5)
            self._n_retried += 1
            self._n_scheduled += 1
            self._changed("retrying", rec, slot.index, duration)
        else:
            transition(rec.status, JobEvent.FAIL_FINAL)
            self._n_failed += 1
            self._finish(rec, FAILED, "failed", slot.index, duration)

    # ------------------------------------------------------------------ tasks

    async def _timer(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Move due jobs (delays, retry backoff) into their ready queues."""
        heap = self._heap
        clock = self._clock
        interval = self._config.metrics_interval
        next_metrics = math.inf
        task_status.started()
        while True:
            now = clock.current_time()
            if not self._events.wants_metrics:
                next_metrics = math.inf
            elif next_metrics == math.inf:
                next_metrics = now + interval
            elif now >= next_metrics:
                self._events.publish(self.metrics_event())
                next_metrics = now + interval
            while heap and heap[0][0] <= now:
                _, _, gen, rec = heapq.heappop(heap)
                if rec.status is not SCHEDULED or rec.timer_gen != gen:
                    continue  # cancelled or rescheduled since
                self._n_scheduled -= 1
                self._release_delay_slot(rec)
                rec.status = transition(rec.status, JobEvent.DUE)
                rec.scheduled_for = None
                self._make_ready(rec, now)
                self._changed("enqueued", rec)
            self._timer_wake = trio.Event()
            with trio.move_on_at(min(heap[0][0] if heap else math.inf, next_metrics)):
                await self._timer_wake.wait()

    async def _worker(self, slot: _WorkerSlot) -> None:
        self._workers_alive += 1
        try:
            while not self._stop_taking:
                slot.cancel_requested = False
                with trio.CancelScope() as scope:
                    slot.scope = scope
                    await self._work(slot, scope)
                    return
                # Only our own scope's cancellation lands here: cancel() or a timeout.
                self._interrupted(slot)
        except BaseException:
            # Shutdown (or a crash) interrupts the job: record it back as QUEUED with the
            # attempt counted, never leave it PROCESSING.
            self._put_back(slot)
            raise
        finally:
            slot.scope = None
            self._workers_alive -= 1
            if self._workers_alive == 0:
                self._workers_done.set()

    async def _park_idle(self) -> None:
        """Wait until a job is made ready (or shutdown wakes every worker)."""
        task = trio.lowlevel.current_task()
        idle = self._idle
        idle.append(task)

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            idle.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def _interrupted(self, slot: _WorkerSlot) -> None:
        rec = slot.current
        if rec is None:
            return
        slot.current = None
        duration = self._clock.current_time() - slot.started
        self._busy_time += duration
        self._run.add(duration)
        if slot.cancel_requested:
            slot.cancel_requested = False
            transition(rec.status, JobEvent.CANCEL)
            self._n_cancelled += 1
            self._finish(rec, CANCELLED, "cancelled", slot.index, duration)
        else:
            exc = TimeoutError(f"job exceeded its timeout of {rec.timeout} s")
            self._attempt_failed(slot, rec, exc, duration)

    async def _work(self, slot: _WorkerSlot, scope: trio.CancelScope) -> None:
        ready = self._ready
        room = self._room
        room_waiting = self._room_waiting
        refill = self._refill
        pick = self._picker.pick
        current_time = self._clock.current_time
        checkpoint = trio.lowlevel.checkpoint
        wall = self._wall_offset
        # The latency samplers, written inline: ring[n & MASK] = x; n += 1.
        waits, runs = self._wait, self._run
        wait_ring, run_ring = waits.ring, runs.ring
        finished = self._finished
        finished_cap, result_ttl = self._finished_cap, self._result_ttl
        every, after = CHECKPOINT_EVERY, CHECKPOINT_AFTER
        since = 0
        last_yield = current_time()
        now: float | None = None
        """The time the last job ended, while nothing has been awaited since: the next
        job's start (one clock read per job instead of two)."""
        while True:
            i = pick(ready)
            if i < 0 or self._stop_taking:
                if self._stop_taking or self._draining:
                    return
                await self._park_idle()
                since = 0
                now = None
                last_yield = math.inf  # restarted by the next job's start time
                continue
            ready_i = ready[i]
            rec = ready_i.popleft()
            if room_waiting[i] and room[i].unpark():  # self._wake_for_room(i), inlined
                room_waiting[i] -= 1
            if refill[i] is not None and len(ready_i) <= self._refill_low[i]:
                refill[i].set()  # type: ignore[union-attr]
                refill[i] = None
            rec.status = PROCESSING  # only QUEUED records are in ready queues
            rec.attempts += 1
            start = current_time() if now is None else now
            if last_yield > start:
                last_yield = start
            rec.started_at = start + wall
            k = waits.n
            wait_ring[k & MASK] = start - rec.ready_at
            waits.n = k + 1
            slot.current = rec
            slot.started = start
            if self._observed:
                self._changed("started", rec, slot.index)
            if rec.durable_start:
                await self._commit_start(rec)
            spec = rec.spec
            assert spec is not None
            timeout = rec.timeout
            if timeout is not None:
                scope.deadline = start + timeout
            job = rec.snapshot()
            try:
                if spec.sync:
                    result = await trio.to_thread.run_sync(
                        spec.handler, job, abandon_on_cancel=True
                    )
                else:
                    result = await spec.handler(job)
                if result.__class__ not in _SIMPLE_RESULT:
                    check_json("result", result)
            except BaseException as exc:  # whatever the handler raised fails the attempt
                if not isinstance(exc, Exception):  # ... but our scope's Cancelled, Ctrl+C
                    cancelled, ctrl_c = _passing_through(exc)
                    if cancelled is exc:
                        raise
                    if cancelled is not None:
                        raise cancelled from exc
                    if ctrl_c is not None:
                        await self._ctrl_c(slot, scope)
                        since = 0
                        now = None
                        last_yield = math.inf
                        continue
                end = current_time()
                duration = end - start
                slot.current = None
                self._busy_time += duration
                runs.add(duration)
                if timeout is not None:
                    scope.deadline = math.inf
                self._attempt_failed(slot, rec, exc, duration)
            else:
                end = current_time()
                duration = end - start
                slot.current = None
                self._busy_time += duration
                k = runs.n
                run_ring[k & MASK] = duration
                runs.n = k + 1
                if timeout is not None:
                    scope.deadline = math.inf
                rec.result = result
                self._n_completed += 1
                # self._finish(rec, COMPLETED, ...), inlined: the hot path saves a call.
                rec.status = COMPLETED
                rec.finished_at = end_wall = end + wall
                if self._observed:
                    self._changed("completed", rec, slot.index, duration)
                if rec.waiters:
                    self._wake_waiters(rec)
                finished.append((end_wall, rec))
                if len(finished) > finished_cap or finished[0][0] < end_wall - result_ttl:
                    self._age_out(end_wall)
            if (timeout is not None or slot.cancel_requested) and scope.cancel_called:
                # cancel() or the deadline arrived after the handler had returned: leave
                # this scope (slot.current is None, so nothing is interrupted) so that the
                # next job starts in a fresh one.
                await checkpoint()
                end = current_time()
            since += 1
            if since >= every or end - last_yield >= after:
                since = 0
                await checkpoint()
                last_yield = now = current_time()
            else:
                now = end

    def _put_back(self, slot: _WorkerSlot) -> None:
        """The worker's job was interrupted (not failed): back to the front of its queue
        as QUEUED, the attempt counted."""
        rec = slot.current
        if rec is not None:
            slot.current = None
            rec.status = transition(rec.status, JobEvent.INTERRUPT)
            rec.started_at = None
            self._ready[rec.priority].appendleft(rec)
            self._changed("requeued", rec, slot.index)

    async def _ctrl_c(self, slot: _WorkerSlot, scope: trio.CancelScope) -> None:
        """A Ctrl+C landed in this worker's handler (trio raises it in whichever task
        runs when the signal comes): hand it to trio's main task, and put the job back
        once the shutdown begins.

        The Ctrl+C is the program's, not the job's: it must start the graceful shutdown
        (as when it reaches the main task, the body of ``open_queue`` usually) and must
        not count as the job's failure.  Until the shutdown begins the job stays this
        worker's, as PROCESSING, so that no worker starts it again meanwhile (a handler
        that computes without yielding would hold the event loop again, and the main
        task would never see the Ctrl+C); then it goes back to the front of its queue as
        QUEUED, the attempt counted, like every job a shutdown interrupts.  A program
        that catches the KeyboardInterrupt and carries on has this worker and job held
        until the queue closes.  With a SIGINT handler other than trio's, the
        ``KeyboardInterrupt`` comes out of here and the worker ends with it: the queue
        then closes at once, every running job put back the same way.
        """
        _sigint_again()
        scope.deadline = math.inf
        await self._stopping.wait()  # cancel() of the job ends it CANCELLED (_worker)
        self._put_back(slot)

    async def _commit_start(self, rec: JobRecord) -> None:
        """A job recovered after a crash: make this attempt's start durable first, so a
        handler that kills the process has its attempts counted (see _persistence)."""
        rec.durable_start = False
        assert self._persist is not None
        try:
            await self._persist.wait_committed(rec)
        except StoreError as exc:
            log.warning("job %s: could not record its start (%s); running it anyway", rec.id, exc)

    # ------------------------------------------------------------------ recovery

    def _restore(self, rec: JobRecord) -> None:
        """Put a record recovered from the store back: QUEUED into its ready queue
        (even past the bound: it was accepted already), SCHEDULED into the timer."""
        self._jobs[rec.id] = rec
        if rec.status is SCHEDULED:
            if rec.scheduled_for is None:  # pragma: no cover - the engine always sets it
                rec.scheduled_for = self._now()
            self._schedule(rec, rec.scheduled_for)  # counts it in metrics().scheduled
        else:
            self._make_ready(rec, self._clock.current_time())

    def _restore_interrupted(self, rec: JobRecord) -> None:
        """A job stored as PROCESSING: the process died while it ran.  The attempt
        counts; with none left the job is FAILED, otherwise it is queued again."""
        rec.started_at = None
        if rec.attempts > rec.max_retries:
            self._fail_recovered(
                rec, f"ProcessDied: the process stopped while attempt {rec.attempts} ran "
                f"(max_retries={rec.max_retries})"
            )
            return
        rec.status = QUEUED
        rec.durable_start = True
        self._restore(rec)
        self._changed("requeued", rec)

    def _fail_recovered(self, rec: JobRecord, error: str) -> None:
        """A recovered job with no attempts left: it ends FAILED without running."""
        self._jobs[rec.id] = rec  # in its stored state: _finish ends it
        rec.error = error
        self._n_failed += 1
        self._finish(rec, FAILED, "failed")

    def _restore_exhausted(self, rec: JobRecord) -> bool:
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

    # ------------------------------------------------------------------ shutdown

    async def _shutdown(self, work_scope: trio.CancelScope) -> None:
        """Close intake, stop the timer, let in-flight work finish, then cancel."""
        self._closing = True
        self._stopping.set()
        for p, lot in enumerate(self._room):
            self._room_waiting[p] -= len(lot.unpark_all())
        for lot in (*self._delay_room, *self._backlog_lot):
            lot.unpark_all()  # parked producers see _closing and raise ShuttingDown
        for i, event in enumerate(self._refill):
            if event is not None:
                event.set()  # the store's backlog streamers stop
                self._refill[i] = None
        self._timer_scope.cancel()
        if self._config.drain and self._persist is None:
            self._draining = True
        else:
            self._stop_taking = True
        while self._idle:
            trio.lowlevel.reschedule(self._idle.pop())
        queued = sum(len(q) for q in self._ready)
        log.info(
            "trioqueue shutting down: %d in flight, %d queued, %d scheduled%s",
            len(self._busy_slots()), queued, self._n_scheduled,
            " (draining)" if self._draining else "",
        )
        with trio.move_on_after(self._config.shutdown_timeout) as waited:
            await self._workers_done.wait()
        if waited.cancelled_caught:
            log.warning(
                "trioqueue: %d jobs still running after shutdown_timeout=%ss; interrupting "
                "them (recorded as queued)", len(self._busy_slots()), self._config.shutdown_timeout,
            )
        work_scope.cancel()

    def _busy_slots(self) -> list[_WorkerSlot]:
        """The workers running a job (counted from the slots, not per job)."""
        return [s for s in self._slots if s.current is not None]

    def _closed_down(self) -> None:
        """The workers are gone: wake everyone still waiting for a job to finish."""
        self._closed = True
        for rec in self._jobs.values():
            if rec.waiters:
                self._wake_waiters(rec)

    def _count_dropped(self) -> None:
        if self._persist is not None:
            return
        queued = sum(len(q) for q in self._ready)
        scheduled = sum(1 for rec in self._jobs.values() if rec.status is SCHEDULED)
        dropped = queued + scheduled
        if dropped:
            self._n_dropped += dropped
            log.warning(
                "trioqueue (memory mode) dropped %d jobs at shutdown: %d queued, %d scheduled "
                "(use persist_path to keep them, or drain=True to run queued ones first)",
                dropped, queued, scheduled,
            )

    _timer_scope: trio.CancelScope


_OPEN_QUEUE_TOKEN = object()


@asynccontextmanager
async def open_queue(
    registry: TaskRegistry, config: QueueConfig | None = None
) -> AsyncIterator[JobQueue]:
    """Open a job queue for the duration of an ``async with`` block.

    ::

        async with trioqueue.open_queue(registry, config) as q:
            job = await q.enqueue("send_email", {"to": "a@example.com"})

    Leaving the block is the graceful shutdown: new jobs are refused, the timer stops,
    in-flight jobs get ``shutdown_timeout`` seconds to finish, the rest are interrupted
    and recorded as QUEUED, and (with ``persist_path``) the last snapshot is written.

    Errors while opening (a bad store file, ``StoreError``) and exceptions from the body
    come out as themselves, not wrapped in an ``ExceptionGroup``; an engine task that
    crashes raises an ``ExceptionGroup`` holding its error.
    """
    if not isinstance(registry, TaskRegistry):
        raise TypeError(f"registry: expected a TaskRegistry, got {type(registry).__name__}")
    config = QueueConfig() if config is None else config
    if not isinstance(config, QueueConfig):
        raise TypeError(f"config: expected a QueueConfig, got {type(config).__name__}")
    with lowered_switch_interval(config.switch_interval):
        async with _open_queue(registry, config) as q:
            yield q


@asynccontextmanager
async def _open_queue(registry: TaskRegistry, config: QueueConfig) -> AsyncIterator[JobQueue]:
    persistence: Persistence | None = None
    if config.persist_path is not None:
        from ._persistence import Persistence

        persistence = await Persistence.open(config, registry)
    q = JobQueue(registry, config, persistence, _token=_OPEN_QUEUE_TOKEN)
    body_exc: BaseException | None = None
    log.info(
        "trioqueue open: %d workers, capacity %d per priority, %s",
        config.workers, config.capacity,
        f"store {config.persist_path} ({config.durability})" if persistence else "memory only",
    )
    try:
        async with trio.open_nursery() as root:
            if persistence is not None:
                await root.start(persistence.run, q)
            try:
                async with trio.open_nursery() as work:
                    q._timer_scope = trio.CancelScope()
                    work.start_soon(_run_in_scope, q._timer_scope, q._timer)
                    for slot in q._slots:
                        work.start_soon(q._worker, slot)
                    try:
                        if persistence is not None:
                            await persistence.recover(q)
                        yield q
                    except BaseException as exc:  # re-raised below, outside the nurseries
                        body_exc = exc
                    finally:
                        await q._shutdown(work.cancel_scope)
            finally:
                # The workers are gone, however the work nursery ended (even cancelled
                # from outside): wake waiters, then write the final snapshot (shielded).
                q._closed_down()
                q._count_dropped()
                q._events.close()
                if persistence is not None:
                    await persistence.close()
    except BaseExceptionGroup as group:
        # Body exceptions are raised as themselves below.  An engine task's error (a
        # store that fails to write; a Ctrl+C that another SIGINT handler raised in a
        # worker) cancels the body: the body's Cancelled is then that error's doing,
        # and the error is what comes out, by itself when it is alone and ours or a
        # KeyboardInterrupt.  Only Cancelled inside: an outer scope cancelled us.
        leaves = _leaves(group)
        if body_exc is not None and not isinstance(body_exc, trio.Cancelled):
            raise
        if len(leaves) == 1 and isinstance(leaves[0], (TrioQueueError, KeyboardInterrupt)):
            raise leaves[0] from None
        if leaves or body_exc is None:
            raise
    finally:
        if persistence is not None:
            persistence.abandon()  # only does something when close() never ran
        log.info("trioqueue closed")
    if body_exc is not None:
        raise body_exc


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        elif not isinstance(exc, trio.Cancelled):
            out.append(exc)
    return out


async def _run_in_scope(scope: trio.CancelScope, fn: Callable[[], Any]) -> None:
    with scope:
        await fn()
