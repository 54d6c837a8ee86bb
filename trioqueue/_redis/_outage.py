"""What a node says while Redis cannot be reached: one warning when it starts, a reminder
at most every :data:`REMIND` seconds, one line when it ends (not a line per failed call:
a node's fetchers, timer and heartbeat each retry several times a second)."""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("trioqueue")

REMIND = 30.0
"""Seconds between two warnings that Redis is still unavailable."""


class Outage:
    """The node's view of whether Redis answers (``now``: trio's clock)."""

    __slots__ = ("_failures", "_last", "_now", "_said", "since")

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self.since: float | None = None
        """When the calls began to fail, or ``None`` while Redis answers."""
        self._said = 0.0
        self._failures = 0
        self._last = ""

    def failed(self, what: str, exc: BaseException) -> None:
        """A call for ``what`` (``claims``, ``timer``, ``heartbeat``) failed with ``exc``."""
        now = self._now()
        self._failures += 1
        self._last = f"{what}: {exc}"
        if self.since is None:
            self.since = self._said = now
            log.warning("trioqueue: redis unavailable (%s: %s); retrying", what, exc)
        elif now - self._said >= REMIND:
            self._said = now
            log.warning("trioqueue: redis still unavailable after %.0f s (%d failed calls; "
                        "the last, %s: %s)", now - self.since, self._failures, what, exc)

    def describe(self) -> str | None:
        """While Redis does not answer: for how long, and the last failure."""
        if self.since is None:
            return None
        return (f"redis unavailable for {self._now() - self.since:.0f} s "
                f"({self._failures} failed calls; the last, {self._last})")

    def answered(self) -> None:
        """A call succeeded: if Redis was unavailable, say for how long."""
        if self.since is not None:
            log.warning("trioqueue: redis answers again after %.1f s (%d failed calls)",
                        self._now() - self.since, self._failures)
            self.since = None
            self._failures = 0
