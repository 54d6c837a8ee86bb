"""What a running queue says of itself: its metrics, the periodic tasks' next runs, and
whether it takes new jobs now (:class:`Readings`, a part of :class:`~trioqueue.JobQueue`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import trio

from ._backend import Backend
from ._events import Broadcaster, Event
from ._metrics import Metrics
from ._stats import Stats, metrics
from ._workers import Lifecycle, Workers


class Readings:
    """:class:`~trioqueue.JobQueue`'s readings of itself."""

    _stats: Stats
    _backend: Backend
    _workers: Workers
    _events: Broadcaster
    _life: Lifecycle
    _clock: trio.abc.Clock
    _wall: float
    _opened_at: float
    _next_runs: Mapping[str, float]
    _cluster_metrics: Callable[[Metrics], Metrics] | None

    def next_run(self, task: str) -> float | None:
        """When the periodic task ``task`` runs next (seconds since the epoch), or
        ``None`` (not periodic, or the queue has not scheduled it yet)."""
        return self._next_runs.get(task)

    @property
    def unavailable(self) -> str | None:
        """Why the queue takes no new jobs now, or ``None`` while it does: it is shutting
        down, its store fails to write, or (Redis) Redis does not answer: its calls fail,
        or wait unanswered past a bound (a Redis that hangs), or it refuses writes, until
        one goes through.  What ``GET /readyz`` answers with."""
        if self._life.closing:
            return "shutting down"
        return self._backend.unavailable()

    def metrics_event(self) -> Event:
        """A ``metrics`` event holding :meth:`metrics` now (for event streams)."""
        return Event(
            seq=self._events.next_seq(),
            type="metrics",
            at=self._clock.current_time() + self._wall,
            metrics=self.metrics().to_dict(),
        )

    def metrics(self) -> Metrics:
        """Counters, gauges and latency percentiles, as of now."""
        m = self._node_metrics()
        return m if self._cluster_metrics is None else self._cluster_metrics(m)

    def _node_metrics(self) -> Metrics:
        now = self._clock.current_time()
        return metrics(
            self._stats,
            uptime=now - self._opened_at,
            queued=self._backend.depths(),
            workers=len(self._workers.slots),
            running_for=self._workers.running_for(now),
            running_priorities=self._workers.running_priorities(),
        )
