"""A Redis node's own tasks and its workers' side: :class:`NodeCore`, the part of
:class:`~trioqueue._redis.backend.RedisBackend` that claims, runs and renews.

- the **fetcher**: one ``finish_and_claim`` call acks what the workers finished since its
  last call and claims up to (idle workers + ``prefetch`` - already buffered) jobs into a
  local buffer that :meth:`NodeCore.claim` pops synchronously; when nothing could be
  claimed it blocks in ``BLPOP [ctl, wake] 1`` (shielded, never cancelled); with a
  prefetch, a second fetcher adds a call while the first one's is in flight;
- the **flusher**: sends outcomes that arrive while the fetcher is blocked, at once;
- the **heartbeat**: every ``lease / 3`` renews the leases this node holds, moves their
  deadlines on this node's clock, and registers the node with its worker figures;
- the **events reader**: every node's events to this node's subscribers and waiters,
  only while it has some (otherwise it reads nothing);
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
from typing import Any, cast

import trio

from .._backend import ChangeHook
from .._config import QueueConfig
from .._events import Broadcaster
from .._exceptions import ShuttingDown
from .._job import JobStatus
from .._metrics import Metrics
from .._record import JobRecord
from .._registry import TaskRegistry
from .._state import EventKind, JobEvent
from .._stats import Stats
from ._client import RedisUnavailable
from ._outbox import Outbox
from ._state import MAX_CLAIM, EventReader, Outcome, RecordParts, RedisState, StreamEvent

log = logging.getLogger("trioqueue")

READER_BLOCK_MS = 250
"""How long the events reader's ``XREAD BLOCK`` waits for new events.  The call is never
cancelled (see BACKENDS.md's client rules), so this bounds how long a node's close waits
for its reader; a reading node that sees no events makes four round trips a second for it."""

EVENTS_MARGIN_MS = 50
"""How far before a subscriber or waiter arrived (Redis' clock, as this node estimates it)
a starting events reader begins."""

CATCH_UP_MAX = 1.0
"""Longest a ``wait`` that saw its job finished waits for this node's events reader to
hand the job's events to the subscribers here (:meth:`NodeCore.events_caught_up`)."""

READER_LINGER = 1.0
"""Seconds the events reader goes on reading after the last subscriber or waiter left
(a next ``wait`` soon after does not restart it)."""

READER_TTL = 60.0
"""Seconds (Redis' clock) for which a reading node has events written after it last said
it reads them (:meth:`RedisState.read_events`): the scripts write no events while no
node reads them, and a node that died reading costs at most this long of unread ones."""

READER_REFRESH = 2.0
"""Seconds between two such calls of a node that goes on reading: short, since a Redis
that restarted (it may keep nothing) has forgotten every reader, and a reader whose
connection came back without a failed read would not know."""

PRIO_BY_LABEL = {"high": 0, "medium": 1, "low": 2}
_STATUSES = {s.value: s for s in JobStatus}
DUE_SLACK = 0.01
"""Seconds after a job's due time (as this node computed it) that the timer promotes."""
_TERMINAL_EVENTS = frozenset(("completed", "failed", "cancelled"))
_ATTEMPT_ENDS = frozenset(("retrying", "completed", "failed", "cancelled", "requeued"))
_MAX_WORKER_OF = 100_000


def stream_position(entry_id: str) -> tuple[int, int]:
    """A stream entry's id (``"<ms>-<n>"``) as a pair that compares in stream order."""
    ms, _, n = entry_id.partition("-")
    return int(ms), int(n or 0)


class NodeCore:
    """The fetcher, flusher, heartbeat and events reader of a node, and what its workers
    call (:meth:`claim`, :meth:`finish`, ...)."""

    # The node's state (set in RedisBackend.__init__, which documents it).
    _config: QueueConfig
    _registry: TaskRegistry
    _stats: Stats
    _clock: trio.abc.Clock
    _wall: float
    node: str
    _lease: float
    _prefetch: int
    _park_max: int
    _hook: ChangeHook | None
    _state: RedisState | None
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
    _disconnected: bool
    _outbox: Outbox
    _due_hint: float
    _events: Broadcaster | None
    _node_metrics: Callable[[], Metrics] | None
    _limits: dict[str, int]
    _running_task: dict[str, int]
    _parked: dict[str, deque[JobRecord]]
    _worker_of: dict[str, int]
    _started_events: dict[str, StreamEvent]
    _watchers: dict[str, list[trio.Event]]
    _want_events: trio.Event
    _stop_reading: bool
    reader_starts: int
    _reading: bool
    _read_to: tuple[int, int]
    _read_done: trio.Event
    _registered: bool
    _registered_types: frozenset[str] | None
    _register_lock: trio.Lock
    _events_from: int | None
    _redis_offset: float
    _events_after_seq: int
    _counts_seq: int
    _held_at_refresh: int

    @property
    def state(self) -> RedisState:
        if self._state is None or self._disconnected:
            raise ShuttingDown("the queue is closed: this node is no longer connected to "
                               "redis")
        return self._state
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
                if not self._no_claims:
                    n = max(0, min(MAX_CLAIM, self._idle + self._prefetch - len(self._buffer)
                                   - self._inflight))
                outcomes = self._take_pending()
                if not outcomes and n == 0:
                    if stopping:
                        return
                    if self._kick.is_set():  # (the other fetcher may wait on it)
                        self._kick = trio.Event()
                    await self._kick.wait()
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
                if len(tasks) != len(self._registry):  # submit() registered a function
                    tasks = self._registry_names()
                claimable = tasks
                if self._parked and n:
                    full = {t for t, q in self._parked.items() if len(q) >= self._park_max}
                    if full:
                        claimable = [t for t in tasks if t not in full]
                sent = self._clock.current_time()
                self._inflight += n
                if n and not second and self._prefetch:
                    self._kick.set()  # the second fetcher may add a call behind this one
                try:
                    results, claimed, view = await state.finish_and_claim_parts(
                        self.node, outcomes, n, self._lease, claimable)
                except RedisUnavailable as exc:
                    self._pending[:0] = outcomes
                    if stopping:
                        return
                    log.warning("trioqueue: redis unavailable (%s); retrying", exc)
                    await trio.sleep(0.5)
                    continue
                finally:
                    self._inflight -= n
                self._log_stale(outcomes, results)
                until = sent + self._lease
                held, deadline, buffer = self._held, self._deadline, self._buffer
                if self._stop and claimed:
                    # Claimed while the node closed (its buffer was released already):
                    # released at once, with the next call.
                    self._pending.extend(Outcome.released(p[0], p[16]) for p in claimed)
                    self._kick.set()
                    claimed = []
                for parts in claimed:
                    rec = self._record(parts)
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
            outcomes = self._take_pending()
            if not outcomes:
                continue
            try:
                got = await state.finish_and_claim(self.node, outcomes, 0, self._lease)
            except RedisUnavailable:
                self._pending[:0] = outcomes
                self._kick.set()
                continue
            self._log_stale(outcomes, got.results)
            if got.view is not None:
                self._outbox.saw_seq(got.view.seq)

    def _take_pending(self) -> list[Outcome]:
        pending = self._pending
        if len(pending) <= MAX_CLAIM:
            self._pending = []
            return pending
        out = pending[:MAX_CLAIM]
        del pending[:MAX_CLAIM]
        return out

    def _log_stale(self, outcomes: list[Outcome], results: list[str]) -> None:
        for o, r in zip(outcomes, results, strict=False):
            if r == "stale" and o.kind != "progress":
                log.warning("trioqueue: job %s: outcome %s refused, its lease moved on (the "
                            "job was taken by another node)", o.id, o.kind)

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
                log.warning("trioqueue: heartbeat failed (%s)", exc)
                continue
            self._renewed(held, renewal.lost, sent + self._lease)
            try:
                beat_sent = time.time()
                self._set_redis_offset(beat_sent,
                                       await state.heartbeat(self.node, self._info()))
            except RedisUnavailable as exc:
                log.warning("trioqueue: heartbeat failed (%s)", exc)
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
        self._deadline.pop(rec.id, None)
        self._started_events.pop(rec.id, None)
        held = self._held.pop(rec.id, None)
        log.warning("trioqueue: job %s: its lease ended before a worker here took it; "
                    "not starting it", rec.id)
        if held is not None:
            self._pending.append(Outcome.released(rec.id, held[1]))
            self._kick.set()
            if self._blocked:
                self._flush.set()
        return True

    def _lose(self, job_id: str) -> None:
        held = self._held.pop(job_id, None)
        self._deadline.pop(job_id, None)
        if held is None:
            return
        rec = held[0]
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
        return True

    def _started(self, rec: JobRecord) -> bool:
        parked = self._parked.get(rec.task)
        return rec not in self._buffer and not (parked and rec in parked)

    def _wants_events(self) -> bool:
        """Something on this node needs the stream: subscribers (or the debug log), or
        tasks in ``wait``."""
        return self._hook is not None or bool(self._watchers)

    def _events_wanted(self) -> None:
        """A subscriber or a waiter arrived: the reader starts (if it was idle), at the
        events written from about now on (Redis' clock, less :data:`EVENTS_MARGIN_MS`),
        so what happens after ``subscribe()`` or ``wait()`` returns to the caller is seen
        even if the reader's first call is sent later."""
        if not self._reading and self._events_from is None:
            self._events_from = int((time.time() + self._redis_offset) * 1000) \
                - EVENTS_MARGIN_MS
        self._want_events.set()

    def _set_redis_offset(self, sent: float, redis_now: float) -> None:
        """Redis' clock less this process' (``redis_now`` was answered to a call sent at
        ``sent``, by :func:`time.time`)."""
        self._redis_offset = redis_now - (sent + time.time()) / 2

    async def _read_events(self) -> None:
        """Read the stream while something here wants it (:meth:`_wants_events`), and
        until :data:`READER_LINGER` s after the last one left; read nothing otherwise.
        Each start first tells Redis that this node reads events, and of which types
        (:meth:`_register`; no script writes an event of a type no node reads; renewed
        every :data:`READER_REFRESH` s while it reads, and withdrawn when it stops), then
        reads from the events written since the first subscriber or waiter arrived
        (:meth:`_events_wanted`: no backlog is parsed), and wakes the waiters there are,
        so they look at their job again."""
        state = self.state
        clock = self._clock
        while not self._stop_reading:
            if not self._wants_events():
                self._want_events = trio.Event()
                await self._want_events.wait()
                continue
            try:
                await self._register()
            except RedisUnavailable:
                await trio.sleep(0.5)
                continue
            told = clock.current_time()
            start, self._events_from = self._events_from, None
            if start is not None:
                reader = EventReader(state, f"{max(0, start)}-0", 0)
            else:
                try:
                    reader = await state.event_reader()
                except RedisUnavailable:
                    await trio.sleep(0.5)
                    continue
            self.reader_starts += 1
            self._reading = True
            self._read_to = stream_position(reader.last_id)  # (nothing before is read)
            for events in list(self._watchers.values()):
                for event in events:
                    event.set()
            unwanted_since: float | None = None
            while not self._stop_reading:
                now = clock.current_time()
                if self._wants_events():
                    unwanted_since = None
                elif unwanted_since is None:
                    unwanted_since = now
                elif now - unwanted_since >= READER_LINGER:
                    break
                try:
                    if now - told >= READER_REFRESH or not self._covered():
                        await self._register()
                        told = now
                    batch = await reader.read(block_ms=READER_BLOCK_MS)
                except RedisUnavailable:
                    told = -math.inf  # a Redis that restarted has forgotten this node
                    await trio.sleep(0.5)
                    continue
                self._handle_events(batch.events)
                self._read_to = stream_position(reader.last_id)
                self._read_done.set()
                self._read_done = trio.Event()
            self._reading = False
            self._read_done.set()
            self._read_done = trio.Event()
            self._worker_of.clear()
            self._started_events.clear()
            async with self._register_lock:
                # Not closing (removing the node withdraws it), and nobody arrived since
                # the reader decided to stop (one who did registered, or waits to).
                if not self._stop_reading and not self._wants_events():
                    self._registered = False
                    with contextlib.suppress(RedisUnavailable):
                        await state.stop_reading_events(self.node)

    def _event_types(self) -> frozenset[str] | None:
        """The event types something on this node needs (``None``: every type): its
        subscribers' (every type for the debug log), and the ends of jobs for the tasks
        in ``wait``."""
        hook = self._hook
        events = self._events
        kinds: frozenset[str] = frozenset()
        if hook is not None:
            if events is None or hook != events.announce:
                return None  # the debug log shows every change
            if events.kinds is None:
                return None
            kinds = events.kinds
        if self._watchers:
            kinds |= _TERMINAL_EVENTS
        return kinds

    def _covered(self) -> bool:
        """Whether Redis writes every event type this node needs now."""
        if not self._registered:
            return False
        have = self._registered_types
        if have is None:
            return True
        need = self._event_types()
        return need is not None and need <= have

    async def _register(self) -> None:
        """Tell Redis that this node reads events, of the types it needs now (raises
        :class:`RedisUnavailable`)."""
        async with self._register_lock:
            types = self._event_types()
            await self.state.read_events(self.node, READER_TTL, types)
            self._registered = True
            self._registered_types = types

    async def events_flowing(self) -> None:
        """Return once Redis writes every event type this node's subscribers and waiters
        need (it said so, :meth:`_register`), so that whatever happens from then on is in
        the stream: at once if it does already, else after one call (at most
        :data:`CATCH_UP_MAX` s: with Redis not answering, ``wait`` looks at its job again
        on its own)."""
        if self._covered():
            await trio.lowlevel.checkpoint()
            return
        with trio.move_on_after(CATCH_UP_MAX):
            with contextlib.suppress(RedisUnavailable):
                await self._register()

    async def events_caught_up(self) -> None:
        """Return once this node's subscribers were handed every event in the stream at
        the call (at once if nothing here subscribes; at most :data:`CATCH_UP_MAX`
        seconds).  ``wait`` calls it when it saw a job finished by looking rather than by
        its event, so that a subscriber has the job's events by the time ``wait``
        returns, as with a local backend."""
        if self._hook is None:
            return
        try:
            last = await self.state.last_event_id()
        except RedisUnavailable:
            return
        if last is None:
            return
        target = stream_position(last)
        with trio.move_on_after(CATCH_UP_MAX):
            while self._read_to < target and not self._stop_reading:
                if not self._reading and not self._wants_events():
                    return  # nothing here subscribes any more
                await self._read_done.wait()

    async def _listen_for_cancels(self) -> None:
        """Interrupt the handlers of jobs running here whose cancellation another node
        asked for: ``cancel`` pushes the job's id onto this node's ``node:<id>:cancel``
        list, which this task BLPOPs (nothing per job; an idle node makes four calls a
        second, each returning at once when an id arrives)."""
        state = self.state
        while not self._stop_reading:
            try:
                job_id = await state.wait_for_cancel(self.node, READER_BLOCK_MS / 1000)
            except RedisUnavailable:
                await trio.sleep(0.5)
                continue
            if job_id is None:
                continue
            held = self._held.get(job_id)
            if held is not None and self._started(held[0]):
                self._cancel_job(held[0])

    def _handle_events(self, batch: list[StreamEvent]) -> None:
        """Hand ``batch`` on; events numbered :attr:`_events_after_seq` or less (older
        than the first subscriber) only wake waiters."""
        hook = self._hook
        skip = self._events_after_seq
        for ev in batch:
            if ev.type == "cancel_requested":
                continue  # the node running it acts on its cancel list
            if ev.type in _TERMINAL_EVENTS:
                for event in self._watchers.pop(ev.job_id, ()):
                    event.set()
            if ev.seq <= skip:
                continue
            worker = None
            if ev.node == self.node:
                if ev.type == "started":
                    worker = self._worker_of.get(ev.job_id)
                    if worker is None:
                        # No worker took the job yet (the claim's reply may not even
                        # be here): told when one does (claim()).
                        self._started_events[ev.job_id] = ev
                        continue
                else:
                    early = self._started_events.pop(ev.job_id, None)
                    if early is not None and hook is not None:
                        hook(EventKind.STARTED, self._event_record(early), None, None)
                    if ev.type in _ATTEMPT_ENDS:
                        worker = self._worker_of.pop(ev.job_id, None)
                    else:
                        worker = self._worker_of.get(ev.job_id)
            if ev.type == "progress":
                self._publish_progress(ev, worker)
            elif hook is not None:
                hook(cast(EventKind, ev.type), self._event_record(ev), worker, ev.duration)

    def _took(self, rec: JobRecord, worker: int) -> JobRecord:
        """A worker takes ``rec``: its events from now on name that worker, and its
        ``started`` event, if the stream showed it already, goes out now."""
        if not self._reading:
            return rec  # nothing reads this job's events here
        worker_of = self._worker_of
        worker_of[rec.id] = worker
        if len(worker_of) > _MAX_WORKER_OF:  # end events missed (stream trimmed)
            del worker_of[next(iter(worker_of))]
        if self._started_events:
            ev = self._started_events.pop(rec.id, None)
            if ev is not None and self._hook is not None:
                self._hook(EventKind.STARTED, self._event_record(ev), worker, None)
        return rec

    def _publish_progress(self, ev: StreamEvent, worker: int | None) -> None:
        events = self._events
        if events is None or not events:
            return
        rec = self._event_record(ev)
        rec.progress = None if ev.progress is None else dict(ev.progress)
        events.announce_progress(rec, worker, ev.at)

    def _event_record(self, ev: StreamEvent) -> JobRecord:
        rec = JobRecord(ev.job_id, ev.task, None, "", PRIO_BY_LABEL.get(ev.priority, 1),
                        _STATUSES.get(ev.status, JobStatus.QUEUED), 0, None, ev.at, None,
                        None, 0.0)
        rec.attempts = ev.attempt
        rec.error = ev.error
        return rec

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
                    return self._took(rec, worker)
        while buffer:
            rec = buffer.popleft()
            if self._lapsed(rec, now):
                continue
            if limits and rec.task in limits:
                running = self._running_task.get(rec.task, 0)
                if running >= limits[rec.task]:
                    # Its task is at its limit here: it waits, in claim order, and the
                    # worker takes the next job (no head-of-line blocking).
                    self._parked.setdefault(rec.task, deque()).append(rec)
                    self._kick.set()
                    continue
                self._running_task[rec.task] = running + 1
            self._stats.started += 1
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
        waits on this node goes first in line for the workers."""
        task = rec.task
        self._running_task[task] = max(0, self._running_task.get(task, 0) - 1)
        if self._parked.get(task):
            self._work_lot.unpark()

    async def commit_start(self, rec: JobRecord) -> None:
        rec.durable_start = False
        await trio.lowlevel.checkpoint()


def worker_figures(m: Metrics) -> tuple[int, int, float, float]:
    """A node's workers, busy workers, and busy and available worker-seconds since it
    opened (from its own metrics ``m``)."""
    capacity_s = m.uptime * m.workers
    return m.workers, m.busy_workers, m.utilization * capacity_s, capacity_s
