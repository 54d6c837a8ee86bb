"""A hypothesis state machine that runs the queue beside a plain Python model of it.

Rules enqueue (with and without ids, every priority, with delays), cancel, retry, let
running jobs end (each handler waits until the machine says "succeed" or "fail"),
advance the clock, and, with the SQLite store, close the queue and open it again.  After
every rule the queue must agree with the model, through the public API only:

- every job's status and attempts (``list_jobs``), results and errors;
- the gauges (queued per priority, scheduled, processing, busy workers) and the totals
  since the queue opened (enqueued, started, completed, failed, retried, cancelled);
- each job's handler ran exactly as often as the model started it: nothing is lost and
  nothing runs twice (nothing crashes here).

How it runs.  The queue lives in ``trio.run`` in a thread of its own, on a
``MockClock`` that moves only when a rule moves it; rules call into that thread with
``trio.from_thread.run`` and then wait until the queue is quiet (every task blocked and no
store thread at work).  Time, not threads, decides what happens, so a run is repeatable.
The same call then reads the queue back (jobs, metrics, handler runs): nothing can change
it until the next call, so the rule's own checks and the invariant use that one reading
(one trip into the queue's thread for a rule, where there were three or four: each trip
costs two thread switches, more than most rules' work).  The SQLite store lives in RAM
(``/dev/shm`` where there is one): the machine checks what the queue does, not the disk.

What the model leaves open.  Which worker runs a job never matters.  The picker between
priorities is the documented smooth weighted round robin (docs/architecture.md), so the
model knows which priority each pick serves.  Two things it does not pin down, because
the API does not: the order of jobs of one priority that became ready at the same
instant (due at the same time, or recovered by a reopen), and the picks right after a
reopen (the recovery may load priorities one by one).  There the model keeps a *group*
of candidates and learns which were picked by looking, checking that the picks were the
right number and from the front of their queue.  After a reopen the picker's credit is
unknown until a worker finds nothing to do, which clears it.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import trioqueue
from trioqueue import (
    DuplicateJob,
    InvalidTransition,
    Job,
    JobNotFound,
    JobQueue,
    JobStatus,
    QueueConfig,
    TaskRegistry,
)

UNIT = 5.0
"""Seconds: delays and backoff are multiples of this, and the clock moves by it."""
MARGIN = 1e-6
"""The clock is moved this far past a due time, so that float rounding of the due time
(stored as wall-clock seconds, see :class:`Model`) cannot leave a job not yet due."""
WEIGHTS = (10, 3, 1)
LABELS = ("high", "medium", "low")
Q, S, P = JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.PROCESSING
C, F, X = JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED
IDS = ("a", "b", "c", "d", "e")
"""Ids given to enqueue (others are generated), so repeats and clashes happen."""
STORE_DIR = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
"""Where the stores go: a tmpfs, so that SQLite's fsyncs (creating the file, the checkpoint
at every close) cost nothing; the default temporary directory where there is none."""


def backoff(attempt: int) -> float:
    """The config's policy: base UNIT, factor 2, at most 2 UNIT, no jitter."""
    return min(2 * UNIT, UNIT * 2.0 ** (attempt - 1))


# --------------------------------------------------------------------------- the model


@dataclass
class MJob:
    id: str
    payload: int
    priority: int
    max_retries: int
    status: JobStatus
    attempts: int = 0
    scheduled_for: float | None = None
    """Wall-clock seconds, as ``Job.scheduled_for`` says, while SCHEDULED."""
    runs: int = 0
    """Attempts started over the job's whole life (retry() resets ``attempts``)."""
    error: str | None = None
    """The last failure: kept through retry() and later success, as ``Job.error`` is."""


