"""streaq (Redis streams, anyio) run on Trio (``anyio_backend="trio"``) against
redis://127.0.0.1:6379, queue name unique per run.

Jobs are enqueued one ``await task.enqueue()`` at a time, then the worker (concurrency
4) processes them; done when the handler ran ``n`` times.  Tasks are registered with
``silent=True`` so streaq does not format a log line per task.  Every key of the run is
deleted afterwards, and streaq's Redis function library if this run loaded it.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from .common import (
    REDIS_HOST,
    REDIS_PORT,
    REDIS_URL,
    latency_summary,
    need_module,
    need_redis,
    offer_paced,
    perf_counter,
    redis_cleanup,
    throughput,
)


def _library_loaded() -> bool:
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    try:
        return bool(client.function_list(library="streaq"))
    finally:
        client.close()


def _cleanup(name: str, had_library: bool) -> None:
    redis_cleanup(f"streaq:{name}*")
    if not had_library:
        import redis

        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
        try:
            client.function_delete("streaq")
        except redis.ResponseError:
            pass
        finally:
            client.close()


def _worker(name: str, workers: int) -> Any:
    from streaq import Worker

    logging.getLogger("streaq").setLevel(logging.ERROR)
    return Worker(redis_url=REDIS_URL, concurrency=workers, queue_name=name,
                  anyio_backend="trio", handle_signals=False)


async def _finished(worker: Any, n: int) -> None:
    """Wait until streaq has stored the result of all ``n`` tasks (the handler ran them
    all already): cancelling the worker earlier would cut its last pipelines short."""
    import trio

    stream = worker.stream_key + worker.priorities[-1]
    for _ in range(100_000):
        # "completed" is counted before the result pipeline runs; XDEL is in that
        # pipeline, so an empty stream means every task's finish was applied.
        if worker.counters["completed"] >= n and not await worker.redis.xlen(stream):
            return
        await trio.sleep(0.001)
    raise RuntimeError(f"streaq completed only {worker.counters['completed']} of {n}")


def noop(n: int, workers: int = 4, timeout: float = 600.0) -> dict[str, Any]:
    need_module("streaq")
    need_redis()
    import trio

    name = f"tqbench-{uuid.uuid4().hex[:12]}"
    had_library = _library_loaded()

    async def main() -> dict[str, Any]:
        worker = _worker(name, workers)
        done = trio.Event()
        count = 0

        @worker.task(name="noop", silent=True)
        async def noop() -> None:
            nonlocal count
            count += 1
            if count >= n:
                done.set()

        # A second Worker object, never run, is the producer (a Worker can be entered
        # only once, and run_async enters it).
        async with _worker(name, workers) as client:
            t0 = perf_counter()
            for _ in range(n):
                await client.enqueue_unsafe("noop")
            te = perf_counter()
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.run_async)
                with trio.fail_after(timeout):
                    await done.wait()
                    await _finished(worker, n)
                t1 = perf_counter()
                await trio.sleep(0.05)  # let the last replies arrive before cancelling
                nursery.cancel_scope.cancel()
        return throughput(n, t0, te, t1, overlapped=False) | {"workers": workers}

    try:
        return trio.run(main)
    finally:
        _cleanup(name, had_library)


def latency(rate: float, n: int, workers: int = 4, timeout: float = 600.0) -> dict[str, Any]:
    need_module("streaq")
    need_redis()
    import trio

    name = f"tqbench-{uuid.uuid4().hex[:12]}"
    had_library = _library_loaded()
    lat: list[float] = []

    async def main() -> float:
        worker = _worker(name, workers)
        done = trio.Event()

        @worker.task(name="noop", silent=True)
        async def noop(ts: float) -> None:
            lat.append(perf_counter() - ts)
            if len(lat) >= n:
                done.set()

        async with _worker(name, workers) as client, trio.open_nursery() as nursery:
            await nursery.start(worker.run_async)
            offered_s = await offer_paced(
                rate, n, lambda ts: client.enqueue_unsafe("noop", ts), trio.sleep
            )
            with trio.fail_after(timeout):
                await done.wait()
                await _finished(worker, n)
            await trio.sleep(0.05)  # let the last replies arrive before cancelling
            nursery.cancel_scope.cancel()
        return offered_s

    try:
        offered_s = trio.run(main)
    finally:
        _cleanup(name, had_library)
    return latency_summary(lat) | {"rate": rate, "n": n, "offered_per_s": n / offered_s}
