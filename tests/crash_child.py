"""A trioqueue process for the crash tests: tests/test_crash.py starts it, kills it
with SIGKILL at chosen moments, and reads what it printed and the store it left.

    python tests/crash_child.py produce DB    enqueue j0, j1, ... (sync), print each id
                                              only after enqueue returned; forever
    python tests/crash_child.py slow DB N     enqueue N jobs whose handler sleeps long
    python tests/crash_child.py suicide DB    enqueue a job whose handler SIGKILLs its
                                              own process, max_retries=2, and run it
    python tests/crash_child.py exit DB       enqueue a job whose handler calls
                                              os._exit(1), max_retries=1, and run it
    python tests/crash_child.py ctrlc DB      run a job that computes forever beside one
                                              that sleeps 1 s; print "busy" when both run
    python tests/crash_child.py cancel DB     cancel a running job and a delayed one, print
                                              "cancelled" once both cancels returned, and
                                              SIGKILL its own process at once
    python tests/crash_child.py drain DB      recover and run everything left, then exit

Every handler appends "<job id>\\n" to DB + ".ran" when it starts, so the test can see
what ran, at least once, across all the processes.

SIGINT gets its default handler back before ``trio.run``: a process started in the
background by a shell (``pytest &``) inherits SIGINT ignored, and trio only turns SIGINT
into KeyboardInterrupt when it finds the default handler.
"""

from __future__ import annotations

import os
import signal
import sys

import trio

import trioqueue

registry = trioqueue.TaskRegistry()
RAN: str = ""
QUICK = os.environ.get("CRASH_CHILD_QUICK") == "1"


def _log_start(job: trioqueue.Job) -> None:
    fd = os.open(RAN, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{job.id}\n".encode())
    finally:
        os.close(fd)


@registry.task
async def record(job: trioqueue.Job) -> int:
    _log_start(job)
    return int(job.payload["n"])


@registry.task(timeout=600)
async def slow(job: trioqueue.Job) -> str:
    _log_start(job)
    if not QUICK:
        print(f"started {job.id}", flush=True)
        await trio.sleep(600)
    return "done"


@registry.task(max_retries=2)
async def suicide(job: trioqueue.Job) -> None:
    _log_start(job)
    os.kill(os.getpid(), signal.SIGKILL)


@registry.task(max_retries=1)
async def exits(job: trioqueue.Job) -> None:
    _log_start(job)
    os._exit(1)


both_running = trio.Event()


@registry.task
async def compute(job: trioqueue.Job) -> None:
    _log_start(job)
    await both_running.wait()
    print("busy", flush=True)
    n = 0
    while True:  # never yields: only a Ctrl+C raised right here stops it
        n += 1


@registry.task
async def nap(job: trioqueue.Job) -> str:
    _log_start(job)
    both_running.set()
    await trio.sleep(1.0)
    return "rested"


def config(db: str, shutdown_timeout: float = 1.0) -> trioqueue.QueueConfig:
    return trioqueue.QueueConfig(
        persist_path=db, durability="sync", workers=4, retry_base=0.01, retry_jitter=0.0,
        shutdown_timeout=shutdown_timeout,
    )


async def produce(db: str) -> None:
    async with trioqueue.open_queue(registry, config(db)) as q:
        print("open", flush=True)
        n = 0
        while True:
            job = await q.enqueue("record", {"n": n}, job_id=f"j{n}")
            print(job.id, flush=True)
            n += 1


async def enqueue_slow(db: str, count: int) -> None:
    async with trioqueue.open_queue(registry, config(db)) as q:
        for i in range(count):
            await q.enqueue("slow", job_id=f"s{i}")
        print("enqueued", flush=True)
        await trio.sleep_forever()


async def enqueue_suicide(db: str) -> None:
    async with trioqueue.open_queue(registry, config(db)) as q:
        # Due a little later, so it is committed before it first runs.
        await q.enqueue("suicide", job_id="boom", delay=0.2)
        await trio.sleep_forever()


async def enqueue_exit(db: str) -> None:
    async with trioqueue.open_queue(registry, config(db)) as q:
        await q.enqueue("exits", job_id="bye", delay=0.2)  # committed before it runs
        await trio.sleep_forever()


async def ctrl_c(db: str) -> None:
    # The nap ends 1 s after it started, during the shutdown, and (durability "sync")
    # waits for its outcome's commit: a shutdown_timeout of 1 s from the Ctrl+C left it
    # a margin of only the moment between its start and the Ctrl+C, which a commit on a
    # machine busy with I/O outlasted once (the nap cut off and put back).  The nap still
    # bounds the test's time.
    async with trioqueue.open_queue(registry, config(db, shutdown_timeout=10.0)) as q:
        await q.enqueue("nap", job_id="nap")
        await q.enqueue("compute", job_id="compute")
        await trio.sleep_forever()


async def cancel_then_die(db: str) -> None:
    async with trioqueue.open_queue(registry, config(db)) as q:
        async with q.subscribe() as events:
            await q.enqueue("slow", job_id="c-running")
            async for event in events:
                if event.type == "started":
                    break
        await q.enqueue("record", {"n": 0}, job_id="c-later", delay=600)
        await q.cancel("c-running")
        await q.cancel("c-later")
        print("cancelled", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # acknowledged: nothing more gets written


async def drain(db: str) -> None:
    async with trioqueue.open_queue(registry, config(db)) as q:
        while True:
            m = q.metrics()
            if not sum(m.queued.values()) and not m.scheduled and not m.processing:
                break
            await trio.sleep(0.02)
    print("drained", flush=True)


def main() -> None:
    global RAN
    mode, db = sys.argv[1], sys.argv[2]
    RAN = db + ".ran"
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if mode == "produce":
        trio.run(produce, db)
    elif mode == "slow":
        trio.run(enqueue_slow, db, int(sys.argv[3]))
    elif mode == "suicide":
        trio.run(enqueue_suicide, db)
    elif mode == "exit":
        trio.run(enqueue_exit, db)
    elif mode == "ctrlc":
        trio.run(ctrl_c, db)
    elif mode == "cancel":
        trio.run(cancel_then_die, db)
    elif mode == "drain":
        trio.run(drain, db)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
