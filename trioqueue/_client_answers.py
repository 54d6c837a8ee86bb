"""What the client makes of the server's answers: its exceptions, and the reading of a
status, a ``Retry-After`` and the bodies that are not jobs (:mod:`trioqueue.client`)."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from ._exceptions import (
    DuplicateJob,
    InvalidJob,
    InvalidTransition,
    JobNotFound,
    QueueFull,
    ShuttingDown,
    TrioQueueError,
    UnknownTask,
)


class ServerError(TrioQueueError):
    """The server answered with a status this client has no better exception for."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:  # (pickled with what __init__ takes)
        return type(self), (self.status, self.message)


class Unauthorized(ServerError):
    """401: the server has a token and this client sent none or another."""


class EventStreamClosed(TrioQueueError):
    """The server closed the event stream for a reason other than shutting down
    (code 1008: a bad filter or token)."""

    def __init__(self, code: int, reason: str | None) -> None:
        super().__init__(f"event stream closed ({code}): {reason or 'no reason given'}")
        self.code = code
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.code, self.reason)


_ROUTE_NAMES = frozenset({"jobs", "tasks", "metrics", "events", "healthz", "readyz",
                         "openapi.json", "dashboard.js", "dashboard.css"})
"""The first segments of the server's own paths (its ``/events`` and the ``ROUTES`` of
``trioqueue/server/_http.py``): a client URL that ends in one is a route's, not the root
the client puts those paths after."""


def check_url(url: str, name: str = "url") -> str:
    """``url`` without its trailing slashes, as the server's root; :class:`ValueError`
    naming ``name`` when its last path segment is one of the server's routes
    (``http://host:8080/jobs``), where every request would go to the wrong path (``GET
    /jobs/tasks``, a job called "tasks").  Any other path is a prefix the server may be
    mounted under behind a proxy (``https://host/trioqueue``)."""
    root = url.rstrip("/")
    parts = urlsplit(root)
    parent, _, last = parts.path.rpartition("/")
    if last in _ROUTE_NAMES:
        parent_url = urlunsplit((parts.scheme, parts.netloc, parent, "", ""))
        raise ValueError(f"{name}: expected the server's root, not its /{last} route: got "
                         f"{url!r} (the root would be {parent_url!r})")
    return root


def retry_seconds(retry_after: str | None) -> float:
    """``Retry-After`` in seconds: its delay-seconds form (RFC 9110, 10.2.3), or 1.0 when
    it is absent or anything else (an HTTP date, garbage)."""
    try:
        seconds = float(retry_after) if retry_after else 1.0
    except ValueError:
        return 1.0
    return seconds if 0.0 <= seconds < math.inf else 1.0


def retried_count(data: dict[str, Any]) -> int:
    retried = data["retried"]
    if type(retried) is not int:
        raise TypeError(f"'retried' is {retried!r}, not a count")
    return retried


def task_list(data: dict[str, Any]) -> list[dict[str, Any]]:
    tasks = data["tasks"]
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and isinstance(
            t.get("name"), str) for t in tasks):
        raise TypeError("'tasks' is not a list of tasks")
    return tasks


def json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The answer's body if it is a JSON object sent as JSON, else ``None``."""
    if not response.headers.get("content-type", "").startswith("application/json"):
        return None
    try:
        data = response.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def not_ours(response: httpx.Response, why: str) -> ServerError:
    """An answer that no trioqueue server gives: what it was, and the start of it."""
    kind = response.headers.get("content-type") or "no content type"
    body = response.text
    start = body[:120] + ("..." if len(body) > 120 else "")
    return ServerError(response.status_code,
                       f"{response.request.method} {response.request.url} answered in a way "
                       f"no trioqueue server does ({kind}; {why}): is that address a "
                       f"trioqueue server? The answer began {start!r}")


_BUSY = ("server busy: ", "closed to make room for a new connection")
"""How the server's 503s for an overload begin (its connection cap, its budget of large
responses, an eviction), as opposed to those of a shutdown."""


def error_for(status: int, message: str, op: str, retry_after: str | None) -> TrioQueueError:
    if status == 400:
        return InvalidJob(message)
    if status == 404:
        if message.startswith("no route for "):  # not a job or task the server lacks
            return ServerError(status, f"{message}: is the client's URL the server's root?")
        # (retry_all's 404: its task is not registered)
        return UnknownTask(message) if op in ("enqueue", "retry_all") else JobNotFound(message)
    if status == 409:
        return DuplicateJob(message) if op == "enqueue" else InvalidTransition(message)
    if status == 429:
        return QueueFull(message, retry_after=retry_seconds(retry_after))
    if status == 503:
        if message.startswith(_BUSY):  # a temporary overload, not a shutdown: retry later
            return ServerError(status, message)
        return ShuttingDown(message)
    if status == 401:
        return Unauthorized(status, message)
    return ServerError(status, message)
