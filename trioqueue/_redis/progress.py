"""``report_progress`` on a Redis node: each change that :class:`~trioqueue._progress.Progress`
lets through (at most one per job per ``INTERVAL``) goes to Redis, not to this node's
subscribers: a ``progress`` outcome sets the record's ``progress`` (so ``job.progress``
shows it from any node) and writes a ``progress`` event to the queue's stream, which
every node's events reader hands to its subscribers, this node's included.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from .._events import Broadcaster
from .._progress import Progress
from .._record import JobRecord


class RedisProgress(Progress):
    def __init__(self, send: Callable[[JobRecord], None], events: Broadcaster,
                 clock: trio.abc.Clock, wall_offset: float) -> None:
        super().__init__(events, clock.current_time,
                         lambda: clock.current_time() + wall_offset)
        self._send_to_redis = send
        """:meth:`RedisBackend.send_progress`."""

    def _send(self, rec: JobRecord, now: float, worker: int | None, *,
              keep: bool = True) -> None:
        if keep:
            self._last[rec.id] = now
        self._send_to_redis(rec)
