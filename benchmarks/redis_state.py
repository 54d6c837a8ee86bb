"""Claim + ack throughput of the Redis state layer's scripts alone (no engine).

    python -m benchmarks.redis_state [--jobs 20000] [--runs 3] [--url redis://127.0.0.1:6379/0]

One simulated node per case: a fetcher task calls ``finish_and_claim`` with every outcome
finished since its last call and ``n = idle workers + prefetch - already buffered``, and
hands the claimed jobs to ``workers`` no-op worker tasks through a memory channel; with
nothing to claim it waits for a worker to finish.  ``jobs`` no-op jobs are enqueued first
(a third per priority, events on), then timed from the first claim to the last ack.

First the floor: the client CPU of an EVALSHA of ``return 1`` through the same adapter.
Per case: jobs/s (median and range of the runs), the client's CPU per call and per job
(``time.process_time`` of this process over the timed part) and Redis' CPU per job
(``INFO cpu`` before and after: it counts every client of that Redis, so other work on the
machine shows up there).  Each run checks that every job completed once, and with
``prefetch=0`` that every 14 consecutive claims were exactly 10:3:1 while all three
priorities had work.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import uuid
from typing import Any

import coredis
import trio

from trioqueue._redis import NewJob, Outcome, RedisState, StoredJob, connect

CASES = [(4, 0), (16, 0), (4, 128), (16, 128)]
LABELS = ("high", "medium", "low")


async def redis_cpu(admin: coredis.Redis[str]) -> float:
    info = await admin.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def fill(state: RedisState, jobs: int) -> None:
    batch: list[NewJob] = []
    for i in range(jobs):
        batch.append(NewJob.build(f"j{i:06d}", "noop", None, priority=LABELS[i % 3]))
        if len(batch) == 1000:
            res = await state.enqueue(batch)
            if any(a.code != "accepted" for a in res):
                raise AssertionError("enqueue refused a job")
            batch = []
    if batch:
        await state.enqueue(batch)


async def run_node(state: RedisState, workers: int, prefetch: int, jobs: int
                   ) -> dict[str, Any]:
    send, recv = trio.open_memory_channel[StoredJob](math.inf)
    finished: list[Outcome] = []
    wake = trio.Event()
    idle = workers
    buffered = 0
    order: list[int] = []

    async def worker() -> None:
        nonlocal idle, buffered, wake
        async for sj in recv:
            buffered -= 1
            idle -= 1
            await trio.lowlevel.checkpoint()  # the no-op handler
            finished.append(Outcome(sj.job.id, sj.fence, "completed", "null"))
            idle += 1
            wake.set()

    refill = max(1, prefetch // 2)
    calls = 0
    acked = 0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(workers):
            nursery.start_soon(worker)
        drained = False
        while acked < jobs:
            want = 0 if drained else max(0, min(1000, idle + prefetch - buffered))
            # Refill when idle workers wait (prefetch 0), or when half the prefetch is
            # used up; acks ride along (alone only once the queue is empty).
            if want < refill and not (drained and finished):
                await wake.wait()
                wake = trio.Event()
                continue
            outs = finished[:1000]
            del finished[:len(outs)]
            fc = await state.finish_and_claim("bench-node", outs, want, lease=60)
            calls += 1
            if fc.results.count("ok") != len(outs):
                raise AssertionError(f"refused acks: {fc.results}")
            acked += len(outs)
            for sj in fc.claimed:
                order.append(int(sj.job.priority))
                buffered += 1
                send.send_nowait(sj)
            if want and not fc.claimed:
                drained = True  # the queue is empty: only acks from here on
        t1 = time.perf_counter()
        cpu1 = time.process_time()
        send.close()
    return {"seconds": t1 - t0, "cpu": cpu1 - cpu0, "calls": calls, "order": order}


async def bare_call(url: str, calls: int = 2000) -> float:
    """Client CPU (µs) of one EVALSHA of ``return 1`` through the adapter: the floor
    under every script call."""
    from trioqueue._redis._client import lua_script

    async with connect(url, client_name="tq-bench") as client:
        script = lua_script("return 1")
        for _ in range(200):
            await client.run(script, ["tq:{bench}:x"], [])
        cpu0 = time.process_time()
        for _ in range(calls):
            await client.run(script, ["tq:{bench}:x"], [])
        return (time.process_time() - cpu0) / calls * 1e6


def fair_windows(order: list[int], per_prio: int) -> bool:
    """Every 14 consecutive claims are 10:3:1 while every priority still had work."""
    seen = [0, 0, 0]
    for end, p in enumerate(order, 1):
        seen[p] += 1
        if min(per_prio - s for s in seen) <= 0:
            return True  # a priority ran out: exact ratios end here
        if end >= 14:
            window = order[end - 14:end]
            if (window.count(0), window.count(1), window.count(2)) != (10, 3, 1):
                return False
    return True


async def one_run(url: str, workers: int, prefetch: int, jobs: int) -> dict[str, Any]:
    queue = f"bench-{uuid.uuid4().hex[:10]}"
    async with connect(url, client_name="tq-bench") as client, coredis.Redis.from_url(
        url, decode_responses=True
    ) as admin:
        state = RedisState(client, queue, capacity=jobs)
        try:
            await fill(state, jobs)
            r0 = await redis_cpu(admin)
            got = await run_node(state, workers, prefetch, jobs)
            r1 = await redis_cpu(admin)
            counts = await state.counts()
            if counts.total("completed") != jobs or counts.processing or any(counts.queued):
                raise AssertionError(f"not every job completed once: {counts}")
            fair = fair_windows(got["order"], jobs // 3) if prefetch == 0 else None
            if prefetch == 0 and not fair:
                raise AssertionError("prefetch=0 claims were not 10:3:1")
        finally:
            keys = [k async for k in admin.scan_iter(match=f"tq:{{{queue}}}:*", count=1000)]
            for i in range(0, len(keys), 500):
                await admin.delete(keys[i:i + 500])
    return {
        "jobs_per_s": jobs / got["seconds"],
        "calls": got["calls"],
        "jobs_per_call": jobs / got["calls"],
        "client_cpu_us_per_call": got["cpu"] / got["calls"] * 1e6,
        "client_cpu_us_per_job": got["cpu"] / jobs * 1e6,
        "redis_cpu_us_per_job": (r1 - r0) / jobs * 1e6,
        "fair": fair,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON object per case")
    args = parser.parse_args(argv)
    rows = []
    floor = trio.run(bare_call, args.url)
    if args.json:
        print(json.dumps({"bare_evalsha_client_cpu_us": floor}), flush=True)
    else:
        print(f"bare EVALSHA (return 1): client {floor:.0f} us/call", flush=True)
    for workers, prefetch in CASES:
        runs = [trio.run(one_run, args.url, workers, prefetch, args.jobs)
                for _ in range(args.runs)]
        rates = sorted(r["jobs_per_s"] for r in runs)
        row = {
            "workers": workers,
            "prefetch": prefetch,
            "jobs_per_s_median": statistics.median(rates),
            "jobs_per_s_range": [rates[0], rates[-1]],
            **{k: statistics.median(r[k] for r in runs)
               for k in ("jobs_per_call", "client_cpu_us_per_call", "client_cpu_us_per_job",
                         "redis_cpu_us_per_job")},
            "fair": [r["fair"] for r in runs],
        }
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(
                f"{workers:>2} workers, prefetch {prefetch:>3}: "
                f"{row['jobs_per_s_median']:>8,.0f} jobs/s "
                f"[{rates[0]:,.0f}-{rates[-1]:,.0f}]  "
                f"{row['jobs_per_call']:6.1f} jobs/call  client "
                f"{row['client_cpu_us_per_call']:5.0f} us/call "
                f"{row['client_cpu_us_per_job']:5.1f} us/job  redis "
                f"{row['redis_cpu_us_per_job']:5.1f} us/job"
                + ("  fair 10:3:1" if prefetch == 0 else ""),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
