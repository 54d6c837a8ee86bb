"""Batches of jobs, all or nothing: what :meth:`JobQueue.enqueue_many`,
:meth:`~JobQueue.enqueue_many_nowait` and :meth:`~JobQueue.enqueue_batch` share.

Every record is built and checked first (an error names the payload's index or the
item), the batch is admitted whole or not at all through the backend seam, and with a
store one commit covers it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import attrs
import trio

from ._backend import Backend
from ._config import QueueConfig
from ._created import batch_repeats
from ._exceptions import (
    DuplicateJob,
    InvalidJob,
    QueueFull,
    StoreError,
    TrioQueueError,
    UnknownTask,
)
from ._intake import Intake
from ._job import Job, JobStatus, Priority, check_payloads
from ._record import LABELS, JobRecord, same_or_duplicate
from ._stats import Stats
from ._workers import Lifecycle

T = TypeVar("T")

FIRST_BACKOFF = 0.001
"""Seconds before a shared backend is asked again for room it had not (doubling)..."""
LAST_BACKOFF = 0.05
"""... up to this: a producer on another node frees no room here to wake a waiter."""


async def admit_polling(attempt: Callable[[], Awaitable[T | None]], *,
                        wait_for_room: bool, check: Callable[[], None],
                        full: Callable[[], BaseException]) -> T:
    """Admit on a shared backend: ``check()`` (raises while no new job is taken), then
    ``await attempt()`` until it returns what it admitted; ``None`` means no room, then
    raise ``full()`` unless ``wait_for_room``, else ask again after a sleep of
    :data:`FIRST_BACKOFF` doubling to :data:`LAST_BACKOFF` (``attempt`` redates what it
    admits: the wait is the job's, not its delay's)."""
    backoff = FIRST_BACKOFF
    while True:
        check()
        got = await attempt()
        if got is not None:
            return got
        if not wait_for_room:
            raise full()
        await trio.sleep(backoff)
        backoff = min(backoff * 2, LAST_BACKOFF)


@attrs.frozen
class BatchItem:
    """One job of :meth:`JobQueue.enqueue_batch`: ``enqueue``'s arguments."""

    task: str
    payload: Any = None
    priority: Priority | str | None = None
    job_id: str | None = None
    delay: float = 0.0
    max_retries: int | None = None
    timeout: float | None = None


