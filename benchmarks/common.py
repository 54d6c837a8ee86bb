"""Helpers shared by the measuring subprocesses: percentiles, RSS, pacing, skips."""

from __future__ import annotations

import gc
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}"

perf_counter = time.perf_counter


class Skip(Exception):
    """The case cannot run here; the message says why (printed as "skipped: ...")."""


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..1)."""
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


def latency_summary(latencies: list[float]) -> dict[str, Any]:
    """p50 / p99 / max in milliseconds of a list of seconds."""
    values = sorted(latencies)
    return {
        "samples": len(values),
        "p50_ms": percentile(values, 0.50) * 1e3,
        "p99_ms": percentile(values, 0.99) * 1e3,
        "max_ms": (values[-1] if values else math.nan) * 1e3,
    }


def throughput(n: int, t0: float, t_enqueued: float, t_done: float, *,
               overlapped: bool) -> dict[str, Any]:
    """The figures of a throughput run.

    ``overlapped``: workers ran while jobs were being enqueued (``process_s`` is then
    only the tail after the last enqueue returned); otherwise the enqueue phase ran to
    the end before any job was processed, and ``process_s`` is the processing phase.
    """
    total = t_done - t0
    enqueue = t_enqueued - t0
    process = t_done - t_enqueued
    return {
        "n": n,
        "total_s": total,
        "enqueue_s": enqueue,
        "process_s": process,
        "jobs_per_s": n / total,
        "enqueue_per_s": n / enqueue if enqueue > 0 else math.inf,
        "process_per_s": n / process if process > 0 else math.inf,
        "overlapped": overlapped,
    }


def rss_bytes() -> int:
    """Resident set size of this process now."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def settled_rss() -> int:
    gc.collect()
    return rss_bytes()


def pace_schedule(rate: float, n: int, t0: float, i: int, now: float) -> tuple[int, float]:
    """Open-loop pacing: how many jobs should have been offered by ``now`` and when the
    next one is due (seconds from ``now``; <= 0 means now)."""
    due = min(n, int((now - t0) * rate) + 1)
    nxt = t0 + max(due, i) / rate
    return due, nxt - now


async def offer_paced(rate: float, n: int, put: Callable[[float], Awaitable[Any]],
                      sleep: Callable[[float], Awaitable[Any]]) -> float:
    """Open-loop load for the async producers: ``await put(perf_counter())`` ``n`` times
    at ``rate`` per second (each tick's due jobs at once, then ``await sleep`` until the
    next is due).  Returns the seconds the offering took."""
    t0 = perf_counter()
    i = 0
    while i < n:
        due, wait = pace_schedule(rate, n, t0, i, perf_counter())
        while i < due:
            await put(perf_counter())
            i += 1
        if i < n and wait > 0:
            await sleep(wait)
    return perf_counter() - t0


def need_module(name: str, extra: str = "bench") -> None:
    import importlib.util

    if importlib.util.find_spec(name) is None:
        raise Skip(f"package {name!r} is not installed (pip install -e '.[{extra}]')")


def need_redis() -> None:
    """Raise Skip unless a Redis server answers PING on 127.0.0.1:6379."""
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            s.settimeout(1.0)
            reply = s.recv(64)
    except OSError as exc:
        raise Skip(f"Redis at {REDIS_HOST}:{REDIS_PORT} is not reachable ({exc})") from None
    if not reply.startswith(b"+PONG"):
        raise Skip(f"Redis at {REDIS_HOST}:{REDIS_PORT} answered {reply[:40]!r} to PING")


def redis_cleanup(pattern: str, url: str = REDIS_URL) -> int:
    """Delete every key matching ``pattern`` in the database of ``url`` (with redis-py);
    return how many."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=pattern, count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
        return len(keys)
    finally:
        client.close()
