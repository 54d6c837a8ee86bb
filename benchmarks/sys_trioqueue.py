"""trioqueue itself, embedded: memory mode and (once it lands) the SQLite store."""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import trio

import trioqueue

from .common import (
    Skip,
    latency_summary,
    offer_paced,
    pace_schedule,
    perf_counter,
    settled_rss,
    throughput,
)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Shutdown with jobs still queued (the memory scenario) logs a warning: keep stderr
    quiet while a measurement runs, and the logger as it was afterwards (the tests call
    these functions in their own process)."""
    logger = logging.getLogger("trioqueue")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _registry(handler: Any = None) -> trioqueue.TaskRegistry:
    registry = trioqueue.TaskRegistry()

    async def noop(job: trioqueue.Job) -> None:
        return None

    registry.task(name="noop")(handler or noop)
    return registry


async def _all_done(q: trioqueue.JobQueue, last_ids: list[str], n: int) -> None:
    """Return once ``n`` jobs are COMPLETED.

    Jobs of one priority start in FIFO order, so once the last job each producer enqueued
    is finished only the few still in other workers' hands remain: poll for those.
    """
    for job_id in last_ids:
        try:
            job = await q.wait(job_id)
        except trioqueue.JobNotFound:
            continue  # finished and aged out of the finished-job cache already
        if job.status is not trioqueue.JobStatus.COMPLETED:
            raise RuntimeError(f"job {job_id} ended {job.status.value}: {job.error}")
    for _ in range(1_000_000):
        if q.metrics().completed >= n:
            return
        await trio.lowlevel.checkpoint()
    raise RuntimeError(f"only {q.metrics().completed} of {n} jobs completed")


async def _open_or_skip(config: trioqueue.QueueConfig, registry: trioqueue.TaskRegistry,
                        body: Any) -> Any:
    with _quiet():
        return await _open_and_run(config, registry, body)


async def _open_and_run(config: trioqueue.QueueConfig, registry: trioqueue.TaskRegistry,
                        body: Any) -> Any:
    try:
        cm = trioqueue.open_queue(registry, config)
        q = await cm.__aenter__()
    except trioqueue.StoreError as exc:
        raise Skip(f"persistence not available yet (StoreError: {exc})") from None
    try:
        result = await body(q)
    except BaseException as exc:
        if not await cm.__aexit__(type(exc), exc, exc.__traceback__):
            raise
        raise  # pragma: no cover - open_queue never swallows
    await cm.__aexit__(None, None, None)
    return result


def noop(n: int, variant: str, workers: int = 4, producers: int = 1,
         durability: str | None = None, writer: str = "sqlite",
         beside_sqlite: int = 0, batch: int = 0) -> dict[str, Any]:
    """``variant``: ``nowait`` (enqueue_nowait in a loop, capacity raised to hold all),
    ``nowait-retry`` (enqueue_nowait at the default capacity, a checkpoint and a retry on
    QueueFull), ``await`` (``await q.enqueue`` from ``producers`` tasks, default
    capacity), ``many`` (``await q.enqueue_many`` of ``batch`` jobs at a time from
    ``producers`` tasks, capacity ``2 * batch`` so that a batch fits while the last one
    runs; ``producers * batch`` with several).

    The ``noop/ceiling/*`` cases, which measure what the store's targets are up against
    rather than a way to run trioqueue: ``writer="null"`` keeps everything of the store
    (the file, the marks, the rows, the thread hand-off, group commit) but the write
    itself, which returns at once; ``beside_sqlite=R`` runs a second process that
    writes R rows/s into its own store (:mod:`benchmarks.sqlite_load`) while this one
    is measured."""
    if writer == "null":
        from trioqueue._store.sqlite import SqliteStore

        def write_nothing(self: SqliteStore, values: Any) -> None:
            return None

        with mock.patch.object(SqliteStore, "write_values", write_nothing):
            return noop(n, variant, workers, producers, durability, "sqlite", beside_sqlite,
                        batch)
    if variant == "many" and batch < 1:
        raise ValueError(f"variant 'many' needs batch >= 1, not {batch}")
    if writer != "sqlite":
        raise ValueError(f"writer must be 'sqlite' or 'null', not {writer!r}")
    if beside_sqlite:
        with _sqlite_load(beside_sqlite) as load:
            out = noop(n, variant, workers, producers, durability, batch=batch)
        return out | {f"beside_{k}": v for k, v in load.items()}
    registry = _registry()
    with tempfile.TemporaryDirectory(prefix="tq-bench-") as tmp:
        kwargs: dict[str, Any] = {"workers": workers}
        if durability is not None:
            kwargs.update(persist_path=str(Path(tmp) / "bench.db"), durability=durability)
        if variant == "nowait":
            kwargs["capacity"] = n
        elif variant == "many":
            kwargs["capacity"] = max(1000, 2 * batch, producers * batch)
        config = trioqueue.QueueConfig(**kwargs)

        async def body(q: trioqueue.JobQueue) -> dict[str, Any]:
            last_ids: list[str] = []
            t0 = perf_counter()
            if variant == "nowait":
                enqueue = q.enqueue_nowait
                job = None
                for _ in range(n):
                    job = enqueue("noop")
                assert job is not None
                last_ids.append(job.id)
                if durability is not None:
                    await q.flush()
                te = perf_counter()
            elif variant == "nowait-retry":
                enqueue = q.enqueue_nowait
                full = trioqueue.QueueFull
                checkpoint = trio.lowlevel.checkpoint
                job = None
                i = 0
                while i < n:
                    try:
                        job = enqueue("noop")
                    except full:
                        await checkpoint()
                        continue
                    i += 1
                assert job is not None
                last_ids.append(job.id)
                if durability is not None:
                    await q.flush()
                te = perf_counter()
            elif variant == "many":
                enqueue_many = q.enqueue_many
                payloads = [None] * batch
                shares = [n // producers + (1 if i < n % producers else 0)
                          for i in range(producers)]

                async def batches(left: int) -> None:
                    jobs: list[trioqueue.Job] = []
                    while left > 0:
                        jobs = await enqueue_many("noop", payloads[:left])
                        left -= len(jobs)
                    if jobs:
                        last_ids.append(jobs[-1].id)

                if producers == 1:
                    await batches(n)
                else:
                    async with trio.open_nursery() as nursery:
                        for share in shares:
                            nursery.start_soon(batches, share)
                if durability is not None:
                    await q.flush()
                te = perf_counter()
            else:
                share = [n // producers + (1 if i < n % producers else 0)
                         for i in range(producers)]

                async def producer(count: int) -> None:
                    job = None
                    for _ in range(count):
                        job = await q.enqueue("noop")
                    if job is not None:
                        last_ids.append(job.id)

                async with trio.open_nursery() as nursery:
                    for count in share:
                        nursery.start_soon(producer, count)
                if durability is not None:
                    await q.flush()  # batch: what is accepted is on disk (sync: already)
                te = perf_counter()
            await _all_done(q, last_ids, n)
            t1 = perf_counter()
            m = q.metrics()
            # With a store, flush() yields to the workers while it waits for the commit.
            out = throughput(n, t0, te, t1,
                             overlapped=variant != "nowait" or durability is not None)
            out.update(workers=workers, producers=producers, completed=m.completed,
                       wait_p99_ms=m.wait_p99 * 1e3, utilization=m.utilization)
            return out

        return trio.run(_open_or_skip, config, registry, body)


@contextlib.contextmanager
def _sqlite_load(rows_per_s: int) -> Iterator[dict[str, Any]]:
    """Run :mod:`benchmarks.sqlite_load` at ``rows_per_s`` for the body's duration; the
    dict it yields gets the load's own figures (rows, rows_per_s, cpu_s) at the end."""
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tq-load-") as tmp, subprocess.Popen(
        [sys.executable, "-m", "benchmarks.sqlite_load", str(rows_per_s), tmp],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parent.parent,  # where `benchmarks` imports from
    ) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"sqlite_load did not start (exit {proc.wait()})")
            yield figures
            proc.stdin.close()
            figures.update(json.loads(proc.stdout.readline()))
            proc.wait(timeout=30)  # closing its store
        finally:
            if proc.poll() is None:
                proc.kill()


def io(n: int, workers: int, sleep: float = 0.01) -> dict[str, Any]:
    async def handler(job: trioqueue.Job) -> None:
        await trio.sleep(sleep)

    config = trioqueue.QueueConfig(workers=workers, capacity=n)

    async def body(q: trioqueue.JobQueue) -> dict[str, Any]:
        t0 = perf_counter()
        job = None
        for _ in range(n):
            job = q.enqueue_nowait("noop")
        te = perf_counter()
        assert job is not None
        await _all_done(q, [job.id], n)
        out = throughput(n, t0, te, perf_counter(), overlapped=False)
        out["ideal_per_s"] = workers / sleep
        return out | {"workers": workers}

    return trio.run(_open_or_skip, config, _registry(handler), body)


def latency(rate: float, n: int, workers: int = 4, nowait: bool = False) -> dict[str, Any]:
    """``nowait``: the producer offers each tick's due jobs with ``enqueue_nowait`` and
    yields once per tick (sleeping until the next job is due), instead of an
    ``await enqueue`` per job."""
    lat: list[float] = []
    done = trio.Event()

    async def handler(job: trioqueue.Job) -> None:
        lat.append(perf_counter() - job.payload)
        if len(lat) >= n:
            done.set()

    config = trioqueue.QueueConfig(workers=workers)

    full = 0

    async def body(q: trioqueue.JobQueue) -> float:
        nonlocal full
        if not nowait:
            offered_s = await offer_paced(
                rate, n, lambda ts: q.enqueue("noop", ts), trio.sleep
            )
            await done.wait()
            return offered_s
        t0 = perf_counter()
        i = 0
        while i < n:
            due, wait = pace_schedule(rate, n, t0, i, perf_counter())
            while i < due:
                try:
                    q.enqueue_nowait("noop", perf_counter())
                except trioqueue.QueueFull:
                    full += 1  # fell behind by a whole capacity: let workers run
                    await trio.lowlevel.checkpoint()
                    continue
                i += 1
            if i < n:
                await trio.sleep(max(wait, 0.0))
        offered_s = perf_counter() - t0
        await done.wait()
        return offered_s

    offered_s = trio.run(_open_or_skip, config, _registry(handler), body)
    return latency_summary(lat) | {"rate": rate, "n": n, "offered_per_s": n / offered_s,
                                   "queue_full_retries": full}


def priorities(duration: float, workers: int = 4) -> dict[str, Any]:
    """Three producers keep HIGH, MEDIUM and LOW backlogged for ``duration`` seconds and
    the picks per priority are counted.

    Each producer fills its priority's queue to the (default) capacity with
    ``enqueue_nowait`` and yields only on QueueFull, so all three queues stay full: a
    producer using ``await enqueue`` is slower than the workers and never builds a
    backlog, which would measure FIFO order, not the fair picker."""
    picks = [0, 0, 0]
    waits: list[list[float]] = [[], [], []]
    recording = True

    async def handler(job: trioqueue.Job) -> None:
        if recording:
            p = int(job.priority)
            picks[p] += 1
            waits[p].append(perf_counter() - job.payload)

    config = trioqueue.QueueConfig(workers=workers)
    weights = {int(p): w for p, w in config.fairness.items()}

    async def body(q: trioqueue.JobQueue) -> None:
        nonlocal recording

        async def producer(priority: trioqueue.Priority) -> None:
            enqueue = q.enqueue_nowait
            full = trioqueue.QueueFull
            while True:
                try:
                    enqueue("noop", perf_counter(), priority=priority)
                except full:
                    await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            for p in trioqueue.Priority:
                nursery.start_soon(producer, p)
            await trio.sleep(duration)
            recording = False
            nursery.cancel_scope.cancel()

    trio.run(_open_or_skip, config, _registry(handler), body)
    total = sum(picks)
    wsum = sum(weights.values())
    out: dict[str, Any] = {"duration": duration, "picks": total}
    for p in trioqueue.Priority:
        label = p.name.lower()
        out[f"share_{label}"] = picks[p] / total
        out[f"expected_{label}"] = weights[p] / wsum
        w = sorted(waits[p])
        out[f"worst_wait_{label}_ms"] = (w[-1] if w else float("nan")) * 1e3
        out[f"p99_wait_{label}_ms"] = latency_summary(w)["p99_ms"]
    out["max_share_error"] = max(
        abs(out[f"share_{p.name.lower()}"] - out[f"expected_{p.name.lower()}"])
        for p in trioqueue.Priority
    )
    return out


def memory(n: int) -> dict[str, Any]:
    config = trioqueue.QueueConfig(workers=4, capacity=n + 1)

    async def body(q: trioqueue.JobQueue) -> dict[str, Any]:
        before = settled_rss()
        for i in range(n):
            q.enqueue_nowait("noop", {"i": i})
        after = settled_rss()
        queued = sum(q.metrics().queued.values())
        return {"n": n, "queued": queued, "rss_before": before, "rss_after": after,
                "bytes_per_job": (after - before) / n}

    return trio.run(_open_or_skip, config, _registry(), body)