class Batches:
    """The batch paths of one queue, over its intake, backend and lifecycle.
    ``refuse`` raises why no new job is taken (shutting down, or the store failing)."""

    def __init__(self, config: QueueConfig, intake: Intake, backend: Backend,
                 life: Lifecycle, stats: Stats, refuse: Callable[[], None]) -> None:
        self._capacity = config.capacity
        self._build = intake.build
        self._restamp = intake.restamp
        self._backend = backend
        self._life = life
        self._stats = stats
        self._refuse = refuse

    def build_many(self, task: str, payloads: Iterable[Any], priority: Priority | str | None,
                   delay: float, max_retries: int | None,
                   timeout: float | None) -> list[JobRecord]:
        """A record per payload, each checked (an error names the payload's index)."""
        check_payloads(payloads)
        build = self._build
        recs = _Payloads()
        for i, payload in enumerate(payloads):
            try:
                recs.append(build(task, payload, priority, None, delay, max_retries, timeout))
            except InvalidJob as exc:
                text = str(exc)
                if text.startswith("payload:"):
                    raise InvalidJob(f"payloads[{i}]:{text[8:]}") from None
                raise
        self.check(recs)
        return recs

    def build_items(self, items: Sequence[BatchItem]) -> tuple[list[JobRecord], set[str]]:
        """A record per item of :meth:`JobQueue.enqueue_batch`, each checked (an error
        names the item: ``jobs[3].priority: ...``), and the ids the caller chose.  The
        same id on two items is one job if the two agree, else :class:`DuplicateJob`."""
        build = self._build
        recs: list[JobRecord] = []
        given: dict[str, JobRecord] = {}
        for i, item in enumerate(items):
            if not isinstance(item, BatchItem):  # (a tuple had "no attribute 'task'")
                raise InvalidJob(f"jobs[{i}]: expected a trioqueue.BatchItem, got "
                                 f"{type(item).__name__}")
            try:
                rec = build(item.task, item.payload, item.priority, item.job_id,
                            item.delay, item.max_retries, item.timeout)
                if item.job_id is not None:
                    first = given.setdefault(rec.id, rec)
                    if first is not rec:
                        same_or_duplicate(first, rec, in_batch=True)
            except (InvalidJob, UnknownTask, DuplicateJob) as exc:
                raise type(exc)(f"jobs[{i}].{exc}") from None
            recs.append(rec)
        self.check(recs)
        return recs, set(given)

    @staticmethod
    def naming_the_item(exc: DuplicateJob, items: Sequence[BatchItem]) -> DuplicateJob:
        """``exc`` (an id taken by another job, raised by admission) naming the first
        item with that id, as the other errors of a batch do."""
        for i, item in enumerate(items):
            if item.job_id is not None and item.job_id == exc.job_id:
                return DuplicateJob(f"jobs[{i}].{exc}", exc.job_id)
        return exc

    def check(self, recs: list[JobRecord]) -> None:
        """Raise :class:`InvalidJob` for a batch that could never fit: more new jobs of
        one priority (ready, or delayed) than the capacity."""
        cap = self._capacity
        if len(recs) <= cap:
            return
        counts: dict[tuple[int, bool], int] = {}
        seen: set[str] = set()
        for rec in recs:
            if rec.id in seen:
                continue  # an id repeated in the batch is one job
            seen.add(rec.id)
            key = (rec.priority, rec.status is JobStatus.SCHEDULED)
            counts[key] = counts.get(key, 0) + 1
        for (p, delayed), n in sorted(counts.items()):
            if n > cap:
                raise InvalidJob(
                    f"jobs: {n} {'delayed ' if delayed else ''}jobs of priority "
                    f"{LABELS[p]} in one batch, more than the capacity ({cap}); "
                    f"split the batch"
                )

    def full(self, recs: list[JobRecord]) -> QueueFull:
        """The :class:`QueueFull` of a batch that does not fit now (counted rejected)."""
        self._stats.rejected += len(recs)
        for rec in recs:
            self._stats.rejected_p[rec.priority] += 1
        return QueueFull(f"batch of {len(recs)}: {self._backend.full_reason_many(recs)}")

    def behind(self, recs: list[JobRecord]) -> QueueFull:
        """The :class:`QueueFull` of a ``*_nowait`` call while a ``batch`` store's writer
        lags (``max_write_lag``; counted rejected)."""
        for rec in recs:
            self._stats.rejected_p[rec.priority] += 1
        self._stats.rejected += len(recs)
        return QueueFull(f"batch of {len(recs)}: {BEHIND}" if len(recs) > 1 else BEHIND)

    def admit_nowait(self, recs: list[JobRecord]) -> list[Job]:
        """Admit checked records now, all or nothing, or raise :class:`QueueFull`."""
        if not recs:
            return []
        if self._backend.lagging:
            raise self.behind(recs)
        with _named_as(recs):
            got = self._backend.admit_many(recs)
        if got is None:
            raise self.full(recs)
        return [rec.snapshot() for rec in got]

    async def admit(self, recs: list[JobRecord], given: set[str],
                    wait_for_room: bool) -> list[Job]:
        """Admit checked records all or nothing (waiting for room unless told not to),
        then wait for the one commit that covers them.  ``given``: the ids a caller
        chose.  An id that memory lacks and that may belong to a job only the store
        holds is looked up there by the admission itself, as :meth:`JobQueue.enqueue`'s
        is (a point read, only for the ids the store may hold: a fresh id of the
        caller's costs a set lookup, not a read)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        backend = self._backend
        life = self._life
        if not recs:
            await trio.lowlevel.checkpoint()
            return []
        parked = False
        while True:
            if life.closing or backend.refusal is not None:
                self._refuse()
            with _named_as(recs):
                got = backend.admit_many(recs)
            if got is not None:
                break
            if not wait_for_room:
                raise self.full(recs)
            parked = True
            await backend.wait_for_room_many(recs)
            self._restamp_all(recs)
        accepted = [rec.snapshot() for rec in got]
        new = [rec for rec, g in zip(recs, got, strict=True) if g is rec]
        if len(new) < len(got):  # (for POST /jobs/batch's "created")
            batch_repeats([g is rec for rec, g in zip(recs, got, strict=True)])
        if (backend.durable or backend.lagging) and new:
            await commit_or_take_back(backend, new, batch=True)
        elif backend.persistent and len(new) < len(got):
            await backend.wait_committed()  # an existing job: once it is stored
        elif not parked:
            await trio.lowlevel.cancel_shielded_checkpoint()
        return accepted

    async def admit_remote(self, recs: list[JobRecord], given: set[str],
                           wait_for_room: bool) -> list[Job]:
        """:meth:`admit` on a shared backend: one script call admits the batch all or
        nothing; waiting for room polls (:func:`admit_polling`)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if not recs:
            await trio.lowlevel.checkpoint()
            return []
        admit = self._backend.admit_many_async  # type: ignore[attr-defined]
        tries = 0

        async def attempt() -> list[JobRecord] | None:
            nonlocal tries
            if tries:
                self._restamp_all(recs)
            tries += 1
            with _named_as(recs):
                got: list[JobRecord] | None = await admit(
                    recs, count_rejected=not wait_for_room, given=given)
            return got

        def full() -> QueueFull:
            return QueueFull(f"batch of {len(recs)}: "
                             f"{self._backend.full_reason_many(recs)}")

        got = await admit_polling(attempt, wait_for_room=wait_for_room,
                                  check=self.check_intake, full=full)
        created = [g is rec for rec, g in zip(recs, got, strict=True)]
        if not all(created):  # (for POST /jobs/batch's "created")
            batch_repeats(created)
        return [rec.snapshot() for rec in got]

    def check_intake(self) -> None:
        """Raise why no new job is taken now (shutting down, or the store failing)."""
        if self._life.closing or self._backend.refusal is not None:
            self._refuse()

    def _restamp_all(self, recs: list[JobRecord]) -> None:
        """Records that waited for room: dated as of now."""
        for rec in recs:
            due = rec.scheduled_for
            self._restamp(rec, 0.0 if due is None else due - rec.created_at)