@dataclass
class Model:
    """The queue as a plain data structure.

    Time: ``now`` is trio's clock.  The queue keeps due times as wall-clock seconds
    (``Job.scheduled_for``) and maps its clock to the wall clock with an offset fixed
    when it opens (``wall``: the ``at`` of an event minus trio's time).  On the mock
    clock the two drift apart, so after a reopen the same stored due time falls at
    another trio time: ``scheduled_for - wall`` with the new offset.  Due times are read
    from the queue's snapshots and checked against ``now + wall + delay``.
    """

    workers: int
    now: float = 0.0
    wall: float = 0.0
    jobs: dict[str, MJob] = field(default_factory=dict)
    ready: list[list[list[str]]] = field(default_factory=lambda: [[], [], []])
    """Per priority, groups in order; the jobs of one group in any order."""
    processing: set[str] = field(default_factory=set)
    credit: list[int] = field(default_factory=lambda: [0, 0, 0])
    picker_known: bool = True
    counts: Counter[str] = field(default_factory=Counter)
    """Totals since the queue opened."""
    picks: list[int] = field(default_factory=lambda: [0, 0, 0])
    """Picks per priority not yet matched to jobs (known picker)."""
    blind_picks: int = 0
    """Picks of any priority not yet matched to jobs (unknown picker)."""

    def queued(self, p: int) -> int:
        return sum(len(g) for g in self.ready[p])

    def free(self) -> int:
        return self.workers - len(self.processing) - sum(self.picks) - self.blind_picks

    def make_ready(self, ids: list[str]) -> None:
        """Jobs that became QUEUED at one instant: one group per priority."""
        by_priority: list[list[str]] = [[], [], []]
        for job_id in ids:
            job = self.jobs[job_id]
            job.status, job.scheduled_for = Q, None
            by_priority[job.priority].append(job_id)
        for p, group in enumerate(by_priority):
            if group:
                self.ready[p].append(group)

    def due(self, job: MJob) -> float:
        assert job.scheduled_for is not None
        return job.scheduled_for - self.wall

    def unready(self, job_id: str) -> None:
        p = self.jobs[job_id].priority
        for group in self.ready[p]:
            if job_id in group:
                group.remove(job_id)
        self.ready[p] = [g for g in self.ready[p] if g]

    def pick(self, waiting: list[int]) -> int:
        """The documented picker over how many jobs wait per priority."""
        have = [p for p in range(3) if waiting[p]]
        if len(have) == 1:
            self.credit = [0, 0, 0]
            return have[0]
        for p in range(3):
            if p in have:
                self.credit[p] += WEIGHTS[p]
            else:
                self.credit[p] = 0
        best = max(have, key=lambda p: (self.credit[p], -p))
        self.credit[best] -= sum(WEIGHTS[p] for p in have)
        return best

    def dispatch(self) -> None:
        """Free workers take jobs while there are any (matched to jobs by resolve())."""
        waiting = [self.queued(p) for p in range(3)]
        while self.free() > 0 and any(waiting):
            if self.picker_known:
                p = self.pick(waiting)
                self.picks[p] += 1
                waiting[p] -= 1
            else:
                self.blind_picks += 1
                waiting[waiting.index(next(w for w in waiting if w))] -= 1

    def resolve(self, actual: dict[str, Job]) -> None:
        """Match this step's picks to the jobs the queue started."""
        started = [j for j in self.jobs.values() if j.status is Q
                   and actual[j.id].status is P]
        per_priority = [[j.id for j in started if j.priority == p] for p in range(3)]
        if self.picker_known:
            got = [len(ids) for ids in per_priority]
            assert got == self.picks, f"picks per priority: queue {got}, model {self.picks}"
        else:
            assert len(started) == self.blind_picks, (
                f"{len(started)} jobs started, the model expected {self.blind_picks}"
            )
        for p, ids in enumerate(per_priority):
            chosen = set(ids)
            while chosen:
                head = self.ready[p][0]
                if set(head) <= chosen:
                    chosen -= set(head)
                    self.ready[p].pop(0)
                else:
                    assert chosen <= set(head), (
                        f"{sorted(chosen)} started ahead of {head} ({LABELS[p]})"
                    )
                    head[:] = [i for i in head if i not in chosen]
                    chosen = set()
            for job_id in ids:
                job = self.jobs[job_id]
                job.status = P
                job.attempts += 1
                job.runs += 1
                self.processing.add(job_id)
                self.counts["started"] += 1
        self.picks = [0, 0, 0]
        self.blind_picks = 0
        if self.free() > 0 and not any(self.queued(p) for p in range(3)):
            # A worker found nothing to take: that pick cleared every credit.
            self.credit = [0, 0, 0]
            self.picker_known = True


# --------------------------------------------------------------------------- the queue


IDLE = 0.0002
"""Real seconds every task must have been blocked before :func:`guarded` looks."""
STUCK = 2000
"""Looks in a row at a queue where nothing can happen any more before a step that has
not returned is called a deadlock (instead of a test that hangs)."""


