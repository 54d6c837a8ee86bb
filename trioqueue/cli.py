"""The ``trioqueue`` command: ``serve``, ``worker`` (a node of a queue in Redis, without
HTTP), and the client commands ``enqueue``, ``status``, ``list``, ``cancel``, ``retry``,
``metrics``, ``tasks`` and ``monitor``.

Every ``serve`` and ``worker`` flag can also come from the environment
(``TRIOQUEUE_PORT``, ``TRIOQUEUE_REDIS_URL`` and so on; a flag wins).  The client commands
find the server with ``--url`` or ``TRIOQUEUE_URL`` and send ``--token`` /
``TRIOQUEUE_TOKEN``.  Exit status: 0, 1 for a refused or failed operation (and an
unreachable server or Redis), 2 for a bad flag or variable.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterable
from functools import partial
from typing import Any, TextIO
from urllib.parse import quote

import trio

from ._cli_client import (
    cmd_cancel,
    cmd_enqueue,
    cmd_list,
    cmd_metrics,
    cmd_monitor,
    cmd_retry,
    cmd_status,
    cmd_tasks,
)
from ._cli_common import DEFAULT_PORT
from ._cli_common import UsageError as UsageError
from ._cli_common import transport_failure as transport_failure
from ._cli_options import load_registry as load_registry
from ._cli_options import metrics_allowed_hosts, metrics_options
from ._cli_options import queue_options as queue_options
from ._cli_options import serve_options as serve_options
from ._config import QueueConfig
from ._config import redacted as redacted
from ._exceptions import StoreError, TrioQueueError
from ._job import JobStatus
from ._registry import TaskRegistry

log = logging.getLogger("trioqueue.cli")

LOG_LEVELS = ("debug", "info", "warning", "error")
"""``--log-level`` / ``TRIOQUEUE_LOG_LEVEL`` (either case)."""



# ---------------------------------------------------------------------------- helpers


def _setup_logging(level: str, verbose: int = 0) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request at info ("HTTP Request: POST ..."): one line per job of
    # `enqueue --count`, mixed into the progress bar.  Shown with -v (httpcore's
    # connection-level lines with -vv).
    logging.getLogger("httpx").setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)
    # coredis logs each of its re-sends at info ("Retry attempt 1 due to error: ..."):
    # three lines before a node says Redis cannot be reached.  Shown with -v.
    logging.getLogger("coredis").setLevel(logging.INFO if verbose else logging.WARNING)


def _version() -> str:
    try:
        return importlib.metadata.version("trioqueue")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        from . import __version__

        return __version__


# ---------------------------------------------------------------------------- serve


async def _watch_signals(signals: AsyncIterator[int], stop: trio.Event,
                         scope: trio.CancelScope, forced: list[int], jobs_then: str,
                         opened: trio.Event | None = None) -> None:
    """The first SIGINT/SIGTERM sets ``stop`` (the ordered shutdown); a second one
    cancels ``scope`` (at once: running jobs ``jobs_then``) and is kept in ``forced``.

    ``opened``: a node on Redis, whose queue may take many seconds to open (a Redis slow
    to answer or unreachable); until it is set, a first signal cancels ``scope`` at
    once, since the node has run nothing yet."""
    async for signum in signals:
        name = signal.Signals(signum).name
        if opened is not None and not opened.is_set():
            log.info("%s while the queue opens: stopping", name)
            scope.cancel()
            return
        if not stop.is_set():
            log.info("%s: shutting down (send it again to stop at once)", name)
            stop.set()
        else:
            log.warning("second %s: stopping now; running jobs %s", name, jobs_then)
            forced.append(signum)
            scope.cancel()
            return


async def _serve_until_signalled(
    registry: TaskRegistry, config: QueueConfig, settings: Any, out: TextIO
) -> int:
    """Serve; the first SIGINT/SIGTERM shuts down in order, a second one cuts it short."""
    from .server import serve

    stop = trio.Event()
    forced: list[int] = []
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            opened = None if config.redis_url is None else trio.Event()
            nursery.start_soon(
                _watch_signals, signals, stop, nursery.cancel_scope, forced,
                "end failed (memory mode)" if config.persist_path is None
                and config.redis_url is None else "are recorded as queued", opened)

            async def run_server(task_status: trio.TaskStatus[str]) -> None:
                await serve(registry, config, settings, stop=stop, task_status=task_status,
                            opened=opened)
                nursery.cancel_scope.cancel()  # done: stop watching for signals

            url = await nursery.start(run_server)
            print(f"trioqueue serving on {url}", file=out, flush=True)
            if settings.token and out.isatty():
                # In the fragment, which browsers never send to a server; and only to a
                # terminal: a service's stdout goes to a journal or a log collector.
                print(f"trioqueue dashboard: {url}/#token={quote(settings.token, safe='')}",
                      file=out, flush=True)
            elif settings.token:
                print(f"trioqueue dashboard: {url}/ (open {url}/#token=<the token>)",
                      file=out, flush=True)
    if forced:
        return 128 + forced[0]
    return 0


def _lone(group: BaseExceptionGroup[Any], kinds: tuple[type[BaseException], ...]
          ) -> BaseException | None:
    """The one exception of ``kinds`` inside ``group`` (however nested), or None."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    found = [e for e in leaves if isinstance(e, kinds)]
    return found[0] if found else None


