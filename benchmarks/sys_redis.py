"""trioqueue on Redis: no-op throughput and enqueue→start latency with node processes.

Each node is a process of its own (``python -m benchmarks.sys_redis NODE_JSON``) that
opens ``trioqueue.open_queue`` with ``redis_url``, the case's ``prefetch`` and 4 workers.
The measuring process (the benchmark's child) fills the queue, starts the nodes, waits
until each has printed ``ready``, and then opens a gate (a file the nodes poll every
millisecond; until it exists the handler waits), so start-up and import time are not
measured and two nodes start together.  It is done when Redis' cluster-wide
``completed`` total reaches ``n``.

The database is :data:`REDIS_DB` (``redis://127.0.0.1:6379/11``); each case deletes its
own queue's keys afterwards (not FLUSHDB: two runs at once, say two people's test runs
on one machine, must not wipe each other's queue).  Only arq's case flushes it
(:mod:`benchmarks.sys_arq`: arq's job keys carry no queue name).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from .common import (
    REDIS_HOST,
    REDIS_PORT,
    latency_summary,
    need_module,
    need_redis,
    perf_counter,
    redis_cleanup,
)

REDIS_DB = 11
URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
ROOT = Path(__file__).resolve().parent.parent
LABELS = ("high", "medium", "low")


def flush_db() -> None:
    """FLUSHDB on this module's own database (never another)."""
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    try:
        client.flushdb()
    finally:
        client.close()


def drop_keys(pattern: str) -> None:
    """Delete the keys of database :data:`REDIS_DB` that match ``pattern``."""
    redis_cleanup(pattern, URL)


def _cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def _redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


# ---------------------------------------------------------------------------- a node


def node_main(spec: dict[str, Any]) -> None:
    """One node: runs no-op jobs (waiting at the gate first) until SIGTERM; with
    ``latency`` it writes ``perf_counter() - payload["ts"]`` of every start to
    ``spec["out"]`` as JSON at exit."""
    import logging

    import trio

    import trioqueue

    logging.getLogger("trioqueue").setLevel(logging.ERROR)
    opened = trio.Event()
    lat: list[float] = []
    registry = trioqueue.TaskRegistry()

    if spec.get("latency"):
        @registry.task(name="noop")
        async def noop_ts(job: trioqueue.Job) -> None:
            lat.append(perf_counter() - job.payload["ts"])
    else:
        @registry.task(name="noop")
        async def noop(job: trioqueue.Job) -> None:
            if not opened.is_set():
                await opened.wait()

    async def watch_gate() -> None:
        with trio.open_signal_receiver(signal.SIGUSR1) as gate:
            async for _ in gate:
                opened.set()
                return

    async def run() -> None:
        config = trioqueue.QueueConfig(
            redis_url=spec["url"], queue_name=spec["queue"], workers=spec["workers"],
            prefetch=spec["prefetch"], capacity=max(1000, spec.get("capacity", 1000)),
            shutdown_timeout=5.0)
        if spec.get("latency"):
            opened.set()
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with trioqueue.open_queue(registry, config), trio.open_nursery() as n:
                if not opened.is_set():
                    n.start_soon(watch_gate)
                    await trio.sleep(0.01)  # the receiver is installed before "ready"
                print("ready", flush=True)
                async for _ in signals:
                    break
                n.cancel_scope.cancel()

    trio.run(run)
    if spec.get("out"):
        Path(spec["out"]).write_text(json.dumps(lat))


class _Nodes:
    def __init__(self, count: int, spec: dict[str, Any], tmp: Path) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
        for i in range(count):
            s = dict(spec, out=str(tmp / f"lat-{i}.json") if spec.get("latency") else "")
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "benchmarks.sys_redis", json.dumps(s)], cwd=ROOT,
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True))
        self.outs = [Path(tmp / f"lat-{i}.json") for i in range(count)]

    def wait_ready(self, timeout: float = 60.0) -> None:
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # "ready", or "" if it died
            if line.strip() != "ready":
                raise RuntimeError(f"node {proc.pid} exited with {proc.wait(timeout)} "
                                   "before it was ready")

    def open_gate(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGUSR1)

    def cpu_ticks(self) -> int:
        return sum(_cpu_ticks(p.pid) for p in self.procs)

    def stop(self, timeout: float = 30.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"node {proc.pid} did not stop within {timeout} s of "
                                   "SIGTERM") from None

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _completed(client: Any, queue: str) -> int:
    values = client.hmget(f"tq:{{{queue}}}:stats", *(f"completed:{p}" for p in LABELS))
    return sum(int(v) for v in values if v)


