"""The live dashboard's server side: its three static files and a metrics-history ring.

The page itself (``trioqueue/_dashboard/``: ``index.html``, ``dashboard.js``,
``dashboard.css``) is package data, read once with :mod:`importlib.resources`.  It is a
public shell that holds no data: everything it shows comes afterwards from the API
(``GET /jobs``, ``GET /jobs/{id}``) and the ``/events`` websocket, which need the token
when one is set.  So these routes are answered before the token check.

Every answer carries a strict Content-Security-Policy (scripts, styles and connections to
this origin only, no inline code, no eval, no framing), ``nosniff``, ``no-referrer`` and
``no-cache`` (the three files come to about 60 KB, sent whole on each load: a new version
of trioqueue is never mixed with a cached old script).

:class:`MetricsHistory` keeps the last :data:`HISTORY_SIZE` counter samples, one per
``metrics_interval``, so that the throughput chart has a past the moment a page connects
(``/events?...&history=true`` sends them first, as one ``history`` message).
"""

from __future__ import annotations

import time
from collections import deque
from importlib import resources
from typing import Any

import attrs
import trio

from .._engine import JobQueue

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The Content-Security-Policy of every dashboard file (docs/dashboard.md says why)."""

STATIC_FILES: dict[str, tuple[str, bytes]] = {
    "/": ("index.html", b"text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", b"text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", b"text/css; charset=utf-8"),
}
"""Path -> (file in ``trioqueue/_dashboard``, content type)."""

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
)

HISTORY_SIZE = 120
"""Samples kept: two minutes at the default ``metrics_interval`` of one second."""

HISTORY_FIELDS = ("enqueued", "started", "completed", "failed", "retried", "cancelled",
                  "rejected")
"""The counters a sample keeps (enough for the rates the chart draws)."""


@attrs.frozen
class StaticFile:
    """One file as served: its bytes and content type."""

    body: bytes
    content_type: bytes


_cache: dict[str, StaticFile] = {}


def static_file(path: str) -> StaticFile:
    """The file served at ``path`` (a key of :data:`STATIC_FILES`), read once."""
    found = _cache.get(path)
    if found is None:
        name, content_type = STATIC_FILES[path]
        body = resources.files("trioqueue").joinpath("_dashboard", name).read_bytes()
        found = _cache[path] = StaticFile(body, content_type)
    return found


def static_response(path: str) -> tuple[int, bytes, tuple[tuple[bytes, bytes], ...]]:
    """Status, body and headers for ``GET path`` (a key of :data:`STATIC_FILES`)."""
    file = static_file(path)
    return 200, file.body, ((b"content-type", file.content_type), *SECURITY_HEADERS)


class MetricsHistory:
    """A ring of the last ``size`` counter samples ``{"at", "enqueued", ...}``.

    ``at`` is seconds since the epoch, as in events.  :meth:`run` samples the queue every
    ``metrics_interval`` seconds for as long as the server runs; a sample costs one
    :meth:`JobQueue.metrics` call (two sorts of at most 4096 floats), nothing per job.
    """

    def __init__(self, size: int = HISTORY_SIZE) -> None:
        self._ring: deque[dict[str, Any]] = deque(maxlen=size)

    def record(self, metrics: dict[str, Any], at: float) -> None:
        sample: dict[str, Any] = {"at": round(at, 3)}
        for name in HISTORY_FIELDS:
            sample[name] = metrics.get(name)
        self._ring.append(sample)

    def samples(self) -> list[dict[str, Any]]:
        """Oldest first."""
        return list(self._ring)

    def message(self, interval: float) -> dict[str, Any]:
        """The ``history`` message a websocket client that asked for it gets first."""
        return {"type": "history", "at": time.time(), "interval": interval,
                "samples": self.samples()}

    async def run(self, queue: JobQueue, closed: trio.Event) -> None:
        """Sample ``queue`` every ``metrics_interval`` seconds until ``closed`` is set.

        Times are Trio's clock plus its offset to the wall clock taken once, as the
        queue's own event times are (so a mock clock gives exact ones in tests).
        """
        interval = queue.config.metrics_interval
        offset = time.time() - trio.current_time()
        while not closed.is_set():
            self.record(queue.metrics().to_dict(), trio.current_time() + offset)
            with trio.move_on_after(interval):
                await closed.wait()
