"""The built-in demo tasks that ``trioqueue serve`` runs when no ``--app`` is given.

``trioqueue serve --app trioqueue.demo:registry`` is the same thing, spelled out.

- ``echo``: returns its payload.
- ``sleep``: payload ``{"seconds": s}`` (or a bare number); sleeps, returns ``{"slept": s}``.
- ``fail``: always raises (so the job ends FAILED after its retries).
- ``flaky``: payload ``{"fail_times": n}``; fails its first ``n`` attempts, then returns
  ``{"attempts": k}``.
"""

from __future__ import annotations

import math
from typing import Any

import trio

from ._job import Job
from ._registry import TaskRegistry

__all__ = ["registry"]

registry = TaskRegistry()


class DemoFailure(Exception):
    """What ``fail`` and ``flaky`` raise: an ordinary handler failure."""


def _number(payload: Any, key: str, default: float) -> float:
    value = payload.get(key, default) if isinstance(payload, dict) else payload
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"payload: {key} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"payload: {key} must be a finite number >= 0, got {value!r}")
    return value


@registry.task(name="echo")
async def echo(job: Job) -> Any:
    """Return the payload unchanged."""
    return job.payload


@registry.task(name="sleep")
async def sleep(job: Job) -> dict[str, float]:
    """Sleep ``payload["seconds"]`` (default 1) and say so."""
    seconds = _number(job.payload, "seconds", 1.0)
    await trio.sleep(seconds)
    return {"slept": seconds}


@registry.task(name="fail")
async def fail(job: Job) -> None:
    """Always fail: a dead letter after the job's retries."""
    raise DemoFailure(f"fail: attempt {job.attempts} failed on purpose")


@registry.task(name="flaky")
async def flaky(job: Job) -> dict[str, int]:
    """Fail the first ``payload["fail_times"]`` attempts (default 1), then succeed."""
    fail_times = int(_number(job.payload, "fail_times", 1))
    if job.attempts <= fail_times:
        raise DemoFailure(f"flaky: attempt {job.attempts} of {fail_times} planned failures")
    return {"attempts": job.attempts}
