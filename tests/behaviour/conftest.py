"""The behaviour suite: what every backend must do, written against the public API only.

Every test takes the ``backend`` fixture, parametrised over :data:`BACKENDS`, and opens
its queue with ``backend.open(registry, **config)``.  Adding a backend is one entry in
:data:`BACKENDS`: a function from the test's ``tmp_path`` to the ``QueueConfig`` keyword
arguments that select it.  The ``redis`` entry is there already; it skips until
``QueueConfig`` has a ``redis_url`` field, so the suite runs on Redis the day it lands.

Time.  The local backends run on trio's mock clock, so times asserted here are exact.
pytest-trio's ``autojump_clock`` does not do for the SQLite store: it jumps whenever every
task is blocked, and a task waiting for the store's writer thread counts as blocked, so
the clock would leap over deadlines (a retry's due time, the store's own watchdog) while a
commit is under way in real time.  The ``clock`` fixture here is a ``MockClock`` that
does not move by itself, and the ``backend`` fixture starts :func:`autojump`, which
moves it to the next deadline only when every task is blocked *and* no thread started by
``trio.to_thread`` is at work (the default thread limiter lends no token).  Time then
passes only when nothing could happen before the next deadline, whatever the threads'
real speed; a guard such as ``move_on_after(60)`` is reached only when nothing else can
happen, and a test that would wait forever (every task blocked, no deadline, no thread)
fails with :class:`Deadlock` instead of hanging.  Tests read times from job snapshots and
handlers, and wait for jobs and handlers (or :func:`settle`) rather than sleeping for
"long enough".

A backend whose delays do not follow trio's clock (Redis keeps them on the server's clock)
says ``virtual_time=False``: ``clock`` is then ``None`` (trio's real clock) and the tests
that need virtual time skip there (``backend.needs_virtual_time()``).  For such a
backend :func:`settle` knows nothing of replies still on the wire: a test that asserts
something *happened* after ``settle()`` may need a wait of its own there.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trioqueue
from trioqueue import Job, JobQueue, Priority, QueueConfig, TaskRegistry

from ..channels import drain as drain

REDIS_URL = os.environ.get("TRIOQUEUE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
"""The Redis the suite uses once the Redis backend exists (a database of its own)."""


@attrs.frozen
class BackendSpec:
    kwargs: Callable[[Path], dict[str, Any]]
    """``tmp_path`` -> the ``QueueConfig`` keyword arguments that select the backend."""
    persistent: bool = False
    """Jobs outlive the queue: a queue opened again on the same kwargs sees them."""
    virtual_time: bool = True
    """Delays and timeouts follow trio's clock (the mock clock works)."""


def _redis(tmp_path: Path) -> dict[str, Any]:
    if "redis_url" not in attrs.fields_dict(QueueConfig):
        pytest.skip("Redis backend not built yet")
    # A queue of its own per test: nothing seen here was left by another test; the
    # ``backend`` fixture deletes its keys when the test ends.  prefetch=0: exact fairness.
    # shutdown_timeout 0.3 s: time is real here, and a failing test's held handler would
    # keep its shutdown waiting the default 30 s (a test's own value wins).
    return {"redis_url": REDIS_URL, "queue_name": f"behaviour-{uuid.uuid4().hex}",
            "prefetch": 0, "shutdown_timeout": 0.3}


_POLLING = ("producers waiting for room on Redis poll, in no order: whichever looks first "
            "after room appears gets in (here a later producer can take the room, and the "
            "test then waits for its 60 s guard), so it is skipped on Redis")
_SETTLE = ("settle() knows nothing of replies on the wire: on Redis the worker may not have "
           "claimed its job yet when the gauges are read; timing decides, so not strict")
_STREAM = ("events on Redis come from the queue's stream: a subscriber sees a change after "
           "a round trip, not when the call that made it returns")
_TOTALS = ("metrics on Redis count the queue's jobs since the queue was created (the "
           "cluster's counters), not this process's since it opened")
_UNSEEN_ID = ("enqueue_nowait on Redis answers a given id from what this node has seen: an id "
              "it has not seen (here: stored before this node opened) is checked in Redis "
              "after the call returns, so the call returns the new job, not the stored one "
              "(the repeat is then dropped; another job's id is logged as an error)")
REDIS_SKIP: dict[str, str] = {
    "test_producers_of_the_same_id_do_not_swallow_room_meant_for_others": _POLLING,
}
"""Behaviour tests that do not apply to Redis, with why (skipped for ``redis`` only)."""
REDIS_XFAIL: dict[str, str] = {
    "test_gauges_count_the_recovered_queued_and_running_jobs": _SETTLE,
    "test_a_slow_subscriber_is_told_how_many_it_lost_and_never_slows_the_queue": _STREAM,
    "test_ids_stay_taken_and_finished_jobs_can_be_retried_after_reopen": _TOTALS,
    "test_enqueue_nowait_with_the_id_of_a_finished_job_is_idempotent_after_reopen": _UNSEEN_ID,
}
"""Behaviour tests the Redis backend does not pass yet, each with what is missing: marked
``xfail(strict=True)`` for the ``redis`` parameter only (the ``backend`` fixture does it),
so a test that starts passing fails until its entry goes; the ``_SETTLE`` one is not
strict (timing decides: it passes now and then)."""


