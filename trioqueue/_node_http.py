"""The metrics endpoint of a ``trioqueue worker`` (``--metrics-port``): ``GET /metrics``
and ``GET /healthz`` of the node, and nothing else.

A worker has no HTTP API; this gives Prometheus something to scrape on each node.  It
runs on the server's own HTTP machinery (the lean HTTP/1.1 server of
:mod:`trioqueue.server._lean`, the format negotiation of ``/metrics``) with an app of two
read-only routes: no jobs, no events, no token.  The figures are computed when a request
asks for them, as for ``serve``.  ``GET /metrics`` answers only the ``Host`` names that
``serve`` would (:class:`~trioqueue.server._hosts.HostCheck`: the bind address, the local
names, ``--allowed-hosts``), so that a page using DNS rebinding cannot read them;
``GET /healthz`` answers any Host (probes come by address).
"""

from __future__ import annotations

from collections.abc import Iterable

import trio

from ._engine import JobQueue
from .server._app import JSON_TYPE, PROMETHEUS_TYPE
from .server._hosts import HostCheck
from .server._http import CLOSE, HTTPError, Receive, Scope, Send, parse_query, wants_prometheus
from .server._json import dumps
from .server._lean import serve_lean

ROUTES = ("/metrics", "/healthz")
PROBE = "/healthz"
"""Answered whatever the ``Host`` (as on ``serve``): load balancers probe by address."""


class NodeMetricsApp:
    """The ASGI app of a worker's metrics port bound on ``host``; ``allowed_hosts`` (as
    :func:`~trioqueue.server._hosts.parse_allowed_hosts` gives them) are the names it
    answers to besides ``host`` and the local ones."""

    def __init__(self, queue: JobQueue, *, host: str = "127.0.0.1",
                 allowed_hosts: Iterable[str] = ()) -> None:
        self.queue = queue
        self.hosts = HostCheck(host, allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # no event stream here: the upgrade gets 403
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return
        headers: list[tuple[bytes, bytes]]
        try:
            status, body, headers = self._answer(scope)
        except HTTPError as exc:
            status, body, headers = exc.status, dumps({"error": exc.message}), [JSON_TYPE]
            headers.extend(exc.headers)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _answer(self, scope: Scope) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        path, method = scope["path"], scope["method"]
        if path != PROBE:  # before the route: an unknown path says nothing either
            problem = self.hosts.headers_problem(scope["headers"])
            if problem is not None:  # serve's status and body for a bad Host
                raise HTTPError(400, problem, (CLOSE,))
        if path not in ROUTES:
            raise HTTPError(404, f"no route {path!r} here: a worker's metrics port serves "
                            "GET /metrics and GET /healthz only")
        if method != "GET":
            raise HTTPError(405, f"method {method} not allowed on {path}",
                            ((b"allow", b"GET"),))
        if path == "/healthz":
            if self.queue.closing:
                return 503, dumps({"status": "shutting_down"}), [JSON_TYPE]
            return 200, dumps({"status": "ok"}), [JSON_TYPE]
        query = parse_query(scope.get("query_string", b""))
        accept = dict(scope["headers"]).get(b"accept")
        metrics = self.queue.metrics()
        if wants_prometheus(query, accept):
            shared = self.queue.config.redis_url is not None
            return 200, metrics.to_prometheus(shared=shared).encode(), [PROMETHEUS_TYPE]
        return 200, dumps(metrics.to_dict()), [JSON_TYPE]


MAX_CONNECTIONS = 64
"""Connections open at once on a metrics port (scrapers and probes, not clients)."""
MAX_BODY = 1024
"""Request bodies: none is read (413 past this)."""


async def serve_node_metrics(
    queue: JobQueue,
    host: str,
    port: int,
    *,
    stop: trio.Event,
    allowed_hosts: Iterable[str] = (),
    listeners: list[trio.SocketListener] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``queue``'s metrics on ``host:port`` (or on ``listeners``, bound already by
    :func:`bind_metrics`) until ``stop`` is set; ``/metrics`` to the Host names of
    ``host`` and ``allowed_hosts`` only (:class:`NodeMetricsApp`).

    ``task_status.started`` gets the base URL (with port 0, the port the system chose).
    An address that cannot be bound raises the ``OSError`` at once."""
    app = NodeMetricsApp(queue, host=host, allowed_hosts=allowed_hosts)
    await serve_lean(app, host, port, max_body=MAX_BODY,
                     max_connections=MAX_CONNECTIONS, shutdown_trigger=stop.wait,
                     listeners=listeners, task_status=task_status)


async def bind_metrics(host: str, port: int) -> list[trio.SocketListener]:
    """The listening sockets of a metrics port, bound before the node opens its queue:
    a port in use then stops the worker before it joins the cluster (``OSError``)."""
    return await trio.open_tcp_listeners(port, host=host)
