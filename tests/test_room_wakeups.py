"""Producers waiting for room: nobody waits while there is room.

``await q.enqueue`` parks while its priority is full and is woken, one producer per job
that leaves the queue.  A woken producer may leave without taking the room it was woken
for: its id turned out to exist (the same job: returned; another: DuplicateJob), its
payload no longer serializes (InvalidJob), the store failed (StoreError), the queue is
closing.  It must then wake the next one, or that room stays empty while producers wait,
on a quiet queue forever.  The same holds for the room of new delayed jobs and for
``retry()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import example, given, settings
from hypothesis import strategies as st

import trioqueue
from tests.test_persistence import locked
from trioqueue import (
    DuplicateJob,
    InvalidJob,
    InvalidTransition,
    Job,
    QueueConfig,
    ShuttingDown,
    StoreError,
    TaskRegistry,
)
from trioqueue.testing import LocalBackend, sqlite_store

PRIORITIES = {"high": 0, "low": 2}


@pytest.mark.parametrize("n", [3, 5, 50])
async def test_enqueuers_of_one_id_all_return_once_room_appears(
    n: int, autojump_clock: Any
) -> None:
    """The reproduction: one worker held, the one place in the queue taken, ``n`` tasks
    enqueue the same id.  The first admitted, the others find it and return."""
    registry = TaskRegistry()
    gate = trio.Event()

    @registry.task
    async def hold(job: Job) -> None:
        await gate.wait()

    @registry.task
    async def ok(job: Job) -> Any:
        return job.payload

    returned: list[str] = []
    async with trioqueue.open_queue(registry, QueueConfig(workers=1, capacity=1)) as q:
        await q.enqueue("hold")
        await trio.testing.wait_all_tasks_blocked()
        q.enqueue_nowait("ok", "filler")

        async def producer() -> None:
            returned.append((await q.enqueue("ok", "same", job_id="same")).id)

        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(producer)
            await trio.testing.wait_all_tasks_blocked()
            assert returned == []  # all wait for room
            gate.set()
            await trio.testing.wait_all_tasks_blocked()
            assert returned == ["same"] * n
        assert (await q.wait("same")).status is trioqueue.JobStatus.COMPLETED
        assert LocalBackend.of(q).parked_producers() == (0, 0, 0)


async def test_producers_woken_while_the_store_fails_pass_the_room_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first woken producer's commit fails (another process holds the store locked
    past SQLite's busy timeout): its job is taken back, which frees the room again, and
    the producers after it are refused (StoreError) one by one, each waking the next."""
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT", 0.2)
    registry = TaskRegistry()
    gate = trio.Event()

    @registry.task
    async def hold(job: Job) -> None:
        await gate.wait()

    db = tmp_path / "q.db"
    config = QueueConfig(workers=1, capacity=1, persist_path=db, flush_interval=0.01)
    outcomes: list[str] = []
    async with trioqueue.open_queue(registry, config) as q:
        await q.enqueue("hold", job_id="held")
        await q.enqueue("hold", job_id="filler")

        async def producer(i: int) -> None:
            try:
                await q.enqueue("hold", job_id=f"p{i}")
                outcomes.append("accepted")  # pragma: no cover - the store is locked
            except StoreError:
                outcomes.append("refused")

        with locked(db), trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for i in range(4):
                    nursery.start_soon(producer, i)
                await trio.testing.wait_all_tasks_blocked()
                assert outcomes == []
                gate.set()  # "held" ends, "filler" starts: room for one
        assert outcomes == ["refused"] * 4


# ---------------------------------------------------------------------------- the model

