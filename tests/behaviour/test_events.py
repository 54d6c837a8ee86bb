"""Events through subscribe(): the life of a job in order, and lagged slow subscribers."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from trioqueue import JobStatus, Priority

from .conftest import Backend, Harness, drain, real_time_scale


async def test_a_job_that_fails_once_then_succeeds(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry, retry_base=2.0 * real_time_scale(clock)) as q:
        async with q.subscribe() as events:
            job = await q.enqueue("flaky", {"fail_times": 1}, priority="high", job_id="f1")
            await q.wait(job.id)
            seen = [e for e in drain(events) if e.job_id == job.id]
    assert [e.type for e in seen] == [
        "enqueued", "started", "retrying", "enqueued", "started", "completed",
    ]
    assert [e.status for e in seen] == [
        "queued", "processing", "scheduled", "queued", "processing", "completed",
    ]
    assert [e.attempt for e in seen] == [0, 1, 1, 1, 2, 2]
    assert {(e.task, e.priority) for e in seen} == {("flaky", "high")}
    # As python-api.md says: the JSON spellings, compared with the enums like this.
    assert all(e.priority == Priority.HIGH.label for e in seen)
    assert seen[-1].status == JobStatus.COMPLETED
    assert [e.error for e in seen] == [None, None, "RuntimeError: flaky 1", None, None, None]
    seqs = [e.seq for e in seen]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    ats = [e.at for e in seen]
    assert ats == sorted(ats)
    if backend.virtual_time:
        assert ats[3] - ats[2] == pytest.approx(2.0, abs=1e-6)  # the backoff
    for e in seen:
        if e.type in ("started", "retrying", "completed"):
            assert e.worker is not None
        if e.type in ("retrying", "completed"):
            assert e.duration is not None
            assert e.duration >= 0
    d = seen[-1].to_dict()
    assert (d["type"], d["job_id"], d["status"], d["attempt"]) == (
        "completed", "f1", "completed", 2,
    )


async def test_a_job_that_fails_for_good(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry, retry_base=0.5 * real_time_scale(clock)) as q:
        async with q.subscribe() as events:
            job = await q.enqueue("fail", max_retries=1)
            await q.wait(job.id)
            seen = drain(events)
    assert [e.type for e in seen] == [
        "enqueued", "started", "retrying", "enqueued", "started", "failed",
    ]
    assert (seen[-1].status, seen[-1].attempt, seen[-1].error) == (
        "failed", 2, "RuntimeError: boom 2",
    )


async def test_delay_cancel_and_retry_have_their_events(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry, workers=1) as q:
        async with q.subscribe() as events:
            await q.enqueue("gated", "hold", job_id="hold")
            await h.entered("hold")
            # Its two events first: on Redis "started" reaches the stream with the node's
            # next call, and under load after "later"'s "scheduled" (seen once).
            first = [await events.receive() for _ in range(2)]
            await q.enqueue("echo", job_id="later", delay=60)
            await q.enqueue("echo", job_id="queued")
            await q.cancel("later")
            await q.cancel("queued")
            await q.retry("queued")
            await q.cancel("hold")
            await q.wait("queued")
            seen = [(e.job_id, e.type) for e in [*first, *drain(events)]]
    assert seen == [
        ("hold", "enqueued"), ("hold", "started"),
        ("later", "scheduled"),
        ("queued", "enqueued"),
        ("later", "cancelled"),
        ("queued", "cancelled"),
        ("queued", "requeued"),
        ("hold", "cancelled"),
        ("queued", "started"), ("queued", "completed"),
    ]


async def test_a_slow_subscriber_is_told_how_many_it_lost_and_never_slows_the_queue(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry) as q:
        async with q.subscribe(buffer=5) as slow, q.subscribe(buffer=1000) as fast:
            jobs = [q.enqueue_nowait("echo", i) for i in range(20)]
            for job in jobs:
                await q.wait(job.id)  # the full buffer does not hold the queue up
            kept = [slow.receive_nowait() for _ in range(5)]
            last = q.enqueue_nowait("echo", "last")
            lagged = slow.receive_nowait()
            after = slow.receive_nowait()
            await q.wait(last.id)
            everything = drain(fast)
    assert [e.type for e in kept] == ["enqueued"] * 5
    assert [e.job_id for e in kept] == [j.id for j in jobs[:5]]
    assert lagged.type == "lagged"
    assert lagged.dropped == 20 * 3 - 5
    assert lagged.to_dict() == {"seq": lagged.seq, "type": "lagged", "at": lagged.at,
                                "dropped": 55}
    assert (after.type, after.job_id) == ("enqueued", last.id)
    # The other subscriber lost nothing.
    assert len(everything) == 21 * 3
    assert [e.type for e in everything].count("completed") == 21


async def test_events_only_from_subscribing_on_and_the_channel_ends_at_close(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    seen: list[tuple[str | None, str]] = []
    with trio.move_on_after(600) as guard:  # reached only if the channel never ends
        async with trio.open_nursery() as nursery:
            async with backend.open(h.registry) as q:
                await q.wait((await q.enqueue("echo", 1, job_id="one")).id)
                subscribed = trio.Event()

                async def consumer() -> None:
                    async with q.subscribe() as events:
                        subscribed.set()
                        async for event in events:
                            seen.append((event.job_id, event.type))

                nursery.start_soon(consumer)
                await subscribed.wait()
                await q.wait((await q.enqueue("echo", 2, job_id="two")).id)
            # The queue closed: the consumer's loop ends by itself.
    assert not guard.cancelled_caught
    assert seen == [("two", "enqueued"), ("two", "started"), ("two", "completed")]
