"""The ``trioqueue`` command: ``serve``, ``enqueue``, ``status`` and ``monitor``.

Every ``serve`` flag can also come from the environment (``TRIOQUEUE_PORT`` and so on;
a flag wins).  The client commands find the server with ``--url`` or ``TRIOQUEUE_URL``
and send ``--token`` / ``TRIOQUEUE_TOKEN``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import math
import os
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Mapping
from typing import Any, TextIO
from urllib.parse import quote

import httpx
import trio

from ._config import QueueConfig
from ._exceptions import QueueFull, StoreError, TrioQueueError
from ._registry import TaskRegistry

log = logging.getLogger("trioqueue.cli")

DEFAULT_PORT = 8080


class UsageError(Exception):
    """A bad flag, environment variable or ``--app``: printed, exit status 2."""


# ---------------------------------------------------------------------------- helpers


def load_registry(spec: str) -> TaskRegistry:
    """``module:attribute`` (a :class:`TaskRegistry`, or a function returning one)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"--app: expected MODULE:REGISTRY, got {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules beside you import
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"--app: cannot import {module_name!r}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"--app: module {module_name!r} has no {attr!r}") from None
    if callable(obj) and not isinstance(obj, TaskRegistry) and _takes_no_arguments(obj):
        obj = obj()  # a factory
    if not isinstance(obj, TaskRegistry):
        raise UsageError(f"--app: {spec} is a {type(obj).__name__}, not a TaskRegistry")
    return obj


def _takes_no_arguments(fn: Any) -> bool:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return all(
        p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        for p in signature.parameters.values()
    ) and not inspect.iscoroutinefunction(fn)


def _env_first(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name)
        if value:
            return value
    return None


def _int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"{name}: expected an integer, got {raw!r}") from None