CAPACITY = st.integers(min_value=1, max_value=3)
RECENT = st.integers(min_value=0, max_value=2) | st.integers(min_value=0, max_value=30)
"""Which earlier one (id, job, producer), counted from the newest."""
produce = st.tuples(
    st.just("produce"),
    st.sampled_from(sorted(PRIORITIES)),
    # new: a fresh id; same: an earlier id and payload (idempotent); clash: an earlier
    # id, another payload (DuplicateJob once that one is in); anonymous: no id
    st.sampled_from(["new", "same", "clash", "anonymous"]),
    st.booleans(),  # delayed: waits for the room of new delayed jobs instead
    RECENT,  # which earlier id "same" and "clash" take
)
# Several producers at once, of one id (crowd of "same"s, some maybe "clash"ing) or not.
crowd = st.tuples(
    st.just("crowd"),
    st.sampled_from(sorted(PRIORITIES)),
    st.lists(st.sampled_from(["same", "same", "clash", "new", "anonymous"]), min_size=2,
             max_size=6),
    st.booleans(),
)
actions = st.lists(
    st.one_of(
        produce,
        crowd,
        st.tuples(st.just("fill"), st.sampled_from(sorted(PRIORITIES)), st.booleans()),
        st.tuples(st.just("finish")),  # the running job ends: the worker takes the next
        st.tuples(st.just("finish")),
        st.tuples(st.just("cancel_job"), RECENT),  # a queued or scheduled job
        st.tuples(st.just("give_up"), RECENT),  # a waiting producer cancelled
        st.tuples(st.just("poison"), RECENT),  # its payload stops being JSON
        st.tuples(st.just("nowait"), st.sampled_from(sorted(PRIORITIES)), st.booleans()),
        st.tuples(st.just("retry"), RECENT, st.integers(1, 3)),  # of a cancelled job
    ),
    max_size=40,
)


@attrs.define(eq=False)
class Producer:
    priority: int
    delayed: bool
    payload: Any = None
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    done: bool = False


@attrs.define(eq=False)
class Model:
    """One worker, held by a job until ``finish``; producers that park for room; and
    the rule checked after every step: a priority with room has no producer waiting."""

    q: trioqueue.JobQueue
    nursery: trio.Nursery
    capacity: int
    step: list[trio.Event]
    producers: list[Producer] = attrs.field(factory=list)
    ids: list[tuple[str, Any]] = attrs.field(factory=list)
    """Every id a producer asked for, with its payload."""
    admitted: list[str] = attrs.field(factory=list)

    def check(self) -> None:
        state = LocalBackend.of(self.q)
        ready, delayed = state.ready_lengths(), state.delayed_waiting()
        for label, p in PRIORITIES.items():
            waiting = [w for w in self.producers if not w.done and w.priority == p]
            ready_room = ready[p] < self.capacity
            delay_room = delayed[p] < self.capacity
            stuck = [w for w in waiting if (delay_room if w.delayed else ready_room)]
            assert not stuck, (
                f"{len(stuck)} producer(s) of priority {label} wait while it has room "
                f"(ready {ready[p]}/{self.capacity}, delayed {delayed[p]}/{self.capacity})"
            )

    async def run_producer(self, w: Producer, call: Any) -> None:
        with w.scope:  # give_up cancels it
            try:
                job = await call()
                self.admitted.append(job.id)
            except (DuplicateJob, InvalidJob, InvalidTransition, ShuttingDown):
                pass
        w.done = True

    def produce(self, label: str, how: str, delayed: bool, pick: int) -> None:
        w = Producer(PRIORITIES[label], delayed)
        job_id: str | None = f"j{len(self.ids)}"
        payload: Any = [len(self.ids)]  # a list: "poison" can spoil it while it waits
        if how in ("same", "clash") and self.ids:
            job_id, payload = self.ids[-1 - pick % len(self.ids)]  # mostly recent ones
            if how == "clash":
                payload = [payload, "other"]
        elif how == "anonymous":
            job_id = None  # never checked again once it waits
        if job_id is not None:
            self.ids.append((job_id, payload))
        w.payload = payload
        self.producers.append(w)
        delay = 1000.0 if delayed else 0.0

        def call() -> Any:
            return self.q.enqueue("hold", payload, priority=label, job_id=job_id, delay=delay)

        self.nursery.start_soon(self.run_producer, w, call)

    async def play(self, action: tuple[Any, ...]) -> None:
        kind, *args = action
        q = self.q
        if kind == "produce":
            self.produce(*args)
        elif kind == "crowd":  # a new id, then others asking for that id (or not)
            label, hows, delayed = args
            self.produce(label, "new", delayed, 0)
            first = len(self.ids) - 1
            for how in hows:
                self.produce(label, how, delayed, len(self.ids) - 1 - first)
        elif kind == "fill":  # take every place left, so that the next producers wait
            try:
                while True:
                    self.admitted.append(q.enqueue_nowait(
                        "hold", priority=args[0], delay=1000.0 if args[1] else 0.0
                    ).id)
            except trioqueue.QueueFull:
                pass
        elif kind == "finish":
            self.step[0].set()
            self.step[0] = trio.Event()
        elif kind == "cancel_job" and self.admitted:
            try:
                await q.cancel(self.admitted[-1 - args[0] % len(self.admitted)])
            except InvalidTransition:
                pass  # finished, or cancelled already
        elif kind == "give_up" and self.producers:
            self.producers[-1 - args[0] % len(self.producers)].scope.cancel()
        elif kind == "poison" and self.producers:
            payload = self.producers[-1 - args[0] % len(self.producers)].payload
            if isinstance(payload, list):  # (a retry has none)
                payload.append(object())  # checked again when it is woken: InvalidJob
        elif kind == "nowait":
            try:
                self.admitted.append(q.enqueue_nowait(
                    "hold", priority=args[0], delay=1000.0 if args[1] else 0.0
                ).id)
            except trioqueue.QueueFull:
                pass
        elif kind == "retry" and self.admitted:  # by one or more producers at once
            job = q.get_nowait(self.admitted[-1 - args[0] % len(self.admitted)])
            if job.status is trioqueue.JobStatus.CANCELLED:
                for _ in range(args[1]):
                    w = Producer(int(job.priority), False)
                    self.producers.append(w)
                    self.nursery.start_soon(self.run_producer, w, lambda: q.retry(job.id))


