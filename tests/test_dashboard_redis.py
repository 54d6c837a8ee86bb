"""What the dashboard's Workers panel reads on Redis, against the real Redis: each job
event names the node that made the change (``node``; the worker index only on the node
that ran it), and the metrics name this node and give each live node's workers
(``node``, ``nodes``).  A queue of one process has neither.  The panel itself, with two
node processes and Chromium: tests/browser/test_dashboard_nodes.py."""

from __future__ import annotations

import logging
from collections import Counter
from functools import partial
from typing import Any

import httpx
import pytest
import trio

import trioqueue
from trioqueue import Event, Job, QueueConfig, TaskRegistry

from .redis_util import REDIS_URL, admin, delete_queue, poll, unique


def hold_registry(gate: trio.Event) -> TaskRegistry:
    registry = TaskRegistry()

    @registry.task
    async def hold(job: Job) -> None:
        await gate.wait()

    return registry


async def started_and_ended(events: Any, n: int, kind: str) -> dict[str, Event]:
    """The first ``n`` events of type ``kind`` from ``events``, by job id."""
    seen: dict[str, Event] = {}
    async for event in events:
        if event.type == kind:
            seen[event.job_id] = event
            if len(seen) == n:
                break
    return seen


async def test_events_name_their_node_and_metrics_give_each_nodes_workers(
    queue_name: str,
) -> None:
    gate = trio.Event()
    registry = hold_registry(gate)

    def config(workers: int) -> QueueConfig:
        # lease 1.5: heartbeats every 0.5 s, so the other node's busy workers show soon.
        return QueueConfig(redis_url=REDIS_URL, queue_name=queue_name, workers=workers,
                           lease=1.5)

    with trio.fail_after(30):
        async with trioqueue.open_queue(registry, config(2)) as a, \
                trioqueue.open_queue(registry, config(3)) as b:
            node_a, node_b = a.metrics().node, b.metrics().node
            assert node_a is not None
            assert node_b not in (None, node_a)
            async with a.subscribe(types=["started", "completed"]) as events:
                jobs = [(await a.enqueue("hold", i)).id for i in range(5)]
                started = await started_and_ended(events, 5, "started")
                assert sorted(started) == sorted(jobs)
                # Each node runs as many as it has workers (prefetch 0).
                assert Counter(ev.node for ev in started.values()) == {node_a: 2, node_b: 3}
                for ev in started.values():
                    assert ev.to_dict()["node"] == ev.node
                # The worker index is known only where the job runs.
                assert sorted(ev.worker for ev in started.values()
                              if ev.node == node_a) == [0, 1]  # type: ignore[type-var]
                assert [ev.worker for ev in started.values() if ev.node == node_b] == [None] * 3

                async def all_busy() -> bool:
                    await a.get(jobs[0])  # which reads the counts again
                    return a.metrics().busy_workers == 5

                await poll(all_busy)  # b's figures come with its heartbeat
                m = a.metrics().to_dict()
                assert m["node"] == node_a
                assert m["nodes"] == {node_a: {"workers": 2, "busy_workers": 2},
                                      node_b: {"workers": 3, "busy_workers": 3}}
                assert (m["workers"], m["busy_workers"]) == (5, 5)
                gate.set()
                ended = await started_and_ended(events, 5, "completed")
                assert {j: ev.node for j, ev in ended.items()} == {
                    j: ev.node for j, ev in started.items()}


async def test_a_queue_of_one_process_names_no_node() -> None:
    gate = trio.Event()
    gate.set()
    with trio.fail_after(10):
        async with trioqueue.open_queue(hold_registry(gate), QueueConfig(workers=2)) as q, \
                q.subscribe(types=["started", "completed"]) as events:
            job = await q.enqueue("hold")
            seen = [await events.receive(), await events.receive()]
            assert [(e.type, e.job_id, e.node) for e in seen] == [
                ("started", job.id, None), ("completed", job.id, None)]
            assert all("node" not in e.to_dict() for e in seen)
            assert seen[0].to_dict()["worker"] in (0, 1)
            m = q.metrics()
            assert (m.node, m.nodes) == (None, None)
            assert not {"node", "nodes"} & set(m.to_dict())


async def test_serve_on_redis_names_its_node_in_its_serving_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``serve --redis``'s line names the node id that events' and metrics' ``node``
    carry, with its lease and prefetch (as ``trioqueue worker``'s banner does), so that a
    node in the dashboard or the metrics can be matched to its process."""
    from trioqueue.server import ServerSettings, serve

    queue = unique("servenode")
    caplog.set_level(logging.INFO, logger="trioqueue.server")
    config = QueueConfig(redis_url=REDIS_URL, queue_name=queue, workers=1, lease=6.0,
                         prefetch=2)
    try:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve, TaskRegistry(), config,
                                              ServerSettings(port=0), stop=stop))
            async with httpx.AsyncClient(base_url=url) as http:
                node = (await http.get("/metrics")).json()["node"]
            stop.set()
        line = next(r.getMessage() for r in caplog.records
                    if "trioqueue server: serving" in r.getMessage())
        assert line.endswith(f"; redis node {node}, lease 6 s, prefetch 2)"), line
    finally:
        async with admin() as a:
            await delete_queue(a, queue)
