"""The options of ``trioqueue serve`` and ``trioqueue worker``: the task registry named on
the command line, and the :class:`QueueConfig` and server settings from the flags and the
environment (a flag wins over its variable; an error names whichever was given)."""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ._cli_common import DEFAULT_PORT, env_first, env_named, parse_float, parse_int
from ._cli_common import UsageError as UsageError
from ._config import ENV_VARIABLES, QueueConfig
from ._registry import TaskRegistry

log = logging.getLogger("trioqueue.cli")

N = TypeVar("N", int, float)


def load_registry(spec: str) -> TaskRegistry:
    """``module:attribute`` (a :class:`TaskRegistry`, or a function returning one)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"--app: expected MODULE:REGISTRY, got {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules beside you import
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # The module named is not there (or a package of its path): one line.  A module
        # it imports that is missing is the app's own error, with its traceback.
        if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
            raise _app_error(f"importing {module_name!r}", exc) from None
        raise UsageError(f"--app: cannot import {module_name!r}: {exc}") from None
    except Exception as exc:  # an ImportError inside it too (a name it cannot import)
        raise _app_error(f"importing {module_name!r}", exc) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"--app: module {module_name!r} has no {attr!r}") from None
    if isinstance(obj, TaskRegistry):
        return obj
    if not callable(obj):
        raise UsageError(f"--app: {spec} is {_a(type(obj).__name__)}, not a TaskRegistry")
    if not _takes_no_arguments(obj):
        raise UsageError(f"--app: {spec} is {_callable_kind(obj)}, not a TaskRegistry or a "
                         "function that takes no arguments and returns one")
    try:
        obj = obj()  # a factory
    except Exception as exc:
        raise _app_error(f"calling {spec}()", exc) from None
    if not isinstance(obj, TaskRegistry):
        raise UsageError(f"--app: {spec}() returned {_a(type(obj).__name__)}, not a "
                         "TaskRegistry")
    return obj


def _a(kind: str) -> str:
    return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"


def _callable_kind(fn: Any) -> str:
    """What keeps ``fn`` from being called as a factory, for the error."""
    if inspect.iscoroutinefunction(fn):
        return "an async function"
    kind = _a(type(fn).__name__)
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return f"{kind} whose parameters cannot be read"
    needed = [p.name for p in parameters
              if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    shown = ", ".join(needed[:4]) + (", ..." if len(needed) > 4 else "")
    return f"{kind} that needs arguments ({shown})"


def _app_error(doing: str, exc: Exception) -> UsageError:
    """The app's own error (a SyntaxError too): its traceback, which is what its author
    needs, goes to stderr now; the error returned says in one line what it was."""
    traceback.print_exc()
    return UsageError(f"--app: {doing} raised {type(exc).__name__}: {exc} (its traceback "
                      "is above)")


def _takes_no_arguments(fn: Any) -> bool:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return all(
        p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        for p in signature.parameters.values()
    ) and not inspect.iscoroutinefunction(fn)


_FLAGS = {"workers": "--workers", "capacity": "--capacity", "persist_path": "--db",
          "durability": "--durability", "shutdown_timeout": "--shutdown-timeout",
          "redis_url": "--redis", "queue_name": "--queue", "lease": "--lease",
          "prefetch": "--prefetch"}
"""Flags of ``serve`` and ``worker`` by the :class:`QueueConfig` field they set: a field
given by a flag is named by the flag in errors."""

_REDIS_ONLY = (("queue", "--queue", "TRIOQUEUE_QUEUE"), ("lease", "--lease", "TRIOQUEUE_LEASE"),
               ("prefetch", "--prefetch", "TRIOQUEUE_PREFETCH"))


def queue_options(
    args: argparse.Namespace, env: Mapping[str, str], *, worker: bool = False
) -> tuple[TaskRegistry, QueueConfig]:
    """The registry and queue config of ``serve`` or ``worker``: flags over
    ``TRIOQUEUE_*`` (and ``WORKER_COUNT``, ``JOB_QUEUE_CAPACITY``)."""
    for warning in unknown_env(env):
        log.warning("%s", warning)
    app = args.app or env_first(env, "TRIOQUEUE_APP")
    if app:
        registry = load_registry(app)
    else:
        from .demo import registry
    db = getattr(args, "db", None)
    db_from = "--db" if db else None
    if db is None:
        found = env_named(env, "TRIOQUEUE_DB", "TRIOQUEUE_PERSIST_PATH")
        db_from = None if found is None else found[0]
    redis_from = "--redis" if args.redis else None
    if args.redis is None:
        found = env_named(env, "TRIOQUEUE_REDIS_URL")
        redis_from = None if found is None else found[0]
    if redis_from and db_from:
        raise UsageError(f"{redis_from} and {db_from} exclude each other: a queue lives "
                         "either in Redis or in a SQLite file; give one of them")
    if worker and not redis_from:
        raise UsageError("give --redis URL (or TRIOQUEUE_REDIS_URL): a worker is a node of "
                         "a queue in Redis")
    if not redis_from:
        # Options of a queue in Redis, refused rather than ignored without one.
        for attr, flag, name in _REDIS_ONLY:
            source = flag if getattr(args, attr) is not None else name if env.get(name) else None
            if source:
                raise UsageError(f"{source}: applies to a queue in Redis only: give --redis "
                                 "URL (or TRIOQUEUE_REDIS_URL) too")
    if not db_from:
        # Options of the store, refused rather than ignored without one.
        for given, source in ((getattr(args, "durability", None), "--durability"),
                              *((env.get(name), name) for name in (
                                  "TRIOQUEUE_DURABILITY", "TRIOQUEUE_FLUSH_INTERVAL",
                                  "TRIOQUEUE_FSYNC"))):
            if given:
                raise UsageError(f"{source}: applies to a store only: give --db PATH (or "
                                 "TRIOQUEUE_DB) too; without one, jobs "
                                 f"{'are in Redis' if redis_from else 'live in memory'}")
    overrides: dict[str, Any] = {}
    for flag, field in (("workers", "workers"), ("capacity", "capacity"), ("db", "persist_path"),
                        ("durability", "durability"), ("shutdown_timeout", "shutdown_timeout"),
                        ("redis", "redis_url"), ("queue", "queue_name"), ("lease", "lease"),
                        ("prefetch", "prefetch")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[field] = value
    if worker and overrides.get("workers") == 0:
        raise UsageError("--workers: a worker node needs at least 1 (a node that runs no "
                         "jobs is `serve --workers 0`)")
    if overrides.get("workers") == 0 and not redis_from:
        raise UsageError("--workers: 0 needs --redis URL (a node that only enqueues and "
                         "serves the API while other nodes run the jobs)")
    if redis_from and "prefetch" not in overrides:
        workers = overrides.get("workers")
        if workers is None:
            found = env_named(env, "TRIOQUEUE_WORKERS", "WORKER_COUNT")
            workers = None if found is None else parse_int(found[0], found[1])
        if workers == 0:
            overrides["prefetch"] = 0  # a node that runs no jobs claims none
    try:
        config = QueueConfig.from_env(env, **overrides)
    except ValueError as exc:
        text = str(exc)
        field, sep, rest = text.partition(":")
        if sep and field in overrides and field in _FLAGS:
            text = f"{_FLAGS[field]}:{rest}"
        raise UsageError(text) from None
    return registry, config


def serve_options(
    args: argparse.Namespace, env: Mapping[str, str]
) -> tuple[TaskRegistry, QueueConfig, Any]:
    """Flags over ``TRIOQUEUE_*`` (and ``PORT``, ``WORKER_COUNT``, ``JOB_QUEUE_CAPACITY``)."""
    from .server import ServerSettings
    from .server._lean import BODY_BUDGET, RESPONSE_BUDGET

    registry, config = queue_options(args, env)
    host = args.host or env_first(env, "TRIOQUEUE_HOST") or "127.0.0.1"
    port, port_from = DEFAULT_PORT, "--port"
    if args.port is not None:
        port = args.port
    else:
        found = env_named(env, "TRIOQUEUE_PORT", "PORT")
        if found is not None:
            port_from = found[0]
            port = parse_int(port_from, found[1])
    if not 0 <= port <= 65535:
        raise UsageError(f"{port_from}: expected a port 0..65535, got {port}")
    token, token_from = args.token, "--token"
    if token is None:  # set but empty counts here, unlike the other variables
        token, token_from = env.get("TRIOQUEUE_TOKEN"), "TRIOQUEUE_TOKEN"
    if token is not None and not token.strip():
        # An empty secret (a file that was missing, a variable set from nothing) would
        # serve with no authentication at all.
        raise UsageError(f"{token_from}: empty; leave it out to serve without a token")
    # Each limit's source (its flag, or the variable it came from) names it in errors.
    sources: dict[str, str] = {}
    max_body = _number_option(args.max_body, "--max-body", "TRIOQUEUE_MAX_BODY",
                              1024 * 1024, env, parse_int, sources)
    event_buffer = _number_option(args.event_buffer, "--event-buffer",
                                  "TRIOQUEUE_EVENT_BUFFER", 1000, env, parse_int, sources)
    slow = _number_option(args.slow_client_timeout, "--slow-client-timeout",
                          "TRIOQUEUE_SLOW_CLIENT_TIMEOUT", 20.0, env, parse_float, sources)
    max_connections = _number_option(args.max_connections, "--max-connections",
                                     "TRIOQUEUE_MAX_CONNECTIONS", 1000, env, parse_int,
                                     sources)
    budget = _budget_option(args.response_budget, "--response-budget",
                            "TRIOQUEUE_RESPONSE_BUDGET", RESPONSE_BUDGET, env, sources)
    body_budget = _budget_option(args.body_budget, "--body-budget", "TRIOQUEUE_BODY_BUDGET",
                                 BODY_BUDGET, env, sources)
    try:
        settings = ServerSettings(
            host=host, port=port, token=token, max_body=max_body,
            event_buffer=event_buffer, slow_client_timeout=slow, access_log=args.access_log,
            allowed_hosts=allowed_hosts_option(args, env), max_connections=max_connections,
            response_budget=budget, body_budget=body_budget,
        )
    except ValueError as exc:  # "max_body: expected an integer >= 1, got 0"
        field, _, why = str(exc).partition(": ")
        if field not in sources:
            raise
        raise UsageError(f"{sources[field]}: {why}") from None
    return registry, config, settings


def _number_option(given: N | None, flag: str, variable: str, default: N,
                   env: Mapping[str, str], parse: Callable[[str, str], N],
                   sources: dict[str, str]) -> N:
    """The flag, else the variable (parsed), else ``default``; ``sources`` gets the one
    given (by the setting's name: ``--max-body`` sets ``max_body``)."""
    field = _setting(flag)
    if given is not None:
        sources[field] = flag
        return given
    raw = env_first(env, variable)
    if raw is None:
        return default
    sources[field] = variable
    return parse(variable, raw)


def _budget_option(given: int | None, flag: str, variable: str, default: int,
                   env: Mapping[str, str], sources: dict[str, str]) -> int:
    """A budget in bytes, as :func:`_number_option` finds it; >= 0."""
    budget = _number_option(given, flag, variable, default, env, parse_int, sources)
    if budget < 0:
        raise UsageError(f"{sources[_setting(flag)]}: expected bytes >= 0, got {budget}")
    return budget


def _setting(flag: str) -> str:
    """The ``ServerSettings`` field a flag sets (``--max-body``: ``max_body``)."""
    return flag.removeprefix("--").replace("-", "_")


def allowed_hosts_option(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[str, ...]:
    """``--allowed-hosts`` (or ``TRIOQUEUE_ALLOWED_HOSTS``) of ``serve`` and of
    ``worker``'s metrics port, each entry checked: a bad one is a usage error naming
    whichever was given."""
    from .server._hosts import parse_allowed_hosts

    hosts, hosts_from = args.allowed_hosts, "--allowed-hosts"
    if hosts is None:
        hosts_from = "TRIOQUEUE_ALLOWED_HOSTS"
        hosts = env_first(env, hosts_from) or ""
    try:
        return parse_allowed_hosts(hosts)
    except ValueError as exc:  # "allowed_hosts: 'entry': what is wrong"
        raise UsageError(f"{hosts_from}: {str(exc).removeprefix('allowed_hosts: ')}") from None


def metrics_options(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[str, int] | None:
    """``worker``'s metrics endpoint, ``(host, port)``, or None without ``--metrics-port``
    (or ``TRIOQUEUE_METRICS_PORT``)."""
    port_from, host_from = "--metrics-port", "--metrics-host"
    port = args.metrics_port
    if port is None:
        found = env_named(env, "TRIOQUEUE_METRICS_PORT")
        if found is not None:
            port_from = found[0]
            port = parse_int(port_from, found[1])
    host = args.metrics_host
    if host is None:
        host_from = "TRIOQUEUE_METRICS_HOST"
        host = env_first(env, host_from)
    if port is None:
        if host is not None:
            raise UsageError(f"{host_from}: applies with --metrics-port only (or "
                             "TRIOQUEUE_METRICS_PORT): give the port to serve the metrics on")
        return None
    if not 0 <= port <= 65535:
        raise UsageError(f"{port_from}: expected a port 0..65535, got {port}")
    if host is not None and not host.strip():
        raise UsageError(f"{host_from}: empty; leave it out to bind 127.0.0.1")
    return (host or "127.0.0.1"), port


def metrics_allowed_hosts(args: argparse.Namespace, env: Mapping[str, str],
                          metrics: tuple[str, int] | None) -> tuple[str, ...]:
    """The Host names ``worker``'s metrics port answers to besides its bind address and
    the local ones (:func:`allowed_hosts_option`); ``metrics`` is what
    :func:`metrics_options` gave.  Without a metrics port ``--allowed-hosts`` is refused
    (it would do nothing) and ``TRIOQUEUE_ALLOWED_HOSTS`` ignored (``serve`` nodes read it
    too, often from the same environment)."""
    if metrics is None:
        if args.allowed_hosts is not None:
            raise UsageError("--allowed-hosts: applies with --metrics-port only (or "
                             "TRIOQUEUE_METRICS_PORT): the names the metrics port answers to")
        return ()
    return allowed_hosts_option(args, env)


KNOWN_ENV = frozenset(name for name in ENV_VARIABLES if name.startswith("TRIOQUEUE_")) | {
    # serve and worker, besides the queue's own (QueueConfig.from_env)
    "TRIOQUEUE_APP", "TRIOQUEUE_LOG_LEVEL",
    # serve's server
    "TRIOQUEUE_HOST", "TRIOQUEUE_PORT", "TRIOQUEUE_TOKEN", "TRIOQUEUE_MAX_BODY",
    "TRIOQUEUE_EVENT_BUFFER", "TRIOQUEUE_SLOW_CLIENT_TIMEOUT", "TRIOQUEUE_ALLOWED_HOSTS",
    "TRIOQUEUE_MAX_CONNECTIONS", "TRIOQUEUE_RESPONSE_BUDGET", "TRIOQUEUE_BODY_BUDGET",
    # worker's metrics endpoint
    "TRIOQUEUE_METRICS_PORT", "TRIOQUEUE_METRICS_HOST",
    # the client commands (often set in the same shell)
    "TRIOQUEUE_URL",
}
"""Every ``TRIOQUEUE_*`` variable trioqueue reads (a test holds it to the source)."""


def unknown_env(env: Mapping[str, str]) -> list[str]:
    """A warning for each ``TRIOQUEUE_*`` variable set that trioqueue does not read: a
    misspelt one (``..._REDIS`` for ``TRIOQUEUE_REDIS_URL``) is otherwise ignored
    without a word, and a node meant for Redis runs in memory."""
    import difflib

    warnings = []
    for name in sorted(env):
        if not name.startswith("TRIOQUEUE_") or name in KNOWN_ENV:
            continue
        if name == "TRIOQUEUE_HTTP_SERVER":
            warnings.append("TRIOQUEUE_HTTP_SERVER is no longer read: trioqueue has one "
                            "HTTP server")
            continue
        close = difflib.get_close_matches(name, KNOWN_ENV, n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]}?" if close else ""
        warnings.append(f"{name} is not a trioqueue setting and is ignored{hint}")
    return warnings
