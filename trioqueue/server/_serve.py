"""Run a queue and its HTTP API in one nursery: ``open_queue`` beside the HTTP server.

::

    serve()
    └── nursery
        ├── queue task    open_queue(...) until ``stop`` is set, then its graceful shutdown
        └── http server   the ASGI app on one port, until the queue has closed

The HTTP server is the lean one of :mod:`._lean` (HTTP/1.1 and websockets on plain Trio
streams): the one server path, which the whole test suite runs.

The HTTP server outlives the queue's intake on purpose: while in-flight jobs finish,
``POST /jobs`` answers 503 and ``/healthz`` says ``shutting_down`` (so a load balancer
drains this instance), ``GET /jobs/{id}`` still works, and event streams see the last jobs
finish.  Only when the queue has closed does the HTTP server stop.
"""

from __future__ import annotations

import logging
import math
from functools import partial

import trio

from .._config import QueueConfig
from .._engine import JobQueue, open_queue
from .._registry import TaskRegistry
from ._app import App
from ._lean import serve_lean
from ._settings import ServerSettings, ServerState

log = logging.getLogger("trioqueue.server")


async def _run_queue(
    registry: TaskRegistry,
    config: QueueConfig,
    stop: trio.Event,
    state: ServerState,
    opened: trio.Event | None,
    task_status: trio.TaskStatus[JobQueue] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        async with open_queue(registry, config) as queue:
            if opened is not None:
                opened.set()
            task_status.started(queue)
            if not stop.is_set():  # (set while the queue opened: no checkpoint, no job run)
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
    opened: trio.Event | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``registry``'s tasks over HTTP until ``stop`` is set, then shut down in order.

    ``task_status.started`` receives the base URL (``http://127.0.0.1:PORT``; with port 0
    the port the system chose) once the server accepts connections.  Setting ``stop``
    begins the graceful shutdown: new jobs get 503, in-flight jobs get
    ``config.shutdown_timeout`` seconds, then the queue closes and the server stops.
    Cancelling the caller is the fast exit: running jobs are recorded back as queued.
    ``opened``, if given, is set once the queue is open (jobs may run from then on),
    before the HTTP server answers.
    """
    config = QueueConfig() if config is None else config
    settings = ServerSettings() if settings is None else settings
    stop = trio.Event() if stop is None else stop
    # The port first: one in use (OSError) stops the server before the queue opens, so a
    # server that cannot serve never runs, claims or schedules a job.
    listeners = await trio.open_tcp_listeners(settings.port, host=settings.host)
    try:
        await _serve(registry, config, settings, stop, opened, listeners, task_status)
    finally:
        for listener in listeners:  # (closed already once served)
            await trio.aclose_forcefully(listener)
    log.info("trioqueue server: stopped")


async def _serve(registry: TaskRegistry, config: QueueConfig, settings: ServerSettings,
                 stop: trio.Event, opened: trio.Event | None,
                 listeners: list[trio.SocketListener],
                 task_status: trio.TaskStatus[str]) -> None:
    """:func:`serve` once its port is bound."""
    state = ServerState()
    async with trio.open_nursery() as nursery:
        queue = await nursery.start(_run_queue, registry, config, stop, state, opened)
        app = App(queue, settings, state)
        nursery.start_soon(app.history.run, queue, state.closed)  # the dashboard's chart
        url = await nursery.start(partial(
            serve_lean, app, settings.host, settings.port, max_body=settings.max_body,
            # (rounded up: a timeout under a millisecond is 1 ms, not 0, which is none)
            user_timeout_ms=math.ceil(settings.slow_client_timeout * 1000),
            max_connections=settings.max_connections, response_budget=settings.response_budget,
            body_budget=settings.body_budget,
            shutdown_trigger=state.closed.wait, listeners=listeners,
        ))
        node = queue.metrics().node  # on Redis, the id events and metrics name it by
        log.info("trioqueue server: serving %d task%s on %s (token %s; answers to Host %s%s)",
                 len(registry), "" if len(registry) == 1 else "s", url,
                 "required" if settings.token else "not set",
                 app.hosts.describe(),
                 "" if node is None else f"; redis node {node}, lease {config.lease:g} s, "
                 f"prefetch {config.prefetch}")
        task_status.started(url)
