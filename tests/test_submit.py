"""``submit`` / ``submit_nowait``: callables as jobs, in memory mode and with a store."""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

import trioqueue
from trioqueue import InvalidJob, Job, JobStatus, QueueConfig, QueueFull, TaskRegistry
from trioqueue.server import App

from .test_server_app import call

MAIN_THREAD = threading.get_ident()


async def add(a: int, b: int) -> int:
    await trio.lowlevel.checkpoint()
    return a + b


def blocking_add(a: int, b: int) -> dict[str, Any]:
    return {"sum": a + b, "in_a_thread": threading.get_ident() != MAIN_THREAD}


async def greet(name: str, *, punct: str = "!") -> str:
    return f"hello {name}{punct}"


calls: list[Any] = []


def record(*args: Any) -> None:
    calls.append(args)


async def test_async_and_plain_functions(autojump_clock: Any) -> None:
    async with trioqueue.open_queue(TaskRegistry()) as q:
        job = await q.submit(add, 2, 3, priority="high")
        assert job.task == "tests.test_submit.add"
        assert job.priority is trioqueue.Priority.HIGH
        assert job.payload == {"args": ["2", "3"]}
        assert (await q.wait(job.id)).result == 5
        plain = q.submit_nowait(blocking_add, 4, 5)
        assert (await q.wait(plain.id)).result == {"sum": 9, "in_a_thread": True}
        named = await q.submit(functools.partial(greet, punct="?"), "you", job_id="g-1")
        assert named.id == "g-1"
        assert (await q.wait("g-1")).result == "hello you?"
        assert "tests.test_submit.add" in q.registry


async def test_memory_mode_takes_any_callable_and_args(autojump_clock: Any) -> None:
    """Closures, lambdas, bound methods and args that are not JSON: the payload shows
    their reprs, the call gets the objects themselves."""
    marker = object()

    class Box:
        def __init__(self) -> None:
            self.seen: list[Any] = []

        def put(self, item: Any) -> int:
            self.seen.append(item)
            return len(self.seen)

    def make(n: int) -> Any:
        async def times(x: int) -> int:
            return n * x
        return times

    box = Box()
    async with trioqueue.open_queue(TaskRegistry()) as q:
        jobs = [
            await q.submit(make(2), 10),
            await q.submit(make(3), 10),  # another closure of the same name
            await q.submit(lambda o: o is marker, marker),
            await q.submit(box.put, marker),
        ]
        done = await q.wait_many([j.id for j in jobs])
        assert [d.result for d in done] == [20, 30, True, 1]
        assert box.seen == [marker]
        assert jobs[2].payload == {"args": [repr(marker)]}
        assert jobs[0].task.endswith("make.<locals>.times")
        # Over HTTP the payload is the reprs.
        status, _, body = await call(App(q), "GET", f"/jobs/{jobs[3].id}")
        assert status == 200
        assert body["payload"] == {"args": [repr(marker)]}


async def test_a_failing_call_is_retried_with_the_same_args(autojump_clock: Any) -> None:
    attempts: list[Any] = []

    def flaky(arg: object) -> str:
        attempts.append(arg)
        if len(attempts) < 2:
            raise RuntimeError("first time")
        return "ok"

    thing = object()
    async with trioqueue.open_queue(TaskRegistry(), QueueConfig(retry_base=0.01)) as q:
        job = await q.submit(flaky, thing, max_retries=2)
        done = await q.wait(job.id)
        assert (done.status, done.result, done.attempts) == (JobStatus.COMPLETED, "ok", 2)
        assert attempts == [thing, thing]


async def test_a_registered_handler_must_be_enqueued_by_name(autojump_clock: Any) -> None:
    registry = TaskRegistry()

    @registry.task
    async def resize(job: Job) -> None: ...

    async with trioqueue.open_queue(registry) as q:
        with pytest.raises(TypeError, match=r"registered as the task 'resize'.*enqueue it "
                                            r"by name"):
            await q.submit(resize, 1)
        with pytest.raises(TypeError, match="callable"):
            q.submit_nowait(42)  # type: ignore[arg-type]
        assert q.metrics().enqueued == 0


