"""The thread switch interval is lowered while a queue is open, and put back after."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

import trioqueue
from trioqueue import QueueConfig, TaskRegistry
from trioqueue._gil import lowered_switch_interval

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


async def test_open_queue_lowers_it_while_open(autojump_clock: Any) -> None:
    registry = TaskRegistry()
    seen: list[float] = []

    @registry.task
    async def probe(job: trioqueue.Job) -> None:
        seen.append(sys.getswitchinterval())

    async with trioqueue.open_queue(registry, QueueConfig()) as q:
        await q.wait((await q.enqueue("probe")).id)
    assert seen == [pytest.approx(0.0002)]
    assert sys.getswitchinterval() == pytest.approx(DEFAULT)

    async with trioqueue.open_queue(registry, QueueConfig(switch_interval=None)) as q:
        await q.wait((await q.enqueue("probe")).id)
    assert seen[1] == pytest.approx(DEFAULT)

    inside: list[float] = []

    async def body() -> None:
        async with trioqueue.open_queue(registry, QueueConfig(switch_interval=0.001)):
            inside.append(sys.getswitchinterval())
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):  # the body's error comes out as itself
        await body()
    assert inside == [pytest.approx(0.001)]
    assert sys.getswitchinterval() == pytest.approx(DEFAULT)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "fast", True])
def test_a_bad_interval_names_the_field(bad: object) -> None:
    with pytest.raises(ValueError, match="switch_interval"):
        QueueConfig(switch_interval=bad)  # type: ignore[arg-type]


def test_from_env() -> None:
    assert QueueConfig.from_env({"TRIOQUEUE_SWITCH_INTERVAL": "0.001"}).switch_interval == 0.001
    assert QueueConfig.from_env({"TRIOQUEUE_SWITCH_INTERVAL": "none"}).switch_interval is None
