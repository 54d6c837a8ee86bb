"""A Redis node's own tasks and its workers' side: :class:`NodeCore`, the part of
:class:`~trioqueue._redis.backend.RedisBackend` that claims, runs and renews.

- the **fetcher**: one ``finish_and_claim`` call acks what the workers finished since its
  last call and claims up to (idle workers + ``prefetch`` - already buffered) jobs into a
  local buffer that :meth:`NodeCore.claim` pops synchronously; when nothing could be
  claimed it blocks in ``BLPOP [ctl, wake] 1`` (shielded, never cancelled); with a
  prefetch, a second fetcher adds a call while the first one's is in flight; its calls
  also say which claimed jobs the node holds unstarted (:mod:`._holds`);
- the **flusher**: sends outcomes that arrive while the fetcher is blocked, at once;
- the **heartbeat**: every ``lease / 3`` renews the leases this node holds, moves their
  deadlines on this node's clock, and registers the node with its worker figures;
- the **events reader** (:mod:`._reader`): every node's events to this node's subscribers
  and waiters, only while it has some (otherwise it reads nothing);
- the **cancel listener**: ``BLPOP node:<id>:cancel``, the jobs running here whose
  cancellation another node asked for.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from .._config import QueueConfig
from .._metrics import Metrics
from .._record import JobRecord
from .._registry import TaskRegistry
from .._state import JobEvent
from .._stats import Stats
from ._client import RedisUnavailable
from ._holds import MARK_DELAY, NodeHolds
from ._limits import CallTooLarge, NodeBounds
from ._nodelog import log_refused
from ._outage import Outage
from ._outbox import Outbox
from ._reader import READER_BLOCK_MS, EventsReader
from ._state import MAX_CLAIM, Outcome, RecordParts, Unreadable

log = logging.getLogger("trioqueue")

DUE_SLACK = 0.01
"""Seconds after a job's due time (as this node computed it) that the timer promotes."""
REAP_ROUNDS = 10
"""Reap calls one timer tick makes at most while expired entries remain: up to 10,000
a second per index and node when behind (a call drops up to 1,000 and takes about 6 ms
of Redis' time)."""