async def test_submit_nowait_is_refused_when_full(autojump_clock: Any) -> None:
    gate = trio.Event()

    async def hold() -> None:
        await gate.wait()

    async with trioqueue.open_queue(TaskRegistry(), QueueConfig(workers=1, capacity=1)) as q:
        q.submit_nowait(hold)
        await trio.sleep(0.1)
        q.submit_nowait(hold)
        with pytest.raises(QueueFull):
            q.submit_nowait(hold)
        gate.set()


async def test_with_a_store_fn_and_args_must_outlive_the_process(tmp_path: Path) -> None:
    config = QueueConfig(persist_path=tmp_path / "q.db")
    async with trioqueue.open_queue(TaskRegistry(), config) as q:
        with pytest.raises(InvalidJob, match=r"^fn: .*module-level function"):
            await q.submit(lambda: None)
        with pytest.raises(InvalidJob, match=r"^fn: "):
            await q.submit(functools.partial(add, 1), 2)

        async def local() -> None: ...

        with pytest.raises(InvalidJob, match=r"^fn: .*found as tests\.test_submit\."):
            await q.submit(local)
        with pytest.raises(InvalidJob, match=r"^args\[1\]: not JSON"):
            await q.submit(record, 1, object())
        job = await q.submit(add, 1, 2)
        assert job.payload == {"args": [1, 2]}
        assert (await q.wait(job.id)).result == 3
        assert q.metrics().enqueued == 1


async def test_a_stored_call_runs_after_reopen_only_where_it_was_submitted(
    tmp_path: Path,
) -> None:
    """A call outlives the process.  A queue whose registry never had that function
    leaves the job in the store (it is never imported by a name read from the store);
    one whose registry has it (submitted there before) runs it with the stored args."""
    config = QueueConfig(persist_path=tmp_path / "q.db", workers=1)
    calls.clear()
    registry = TaskRegistry()
    async with trioqueue.open_queue(registry, config) as q:
        job = await q.submit(record, "a", 1, delay=0.5)
        assert job.status is JobStatus.SCHEDULED
    async with trioqueue.open_queue(TaskRegistry(), config) as q:  # a new process
        got = await q.get(job.id)
        assert got.status is JobStatus.SCHEDULED
        assert got.payload == {"args": ["a", 1]}
        await trio.sleep(0.6)  # due now, and still left alone
        assert (await q.get(job.id)).status is JobStatus.SCHEDULED
    assert calls == []
    async with trioqueue.open_queue(registry, config) as q:
        with trio.fail_after(10):
            done = await q.wait(job.id)
        assert done.status is JobStatus.COMPLETED
    assert calls == [("a", 1)]


DECORATED = TaskRegistry()


@DECORATED.submittable
async def decorated(n: int) -> int:
    """Registered by the decorator, before this module has the name ``decorated``."""
    return n * 2


async def test_a_function_decorated_with_submittable_runs_stored_calls(
    tmp_path: Path,
) -> None:
    """The decorator runs before the module holds the function's name: the call form's
    module-level lookup would fail there, and its calls were then refused as a memory
    queue's ("cannot run a stored call")."""
    config = QueueConfig(persist_path=tmp_path / "q.db", workers=1)
    async with trioqueue.open_queue(TaskRegistry(), config) as q:
        job = await q.submit(decorated, 21, delay=0.3)
    async with trioqueue.open_queue(DECORATED, config) as q:
        with trio.fail_after(10):
            done = await q.wait(job.id)
        assert (done.status, done.result, done.error) == (JobStatus.COMPLETED, 42, None)
        again = await q.submit(decorated, 5)
        assert (await q.wait(again.id)).result == 10