BACKENDS: dict[str, BackendSpec] = {
    "memory": BackendSpec(lambda tmp: {}),
    "sqlite": BackendSpec(
        lambda tmp: {"persist_path": tmp / "queue.db", "durability": "sync"}, persistent=True
    ),
    "sqlite-batch": BackendSpec(
        lambda tmp: {"persist_path": tmp / "queue.db", "durability": "batch"}, persistent=True
    ),
    "redis": BackendSpec(_redis, persistent=True, virtual_time=False),
}

TEST_DEFAULTS: dict[str, Any] = {"retry_jitter": 0.0}
"""Config every test starts from (exact backoff); a test's own keywords win."""


@attrs.define
class Backend:
    """One backend under test: its id, its config keywords, what it promises."""

    id: str
    kwargs: dict[str, Any]
    persistent: bool
    virtual_time: bool

    def config(self, **overrides: Any) -> QueueConfig:
        return QueueConfig(**{**TEST_DEFAULTS, **self.kwargs, **overrides})

    @asynccontextmanager
    async def open(self, registry: TaskRegistry, **overrides: Any) -> AsyncIterator[JobQueue]:
        async with trioqueue.open_queue(registry, self.config(**overrides)) as q:
            yield q

    def needs_virtual_time(self) -> None:
        if not self.virtual_time:
            pytest.skip(f"{self.id}: exact times need delays on trio's mock clock")