class Deadlock(Exception):
    pass


async def settle() -> None:
    """Every task blocked and no ``trio.to_thread`` thread at work."""
    threads = trio.to_thread.current_default_thread_limiter()
    await trio.testing.wait_all_tasks_blocked()
    while threads.borrowed_tokens:
        await trio.testing.wait_all_tasks_blocked(IDLE / 2)


async def guarded(fn: Any, *args: Any, then: Any = None) -> Any:
    """``await fn(*args)``, then :func:`settle`, then ``await then()`` if given; raise
    :class:`Deadlock` if the queue goes quiet (every task blocked, no thread at work) while
    ``fn`` has not returned: the clock only moves when a rule moves it, so nothing would
    ever wake it."""
    result: list[Any] = []
    threads = trio.to_thread.current_default_thread_limiter()

    async def run(cancel_scope: trio.CancelScope) -> None:
        result.append(await fn(*args))
        await settle()
        if then is not None:
            await then()
        cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, nursery.cancel_scope)
        stuck = 0
        while True:
            await trio.testing.wait_all_tasks_blocked(IDLE)
            stuck = 0 if threads.borrowed_tokens else stuck + 1
            if stuck >= STUCK:
                raise Deadlock(f"{fn.__name__}{args!r} waits for something that never comes")
    return result[0]


@attrs.define
class Control:
    fail: bool = False
    go: trio.Event = attrs.Factory(trio.Event)


@attrs.frozen
class Seen:
    """The queue read back through the public API once it is quiet."""

    jobs: dict[str, Job]
    metrics: trioqueue.Metrics
    invocations: dict[str, int]
    """Handler runs per job id."""


class QueueThread:
    """A queue in ``trio.run`` in a thread, opened, closed and opened again on request."""

    def __init__(self, config: QueueConfig) -> None:
        self.config = config
        self.clock = trio.testing.MockClock()
        self.registry = TaskRegistry()
        self.controls: dict[str, Control] = {}
        self.invocations: Counter[str] = Counter()
        self.q: JobQueue | None = None
        self.go = trio.Event()
        self.opened = trio.Event()
        self.closing = trio.Event()
        self.closed = trio.Event()
        self.stopping = False
        self.token: trio.lowlevel.TrioToken | None = None
        self.started = threading.Event()
        self.error: BaseException | None = None
        self.seen: Seen | None = None
        """The queue as the last :meth:`run` left it (``None`` while closed)."""

        @self.registry.task(name="work")
        async def work(job: Job) -> dict[str, int]:
            self.invocations[job.id] += 1
            control = self.controls[job.id] = Control()
            try:
                await control.go.wait()
            finally:
                if self.controls.get(job.id) is control:
                    del self.controls[job.id]
            if control.fail:
                raise RuntimeError(f"fail {job.attempts}")
            return {"attempt": job.attempts}

        self.thread = threading.Thread(target=self.thread_main, name="trioqueue-model", daemon=True)
        self.thread.start()
        self.started.wait()
        if self.error is not None:
            raise self.error

    def thread_main(self) -> None:
        try:
            trio.run(self.main, clock=self.clock)
        except BaseException as exc:  # re-raised in the hypothesis thread
            self.error = exc
        finally:
            self.started.set()

    async def main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self.started.set()
        while True:
            await self.go.wait()
            self.go = trio.Event()
            if self.stopping:
                return
            async with trioqueue.open_queue(self.registry, self.config) as q:
                self.q = q
                self.opened.set()
                await self.closing.wait()
                self.closing = trio.Event()
            self.q = None
            self.closed.set()

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``await fn(queue, *args)`` in the queue's thread, as :meth:`run` does."""

        assert self.q is not None
        return self.run(fn, self.q, *args)

    def run(self, fn: Any, *args: Any) -> Any:
        """Run ``await fn(*args)`` in the queue's thread, wait until quiet, then read the
        queue back into :attr:`seen` (one trip into the thread)."""
        if self.error is not None:
            raise self.error
        self.seen = None
        return trio.from_thread.run(partial(guarded, fn, *args, then=self.look),
                                    trio_token=self.token)

    async def look(self) -> None:
        """Read the queue back into :attr:`seen` (in the queue's thread, once quiet)."""
        if self.q is None:
            self.seen = None
            return
        jobs = await self.q.list_jobs(limit=100_000)
        self.seen = Seen({job.id: job for job in jobs}, self.q.metrics(),
                         dict(self.invocations))

    async def open(self) -> tuple[float, float]:
        """Open the queue; once it is quiet, return trio's time and :func:`_wall_offset`."""
        self.opened = trio.Event()
        self.go.set()
        await self.opened.wait()
        await settle()
        assert self.q is not None
        return trio.current_time(), await _wall_offset(self.q)

    async def close(self) -> None:
        self.closed = trio.Event()
        self.closing.set()
        await self.closed.wait()

    async def reopen(self) -> float:
        """Close, and once quiet open again; returns the new :func:`_wall_offset`."""
        await self.close()
        await settle()
        return (await self.open())[1]

    def stop(self) -> None:
        try:
            if self.error is None and self.thread.is_alive():

                async def stop() -> None:
                    if self.q is not None:
                        await guarded(self.close)
                    # Not guarded: the run ends right after this returns.
                    self.stopping = True
                    self.go.set()

                trio.from_thread.run(stop, trio_token=self.token)
        finally:
            self.thread.join(30)
        assert not self.thread.is_alive(), "the queue's trio.run did not end"
        if self.error is not None:
            raise self.error

    async def advance(self, to: float) -> float:
        self.clock.jump(to - trio.current_time())
        await settle()  # the due jobs queued and taken before the time is read
        return trio.current_time()


