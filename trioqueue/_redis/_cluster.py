"""The queue's worker figures on a Redis node: this node's own, live, and the other live
nodes' as of their last heartbeat (docs/redis-design.md, "Metrics")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from .._metrics import Metrics
from ._node import worker_figures


def cluster_workers(m: Metrics, node: str, infos: Mapping[str, Mapping[str, Any]],
                    processing: int) -> Metrics:
    """``m`` (node ``node``'s own metrics) with ``processing`` and the queue's worker
    figures: ``workers``, ``busy_workers`` and ``utilization`` summed over this node and
    the live nodes' heartbeat ``infos`` (node id -> its info), ``node`` and, per node,
    ``nodes`` (a node of another version whose figures do not read is left out)."""
    workers, busy, busy_s, capacity_s = worker_figures(m)
    nodes = {node: {"workers": workers, "busy_workers": busy}}
    for other, info in infos.items():
        if other == node:
            continue
        try:
            its_workers, its_busy = int(info.get("workers", 0)), int(info.get("busy", 0))
            its_busy_s = float(info.get("busy_s", 0.0))
            its_capacity_s = float(info.get("capacity_s", 0.0))
        except (TypeError, ValueError, AttributeError):
            continue
        workers += its_workers
        busy += its_busy
        busy_s += its_busy_s
        capacity_s += its_capacity_s
        nodes[other] = {"workers": its_workers, "busy_workers": its_busy}
    return attrs.evolve(
        m, workers=workers, busy_workers=busy, processing=processing, node=node, nodes=nodes,
        utilization=min(1.0, busy_s / capacity_s) if capacity_s > 0 else 0.0,
    )
