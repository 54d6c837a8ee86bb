"""Run a queue and its HTTP API in one nursery: ``open_queue`` beside the HTTP server.

::

    serve()
    └── nursery
        ├── queue task    open_queue(...) until ``stop`` is set, then its graceful shutdown
        └── http server   the ASGI app on one port, until the queue has closed

The HTTP server is Hypercorn's Trio worker (``http_server="hypercorn"``) or the lean
server of :mod:`._lean` (``"lean"``), about five times cheaper per request.

The HTTP server outlives the queue's intake on purpose: while in-flight jobs finish,
``POST /jobs`` answers 503 and ``/healthz`` says ``shutting_down`` (so a load balancer
drains this instance), ``GET /jobs/{id}`` still works, and event streams see the last jobs
finish.  Only when the queue has closed does the HTTP server stop.
"""

from __future__ import annotations

import logging
import socket
from functools import partial

import hypercorn.config
import hypercorn.trio
import trio

from .._config import QueueConfig
from .._engine import JobQueue, open_queue
from .._registry import TaskRegistry
from ._app import App, ServerSettings, ServerState
from ._lean import serve_lean

log = logging.getLogger("trioqueue.server")

HTTP_SERVERS = ("lean", "hypercorn")
DEFAULT_HTTP_SERVER = "lean"


class _Config(hypercorn.config.Config):
    """Hypercorn's config, with a send timeout on every accepted connection.

    ``TCP_USER_TIMEOUT`` (Linux) on the listening socket is inherited by each accepted
    one: a peer that accepts no data (a websocket client that stopped reading, a dead
    host) for that long is disconnected by the kernel.  Hypercorn's sends are shielded
    from cancellation, so this is the one way to cut such a client off.
    """

    user_timeout_ms: int = 0

    def create_sockets(self) -> hypercorn.config.Sockets:
        sockets = super().create_sockets()
        option = getattr(socket, "TCP_USER_TIMEOUT", None)
        if option is not None and self.user_timeout_ms > 0:
            for sock in sockets.insecure_sockets:
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, option, self.user_timeout_ms)
        return sockets


def hypercorn_config(settings: ServerSettings) -> hypercorn.config.Config:
    config = _Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("trioqueue.http")
    config.graceful_timeout = 5.0
    config.websocket_max_message_size = 64 * 1024
    config.user_timeout_ms = int(settings.slow_client_timeout * 1000)
    return config


async def _run_queue(
    registry: TaskRegistry,
    config: QueueConfig,
    stop: trio.Event,
    state: ServerState,
    task_status: trio.TaskStatus[JobQueue] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        async with open_queue(registry, config) as queue:
            task_status.started(queue)
            await stop.wait()
            state.closing = True
            log.info("trioqueue server: shutdown began: new jobs get 503, "
                     "in-flight jobs have %ss to finish", config.shutdown_timeout)
    finally:
        state.closing = True
        state.closed.set()


async def serve(
    registry: TaskRegistry,
    config: QueueConfig | None = None,
    settings: ServerSettings | None = None,
    *,
    stop: trio.Event | None = None,
    http_server: str = DEFAULT_HTTP_SERVER,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``registry``'s tasks over HTTP until ``stop`` is set, then shut down in order.

    ``task_status.started`` receives the base URL (``http://127.0.0.1:PORT``; with port 0
    the port the system chose) once the server accepts connections.  Setting ``stop``
    begins the graceful shutdown: new jobs get 503, in-flight jobs get
    ``config.shutdown_timeout`` seconds, then the queue closes and the server stops.
    Cancelling the caller is the fast exit: running jobs are recorded back as queued.
    ``http_server`` picks the HTTP server: ``"lean"`` or ``"hypercorn"``.
    """
    if http_server not in HTTP_SERVERS:
        raise ValueError(f"http_server: expected one of {', '.join(HTTP_SERVERS)}, "
                         f"got {http_server!r}")
    config = QueueConfig() if config is None else config
    settings = ServerSettings() if settings is None else settings
    stop = trio.Event() if stop is None else stop
    state = ServerState()
    async with trio.open_nursery() as nursery:
        queue = await nursery.start(_run_queue, registry, config, stop, state)
        app = App(queue, settings, state)
        if http_server == "lean":
            url = await nursery.start(partial(
                serve_lean, app, settings.host, settings.port, max_body=settings.max_body,
                user_timeout_ms=int(settings.slow_client_timeout * 1000),
                shutdown_trigger=state.closed.wait,
            ))
        else:
            binds = await nursery.start(
                partial(hypercorn.trio.serve, app, hypercorn_config(settings),  # type: ignore[arg-type]
                        shutdown_trigger=state.closed.wait)
            )
            url = binds[0] if binds else f"http://{settings.host}:{settings.port}"
        log.info("trioqueue server: serving %d tasks on %s (token %s, %s)", len(registry), url,
                 "required" if settings.token else "not set", http_server)
        task_status.started(url)
    log.info("trioqueue server: stopped")
