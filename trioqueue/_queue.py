"""The handle of a running queue: :class:`JobQueue`.

Its methods check what callers ask (intake, ids, states), talk to the queue's state
only through the backend seam (:class:`trioqueue._backend.Backend`), and fan events out
to subscribers.  The tasks that make up a running queue, and the order in which they
stop, are the engine's (:mod:`trioqueue._engine`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVarTuple

import attrs
import trio

from . import _submit, _workers
from ._backend import Backend
from ._batch import Batches, BatchItem, commit_or_take_back, wait_all
from ._config import QueueConfig
from ._created import repeated
from ._events import Broadcaster, Subscription, change_hook, check_subscription
from ._exceptions import (
    DuplicateJob,
    InvalidJob,
    JobNotFound,
    QueueFull,
    ShuttingDown,
    StoreError,
)
from ._intake import Intake
from ._job import TERMINAL, Job, JobPage, JobStatus, Priority, check_job_id, clean_text
from ._metrics import Metrics
from ._readings import Readings
from ._record import LABELS, JobRecord, forget_waiter
from ._registry import TaskRegistry
from ._stats import Stats
from ._workers import Lifecycle, Workers

log = logging.getLogger("trioqueue")

PROCESSING = JobStatus.PROCESSING


@attrs.frozen
class QueueCore:
    """The parts of one running queue, made by :func:`trioqueue.open_queue`."""

    registry: TaskRegistry
    config: QueueConfig
    clock: trio.abc.Clock
    wall_offset: float
    """Seconds since the epoch at trio time 0: ``wall = trio time + wall_offset``."""
    stats: Stats
    backend: Backend
    intake: Intake
    workers: Workers
    events: Broadcaster
    life: Lifecycle
    next_runs: Mapping[str, float] = attrs.field(factory=dict)
    """The periodic scheduler's next due time of each periodic task (seconds since the
    epoch), kept up to date by the scheduler."""


PosArgsT = TypeVarTuple("PosArgsT")
"""``submit``'s positional arguments, checked against ``fn``'s by a type checker (as
Trio types ``nursery.start_soon``)."""

class JobQueue(Readings):
    """A running queue.  Get one from :func:`open_queue`; there is no public constructor.

    Every method is safe to call from any task of the ``trio.run`` that opened it.
    """

    def __init__(self, *core: object) -> None:
        if len(core) != 1 or not isinstance(core[0], QueueCore):
            raise TypeError("JobQueue has no public constructor; write `async with "
                            "trioqueue.open_queue(registry, config) as q:`")
        parts = core[0]
        self._config = parts.config
        self._registry = parts.registry
        self._clock = parts.clock
        self._wall = parts.wall_offset
        self._stats = parts.stats
        self._backend = parts.backend
        self._workers = parts.workers
        self._events = parts.events
        self._life = parts.life
        self._next_runs = parts.next_runs
        # The enqueue path's calls, looked up once.
        self._build = parts.intake.build
        self._restamp = parts.intake.restamp
        self._admit = parts.backend.admit
        self._batches = Batches(parts.config, parts.intake, parts.backend, parts.life,
                                parts.stats, self._refuse)
        self._admit_batch = self._batches.admit
        self._opened_at = self._clock.current_time()
        self._enqueue_since = 0
        self._enqueue_yield = -math.inf
        self._debug = log.isEnabledFor(logging.DEBUG)
        self._cluster_metrics: Callable[[Metrics], Metrics] | None = None
        self._events.on_change = self._observers_changed
        self._observers_changed()
        if getattr(parts.backend, "remote", False):
            # A shared backend (Redis) admits with a round trip: the memory path above
            # stays as it is, these replace it on this instance only.
            from ._redis.paths import RemotePaths

            remote = RemotePaths(parts.backend, parts.intake, self._batches, parts.life,
                                 parts.workers, parts.events, self._clock, self._wall,
                                 self.get, self._node_metrics)
            self.enqueue = remote.enqueue  # type: ignore[method-assign]
            self.wait = remote.wait  # type: ignore[method-assign]
            self.wait_many = remote.wait_many  # type: ignore[method-assign]
            self._admit_batch = self._batches.admit_remote
            self._cluster_metrics = remote.cluster_metrics

    # ------------------------------------------------------------------ helpers

    @property
    def config(self) -> QueueConfig:
        return self._config

    @property
    def registry(self) -> TaskRegistry:
        return self._registry

    def __repr__(self) -> str:
        c = self._config
        where = (f"redis queue {c.queue_name!r}" if c.redis_url is not None
                 else f"store {str(c.persist_path)!r} ({c.durability})"
                 if c.persist_path is not None else "memory")
        state = " closing" if self._life.closing else ""
        return f"<JobQueue {where}, {c.workers} workers{state}>"

    @property
    def closing(self) -> bool:
        """True once shutdown began: new jobs are refused with :class:`ShuttingDown`."""
        return self._life.closing

    def _observers_changed(self) -> None:
        """Tell the backend who listens to state changes now."""
        self._backend.observe(change_hook(self._events, self._debug))

    def _refuse(self) -> None:
        """Raise why no new job is taken: shutting down, or the store failing."""
        if self._life.closing:
            self._stats.rejected += 1
            raise ShuttingDown("the queue is shutting down and takes no new jobs")
        refusal = self._backend.refusal
        if refusal is not None:
            raise StoreError(f"{refusal} -- taking no jobs until a write succeeds")

    def _full(self, rec: JobRecord) -> QueueFull:
        self._stats.rejected += 1
        self._stats.rejected_p[rec.priority] += 1
        return QueueFull(f"priority {LABELS[rec.priority]}: {self._backend.full_reason(rec)}")

    # ------------------------------------------------------------------ intake

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
        is accepted but not yet committed when this returns; use :meth:`enqueue` to wait
        (with ``wait_for_room=False`` to keep the at-once :class:`QueueFull`).  On Redis
        the node answers from its view of room and writes the job just after, waiting for
        room if Redis has none (docs/redis-design.md, "enqueue_nowait on Redis").
        """
        if self._life.closing or self._backend.refusal is not None:
            self._refuse()
        rec = self._build(task, payload, priority, job_id, delay, max_retries, timeout)
        if self._backend.lagging and (not rec.id_given
                                      or self._backend.get_nowait(rec.id) is None):
            raise self._batches.behind([rec])
        got = self._admit(rec)
        if got is None:
            raise self._full(rec)
        return got.snapshot()

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
        wait_for_room: bool = True,
    ) -> Job:
        """Add a job, waiting for room in its priority's queue; return its snapshot.

        ``payload`` must be JSON-serializable.  ``priority`` defaults to the task's,
        ``max_retries`` and ``timeout`` to the task's and then the config's.  ``delay``
        seconds makes the job SCHEDULED until then.  Giving a ``job_id`` makes the call
        idempotent: the same id with the same task and payload returns the existing job;
        with another task or payload it raises :class:`DuplicateJob`.

        With persistence and ``durability="sync"`` it returns only once the job is
        committed to disk; if that write fails it raises :class:`StoreError` saying
        whether the job will run.  Nothing is enqueued when it raises otherwise.
        ``wait_for_room=False`` raises :class:`QueueFull` at once instead of waiting for
        room (as :meth:`enqueue_nowait` does), and still waits for the commit: what a
        server answering "429, try later" needs.

        Every call is a cancel point.  It is a schedule point whenever it waits, and
        otherwise at least every ``CHECKPOINT_EVERY`` (64) calls or ``CHECKPOINT_AFTER``
        (1 ms) seconds, not on every call: a loop of enqueues hands the workers jobs in
        batches (:mod:`trioqueue._workers`).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        backend = self._backend
        life = self._life
        parked = False
        stored: JobRecord | None = None
        if job_id is not None and backend.persistent and backend.get_nowait(job_id) is None:
            if life.closing or backend.refusal is not None:
                self._refuse()  # before asking a store that may be closed already
            # The id may belong to a finished job that has left memory: ask the store.
            stored = await backend.find(job_id)
            parked = True  # that await was the checkpoint
        rec: JobRecord | None = None
        woken: trio.lowlevel.ParkingLot | None = None
        """The lot that woke this call for room it has not taken yet.  Leaving without
        taking it (an existing job returned, an error, ...), it passes the room on: nobody
        else would, and the next in line would wait with room free."""
        p = 0
        try:
            while True:
                if life.closing or backend.refusal is not None:
                    self._refuse()
                if rec is not None and job_id is None:
                    self._restamp(rec, delay)  # waited for room: the same job, accepted now
                else:
                    rec = self._build(task, payload, priority, job_id, delay, max_retries,
                                      timeout)
                got: JobRecord | None
                if stored is not None and backend.get_nowait(rec.id) is None:
                    got = backend.repeat_of(stored, rec)  # or DuplicateJob
                else:
                    got = self._admit(rec)
                if got is rec:
                    break
                if got is not None:  # the job holding this id: an idempotent repeat
                    repeated()  # (for enqueue_created: POST /jobs answers 200, not 202)
                    if woken is not None:
                        backend.pass_room_on(woken, p)
                        woken = None
                    snapshot = got.snapshot()
                    if backend.persistent:
                        await backend.wait_committed()
                    elif not parked:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    return snapshot
                if not wait_for_room:
                    raise self._full(rec)
                parked = True
                woken = None  # taken by someone else meanwhile: in line again
                p = rec.priority
                woken = await backend.wait_for_room(rec)
        except BaseException:
            if woken is not None:
                backend.pass_room_on(woken, p)
            raise
        accepted = rec.snapshot()  # the job as accepted, before any worker touches it
        if backend.durable or backend.lagging:
            await commit_or_take_back(backend, [rec])
        elif not parked:
            # A schedule point as often as the workers take one (every CHECKPOINT_EVERY
            # calls, or CHECKPOINT_AFTER seconds), not per call: a yield costs more than
            # the rest of a job, and the workers then find jobs in batches.
            self._enqueue_since += 1
            if (self._enqueue_since >= _workers.CHECKPOINT_EVERY
                    or rec.ready_at - self._enqueue_yield >= _workers.CHECKPOINT_AFTER):
                self._enqueue_since = 0
                await trio.lowlevel.cancel_shielded_checkpoint()
                self._enqueue_yield = self._clock.current_time()
        return accepted

    # ------------------------------------------------------------------ callables

    async def submit(
        self,
        fn: Callable[[*PosArgsT], object],
        *args: *PosArgsT,
        priority: Priority | str | None = None,
        delay: float = 0.0,
        max_retries: int | None = None,
        timeout: float | None = None,
        job_id: str | None = None,
    ) -> Job:
        """Enqueue a call of ``fn(*args)`` as a job (as :meth:`enqueue` does, waiting for
        room); ``(await q.wait(job.id)).result`` is its return value.

        An async ``fn`` runs on the loop, a plain one in a worker thread.  The task is
        named ``"module.qualname"``, registered in this queue's registry for this
        process.  Use :func:`functools.partial` for ``fn``'s own keywords.  A function
        registered with ``@registry.task`` is a handler that takes the job: it raises
        :class:`TypeError` (enqueue it by name).  Memory mode takes any callable and any
        args (the payload shows as ``{"args": [repr, ...]}``).  With a store ``fn`` must
        be a module-level function and the args JSON, else :class:`InvalidJob` naming
        which; the stored payload is ``{"args": [...]}``.
        """
        name, payload = _submit.call_job(self._registry, self._backend.persistent, fn,
                                         args)
        return await self.enqueue(name, payload, priority=priority, job_id=job_id,
                                  delay=delay, max_retries=max_retries, timeout=timeout)

    def submit_nowait(
        self,
        fn: Callable[[*PosArgsT], object],
        *args: *PosArgsT,
        priority: Priority | str | None = None,
        delay: float = 0.0,
        max_retries: int | None = None,
        timeout: float | None = None,
        job_id: str | None = None,
    ) -> Job:
        """:meth:`submit` now or :class:`QueueFull`, as :meth:`enqueue_nowait` does."""
        name, payload = _submit.call_job(self._registry, self._backend.persistent, fn,
                                         args)
        return self.enqueue_nowait(name, payload, priority=priority, job_id=job_id,
                                   delay=delay, max_retries=max_retries, timeout=timeout)

    # ------------------------------------------------------------------ batches

    def enqueue_many_nowait(
        self,
        task: str,
        payloads: Iterable[Any],
        *,
        priority: Priority | str | None = None,
        delay: float = 0.0,
        max_retries: int | None = None,
        timeout: float | None = None,
    ) -> list[Job]:
        """Add a job per payload, all or nothing, now or raise :class:`QueueFull` (then
        nothing was added).  Raises as :meth:`enqueue_many` does.  With
        ``durability="sync"`` the jobs are accepted but not yet committed when this
        returns (:meth:`flush` waits for that)."""
        batches = self._batches
        batches.check_intake()
        return batches.admit_nowait(
            batches.build_many(task, payloads, priority, delay, max_retries, timeout))

    async def enqueue_many(
        self,
        task: str,
        payloads: Iterable[Any],
        *,
        priority: Priority | str | None = None,
        delay: float = 0.0,
        max_retries: int | None = None,
        timeout: float | None = None,
        wait_for_room: bool = True,
    ) -> list[Job]:
        """Add one job of ``task`` per payload, all or nothing; return their snapshots
        in order.

        Every payload is checked first: an invalid one raises :class:`InvalidJob` naming
        its index (``payloads[3]: ...``) and nothing is added.  The batch is admitted
        whole when each priority has room for all of it, and this waits until then
        (nothing is admitted while it waits; single enqueues are not held back for it).
        A batch larger than the capacity can never fit: :class:`InvalidJob`.
        ``wait_for_room=False`` raises :class:`QueueFull` at once instead.  With a store
        one commit covers the batch: with ``durability="sync"`` this returns once it is
        committed, and a failed write raises :class:`StoreError` saying what became of
        the jobs.
        """
        recs = self._batches.build_many(task, payloads, priority, delay, max_retries,
                                        timeout)
        return await self._admit_batch(recs, set(), wait_for_room)

    async def wait_many(self, job_ids: Iterable[str]) -> list[Job]:
        """:meth:`wait` for each id, all at once (a job that ends early and leaves memory
        is held for the call); the finished snapshots in the same order."""
        ids = [job_ids] if isinstance(job_ids, str) else list(job_ids)
        if not ids:
            await trio.lowlevel.checkpoint()
        held = [self._backend.get_nowait(job_id) for job_id in ids]  # now, not a tick later
        return await wait_all(ids, held, self._wait_for)

    async def enqueue_batch(
        self, jobs: Sequence[BatchItem], *, wait_for_room: bool = True
    ) -> list[Job]:
        """Jobs of any tasks and options, all or nothing (what ``POST /jobs/batch``
        takes): :meth:`enqueue_many`'s rules, each item a :class:`BatchItem`; an error
        names the item (``jobs[3].priority: ...``).  An item with an ``id`` whose job
        exists (same task and payload) gives that job, as :meth:`enqueue` does."""
        recs, given = self._batches.build_items(jobs)
        try:
            return await self._admit_batch(recs, given, wait_for_room)
        except DuplicateJob as exc:
            raise self._batches.naming_the_item(exc, jobs) from None

    async def flush(self) -> None:
        """Return once every job accepted so far is committed to the store.

        Memory mode: just a checkpoint.  With ``durability="batch"`` this is how a caller
        makes a batch of ``enqueue_nowait`` calls durable at once (one commit for all).
        """
        await self._backend.wait_committed()

    # ------------------------------------------------------------------ queries

    async def get(self, job_id: str) -> Job:
        """A snapshot of the job now.  Raises :class:`JobNotFound`."""
        rec = await self._backend.find(job_id)
        if rec is None:
            raise JobNotFound(self._not_found(job_id))
        return rec.snapshot()

    def get_nowait(self, job_id: str) -> Job:
        """A snapshot from memory only (no store lookup).  Raises :class:`JobNotFound`."""
        rec = self._backend.get_nowait(job_id)
        if rec is None:
            raise JobNotFound(self._not_found(job_id))
        return rec.snapshot()

    def _not_found(self, job_id: str) -> str:
        if job_id in self._life.dropped:
            return f"job {job_id!r} was dropped when the queue closed (memory mode)"
        return f"job {job_id!r} not found"

    async def wait(self, job_id: str) -> Job:
        """Wait until the job is COMPLETED, FAILED or CANCELLED; return that snapshot (a
        FAILED one at once: it stays so until :meth:`retry`).  Raises :class:`JobNotFound`,
        or :class:`ShuttingDown` when the queue closes while the job waits or runs."""
        return await self._wait_for(job_id, self._backend.get_nowait(job_id))

    async def _wait_for(self, job_id: str, rec: JobRecord | None) -> Job:
        """:meth:`wait` for ``job_id``, whose record in memory was ``rec`` when asked."""
        backend = self._backend
        while rec is None:
            if job_id in self._life.dropped:
                raise ShuttingDown(f"the queue closed before job {job_id!r} finished: it "
                                   "was dropped (memory mode)")
            job = await self.get(job_id)  # finished long ago (store) or not found
            if job.status.terminal:
                return job
            # Queued in the store's recovery backlog: look again once it may be loaded.
            await trio.sleep(0.05)
            rec = backend.get_nowait(job_id)
            if self._life.closing and rec is None:
                raise ShuttingDown(f"the queue closed before job {job_id!r} finished")
        while rec.status not in TERMINAL:
            if self._life.closed:
                raise ShuttingDown(f"the queue closed before job {job_id!r} finished" + (
                    ": it was dropped (memory mode)" if job_id in self._life.dropped
                    else f" (it is {rec.status.value})"))
            event = trio.Event()
            if rec.waiters is None:
                rec.waiters = []
            rec.waiters.append(event)
            try:
                await event.wait()
            finally:
                if not event.is_set():  # cut short: no longer a waiter (a poll in a loop)
                    forget_waiter(rec, event)
        await trio.lowlevel.checkpoint()
        return rec.snapshot()

    async def list_jobs(self, status: JobStatus | str | None = None, limit: int = 100, *,
                        task: str | None = None, before: str | None = None) -> list[Job]:
        """Up to ``limit`` jobs, newest first, optionally only those in ``status``, of
        ``task``, created before the job ``before``: :meth:`list_page`'s jobs."""
        return (await self.list_page(status, limit, task=task, before=before)).jobs

    async def list_page(self, status: JobStatus | str | None = None, limit: int = 100, *,
                        task: str | None = None, before: str | None = None) -> JobPage:
        """A page of jobs, newest first, and where the next page starts.

        Only those in ``status``, of ``task``, and created before the job ``before`` if
        given (a job no longer held: those with a lower id, as generated ids sort by
        creation time).  :attr:`JobPage.next` is the ``before`` of the next page,
        ``None`` on the last.  A page can hold fewer than ``limit`` jobs
        while ``next`` is not ``None`` (a job changed status while it was read).
        """
        if status is not None:
            status = JobStatus.coerce(status)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidJob(f"limit: expected a positive integer, got {limit!r}")
        if task is not None and not isinstance(task, str):
            raise InvalidJob(f"task: expected a task name (str), got {task!r}")
        if task == "":  # (not "no filter": a bad filter never lists every job instead)
            raise InvalidJob("task: expected a task name, got ''")
        if task is not None and clean_text(task) != task:
            # A lone surrogate: no task has such a name (and a store or Redis could not
            # be asked for it: it is not UTF-8).
            await trio.lowlevel.checkpoint()
            return JobPage([], None)
        if before is not None:
            try:
                check_job_id(before)
            except InvalidJob as exc:
                raise InvalidJob(f"before: {str(exc).removeprefix('id: ')}") from None
        jobs, nxt = await self._backend.list(status, limit, task, before)
        return JobPage(jobs, nxt)

    # ------------------------------------------------------------------ control

    async def cancel(self, job_id: str) -> Job:
        """Cancel a QUEUED, SCHEDULED or PROCESSING job; return the CANCELLED snapshot.

        A running handler is interrupted at its next checkpoint (a sync handler's thread
        is abandoned: it runs on, its result discarded).  If the handler finished before
        it could be interrupted, the finished snapshot is returned.  A job that already
        finished raises :class:`InvalidTransition`.  A cancelled job is never retried by
        itself.  With ``durability="sync"`` it returns once the store holds the outcome.
        """
        await trio.lowlevel.checkpoint_if_cancelled()  # (Cancelled: nothing was done)
        if job_id in self._life.dropped:
            raise JobNotFound(self._not_found(job_id))
        backend = self._backend
        rec = await backend.cancel(job_id)
        where = " in this process"
        if rec.status is PROCESSING:
            self._workers.cancel(rec)
            ended = await self.wait(job_id)
            if ended.status is JobStatus.CANCELLED:
                where += " (its handler was stopped)"
        else:
            ended = rec.snapshot()
        if backend.durable:
            await self._stored(rec, f"is {ended.status.value}{where}", "it runs again")
        return ended

    async def retry(self, job_id: str) -> Job:
        """Put a FAILED or CANCELLED job back in its queue with a fresh set of attempts.

        Waits for room like :meth:`enqueue`.  Raises :class:`InvalidTransition` for a job
        in any other state, :class:`ShuttingDown` while closing.
        """
        await trio.lowlevel.checkpoint_if_cancelled()  # (Cancelled: nothing was done)
        self._batches.check_intake()
        backend = self._backend
        rec = await backend.retry(job_id)
        requeued = rec.snapshot()
        if backend.durable:
            await self._stored(rec, "is queued again in this process", "the retry is undone")
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
        return requeued

    async def _stored(self, rec: JobRecord, now: str, restart: str) -> None:
        """Wait for the commit of a cancel or retry; a failed one says what became of it."""
        try:
            await self._backend.wait_committed(rec)
        except StoreError as exc:  # the change stands here, and is written once writes work
            raise StoreError(f"{exc}; job {rec.id!r} {now} but not yet in the store: if the process"
                             f" ends before a write succeeds, after a restart {restart}") from None

    # ------------------------------------------------------------------ events, metrics

    @asynccontextmanager
    async def subscribe(
        self, buffer: int | None = None, *, metrics: bool = False,
        max_rate: float | None = None, types: Iterable[str] | None = None,
    ) -> AsyncIterator[Subscription]:
        """A channel of every :class:`Event` from now on, with its own bounded buffer (on
        a shared backend, entering it waits until every node writes events for it).

        A subscriber that falls behind loses events and, once it has read its buffer,
        receives a ``lagged`` event saying how many, before any later event (and before
        its channel ends); it never slows the queue.  With ``metrics=True`` it also receives
        a ``metrics`` event every ``config.metrics_interval`` seconds, starting with one
        at once.  With ``max_rate``, job events over that many a second (bursts of one
        second's worth pass) are dropped and counted in ``lagged`` the same way.  With
        ``types`` (say ``{"failed", "retrying"}``), only job events of those types come
        (and count against ``max_rate``); the queue does not even build an event that no
        subscriber takes.  The channel ends when the queue closes; once it closed,
        entering raises :class:`ShuttingDown`.
        """
        size = self._config.event_buffer if buffer is None else buffer
        receive = self._events.add(*check_subscription(size, max_rate, types), metrics)
        try:
            await self._backend.events_flowing()
            if metrics:
                self._events.publish(self.metrics_event())
                self._backend.wake_timer()  # the timer starts ticking metrics
            with receive:
                yield receive
        finally:
            self._events.remove(receive)
