"""``Metrics.to_dict()["by_priority"]`` and the Prometheus series with a ``priority``
label: counted the way a user sees jobs go through, on trio's mock clock."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioqueue
from tests.test_server_app import call
from trioqueue import JobStatus, QueueFull
from trioqueue.server import App

KEYS = {"enqueued", "completed", "failed", "retried", "cancelled", "rejected", "queued",
        "processing", "wait_p50", "wait_p99", "run_p50", "run_p99"}


def make_registry(gate: trio.Event) -> trioqueue.TaskRegistry:
    registry = trioqueue.TaskRegistry()

    @registry.task()
    async def work(job: trioqueue.Job) -> None:
        await trio.sleep(job.payload)

    @registry.task(max_retries=1)
    async def flaky(job: trioqueue.Job) -> None:
        raise RuntimeError("no")

    @registry.task()
    async def hold(job: trioqueue.Job) -> None:
        await gate.wait()

    return registry


async def test_by_priority_counts_what_each_priority_did(autojump_clock: Any) -> None:
    gate = trio.Event()
    config = trioqueue.QueueConfig(workers=1, capacity=2, retry_base=1.0, retry_jitter=0.0)
    async with trioqueue.open_queue(make_registry(gate), config) as q:
        for _ in range(3):
            await q.wait((await q.enqueue("work", 2, priority="high")).id)
        await q.wait((await q.enqueue("work", 5, priority="low")).id)
        failed = await q.wait((await q.enqueue("flaky", priority="medium")).id)
        assert failed.status is JobStatus.FAILED
        # One running (medium) and two queued (low), the low queue full: a refusal.
        await q.enqueue("hold", priority="medium", job_id="held")
        await trio.testing.wait_all_tasks_blocked()
        doomed = await q.enqueue("work", 1, priority="low", delay=60)
        await q.enqueue("work", 1, priority="low")
        await q.enqueue("work", 1, priority="low")
        with pytest.raises(QueueFull):
            q.enqueue_nowait("work", 1, priority="low")
        await q.cancel(doomed.id)
        # The retry of a failed job is a retry, not a new job.
        await q.retry(failed.id)

        by = q.metrics().to_dict()["by_priority"]
        assert set(by) == {"high", "medium", "low"}
        assert all(set(row) == KEYS for row in by.values())
        high, medium, low = by["high"], by["medium"], by["low"]
        assert (high["enqueued"], high["completed"], high["failed"]) == (3, 3, 0)
        assert (high["wait_p50"], high["run_p50"], high["run_p99"]) == (0.0, 2.0, 2.0)
        assert (medium["enqueued"], medium["failed"], medium["retried"]) == (2, 1, 1)
        assert (medium["processing"], medium["queued"]) == (1, 1)  # held runs; failed waits
        assert (low["enqueued"], low["completed"], low["cancelled"], low["rejected"]) == (
            4, 1, 1, 1)
        assert (low["queued"], low["processing"], low["run_p50"]) == (2, 0, 5.0)
        m = q.metrics()
        for key in ("enqueued", "completed", "failed", "retried", "cancelled", "rejected"):
            assert sum(row[key] for row in by.values()) == getattr(m, key), key
        assert m.by_priority == by

        text = m.to_prometheus()
        assert 'trioqueue_priority_jobs_enqueued_total{priority="high"} 3\n' in text
        assert 'trioqueue_priority_jobs_rejected_total{priority="low"} 1\n' in text
        assert 'trioqueue_priority_jobs_processing{priority="medium"} 1\n' in text
        assert 'trioqueue_priority_job_run_seconds{priority="low",quantile="0.5"} 5.0\n' in text
        assert "# TYPE trioqueue_priority_jobs_completed_total counter\n" in text
        assert "# HELP trioqueue_jobs_completed_total Jobs completed.\n" in text  # one queue
        # On a Redis node each HELP says whose figure it is (docs/redis-design.md).
        shared = m.to_prometheus(shared=True)
        helps = {line.split()[2]: line for line in shared.splitlines()
                 if line.startswith("# HELP")}
        for name in ("jobs_completed_total", "jobs_queued", "jobs_processing", "workers",
                     "worker_utilization", "priority_jobs_enqueued_total"):
            assert helps[f"trioqueue_{name}"].endswith(
                "Cluster-wide: every node shows the same (aggregate with max, not sum)."), name
        for name in ("jobs_started_total", "job_run_seconds", "uptime_seconds",
                     "priority_jobs_processing", "priority_job_wait_seconds"):
            assert helps[f"trioqueue_{name}"].endswith("This node's own."), name
        def samples(exposition: str) -> list[str]:
            return [line for line in exposition.splitlines() if not line.startswith("# HELP")]

        assert samples(shared) == samples(text)  # the HELP lines differ, not the samples

        app = App(q)
        status, _, body = await call(app, "GET", "/metrics")
        assert status == 200
        assert body["by_priority"]["high"]["completed"] == 3
        assert body["by_priority"]["low"]["rejected"] == 1
        status, _, prom = await call(app, "GET", "/metrics", query="format=prometheus")
        assert status == 200
        assert b'trioqueue_priority_jobs_completed_total{priority="high"} 3\n' in prom
        gate.set()


async def test_wait_percentiles_are_per_priority(autojump_clock: Any) -> None:
    """A low job that waited behind a long high one shows that wait in low, not high."""
    gate = trio.Event()
    config = trioqueue.QueueConfig(workers=1)
    async with trioqueue.open_queue(make_registry(gate), config) as q:
        first = await q.enqueue("work", 10, priority="high")
        await trio.testing.wait_all_tasks_blocked()
        second = await q.enqueue("work", 1, priority="low")
        await q.wait(first.id)
        await q.wait(second.id)
        by = q.metrics().by_priority
    assert by["high"]["wait_p99"] == 0.0
    assert by["low"]["wait_p99"] == 10.0
    assert by["medium"]["wait_p50"] is None
