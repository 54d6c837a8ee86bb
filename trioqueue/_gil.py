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

import sys
import threading
from types import TracebackType

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
