"""The thread switch interval is lowered while one of a queue's threads runs (a sync
handler, the store's reads and writes), and put back after."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import trioqueue
from trioqueue import QueueConfig, TaskRegistry
from trioqueue.testing import SqliteStore, lowered_switch_interval, run_in_thread

DEFAULT = 0.005


@pytest.fixture(autouse=True)
def interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(DEFAULT)
    yield
    sys.setswitchinterval(before)


def test_lowered_for_the_block_and_put_back() -> None:
    with lowered_switch_interval(0.0002):
        assert sys.getswitchinterval() == pytest.approx(0.0002)
    assert sys.getswitchinterval() == pytest.approx(DEFAULT)


def test_never_raised_and_none_leaves_it_alone() -> None:
    sys.setswitchinterval(0.0001)
    with lowered_switch_interval(0.0002):
        assert sys.getswitchinterval() == pytest.approx(0.0001)
    assert sys.getswitchinterval() == pytest.approx(0.0001)
    with lowered_switch_interval(None):
        assert sys.getswitchinterval() == pytest.approx(0.0001)


def test_put_back_when_the_last_holder_leaves_in_any_order() -> None:
    first = lowered_switch_interval(0.0002)
    second = lowered_switch_interval(0.0002)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first to open closes first
    assert sys.getswitchinterval() == pytest.approx(0.0002)
    second.__exit__(None, None, None)
    assert sys.getswitchinterval() == pytest.approx(DEFAULT)


def test_a_change_made_by_someone_else_meanwhile_is_kept() -> None:
    with lowered_switch_interval(0.0002):
        sys.setswitchinterval(0.001)
    assert sys.getswitchinterval() == pytest.approx(0.001)


def test_an_exception_still_puts_it_back() -> None:
    with pytest.raises(RuntimeError, match="boom"), lowered_switch_interval(0.0002):
        raise RuntimeError("boom")
    assert sys.getswitchinterval() == pytest.approx(DEFAULT)


async def test_a_queue_lowers_it_only_while_one_of_its_threads_runs(
    autojump_clock: Any,
) -> None:
    registry = TaskRegistry()
    seen: list[tuple[str, float]] = []

    @registry.task
    async def on_the_loop(job: trioqueue.Job) -> None:
        seen.append(("async", sys.getswitchinterval()))

    @registry.task(sync=True)
    def in_a_thread(job: trioqueue.Job) -> None:
        seen.append(("sync", sys.getswitchinterval()))

    async with trioqueue.open_queue(registry, QueueConfig()) as q:
        await q.wait((await q.enqueue("on_the_loop")).id)
        await q.wait((await q.enqueue("in_a_thread")).id)
        inside = sys.getswitchinterval()
    # The loop's own code never has it lowered; a sync handler's thread runs with it.
    assert seen == [("async", pytest.approx(DEFAULT)), ("sync", pytest.approx(0.0002))]
    assert inside == pytest.approx(DEFAULT)
    assert sys.getswitchinterval() == pytest.approx(DEFAULT)

    seen.clear()
    async with trioqueue.open_queue(registry, QueueConfig(switch_interval=None)) as q:
        await q.wait((await q.enqueue("in_a_thread")).id)
    assert seen == [("sync", pytest.approx(DEFAULT))]

    async def body() -> None:
        async with trioqueue.open_queue(registry, QueueConfig(switch_interval=0.001)) as q:
            await q.wait((await q.enqueue("in_a_thread")).id)
            raise ValueError("boom")

    seen.clear()
    with pytest.raises(ValueError, match="boom"):  # the body's error comes out as itself
        await body()
    assert seen == [("sync", pytest.approx(0.001))]
    assert sys.getswitchinterval() == pytest.approx(DEFAULT)


async def test_the_store_writes_with_it_lowered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = TaskRegistry()

    @registry.task
    async def echo(job: trioqueue.Job) -> Any:
        return job.payload

    during_writes: list[float] = []
    write_values = SqliteStore.write_values

    def watched(self: SqliteStore, values: Any) -> None:
        during_writes.append(sys.getswitchinterval())
        write_values(self, values)

    monkeypatch.setattr(SqliteStore, "write_values", watched)
    async with trioqueue.open_queue(registry, QueueConfig(persist_path=tmp_path / "q.db")) as q:
        await q.wait((await q.enqueue("echo", 1)).id)
        await q.flush()  # the last write has ended (the job's end is committed)
        assert sys.getswitchinterval() == pytest.approx(DEFAULT)  # no write under way
    assert during_writes
    assert during_writes == [pytest.approx(0.0002)] * len(during_writes)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "fast", True])
def test_a_bad_interval_names_the_field(bad: object) -> None:
    with pytest.raises(ValueError, match="switch_interval"):
        QueueConfig(switch_interval=bad)  # type: ignore[arg-type]


def test_from_env() -> None:
    assert QueueConfig.from_env({"TRIOQUEUE_SWITCH_INTERVAL": "0.001"}).switch_interval == 0.001
    assert QueueConfig.from_env({"TRIOQUEUE_SWITCH_INTERVAL": "none"}).switch_interval is None


# -------------------------------------------------------------- run_in_thread


async def test_run_in_thread_starts_the_thread_before_the_caller_yields() -> None:
    """The store's writes start before the loop runs anything else: a task that gets
    the loop next, and keeps it without yielding, still sees the thread start (with
    ``trio.to_thread.run_sync`` it would wait forever: that call yields first)."""
    started = threading.Event()
    seen: list[bool] = []

    def work() -> int:
        started.set()
        return 7

    def hog() -> None:  # runs once the caller yields, and keeps the loop until then
        seen.append(started.wait(timeout=10))

    async def hogging() -> None:
        hog()
        await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hogging)  # runs only after the next line yields
        assert await run_in_thread(work) == 7
    assert seen == [True]


async def test_run_in_thread_passes_the_exception_back() -> None:
    def fail(what: str) -> None:
        raise ValueError(what)

    with pytest.raises(ValueError, match="disk said no"):
        await run_in_thread(fail, "disk said no")


async def test_run_in_thread_cannot_be_cancelled_midway() -> None:
    """A write under way is waited for: a cancel arriving meanwhile takes effect at the
    caller's next checkpoint, after the thread's value came back."""
    release = threading.Event()
    entered = trio.Event()
    token = trio.lowlevel.current_trio_token()
    got: list[str] = []

    def slow() -> str:
        token.run_sync_soon(entered.set)
        release.wait(timeout=10)
        return "written"

    async def caller(scope_box: list[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            scope_box.append(scope)
            got.append(await run_in_thread(slow))
            await trio.lowlevel.checkpoint()
            got.append("not reached")

    box: list[trio.CancelScope] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller, box)
        await entered.wait()
        box[0].cancel()
        release.set()
    assert got == ["written"]
    assert box[0].cancelled_caught


async def test_run_in_thread_holds_a_token_of_the_default_thread_limiter() -> None:
    """Like ``trio.to_thread.run_sync``: the thread counts against Trio's thread limit
    while it works (the behaviour suite's clock watches that), and gives it back."""
    limiter = trio.to_thread.current_default_thread_limiter()
    inside: list[int] = []
    token = trio.lowlevel.current_trio_token()

    def look() -> None:
        inside.append(trio.from_thread.run_sync(lambda: limiter.borrowed_tokens,
                                                trio_token=token))

    before = limiter.borrowed_tokens
    await run_in_thread(look)
    assert inside == [before + 1]
    assert limiter.borrowed_tokens == before
