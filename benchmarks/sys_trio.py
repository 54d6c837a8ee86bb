"""The floor: bare Trio, one bounded memory channel, ``await send`` / ``async for``."""

from __future__ import annotations

from typing import Any

import trio

from .common import latency_summary, offer_paced, perf_counter, settled_rss, throughput


async def _noop(item: object) -> None:
    return None


async def _run_channel(n: int, workers: int, capacity: int, handler: Any,
                       make_item: Any) -> tuple[float, float, float]:
    send, receive = trio.open_memory_channel[Any](capacity)
    t_enqueued = 0.0

    async def worker(r: trio.MemoryReceiveChannel[Any]) -> None:
        async with r:
            async for item in r:
                await handler(item)

    async def producer() -> None:
        nonlocal t_enqueued
        async with send:
            for i in range(n):
                await send.send(make_item(i))
            t_enqueued = perf_counter()

    t0 = perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(workers):
            nursery.start_soon(worker, receive.clone())
        receive.close()
        nursery.start_soon(producer)
    return t0, t_enqueued, perf_counter()


def noop(n: int, workers: int = 4, capacity: int = 1000) -> dict[str, Any]:
    t0, te, t1 = trio.run(_run_channel, n, workers, capacity, _noop, lambda i: ("noop", None))
    return throughput(n, t0, te, t1, overlapped=True) | {"workers": workers}


def io(n: int, workers: int, sleep: float = 0.01) -> dict[str, Any]:
    async def handler(item: object) -> None:
        await trio.sleep(sleep)

    t0, te, t1 = trio.run(_run_channel, n, workers, n, handler, lambda i: ("io", None))
    out = throughput(n, t0, te, t1, overlapped=True)
    out["ideal_per_s"] = workers / sleep
    return out | {"workers": workers}


def latency(rate: float, n: int, workers: int = 4, capacity: int = 1000) -> dict[str, Any]:
    lat: list[float] = []

    async def handler(item: float) -> None:
        lat.append(perf_counter() - item)

    async def main() -> float:
        send, receive = trio.open_memory_channel[float](capacity)

        async def worker(r: trio.MemoryReceiveChannel[float]) -> None:
            async with r:
                async for item in r:
                    await handler(item)

        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(worker, receive.clone())
            receive.close()
            async with send:
                offered_s = await offer_paced(rate, n, send.send, trio.sleep)
        return offered_s

    offered_s = trio.run(main)
    return latency_summary(lat) | {"rate": rate, "n": n, "offered_per_s": n / offered_s}


def memory(n: int) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        send, receive = trio.open_memory_channel[Any](n)
        before = settled_rss()
        for i in range(n):
            send.send_nowait(("noop", {"i": i}))
        after = settled_rss()
        send.close()
        receive.close()
        return {"n": n, "rss_before": before, "rss_after": after,
                "bytes_per_job": (after - before) / n}

    return trio.run(main)


def noop_commit_wait(n: int, producers: int = 64, workers: int = 4,
                     capacity: int = 1000) -> dict[str, Any]:
    """Bare Trio with ``durability="sync"``'s hand-off and a free disk: each of
    ``producers`` tasks sends a job and then waits until a committer task has "committed"
    the batch holding it (an Event per batch, set as soon as the committer runs; nothing
    is written).  The floor of ``noop/trioqueue/sqlite-sync-64``: what one park and
    wake-up per job through Trio's scheduler costs before any store work."""
    async def main() -> tuple[float, float, float]:
        send, receive = trio.open_memory_channel[Any](capacity)
        state: dict[str, Any] = {"batch": trio.Event(), "kick": trio.Event()}
        t_enqueued = 0.0

        async def worker(r: trio.MemoryReceiveChannel[Any]) -> None:
            async with r:
                async for item in r:
                    await _noop(item)
                    done[0] += 1

        async def committer() -> None:
            while True:
                await state["kick"].wait()
                state["kick"] = trio.Event()
                batch, state["batch"] = state["batch"], trio.Event()
                batch.set()

        async def producer(count: int) -> None:
            for _ in range(count):
                await send.send(("noop", None))
                batch = state["batch"]
                state["kick"].set()
                await batch.wait()

        t0 = perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(worker, receive.clone())
            receive.close()
            async with trio.open_nursery() as committing:
                committing.start_soon(committer)
                async with send, trio.open_nursery() as producing:
                    for i in range(producers):
                        producing.start_soon(producer, n // producers + (i < n % producers))
                t_enqueued = perf_counter()
                committing.cancel_scope.cancel()
        return t0, t_enqueued, perf_counter()  # the workers drained the channel and left

    done = [0]
    t0, te, t1 = trio.run(main)
    return throughput(n, t0, te, t1, overlapped=True) | {
        "workers": workers, "producers": producers, "completed": done[0]}
