"""A Redis node's intake: :class:`NodeIntake`, the part of
:class:`~trioqueue._redis.backend.RedisBackend` that admits jobs (``enqueue`` in one
script call, ``enqueue_nowait`` into the outbox, docs/redis-design.md)."""

from __future__ import annotations

import trio

from .._exceptions import InvalidJob, StoreError
from .._job import Job, JobStatus
from .._record import LABELS, JobRecord, exists_differently
from ._client import RedisNotSent, RedisRefused, RedisUnavailable
from ._limits import DEFAULTS, CallTooLarge, Limits, check_batch_size, check_payload, too_large
from ._node import NodeCore
from ._outbox import new_job
from ._state import Admission
from ._values import MAX_BATCH, CorruptRecord

RETRY_BACKOFF = (0.001, 0.05)
"""A producer waiting for room polls Redis with a backoff from 1 ms doubling to 50 ms."""


class NodeIntake(NodeCore):
    """``admit`` and friends: what the engine's intake calls on a Redis node."""

    _totals_seq: int

    def admit(self, rec: JobRecord) -> JobRecord | None:
        """``enqueue_nowait``: accepted into this node's outbox if its priority has room
        in this node's view (docs/redis-design.md); ``None`` (QueueFull) otherwise.  A
        given id this node knows answers at once: the job holding it, or DuplicateJob.
        A payload one call to Redis cannot carry raises InvalidJob here, not later."""
        outbox = self._outbox
        if rec.id in outbox.known or outbox.get(rec.id) is not None:
            try:
                got = outbox.repeat(rec)
            except ValueError as exc:
                raise exists_differently(rec.id, str(exc)) from None
            if got is not None:
                return got if isinstance(got, JobRecord) else self._from_job(got)
        check_payload(rec, self._call_limits)  # (refused now: written later, it could not)
        if not outbox.fits([rec]):
            outbox.refuse([rec])
            return None
        outbox.put([rec], whole=False)
        if rec.scheduled_for is not None:
            self._due_at(rec.scheduled_for - self._wall)
        self._stats.enqueued += 1
        self._stats.enqueued_p[rec.priority] += 1
        if rec.status is JobStatus.SCHEDULED:
            self._stats.scheduled += 1
        return rec

    def admit_many(self, recs: list[JobRecord]) -> list[JobRecord] | None:
        """``enqueue_many_nowait``: the batch into the outbox whole if every priority has
        room for all of it in this node's view, else ``None``; written all or nothing in
        one script call (InvalidJob when that call could not carry it)."""
        _check_batch(recs)
        check_batch_size(recs, self._call_limits)
        outbox = self._outbox
        if not outbox.fits(recs):
            outbox.refuse(recs)
            return None
        outbox.put(recs, whole=True)
        self._stats.enqueued += len(recs)
        for rec in recs:
            self._stats.enqueued_p[rec.priority] += 1
        self._stats.scheduled += sum(rec.status is JobStatus.SCHEDULED for rec in recs)
        return recs

    async def admit_async(self, rec: JobRecord, *, count_rejected: bool = True,
                          given: bool = False) -> JobRecord | None:
        """One script call: ``rec`` once accepted, the stored job for an idempotent repeat,
        ``None`` when its priority is full; raises :class:`DuplicateJob`.  ``given``: its
        id was the caller's (this node remembers the job for ``enqueue_nowait``)."""
        got = await self.admit_many_async([rec], count_rejected=count_rejected,
                                          given={rec.id} if given else set())
        return None if got is None else got[0]

    async def admit_many_async(self, recs: list[JobRecord], *, count_rejected: bool = True,
                               given: set[str] | None = None) -> list[JobRecord] | None:
        """One script call admits ``recs`` all or nothing: each as accepted (or the stored
        job holding its id), ``None`` when a priority lacks room; raises
        :class:`DuplicateJob` (nothing admitted), and :class:`InvalidJob` when the call
        would pass Redis' limits (:mod:`._limits`).  Jobs accepted by ``enqueue_nowait``
        before are written first (this node's order)."""
        _check_batch(recs)
        # (Checked before the call is encoded: a payload of 600 MB took 1.6 s to encode.)
        if len(recs) == 1:
            check_payload(recs[0], self._call_limits)
        else:
            check_batch_size(recs, self._call_limits)
        if len(self._outbox):
            await self._outbox.empty()
        mark = self._outbox.mark()
        try:
            answer = await self.state.admit([new_job(rec) for rec in recs],
                                            whole=len(recs) > 1,
                                            count_rejected=count_rejected)
        except (RedisRefused, RedisNotSent) as exc:  # (nothing was done)
            raise StoreError(f"{exc}; {not_stored(recs)}") from None
        except CallTooLarge as exc:  # (not sent)
            raise too_large(recs, exc) from None
        except CorruptRecord as exc:  # the stored job of a repeated id cannot be read
            raise exc.store_error() from None
        except RedisUnavailable as exc:  # sent, and no answer came
            raise StoreError(f"{exc}; {maybe_stored(recs, given or set())}") from None
        if self._outage.since is not None and any(
                got.code is Admission.ACCEPTED for got in answer.jobs):
            self._outage.wrote()  # (Redis took a write: an OOM outage is over)
        if answer.view is not None:
            self._outbox.check_seq(mark, answer.view.seq)
        self._outbox.wrote(answer.view)
        for rec in recs:
            if rec.scheduled_for is not None:
                self._due_at(rec.scheduled_for - self._wall)
        # This node's counters are the cluster's as of the last refresh: count this call
        # here unless that refresh was read after it (then it counts it already).
        fresh = answer.view is None or answer.view.seq > self._totals_seq
        out: list[JobRecord] = []
        full = False
        for rec, got in zip(recs, answer.jobs, strict=True):
            if got.code is Admission.DUPLICATE:
                raise exists_differently(rec.id, await self._what_differs(rec))
            if got.code is Admission.FULL:
                full = True
            elif got.code is Admission.ACCEPTED:
                if got.job is not None:
                    rec.created_at = got.job.created_at
                    rec.scheduled_for = got.job.scheduled_for
                if fresh:
                    self._stats.enqueued += 1
                    self._stats.enqueued_p[rec.priority] += 1
                out.append(rec)
            elif got.code is Admission.EXISTING:
                assert got.job is not None
                out.append(self._from_job(got.job))
        if full:
            if count_rejected and fresh:
                self._stats.rejected += len(recs)
                for rec in recs:
                    self._stats.rejected_p[rec.priority] += 1
            return None
        if given:
            for rec in out:
                if rec.id in given:
                    self._outbox.remember(rec.snapshot())
        return out

    @property
    def _call_limits(self) -> Limits:
        """What one call to this node's Redis may carry (:mod:`._limits`)."""
        return DEFAULTS if self._state is None else self._state.limits

    async def _what_differs(self, rec: JobRecord) -> str:
        """``"task"`` or ``"payload"``: what the job stored under ``rec.id`` has that
        ``rec`` has not (the script compares one digest of both), from a look-up made on
        this error path only; ``"task or payload"`` when the look-up cannot tell."""
        try:
            stored = await self.state.get(rec.id)
        except (RedisRefused, RedisNotSent, RedisUnavailable, CorruptRecord):
            return "task or payload"
        if stored is None:  # (gone since: pruned, or the queue was cleared)
            return "task or payload"
        return "task" if stored.job.task != rec.task else "payload"

    async def wait_for_room_many(self, recs: list[JobRecord]) -> None:
        await trio.sleep(RETRY_BACKOFF[1])

    def full_reason_many(self, recs: list[JobRecord]) -> str:
        """Names the priority that lacked room, from the room Redis answered with (the
        script says only that the batch did not fit), as memory and SQLite do."""
        cap = self._config.capacity
        short = self._outbox.lacking(recs)
        if short is None:  # (the room changed since): every priority of the batch
            labels = sorted({rec.priority for rec in recs})
            return (f"priority {', '.join(LABELS[p] for p in labels)}: no room for the "
                    f"whole batch ({cap} jobs at most waiting per priority)")
        delayed, p, room, n = short
        if delayed:
            return (f"priority {LABELS[p]}: room for {max(room, 0)} of the batch's {n} "
                    f"delayed jobs ({cap} at most waiting for a due time)")
        return (f"priority {LABELS[p]}: room for {max(room, 0)} of the batch's {n} jobs "
                f"({cap} at most waiting)")

    def _from_job(self, j: Job) -> JobRecord:
        rec = JobRecord.restored(
            j.id, j.task, j.payload, "", int(j.priority), j.status, j.attempts, j.max_retries,
            j.timeout, j.created_at, j.scheduled_for, j.started_at, j.finished_at, j.result,
            j.error, j.traceback,
        )
        rec.progress = j.progress
        return rec

    async def wait_for_room(self, rec: JobRecord) -> trio.lowlevel.ParkingLot | None:
        await trio.sleep(RETRY_BACKOFF[1])
        return None

    def pass_room_on(self, lot: trio.lowlevel.ParkingLot, p: int) -> None:
        pass

    def full_reason(self, rec: JobRecord) -> str:
        return f"{self._config.capacity} jobs already waiting" + (
            " for a due time" if rec.status is JobStatus.SCHEDULED else "")

    async def wait_committed(self, rec: JobRecord | None = None) -> None:
        await trio.lowlevel.checkpoint()

    def not_confirmed(self, exc: StoreError) -> bool:
        return False

    def withdraw(self, rec: JobRecord) -> bool:
        return False

    def repeat_of(self, stored: JobRecord, rec: JobRecord) -> JobRecord:
        raise TypeError("the Redis backend checks repeats in admit_async")


