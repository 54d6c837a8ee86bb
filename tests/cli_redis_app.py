"""The tasks of the ``trioqueue worker`` and ``serve`` nodes that tests/test_cli_redis.py
starts (``--app tests.cli_redis_app:registry``): a module of its own, so that a node
imports only this and trioqueue."""

from __future__ import annotations

import os

import trio

from trioqueue import Job, TaskRegistry

RUNS_VARIABLE = "TRIOQUEUE_TEST_RUNS_FILE"

registry = TaskRegistry()


@registry.task
async def record(job: Job) -> int:
    """Say who runs which attempt (``<pid> <job id> <attempt>``, appended to the file
    named by ``TRIOQUEUE_TEST_RUNS_FILE`` and printed after ``ran``); sleep
    ``payload["sleep"]`` seconds; return the pid."""
    line = f"{os.getpid()} {job.id} {job.attempts}\n"
    with open(os.environ[RUNS_VARIABLE], "a") as runs:  # noqa: ASYNC230 - a short append
        runs.write(line)
    print("ran", line, end="", flush=True)
    if isinstance(job.payload, dict):
        await trio.sleep(float(job.payload.get("sleep", 0)))
    return os.getpid()


@registry.task(max_retries=0)
async def fail(job: Job) -> None:
    raise RuntimeError("on purpose")
