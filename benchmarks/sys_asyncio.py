"""A second floor: ``asyncio.Queue`` with worker tasks (stdlib event loop)."""

from __future__ import annotations

import asyncio
from typing import Any

from .common import latency_summary, offer_paced, perf_counter, settled_rss, throughput

_STOP = object()


async def _noop(item: object) -> None:
    return None


async def _run_queue(n: int, workers: int, capacity: int, handler: Any) -> tuple[float, ...]:
    queue: asyncio.Queue[Any] = asyncio.Queue(capacity)

    async def worker() -> None:
        while True:
            item = await queue.get()
            if item is _STOP:
                return
            await handler(item)

    t0 = perf_counter()
    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    for _ in range(n):
        await queue.put(("noop", None))
    te = perf_counter()
    for _ in range(workers):
        await queue.put(_STOP)
    await asyncio.gather(*tasks)
    return t0, te, perf_counter()


def noop(n: int, workers: int = 4, capacity: int = 1000) -> dict[str, Any]:
    t0, te, t1 = asyncio.run(_run_queue(n, workers, capacity, _noop))
    return throughput(n, t0, te, t1, overlapped=True) | {"workers": workers}


def io(n: int, workers: int, sleep: float = 0.01) -> dict[str, Any]:
    async def handler(item: object) -> None:
        await asyncio.sleep(sleep)

    t0, te, t1 = asyncio.run(_run_queue(n, workers, n, handler))
    out = throughput(n, t0, te, t1, overlapped=True)
    out["ideal_per_s"] = workers / sleep
    return out | {"workers": workers}


def latency(rate: float, n: int, workers: int = 4, capacity: int = 1000) -> dict[str, Any]:
    lat: list[float] = []

    async def main() -> float:
        queue: asyncio.Queue[Any] = asyncio.Queue(capacity)

        async def worker() -> None:
            while True:
                item = await queue.get()
                if item is _STOP:
                    return
                lat.append(perf_counter() - item)

        tasks = [asyncio.create_task(worker()) for _ in range(workers)]
        offered_s = await offer_paced(rate, n, queue.put, asyncio.sleep)
        for _ in range(workers):
            await queue.put(_STOP)
        await asyncio.gather(*tasks)
        return offered_s

    offered_s = asyncio.run(main())
    return latency_summary(lat) | {"rate": rate, "n": n, "offered_per_s": n / offered_s}


def memory(n: int) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue(n)
        before = settled_rss()
        for i in range(n):
            queue.put_nowait(("noop", {"i": i}))
        after = settled_rss()
        return {"n": n, "rss_before": before, "rss_after": after,
                "bytes_per_job": (after - before) / n}

    return asyncio.run(main())
