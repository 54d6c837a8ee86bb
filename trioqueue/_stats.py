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

from ._metrics import WINDOW as WINDOW
from ._metrics import Metrics
from ._record import LABELS

_QS = (0.5, 0.99)


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


def _percentiles(data: list[float], qs: Sequence[float]) -> list[float | None]:
    """The nearest-rank percentiles ``qs`` of ``data`` (sorted)."""
    n = len(data)
    if not n:
        return [None for _ in qs]
    return [data[min(n - 1, max(0, math.ceil(q * n) - 1))] for q in qs]


def _merged(parts: list[list[float]]) -> list[float]:
    """Sorted lists as one sorted list (sorting their concatenation merges the runs)."""
    full = [part for part in parts if part]
    if len(full) == 1:
        return full[0]
    data: list[float] = []
    for part in full:
        data += part
    data.sort()
    return data


class Stats:
    """Totals since the queue opened, the ``scheduled`` gauge, and the samplers."""

    __slots__ = (
        "busy_time", "cancelled", "cancelled_p", "completed", "completed_p", "dropped",
        "enqueued", "enqueued_p", "failed", "failed_p", "rejected", "rejected_p", "retried",
        "retried_p", "run_p", "scheduled", "started", "wait_p",
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
        # The same by priority, indexed by the record's int priority (a list index and an
        # add next to each total: the per-job price stays small).
        self.enqueued_p = [0, 0, 0]
        """New jobs by priority (not retries)."""
        self.completed_p = [0, 0, 0]
        self.failed_p = [0, 0, 0]
        self.retried_p = [0, 0, 0]
        self.cancelled_p = [0, 0, 0]
        self.rejected_p = [0, 0, 0]
        """Refused for lack of room (a refusal at shutdown comes before the job has a
        priority: it counts in :attr:`rejected` only)."""
        self.wait_p = (Sampler(), Sampler(), Sampler())
        """Seconds from ready to started, by priority (the totals' percentiles merge
        the three)."""
        self.run_p = (Sampler(), Sampler(), Sampler())
        """Seconds a handler ran, by priority."""


def metrics(
    stats: Stats,
    *,
    uptime: float,
    queued: Sequence[int],
    workers: int,
    running_for: Sequence[float],
    running_priorities: Sequence[int] = (),
) -> Metrics:
    """The :class:`Metrics` of ``stats`` now: ``queued`` jobs waiting per priority,
    ``workers`` in all, how long each busy one has been running its job, and the
    priority of each running job."""
    capacity_time = uptime * workers
    busy = stats.busy_time + sum(running_for)
    # Every attempt started is running or has ended, its run time in busy_time: the
    # run-time summary's count and sum, with nothing added per job.
    # Each priority's samples sorted once, for its own percentiles and the totals'.
    waits = [sorted(s.samples) for s in stats.wait_p]
    runs = [sorted(s.samples) for s in stats.run_p]
    w50, w99 = _percentiles(_merged(waits), _QS)
    r50, r99 = _percentiles(_merged(runs), _QS)
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
        run_count=stats.started - len(running_for),
        run_sum=stats.busy_time,
        busy_seconds=busy,
        by_priority=_by_priority(stats, queued, running_priorities, waits, runs),
    )


def _by_priority(
    stats: Stats, queued: Sequence[int], running: Sequence[int],
    waits: list[list[float]], runs: list[list[float]],
) -> dict[str, dict[str, int | float | None]]:
    processing = [0, 0, 0]
    for p in running:
        processing[p] += 1
    out: dict[str, dict[str, int | float | None]] = {}
    for p, label in enumerate(LABELS):
        w50, w99 = _percentiles(waits[p], _QS)
        r50, r99 = _percentiles(runs[p], _QS)
        out[label] = {
            "enqueued": stats.enqueued_p[p],
            "completed": stats.completed_p[p],
            "failed": stats.failed_p[p],
            "retried": stats.retried_p[p],
            "cancelled": stats.cancelled_p[p],
            "rejected": stats.rejected_p[p],
            "queued": queued[p],
            "processing": processing[p],
            "wait_p50": w50,
            "wait_p99": w99,
            "run_p50": r50,
            "run_p99": r99,
        }
    return out