BEHIND = ("the store's writer is behind (its oldest change waits longer than "
          "max_write_lag): try again soon, or await the call (enqueue, enqueue_many), "
          "which waits for the commit")
"""Why ``enqueue_nowait`` (and a batch's) is refused while a ``batch`` store lags."""


async def wait_all(ids: list[str], held: list[JobRecord | None],
                   wait_for: Callable[[str, JobRecord | None], Awaitable[Job]]) -> list[Job]:
    """``wait_many``: ``wait_for(ids[i], held[i])`` for every ``i`` at once (each record
    taken when the call began); the jobs in order.  The first :class:`TrioQueueError`
    (an unknown id, the queue closing) ends the call at once."""
    done: list[Job | None] = [None] * len(ids)
    failed: list[TrioQueueError] = []

    async def one(i: int, cancel_scope: trio.CancelScope) -> None:
        try:
            done[i] = await wait_for(ids[i], held[i])
        except TrioQueueError as exc:
            if not failed:
                failed.append(exc)
            cancel_scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            for i in range(len(ids)):
                nursery.start_soon(one, i, nursery.cancel_scope)
    except BaseExceptionGroup as group:
        # Cancelled from outside, each waiter raised Cancelled: the caller sees one, as
        # from any single await, not a group of them.
        cancelled, rest = group.split(trio.Cancelled)
        if rest is not None or cancelled is None:
            raise
        raise _leaf(cancelled) from None
    if failed:
        raise failed[0]
    return [job for job in done if job is not None]


def _leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception of ``group`` that is not itself a group."""
    first = group.exceptions[0]
    return _leaf(first) if isinstance(first, BaseExceptionGroup) else first


async def commit_or_take_back(backend: Backend, recs: list[JobRecord], *,
                              batch: bool = False) -> None:
    """Wait for the commit holding ``recs`` (one job, or a batch admitted at once: one
    commit holds all of it).  If it fails they were not acknowledged: each leaves the
    queue unless a worker started it already (then it runs, and is stored once writes
    work).

    The :class:`StoreError` says which happened, since a caller retrying without job
    ids makes second jobs of those that run: "the job is not stored and will not run";
    "the job is not stored yet and may run" (the write failed, but a worker has the
    job); or "not confirmed: the store did not answer within 30 s; the job may run" (the
    write is still under way).  ``batch``: the message speaks of the batch's jobs,
    naming those that may run."""
    try:
        await backend.wait_committed(recs[0])
    except StoreError as exc:
        if backend.not_confirmed(exc):  # the write goes on: it may yet commit
            what = "the batch's jobs" if batch else "the job"
            raise StoreError(f"{exc}; {what} may run") from None
        running = [rec.id for rec in recs if not backend.withdraw(rec)]
        if not batch:
            if running:
                raise StoreError(f"{exc}; the job is not stored yet and may run") from None
            raise StoreError(f"{exc}; the job is not stored and will not run") from None
        if not running:
            raise StoreError(f"{exc}; the batch's jobs are not stored and will not "
                             f"run") from None
        raise StoreError(
            f"{exc}; {len(running)} of the batch's {len(recs)} jobs are not stored yet "
            f"and may run ({', '.join(running[:5])}{', ...' if len(running) > 5 else ''})"
            f", the others will not run"
        ) from None


class _Payloads(list[JobRecord]):
    """The records of :meth:`Batches.build_many` (``enqueue_many``): an error of the
    admission that names an item (``jobs[3].payload: ...``, as ``enqueue_batch`` says
    it) names the payload instead (``payloads[3]: ...``)."""


_ITEM = re.compile(r"(?:jobs\[(\d+)\]\.)?payload: ", re.ASCII)


@contextmanager
def _named_as(recs: list[JobRecord]) -> Iterator[None]:
    """Around an admission of ``recs``: see :class:`_Payloads`."""
    try:
        yield
    except InvalidJob as exc:
        if not isinstance(recs, _Payloads):
            raise
        said = str(exc)
        item = _ITEM.match(said)
        if item is None:
            raise
        raise InvalidJob(f"payloads[{item[1] or 0}]: {said[item.end():]}") from None