def _open_error(error: BaseException | None, config: QueueConfig) -> str | None:
    """The one line that says why the queue could not open, or None (not such an error)."""
    if error is None:
        return None
    if isinstance(error, StoreError):
        return str(error)
    if config.redis_url is not None and isinstance(error, TrioQueueError):
        from ._redis._client import RedisUnavailable

        if isinstance(error, RedisUnavailable):
            said = str(error)
            if said.startswith("cannot use redis at "):  # (open_queue names the URL)
                return said
            return (f"cannot use redis at {redacted(config.redis_url)} (queue "
                    f"{config.queue_name!r}): {said.removeprefix('redis: ')}")
    return None


def _run_node(main: Any, config: QueueConfig, *args: Any) -> tuple[int | None, str | None]:
    """``trio.run(main, ...)``: its exit status, or the line saying why the queue could
    not open; an OSError (the port taken) comes back as that line's cause."""
    try:
        return trio.run(main, *args), None
    except (TrioQueueError, OSError) as exc:
        error: BaseException | None = exc
    except BaseExceptionGroup as group:
        error = _lone(group, (TrioQueueError, OSError))
        if error is None:
            raise
    line = _open_error(error, config)
    if line is None:
        if not isinstance(error, OSError):
            assert error is not None
            raise error
        line = f"OSError: {error}"
    return None, line


def cmd_serve(args: argparse.Namespace) -> int:
    registry, config, settings = serve_options(args, os.environ)
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.token:
        log.warning("serving on %s without a token: anyone who can reach it can run jobs",
                    settings.host)
    code, line = _run_node(_serve_until_signalled, config, registry, config, settings,
                           sys.stdout)
    if code is not None:
        return code
    assert line is not None
    if line.startswith("OSError: "):
        line = f"cannot serve on {settings.host}:{settings.port}: {line.removeprefix('OSError: ')}"
    print(f"trioqueue serve: {line}", file=sys.stderr)
    return 1


# ---------------------------------------------------------------------------- worker


async def _work_until_signalled(registry: TaskRegistry, config: QueueConfig, out: TextIO,
                                metrics: tuple[str, int] | None = None,
                                allowed_hosts: tuple[str, ...] = ()) -> int:
    """Run a node without HTTP (but ``metrics``, ``(host, port)``: its metrics endpoint,
    answering the Host names of its address and ``allowed_hosts``);
    the first SIGINT/SIGTERM shuts it down in order (running jobs get
    ``shutdown_timeout``, claimed ones go back, queued ones stay in Redis), a second one
    cuts it short."""
    from ._node_http import bind_metrics

    forced: list[int] = []
    closed = trio.Event()
    # The metrics port first: one in use stops the worker before it joins the cluster.
    listeners = None if metrics is None else await bind_metrics(*metrics)
    try:
        return await _work(registry, config, out, metrics, allowed_hosts, listeners, forced,
                           closed)
    finally:
        for listener in listeners or ():  # (closed already once served)
            await trio.aclose_forcefully(listener)


def worker_banner(pid: int, config: QueueConfig, node: str | None,
                  tasks: Iterable[str]) -> str:
    """The first line of ``trioqueue worker``: what the node runs, from where."""
    assert config.redis_url is not None
    return (f"trioqueue worker {pid}: {config.workers} worker"
            f"{'' if config.workers == 1 else 's'} on queue {config.queue_name!r} at "
            f"{redacted(config.redis_url)}, node {node}, lease {config.lease:g} s, prefetch "
            f"{config.prefetch}, tasks {', '.join(sorted(tasks)) or '(none)'}")