async def test_a_new_process_names_its_functions_with_submittable_before_it_opens(
    tmp_path: Path,
) -> None:
    """A new process has submitted nothing yet when it opens its queue: the stored call
    waits for a registry that has the function.  ``registry.submittable(fn)`` (also a
    decorator) registers it before the open, so the recovered call runs; ``submit`` of
    the same function then uses that registration."""
    config = QueueConfig(persist_path=tmp_path / "q.db", workers=1)
    calls.clear()
    async with trioqueue.open_queue(TaskRegistry(), config) as q:
        job = await q.submit(record, "kept", 2, delay=0.3)
    fresh = TaskRegistry()  # the new process
    assert fresh.submittable(record) is record
    assert f"{record.__module__}.{record.__qualname__}" in fresh
    async with trioqueue.open_queue(fresh, config) as q:
        with trio.fail_after(10):
            assert (await q.wait(job.id)).status is JobStatus.COMPLETED
            again = await q.submit(record, "again")
            assert (await q.wait(again.id)).task == job.task
    assert calls == [("kept", 2), ("again",)]
    with pytest.raises(trioqueue.InvalidJob, match=r"^fn: expected a function defined"):
        fresh.submittable(lambda: None)
    with pytest.raises(trioqueue.InvalidJob, match=r"^fn: "):
        fresh.submittable(functools.partial(record, 1))


async def test_a_registry_that_submitted_in_memory_runs_stored_calls_too(
    tmp_path: Path,
) -> None:
    """One registry, a memory queue first and then one with a store: the function the
    memory queue registered runs the stored calls (each failed with 'the payload ... must
    be {"args": [...]}' before), after a reopen too; a partial submitted in memory under
    the function's name cannot run a stored call and says so."""
    calls.clear()
    registry = TaskRegistry()
    async with trioqueue.open_queue(registry) as m:
        await m.wait((await m.submit(record, "warm-up")).id)
    config = QueueConfig(persist_path=tmp_path / "q.db", workers=1)
    async with trioqueue.open_queue(registry, config) as q:
        done = await q.wait((await q.submit(record, "stored", 1)).id)
        assert (done.status, done.error) == (JobStatus.COMPLETED, None)
        later = await q.submit(record, "after reopen", delay=0.3)
    async with trioqueue.open_queue(registry, config) as q:
        with trio.fail_after(10):
            assert (await q.wait(later.id)).status is JobStatus.COMPLETED
    assert calls == [("warm-up",), ("stored", 1), ("after reopen",)]

    other = TaskRegistry()
    async with trioqueue.open_queue(other) as m:
        await m.wait((await m.submit(functools.partial(add, 1), 2)).id)
    async with trioqueue.open_queue(other, QueueConfig(persist_path=tmp_path / "p.db",
                                                       max_retries=0)) as q:
        job = await q.enqueue("tests.test_submit.add", {"args": [1, 2]})
        failed = await q.wait(job.id)
    assert failed.status is JobStatus.FAILED
    assert "cannot run a stored call" in (failed.error or "")
    # Submitting the function itself to a stored queue then takes the name over (the
    # memory queue's jobs carry their own calls); it was an InvalidJob, "another
    # function was submitted", before.
    async with trioqueue.open_queue(other, QueueConfig(persist_path=tmp_path / "p.db",
                                                       max_retries=0)) as q:
        done = await q.wait((await q.submit(add, 1, 2)).id)
        assert (done.status, done.result) == (JobStatus.COMPLETED, 3)
        job = await q.enqueue("tests.test_submit.add", {"args": [2, 2]})
        assert (await q.wait(job.id)).result == 4
    async with trioqueue.open_queue(other) as m:  # and memory mode's partials still run
        assert (await m.wait((await m.submit(functools.partial(add, 5), 2)).id)).result == 7


async def test_a_name_rebound_to_another_function_is_refused_with_a_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = TaskRegistry()
    config = QueueConfig(persist_path=tmp_path / "q.db")
    async with trioqueue.open_queue(registry, config) as q:
        await q.wait((await q.submit(record, 1)).id)

        def record_again(*args: Any) -> None: ...

        record_again.__qualname__ = record_again.__name__ = "record"
        monkeypatch.setattr(f"{__name__}.record", record_again)
        with pytest.raises(InvalidJob, match=r"^fn: 'tests\.test_submit\.record' was "
                                             r"submitted in this process before as "):
            await q.submit(record_again, 2)
