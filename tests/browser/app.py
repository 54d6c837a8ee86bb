"""Tasks for the dashboard's browser tests: ``trioqueue serve --app tests.browser.app:registry``.

- ``echo``: returns its payload (the load in the responsiveness test).
- ``sleep``: payload ``{"seconds": s}``; holds a worker that long.
- ``boom``: always fails, with ``payload["message"]`` as the error (no retries).
- ``fail_once``: fails the first time a job id runs, completes when it is retried.
"""

from __future__ import annotations

from typing import Any

import trio

from trioqueue import Job, TaskRegistry

registry = TaskRegistry()

_failed_once: set[str] = set()


@registry.task(name="echo")
async def echo(job: Job) -> Any:
    return job.payload


@registry.task(name="sleep")
async def sleep(job: Job) -> dict[str, float]:
    seconds = float(job.payload["seconds"])
    await trio.sleep(seconds)
    return {"slept": seconds}


class Boom(Exception):
    """What ``boom`` raises."""


@registry.task(name="boom", max_retries=0)
async def boom(job: Job) -> None:
    raise Boom(str(job.payload["message"]))


@registry.task(name="fail_once", max_retries=0)
async def fail_once(job: Job) -> dict[str, bool]:
    if job.id not in _failed_once:
        _failed_once.add(job.id)
        raise Boom("the first attempt fails on purpose")
    return {"second_run": True}