async def _work(registry: TaskRegistry, config: QueueConfig, out: TextIO,
                metrics: tuple[str, int] | None, allowed_hosts: tuple[str, ...],
                listeners: list[trio.SocketListener] | None,
                forced: list[int], closed: trio.Event) -> int:
    """:func:`_work_until_signalled` once its metrics port is bound."""
    from ._engine import open_queue
    from ._node_http import serve_node_metrics
    from .server._hosts import HostCheck

    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            # From the start: a signal while the queue opens (a Redis slow to answer)
            # is read then, not once it has opened.
            opened = trio.Event()
            nursery.start_soon(_watch_signals, signals, stop, nursery.cancel_scope, forced,
                               "go back to the queue", opened)
            async with open_queue(registry, config) as queue:
                opened.set()
                assert config.redis_url is not None
                url = None
                if metrics is not None:  # it answers until the queue has closed
                    url = await nursery.start(partial(serve_node_metrics, queue, *metrics,
                                                      stop=closed, allowed_hosts=allowed_hosts,
                                                      listeners=listeners))
                print(worker_banner(os.getpid(), config, queue.metrics().node, registry),
                      file=out, flush=True)
                if url is not None:
                    assert metrics is not None
                    hosts = HostCheck(metrics[0], allowed_hosts).describe()
                    print(f"trioqueue worker {os.getpid()}: metrics on {url}/metrics "
                          f"(answers to Host {hosts})", file=out, flush=True)
                if not stop.is_set():
                    await stop.wait()
            closed.set()
            nursery.cancel_scope.cancel()  # closed: stop watching for signals
    if forced:
        return 128 + forced[0]
    print(f"trioqueue worker {os.getpid()}: stopped", file=out, flush=True)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    registry, config = queue_options(args, os.environ, worker=True)
    metrics = metrics_options(args, os.environ)
    allowed_hosts = metrics_allowed_hosts(args, os.environ, metrics)
    code, line = _run_node(_work_until_signalled, config, registry, config, sys.stdout,
                           metrics, allowed_hosts)
    if code is not None:
        return code
    assert line is not None
    if metrics is not None and line.startswith("OSError: "):
        line = (f"cannot serve metrics on {metrics[0]}:{metrics[1]}: "
                f"{line.removeprefix('OSError: ')}")
    print(f"trioqueue worker: {line}", file=sys.stderr)
    return 1


# ---------------------------------------------------------------------------- main