# --------------------------------------------------------------------------- the machine


class QueueMachine(RuleBasedStateMachine):
    persist = False

    def __init__(self) -> None:
        super().__init__()
        self.model: Model | None = None
        self.queue: QueueThread | None = None
        self.tmp: str | None = None

    @initialize(workers=st.integers(1, 3), durability=st.sampled_from(["sync", "batch"]))
    def open_queue(self, workers: int, durability: str) -> None:
        store: dict[str, Any] = {}
        if self.persist:
            self.tmp = tempfile.mkdtemp(prefix="trioqueue-model-", dir=STORE_DIR)
            store = {"persist_path": Path(self.tmp) / "q.db", "durability": durability}
        config = QueueConfig(
            workers=workers, capacity=1000, retry_base=UNIT, retry_factor=2.0,
            retry_max=2 * UNIT, retry_jitter=0.0, shutdown_timeout=0.0,
            result_ttl=1e9, switch_interval=None, **store,
        )
        self.model = Model(workers=workers)
        self.queue = QueueThread(config)
        self.model.now, self.model.wall = self.queue.run(self.queue.open)

    def teardown(self) -> None:
        try:
            if self.queue is not None:
                self.queue.stop()
        finally:
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------------ helpers

    @property
    def m(self) -> Model:
        assert self.model is not None
        return self.model

    @property
    def t(self) -> QueueThread:
        assert self.queue is not None
        return self.queue

    @property
    def seen(self) -> Seen:
        """The queue after the last call into it: every rule ends with one."""
        assert self.t.seen is not None, "the queue was not read back after the last call"
        return self.t.seen

    def look(self) -> dict[str, Job]:
        return self.seen.jobs

    def after_step(self) -> None:
        """The model's workers take jobs; match the picks to what the queue did."""
        self.m.dispatch()
        self.m.resolve(self.look())

    def pick_job(self, index: int, statuses: tuple[JobStatus, ...] | None = None) -> str:
        ids = [j.id for j in self.m.jobs.values() if statuses is None or j.status in statuses]
        return ids[index % len(ids)]

    # ------------------------------------------------------------------ rules

    @rule(
        job_id=st.none() | st.sampled_from(IDS),
        payload=st.integers(0, 2),
        priority=st.integers(0, 2),
        delay=st.sampled_from([0.0, 0.0, UNIT, 2 * UNIT]),
        max_retries=st.integers(0, 2),
        nowait=st.booleans(),
    )
    def enqueue(self, job_id: str | None, payload: int, priority: int, delay: float,
                max_retries: int, nowait: bool) -> None:
        kwargs = {"payload": payload, "priority": LABELS[priority], "job_id": job_id,
                  "delay": delay, "max_retries": max_retries}
        existing = self.m.jobs.get(job_id) if job_id is not None else None
        if self.persist and job_id is not None:
            # enqueue_nowait looks for the id in memory only, and finished jobs leave
            # memory at a reopen: tests/behaviour/test_reopen.py has that case.
            nowait = False
        got = self.t.call(_enqueue, nowait, kwargs)
        if existing is not None:
            if existing.payload != payload:
                assert isinstance(got, DuplicateJob), got
            else:
                assert isinstance(got, Job), got
                assert (got.id, got.status, got.attempts) == (
                    existing.id, existing.status, existing.attempts,
                )
            self.after_step()
            return
        assert isinstance(got, Job), got
        assert got.status is (S if delay else Q)
        assert (got.attempts, got.payload, got.max_retries) == (0, payload, max_retries)
        assert job_id is None or got.id == job_id
        job = MJob(got.id, payload, priority, max_retries, S if delay else Q)
        self.m.jobs[got.id] = job
        self.m.counts["enqueued"] += 1
        if delay:
            assert got.scheduled_for == pytest.approx(self.m.now + self.m.wall + delay,
                                                      abs=MARGIN)
            job.scheduled_for = got.scheduled_for
        else:
            self.m.make_ready([got.id])
        self.after_step()

    @precondition(lambda self: self.model is not None and self.model.processing)
    @rule(index=st.integers(0, 100), fail=st.booleans())
    def finish(self, index: int, fail: bool) -> None:
        job_id = sorted(self.m.processing)[index % len(self.m.processing)]
        self.t.call(_release, self.t, job_id, fail)
        job = self.m.jobs[job_id]
        self.m.processing.remove(job_id)
        if fail:
            job.error = f"RuntimeError: fail {job.attempts}"
        if not fail:
            job.status = C
            self.m.counts["completed"] += 1
        elif job.attempts <= job.max_retries:
            job.status = S
            job.scheduled_for = self.look()[job_id].scheduled_for
            assert job.scheduled_for == pytest.approx(
                self.m.now + self.m.wall + backoff(job.attempts), abs=MARGIN
            )
            self.m.counts["retried"] += 1
        else:
            job.status = F
            self.m.counts["failed"] += 1
        self.after_step()

    @precondition(lambda self: self.model is not None)
    @rule(index=st.none() | st.integers(0, 100))
    def cancel(self, index: int | None) -> None:
        if index is None or not self.m.jobs:
            assert isinstance(self.t.call(_cancel, "no-such-job"), JobNotFound)
            return
        job_id = self.pick_job(index)
        job = self.m.jobs[job_id]
        got = self.t.call(_cancel, job_id)
        if job.status.terminal:
            assert isinstance(got, InvalidTransition), got
        else:
            assert isinstance(got, Job), got
            assert (got.status, got.attempts) == (X, job.attempts)
            if job.status is Q:
                self.m.unready(job_id)
            elif job.status is P:
                self.m.processing.remove(job_id)
            job.status, job.scheduled_for = X, None
            self.m.counts["cancelled"] += 1
        self.after_step()

    @precondition(lambda self: self.model is not None and self.model.jobs)
    @rule(index=st.integers(0, 100), finished=st.booleans())
    def retry(self, index: int, finished: bool) -> None:
        statuses = (F, X) if finished and any(
            j.status in (F, X) for j in self.m.jobs.values()) else None
        job_id = self.pick_job(index, statuses)
        job = self.m.jobs[job_id]
        got = self.t.call(_retry, job_id)
        if job.status in (F, X):
            assert isinstance(got, Job), got
            assert (got.status, got.attempts) == (Q, 0)
            job.attempts = 0
            self.m.make_ready([job_id])
        else:
            assert isinstance(got, InvalidTransition), got
        self.after_step()

    @precondition(lambda self: self.model is not None)
    @rule(units=st.integers(1, 3))
    def advance(self, units: int) -> None:
        m = self.m
        target = m.now + units * UNIT
        while True:
            due = min((m.due(j) for j in m.jobs.values() if j.status is S), default=math.inf)
            if due > target:
                break
            # To the next due time: every job due by then is queued at once.
            m.now = self.t.run(self.t.advance, max(due + MARGIN, m.now))
            m.make_ready([j.id for j in m.jobs.values() if j.status is S and m.due(j) <= m.now])
            self.after_step()
        if target > m.now:
            m.now = self.t.run(self.t.advance, target)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def agrees_with_the_model(self) -> None:
        if self.model is None:
            return
        m = self.m
        actual = self.look()
        assert set(actual) == set(m.jobs), "jobs lost or made up"
        for job in m.jobs.values():
            got = actual[job.id]
            assert (got.status, got.attempts) == (job.status, job.attempts), (job, got)
            assert got.priority == job.priority
            assert got.payload == job.payload
            assert got.result == ({"attempt": job.attempts} if job.status is C else None)
            if job.error is not None and job.error.startswith("Interrupted: "):
                assert got.error is not None
                assert got.error.startswith(job.error), got.error  # "... (max_retries=N)"
            else:
                assert got.error == job.error
            if job.status is S:
                assert got.scheduled_for == job.scheduled_for
        metrics, invocations = self.seen.metrics, self.seen.invocations
        queued = {LABELS[p]: m.queued(p) for p in range(3)}
        scheduled = sum(1 for j in m.jobs.values() if j.status is S)
        assert metrics.queued == queued
        assert metrics.scheduled == scheduled
        assert (metrics.processing, metrics.busy_workers) == (len(m.processing),) * 2
        for key in ("enqueued", "started", "completed", "failed", "retried", "cancelled"):
            assert getattr(metrics, key) == m.counts[key], key
        assert metrics.rejected == 0
        # Each start ran the handler once: nothing lost, nothing run twice.
        assert invocations == {j.id: j.runs for j in m.jobs.values() if j.runs}


