"""Held marks: which of a node's claimed jobs Redis knows the node holds unstarted.

A claim counts the job's attempt (``finish_and_claim``), but a node claims more than it
starts: its prefetch buffer, and the jobs of a ``concurrency``-limited task it sets aside
until the task has room.  A node that closes gives those back as ``unstarted`` (the
attempt taken back); one that is killed cannot, so it tells Redis beforehand, on the
calls it makes anyway:

- a claimed job still waiting here when the node sends its next call (past the first
  ``idle`` of the buffer, which the idle workers are about to take) is sent in that
  call's ``held`` list: Redis marks it (``held``: id -> fence).  When nothing else
  goes out for :data:`MARK_DELAY`, the fetcher makes a call for the marks alone;
- a worker that takes a marked job puts its id in the next call's ``started`` list
  (sent at once: the fetcher, or the flusher while the fetcher waits), and Redis drops
  the mark;
- the reaper gives a job whose lease expired while it was marked under that claim back
  uncounted, at most :data:`~._values.UNSTARTED_MAX` times (its ``orphaned`` count).

A job that came back that way before (``suspect`` in the claim's reply: it may be a job
that kills its node as it starts) has ``durable_start`` set: if it was marked, its
worker waits for the call carrying its ``started`` to return before the handler runs
(:meth:`NodeHolds.commit_start`), so a node it kills counts its attempt.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from functools import cached_property
from itertools import islice

import trio

from .._record import JobRecord
from ._values import Outcome, StreamEvent

log = logging.getLogger("trioqueue")

MARK_DELAY = 0.02
"""Seconds the fetcher lets held jobs wait for a call to ride on before it makes one for
their marks alone (a node killed sooner counts their attempts, as it did before)."""


class Holds:
    """The node's side of the held marks (see the module's docstring)."""

    def __init__(self) -> None:
        self.marked: dict[str, int] = {}
        """Job id -> the fence of the claim whose held mark was sent."""
        self.started: list[str] = []
        """Marked jobs a worker took since: their ``started`` is not sent yet."""
        self.unlanded: dict[str, trio.Event] = {}
        """Suspect jobs taken while marked -> set once their ``started`` landed."""

    def _unmarked(self, buffer: deque[JobRecord], lines: Iterable[deque[JobRecord]],
                  idle: int, held: dict[str, tuple[JobRecord, int]]
                  ) -> Iterator[tuple[str, int]]:
        """The (id, fence) of the jobs held here and not marked under their claim: the
        buffer's past the first ``idle``, and those of the limited tasks' lines.

        Every held job is looked at (a buffer of at most ``idle + prefetch`` jobs, lines
        about as long as their task's limit): which are marked follows no order, since a
        job skipped as one of the first ``idle`` may stay when workers get busy, and a
        limited task's line takes unmarked jobs behind marked ones."""
        marked = self.marked
        for queue in (islice(buffer, idle, None), *lines):
            for rec in queue:
                h = held.get(rec.id)
                if h is not None and marked.get(rec.id) != h[1]:
                    yield rec.id, h[1]

    def pending(self, buffer: deque[JobRecord], lines: Iterable[deque[JobRecord]],
                idle: int, held: dict[str, tuple[JobRecord, int]]) -> bool:
        """Whether a job held here is not marked yet."""
        return next(self._unmarked(buffer, lines, idle, held), None) is not None

    def take_marks(self, buffer: deque[JobRecord], lines: Iterable[deque[JobRecord]],
                   idle: int, held: dict[str, tuple[JobRecord, int]],
                   gone: set[str]) -> list[tuple[str, int]]:
        """The (id, fence) of the held jobs not marked yet, now counted as marked (those
        whose record went with Redis' data, ``gone``, are counted but not sent)."""
        marked = self.marked
        out: list[tuple[str, int]] = []
        for job_id, fence in list(self._unmarked(buffer, lines, idle, held)):
            marked[job_id] = fence
            if not (gone and job_id in gone):
                out.append((job_id, fence))
        return out

    def start(self, rec: JobRecord, fence: int) -> bool:
        """A worker takes ``rec``: True if it was marked (its ``started`` is due)."""
        if self.marked.pop(rec.id, None) != fence:
            return False
        self.started.append(rec.id)
        if rec.durable_start:
            self.unlanded[rec.id] = trio.Event()
        return True

    def take_started(self) -> list[str]:
        started = self.started
        if started:
            self.started = []
        return started

    def landed(self, ids: list[str]) -> None:
        """A call carrying ``ids`` as ``started`` returned."""
        unlanded = self.unlanded
        if unlanded:
            for job_id in ids:
                event = unlanded.pop(job_id, None)
                if event is not None:
                    event.set()

    def failed(self, ids: list[str]) -> None:
        """A call carrying ``ids`` as ``started`` failed: they go with the next one."""
        if ids:
            self.started[:0] = ids

    def unsent(self, marks: list[tuple[str, int]]) -> None:
        """A call carrying ``marks`` was not sent (too large): they go with the next one."""
        marked = self.marked
        for job_id, fence in marks:
            if marked.get(job_id) == fence:
                del marked[job_id]

    def drop(self, job_id: str) -> None:
        """``job_id`` left this node otherwise (put back, cancelled, lost): Redis drops
        its mark with that outcome, or the reaper did."""
        self.marked.pop(job_id, None)
        event = self.unlanded.pop(job_id, None)
        if event is not None:
            event.set()

    def prune(self, held: dict[str, tuple[JobRecord, int]]) -> None:
        """Forget the marks of jobs this node no longer holds."""
        for job_id in [j for j in self.marked if j not in held]:
            self.drop(job_id)
        for job_id in [j for j in self.unlanded if j not in held]:
            self.drop(job_id)

    def forget(self) -> None:
        """Redis lost the queue's data: every mark with it."""
        self.marked.clear()
        self.started = []
        for event in self.unlanded.values():
            event.set()
        self.unlanded.clear()


class NodeHolds:
    """The part of :class:`~._node.NodeCore` that keeps the held marks."""

    _held: dict[str, tuple[JobRecord, int]]
    _deadline: dict[str, float]
    _started_events: dict[str, StreamEvent]
    _pending: list[Outcome]
    _buffer: deque[JobRecord]
    _parked: dict[str, deque[JobRecord]]
    _limits: dict[str, int]
    _running_task: dict[str, int]
    _park_max: int
    _inflight: int
    _full: set[str]
    _poke_due: bool
    _idle: int
    _lease: float
    _gone: set[str]
    _blocked: bool
    _kick: trio.Event
    _flush: trio.Event

    @cached_property
    def _holds(self) -> Holds:
        return Holds()

    def _claimable(self, tasks: list[str]) -> dict[str, int]:
        """A claim's ``tasks`` when some are limited: each to the most of its jobs the
        call may claim (-1: no bound), those with no room here left out (:attr:`_full`).
        While the other fetcher's call is out, that one claims the limited tasks."""
        caps = self._claim_caps()
        if self._inflight:
            caps = dict.fromkeys(caps, 0)
        self._full = {t for t, c in caps.items() if c <= 0}
        self._poke_due = False  # (this call sees the room there is)
        return {t: caps.get(t, -1) for t in tasks if t not in self._full}

    def _room_for(self, task: str) -> None:
        """A job of limited ``task`` left this node, or stopped running: if the last
        claim left the task out, claim again (the fetcher may wait in Redis: the flusher
        wakes it, :meth:`RedisState.stop_waiting` with ``work=True``)."""
        if task in self._full:
            self._poke_due = True
            self._kick.set()
            if self._blocked:
                self._flush.set()

    def _claim_caps(self) -> dict[str, int]:
        """Per limited task, how many more of its jobs this node may claim: what may run
        and wait here (``concurrency`` each, the wait at most ``capacity``) less what
        runs, waits, or is claimed and not taken yet."""
        claimed = Counter(rec.task for rec in self._buffer if rec.task in self._limits)
        return {t: limit - self._running_task.get(t, 0) + min(self._park_max, limit)
                - len(self._parked.get(t, ())) - claimed[t]
                for t, limit in self._limits.items()}

    def _line_full(self, task: str) -> bool:
        """Whether ``task``'s line here (its claimed jobs waiting for a place under its
        ``concurrency``) holds all it may: ``concurrency`` of them, at most ``capacity``."""
        return len(self._parked.get(task, ())) >= min(
            self._park_max, self._limits.get(task, self._park_max))

    def _hand_back(self, rec: JobRecord) -> None:
        """Give ``rec`` (claimed here, not started) back with the next call: to the front
        of its priority, its attempt not counted."""
        self._deadline.pop(rec.id, None)
        self._started_events.pop(rec.id, None)
        held = self._held.pop(rec.id, None)
        self._holds.drop(rec.id)
        self._room_for(rec.task)
        if held is not None:
            self._pending.append(Outcome.unstarted(rec.id, held[1]))
            self._kick.set()
            if self._blocked:
                self._flush.set()

    def _marks_pending(self) -> bool:
        return self._holds.pending(self._buffer, self._parked.values(), self._idle,
                                   self._held)

    def _take_marks(self) -> list[tuple[str, int]]:
        return self._holds.take_marks(self._buffer, self._parked.values(), self._idle,
                                      self._held, self._gone)

    def _started(self, rec: JobRecord) -> None:
        """A worker takes ``rec``: if Redis has it marked held, say it started, now."""
        held = self._held.get(rec.id)
        if held is not None and self._holds.start(rec, held[1]):
            self._kick.set()
            if self._blocked:
                self._flush.set()

    async def commit_start(self, rec: JobRecord) -> None:
        """A job that came back unstarted from a lost node before (it may kill its node
        as it starts): if Redis has it marked held, the handler waits until Redis knows
        it started (a call, shared with the other jobs' news), so that a node it kills
        counts its attempt (bounded by the lease)."""
        rec.durable_start = False
        event = self._holds.unlanded.get(rec.id)
        if event is None:
            await trio.lowlevel.checkpoint()
            return
        with trio.move_on_after(self._lease) as waited:
            await event.wait()
        if waited.cancelled_caught:
            log.warning("trioqueue: job %s: could not tell redis it started (no answer "
                        "within %s s); running it anyway", rec.id, self._lease)
