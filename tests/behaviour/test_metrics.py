"""Metrics: totals and gauges match what happened."""

from __future__ import annotations

import pytest
from trio.testing import MockClock

from trioqueue import QueueFull

from .conftest import EMPTY, Backend, Harness, real_time_scale

KEYS = ("enqueued", "started", "completed", "failed", "retried", "cancelled", "rejected",
        "queued", "scheduled", "processing", "workers", "busy_workers", "utilization",
        "wait_p50", "wait_p99", "run_p50", "run_p99")


async def test_a_fresh_queue_has_zero_everything(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry, workers=3) as q:
        m = q.metrics()
        d = m.to_dict()
    for key in KEYS:
        assert key in d
    assert (m.enqueued, m.started, m.completed, m.failed, m.retried, m.cancelled,
            m.rejected) == (0,) * 7
    assert (m.queued, m.scheduled, m.processing, m.workers, m.busy_workers) == (
        EMPTY, 0, 0, 3, 0,
    )
    assert (m.wait_p50, m.wait_p99, m.run_p50, m.run_p99) == (None,) * 4


async def test_totals_and_gauges_follow_a_mixed_workload(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    scale = real_time_scale(clock)
    async with backend.open(h.registry, workers=3, capacity=5, retry_base=1.0 * scale) as q:
        holds = [await q.enqueue("gated", f"hold{i}", priority="high") for i in range(3)]
        for i in range(3):
            await h.entered(f"hold{i}")
        m = q.metrics()
        assert (m.processing, m.busy_workers, m.started) == (3, 3, 3)
        oks = [q.enqueue_nowait("echo", i) for i in range(5)]
        with pytest.raises(QueueFull):
            q.enqueue_nowait("echo")
        fails = [q.enqueue_nowait("fail", priority="low", max_retries=2) for _ in range(2)]
        to_cancel = q.enqueue_nowait("echo", priority="low")
        await q.cancel(to_cancel.id)
        delayed = q.enqueue_nowait("echo", "delayed", delay=5 * scale)
        m = q.metrics()
        assert m.queued == {"high": 0, "medium": 5, "low": 2}
        assert (m.scheduled, m.processing, m.enqueued, m.rejected, m.cancelled) == (
            1, 3, 3 + 5 + 2 + 1 + 1, 1, 1,
        )
        for i in range(3):
            h.open_gate(f"hold{i}")
        for job in holds + oks + fails + [delayed]:
            await q.wait(job.id)
        m = q.metrics()
    assert m.enqueued == 3 + 5 + 2 + 1 + 1
    assert m.completed == 3 + 5 + 1
    assert m.failed == 2
    assert m.retried == 2 * 2
    assert m.started == 3 + 5 + 2 * 3 + 1
    assert m.cancelled == 1
    assert m.rejected == 1
    assert (m.queued, m.scheduled, m.processing, m.busy_workers) == (EMPTY, 0, 0, 0)
    assert m.wait_p50 is not None
    assert m.wait_p99 is not None
    assert m.run_p50 is not None
    assert m.run_p99 is not None
    assert 0 <= m.wait_p50 <= m.wait_p99
    assert 0 <= m.run_p50 <= m.run_p99
    assert 0 <= m.utilization <= 1  # the gated jobs held their workers for no time
    text = m.to_prometheus()
    assert "trioqueue_jobs_completed_total 9\n" in text
    assert 'trioqueue_jobs_queued{priority="low"} 0\n' in text


async def test_utilization_and_run_times_on_the_mock_clock(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    backend.needs_virtual_time()
    async with backend.open(h.registry, workers=2) as q:
        first = await q.enqueue("sleep", 10)
        second = await q.enqueue("sleep", 30, delay=10)
        await q.wait(first.id)
        await q.wait(second.id)
        m = q.metrics()
    # Two workers over 40 s are 80 worker-seconds; 40 of them were spent in handlers.
    assert m.uptime == pytest.approx(40.0, abs=1e-6)
    assert m.utilization == pytest.approx(0.5, abs=1e-6)
    assert (m.run_p50, m.run_p99) == pytest.approx((10.0, 30.0), abs=1e-6)
    assert m.wait_p99 == pytest.approx(0.0, abs=1e-6)