class StoreMachine(QueueMachine):
    persist = True

    @precondition(lambda self: self.model is not None)
    @rule()
    def reopen(self) -> None:
        """Close (jobs still running are cut off at once: queued, their attempt counted)
        and open the same store again."""
        m = self.m
        m.wall = self.t.run(self.t.reopen)
        for job_id in m.processing:
            m.jobs[job_id].status = Q
        m.processing.clear()
        m.counts.clear()
        m.credit = [0, 0, 0]
        m.picker_known = False
        queued = []
        for job in m.jobs.values():
            if job.status is not Q:
                continue
            if job.attempts > job.max_retries:
                # Cut off at close with no attempts left: it was queued again (attempt
                # counted), and the store's recovery ends it FAILED (docs/persistence.md).
                job.status = F
                job.error = f"Interrupted: the queue stopped while attempt {job.attempts} ran"
                m.counts["failed"] += 1
            else:
                queued.append(job.id)
        # Recovered queued jobs: one group per priority, in an order the API leaves open.
        m.ready = [[], [], []]
        m.make_ready(queued)
        self.after_step()


# --------------------------------------------------------------------------- steps


async def _wall_offset(q: JobQueue) -> float:
    """The queue's wall clock minus trio's clock (a ``metrics`` event comes at once)."""
    async with q.subscribe(buffer=1, metrics=True) as events:
        event = events.receive_nowait()
    return event.at - trio.current_time()


