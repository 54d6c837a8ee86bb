"""A Redis node in a process of its own, for tests/test_redis_nodes.py and
tests/test_redis_chaos.py.

``python -m tests.redis_node_child URL QUEUE WORKERS RUNS_FILE [LEASE [PREFETCH [START]]]``
(with START, a file: it waits until that file exists before it opens the queue): opens
the queue with a task ``record`` that appends ``<pid> <job id> <attempt>`` to RUNS_FILE when
it starts, prints ``ready`` once open, and shuts down gracefully on SIGTERM.  What the
handler does then depends on its payload (a dict; anything else returns at once):

- ``{"hang_in": <pid>}``: in that process, never returns; if cancelled it prints
  ``stopped <job id>``;
- ``{"gate": <path>, "in": <pid or null>}``: in that process (every process for null),
  waits until the file ``path`` exists (polled every 5 ms; ``{pid}`` in it is replaced by
  this process' pid), prints ``done <job id>`` and returns without another checkpoint;
- ``{"sleep": <seconds>}``: sleeps that long;
- ``{"exit": true}``: ends this process at once (``os._exit(3)``, before any checkpoint:
  a job that kills its node as it starts).

It returns this process' pid.  A second task, ``limited``, does the same with
``concurrency=1``.  Warnings (a refused outcome, a lost lease) go to stderr.
"""

from __future__ import annotations

import os
import signal
import sys

import trio

import trioqueue
from trioqueue import Job, QueueConfig, TaskRegistry


def gate_open(path: str) -> bool:
    return os.path.exists(path)


def main() -> None:
    url, queue, workers, runs_file = sys.argv[1:5]
    lease = float(sys.argv[5]) if len(sys.argv) > 5 else 30.0
    prefetch = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    start = sys.argv[7] if len(sys.argv) > 7 else None
    registry = TaskRegistry()
    out = open(runs_file, "a", buffering=1)  # closed at exit
    pid = os.getpid()

    @registry.task
    async def record(job: Job) -> int:
        out.write(f"{pid} {job.id} {job.attempts}\n")
        payload = job.payload if isinstance(job.payload, dict) else {}
        if payload.get("exit"):
            out.flush()
            os._exit(3)
        if payload.get("hang_in") == pid:
            try:
                await trio.sleep_forever()
            finally:
                print(f"stopped {job.id}", flush=True)
        gate = payload.get("gate")
        if gate is not None and payload.get("in") in (None, pid):
            gate = gate.replace("{pid}", str(pid))
            while not gate_open(gate):  # noqa: ASYNC110 - a file another process creates
                await trio.sleep(0.005)
            print(f"done {job.id}", flush=True)
            return pid  # no checkpoint between the gate and the outcome
        await trio.sleep(float(payload.get("sleep", 0.001)))
        return pid

    @registry.task(concurrency=1)
    async def limited(job: Job) -> int:
        return await record(job)

    async def run() -> None:
        config = QueueConfig(redis_url=url, queue_name=queue, workers=int(workers),
                             lease=lease, prefetch=prefetch)
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            while start is not None and not gate_open(start):  # noqa: ASYNC110
                await trio.sleep(0.005)
            async with trioqueue.open_queue(registry, config):
                print("ready", flush=True)
                async for _ in signals:
                    break

    try:
        trio.run(run)
    finally:
        out.close()


if __name__ == "__main__":
    main()