def _wait_completed(client: Any, queue: str, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (done := _completed(client, queue)) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done} of {n} jobs completed in {timeout:.0f} s")
        time.sleep(0.002)


@asynccontextmanager
async def producer(url: str, queue: str, capacity: int = 1000
                   ) -> AsyncIterator[tuple[str, Callable[..., Awaitable[Any]]]]:
    """A producer on ``queue``: ``(how, enqueue)`` where ``await enqueue(task, payload,
    priority=..., job_id=...)`` returns once Redis accepted the job.

    ``how`` is ``"node"``: a node opened with ``workers=0`` (no jobs run here) and its
    ``await q.enqueue``, as a user would; or, where this trioqueue refuses ``workers=0``,
    ``"state"``: the same enqueue script called through the Redis state layer (what
    ``q.enqueue`` runs on Redis, without the engine's intake around it)."""
    import trioqueue

    registry = trioqueue.TaskRegistry()
    for name in ("noop", "work"):
        registry.task(name=name)(_never)
    try:
        config = trioqueue.QueueConfig(redis_url=url, queue_name=queue, workers=0,
                                       capacity=capacity, result_ttl=86_400.0)
    except ValueError:
        config = None
    if config is not None:
        async with trioqueue.open_queue(registry, config) as q:
            async def enqueue(task: str, payload: Any = None, *, priority: str = "medium",
                              job_id: str | None = None) -> Any:
                return await q.enqueue(task, payload, priority=priority, job_id=job_id)

            yield "node", enqueue
        return

    from trioqueue._redis import Admission, NewJob, RedisState, connect

    async with connect(url, client_name="tq-bench-producer") as client:
        state = RedisState(client, queue, capacity=capacity, result_ttl=86_400.0)

        async def enqueue_state(task: str, payload: Any = None, *, priority: str = "medium",
                                job_id: str | None = None) -> Any:
            job = NewJob.build(job_id or uuid.uuid4().hex, task, payload, priority=priority)
            (got,) = await state.enqueue([job])
            if got.code not in (Admission.ACCEPTED, Admission.EXISTING):
                raise RuntimeError(f"enqueue {job.id}: {got.code}")
            return got

        yield "state", enqueue_state


async def _never(job: Any) -> None:
    raise AssertionError("a producer runs no jobs")


async def _fill(queue: str, n: int) -> str:
    """``n`` no-op jobs, priorities in turn, 1,000 per call of the state layer's enqueue
    script (the one ``q.enqueue`` runs on Redis): filling is not what is measured, and
    one job per call would take longer than the measurement."""
    from trioqueue._redis import Admission, NewJob, RedisState, connect

    async with connect(URL, client_name="tq-bench-fill") as client:
        state = RedisState(client, queue, capacity=n)
        for start in range(0, n, 1000):
            batch = [NewJob.build(f"j{i:07d}", "noop", None, priority=LABELS[i % 3])
                     for i in range(start, min(n, start + 1000))]
            got = await state.enqueue(batch)
            if any(a.code is not Admission.ACCEPTED for a in got):
                raise RuntimeError("the fill was refused")
    return "state, batches of 1000"


