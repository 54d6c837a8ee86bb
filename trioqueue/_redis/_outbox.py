"""``enqueue_nowait`` on a Redis node: a local view of room and an outbox.

A synchronous call cannot make a round trip, so a node answers ``enqueue_nowait`` (and
``submit_nowait``, ``enqueue_many_nowait``) from what it knows, and writes the job to
Redis just after:

- **The room view.**  Per priority, the ready list's length (plus its due jobs waiting
  for room) and the delayed jobs waiting, as the last enqueue reply or counts refresh
  showed them, less the jobs this node claimed since, plus the jobs in this node's
  outbox.  A job fits when that stays within the capacity; else ``QueueFull`` at once
  (counted in the cluster's ``rejected`` with the next write).
- **The outbox.**  An accepted job is held here, in order, until the admitter task
  writes it with one ``enqueue`` script call per batch (a batch of
  ``enqueue_many_nowait`` alone in its call, all or nothing).  A job Redis finds no room
  for (another node filled the priority meanwhile) stays, first in line, and is sent
  again (1 ms backoff doubling to 50 ms): it waits for room, it is never dropped.  While
  Redis is unreachable the outbox keeps its jobs and tries again every 0.5 s.
- **Ids.**  A given id found in the outbox, or among the jobs this node last saw with a
  given id (:meth:`Outbox.remember`, up to :data:`KNOWN_IDS`), answers at once as
  ``enqueue`` would (the existing job, or ``DuplicateJob``).  An id this node has not
  seen is checked by Redis when the job is written: a job of the same task and payload
  is an idempotent repeat (nothing more to do); another job holding the id means this
  job is not stored, which is logged as an error (``enqueue``, which waits for Redis'
  answer, raises ``DuplicateJob`` instead).

docs/redis-design.md ("enqueue_nowait on Redis") states the guarantees.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable

import trio

from .._job import Job, JobStatus, Priority, same_payload_json
from .._record import LABELS, JobRecord
from ._client import RedisUnavailable
from ._limits import CallTooLarge, job_bytes
from ._state import MAX_BATCH, Admission, Counts, NewJob, RedisState, RoomView
from ._values import canonical_digest

log = logging.getLogger("trioqueue")

KNOWN_IDS = 10_000
"""Given ids (and their last snapshot) a node remembers for ``enqueue_nowait`` repeats."""
RETRY_AFTER = 0.5
"""Seconds between two tries of the admitter while Redis is unreachable."""
_PRIORITIES = (Priority.HIGH, Priority.MEDIUM, Priority.LOW)


def new_job(rec: JobRecord) -> NewJob:
    """The record of a checked job as the enqueue script takes it."""
    delay = 0.0 if rec.scheduled_for is None else rec.scheduled_for - rec.created_at
    return NewJob(rec.id, rec.task, rec.payload, rec.payload_json,
                  canonical_digest(rec.task, rec.payload), _PRIORITIES[rec.priority],
                  rec.max_retries, rec.timeout, math.ceil(delay * 1000) if delay > 0 else 0)


class _Unit:
    """Jobs written together: one ``enqueue_nowait`` (``whole=False``: each job on its
    own) or one ``enqueue_many_nowait`` batch (``whole=True``: all or nothing)."""

    __slots__ = ("recs", "waiting", "whole")

    def __init__(self, recs: list[JobRecord], whole: bool) -> None:
        self.recs = recs
        self.whole = whole
        self.waiting = False
        """Redis had no room for it at its last write."""


class Outbox:
    """One node's jobs accepted by ``enqueue_nowait`` and not yet in Redis."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._units: deque[_Unit] = deque()
        self._by_id: dict[str, JobRecord] = {}
        self._pending = [[0, 0, 0], [0, 0, 0]]
        """Jobs in the outbox (sent or not), ready and delayed, per priority."""
        self.view = [[0, 0, 0], [0, 0, 0]]
        """Redis' fill as last seen: queued and delayed, per priority."""
        self._seq = -1
        """The view's version (the queue's event number when Redis answered it)."""
        self.seen_seq = -1
        """The highest event number in an answer this node had from Redis (its own
        writes' events are at most that): a subscriber arriving now is not shown those.
        A call sent after it was read answers at least that much, unless Redis lost the
        queue's data (:meth:`check_seq`)."""
        self.epoch = 0
        """How many times this node saw the queue's event number go back (Redis lost its
        data): a call sent before the last time is not checked against the marks of the
        lost state (:meth:`mark`)."""
        self.on_back: Callable[[int, int], None] = lambda high, seq: None
        """Called by :meth:`went_back` (the node resets its own marks and says so)."""
        self.refused = [0, 0, 0]
        """This node's QueueFull answers not yet counted in Redis."""
        self.written_seq = -1
        """The event number of the newest answer to a write of this node's (the outbox's,
        or an awaited enqueue's): counts read before it do not hold that write, which this
        node has counted already, so a refresh from them would move its counters back."""
        self._in_flight = False
        self._wake = trio.Event()
        self._empty = trio.Event()
        self._empty.set()
        self._quiet = trio.Event()
        """Set while no job of the outbox is on its way to Redis but those waiting for
        room: a claim made then sees every other job this node accepted."""
        self._quiet.set()
        self.known: dict[str, Job] = {}
        """Given ids -> the job as this node last saw it (oldest first)."""
        self._budget: int | None = None
        """Bytes one write's jobs may take, once a write was too large for Redis
        (``None``: taken by count alone, nothing measured)."""

    def __len__(self) -> int:
        return len(self._by_id)

    @property
    def in_flight(self) -> bool:
        """A write is on the wire: a counts reply now may or may not count its jobs."""
        return self._in_flight

    # ------------------------------------------------------------------ the view

    def fits(self, recs: list[JobRecord]) -> bool:
        return self.lacking(recs) is None

    def lacking(self, recs: list[JobRecord]) -> tuple[bool, int, int, int] | None:
        """The first priority without room for its part of ``recs`` as this node sees
        it: (its delayed jobs?, the priority, the room, the part), or ``None``."""
        need = [[0, 0, 0], [0, 0, 0]]
        for rec in recs:
            need[rec.status is JobStatus.SCHEDULED][rec.priority] += 1
        cap = self.capacity
        for p in (0, 1, 2):
            for kind in (0, 1):
                n = need[kind][p]
                room = cap - self.view[kind][p] - self._pending[kind][p]
                if n and n > room:
                    return bool(kind), p, room, n
        return None

    def depths(self) -> tuple[int, int, int]:
        """Jobs waiting per priority as this node sees them (the queued gauge)."""
        v, o = self.view[0], self._pending[0]
        return (v[0] + o[0], v[1] + o[1], v[2] + o[2])

    def by_priority(self) -> tuple[int, int, int]:
        """Jobs in the outbox (ready and delayed) per priority."""
        r, d = self._pending
        return (r[0] + d[0], r[1] + d[1], r[2] + d[2])

    def delayed(self) -> int:
        """Delayed jobs in the outbox (the scheduled gauge counts them)."""
        return sum(self._pending[1])

    def wrote(self, view: RoomView | None) -> None:
        """The answer to one of this node's writes (see :attr:`written_seq`)."""
        self.saw(view)
        if view is not None and view.seq > self.written_seq:
            self.written_seq = view.seq

    # ------------------------------------------------------------------ lost data

    def mark(self) -> tuple[int, int]:
        """Taken just before a call whose answer carries the queue's event number, for
        :meth:`check_seq`: the epoch and the highest number read so far."""
        return self.epoch, self.seen_seq

    def check_seq(self, mark: tuple[int, int], seq: int) -> None:
        """An answer carrying event number ``seq`` to a call sent at ``mark``.  That call
        ran in Redis after every call whose answer this node had read when it was sent
        (Redis runs them one at a time, and ``seq`` never decreases in one data set), so
        a lower number means Redis lost the queue's data (a restart without persistence,
        or from an older snapshot): :meth:`went_back`.  Answers of concurrent calls may be
        handled in any order; each is checked against its own mark only."""
        epoch, floor = mark
        if seq < floor and epoch == self.epoch:
            self.went_back(seq, floor)

    def went_back(self, seq: int, high: int) -> None:
        """The queue's event number went back from ``high`` (or :attr:`seen_seq`) to
        ``seq``: forget every mark of the lost state (the next answers count, whatever
        their number) and the given ids seen (those jobs are gone); the node does the
        same with its own (:attr:`on_back`).  Jobs in the outbox stay: they are written
        to the new state."""
        high = max(high, self.seen_seq)
        self.epoch += 1
        self._seq = -1
        self.seen_seq = seq
        self.written_seq = -1
        self.known.clear()
        self.on_back(high, seq)

    def saw_seq(self, seq: int) -> None:
        """An answer from Redis written after event number ``seq`` (:attr:`seen_seq`)."""
        if seq > self.seen_seq:
            self.seen_seq = seq

    def saw(self, view: RoomView | None) -> None:
        """A script's answer: kept if it is newer than the view held (replies of
        concurrent calls arrive in any order)."""
        if view is not None:
            self.saw_seq(view.seq)
        if view is not None and view.seq >= self._seq:
            self._seq = view.seq
            self.view = [list(view.ready), list(view.delayed)]

    def saw_counts(self, counts: Counts) -> None:
        """A counts refresh; ignored while a write is on the wire (it may or may not
        count that write's jobs, which the outbox still counts)."""
        seq = int(counts.totals.get("seq", 0))
        if not self._in_flight and seq >= self._seq:
            self._seq = seq
            self.view = [list(counts.queued), list(counts.delayed)]

    # ------------------------------------------------------------------ intake

    def put(self, recs: list[JobRecord], whole: bool) -> None:
        self._units.append(_Unit(recs, whole))
        for rec in recs:
            self._by_id[rec.id] = rec
            self._pending[rec.status is JobStatus.SCHEDULED][rec.priority] += 1
        if self._empty.is_set():
            self._empty = trio.Event()
        if self._quiet.is_set():
            self._quiet = trio.Event()
        self._wake.set()

    def refuse(self, recs: list[JobRecord]) -> None:
        for rec in recs:
            self.refused[rec.priority] += 1
        self._wake.set()

    def get(self, job_id: str) -> JobRecord | None:
        return self._by_id.get(job_id)

    def remember(self, job: Job) -> None:
        """``job`` holds a given id: a later ``enqueue_nowait`` of that id finds it."""
        known = self.known
        known.pop(job.id, None)
        known[job.id] = job
        if len(known) > KNOWN_IDS:
            del known[next(iter(known))]

    def repeat(self, rec: JobRecord) -> JobRecord | Job | None:
        """The job holding ``rec.id`` as this node knows it (the outbox's record or the
        last snapshot seen), if it has the same task and payload; ``None`` when this node
        knows no job with that id.  Raises ValueError when the known job differs, its
        argument what differs (``"task"`` or ``"payload"``)."""
        held = self._by_id.get(rec.id)
        if held is not None:
            if held.task != rec.task:
                raise ValueError("task")
            if same_payload_json(held.payload_json, rec.payload_json):
                return held
            raise ValueError("payload")
        job = self.known.get(rec.id)
        if job is None:
            return None
        if job.task != rec.task:
            raise ValueError("task")
        if canonical_digest(job.task, job.payload) == canonical_digest(rec.task, rec.payload):
            return job
        raise ValueError("payload")

    @property
    def quiet(self) -> bool:
        return self._quiet.is_set()

    async def wait_quiet(self) -> None:
        """Return once every job accepted so far is written or waits for room."""
        await self._quiet.wait()

    async def empty(self) -> None:
        """Return once every job accepted so far has been written (or dropped)."""
        await self._empty.wait()

    # ------------------------------------------------------------------ the admitter

    def _take(self) -> tuple[list[_Unit], bool]:
        units = self._units
        if units[0].whole:
            return [units.popleft()], True
        out: list[_Unit] = []
        n = 0
        budget = self._budget
        size = 2
        while units and not units[0].whole and n + len(units[0].recs) <= MAX_BATCH:
            if budget is not None:
                size += sum(map(job_bytes, units[0].recs))
                if out and size > budget:
                    break
            n += len(units[0].recs)
            out.append(units.popleft())
        return out, False

    def _too_large(self, units: list[_Unit], refused: list[int], exc: CallTooLarge) -> None:
        """A write was too large for Redis (not sent): its jobs go back first in line,
        weighed from here until the outbox is empty.  Every job was checked when it was
        accepted (:func:`~._limits.check_payload`), so a unit too large alone is not
        expected; it is not stored, with an error logged, rather than sent for ever."""
        self.refused = [a + b for a, b in zip(self.refused, refused, strict=True)]
        if len(units) == 1:
            recs = units[0].recs
            for rec in recs:
                self._done(rec)
            log.error("trioqueue: %d jobs accepted by enqueue_nowait are NOT stored: %s "
                      "(%s)", len(recs), exc, describe([rec.id for rec in recs]))
            return
        self._units.extendleft(reversed(units))
        self._budget = exc.room

    def _done(self, rec: JobRecord) -> None:
        del self._by_id[rec.id]
        self._pending[rec.status is JobStatus.SCHEDULED][rec.priority] -= 1

    async def run(self, state: RedisState) -> None:
        """The admitter: write the outbox to Redis, batch by batch, in order."""
        backoff = 0.001
        while True:
            if all(unit.waiting for unit in self._units):
                self._quiet.set()
            if not self._units and not any(self.refused):
                self._budget = None
                if not self._by_id:
                    self._empty.set()
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            units, whole = self._take() if self._units else ([], False)
            recs = [rec for unit in units for rec in unit.recs]
            refused, self.refused = self.refused, [0, 0, 0]
            mark = self.mark()
            self._in_flight = True
            try:
                got = await state.admit([new_job(rec) for rec in recs], whole=whole,
                                        count_rejected=False, refused=refused)
            except RedisUnavailable as exc:
                self.refused = [a + b for a, b in zip(self.refused, refused, strict=True)]
                self._units.extendleft(reversed(units))
                log.warning("trioqueue: %d jobs accepted by enqueue_nowait wait for redis "
                            "(%s); trying again", len(self._by_id), exc)
                await trio.sleep(RETRY_AFTER)
                continue
            except CallTooLarge as exc:
                self._too_large(units, refused, exc)
                await trio.lowlevel.checkpoint()
                continue
            finally:
                self._in_flight = False
            if got.view is not None:
                self.check_seq(mark, got.view.seq)
            self.wrote(got.view)
            full = self._settle(units, recs, [a.code for a in got.jobs],
                                [a.job for a in got.jobs])
            if full:
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 0.05)
            else:
                backoff = 0.001

    def _settle(self, units: list[_Unit], recs: list[JobRecord], codes: list[Admission],
                jobs: list[Job | None]) -> bool:
        """Apply one write's answers; put what found no room back first in line."""
        code_of = dict(zip((id(r) for r in recs), zip(codes, jobs, strict=True),
                           strict=True))
        back: list[_Unit] = []
        for unit in units:
            left: list[JobRecord] = []
            for rec in unit.recs:
                code, job = code_of[id(rec)]
                if code is Admission.FULL:
                    left.append(rec)
                    continue
                self._done(rec)
                if code is Admission.ACCEPTED:
                    continue
                if code is Admission.EXISTING:
                    if job is not None:
                        self.remember(job)
                    continue
                log.error(
                    "trioqueue: job %s (task %s, priority %s) accepted by enqueue_nowait "
                    "is NOT stored: its id is taken in redis by another job (%s)",
                    rec.id, rec.task, LABELS[rec.priority],
                    "duplicate id" if code is Admission.DUPLICATE
                    else "its batch held a duplicate id")
            if left:
                unit.recs = left
                unit.waiting = True
                back.append(unit)
        self._units.extendleft(reversed(back))
        return bool(back)

    def abandon(self) -> list[str]:
        """The node closes: the ids of jobs never written (lost with this process)."""
        ids = list(self._by_id)
        self._units.clear()
        self._by_id.clear()
        self._empty.set()
        self._quiet.set()
        return ids


def describe(ids: list[str]) -> str:
    return ", ".join(ids[:10]) + (", ..." if len(ids) > 10 else "")

