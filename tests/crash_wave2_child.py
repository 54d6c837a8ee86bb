"""A trioqueue process for tests/test_crash_wave2.py (the Wave 2 features under SIGKILL):
the test starts it with ``python -m tests.crash_wave2_child MODE DB ...``, kills it (or it
kills itself at a chosen moment), and reopens what it left in the test's own process.

    bigbatch DB DURABILITY N  30 jobs, then enqueue_many N jobs of "record", with a write
                              chunk of 100 rows; the store's first transaction ends the
                              process with SIGKILL as soon as it committed
    batches DB DURABILITY     enqueue_batch batches of 1 to 100 jobs (ids b<n>-<i>) for
                              ever, printing "b<n> <size>" once each returned
    submit DB                 submit add(2, 3) as job "sum" (committed on return), print
                              "submitted", SIGKILL itself
    submitrun DB              submit hang("h") as job "hang"; print "running" once its
                              handler started (and, with a store, its start is stored)
    hourly DB WALL [die-at-mark]
                              a queue with the periodic task "hourly" (cron 0 * * * *),
                              the wall clock standing at WALL (RFC 3339, UTC) when it
                              opens; prints "open", then each run's id as it starts.  With
                              die-at-mark, SIGKILL when the run's mark is about to be written
    limited DB N              enqueue N jobs of the task "two" (concurrency=2); wait
    progress DB               run job "p", which reports progress 0.5 "half", prints
                              "reported" and waits
    retryall DB K             POST /jobs/retry {"status": "failed"} to the server app of a
                              queue on DB; SIGKILL right after the store's K-th transaction

With the environment's CRASH_WAVE2_QUICK=1 the handlers that would wait for ever return;
with a Redis URL for DB the queue is $CRASH_WAVE2_QUEUE there (lease $CRASH_WAVE2_LEASE).
Every handler appends "<pid> <start|end> <job id>" to DB + ".ran" (or $CRASH_WAVE2_RAN),
so the test sees what ran, where and in what order, across all the processes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from datetime import UTC, datetime
from typing import Any

import trio

import trioqueue

RAN = ""
registry = trioqueue.TaskRegistry()
periodic = trioqueue.TaskRegistry()
"""The periodic task's own registry (a queue of the others enqueues no run of it)."""


