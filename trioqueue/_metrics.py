"""The :class:`Metrics` snapshot and its JSON and Prometheus forms (the counters and
samplers behind it are in :mod:`trioqueue._stats`)."""

from __future__ import annotations

import math
import re
from typing import Any

import attrs

WINDOW = 4096
"""Latency percentiles cover the most recent this-many jobs of each priority."""


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
    """Share of worker time spent running handlers since the queue opened, 0..1 (an
    average over the whole uptime: :attr:`busy_seconds` gives a recent one)."""
    wait_p50: float | None
    wait_p99: float | None
    run_p50: float | None
    run_p99: float | None
    uptime: float
    dropped: int = 0
    """Memory mode: queued or scheduled jobs dropped at shutdown."""
    run_count: int = 0
    """Attempts of this process that ended (completed, failed, retried, cancelled or
    interrupted while running) since the queue opened."""
    run_sum: float = 0.0
    """Seconds handlers ran in those attempts, in all."""
    busy_seconds: float = 0.0
    """Worker-seconds this process spent running handlers since the queue opened, the
    attempts running now included: its change over a window, divided by the window and
    by ``workers``, is the utilization over that window."""
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

        ``prefix`` starts every metric name (a valid name itself: letters, digits, ``_``
        and ``:``).  ``shared``: a node of a queue in Redis.  Each HELP line then says
        whose figure it is: the cluster's (every node shows the same: aggregate across
        nodes with ``max``, not ``sum``) or this node's own (docs/redis-design.md,
        "Metrics").

        The run time is a summary: quantiles over the most recent jobs, ``_sum`` and
        ``_count`` over every attempt that ended.  Wait times are not summed (that would
        cost every job an addition on the workers' loop), so their quantiles, and the
        per-priority ones, are gauges labelled ``quantile``."""
        if not _NAME.fullmatch(prefix):
            raise ValueError(f"prefix: {prefix!r} is not a Prometheus metric name (letters, "
                             "digits, '_' and ':', not starting with a digit)")
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str,
                   samples: list[tuple[str, dict[str, str], float]]) -> None:
            """One family: its HELP and TYPE once, then ``(suffix, labels, value)``s."""
            full = f"{prefix}_{name}"
            if shared:
                help_ += _NODE_ONLY if name in _OWN_FIGURES else _CLUSTER_WIDE
            lines.append(f"# HELP {full} {escape_help(help_)}")
            lines.append(f"# TYPE {full} {kind}")
            for suffix, labels, value in samples:
                lines.append(f"{full}{suffix}{label_set(labels)} {_num(value)}")

        def one(value: float) -> list[tuple[str, dict[str, str], float]]:
            return [("", {}, value)]

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
            metric(f"jobs_{name}_total", "counter", help_, one(getattr(self, name)))
        metric("jobs_queued", "gauge", "Jobs waiting in a ready queue.",
               [("", {"priority": p}, n) for p, n in self.queued.items()])
        metric("jobs_scheduled", "gauge", "Jobs waiting for a due time.", one(self.scheduled))
        metric("jobs_processing", "gauge", _PROCESSING_SHARED if shared else "Jobs running.",
               one(self.processing))
        metric("workers", "gauge", "Worker tasks.", one(self.workers))
        metric("workers_busy", "gauge", "Workers running a job.", one(self.busy_workers))
        metric("worker_utilization", "gauge",
               "Share of worker time busy since the queue opened ("
               + (_RECENT_UTILIZATION_SHARED.format(prefix=prefix) if shared else "the rate "
                  "of worker_busy_seconds_total over workers gives a recent one") + ").",
               one(self.utilization))
        metric("worker_busy_seconds_total", "counter",
               "Worker-seconds spent running handlers, running attempts included.",
               one(self.busy_seconds))
        metric("job_wait_seconds", "gauge",
               f"Seconds from ready to started: the quantile over the last {WINDOW} jobs "
               "of each priority.", _quantiles(self.wait_p50, self.wait_p99))
        metric("job_run_seconds", "summary",
               f"Seconds a handler ran: quantiles over the last {WINDOW} jobs of each "
               "priority, sum and count over every attempt that ended.",
               [*_quantiles(self.run_p50, self.run_p99), ("_sum", {}, self.run_sum),
                ("_count", {}, self.run_count)])
        metric("uptime_seconds", "gauge", "Seconds since the queue opened.", one(self.uptime))
        by = self.by_priority
        if by:
            for name, help_ in _BY_PRIORITY_COUNTERS:
                metric(f"priority_jobs_{name}_total", "counter", help_,
                       [("", {"priority": p}, row[name]) for p, row in by.items()])
            metric("priority_jobs_processing", "gauge", "Jobs running, by priority.",
                   [("", {"priority": p}, row["processing"]) for p, row in by.items()])
            for name, help_ in (("wait", "Seconds from ready to started, by priority"),
                                ("run", "Seconds a handler ran, by priority")):
                metric(f"priority_job_{name}_seconds", "gauge",
                       f"{help_}: the quantile over its last {WINDOW} jobs.",
                       [sample for p, row in by.items() for sample in _quantiles(
                           row[f"{name}_p50"], row[f"{name}_p99"], priority=p)])
        return "\n".join(lines) + "\n"


_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _quantiles(p50: float | None, p99: float | None, **labels: str
               ) -> list[tuple[str, dict[str, str], float]]:
    """The samples of the two percentiles known so far (none before the first job)."""
    return [("", {**labels, "quantile": q}, v) for q, v in (("0.5", p50), ("0.99", p99))
            if v is not None]


def label_set(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items()) + "}"


def _escape_label(value: str) -> str:
    """A label value as the text format wants it: backslash, double quote and line feed
    escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """HELP text: backslash and line feed escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


_PROCESSING_SHARED = ("Jobs claimed by a node: running, or claimed and not started yet (a "
                      "prefetch buffer, a limited task's set-aside jobs), which the queued "
                      "gauge no longer counts.")
"""The HELP of ``jobs_processing`` on a Redis node: Redis' PROCESSING count."""
_RECENT_UTILIZATION_SHARED = (
    "the cluster's over five minutes is sum(rate({prefix}_worker_busy_seconds_total[5m])) "
    "/ max({prefix}_workers): each node's busy seconds are its own, workers the "
    "cluster's")
"""On a Redis node: the recent utilization's formula (docs/operations.md)."""
_CLUSTER_WIDE = " Cluster-wide: every node shows the same (aggregate with max, not sum)."
_NODE_ONLY = " This node's own."
_OWN_FIGURES = frozenset({
    "jobs_started_total", "jobs_dropped_total", "uptime_seconds", "job_wait_seconds",
    "worker_busy_seconds_total",
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
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    value = float(value)
    if math.isfinite(value):
        return repr(value)
    return "NaN" if math.isnan(value) else "+Inf" if value > 0 else "-Inf"
