"""Queue configuration: one frozen, validated value."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse, urlsplit

import attrs

from ._backoff import RetryPolicy
from ._exceptions import InvalidJob
from ._fairness import DEFAULT_WEIGHTS, check_weights
from ._job import MAX_RETRIES, Priority

Durability = Literal["sync", "batch"]

SWITCH_INTERVAL: float | None = 0.0002
"""The default of :attr:`QueueConfig.switch_interval`: 200 microseconds."""


def _positive_int(inst: object, attr: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attr.name}: expected a positive integer, got {value!r}")


def _non_negative_int(inst: object, attr: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{attr.name}: expected an integer >= 0, got {value!r}")


MAX_WORKERS = 10_000
"""The most workers a queue runs (a task each, started at open): far past what a process
keeps busy, yet a typo of a few more digits would start tasks until memory ran out."""


def _workers(inst: object, attr: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WORKERS:
        raise ValueError(f"workers: expected an integer 0..{MAX_WORKERS}, got {value!r}")


def _retries(inst: object, attr: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RETRIES:
        raise ValueError(f"{attr.name}: expected an integer 0..{MAX_RETRIES}, got {value!r}")


CENTURY = 100 * 365 * 86400.0
"""The longest time given to Redis (a ``lease``, an expiry), in seconds: Redis keeps
times as integer milliseconds, and takes only a finite expiry."""


def _seconds(inst: object, attr: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{attr.name}: expected a number of seconds, got {value!r}")
    if value < 0:
        raise ValueError(f"{attr.name}: must be >= 0, got {value!r}")


def _flag(inst: object, attr: attrs.Attribute[bool], value: bool) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{attr.name}: expected True or False, got {value!r}")


def _optional_seconds(
    inst: object, attr: attrs.Attribute[float | None], value: float | None
) -> None:
    if value is not None:
        _seconds(inst, attr, value)  # type: ignore[arg-type]
        if value == 0:
            raise ValueError(f"{attr.name}: must be > 0 or None, got {value!r}")


def _durability(inst: object, attr: attrs.Attribute[str], value: str) -> None:
    if value not in ("sync", "batch"):
        raise ValueError(f"durability: expected 'sync' or 'batch', got {value!r}")


def _fairness(value: Mapping[Priority | str, int]) -> dict[Priority, int]:
    if not isinstance(value, Mapping):
        raise ValueError(f"fairness: expected a mapping of priority to weight, got {value!r}")
    try:
        weights = {Priority.coerce(k): v for k, v in value.items()}
    except InvalidJob as exc:  # "priority: expected one of ...": say whose
        raise ValueError(f"fairness: {exc}") from None
    check_weights({**DEFAULT_WEIGHTS, **weights})
    return {**DEFAULT_WEIGHTS, **weights}


def _optional_redis_url(inst: object, attr: attrs.Attribute[str | None],
                        value: str | None) -> None:
    if value is None:
        return
    if not isinstance(value, str) or urlparse(value).scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"redis_url: expected a redis://, rediss:// or unix:// URL, got {value!r}")
    # What the Redis client would fail on later with a traceback; named here, the URL
    # itself not repeated (it may carry a password).
    parsed = urlparse(value)
    try:
        _ = parsed.port  # the property raises for a port that is not a number
    except ValueError:
        port = parsed.netloc.rpartition("@")[2].rpartition(":")[2]
        raise ValueError(f"redis_url: the port {port!r} is not a number 0..65535") from None
    db = parsed.path.strip("/")
    if parsed.scheme != "unix" and db and not (db.isascii() and db.isdigit()):
        raise ValueError(f"redis_url: the database {db!r} is not a number (redis://HOST:PORT/N)")
    if parsed.scheme != "rediss":  # (rediss:// is coredis', which reads more of them)
        keys = [part.partition("=")[0] for part in parsed.query.split("&") if part]
        unknown = sorted(set(keys) - _URL_QUERY)
        if unknown:  # named, their values not shown (a password may be among them)
            raise ValueError(
                f"redis_url: unknown query parameter{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))} (a redis:// or unix:// URL takes "
                f"{', '.join(sorted(_URL_QUERY))}): it would be ignored")


_URL_QUERY = frozenset({"db", "username", "password"})
"""The query parameters a ``redis://`` or ``unix://`` URL may carry (redis-py's names)."""


