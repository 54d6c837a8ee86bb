"""Batches in the ready queues: :class:`BatchAdmission`, the part of
:class:`~trioqueue._local.ready.ReadyQueues` that admits a batch all or nothing and
parks batches that wait for room without holding single jobs back.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from .._exceptions import InvalidJob
from .._job import JobStatus
from .._record import LABELS, JobRecord, same_or_duplicate
from .._state import EventKind
from .._stats import Stats
from .changes import Changes

SCHEDULED = JobStatus.SCHEDULED
ENQUEUED = EventKind.ENQUEUED
NEVER = 1 << 62
"""No batch waits for room (a need no room reaches)."""
_reschedule = trio.lowlevel.reschedule


class BatchAdmission:
    """Batches, all or nothing (a base of :class:`ReadyQueues`, which sets this state
    and documents it)."""

    _jobs: dict[str, JobRecord]
    _stats: Stats
    _changes: Changes
    capacity: int
    _queues: list[deque[JobRecord]]
    _idle: list[trio.lowlevel.Task]
    _backlog: list[int]
    _delayed_new: list[int]
    _room_waiting: list[int]
    _batch_room: list[trio.lowlevel.ParkingLot]
    _batch_need: list[int]
    _batch_need_delayed: list[int]
    _batch_waiting: list[int]
    max_payload: int
    too_big: Callable[[JobRecord], Exception]

    if TYPE_CHECKING:
        def _stored(self, job_id: str) -> JobRecord | None: ...
        def _maybe_stored(self, job_id: str) -> bool: ...
        def _admit_delayed(self, rec: JobRecord) -> JobRecord | None: ...
        def _waiting(self, p: int) -> int: ...

    def admit_many(self, recs: list[JobRecord]) -> list[JobRecord] | None:
        """All or nothing: accept every new job of ``recs`` if each priority has room for
        all of its new ones (queued and delayed counted apart, as in :meth:`admit`);
        ``None`` when one has not, and then nothing changed.  The result holds, in
        order, each record as accepted, or the job already holding its id (same task
        and payload; the same id twice in ``recs`` gives the first one).  Raises
        :class:`DuplicateJob` (nothing admitted) for an id taken by another job, and
        :class:`InvalidJob` for a payload too large for the store (:meth:`admit`)."""
        jobs = self._jobs
        seen: dict[str, JobRecord] = {}
        new: list[bool] = []
        queued = [0, 0, 0]
        delayed = [0, 0, 0]
        for i, rec in enumerate(recs):
            old = jobs.get(rec.id)
            earlier = seen.get(rec.id) if old is None else None
            if old is None and earlier is None and rec.id_given and self._maybe_stored(rec.id):
                old = self._stored(rec.id)
            if earlier is not None:
                same_or_duplicate(earlier, rec, in_batch=True)  # raises: nothing admitted
                new.append(False)
                continue
            if old is not None:
                same_or_duplicate(old, rec)  # raises before anything is admitted
                seen.setdefault(rec.id, old)
                new.append(False)
                continue
            if len(rec.payload_json) > self.max_payload:
                raise InvalidJob(f"jobs[{i}].{self.too_big(rec)}")
            seen[rec.id] = rec
            new.append(True)
            if rec.status is SCHEDULED:
                delayed[rec.priority] += 1
            else:
                queued[rec.priority] += 1
        if not self.fits(queued, delayed):
            return None
        # Admitted in one step, as :meth:`admit` does each job, with one change call for
        # the batch's ready jobs (the store marks them all at once).
        out: list[JobRecord] = []
        ready: list[JobRecord] = []
        queues = self._queues
        idle = self._idle
        stats = self._stats
        enqueued_p = stats.enqueued_p
        for rec, is_new in zip(recs, new, strict=True):
            if not is_new:
                out.append(jobs.get(rec.id) or seen[rec.id])
            elif rec.status is SCHEDULED:
                got = self._admit_delayed(rec)
                assert got is not None  # room was checked for all of them
                out.append(got)
            else:
                jobs[rec.id] = rec
                stats.enqueued += 1
                enqueued_p[rec.priority] += 1
                queues[rec.priority].append(rec)
                if idle:
                    _reschedule(idle.pop())
                ready.append(rec)
                out.append(rec)
        changes = self._changes
        if ready and changes.observed:
            changes.changed_many(ENQUEUED, ready)
        return out

    def fits(self, queued: list[int], delayed: list[int]) -> bool:
        """Whether ``queued[p]`` new ready jobs and ``delayed[p]`` new delayed jobs of
        each priority ``p`` all fit now."""
        cap = self.capacity
        for p in range(3):
            if queued[p] and (self._waiting(p) + queued[p] > cap or self._backlog[p]):
                return False
            if delayed[p] and self._delayed_new[p] + delayed[p] > cap:
                return False
        return True

    def _needs(self, recs: list[JobRecord]) -> tuple[list[int], list[int]]:
        """New ready and new delayed jobs of ``recs`` per priority (ids not known yet)."""
        jobs = self._jobs
        seen: set[str] = set()
        queued = [0, 0, 0]
        delayed = [0, 0, 0]
        for rec in recs:
            if rec.id in jobs or rec.id in seen:
                continue
            seen.add(rec.id)
            if rec.status is SCHEDULED:
                delayed[rec.priority] += 1
            else:
                queued[rec.priority] += 1
        return queued, delayed

    def full_reason_many(self, recs: list[JobRecord]) -> str:
        """Why :meth:`admit_many` had no room for ``recs`` (the QueueFull message)."""
        queued, delayed = self._needs(recs)
        cap = self.capacity
        for p in range(3):
            label = LABELS[p]
            if queued[p]:
                if self._backlog[p]:
                    return (f"priority {label}: {self._backlog[p]} jobs recovered from the "
                            f"store run first")
                room = cap - self._waiting(p)
                if queued[p] > room:
                    return (f"priority {label}: room for {max(room, 0)} of the batch's "
                            f"{queued[p]} jobs ({cap} at most waiting)")
            if delayed[p] and self._delayed_new[p] + delayed[p] > cap:
                room = cap - self._delayed_new[p]
                return (f"priority {label}: room for {max(room, 0)} of the batch's "
                        f"{delayed[p]} delayed jobs ({cap} at most waiting for a due time)")
        return "no room"  # pragma: no cover - only asked after admit_many found none

    async def wait_for_room_many(self, recs: list[JobRecord]) -> None:
        """Wait until room was freed in a priority where ``recs`` lack it (or shutdown,
        or a recovered backlog ended); the caller then tries :meth:`admit_many` again.
        Parked batches are woken together once the room the smallest of them needs is
        free, and look again; a batch that still does not fit parks again and keeps no
        room from anyone (single jobs are not held back for a batch)."""
        queued, delayed = self._needs(recs)
        cap = self.capacity
        p = 0
        for p in range(3):
            if queued[p] and (self._waiting(p) + queued[p] > cap or self._backlog[p]):
                # Woken once that much room is free (a backlog ends by waking all).
                self._batch_need[p] = min(self._batch_need[p], queued[p])
                break
            if delayed[p] and self._delayed_new[p] + delayed[p] > cap:
                self._batch_need_delayed[p] = min(self._batch_need_delayed[p], delayed[p])
                break
        else:  # it fits now: just a checkpoint
            await trio.lowlevel.checkpoint()
            return
        self._room_waiting[p] += 1
        self._batch_waiting[p] += 1
        try:
            await self._batch_room[p].park()
        finally:
            self._room_waiting[p] -= 1
            self._batch_waiting[p] -= 1

    def _wake_batches(self, p: int) -> None:
        """Wake every batch parked for priority ``p``: each looks again (and parks
        again, setting what it needs, if it still does not fit)."""
        self._batch_need[p] = self._batch_need_delayed[p] = NEVER
        self._batch_room[p].unpark_all()