def run_model(capacity: int, steps: list[tuple[Any, ...]]) -> None:
    registry = TaskRegistry()
    step = [trio.Event()]

    @registry.task
    async def hold(job: Job) -> None:
        await step[0].wait()

    async def main() -> None:
        config = QueueConfig(workers=1, capacity=capacity)
        async with trio.open_nursery() as nursery, trioqueue.open_queue(registry, config) as q:
            model = Model(q, nursery, capacity, step)
            try:
                await q.enqueue("hold", priority="high")  # the worker is busy from the start
                await trio.testing.wait_all_tasks_blocked()
                for action in steps:
                    await model.play(action)
                    await trio.testing.wait_all_tasks_blocked()
                    model.check()
            finally:
                step[0].set()  # every job ends at once from now on: the queue can close
        # Closing refused every producer still waiting (ShuttingDown), and the nursery
        # waited for them: nobody was left behind.
        assert all(w.done for w in model.producers)

    trio.run(main, clock=trio.testing.MockClock())  # time stands still: nothing comes due


# Each way of leaving after a wake-up, spelled out (the search finds them only sometimes):
@settings(max_examples=300)
@given(CAPACITY, actions)
@example(1, [  # the same id, returned: the reproduction
    ("produce", "high", "new", False, 0), ("produce", "high", "new", False, 0),
    ("produce", "high", "same", False, 0), ("produce", "high", "same", False, 1),
    ("finish",), ("finish",),
])
@example(1, [  # another payload under that id: DuplicateJob
    ("fill", "low", False), ("crowd", "low", ["clash", "clash"], False),
    ("finish",), ("finish",),
])
@example(1, [  # a payload that stopped being JSON while it waited: InvalidJob
    ("fill", "high", False), ("produce", "high", "new", False, 0),
    ("produce", "high", "new", False, 0), ("poison", 1), ("finish",),
])
@example(1, [  # the room of new delayed jobs, freed by cancelling them
    ("fill", "high", True), ("crowd", "high", ["same", "same"], True),
    ("cancel_job", 1), ("cancel_job", 0),
])
@example(1, [  # retry() by three producers: the second and third find it retried
    ("fill", "high", False), ("cancel_job", 0), ("fill", "high", False),
    ("retry", 1, 3), ("finish",), ("finish",),
])
def test_nobody_waits_for_room_while_there_is_room(
    capacity: int, steps: list[tuple[Any, ...]]
) -> None:
    run_model(capacity, steps)
