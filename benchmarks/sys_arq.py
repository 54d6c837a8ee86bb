"""arq (asyncio, Redis) against redis://127.0.0.1:6379/11 (the Redis benchmarks' own
database, flushed before and after), queue name unique per run.

Jobs are enqueued one ``await redis.enqueue_job`` at a time, then an ``arq.Worker`` with
``max_jobs=4`` runs them in burst mode (it returns once the queue is empty and every job
finished).  arq polls its queue (a ZSET) every ``poll_delay`` s when it found nothing;
the default 0.5 s would only add idle time, so it polls every 10 ms here (in favour of
arq).  Per-job log lines are off (``log_results=False``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from .common import (
    latency_summary,
    need_module,
    need_redis,
    offer_paced,
    perf_counter,
    throughput,
)
from .sys_redis import URL, flush_db

POLL_DELAY = 0.01


def _setup() -> str:
    need_module("arq")
    need_redis()
    logging.getLogger("arq").setLevel(logging.ERROR)
    flush_db()
    return f"tqbench-{uuid.uuid4().hex[:12]}"


def noop(n: int, workers: int = 4, timeout: float = 600.0) -> dict[str, Any]:
    name = _setup()

    async def noop(ctx: Any) -> None:
        return None

    async def main() -> dict[str, Any]:
        from arq import Worker, create_pool, func
        from arq.connections import RedisSettings

        settings = RedisSettings.from_dsn(URL)
        pool = await create_pool(settings)
        try:
            t0 = perf_counter()
            for _ in range(n):
                await pool.enqueue_job("noop", _queue_name=name)
            te = perf_counter()
            worker = Worker([func(noop, name="noop")], queue_name=name, redis_pool=pool, burst=True,
                            max_jobs=workers, poll_delay=POLL_DELAY, handle_signals=False,
                            log_results=False)
            async with asyncio.timeout(timeout):
                await worker.main()
            t1 = perf_counter()
            if worker.jobs_complete != n:
                raise RuntimeError(f"arq completed {worker.jobs_complete} of {n} jobs "
                                   f"({worker.jobs_failed} failed)")
            await worker.close()
        finally:
            await pool.aclose()
        return throughput(n, t0, te, t1, overlapped=False) | {"workers": workers}

    try:
        return asyncio.run(main())
    finally:
        flush_db()


def latency(rate: float, n: int, workers: int = 4, timeout: float = 600.0) -> dict[str, Any]:
    name = _setup()
    lat: list[float] = []

    async def main() -> float:
        from arq import Worker, create_pool, func
        from arq.connections import RedisSettings

        done = asyncio.Event()

        async def noop(ctx: Any, ts: float) -> None:
            lat.append(perf_counter() - ts)
            if len(lat) >= n:
                done.set()

        settings = RedisSettings.from_dsn(URL)
        pool = await create_pool(settings)
        worker = Worker([func(noop, name="noop")], queue_name=name, redis_pool=pool,
                        max_jobs=workers, poll_delay=POLL_DELAY, handle_signals=False,
                        log_results=False)
        task = asyncio.create_task(worker.async_run())
        try:
            offered_s = await offer_paced(
                rate, n, lambda ts: pool.enqueue_job("noop", ts, _queue_name=name),
                asyncio.sleep)
            async with asyncio.timeout(timeout):
                await done.wait()
            await asyncio.sleep(0.05)  # the last jobs' results are written
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await pool.aclose()
        return offered_s

    try:
        offered_s = asyncio.run(main())
    finally:
        flush_db()
    return latency_summary(lat) | {"rate": rate, "n": n, "offered_per_s": n / offered_s}