def log(what: str, job_id: str) -> None:
    fd = os.open(RAN, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{os.getpid()} {what} {job_id}\n".encode())
    finally:
        os.close(fd)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def quick() -> bool:
    return os.environ.get("CRASH_WAVE2_QUICK") == "1"


async def add(a: int, b: int) -> int:
    """A submitted call: its args travel in the store."""
    log("start", f"add({a},{b})")
    return a + b


async def hang(tag: str) -> str:
    log("start", f"hang({tag})")
    if not quick():
        await trio.sleep_forever()
    return tag


@registry.task
async def record(job: trioqueue.Job) -> None:
    log("start", job.id)


@periodic.task(schedule="0 * * * *")
async def hourly(job: trioqueue.Job) -> None:
    log("start", job.id)
    print(job.id, flush=True)
    if not quick():
        await trio.sleep_forever()


@registry.task(concurrency=2)
async def two(job: trioqueue.Job) -> None:
    log("start", job.id)
    if not quick():
        await trio.sleep_forever()
    await trio.sleep(0.01)  # long enough for any other start to show if the limit broke
    log("end", job.id)


@registry.task
async def reports(job: trioqueue.Job) -> None:
    log("start", job.id)
    trioqueue.report_progress(0.5, "half")
    print("reported", flush=True)
    if not quick():
        await trio.sleep_forever()


@registry.task(max_retries=0)
async def fails(job: trioqueue.Job) -> None:
    log("start", job.id)
    if not quick():
        raise RuntimeError("boom")


def config(db: str, durability: str = "sync", **kw: Any) -> trioqueue.QueueConfig:
    """The store ``db``, or with ``db`` a Redis URL the queue $CRASH_WAVE2_QUEUE there
    (lease $CRASH_WAVE2_LEASE seconds)."""
    workers = kw.pop("workers", 4)
    if db.startswith("redis://"):
        return trioqueue.QueueConfig(
            redis_url=db, queue_name=os.environ["CRASH_WAVE2_QUEUE"], workers=workers,
            lease=float(os.environ.get("CRASH_WAVE2_LEASE", "30")), shutdown_timeout=1.0,
            **kw)
    return trioqueue.QueueConfig(persist_path=db, durability=durability,  # type: ignore[arg-type]
                                 workers=workers, shutdown_timeout=1.0, **kw)


def die_after_writes(count: int) -> None:
    """End the process with SIGKILL right after the store's ``count``-th transaction."""
    from trioqueue.testing import SqliteStore

    write_values = SqliteStore.write_values
    done = 0

    def write_then_die(self: Any, values: Any) -> None:
        nonlocal done
        write_values(self, values)
        done += 1
        if done >= count:
            die()

    SqliteStore.write_values = write_then_die  # type: ignore[method-assign]


async def bigbatch(db: str, durability: str, n: int) -> None:
    from trioqueue.testing import snapshot

    # A flush of more rows than this goes in several transactions (16,384 as shipped: a
    # few here, so that the test need not write that many).
    snapshot.WRITE_CHUNK = 100
    die_after_writes(1)
    async with trioqueue.open_queue(registry, config(db, durability, workers=1)) as q:
        for i in range(30):  # before the batch in the same flush: it is cut at 100
            q.enqueue_nowait("record", {"single": i})
        await q.enqueue_many("record", [{"i": i} for i in range(n)])
        print("returned", flush=True)
        await q.flush()
        print("flushed", flush=True)  # (not reached: the first write ends the process)


async def batches(db: str, durability: str) -> None:
    rnd = random.Random(int(os.environ.get("CRASH_SEED", "0")))
    async with trioqueue.open_queue(registry, config(db, durability, workers=2)) as q:
        print("open", flush=True)
        n = 0
        while True:
            size = rnd.randint(1, 100)
            await q.enqueue_batch([trioqueue.BatchItem("record", job_id=f"b{n}-{i}")
                                   for i in range(size)])
            print(f"b{n} {size}", flush=True)
            n += 1


async def submit(db: str) -> None:
    async with trioqueue.open_queue(registry, config(db)) as q:
        await q.submit(add, 2, 3, job_id="sum", delay=0.5)  # committed before it runs
        print("submitted", flush=True)
        die()


async def submit_run(db: str) -> None:
    async with trioqueue.open_queue(registry, config(db)) as q:
        async with q.subscribe() as events:
            await q.submit(hang, "h", job_id="hang")
            async for event in events:
                if event.type == "started":
                    break
        if not db.startswith("redis://"):
            await q.flush()  # its start (PROCESSING) is stored
        print("running", flush=True)
        await trio.sleep_forever()


async def hourly_queue(db: str, wall: str, how: str) -> None:
    if how == "die-at-mark":  # the run's job is stored, its mark not yet
        from trioqueue.testing import SqliteStore

        SqliteStore.set_meta = lambda *args: die()  # type: ignore[method-assign]
    start = datetime.fromisoformat(wall).replace(tzinfo=UTC).timestamp()
    real = time.time
    time.time = lambda: start  # what the queue reads its wall clock from, once, at open
    try:
        async with trioqueue.open_queue(periodic, config(db)):
            time.time = real
            print("open", flush=True)
            await trio.sleep_forever()
    finally:
        time.time = real


async def limited(db: str, n: int) -> None:
    async with trioqueue.open_queue(registry, config(db, workers=8)) as q:
        await q.enqueue_batch([trioqueue.BatchItem("two", job_id=f"t{i}") for i in range(n)])
        print("enqueued", flush=True)
        await trio.sleep_forever()


async def progress(db: str) -> None:
    async with trioqueue.open_queue(registry, config(db)) as q:
        await q.enqueue("reports", job_id="p")
        await trio.sleep_forever()


async def retry_all(db: str, writes: int) -> None:
    from trioqueue.server import App

    die_after_writes(writes)
    async with trioqueue.open_queue(registry, config(db, workers=1)) as q:
        print(await post(App(q), "/jobs/retry", {"status": "failed"}), flush=True)
        await trio.sleep_forever()


async def post(app: Any, path: str, body: Any) -> str:
    """POST ``body`` to the ASGI ``app``; the status and the body of its answer."""
    sent: list[dict[str, Any]] = []
    chunks = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]

    async def receive() -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "query_string": b"",
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")]}
    await app(scope, receive, send)
    return f"{sent[0]['status']} {sent[1]['body'].decode()}"


def main() -> None:
    global RAN
    mode, db = sys.argv[1], sys.argv[2]
    args = sys.argv[3:]
    RAN = os.environ.get("CRASH_WAVE2_RAN", db + ".ran")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if mode == "bigbatch":
        trio.run(bigbatch, db, args[0], int(args[1]))
    elif mode == "batches":
        trio.run(batches, db, args[0])
    elif mode == "submit":
        trio.run(submit, db)
    elif mode == "submitrun":
        trio.run(submit_run, db)
    elif mode == "hourly":
        trio.run(hourly_queue, db, args[0], args[1] if len(args) > 1 else "")
    elif mode == "limited":
        trio.run(limited, db, int(args[0]))
    elif mode == "progress":
        trio.run(progress, db)
    elif mode == "retryall":
        trio.run(retry_all, db, int(args[0]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    # As the module's own name, not __main__: a submitted function's task is
    # "tests.crash_wave2_child.hang" here as in the test's own process.
    from tests.crash_wave2_child import main as module_main

    module_main()
