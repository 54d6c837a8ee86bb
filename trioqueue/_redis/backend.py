"""The Redis backend: :class:`trioqueue._backend.Backend` over :mod:`._state`.

Every process opened on one URL and queue name is a *node* of one queue.  A node runs,
beside the engine's workers and timer, five tasks of its own (in :meth:`RedisBackend.run`;
their code and the workers' side are in :mod:`._node`, the intake in :mod:`._intake`):

- the **fetcher**: one ``finish_and_claim`` call acks what the workers finished since its
  last call and claims up to (idle workers + ``prefetch`` - already buffered) jobs, which
  it puts in a local buffer that :meth:`RedisBackend.claim` pops synchronously.  When
  nothing could be claimed it blocks in ``BLPOP [ctl, wake] 1`` (shielded, never
  cancelled).  With a prefetch a second fetcher adds a call while the first one's is in
  flight (claims in flight count against the prefetch), so that Redis runs one script
  while the node handles the other's reply;
- the **flusher**: sends outcomes that arrive while the fetcher is blocked, at once;
- the **heartbeat**: every ``lease / 3`` renews the leases this node holds and registers
  the node; a job whose lease was lost has its handler cancelled (its late result would
  be refused anyway);
- the **events reader**: ``XREAD BLOCK 250`` (:data:`READER_BLOCK_MS`) on the queue's
  events stream, feeding the engine's subscribers and ``wait`` with every node's events,
  only while this node has subscribers or waiters (from the stream's end when it starts);
  otherwise it reads nothing;
- the **cancel listener**: ``BLPOP node:<id>:cancel``, interrupting the handlers of jobs
  whose cancellation another node asked for (``cancel`` pushes their ids there).

The engine's timer task calls :meth:`RedisBackend.promote`, which also reaps expired
leases and refreshes the cluster-wide counts that :meth:`depths` and the metrics read.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable

import trio

from .._backend import ChangeHook
from .._config import CENTURY, QueueConfig
from .._events import Broadcaster
from .._exceptions import QueueFull, ShuttingDown, StoreError
from .._job import Job, JobStatus, Priority
from .._metrics import Metrics
from .._record import JobRecord
from .._registry import TaskRegistry
from .._stats import Stats
from ._client import RedisUnavailable, connect, major_version
from ._cluster import cluster_workers
from ._intake import RETRY_BACKOFF, NodeIntake
from ._limits import read_limits
from ._node import NodeCore
from ._nodelog import log_close
from ._outage import Outage, stall_bound
from ._outbox import Outbox, describe
from ._reader import PRIO_BY_LABEL, READER_BLOCK_MS, Waker
from ._state import CorruptRecord, Counts, Outcome, RedisState, StreamEvent

__all__ = ["READER_BLOCK_MS", "RETRY_BACKOFF", "NodeCore", "RedisBackend"]

log = logging.getLogger("trioqueue")

CLOSE_BUDGET = 2.0
"""Seconds the last flush at shutdown may take (shielded)."""
_COUNTERS = ("enqueued", "completed", "failed", "retried", "cancelled", "rejected")


def dead_letter_ttl(config: QueueConfig) -> float:
    """Seconds a FAILED job (a dead letter) stays in Redis: ``retention``, as in a store,
    or ``result_ttl`` where longer (at most a century: Redis takes a finite expiry)."""
    return min(max(config.result_ttl, config.retention, 0.001), CENTURY)


class RedisBackend(NodeIntake):
    """One node of a queue kept in Redis (``QueueConfig.redis_url``)."""

    persistent = True
    durable = False
    lagging = False
    remote = True

    def __init__(self, config: QueueConfig, registry: TaskRegistry, stats: Stats, *,
                 clock: trio.abc.Clock, wall_offset: float) -> None:
        assert config.redis_url is not None
        self._config = config
        self._registry = registry
        self._stats = stats
        self._clock = clock
        self._outage = Outage(clock.current_time)
        self._wall = wall_offset
        self.refusal: StoreError | None = None
        self.node = f"{uuid.uuid4().hex[:12]}"
        self._lease = config.lease
        self._prefetch = config.prefetch
        self._park_max = config.capacity
        """Claimed jobs of one limited task that may wait on this node, at most (and at
        most its ``concurrency``): past it, this node claims no more of that task."""
        self._hook: ChangeHook | None = None
        self._state: RedisState | None = None
        self._counts: Counts | None = None
        self._held_at_refresh = 0
        """This node's claimed jobs when :attr:`_counts` came (counted in it)."""
        self._counts_seq = -1
        """The event number :attr:`_counts` were read at: a claim answered at or below it
        is in those counts' ``processing`` already."""
        self._cancel_job: Callable[[JobRecord], None] = lambda rec: None
        # Claimed jobs: id -> (record, fence); the buffer holds those not started yet.
        self._held: dict[str, tuple[JobRecord, int]] = {}
        self._deadline: dict[str, float] = {}
        """Claimed job id -> when its lease ends by this node's clock (trio time): when the
        claim (or the last successful renewal) was sent, plus the lease.  A job past it is
        not started here (:meth:`_lapsed`): another node may have reaped and run it."""
        self._buffer: deque[JobRecord] = deque()
        self._lost: set[str] = set()
        self._lapsed_ids: list[str] = []
        """Jobs not started because their lease ended first, not logged yet."""
        self._pending: list[Outcome] = []
        self._idle = 0
        self._work_lot = trio.lowlevel.ParkingLot()
        self._kick = trio.Event()
        self._flush = trio.Event()
        self._blocked = False
        self._no_claims = False
        self._stop = False
        self._fetcher_done = trio.Event()
        self._fetchers = 0
        self._inflight = 0
        self._closed = trio.Event()
        self._timer_wake = trio.Event()
        self._next_reap = -math.inf
        self._disconnected = False
        self._outbox = Outbox(config.capacity)
        self._outbox.on_back = self._went_back
        self._due_hint = math.inf
        """When a job this node delayed or retried comes due (trio time)."""
        self._totals_seq = -1
        """The event number when the counters in :attr:`_stats` were read."""
        self._watchers: dict[str, list[Waker]] = {}
        """Job id -> tasks in ``wait`` for it: set by its terminal event in the stream."""
        self._want_events = trio.Event()
        self._stop_reading = False
        self._reading = False
        self._read_to = (0, 0)
        """The stream position up to which the events reader handed events on."""
        self._read_done = trio.Event()
        """Set (and replaced) when a read of the stream was handled."""
        self._registered = False
        """Redis writes events for this node (it said it reads them,
        :meth:`RedisState.read_events`) ..."""
        self._registered_types: frozenset[str] | None = None
        """... of these types (``None``: every type)."""
        self._register_lock = trio.Lock()
        """Held while this node tells Redis what it reads (one call at a time, so that
        the last one sent says what is wanted last)."""
        self._events_from: int | None = None
        """Where the events reader starts next (ms, Redis' clock), if set."""
        self._redis_offset = 0.0
        """Redis' clock less this process' (seconds), from the heartbeats' replies."""
        self._events_after_seq = -1
        """Events up to this number are older than the reader's next start."""
        self._read_seq = -1
        """The number of the last event the events reader read since it started (the
        stream's numbers only increase while Redis keeps the queue's data)."""
        self._gone: set[str] = set()
        """Jobs this node held when Redis lost the queue's data (:meth:`_went_back`):
        their outcomes are refused because of it, not because another node took them."""
        self.reader_starts = 0
        """How many times the events reader started reading the stream (it reads only
        while this node has subscribers or waiters)."""
        self._events: Broadcaster | None = None
        self._node_metrics: Callable[[], Metrics] | None = None
        """This node's own metrics (the queue's): its heartbeat publishes its worker
        figures for the others' :meth:`cluster_metrics`."""
        # Per-task concurrency (per process): claimed jobs of a task at its limit wait
        # here, leased to this node, while the workers run other tasks' jobs.
        self._limits = {name: spec.concurrency for name in registry
                        if (spec := registry.get(name)).concurrency is not None}
        self._running_task: dict[str, int] = {}
        self._full: set[str] = set()
        """Limited tasks the fetcher's last call left out: no room for more of their
        jobs here (:meth:`NodeHolds._claimable`)."""
        self._poke_due = False
        """A limited task of :attr:`_full` got room while the fetcher waited in Redis: the
        flusher wakes it (:meth:`RedisState.stop_waiting` with ``work=True``)."""
        self._parked: dict[str, deque[JobRecord]] = {}
        self._parked_said: dict[str, float] = {}
        """Task -> when this node last said it parked jobs of it (a task it lacks)."""
        self._worker_of: dict[str, int] = {}
        """Job id -> the worker running it here (its events name it)."""
        self._started_events: dict[str, StreamEvent] = {}
        """``started`` events of this node's jobs that no worker took yet."""

    # ------------------------------------------------------------------ engine hooks

    def observe(self, hook: ChangeHook | None) -> None:
        first = self._hook is None
        self._hook = hook
        if hook is not None:
            self._events_wanted()
            if first:  # nobody listened: what this node saw answered is not shown
                self._events_after_seq = max(self._events_after_seq,
                                             self._outbox.seen_seq)

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
        # Redis' PROCESSING jobs as of the last counts, with this node's part live (its
        # claimed jobs, the prefetched ones too: finished ones leave at once).
        others = max(0, counts.processing - self._held_at_refresh)
        return cluster_workers(m, self.node, counts.nodes, others + len(self._held))


    # ------------------------------------------------------------------ lifecycle

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        config = self._config
        assert config.redis_url is not None
        fair = config.fairness
        with trio.CancelScope() as lifetime:
            async with connect(config.redis_url,
                               client_name=f"trioqueue:{self.node}") as client:
                self._outage.watch(client.waiting, stall_bound(self._lease))  # (a hang)
                self._state = state = RedisState(
                    client, config.queue_name, capacity=config.capacity,
                    weights=(fair[Priority.HIGH], fair[Priority.MEDIUM], fair[Priority.LOW]),
                    result_ttl=min(max(config.result_ttl, 0.001), CENTURY),
                    failed_ttl=dead_letter_ttl(config),
                )
                version = await client.ping()
                if major_version(version) < 7:
                    raise StoreError(
                        f"redis {version or '(no version given)'}: trioqueue needs Redis "
                        "7.0 or later (its scripts declare what they may do when Redis is "
                        "full with Redis 7's script flags)")
                state.limits = await read_limits(client)  # (what one call may carry)
                sent = time.time()
                self._set_redis_offset(sent, await state.heartbeat(self.node, self._info()))
                await self._read_counts()
                try:
                    async with trio.open_nursery() as nursery:
                        self._fetchers = 2 if self._prefetch else 1
                        nursery.start_soon(self._fetcher)
                        if self._prefetch:
                            nursery.start_soon(self._fetcher, True)
                        nursery.start_soon(self._flusher)
                        nursery.start_soon(self._heartbeat)
                        nursery.start_soon(self._read_events)
                        nursery.start_soon(self._listen_for_cancels)
                        nursery.start_soon(self._outbox.run, state)
                        task_status.started()
                        # Open: from here only close() (or abandon()) ends the node's
                        # connection and tasks.  A queue cancelled from outside (a second
                        # Ctrl+C) still puts its running jobs back and removes its entry
                        # through them, in close()'s bounded, shielded last call.
                        lifetime.shield = True
                        await self._closed.wait()
                        self._stop_reading = True
                        self._want_events.set()
                        self._read_done.set()  # (events_caught_up ends)
                        nursery.cancel_scope.cancel()
                finally:
                    # A task of the node failed (its nursery's error ends the queue):
                    # close() then has no client to talk to.
                    self._disconnected = True

    async def recover(self) -> None:
        await trio.lowlevel.checkpoint()  # the state is in Redis already

    def close_intake(self) -> None:
        """Shutdown begins: claim nothing more, and hand the jobs claimed but not started
        back at once (the workers take no new job from here on), so that other nodes run
        them while this one's running jobs finish."""
        self._no_claims = True
        self._put_back_unstarted()
        self._kick.set()
        if self._blocked:
            self._flush.set()

    def _put_back_unstarted(self) -> None:
        """The jobs claimed but not started (prefetched, or waiting for their task's
        ``concurrency``) go back to the front of their priority with the next call, in the
        order they were claimed, their attempts not counted."""
        unstarted: list[JobRecord] = []
        for parked in self._parked.values():  # (claimed before the buffer's jobs)
            unstarted.extend(parked)
            parked.clear()
        unstarted.extend(self._buffer)
        self._buffer.clear()
        for rec in unstarted:
            held = self._held.pop(rec.id, None)
            self._deadline.pop(rec.id, None)
            self._started_events.pop(rec.id, None)
            if held is not None:
                self._pending.append(Outcome.unstarted(rec.id, held[1]))

    def drop_leftovers(self) -> tuple[list[str], list[str]]:
        return [], []

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
            try:
                self._no_claims = True
                self._put_back_unstarted()  # (close_intake did, unless the queue never ran)
                self._stop = True
                self._kick.set()
                self._flush.set()
                unanswered = False
                if self._state is not None and not self._disconnected:
                    with trio.move_on_after(CLOSE_BUDGET):
                        try:
                            await self._state.stop_waiting(self.node)
                        except RedisUnavailable:
                            pass
                    with trio.move_on_after(CLOSE_BUDGET + 1.5) as fetching:
                        await self._fetcher_done.wait()
                    with trio.move_on_after(CLOSE_BUDGET):
                        await self._outbox.empty()
                    with trio.move_on_after(CLOSE_BUDGET) as removing:
                        try:
                            await self._state.remove_node(self.node)
                        except RedisUnavailable as exc:
                            log.warning("trioqueue: could not remove node %s: %s",
                                        self.node, exc)
                    unanswered = fetching.cancelled_caught or removing.cancelled_caught
                lost = self._outbox.abandon()
                log_close(self.node, len(lost), describe(lost) if lost else "",
                          len(self._pending), CLOSE_BUDGET + 1.5 if unanswered else None)
            finally:
                self._closed.set()  # (the node's tasks end: run() waits for this)

    def abandon(self) -> None:
        self._closed.set()

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
            if now >= self._next_reap:  # (still behind: again at the next tick)
                self._next_reap = now + self._lease / 4 if await self._reap() else now
            await self._read_counts()
            if self._outage.since is not None:
                self._outage.answered()
        except RedisUnavailable as exc:
            self._outage.failed("timer", exc)
        return nxt

    def _refresh(self, counts: Counts, mark: tuple[int, int]) -> None:
        """The cluster's counters as of ``counts`` (the answer to a call sent at ``mark``),
        plus what this node did that Redis does not count yet (outbox, refusals)."""
        seq = int(counts.totals.get("seq", 0))
        self._outbox.check_seq(mark, seq)
        self._counts = counts
        self._held_at_refresh = len(self._held)
        self._counts_seq = seq
        self._outbox.saw_seq(self._counts_seq)
        s = self._stats
        s.scheduled = counts.scheduled + self._outbox.delayed()
        if self._outbox.in_flight:
            return  # these counts may or may not hold the write: keep the local ones
        if self._counts_seq < self._outbox.written_seq:
            return  # read before a write this node counted already: keep the local ones
        self._totals_seq = seq
        self._outbox.saw_counts(counts)
        totals = counts.totals
        for name in _COUNTERS:
            per = [int(totals.get(f"{name}:{label}", 0)) for label in PRIO_BY_LABEL]
            setattr(s, f"{name}_p", per)
            setattr(s, name, sum(per))
        # Per priority too (by_priority), so each total stays the sum of its priorities.
        s.enqueued_p = [a + b for a, b in zip(s.enqueued_p, self._outbox.by_priority(),
                                             strict=True)]
        s.enqueued = sum(s.enqueued_p)
        s.rejected_p = [a + b for a, b in zip(s.rejected_p, self._outbox.refused, strict=True)]
        s.rejected = sum(s.rejected_p)

    async def _stream_went_back(self) -> None:
        """A counts call tells whether the queue's number went back too (the reader's)."""
        with contextlib.suppress(RedisUnavailable):
            await self._read_counts()

    async def _read_counts(self) -> None:
        """Read the cluster's counts and :meth:`_refresh` from them."""
        mark = self._outbox.mark()
        self._refresh(await self.state.counts(self._lease), mark)

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
        return (await self.find_many([job_id]))[0]

    async def periodic_marks(self) -> dict[str, float]:
        """The queue's ``periodic`` hash (nodes.lua): shared by its nodes, no expiry."""
        flat = await self.state.run_script("nodes", ["marks"])
        return {flat[i]: int(flat[i + 1]) / 1000 for i in range(0, len(flat), 2)
                if str(flat[i + 1]).isdigit()}

    async def mark_periodic(self, name: str, due: float) -> None:
        await self.state.run_script("nodes", ["mark", name, round(due * 1000)])

    async def find_many(self, job_ids: list[str]) -> list[JobRecord | None]:
        """:meth:`find` of each id, in order: a job this node accepted and has not
        written yet from its outbox, the others and a counts refresh in one call (per
        1,000 ids)."""
        out: list[JobRecord | None] = [self._outbox.get(job_id) for job_id in job_ids]
        ask = [job_id for job_id, rec in zip(job_ids, out, strict=True) if rec is None]
        if not ask:
            await trio.lowlevel.checkpoint()
            return out
        found: dict[str, JobRecord | None]
        if self._disconnected and self._state is not None:
            found = {job_id: await self._find_after_close(job_id) for job_id in ask}
        else:
            state = self.state
            try:
                # With the cluster's counts as of this answer: metrics() after get() or
                # wait() shows at least what that answer showed.
                mark = self._outbox.mark()
                stored, counts = await state.find(ask, self._lease)
            except RedisUnavailable as exc:
                raise StoreError(str(exc)) from None
            except CorruptRecord as exc:
                raise exc.store_error() from None
            self._refresh(counts, mark)
            found = {job_id: None if sj is None else self._from_job(sj.job)
                     for job_id, sj in zip(ask, stored, strict=True)}
        for i, job_id in enumerate(job_ids):
            if out[i] is None:
                out[i] = found[job_id]
        return out

    async def _find_after_close(self, job_id: str) -> JobRecord | None:
        """``get`` once the node closed: a short connection of its own (the node's is
        gone), so a closed queue still answers for its jobs as the local ones do."""
        config, old = self._config, self.state_after_close
        assert config.redis_url is not None
        try:
            async with connect(config.redis_url,
                               client_name=f"trioqueue:{self.node}:closed") as client:
                state = RedisState(client, config.queue_name, capacity=config.capacity,
                                   weights=old.weights, result_ttl=old.result_ttl,
                                   failed_ttl=old.failed_ttl)
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
        unreadable: list[CorruptRecord] = []
        jobs, nxt = await self.state.list_jobs(status, task, min(limit, 1000), before,
                                               unreadable=unreadable)
        for exc in unreadable:
            log.error("trioqueue: redis: %s; not listed", exc)  # the others are
        return jobs, nxt

    async def _written(self, job_id: str | None = None) -> None:
        """Wait until the outbox wrote ``job_id`` (every job, for ``None``): what acts
        on a job in Redis sees the jobs this node accepted with enqueue_nowait."""
        if self._outbox.get(job_id) if job_id is not None else len(self._outbox):
            await self._outbox.empty()

    async def cancel(self, job_id: str) -> JobRecord:
        await self._written(job_id)
        state = self.state
        try:
            code, sj = await state.cancel(job_id)
        except CorruptRecord as exc:
            raise exc.store_error() from None
        await self._read_counts()
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
                await self._read_counts()
                return rec
            except QueueFull:
                pass
            except CorruptRecord as exc:
                raise exc.store_error() from None
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_BACKOFF[1])
            self.check_intake()

    def check_intake(self) -> None:
        if self._no_claims:
            self._stats.rejected += 1
            raise ShuttingDown("the queue is shutting down and takes no new jobs")

    def unavailable(self) -> str | None:
        return self._outage.describe()

    def depths(self) -> tuple[int, int, int]:
        """Jobs waiting per priority: Redis' as last seen, less what this node claimed
        since, plus its outbox."""
        return self._outbox.depths()

    # ------------------------------------------------------------------ waiting, progress

    def watch(self, job_id: str) -> trio.Event:
        """An event set when the stream shows ``job_id`` finished (or the queue closes);
        :meth:`unwatch` it after."""
        event = trio.Event()
        self.watch_with(job_id, event)
        return event

    def watch_with(self, job_id: str, waker: Waker) -> None:
        """:meth:`watch` with a waker of the caller's (``wait_many``'s, which learns from
        it which job ended); :meth:`unwatch` it after."""
        self._watchers.setdefault(job_id, []).append(waker)
        self._events_wanted()

    def unwatch(self, job_id: str, event: Waker) -> None:
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
