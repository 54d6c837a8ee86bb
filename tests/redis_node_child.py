"""A Redis node in a process of its own, for tests/test_redis_nodes.py.

``python -m tests.redis_node_child URL QUEUE WORKERS RUNS_FILE [LEASE]``: opens the queue
with a task ``record`` that appends ``<pid> <job id> <attempt>`` to RUNS_FILE (and then, for
a payload ``{"hang_in": <this pid>}``, never returns), prints ``ready`` once open, and shuts
down gracefully on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys

import trio

import trioqueue
from trioqueue import Job, QueueConfig, TaskRegistry


def main() -> None:
    url, queue, workers, runs_file = sys.argv[1:5]
    lease = float(sys.argv[5]) if len(sys.argv) > 5 else 30.0
    registry = TaskRegistry()
    out = open(runs_file, "a", buffering=1)  # closed at exit
    pid = os.getpid()

    @registry.task
    async def record(job: Job) -> int:
        out.write(f"{pid} {job.id} {job.attempts}\n")
        if isinstance(job.payload, dict) and job.payload.get("hang_in") == pid:
            await trio.sleep_forever()
        await trio.sleep(0.001)
        return pid

    async def run() -> None:
        config = QueueConfig(redis_url=url, queue_name=queue, workers=int(workers),
                             lease=lease)
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
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
