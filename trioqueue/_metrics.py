"""The :class:`Metrics` snapshot and its JSON and Prometheus forms (the counters and
samplers behind it are in :mod:`trioqueue._stats`)."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class Metrics:
    """A snapshot of the queue's counters and gauges.

    Totals count since the queue opened.  Percentiles are over the most recent 4096 jobs
    of each priority, in seconds, ``None`` before the first job.
    """

    enqueued: int
    """Jobs accepted (new ones; re-queues by ``retry()`` not counted)."""
    started: int
    """Attempts started."""
    completed: int
    failed: int
    """Jobs that ended FAILED (retries exhausted)."""
    retried: int
    """Retries scheduled after a failed attempt."""
    cancelled: int
    rejected: int
    """Enqueues refused: queue full or shutting down."""
    queued: dict[str, int]
    """Jobs waiting per priority: ``{"high": n, "medium": n, "low": n}``."""
    scheduled: int
    processing: int
    workers: int
    busy_workers: int
    utilization: float
    """Share of worker time spent running handlers since the queue opened, 0..1."""
    wait_p50: float | None
    wait_p99: float | None
    run_p50: float | None
    run_p99: float | None
    uptime: float
    dropped: int = 0
    """Memory mode: queued or scheduled jobs dropped at shutdown."""
    by_priority: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    """``{"high": {...}, "medium": {...}, "low": {...}}``, each with ``enqueued,
    completed, failed, retried, cancelled, rejected, queued, processing, wait_p50,
    wait_p99, run_p50, run_p99`` for that priority's jobs (``rejected``: refused for lack
    of room; a refusal at shutdown counts in the total only)."""

    node: str | None = None
    """Redis: this node's id (the ``node`` of events); ``None`` otherwise."""
    nodes: dict[str, dict[str, int]] | None = None
    """Redis: ``{node id: {"workers": n, "busy_workers": n}}`` of the live nodes whose
    figures ``workers`` and ``busy_workers`` sum; ``None`` otherwise."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``node`` and ``nodes`` only on Redis)."""
        out = attrs.asdict(self)
        if self.nodes is None:
            del out["node"], out["nodes"]
        return out

    def to_prometheus(self, prefix: str = "trioqueue", *, shared: bool = False) -> str:
        """The Prometheus text exposition format (version 0.0.4).

        ``shared``: a node of a queue in Redis.  Each HELP line then says whose figure it
        is: the cluster's (every node shows the same: aggregate across nodes with
        ``max``, not ``sum``) or this node's own (docs/redis-design.md, "Metrics")."""
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            full = f"{prefix}_{name}"
            if shared:
                help_ += _NODE_ONLY if name in _OWN_FIGURES else _CLUSTER_WIDE
            lines.append(f"# HELP {full} {help_}")
            lines.append(f"# TYPE {full} {kind}")
            for labels, value in samples:
                lines.append(f"{full}{labels} {_num(value)}")

        for name, help_ in (
            ("enqueued", "Jobs accepted."),
            ("started", "Attempts started."),
            ("completed", "Jobs completed."),
            ("failed", "Jobs that ended failed (retries exhausted)."),
            ("retried", "Retries scheduled."),
            ("cancelled", "Jobs cancelled."),
            ("rejected", "Enqueues refused (full or shutting down)."),
            ("dropped", "Jobs dropped at shutdown in memory mode."),
        ):
            metric(f"jobs_{name}_total", "counter", help_, [("", getattr(self, name))])
        metric(
            "jobs_queued",
            "gauge",
            "Jobs waiting in a ready queue.",
            [(f'{{priority="{p}"}}', n) for p, n in self.queued.items()],
        )
        metric("jobs_scheduled", "gauge", "Jobs waiting for a due time.", [("", self.scheduled)])
        metric("jobs_processing", "gauge", "Jobs running.", [("", self.processing)])
        metric("workers", "gauge", "Worker tasks.", [("", self.workers)])
        metric("workers_busy", "gauge", "Workers running a job.", [("", self.busy_workers)])
        metric(
            "worker_utilization", "gauge", "Share of worker time busy.", [("", self.utilization)]
        )
        for name, p50, p99, help_ in (
            ("wait", self.wait_p50, self.wait_p99, "Seconds from ready to started."),
            ("run", self.run_p50, self.run_p99, "Seconds a handler ran."),
        ):
            pairs = (("0.5", p50), ("0.99", p99))
            samples = [(f'{{quantile="{q}"}}', v) for q, v in pairs if v is not None]
            metric(f"job_{name}_seconds", "summary", help_, samples)
        metric("uptime_seconds", "gauge", "Seconds since the queue opened.", [("", self.uptime)])
        by = self.by_priority
        if by:
            for name, help_ in _BY_PRIORITY_COUNTERS:
                metric(f"priority_jobs_{name}_total", "counter", help_,
                       [(f'{{priority="{p}"}}', row[name]) for p, row in by.items()])
            metric("priority_jobs_processing", "gauge", "Jobs running, by priority.",
                   [(f'{{priority="{p}"}}', row["processing"]) for p, row in by.items()])
            for name, help_ in (("wait", "Seconds from ready to started, by priority."),
                                ("run", "Seconds a handler ran, by priority.")):
                samples = [
                    (f'{{priority="{p}",quantile="{q}"}}', row[f"{name}_p{key}"])
                    for p, row in by.items()
                    for q, key in (("0.5", "50"), ("0.99", "99"))
                    if row[f"{name}_p{key}"] is not None
                ]
                metric(f"priority_job_{name}_seconds", "summary", help_, samples)
        return "\n".join(lines) + "\n"


_CLUSTER_WIDE = " Cluster-wide: every node shows the same (aggregate with max, not sum)."
_NODE_ONLY = " This node's own."
_OWN_FIGURES = frozenset({
    "jobs_started_total", "jobs_dropped_total", "uptime_seconds", "job_wait_seconds",
    "job_run_seconds", "priority_jobs_processing", "priority_job_wait_seconds",
    "priority_job_run_seconds",
})
"""On a Redis node, the figures that are the node's own (the rest are the cluster's)."""

_BY_PRIORITY_COUNTERS = (
    ("enqueued", "Jobs accepted (new ones, not retries), by priority."),
    ("completed", "Jobs completed, by priority."),
    ("failed", "Jobs that ended failed, by priority."),
    ("retried", "Retries scheduled, by priority."),
    ("cancelled", "Jobs cancelled, by priority."),
    ("rejected", "Enqueues refused for lack of room, by priority."),
)


def _num(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))
