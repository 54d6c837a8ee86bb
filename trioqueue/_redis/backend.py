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

import trio

from .._backend import ChangeHook
from .._config import QueueConfig
from .._exceptions import DuplicateJob, QueueFull, ShuttingDown, StoreError
from .._job import Job, JobStatus, Priority
from .._record import JobRecord
from .._registry import TaskRegistry
from .._state import JobEvent
from .._stats import Stats
from ._client import RedisUnavailable, connect
from ._state import (
    MAX_CLAIM,
    Admission,
    Counts,
    NewJob,
    Outcome,
    RedisState,
    StoredJob,
    StreamEvent,
    canonical_digest,
)

log = logging.getLogger("trioqueue")

READER_BLOCK_MS = 250
"""How long the events reader's ``XREAD BLOCK`` waits for new events.  The call is never
cancelled (see BACKENDS.md's client rules), so this bounds how long a node's close waits
for its reader; an idle node costs four round trips a second for it."""

_PRIORITIES = (Priority.HIGH, Priority.MEDIUM, Priority.LOW)
_PRIO_BY_LABEL = {"high": 0, "medium": 1, "low": 2}
_STATUSES = {s.value: s for s in JobStatus}
RETRY_BACKOFF = (0.001, 0.05)
"""A producer waiting for room polls Redis with a backoff from 1 ms doubling to 50 ms."""
CLOSE_BUDGET = 2.0
"""Seconds the last flush at shutdown may take (shielded)."""


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
        self._hook: ChangeHook | None = None
        self._state: RedisState | None = None
        self._counts: Counts | None = None
        self._cancel_job: Callable[[JobRecord], None] = lambda rec: None
        # Claimed jobs: id -> (record, fence); the buffer holds those not started yet.
        self._held: dict[str, tuple[JobRecord, int]] = {}
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

    # ------------------------------------------------------------------ engine hooks

    def observe(self, hook: ChangeHook | None) -> None:
        self._hook = hook

    def bind(self, cancel_job: Callable[[JobRecord], None]) -> None:
        """How to interrupt the handler running a job (the engine's workers)."""
        self._cancel_job = cancel_job

    def attach(self, queue: object) -> None:
        pass

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
            self._counts = await state.counts()
            reader = await state.event_reader()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._fetcher)
                nursery.start_soon(self._flusher)
                nursery.start_soon(self._heartbeat)
                nursery.start_soon(self._read_events, reader)
                task_status.started()
                await self._closed.wait()
                reader.stop()
                nursery.cancel_scope.cancel()
            self._disconnected = True

    def _info(self) -> dict[str, Any]:
        return {"workers": self._config.workers, "busy": len(self._held) - len(self._buffer)}

    async def recover(self) -> None:
        await trio.lowlevel.checkpoint()  # the state is in Redis already

    def close_intake(self) -> None:
        self._no_claims = True
        self._kick.set()

    def drop_leftovers(self) -> tuple[int, int]:
        return 0, 0

    def wake_all_waiters(self) -> None:
        pass

    async def close(self) -> None:
        """Release the jobs claimed but not started, flush every outcome in one last call
        (shielded, at most :data:`CLOSE_BUDGET` s plus the fetcher's blocking call), and
        remove this node; queued jobs stay in Redis."""
        with trio.CancelScope(shield=True):
            self._no_claims = True
            while self._buffer:
                rec = self._buffer.popleft()
                held = self._held.pop(rec.id, None)
                if held is not None:
                    self._pending.append(Outcome.released(rec.id, held[1]))
            self._stop = True
            self._kick.set()
            self._flush.set()
            if self._state is not None:
                with trio.move_on_after(CLOSE_BUDGET):
                    try:
                        await self._state.stop_waiting(self.node)
                    except RedisUnavailable:
                        pass
                with trio.move_on_after(CLOSE_BUDGET + 1.5):
                    await self._fetcher_done.wait()
                with trio.move_on_after(CLOSE_BUDGET):
                    try:
                        await self._state.remove_node(self.node)
                    except RedisUnavailable as exc:
                        log.warning("trioqueue: could not remove node %s: %s", self.node, exc)
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
                try:
                    got = await state.finish_and_claim(self.node, outcomes, n, self._lease,
                                                       tasks)
                except RedisUnavailable as exc:
                    self._pending[:0] = outcomes
                    if stopping:
                        return
                    log.warning("trioqueue: redis unavailable (%s); retrying", exc)
                    await trio.sleep(0.5)
                    continue
                self._log_stale(outcomes, got.results)
                for sj in got.claimed:
                    rec = self._record(sj)
                    self._held[rec.id] = (rec, sj.fence)
                    self._buffer.append(rec)
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
            if r == "stale":
                log.warning("trioqueue: job %s: outcome %s refused, its lease moved on (the "
                            "job was taken by another node)", o.id, o.kind)

    async def _heartbeat(self) -> None:
        state = self.state
        period = self._lease / 3
        while True:
            await trio.sleep(period)
            held = [(job_id, fence) for job_id, (rec, fence) in self._held.items()]
            try:
                renewal = await state.renew(self.node, held, self._lease)
                await state.heartbeat(self.node, self._info())
            except RedisUnavailable as exc:
                log.warning("trioqueue: heartbeat failed (%s)", exc)
                continue
            for job_id in renewal.lost:
                self._lose(job_id)
            for job_id in renewal.cancel_requested:
                held_rec = self._held.get(job_id)
                if held_rec is not None:
                    self._cancel_job(held_rec[0])

    def _lose(self, job_id: str) -> None:
        held = self._held.pop(job_id, None)
        if held is None:
            return
        rec = held[0]
        log.warning("trioqueue: job %s: this node lost its lease; stopping it", job_id)
        self._lost.add(job_id)
        try:
            self._buffer.remove(rec)
        except ValueError:
            self._cancel_job(rec)

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
                    if held is not None and held[0] not in self._buffer:
                        self._cancel_job(held[0])
                    continue
                if hook is not None:
                    hook(ev.type, self._event_record(ev), None, ev.duration)

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
        ready = j.scheduled_for if j.scheduled_for is not None else j.created_at
        rec.ready_at = min(ready - self._wall, self._clock.current_time())
        return rec

    # ------------------------------------------------------------------ intake

    def admit(self, rec: JobRecord) -> JobRecord | None:
        raise TypeError("the Redis backend admits jobs with admit_async")

    async def admit_async(self, rec: JobRecord, *, count_rejected: bool = True
                          ) -> JobRecord | None:
        """One script call: ``rec`` once accepted, the stored job for an idempotent repeat,
        ``None`` when its priority is full; raises :class:`DuplicateJob`."""
        delay = 0.0 if rec.scheduled_for is None else rec.scheduled_for - rec.created_at
        new = NewJob(rec.id, rec.task, rec.payload, rec.payload_json,
                     canonical_digest(rec.task, rec.payload), _PRIORITIES[rec.priority],
                     rec.max_retries, rec.timeout, math.ceil(delay * 1000) if delay > 0 else 0)
        try:
            (got,) = await self.state.enqueue([new], count_rejected=count_rejected)
        except RedisUnavailable as exc:
            raise StoreError(f"{exc}; the job was not confirmed and may have been "
                             "stored: enqueue it again with the same job_id") from None
        if got.code is Admission.ACCEPTED:
            if got.job is not None:
                rec.created_at = got.job.created_at
                rec.scheduled_for = got.job.scheduled_for
            return rec
        if got.code is Admission.EXISTING:
            assert got.job is not None
            return self._from_job(got.job)
        if got.code is Admission.DUPLICATE:
            raise DuplicateJob(f"job id {rec.id!r} is taken by a job with another task or "
                               "payload")
        return None

    def admit_many(self, recs: list[JobRecord]) -> list[JobRecord] | None:
        raise TypeError("enqueue_many: not available on the Redis backend yet; enqueue "
                        "the jobs one by one")

    async def wait_for_room_many(self, recs: list[JobRecord]) -> None:
        await trio.sleep(RETRY_BACKOFF[1])

    def full_reason_many(self, recs: list[JobRecord]) -> str:
        return f"{self._config.capacity} jobs at most per priority"

    def _from_job(self, j: Job) -> JobRecord:
        return JobRecord.restored(
            j.id, j.task, j.payload, "", int(j.priority), j.status, j.attempts, j.max_retries,
            j.timeout, j.created_at, j.scheduled_for, j.started_at, j.finished_at, j.result,
            j.error, j.traceback,
        )

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
        if not buffer:
            return None
        rec = buffer.popleft()
        self._stats.started += 1
        if self._idle + self._prefetch > len(buffer):
            self._kick.set()
        return rec

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
        delay = max(0.0, due_wall - (self._clock.current_time() + self._wall))
        job_id = rec.id
        self._ack(rec, lambda f: Outcome.retry(job_id, f, delay, rec.error or "",
                                               rec.traceback or "", duration))

    def release(self, rec: JobRecord, worker: int | None) -> None:
        job_id = rec.id
        self._ack(rec, lambda f: Outcome.released(job_id, f))

    def attempt_ended(self, rec: JobRecord) -> None:
        """Per-task ``concurrency`` limits are not enforced on Redis yet: every claimed
        job runs, so there is no slot to free."""

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
        try:
            promoted = await state.promote()
            if promoted.next_due is not None:
                nxt = min(nxt, promoted.next_due - self._wall)
            if now >= self._next_reap:
                self._next_reap = now + self._lease / 4
                await state.reap()
            self._refresh(await state.counts())
        except RedisUnavailable as exc:
            log.warning("trioqueue: timer: %s", exc)
        return nxt

    def _refresh(self, counts: Counts) -> None:
        self._counts = counts
        s = self._stats
        s.enqueued = counts.total("enqueued")
        s.completed = counts.total("completed")
        s.failed = counts.total("failed")
        s.retried = counts.total("retried")
        s.cancelled = counts.total("cancelled")
        s.rejected = counts.total("rejected")
        s.scheduled = counts.scheduled

    async def wait_timer(self, deadline: float) -> None:
        with trio.move_on_at(deadline):
            await self._timer_wake.wait()
        self._timer_wake = trio.Event()

    def wake_timer(self) -> None:
        self._timer_wake.set()

    # ------------------------------------------------------------------ queries, control

    def get_nowait(self, job_id: str) -> JobRecord | None:
        return None

    async def find(self, job_id: str) -> JobRecord | None:
        state = self.state
        try:
            sj = await state.get(job_id)
            # The cluster's counts as of this answer: metrics() after get() or wait()
            # shows at least what that answer showed.
            self._refresh(await state.counts())
        except RedisUnavailable as exc:
            raise StoreError(str(exc)) from None
        return None if sj is None else self._from_job(sj.job)

    async def list(self, status: JobStatus | None, limit: int, task: str | None = None,
                   before: str | None = None) -> tuple[list[Job], str | None]:
        jobs, nxt = await self.state.list_jobs(status, task, min(limit, 1000), before)
        return jobs, nxt

    async def cancel(self, job_id: str) -> JobRecord:
        state = self.state
        code, sj = await state.cancel(job_id)
        self._refresh(await state.counts())
        if code == "requested":
            held = self._held.get(job_id)
            if held is not None:
                return held[0]
        return self._from_job(sj.job)

    async def retry(self, job_id: str) -> JobRecord:
        delay = RETRY_BACKOFF[0]
        while True:
            try:
                rec = self._from_job(await self.state.retry(job_id))
                self._refresh(await self.state.counts())
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
        return (0, 0, 0) if self._counts is None else self._counts.queued

    def counts_now(self) -> Counts | None:
        return self._counts
