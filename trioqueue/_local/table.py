"""The jobs the local backend holds in memory, and how long finished ones stay."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from .._job import TERMINAL, Job, JobStatus
from .._record import JobRecord
from .._state import JobEvent, edge, move
from .._stats import Stats
from .changes import Changes

COMPLETE = JobEvent.COMPLETE
COMPLETED, COMPLETED_KIND = edge(JobStatus.PROCESSING, COMPLETE)
CANCEL = JobEvent.CANCEL


class JobTable:
    """Every job in memory by id: the live ones, and finished ones until they age out
    (``finished_cache`` of them at most, none older than ``result_ttl``).  The store, when
    there is one, keeps finished jobs longer.

    :meth:`finish` is every job's last move (completed, failed or cancelled) and its
    bookkeeping, for the workers' hot path and everyone else alike.
    """

    def __init__(self, stats: Stats, changes: Changes, *, wall_offset: float,
                 finished_cache: int, result_ttl: float) -> None:
        self.by_id: dict[str, JobRecord] = {}
        """The index.  The ready queues add new jobs to it directly (their hot path)."""
        self._finished: deque[JobRecord] = deque()
        self._finished_at: deque[float] = deque()
        """When each of :attr:`_finished` ended (wall time), in a deque of its own: a
        ``(time, record)`` tuple per job is one more object for every collection of the
        garbage collector to walk while the job stays."""
        self._cap = finished_cache
        self._ttl = result_ttl
        self._stats = stats
        self._changes = changes
        self._wall = wall_offset
        self.left: set[str] | None = None
        """With a store: where the ids of finished jobs go as they leave memory (the
        store still has them), those not of the generated shape
        (:func:`~trioqueue._ids.generated_shape`: a caller's id of that shape is looked
        up in the store instead, so the generated ids of the history take no memory)."""
        self.pruned: dict[str, float] = {}
        """With a store: jobs still in memory whose rows the store pruned -> the prune's
        horizon (their ``finished_at`` was before it).  Such a job's id does not go to
        :attr:`left` as it leaves (the prune dropped it from there; added after, it would
        stay for ever), unless it finished again since (a retry wrote its row again)."""

    def get(self, job_id: str) -> JobRecord | None:
        return self.by_id.get(job_id)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self.by_id

    def add(self, rec: JobRecord) -> None:
        self.by_id[rec.id] = rec

    def remove(self, rec: JobRecord) -> None:
        del self.by_id[rec.id]

    def newest(self, status: JobStatus | None, limit: int, task: str | None = None,
               before: str | None = None) -> tuple[list[Job], str | None]:
        """Up to ``limit`` snapshots, newest first (the order jobs were made), only
        those in ``status``, of ``task``, and made before the job ``before`` if given
        (when it is no longer held: those with a lower id, as generated ids sort by
        creation time); and the ``before`` of the next page (``None`` on the last)."""
        recs: Iterator[JobRecord] = reversed(self.by_id.values())
        cursor = None if before is None else self.by_id.get(before)
        if cursor is not None:
            for rec in recs:
                if rec is cursor:
                    break
        elif before is not None:
            recs = (rec for rec in recs if rec.id < before)
        found: list[JobRecord] = []
        for rec in recs:
            if (status is None or rec.status is status) and (task is None or rec.task == task):
                found.append(rec)
                if len(found) > limit:
                    break
        more = len(found) > limit
        del found[limit:]
        return [rec.snapshot() for rec in found], (found[-1].id if more else None)

    def records(self) -> Iterator[JobRecord]:
        return iter(list(self.by_id.values()))

    def finish(self, rec: JobRecord, event: JobEvent, now: float, worker: int | None = None,
               duration: float | None = None) -> None:
        """End ``rec`` by ``event`` (COMPLETE, FAIL_FINAL or CANCEL) at ``now`` (trio
        time): move it, count it, announce it, wake its waiters, age old ones out.
        The caller has stored the outcome on the record (result, error)."""
        stats = self._stats
        if event is COMPLETE:  # the hot move: the table's edge, applied in place
            rec.status = COMPLETED
            kind = COMPLETED_KIND
            stats.completed += 1
            stats.completed_p[rec.priority] += 1
        elif event is CANCEL:
            kind = move(rec, event)
            stats.cancelled += 1
            stats.cancelled_p[rec.priority] += 1
        else:
            kind = move(rec, event)
            stats.failed += 1
            stats.failed_p[rec.priority] += 1
        rec.finished_at = at = now + self._wall
        changes = self._changes
        if changes.observed:
            dirty = changes.dirty
            if dirty:  # only the store listens: no call (see Changes)
                dirty[rec.id] = rec
            else:
                changes.changed(kind, rec, worker, duration)
        if rec.waiters:
            wake_waiters(rec)
        finished = self._finished
        finished.append(rec)
        finished_at = self._finished_at
        finished_at.append(at)
        if len(finished) > self._cap or finished_at[0] < at - self._ttl:
            self._age_out(at)

    def _age_out(self, now_wall: float) -> None:
        """Forget finished jobs beyond ``finished_cache`` or older than ``result_ttl``."""
        finished = self._finished
        finished_at = self._finished_at
        horizon = now_wall - self._ttl
        cap = self._cap
        if len(finished) > cap:
            cap -= cap // 64  # a little below the cap: one call per cap/64 jobs, not per job
        jobs = self.by_id
        left = self.left
        while finished and (len(finished) > cap or finished_at[0] < horizon):
            ended, old = finished_at.popleft(), finished.popleft()
            # A job re-queued by retry() since it finished is live again: keep it.
            if old.finished_at == ended and old.status in TERMINAL and jobs.get(old.id) is old:
                oid = old.id
                del jobs[oid]
                # Not of the generated shape: _ids.generated_shape, inline (once per job).
                if left is not None and (len(oid) != 32 or oid[12] != "7"):
                    pruned_before = self.pruned.pop(oid, None) if self.pruned else None
                    if pruned_before is None or ended >= pruned_before:
                        left.add(oid)

    def wake_all_waiters(self) -> None:
        """The workers are gone: wake everyone still waiting for a job to end."""
        for rec in self.by_id.values():
            if rec.waiters:
                wake_waiters(rec)


def wake_waiters(rec: JobRecord) -> None:
    """Wake the tasks in :meth:`JobQueue.wait` for ``rec``."""
    for event in rec.waiters or ():
        event.set()
    rec.waiters = None
