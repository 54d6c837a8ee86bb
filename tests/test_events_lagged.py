"""The ``lagged`` event a subscriber is owed (memory mode, on the mock clock): it always
comes, once the subscriber read what its buffer held, before any later event, and before
its channel ends; with ``max_rate``, once the subscriber has a token again."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

import trioqueue
from trioqueue import Event, Job, JobQueue

from .channels import drain

registry = trioqueue.TaskRegistry()


@registry.task
async def echo(job: Job) -> Any:
    return job.payload


def config() -> trioqueue.QueueConfig:
    return trioqueue.QueueConfig(workers=1, capacity=1000, shutdown_timeout=0)


def kinds(events: list[Event]) -> list[str | tuple[str, int | None]]:
    return [("lagged", e.dropped) if e.type == "lagged" else e.type for e in events]


def schedule(q: JobQueue, n: int) -> list[str]:
    """``n`` jobs due in a minute: one ``scheduled`` event each, and nothing more while
    the test runs."""
    return [q.enqueue_nowait("echo", i, delay=60).id for i in range(n)]


async def test_the_lagged_goes_where_the_events_were_lost_and_the_rest_follows(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Events lost after the buffered ones are told after them; an event that fits once
    the subscriber read some goes after a ``lagged`` with the count so far, and the
    events lost after it are told once the buffer is read, with no event after them."""
    async with trioqueue.open_queue(registry, config()) as q, \
            q.subscribe(buffer=2) as events:
        ids = schedule(q, 4)  # 2 kept, 2 lost
        first = events.receive_nowait()
        ids += schedule(q, 3)  # the lagged of 2 fits, the 3 events do not
        got = drain(events)
        assert drain(events) == []  # told once
        ids += schedule(q, 1)
        after = drain(events)
    assert (first.type, first.job_id) == ("scheduled", ids[0])
    assert kinds(got) == ["scheduled", ("lagged", 2), ("lagged", 3)]
    assert got[0].job_id == ids[1]
    assert (after[0].type, after[0].job_id) == ("scheduled", ids[-1])
    # A lagged shares the seq of the event after it: the first, of the first event that
    # did not fit (the fifth); the one built when read, of the next event made.
    assert [e.seq - first.seq for e in got] == [1, 4, 7]
    assert after[0].seq == got[2].seq
    assert got[2].to_dict() == {"seq": after[0].seq, "type": "lagged", "at": got[2].at,
                                "dropped": 3}


async def test_a_waiting_receive_gets_the_lagged_then_async_for_waits_for_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[Event] = []
    async with trioqueue.open_queue(registry, config()) as q:
        async with q.subscribe(buffer=3) as events:
            schedule(q, 10)
            with trio.fail_after(10):  # no event comes: only the lagged can end the wait
                seen = [await events.receive() for _ in range(4)]
            schedule(q, 5)  # 3 kept, 2 lost: told after the loop read the 3
            more: list[Event] = []
            async with trio.open_nursery() as nursery:

                async def read() -> None:
                    async for event in events:
                        more.append(event)

                nursery.start_soon(read)
                await trio.testing.wait_all_tasks_blocked()
                assert kinds(more) == ["scheduled"] * 3 + [("lagged", 2)]
                nursery.cancel_scope.cancel()
    assert kinds(seen) == ["scheduled"] * 3 + [("lagged", 7)]


