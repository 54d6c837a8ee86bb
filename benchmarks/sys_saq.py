"""SAQ (asyncio, Redis) against redis://127.0.0.1:6379, queue name unique per run.

Jobs are enqueued one ``await queue.enqueue`` at a time, then a ``saq.Worker`` with
concurrency 4 processes them; done when the handler ran ``n`` times and the queue's
``incomplete`` count is back to 0.  Every key of the run is deleted afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from .common import (
    REDIS_URL,
    latency_summary,
    need_module,
    need_redis,
    offer_paced,
    perf_counter,
    redis_cleanup,
    throughput,
)

# A bounded blocking dequeue (BLMOVE) instead of SAQ's default 0 (block forever): the
# worker then stops in well under a second instead of about five.
DEQUEUE_TIMEOUT = 0.2


def _setup() -> str:
    need_module("saq")
    need_redis()
    logging.getLogger("saq").setLevel(logging.ERROR)
    return f"tqbench-{uuid.uuid4().hex[:12]}"


async def _settle(queue: Any, timeout: float) -> None:
    """Poll until SAQ has recorded every job as finished (it has no completion event)."""
    async with asyncio.timeout(timeout):
        for _ in range(1_000_000):
            if not await queue.count("incomplete"):
                return
            await asyncio.sleep(0.002)


def noop(n: int, workers: int = 4, timeout: float = 600.0) -> dict[str, Any]:
    name = _setup()

    async def main() -> dict[str, Any]:
        from saq import Queue, Worker

        queue = Queue.from_url(REDIS_URL, name=name)
        await queue.connect()
        done = asyncio.Event()
        count = 0

        async def noop(ctx: Any) -> None:
            nonlocal count
            count += 1
            if count >= n:
                done.set()

        worker = Worker(queue, functions=[("noop", noop)], concurrency=workers,
                        dequeue_timeout=DEQUEUE_TIMEOUT)
        try:
            t0 = perf_counter()
            for _ in range(n):
                await queue.enqueue("noop")
            te = perf_counter()
            task = asyncio.create_task(worker.start())
            async with asyncio.timeout(timeout):
                await done.wait()
            await _settle(queue, timeout)
            t1 = perf_counter()
            await worker.stop()
            await task
        finally:
            await queue.disconnect()
        return throughput(n, t0, te, t1, overlapped=False) | {"workers": workers}

    try:
        return asyncio.run(main())
    finally:
        redis_cleanup(f"saq*{name}*")


def latency(rate: float, n: int, workers: int = 4, timeout: float = 600.0) -> dict[str, Any]:
    name = _setup()
    lat: list[float] = []

    async def main() -> float:
        from saq import Queue, Worker

        queue = Queue.from_url(REDIS_URL, name=name)
        await queue.connect()
        done = asyncio.Event()

        async def noop(ctx: Any, *, ts: float) -> None:
            lat.append(perf_counter() - ts)
            if len(lat) >= n:
                done.set()

        worker = Worker(queue, functions=[("noop", noop)], concurrency=workers,
                        dequeue_timeout=DEQUEUE_TIMEOUT)
        task = asyncio.create_task(worker.start())
        try:
            offered_s = await offer_paced(
                rate, n, lambda ts: queue.enqueue("noop", ts=ts), asyncio.sleep
            )
            async with asyncio.timeout(timeout):
                await done.wait()
            await worker.stop()
            await task
        finally:
            await queue.disconnect()
        return offered_s

    try:
        offered_s = asyncio.run(main())
    finally:
        redis_cleanup(f"saq*{name}*")
    return latency_summary(lat) | {"rate": rate, "n": n, "offered_per_s": n / offered_s}
