"""The Prometheus text of ``/metrics`` held to the format, with ``prometheus_client``'s
parser as the reference: every family parses, with the type it declares; HELP and TYPE
once per family, before its samples; counters end in ``_total``; the summary has
``_sum`` and ``_count``; label values are escaped.  And the figures an operator computes
from it: the average run time (``rate(_sum) / rate(_count)``) and the utilization over a
recent window (``rate(worker_busy_seconds_total) / workers``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

import trioqueue
from tests.test_server_app import call
from trioqueue import Job, TaskRegistry
from trioqueue.server import App

TYPES = {
    **{f"jobs_{name}": "counter" for name in (
        "enqueued", "started", "completed", "failed", "retried", "cancelled", "rejected",
        "dropped")},
    **{f"priority_jobs_{name}": "counter" for name in (
        "enqueued", "completed", "failed", "retried", "cancelled", "rejected")},
    "worker_busy_seconds": "counter",
    "jobs_queued": "gauge", "jobs_scheduled": "gauge", "jobs_processing": "gauge",
    "workers": "gauge", "workers_busy": "gauge", "worker_utilization": "gauge",
    "uptime_seconds": "gauge", "priority_jobs_processing": "gauge",
    # Windowed quantiles without a sum of their own: gauges labelled quantile.
    "job_wait_seconds": "gauge", "priority_job_wait_seconds": "gauge",
    "priority_job_run_seconds": "gauge",
    "job_run_seconds": "summary",
}
"""Every family (the parser's name: a counter's without ``_total``) and its type."""


def check_exposition(text: str, prefix: str = "trioqueue") -> dict[str, Any]:
    """``text`` against the format; the parsed families by name (prefix left out)."""
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {name.removeprefix(f"{prefix}_") for name in families} == set(TYPES)
    lines = text.splitlines()
    declared = Counter(line.split()[2] for line in lines if line.startswith("# "))
    for name, family in families.items():
        assert family.type == TYPES[name.removeprefix(f"{prefix}_")], name
        exposed = f"{name}_total" if family.type == "counter" else name
        assert declared[exposed] == 2, f"{exposed}: one HELP and one TYPE"
        assert f"# TYPE {exposed} {family.type}" in lines
        assert family.documentation, name
        if family.type == "counter":
            assert {s.name for s in family.samples} == {f"{name}_total"}, name
        if family.type == "summary":
            by_suffix = Counter(s.name.removeprefix(name) for s in family.samples)
            assert (by_suffix["_sum"], by_suffix["_count"]) == (1, 1), name
            quantiles = {s.labels["quantile"] for s in family.samples if s.name == name}
            count = next(s.value for s in family.samples if s.name == f"{name}_count")
            assert quantiles == ({"0.5", "0.99"} if count else set()), name
    # Each family's HELP and TYPE come before its samples, its samples together.
    seen: list[str] = []
    for line in lines:
        if line.startswith("# TYPE "):
            seen.append(line.split()[2])
        elif not line.startswith("#"):
            name = line.split("{")[0].split()[0]
            assert any(name == f or name in (f"{f}_sum", f"{f}_count") for f in seen[-1:]), line
    return {name.removeprefix(f"{prefix}_"): f for name, f in families.items()}


def value(families: dict[str, Any], family: str, sample: str = "", **labels: str) -> float:
    f = families[family]
    name = f"{f.name}{'_total' if f.type == 'counter' else sample}"
    (found,) = [s.value for s in f.samples if s.name == name and s.labels == labels]
    return float(found)


def registry(gate: trio.Event) -> TaskRegistry:
    reg = TaskRegistry()

    @reg.task(max_retries=1)
    async def work(job: Job) -> None:
        seconds, fails = job.payload
        if seconds < 0:
            await gate.wait()
            return
        await trio.sleep(seconds)
        if job.attempts <= fails:
            raise RuntimeError("fails on purpose")

    return reg


async def test_the_exposition_parses_with_the_reference_parser(autojump_clock: Any) -> None:
    gate = trio.Event()
    config = trioqueue.QueueConfig(workers=2, capacity=2)
    async with trioqueue.open_queue(registry(gate), config) as q:
        # Before any job: no quantile yet, the summary has its sum and count already.
        families = check_exposition(q.metrics().to_prometheus())
        assert value(families, "job_run_seconds", "_count") == 0
        assert value(families, "job_run_seconds", "_sum") == 0
        ok = await q.enqueue("work", [2.0, 0], priority="high")
        retried = await q.enqueue("work", [3.0, 1], priority="low")   # 3 s fails, 3 s runs
        failed = await q.enqueue("work", [1.0, 5], priority="medium")  # 1 s fails twice
        for job in (ok, retried, failed):
            await q.wait(job.id)
        held = await q.enqueue("work", [-1, 0])  # running until the gate opens
        await trio.testing.wait_all_tasks_blocked()
        m = q.metrics()
        text = m.to_prometheus()
        families = check_exposition(text)
        check_exposition(m.to_prometheus(shared=True))
        # Every attempt that ended, and the seconds it ran: 2 + 3 + 3 + 1 + 1.
        assert value(families, "job_run_seconds", "_count") == 5
        assert value(families, "job_run_seconds", "_sum") == pytest.approx(10.0)
        assert value(families, "jobs_started") == 6  # the held one is running
        assert value(families, "job_run_seconds", quantile="0.99") == pytest.approx(3.0)
        assert value(families, "priority_job_run_seconds", priority="low",
                     quantile="0.5") == pytest.approx(3.0)
        assert (m.run_count, m.run_sum) == (5, pytest.approx(10.0))
        # The same text over HTTP.
        status, _, body = await call(App(q), "GET", "/metrics",
                                     query="format=prometheus")
        assert status == 200
        check_exposition(body.decode())
        gate.set()
        await q.wait(held.id)
        families = check_exposition(q.metrics().to_prometheus(prefix="batch_jobs:queue"),
                                    prefix="batch_jobs:queue")
        assert value(families, "job_run_seconds", "_count") == 6


async def test_busy_seconds_give_the_utilization_of_a_recent_window(
    autojump_clock: Any,
) -> None:
    """``utilization`` averages over the whole uptime; the busy-seconds counter's change
    over a window is the utilization of that window, and it counts a running job."""
    gate = trio.Event()
    async with trioqueue.open_queue(registry(gate), trioqueue.QueueConfig(workers=2)) as q:
        job = await q.enqueue("work", [100.0, 0])
        await trio.sleep(40)
        running = q.metrics()
        assert running.busy_seconds == pytest.approx(40.0)  # running, counted already
        assert (running.run_count, running.run_sum) == (0, 0)
        await q.wait(job.id)
        await trio.sleep(100)  # idle
        before = q.metrics()
        await trio.sleep(100)  # idle: this window's utilization is 0
        after = q.metrics()
        assert after.busy_seconds == before.busy_seconds == pytest.approx(100.0)
        assert after.utilization == pytest.approx(100.0 / (2 * after.uptime))  # since open
        job = await q.enqueue("work", [50.0, 0])
        await q.wait(job.id)
        await trio.sleep(50)
        last = q.metrics()
        window = last.uptime - after.uptime
        assert (last.busy_seconds - after.busy_seconds) / (window * last.workers) == (
            pytest.approx(0.25))  # one of two workers, half of the window
        families = check_exposition(last.to_prometheus())
        assert value(families, "worker_busy_seconds") == pytest.approx(150.0)


def test_label_values_and_help_are_escaped() -> None:
    """A label value with a backslash, a double quote and a line feed reads back as it
    was (through the reference parser); so does such a HELP text."""
    from trioqueue.testing import escape_help, label_set

    odd = 'a\\b"c\nd'
    text = (f"# HELP x_total {escape_help(odd)}\n"
            f"# TYPE x_total counter\nx_total{label_set({'node': odd})} 1\n")
    (family,) = text_string_to_metric_families(text)
    assert family.samples[0].labels == {"node": odd}
    assert family.documentation == odd


async def test_a_prefix_that_is_not_a_metric_name_is_refused() -> None:
    async with trioqueue.open_queue(registry(trio.Event()), trioqueue.QueueConfig()) as q:
        m = q.metrics()
    for bad in ("my-app", "9lives", "", "a b"):
        with pytest.raises(ValueError, match=r"^prefix: .* is not a Prometheus metric name"):
            m.to_prometheus(prefix=bad)


async def test_a_redis_nodes_help_gives_the_clusters_formulas() -> None:
    """On a Redis node (``shared``) ``workers`` is the cluster's and the busy seconds the
    node's own: the recent utilization is their ``sum(rate(...)) / max(...)``, not one
    node's rate over the cluster's workers; ``processing`` is Redis' count of claimed
    jobs, started or not.  One process keeps its own formula and "Jobs running"."""
    async with trioqueue.open_queue(registry(trio.Event()), trioqueue.QueueConfig()) as q:
        m = q.metrics()
    helps = {name.removeprefix("trioqueue_"): family.documentation
             for name, family in check_exposition(m.to_prometheus(shared=True)).items()}
    assert ("sum(rate(trioqueue_worker_busy_seconds_total[5m])) / max(trioqueue_workers)"
            in helps["worker_utilization"])
    assert "the rate of worker_busy_seconds_total over workers" not in (
        helps["worker_utilization"])
    assert "claimed and not started yet" in helps["jobs_processing"]
    alone = {name.removeprefix("trioqueue_"): family.documentation
             for name, family in check_exposition(m.to_prometheus()).items()}
    assert "the rate of worker_busy_seconds_total over workers" in alone["worker_utilization"]
    assert alone["jobs_processing"] == "Jobs running."
    prefixed = m.to_prometheus(prefix="app", shared=True)
    assert "sum(rate(app_worker_busy_seconds_total[5m])) / max(app_workers)" in prefixed