def _queue_name(inst: object, attr: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not _QUEUE_NAME.match(value):
        raise ValueError(
            f"queue_name: expected 1-100 ASCII letters, digits and '_.:-' (starting with a "
            f"letter or digit), got {value!r}"
        )


_QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,99}\Z")


def _path(value: str | os.PathLike[str] | None) -> Path | None:
    if value is None or value == "":  # ("": an empty TRIOQUEUE_PERSIST_PATH, unset)
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"persist_path: expected a file path, got {value!r}")
    return Path(value)


@attrs.frozen(kw_only=True)
class QueueConfig:
    """Everything :func:`open_queue` can be told.  Invalid values raise ``ValueError``
    naming the field."""

    workers: int = attrs.field(default=4, validator=_workers)
    """Worker tasks: how many jobs run at once.  0 only with :attr:`redis_url`: a node
    that enqueues, answers queries and serves the API, and runs no jobs."""
    capacity: int = attrs.field(default=1000, validator=_positive_int)
    """Per priority: how many jobs may wait in its ready queue (and, separately, how many
    new delayed jobs may wait for their due time).  ``enqueue`` waits for room,
    ``enqueue_nowait`` raises :class:`QueueFull`.  Retries and jobs coming due are never
    refused: they were accepted already."""
    max_retries: int = attrs.field(default=3, validator=_retries)
    """Default for tasks that do not set their own."""
    retry_base: float = attrs.field(default=1.0, validator=_seconds)
    retry_factor: float = attrs.field(default=2.0, validator=_seconds)
    retry_max: float = attrs.field(default=300.0, validator=_seconds)
    retry_jitter: float = attrs.field(default=0.1, validator=_seconds)
    default_timeout: float | None = attrs.field(default=None, validator=_optional_seconds)
    """Seconds one attempt may run, for tasks and jobs that do not set their own."""
    persist_path: Path | None = attrs.field(default=None, converter=_path)
    """A file path turns on the SQLite store."""
    durability: Durability = attrs.field(default="sync", validator=_durability)
    """``"sync"``: ``enqueue`` returns after the commit holding the job.  ``"batch"``:
    it returns at once; up to ``flush_interval`` of acknowledged work can be lost."""
    flush_interval: float = attrs.field(default=0.05, validator=_seconds)
    max_write_lag: float = attrs.field(default=0.5, validator=_seconds)
    """``durability="batch"``: seconds the oldest acknowledged change may wait for its
    commit.  Past it, the writer is behind (jobs come faster than the disk takes them):
    ``enqueue`` and ``enqueue_many`` wait for the commit holding their jobs, as in
    ``"sync"`` mode, and ``enqueue_nowait`` raises :class:`QueueFull`, until it caught up.
    What a crash can lose stays about this old (plus one write); ``math.inf``: no
    bound."""
    fsync: bool = attrs.field(default=False, validator=_flag)
    """With ``persist_path``: ``fsync`` every commit (SQLite ``synchronous=FULL``), so
    committed jobs survive a power cut or a kernel crash too, not only the process dying
    (the default, ``synchronous=NORMAL`` in WAL mode).  Each commit then waits for the
    disk."""
    shutdown_timeout: float = attrs.field(default=30.0, validator=_seconds)
    """How long in-flight jobs may take to finish when the queue closes."""
    drain: bool = attrs.field(default=False, validator=_flag)
    """Memory mode only: on close, run every queued job (within ``shutdown_timeout``)
    instead of dropping it."""
    fairness: Mapping[Priority, int] = attrs.field(
        factory=lambda: dict(DEFAULT_WEIGHTS), converter=_fairness
    )
    """Weights of the smooth weighted round robin between priorities."""
    result_ttl: float = attrs.field(default=3600.0, validator=_seconds)
    """Seconds a finished job stays in memory (the store keeps it longer)."""
    finished_cache: int = attrs.field(default=10_000, validator=_non_negative_int)
    """At most this many finished jobs stay in memory, newest kept."""
    retention: float = attrs.field(default=7 * 86400.0, validator=_seconds)
    """Seconds a finished job stays in the store before it is pruned."""
    event_buffer: int = attrs.field(default=1000, validator=_positive_int)
    """Default buffer of a :meth:`JobQueue.subscribe` channel."""
    metrics_interval: float = attrs.field(default=1.0, validator=_seconds)
    """Seconds between ``metrics`` events to subscribers that asked for them."""
    switch_interval: float | None = attrs.field(
        default=SWITCH_INTERVAL, validator=_optional_seconds
    )
    """While one of the queue's own threads runs (a ``sync=True`` handler, the SQLite
    store's reads and writes), the interpreter's thread switch interval
    (``sys.setswitchinterval``) is lowered to this many seconds if it is longer, so that
    the thread gets the GIL from a busy event loop in time; it is put back when the last
    such thread in the process returns.  ``None`` leaves the interpreter alone.  See
    docs/persistence.md."""
    redis_url: str | None = attrs.field(default=None, validator=_optional_redis_url)
    """``redis://``, ``rediss://`` or ``unix://``: the queue lives in Redis, shared by
    every process opened on the same URL and :attr:`queue_name` (each one a node).
    Excludes :attr:`persist_path`."""
    queue_name: str = attrs.field(default="default", validator=_queue_name)
    """With ``redis_url``: which queue on that Redis (1-100 of ``A-Za-z0-9_.:-``)."""
    lease: float = attrs.field(default=30.0, validator=_seconds)
    """With ``redis_url``: seconds a node holds a claimed job without renewing it (it
    renews every ``lease / 3`` while alive); a dead node's jobs run again after it."""
    prefetch: int = attrs.field(default=0, validator=_non_negative_int)
    """With ``redis_url``: jobs a node may claim beyond its idle workers (throughput; at
    most this many claimed jobs run before a just-arrived higher-priority one).  0 keeps
    fairness exact across nodes."""

    def __attrs_post_init__(self) -> None:
        self.retry_policy()  # validates factor >= 1 and jitter <= 1
        if self.metrics_interval <= 0:
            raise ValueError(f"metrics_interval: must be > 0, got {self.metrics_interval!r}")
        if not math.isfinite(self.flush_interval):  # (the writer would never write)
            raise ValueError(f"flush_interval: expected a finite number of seconds, got "
                             f"{self.flush_interval!r}")
        if self.redis_url is not None:
            if self.persist_path is not None:
                raise ValueError("redis_url: excludes persist_path (a queue lives either in "
                                 "Redis or in a SQLite file); set one of them")
            if self.lease <= 0:
                raise ValueError(f"lease: must be > 0, got {self.lease!r}")
            if self.lease > CENTURY:
                raise ValueError(f"lease: at most {CENTURY:.0f} seconds (a century: Redis "
                                 f"keeps times as integer milliseconds), got {self.lease!r}")
            if self.workers == 0 and self.prefetch:
                raise ValueError(f"prefetch: a node with workers=0 runs no jobs and must "
                                 f"claim none; set prefetch=0, got {self.prefetch!r}")
        elif self.workers == 0:
            raise ValueError("workers: 0 needs redis_url (a node that runs no jobs); a queue "
                             "in memory or in a SQLite file needs at least 1 worker")
        # A setting that would do nothing here is refused, not ignored: it was meant for
        # a store, or for Redis, which this queue does not have (a value other than the
        # field's own default is a setting).
        fields = attrs.fields(QueueConfig)
        if self.persist_path is None:
            where = ("on Redis, what Redis keeps is Redis' own setting (docs/scale-out.md)"
                     if self.redis_url is not None else "without one, jobs live in memory only")
            if self.durability != "sync":
                raise ValueError(f"durability: {self.durability!r} needs persist_path (a "
                                 f"SQLite store); {where}")
            if self.fsync:
                raise ValueError(f"fsync: needs persist_path (a SQLite store); {where}")
            if self.flush_interval != fields.flush_interval.default:
                raise ValueError(f"flush_interval: needs persist_path (a SQLite store); "
                                 f"{where}")
        if self.durability != "batch" and self.max_write_lag != fields.max_write_lag.default:
            raise ValueError("max_write_lag: only with durability='batch' (with 'sync' "
                             "every enqueue waits for its commit already)")
        if self.redis_url is None:
            for field in (fields.queue_name, fields.lease, fields.prefetch):
                if getattr(self, field.name) != field.default:
                    raise ValueError(f"{field.name}: needs redis_url (a queue in Redis)")
        if self.drain and (self.persist_path is not None or self.redis_url is not None):
            raise ValueError("drain: memory mode only (a store or Redis keeps the queued "
                             "jobs for the next start)")

    def retry_policy(self) -> RetryPolicy:
        try:
            return RetryPolicy(
                base=self.retry_base,
                factor=self.retry_factor,
                max_delay=self.retry_max,
                jitter=self.retry_jitter,
            )
        except ValueError as exc:  # named as this config's field ("base: ..." was)
            field, sep, rest = str(exc).partition(":")
            field = {"base": "retry_base", "factor": "retry_factor", "max_delay": "retry_max",
                     "jitter": "retry_jitter"}.get(field, field)
            raise ValueError(f"{field}{sep}{rest}") from None

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> QueueConfig:
        """Read ``TRIOQUEUE_*`` variables (and ``WORKER_COUNT``, ``JOB_QUEUE_CAPACITY``).

        Keyword arguments win over the environment.  A variable that does not parse raises
        ``ValueError`` naming it.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        source: dict[str, str] = {}  # field: the variable it was read from
        for field, (names, parse) in _ENV.items():
            for name in names:
                raw = env.get(name)
                if raw is None or raw == "":
                    continue
                try:
                    values[field] = parse(raw)
                except ValueError:
                    raise ValueError(f"{name}: cannot parse {raw!r} for {field}") from None
                source[field] = name
                break
        values.update(overrides)
        try:
            return cls(**values)
        except ValueError as exc:  # "workers: ..." read from WORKER_COUNT names WORKER_COUNT
            field = str(exc).partition(":")[0]
            if field in source and field not in overrides:
                raise ValueError(f"{source[field]}: {exc}") from None
            raise


def _bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _opt_float(raw: str) -> float | None:
    return None if raw.strip().lower() in ("none", "null") else float(raw)


_ENV: dict[str, tuple[tuple[str, ...], Any]] = {
    "workers": (("TRIOQUEUE_WORKERS", "WORKER_COUNT"), int),
    "capacity": (("TRIOQUEUE_CAPACITY", "JOB_QUEUE_CAPACITY"), int),
    "max_retries": (("TRIOQUEUE_MAX_RETRIES",), int),
    "retry_base": (("TRIOQUEUE_RETRY_BASE",), float),
    "retry_factor": (("TRIOQUEUE_RETRY_FACTOR",), float),
    "retry_max": (("TRIOQUEUE_RETRY_MAX",), float),
    "retry_jitter": (("TRIOQUEUE_RETRY_JITTER",), float),
    "default_timeout": (("TRIOQUEUE_DEFAULT_TIMEOUT",), _opt_float),
    "persist_path": (("TRIOQUEUE_DB", "TRIOQUEUE_PERSIST_PATH"), str),
    "durability": (("TRIOQUEUE_DURABILITY",), str),
    "flush_interval": (("TRIOQUEUE_FLUSH_INTERVAL",), float),
    "max_write_lag": (("TRIOQUEUE_MAX_WRITE_LAG",), float),
    "fsync": (("TRIOQUEUE_FSYNC",), _bool),
    "shutdown_timeout": (("TRIOQUEUE_SHUTDOWN_TIMEOUT",), float),
    "drain": (("TRIOQUEUE_DRAIN",), _bool),
    "result_ttl": (("TRIOQUEUE_RESULT_TTL",), float),
    "finished_cache": (("TRIOQUEUE_FINISHED_CACHE",), int),
    "retention": (("TRIOQUEUE_RETENTION",), float),
    "switch_interval": (("TRIOQUEUE_SWITCH_INTERVAL",), _opt_float),
    "redis_url": (("TRIOQUEUE_REDIS_URL",), str),
    "queue_name": (("TRIOQUEUE_QUEUE",), str),
    "lease": (("TRIOQUEUE_LEASE",), float),
    "prefetch": (("TRIOQUEUE_PREFETCH",), int),
}

ENV_VARIABLES = frozenset(name for names, _ in _ENV.values() for name in names)
"""Every variable :meth:`QueueConfig.from_env` reads."""


def redacted(url: str) -> str:
    """``url`` with its password (if any: in the netloc, or a ``password=`` query
    parameter) shown as ``***``: for messages and logs."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    query = "&".join(
        "password=***" if part.partition("=")[0] == "password" else part
        for part in parts.query.split("&")) if parts.query else ""
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    # (not urlunsplit: it drops the "//" of an empty netloc, as in unix:///path)
    return (f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
            + (f"#{parts.fragment}" if parts.fragment else ""))