async def test_at_close_the_lagged_comes_before_the_end_of_the_channel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Even over its ``max_rate`` with no token: the channel ending is its last chance."""
    closed = trio.Event()
    seen: dict[str, list[Event]] = {}

    async def consumer(q: JobQueue, name: str, *, task_status: trio.TaskStatus[None],
                       **options: Any) -> None:
        async with q.subscribe(**options) as events:
            task_status.started()
            await closed.wait()
            seen[name] = [event async for event in events]

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async with trioqueue.open_queue(registry, config()) as q:
                await nursery.start(consumer, q, "full")
                await nursery.start(partial(consumer, q, "buffer", buffer=2))
                await nursery.start(partial(consumer, q, "rate", buffer=100, max_rate=1))
                schedule(q, 6)
            closed.set()
    assert kinds(seen["full"]) == ["scheduled"] * 6
    assert kinds(seen["buffer"]) == ["scheduled"] * 2 + [("lagged", 4)]
    assert kinds(seen["rate"]) == ["scheduled", ("lagged", 5)]


async def test_over_its_rate_a_subscriber_is_told_when_its_next_token_is_due(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Not at once (no more often than ``max_rate``): when its next token is due, whether
    it lost the events before it waited or while it waited; the lagged spends no
    token."""
    got: list[tuple[float, str | tuple[str, int | None]]] = []
    async with trioqueue.open_queue(registry, config()) as q:
        async with q.subscribe(buffer=100, max_rate=2) as events:
            start = trio.current_time()

            async def read() -> None:
                async for event in events:
                    got.append((trio.current_time() - start, kinds([event])[0]))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                schedule(q, 5)  # a burst of 2 passes; 3 lost before it waits
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(trio.WouldBlock):
                    events.receive_nowait()  # no token: not yet
                await trio.sleep_until(start + 0.6)  # a token; 0.1 s worth more
                schedule(q, 2)  # 1 passes (0.2 of a token left), 1 lost
                await trio.sleep_until(start + 1.2)  # reading again
                schedule(q, 1)  # passes (spent: the lagged took none)
                await trio.testing.wait_all_tasks_blocked()
                schedule(q, 4)  # lost while it waits, none to come after them
                await trio.sleep_until(start + 5.0)
                nursery.cancel_scope.cancel()
    assert got == [
        (0.0, "scheduled"), (0.0, "scheduled"),
        (pytest.approx(0.5), ("lagged", 3)),
        (pytest.approx(0.6), "scheduled"),
        (pytest.approx(1.0), ("lagged", 1)),
        (pytest.approx(1.2), "scheduled"),
        (pytest.approx(1.5), ("lagged", 4)),  # 0.4 of a token at 1.2: 1.2 + 0.6 / 2
    ]


async def test_the_subscription_is_a_trio_receive_channel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trioqueue.open_queue(registry, config()) as q:
        async with q.subscribe(buffer=7) as events:
            assert isinstance(events, trio.abc.ReceiveChannel)
            assert events.statistics().max_buffer_size == 7
            schedule(q, 1)
            assert events.statistics().current_buffer_used == 1
            assert "subscription" in repr(events)
            events.close()  # the subscriber stops: the queue drops it at the next event
            with pytest.raises(trio.ClosedResourceError):
                events.receive_nowait()
            with pytest.raises(trio.ClosedResourceError):
                await events.receive()
            schedule(q, 1)
        async with q.subscribe() as events:
            await events.aclose()
            with pytest.raises(trio.ClosedResourceError):
                events.receive_nowait()
        async with q.subscribe() as events:
            with events:
                pass
            with pytest.raises(trio.ClosedResourceError):
                events.receive_nowait()


@pytest.mark.parametrize("cancel", [lambda events: events.receive(),
                                    lambda events: events.__anext__()])
async def test_a_receive_is_a_checkpoint_and_a_cancelled_one_takes_nothing(
    autojump_clock: trio.testing.MockClock, cancel: Callable[[Any], Any],
) -> None:
    async with trioqueue.open_queue(registry, config()) as q, \
            q.subscribe(buffer=1) as events:
        schedule(q, 3)  # 1 kept, 2 lost
        with trio.CancelScope() as scope:
            scope.cancel()
            await cancel(events)
        assert scope.cancelled_caught
        got = []
        with trio.move_on_after(1) as waited:
            while True:
                got.append(await events.receive())
        assert waited.cancelled_caught  # nothing came after the kept one and its lagged
        assert kinds(got) == ["scheduled", ("lagged", 2)]
        schedule(q, 1)
        assert kinds(drain(events)) == ["scheduled"]
