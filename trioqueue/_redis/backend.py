"""The Redis backend: :class:`trioqueue._backend.Backend` over :mod:`._state`.

Every process opened on one URL and queue name is a *node* of one queue.  A node runs,
beside the engine's workers and timer, four tasks of its own (in :meth:`RedisBackend.run`):

- the **fetcher**: one ``finish_and_claim`` call acks what the workers finished since its
  last call and claims up to (idle workers + ``prefetch`` - already buffered) jobs, which
  it puts in a local buffer that :meth:`RedisBackend.claim` pops synchronously.  When
  nothing could be claimed it blocks in ``BLPOP [ctl, wake] 1`` (shielded, never
  cancelled);
- the **flusher**: sends outcomes that arrive while the fetcher is blocked, at once;
- the **heartbeat**: every ``lease / 3`` renews the leases this node holds and registers
  the node; a job whose lease was lost has its handler cancelled (its late result would
  be refused anyway);
- the **events reader**: ``XREAD BLOCK 250`` (:data:`READER_BLOCK_MS`) on the queue's
  events stream, feeding the engine's subscribers with every node's events, and
  cancelling the handlers of jobs whose cancellation another node asked for.

The engine's timer task calls :meth:`RedisBackend.promote`, which also reaps expired
leases and refreshes the cluster-wide counts that :meth:`depths` and the metrics read.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
import trio

from .._backend import ChangeHook
from .._config import QueueConfig
from .._events import Broadcaster, Event
from .._exceptions import DuplicateJob, QueueFull, ShuttingDown, StoreError
from .._job import Job, JobStatus, Priority
from .._metrics import Metrics
from .._record import LABELS, JobRecord
from .._registry import TaskRegistry
from .._state import EventKind, JobEvent
from .._stats import Stats
from ._client import RedisUnavailable, connect
from ._outbox import Outbox, describe, new_job
from ._state import (
    MAX_CLAIM,
    Admission,
    Counts,
    Outcome,
    RedisState,
    StoredJob,
    StreamEvent,
)

log = logging.getLogger("trioqueue")

READER_BLOCK_MS = 250
"""How long the events reader's ``XREAD BLOCK`` waits for new events.  The call is never
cancelled (see BACKENDS.md's client rules), so this bounds how long a node's close waits
for its reader; an idle node costs four round trips a second for it."""

_PRIO_BY_LABEL = {"high": 0, "medium": 1, "low": 2}
_STATUSES = {s.value: s for s in JobStatus}
RETRY_BACKOFF = (0.001, 0.05)
"""A producer waiting for room polls Redis with a backoff from 1 ms doubling to 50 ms."""
CLOSE_BUDGET = 2.0
"""Seconds the last flush at shutdown may take (shielded)."""
DUE_SLACK = 0.01
"""Seconds after a job's due time (as this node computed it) that the timer promotes."""
_TERMINAL_EVENTS = frozenset(("completed", "failed", "cancelled"))
_ATTEMPT_ENDS = frozenset(("retrying", "completed", "failed", "cancelled", "requeued"))
_MAX_WORKER_OF = 100_000
_COUNTERS = ("enqueued", "completed", "failed", "retried", "cancelled", "rejected")


class RedisBackend:
    """One node of a queue kept in Redis (``QueueConfig.redis_url``)."""

    persistent = True
    durable = False
    remote = True

    def __init__(self, config: QueueConfig, registry: TaskRegistry, stats: Stats, *,
                 clock: trio.abc.Clock, wall_offset: float) -> None:
        assert config.redis_url is not None
        self._config = config
        self._registry = registry
        self._stats = stats
        self._clock = clock
        self._wall = wall_offset
        self.refusal: StoreError | None = None
        self.node = f"{uuid.uuid4().hex[:12]}"
        self._lease = config.lease
        self._prefetch = config.prefetch
        self._park_max = config.capacity
        """Claimed jobs of one limited task that may wait on this node: past it, this
        node claims no more of that task (its priority waits for the others here)."""
        self._hook: ChangeHook | None = None
        self._state: RedisState | None = None
        self._counts: Counts | None = None
        self._held_at_refresh = 0
        """This node's claimed jobs when :attr:`_counts` came (counted in it)."""
        self._cancel_job: Callable[[JobRecord], None] = lambda rec: None
        # Claimed jobs: id -> (record, fence); the buffer holds those not started yet.
        self._held: dict[str, tuple[JobRecord, int]] = {}
        self._deadline: dict[str, float] = {}
        """Claimed job id -> when its lease ends by this node's clock (trio time): when the
        claim (or the last successful renewal) was sent, plus the lease.  A job past it is
        not started here (:meth:`_lapsed`): another node may have reaped and run it."""
        self._buffer: deque[JobRecord] = deque()
        self._lost: set[str] = set()
        self._pending: list[Outcome] = []
        self._idle = 0
        self._work_lot = trio.lowlevel.ParkingLot()
        self._kick = trio.Event()
        self._flush = trio.Event()
        self._blocked = False
        self._no_claims = False
        self._stop = False
        self._fetcher_done = trio.Event()
        self._closed = trio.Event()
        self._timer_wake = trio.Event()
        self._next_reap = -math.inf
        self._disconnected = False
        self._outbox = Outbox(config.capacity)
        self._due_hint = math.inf
        """When a job this node delayed or retried comes due (trio time)."""
        self._totals_seq = -1
        """The event number when the counters in :attr:`_stats` were read."""
        self._watchers: dict[str, list[trio.Event]] = {}
        """Job id -> tasks in ``wait`` for it: set by its terminal event in the stream."""
        self._events: Broadcaster | None = None
        self._node_metrics: Callable[[], Metrics] | None = None
        """This node's own metrics (the queue's): its heartbeat publishes its worker
        figures for the others' :meth:`cluster_metrics`."""
        # Per-task concurrency (per process): claimed jobs of a task at its limit wait
        # here, leased to this node, while the workers run other tasks' jobs.
        self._limits = {name: spec.concurrency for name in registry
                        if (spec := registry.get(name)).concurrency is not None}
        self._running_task: dict[str, int] = {}
        self._parked: dict[str, deque[JobRecord]] = {}
        self._worker_of: dict[str, int] = {}
        """Job id -> the worker running it here (its events name it)."""
        self._started_events: dict[str, StreamEvent] = {}
        """``started`` events of this node's jobs that no worker took yet."""

    # ------------------------------------------------------------------ engine hooks

    def observe(self, hook: ChangeHook | None) -> None:
        self._hook = hook

    def bind(self, cancel_job: Callable[[JobRecord], None]) -> None:
        """How to interrupt the handler running a job (the engine's workers)."""
        self._cancel_job = cancel_job

    def attach(self, queue: object) -> None:
        pass

    def use_events(self, events: Broadcaster) -> None:
        """Where ``progress`` events read from the stream go (the queue's subscribers)."""
        self._events = events

    def use_metrics(self, node_metrics: Callable[[], Metrics]) -> None:
        self._node_metrics = node_metrics

    def cluster_metrics(self, m: Metrics) -> Metrics:
        """This node's metrics ``m`` with the queue's figures: ``processing`` from Redis,
        ``workers``, ``busy_workers`` and ``utilization`` summed over the live nodes (this
        one now, the others as of their last heartbeat, read with the last counts)."""
        counts = self._counts
        if counts is None:
            return m
        workers, busy, busy_s, capacity_s = _worker_figures(m)
        for node, info in counts.nodes.items():
            if node == self.node:
                continue
            try:
                workers += int(info.get("workers", 0))
                busy += int(info.get("busy", 0))
                busy_s += float(info.get("busy_s", 0.0))
                capacity_s += float(info.get("capacity_s", 0.0))
            except (TypeError, ValueError):
                continue  # a node of another version: its figures are left out
        # Redis' PROCESSING jobs as of the last counts, with this node's part live (its
        # claimed jobs, the prefetched ones too: finished ones leave at once).
        others = max(0, counts.processing - self._held_at_refresh)
        return attrs.evolve(
            m, workers=workers, busy_workers=busy, processing=others + len(self._held),
            utilization=min(1.0, busy_s / capacity_s) if capacity_s > 0 else 0.0,
        )

    @property
    def state(self) -> RedisState:
        if self._state is None or self._disconnected:
            raise ShuttingDown("the queue is closed: this node is no longer connected to "
                               "redis")
        return self._state

    # ------------------------------------------------------------------ lifecycle

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        config = self._config
        assert config.redis_url is not None
        fair = config.fairness
        async with connect(config.redis_url, client_name=f"trioqueue:{self.node}") as client:
            self._state = state = RedisState(
                client, config.queue_name, capacity=config.capacity,
                weights=(fair[Priority.HIGH], fair[Priority.MEDIUM], fair[Priority.LOW]),
                result_ttl=max(config.result_ttl, 0.001),
            )
            await client.ping()
            await state.heartbeat(self.node, self._info())
            self._refresh(await state.counts(self._lease))
            reader = await state.event_reader()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._fetcher)
                    nursery.start_soon(self._flusher)
                    nursery.start_soon(self._heartbeat)
                    nursery.start_soon(self._read_events, reader)
                    nursery.start_soon(self._outbox.run, state)
                    task_status.started()
                    await self._closed.wait()
                    reader.stop()
                    nursery.cancel_scope.cancel()
            finally:
                # Also when the queue's nursery was cancelled (its body raised): close()
                # then has no client to talk to.
                self._disconnected = True

    def _info(self) -> dict[str, Any]:
        """What this node's heartbeat registers: its worker figures (read by the other
        nodes' :meth:`cluster_metrics` while the heartbeat is at most a lease old)."""
        if self._node_metrics is None:
            return {"workers": self._config.workers, "busy": 0}
        workers, busy, busy_s, capacity_s = _worker_figures(self._node_metrics())
        return {"workers": workers, "busy": busy, "busy_s": busy_s, "capacity_s": capacity_s}

    async def recover(self) -> None:
        await trio.lowlevel.checkpoint()  # the state is in Redis already

    def close_intake(self) -> None:
        self._no_claims = True
        self._kick.set()

    def drop_leftovers(self) -> tuple[int, int]:
        return 0, 0

    def wake_all_waiters(self) -> None:
        watchers, self._watchers = self._watchers, {}
        for events in watchers.values():
            for event in events:
                event.set()

    async def close(self) -> None:
        """Release the jobs claimed but not started, flush every outcome in one last call
        (shielded, at most :data:`CLOSE_BUDGET` s plus the fetcher's blocking call), and
        remove this node; queued jobs stay in Redis."""
        with trio.CancelScope(shield=True):
            self._no_claims = True
            unstarted = list(self._buffer)
            self._buffer.clear()
            for parked in self._parked.values():
                unstarted.extend(parked)
                parked.clear()
            for rec in unstarted:
                held = self._held.pop(rec.id, None)
                self._deadline.pop(rec.id, None)
                if held is not None:
                    self._pending.append(Outcome.released(rec.id, held[1]))
            self._stop = True
            self._kick.set()
            self._flush.set()
            if self._state is not None and not self._disconnected:
                with trio.move_on_after(CLOSE_BUDGET):
                    try:
                        await self._state.stop_waiting(self.node)
                    except RedisUnavailable:
                        pass
                with trio.move_on_after(CLOSE_BUDGET + 1.5):
                    await self._fetcher_done.wait()
                with trio.move_on_after(CLOSE_BUDGET):
                    await self._outbox.empty()
                with trio.move_on_after(CLOSE_BUDGET):
                    try:
                        await self._state.remove_node(self.node)
                    except RedisUnavailable as exc:
                        log.warning("trioqueue: could not remove node %s: %s", self.node, exc)
            lost = self._outbox.abandon()
            if lost:
                log.error("trioqueue: %d jobs accepted by enqueue_nowait were never written "
                          "to redis (no room or no redis within %s s of the close) and are "
                          "lost: %s", len(lost), CLOSE_BUDGET, describe(lost))
            if self._pending:
                log.warning("trioqueue: %d outcomes not sent to redis at close (those jobs "
                            "run again after their lease)", len(self._pending))
            self._closed.set()

    def abandon(self) -> None:
        self._closed.set()

    # ------------------------------------------------------------------ the node's tasks

    async def _fetcher(self) -> None:
        state = self.state
        tasks = self._registry_names()
        try:
            while True:
                stopping = self._stop
                n = 0
                if not self._no_claims:
                    n = max(0, min(MAX_CLAIM, self._idle + self._prefetch - len(self._buffer)))
                outcomes = self._take_pending()
                if not outcomes and n == 0:
                    if stopping:
                        return
                    self._kick = trio.Event()
                    await self._kick.wait()
                    continue
                if n and not stopping and not self._outbox.quiet:
                    # Jobs this node accepted with enqueue_nowait go in before it claims
                    # (as they would in memory); those waiting for room do not hold it.
                    self._pending[:0] = outcomes
                    await self._outbox.wait_quiet()
                    continue
                if len(tasks) != len(self._registry):  # submit() registered a function
                    tasks = self._registry_names()
                claimable = tasks
                if self._parked and n:
                    full = {t for t, q in self._parked.items() if len(q) >= self._park_max}
                    if full:
                        claimable = [t for t in tasks if t not in full]
                sent = self._clock.current_time()
                try:
                    got = await state.finish_and_claim(self.node, outcomes, n, self._lease,
                                                       claimable)
                except RedisUnavailable as exc:
                    self._pending[:0] = outcomes
                    if stopping:
                        return
                    log.warning("trioqueue: redis unavailable (%s); retrying", exc)
                    await trio.sleep(0.5)
                    continue
                self._log_stale(outcomes, got.results)
                until = sent + self._lease
                for sj in got.claimed:
                    rec = self._record(sj)
                    self._held[rec.id] = (rec, sj.fence)
                    self._deadline[rec.id] = until
                    self._buffer.append(rec)
                self._outbox.saw(got.view)
                if got.claimed:
                    self._work_lot.unpark(count=len(got.claimed))
                elif n and not self._pending and not stopping:
                    self._blocked = True
                    try:
                        await state.wait_for_work(self.node, 1.0)
                    finally:
                        self._blocked = False
        finally:
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
                await state.heartbeat(self.node, self._info())
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

    async def _read_events(self, reader: Any) -> None:
        while not reader.stopped:
            try:
                batch = await reader.read(block_ms=READER_BLOCK_MS)
            except RedisUnavailable:
                await trio.sleep(0.5)
                continue
            hook = self._hook
            for ev in batch.events:
                if ev.type == "cancel_requested":
                    held = self._held.get(ev.job_id)
                    if held is not None and self._started(held[0]):
                        self._cancel_job(held[0])
                    continue
                if ev.type in _TERMINAL_EVENTS:
                    for event in self._watchers.pop(ev.job_id, ()):
                        event.set()
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
                    hook(ev.type, self._event_record(ev), worker, ev.duration)

    def _took(self, rec: JobRecord, worker: int) -> JobRecord:
        """A worker takes ``rec``: its events from now on name that worker, and its
        ``started`` event, if the stream showed it already, goes out now."""
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
        if events is None or not events or not events.takes():
            return
        progress = ev.progress or {}
        events.publish(Event(
            seq=events.next_seq(), type="progress", at=ev.at, job_id=ev.job_id,
            task=ev.task, priority=ev.priority, status=ev.status, attempt=ev.attempt,
            worker=worker, fraction=progress.get("fraction"), note=progress.get("note"),
        ))

    def _event_record(self, ev: StreamEvent) -> JobRecord:
        rec = JobRecord(ev.job_id, ev.task, None, "", _PRIO_BY_LABEL.get(ev.priority, 1),
                        _STATUSES.get(ev.status, JobStatus.QUEUED), 0, None, ev.at, None,
                        None, 0.0)
        rec.attempts = ev.attempt
        rec.error = ev.error
        return rec

    def _registry_names(self) -> list[str]:
        return sorted(self._registry)

    def _record(self, sj: StoredJob, spec: bool = True) -> JobRecord:
        j = sj.job
        rec = JobRecord.restored(
            j.id, j.task, j.payload, "", int(j.priority), j.status, j.attempts, j.max_retries,
            j.timeout, j.created_at, j.scheduled_for, j.started_at, j.finished_at, j.result,
            j.error, j.traceback,
            self._registry.get(j.task) if spec else None,
        )
        rec.progress = j.progress
        ready = j.scheduled_for if j.scheduled_for is not None else j.created_at
        rec.ready_at = min(ready - self._wall, self._clock.current_time())
        return rec

    # ------------------------------------------------------------------ intake

    def admit(self, rec: JobRecord) -> JobRecord | None:
        """``enqueue_nowait``: accepted into this node's outbox if its priority has room
        in this node's view (docs/redis-design.md); ``None`` (QueueFull) otherwise.  A
        given id this node knows answers at once: the job holding it, or DuplicateJob."""
        outbox = self._outbox
        if rec.id in outbox.known or outbox.get(rec.id) is not None:
            try:
                got = outbox.repeat(rec)
            except ValueError:
                raise self._duplicate(rec.id) from None
            if got is not None:
                return got if isinstance(got, JobRecord) else self._from_job(got)
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
        one script call."""
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
        :class:`DuplicateJob` (nothing admitted).  Jobs accepted by ``enqueue_nowait``
        before are written first (this node's order)."""
        if len(self._outbox):
            await self._outbox.empty()
        try:
            answer = await self.state.admit([new_job(rec) for rec in recs],
                                            whole=len(recs) > 1,
                                            count_rejected=count_rejected)
        except RedisUnavailable as exc:
            raise StoreError(f"{exc}; the job was not confirmed and may have been "
                             "stored: enqueue it again with the same job_id") from None
        self._outbox.saw(answer.view)
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
                raise self._duplicate(rec.id)
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

    def _duplicate(self, job_id: str) -> DuplicateJob:
        return DuplicateJob(f"job id {job_id!r} is taken by a job with another task or "
                            "payload")

    async def wait_for_room_many(self, recs: list[JobRecord]) -> None:
        await trio.sleep(RETRY_BACKOFF[1])

    def full_reason_many(self, recs: list[JobRecord]) -> str:
        labels = sorted({rec.priority for rec in recs})
        return (f"priority {', '.join(LABELS[p] for p in labels)}: no room for the whole "
                f"batch ({self._config.capacity} jobs at most waiting per priority)")

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
        return f"{self._config.capacity} jobs already waiting"

    async def wait_committed(self, rec: JobRecord | None = None) -> None:
        await trio.lowlevel.checkpoint()

    def not_confirmed(self, exc: StoreError) -> bool:
        return False

    def withdraw(self, rec: JobRecord) -> bool:
        return False

    def repeat_of(self, stored: JobRecord, rec: JobRecord) -> JobRecord:
        raise TypeError("the Redis backend checks repeats in admit_async")

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
            self._ack(rec, lambda f: Outcome.completed(job_id, f, rec.result, duration))
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

    # ------------------------------------------------------------------ the timer

    async def promote(self, now: float) -> float:
        """Due jobs into their ready lists (Redis' clock), expired leases reaped every
        ``lease / 4``, and the cluster-wide counts refreshed.  The next call is due at
        the next due time, and within a second."""
        state = self.state
        nxt = now + 1.0
        if now >= self._due_hint:
            self._due_hint = math.inf
        try:
            promoted = await state.promote()
            if promoted.next_due is not None:
                nxt = min(nxt, promoted.next_due - self._wall)
            if now >= self._next_reap:
                self._next_reap = now + self._lease / 4
                await state.reap()
            self._refresh(await state.counts(self._lease))
        except RedisUnavailable as exc:
            log.warning("trioqueue: timer: %s", exc)
        return nxt

    def _refresh(self, counts: Counts) -> None:
        """The cluster's counters as of ``counts``, plus what this node did that Redis
        does not count yet (jobs in its outbox, refusals not sent)."""
        self._counts = counts
        self._held_at_refresh = len(self._held)
        s = self._stats
        s.scheduled = counts.scheduled + self._outbox.delayed()
        if self._outbox.in_flight:
            return  # these counts may or may not hold the write: keep the local ones
        self._totals_seq = int(counts.totals.get("seq", 0))
        self._outbox.saw_counts(counts)
        totals = counts.totals
        for name in _COUNTERS:
            per = [int(totals.get(f"{name}:{label}", 0)) for label in _PRIO_BY_LABEL]
            setattr(s, f"{name}_p", per)
            setattr(s, name, sum(per))
        # Per priority too (by_priority), so each total stays the sum of its priorities.
        s.enqueued_p = [a + b for a, b in zip(s.enqueued_p, self._outbox.by_priority(),
                                             strict=True)]
        s.enqueued = sum(s.enqueued_p)
        s.rejected_p = [a + b for a, b in zip(s.rejected_p, self._outbox.refused, strict=True)]
        s.rejected = sum(s.rejected_p)

    async def wait_timer(self, deadline: float) -> None:
        with trio.move_on_at(min(deadline, self._due_hint)):
            await self._timer_wake.wait()
        self._timer_wake = trio.Event()

    def wake_timer(self) -> None:
        self._timer_wake.set()

    # ------------------------------------------------------------------ queries, control

    def get_nowait(self, job_id: str) -> JobRecord | None:
        """A job accepted by ``enqueue_nowait`` and not written yet, else ``None``."""
        return self._outbox.get(job_id)

    async def find(self, job_id: str) -> JobRecord | None:
        waiting = self._outbox.get(job_id)
        if waiting is not None:
            await trio.lowlevel.checkpoint()
            return waiting
        if self._disconnected and self._state is not None:
            return await self._find_after_close(job_id)
        state = self.state
        try:
            sj = await state.get(job_id)
            # The cluster's counts as of this answer: metrics() after get() or wait()
            # shows at least what that answer showed.
            self._refresh(await state.counts(self._lease))
        except RedisUnavailable as exc:
            raise StoreError(str(exc)) from None
        return None if sj is None else self._from_job(sj.job)

    async def _find_after_close(self, job_id: str) -> JobRecord | None:
        """``get`` once the node closed: a short connection of its own (the node's is
        gone), so a closed queue still answers for its jobs as the local ones do."""
        config, old = self._config, self.state_after_close
        assert config.redis_url is not None
        try:
            async with connect(config.redis_url,
                               client_name=f"trioqueue:{self.node}:closed") as client:
                state = RedisState(client, config.queue_name, capacity=config.capacity,
                                   weights=old.weights, result_ttl=old.result_ttl)
                sj = await state.get(job_id)
        except RedisUnavailable as exc:
            raise StoreError(str(exc)) from None
        return None if sj is None else self._from_job(sj.job)

    @property
    def state_after_close(self) -> RedisState:
        assert self._state is not None
        return self._state

    async def list(self, status: JobStatus | None, limit: int, task: str | None = None,
                   before: str | None = None) -> tuple[list[Job], str | None]:
        await self._written()
        jobs, nxt = await self.state.list_jobs(status, task, min(limit, 1000), before)
        return jobs, nxt

    async def _written(self, job_id: str | None = None) -> None:
        """Wait until the outbox wrote ``job_id`` (every job, for ``None``): what acts
        on a job in Redis sees the jobs this node accepted with enqueue_nowait."""
        if self._outbox.get(job_id) if job_id is not None else len(self._outbox):
            await self._outbox.empty()

    async def cancel(self, job_id: str) -> JobRecord:
        await self._written(job_id)
        state = self.state
        code, sj = await state.cancel(job_id)
        self._refresh(await state.counts(self._lease))
        if code == "requested":
            held = self._held.get(job_id)
            if held is not None:
                return held[0]
        return self._from_job(sj.job)

    async def retry(self, job_id: str) -> JobRecord:
        await self._written(job_id)
        delay = RETRY_BACKOFF[0]
        while True:
            try:
                rec = self._from_job(await self.state.retry(job_id))
                self._refresh(await self.state.counts(self._lease))
                return rec
            except QueueFull:
                pass
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_BACKOFF[1])
            self.check_intake()

    def check_intake(self) -> None:
        if self._no_claims:
            self._stats.rejected += 1
            raise ShuttingDown("the queue is shutting down and takes no new jobs")

    def depths(self) -> tuple[int, int, int]:
        """Jobs waiting per priority: Redis' as last seen, less what this node claimed
        since, plus its outbox."""
        return self._outbox.depths()

    # ------------------------------------------------------------------ waiting, progress

    def watch(self, job_id: str) -> trio.Event:
        """An event set when the stream shows ``job_id`` finished (or the queue closes);
        :meth:`unwatch` it after."""
        event = trio.Event()
        self._watchers.setdefault(job_id, []).append(event)
        return event

    def unwatch(self, job_id: str, event: trio.Event) -> None:
        events = self._watchers.get(job_id)
        if events is not None and event in events:
            events.remove(event)
            if not events:
                del self._watchers[job_id]

    def send_progress(self, rec: JobRecord) -> None:
        """``rec``'s progress to Redis with the next outcomes (its record and a
        ``progress`` event every node's subscribers see); dropped once the job left this
        node."""
        held = self._held.get(rec.id)
        if held is None or held[0] is not rec or rec.progress is None:
            return
        self._pending.append(Outcome.progress(rec.id, held[1], rec.progress["fraction"],
                                              rec.progress["note"]))
        self._kick.set()
        if self._blocked:
            self._flush.set()

    def counts_now(self) -> Counts | None:
        return self._counts


def _worker_figures(m: Metrics) -> tuple[int, int, float, float]:
    """A node's workers, busy workers, and busy and available worker-seconds since it
    opened (from its own metrics ``m``)."""
    capacity_s = m.uptime * m.workers
    return m.workers, m.busy_workers, m.utilization * capacity_s, capacity_s