def _float(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise UsageError(f"{name}: expected a number, got {raw!r}") from None


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# ---------------------------------------------------------------------------- serve


def serve_options(
    args: argparse.Namespace, env: Mapping[str, str]
) -> tuple[TaskRegistry, QueueConfig, Any]:
    """Flags over ``TRIOQUEUE_*`` (and ``PORT``, ``WORKER_COUNT``, ``JOB_QUEUE_CAPACITY``)."""
    from .server import ServerSettings

    app = args.app or _env_first(env, "TRIOQUEUE_APP")
    if app:
        registry = load_registry(app)
    else:
        from .demo import registry
    overrides: dict[str, Any] = {}
    for flag, field in (("workers", "workers"), ("capacity", "capacity"), ("db", "persist_path"),
                        ("durability", "durability"), ("shutdown_timeout", "shutdown_timeout")):
        value = getattr(args, flag)
        if value is not None:
            overrides[field] = value
    try:
        config = QueueConfig.from_env(env, **overrides)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    host = args.host or _env_first(env, "TRIOQUEUE_HOST") or "127.0.0.1"
    if args.port is not None:
        port = args.port
    else:
        raw = _env_first(env, "TRIOQUEUE_PORT", "PORT")
        port = DEFAULT_PORT if raw is None else _int("TRIOQUEUE_PORT", raw)
    if not 0 <= port <= 65535:
        raise UsageError(f"port: expected 0..65535, got {port}")
    token = args.token if args.token is not None else _env_first(env, "TRIOQUEUE_TOKEN")
    max_body = args.max_body
    if max_body is None:
        raw = _env_first(env, "TRIOQUEUE_MAX_BODY")
        max_body = 1024 * 1024 if raw is None else _int("TRIOQUEUE_MAX_BODY", raw)
    slow = args.slow_client_timeout
    if slow is None:
        raw = _env_first(env, "TRIOQUEUE_SLOW_CLIENT_TIMEOUT")
        slow = 20.0 if raw is None else _float("TRIOQUEUE_SLOW_CLIENT_TIMEOUT", raw)
    event_buffer = args.event_buffer
    if event_buffer is None:
        raw = _env_first(env, "TRIOQUEUE_EVENT_BUFFER")
        event_buffer = 1000 if raw is None else _int("TRIOQUEUE_EVENT_BUFFER", raw)
    max_connections = args.max_connections
    if max_connections is None:
        raw = _env_first(env, "TRIOQUEUE_MAX_CONNECTIONS")
        max_connections = 1000 if raw is None else _int("TRIOQUEUE_MAX_CONNECTIONS", raw)
    if max_body < 1 or event_buffer < 1 or slow <= 0 or max_connections < 1:
        raise UsageError("--max-body, --event-buffer, --slow-client-timeout and "
                         "--max-connections must be > 0")
    hosts, hosts_from = args.allowed_hosts, "--allowed-hosts"
    if hosts is None:
        hosts_from = "TRIOQUEUE_ALLOWED_HOSTS"
        hosts = _env_first(env, hosts_from) or ""
    try:
        settings = ServerSettings(
            host=host, port=port, token=token or None, max_body=max_body,
            event_buffer=event_buffer, slow_client_timeout=slow, access_log=args.access_log,
            allowed_hosts=hosts, max_connections=max_connections,
        )
    except ValueError as exc:  # "allowed_hosts: 'entry': what is wrong"
        raise UsageError(f"{hosts_from}: {str(exc).removeprefix('allowed_hosts: ')}") from None
    if env.get("TRIOQUEUE_HTTP_SERVER"):
        log.warning("TRIOQUEUE_HTTP_SERVER is no longer read: trioqueue has one HTTP server")
    return registry, config, settings


async def _serve_until_signalled(
    registry: TaskRegistry, config: QueueConfig, settings: Any, out: TextIO
) -> int:
    """Serve; the first SIGINT/SIGTERM shuts down in order, a second one cuts it short."""
    from .server import serve

    stop = trio.Event()
    forced: list[int] = []
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if not stop.is_set():
                        log.info("%s: shutting down (send it again to stop at once)", name)
                        stop.set()
                    else:
                        log.warning("second %s: stopping now; running jobs are recorded "
                                    "as queued", name)
                        forced.append(signum)
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(watch_signals)

            async def run_server(task_status: trio.TaskStatus[str]) -> None:
                await serve(registry, config, settings, stop=stop, task_status=task_status)
                nursery.cancel_scope.cancel()  # done: stop watching for signals

            url = await nursery.start(run_server)
            print(f"trioqueue serving on {url}", file=out, flush=True)
            if settings.token:  # in the fragment, which browsers never send to a server
                print(f"trioqueue dashboard: {url}/#token={quote(settings.token, safe='')}",
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


def cmd_serve(args: argparse.Namespace) -> int:
    registry, config, settings = serve_options(args, os.environ)
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.token:
        log.warning("serving on %s without a token: anyone who can reach it can run jobs",
                    settings.host)
    try:
        return trio.run(_serve_until_signalled, registry, config, settings, sys.stdout)
    except (StoreError, OSError) as exc:
        error: BaseException | None = exc
    except BaseExceptionGroup as group:
        error = _lone(group, (StoreError, OSError))
        if error is None:
            raise
    if isinstance(error, StoreError):
        print(f"trioqueue serve: {error}", file=sys.stderr)
    else:
        print(f"trioqueue serve: cannot serve on {settings.host}:{settings.port}: {error}",
              file=sys.stderr)
    return 1


# ---------------------------------------------------------------------------- client commands


def _client_options(args: argparse.Namespace) -> tuple[str, str | None]:
    env = os.environ
    url = args.url or _env_first(env, "TRIOQUEUE_URL")
    if not url:
        port = _env_first(env, "TRIOQUEUE_PORT", "PORT") or str(DEFAULT_PORT)
        url = f"http://127.0.0.1:{port}"
    token = args.token if args.token is not None else _env_first(env, "TRIOQUEUE_TOKEN")
    return url, token or None


class _Progress:
    """A progress bar on a terminal; a line every ~10 % elsewhere (logs, CI)."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.done = 0
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self._next_line = 0.0

    def step(self, n: int = 1) -> None:
        self.done += n
        if self.tty:
            width = 30
            filled = int(width * self.done / self.total)
            rate = self.done / max(time.monotonic() - self.started, 1e-9)
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] "
                              f"{self.done}/{self.total} {rate:,.0f}/s")
            self.stream.flush()
        elif self.done >= self._next_line or self.done == self.total:
            self.stream.write(f"enqueued {self.done}/{self.total}\n")
            self.stream.flush()
            self._next_line = self.done + max(1, self.total // 10)

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


async def _enqueue_many(args: argparse.Namespace, payload: Any) -> int:
    from .client import Client

    url, token = _client_options(args)
    progress = _Progress(args.count, sys.stderr)
    ids: list[str] = []
    started = time.monotonic()
    limiter = trio.CapacityLimiter(args.concurrency)
    async with Client(url, token=token) as client:

        async def one(i: int) -> None:
            async with limiter:
                job_id = f"{args.id}-{i}" if args.id else None
                while True:
                    try:
                        job = await client.enqueue(
                            args.task, payload, priority=args.priority, job_id=job_id,
                            delay=args.delay, max_retries=args.max_retries,
                            timeout=args.timeout,
                        )
                        break
                    except QueueFull as exc:  # back off as the server asks, then again
                        await trio.sleep(getattr(exc, "retry_after", 1.0))
                ids.append(job.id)
                progress.step()

        async with trio.open_nursery() as nursery:
            for i in range(args.count):
                nursery.start_soon(one, i)
    progress.close()
    elapsed = time.monotonic() - started
    print(json.dumps({"enqueued": len(ids), "seconds": round(elapsed, 3),
                      "per_second": round(len(ids) / max(elapsed, 1e-9), 1),
                      "first": ids[0] if ids else None, "last": ids[-1] if ids else None}))
    return 0


async def _enqueue(args: argparse.Namespace) -> int:
    from .client import Client

    try:
        payload = None if args.payload is None else json.loads(args.payload)
    except ValueError as exc:
        raise UsageError(f"payload: not valid JSON ({exc})") from None
    if args.count > 1:
        return await _enqueue_many(args, payload)
    url, token = _client_options(args)
    async with Client(url, token=token) as client:
        job = await client.enqueue(
            args.task, payload, priority=args.priority, job_id=args.id, delay=args.delay,
            max_retries=args.max_retries, timeout=args.timeout,
        )
        if args.wait:
            job = await client.wait(job.id)
    print(json.dumps(job.to_dict(), indent=2))
    return 0


async def _status(args: argparse.Namespace) -> int:
    from .client import Client

    url, token = _client_options(args)
    async with Client(url, token=token) as client:
        job = await client.get(args.id)
    print(json.dumps(job.to_dict(), indent=2))
    return 0


# ---------------------------------------------------------------------------- monitor


class MonitorView:
    """What ``trioqueue monitor`` shows, computed from the event stream (pure)."""

    def __init__(self, failures: int = 5) -> None:
        self.types: Counter[str] = Counter()
        self.metrics: dict[str, Any] = {}
        self.failures: deque[str] = deque(maxlen=failures)
        self.lagged = 0
        self._last_types: Counter[str] = Counter()
        self._last_at = time.monotonic()
        self.rates: dict[str, float] = {}

    def add(self, event: Any) -> None:
        if event.type == "lagged":
            self.lagged += event.dropped or 0
        elif event.type == "metrics":
            self.metrics = event.metrics or {}
        else:
            self.types[event.type] += 1
            if event.type in ("failed", "retrying") and event.error:
                self.failures.append(
                    f"{event.type:8} {event.task} {event.job_id} attempt {event.attempt}: "
                    f"{event.error}"
                )

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        elapsed = max(now - self._last_at, 1e-9)
        self.rates = {k: (self.types[k] - self._last_types[k]) / elapsed
                      for k in ("enqueued", "started", "completed", "failed", "retrying")}
        self._last_types = Counter(self.types)
        self._last_at = now

    def lines(self) -> list[str]:
        m = self.metrics
        queued = m.get("queued") or {}
        rates = "  ".join(f"{k} {v:,.1f}/s" for k, v in self.rates.items())
        out = [
            f"rates     {rates}",
            "queued    " + "  ".join(f"{p} {queued.get(p, 0)}" for p in ("high", "medium", "low"))
            + f"  scheduled {m.get('scheduled', 0)}  processing {m.get('processing', 0)}",
            "totals    " + "  ".join(f"{k} {m.get(k, 0)}" for k in
                                     ("enqueued", "completed", "failed", "retried",
                                      "cancelled", "rejected")),
            f"workers   {m.get('busy_workers', 0)}/{m.get('workers', 0)} busy"
            f"  utilization {100 * float(m.get('utilization') or 0):.0f}%"
            f"  wait p99 {_ms(m.get('wait_p99'))}  run p99 {_ms(m.get('run_p99'))}",
        ]
        if self.lagged:
            out.append(f"lagged    {self.lagged} events dropped (this monitor fell behind)")
        out.append("recent failures:" if self.failures else "recent failures: none")
        out.extend(f"  {line}" for line in self.failures)
        return out


def _ms(value: Any) -> str:
    return "-" if value is None else f"{1000 * float(value):.1f} ms"


async def _monitor(args: argparse.Namespace) -> int:
    from .client import Client

    url, token = _client_options(args)
    view = MonitorView()
    tty = sys.stdout.isatty()
    async with Client(url, token=token) as client:
        async with client.events(snapshot=True, types=_ALL_TYPES) as events:
            async with trio.open_nursery() as nursery:

                async def read() -> None:
                    async for event in events:
                        view.add(event)
                    nursery.cancel_scope.cancel()  # the server shut down

                nursery.start_soon(read)
                if not tty:
                    print(f"trioqueue monitor: watching {url}", flush=True)
                deadline = trio.current_time() + args.duration if args.duration else math.inf
                while trio.current_time() < deadline:
                    await trio.sleep(args.interval)
                    view.tick()
                    if tty:
                        sys.stdout.write("\x1b[H\x1b[2J" + f"trioqueue monitor  {url}\n\n"
                                         + "\n".join(view.lines()) + "\n")
                    else:
                        totals = view.metrics
                        sys.stdout.write(
                            f"{time.strftime('%H:%M:%S')} completed {totals.get('completed', 0)}"
                            f" failed {totals.get('failed', 0)} processing "
                            f"{totals.get('processing', 0)} | "
                            + "  ".join(f"{k} {v:,.1f}/s" for k, v in view.rates.items())
                            + "\n"
                        )
                    sys.stdout.flush()
                nursery.cancel_scope.cancel()
    if not tty:
        print("\n".join(view.lines()))
    return 0


_ALL_TYPES = ("enqueued", "scheduled", "started", "completed", "retrying", "failed",
              "cancelled", "requeued", "metrics")


# ---------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trioqueue", description="A job queue for Trio: server, client and monitor."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the queue with its HTTP API",
                                description="Run a queue and its HTTP API on one port. "
                                "Each flag also comes from TRIOQUEUE_<FLAG> (a flag wins).")
    serve.add_argument("--app", help="MODULE:REGISTRY of your tasks (default: demo tasks)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help=f"port (default {DEFAULT_PORT}; 0: any free)")
    serve.add_argument("--workers", type=int, help="worker tasks (default 4)")
    serve.add_argument("--capacity", type=int, help="jobs waiting per priority (default 1000)")
    serve.add_argument("--db", help="SQLite file: makes jobs durable")
    serve.add_argument("--durability", choices=("sync", "batch"), help="with --db")
    serve.add_argument("--token", help="bearer token required on everything but /healthz")
    serve.add_argument("--shutdown-timeout", type=float,
                       help="seconds in-flight jobs get at shutdown (default 30)")
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
    serve.add_argument("--log-level", default=None,
                       help="debug (one line per job state change), info (default), warning")
    serve.set_defaults(handler=cmd_serve)

    def client_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", help="server URL (TRIOQUEUE_URL; default "
                       f"http://127.0.0.1:{DEFAULT_PORT})")
        p.add_argument("--token", help="bearer token (TRIOQUEUE_TOKEN)")

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
    enqueue.set_defaults(handler=lambda a: trio.run(_enqueue, a))

    status = commands.add_parser("status", help="show one job")
    status.add_argument("id")
    client_flags(status)
    status.set_defaults(handler=lambda a: trio.run(_status, a))

    monitor = commands.add_parser("monitor", help="a live view of the event stream")
    monitor.add_argument("--interval", type=float, default=1.0, help="seconds per refresh")
    monitor.add_argument("--duration", type=float, default=0, help="stop after N seconds")
    client_flags(monitor)
    monitor.set_defaults(handler=lambda a: trio.run(_monitor, a))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = getattr(args, "log_level", None) or os.environ.get("TRIOQUEUE_LOG_LEVEL") or "info"
    _setup_logging(level)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        found = exc
        if isinstance(exc, BaseExceptionGroup):
            found = _lone(exc, (UsageError, TrioQueueError, httpx.TransportError, OSError)) or exc
        if isinstance(found, UsageError):
            print(f"trioqueue {args.command}: {found}", file=sys.stderr)
            return 2
        if isinstance(found, TrioQueueError):
            print(f"trioqueue {args.command}: {type(found).__name__}: {found}", file=sys.stderr)
            return 1
        if isinstance(found, (httpx.TransportError, OSError)):
            print(f"trioqueue {args.command}: cannot reach the server: {found}", file=sys.stderr)
            return 1
        raise
    return code