class _CommandParser(argparse.ArgumentParser):
    """A command's parser: its options and its positional arguments in any order
    (``enqueue echo --id a1 '{"a": 1}'``), as ``parse_intermixed_args`` reads them.  That
    cannot parse the top level (its command is a positional with ``nargs=PARSER``), but
    each command's parser can: it is given the words after the command's name.  With a
    ``--`` among them, they are read as before (all that follows it is positional, which
    the intermixed parse does not keep to)."""

    _intermixed = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        # (Python < 3.12: the intermixed parse's two passes come back through here)
        if self._intermixed or (args is not None and "--" in args):
            return super().parse_known_args(args, namespace)
        self._intermixed = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixed = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trioqueue", description="A job queue for Trio: server, client and monitor."
    )
    parser.add_argument("--version", action="version", version=f"trioqueue {_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log each HTTP request of the client commands (-vv: more)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_CommandParser)

    serve = commands.add_parser("serve", help="run the queue with its HTTP API",
                                description="Run a queue and its HTTP API on one port. "
                                "Each flag but --access-log also comes from "
                                "TRIOQUEUE_<FLAG>, but --redis from TRIOQUEUE_REDIS_URL "
                                "(a flag wins; a TRIOQUEUE_ variable trioqueue does not "
                                "read is named in a warning).")

    def queue_flags(p: argparse.ArgumentParser, *, worker: bool = False) -> None:
        p.add_argument("--app", help="MODULE:REGISTRY of your tasks (default: demo tasks)")
        zero = "" if worker else "; 0 with --redis: this node runs no jobs"
        p.add_argument("--workers", type=int, help=f"worker tasks (default 4{zero})")
        p.add_argument("--capacity", type=int, help="jobs waiting per priority (default 1000)")
        if not worker:
            p.add_argument("--db", help="SQLite file: makes jobs durable")
            p.add_argument("--durability", choices=("sync", "batch"), help="with --db")
        p.add_argument("--redis", metavar="URL", help="redis://HOST:PORT/DB: the queue lives "
                       "in Redis, shared by every node opened on it"
                       f"{'' if worker else ' (excludes --db)'}")
        p.add_argument("--queue", metavar="NAME",
                       help="with --redis: which queue (default 'default')")
        p.add_argument("--lease", type=float, help="with --redis: seconds a dead node's "
                       "jobs wait before another node runs them (default 30)")
        p.add_argument("--prefetch", type=int, help="with --redis: jobs claimed beyond idle "
                       "workers (default 0: exact fairness across nodes)")
        p.add_argument("--shutdown-timeout", type=float,
                       help="seconds in-flight jobs get at shutdown (default 30)")

    queue_flags(serve)
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help=f"port (default {DEFAULT_PORT}; 0: any free)")
    serve.add_argument("--token", help="bearer token required on everything but /healthz, "
                       "/readyz and the dashboard's page (/, /dashboard.js, /dashboard.css)")
    serve.add_argument("--max-body", type=int, help="request body limit in bytes (1 MiB)")
    serve.add_argument("--event-buffer", type=int,
                       help="events buffered per websocket client (default 1000)")
    serve.add_argument("--slow-client-timeout", type=float,
                       help="seconds a client may accept no data before it is cut off (20)")
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument("--allowed-hosts", metavar="A,B",
                       help="Host names answered besides the bind address and localhost "
                       "(behind a proxy: its public name); '*': any")
    serve.add_argument("--max-connections", type=int,
                       help="connections open at once (default 1000)")
    serve.add_argument("--response-budget", type=int, metavar="BYTES",
                       help="bytes of large responses held at once for clients still "
                       "reading them; past it, 503 (default 67108864: 64 MiB)")
    serve.add_argument("--body-budget", type=int, metavar="BYTES",
                       help="bytes of large request bodies held at once; past it, bodies "
                       "wait to be read (default 67108864: 64 MiB)")
    serve.add_argument("--log-level", default=None, type=str.lower, choices=LOG_LEVELS,
                       help="debug (one line per job state change), info (default), warning, "
                       "error")
    serve.set_defaults(handler=cmd_serve)

    worker = commands.add_parser(
        "worker", help="run a node of a queue in Redis, without HTTP",
        description="Run the tasks of --app from a queue in Redis until SIGTERM or Ctrl+C "
        "(then running jobs get --shutdown-timeout, and queued jobs stay for the other "
        "nodes). Each flag also comes from TRIOQUEUE_<FLAG> (TRIOQUEUE_REDIS_URL, "
        "TRIOQUEUE_QUEUE, ...; a flag wins).")
    queue_flags(worker, worker=True)
    worker.add_argument("--log-level", default=None, type=str.lower, choices=LOG_LEVELS,
                        help="debug (one line per job state change), info (default), "
                        "warning, error")
    worker.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve GET /metrics (JSON or Prometheus) and /healthz on this "
                        "port (default: none; 0: any free)")
    worker.add_argument("--metrics-host", metavar="HOST",
                        help="address of --metrics-port (default 127.0.0.1)")
    worker.add_argument("--allowed-hosts", metavar="A,B",
                        help="Host names --metrics-port answers besides its address and "
                        "localhost (/healthz: any); '*': any")
    worker.set_defaults(handler=cmd_worker)

    def client_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", help="server URL (TRIOQUEUE_URL; default "
                       "http://127.0.0.1:PORT, the port from TRIOQUEUE_PORT or PORT, else "
                       f"{DEFAULT_PORT})")
        p.add_argument("--token", help="bearer token (TRIOQUEUE_TOKEN)")
        # SUPPRESS: given after the command it counts, left out it keeps the top-level -v.
        p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                       help="log each HTTP request (-vv: more)")

    def run(command: Any) -> Any:
        return lambda a: trio.run(command, a)

    enqueue = commands.add_parser("enqueue", help="post a job (or --count N of them)")
    enqueue.add_argument("task")
    enqueue.add_argument("payload", nargs="?", help="the payload as JSON")
    enqueue.add_argument("--priority", choices=("high", "medium", "low"))
    enqueue.add_argument("--id", help="job id (with --count: ID-0, ID-1, ...)")
    enqueue.add_argument("--delay", type=float, help="seconds before it may run")
    enqueue.add_argument("--max-retries", type=int)
    enqueue.add_argument("--timeout", type=float, help="seconds one attempt may run")
    enqueue.add_argument("--count", type=int, default=1, help="post N copies (progress bar)")
    enqueue.add_argument("--concurrency", type=int, default=16,
                         help="requests in flight with --count (default 16)")
    enqueue.add_argument("--wait", action="store_true", help="wait for the job to finish")
    client_flags(enqueue)
    enqueue.set_defaults(handler=run(cmd_enqueue))

    status = commands.add_parser("status", help="show one job")
    status.add_argument("id")
    client_flags(status)
    status.set_defaults(handler=run(cmd_status))

    statuses = [s.value for s in JobStatus]
    listing = commands.add_parser("list", help="list jobs, newest first",
                                  description="Jobs, newest first, as a table (--json: as "
                                  "the server sends them).")
    listing.add_argument("--status", choices=statuses, help="only jobs in this status")
    listing.add_argument("--task", help="only this task's jobs")
    listing.add_argument("--limit", type=int, default=20,
                         help="at most N jobs (default 20; the server sends 1000 at most)")
    listing.add_argument("--before", metavar="ID",
                         help="only jobs created before job ID (the next page of a listing)")
    listing.add_argument("--all", action="store_true",
                         help="every job, fetched a page at a time (--limit and --before "
                         "do not apply)")
    listing.add_argument("--json", action="store_true",
                         help='print {"jobs": [...], "next": ID or null}')
    client_flags(listing)
    listing.set_defaults(handler=run(cmd_list))

    cancel = commands.add_parser("cancel", help="cancel a queued, scheduled or running job")
    cancel.add_argument("id")
    client_flags(cancel)
    cancel.set_defaults(handler=run(cmd_cancel))

    retry = commands.add_parser(
        "retry", help="queue a failed or cancelled job again (or all of them)",
        description="Queue a FAILED or CANCELLED job again with fresh attempts; with "
        "--failed or --cancelled, every job in that status (of --task only, if given).")
    retry.add_argument("id", nargs="?", help="the job")
    which = retry.add_mutually_exclusive_group()
    which.add_argument("--failed", action="store_true", help="every failed job")
    which.add_argument("--cancelled", action="store_true", help="every cancelled job")
    retry.add_argument("--task", help="with --failed/--cancelled: only this task's jobs")
    client_flags(retry)
    retry.set_defaults(handler=run(cmd_retry))

    metrics = commands.add_parser("metrics", help="counters, gauges and latencies")
    metrics.add_argument("--prometheus", action="store_true",
                         help="the Prometheus text format instead of JSON")
    client_flags(metrics)
    metrics.set_defaults(handler=run(cmd_metrics))

    tasks = commands.add_parser("tasks", help="the tasks the server runs, with their defaults")
    tasks.add_argument("--json", action="store_true", help='print {"tasks": [...]}')
    client_flags(tasks)
    tasks.set_defaults(handler=run(cmd_tasks))

    monitor = commands.add_parser(
        "monitor", help="a live view of rates, workers, counts and recent failures",
        description="A live view of the server's event stream: rates and utilization over "
        "the last --window seconds, counts, latencies and recent failures, fitted to the "
        "terminal.  It reconnects by itself when the connection drops; Ctrl+C ends it.")
    monitor.add_argument("--interval", type=float, default=1.0, help="seconds per refresh")
    monitor.add_argument("--window", type=float, default=5.0,
                         help="seconds the rates and utilization cover (default 5)")
    monitor.add_argument("--duration", type=float, default=0, help="stop after N seconds")
    monitor.add_argument("--once", action="store_true",
                         help="print one view (rates from the server's recent samples) and exit")
    client_flags(monitor)
    monitor.set_defaults(handler=run(cmd_monitor))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = getattr(args, "log_level", None)
    if level is None:
        level = os.environ.get("TRIOQUEUE_LOG_LEVEL") or "info"
        if level.lower() not in LOG_LEVELS:
            print(f"trioqueue {args.command}: TRIOQUEUE_LOG_LEVEL: expected one of "
                  f"{', '.join(LOG_LEVELS)}, got {level!r}", file=sys.stderr)
            return 2
    _setup_logging(level, args.verbose)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        found = exc
        # httpx only if a command imported it (serve and worker do not: 0.1-0.2 s).
        httpx = sys.modules.get("httpx")
        transport: tuple[type[BaseException], ...] = (
            OSError,) if httpx is None else (httpx.TransportError, OSError)
        if isinstance(exc, BaseExceptionGroup):
            if _lone(exc, (KeyboardInterrupt,)) is not None:
                return 130  # Ctrl+C while requests were in flight (enqueue --count)
            found = _lone(exc, (UsageError, TrioQueueError, *transport)) or exc
        if isinstance(found, BrokenPipeError):  # `trioqueue list | head`: stop quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the exit's flush of stdout is quiet
            return 128 + signal.SIGPIPE
        if isinstance(found, UsageError):
            print(f"trioqueue {args.command}: {found}", file=sys.stderr)
            return 2
        if isinstance(found, TrioQueueError):
            from .client import Unauthorized

            hint = " (give --token or set TRIOQUEUE_TOKEN)" if isinstance(
                found, Unauthorized) else ""
            print(f"trioqueue {args.command}: {type(found).__name__}: {found}{hint}",
                  file=sys.stderr)
            return 1
        if isinstance(found, transport):
            print(f"trioqueue {args.command}: {transport_failure(found)}", file=sys.stderr)
            return 1
        raise
    return code
