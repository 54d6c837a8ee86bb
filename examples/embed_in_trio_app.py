"""Embed a trioqueue in a Trio program, next to the program's other tasks.

The queue is one more service in the program's nursery.  It is started with
``nursery.start`` (so it is ready before anything enqueues) and stopped by leaving its
``async with open_queue(...)`` block, which is the graceful shutdown: new jobs are
refused, jobs already running finish, then the queue closes.

The program checksums the source files of the installed ``trio`` package.  Files
"arrive" one at a time, the way requests reach a long-running service; each becomes a
job, and the program awaits every result.  A heartbeat task prints the queue's metrics
while this goes on.

Ctrl+C (or SIGTERM) stops taking new files, lets the jobs already running finish,
prints what was done and exits 0.  A second Ctrl+C stops at once.

    python examples/embed_in_trio_app.py            # about 15 s
    python examples/embed_in_trio_app.py --quick    # about 3 s
"""

from __future__ import annotations

import argparse
import hashlib
import signal
from pathlib import Path
from typing import Any

import trio

import trioqueue

registry = trioqueue.TaskRegistry()


@registry.task(max_retries=2, timeout=5.0)
async def checksum(job: trioqueue.Job) -> dict[str, Any]:
    """Read one file (in Trio's thread cache, off the event loop) and describe it."""
    data = await trio.Path(job.payload["path"]).read_bytes()
    return {
        "path": job.payload["path"],
        "bytes": len(data),
        "lines": data.count(b"\n"),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


async def run_queue(
    stop: trio.Event, closed: trio.Event, *, task_status: trio.TaskStatus[trioqueue.JobQueue]
) -> None:
    """The queue as a service: ready when started, closed gracefully when ``stop`` is set."""
    config = trioqueue.QueueConfig(workers=8, capacity=100, shutdown_timeout=5.0)
    async with trioqueue.open_queue(registry, config) as q:
        task_status.started(q)
        await stop.wait()
        print("closing the queue: jobs already running may finish")
    m = q.metrics()
    print(f"queue closed: {m.completed} completed, {m.failed} failed, {m.dropped} dropped")
    closed.set()


async def heartbeat(q: trioqueue.JobQueue, every: float) -> None:
    """Another task of the application; here it reports on the queue."""
    while True:
        await trio.sleep(every)
        m = q.metrics()
        # None until a job has waited in the queue (no jobs yet, or none recently)
        wait = "-" if m.wait_p50 is None else f"{m.wait_p50 * 1000:.1f} ms"
        print(
            f"heartbeat: {m.completed} done, {sum(m.queued.values())} queued, "
            f"{m.busy_workers}/{m.workers} workers busy, wait p50 {wait}",
            flush=True,
        )


async def watch_signals(
    signals: Any, app_scope: trio.CancelScope, everything: trio.CancelScope
) -> None:
    async for _ in signals:
        if not app_scope.cancel_called:
            print("\nCtrl+C: no new files; finishing the jobs already running "
                  "(Ctrl+C again to stop at once)", flush=True)
            app_scope.cancel()
        else:
            print("second Ctrl+C: stopping now", flush=True)
            everything.cancel()


async def application(
    q: trioqueue.JobQueue, files: list[Path], pace: float, results: list[dict[str, Any]]
) -> None:
    """Feed files to the queue as they 'arrive' and collect every result."""

    async def await_result(job_id: str) -> None:
        done = await q.wait(job_id)
        if done.status is trioqueue.JobStatus.COMPLETED:
            results.append(done.result)
        else:
            print(f"job {job_id} ended {done.status.value}: {done.error}")

    async with trio.open_nursery() as waiters:
        for path in files:
            job = await q.enqueue("checksum", {"path": str(path)})
            waiters.start_soon(await_result, job.id)
            await trio.sleep(pace)


async def main(quick: bool) -> None:
    sources = sorted(Path(trio.__file__).parent.rglob("*.py"))
    files = sources[:120] if quick else sources
    pace = 0.02 if quick else 15.0 / max(1, len(files))
    results: list[dict[str, Any]] = []
    stop, closed = trio.Event(), trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            q = await nursery.start(run_queue, stop, closed)
            nursery.start_soon(heartbeat, q, 0.5 if quick else 2.0)
            with trio.CancelScope() as app_scope:
                nursery.start_soon(watch_signals, signals, app_scope, nursery.cancel_scope)
                print(f"ready: checksumming {len(files)} files with "
                      f"{q.config.workers} workers", flush=True)
                await application(q, files, pace, results)
            interrupted = app_scope.cancelled_caught
            stop.set()
            await closed.wait()
            nursery.cancel_scope.cancel()  # the heartbeat and the signal watcher
    total = sum(r["bytes"] for r in results)
    lines = sum(r["lines"] for r in results)
    print(f"{'interrupted' if interrupted else 'finished'}: {len(results)} of {len(files)} "
          f"files checksummed, {total:,} bytes, {lines:,} lines")
    for r in sorted(results, key=lambda r: r["bytes"], reverse=True)[:3]:
        print(f"  {r['sha256'][:16]}  {r['bytes']:>8,} B  {Path(r['path']).name}")
    print("shut down cleanly")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (a few seconds)")
    trio.run(main, parser.parse_args().quick)