@pytest.fixture(params=list(BACKENDS))
def backend_config(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """The ``QueueConfig`` keyword arguments of the backend under test."""
    spec = BACKENDS[request.param]
    return spec.kwargs(tmp_path)


@pytest.fixture
def clock(request: pytest.FixtureRequest) -> trio.testing.MockClock | None:
    """A mock clock for backends whose time is trio's (moved by :func:`autojump`, which
    the ``backend`` fixture starts); ``None``, trio's real clock, otherwise.  Every test
    of the suite takes it: pytest-trio runs a test on the clock among its arguments."""
    spec = BACKENDS[request.node.callspec.params["backend_config"]]
    return trio.testing.MockClock() if spec.virtual_time else None


@pytest.fixture
async def backend(
    request: pytest.FixtureRequest,
    backend_config: dict[str, Any],
    clock: trio.testing.MockClock | None,
    nursery: trio.Nursery,
) -> AsyncIterator[Backend]:
    backend_id = request.node.callspec.params["backend_config"]
    spec = BACKENDS[backend_id]
    if clock is not None:
        if trio.lowlevel.current_clock() is not clock:
            pytest.fail("a behaviour test must take the clock fixture as an argument")
        nursery.start_soon(autojump, clock)
    if backend_id == "redis":
        if request.node.originalname in REDIS_SKIP:
            pytest.skip(f"redis: {REDIS_SKIP[request.node.originalname]}")
        reason = REDIS_XFAIL.get(request.node.originalname)
        if reason is not None:
            request.node.add_marker(pytest.mark.xfail(
                strict=reason != _SETTLE, reason=f"redis: {reason}"))
    try:
        yield Backend(backend_id, backend_config, spec.persistent, spec.virtual_time)
    finally:
        if "redis_url" in backend_config:
            await _delete_redis_queue(backend_config["redis_url"],
                                      backend_config["queue_name"])


async def _delete_redis_queue(url: str, queue: str) -> None:
    """Delete every key of the test's queue (``tq:{<queue>}:*``)."""
    import coredis

    with trio.CancelScope(shield=True):
        async with coredis.Redis.from_url(url, decode_responses=True, pool_timeout=5.0,
                                          stream_timeout=15.0) as client:
            keys = [k async for k in client.scan_iter(match=f"tq:{{{queue}}}:*", count=1000)]
            for i in range(0, len(keys), 500):
                await client.delete(keys[i : i + 500])


def real_time_scale(clock: trio.testing.MockClock | None) -> float:
    """1 on the mock clock; 0.1 where time is real (Redis): backoffs and delays that only
    need to be there, not to last, cost a tenth of the time."""
    return 1.0 if clock is not None else 0.1


IDLE = 0.0002
"""Seconds (real) every task must have been blocked before :func:`autojump` looks: more
than zero, so that a test's own ``wait_all_tasks_blocked()`` always wakes first."""


async def settle() -> None:
    """Return once every other task is blocked and no ``trio.to_thread`` thread is at
    work (the store's reads and writes run in threads): nothing more happens until the
    clock moves or someone acts.  ``wait_all_tasks_blocked()`` alone would return while
    a task waits for a thread."""
    threads = trio.to_thread.current_default_thread_limiter()
    await trio.testing.wait_all_tasks_blocked()
    while threads.borrowed_tokens:
        await trio.testing.wait_all_tasks_blocked(IDLE / 2)


STUCK = 2000
"""Looks in a row that find every task blocked, no thread at work and no deadline: then
nothing can ever happen again (these backends wait for nothing outside the process), and
:func:`autojump` fails the test instead of letting it hang."""


class Deadlock(Exception):
    pass


async def autojump(clock: trio.testing.MockClock) -> None:
    """Move ``clock`` to the next deadline whenever every other task is blocked and no
    ``trio.to_thread`` thread is at work; while one is, wait for it in real time."""
    threads = trio.to_thread.current_default_thread_limiter()
    stuck = 0
    while True:
        await trio.testing.wait_all_tasks_blocked(IDLE)
        if threads.borrowed_tokens:
            stuck = 0
            continue
        ahead = trio.lowlevel.current_statistics().seconds_to_next_deadline
        if 0 < ahead < math.inf:
            clock.jump(ahead)
            stuck = 0
        elif ahead == math.inf:
            stuck += 1
            if stuck >= STUCK:
                raise Deadlock(
                    "every task is blocked with no deadline and no thread at work: "
                    "the test would wait forever"
                )


# --------------------------------------------------------------------------- tasks


@attrs.frozen
class Run:
    task: str
    job_id: str
    payload: Any
    attempt: int
    at: float
    """``trio.current_time()`` when the handler started."""


class Harness:
    """A registry of test tasks that record each run, and gates that hold a handler.

    - ``echo``: returns its payload.
    - ``gated``: payload is a gate name; waits until the test opens that gate.
    - ``fail``: always raises ``RuntimeError("boom <attempt>")``; ``max_retries=3``.
    - ``flaky``: payload ``{"fail_times": n}``; its first ``n`` attempts raise.
    - ``sleep``: sleeps ``payload`` seconds and returns it.
    - ``bad_result``: returns a value that is not JSON.
    - ``tuned``: defaults LOW priority, ``max_retries=7``, ``timeout=9``.
    """

    def __init__(self) -> None:
        self.registry = TaskRegistry()
        self.runs: list[Run] = []
        self.gates: dict[str, trio.Event] = {}
        self.entered_events: dict[str, trio.Event] = {}
        self.interrupted: list[str] = []
        """Ids of jobs whose handler saw ``trio.Cancelled``."""
        reg = self.registry

        def record(job: Job) -> None:
            self.runs.append(Run(job.task, job.id, job.payload, job.attempts,
                                 trio.current_time()))

        @reg.task
        async def echo(job: Job) -> Any:
            record(job)
            return job.payload

        @reg.task
        async def gated(job: Job) -> str:
            record(job)
            self.event(self.entered_events, job.payload).set()
            try:
                await self.event(self.gates, job.payload).wait()
            except trio.Cancelled:
                self.interrupted.append(job.id)
                raise
            return "opened"

        @reg.task(max_retries=3)
        async def fail(job: Job) -> None:
            record(job)
            raise RuntimeError(f"boom {job.attempts}")

        @reg.task
        async def flaky(job: Job) -> str:
            record(job)
            if job.attempts <= job.payload["fail_times"]:
                raise RuntimeError(f"flaky {job.attempts}")
            return "ok"

        @reg.task
        async def sleep(job: Job) -> float:
            record(job)
            await trio.sleep(job.payload)
            return float(job.payload)

        @reg.task
        async def bad_result(job: Job) -> object:
            record(job)
            return {1, 2}

        @reg.task(priority=Priority.LOW, max_retries=7, timeout=9.0)
        async def tuned(job: Job) -> None:
            record(job)

    @staticmethod
    def event(table: dict[str, trio.Event], name: str) -> trio.Event:
        event = table.get(name)
        if event is None:
            event = table[name] = trio.Event()
        return event

    def open_gate(self, name: str) -> None:
        self.event(self.gates, name).set()

    async def entered(self, name: str) -> None:
        """Return once a ``gated`` job with this gate name is running."""
        await self.event(self.entered_events, name).wait()

    def started(self, task: str | None = None) -> list[str]:
        """Job ids in the order their attempts started (one entry per attempt)."""
        return [r.job_id for r in self.runs if task is None or r.task == task]

    def starts_of(self, job_id: str) -> list[float]:
        return [r.at for r in self.runs if r.job_id == job_id]


@pytest.fixture
def h() -> Harness:
    return Harness()


EMPTY = {"high": 0, "medium": 0, "low": 0}