class NodeCore(NodeHolds, NodeBounds, EventsReader):
    """The fetcher, flusher, heartbeat and (from :class:`EventsReader`) events reader of a
    node, and what its workers call (:meth:`claim`, :meth:`finish`, ...)."""

    # The node's state (set in RedisBackend.__init__, which documents it; the events
    # reader's in EventsReader).
    _config: QueueConfig
    _registry: TaskRegistry
    _stats: Stats
    _wall: float
    _lease: float
    _prefetch: int
    _park_max: int
    _cancel_job: Callable[[JobRecord], None]
    _held: dict[str, tuple[JobRecord, int]]
    _deadline: dict[str, float]
    _buffer: deque[JobRecord]
    _lost: set[str]
    _pending: list[Outcome]
    _idle: int
    _work_lot: trio.lowlevel.ParkingLot
    _kick: trio.Event
    _flush: trio.Event
    _blocked: bool
    _no_claims: bool
    _stop: bool
    _fetcher_done: trio.Event
    _fetchers: int
    _inflight: int
    _timer_wake: trio.Event
    _outbox: Outbox
    _due_hint: float
    _node_metrics: Callable[[], Metrics] | None
    _limits: dict[str, int]
    _running_task: dict[str, int]
    _parked: dict[str, deque[JobRecord]]
    _parked_said: dict[str, float]
    _counts_seq: int
    _held_at_refresh: int
    _gone: set[str]
    _outage: Outage
    _lapsed_ids: list[str]

    def _info(self) -> dict[str, Any]:
        """What this node's heartbeat registers: its worker figures (read by the other
        nodes' :meth:`cluster_metrics` while the heartbeat is at most a lease old)."""
        if self._node_metrics is None:
            return {"workers": self._config.workers, "busy": 0}
        workers, busy, busy_s, capacity_s = worker_figures(self._node_metrics())
        return {"workers": workers, "busy": busy, "busy_s": busy_s, "capacity_s": capacity_s}

    # ------------------------------------------------------------------ the node's tasks

    async def _fetcher(self, second: bool = False) -> None:
        """The fetcher loop.  With a prefetch a node runs two (``second``: the one that
        never blocks in ``wait_for_work``), so that one call's reply is handled while the
        other's script runs in Redis; claims in flight count against the prefetch."""
        state = self.state
        tasks = self._registry_names()
        ticked = False
        idle_second = False
        mark_at = math.inf  # when held jobs Redis does not know of get a call of their own
        mark_due = False
        holds = self._holds
        try:
            while True:
                stopping = self._stop
                if second and not stopping and (
                    idle_second or not self._inflight or self._blocked
                ):
                    # The second only adds a call while the first's is in flight (and
                    # after a call that claimed nothing, waits for a worker's news).
                    idle_second = False
                    if self._kick.is_set():  # (the other fetcher may wait on it)
                        self._kick = trio.Event()
                    await self._kick.wait()
                    continue
                n = 0
                claimable: list[str] | dict[str, int] = tasks
                roomless = False
                if not self._no_claims:
                    n = max(0, min(MAX_CLAIM, self._idle + self._prefetch - len(self._buffer)
                                   - self._inflight))
                    if len(tasks) != len(self._registry):  # submit() registered a function
                        tasks = claimable = self._registry_names()
                    if n and self._limits:
                        # No more of a limited task than may run and wait here: the rest
                        # stay in Redis for whichever node has room first (a node that
                        # held a whole backlog kept it from the others, and a crash cost
                        # each an attempt it never began).  Room for none: no claim.
                        claimable = self._claimable(tasks)
                        roomless, n = not claimable, n if claimable else 0
                outcomes = self._take_pending()
                if not outcomes and n == 0 and not holds.started and not (
                        mark_due and not self._no_claims and self._marks_pending()):
                    if stopping:
                        return
                    if self._kick.is_set():  # (the other fetcher may wait on it)
                        self._kick = trio.Event()
                    if second or self._no_claims or not self._marks_pending():
                        mark_at = math.inf
                        # (Roomless, a look a second: submit() may register a task.)
                        with trio.move_on_after(1.0 if roomless else math.inf):
                            await self._kick.wait()
                        continue
                    # Jobs held here that Redis does not know are held: they ride on
                    # the next call, or go in one of their own after MARK_DELAY.
                    mark_at = min(mark_at, trio.current_time() + MARK_DELAY)
                    with trio.move_on_at(mark_at):
                        await self._kick.wait()
                    mark_due = trio.current_time() >= mark_at
                    continue
                if n and not stopping and not self._outbox.quiet:
                    # Jobs this node accepted with enqueue_nowait go in before it claims
                    # (as they would in memory); those waiting for room do not hold it.
                    self._pending[:0] = outcomes
                    await self._outbox.wait_quiet()
                    continue
                if not ticked and self._held:
                    # Workers hold jobs (running, or claimed and about to be taken): one
                    # scheduler tick first, so that the short ones among them end and ride
                    # on this call, not on the next (at prefetch 0 with no-op jobs this
                    # keeps 4 jobs a call, not 2).
                    ticked = True
                    self._pending[:0] = outcomes
                    await trio.lowlevel.checkpoint()
                    continue
                ticked = False
                sent = self._clock.current_time()
                mark = self._outbox.mark()
                marks = [] if self._no_claims else self._take_marks()
                unmarks = holds.take_started()
                mark_at, mark_due = math.inf, False
                self._inflight += n
                if n and not second and self._prefetch:
                    self._kick.set()  # the second fetcher may add a call behind this one
                try:
                    results, claimed, view, unreadable, parked, suspect = (
                        await state.finish_and_claim_parts(
                            self.node, outcomes, n, self._lease, claimable, marks,
                            unmarks))
                except RedisUnavailable as exc:
                    self._pending[:0] = outcomes
                    holds.failed(unmarks)
                    if stopping:
                        return
                    self._outage.failed("claims", exc)
                    await trio.sleep(0.5)
                    continue
                except CallTooLarge as exc:  # (not sent: its values made to fit)
                    self._too_large(outcomes, marks, unmarks, exc)
                    await trio.lowlevel.checkpoint()
                    continue
                finally:
                    self._inflight -= n
                if self._outage.since is not None:
                    self._outage.answered()
                holds.landed(unmarks)
                if view is not None:
                    self._outbox.check_seq(mark, view.seq)
                self._log_stale(outcomes, results, mark[0])
                until = sent + self._lease
                held, deadline, buffer = self._held, self._deadline, self._buffer
                if self._no_claims and claimed:
                    # Claimed while the node began to close (its buffer was put back
                    # already, and no worker takes a job now): put back at once, with
                    # the next call.
                    self._pending.extend(Outcome.unstarted(p[0], p[16]) for p in claimed)
                    self._kick.set()
                    claimed = []
                if unreadable:
                    self._fail_unreadable(unreadable)
                if parked:
                    self._log_parked(parked, tasks)
                suspects = set(suspect) if suspect else ()
                for parts in claimed:
                    rec = self._record(parts)
                    if suspects and rec.id in suspects:
                        rec.durable_start = True  # (commit_start)
                    held[rec.id] = (rec, parts[16])
                    deadline[rec.id] = until
                    buffer.append(rec)
                self._outbox.saw(view)
                if claimed and view is not None and view.seq <= self._counts_seq:
                    # Counts read after this claim but before its reply count its jobs.
                    self._held_at_refresh += len(claimed)
                if claimed:
                    self._work_lot.unpark(count=len(claimed))
                elif second:
                    idle_second = bool(n)
                elif n and not self._pending and not stopping:
                    if self._poke_due:  # a limited task got room during the call
                        self._poke_due = False
                        continue
                    self._blocked = True
                    try:
                        await state.wait_for_work(self.node, 1.0)
                    finally:
                        self._blocked = False
        finally:
            self._fetchers -= 1
            if not self._fetchers:
                self._fetcher_done.set()

    async def _flusher(self) -> None:
        """Send outcomes finished while the fetcher waits in its blocking call."""
        state = self.state
        while True:
            await self._flush.wait()
            self._flush = trio.Event()
            if not self._blocked:
                continue  # the fetcher sends them on its next call
            if self._poke_due:
                self._poke_due = False
                with contextlib.suppress(RedisUnavailable):
                    await state.stop_waiting(self.node, work=True)
            outcomes = self._take_pending()
            unmarks = self._holds.take_started()
            if not outcomes and not unmarks:
                continue
            mark = self._outbox.mark()
            try:
                got = await state.finish_and_claim(self.node, outcomes, 0, self._lease,
                                                   started=unmarks)
            except RedisUnavailable:
                self._pending[:0] = outcomes
                self._holds.failed(unmarks)
                self._kick.set()
                continue
            except CallTooLarge as exc:  # (not sent: its values made to fit, sent again)
                self._too_large(outcomes, [], unmarks, exc)
                self._flush.set()
                continue
            self._holds.landed(unmarks)
            if got.view is not None:
                self._outbox.check_seq(mark, got.view.seq)
                self._outbox.saw_seq(got.view.seq)
            self._log_stale(outcomes, got.results, mark[0])

    def _went_back(self, high: int, seq: int) -> None:
        """Redis lost the queue's data (:meth:`Outbox.check_seq` saw its event number go
        back from ``high`` to ``seq``; the outbox forgot its own marks): forget every
        mark of the lost state, so that the counters, the room view and the events of
        the new one are taken (an old mark would hide them until the new number passed
        it: millions of events on a long-lived queue), and refresh the counts now."""
        log.warning("trioqueue: redis: the queue's event number went back from %d to %d: "
                    "Redis lost its data (restarted without persistence, or it evicts keys: "
                    "its maxmemory-policy must be noeviction); jobs, results and counters "
                    "before it are gone", high, seq)
        self._counts_seq = -1
        self._totals_seq = -1
        self._events_after_seq = -1
        self._read_seq = -1
        # Redis forgot its readers too: the events reader says again that it reads
        # (before its next read), so that events are written for it.
        self._registered = False
        # The jobs claimed before: their outcomes and renewals are refused for it.
        self._gone = set(self._held)
        self._gone.update(o.id for o in self._pending)
        self._holds.forget()
        self._timer_wake.set()

    def _log_stale(self, outcomes: list[Outcome], results: list[str], epoch: int) -> None:
        """Say which outcomes Redis refused, and why (:func:`._nodelog.log_refused`)."""
        log_refused(outcomes, results, epoch != self._outbox.epoch, self._gone)

    async def _reap(self) -> bool:
        """Reap expired leases and drop expired entries of the finished jobs' indexes,
        again while it is behind (an index had more than one call drops), up to
        :data:`REAP_ROUNDS` calls: whether it caught up.  One call a ``lease / 4`` fell
        behind a cluster finishing more than 27 jobs a second: 200 entries a call left
        behind 425 bytes of Redis' memory a job."""
        for _ in range(REAP_ROUNDS):
            reaped = await self.state.reap()
            reaped.report()
            if not reaped.behind:
                return True
        return False

    async def _heartbeat(self) -> None:
        state = self.state
        period = self._lease / 3
        while True:
            await trio.sleep(period)
            held = [(job_id, fence) for job_id, (rec, fence) in self._held.items()]
            sent = self._clock.current_time()
            try:
                renewal = await state.renew(self.node, held, self._lease)
            except RedisUnavailable as exc:
                self._outage.failed("lease renewal", exc)
                continue
            self._renewed(held, renewal.lost, sent + self._lease)
            self._holds.prune(self._held)
            try:
                beat_sent = time.time()
                self._set_redis_offset(beat_sent,
                                       await state.heartbeat(self.node, self._info()))
                self._outage.wrote()  # (a write went through: ends even an OOM outage)
            except RedisUnavailable as exc:
                self._outage.failed("heartbeat", exc)
            for job_id in renewal.lost:
                self._lose(job_id)
            for job_id in renewal.cancel_requested:
                held_rec = self._held.get(job_id)
                if held_rec is not None:
                    self._cancel_job(held_rec[0])

    def _renewed(self, sent: list[tuple[str, int]], lost: list[str], until: float) -> None:
        """The leases of ``sent`` (id, fence) but ``lost`` now end at ``until`` (this
        node's clock), for those this node still holds with the same fence."""
        held, deadline = self._held, self._deadline
        gone = set(lost)
        for job_id, fence in sent:
            h = held.get(job_id)
            if h is not None and h[1] == fence and job_id not in gone:
                deadline[job_id] = max(until, deadline.get(job_id, until))

    def _lapsed(self, rec: JobRecord, now: float) -> bool:
        """True if ``rec``'s lease ended by this node's clock (the node stalled, or could
        not renew, for longer than the lease): it is dropped without running (released,
        fenced, in case no node reaped it yet), as another node may have run it."""
        if now < self._deadline.get(rec.id, math.inf):
            return False
        self._lapsed_ids.append(rec.id)  # logged with the call that puts them back
        self._hand_back(rec)
        return True

    def _lose(self, job_id: str) -> None:
        held = self._held.pop(job_id, None)
        self._deadline.pop(job_id, None)
        self._holds.drop(job_id)
        if held is None:
            return
        rec = held[0]
        if job_id in self._gone:
            self._gone.discard(job_id)
            log.warning("trioqueue: job %s: redis lost its data after this node claimed "
                        "it (its record is gone, or older); stopping it", job_id)
        else:
            log.warning("trioqueue: job %s: this node lost its lease; stopping it", job_id)
        self._started_events.pop(job_id, None)
        self._lost.add(job_id)
        if not self._unstart(rec):
            self._cancel_job(rec)

    def _unstart(self, rec: JobRecord) -> bool:
        """Take ``rec`` out of the jobs claimed but not started; False if it runs."""
        try:
            self._buffer.remove(rec)
        except ValueError:
            parked = self._parked.get(rec.task)
            if not parked or rec not in parked:
                return False
            parked.remove(rec)
        self._room_for(rec.task)
        return True

    def _log_parked(self, parked: list[str], tasks: list[str]) -> None:
        """Say (once a minute per task) that jobs of a task this node does not have were
        set aside for a node that has it; a task at its ``concurrency`` bound here is
        parked as a matter of course, unsaid."""
        now = self._clock.current_time()
        for task in parked:
            if task in tasks or now < self._parked_said.get(task, -math.inf) + 60.0:
                continue
            self._parked_said[task] = now
            log.warning("trioqueue: jobs of task %r wait, queued, for a node that has it: "
                        "it is not registered on this node", task)

    def _fail_unreadable(self, unreadable: list[Unreadable]) -> None:
        """Claimed records that cannot be read (written by something other than
        trioqueue, or by a version that wrote other fields) end FAILED, with what was
        wrong as the error, in the next call: such a job cannot run anywhere, and left
        leased it would come back after every lease to every node."""
        for u in unreadable:
            log.error("trioqueue: job %r cannot be read (%s); it ends failed", u.job_id,
                      u.error)
            self._pending.append(Outcome.failed(u.job_id, u.fence,
                                                f"CorruptRecord: {u.error}"))
        self._kick.set()

    async def _listen_for_cancels(self) -> None:
        """Interrupt the handlers of jobs running here whose cancellation another node
        asked for: ``cancel`` pushes the job's id onto this node's ``node:<id>:cancel``
        list, which this task BLPOPs (nothing per job; an idle node makes four calls a
        second, each returning at once when an id arrives)."""
        state = self.state
        while not self._stop_reading:
            # The call is shielded: without this, a cancelled node (one of its tasks
            # raised) would never see it here, and its queue would hang in its nursery.
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                job_id = await state.wait_for_cancel(self.node, READER_BLOCK_MS / 1000)
            except RedisUnavailable:
                await trio.sleep(0.5)
                continue
            if job_id is None:
                continue
            held = self._held.get(job_id)
            if held is None:
                continue
            rec, fence = held
            if self._unstart(rec):
                # Claimed here but not started (prefetched, or waiting for its task's
                # concurrency): it ends CANCELLED without running.
                del self._held[job_id]
                self._deadline.pop(job_id, None)
                self._started_events.pop(job_id, None)
                self._holds.drop(job_id)
                self._pending.append(Outcome.cancelled(job_id, fence))
                self._kick.set()
                if self._blocked:
                    self._flush.set()
            else:
                self._cancel_job(rec)

    def _registry_names(self) -> list[str]:
        return sorted(self._registry)

    def _record(self, p: RecordParts) -> JobRecord:
        """A claimed job's record, from its parsed fields (:func:`record_parts`)."""
        rec = JobRecord.restored(
            p[0], p[1], p[2], "", p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11],
            p[12], p[13], p[14], self._registry.get(p[1]),
        )
        rec.progress = p[15]
        ready = p[9] if p[9] is not None else p[8]
        rec.ready_at = min(ready - self._wall, self._clock.current_time())
        return rec

    # ------------------------------------------------------------------ workers

    def claim(self, worker: int, now: float) -> JobRecord | None:
        buffer = self._buffer
        limits = self._limits
        if self._parked:
            # Jobs of a limited task that waited here were claimed before the buffer's.
            for task, parked in self._parked.items():
                while parked and self._running_task.get(task, 0) < limits[task]:
                    rec = parked.popleft()
                    if self._lapsed(rec, now):
                        continue
                    self._running_task[task] += 1
                    self._stats.started += 1
                    if self._holds.marked:
                        self._started(rec)
                    return self._took(rec, worker)
        while buffer:
            rec = buffer.popleft()
            if self._lapsed(rec, now):
                continue
            if limits and rec.task in limits:
                running = self._running_task.get(rec.task, 0)
                if running >= limits[rec.task]:
                    # Its task is at its limit here: it waits, in claim order, and the
                    # worker takes the next job (no head-of-line blocking); past what
                    # the task's line holds (one claim call may bring more), it goes
                    # back, for whichever node has room first.
                    if self._line_full(rec.task):
                        self._hand_back(rec)
                    else:
                        self._parked.setdefault(rec.task, deque()).append(rec)
                        self._kick.set()
                    continue
                self._running_task[rec.task] = running + 1
            self._stats.started += 1
            if self._holds.marked:
                self._started(rec)
            if self._idle + self._prefetch > len(buffer):
                self._kick.set()
            return self._took(rec, worker)
        return None

    async def wait_for_work(self) -> None:
        self._idle += 1
        self._kick.set()
        try:
            await self._work_lot.park()
        finally:
            self._idle -= 1

    def wake_workers(self) -> None:
        self._work_lot.unpark_all()

    def _ack(self, rec: JobRecord, outcome: Callable[[int], Outcome]) -> None:
        held = self._held.pop(rec.id, None)
        self._deadline.pop(rec.id, None)
        if held is None or held[0] is not rec:
            self._lost.discard(rec.id)
            return  # lease lost: the result would be refused
        self._pending.append(outcome(held[1]))
        self._kick.set()
        if self._blocked:
            self._flush.set()

    def finish(self, rec: JobRecord, event: JobEvent, now: float, worker: int | None = None,
               duration: float | None = None) -> None:
        job_id = rec.id
        if event is JobEvent.COMPLETE:
            self._ack(rec, lambda f: Outcome.completed(job_id, f, rec.result, duration,
                                                       rec.result_json))
        elif event is JobEvent.CANCEL:
            self._ack(rec, lambda f: Outcome.cancelled(job_id, f, duration))
        else:
            self._ack(rec, lambda f: Outcome.failed(job_id, f, rec.error or "",
                                                    rec.traceback or "", duration))

    def retry_later(self, rec: JobRecord, due_wall: float, worker: int | None,
                    duration: float | None, *, timer_running: bool = True) -> None:
        now = self._clock.current_time()
        delay = max(0.0, due_wall - (now + self._wall))
        job_id = rec.id
        self._ack(rec, lambda f: Outcome.retry(job_id, f, delay, rec.error or "",
                                               rec.traceback or "", duration))
        self._due_at(now + delay)

    def _due_at(self, when: float) -> None:
        """A job this node scheduled comes due at ``when`` (trio time): the timer
        promotes then (a few ms after, for the write to land), not at its next
        once-a-second look."""
        when += DUE_SLACK
        if when < self._due_hint:
            self._due_hint = when
            self._timer_wake.set()

    def release(self, rec: JobRecord, worker: int | None) -> None:
        job_id = rec.id
        self._ack(rec, lambda f: Outcome.released(job_id, f))

    def attempt_ended(self, rec: JobRecord) -> None:
        """A job of a limited task stopped running here: the next one of that task that
        waits on this node goes first in line for the workers, and a fetcher that waits
        in Redis because the task had no room here is woken (its jobs may wait there)."""
        task = rec.task
        self._running_task[task] = max(0, self._running_task.get(task, 0) - 1)
        if self._parked.get(task):
            self._work_lot.unpark()
        self._room_for(task)


def worker_figures(m: Metrics) -> tuple[int, int, float, float]:
    """A node's workers, busy workers, and busy and available worker-seconds since it
    opened (from its own metrics ``m``)."""
    capacity_s = m.uptime * m.workers
    return m.workers, m.busy_workers, m.utilization * capacity_s, capacity_s
