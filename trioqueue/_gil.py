"""The interpreter's thread switch interval, lowered while one of our threads runs.

A thread that wants the GIL waits ``sys.getswitchinterval()`` (5 ms by default) and then
asks the holder to drop it -- unless the GIL changed hands meanwhile.  A busy Trio loop
lets go of the GIL for a moment on every scheduler pass (its ``epoll_wait(0)``) and
takes it straight back, long before a sleeping thread can wake up and take it.  Each of
those moments counts as a change of hands, so the waiting thread never asks, and waits
for as long as the loop stays busy: with this engine running no-op jobs, a
``trio.to_thread.run_sync`` round trip took a median of 37-500 ms (up to 9 s) instead of
about 2 ms.  The threads that lose are the SQLite store's reads and writes and
``sync=True`` handlers.

A switch interval shorter than a scheduler pass (a pass of this engine runs up to
64 jobs per worker, a few hundred microseconds) makes the waiting thread ask in time.
The setting is process-wide, so the queue lowers it only while one of its own threads
is in flight (:class:`LoweredSwitchInterval` around each ``to_thread`` call), and puts
it back when the last one in the process returns, unless someone else changed it
meanwhile.  A program whose queue runs only async handlers in memory never has it
touched.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

import trio

T = TypeVar("T")

_lock = threading.Lock()
_holders = 0
_before = 0.0  # the interval found when the first holder lowered it
_ours = 0.0  # the interval as set by the first holder (as the interpreter reports it)


class LoweredSwitchInterval:
    """``with it:`` lowers ``sys.setswitchinterval`` to ``target`` seconds (never raises
    it) for the block; ``None`` leaves the interpreter alone.

    One object may be entered by many tasks at once, and blocks of any number of objects
    may overlap and end in any order: the interval is put back when the last block in
    the process ends.
    """

    __slots__ = ("_target",)

    def __init__(self, target: float | None) -> None:
        self._target = target

    def __enter__(self) -> None:
        global _holders, _before, _ours
        target = self._target
        if target is None:
            return
        with _lock:
            if _holders == 0:
                _before = sys.getswitchinterval()
                if _before > target:
                    sys.setswitchinterval(target)
                _ours = sys.getswitchinterval()
            _holders += 1

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        global _holders
        if self._target is None:
            return
        with _lock:
            _holders -= 1
            if _holders == 0 and sys.getswitchinterval() == _ours != _before:
                sys.setswitchinterval(_before)


def lowered_switch_interval(target: float | None) -> LoweredSwitchInterval:
    return LoweredSwitchInterval(target)


def _not_cancellable(raise_cancel: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


async def run_in_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread, started before this task yields.

    ``trio.to_thread.run_sync`` yields once before the thread starts (its capacity
    limiter's checkpoint), and on a busy loop every yield lets each worker run a pass
    of up to 64 jobs: with that and the store's two locks, a batch's write began only
    after most of the batch's jobs had run, and the loop then sat idle for the write.
    Here the thread is handed the call at once: it borrows a token of Trio's default
    thread limiter as ``to_thread`` does, but without yielding when one is free (when
    none is, it waits for one), so the limit holds and whatever watches the limiter
    sees the thread at work (the behaviour suite's clock moves only while no thread
    holds a token).  The wait cannot be cancelled: it ends when ``fn`` returns, with its
    value or its exception.  In the thread, ``trio.from_thread`` needs an explicit
    ``trio_token``, and ``contextvars`` are not the caller's.
    """
    token = trio.lowlevel.current_trio_token()
    task = trio.lowlevel.current_task()
    limiter = trio.to_thread.current_default_thread_limiter()
    borrower = object()
    try:
        limiter.acquire_on_behalf_of_nowait(borrower)
    except trio.WouldBlock:
        await limiter.acquire_on_behalf_of(borrower)

    def deliver(result: Any) -> None:
        with contextlib.suppress(trio.RunFinishedError):  # pragma: no cover - waited for
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)

    try:
        trio.lowlevel.start_thread_soon(
            lambda: fn(*args), deliver, name=f"trioqueue {getattr(fn, '__name__', 'thread')}"
        )
        value: T = await trio.lowlevel.wait_task_rescheduled(_not_cancellable)
    finally:
        limiter.release_on_behalf_of(borrower)
    return value
