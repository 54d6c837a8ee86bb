"""huey: ``MemoryHuey`` and ``SqliteHuey`` with its own consumer, 4 worker threads.

Jobs are enqueued first (the consumer is not running yet), then the consumer processes
them; a job counts as done when its result is stored (the handler returns ``True``:
huey stores no ``None`` results by default).  The consumer's idle polling is set tighter
than huey's defaults (first delay 1 ms, at most 50 ms instead of 100 ms and 10 s), which
favours huey in the latency scenario.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .common import latency_summary, need_module, pace_schedule, perf_counter, throughput

POLL = 0.002
CONSUMER = {"initial_delay": 0.001, "backoff": 1.15, "max_delay": 0.05, "periodic": False,
            "check_worker_health": False, "worker_type": "thread"}


def _huey(storage: str, tmp: str) -> Any:
    need_module("huey")
    from huey import MemoryHuey, SqliteHuey

    logging.getLogger("huey").setLevel(logging.WARNING)
    if storage == "memory":
        return MemoryHuey("bench")
    return SqliteHuey("bench", filename=str(Path(tmp) / "huey.db"))


def _wait_until(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("huey did not finish in time")
        time.sleep(POLL)


def noop(n: int, storage: str, workers: int = 4, timeout: float = 600.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="huey-bench-") as tmp:
        huey = _huey(storage, tmp)

        @huey.task()
        def noop() -> bool:
            return True

        t0 = perf_counter()
        for _ in range(n):
            noop()
        te = perf_counter()
        consumer = huey.create_consumer(workers=workers, **CONSUMER)
        consumer.start()
        try:
            _wait_until(lambda: huey.result_count() >= n, timeout)
            t1 = perf_counter()
        finally:
            consumer.stop(graceful=True)
        return throughput(n, t0, te, t1, overlapped=False) | {"workers": workers}


def latency(rate: float, n: int, storage: str, workers: int = 4,
            timeout: float = 600.0) -> dict[str, Any]:
    lat: list[float] = []
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="huey-bench-") as tmp:
        huey = _huey(storage, tmp)

        @huey.task()
        def noop(ts: float) -> bool:
            d = perf_counter() - ts
            with lock:
                lat.append(d)
            return True

        consumer = huey.create_consumer(workers=workers, **CONSUMER)
        consumer.start()
        try:
            t0 = perf_counter()
            i = 0
            while i < n:
                due, wait = pace_schedule(rate, n, t0, i, perf_counter())
                while i < due:
                    noop(perf_counter())
                    i += 1
                if i < n and wait > 0:
                    time.sleep(wait)
            offered_s = perf_counter() - t0
            _wait_until(lambda: len(lat) >= n, timeout)
        finally:
            consumer.stop(graceful=True)
    return latency_summary(lat) | {"rate": rate, "n": n, "offered_per_s": n / offered_s}
