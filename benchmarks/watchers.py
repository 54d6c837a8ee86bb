"""What watching a queue costs it: subscribers that take some event types, and ``wait``.

    python -m benchmarks.watchers [--rounds 5] [--n 100000] [--redis-n 20000] [--batch 500]

Two groups, each case run in turn in every round (interleaved), medians over the rounds
and each case as a ratio to the group's baseline, measured in the same rounds:

- **memory** (``--n`` no-op jobs, ``enqueue_nowait`` with the capacity raised to hold
  them, 4 workers, timed until the last one completed): ``none``, no subscriber (the
  baseline); ``self-filtered``, a subscriber of every event whose consumer keeps only
  failures (what ``/events?types=failed,...`` did in the server before the types went
  into the subscription); ``typed``, ``subscribe(types={"failed", "retrying"})``.
- **redis** (skipped without a Redis on 127.0.0.1:6379; database 11, a queue of its own,
  deleted after): one node in this process (4 workers, ``prefetch=128``) and a producer
  that enqueues ``--batch`` jobs at a time with ``enqueue_many`` and waits for them
  before the next batch, ``--redis-n`` jobs in all: ``wait-each`` (``await q.wait(id)``
  for each job in turn, the baseline) and ``wait-many`` (``await q.wait_many(ids)``).
  Also Redis' CPU per job (``INFO cpu``: every client of that Redis counts) and the
  events the stream got per job.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import trio

import trioqueue

REDIS_URL = "redis://127.0.0.1:6379/11"


def _registry() -> trioqueue.TaskRegistry:
    registry = trioqueue.TaskRegistry()

    @registry.task
    async def noop(job: trioqueue.Job) -> None:
        return None

    return registry


async def memory(mode: str, n: int) -> dict[str, float]:
    config = trioqueue.QueueConfig(workers=4, capacity=n)
    async with trioqueue.open_queue(_registry(), config) as q:
        kept: list[trioqueue.Event] = []
        async with trio.open_nursery() as nursery:
            if mode != "none":
                types = {"failed", "retrying"} if mode == "typed" else None
                events = await nursery.start(_consume, q, types, kept)
            t0 = time.perf_counter()
            last = None
            for _ in range(n):
                last = q.enqueue_nowait("noop")
            assert last is not None
            await q.wait(last.id)
            while q.metrics().completed < n:  # noqa: ASYNC110 (the other workers' last)
                await trio.sleep(0.001)
            elapsed = time.perf_counter() - t0
            if mode != "none":
                await events.aclose()
            nursery.cancel_scope.cancel()
    assert not [e for e in kept if e.type != "lagged"]  # no job failed
    return {"jobs_per_s": n / elapsed}


async def _consume(q: trioqueue.JobQueue, types: set[str] | None,
                   kept: list[trioqueue.Event],
                   task_status: trio.TaskStatus[trio.MemoryReceiveChannel[trioqueue.Event]]
                   = trio.TASK_STATUS_IGNORED) -> None:
    async with q.subscribe(10_000, types=types) as events:
        task_status.started(events)
        try:
            async for event in events:
                if event.type in ("failed", "retrying", "lagged"):
                    kept.append(event)
        except trio.ClosedResourceError:
            pass


async def redis_case(mode: str, n: int, batch: int) -> dict[str, float]:
    import coredis

    queue = f"watchers-{uuid.uuid4().hex[:10]}"
    config = trioqueue.QueueConfig(redis_url=REDIS_URL, queue_name=queue, workers=4,
                                   prefetch=128, capacity=max(1000, 2 * batch))
    async with coredis.Redis.from_url(REDIS_URL, decode_responses=True) as admin:
        try:
            async with trioqueue.open_queue(_registry(), config) as q:
                cpu0 = await _redis_cpu(admin)
                t0 = time.perf_counter()
                left = n
                while left > 0:
                    jobs = await q.enqueue_many("noop", [None] * min(batch, left))
                    left -= len(jobs)
                    if mode == "wait-many":
                        await q.wait_many([job.id for job in jobs])
                    else:
                        for job in jobs:
                            await q.wait(job.id)
                elapsed = time.perf_counter() - t0
                cpu1 = await _redis_cpu(admin)
                events = await admin.xlen(f"tq:{{{queue}}}:events")
        finally:
            with trio.CancelScope(shield=True):
                keys = [k async for k in admin.scan_iter(match=f"tq:{{{queue}}}:*")]
                if keys:
                    await admin.delete(keys)
    return {"jobs_per_s": n / elapsed, "redis_cpu_us_per_job": (cpu1 - cpu0) / n * 1e6,
            "events_per_job": events / n}


async def _redis_cpu(admin: Any) -> float:
    info = await admin.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _redis_up() -> str | None:
    import coredis

    try:
        with trio.fail_after(2):
            async with coredis.Redis.from_url(REDIS_URL) as client:
                await client.ping()
    except (coredis.exceptions.RedisError, OSError, trio.TooSlowError) as exc:
        return f"no Redis on 127.0.0.1:6379 ({exc!r})"
    return None


def _group(name: str, modes: list[str], rounds: int,
           run: Callable[[str], dict[str, float]]) -> None:
    got: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    for r in range(rounds):
        for mode in modes:
            got[mode].append(run(mode))
            print(f"  round {r + 1}: {name}/{mode} {got[mode][-1]['jobs_per_s']:,.0f} jobs/s",
                  file=sys.stderr, flush=True)
    base = modes[0]
    print(f"\n| {name} | jobs/s: median [min-max] | x {base} (paired) | details |")
    print("| --- | --- | --- | --- |")
    for mode in modes:
        rates = [m["jobs_per_s"] for m in got[mode]]
        paired = statistics.median(
            a["jobs_per_s"] / b["jobs_per_s"] for a, b in zip(got[mode], got[base], strict=True))
        ratio = statistics.median(rates) / statistics.median(
            m["jobs_per_s"] for m in got[base])
        extra = "; ".join(
            f"{key.replace('_', ' ')} {statistics.median(m[key] for m in got[mode]):.1f}"
            for key in got[mode][0] if key != "jobs_per_s")
        versus = "1 (baseline)" if mode == base else f"{ratio:.2f}x ({paired:.2f}x)"
        print(f"| {mode} | {statistics.median(rates):,.0f} [{min(rates):,.0f}-"
              f"{max(rates):,.0f}] | {versus} | {extra} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.watchers",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=100_000, help="jobs per memory case")
    parser.add_argument("--redis-n", type=int, default=20_000, help="jobs per Redis case")
    parser.add_argument("--batch", type=int, default=500, help="jobs per enqueue_many (Redis)")
    args = parser.parse_args(argv)
    if min(args.rounds, args.n, args.redis_n, args.batch) < 1:
        parser.error("--rounds, --n, --redis-n and --batch must be at least 1")
    _group("memory", ["none", "self-filtered", "typed"], args.rounds,
           lambda mode: trio.run(memory, mode, args.n))
    why_not = trio.run(_redis_up)
    if why_not is not None:
        print(f"\nredis: skipped: {why_not}")
        return 0
    _group("redis", ["wait-each", "wait-many"], args.rounds,
           lambda mode: trio.run(redis_case, mode, args.redis_n, args.batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