def not_stored(recs: list[JobRecord]) -> str:
    """What became of ``recs`` when Redis never ran the call (no connection took it, or
    Redis refused it): nothing (enqueueing them again is safe, with or without ids)."""
    if len(recs) == 1:
        return "the job is not stored"
    return f"none of the {len(recs)} jobs is stored"


def maybe_stored(recs: list[JobRecord], given: set[str]) -> str:
    """What became of ``recs`` when the call was sent and no answer came (a timeout, a
    connection lost after sending): Redis may have stored them.  A retry under the same
    ids stores each once; the caller's ids are named, or (none given) the ids made
    here, which a retry may give as its own."""
    if len(recs) == 1:
        job_id = recs[0].id
        if job_id in given:
            return (f"the job was not confirmed and may have been stored: enqueue it "
                    f"again with the same id, {job_id!r}, which stores it once")
        return (f"the job was not confirmed and may have been stored, as {job_id!r} (an "
                f"id made for it): enqueue it again with that id (job_id=, or \"id\" "
                f"over HTTP) to store it once; without an id a retry may store it twice")
    if all(rec.id in given for rec in recs):
        return (f"the batch of {len(recs)} jobs was not confirmed and may have been "
                "stored (all or none of it): enqueue it again with the same ids, which "
                "stores each job once")
    return (f"the batch of {len(recs)} jobs was not confirmed and may have been stored (all "
            "or none of it): give every job an id to retry it safely; jobs without one "
            "may be stored twice")


def _check_batch(recs: list[JobRecord]) -> None:
    """A batch is written in one script call, of at most :data:`MAX_BATCH` jobs: a larger
    one is refused before anything is accepted (``enqueue_many_nowait`` accepted it, and
    the write that could not take it ended the node, the jobs lost)."""
    if len(recs) > MAX_BATCH:
        raise InvalidJob(f"batch: at most {MAX_BATCH} jobs at once on Redis (one script "
                         f"call writes a batch), got {len(recs)}")
