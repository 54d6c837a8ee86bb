"""Whether an enqueue made its job or returned the one already holding its id.

``POST /jobs`` answers 202 for a new job and 200 for an idempotent repeat (API.md); only
the enqueue knows which it was (the admission itself: ``got is rec`` in memory,
``Admission.ACCEPTED`` or ``EXISTING`` from Redis), so the server asks it with
:func:`enqueue_created`.  :meth:`JobQueue.enqueue` keeps its signature and return type,
and its common path (a new job) pays nothing for this: only the path returning an
existing job calls :func:`repeated`, which tells a caller of :func:`enqueue_created` in
the same task, if there is one.  A context variable is per task under Trio, and the
caller's task is checked too (a task started meanwhile inherits the variable): the
enqueue of the same id by another task or node is never taken for this one's.

A batch (``POST /jobs/batch``) is told the same way, item by item: an admission that
returned existing jobs for some of its items calls :func:`batch_repeats` with which,
for a caller of :func:`enqueue_batch_created`.

On Redis a script call re-sent after a lost connection finds the job its first send
made, and answers "existing": the request that made the job is then told it was there
(never two requests told they made it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import ParamSpec

import trio

from ._job import Job

P = ParamSpec("P")


class _Asking:
    """One :func:`enqueue_created` call waiting for its enqueue's answer."""

    __slots__ = ("created", "repeated", "task")

    def __init__(self) -> None:
        self.task = trio.lowlevel.current_task()
        self.repeated = False
        self.created: list[bool] | None = None
        """A batch's: whether each item made its job (``None``: every one did)."""


_ASKING: ContextVar[_Asking | None] = ContextVar("trioqueue_enqueue_asking", default=None)


@contextmanager
def _asked() -> Iterator[_Asking]:
    """This task asking, for the block, what its enqueue made."""
    asking = _Asking()
    token = _ASKING.set(asking)
    try:
        yield asking
    finally:
        _ASKING.reset(token)


def repeated() -> None:
    """Called by an enqueue that returns the job already holding the id (a repeat)."""
    asking = _ASKING.get()
    if asking is not None and asking.task is trio.lowlevel.current_task():
        asking.repeated = True


def batch_repeats(created: list[bool]) -> None:
    """Called by a batch's admission that returned, for some items, the job already
    holding the item's id: ``created[i]`` says whether item ``i`` made its job."""
    asking = _ASKING.get()
    if asking is not None and asking.task is trio.lowlevel.current_task():
        asking.created = created


async def enqueue_created(enqueue: Callable[P, Awaitable[Job]], *args: P.args,
                          **kwargs: P.kwargs) -> tuple[Job, bool]:
    """``await enqueue(*args, **kwargs)`` (a queue's :meth:`~JobQueue.enqueue`) and
    whether that call made the job: ``False`` when it returned the job that already
    held the id."""
    with _asked() as asking:
        job = await enqueue(*args, **kwargs)
    return job, not asking.repeated


async def enqueue_batch_created(enqueue_batch: Callable[P, Awaitable[list[Job]]],
                                *args: P.args, **kwargs: P.kwargs
                                ) -> tuple[list[Job], list[bool]]:
    """``await enqueue_batch(*args, **kwargs)`` (a queue's
    :meth:`~JobQueue.enqueue_batch`) and, for each job, whether that call made it."""
    with _asked() as asking:
        jobs = await enqueue_batch(*args, **kwargs)
    return jobs, asking.created if asking.created is not None else [True] * len(jobs)
