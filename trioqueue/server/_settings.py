"""The server's settings (:class:`ServerSettings`, what it adds to
:class:`~trioqueue.QueueConfig`) and the lifecycle flags the app and :func:`serve` share."""

from __future__ import annotations

import math
from typing import Any

import attrs
import trio

from ._hosts import parse_allowed_hosts
from ._lean import BODY_BUDGET, MAX_USER_TIMEOUT_MS, RESPONSE_BUDGET, check_count

MAX_SLOW_CLIENT_TIMEOUT = MAX_USER_TIMEOUT_MS // 1000
"""The longest ``slow_client_timeout``, in seconds (2147483, about 24.8 days): the
kernel's ``TCP_USER_TIMEOUT`` holds milliseconds in a C ``int``."""


@attrs.define(kw_only=True)
class ServerSettings:
    """What the server adds to :class:`~trioqueue.QueueConfig`."""

    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    """With a token, every request but ``/healthz`` needs ``Authorization: Bearer``."""
    max_body: int = attrs.field(default=1024 * 1024)
    """Request bodies over this many bytes get 413."""
    event_buffer: int = attrs.field(default=1000)
    """Events buffered per websocket client before it is sent ``lagged``."""
    slow_client_timeout: float = attrs.field(default=20.0)
    """Seconds a client may accept no data (a full TCP window) before it is cut off (at
    most :data:`MAX_SLOW_CLIENT_TIMEOUT`)."""
    retry_after: int = 1
    """Seconds in the ``Retry-After`` header of a 429."""
    access_log: bool = False
    allowed_hosts: tuple[str, ...] = attrs.field(default=(), converter=parse_allowed_hosts)
    """Host names answered besides the bind address, ``localhost``, ``127.0.0.1`` and
    ``[::1]`` (a string ``"a,b"`` or a sequence); ``"*"``: any Host (no Host check)."""
    max_connections: int = attrs.field(default=1000)
    """Connections open at once; past it, new ones wait to be accepted."""
    response_budget: int = attrs.field(default=RESPONSE_BUDGET)
    """Bytes of large responses (64 KiB or more) held at once while their clients read
    them (64 MiB; see :data:`._lean.RESPONSE_BUDGET` for why); one that would pass it
    takes the place of those whose clients fell behind reading, or else is dropped and
    answered 503 with ``Retry-After`` (see :mod:`._budget`)."""
    body_budget: int = attrs.field(default=BODY_BUDGET)
    """Bytes of large request bodies (past each one's first 64 KiB) held at once until
    their requests end (64 MiB); past it, connections wait before they read more of their
    bodies, and clients stalled in theirs are closed (see :class:`._budget.BodyBudget`)."""

    @max_body.validator
    @event_buffer.validator
    @max_connections.validator
    def _check_limit(self, attribute: Any, value: int) -> None:
        check_count(attribute.name, value, 1)

    @slow_client_timeout.validator
    def _check_slow_client_timeout(self, attribute: Any, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and 0 < value <= MAX_SLOW_CLIENT_TIMEOUT):
            raise ValueError(f"slow_client_timeout: expected seconds > 0, at most "
                             f"{MAX_SLOW_CLIENT_TIMEOUT} (about 24.8 days: TCP_USER_TIMEOUT "
                             f"holds milliseconds in a C int), got {value!r}")

    @response_budget.validator
    @body_budget.validator
    def _check_budget(self, attribute: Any, value: int) -> None:
        check_count(attribute.name, value, 0)


@attrs.define(eq=False)
class ServerState:
    """Lifecycle flags shared by the app and :func:`serve`."""

    closing: bool = False
    """Shutdown began: new jobs get 503, ``/healthz`` says ``shutting_down``."""
    closed: trio.Event = attrs.Factory(trio.Event)
    """The queue has closed; event streams end."""