async def _enqueue(q: JobQueue, nowait: bool, kwargs: dict[str, Any]) -> Job | Exception:
    kwargs = dict(kwargs)
    payload = kwargs.pop("payload")
    try:
        if nowait:
            return q.enqueue_nowait("work", payload, **kwargs)
        return await q.enqueue("work", payload, **kwargs)
    except DuplicateJob as exc:
        return exc


async def _release(q: JobQueue, queue: QueueThread, job_id: str, fail: bool) -> None:
    control = queue.controls[job_id]  # the model says it runs: its handler must be waiting
    control.fail = fail
    control.go.set()


async def _cancel(q: JobQueue, job_id: str) -> Job | Exception:
    try:
        return await q.cancel(job_id)
    except (InvalidTransition, JobNotFound) as exc:
        return exc


async def _retry(q: JobQueue, job_id: str) -> Job | Exception:
    try:
        return await q.retry(job_id)
    except InvalidTransition as exc:
        return exc


QueueMachine.TestCase.settings = settings(
    settings.default, max_examples=150, stateful_step_count=30
)
StoreMachine.TestCase.settings = settings(
    settings.default, max_examples=100, stateful_step_count=30
)
TestMemoryQueueAgreesWithTheModel = QueueMachine.TestCase
TestStoreQueueAgreesWithTheModel = StoreMachine.TestCase
