"""The queue's counters and latency samplers, and the :class:`Metrics` made from them.

One :class:`Stats` per queue.  The state's parts count what they do to jobs (accepted,
started, ended, retried, scheduled); the workers add run times; :func:`metrics` turns it
all into a frozen snapshot on demand.  Counters are plain ints and a sample is one
append: no per-job allocation, and nothing is computed until someone asks.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence

from ._metrics import Metrics
from ._record import LABELS

WINDOW = 4096
"""Latency percentiles cover the most recent this-many jobs."""


class Sampler:
    """The last :data:`WINDOW` samples of a latency.

    :attr:`add` is the bound ``append`` of a bounded deque: a call into C, as cheap as
    the two list stores the worker loop used to inline, so there is one way to add a
    sample and no copy of it.
    """

    __slots__ = ("add", "samples")

    def __init__(self) -> None:
        self.samples: deque[float] = deque(maxlen=WINDOW)
        self.add: Callable[[float], None] = self.samples.append

    def percentiles(self, *qs: float) -> list[float | None]:
        n = len(self.samples)
        if not n:
            return [None for _ in qs]
        data = sorted(self.samples)
        return [data[min(n - 1, max(0, math.ceil(q * n) - 1))] for q in qs]


class Stats:
    """Totals since the queue opened, the ``scheduled`` gauge, and the samplers."""

    __slots__ = (
        "busy_time", "cancelled", "completed", "dropped", "enqueued", "failed", "rejected",
        "retried", "run", "scheduled", "started", "wait",
    )

    def __init__(self) -> None:
        self.enqueued = 0
        """New jobs accepted (re-queues by ``retry()`` are not counted)."""
        self.started = 0
        self.completed = 0
        self.failed = 0
        self.retried = 0
        self.cancelled = 0
        self.rejected = 0
        self.dropped = 0
        self.scheduled = 0
        """Jobs waiting for a due time (a gauge)."""
        self.busy_time = 0.0
        """Seconds workers spent in finished attempts (running ones are added live)."""
        self.wait = Sampler()
        """Seconds from ready to started."""
        self.run = Sampler()
        """Seconds a handler ran."""


def metrics(
    stats: Stats,
    *,
    uptime: float,
    queued: Sequence[int],
    workers: int,
    running_for: Sequence[float],
) -> Metrics:
    """The :class:`Metrics` of ``stats`` now: ``queued`` jobs waiting per priority,
    ``workers`` in all, and how long each busy one has been running its job."""
    capacity_time = uptime * workers
    busy = stats.busy_time + sum(running_for)
    w50, w99 = stats.wait.percentiles(0.5, 0.99)
    r50, r99 = stats.run.percentiles(0.5, 0.99)
    return Metrics(
        enqueued=stats.enqueued,
        started=stats.started,
        completed=stats.completed,
        failed=stats.failed,
        retried=stats.retried,
        cancelled=stats.cancelled,
        rejected=stats.rejected,
        queued=dict(zip(LABELS, queued, strict=True)),
        scheduled=stats.scheduled,
        processing=len(running_for),
        workers=workers,
        busy_workers=len(running_for),
        utilization=min(1.0, busy / capacity_time) if capacity_time > 0 else 0.0,
        wait_p50=w50,
        wait_p99=w99,
        run_p50=r50,
        run_p99=r99,
        uptime=uptime,
        dropped=stats.dropped,
    )