def noop(n: int, nodes: int = 1, prefetch: int = 0, workers: int = 4,
         timeout: float = 600.0) -> dict[str, Any]:
    """Throughput of ``nodes`` node processes over ``n`` jobs enqueued beforehand."""
    need_module("coredis", "redis")
    need_module("redis")
    need_redis()
    import redis
    import trio

    queue = f"bench-{uuid.uuid4().hex[:10]}"
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    try:
        with tempfile.TemporaryDirectory(prefix="tq-bench-redis-") as tmp:
            t0 = perf_counter()
            how = trio.run(_fill, queue, n)
            te = perf_counter()
            spec = {"url": URL, "queue": queue, "workers": workers, "prefetch": prefetch,
                    "capacity": n}
            group = _Nodes(nodes, spec, Path(tmp))
            try:
                group.wait_ready()
                ticks0, rcpu0 = group.cpu_ticks(), _redis_cpu(client)
                group.open_gate()
                tg = perf_counter()
                _wait_completed(client, queue, n, timeout)
                t1 = perf_counter()
                ticks1, rcpu1 = group.cpu_ticks(), _redis_cpu(client)
                group.stop()
            finally:
                group.kill()
    finally:
        client.close()
        drop_keys(f"tq:{{{queue}}}:*")
    hz = os.sysconf("SC_CLK_TCK")
    process = t1 - tg
    return {
        "n": n, "nodes": nodes, "prefetch": prefetch, "workers": workers, "producer": how,
        "total_s": (te - t0) + process, "enqueue_s": te - t0, "process_s": process,
        "jobs_per_s": n / process, "enqueue_per_s": n / (te - t0),
        "process_per_s": n / process, "overlapped": False,
        "node_cpu_us_per_job": (ticks1 - ticks0) / hz / n * 1e6,
        "redis_cpu_us_per_job": (rcpu1 - rcpu0) / n * 1e6,
    }


def latency(rate: float, n: int, nodes: int = 1, prefetch: int = 0, workers: int = 4,
            timeout: float = 600.0) -> dict[str, Any]:
    """Open-loop load at ``rate`` jobs/s from a producer node in this process
    (``workers=0``) to ``nodes`` node processes: at each job's due time a task of its own
    takes ``perf_counter()`` (CLOCK_MONOTONIC, one clock for every process of the
    machine) and calls ``await enqueue``, so a slow round trip delays that job only, not
    the ones after it (a single producer awaiting each enqueue in turn could not offer
    500 jobs/s on this shared machine: 103-180/s).  enqueue→start is the handler's
    ``perf_counter()`` at its start minus that one.  ``producer_cpu_us_per_job``: this
    process's CPU time over the offering, per job."""
    need_module("coredis", "redis")
    need_module("redis")
    need_redis()
    import redis
    import trio

    from .common import pace_schedule

    queue = f"bench-{uuid.uuid4().hex[:10]}"
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    lat: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix="tq-bench-redis-") as tmp:
            spec = {"url": URL, "queue": queue, "workers": workers, "prefetch": prefetch,
                    "latency": True}
            group = _Nodes(nodes, spec, Path(tmp))
            try:
                group.wait_ready()

                async def produce() -> tuple[str, float, float]:
                    async with producer(URL, queue) as (how, enqueue):
                        async def one() -> None:
                            await enqueue("noop", {"ts": perf_counter()})

                        cpu0 = time.process_time()
                        t0 = perf_counter()
                        i = 0
                        async with trio.open_nursery() as nursery:
                            while i < n:
                                due, wait = pace_schedule(rate, n, t0, i, perf_counter())
                                while i < due:
                                    nursery.start_soon(one)
                                    i += 1
                                if i < n and wait > 0:
                                    await trio.sleep(wait)
                        return how, perf_counter() - t0, time.process_time() - cpu0

                how, offered_s, cpu_s = trio.run(produce)
                _wait_completed(client, queue, n, timeout)
                group.stop()
            finally:
                group.kill()
            for out in group.outs:
                lat.extend(json.loads(out.read_text()))
    finally:
        client.close()
        drop_keys(f"tq:{{{queue}}}:*")
    return latency_summary(lat) | {"rate": rate, "n": n, "nodes": nodes,
                                   "prefetch": prefetch, "producer": how,
                                   "offered_per_s": n / offered_s,
                                   "producer_cpu_us_per_job": cpu_s / n * 1e6}


if __name__ == "__main__":
    node_main(json.loads(sys.argv[1]))
