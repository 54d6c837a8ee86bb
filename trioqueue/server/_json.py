"""What the server writes as JSON: bodies (compact, one encoder), a page of jobs within a
byte budget, and events encoded once for every websocket client."""

from __future__ import annotations

import json
from typing import Any

from .._events import Event
from .._job import Job

_encode_json = json.JSONEncoder(separators=(",", ":")).encode
"""``json.dumps(obj, separators=(",", ":"))`` without making an encoder per call."""


def dumps(obj: Any) -> bytes:
    return _encode_json(obj).encode()


LIST_MAX_BYTES = 8 * 1024 * 1024
"""Bytes of job JSON one ``GET /jobs`` answer carries (past them, the page ends early)."""
SHORT_PAGE = 60 * 1024
"""Bytes of job JSON a ``GET /jobs`` page carries while the server's response budget has
no room for a large answer: under the 64 KiB it counts from, so the page is sent, not
refused, and its build costs little (:func:`._room.page_bytes`)."""


def listing(jobs: list[Job], nxt: str | None, max_bytes: int | None = None) -> bytes:
    """A page of ``GET /jobs``: ``{"jobs": [...], "next": ...}``.  The jobs' JSON stops
    at :data:`LIST_MAX_BYTES`, or ``max_bytes`` if fewer (one job at least), ``next``
    then the last one's id: a page of 1,000 jobs with 1 MiB payloads would be a
    gigabyte, built in memory while the event loop waits."""
    if max_bytes is None or max_bytes > LIST_MAX_BYTES:
        max_bytes = LIST_MAX_BYTES
    parts: list[bytes] = []
    size = 0
    for i, job in enumerate(jobs):
        part = dumps(job.to_dict())
        size += len(part)
        if size > max_bytes and parts:
            nxt = jobs[i - 1].id
            break
        parts.append(part)
    return b'{"jobs":[' + b",".join(parts) + b'],"next":' + dumps(nxt) + b"}"


class EventEncoder:
    """Encodes each event once however many clients receive it (a small ring by seq)."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._cache: dict[int, str] = {}

    def __call__(self, event: Event) -> str:
        if event.type == "lagged":  # per client, and it shares the next event's seq
            return json.dumps(event.to_dict(), separators=(",", ":"))
        text = self._cache.get(event.seq)
        if text is None:
            text = json.dumps(event.to_dict(), separators=(",", ":"))
            cache = self._cache
            if len(cache) >= self._size:
                cache.pop(next(iter(cache)))
            cache[event.seq] = text
        return text
