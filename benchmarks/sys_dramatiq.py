"""dramatiq (threads, Redis broker) against redis://127.0.0.1:6379/11 (the Redis
benchmarks' own database), a namespace unique per run whose keys are deleted afterwards.

Messages are sent one ``actor.send()`` at a time, then a ``dramatiq.Worker`` with 4
worker threads processes them; done when the actor ran ``n`` times and ``broker.join``
says the queue is empty.  dramatiq's actors are plain functions run in threads, as it
runs them.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from .common import latency_summary, need_module, need_redis, pace_schedule, perf_counter
from .common import throughput as _throughput
from .sys_redis import URL, drop_keys


def _broker(name: str) -> Any:
    import logging

    from dramatiq.brokers.redis import RedisBroker

    logging.getLogger("dramatiq").setLevel(logging.ERROR)
    return RedisBroker(url=URL, namespace=name)


def noop(n: int, workers: int = 4, timeout: float = 600.0) -> dict[str, Any]:
    need_module("dramatiq")
    need_redis()
    import dramatiq

    name = f"tqbench-{uuid.uuid4().hex[:12]}"
    broker = _broker(name)
    count = 0
    lock = threading.Lock()
    done = threading.Event()

    def noop() -> None:
        nonlocal count
        with lock:
            count += 1
            if count >= n:
                done.set()

    actor = dramatiq.actor(noop, actor_name="noop", queue_name="bench", broker=broker)
    try:
        t0 = perf_counter()
        for _ in range(n):
            actor.send()
        te = perf_counter()
        worker = dramatiq.Worker(broker, worker_threads=workers, worker_timeout=100)
        worker.start()
        try:
            if not done.wait(timeout):
                raise RuntimeError(f"dramatiq ran {count} of {n} jobs in {timeout:.0f} s")
            broker.join("bench", timeout=int(timeout * 1000))
            t1 = perf_counter()
        finally:
            worker.stop()
    finally:
        broker.close()
        drop_keys(f"{name}*")
    return _throughput(n, t0, te, t1, overlapped=False) | {"workers": workers}


def latency(rate: float, n: int, workers: int = 4, timeout: float = 600.0) -> dict[str, Any]:
    need_module("dramatiq")
    need_redis()
    import dramatiq

    name = f"tqbench-{uuid.uuid4().hex[:12]}"
    broker = _broker(name)
    lat: list[float] = []
    lock = threading.Lock()
    done = threading.Event()

    def noop(ts: float) -> None:
        d = perf_counter() - ts
        with lock:
            lat.append(d)
            if len(lat) >= n:
                done.set()

    actor = dramatiq.actor(noop, actor_name="noop", queue_name="bench", broker=broker)
    worker = dramatiq.Worker(broker, worker_threads=workers, worker_timeout=100)
    worker.start()
    try:
        t0 = perf_counter()
        i = 0
        while i < n:
            due, wait = pace_schedule(rate, n, t0, i, perf_counter())
            while i < due:
                actor.send(perf_counter())
                i += 1
            if i < n and wait > 0:
                time.sleep(wait)
        offered_s = perf_counter() - t0
        if not done.wait(timeout):
            raise RuntimeError(f"dramatiq ran {len(lat)} of {n} jobs in {timeout:.0f} s")
    finally:
        worker.stop()
        broker.close()
        drop_keys(f"{name}*")
    return latency_summary(lat) | {"rate": rate, "n": n, "offered_per_s": n / offered_s}
