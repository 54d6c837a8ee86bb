"""Tasks for the dashboard's browser tests: ``trioqueue serve --app tests.browser.app:registry``.

- ``echo``: returns its payload (the load in the responsiveness test).
- ``sleep``: payload ``{"seconds": s}``; holds a worker that long.
- ``boom``: always fails, with ``payload["message"]`` as the error (no retries).
- ``fail_once``: fails the first time a job id runs, completes when it is retried.
- ``halfway``: reports progress 0.5 with the note ``payload["note"]``, then holds a
  worker for ``payload["seconds"]``.
- :data:`LONG_TASK` (a name of 192 characters): returns its payload (the layout tests:
  a long name must not widen the page).

``with_periodic`` has ``echo``, ``sleep``, ``boom``, ``fail_once`` and :data:`LONG_TASK`,
and two periodic ones (payload ``null``, they return it) that do not come due while a
test runs (unless it runs across midnight UTC on 1 January), so that the only job of
each is the catch-up run enqueued at start (docs/guide.md, periodic tasks):

- ``new_year``: ``schedule="0 0 1 1 *"`` (midnight UTC on 1 January);
- ``epoch``: ``every=1e9`` seconds (its runs: 2001-09-09, then 2033-05-18).
"""

from __future__ import annotations

from typing import Any

import trio

from trioqueue import Job, TaskRegistry, report_progress

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


@registry.task(name="halfway")
async def halfway(job: Job) -> None:
    report_progress(0.5, str(job.payload["note"]))
    await trio.sleep(float(job.payload["seconds"]))


LONG_TASK = "a_really_long_task_name_" * 8
"""192 characters, as a user's task name once was."""


@registry.task(name=LONG_TASK)
async def long_named(job: Job) -> Any:
    return job.payload


with_periodic = TaskRegistry()
with_periodic.register(echo, name="echo")
with_periodic.register(sleep, name="sleep")
with_periodic.register(boom, name="boom", max_retries=0)
with_periodic.register(fail_once, name="fail_once", max_retries=0)
with_periodic.register(long_named, name=LONG_TASK)


@with_periodic.task(name="new_year", schedule="0 0 1 1 *")
async def new_year(job: Job) -> Any:
    return job.payload


@with_periodic.task(name="epoch", every=1e9, priority="low")
async def epoch(job: Job) -> Any:
    return job.payload
