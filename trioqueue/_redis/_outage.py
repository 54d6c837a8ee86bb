"""What a node says while Redis cannot be reached: one warning when it starts, a reminder
at most every :data:`REMIND` seconds, one line when it ends (not a line per failed call:
a node's fetchers, timer and heartbeat each retry several times a second).

Two things besides failed calls make Redis unavailable to :meth:`Outage.describe` (what
``GET /readyz`` answers): script calls in flight with no answer for :func:`stall_bound`
seconds (a Redis that hangs: stopped, or behind a network partition, fails no call for
the 15-37 s its timeouts take), and, once Redis refused writes (over ``maxmemory``, a
read-only replica), every call until one that wrote succeeds: reads and calls that write
nothing still answer meanwhile, and ended the outage each second."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ._client import RedisRefused, Waiting

log = logging.getLogger("trioqueue")

REMIND = 30.0
"""Seconds between two warnings that Redis is still unavailable."""

STALL_MAX = 2.0
"""Seconds without an answer to a call in flight after which Redis is unavailable, at
most (:func:`stall_bound`)."""


def stall_bound(lease: float) -> float:
    """How long script calls in flight may wait for an answer before Redis counts as
    unavailable: a third of the lease (the heartbeat's period: a renewal unanswered that
    long means the next one is overdue, and the leases lapse after three), at most
    :data:`STALL_MAX` (a healthy Redis answers a script in milliseconds; its own
    slow-script threshold is 5 s) and at least 0.5 s (a loaded machine's pauses)."""
    return max(0.5, min(STALL_MAX, lease / 3))


class Outage:
    """The node's view of whether Redis answers (``now``: trio's clock)."""

    __slots__ = ("_bound", "_failures", "_last", "_now", "_said", "_waiting",
                 "_writes_refused", "since")

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self.since: float | None = None
        """When the calls began to fail, or ``None`` while Redis answers."""
        self._said = 0.0
        self._failures = 0
        self._last = ""
        self._writes_refused = False
        """Writes were refused in this outage: only a call that wrote ends it."""
        self._waiting: Waiting | None = None
        """The client's calls in flight, once :meth:`watch` is given them."""
        self._bound = STALL_MAX

    def watch(self, waiting: Waiting, bound: float) -> None:
        """Count script calls waiting more than ``bound`` seconds for an answer (the
        client's :attr:`~trioqueue._redis._client.RedisClient.waiting`) as an outage."""
        self._waiting = waiting
        self._bound = bound

    def failed(self, what: str, exc: BaseException) -> None:
        """A call for ``what`` (``claims``, ``timer``, ``heartbeat``) failed with ``exc``."""
        now = self._now()
        self._failures += 1
        self._last = f"{what}: {exc}"
        if isinstance(exc, RedisRefused) and exc.writes:
            self._writes_refused = True
        if self.since is None:
            # It began when the calls still in flight stopped getting answers, if they
            # did before this one failed (a Redis that hangs: the first failure comes a
            # timeout later).
            waiting = self._waiting
            stalled = waiting is not None and waiting.calls and waiting.since < now
            self.since = waiting.since if stalled and waiting is not None else now
            self._said = now
            log.warning("trioqueue: redis unavailable (%s: %s); retrying", what, exc)
        elif now - self._said >= REMIND:
            self._said = now
            log.warning("trioqueue: redis still unavailable after %.0f s (%d failed calls; "
                        "the last, %s: %s)", now - self.since, self._failures, what, exc)

    def describe(self) -> str | None:
        """While Redis does not answer (calls fail, or wait unanswered for longer than
        the bound): for how long, and the last failure."""
        now = self._now()
        if self.since is None:
            waiting = self._waiting
            if waiting is None or not waiting.calls:
                return None
            stalled = waiting.stalled(now)
            if stalled < self._bound:
                return None
            return (f"redis unavailable for {stalled:.1f} s (no answer to {waiting.calls} "
                    f"calls in flight)")
        return (f"redis unavailable for {now - self.since:.0f} s "
                f"({self._failures} failed calls; the last, {self._last})")

    def answered(self) -> None:
        """A call succeeded: if Redis was unavailable, say for how long; not if it
        refused writes (this call may have written nothing: :meth:`wrote` ends that)."""
        if self.since is not None and not self._writes_refused:
            self._end()

    def wrote(self) -> None:
        """A call that writes succeeded (the heartbeat, an accepted job): Redis takes
        the node's calls again, writes too."""
        if self.since is not None:
            self._end()

    def _end(self) -> None:
        assert self.since is not None
        log.warning("trioqueue: redis answers again after %.1f s (%d failed calls)",
                    self._now() - self.since, self._failures)
        self.since = None
        self._failures = 0
        self._writes_refused = False
